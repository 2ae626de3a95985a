//! Authorization against the real API server: AgentPolicies applied and edited change what
//! `POST /v1/authorize` and the ext_authz endpoint answer, with time windows (under an injected clock),
//! attribute constraints, rate limits and audit mode; agent suspension, Revocations and recreation deny;
//! bad input is a 400, never a 500 or an Allow. Continuous authorization is measured: a policy edit, a
//! suspension and a Revocation change decisions within one second of the API write returning.

use std::time::{Duration, Instant};

use agentiam::api::{Agent, AgentPolicy, Revocation};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::{
    Operator, TestNs, WAIT, delete_and_wait, http_post, http_request, wait_credentials, wait_for,
    wait_records,
};
use crate::require_cluster;

/// The audience of the agents' tokens (the service the rules protect).
pub(crate) const AUD: &str = "crm";
/// Continuous authorization: a change reaches decisions within this long of its API write.
pub(crate) const FLIP_WITHIN: Duration = Duration::from_secs(1);

fn agent_spec() -> Value {
    json!({
        "owner": {"kind": "Team", "name": "e2e"},
        "purpose": "exercises authorization",
        "credentials": {"audiences": [AUD]},
    })
}

/// The agent's current token for [`AUD`], from its credentials Secret.
pub(crate) async fn token(ns: &TestNs, agent: &str) -> String {
    let s = ns.api::<Secret>().get(&format!("{agent}-credentials")).await.expect("credentials Secret");
    String::from_utf8(s.data.unwrap()[&format!("token-{AUD}")].0.clone()).unwrap()
}

/// Creates an Agent that gets credentials for [`AUD`], waits until it has them and returns its token.
pub(crate) async fn active_agent(ns: &TestNs, name: &str) -> String {
    ns.create_agent(name, agent_spec()).await;
    wait_credentials(&ns.api::<Agent>(), name).await;
    token(ns, name).await
}

/// Creates or replaces an AgentPolicy (server-side apply: rules left out are removed).
pub(crate) async fn apply_policy(ns: &TestNs, name: &str, spec: Value) -> AgentPolicy {
    let p = json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
        "metadata": {"name": name}, "spec": spec,
    });
    ns.api::<AgentPolicy>()
        .patch(name, &PatchParams::apply("agentiam-e2e").force(), &Patch::Apply(&p))
        .await
        .expect("apply AgentPolicy")
}

/// Waits until the policy's status describes its current generation with Ready = `ready`.
async fn wait_policy_status(ns: &TestNs, name: &str, ready: &str) -> AgentPolicy {
    let api = ns.api::<AgentPolicy>();
    wait_for(&format!("policy {name} status Ready={ready}"), WAIT, || async {
        let p = api.get_opt(name).await.ok().flatten()?;
        let generation = p.metadata.generation?;
        let st = p.status.as_ref()?;
        let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        let current = st.observed_generation == Some(generation) && c.observed_generation == Some(generation);
        (current && c.status == ready).then_some(p)
    })
    .await
}

/// A policy rule for `actions` on `resources`.
pub(crate) fn rule(name: &str, effect: &str, actions: &[&str], resources: &[&str]) -> Value {
    json!({"name": name, "effect": effect, "actions": actions, "resources": resources})
}

/// `rule` with conditions.
fn when(mut rule: Value, conditions: Value) -> Value {
    rule["conditions"] = conditions;
    rule
}

pub(crate) fn ask(token: &str, action: &str, resource: &str) -> Value {
    json!({"token": token, "action": action, "resource": resource})
}

fn with_context(mut body: Value, context: Value) -> Value {
    body["context"] = context;
    body
}

/// `POST /v1/authorize` with a JSON body: (status, body as JSON).
pub(crate) async fn post_authorize(op: &Operator, body: &[u8]) -> (u16, Value) {
    let headers = [("Content-Type", "application/json")];
    let (status, _, text) = http_post(&op.http_addr, "/v1/authorize", &headers, body).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"));
    (status, json)
}

