//! The operator's own health on the real API server: its metrics pass `promtool check metrics` and move
//! when what they count happens; a supervised task that ends takes the process down with its name; a
//! webhook that cannot start stops the operator instead of leaving it half-alive; a missing CRD is named at
//! startup; each kind is watched once, whoever reads it.

use std::process::Command;

use serde_json::json;

use crate::authz::{active_agent, apply_policy, ask, authorize, rule};
use crate::harness::{Operator, TestNs, WAIT, http_get, text, wait_for};
use crate::require_cluster;

/// The value of the sample `name` (with its labels, exactly as exposed), or 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The metrics in the Prometheus text format (what promtool reads); the OpenMetrics form is checked to be
/// served on request and to hold the same samples.
async fn scrape(op: &Operator) -> String {
    let (status, headers, body) = http_get(&op.admin_addr(), "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let ct = headers.get("content-type").cloned().unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let accept = [("Accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")];
    let (status, headers, om) =
        crate::harness::http_request(&op.admin_addr(), "GET", "/metrics", &accept, &[]).await;
    assert_eq!(status, 200, "{om}");
    let ct = headers.get("content-type").cloned().unwrap_or_default();
    assert!(ct.starts_with("application/openmetrics-text") && om.trim_end().ends_with("# EOF"), "{ct}");
    body
}

fn promtool_check(metrics: &str) {
    let Some(promtool) = std::env::var_os("PROMTOOL") else {
        assert!(
            std::env::var("E2E_REQUIRED").ok().is_none_or(|v| v != "1"),
            "E2E_REQUIRED=1 but PROMTOOL is unset; run via `make test`"
        );
        eprintln!("SKIPPED promtool check: PROMTOOL unset (run via `make test`)");
        return;
    };
    let out =
        crate::harness::run_with_stdin(Command::new(promtool).args(["check", "metrics"]), Some(metrics));
    assert!(out.status.success(), "promtool check metrics failed:\n{}\n{metrics}", text(&out));
}

#[tokio::test]
async fn live_metrics_pass_promtool_and_count_what_happens() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "metrics").await;
    let op = Operator::start(&env, &ns.name, &[]);
    // The admin listener serves the probes too.
    assert_eq!(http_get(&op.admin_addr(), "/healthz").await.0, 200);
    wait_for("/readyz on the admin port", WAIT, || async {
        (http_get(&op.admin_addr(), "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let before = scrape(&op).await;
    promtool_check(&before);

    let token = active_agent(&ns, "bot").await;
    let read = rule("read", "Allow", &["read"], &["crm:contacts/*"]);
    apply_policy(&ns, "read", json!({"agents": {"names": ["bot"]}, "rules": [read]})).await;
    wait_for("a decision to allow", WAIT, || async {
        (authorize(&op, &ask(&token, "read", "crm:contacts/1")).await["decision"] == "Allow").then_some(())
    })
    .await;

    let after = scrape(&op).await;
    promtool_check(&after);
    let moved = |name: &str| sample(&after, name) > sample(&before, name);
    for name in [
        r#"agentiam_admission_requests_total{webhook="agents",outcome="allowed"}"#,
        r#"agentiam_reconciles_total{controller="agent"}"#,
        r#"agentiam_credentials_total{event="issued"}"#,
        r#"agentiam_decisions_total{outcome="allow"}"#,
        "agentiam_decision_duration_seconds_count",
        "agentiam_audit_records_total",
    ] {
        assert!(moved(name), "{name} did not move:\nbefore:\n{before}\nafter:\n{after}");
    }
}

#[tokio::test]
async fn a_task_that_ends_stops_the_operator_with_its_name() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "task").await;
    let mut op = Operator::unstarted(&env, &ns.name, &["--failpoint-fail-task", "key manager=2s"]);
    op.spawn();
    let (code, stderr) = op.wait_exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(r#"task "key manager" ended unexpectedly: failpoint: made to fail"#),
        "the exit names the task and its error:\n{stderr}"
    );
}

#[tokio::test]
async fn a_webhook_that_cannot_listen_stops_the_operator_at_startup() {
    let env = require_cluster!();
    crate::process_only!(env, "it takes the webhook's port on loopback, which a pod does not share");
    let ns = TestNs::new(&env, "bind").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let mut op = Operator::unstarted(&env, &ns.name, &[]);
    op.webhook_addr = port.clone();
    op.spawn();
    let (code, stderr) = op.wait_exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(r#"task "admission webhooks" ended unexpectedly"#) && stderr.contains(&port),
        "{stderr}"
    );
    drop(taken);
}

/// Installs the CRD file `file` again when dropped (also when the test fails midway), and waits until it is
/// Established.
struct Reinstall<'a>(&'a crate::harness::Env, &'static str, &'static str);

