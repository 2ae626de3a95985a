//! The API server refuses invalid objects with a message that names the field. Each table starts from a
//! valid object (applied first, so a broken base cannot make the refusals pass vacuously) and changes one
//! thing.

use serde_json::{Value, json};

use crate::harness::{Env, TestNs, text};
use crate::require_cluster;

/// Sets `value` at a JSON pointer (creating objects on the way; an array index one past the end appends);
/// `Value::Null` removes the field.
fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut cur = &mut base;
    for part in parent.split('/').skip(1) {
        cur = match cur {
            Value::Array(items) => &mut items[part.parse::<usize>().unwrap()],
            other => other.as_object_mut().unwrap().entry(part).or_insert_with(|| json!({})),
        };
    }
    match cur {
        Value::Array(items) => {
            let i: usize = key.parse().unwrap();
            if i == items.len() { items.push(value) } else { items[i] = value }
        }
        other => {
            let obj = other.as_object_mut().unwrap();
            if value.is_null() {
                obj.remove(key);
            } else {
                obj.insert(key.to_owned(), value);
            }
        }
    }
    base
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

/// Applies every case and checks it is refused with all `expected` fragments in the message.
fn assert_refused(env: &Env, ns: &TestNs, base: &Value, cases: &[(&str, Value, &[&str])]) {
    let out = ns.apply(&base.to_string());
    assert!(out.status.success(), "the valid base object was refused: {}", text(&out));
    let mut failures = Vec::new();
    for (what, obj, expected) in cases {
        let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&obj.to_string()));
        let msg = text(&out);
        if out.status.success() {
            failures.push(format!("{what}: accepted"));
        } else if let Some(missing) = expected.iter().find(|e| !msg.contains(**e)) {
            failures.push(format!("{what}: message lacks {missing:?}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "{} case(s) wrong:\n{}", failures.len(), failures.join("\n"));
}

fn agent_spec() -> Value {
    json!({
        "owner": {"kind": "User", "name": "alice@example.com"},
        "purpose": "triages tickets",
        "credentials": {"audiences": ["https://tickets.example.com"], "ttl": "10m"},
        "workload": {"serviceAccountName": "triage"},
    })
}

#[tokio::test]
async fn invalid_agents_are_refused_naming_the_field() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "inv-agent").await;
    let base = object("Agent", "valid", agent_spec());
    let a = |name: &str, spec: Value| object("Agent", name, spec);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("uppercase name", a("Bad_Name", agent_spec()), &["metadata.name"]),
        ("dotted name", a("bad.name", agent_spec()), &["metadata.name must be a DNS-1123 label"]),
        // No "missing owner" here: the schema allows an Agent without one (a shadow agent discovery
        // records); the validating webhook refuses it from anyone but the operator (tests/e2e/discovery.rs).
        (
            "owner kind",
            a("x2", with(agent_spec(), "/owner/kind", json!("Robot"))),
            &["spec.owner.kind", "Unsupported value"],
        ),
        (
            "blank owner",
            a("x3", with(agent_spec(), "/owner/name", json!("  "))),
            &["spec.owner.name must not be blank"],
        ),
        (
            "blank purpose",
            a("x4", with(agent_spec(), "/purpose", json!(" \t "))),
            &["spec.purpose must not be blank"],
        ),
        (
            "missing purpose",
            a("x5", with(agent_spec(), "/purpose", Value::Null)),
            &["spec.purpose", "Required value"],
        ),
        (
            "ttl above 1h",
            a("x6", with(agent_spec(), "/credentials/ttl", json!("2h"))),
            &["spec.credentials.ttl"],
        ),
        (
            "ttl not a duration",
            a("x7", with(agent_spec(), "/credentials/ttl", json!("ten minutes"))),
            &["spec.credentials.ttl"],
        ),
        (
            "repeated audience",
            a("x8", with(agent_spec(), "/credentials/audiences", json!(["a", "a"]))),
            &["spec.credentials.audiences[1]", "Duplicate value"],
        ),
        (
            "empty audience",
            a("x9", with(agent_spec(), "/credentials/audiences", json!([""]))),
            &["spec.credentials.audiences[0]"],
        ),
        (
            "workload without selector",
            a("x10", with(agent_spec(), "/workload", json!({}))),
            &["spec.workload needs serviceAccountName"],
        ),
        (
            "environment",
            a("x11", with(agent_spec(), "/environment", json!("Prod"))),
            &["spec.environment", "Unsupported value"],
        ),
        (
            "desired state",
            a("x12", with(agent_spec(), "/lifecycle", json!({"desiredState": "Paused"}))),
            &["spec.lifecycle.desiredState", "Unsupported value"],
        ),
        (
            "unknown field",
            a("x13", with(agent_spec(), "/model", json!("gpt"))),
            &["unknown field", "spec.model"],
        ),
        (
            "x509 not bool",
            a("x14", with(agent_spec(), "/credentials/x509", json!("yes"))),
            &["spec.credentials.x509"],
        ),
    ];
    assert_refused(&env, &ns, &base, &cases);
}