/// A well-formed decision request; the answer must be a 200.
pub(crate) async fn authorize(op: &Operator, body: &Value) -> Value {
    let (status, r) = post_authorize(op, body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{r}");
    r
}

pub(crate) fn reason(r: &Value) -> &str {
    r["reason"].as_str().unwrap_or_default()
}

/// Whether the answer came from evaluating the request (not from an operator still starting up).
pub(crate) fn evaluated(r: &Value) -> bool {
    !reason(r).contains("still loading") && !reason(r).contains("signing keys")
}

/// Polls until `done` holds for the answer (the operator catching up is a condition to wait on). On
/// timeout, the last answer and the operator's log (without debug lines) say what went wrong.
pub(crate) async fn wait_answer(
    op: &Operator,
    body: &Value,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = authorize(op, body).await;
        if done(&r) {
            return r;
        }
        if Instant::now() > deadline {
            let log = op.stderr();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!("timed out after {WAIT:?} waiting for {what}; last answer {r}; operator log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn wait_decision(op: &Operator, body: &Value, want: &str) -> Value {
    let what = format!("{want} for {} {}", body["action"], body["resource"]);
    wait_answer(op, body, &what, |r| r["decision"] == want).await
}

/// Asks in a tight loop from `written` (the moment an API write returned) until the decision is `want`;
/// prints and returns how long that took, and the answer.
pub(crate) async fn flip_latency(
    op: &Operator,
    body: &Value,
    want: &str,
    written: Instant,
    what: &str,
) -> (Duration, Value) {
    loop {
        let r = authorize(op, body).await;
        let took = written.elapsed();
        if r["decision"] == want {
            eprintln!(
                "continuous authorization: {what}: decision became {want} {} ms after the API write",
                took.as_millis()
            );
            return (took, r);
        }
        assert!(took < Duration::from_secs(10), "{what}: still {r} after {took:?}");
    }
}

#[tokio::test]
async fn a_policy_changes_decisions_and_reports_its_status() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-policy").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "bot").await;
    let uid = ns.api::<Agent>().get("bot").await.unwrap().metadata.uid.unwrap();
    let read = ask(&token, "read", "crm:contacts/1");

    // No policy yet: default deny, once the index knows the agent is Active.
    let r = wait_answer(&op, &read, "default deny without a policy", |r| {
        reason(r).contains("no AgentPolicy governs")
    })
    .await;
    assert_eq!(r["decision"], "Deny", "{r}");

    let read_rule = rule("read-contacts", "Allow", &["read"], &["crm:contacts/*"]);
    apply_policy(&ns, "crm-read", json!({"agents": {"names": ["bot"]}, "rules": [read_rule]})).await;
    let r = wait_decision(&op, &read, "Allow").await;
    assert_eq!((r["policy"].as_str(), r["rule"].as_str()), (Some("crm-read"), Some("read-contacts")), "{r}");
    assert_eq!(authorize(&op, &ask(&token, "delete", "crm:contacts/1")).await["decision"], "Deny");

    // The decision is in the audit log under the answer's auditId, without the token.
    let audit_id = r["auditId"].as_str().unwrap().to_owned();
    let is_it = |x: &Value| x["action"] == "authz.decide" && x["details"]["auditId"] == audit_id.as_str();
    let recs = wait_records(&op, "the decision's audit record", |recs| recs.iter().any(is_it)).await;
    let rec = recs.iter().find(|x| is_it(x)).unwrap();
    let d = &rec["details"];
    assert_eq!(rec["actor"], format!("agent:{}/bot", ns.name), "{rec}");
    assert_eq!(rec["object"]["uid"], uid.as_str(), "{rec}");
    let fields = ["decision", "policy", "rule", "requestAction", "resource", "source", "audience"];
    let got: Vec<&str> = fields.iter().map(|f| d[f].as_str().unwrap_or_default()).collect();
    assert_eq!(got, ["Allow", "crm-read", "read-contacts", "read", "crm:contacts/1", "api", AUD], "{rec}");
    let log = std::fs::read_to_string(op.audit_log()).unwrap();
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(&token) && !log.contains(signature), "the token leaked into the audit log");

    let p = wait_policy_status(&ns, "crm-read", "True").await;
    let st = p.status.unwrap();
    assert_eq!((st.matched_agents, st.observed_generation), (Some(1), Some(1)));
    assert_eq!(st.conditions.iter().find(|c| c.type_ == "Ready").unwrap().reason, "Compiled");
    assert!(st.rule_errors.is_empty());

    // An edit (a Deny rule beats the Allow) reaches decisions within a second of the write.
    let vip = ask(&token, "read", "crm:contacts/vip");
    assert_eq!(authorize(&op, &vip).await["decision"], "Allow");
    let deny_vip = rule("no-vip", "Deny", &["read"], &["crm:contacts/vip"]);
    apply_policy(&ns, "crm-read", json!({"agents": {"names": ["bot"]}, "rules": [read_rule, deny_vip]}))
        .await;
    let (took, r) = flip_latency(&op, &vip, "Deny", Instant::now(), "policy edit").await;
    assert!(took < FLIP_WITHIN, "a policy edit took {took:?} to reach decisions");
    assert_eq!((r["rule"].as_str(), reason(&r)), (Some("no-vip"), "denied by rule"), "{r}");
    assert_eq!(authorize(&op, &read).await["decision"], "Allow", "other contacts stay readable");
    let st = wait_policy_status(&ns, "crm-read", "True").await.status.unwrap();
    assert_eq!(st.observed_generation, Some(2));

    // A second governing policy that does not compile (unknown time zone) says why and denies everything.
    let window = json!({"start": "09:00", "end": "17:00", "timeZone": "Mars/Olympus_Mons"});
    let office = when(rule("office-hours", "Allow", &["read"], &["crm:x"]), json!({"timeWindows": [window]}));
    apply_policy(&ns, "broken-zone", json!({"agents": {"names": ["bot"]}, "rules": [office]})).await;
    let st = wait_policy_status(&ns, "broken-zone", "False").await.status.unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "RuleErrors", "{ready:?}");
    assert!(ready.message.contains("denies"), "{ready:?}");
    assert_eq!(st.matched_agents, Some(1));
    assert!(
        st.rule_errors.iter().any(|e| e.contains("rule \"office-hours\"") && e.contains("Mars/Olympus_Mons")),
        "{:?}",
        st.rule_errors
    );
    let r = wait_answer(&op, &read, "the broken policy to deny", |r| r["decision"] != "Allow").await;
    assert_eq!(r["decision"], "Deny");
    assert!(reason(&r).contains("do not compile") && r["policy"] == "broken-zone", "{r}");
}

