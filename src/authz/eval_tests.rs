//! Unit and property tests of matching and precedence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::api::{Agent, AgentPolicy, Revocation};
use crate::registry::ledger::{AgentRecord, Issuance, IssuedToken, Stored};

/// The audience of the tokens the tests present.
const AUD: &str = "tests";
/// Their lifetime (the default a trust score of 700 gets).
const LIFETIME: Duration = Duration::from_secs(600);

/// What the operator recorded about an agent: here, what its status says (tests of the record's own
/// authority build one by hand), and one live issuance holding `jti-<name>` for [`AUD`].
fn recorded(a: &Agent, now: jiff::Timestamp) -> AgentRecord {
    let status = a.status.clone().unwrap_or_default();
    let jti = format!("jti-{}", a.metadata.name.as_deref().unwrap_or_default());
    AgentRecord {
        phase: status.phase,
        trust_score: status.trust_score,
        issuances: vec![issuance(now, vec![IssuedToken { aud: AUD.into(), jti }])],
        ..AgentRecord::default()
    }
}

fn issuance(now: jiff::Timestamp, tokens: Vec<IssuedToken>) -> Issuance {
    Issuance {
        key: "credential.issue:u:0".into(),
        issued_at: now,
        expires_at: now.checked_add(jiff::SignedDuration::from_hours(24)).unwrap(),
        ttl_secs: 600,
        key_id: "k1".into(),
        fingerprint: None,
        audiences: tokens.iter().map(|t| t.aud.clone()).collect(),
        tokens,
        x509: false,
        x509_serial: None,
        stored: Stored::Yes,
    }
}

fn agent(name: &str, labels: Value, phase: &str, trust: u16) -> Arc<Agent> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"owner": {"kind": "Team", "name": "t"}, "purpose": "p",
                     "credentials": {"audiences": [AUD]}},
            "status": {"phase": phase, "trustScore": trust},
        }))
        .unwrap(),
    )
}

fn policy(name: &str, mode: &str, agents: Value, rules: Value) -> Arc<AgentPolicy> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"agents": agents, "mode": mode, "rules": rules},
        }))
        .unwrap(),
    )
}

fn revocation(name: &str, target: Value) -> Arc<Revocation> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"target": target, "mode": "Suspend", "reason": "incident"},
        }))
        .unwrap(),
    )
}

struct World {
    snapshot: Snapshot,
    records: std::collections::HashMap<String, AgentRecord>,
    limiter: RateLimiter,
    clock: Clock,
}

impl World {
    fn new(agents: &[Arc<Agent>], policies: &[Arc<AgentPolicy>], revocations: &[Arc<Revocation>]) -> Self {
        let snapshot = Builder::default().build(agents, policies, revocations);
        let clock = Clock { now: "2026-11-30T10:00:00Z".parse().unwrap(), instant: Instant::now() };
        let records = agents
            .iter()
            .map(|a| (a.metadata.uid.clone().unwrap_or_default(), recorded(a, clock.now)))
            .collect();
        Self { snapshot, records, limiter: RateLimiter::default(), clock }
    }

    fn ask(&self, agent: &str, action: &str, resource: &str, tool: Option<&str>, context: Value) -> Decision {
        let jti = format!("jti-{agent}");
        self.ask_with(agent, &jti, AUD, Some(LIFETIME), action, resource, tool, context)
    }

    #[allow(clippy::too_many_arguments)]
    fn ask_with(
        &self,
        agent: &str,
        jti: &str,
        audience: &str,
        lifetime: Option<Duration>,
        action: &str,
        resource: &str,
        tool: Option<&str>,
        context: Value,
    ) -> Decision {
        let context: Map<String, Value> = context.as_object().cloned().unwrap_or_default();
        let uid = format!("uid-{agent}");
        let subject = Subject { uid: &uid, namespace: "ns", name: agent, jti, audience, lifetime };
        let request = Request { action, resource, tool, context: &context, delegation: None, probe: false };
        self.snapshot.decide(subject, self.records.get(&uid), &request, self.clock, &self.limiter)
    }

    /// A probe (could some context be allowed?) of `tool` for `bot`, without a context.
    fn probe(&self, action: &str, resource: &str, tool: Option<&str>) -> Verdict {
        let (uid, context) = ("uid-bot".to_owned(), Map::new());
        let subject = Subject {
            uid: &uid,
            namespace: "ns",
            name: "bot",
            jti: "jti-bot",
            audience: AUD,
            lifetime: Some(LIFETIME),
        };
        let request = Request { action, resource, tool, context: &context, delegation: None, probe: true };
        self.snapshot.decide(subject, self.records.get(&uid), &request, self.clock, &self.limiter).verdict
    }

