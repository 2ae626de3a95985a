//! Delegation chains, pure: what the operator recorded when each Delegation was admitted ([`Grant`]), and
//! the decision on a chain ([`decide`]) that the controller makes from fresh API state before anything is
//! issued under it, and that admission makes first from its stores ([`check_child`], [`check_root`]).
//!
//! The rules, each checked at every link from the root down:
//! - every link was admitted by the operator's webhook, which recorded who asked (the grantor of a root;
//!   a root's grantor is a person, never a ServiceAccount or a `system:` user), the grantee Agent's UID and
//!   the parent's UID. Links are bound by those UIDs: a parent or agent deleted and created again under the
//!   same name is another object, and the chain under it is Invalid;
//! - each scope of a child is covered by one scope of its parent ([`crate::authz::scope`]);
//! - a child ends no later than its parent; the chain ends at the earliest expiry along it;
//! - depth: a root allows `maxDepth` (default 3) levels below it, a child at most its parent's minus one;
//! - no cycles (a chain that comes back to a Delegation it passed through);
//! - every grantee along the chain is Active, or the delegation is not in force (Pending) until it is.
//!
//! Expired, Revoked and Invalid are final for a Delegation's UID: nothing brings it back.

use std::collections::HashSet;

use jiff::{SignedDuration, Timestamp};

use crate::api::{ChainLink, DEFAULT_MAX_DEPTH, Delegation, DelegationPhase, Grantor};
use crate::authz::scope::{self, Scope};

/// Most links a chain may have, whatever the depths say (bounds every walk up a chain).
pub const MAX_CHAIN: usize = 11;

/// What the operator's admission webhook recorded about one Delegation when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who created it.
    pub requester: Grantor,
    /// The grantee Agent's UID at admission.
    pub agent_uid: Option<String>,
    /// The parent Delegation's UID at admission (children only).
    pub parent_uid: Option<String>,
}

/// The grantee of one link, read fresh from the API server, with the phase the operator recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grantee {
    /// The Agent's UID.
    pub uid: String,
    /// Whether the operator's own record says it is Active (never its status).
    pub active: bool,
}

/// One link as the controller found it.
#[derive(Debug, Clone)]
pub struct Link<'a> {
    /// The Delegation.
    pub delegation: &'a Delegation,
    /// Its admission record, if the operator has one.
    pub grant: Option<&'a Grant>,
    /// Its grantee, if that Agent exists.
    pub grantee: Option<Grantee>,
    /// Why the kill switch ended it, if it did ([`crate::registry::revocation::ends_delegation`]).
    pub revoked_by: Option<String>,
    /// What the operator last recorded for its UID, if anything (Expired, Revoked and Invalid are final).
    pub recorded: Option<Recorded>,
}

/// A phase the operator recorded for a Delegation, with the reason and message it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The phase.
    pub phase: DelegationPhase,
    /// Its reason (one of [`REASONS`]).
    pub reason: &'static str,
    /// Its message.
    pub message: String,
}

/// Every reason a decision gives.
pub const REASONS: [&str; 22] = [
    "Pending",
    "NoAudience",
    "AudienceMismatch",
    "Granted",
    "AgentNotActive",
    "Expired",
    "Revoked",
    "ParentExpired",
    "ParentRevoked",
    "ParentInvalid",
    "ParentMissing",
    "ParentReplaced",
    "Cycle",
    "ChainTooLong",
    "ChainBroken",
    "NotAdmitted",
    "NotAHuman",
    "InvalidScope",
    "InvalidExpiry",
    "WiderThanParent",
    "AgentMissing",
    "AgentReplaced",
];

/// The reason `s` as one of [`REASONS`] ("ChainBroken" for anything else).
pub fn reason(s: &str) -> &'static str {
    REASONS.into_iter().find(|r| *r == s).unwrap_or("ChainBroken")
}

/// Whether nothing brings a Delegation back from `phase`.
pub fn is_final(phase: DelegationPhase) -> bool {
    matches!(phase, DelegationPhase::Expired | DelegationPhase::Revoked | DelegationPhase::Invalid)
}

/// How the walk up the chain ended, beyond the links found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The last link is a root.
    Root,
    /// The parent named by the last link does not exist.
    MissingParent(String),
    /// The chain came back to a Delegation it passed through.
    Cycle(String),
    /// The chain is longer than [`MAX_CHAIN`].
    TooLong,
}