#[tokio::test]
async fn time_windows_follow_the_injected_clock_in_the_rules_time_zone() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-time").await;
    // Monday 2026-11-30, 11:00 in Berlin (CET, UTC+1).
    let mut op = Operator::start(&env, &ns.name, &["--failpoint-authz-time", "2026-11-30T10:00:00Z"]);
    let token = active_agent(&ns, "clerk").await;
    let window = json!({"days": ["Mon"], "start": "09:00", "end": "17:00", "timeZone": "Europe/Berlin"});
    let office = rule("office-hours", "Allow", &["read"], &["crm:reports/*"]);
    let office = when(office, json!({"timeWindows": [window]}));
    apply_policy(&ns, "hours", json!({"agents": {"names": ["clerk"]}, "rules": [office]})).await;
    let read = ask(&token, "read", "crm:reports/q4");
    let r = wait_decision(&op, &read, "Allow").await;
    assert_eq!(r["rule"], "office-hours");

    // The same operator (same keys and issuer, so the token stays valid) with its clock pinned elsewhere.
    for (at, why) in [
        ("2026-11-30T16:30:00Z", "Monday 17:30 in Berlin is past the end, though 16:30 UTC is not"),
        ("2026-11-29T10:00:00Z", "Sunday"),
    ] {
        op.set_extra(&["--failpoint-authz-time", at]);
        op.restart();
        let r = wait_answer(&op, &read, "the restarted operator to evaluate", evaluated).await;
        assert_eq!(r["decision"], "Deny", "{why}: {r}");
        assert!(reason(&r).contains("no rule allows"), "{why}: {r}");
    }
}