    fn verdict(&self, action: &str, resource: &str) -> Verdict {
        self.ask("bot", action, resource, None, json!({})).verdict
    }
}

fn bot() -> Arc<Agent> {
    agent("bot", json!({"team": "sales"}), "Active", 700)
}

#[test]
fn default_deny_without_policies_or_matching_rules() {
    let w = World::new(&[bot()], &[], &[]);
    let d = w.ask("bot", "read", "crm:contacts/1", None, json!({}));
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::NoPolicy));
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}]),
    );
    let w = World::new(&[bot()], &[p], &[]);
    assert_eq!(w.verdict("read", "crm:contacts/1"), Verdict::Allow);
    let d = w.ask("bot", "delete", "crm:contacts/1", None, json!({}));
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::NoMatchingRule));
    assert_eq!(w.verdict("read", "crm:leads/1"), Verdict::Deny);
}

#[test]
fn deny_beats_allow_across_policies_and_names_the_rule() {
    let allow = policy(
        "a-allow",
        "Enforce",
        json!({"selector": {"matchLabels": {"team": "sales"}}}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["crm:**"]}]),
    );
    let deny = policy(
        "b-deny",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "no-export", "effect": "Deny", "actions": ["export"], "resources": ["crm:contacts/**"]}]),
    );
    let w = World::new(&[bot()], &[allow, deny], &[]);
    let d = w.ask("bot", "export", "crm:contacts/1", None, json!({}));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!((d.policy.as_deref(), d.rule.as_deref()), (Some("b-deny"), Some("no-export")));
    let d = w.ask("bot", "read", "crm:contacts/1", None, json!({}));
    assert_eq!(
        (d.verdict, d.policy.as_deref(), d.rule.as_deref()),
        (Verdict::Allow, Some("a-allow"), Some("all"))
    );
}

#[test]
fn policies_only_govern_the_agents_they_select() {
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["other"]}),
        json!([
        {"name": "r", "effect": "Allow", "actions": ["read"], "resources": ["x"]}]),
    );
    let w = World::new(&[bot(), agent("other", json!({}), "Active", 700)], &[p], &[]);
    assert_eq!(w.verdict("read", "x"), Verdict::Deny);
    assert_eq!(w.ask("other", "read", "x", None, json!({})).verdict, Verdict::Allow);
    assert_eq!(w.snapshot.policies()[0].matched_agents, 1);
}

#[test]
fn tools_constrain_only_requests_with_tools() {
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "search", "effect": "Allow", "actions": ["tools.call"], "tools": ["search_*"]},
        {"name": "mcp", "effect": "Allow", "actions": ["tools.call"], "resources": ["mcp:crm/**"], "tools": ["get_contact"]}]),
    );
    let w = World::new(&[bot()], &[p], &[]);
    let ask = |resource, tool| w.ask("bot", "tools.call", resource, tool, json!({})).verdict;
    assert_eq!(ask("mcp:anything", Some("search_contacts")), Verdict::Allow);
    assert_eq!(ask("mcp:anything", Some("delete_contacts")), Verdict::Deny);
    assert_eq!(
        ask("mcp:anything", None),
        Verdict::Deny,
        "a tool rule never matches a request without a tool"
    );
    assert_eq!(ask("mcp:crm/x", Some("get_contact")), Verdict::Allow);
    assert_eq!(ask("mcp:erp/x", Some("get_contact")), Verdict::Deny, "resource and tool must both match");
}

#[test]
fn trust_score_time_windows_and_attributes() {
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "trusted", "effect": "Allow", "actions": ["write"], "resources": ["crm:x"],
         "conditions": {"minTrustScore": 800}},
        {"name": "hours", "effect": "Allow", "actions": ["read"], "resources": ["crm:x"],
         "conditions": {"timeWindows": [{"days": ["Mon"], "start": "09:00", "end": "17:00", "timeZone": "Europe/Berlin"}]}},
        {"name": "refund", "effect": "Allow", "actions": ["refund"], "resources": ["pay:orders/*"],
         "conditions": {"attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "10000"}]}},
        {"name": "no-us", "effect": "Deny", "actions": ["refund"], "resources": ["pay:orders/*"],
         "conditions": {"attributes": [{"key": "region", "operator": "In", "values": ["us"]}]}}]),
    );
    let mut w = World::new(&[bot()], &[p], &[]);
    assert_eq!(w.verdict("write", "crm:x"), Verdict::Deny, "trust 700 < 800");
    assert_eq!(w.verdict("read", "crm:x"), Verdict::Allow, "Monday 11:00 Berlin");
    w.clock.now = "2026-11-30T17:00:00Z".parse().unwrap();
    assert_eq!(w.verdict("read", "crm:x"), Verdict::Deny, "Monday 18:00 Berlin");
    let refund = |ctx| w.ask("bot", "refund", "pay:orders/1", None, ctx).verdict;
    assert_eq!(refund(json!({"amount": 500, "region": "eu"})), Verdict::Allow);
    assert_eq!(refund(json!({"amount": 50000, "region": "eu"})), Verdict::Deny);
    assert_eq!(refund(json!({"amount": 500, "region": "us"})), Verdict::Deny);
    assert_eq!(refund(json!({"region": "eu"})), Verdict::Deny, "missing amount grants nothing");
    assert_eq!(refund(json!({"amount": 500})), Verdict::Deny, "missing region cannot escape the Deny");
}

