//! The Agent registry controller against the real API server: identity, trust score, lifecycle, events,
//! conditions, archiving.

use agentiam::api::Agent;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::{
    Operator, TestNs, WAIT, basic_spec, delete_and_wait, records, text, wait_for, wait_phase,
};
use crate::require_cluster;

fn condition<'a>(a: &'a Agent, t: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    a.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

async fn set_desired(api: &kube::Api<Agent>, name: &str, state: &str) {
    let patch = json!({"spec": {"lifecycle": {"desiredState": state}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch desiredState");
}

async fn event_reasons(ns: &TestNs, name: &str) -> Vec<String> {
    let events = ns.api::<Event>().list(&ListParams::default()).await.expect("list events");
    events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Waits until events with all `reasons` were recorded for `name`; returns every reason seen.
async fn wait_events(ns: &TestNs, name: &str, reasons: &[&str]) -> Vec<String> {
    wait_for(&format!("events {reasons:?} for {name}"), WAIT, || async {
        let seen = event_reasons(ns, name).await;
        reasons.iter().all(|r| seen.iter().any(|s| s == r)).then_some(seen)
    })
    .await
}

#[tokio::test]
async fn an_agent_reaches_active_with_spiffe_id_trust_score_and_conditions() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "active").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    let created = ns.create_agent("triage", basic_spec()).await;
    let a = wait_phase(&ns.api::<Agent>(), "triage", "Active").await;
    let s = a.status.clone().unwrap();
    assert_eq!(s.spiffe_id.unwrap(), format!("spiffe://cluster.local/ns/{}/agent/triage", ns.name));
    assert_eq!(s.trust_score, Some(250), "a bare production agent scores its baseline");
    assert_eq!(s.uid, created.metadata.uid, "identity bound to the object UID");
    assert_eq!(s.observed_generation, Some(1));
    for t in ["Ready", "Valid"] {
        let c = condition(&a, t);
        assert_eq!((c.status.as_str(), c.observed_generation), ("True", Some(1)), "{t}");
    }
    assert!(a.metadata.finalizers.unwrap_or_default().contains(&"agentiam.dev/archive".to_string()));
}

#[tokio::test]
async fn the_trust_domain_comes_from_operator_configuration() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "td").await;
    let _op = Operator::start(&env, &ns.name, &["--trust-domain", "agents.example.org"]);
    ns.create_agent("td", basic_spec()).await;
    let a = wait_phase(&ns.api::<Agent>(), "td", "Active").await;
    assert_eq!(
        a.status.unwrap().spiffe_id.unwrap(),
        format!("spiffe://agents.example.org/ns/{}/agent/td", ns.name)
    );
}

#[tokio::test]
async fn an_invalid_trust_domain_stops_the_operator_with_a_clear_error() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "badtd").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentiam"))
        .args(["run", "--trust-domain", "Example.ORG/x", "--namespace", &ns.name])
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("--trust-domain") && msg.contains("lowercase"), "{msg}");
}

#[tokio::test]
async fn trust_score_follows_provenance_edits_and_each_edit_is_audited() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "trust").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent("t", basic_spec()).await;
    wait_phase(&api, "t", "Active").await;
    let digest = format!("ghcr.io/acme/t@sha256:{}", "0".repeat(64));
    let patch = json!({"spec": {"environment": "Sandbox", "provenance": {"model": "m", "image": digest}}});
    api.patch("t", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    // 400 sandbox + 100 model + 50 image + 200 digest.
    wait_for("trust score 750", WAIT, || async {
        let a = api.get("t").await.ok()?;
        (a.status?.trust_score == Some(750)).then_some(())
    })
    .await;
    let updates: Vec<_> =
        records(&op.audit_log()).into_iter().filter(|r| r["action"] == "agent.update").collect();
    assert_eq!(updates.len(), 2, "one intent and one outcome for the edit: {updates:?}");
    assert_eq!(updates[0]["details"]["trustScore"], "750");
    assert_eq!(updates[0]["details"]["previousGeneration"], "1");
    assert_eq!(updates[1]["outcome"], "success");
}

