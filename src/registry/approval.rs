//! Human approval, pure: what an approval is bound to ([`binding`]), who may give it ([`check_approver`]),
//! and where a recorded approval stands now ([`Entry::standing`]).
//!
//! The rules:
//! - an approval covers exactly one request: the agent (by UID), the delegation it acted under (by UID),
//!   the token's audience, the action, the resource, the tool, the **whole** request context, and the
//!   policy and rule that asked for approval. The approver saw all of it, so all of it is bound: an
//!   approved refund of 900 does not cover 9,000, nor 900 to another order;
//! - only a person answers (never a ServiceAccount or a `system:` user, so never the agent's own
//!   ServiceAccount), who is one of the rule's approvers (a listed user, or a member of a listed group as
//!   the API server authenticated them) and, when the rule asks for four eyes, neither the human the agent
//!   acts for nor the agent's owner. The RBAC verb `approve` is checked by the caller (a
//!   SubjectAccessReview is I/O);
//! - a request waits until its `expiresAt`, then ends Denied; an approval may be used `uses` times
//!   (default once) until `approvedUntil`, then ends Expired. Every step is an audit record, and the
//!   operator's [`Ledger`](super::ledger::Ledger) keeps the result, so nothing here reads a status.

use std::collections::HashMap;

use aws_lc_rs::digest;
use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::api::{ApprovalPhase, ApprovalVerdict, Grantor, Grantors};
use crate::audit::{Action, Outcome, Record};

use super::actions as a;
use super::delegation::is_person;

/// What one approval is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    /// The agent's UID.
    pub agent_uid: &'a str,
    /// The leaf Delegation's UID, for a delegated request.
    pub delegation_uid: Option<&'a str>,
    /// The token's audience.
    pub audience: &'a str,
    /// The verb.
    pub action: &'a str,
    /// The resource (canonical).
    pub resource: &'a str,
    /// The MCP tool.
    pub tool: Option<&'a str>,
    /// The request context.
    pub context: &'a Map<String, Value>,
    /// The policy that asked for approval.
    pub policy: &'a str,
    /// Its rule.
    pub rule: &'a str,
}

/// SHA-256 (hex) of the canonical form of `b`: the same request always gives the same binding, whatever
/// the order of its context keys, and any change of any field gives another.
pub fn binding(b: &Bound<'_>) -> String {
    let mut s = String::new();
    let mut field = |name: &str, v: Option<&str>| {
        s.push_str(name);
        s.push('=');
        match v {
            // JSON strings: no value can end its field early or look like the next one.
            Some(v) => s.push_str(&Value::String(v.to_owned()).to_string()),
            None => s.push_str("null"),
        }
        s.push('\n');
    };
    field("agentUID", Some(b.agent_uid));
    field("delegationUID", b.delegation_uid);
    field("audience", Some(b.audience));
    field("action", Some(b.action));
    field("resource", Some(b.resource));
    field("tool", b.tool);
    field("policy", Some(b.policy));
    field("rule", Some(b.rule));
    s.push_str("context=");
    canonical(&Value::Object(b.context.clone()), &mut s);
    hex::encode(digest::digest(&digest::SHA256, s.as_bytes()))
}

/// JSON with object keys sorted at every level (serde_json may keep insertion order).
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Who asked, and the terms, as the operator recorded them when the request was made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Terms {
    /// Who may approve.
    pub approvers: Grantors,
    /// Four eyes: neither the grantor nor the owner may approve.
    pub four_eyes: bool,
    /// The human a delegated request acts for.
    pub on_behalf_of: Option<String>,
    /// The agent's owner, when the owner is a user.
    pub owner: Option<String>,
    /// The ServiceAccount the agent's workload runs as (`namespace`, `name`).
    pub service_account: Option<(String, String)>,
}