#[tokio::test]
async fn attribute_constraints_allow_and_deny_on_the_request_context() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-attrs").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "refunds").await;
    let small = when(
        rule("small-refunds", "Allow", &["refund"], &["crm:orders/*"]),
        json!({"attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "10000"}]}),
    );
    let no_us = when(
        rule("not-in-us", "Deny", &["refund"], &["crm:orders/*"]),
        json!({"attributes": [{"key": "region", "operator": "In", "values": ["us"]}]}),
    );
    apply_policy(&ns, "refunds", json!({"agents": {"names": ["refunds"]}, "rules": [small, no_us]})).await;
    let refund = |ctx: Value| with_context(ask(&token, "refund", "crm:orders/o-1"), ctx);

    let r = wait_decision(&op, &refund(json!({"amount": 500, "region": "eu"})), "Allow").await;
    assert_eq!(r["rule"], "small-refunds");
    for (ctx, rule, why) in [
        (json!({"amount": 50000, "region": "eu"}), None, "over the limit"),
        (json!({"region": "eu"}), None, "no amount: an Allow does not hold on missing facts"),
        (json!({"amount": 500, "region": "us"}), Some("not-in-us"), "region us"),
        (json!({"amount": 500}), Some("not-in-us"), "no region: a Deny cannot be escaped by leaving it out"),
    ] {
        let r = authorize(&op, &refund(ctx.clone())).await;
        assert_eq!(r["decision"], "Deny", "{why}: {ctx} -> {r}");
        assert_eq!(r["rule"].as_str(), rule, "{why}: {ctx} -> {r}");
    }
}

#[tokio::test]
async fn a_rate_limited_rule_allows_its_quota_then_denies() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-rate").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "searcher").await;
    // An unlimited rule to wait on, so that waiting spends none of the limited rule's quota.
    let probe = rule("probe", "Allow", &["read"], &["crm:contacts/*"]);
    let limited = when(
        rule("search", "Allow", &["search"], &["crm:contacts"]),
        json!({"rateLimit": {"requests": 3, "per": "1h"}}),
    );
    apply_policy(&ns, "quota", json!({"agents": {"names": ["searcher"]}, "rules": [probe, limited]})).await;
    wait_decision(&op, &ask(&token, "read", "crm:contacts/1"), "Allow").await;

    let search = ask(&token, "search", "crm:contacts");
    for n in 1..=3 {
        let r = authorize(&op, &search).await;
        assert_eq!(
            (r["decision"].as_str(), r["rule"].as_str()),
            (Some("Allow"), Some("search")),
            "request {n}: {r}"
        );
    }
    let r = authorize(&op, &search).await;
    assert_eq!(r["decision"], "Deny", "{r}");
    assert_eq!(reason(&r), "rate limit of 3 requests per 3600s exceeded", "{r}");
    assert_eq!(r["rule"], "search");
    assert_eq!(
        authorize(&op, &ask(&token, "read", "crm:contacts/2")).await["decision"],
        "Allow",
        "other rules unaffected"
    );
}