#[tokio::test]
async fn events_are_recorded_for_every_transition() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "events").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent("ev", basic_spec()).await;
    wait_phase(&api, "ev", "Active").await;
    set_desired(&api, "ev", "Suspended").await;
    wait_phase(&api, "ev", "Suspended").await;
    set_desired(&api, "ev", "Active").await;
    wait_phase(&api, "ev", "Active").await;
    let reasons = wait_events(&ns, "ev", &["Activated", "Suspended", "Resumed"]).await;
    assert!(!reasons.iter().any(|r| r == "ReconcileError"), "{reasons:?}");
    let out = env.kubectl(&["describe", "agent", "ev", "-n", &ns.name], None);
    assert!(text(&out).contains("agent is Active as spiffe://"), "{}", text(&out));
}

#[tokio::test]
async fn suspend_and_resume_move_phase_ready_and_the_audit_log() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "suspend").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent("s", basic_spec()).await;
    wait_phase(&api, "s", "Active").await;
    set_desired(&api, "s", "Suspended").await;
    let a = wait_phase(&api, "s", "Suspended").await;
    let ready = condition(&a, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str(), ready.observed_generation),
        ("False", "Suspended", Some(2))
    );
    set_desired(&api, "s", "Active").await;
    let a = wait_phase(&api, "s", "Active").await;
    assert_eq!(condition(&a, "Ready").observed_generation, Some(3));
    let expected = [
        "agent.activate",
        "credential.issue",
        "agent.suspend",
        "credential.withdraw",
        "agent.activate",
        "credential.issue",
    ];
    let recs = crate::harness::wait_records(&op, "the full lifecycle in the log", |r| {
        crate::harness::outcome_actions(r).len() >= expected.len()
    })
    .await;
    assert_eq!(crate::harness::outcome_actions(&recs), expected);
}

#[tokio::test]
async fn retiring_is_terminal_and_archives_the_final_state() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "retire").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent(
        "r",
        json!({"owner": {"kind": "User", "name": "bob"}, "purpose": "p", "provenance": {"model": "m1"}}),
    )
    .await;
    wait_phase(&api, "r", "Active").await;
    set_desired(&api, "r", "Retired").await;
    wait_phase(&api, "r", "Retired").await;
    // The API server refuses reactivation (CEL transition rule).
    let err = api
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"lifecycle": {"desiredState": "Active"}}})),
        )
        .await
        .expect_err("reactivation must be refused");
    assert!(err.to_string().contains("a Retired agent cannot be reactivated"), "{err}");
    let retire =
        records(&op.audit_log()).into_iter().find(|r| r["action"] == "agent.retire" && r["kind"] == "intent");
    let retire = retire.expect("retire intent recorded");
    assert_eq!(retire["details"]["provenance.model"], "m1");
    assert_eq!(retire["details"]["owner"], "User:bob");
    assert_eq!(retire["details"]["finalPhase"], "Active", "state before retiring");
    wait_events(&ns, "r", &["Retired"]).await;
}

#[tokio::test]
async fn deletion_archives_the_agent_and_audit_verify_passes() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "delete").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let created = ns.create_agent("d", basic_spec()).await;
    wait_phase(&api, "d", "Active").await;
    delete_and_wait(&api, "d").await;
    let uid = created.metadata.uid.unwrap();
    let recs = records(&op.audit_log());
    let archive: Vec<_> = recs.iter().filter(|r| r["action"] == "agent.archive").collect();
    assert_eq!(archive.len(), 2, "one intent and one outcome: {archive:?}");
    assert_eq!(archive[0]["kind"], "intent");
    assert_eq!(archive[0]["object"]["uid"], uid.as_str());
    assert_eq!(archive[0]["details"]["spiffeID"], format!("spiffe://cluster.local/ns/{}/agent/d", ns.name));
    assert_eq!(archive[0]["details"]["finalPhase"], "Active");
    assert_eq!(
        (archive[1]["kind"].as_str(), archive[1]["outcome"].as_str()),
        (Some("outcome"), Some("success"))
    );
    crate::harness::wait_checkpoint_covers_log(&ns, &op).await;
    let log = op.audit_log();
    let out =
        env.plugin(&["audit", "verify", "--log", log.to_str().unwrap(), "--operator-namespace", &ns.name]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 still open"), "{}", text(&out));
}

