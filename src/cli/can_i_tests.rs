//! Tests of `can-i`'s pure parts: arguments, context typing, deciding from a snapshot, rendering, exit codes.

use std::sync::Arc;

use clap::Parser;
use serde_json::json;

use super::*;
use crate::authz::Reason;

const AT: &str = "2026-11-30T10:00:00Z";

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: CanIArgs,
}

fn parse(args: &[&str]) -> Result<CanIArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("can-i").chain(args.iter().copied())).map(|c| c.args)
}

fn agent(name: &str, phase: &str) -> Arc<Agent> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"team": "sales"}},
            "spec": {"owner": {"kind": "Team", "name": "t"}, "purpose": "p"},
            "status": {"phase": phase, "trustScore": 700},
        }))
        .unwrap(),
    )
}

fn policy(name: &str, mode: &str, rules: Value) -> Arc<AgentPolicy> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"agents": {"names": ["bot"]}, "mode": mode, "rules": rules},
        }))
        .unwrap(),
    )
}

fn snapshot(policies: &[Arc<AgentPolicy>]) -> Snapshot {
    Builder::default().build(&[agent("bot", "Active")], policies, &[])
}

fn ask_at(
    snapshot: &Snapshot,
    action: &str,
    resource: &str,
    tool: Option<&str>,
    context: &[&str],
    at: &str,
) -> Answer {
    let pairs: Vec<(String, Value)> = context.iter().map(|p| parse_context_pair(p).unwrap()).collect();
    let context = context_map(&pairs);
    let request = Request { action, resource, tool, context: &context, delegation: None, probe: false };
    answer(snapshot, "ns", "bot", &request, at.parse().unwrap()).unwrap()
}

fn ask(snapshot: &Snapshot, action: &str, resource: &str) -> Answer {
    ask_at(snapshot, action, resource, None, &[], AT)
}

fn crm() -> Snapshot {
    snapshot(&[
        policy(
            "crm",
            "Enforce",
            json!([
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]},
            {"name": "pay", "effect": "Allow", "actions": ["pay"], "resources": ["pay:*"],
             "conditions": {"approval": "required", "approvers": {"users": ["bob"]}}},
            {"name": "no-export", "effect": "Deny", "actions": ["export"], "resources": ["crm:**"]}]),
        ),
        policy(
            "watch",
            "Audit",
            json!([
            {"name": "no-vip", "effect": "Deny", "actions": ["read"], "resources": ["crm:contacts/vip"]}]),
        ),
    ])
}

// ---- arguments ----

#[test]
fn arguments_parse_with_repeated_context_and_every_option() {
    let args = parse(&[
        "bot",
        "tools.call",
        "mcp:crm/x",
        "--tool",
        "search",
        "--context",
        "amount=250",
        "--context",
        "customer.region=eu",
        "-n",
        "team-a",
        "--at",
        "2026-12-05T12:00:00+01:00",
        "-o",
        "json",
    ])
    .unwrap();
    assert_eq!(
        (args.agent.as_str(), args.action.as_str(), args.resource.as_str()),
        ("bot", "tools.call", "mcp:crm/x")
    );
    assert_eq!(args.tool.as_deref(), Some("search"));
    assert_eq!(args.context, vec![("amount".into(), json!(250)), ("customer.region".into(), json!("eu"))]);
    assert_eq!(args.namespace.as_deref(), Some("team-a"));
    assert_eq!(args.at, Some("2026-12-05T11:00:00Z".parse().unwrap()));
    assert_eq!(args.output, Format::Json);

    let defaults = parse(&["bot", "read", "crm:x"]).unwrap();
    assert_eq!((defaults.namespace, defaults.at, defaults.output), (None, None, Format::Text));
    assert!(defaults.context.is_empty());
}

#[test]
fn malformed_arguments_are_usage_errors_that_exit_2() {
    for bad in [
        &["bot", "read", "x", "--context", "amount"][..],
        &["bot", "read", "x", "--context", "=5"],
        &["bot", "read", "x", "--at", "2026-11-30T10:00:00"],
        &["bot", "read", "x", "-o", "yaml"],
        &["bot", "read"],
    ] {
        let e = parse(bad).unwrap_err();
        assert_eq!(e.exit_code(), i32::from(EXIT_ERROR), "{bad:?}");
    }
    let e = parse(&["bot", "read", "x", "--context", "amount"]).unwrap_err().to_string();
    assert!(e.contains("expected KEY=VALUE"), "{e}");
    let e = parse(&["bot", "read", "x", "--at", "tomorrow"]).unwrap_err().to_string();
    assert!(e.contains("RFC 3339"), "{e}");
}