#[tokio::test]
async fn an_audit_mode_policy_allows_and_reports_what_it_would_deny() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-auditmode").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "trial").await;
    let read = rule("read", "Allow", &["read"], &["crm:contacts/*"]);
    let no_delete = rule("no-delete", "Deny", &["delete"], &["crm:contacts/*"]);
    apply_policy(
        &ns,
        "dry-run",
        json!({"agents": {"names": ["trial"]}, "mode": "Audit", "rules": [read, no_delete]}),
    )
    .await;
    let r = wait_answer(&op, &ask(&token, "read", "crm:contacts/1"), "the audit-mode policy", |r| {
        reason(r).contains("dry run")
    })
    .await;
    assert_eq!(r["decision"], "Allow");
    assert!(r.get("auditMode").is_none(), "nothing stricter to report: {r}");

    let r = authorize(&op, &ask(&token, "delete", "crm:contacts/1")).await;
    assert_eq!(r["decision"], "Allow", "audit mode never enforces: {r}");
    let would = &r["auditMode"];
    assert_eq!(would["wouldDecision"], "Deny", "{r}");
    assert_eq!(
        (would["policy"].as_str(), would["rule"].as_str()),
        (Some("dry-run"), Some("no-delete")),
        "{r}"
    );
    let audit_id = r["auditId"].as_str().unwrap().to_owned();
    let recs = wait_records(&op, "the would-deny record", |recs| {
        recs.iter().any(|x| x["details"]["auditId"] == audit_id.as_str())
    })
    .await;
    let rec = recs.iter().find(|x| x["details"]["auditId"] == audit_id.as_str()).unwrap();
    assert_eq!(
        (&rec["details"]["decision"], &rec["details"]["wouldDecision"]),
        (&json!("Allow"), &json!("Deny"))
    );
    assert_eq!(rec["details"]["wouldRule"], "no-delete");
}

#[tokio::test]
async fn suspension_revocation_and_recreation_deny_within_a_second() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-stop").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let first = active_agent(&ns, "bot").await;
    let read_rule = rule("read", "Allow", &["read"], &["crm:contacts/*"]);
    apply_policy(&ns, "read", json!({"agents": {"names": ["bot"]}, "rules": [read_rule]})).await;
    wait_decision(&op, &ask(&first, "read", "crm:contacts/1"), "Allow").await;

    // Suspension: the desired state alone denies, before the controller withdraws anything.
    let lifecycle = |state: &str| Patch::Merge(json!({"spec": {"lifecycle": {"desiredState": state}}}));
    api.patch("bot", &PatchParams::default(), &lifecycle("Suspended")).await.unwrap();
    let (took, r) =
        flip_latency(&op, &ask(&first, "read", "crm:contacts/1"), "Deny", Instant::now(), "suspension").await;
    assert!(took < FLIP_WITHIN, "a suspension took {took:?} to reach decisions");
    assert!(reason(&r).contains("Suspended"), "{r}");
    // The phase changes first and the credentials are withdrawn after it; resume once both happened.
    wait_for("the agent to be Suspended without credentials", WAIT, || async {
        let st = api.get_opt("bot").await.ok().flatten()?.status?;
        (st.phase?.as_str() == "Suspended" && st.credentials.is_none()).then_some(())
    })
    .await;

    // Resumed at once (even within the second of the first token's iat): the suspension ended the first
    // token for good in the operator's ledger, whatever the clocks say.
    api.patch("bot", &PatchParams::default(), &lifecycle("Active")).await.unwrap();
    wait_credentials(&api, "bot").await;
    let second = token(&ns, "bot").await;
    assert_ne!(first, second, "fresh credentials after resuming");
    let read = ask(&second, "read", "crm:contacts/1");
    wait_decision(&op, &read, "Allow").await;
    // The token from before the suspension has not expired, but the suspension took it back: refused.
    let r = authorize(&op, &ask(&first, "read", "crm:contacts/1")).await;
    assert_eq!(r["decision"], "Deny", "{r}");
    assert!(reason(&r).contains("not among the agent's current credentials"), "{r}");

    // A Revocation (the kill switch) denies within a second; deleting it lets the agent resume, with new
    // credentials: the suspension withdrew the ones it had, and those stay refused.
    let revocation: Revocation = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop-bot"},
        "spec": {"target": {"agentRef": {"name": "bot"}}, "mode": "Suspend", "reason": "incident 7"},
    }))
    .unwrap();
    let revocations = ns.api::<Revocation>();
    revocations.create(&PostParams::default(), &revocation).await.unwrap();
    let (took, r) = flip_latency(&op, &read, "Deny", Instant::now(), "revocation").await;
    assert!(took < FLIP_WITHIN, "a Revocation took {took:?} to reach decisions");
    assert_eq!(reason(&r), "agent suspended by Revocation stop-bot", "{r}");
    wait_for("the revoked agent to be Suspended without credentials", WAIT, || async {
        let st = api.get_opt("bot").await.ok().flatten()?.status?;
        (st.phase?.as_str() == "Suspended" && st.credentials.is_none()).then_some(())
    })
    .await;
    revocations.delete("stop-bot", &DeleteParams::default()).await.unwrap();
    wait_credentials(&api, "bot").await;
    let resumed = token(&ns, "bot").await;
    assert_ne!(resumed, second, "fresh credentials after the lift");
    wait_decision(&op, &ask(&resumed, "read", "crm:contacts/1"), "Allow").await;
    let r = authorize(&op, &read).await;
    assert_eq!(r["decision"], "Deny", "the token from before the Revocation stays refused: {r}");
    let read = ask(&resumed, "read", "crm:contacts/1");

    // Recreated under the same name: tokens are bound to the UID, so the old agent's token is refused.
    delete_and_wait(&api, "bot").await;
    let third = active_agent(&ns, "bot").await;
    // Agent watch events arrive in order: once the new agent allows, the old one is gone from the index.
    wait_decision(&op, &ask(&third, "read", "crm:contacts/1"), "Allow").await;
    let r = authorize(&op, &read).await;
    assert_eq!(r["decision"], "Deny", "{r}");
    assert!(reason(&r).contains("no agent with the token's UID"), "{r}");
}

