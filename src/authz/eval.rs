//! Deciding one request against a [`Snapshot`]. Pure: the caller passes the time and the rate-limit state;
//! nothing here performs I/O, and the only allocation is splitting the resource into segments.
//!
//! # Semantics
//! 1. The agent must exist with the token's UID and name; the operator must have recorded it as Active (its
//!    ledger, never the status); it must not be asked to stop, nor be being deleted, nor be targeted by a
//!    Revocation; and the token must be one the operator issued to it and has not taken back (by `jti`,
//!    for this audience), for an audience its spec still grants, with a lifetime no longer than it would
//!    get now (so narrowing the spec or a policy's lifetime cap refuses older, wider tokens at once).
//!    Otherwise Deny.
//! 2. The policies that govern it are evaluated. A rule matches when the action is one of its actions (or
//!    it has `*`), the resource matches one of its patterns (if it lists any), the tool matches one of its
//!    tools (if it lists any; a request without a tool never matches a rule that lists tools), and every
//!    condition holds.
//! 3. Enforce-mode policies decide: a governing policy that does not compile denies everything; else any
//!    matching Deny denies; else a matching rate-limited Allow over its limit denies; else a matching Allow
//!    that requires approval gives RequireApproval; else any matching Allow allows; else Deny (default
//!    deny). No governing policy at all: Deny.
//! 4. Audit-mode policies never change an Enforce-mode decision. What the decision would have been with
//!    them enforced is reported next to it when it is stricter ("would deny"). An agent governed only by
//!    Audit-mode policies is allowed, with the would-be decision reported: that is what a dry run means.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::api::{AgentPhase, DesiredState, Effect, PolicyMode, RevocationMode};
use crate::identity::jwt::effective_ttl;
use crate::registry::ledger::{AgentRecord, TokenStanding};

use super::compile::{ApprovalTerms, CompiledRule};
use super::index::{AgentFacts, Candidate, NO_PATTERN, RuleSet, Snapshot, Standing};
use super::ratelimit::RateLimiter;
use super::resource;
use super::scope::{Scope, any_allows};

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    /// The action may go ahead.
    Allow,
    /// A human must approve the action first.
    RequireApproval,
    /// The action must not happen.
    Deny,
}