/// Why `who` may not answer under `terms`, if they may not (the RBAC verb aside).
pub fn check_approver(who: &Grantor, terms: &Terms) -> Result<(), String> {
    let name = &who.username;
    if let Some((ns, sa)) = &terms.service_account
        && *name == format!("system:serviceaccount:{ns}:{sa}")
    {
        return Err(format!(
            "{name} is the agent's own ServiceAccount: an agent never approves its own actions"
        ));
    }
    if !is_person(name) || name.starts_with("system:serviceaccount:") {
        return Err(format!("{name} is not a person: only a human may approve or deny"));
    }
    let listed = terms.approvers.users.iter().any(|u| u == name);
    let member = terms.approvers.groups.iter().any(|g| who.groups.contains(g));
    if !listed && !member {
        return Err(format!(
            "{name} is not among the approvers of this rule (users {:?}, groups {:?})",
            terms.approvers.users, terms.approvers.groups
        ));
    }
    if terms.four_eyes {
        if terms.on_behalf_of.as_deref() == Some(name.as_str()) {
            return Err(format!(
                "{name} is the human the agent acts for, and the rule asks for four eyes: someone else must approve"
            ));
        }
        if terms.owner.as_deref() == Some(name.as_str()) {
            return Err(format!(
                "{name} owns the agent, and the rule asks for four eyes: someone else must approve"
            ));
        }
    }
    Ok(())
}

/// A human's answer as the operator's webhook recorded it at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Who answered.
    pub by: Grantor,
    /// Approve or Deny.
    pub verdict: ApprovalVerdict,
    /// Their reason.
    pub reason: Option<String>,
}

/// What the operator decided about a request after the answer's re-check, or its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting.
    Pending,
    /// Approved by `by`, usable `uses_left` more times until `until`.
    Approved {
        /// The approver.
        by: String,
        /// Until when.
        until: Timestamp,
        /// How many more allowed decisions.
        uses_left: u32,
    },
    /// Denied (by a human, on re-check, or by expiry), with why.
    Denied(String),
    /// Used up.
    Used,
    /// Approved but not used in time.
    Expired,
}

/// One approval request as the operator recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The request's name (its id).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// What it is bound to.
    pub binding: String,
    /// The agent's UID.
    pub agent_uid: String,
    /// Who may answer.
    pub terms: Terms,
    /// When it ends unanswered.
    pub expires_at: Timestamp,
    /// How long an approval may be used.
    pub valid_for_secs: u64,
    /// How many allowed decisions an approval covers.
    pub uses: u32,
    /// The answer admission recorded, if any (re-checked before it counts).
    pub answer: Option<Answer>,
    /// What the operator decided.
    pub state: State,
}

/// Where a request stands at one moment, for the decision API and the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Waiting for an answer until the instant given.
    Pending(Timestamp),
    /// Approved and usable.
    Approved {
        /// The approver.
        by: String,
        /// How many more uses.
        uses_left: u32,
    },
    /// Denied, with why; it stays in force (a new request is not made) until the original one would
    /// have ended, so an agent cannot ask again and again.
    Denied(String),
    /// Over: used up, expired unused, or denied long enough ago. The next request is a new one.
    Over,
}

impl Entry {
    /// Where it stands at `now` (an expiry counts at once, before the controller records it).
    pub fn standing(&self, now: Timestamp) -> Standing {
        match &self.state {
            State::Pending if now >= self.expires_at => Standing::Over,
            State::Pending => Standing::Pending(self.expires_at),
            State::Approved { by, until, uses_left } if now < *until && *uses_left > 0 => {
                Standing::Approved { by: by.clone(), uses_left: *uses_left }
            }
            State::Denied(why) if now < self.expires_at => Standing::Denied(why.clone()),
            State::Approved { .. } | State::Denied(_) | State::Used | State::Expired => Standing::Over,
        }
    }

