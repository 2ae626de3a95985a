//! AgentPolicy -> compiled rules. Pure.
//!
//! Compilation checks everything the API server's schema cannot (patterns, time zones, numeric values,
//! combinations that make no sense), and a policy with any rule that does not compile is kept as *broken*:
//! it denies every request of every agent it governs until it is fixed, so a typo can never widen access.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::{AgentPolicy, AgentSelector, Approval, Approvers, Effect, Grantors, PolicyMode, PolicyRule};
use crate::registry::validate::parse_duration;

use super::conditions::{Attribute, Window};
use super::pattern::{ResourcePattern, ToolPattern};
use super::scope::Scope;

/// A per-agent rate limit of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed per period (also the burst).
    pub requests: u32,
    /// The period.
    pub per: Duration,
    /// Identifies the rule's counters: a hash of the policy UID and the rule name, so counters survive
    /// index rebuilds and edits of other rules, and restart when the policy is recreated.
    pub key: u64,
}

/// One compiled rule.
#[derive(Debug)]
pub struct CompiledRule {
    /// The policy's name.
    pub policy: Arc<str>,
    /// The rule's name.
    pub name: Arc<str>,
    /// Allow or Deny.
    pub effect: Effect,
    /// The policy's mode.
    pub mode: PolicyMode,
    /// Verbs; empty when `*` was given (any verb).
    pub actions: Box<[Box<str>]>,
    /// Whether `*` was among the actions.
    pub any_action: bool,
    /// Resource patterns; empty means the rule does not constrain the resource.
    pub resources: Box<[ResourcePattern]>,
    /// Tool patterns; empty means the rule does not constrain the tool.
    pub tools: Box<[ToolPattern]>,
    /// Time windows (any of them).
    pub windows: Box<[Window]>,
    /// Minimum trust score.
    pub min_trust_score: Option<u16>,
    /// Required delegation scope: the rule matches delegated requests inside it only.
    pub delegation_scope: Option<Scope>,
    /// Whose delegations count (None: anyone's).
    pub delegation_grantors: Option<Grantors>,
    /// Attribute constraints (all of them).
    pub attributes: Box<[Attribute]>,
    /// Rate limit (Allow rules only).
    pub rate_limit: Option<Limit>,
    /// When a match requires human approval (Allow rules only): who may approve, and the terms.
    pub approval: Option<Arc<ApprovalTerms>>,
}

/// Who may approve what a rule requires approval for, and the terms of an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalTerms {
    /// Who may approve: any listed user, or any member of a listed group.
    pub approvers: Grantors,
    /// How long a request waits for an answer.
    pub timeout: Duration,
    /// How long an approval may be used once given.
    pub valid_for: Duration,
    /// How many allowed decisions one approval covers.
    pub uses: u32,
    /// The approver may be neither the grantor of a delegated request's chain nor the agent's owner.
    pub four_eyes: bool,
}

/// How long an approval request waits when its rule does not say.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long an approval may be used when its rule does not say.
pub const DEFAULT_APPROVAL_VALID_FOR: Duration = Duration::from_secs(5 * 60);

/// A compiled policy.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: Arc<str>,
    /// UID (empty for objects not read from the API server).
    pub uid: String,
    /// metadata.generation compiled.
    pub generation: Option<i64>,
    /// Enforce or Audit.
    pub mode: PolicyMode,
    /// Which agents it governs.
    pub agents: AgentSelector,
    /// The rules, in spec order; empty when the policy is broken.
    pub rules: Vec<Arc<CompiledRule>>,
    /// Why rules did not compile ("rule \"x\": ..."); non-empty means broken.
    pub errors: Vec<String>,
}