impl Drop for Reinstall<'_> {
    fn drop(&mut self) {
        let out = self.0.kubectl(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=agentiam-e2e", "-f", self.1],
            None,
        );
        assert!(out.status.success(), "could not reinstall {}: {}", self.1, text(&out));
        let out =
            self.0.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd", self.2], None);
        assert!(out.status.success(), "{} is not Established again: {}", self.2, text(&out));
    }
}

#[tokio::test]
#[ignore = "deletes a cluster-wide CRD; tools/e2e.sh runs it alone"]
async fn a_missing_crd_stops_the_operator_at_startup_and_names_it() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "nocrd").await;
    let crd = "revocations.agentiam.dev";
    let restore =
        Reinstall(&env, concat!(env!("CARGO_MANIFEST_DIR"), "/crds/agentiam.dev_revocations.yaml"), crd);
    let out = env.kubectl(&["delete", "crd", crd, "--wait=true", "--timeout=60s"], None);
    assert!(out.status.success(), "{}", text(&out));
    let mut op = Operator::unstarted(&env, &ns.name, &[]);
    op.spawn();
    let (code, stderr) = op.wait_exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the agentiam CRDs are not ready: revocations.agentiam.dev (not installed)")
            && stderr.contains("kubectl apply -f crds/"),
        "the exit names the missing CRD and how to install it:\n{stderr}"
    );
    assert!(!stderr.contains("operator running"), "{stderr}");
    // With the CRD back, the same operator starts.
    drop(restore);
    op.spawn();
    wait_for("the operator to run with the CRD back", WAIT, || async {
        op.stderr().contains("operator running").then_some(())
    })
    .await;
}

/// The API server's open WATCH requests of `resource` (agentiam.dev) at namespace scope, from its own
/// `apiserver_longrunning_requests` gauge.
fn namespaced_watches(env: &crate::harness::Env, resource: &str) -> f64 {
    let out = env.kubectl(&["get", "--raw", "/metrics"], None);
    assert!(out.status.success(), "{}", text(&out));
    let metrics = String::from_utf8_lossy(&out.stdout);
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_longrunning_requests{")
                && l.contains(r#"group="agentiam.dev""#)
                && l.contains(&format!(r#"resource="{resource}""#))
                && l.contains(r#"scope="namespace""#)
                && l.contains(r#"verb="WATCH""#)
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
#[ignore = "counts the API server's open watches, so no other operator may run; tools/e2e.sh runs it alone"]
async fn each_kind_is_watched_once_for_every_consumer() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "onewatch").await;
    let kinds = ["agents", "agentpolicies", "revocations", "delegations", "approvalrequests"];
    let before: Vec<f64> = kinds.iter().map(|k| namespaced_watches(&env, k)).collect();
    let op = Operator::start(&env, &ns.name, &[]);
    // Every consumer is running by now (the index, the webhooks, both controllers): prove they read.
    let token = active_agent(&ns, "watched").await;
    let read = rule("read", "Allow", &["read"], &["crm:contacts/*"]);
    apply_policy(&ns, "read", json!({"agents": {"names": ["watched"]}, "rules": [read]})).await;
    wait_for("a decision from the shared stores", WAIT, || async {
        (authorize(&op, &ask(&token, "read", "crm:contacts/1")).await["decision"] == "Allow").then_some(())
    })
    .await;
    wait_for("the policy status controller to report from the shared store", WAIT, || async {
        let out = env.kubectl(&["get", "agentpolicy", "read", "-n", &ns.name, "-o", "json"], None);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["matchedAgents"] == 1).then_some(())
    })
    .await;
    let after: Vec<f64> = kinds.iter().map(|k| namespaced_watches(&env, k)).collect();
    let opened: Vec<f64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    // Each kind once (Agents and AgentPolicies were watched 2 and 3 times before they were shared), the
    // ApprovalRequests of the approval controller included.
    assert_eq!(opened, [1.0; 5], "watches opened per kind {kinds:?}");
}