#[tokio::test]
async fn malformed_requests_are_400s_naming_the_problem() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-bad").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let ok = |b: Value| b.to_string().into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed JSON", b"{\"token\": \"x\", \"action\": ".to_vec(), "malformed JSON"),
        ("not an object", b"[1, 2]".to_vec(), "invalid request"),
        (
            "body over 64 KiB",
            ok(json!({"token": "x", "action": "read", "resource": "r",
                      "context": {"pad": "x".repeat(70_000)}})),
            "larger than 65536 bytes",
        ),
        (
            "unknown field",
            ok(json!({"token": "x", "action": "read", "resource": "r", "admin": true})),
            "unknown field `admin`",
        ),
        ("missing token", ok(json!({"action": "read", "resource": "r"})), "token is required"),
        ("missing action", ok(json!({"token": "x", "resource": "r"})), "missing field `action`"),
        ("empty action", ok(json!({"token": "x", "action": "", "resource": "r"})), "action must be"),
        (
            "control character in resource",
            ok(json!({"token": "x", "action": "read", "resource": "a\u{1}b"})),
            "contains the control or invisible character U+0001",
        ),
        (
            "context nested too deep",
            ok(json!({"token": "x", "action": "read", "resource": "r", "context": {"a": [[[[[1]]]]]}})),
            "nested deeper",
        ),
    ];
    for (what, body, needle) in cases {
        let (status, r) = post_authorize(&op, &body).await;
        assert_eq!(status, 400, "{what}: {r}");
        let error = r["error"].as_str().unwrap_or_else(|| panic!("{what}: no error message: {r}"));
        assert!(error.contains(needle), "{what}: {error:?} does not mention {needle:?}");
    }
    // A well-formed request with a garbage token is a question with an answer: Deny.
    let garbage = ask("not.a.jwt", "read", "crm:contacts/1");
    let r = wait_answer(&op, &garbage, "the decision path to be ready", evaluated).await;
    assert_eq!(r["decision"], "Deny", "{r}");
    assert!(reason(&r).contains("invalid token"), "{r}");
    assert!(r["auditId"].as_str().is_some_and(|id| !id.is_empty()), "{r}");
}