impl CompiledPolicy {
    /// Whether any rule failed to compile, which makes the policy deny everything.
    pub fn is_broken(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// Compiles a policy. Never fails: errors are collected into [`CompiledPolicy::errors`].
pub fn compile(policy: &AgentPolicy) -> CompiledPolicy {
    let name: Arc<str> = policy.name_any().into();
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    let mode = policy.spec.mode;
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if policy.spec.rules.is_empty() {
        errors.push("the policy has no rules".to_owned());
    }
    for rule in &policy.spec.rules {
        if !seen.insert(rule.name.as_str()) {
            errors.push(format!("rule {:?}: the name is used more than once", rule.name));
            continue;
        }
        match compile_rule(rule, &name, &uid, mode) {
            Ok(r) => rules.push(Arc::new(r)),
            Err(problems) => {
                errors.extend(problems.into_iter().map(|p| format!("rule {:?}: {p}", rule.name)));
            }
        }
    }
    if !errors.is_empty() {
        rules.clear();
    }
    CompiledPolicy {
        namespace: policy.namespace().unwrap_or_default(),
        name,
        uid,
        generation: policy.metadata.generation,
        mode,
        agents: policy.spec.agents.clone(),
        rules,
        errors,
    }
}

fn compile_rule(
    rule: &PolicyRule,
    policy: &Arc<str>,
    policy_uid: &str,
    mode: PolicyMode,
) -> Result<CompiledRule, Vec<String>> {
    let mut problems = Vec::new();
    let mut actions = Vec::new();
    let mut any_action = false;
    for a in &rule.actions {
        match a.as_str() {
            "*" => any_action = true,
            "" => problems.push("an action is empty".to_owned()),
            a if a.contains('*') => {
                problems.push(format!("action {a:?}: only \"*\" alone is a wildcard for actions"));
            }
            a => actions.push(Box::<str>::from(a)),
        }
    }
    if rule.actions.is_empty() {
        problems.push("no actions".to_owned());
    }
    if any_action {
        actions.clear();
    }
    let mut resources = Vec::new();
    for r in &rule.resources {
        match ResourcePattern::parse(r) {
            Ok(p) => resources.push(p),
            Err(e) => problems.push(format!("resource {r:?} {e}")),
        }
    }
    let mut tools = Vec::new();
    for t in &rule.tools {
        match ToolPattern::parse(t) {
            Ok(p) => tools.push(p),
            Err(e) => problems.push(format!("tool {t:?} {e}")),
        }
    }
    if rule.resources.is_empty() && rule.tools.is_empty() {
        problems.push("needs at least one resource or tool".to_owned());
    }
    let conditions = rule.conditions.clone().unwrap_or_default();
    let mut windows = Vec::new();
    for w in &conditions.time_windows {
        match Window::compile(w) {
            Ok(w) => windows.push(w),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut attributes = Vec::new();
    for c in &conditions.attributes {
        match Attribute::compile(c) {
            Ok(a) => attributes.push(a),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let rate_limit = match &conditions.rate_limit {
        None => None,
        Some(_) if rule.effect == Effect::Deny => {
            problems.push("rateLimit applies to Allow rules only".to_owned());
            None
        }
        Some(l) => match parse_duration(&l.per) {
            Ok(per) if per >= Duration::from_secs(1) && l.requests > 0 => {
                let mut h = DefaultHasher::new();
                (policy_uid, &**policy, rule.name.as_str()).hash(&mut h);
                Some(Limit { requests: l.requests, per, key: h.finish() })
            }
            Ok(_) => {
                problems.push(format!(
                    "rateLimit {} per {:?} is not a positive rate over >= 1s",
                    l.requests, l.per
                ));
                None
            }
            Err(e) => {
                problems.push(format!("rateLimit.per {:?}: {e}", l.per));
                None
            }
        },
    };
    let delegation_scope = match conditions.delegation_scope.as_deref().map(Scope::parse).transpose() {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("delegationScope {e}"));
            None
        }
    };
    if conditions.delegation_grantors.is_some() && conditions.delegation_scope.is_none() {
        problems.push("delegationGrantors needs delegationScope".to_owned());
    }
    let approval = match (conditions.approval, &conditions.approvers) {
        (Some(Approval::Required), _) if rule.effect == Effect::Deny => {
            problems.push("approval applies to Allow rules only".to_owned());
            None
        }
        (Some(Approval::Required), None) => {
            problems
                .push("approval: required needs approvers (users and/or groups who may approve)".to_owned());
            None
        }
        (Some(Approval::Required), Some(a)) => approval_terms(a, &mut problems).map(Arc::new),
        (None, Some(_)) => {
            problems.push("approvers needs approval: required".to_owned());
            None
        }
        (None, None) => None,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(CompiledRule {
        policy: Arc::clone(policy),
        name: rule.name.as_str().into(),
        effect: rule.effect,
        mode,
        actions: actions.into(),
        any_action,
        resources: resources.into(),
        tools: tools.into(),
        windows: windows.into(),
        min_trust_score: conditions.min_trust_score,
        delegation_scope,
        delegation_grantors: conditions.delegation_grantors.clone(),
        attributes: attributes.into(),
        rate_limit,
        approval,
    })
}

/// The terms of `a`, or the problems with them.
fn approval_terms(a: &Approvers, problems: &mut Vec<String>) -> Option<ApprovalTerms> {
    if a.users.is_empty() && a.groups.is_empty() {
        problems.push("approvers names nobody: list users and/or groups".to_owned());
    }
    let mut duration = |field: &str, v: Option<&str>, default: Duration, max: Duration| match v {
        None => Some(default),
        Some(v) => match parse_duration(v) {
            Ok(d) if d >= Duration::from_secs(10) && d <= max => Some(d),
            Ok(_) => {
                problems.push(format!("approvers.{field} {v:?} is not between 10s and {}s", max.as_secs()));
                None
            }
            Err(e) => {
                problems.push(format!("approvers.{field}: {e}"));
                None
            }
        },
    };
    let timeout =
        duration("timeout", a.timeout.as_deref(), DEFAULT_APPROVAL_TIMEOUT, Duration::from_secs(86_400));
    let valid_for =
        duration("validFor", a.valid_for.as_deref(), DEFAULT_APPROVAL_VALID_FOR, Duration::from_secs(3600));
    let uses = a.uses.unwrap_or(1);
    if !(1..=100).contains(&uses) {
        problems.push(format!("approvers.uses {uses} is not between 1 and 100"));
    }
    Some(ApprovalTerms {
        approvers: Grantors { users: a.users.clone(), groups: a.groups.clone() },
        timeout: timeout?,
        valid_for: valid_for?,
        uses,
        four_eyes: a.four_eyes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn policy(rules: serde_json::Value) -> AgentPolicy {
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "generation": 3},
            "spec": {"agents": {"names": ["bot"]}, "rules": rules},
        }))
        .unwrap()
    }

    #[test]
    fn a_good_policy_compiles() {
        let c = compile(&policy(json!([
            {"name": "read", "effect": "Allow", "actions": ["read", "list"], "resources": ["crm:contacts/*"]},
            {"name": "any", "effect": "Deny", "actions": ["*"], "resources": ["crm:secrets/**"]},
            {"name": "tools", "effect": "Allow", "actions": ["tools.call"], "tools": ["search_*"],
             "conditions": {"rateLimit": {"requests": 5, "per": "1m"}, "approval": "required",
                            "approvers": {"groups": ["payments-leads"], "validFor": "2m", "fourEyes": true},
                            "timeWindows": [{"start": "09:00", "end": "17:00", "timeZone": "Europe/Berlin"}],
                            "attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "100"}]}},
        ])));
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(c.rules.len(), 3);
        assert!(c.rules[1].any_action && c.rules[1].actions.is_empty());
        assert_eq!(
            c.rules[2].rate_limit.as_ref().map(|l| (l.requests, l.per)),
            Some((5, Duration::from_secs(60)))
        );
        let terms = c.rules[2].approval.as_ref().unwrap();
        assert_eq!(terms.approvers.groups, vec!["payments-leads".to_owned()]);
        assert_eq!(
            (terms.timeout, terms.valid_for, terms.uses),
            (DEFAULT_APPROVAL_TIMEOUT, Duration::from_secs(120), 1)
        );
        assert!(terms.four_eyes);
        assert_eq!(c.generation, Some(3));
    }

    #[test]
    fn one_bad_rule_breaks_the_whole_policy_with_named_errors() {
        let c = compile(&policy(json!([
            {"name": "ok", "effect": "Allow", "actions": ["read"], "resources": ["crm:x"]},
            {"name": "zone", "effect": "Allow", "actions": ["read"], "resources": ["crm:y"],
             "conditions": {"timeWindows": [{"start": "09:00", "end": "17:00", "timeZone": "Nowhere/City"}]}},
            {"name": "deep", "effect": "Allow", "actions": ["re*d"], "resources": ["a/**b"]},
            {"name": "limit", "effect": "Deny", "actions": ["read"], "resources": ["x"],
             "conditions": {"rateLimit": {"requests": 1, "per": "1m"}, "approval": "required"}},
            {"name": "amount", "effect": "Allow", "actions": ["pay"], "resources": ["x"],
             "conditions": {"attributes": [{"key": "amount", "operator": "LessThan", "value": "ten"}]}},
            {"name": "scope", "effect": "Allow", "actions": ["refund"], "resources": ["x"],
             "conditions": {"delegationScope": "payments:refund"}},
            {"name": "grantors", "effect": "Allow", "actions": ["refund"], "resources": ["x"],
             "conditions": {"delegationGrantors": {"users": ["alice"]}}},
            {"name": "nobody", "effect": "Allow", "actions": ["refund"], "resources": ["x"],
             "conditions": {"approval": "required"}},
            {"name": "empty", "effect": "Allow", "actions": ["refund"], "resources": ["x"],
             "conditions": {"approval": "required", "approvers": {"timeout": "2d"}}},
            {"name": "stray", "effect": "Allow", "actions": ["refund"], "resources": ["x"],
             "conditions": {"approvers": {"users": ["bob"]}}},
        ])));
        assert!(c.is_broken());
        assert!(c.rules.is_empty(), "a broken policy keeps no rules that could allow");
        let all = c.errors.join("\n");
        for needle in [
            "rule \"zone\": unknown time zone",
            "rule \"deep\": action \"re*d\"",
            "rule \"deep\": resource \"a/**b\"",
            "rule \"limit\": rateLimit applies to Allow rules only",
            "rule \"limit\": approval applies to Allow rules only",
            "rule \"amount\": attribute \"amount\": LessThan needs a numeric value",
            "rule \"scope\": delegationScope needs the form <action>@<resource pattern>",
            "rule \"grantors\": delegationGrantors needs delegationScope",
            "rule \"nobody\": approval: required needs approvers",
            "rule \"empty\": approvers names nobody",
            "rule \"empty\": approvers.timeout",
            "rule \"stray\": approvers needs approval: required",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
    }

    #[test]
    fn duplicate_names_and_empty_rules_are_errors() {
        let c = compile(&policy(json!([
            {"name": "a", "effect": "Allow", "actions": ["read"], "resources": ["x"]},
            {"name": "a", "effect": "Allow", "actions": ["read"], "resources": ["y"]},
            {"name": "b", "effect": "Allow", "actions": ["read"]},
        ])));
        let all = c.errors.join("\n");
        assert!(
            all.contains("used more than once") && all.contains("at least one resource or tool"),
            "{all}"
        );
        assert!(compile(&policy(json!([]))).is_broken());
    }

    #[test]
    fn rate_limit_keys_are_stable_and_distinct() {
        let rules = json!([
            {"name": "a", "effect": "Allow", "actions": ["r"], "resources": ["x"], "conditions": {"rateLimit": {"requests": 1, "per": "1s"}}},
            {"name": "b", "effect": "Allow", "actions": ["r"], "resources": ["x"], "conditions": {"rateLimit": {"requests": 1, "per": "1s"}}},
        ]);
        let (c1, c2) = (compile(&policy(rules.clone())), compile(&policy(rules)));
        let key = |c: &CompiledPolicy, i: usize| c.rules[i].rate_limit.as_ref().unwrap().key;
        assert_eq!(key(&c1, 0), key(&c2, 0));
        assert_ne!(key(&c1, 0), key(&c1, 1));
    }
}
