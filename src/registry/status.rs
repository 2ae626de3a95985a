//! The status an Agent should have, computed from its spec and current status. Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{AgentPhase, AgentSpec, AgentStatus};
use crate::identity::{SpiffeId, TrustDomain};
use crate::registry::ledger::AgentRecord;
use crate::registry::lifecycle::{Transition, decide_phase};
use crate::registry::revocation::Hold;
use crate::registry::trust::trust_score;
use crate::registry::validate::{ValidAgent, ValidationErrors, desired_state, validate_agent};

/// Condition type: the spec passed validation.
pub const CONDITION_VALID: &str = crate::names::CONDITION_VALID;
/// Condition type: the agent is Active and may act.
pub const CONDITION_READY: &str = crate::names::CONDITION_READY;

/// What the registry decided for one agent.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The status to write.
    pub status: AgentStatus,
    /// The change of phase, if any.
    pub transition: Option<Transition>,
    /// The validation outcome.
    pub validation: Result<ValidAgent, ValidationErrors>,
    /// The Revocation that holds the agent, if any.
    pub hold: Option<Hold>,
    /// The UID of the Revocation the transition is due to (it holds now, or it held and was lifted).
    pub cause: Option<String>,
}

/// The identifying facts of the object being decided about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Object UID.
    pub uid: &'a str,
    /// metadata.generation.
    pub generation: i64,
}

/// Sets a condition by type, keeping `lastTransitionTime` when the status did not change so that re-running
/// the reconciler changes nothing.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: Some(generation),
        last_transition_time: Time(now),
    }
}