    /// The phase status reports, at `now`.
    pub fn phase(&self, now: Timestamp) -> ApprovalPhase {
        match &self.state {
            State::Pending if now >= self.expires_at => ApprovalPhase::Denied,
            State::Pending => ApprovalPhase::Pending,
            State::Approved { until, .. } if now >= *until => ApprovalPhase::Expired,
            State::Approved { .. } => ApprovalPhase::Approved,
            State::Denied(_) => ApprovalPhase::Denied,
            State::Used => ApprovalPhase::Used,
            State::Expired => ApprovalPhase::Expired,
        }
    }
}

/// Every approval request the operator recorded, by the request object's UID, with an index from each
/// binding to its latest request: the part of the [`Ledger`](super::ledger::Ledger) about approvals.
#[derive(Debug, Clone, Default)]
pub struct Book {
    by_uid: HashMap<String, Entry>,
    by_binding: HashMap<String, String>,
}

impl Book {
    /// The request with object UID `uid`.
    pub fn get(&self, uid: &str) -> Option<&Entry> {
        self.by_uid.get(uid)
    }

    /// The latest request bound to `binding`, with its object UID.
    pub fn by_binding(&self, binding: &str) -> Option<(&str, &Entry)> {
        let uid = self.by_binding.get(binding)?;
        Some((uid.as_str(), self.by_uid.get(uid)?))
    }

    /// How many requests of the agent `agent_uid` wait for an answer at `now`.
    pub fn pending_of(&self, agent_uid: &str, now: Timestamp) -> usize {
        self.by_uid
            .values()
            .filter(|e| e.agent_uid == agent_uid && matches!(e.standing(now), Standing::Pending(_)))
            .count()
    }