fn policy_spec() -> Value {
    json!({
        "agents": {"names": ["valid"]},
        "rules": [{"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}],
    })
}

#[tokio::test]
async fn invalid_policies_are_refused_naming_the_field() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "inv-policy").await;
    let p = |name: &str, spec: Value| object("AgentPolicy", name, spec);
    let rule = |field: &str, value: Value| with(policy_spec(), &format!("/rules/0/{field}"), value);
    let cond =
        |field: &str, value: Value| with(policy_spec(), &format!("/rules/0/conditions/{field}"), value);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("no rules", p("p1", with(policy_spec(), "/rules", json!([]))), &["spec.rules"]),
        ("effect", p("p2", rule("effect", json!("Maybe"))), &["spec.rules[0].effect", "Unsupported value"]),
        ("action syntax", p("p3", rule("actions", json!(["read write"]))), &["spec.rules[0].actions[0]"]),
        ("no actions", p("p4", rule("actions", json!([]))), &["spec.rules[0].actions"]),
        ("rule without name", p("p5", rule("name", Value::Null)), &["spec.rules[0].name", "Required value"]),
        (
            "duplicate rule names",
            p("p6", with(policy_spec(), "/rules/1", policy_spec()["rules"][0].clone())),
            &["spec.rules[1]", "Duplicate value"],
        ),
        (
            "no selection",
            p("p7", with(policy_spec(), "/agents", json!({}))),
            &["spec.agents needs names, selector, or both"],
        ),
        (
            "time window",
            p("p8", cond("timeWindows", json!([{"start": "25:00", "end": "17:00"}]))),
            &["spec.rules[0].conditions.timeWindows[0].start"],
        ),
        (
            "In without values",
            p("p9", cond("attributes", json!([{"key": "amount", "operator": "In", "value": "1"}]))),
            &["spec.rules[0].conditions.attributes[0]", "In and NotIn take values"],
        ),
        (
            "rate limit",
            p("p10", cond("rateLimit", json!({"requests": 10, "per": "forever"}))),
            &["rateLimit.per must be a duration"],
        ),
        (
            "trust score",
            p("p11", cond("minTrustScore", json!(1001))),
            &["spec.rules[0].conditions.minTrustScore"],
        ),
        ("approval", p("p12", cond("approval", json!("maybe"))), &["spec.rules[0].conditions.approval"]),
        (
            "ttl cap",
            p("p13", with(policy_spec(), "/credentialTTLCap", json!("3h"))),
            &["spec.credentialTTLCap"],
        ),
        (
            "mode",
            p("p14", with(policy_spec(), "/mode", json!("DryRun"))),
            &["spec.mode", "Unsupported value"],
        ),
        (
            "rule without target",
            p("p15", rule("resources", json!([]))),
            &["spec.rules[0]", "a rule needs at least one resource or tool"],
        ),
    ];
    assert_refused(&env, &ns, &object("AgentPolicy", "valid", policy_spec()), &cases);
}

fn delegation_spec() -> Value {
    json!({"agentRef": {"name": "valid"}, "scopes": ["refund@pay:orders/*"], "task": "weekend refunds", "ttl": "8h"})
}

#[tokio::test]
async fn invalid_delegations_are_refused_naming_the_field() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "inv-dlg").await;
    let d = |name: &str, spec: Value| object("Delegation", name, spec);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "ttl and expiresAt",
            d("d1", with(delegation_spec(), "/expiresAt", json!("2030-01-01T00:00:00Z"))),
            &["exactly one of spec.ttl and spec.expiresAt"],
        ),
        (
            "neither",
            d("d2", with(delegation_spec(), "/ttl", Value::Null)),
            &["exactly one of spec.ttl and spec.expiresAt"],
        ),
        ("no scopes", d("d3", with(delegation_spec(), "/scopes", json!([]))), &["spec.scopes"]),
        (
            "scope syntax",
            d("d4", with(delegation_spec(), "/scopes", json!(["pay ments"]))),
            &["spec.scopes[0]"],
        ),
        (
            "repeated scope",
            d("d5", with(delegation_spec(), "/scopes", json!(["read@a", "read@a"]))),
            &["spec.scopes[1]", "Duplicate value"],
        ),
        (
            "scope without an action",
            d("d10", with(delegation_spec(), "/scopes", json!(["payments:refund"]))),
            &["spec.scopes[0]"],
        ),
        ("ttl too long", d("d6", with(delegation_spec(), "/ttl", json!("1000h"))), &["spec.ttl"]),
        (
            "expiresAt syntax",
            d("d7", with(with(delegation_spec(), "/ttl", Value::Null), "/expiresAt", json!("tomorrow"))),
            &["spec.expiresAt"],
        ),
        (
            "blank task",
            d("d8", with(delegation_spec(), "/task", json!("  "))),
            &["spec.task must not be blank"],
        ),
        (
            "missing agent",
            d("d9", with(delegation_spec(), "/agentRef", Value::Null)),
            &["spec.agentRef", "Required value"],
        ),
        (
            "changing a grant",
            d("valid", with(delegation_spec(), "/scopes", json!(["payments:refund", "payments:charge"]))),
            &["a Delegation is immutable"],
        ),
    ];
    assert_refused(&env, &ns, &object("Delegation", "valid", delegation_spec()), &cases);
}