#[tokio::test]
async fn an_invalid_spec_that_passes_the_api_gives_valid_false_not_a_crash_loop() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "invalid").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    // The schema cannot check image reference or URL syntax; the reconciler does.
    let spec = json!({
        "owner": {"kind": "Team", "name": "t"}, "purpose": "p",
        "provenance": {"image": "NOT A/VALID:image:", "sourceRepository": "git@github.com:acme/x"},
    });
    ns.create_agent("bad", spec).await;
    let a = wait_for("Valid=False", WAIT, || async {
        let a = api.get("bad").await.ok()?;
        let ok = a.status.as_ref()?.conditions.iter().any(|c| c.type_ == "Valid" && c.status == "False");
        ok.then_some(a)
    })
    .await;
    let valid = condition(&a, "Valid");
    assert_eq!(valid.reason, "SpecInvalid");
    assert!(valid.message.contains("spec.provenance.image"), "{}", valid.message);
    assert!(valid.message.contains("spec.provenance.sourceRepository"), "{}", valid.message);
    assert_eq!(a.status.as_ref().unwrap().phase.unwrap().as_str(), "Pending");
    let reasons = wait_events(&ns, "bad", &["InvalidSpec"]).await;
    assert!(!reasons.iter().any(|r| r == "ReconcileError"), "{reasons:?}");
    // Fixing the spec activates it.
    let fix = json!({"spec": {"provenance": {"image": "ghcr.io/acme/x:1", "sourceRepository": "https://github.com/acme/x"}}});
    api.patch("bad", &PatchParams::default(), &Patch::Merge(&fix)).await.unwrap();
    let a = wait_phase(&api, "bad", "Active").await;
    assert_eq!(condition(&a, "Valid").status, "True");
}

#[tokio::test]
async fn reconciling_a_settled_agent_changes_nothing() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "idem").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent("i", basic_spec()).await;
    wait_phase(&api, "i", "Active").await;
    // Settled: the credentials summary is written after the phase.
    wait_for("credentials in the status", WAIT, || async {
        api.get("i").await.ok()?.status?.credentials.map(|_| ())
    })
    .await;
    let before = api.get("i").await.unwrap();
    let log_len = records(&op.audit_log()).len();
    // A restart reconciles every agent again from scratch.
    op.restart();
    crate::harness::wait_for("the restarted operator to reconcile", WAIT, || async {
        op.stderr().contains("reconciled").then_some(())
    })
    .await;
    let after = api.get("i").await.unwrap();
    assert_eq!(before.metadata.resource_version, after.metadata.resource_version, "status was rewritten");
    assert_eq!(records(&op.audit_log()).len(), log_len, "audit records were added for no change");
}

#[tokio::test]
async fn a_recreated_agent_of_the_same_name_is_a_new_identity() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "recreate").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let first = ns.create_agent("same", basic_spec()).await.metadata.uid.unwrap();
    wait_phase(&api, "same", "Active").await;
    delete_and_wait(&api, "same").await;
    let second = ns.create_agent("same", basic_spec()).await.metadata.uid.unwrap();
    wait_phase(&api, "same", "Active").await;
    let a = crate::harness::wait_credentials(&api, "same").await;
    assert_ne!(first, second);
    assert_eq!(a.status.unwrap().uid.unwrap(), second);
    let activations: Vec<String> = records(&op.audit_log())
        .iter()
        .filter(|r| r["action"] == "agent.activate" && r["kind"] == "intent")
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(activations, [format!("agent.activate:{first}:1"), format!("agent.activate:{second}:1")]);
    // trace separates the two incarnations by UID.
    let log = op.audit_log();
    let out = env.plugin(&[
        "audit",
        "trace",
        "same",
        "-n",
        &ns.name,
        "--uid",
        &second,
        "-o",
        "json",
        "--log",
        log.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> =
        std::str::from_utf8(&out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .filter(|a| !a.starts_with("admission."))
        .collect();
    assert_eq!(
        actions,
        ["agent.activate", "agent.activate", "credential.issue", "credential.issue"],
        "{lines:?}"
    );
    assert!(lines.iter().all(|r| r["object"]["uid"] == second.as_str()), "only the second incarnation");
}