#[test]
fn a_probe_counts_conditions_it_cannot_judge_as_possible_and_charges_no_rate_limit() {
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "small-refunds", "effect": "Allow", "actions": ["tools.call"], "tools": ["refund"],
         "conditions": {"attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "500"}]}},
        {"name": "no-us", "effect": "Deny", "actions": ["tools.call"], "tools": ["refund"],
         "conditions": {"attributes": [{"key": "region", "operator": "In", "values": ["us"]}]}},
        {"name": "never", "effect": "Deny", "actions": ["tools.call"], "tools": ["wipe"]},
        {"name": "search", "effect": "Allow", "actions": ["tools.call"], "tools": ["search_*", "wipe"],
         "conditions": {"rateLimit": {"requests": 1, "per": "1h"}}}]),
    );
    let w = World::new(&[bot()], &[p], &[]);
    let (call, mcp) = ("tools.call", "crm-mcp/mcp");
    // The calls themselves: no amount, no refund; the probe: some amount could be allowed.
    assert_eq!(w.ask("bot", call, mcp, Some("refund"), json!({})).verdict, Verdict::Deny);
    assert_eq!(w.probe(call, mcp, Some("refund")), Verdict::Allow, "a Deny on some regions hides nothing");
    assert_eq!(w.probe(call, mcp, Some("wipe")), Verdict::Deny, "an unconditional Deny hides the tool");
    assert_eq!(w.probe(call, mcp, Some("delete_all")), Verdict::Deny, "no rule names it");
    // Probes never use up the rate limit: the one call an hour is still there after many.
    for _ in 0..5 {
        assert_eq!(w.probe(call, mcp, Some("search_contacts")), Verdict::Allow);
    }
    assert_eq!(w.ask("bot", call, mcp, Some("search_contacts"), json!({})).verdict, Verdict::Allow);
    assert_eq!(
        w.ask("bot", call, mcp, Some("search_contacts"), json!({})).verdict,
        Verdict::Deny,
        "now used"
    );
}

#[test]
fn rate_limits_deny_beyond_the_limit_per_agent() {
    let p = policy(
        "p",
        "Enforce",
        json!({"selector": {}}),
        json!([
        {"name": "limited", "effect": "Allow", "actions": ["send"], "resources": ["mail:*"],
         "conditions": {"rateLimit": {"requests": 2, "per": "1m"}}}]),
    );
    let mut w = World::new(&[bot(), agent("b2", json!({}), "Active", 700)], &[p], &[]);
    assert_eq!(w.verdict("send", "mail:x"), Verdict::Allow);
    assert_eq!(w.verdict("send", "mail:x"), Verdict::Allow);
    let d = w.ask("bot", "send", "mail:x", None, json!({}));
    assert_eq!(
        (d.verdict, d.reason.clone()),
        (Verdict::Deny, Reason::RateLimited { requests: 2, per_secs: 60 })
    );
    assert_eq!(d.rule.as_deref(), Some("limited"));
    assert_eq!(w.ask("b2", "send", "mail:x", None, json!({})).verdict, Verdict::Allow, "per agent");
    w.clock.instant += Duration::from_secs(31);
    assert_eq!(w.verdict("send", "mail:x"), Verdict::Allow, "one token back after 30 s");
}

#[test]
fn approval_turns_allow_into_require_approval_but_deny_still_wins() {
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "pay", "effect": "Allow", "actions": ["pay"], "resources": ["pay:*"], "conditions": {"approval": "required", "approvers": {"users": ["bob"]}}},
        {"name": "pay-small", "effect": "Allow", "actions": ["pay"], "resources": ["pay:*"]},
        {"name": "no-crypto", "effect": "Deny", "actions": ["pay"], "resources": ["pay:crypto"]}]),
    );
    let w = World::new(&[bot()], &[p], &[]);
    let d = w.ask("bot", "pay", "pay:card", None, json!({}));
    assert_eq!((d.verdict, d.rule.as_deref()), (Verdict::RequireApproval, Some("pay")));
    assert_eq!(w.verdict("pay", "pay:crypto"), Verdict::Deny);
}

