//! The operator's own health on the real API server: its metrics pass `promtool check metrics` and move
//! when what they count happens; a supervised task that ends takes the process down with its name; a
//! webhook that cannot start stops the operator instead of leaving it half-alive.

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
