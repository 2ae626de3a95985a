//! The pod admission webhook against the real API server: pods that claim an Active agent get its
//! credentials mounted; pods that claim a missing, inactive or mismatched agent are refused.

use agentiam::api::Agent;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::harness::{Operator, TestNs, WAIT, basic_spec, http_get, text, wait_credentials, wait_for};
use crate::require_cluster;

fn pod(name: &str, agent: &str, sa: Option<&str>) -> String {
    let mut spec = json!({"containers": [{"name": "main", "image": "registry.example/agent:1"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"agentiam.dev/agent": agent}}, "spec": spec})
        .to_string()
}

/// Waits until the webhook configuration exists and answers (the first labelled pod creation succeeds or is
/// refused by the webhook itself, not by a connection error).
async fn wait_webhook_ready(env: &crate::harness::Env, ns: &TestNs) {
    wait_for("the webhook to answer", WAIT, || async {
        let out = env.kubectl(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(&pod("probe", "nobody", None)),
        );
        let t = text(&out);
        t.contains("has no Agent of that name").then_some(())
    })
    .await;
}

/// Readiness waits for the webhooks: a Service in front of the operator routes admissions only to ready pods,
/// so once /readyz answers 200 the very first labelled pod must already be judged by the webhook. The
/// failpoint holds the webhooks back for 3 s after the admin server is up, so the window in which the
/// operator answers probes but the webhooks do not serve is wide enough to look at. (Before, the operator
/// said ready in that window, and a pod sent to it then was admitted unchecked.) Since the controllers start
/// only once the webhooks serve, "operator running" is not logged in that window either.
#[tokio::test]
async fn the_operator_is_ready_only_once_the_webhook_serves() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "wh-ready").await;
    let mut op = Operator::unstarted(&env, &ns.name, &["--failpoint-webhook-start-delay", "3s"]);
    op.spawn();
    wait_for("the admin server to listen", WAIT, || async {
        op.stderr().contains("admin server listening").then_some(())
    })
    .await;
    // Not ready while the policy index loads, then while the webhooks are held back; never ready before.
    wait_for("/readyz to say the webhooks are not serving yet", WAIT, || async {
        let (status, _, body) = http_get(&op.admin_addr(), "/readyz").await;
        assert_eq!(status, 503, "ready before the webhooks serve: {body}");
        body.contains("the admission webhooks are not serving yet").then_some(())
    })
    .await;
    assert!(!op.stderr().contains("serving the admission webhooks"), "{}", op.stderr());
    assert!(!op.stderr().contains("operator running"), "{}", op.stderr());
    wait_for("/readyz to answer 200", WAIT, || async {
        let (status, _, body) = http_get(&op.admin_addr(), "/readyz").await;
        assert!(
            status == 200 || body.contains("not serving yet") || body.contains("starting or stopping"),
            "{status} {body}"
        );
        (status == 200).then_some(())
    })
    .await;
    // One attempt, no retry.
    let out = env.kubectl(
        &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
        Some(&pod("probe", "nobody", None)),
    );
    assert!(!out.status.success(), "admitted without the webhook: {}", text(&out));
    assert!(text(&out).contains("has no Agent of that name"), "{}", text(&out));
}

#[tokio::test]
async fn pods_of_an_active_agent_get_credentials_mounted_and_others_are_refused() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "webhook").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    wait_webhook_ready(&env, &ns).await;
    let api = ns.api::<Agent>();
    ns.create_agent("bot", basic_spec()).await;
    wait_credentials(&api, "bot").await;

    let out = ns.apply(&pod("bot-1", "bot", None));
    assert!(out.status.success(), "{}", text(&out));
    let p = ns.api::<Pod>().get("bot-1").await.unwrap();
    let spec = p.spec.unwrap();
    let vol = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "agentiam-credentials")
        .expect("projected volume");
    let sources = vol.projected.unwrap().sources.unwrap();
    assert_eq!(sources[0].secret.as_ref().unwrap().name, "bot-credentials");
    assert_eq!(sources[1].config_map.as_ref().unwrap().name, "agentiam-trust-bundle");
    let c = &spec.containers[0];
    let m = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "agentiam-credentials").unwrap();
    assert_eq!((m.mount_path.as_str(), m.read_only), ("/var/run/secrets/agentiam.dev", Some(true)));
    let env_var = c.env.as_ref().unwrap().iter().find(|e| e.name == "AGENTIAM_SPIFFE_ID").unwrap();
    assert_eq!(
        env_var.value.as_deref(),
        Some(format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name).as_str())
    );

    // A pod without the label is not touched.
    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
                       "spec": {"containers": [{"name": "main", "image": "registry.example/x:1"}]}});
    assert!(ns.apply(&plain.to_string()).status.success());
    assert!(
        ns.api::<Pod>()
            .get("plain")
            .await
            .unwrap()
            .spec
            .unwrap()
            .volumes
            .unwrap_or_default()
            .iter()
            .all(|v| v.name != "agentiam-credentials")
    );

    // Refusals, each with a message that says why.
    let refused = |name: &str, agent: &str, sa: Option<&str>, why: &str| {
        let out = ns.apply(&pod(name, agent, sa));
        let t = text(&out);
        assert!(!out.status.success() && t.contains(why), "{name}: expected refusal containing {why:?}: {t}");
    };
    refused("ghost-1", "ghost", None, "has no Agent of that name");
    api.patch(
        "bot",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&json!({"spec": {"lifecycle": {"desiredState": "Suspended"}}})),
    )
    .await
    .unwrap();
    crate::harness::wait_phase(&api, "bot", "Suspended").await;
    refused("bot-2", "bot", None, "is Suspended, not Active");

    // An agent bound to a service account refuses pods running as another one.
    let mut bound = basic_spec();
    bound["workload"] = json!({"serviceAccountName": "bound-sa"});
    ns.create_agent("bound", bound).await;
    wait_credentials(&api, "bound").await;
    refused("bound-1", "bound", Some("default"), "runs as service account \"bound-sa\"");
}

#[tokio::test]
async fn an_agent_in_another_namespace_cannot_be_claimed() {
    let env = require_cluster!();
    let home = TestNs::new(&env, "wh-home").await;
    let _op = Operator::start(&env, &home.name, &[]);
    wait_webhook_ready(&env, &home).await;
    home.create_agent("shared", basic_spec()).await;
    wait_credentials(&home.api::<Agent>(), "shared").await;
    // The webhook of this operator only covers its namespace; in the same namespace the name resolves,
    // and an Agent of that name elsewhere is never consulted for a pod here.
    let other = TestNs::new(&env, "wh-other").await;
    let _op2 = Operator::start(&env, &other.name, &[]);
    wait_webhook_ready(&env, &other).await;
    let out = other.apply(&pod("thief", "shared", None));
    let t = text(&out);
    assert!(!out.status.success() && t.contains("has no Agent of that name"), "{t}");
}