#[test]
fn context_values_are_typed_and_keys_kept_flat() {
    fn value(pair: &str) -> Value {
        parse_context_pair(pair).unwrap().1
    }
    assert_eq!(value("a=500"), json!(500));
    assert_eq!(value("a=-3"), json!(-3));
    assert_eq!(value("a=2.5"), json!(2.5));
    assert_eq!(value("a=1e3"), json!(1000.0));
    assert_eq!(value("a=true"), json!(true));
    assert_eq!(value("a=false"), json!(false));
    assert_eq!(value("a=True"), json!("True"), "only the JSON spellings are booleans");
    assert_eq!(value("a=eu"), json!("eu"));
    assert_eq!(value("a="), json!(""));
    assert_eq!(value("a=x=y"), json!("x=y"), "the first '=' splits");
    for not_finite in ["inf", "NaN", "-infinity", "1e999"] {
        assert_eq!(value(&format!("a={not_finite}")), json!(not_finite));
    }
    assert_eq!(parse_context_pair("customer.region=eu").unwrap().0, "customer.region");
    assert!(parse_context_pair("no-equals").unwrap_err().contains("expected KEY=VALUE"));
    assert!(parse_context_pair(" =x").unwrap_err().contains("empty key"));

    let pairs = [("a".to_owned(), json!(1)), ("b".to_owned(), json!(2)), ("a".to_owned(), json!(3))];
    assert_eq!(Value::Object(context_map(&pairs)), json!({"a": 3, "b": 2}), "the last repeat wins");
}

// ---- decisions, text and exit codes ----

#[test]
fn allow_prints_yes_with_the_deciding_policy_and_rule() {
    let a = ask(&crm(), "read", "crm:contacts/1");
    assert_eq!(a.to_text(), "yes\ndecision: Allow\nreason: allowed by rule\npolicy: crm\nrule: read\n");
    assert_eq!(a.exit_code(), EXIT_ALLOWED);
}

#[test]
fn deny_prints_no_and_exits_1() {
    let s = crm();
    let a = ask(&s, "export", "crm:contacts/1");
    assert_eq!(a.to_text(), "no\ndecision: Deny\nreason: denied by rule\npolicy: crm\nrule: no-export\n");
    assert_eq!(a.exit_code(), EXIT_DENIED);

    // Default deny names no policy or rule.
    let a = ask(&s, "delete", "crm:contacts/1");
    assert_eq!(a.to_text(), "no\ndecision: Deny\nreason: no rule allows this action (default deny)\n");
    assert_eq!(a.exit_code(), EXIT_DENIED);
}

#[test]
fn approval_prints_approval_required_and_exits_1() {
    let a = ask(&crm(), "pay", "pay:card");
    assert_eq!(
        a.to_text(),
        "approval required\ndecision: RequireApproval\nreason: allowed by a rule that requires human approval\n\
         policy: crm\nrule: pay\n"
    );
    assert_eq!(a.exit_code(), EXIT_DENIED);
}