fn revocation_spec() -> Value {
    json!({"target": {"agentRef": {"name": "valid"}}, "mode": "Suspend", "reason": "incident INC-42"})
}

#[tokio::test]
async fn invalid_revocations_are_refused_naming_the_field() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "inv-rvk").await;
    let r = |name: &str, spec: Value| object("Revocation", name, spec);
    let target = |t: Value| with(revocation_spec(), "/target", t);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "two targets",
            r("r1", target(json!({"agentRef": {"name": "a"}, "all": true}))),
            &["spec.target needs exactly one"],
        ),
        ("no target", r("r2", target(json!({}))), &["spec.target needs exactly one"]),
        ("all: false only", r("r3", target(json!({"all": false}))), &["spec.target needs exactly one"]),
        (
            "mode",
            r("r4", with(revocation_spec(), "/mode", json!("Kill"))),
            &["spec.mode", "Unsupported value"],
        ),
        (
            "blank reason",
            r("r5", with(revocation_spec(), "/reason", json!(" "))),
            &["spec.reason must not be blank"],
        ),
        (
            "missing reason",
            r("r6", with(revocation_spec(), "/reason", Value::Null)),
            &["spec.reason", "Required value"],
        ),
        (
            "changing a revocation",
            r("valid", with(revocation_spec(), "/mode", json!("Revoke"))),
            &["a Revocation is immutable"],
        ),
    ];
    assert_refused(&env, &ns, &object("Revocation", "valid", revocation_spec()), &cases);
}

#[tokio::test]
async fn valid_objects_of_every_kind_round_trip_unchanged() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "roundtrip").await;
    let full_policy = json!({
        "agents": {"names": ["a"], "selector": {"matchLabels": {"team": "x"}}},
        "mode": "Audit",
        "credentialTTLCap": "5m",
        "rules": [{
            "name": "r", "effect": "Allow", "actions": ["refund"], "resources": ["payments:orders/**"], "tools": ["pay.refund"],
            "conditions": {
                "timeWindows": [{"days": ["Mon", "Fri"], "start": "22:00", "end": "06:00", "timeZone": "Europe/Berlin"}],
                "minTrustScore": 600, "delegationScope": "refund@payments:orders/**",
                "delegationGrantors": {"users": ["alice@example.com"], "groups": ["support"]},
                "attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "100"},
                               {"key": "region", "operator": "In", "values": ["eu", "us"]}],
                "rateLimit": {"requests": 5, "per": "1m"}, "approval": "required",
                "approvers": {"users": ["bob@example.com"], "groups": ["payments-leads"], "timeout": "10m",
                              "validFor": "2m", "uses": 2, "fourEyes": true}
            }
        }]
    });
    for (kind, name, spec) in [
        ("AgentPolicy", "full", full_policy),
        (
            "Delegation",
            "child",
            with(with(delegation_spec(), "/parentRef", json!({"name": "root"})), "/ttl", json!("30m")),
        ),
        ("Revocation", "sel", target_selector()),
        ("Agent", "full", with(agent_spec(), "/provenance", json!({"model": "m", "image": "r/a:1"}))),
    ] {
        let obj = object(kind, name, spec.clone());
        let out = ns.apply(&obj.to_string());
        assert!(out.status.success(), "{kind}: {}", text(&out));
        let got = env.kubectl(&["get", &kind.to_lowercase(), name, "-n", &ns.name, "-o", "json"], None);
        let served: Value = serde_json::from_slice(&got.stdout).unwrap();
        let mut expected = spec;
        // Defaults the API server fills in.
        if kind == "Agent" {
            expected["environment"] = json!("Production");
            expected["credentials"]["x509"] = json!(false);
        }
        assert_eq!(served["spec"], expected, "{kind} did not round-trip");
    }
}

fn target_selector() -> Value {
    with(
        revocation_spec(),
        "/target",
        json!({"selector": {"matchLabels": {"agentiam.dev/quarantine": "true"}}}),
    )
}