/// The decision on a Delegation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Its phase.
    pub phase: DelegationPhase,
    /// A PascalCase reason for the condition and the Event.
    pub reason: &'static str,
    /// For humans.
    pub message: String,
    /// The human at the root, when the root's record is known.
    pub grantor: Option<Grantor>,
    /// Human first, then each grantee.
    pub chain: Vec<ChainLink>,
    /// The earliest expiry along the chain, when every link's is known.
    pub expires_at: Option<Timestamp>,
    /// Levels of sub-delegation that may still follow.
    pub remaining_depth: Option<u8>,
    /// The one audience its delegated tokens are for.
    pub audience: Option<String>,
}

/// The audience a Delegation's tokens are for: `spec.audience`, or the system every scope's resource
/// names (the text before the first `:` of the first segment, `crm` for `read@crm:contacts/*`) when they
/// all name the same one literally. None when neither gives one.
pub fn audience_of(d: &Delegation) -> Option<String> {
    if let Some(a) = &d.spec.audience {
        return Some(a.clone());
    }
    let mut systems = d.spec.scopes.iter().map(|s| {
        let resource = s.split_once('@').map_or("", |(_, r)| r);
        let first = resource.split('/').next().unwrap_or_default();
        first.split_once(':').map_or(first, |(system, _)| system)
    });
    let first = systems.next()?;
    let literal = !first.is_empty() && !first.contains('*');
    (literal && systems.all(|s| s == first)).then(|| first.to_owned())
}

/// When `d` ends by its own spec: `expiresAt`, or its creation plus `ttl`. None when neither reads.
pub fn own_expiry(d: &Delegation) -> Option<Timestamp> {
    if let Some(at) = &d.spec.expires_at {
        return at.parse().ok();
    }
    let created = d.metadata.creation_timestamp.as_ref()?.0;
    let ttl = parse_ttl(d.spec.ttl.as_deref()?)?;
    created.checked_add(ttl).ok()
}

/// A duration such as "8h", "90m" or "1h30m" (the CRD's grammar).
pub fn parse_ttl(ttl: &str) -> Option<SignedDuration> {
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in ttl.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    (digits.is_empty() && total > 0).then(|| SignedDuration::from_secs(total))
}

/// Whether `username` is a person: not a ServiceAccount, not a node or other `system:` identity.
pub fn is_person(username: &str) -> bool {
    !username.is_empty() && !username.starts_with("system:")
}

/// The scopes of `d`, or why one does not parse.
pub fn scopes_of(d: &Delegation) -> Result<Vec<Scope>, String> {
    scope::parse_all(&d.spec.scopes).map_err(|(s, e)| format!("scope {s:?} {e}"))
}

/// What a child must fit in: its parent's scopes, end and remaining depth.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The parent's scopes.
    pub scopes: Vec<Scope>,
    /// The earliest expiry along the parent's chain.
    pub expires_at: Timestamp,
    /// Levels that may still follow the parent.
    pub remaining_depth: u8,
    /// The parent's audience.
    pub audience: String,
}

/// Why a child does not fit its parent, or None. Used by admission (with `now` as the creation time) and by
/// the controller.
pub fn check_child(
    bounds: &Bounds,
    child_scopes: &[Scope],
    child_expiry: Timestamp,
    child_max_depth: Option<u8>,
    child_audience: Option<&str>,
) -> Result<u8, String> {
    if bounds.remaining_depth == 0 {
        return Err("its parent allows no further sub-delegation (maxDepth reached)".to_owned());
    }
    if let Some(a) = child_audience.filter(|a| *a != bounds.audience) {
        return Err(format!(
            "its audience {a:?} is not its parent's ({:?}): a delegation never moves to another audience",
            bounds.audience
        ));
    }
    let wider = scope::uncovered(&bounds.scopes, child_scopes);
    if !wider.is_empty() {
        let names: Vec<&str> = wider.iter().map(|s| s.as_str()).collect();
        return Err(format!("scopes {names:?} are not covered by any scope of its parent"));
    }
    if child_expiry > bounds.expires_at {
        return Err(format!(
            "it would end at {child_expiry}, after its parent's chain ends ({})",
            bounds.expires_at
        ));
    }
    let below = bounds.remaining_depth - 1;
    Ok(child_max_depth.map_or(below, |own| own.min(below)))
}

/// Why a root has no audience.
pub const NO_AUDIENCE: &str = "its scopes do not all name one system (such as crm in read@crm:contacts/*), so \
                               its tokens' audience is unknown; set spec.audience";

/// Why a root grant may not be made by `requester`, or None.
pub fn check_root(requester: &str) -> Result<(), String> {
    if is_person(requester) {
        Ok(())
    } else {
        Err(format!(
            "{requester} is not a person: a root Delegation is a human's decision (agents pass on subsets with \
             spec.parentRef; pipelines cannot grant on anyone's behalf)"
        ))
    }
}