impl Verdict {
    /// The verdict's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "Allow",
            Self::RequireApproval => "RequireApproval",
            Self::Deny => "Deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision came out as it did. Rendered to text only when answered, never on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A matching Allow rule.
    Allowed,
    /// A matching Allow rule that requires approval.
    ApprovalRequired,
    /// A matching Deny rule.
    DeniedByRule,
    /// A matching Allow rule over its rate limit.
    RateLimited {
        /// Requests allowed per period.
        requests: u32,
        /// The period in seconds.
        per_secs: u64,
    },
    /// No rule matched (default deny).
    NoMatchingRule,
    /// No policy governs the agent (default deny).
    NoPolicy,
    /// A governing policy has rules that do not compile.
    PolicyBroken,
    /// Only Audit-mode policies govern the agent: allowed as a dry run.
    AuditOnly,
    /// No agent has the token's UID (deleted, or recreated under the same name).
    UnknownAgent,
    /// The token's subject is not the agent with the token's UID.
    IdentityMismatch,
    /// The operator has no record of deciding anything about the agent.
    Unrecorded,
    /// The token is not one the operator issued to the agent, or it was taken back (suspension, withdrawal,
    /// replacement of a Secret it could not vouch for).
    TokenNotIssued,
    /// The token's audience is no longer among those the agent's spec grants.
    AudienceNotGranted,
    /// The token lives longer than the agent's credentials may now (its spec or a policy cap narrowed).
    LifetimeNotGranted,
    /// The agent's phase is not Active.
    NotActive(Option<AgentPhase>),
    /// The agent's owner asked it to stop.
    Stopping(DesiredState),
    /// The agent is being deleted.
    Deleting,
    /// A Revocation targets the agent.
    Revoked {
        /// The Revocation.
        by: Arc<str>,
        /// Suspend or Revoke.
        mode: RevocationMode,
    },
    /// A delegated request outside every scope of its delegation: a delegation never adds rights, and
    /// never lets an agent act for its human beyond what the human granted.
    OutsideDelegation,
    /// A request made with an access token outside every scope the token carries.
    OutsideTokenScope,
    /// A rule requires a human's approval, and the request for it waits (the ApprovalRequest's
    /// `namespace/name`).
    AwaitingApproval(String),
    /// Allowed by a rule that requires approval, under an approval a human gave for exactly this request.
    Approved {
        /// Who approved.
        by: String,
        /// The ApprovalRequest (`namespace/name`).
        request: String,
    },
    /// A rule requires a human's approval, and it was refused (by a human, on re-check, or by expiry).
    ApprovalDenied {
        /// The ApprovalRequest (`namespace/name`).
        request: String,
        /// Why.
        why: String,
    },
    /// Refused before evaluation (bad token, audit log down, ...), with the caller's explanation.
    Refused(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allowed => f.write_str("allowed by rule"),
            Self::ApprovalRequired => f.write_str("allowed by a rule that requires human approval"),
            Self::DeniedByRule => f.write_str("denied by rule"),
            Self::RateLimited { requests, per_secs } => {
                write!(f, "rate limit of {requests} requests per {per_secs}s exceeded")
            }
            Self::NoMatchingRule => f.write_str("no rule allows this action (default deny)"),
            Self::NoPolicy => f.write_str("no AgentPolicy governs this agent (default deny)"),
            Self::PolicyBroken => {
                f.write_str("the policy has rules that do not compile, so it denies everything")
            }
            Self::AuditOnly => {
                f.write_str("only Audit-mode policies govern this agent: allowed as a dry run")
            }
            Self::UnknownAgent => f.write_str("no agent with the token's UID exists (deleted or recreated)"),
            Self::IdentityMismatch => {
                f.write_str("the token's subject does not name the agent it is bound to")
            }
            Self::Unrecorded => f.write_str("the operator has no record of this agent being activated"),
            Self::TokenNotIssued => f.write_str(
                "the token is not among the agent's current credentials (never issued to it, or taken back when \
                 it was suspended, its credentials withdrawn or its Secret replaced); use its current credentials",
            ),
            Self::AudienceNotGranted => {
                f.write_str("the token's audience is no longer granted to the agent (spec.credentials.audiences)")
            }
            Self::LifetimeNotGranted => {
                f.write_str("the token outlives what the agent's credentials may now (lifetime narrowed)")
            }
            Self::NotActive(Some(p)) => write!(f, "agent is {p:?}, not Active"),
            Self::NotActive(None) => f.write_str("agent has not been activated yet"),
            Self::Stopping(d) => write!(f, "agent's desired state is {d:?}"),
            Self::Deleting => f.write_str("agent is being deleted"),
            Self::Revoked { by, mode: RevocationMode::Suspend } => {
                write!(f, "agent suspended by Revocation {by}")
            }
            Self::Revoked { by, mode: RevocationMode::Revoke } => {
                write!(f, "agent revoked by Revocation {by}")
            }
            Self::OutsideDelegation => {
                f.write_str("the request is outside every scope of the delegation the token carries")
            }
            Self::OutsideTokenScope => f.write_str("the request is outside every scope of the access token"),
            Self::AwaitingApproval(request) => write!(
                f,
                "waiting for a human's approval: ApprovalRequest {request} (kubectl agentiam approve|deny)"
            ),
            Self::Approved { by, request } => {
                write!(f, "allowed by a rule that requires approval: approved by {by} (ApprovalRequest {request})")
            }
            Self::ApprovalDenied { request, why } => {
                write!(f, "the approval this action needs was refused: {why} (ApprovalRequest {request})")
            }
            Self::Refused(why) => f.write_str(why),
        }
    }
}

/// A decision: the verdict, why, and the policy and rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, RequireApproval or Deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding policy.
    pub policy: Option<Arc<str>>,
    /// The deciding rule.
    pub rule: Option<Arc<str>>,
    /// What Audit-mode policies would have decided, when stricter than the verdict.
    pub would: Option<Box<Decision>>,
    /// For RequireApproval: the deciding rule's approvers and terms.
    pub approval: Option<Arc<ApprovalTerms>>,
}