/// A time as a condition carries it: whole seconds, which is all the API server stores, so a status
/// decided twice from the same records compares equal to the one read back.
fn condition_time(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Decides the status of an agent from its spec and from what the operator itself recorded about it
/// (`recorded`, from the [`ledger`](super::ledger)), never from the status it finds: every field is
/// computed, so whatever else wrote the status is overwritten by the next write. `previous` (the status as
/// read) is consulted only for the `Valid` condition's transition time of an agent whose records predate
/// the validity detail.
pub fn decide(
    trust_domain: &TrustDomain,
    subject: Subject<'_>,
    spec: &AgentSpec,
    recorded: Option<&AgentRecord>,
    previous: Option<&AgentStatus>,
    hold: Option<&Hold>,
    now: Timestamp,
) -> Decision {
    let validation = validate_agent(trust_domain, subject.namespace, subject.name, spec);
    let current_phase = recorded.and_then(|r| r.phase);
    let owned = spec.owner.is_some();
    let phase =
        decide_phase(current_phase, desired_state(spec), validation.is_ok(), hold.map(|h| h.mode), owned);
    let transition = Transition::between(current_phase, phase);
    // The Revocation a transition is due to: the one holding now, or for a lift the one that held.
    let cause = hold
        .and_then(|h| h.uid.as_deref().map(str::to_owned))
        .or_else(|| recorded.and_then(|r| r.held_by.clone()));

    let g = subject.generation;
    let valid_now = validation.is_ok();
    let valid_since = match recorded.and_then(|r| r.valid) {
        Some((was, since)) if was == valid_now => Some(since),
        Some(_) => None,
        None => previous
            .into_iter()
            .flat_map(|s| s.conditions.iter())
            .find(|c| c.type_ == CONDITION_VALID && (c.status == "True") == valid_now)
            .map(|c| c.last_transition_time.0),
    };
    let valid = match &validation {
        Ok(_) => condition(CONDITION_VALID, true, "SpecValid", "the spec is valid".into(), g, now),
        Err(e) => condition(CONDITION_VALID, false, "SpecInvalid", e.to_string(), g, now),
    };
    let valid = Condition { last_transition_time: Time(condition_time(valid_since.unwrap_or(now))), ..valid };
    let (ready, reason, message) = match phase {
        AgentPhase::Active => (true, "Active", "the agent is active".to_owned()),
        AgentPhase::Discovered => (
            false,
            "Discovered",
            "a shadow agent: discovery found it running with no registered Agent; it holds no credentials \
             until its owner adopts it (spec.owner, or kubectl agentiam adopt)"
                .to_owned(),
        ),
        AgentPhase::Pending => {
            (false, "Pending", "the agent waits for a valid spec (see the Valid condition)".into())
        }
        AgentPhase::Suspended => match hold {
            Some(h) => (false, "Suspended", format!("suspended by Revocation {}", h.describe())),
            None => (false, "Suspended", "the owner suspended the agent".into()),
        },
        AgentPhase::Retired => (false, "Retired", "the agent is retired and archived".into()),
        AgentPhase::Revoked => match hold {
            Some(h) => (false, "Revoked", format!("revoked for good by Revocation {}", h.describe())),
            None => (false, "Revoked", "the agent was revoked by the kill switch".into()),
        },
    };
    // The phase began when the operator recorded it; a phase about to be recorded begins now.
    let ready_since = match (transition, recorded.and_then(|r| r.phase_since)) {
        (None, Some(since)) => since,
        _ => now,
    };
    let ready = condition(CONDITION_READY, ready, reason, message, g, condition_time(ready_since));
    let status = AgentStatus {
        phase: Some(phase),
        spiffe_id: SpiffeId::for_agent(trust_domain, subject.namespace, subject.name)
            .ok()
            .map(|id| id.to_string()),
        trust_score: Some(trust_score(spec).score),
        uid: Some(subject.uid.to_owned()),
        observed_generation: Some(g),
        conditions: vec![valid, ready],
        credentials: None,
        discovery: None,
    };
    Decision { status, transition, validation, hold: hold.cloned(), cause }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DesiredState, LifecycleSpec, Owner, PrincipalKind};

    fn spec() -> AgentSpec {
        AgentSpec::new(Owner { kind: PrincipalKind::Team, name: "support".into() }, "triage")
    }

    fn subject(generation: i64) -> Subject<'static> {
        Subject { namespace: "ns", name: "bot", uid: "uid-1", generation }
    }

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn cond<'a>(s: &'a AgentStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    /// What the ledger holds once `d`'s transition (if any) was recorded at `at`.
    fn recorded(d: &Decision, at: Timestamp) -> AgentRecord {
        AgentRecord {
            phase: d.status.phase,
            phase_since: Some(at),
            generation: d.status.observed_generation,
            trust_score: d.status.trust_score,
            valid: Some((d.validation.is_ok(), at)),
            held_by: d.hold.as_ref().and_then(|h| h.uid.as_deref().map(str::to_owned)),
            trust_penalty: 0,
            issuances: Vec::new(),
        }
    }

    #[test]
    fn a_revocation_suspends_and_its_lift_resumes_under_keys_of_their_own() {
        use crate::api::RevocationMode;
        let hold = |mode| Hold { namespace: "ns".into(), name: "stop".into(), uid: Some("r-1".into()), mode };
        let t0 = Timestamp::from_second(1000).unwrap();
        let active = decide(&td(), subject(1), &spec(), None, None, None, t0);
        let rec = recorded(&active, t0);
        let held =
            decide(&td(), subject(1), &spec(), Some(&rec), None, Some(&hold(RevocationMode::Suspend)), t0);
        assert_eq!(held.status.phase, Some(AgentPhase::Suspended));
        let ready = held.status.conditions.iter().find(|c| c.type_ == CONDITION_READY).unwrap();
        assert_eq!(ready.message, "suspended by Revocation ns/stop");
        let suspend = held.transition.unwrap();
        assert_eq!(suspend.audit_key("u1", 1, held.cause.as_deref()), "agent.suspend:u1:1:r-1");
        // Lifted: back to Active, keyed by the Revocation that held (not the first activation's key).
        let rec = recorded(&held, t0);
        let lifted = decide(&td(), subject(1), &spec(), Some(&rec), None, None, t0);
        assert_eq!(lifted.status.phase, Some(AgentPhase::Active));
        let resume = lifted.transition.unwrap();
        assert_eq!(resume.audit_key("u1", 1, lifted.cause.as_deref()), "agent.activate:u1:1:r-1");
        assert_ne!(
            resume.audit_key("u1", 1, lifted.cause.as_deref()),
            active.transition.unwrap().audit_key("u1", 1, active.cause.as_deref())
        );
        // A Revoke is for good: lifting it changes nothing.
        let revoked =
            decide(&td(), subject(1), &spec(), Some(&rec), None, Some(&hold(RevocationMode::Revoke)), t0);
        assert_eq!(revoked.status.phase, Some(AgentPhase::Revoked));
        let rec = recorded(&revoked, t0);
        assert_eq!(
            decide(&td(), subject(1), &spec(), Some(&rec), None, None, t0).status.phase,
            Some(AgentPhase::Revoked)
        );
    }

    #[test]
    fn a_valid_new_agent_becomes_active_with_identity() {
        let d = decide(&td(), subject(1), &spec(), None, None, None, Timestamp::UNIX_EPOCH);
        assert_eq!(d.status.phase, Some(AgentPhase::Active));
        assert_eq!(d.status.spiffe_id.as_deref(), Some("spiffe://example.org/ns/ns/agent/bot"));
        assert_eq!(d.status.trust_score, Some(250));
        assert_eq!(d.status.observed_generation, Some(1));
        assert_eq!(cond(&d.status, "Ready").status, "True");
        assert_eq!(cond(&d.status, "Valid").observed_generation, Some(1));
        assert!(d.transition.unwrap().grants());
    }

    #[test]
    fn deciding_twice_changes_nothing() {
        let t0 = Timestamp::from_second(10).unwrap();
        let first = decide(&td(), subject(1), &spec(), None, None, None, t0);
        let rec = recorded(&first, t0);
        let later = Timestamp::from_second(1_000_000).unwrap();
        let second = decide(&td(), subject(1), &spec(), Some(&rec), Some(&first.status), None, later);
        assert_eq!(second.status, first.status);
        assert!(second.transition.is_none());
    }

    #[test]
    fn the_status_found_is_never_an_input_only_the_records_are() {
        let t0 = Timestamp::from_second(10).unwrap();
        let first = decide(&td(), subject(1), &spec(), None, None, None, t0);
        let rec = recorded(&first, t0);
        // Whoever can write agents/status forges every field the operator owns, and adds some.
        let mut forged = first.status.clone();
        forged.phase = Some(AgentPhase::Retired);
        forged.trust_score = Some(1000);
        forged.observed_generation = Some(99);
        forged.credentials = Some(crate::api::CredentialStatus {
            key_id: Some("forged".into()),
            expires_at: Some("2999-01-01T00:00:00Z".into()),
            ..Default::default()
        });
        for c in &mut forged.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        forged
            .conditions
            .push(Condition { type_: "Approved".into(), ..cond(&first.status, "Ready").clone() });
        let again = decide(&td(), subject(1), &spec(), Some(&rec), Some(&forged), None, t0);
        assert!(again.transition.is_none(), "a forged terminal phase is not a phase");
        assert_eq!(again.status, first.status, "every forged field is decided anew");
    }

    #[test]
    fn a_terminal_phase_the_operator_recorded_stays() {
        let t0 = Timestamp::from_second(10).unwrap();
        let mut s = spec();
        s.lifecycle = Some(LifecycleSpec { desired_state: DesiredState::Retired });
        let retired = decide(&td(), subject(1), &s, None, None, None, t0);
        let rec = recorded(&retired, t0);
        let back = decide(&td(), subject(2), &spec(), Some(&rec), None, None, t0);
        assert_eq!(back.status.phase, Some(AgentPhase::Retired));
        assert!(back.transition.is_none());
    }

    #[test]
    fn an_invalid_spec_gives_valid_false_with_the_field() {
        let mut s = spec();
        s.purpose = " ".into();
        let d = decide(&td(), subject(2), &s, None, None, None, Timestamp::UNIX_EPOCH);
        assert_eq!(d.status.phase, Some(AgentPhase::Pending));
        let v = cond(&d.status, "Valid");
        assert_eq!((v.status.as_str(), v.reason.as_str()), ("False", "SpecInvalid"));
        assert!(v.message.contains("spec.purpose"), "{}", v.message);
        assert_eq!(cond(&d.status, "Ready").reason, "Pending");
    }

    #[test]
    fn suspend_then_resume_changes_ready_and_its_transition_time() {
        let t0 = Timestamp::from_second(10).unwrap();
        let active = decide(&td(), subject(1), &spec(), None, None, None, t0);
        let rec = recorded(&active, t0);
        let mut s = spec();
        s.lifecycle = Some(LifecycleSpec { desired_state: DesiredState::Suspended });
        let t1 = Timestamp::from_second(100).unwrap();
        let suspended = decide(&td(), subject(2), &s, Some(&rec), Some(&active.status), None, t1);
        assert_eq!(suspended.status.phase, Some(AgentPhase::Suspended));
        assert_eq!(suspended.transition.unwrap().action().as_str(), "agent.suspend");
        assert_eq!(cond(&suspended.status, "Ready").last_transition_time, Time(t1));
        // Valid did not change, so its transition time is kept.
        assert_eq!(cond(&suspended.status, "Valid").last_transition_time, Time(t0));
    }
}