    /// Takes in one durable record about an ApprovalRequest: its creation by the operator, a human's
    /// answer as admission recorded it, the operator's decisions, uses, and the object's deletion.
    pub fn apply(&mut self, record: &Record) {
        let Some(uid) = record.object.uid.as_deref() else { return };
        let d = &record.details;
        let Some(action) = Action::parse(&record.action) else { return };
        match action {
            Action::ApprovalRequest => {
                let Some(entry) = requested(record) else { return };
                self.by_binding.insert(entry.binding.clone(), uid.to_owned());
                self.by_uid.insert(uid.to_owned(), entry);
            }
            Action::AdmissionUpdate if record.outcome == Outcome::Success => {
                let Some(e) = self.by_uid.get_mut(uid) else { return };
                let verdict = match d.get(a::DETAIL_APPROVAL_VERDICT).map(String::as_str) {
                    Some("Approve") => ApprovalVerdict::Approve,
                    Some("Deny") => ApprovalVerdict::Deny,
                    _ => return,
                };
                if e.answer.is_none() {
                    e.answer = Some(Answer {
                        by: requester(d),
                        verdict,
                        reason: d.get(a::DETAIL_APPROVAL_REASON).cloned(),
                    });
                }
            }
            Action::AdmissionDelete if record.outcome == Outcome::Success => {
                if let Some(e) = self.by_uid.remove(uid)
                    && self.by_binding.get(&e.binding).is_some_and(|u| u == uid)
                {
                    self.by_binding.remove(&e.binding);
                }
            }
            Action::ApprovalApprove => {
                let Some(e) = self.by_uid.get_mut(uid) else { return };
                let until = d.get(a::DETAIL_APPROVED_UNTIL).and_then(|t| t.parse().ok());
                if let (State::Pending, Some(until)) = (&e.state, until) {
                    let by = d.get(a::DETAIL_DECIDED_BY).cloned().unwrap_or_default();
                    e.state = State::Approved { by, until, uses_left: e.uses };
                }
            }
            Action::ApprovalDeny => {
                if let Some(e) = self.by_uid.get_mut(uid)
                    && e.state == State::Pending
                {
                    e.state = State::Denied(record.reason.clone());
                }
            }
            Action::ApprovalExpire => {
                if let Some(e) = self.by_uid.get_mut(uid) {
                    e.state = match e.state {
                        State::Pending => State::Denied(record.reason.clone()),
                        State::Approved { .. } => State::Expired,
                        ref other => other.clone(),
                    };
                }
            }
            Action::ApprovalUse => {
                if let Some(e) = self.by_uid.get_mut(uid)
                    && let State::Approved { uses_left, .. } = &mut e.state
                {
                    *uses_left = uses_left.saturating_sub(1);
                    if *uses_left == 0 {
                        e.state = State::Used;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The requester an admission record names.
fn requester(d: &std::collections::BTreeMap<String, String>) -> Grantor {
    Grantor {
        username: d.get(a::DETAIL_REQUESTER_USERNAME).cloned().unwrap_or_default(),
        uid: d.get(a::DETAIL_REQUESTER_UID).cloned(),
        groups: d
            .get(a::DETAIL_REQUESTER_GROUPS)
            .map(|g| serde_json::from_str::<Vec<String>>(g).unwrap_or_else(|_| vec![g.clone()]))
            .unwrap_or_default(),
    }
}

/// The request an `approval.request` record describes; None when a field it needs is missing.
fn requested(record: &Record) -> Option<Entry> {
    let d = &record.details;
    let approvers: Grantors = serde_json::from_str(d.get(a::DETAIL_APPROVERS)?).ok()?;
    let service_account = d.get(a::DETAIL_SERVICE_ACCOUNT).and_then(|s| {
        let (ns, name) = s.split_once(':')?;
        Some((ns.to_owned(), name.to_owned()))
    });
    Some(Entry {
        name: record.object.name.clone(),
        namespace: record.object.namespace.clone().unwrap_or_default(),
        binding: d.get(a::DETAIL_BINDING)?.clone(),
        agent_uid: d.get(a::DETAIL_AGENT_UID)?.clone(),
        terms: Terms {
            approvers,
            four_eyes: d.get(a::DETAIL_FOUR_EYES).is_some_and(|v| v == "true"),
            on_behalf_of: d.get(a::DETAIL_ON_BEHALF_OF).cloned(),
            owner: d.get(a::DETAIL_OWNER).cloned(),
            service_account,
        },
        expires_at: d.get(a::DETAIL_EXPIRES_AT)?.parse().ok()?,
        valid_for_secs: d.get(a::DETAIL_VALID_FOR_SECONDS)?.parse().ok()?,
        uses: d.get(a::DETAIL_USES)?.parse().ok()?,
        answer: None,
        state: State::Pending,
    })
}

/// A request `a/r` (agent UID `a-1`) that ends unanswered at 2026-12-01T10:15:00Z; approvals last 5
/// minutes, for one use (tests of the readers of the book).
#[cfg(test)]
pub(crate) fn fixture(state: State, terms: Terms) -> Entry {
    Entry {
        name: "r".into(),
        namespace: "a".into(),
        binding: "b".into(),
        agent_uid: "a-1".into(),
        terms,
        expires_at: "2026-12-01T10:15:00Z".parse().unwrap_or_default(),
        valid_for_secs: 300,
        uses: 1,
        answer: None,
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bound<'a>(context: &'a Map<String, Value>) -> Bound<'a> {
        Bound {
            agent_uid: "a-1",
            delegation_uid: Some("d-1"),
            audience: "pay",
            action: "refund",
            resource: "pay:orders/1",
            tool: None,
            context,
            policy: "p",
            rule: "r",
        }
    }

    fn ctx(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_binding_covers_exactly_one_request_whatever_the_key_order() {
        let a = ctx(json!({"amount": 900, "order": {"id": "1", "region": "eu"}}));
        let b = ctx(json!({"order": {"region": "eu", "id": "1"}, "amount": 900}));
        assert_eq!(binding(&bound(&a)), binding(&bound(&b)));
        let more = ctx(json!({"amount": 9000, "order": {"id": "1", "region": "eu"}}));
        let other = ctx(json!({"amount": 900, "order": {"id": "2", "region": "eu"}}));
        let string = ctx(json!({"amount": "900", "order": {"id": "1", "region": "eu"}}));
        let base = binding(&bound(&a));
        for c in [&more, &other, &string] {
            assert_ne!(binding(&bound(c)), base, "{c:?}");
        }
        for change in 0..7 {
            let mut x = bound(&a);
            match change {
                0 => x.agent_uid = "a-2",
                1 => x.delegation_uid = None,
                2 => x.audience = "crm",
                3 => x.action = "read",
                4 => x.resource = "pay:orders/2",
                5 => x.tool = Some("t"),
                _ => x.rule = "r2",
            }
            assert_ne!(binding(&x), base, "change {change}");
        }
        // A value cannot spill into the next field.
        let mut y = bound(&a);
        y.action = "refund\"\nresource=\"x";
        assert_ne!(binding(&y), base);
    }

    fn terms() -> Terms {
        Terms {
            approvers: Grantors { users: vec!["bob".into()], groups: vec!["leads".into()] },
            four_eyes: true,
            on_behalf_of: Some("alice".into()),
            owner: Some("olga".into()),
            service_account: Some(("a".into(), "bot-sa".into())),
        }
    }

    fn who(name: &str, groups: &[&str]) -> Grantor {
        Grantor { username: name.into(), uid: None, groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    #[test]
    fn only_a_listed_person_other_than_the_grantor_and_owner_approves() {
        assert!(check_approver(&who("bob", &[]), &terms()).is_ok());
        assert!(check_approver(&who("carol", &["leads"]), &terms()).is_ok());
        let refused = |w: Grantor, t: &Terms, needle: &str| {
            let e = check_approver(&w, t).expect_err(needle);
            assert!(e.contains(needle), "{e}");
        };
        refused(who("carol", &["devs"]), &terms(), "not among the approvers");
        refused(who("system:serviceaccount:a:bot-sa", &["leads"]), &terms(), "own ServiceAccount");
        refused(who("system:serviceaccount:a:ci", &["leads"]), &terms(), "not a person");
        refused(who("system:admin", &["leads"]), &terms(), "not a person");
        refused(who("alice", &["leads"]), &terms(), "acts for");
        refused(who("olga", &["leads"]), &terms(), "owns the agent");
        let two = Terms { four_eyes: false, ..terms() };
        assert!(check_approver(&who("alice", &["leads"]), &two).is_ok(), "no four eyes asked");
    }

    fn entry(state: State) -> Entry {
        fixture(state, terms())
    }

    #[test]
    fn a_request_expires_to_denied_and_an_approval_runs_out() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let pending = entry(State::Pending);
        assert!(matches!(pending.standing(t("2026-12-01T10:00:00Z")), Standing::Pending(_)));
        assert_eq!(pending.standing(t("2026-12-01T10:15:00Z")), Standing::Over);
        assert_eq!(pending.phase(t("2026-12-01T10:15:00Z")), ApprovalPhase::Denied);
        let approved =
            entry(State::Approved { by: "bob".into(), until: t("2026-12-01T10:05:00Z"), uses_left: 1 });
        assert_eq!(
            approved.standing(t("2026-12-01T10:04:59Z")),
            Standing::Approved { by: "bob".into(), uses_left: 1 }
        );
        assert_eq!(approved.standing(t("2026-12-01T10:05:00Z")), Standing::Over);
        assert_eq!(approved.phase(t("2026-12-01T10:05:00Z")), ApprovalPhase::Expired);
        let used =
            entry(State::Approved { by: "bob".into(), until: t("2026-12-01T10:05:00Z"), uses_left: 0 });
        assert_eq!(used.standing(t("2026-12-01T10:00:00Z")), Standing::Over);
        let denied = entry(State::Denied("no".into()));
        assert_eq!(denied.standing(t("2026-12-01T10:00:00Z")), Standing::Denied("no".into()));
        assert_eq!(denied.standing(t("2026-12-01T10:16:00Z")), Standing::Over);
    }
}