impl Decision {
    /// A Deny that no rule decided.
    pub fn deny(reason: Reason) -> Self {
        Self { verdict: Verdict::Deny, reason, policy: None, rule: None, would: None, approval: None }
    }

    fn by_rule(verdict: Verdict, reason: Reason, rule: &CompiledRule) -> Self {
        Self {
            verdict,
            reason,
            policy: Some(Arc::clone(&rule.policy)),
            rule: Some(Arc::clone(&rule.name)),
            would: None,
            approval: None,
        }
    }
}

/// What is asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The verb.
    pub action: &'a str,
    /// The resource.
    pub resource: &'a str,
    /// The MCP tool, if any.
    pub tool: Option<&'a str>,
    /// Attributes of the request (amount, region, ...).
    pub context: &'a Map<String, Value>,
    /// The delegation the agent acts under, when it presented a delegated token (None: its own identity).
    pub delegation: Option<&'a Delegated<'a>>,
    /// A probe, not a request: whether the agent could be allowed this with some request context (the
    /// gateway filtering an MCP `tools/list`). Attribute conditions it cannot judge without the context
    /// count as met by an Allow rule and not met by a Deny rule, and rate limits are only looked at, never
    /// charged. Never used to allow anything.
    pub probe: bool,
}

/// What a verified delegated token, checked against the operator's records, says about a request.
#[derive(Debug, Clone, Copy)]
pub struct Delegated<'a> {
    /// The leaf Delegation's scopes.
    pub scopes: &'a [Scope],
    /// The human at the root of the chain.
    pub grantor: &'a str,
    /// That human's groups when the root was created (from the operator's admission record).
    pub grantor_groups: &'a [String],
}

/// The agent acting under a delegated token: its UID and the namespace and name of its SPIFFE ID.
#[derive(Debug, Clone, Copy)]
pub struct Acting<'a> {
    /// The Agent's UID (the token's `agentiam.dev/uid`).
    pub uid: &'a str,
    /// The namespace in its SPIFFE ID.
    pub namespace: &'a str,
    /// The agent name in its SPIFFE ID.
    pub name: &'a str,
}

/// Who asks: what a verified token says.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The UID the token is bound to.
    pub uid: &'a str,
    /// The namespace in the token's SPIFFE ID.
    pub namespace: &'a str,
    /// The agent name in the token's SPIFFE ID.
    pub name: &'a str,
    /// The token's `jti`.
    pub jti: &'a str,
    /// The token's audience.
    pub audience: &'a str,
    /// The token's lifetime, `exp - iat` (None without `iat`: refused).
    pub lifetime: Option<std::time::Duration>,
}

/// The time of a decision: wall clock for time windows, monotonic for rate limits.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock time (time windows).
    pub now: Timestamp,
    /// Monotonic time (rate limits).
    pub instant: Instant,
}

impl Clock {
    /// The current time.
    pub fn now() -> Self {
        Self { now: Timestamp::now(), instant: Instant::now() }
    }
}

impl Snapshot {
    /// Decides `request` for the agent a verified token names. `record` is what the operator recorded about
    /// the agent with the token's UID (its ledger entry): the only source of its phase, trust score and live
    /// credentials.
    pub fn decide(
        &self,
        subject: Subject<'_>,
        record: Option<&AgentRecord>,
        request: &Request<'_>,
        clock: Clock,
        limiter: &RateLimiter,
    ) -> Decision {
        let acting = Acting { uid: subject.uid, namespace: subject.namespace, name: subject.name };
        let (agent, record, standing) = match self.may_act(acting, record) {
            Ok(found) => found,
            Err(stop) => return stop,
        };
        if record.token(subject.jti, subject.audience, clock.now) != TokenStanding::Live {
            return Decision::deny(Reason::TokenNotIssued);
        }
        if !agent.audiences.iter().any(|a| a == subject.audience) {
            return Decision::deny(Reason::AudienceNotGranted);
        }
        // The credential was issued under the recorded score; a behaviour penalty narrows rules, not it.
        let allowed = effective_ttl(agent.requested_ttl, agent.ttl_cap, record.trust_score.unwrap_or(0));
        if subject.lifetime.is_none_or(|l| l > allowed) {
            return Decision::deny(Reason::LifetimeNotGranted);
        }
        evaluate(&agent.rules, standing, agent, request, clock, limiter)
    }
}