#[test]
fn audit_mode_reports_would_deny_but_allows() {
    let enforce = policy(
        "enforce",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let audit = policy(
        "audit",
        "Audit",
        json!({"names": ["bot"]}),
        json!([
        {"name": "no-delete", "effect": "Deny", "actions": ["delete"], "resources": ["**"]}]),
    );
    let w = World::new(&[bot()], &[enforce.clone(), audit.clone()], &[]);
    let d = w.ask("bot", "delete", "crm:x", None, json!({}));
    assert_eq!(d.verdict, Verdict::Allow);
    let would = d.would.expect("would-deny reported");
    assert_eq!(
        (would.verdict, would.policy.as_deref(), would.rule.as_deref()),
        (Verdict::Deny, Some("audit"), Some("no-delete"))
    );
    assert!(w.ask("bot", "read", "crm:x", None, json!({})).would.is_none());

    // Only Audit-mode policies: a dry run allows, reporting what it would have decided.
    let w = World::new(&[bot()], &[audit], &[]);
    let d = w.ask("bot", "delete", "crm:x", None, json!({}));
    assert_eq!((d.verdict, d.reason.clone()), (Verdict::Allow, Reason::AuditOnly));
    assert_eq!(d.would.map(|w| w.verdict), Some(Verdict::Deny));
    let d = w.ask("bot", "read", "crm:x", None, json!({}));
    assert_eq!(d.would.map(|w| w.reason), Some(Reason::NoMatchingRule), "default deny is a would-deny too");

    // An Audit-mode policy never widens an Enforce-mode decision.
    let narrow = policy(
        "narrow",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["**"]}]),
    );
    let wide = policy(
        "wide",
        "Audit",
        json!({"names": ["bot"]}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let w = World::new(&[bot()], &[narrow, wide], &[]);
    assert_eq!(w.verdict("delete", "crm:x"), Verdict::Deny);
}

#[test]
fn a_broken_policy_denies_everything() {
    let good = policy(
        "good",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let broken = policy(
        "broken",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "bad", "effect": "Allow", "actions": ["read"], "resources": ["x"],
         "conditions": {"timeWindows": [{"start": "09:00", "end": "17:00", "timeZone": "Nowhere/City"}]}}]),
    );
    let w = World::new(&[bot()], &[good, broken], &[]);
    let d = w.ask("bot", "read", "x", None, json!({}));
    assert_eq!(
        (d.verdict, d.reason, d.policy.as_deref()),
        (Verdict::Deny, Reason::PolicyBroken, Some("broken"))
    );
    assert_eq!(w.snapshot.policies().iter().find(|p| p.name == "broken").map(|p| p.errors.len()), Some(1));
}

