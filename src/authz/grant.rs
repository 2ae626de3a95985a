//! Which scopes an agent may hold in a bearer token now: the token endpoint's question. Pure.
//!
//! A per-call decision sees the whole request (tool, attributes, rate-limit counters, approvals); a scope
//! in a token is shown to resource servers that may check nothing but the signature. So a scope is granted
//! only where the policies allow **all of it, unconditionally**, at this moment:
//!
//! - the agent may act at all (it exists under the token's name, the operator recorded it, it is Active,
//!   not revoked, stopping or being deleted), and some Enforce-mode policy governs it, none of them broken;
//! - some Enforce-mode Allow rule covers the scope (its verbs include the scope's verb, or it allows every
//!   verb; one of its resource patterns covers the scope's pattern, or it constrains no resource), and that
//!   rule has no condition a token cannot carry: no tool, attribute, rate limit, approval or delegation
//!   requirement. Its trust-score minimum and time windows are checked now;
//! - no Enforce-mode Deny rule might match any request inside the scope (conservatively: its verbs and
//!   patterns may overlap), conditional or not, because a resource server would not apply it.
//!
//! Audit-mode policies grant nothing. The token's short lifetime bounds how long a grant outlives a time
//! window; the operator's own decision API still decides every call made with the token in full.

use std::sync::Arc;

use jiff::Timestamp;

use crate::api::{Effect, PolicyMode};
use crate::registry::ledger::AgentRecord;

use super::compile::CompiledRule;
use super::eval::{Acting, Decision, Reason};
use super::index::{Snapshot, Standing};
use super::scope::Scope;

/// What became of one scope asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeGrant {
    /// Granted by this rule.
    Granted {
        /// The policy.
        policy: Arc<str>,
        /// The rule.
        rule: Arc<str>,
    },
    /// A Deny rule might match inside it.
    Denied {
        /// The policy.
        policy: Arc<str>,
        /// The rule.
        rule: Arc<str>,
    },
    /// No rule allows all of it unconditionally now.
    NotAllowed,
}

impl ScopeGrant {
    /// Whether the scope goes into the token.
    pub fn is_granted(&self) -> bool {
        matches!(self, Self::Granted { .. })
    }
}

impl std::fmt::Display for ScopeGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Granted { policy, rule } => write!(f, "granted by {policy}/{rule}"),
            Self::Denied { policy, rule } => write!(f, "Deny rule {policy}/{rule} may match inside it"),
            Self::NotAllowed => f.write_str(
                "no Enforce rule allows all of it unconditionally now (rules with tool, attribute, rate-limit, \
                 approval or delegation conditions are decided per call, and trust and time windows hold now)",
            ),
        }
    }
}

impl Snapshot {
    /// Decides each of `scopes` for the agent `acting` (its recorded standing in `record`) at `now`, in
    /// order. `Err` when the agent may not hold any token now (the decision saying why).
    pub fn grant_scopes(
        &self,
        acting: Acting<'_>,
        record: Option<&AgentRecord>,
        scopes: &[Scope],
        now: Timestamp,
    ) -> Result<Vec<ScopeGrant>, Decision> {
        let (agent, _, standing) = self.may_act(acting, record)?;
        let set = &agent.rules;
        if set.enforce_policies == 0 {
            return Err(Decision::deny(Reason::NoPolicy));
        }
        if let Some((name, _)) = set.broken.iter().find(|(_, mode)| *mode == PolicyMode::Enforce) {
            let mut d = Decision::deny(Reason::PolicyBroken);
            d.policy = Some(Arc::clone(name));
            return Err(d);
        }
        let enforced = || set.rules.iter().filter(|r| r.mode == PolicyMode::Enforce);
        Ok(scopes
            .iter()
            .map(|scope| {
                if let Some(r) = enforced().find(|r| r.effect == Effect::Deny && may_overlap(r, scope)) {
                    return ScopeGrant::Denied { policy: Arc::clone(&r.policy), rule: Arc::clone(&r.name) };
                }
                enforced()
                    .find(|r| {
                        r.effect == Effect::Allow && unconditional(r, standing, now) && covers(r, scope)
                    })
                    .map_or(ScopeGrant::NotAllowed, |r| ScopeGrant::Granted {
                        policy: Arc::clone(&r.policy),
                        rule: Arc::clone(&r.name),
                    })
            })
            .collect())
    }
}

/// No condition a bearer token cannot carry; trust and time windows hold now.
fn unconditional(rule: &CompiledRule, standing: Standing, now: Timestamp) -> bool {
    rule.tools.is_empty()
        && rule.attributes.is_empty()
        && rule.rate_limit.is_none()
        && rule.approval.is_none()
        && rule.delegation_scope.is_none()
        && rule.min_trust_score.is_none_or(|min| standing.trust_score >= min)
        && (rule.windows.is_empty() || rule.windows.iter().any(|w| w.contains(now)))
}

/// Every request inside `scope` is one the rule's verbs and resource patterns match.
fn covers(rule: &CompiledRule, scope: &Scope) -> bool {
    let verb = match scope.verb() {
        None => rule.any_action,
        Some(v) => rule.any_action || rule.actions.iter().any(|a| **a == *v),
    };
    verb && (rule.resources.is_empty() || rule.resources.iter().any(|p| p.covers(scope.resource())))
}

/// Some request inside `scope` might be one the rule's verbs and resource patterns match.
fn may_overlap(rule: &CompiledRule, scope: &Scope) -> bool {
    let verb = match scope.verb() {
        None => true,
        Some(v) => rule.any_action || rule.actions.iter().any(|a| **a == *v),
    };
    verb && (rule.resources.is_empty() || rule.resources.iter().any(|p| p.may_overlap(scope.resource())))
}