impl Snapshot {
    /// The checks every token passes first, whatever its kind: the agent with the token's UID exists under
    /// the token's name, the operator recorded it, and it may act now. The agent, its record and standing.
    pub(super) fn may_act<'s, 'r>(
        &'s self,
        acting: Acting<'_>,
        record: Option<&'r AgentRecord>,
    ) -> Result<(&'s AgentFacts, &'r AgentRecord, Standing), Decision> {
        let Some(agent) = self.agent(acting.uid) else { return Err(Decision::deny(Reason::UnknownAgent)) };
        if &*agent.namespace != acting.namespace || &*agent.name != acting.name {
            return Err(Decision::deny(Reason::IdentityMismatch));
        }
        let Some(record) = record else { return Err(Decision::deny(Reason::Unrecorded)) };
        let trust_score = record.trust_score.unwrap_or(0).saturating_sub(record.trust_penalty);
        let standing = Standing { phase: record.phase, trust_score };
        match stopped(agent, standing) {
            Some(stop) => Err(stop),
            None => Ok((agent, record, standing)),
        }
    }

    /// Why the agent `acting` may not act now (unknown, renamed, unrecorded, not Active, revoked), or
    /// None: the first checks of every decision, for answers that decide nothing else (introspection).
    pub fn may_not_act(&self, acting: Acting<'_>, record: Option<&AgentRecord>) -> Option<Reason> {
        self.may_act(acting, record).err().map(|d| d.reason)
    }

    /// Decides `request` made with a delegated token by the agent with UID `uid` (`namespace`/`name`, its
    /// SPIFFE ID in the token), whose chain the caller checked against the operator's records. The agent's
    /// own standing and policies decide, and the delegation's scopes must allow the request too: a
    /// delegation never adds rights.
    pub fn decide_delegated(
        &self,
        acting: Acting<'_>,
        record: Option<&AgentRecord>,
        request: &Request<'_>,
        clock: Clock,
        limiter: &RateLimiter,
    ) -> Decision {
        let Some(delegated) = request.delegation else {
            return Decision::deny(Reason::Refused("a delegated decision without its delegation".into()));
        };
        self.decide_within(
            acting,
            record,
            delegated.scopes,
            Reason::OutsideDelegation,
            request,
            clock,
            limiter,
        )
    }

    /// Decides `request` made with an access token from the token endpoint by the agent `acting`, whose
    /// token the caller found among those the operator issued: the agent's own standing and policies
    /// decide, and the token's scopes must allow the request too (a token never adds rights).
    pub fn decide_access(
        &self,
        acting: Acting<'_>,
        record: Option<&AgentRecord>,
        scopes: &[Scope],
        request: &Request<'_>,
        clock: Clock,
        limiter: &RateLimiter,
    ) -> Decision {
        self.decide_within(acting, record, scopes, Reason::OutsideTokenScope, request, clock, limiter)
    }

    /// The agent may act, `scopes` allow the request (`outside` otherwise), and its policies allow it.
    #[allow(clippy::too_many_arguments)]
    fn decide_within(
        &self,
        acting: Acting<'_>,
        record: Option<&AgentRecord>,
        scopes: &[Scope],
        outside: Reason,
        request: &Request<'_>,
        clock: Clock,
        limiter: &RateLimiter,
    ) -> Decision {
        let (agent, _, standing) = match self.may_act(acting, record) {
            Ok(found) => found,
            Err(stop) => return stop,
        };
        if !any_allows(scopes, request.action, request.resource) {
            return Decision::deny(outside);
        }
        evaluate(&agent.rules, standing, agent, request, clock, limiter)
    }
}

