//! The ApprovalRequest webhook, pure: who may create one (the operator only), and who may answer one (a
//! person among the rule's approvers who holds the RBAC verb `approve`, never the agent itself, and under
//! four eyes neither the human the agent acts for nor its owner). The approval controller
//! (src/controller/approval.rs) checks the answer again from fresh API state before it counts.

use jiff::Timestamp;
use kube::core::admission::Operation;
use serde_json::Value;

use super::admission::Verdict;
use super::validate::Request;
use crate::api::{ApprovalDecision, Grantor};
use crate::registry::approval::{self, Standing};

/// The RBAC verb on `approvalrequests` that lets a person answer one (resourceNames allowed).
pub use crate::names::APPROVE_VERB;

/// What the admission server looked up for an ApprovalRequest change.
#[derive(Debug, Clone)]
pub struct ApprovalFacts<'a> {
    /// The username the operator itself authenticates as (None: unknown, so no create is admitted).
    pub operator_user: Option<&'a str>,
    /// What the operator recorded about this request (by its UID), if anything.
    pub recorded: Option<&'a approval::Entry>,
    /// Whether the requester holds `approve` on this request; Err when that could not be asked.
    pub may_approve: Option<Result<bool, String>>,
    /// Now.
    pub now: Timestamp,
}

/// The answer an UPDATE gives, when it is the one that sets `spec.decision`.
pub fn answer_of(req: &Request<'_>) -> Option<ApprovalDecision> {
    if req.operation != Operation::Update {
        return None;
    }
    let decision = |o: Option<&Value>| o.and_then(|o| o.pointer("/spec/decision")).cloned();
    match (decision(req.old_object), decision(req.object)) {
        (None, Some(new)) => serde_json::from_value(new).ok(),
        _ => None,
    }
}

/// The verdict on an ApprovalRequest change (the general rules of [`super::validate::decide`] first).
pub fn decide(namespace: &str, name: &str, req: &Request<'_>, facts: &ApprovalFacts<'_>) -> Verdict {
    let who = &req.requester.username;
    match req.operation {
        Operation::Create => {
            if facts.operator_user.is_some_and(|u| u == who) {
                Verdict::allow()
            } else {
                Verdict::Deny(format!(
                    "{who} may not create ApprovalRequests: agentiam makes them itself when a decision needs a \
                     human's approval, and answers to them are given with `kubectl agentiam approve|deny`"
                ))
            }
        }
        Operation::Update => {
            let Some(answer) = answer_of(req) else { return Verdict::allow() };
            let Some(entry) = facts.recorded else {
                return Verdict::Deny(format!(
                    "ApprovalRequest {namespace}/{name} was not made by agentiam; it approves nothing"
                ));
            };
            match entry.standing(facts.now) {
                Standing::Pending(_) => {}
                Standing::Approved { .. } | Standing::Denied(_) | Standing::Over => {
                    return Verdict::Deny(format!(
                        "ApprovalRequest {namespace}/{name} is {}, no longer waiting for an answer",
                        entry.phase(facts.now).as_str()
                    ));
                }
            }
            let grantor = Grantor {
                username: who.clone(),
                uid: req.requester.uid.clone(),
                groups: req.requester.groups.clone(),
            };
            if let Err(e) = approval::check_approver(&grantor, &entry.terms) {
                return Verdict::Deny(e);
            }
            match &facts.may_approve {
                Some(Ok(true)) => {}
                Some(Ok(false)) | None => {
                    return Verdict::Deny(format!(
                        "{who} may not answer approval requests here: that needs the RBAC verb \"{APPROVE_VERB}\" \
                         on approvalrequests.agentiam.dev/{name} in {namespace}"
                    ));
                }
                Some(Err(e)) => {
                    return Verdict::Deny(format!(
                        "agentiam could not check whether {who} may approve ({e}); retry"
                    ));
                }
            }
            if answer.reason.as_deref().is_some_and(|r| r.chars().any(char::is_control)) {
                return Verdict::Deny("spec.decision.reason must not hold control characters".to_owned());
            }
            Verdict::allow()
        }
        Operation::Delete | Operation::Connect => Verdict::allow(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::Grantors;
    use crate::registry::approval::{Entry, State, Terms};
    use crate::webhook::validate::{Kind, Requester};

    fn entry(state: State) -> Entry {
        let terms = Terms {
            approvers: Grantors { users: vec![], groups: vec!["leads".into()] },
            four_eyes: true,
            on_behalf_of: Some("alice".into()),
            owner: None,
            service_account: Some(("a".into(), "bot-sa".into())),
        };
        approval::fixture(state, terms)
    }

    fn judge(who: &str, groups: &[&str], recorded: Option<&Entry>, sar: Option<bool>) -> Verdict {
        let requester = Requester {
            username: who.into(),
            uid: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let old = json!({"spec": {"request": {}}});
        let new = json!({"spec": {"request": {}, "decision": {"verdict": "Approve", "reason": "ok"}}});
        let req = Request {
            kind: Kind::ApprovalRequest,
            operation: Operation::Update,
            requester: &requester,
            requester_is_agent: &[],
            object: Some(&new),
            old_object: Some(&old),
        };
        let facts = ApprovalFacts {
            operator_user: Some("system:serviceaccount:agentiam-system:agentiam"),
            recorded,
            may_approve: sar.map(Ok),
            now: "2026-12-01T10:00:00Z".parse().unwrap(),
        };
        decide("a", "r", &req, &facts)
    }

    #[test]
    fn an_answer_needs_a_recorded_pending_request_an_approver_and_the_verb() {
        let pending = entry(State::Pending);
        assert!(judge("bob", &["leads"], Some(&pending), Some(true)).allowed());
        let refused = |v: Verdict, needle: &str| {
            let Verdict::Deny(m) = v else { panic!("admitted: {needle}") };
            assert!(m.contains(needle), "{m}");
        };
        refused(judge("bob", &["leads"], None, Some(true)), "not made by agentiam");
        refused(judge("bob", &["leads"], Some(&pending), Some(false)), "RBAC verb \"approve\"");
        refused(judge("bob", &["devs"], Some(&pending), Some(true)), "not among the approvers");
        refused(judge("alice", &["leads"], Some(&pending), Some(true)), "four eyes");
        refused(
            judge("system:serviceaccount:a:bot-sa", &["leads"], Some(&pending), Some(true)),
            "own ServiceAccount",
        );
        let denied = entry(State::Denied("no".into()));
        refused(judge("bob", &["leads"], Some(&denied), Some(true)), "no longer waiting");
    }

    #[test]
    fn only_the_operator_creates_requests() {
        let op = Requester {
            username: "system:serviceaccount:agentiam-system:agentiam".into(),
            ..Requester::default()
        };
        let bob = Requester { username: "bob".into(), ..Requester::default() };
        let obj = json!({"spec": {}});
        for (who, ok) in [(&op, true), (&bob, false)] {
            let req = Request {
                kind: Kind::ApprovalRequest,
                operation: Operation::Create,
                requester: who,
                requester_is_agent: &[],
                object: Some(&obj),
                old_object: None,
            };
            let facts = ApprovalFacts {
                operator_user: Some("system:serviceaccount:agentiam-system:agentiam"),
                recorded: None,
                may_approve: None,
                now: Timestamp::now(),
            };
            assert_eq!(decide("a", "r", &req, &facts).allowed(), ok, "{}", who.username);
        }
    }
}