#[test]
fn agent_state_and_revocations_deny_before_any_rule() {
    let p = policy(
        "p",
        "Enforce",
        json!({"selector": {}}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let suspended = agent("sus", json!({}), "Suspended", 700);
    let w = World::new(&[bot(), suspended], std::slice::from_ref(&p), &[]);
    assert_eq!(
        w.ask("sus", "read", "x", None, json!({})).reason,
        Reason::NotActive(Some(crate::api::AgentPhase::Suspended))
    );
    // The token's UID must be the agent's current UID, and its subject must name it.
    let ctx = Map::new();
    let req =
        Request { action: "read", resource: "x", tool: None, context: &ctx, delegation: None, probe: false };
    let subject = |uid, name| Subject {
        uid,
        namespace: "ns",
        name,
        jti: "jti-bot",
        audience: AUD,
        lifetime: Some(LIFETIME),
    };
    let stale = subject("uid-of-a-deleted-bot", "bot");
    let record = w.records.get("uid-bot");
    assert_eq!(w.snapshot.decide(stale, record, &req, w.clock, &w.limiter).reason, Reason::UnknownAgent);
    let swapped = subject("uid-bot", "sus");
    assert_eq!(
        w.snapshot.decide(swapped, record, &req, w.clock, &w.limiter).reason,
        Reason::IdentityMismatch
    );

    for target in [
        json!({"agentRef": {"name": "bot"}}),
        json!({"selector": {"matchLabels": {"team": "sales"}}}),
        json!({"all": true}),
    ] {
        let w = World::new(&[bot()], std::slice::from_ref(&p), &[revocation("stop", target)]);
        let d = w.ask("bot", "read", "x", None, json!({}));
        assert!(matches!(d.reason, Reason::Revoked { .. }), "{d:?}");
    }
    let w = World::new(&[bot()], &[p], &[revocation("stop", json!({"agentRef": {"name": "other"}}))]);
    assert_eq!(w.verdict("read", "x"), Verdict::Allow);
}

#[test]
fn a_thousand_rules_index_by_action_and_prefix() {
    let rules: Vec<Value> = (0..1000)
        .map(|i| {
            let action = ["read", "write", "list"][i % 3];
            let effect = if i % 10 == 0 { "Deny" } else { "Allow" };
            json!({"name": format!("r{i}"), "effect": effect, "actions": [action], "resources": [format!("svc{i}:records/*")]})
        })
        .collect();
    let w = World::new(
        &[bot()],
        &[policy("big", "Enforce", json!({"names": ["bot"]}), Value::Array(rules))],
        &[],
    );
    assert_eq!(w.verdict("write", "svc1:records/7"), Verdict::Allow);
    assert_eq!(w.verdict("list", "svc20:records/7"), Verdict::Deny, "r20 is a Deny rule");
    assert_eq!(w.verdict("read", "svc1:records/7"), Verdict::Deny, "r1 is for write");
    assert_eq!(w.verdict("read", "svc999:records/7/x"), Verdict::Deny);
    let facts = w.snapshot.agent("uid-bot").unwrap();
    assert_eq!(facts.rules.len(), 1000);
    assert!(facts.rules.any_action.by_prefix.is_empty() && facts.rules.any_action.other.is_empty());
}

// ---- properties ----

fn arb_rule(i: usize) -> impl Strategy<Value = Value> {
    (
        prop::bool::weighted(0.3),
        prop::sample::select(vec!["read", "write", "*"]),
        prop::sample::select(vec!["crm:a/*", "crm:a/**", "crm:*", "crm:b/x", "erp:**", "**"]),
        prop::option::of(0u16..1000),
        prop::option::of(0u32..200),
    )
        .prop_map(move |(deny, action, resource, trust, max_amount)| {
            let mut conditions = serde_json::Map::new();
            if let Some(t) = trust {
                conditions.insert("minTrustScore".into(), json!(t));
            }
            if let Some(a) = max_amount {
                conditions.insert(
                    "attributes".into(),
                    json!([{"key": "amount", "operator": "LessThan", "value": a.to_string()}]),
                );
            }
            json!({"name": format!("r{i}"), "effect": if deny { "Deny" } else { "Allow" },
                   "actions": [action], "resources": [resource], "conditions": conditions})
        })
}

fn arb_rules() -> impl Strategy<Value = Vec<Value>> {
    (1usize..12).prop_flat_map(|n| (0..n).map(arb_rule).collect::<Vec<_>>())
}

fn arb_request() -> impl Strategy<Value = (String, String, Option<u32>)> {
    (
        prop::sample::select(vec!["read", "write", "delete"]),
        prop::sample::select(vec!["crm:a/1", "crm:a/1/2", "crm:a", "crm:b/x", "erp:q/r", "hr:z"]),
        prop::option::of(0u32..300),
    )
        .prop_map(|(a, r, amount)| (a.to_owned(), r.to_owned(), amount))
}

fn decide_with(rules: &[Value], req: &(String, String, Option<u32>)) -> Verdict {
    let p = policy("p", "Enforce", json!({"names": ["bot"]}), Value::Array(rules.to_vec()));
    let w = World::new(&[bot()], &[p], &[]);
    let ctx = req.2.map_or(json!({}), |a| json!({"amount": a}));
    w.ask("bot", &req.0, &req.1, None, ctx).verdict
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn adding_a_deny_rule_never_turns_a_deny_into_an_allow(rules in arb_rules(), extra in arb_rule(99), req in arb_request()) {
        let before = decide_with(&rules, &req);
        let mut more = rules.clone();
        let mut extra = extra;
        extra["effect"] = json!("Deny");
        more.push(extra);
        let after = decide_with(&more, &req);
        prop_assert!(after >= before, "{before:?} -> {after:?}");
    }

    #[test]
    fn removing_an_allow_rule_never_turns_a_deny_into_an_allow(rules in arb_rules(), req in arb_request(), pick in any::<prop::sample::Index>()) {
        let before = decide_with(&rules, &req);
        let allows: Vec<usize> = rules.iter().enumerate().filter(|(_, r)| r["effect"] == "Allow").map(|(i, _)| i).collect();
        prop_assume!(!allows.is_empty());
        let mut fewer = rules.clone();
        fewer.remove(allows[pick.index(allows.len())]);
        let after = decide_with(&fewer, &req);
        prop_assert!(!(before == Verdict::Deny && after == Verdict::Allow));
        prop_assert!(after >= before, "{before:?} -> {after:?}");
    }

    #[test]
    fn the_index_agrees_with_a_linear_scan(rules in arb_rules(), req in arb_request()) {
        // Reference: every rule checked in order, without the action/prefix index.
        let ctx = req.2.map_or(json!({}), |a| json!({"amount": a}));
        let compiled = compile::compile(&policy("p", "Enforce", json!({"names": ["bot"]}), Value::Array(rules.clone())));
        let segments: Vec<&str> = req.1.split('/').collect();
        let mut deny = false;
        let mut allow = false;
        for r in &compiled.rules {
            let action_ok = r.any_action || r.actions.iter().any(|a| **a == *req.0);
            let resource_ok = r.resources.iter().any(|p| p.matches(&segments));
            let trust_ok = r.min_trust_score.is_none_or(|m| 700 >= m);
            let attrs_ok = r.attributes.iter().all(|a| a.evaluate(ctx.as_object().unwrap()).unwrap_or(r.effect == crate::api::Effect::Deny));
            if action_ok && resource_ok && trust_ok && attrs_ok {
                match r.effect { crate::api::Effect::Deny => deny = true, crate::api::Effect::Allow => allow = true }
            }
        }
        let expected = if deny || !allow { Verdict::Deny } else { Verdict::Allow };
        prop_assert_eq!(decide_with(&rules, &req), expected);
    }
}

fn allow_all(name: &str) -> Arc<AgentPolicy> {
    policy(
        name,
        "Enforce",
        json!({"names": ["bot"]}),
        json!([{"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    )
}

#[test]
fn the_operators_record_decides_never_the_status() {
    let mut w = World::new(&[bot()], &[allow_all("p")], &[]);
    assert_eq!(w.ask("bot", "read", "x", None, json!({})).verdict, Verdict::Allow);
    // The status says Active with trust 700, but the operator recorded a suspension (or nothing at all).
    let suspended =
        AgentRecord { phase: Some(crate::api::AgentPhase::Suspended), ..recorded(&bot(), w.clock.now) };
    w.records.insert("uid-bot".into(), suspended);
    let d = w.ask("bot", "read", "x", None, json!({}));
    assert_eq!(d.reason, Reason::NotActive(Some(crate::api::AgentPhase::Suspended)));
    w.records.clear();
    assert_eq!(w.ask("bot", "read", "x", None, json!({})).reason, Reason::Unrecorded);

    // The trust score of conditions is the recorded one, not the status's.
    let gated = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([{"name": "trusted", "effect": "Allow", "actions": ["read"], "resources": ["**"],
                "conditions": {"minTrustScore": 500}}]),
    );
    let mut w = World::new(&[bot()], &[gated], &[]);
    assert_eq!(w.ask("bot", "read", "x", None, json!({})).verdict, Verdict::Allow);
    // 450: below the rule's 500, above the 400 that would also shorten the lifetime.
    let low = AgentRecord { trust_score: Some(450), ..recorded(&bot(), w.clock.now) };
    w.records.insert("uid-bot".into(), low);
    assert_eq!(w.ask("bot", "read", "x", None, json!({})).reason, Reason::NoMatchingRule);
}

#[test]
fn only_live_tokens_for_granted_audiences_and_lifetimes_are_accepted() {
    let w = World::new(&[bot()], &[allow_all("p")], &[]);
    let ask = |jti: &str, aud: &str, lifetime: Option<Duration>| {
        w.ask_with("bot", jti, aud, lifetime, "read", "x", None, json!({})).reason
    };
    assert_eq!(ask("jti-bot", AUD, Some(LIFETIME)), Reason::Allowed);
    assert_eq!(ask("never-issued", AUD, Some(LIFETIME)), Reason::TokenNotIssued);
    assert_eq!(
        ask("jti-bot", "elsewhere", Some(LIFETIME)),
        Reason::TokenNotIssued,
        "a jti is bound to its audience"
    );
    assert_eq!(ask("jti-bot", AUD, None), Reason::LifetimeNotGranted, "no iat: fail closed");
    assert_eq!(ask("jti-bot", AUD, Some(Duration::from_secs(601))), Reason::LifetimeNotGranted);

    // Narrowing the spec: the audience removed, or a shorter lifetime. Tokens issued before are refused at
    // once, though the operator has not re-issued anything yet.
    let mut narrowed = (*bot()).clone();
    narrowed.spec.credentials =
        Some(crate::api::CredentialsSpec { audiences: vec!["other".into()], ..Default::default() });
    let mut w2 = World::new(&[Arc::new(narrowed.clone())], &[allow_all("p")], &[]);
    w2.records.insert("uid-bot".into(), recorded(&bot(), w2.clock.now));
    let d = w2.ask("bot", "read", "x", None, json!({}));
    assert_eq!(d.reason, Reason::AudienceNotGranted);
    narrowed.spec.credentials = Some(crate::api::CredentialsSpec {
        audiences: vec![AUD.into()],
        ttl: Some("5m".into()),
        x509: false,
    });
    let w3 = World::new(&[Arc::new(narrowed)], &[allow_all("p")], &[]);
    assert_eq!(w3.ask("bot", "read", "x", None, json!({})).reason, Reason::LifetimeNotGranted);
    // A policy's lifetime cap narrows the same way.
    let mut capped = (*allow_all("p")).clone();
    capped.spec.credential_ttl_cap = Some("2m".into());
    let w4 = World::new(&[bot()], &[Arc::new(capped)], &[]);
    assert_eq!(w4.ask("bot", "read", "x", None, json!({})).reason, Reason::LifetimeNotGranted);
}

#[test]
fn the_engine_itself_denies_resources_that_are_not_canonical() {
    // Even under an allow-everything rule: an embedding caller that skipped canonicalisation gets no Allow.
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([{"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let w = World::new(&[bot()], &[p], &[]);
    assert_eq!(w.verdict("read", "crm:contacts/1"), Verdict::Allow);
    for r in ["crm:contacts/../admin", "crm:contacts/", "crm:contacts/%2e%2e", "crm\\x", "crm//x", "/crm"] {
        let d = w.ask("bot", "read", r, None, json!({}));
        assert_eq!(d.verdict, Verdict::Deny, "{r:?}");
        assert!(d.reason.to_string().contains("canonical"), "{r:?}: {}", d.reason);
    }
}

/// Which of `scopes` the token endpoint would grant `bot` in `w` now (`Err`: the refusal's reason).
fn granted(w: &World, scopes: &[&str]) -> Result<Vec<String>, Reason> {
    let scopes = scope::parse_all(scopes).unwrap();
    let acting = Acting { uid: "uid-bot", namespace: "ns", name: "bot" };
    let record = w.records.get("uid-bot");
    w.snapshot
        .grant_scopes(acting, record, &scopes, w.clock.now)
        .map(|g| {
            g.iter()
                .zip(&scopes)
                .filter(|(g, _)| g.is_granted())
                .map(|(_, s)| s.as_str().to_owned())
                .collect()
        })
        .map_err(|d| d.reason)
}

#[test]
fn a_token_scope_is_granted_only_where_a_rule_allows_all_of_it_unconditionally() {
    let rules = json!([
        {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]},
        {"name": "any", "effect": "Allow", "actions": ["*"], "resources": ["tickets:**"]},
        {"name": "no-vip", "effect": "Deny", "actions": ["read"], "resources": ["crm:contacts/vip-*"]},
        {"name": "trusted", "effect": "Allow", "actions": ["write"], "resources": ["crm:x"],
         "conditions": {"minTrustScore": 800}},
        {"name": "hours", "effect": "Allow", "actions": ["read"], "resources": ["crm:h"],
         "conditions": {"timeWindows": [{"days": ["Mon"], "start": "09:00", "end": "17:00", "timeZone": "Europe/Berlin"}]}},
        {"name": "refund", "effect": "Allow", "actions": ["refund"], "resources": ["pay:orders/*"],
         "conditions": {"attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "100"}]}},
        {"name": "limited", "effect": "Allow", "actions": ["list"], "resources": ["crm:leads"],
         "conditions": {"rateLimit": {"requests": 2, "per": "1m"}}},
        {"name": "pay", "effect": "Allow", "actions": ["pay"], "resources": ["pay:x"],
         "conditions": {"approval": "required", "approvers": {"users": ["bob"]}}},
        {"name": "tool", "effect": "Allow", "actions": ["tools.call"], "resources": ["mcp:crm"], "tools": ["get_*"]}]);
    let with_rules = |rules: Value| policy("p", "Enforce", json!({"names": ["bot"]}), rules);
    let mut lax = rules.as_array().unwrap().clone();
    lax.push(json!({"name": "lax", "effect": "Allow", "actions": ["*"], "resources": ["**"]}));
    let mut w = World::new(&[bot()], &[with_rules(Value::Array(lax))], &[]);
    // Without the catch-all "lax", each rule alone.
    let strict = with_rules(rules);
    let all = [
        "read@crm:contacts/42",
        "read@crm:contacts/*",
        "read@crm:contacts/**",
        "*@crm:contacts/42",
        "close@tickets:eu/9",
        "*@tickets:**",
        "write@crm:x",
        "read@crm:h",
        "refund@pay:orders/1",
        "list@crm:leads",
        "pay@pay:x",
        "tools.call@mcp:crm",
    ];
    // Deny rules apply whatever allows: "read@crm:contacts/*" overlaps "no-vip" even under "lax".
    assert_eq!(
        granted(&w, &all).unwrap(),
        [
            "read@crm:contacts/42",
            "*@crm:contacts/42",
            "close@tickets:eu/9",
            "*@tickets:**",
            "write@crm:x",
            "read@crm:h",
            "refund@pay:orders/1",
            "list@crm:leads",
            "pay@pay:x",
            "tools.call@mcp:crm"
        ]
    );
    w = World::new(&[bot()], &[strict], &[]);
    assert_eq!(
        granted(&w, &all).unwrap(),
        ["read@crm:contacts/42", "close@tickets:eu/9", "*@tickets:**", "read@crm:h"],
        "Monday 11:00 Berlin; trust 700 < 800; conditions a token cannot carry grant nothing"
    );
    w.clock.now = "2026-11-30T17:00:00Z".parse().unwrap();
    assert!(!granted(&w, &["read@crm:h"]).unwrap().contains(&"read@crm:h".to_owned()), "outside the window");
    // Whatever is granted, the per-call decision allows too (a token never adds rights).
    w.clock.now = "2026-11-30T10:00:00Z".parse().unwrap();
    for (action, resource) in [("read", "crm:contacts/42"), ("close", "tickets:eu/9"), ("read", "crm:h")] {
        assert_eq!(w.verdict(action, resource), Verdict::Allow, "{action} {resource}");
    }
}

#[test]
fn no_scope_for_an_agent_that_may_not_act_or_has_no_enforced_policy() {
    let audit = policy(
        "a",
        "Audit",
        json!({"names": ["bot"]}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let w = World::new(&[bot()], &[audit], &[]);
    assert_eq!(granted(&w, &["read@x"]), Err(Reason::NoPolicy), "Audit-mode policies grant nothing");
    let p = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let suspended = agent("bot", json!({"team": "sales"}), "Suspended", 700);
    let w = World::new(&[suspended], &[Arc::clone(&p)], &[]);
    assert!(matches!(granted(&w, &["read@x"]), Err(Reason::NotActive(_))));
    let w = World::new(&[bot()], &[p], &[revocation("stop", json!({"agentRef": {"name": "bot"}}))]);
    assert!(matches!(granted(&w, &["read@x"]), Err(Reason::Revoked { .. })));
    let broken = policy(
        "b",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "bad", "effect": "Allow", "actions": ["read"], "resources": ["a/../b"]}]),
    );
    let ok = policy(
        "p",
        "Enforce",
        json!({"names": ["bot"]}),
        json!([
        {"name": "all", "effect": "Allow", "actions": ["*"], "resources": ["**"]}]),
    );
    let w = World::new(&[bot()], &[broken, ok], &[]);
    assert_eq!(granted(&w, &["read@x"]), Err(Reason::PolicyBroken));
    let mut w = World::new(&[bot()], &[], &[]);
    w.records.clear();
    assert_eq!(granted(&w, &["read@x"]), Err(Reason::Unrecorded));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A granted scope never holds a request the per-call decision denies.
    #[test]
    fn whatever_a_granted_scope_holds_the_policies_allow(
        rules in arb_rules(),
        verb in "(read|write|\\*)",
        pattern in "(crm|pay)(:(a|b|\\*|\\*\\*))(/(a|b|\\*|\\*\\*|a\\*)){0,2}",
        resource in "(crm|pay):(a|b|ab)(/(a|b|ab)){0,2}",
        action in "(read|write)",
    ) {
        let p = policy("p", "Enforce", json!({"names": ["bot"]}), Value::Array(rules));
        let w = World::new(&[bot()], &[p], &[]);
        let Ok(scope) = scope::Scope::parse(&format!("{verb}@{pattern}")) else { return Ok(()) };
        let Ok(grants) = w.snapshot.grant_scopes(
            Acting { uid: "uid-bot", namespace: "ns", name: "bot" },
            w.records.get("uid-bot"),
            std::slice::from_ref(&scope),
            w.clock.now,
        ) else { return Ok(()) };
        if grants[0].is_granted() && scope.allows(&action, &resource) {
            let d = w.ask("bot", &action, &resource, None, json!({}));
            prop_assert_eq!(d.verdict, Verdict::Allow, "{} granted but {} {} is {:?}", scope.as_str(), action, resource, d);
        }
    }
}