/// Decides `request` for `agent` standing as `standing` (whose identity and credentials the caller
/// established; `kubectl agentiam can-i` asks this way).
pub fn decide_for(
    agent: &AgentFacts,
    standing: Standing,
    request: &Request<'_>,
    clock: Clock,
    limiter: &RateLimiter,
) -> Decision {
    stopped(agent, standing)
        .unwrap_or_else(|| evaluate(&agent.rules, standing, agent, request, clock, limiter))
}

/// The Deny for an agent that may not act at all, if it may not.
fn stopped(agent: &AgentFacts, standing: Standing) -> Option<Decision> {
    if let Some(r) = &agent.revoked_by {
        return Some(Decision::deny(Reason::Revoked { by: Arc::clone(&r.name), mode: r.mode }));
    }
    if agent.deleting {
        return Some(Decision::deny(Reason::Deleting));
    }
    if agent.desired != DesiredState::Active {
        return Some(Decision::deny(Reason::Stopping(agent.desired)));
    }
    if standing.phase != Some(AgentPhase::Active) {
        return Some(Decision::deny(Reason::NotActive(standing.phase)));
    }
    None
}

/// The matches of one mode's rules.
#[derive(Default)]
struct Matches {
    deny: Option<u32>,
    approval: Option<u32>,
    allow: Option<u32>,
    limited: Vec<u32>,
}

impl Matches {
    fn note(&mut self, index: u32, rule: &CompiledRule) {
        let min = |slot: &mut Option<u32>| *slot = Some(slot.map_or(index, |s| s.min(index)));
        match rule.effect {
            Effect::Deny => min(&mut self.deny),
            Effect::Allow => {
                if rule.approval.is_some() {
                    min(&mut self.approval);
                }
                min(&mut self.allow);
                if rule.rate_limit.is_some() && !self.limited.contains(&index) {
                    self.limited.push(index);
                }
            }
        }
    }

    fn merged(&self, other: &Self) -> Self {
        let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut limited = self.limited.clone();
        limited.extend(other.limited.iter().filter(|i| !self.limited.contains(i)));
        Self {
            deny: min(self.deny, other.deny),
            approval: min(self.approval, other.approval),
            allow: min(self.allow, other.allow),
            limited,
        }
    }
}

fn evaluate(
    set: &RuleSet,
    standing: Standing,
    agent: &AgentFacts,
    request: &Request<'_>,
    clock: Clock,
    limiter: &RateLimiter,
) -> Decision {
    if set.enforce_policies == 0 && set.audit_policies == 0 {
        return Decision::deny(Reason::NoPolicy);
    }
    // The surfaces canonicalise before asking; an embedding caller that did not must not get a match on a
    // resource that a server reading it as a path resolves elsewhere (see `resource`).
    if !resource::is_canonical(request.resource) {
        return Decision::deny(Reason::Refused(format!(
            "resource {:?} is not in canonical form; canonicalise it first",
            request.resource
        )));
    }
    let segments: Vec<&str> = request.resource.split('/').collect();
    let first = segments.first().copied().unwrap_or_default();
    let mut enforce = Matches::default();
    let mut audit = Matches::default();
    let buckets = [set.by_action.get(request.action), Some(&set.any_action)];
    for bucket in buckets.into_iter().flatten() {
        let lists = [bucket.by_prefix.get(first).map(Vec::as_slice), Some(bucket.other.as_slice())];
        for candidate in lists.into_iter().flatten().flatten() {
            let Some(rule) = set.rules.get(candidate.rule as usize) else { continue };
            if rule_matches(rule, *candidate, &segments, standing, request, clock) {
                match rule.mode {
                    PolicyMode::Enforce => enforce.note(candidate.rule, rule),
                    PolicyMode::Audit => audit.note(candidate.rule, rule),
                }
            }
        }
    }
    let broken = |mode: PolicyMode| set.broken.iter().find(|(_, m)| *m == mode).map(|(p, _)| p);
    if set.enforce_policies > 0 {
        let consume = !request.probe;
        let decision = verdict_of(set, &enforce, broken(PolicyMode::Enforce), agent, clock, limiter, consume);
        if set.audit_policies == 0 {
            return decision;
        }
        let all = enforce.merged(&audit);
        let any_broken = broken(PolicyMode::Enforce).or(broken(PolicyMode::Audit));
        let would = verdict_of(set, &all, any_broken, agent, clock, limiter, false);
        return with_would(decision, would);
    }
    let would = verdict_of(set, &audit, broken(PolicyMode::Audit), agent, clock, limiter, false);
    let allowed = match would.verdict {
        Verdict::Allow => Decision { reason: Reason::AuditOnly, ..would.clone() },
        _ => Decision {
            verdict: Verdict::Allow,
            reason: Reason::AuditOnly,
            ..Decision::deny(Reason::AuditOnly)
        },
    };
    with_would(allowed, would)
}