/// An ext_authz check: (status, headers, body).
async fn check(
    op: &Operator,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> crate::harness::HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", AUD), ("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    http_request(&op.http_addr, method, &format!("/v1/ext_authz{path}"), &headers, body.as_bytes()).await
}

#[tokio::test]
async fn ext_authz_maps_http_and_mcp_requests_to_decisions() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "authz-ext").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "gw").await;
    let read = rule("read-contacts", "Allow", &["read"], &["crm/contacts/*"]);
    // A tool-only rule: it constrains the tool and its arguments, not the resource.
    let search = json!({"name": "search-tools", "effect": "Allow", "actions": ["tools.call"],
        "tools": ["search_*"],
        "conditions": {"attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "10"}]}});
    apply_policy(&ns, "gateway", json!({"agents": {"names": ["gw"]}, "rules": [read, search]})).await;

    // GET with Host crm is action read on resource crm/contacts/1.
    let (status, headers, _) = wait_for("ext_authz to allow the GET", WAIT, || async {
        let resp = check(&op, "GET", "/contacts/1", Some(&token), "").await;
        (resp.0 == 200).then_some(resp)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-agentiam-decision"], "Allow", "{headers:?}");
    assert_eq!(
        (headers["x-agentiam-policy"].as_str(), headers["x-agentiam-rule"].as_str()),
        ("gateway", "read-contacts")
    );
    assert!(headers.contains_key("x-agentiam-audit-id"), "{headers:?}");

    let (status, headers, _) = check(&op, "DELETE", "/contacts/1", Some(&token), "").await;
    assert_eq!((status, headers["x-agentiam-decision"].as_str()), (403, "Deny"), "{headers:?}");
    let (status, headers, _) = check(&op, "GET", "/contacts/1", None, "").await;
    assert_eq!(
        (status, headers["x-agentiam-decision"].as_str()),
        (403, "Deny"),
        "no Authorization: {headers:?}"
    );
    assert_eq!(headers["x-agentiam-reason"], "no token");

    // MCP: tools/call is action tools.call with the tool and its arguments as the context.
    let call = |tool: &str, amount: u32| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": tool, "arguments": {"amount": amount}}})
        .to_string()
    };
    let (status, headers, body) = check(&op, "POST", "/mcp", Some(&token), &call("search_contacts", 5)).await;
    assert_eq!(status, 200, "{headers:?} {body}");
    assert_eq!(headers["x-agentiam-rule"], "search-tools");
    for (body, why) in [
        (call("delete_all", 5), "a tool no rule names"),
        (call("search_contacts", 50), "an argument over the rule's limit"),
        (format!("[{}]", call("search_contacts", 5)), "a JSON-RPC batch"),
    ] {
        let (status, headers, text) = check(&op, "POST", "/mcp", Some(&token), &body).await;
        assert_eq!(
            (status, headers["x-agentiam-decision"].as_str()),
            (403, "Deny"),
            "{why}: {headers:?} {text}"
        );
    }
    let (_, headers, _) =
        check(&op, "POST", "/mcp", Some(&token), &format!("[{}]", call("search_contacts", 5))).await;
    assert!(headers["x-agentiam-reason"].contains("batches"), "{headers:?}");
    // The MCP decisions are recorded with their source and tool.
    wait_records(&op, "the MCP decision's record", |recs| {
        recs.iter().any(|x| x["details"]["source"] == "mcp" && x["details"]["tool"] == "delete_all")
    })
    .await;
}
