//! One malformed object never stalls a watch: an Agent stored under a looser schema (as after a downgrade of
//! the CRD, or an edit of it) is reported and skipped, and every other Agent is reconciled and decided on.
//!
//! `#[ignore]`: it changes the cluster-wide Agent CRD for a moment, so tools/e2e.sh runs it alone.

use serde_json::json;

use crate::authz::{active_agent, apply_policy, ask, authorize, rule};
use crate::harness::{Env, Operator, TestNs, WAIT, basic_spec, wait_for, wait_phase};
use crate::require_cluster;

/// Puts the real Agent CRD back when dropped, also when the test fails midway.
struct RealCrd<'a>(&'a Env);

impl Drop for RealCrd<'_> {
    fn drop(&mut self) {
        let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/agentiam.dev_agents.yaml");
        let out = self.0.kubectl(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=agentiam-e2e", "-f", crd],
            None,
        );
        assert!(out.status.success(), "could not restore the Agent CRD: {}", crate::harness::text(&out));
    }
}

#[tokio::test]
#[ignore = "changes the cluster-wide Agent CRD; tools/e2e.sh runs it alone"]
async fn an_agent_stored_under_an_older_schema_is_skipped_and_stalls_nothing() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "malformed").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    let restore = RealCrd(&env);
    // A looser schema: any string is an environment.
    let loosen = json!([{"op": "replace",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/environment",
        "value": {"type": "string"}}]);
    let out =
        env.kubectl(&["patch", "crd", "agents.agentiam.dev", "--type=json", "-p", &loosen.to_string()], None);
    assert!(out.status.success(), "{}", crate::harness::text(&out));
    let mut spec = basic_spec();
    spec["environment"] = json!("Legacy");
    wait_for("the looser schema to be served", WAIT, || async {
        let agent = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
                           "metadata": {"name": "legacy"}, "spec": spec});
        let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&agent.to_string()));
        out.status.success().then_some(())
    })
    .await;
    drop(restore);

    // The running operator skipped the event; a restarted one lists it and skips it too.
    op.restart();
    let token = active_agent(&ns, "fresh").await;
    let read = rule("read", "Allow", &["read"], &["crm:contacts/*"]);
    apply_policy(&ns, "read", json!({"agents": {"names": ["fresh"]}, "rules": [read]})).await;
    wait_for("the policy index to decide (it is ready despite the bad object)", WAIT, || async {
        (authorize(&op, &ask(&token, "read", "crm:contacts/1")).await["decision"] == "Allow").then_some(())
    })
    .await;
    wait_phase(&ns.api(), "fresh", "Active").await;
    let stderr = op.stderr();
    assert!(
        stderr.contains("skipping an object that does not read as its kind") && stderr.contains("legacy"),
        "the bad object is reported by name:\n{stderr}"
    );
    let (_, _, metrics) = crate::harness::http_get(&op.admin_addr(), "/metrics").await;
    assert!(metrics.contains("agentiam_malformed_objects_total{watch="), "{metrics}");
    // It can still be deleted (nothing of ours holds it).
    let out =
        env.kubectl(&["delete", "agent", "legacy", "-n", &ns.name, "--wait=true", "--timeout=30s"], None);
    assert!(out.status.success(), "{}", crate::harness::text(&out));
}