/// Decides a Delegation from its chain, `links[0]` being the Delegation itself and the last the farthest
/// ancestor found; `ending` says why the walk stopped. A final phase recorded before stays, with its
/// reason; the chain is still read, so status shows what it is now.
pub fn decide(links: &[Link<'_>], ending: &Ending, now: Timestamp) -> Decision {
    let mut decision = decide_chain(links, ending, now);
    if let Some(r) = links.first().and_then(|l| l.recorded.as_ref()).filter(|r| is_final(r.phase)) {
        decision.phase = r.phase;
        decision.reason = r.reason;
        decision.message = r.message.clone();
    }
    decision
}

fn decide_chain(links: &[Link<'_>], ending: &Ending, now: Timestamp) -> Decision {
    let mut decision = Decision {
        phase: DelegationPhase::Pending,
        reason: "Pending",
        message: String::new(),
        grantor: None,
        chain: Vec::new(),
        expires_at: None,
        remaining_depth: None,
        audience: None,
    };
    if links.is_empty() {
        return invalid(decision, "ChainBroken", "no delegation to decide".to_owned());
    }
    match ending {
        Ending::Root => {}
        Ending::MissingParent(name) => {
            return invalid(
                decision,
                "ParentMissing",
                format!("its chain names Delegation {name:?}, which does not exist"),
            );
        }
        Ending::Cycle(name) => {
            return invalid(decision, "Cycle", format!("its chain comes back to Delegation {name:?}"));
        }
        Ending::TooLong => {
            return invalid(decision, "ChainTooLong", format!("its chain is longer than {MAX_CHAIN} links"));
        }
    }
    let mut bounds: Option<Bounds> = None;
    let mut revoked: Option<String> = None;
    let mut waiting: Option<String> = None;
    // From the root down.
    for (depth, link) in links.iter().rev().enumerate() {
        let d = link.delegation;
        let name = d.metadata.name.clone().unwrap_or_default();
        let uid = d.metadata.uid.clone();
        let Some(grant) = link.grant else {
            return invalid(
                decision,
                "NotAdmitted",
                format!(
                    "Delegation {name:?} has no admission record, so nobody knows who granted it; create it \
                     again while the operator's webhooks serve"
                ),
            );
        };
        let scopes = match scopes_of(d) {
            Ok(s) => s,
            Err(e) => return invalid(decision, "InvalidScope", format!("Delegation {name:?}: {e}")),
        };
        let Some(expiry) = own_expiry(d) else {
            return invalid(decision, "InvalidExpiry", format!("Delegation {name:?} has no readable expiry"));
        };
        match (&bounds, depth) {
            (None, _) => {
                if let Err(e) = check_root(&grant.requester.username) {
                    return invalid(decision, "NotAHuman", format!("Delegation {name:?}: {e}"));
                }
                if d.spec.parent_ref.is_some() {
                    return invalid(decision, "ChainBroken", format!("Delegation {name:?} has a parent"));
                }
                decision.grantor = Some(grant.requester.clone());
                decision.chain.push(ChainLink {
                    kind: "User".to_owned(),
                    name: grant.requester.username.clone(),
                    uid: grant.requester.uid.clone(),
                    delegation: None,
                    delegation_uid: None,
                });
                let Some(audience) = audience_of(d) else {
                    return invalid(decision, "NoAudience", format!("Delegation {name:?}: {NO_AUDIENCE}"));
                };
                bounds = Some(Bounds {
                    scopes,
                    expires_at: expiry,
                    remaining_depth: d.spec.max_depth.unwrap_or(DEFAULT_MAX_DEPTH),
                    audience,
                });
            }
            (Some(parent), _) => {
                let parent_link = links.get(links.len() - depth);
                let parent_uid = parent_link.and_then(|p| p.delegation.metadata.uid.clone());
                if grant.parent_uid.is_none() || grant.parent_uid != parent_uid {
                    return invalid(
                        decision,
                        "ParentReplaced",
                        format!(
                            "Delegation {name:?} was admitted under another parent of the same name (the parent \
                             was deleted and created again)"
                        ),
                    );
                }
                match check_child(parent, &scopes, expiry, d.spec.max_depth, d.spec.audience.as_deref()) {
                    Ok(remaining) => {
                        bounds = Some(Bounds {
                            scopes,
                            expires_at: expiry.min(parent.expires_at),
                            remaining_depth: remaining,
                            audience: parent.audience.clone(),
                        });
                    }
                    Err(e) => {
                        return invalid(decision, "WiderThanParent", format!("Delegation {name:?}: {e}"));
                    }
                }
            }
        }
        let agent = &d.spec.agent_ref.name;
        match &link.grantee {
            None => {
                return invalid(
                    decision,
                    "AgentMissing",
                    format!("the grantee Agent {agent:?} of {name:?} does not exist"),
                );
            }
            Some(g) if grant.agent_uid.as_deref() != Some(g.uid.as_str()) => {
                return invalid(
                    decision,
                    "AgentReplaced",
                    format!(
                        "the grantee Agent {agent:?} of {name:?} is not the one it was granted to (deleted and created again)"
                    ),
                );
            }
            Some(g) => {
                if !g.active && waiting.is_none() {
                    waiting = Some(format!("Agent {agent:?} is not Active"));
                }
                decision.chain.push(ChainLink {
                    kind: "Agent".to_owned(),
                    name: agent.clone(),
                    uid: Some(g.uid.clone()),
                    delegation: Some(name.clone()),
                    delegation_uid: uid,
                });
            }
        }
        if revoked.is_none()
            && let Some(by) = &link.revoked_by
        {
            revoked = Some(by.clone());
        }
        // An ancestor that ended for good ends everything below it.
        if let Some(p) = link.recorded.as_ref().map(|r| r.phase).filter(|p| is_final(*p))
            && depth + 1 < links.len()
        {
            let (phase, reason) = match p {
                DelegationPhase::Expired => (DelegationPhase::Expired, "ParentExpired"),
                DelegationPhase::Revoked => (DelegationPhase::Revoked, "ParentRevoked"),
                _ => (DelegationPhase::Invalid, "ParentInvalid"),
            };
            decision.phase = phase;
            decision.reason = reason;
            decision.message = format!("Delegation {name:?} up its chain is {}", p.as_str());
            return decision;
        }
    }
    let Some(bounds) = bounds else { return invalid(decision, "ChainBroken", "an empty chain".to_owned()) };
    decision.expires_at = Some(bounds.expires_at);
    decision.remaining_depth = Some(bounds.remaining_depth);
    decision.audience = Some(bounds.audience.clone());
    if let Some(why) = revoked {
        decision.phase = DelegationPhase::Revoked;
        decision.reason = "Revoked";
        decision.message = why;
    } else if now >= bounds.expires_at {
        decision.phase = DelegationPhase::Expired;
        decision.reason = "Expired";
        decision.message = format!("the chain ended at {}", bounds.expires_at);
    } else if let Some(why) = waiting {
        decision.phase = DelegationPhase::Pending;
        decision.reason = "AgentNotActive";
        decision.message = format!("not in force while {why}");
    } else {
        decision.phase = DelegationPhase::Active;
        decision.reason = "Granted";
        let human = decision.grantor.as_ref().map(|g| g.username.as_str()).unwrap_or_default();
        decision.message = format!("in force on behalf of {human} until {}", bounds.expires_at);
    }
    decision
}

fn invalid(mut decision: Decision, reason: &'static str, message: String) -> Decision {
    decision.phase = DelegationPhase::Invalid;
    decision.reason = reason;
    decision.message = message;
    decision
}

/// The next step of a walk up a chain whose links so far are `found` (the start first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Look up the parent of this name; None from the lookup ends the walk with [`Ending::MissingParent`].
    Fetch(String),
    /// The walk is over.
    Done(Ending),
}

/// Where a walk up the chain goes next: the one rule for every walk (the controller's through the API
/// server, admission's through its stores), so both stop at cycles and at [`MAX_CHAIN`] alike.
pub fn next_step<D: AsRef<Delegation>>(found: &[D]) -> Step {
    let Some(last) = found.last() else { return Step::Done(Ending::Root) };
    let Some(parent) = last.as_ref().spec.parent_ref.as_ref().map(|p| p.name.clone()) else {
        return Step::Done(Ending::Root);
    };
    let seen: HashSet<&str> = found.iter().filter_map(|d| d.as_ref().metadata.name.as_deref()).collect();
    if seen.contains(parent.as_str()) {
        return Step::Done(Ending::Cycle(parent));
    }
    if found.len() >= MAX_CHAIN {
        return Step::Done(Ending::TooLong);
    }
    Step::Fetch(parent)
}

/// Follows `parentRef` from `start` through `get` (by name). Returns the links found, `start` first, and
/// how the walk ended.
pub fn walk<D: AsRef<Delegation>>(start: D, mut get: impl FnMut(&str) -> Option<D>) -> (Vec<D>, Ending) {
    let mut chain = vec![start];
    loop {
        match next_step(&chain) {
            Step::Done(ending) => return (chain, ending),
            Step::Fetch(parent) => match get(&parent) {
                Some(p) => chain.push(p),
                None => return (chain, Ending::MissingParent(parent)),
            },
        }
    }
}

#[cfg(test)]
#[path = "delegation_tests.rs"]
mod tests;