#[test]
fn audit_mode_reports_what_it_would_decide_but_allows() {
    let a = ask(&crm(), "read", "crm:contacts/vip");
    assert_eq!(
        a.to_text(),
        "yes\ndecision: Allow\nreason: allowed by rule\npolicy: crm\nrule: read\n\
         audit mode: would be Deny (policy watch, rule no-vip: denied by rule)\n"
    );
    assert_eq!(a.exit_code(), EXIT_ALLOWED);

    // Governed only by an Audit-mode policy: a dry run, whose would-be default deny names no rule.
    let s = snapshot(&[policy(
        "watch",
        "Audit",
        json!([
        {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:**"]}]),
    )]);
    let a = ask(&s, "delete", "crm:x");
    assert_eq!(
        a.to_text(),
        "yes\ndecision: Allow\nreason: only Audit-mode policies govern this agent: allowed as a dry run\n\
         audit mode: would be Deny (no rule allows this action (default deny))\n"
    );
    assert_eq!(a.exit_code(), EXIT_ALLOWED);
}

#[test]
fn context_tool_and_time_reach_the_engine() {
    let s = snapshot(&[policy(
        "p",
        "Enforce",
        json!([
        {"name": "refund", "effect": "Allow", "actions": ["tools.call"], "resources": ["mcp:pay/**"],
         "tools": ["create_refund"],
         "conditions": {
             "attributes": [
                 {"key": "amount", "operator": "LessThanOrEqual", "value": "1000"},
                 {"key": "customer.region", "operator": "Equals", "value": "eu"}],
             "timeWindows": [{"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "17:00",
                              "timeZone": "UTC"}]}}]),
    )]);
    let ask = |tool, context: &[&str], at| {
        ask_at(&s, "tools.call", "mcp:pay/refunds", tool, context, at).decision.verdict
    };
    let ok = ["amount=250", "customer.region=eu"];
    assert_eq!(ask(Some("create_refund"), &ok, AT), Verdict::Allow);
    assert_eq!(ask(None, &ok, AT), Verdict::Deny, "a rule that lists tools needs one");
    assert_eq!(ask(Some("create_refund"), &["amount=5000", "customer.region=eu"], AT), Verdict::Deny);
    assert_eq!(ask(Some("create_refund"), &["amount=250"], AT), Verdict::Deny, "missing attribute");
    assert_eq!(ask(Some("create_refund"), &ok, "2026-12-05T12:00:00Z"), Verdict::Deny, "--at on a Saturday");
}

#[test]
fn the_rate_limit_note_appears_when_a_governing_limit_could_deny() {
    let s = snapshot(&[policy(
        "p",
        "Enforce",
        json!([
        {"name": "send", "effect": "Allow", "actions": ["send"], "resources": ["mail:*"],
         "conditions": {"rateLimit": {"requests": 1, "per": "1m"}}}]),
    )]);
    // Fresh counters every time: asking twice never runs out.
    for _ in 0..2 {
        let a = ask(&s, "send", "mail:x");
        assert_eq!(a.decision.verdict, Verdict::Allow);
        assert!(a.to_text().ends_with(&format!("rule: send\n{RATE_LIMIT_NOTE}\n")), "{}", a.to_text());
    }
    assert!(!ask(&s, "delete", "mail:x").to_text().contains(RATE_LIMIT_NOTE), "a Deny stays a Deny");
    assert!(!ask(&crm(), "read", "crm:contacts/1").to_text().contains(RATE_LIMIT_NOTE), "no limits");
}

#[test]
fn agent_state_denies_before_rules() {
    let p = policy(
        "p",
        "Enforce",
        json!([{"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let s = Builder::default().build(&[agent("bot", "Suspended")], &[p], &[]);
    let a = ask(&s, "read", "x");
    assert_eq!(a.decision.reason, Reason::NotActive(Some(crate::api::AgentPhase::Suspended)));
    assert_eq!(a.to_text(), "no\ndecision: Deny\nreason: agent is Suspended, not Active\n");
}

#[test]
fn a_missing_agent_is_an_error_naming_it() {
    let context = Map::new();
    let request = Request {
        action: "read",
        resource: "x",
        tool: None,
        context: &context,
        delegation: None,
        probe: false,
    };
    let e = answer(&crm(), "ns", "ghost", &request, AT.parse().unwrap()).unwrap_err();
    assert!(matches!(e, CanIError::AgentNotFound { .. }));
    assert_eq!(e.to_string(), "agent ns/ghost not found");
}

// ---- JSON ----

#[test]
fn json_has_the_decision_its_provenance_and_the_audit_verdict() {
    let s = crm();
    let a = ask(&s, "read", "crm:contacts/vip");
    let out = a.render(Format::Json).unwrap();
    assert!(out.ends_with('\n'));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({
            "decision": "Allow", "reason": "allowed by rule", "policy": "crm", "rule": "read",
            "would": {"decision": "Deny", "reason": "denied by rule", "policy": "watch", "rule": "no-vip"},
            "agent": "ns/bot", "resource": "crm:contacts/vip", "at": AT,
        })
    );

    let v = ask(&s, "delete", "crm:x").to_json();
    assert_eq!(
        v,
        json!({
            "decision": "Deny", "reason": "no rule allows this action (default deny)", "policy": null,
            "rule": null, "would": null, "agent": "ns/bot", "resource": "crm:x", "at": AT,
        })
    );
    assert_eq!(
        ask(&s, "read", "crm:contacts/1").render(Format::Text).unwrap(),
        ask(&s, "read", "crm:contacts/1").to_text()
    );
}

#[test]
fn resources_follow_the_operators_grammar() {
    let s = crm();
    // A dot segment once matched crm:contacts/* here and printed "yes"; the operator refuses it.
    let context = Map::new();
    for bad in ["crm:contacts/..", "crm:contacts/%2e%2e", "crm:contacts\\..", "crm:contacts//x"] {
        let request = Request {
            action: "read",
            resource: bad,
            tool: None,
            context: &context,
            delegation: None,
            probe: false,
        };
        let e = answer(&s, "ns", "bot", &request, AT.parse().unwrap()).unwrap_err();
        assert!(matches!(e, CanIError::Resource { .. }), "{bad:?}: {e}");
        assert!(e.to_string().starts_with(&format!("resource {bad:?} ")), "{e}");
    }
    // Canonicalised like the operator does: decided, and reported, in canonical form.
    let a = ask(&s, "read", "crm:contacts/%34%32");
    assert_eq!((a.decision.verdict, a.resource.as_str()), (Verdict::Allow, "crm:contacts/42"));
    assert_eq!(ask(&s, "read", "crm:contacts/").decision.verdict, Verdict::Deny, "no empty last segment");
}