fn with_would(mut decision: Decision, would: Decision) -> Decision {
    if would.verdict > decision.verdict {
        decision.would = Some(Box::new(would));
    }
    decision
}

fn verdict_of(
    set: &RuleSet,
    m: &Matches,
    broken: Option<&Arc<str>>,
    agent: &AgentFacts,
    clock: Clock,
    limiter: &RateLimiter,
    consume: bool,
) -> Decision {
    if let Some(policy) = broken {
        return Decision { policy: Some(Arc::clone(policy)), ..Decision::deny(Reason::PolicyBroken) };
    }
    let rule = |i: Option<u32>| i.and_then(|i| set.rules.get(i as usize));
    if let Some(r) = rule(m.deny) {
        return Decision::by_rule(Verdict::Deny, Reason::DeniedByRule, r);
    }
    let mut limited: Vec<u32> = m.limited.clone();
    limited.sort_unstable();
    for i in limited {
        let Some(r) = rule(Some(i)) else { continue };
        let Some(limit) = &r.rate_limit else { continue };
        if !limiter.try_take(agent.limiter_key, limit, clock.instant, consume) {
            let reason = Reason::RateLimited { requests: limit.requests, per_secs: limit.per.as_secs() };
            return Decision::by_rule(Verdict::Deny, reason, r);
        }
    }
    if let Some(r) = rule(m.approval) {
        let approval = r.approval.clone();
        return Decision {
            approval,
            ..Decision::by_rule(Verdict::RequireApproval, Reason::ApprovalRequired, r)
        };
    }
    if let Some(r) = rule(m.allow) {
        return Decision::by_rule(Verdict::Allow, Reason::Allowed, r);
    }
    Decision::deny(Reason::NoMatchingRule)
}

fn rule_matches(
    rule: &CompiledRule,
    candidate: Candidate,
    segments: &[&str],
    standing: Standing,
    request: &Request<'_>,
    clock: Clock,
) -> bool {
    if candidate.pattern != NO_PATTERN
        && !rule.resources.get(usize::from(candidate.pattern)).is_some_and(|p| p.matches(segments))
    {
        return false;
    }
    if !rule.tools.is_empty() {
        match request.tool {
            Some(tool) if rule.tools.iter().any(|t| t.matches(tool)) => {}
            _ => return false,
        }
    }
    if !rule.windows.is_empty() && !rule.windows.iter().any(|w| w.contains(clock.now)) {
        return false;
    }
    if rule.min_trust_score.is_some_and(|min| standing.trust_score < min) {
        return false;
    }
    if let Some(scope) = &rule.delegation_scope {
        let Some(d) = request.delegation else { return false };
        if !scope.allows(request.action, request.resource) {
            return false;
        }
        if let Some(g) = &rule.delegation_grantors {
            let user = g.users.iter().any(|u| u == d.grantor);
            let group = g.groups.iter().any(|x| d.grantor_groups.contains(x));
            if !user && !group {
                return false;
            }
        }
    }
    // Unknown attributes resolve to the stricter outcome: no grant for an Allow, the Deny applies. A probe
    // asks whether some context could be allowed, so there they resolve the other way.
    let unknown_holds = (rule.effect == Effect::Deny) != request.probe;
    rule.attributes.iter().all(|a| a.evaluate(request.context).unwrap_or(unknown_holds))
}
