//! The Agent lifecycle: which phase an agent is in, and what a change of phase means.
//!
//! Pure. The reconciler asks `decide_phase` for the target phase and `Transition::between` for what to
//! record; it never invents phases itself, so this file is the whole state machine:
//!
//! ```text
//!            valid             desiredState=Suspended
//!  (new) ──> Pending ──> Active <──────────────────────> Suspended
//!              ^  invalid   │                                │
//!              └────────────┘                                │
//!  any (but Revoked) ── desiredState=Retired ──> Retired (terminal)
//!  any (but Retired) ── a Revoke Revocation holds ──> Revoked (terminal)
//!  a Suspend Revocation holds: Suspended whatever the owner asks (but Retired); lifted: as above
//!  (new, no owner: a shadow agent discovery recorded) ──> Discovered ── owner named (adopted) ──> as above
//! ```
//!
//! The current phase is the one the operator recorded (the [`ledger`](super::ledger)), never the one found in
//! the status: a forged `Retired` in the status is not a retirement.

use crate::api::{AgentPhase, DesiredState, RevocationMode};
use crate::audit::{Action, IntentKey};

/// The phase an agent should be in.
///
/// Retired and Revoked are terminal: nothing the owner writes brings an agent back from them. Suspension and
/// retirement are honoured even when the spec is invalid, because they only take rights away; Active needs
/// a valid spec.
///
/// `held` is the mode of the Revocation that holds the agent, if one does: a Revoke ends it for good, a
/// Suspend stops it until lifted (retirement still goes ahead: it takes everything away too).
///
/// `owned` says whether the spec names an owner. An agent without one is a shadow record: it is
/// `Discovered`, never Active, whatever else the spec says, until an owner adopts it.
pub fn decide_phase(
    current: Option<AgentPhase>,
    desired: DesiredState,
    valid: bool,
    held: Option<RevocationMode>,
    owned: bool,
) -> AgentPhase {
    match (current, desired, held) {
        (Some(AgentPhase::Retired), _, _) => AgentPhase::Retired,
        (Some(AgentPhase::Revoked), _, _) => AgentPhase::Revoked,
        (_, _, Some(RevocationMode::Revoke)) => AgentPhase::Revoked,
        (_, DesiredState::Retired, _) => AgentPhase::Retired,
        _ if !owned => AgentPhase::Discovered,
        (_, _, Some(RevocationMode::Suspend)) | (_, DesiredState::Suspended, None) => AgentPhase::Suspended,
        (_, DesiredState::Active, None) if valid => AgentPhase::Active,
        (_, DesiredState::Active, None) => AgentPhase::Pending,
    }
}

/// A change of phase, with the names it is recorded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The phase before (None for a new agent).
    pub from: Option<AgentPhase>,
    /// The phase after.
    pub to: AgentPhase,
}

impl Transition {
    /// The transition from `from` to `to`, or None if the phase does not change.
    pub fn between(from: Option<AgentPhase>, to: AgentPhase) -> Option<Self> {
        (from != Some(to)).then_some(Self { from, to })
    }

    /// The audit action, e.g. "agent.activate".
    pub fn action(&self) -> Action {
        match (self.from, self.to) {
            (_, AgentPhase::Active) => Action::AgentActivate,
            // The ledger takes the phase from the action, so each phase has its own.
            (_, AgentPhase::Discovered) => Action::AgentDiscover,
            (None, AgentPhase::Pending) => Action::AgentRegister,
            (Some(_), AgentPhase::Pending) => Action::AgentDeactivate,
            (_, AgentPhase::Suspended) => Action::AgentSuspend,
            (_, AgentPhase::Retired) => Action::AgentRetire,
            (_, AgentPhase::Revoked) => Action::AgentRevoke,
        }
    }

    /// The Kubernetes Event reason, PascalCase.
    pub fn event_reason(&self) -> &'static str {
        match (self.from, self.to) {
            (Some(AgentPhase::Suspended), AgentPhase::Active) => "Resumed",
            (_, AgentPhase::Active) => "Activated",
            (None, AgentPhase::Discovered) => "ShadowAgentDiscovered",
            (Some(_), AgentPhase::Discovered) => "Deactivated",
            (Some(AgentPhase::Discovered), AgentPhase::Pending) => "Adopted",
            (None, AgentPhase::Pending) => "Registered",
            (Some(_), AgentPhase::Pending) => "Deactivated",
            (_, AgentPhase::Suspended) => "Suspended",
            (_, AgentPhase::Retired) => "Retired",
            (_, AgentPhase::Revoked) => "Revoked",
        }
    }

    /// Whether the transition grants something (and so must be written ahead to the audit log, failing
    /// closed if it cannot be).
    pub fn grants(&self) -> bool {
        self.to == AgentPhase::Active
    }

    /// The idempotency key of this transition for one agent object at one generation. The UID binds it to the
    /// object (a recreated agent of the same name is a different key); the generation separates a second
    /// activation after a suspension by the owner from a retry of the first; `cause`, the UID of the
    /// Revocation that began or stopped holding, does the same for the kill switch, which changes no
    /// generation.
    pub fn audit_key(&self, uid: &str, generation: i64, cause: Option<&str>) -> String {
        let cause = cause.map(str::to_owned);
        IntentKey::Agent { action: self.action(), uid: uid.to_owned(), generation, cause }.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgentPhase::*;

    #[test]
    fn valid_new_agents_become_active_and_invalid_ones_wait() {
        assert_eq!(decide_phase(None, DesiredState::Active, true, None, true), Active);
        assert_eq!(decide_phase(None, DesiredState::Active, false, None, true), Pending);
        assert_eq!(decide_phase(Some(Active), DesiredState::Active, false, None, true), Pending);
    }

    #[test]
    fn suspension_and_retirement_do_not_need_a_valid_spec() {
        assert_eq!(decide_phase(Some(Active), DesiredState::Suspended, false, None, true), Suspended);
        assert_eq!(decide_phase(Some(Pending), DesiredState::Retired, false, None, true), Retired);
        assert_eq!(decide_phase(Some(Suspended), DesiredState::Active, true, None, true), Active);
    }

    #[test]
    fn retired_and_revoked_are_terminal() {
        for desired in [DesiredState::Active, DesiredState::Suspended, DesiredState::Retired] {
            for valid in [true, false] {
                for held in [None, Some(RevocationMode::Suspend), Some(RevocationMode::Revoke)] {
                    assert_eq!(decide_phase(Some(Retired), desired, valid, held, true), Retired);
                    assert_eq!(decide_phase(Some(Revoked), desired, valid, held, true), Revoked);
                }
            }
        }
    }

    #[test]
    fn a_revocation_overrides_the_owner_until_lifted() {
        use RevocationMode::{Revoke, Suspend};
        for current in [None, Some(Pending), Some(Active), Some(Suspended)] {
            for valid in [true, false] {
                assert_eq!(
                    decide_phase(current, DesiredState::Active, valid, Some(Suspend), true),
                    Suspended
                );
                assert_eq!(
                    decide_phase(current, DesiredState::Suspended, valid, Some(Suspend), true),
                    Suspended
                );
                for desired in [DesiredState::Active, DesiredState::Suspended, DesiredState::Retired] {
                    assert_eq!(
                        decide_phase(current, desired, valid, Some(Revoke), true),
                        Revoked,
                        "{desired:?}"
                    );
                }
                assert_eq!(decide_phase(current, DesiredState::Retired, valid, Some(Suspend), true), Retired);
            }
        }
        // Lifted: back to what the owner asks for.
        assert_eq!(decide_phase(Some(Suspended), DesiredState::Active, true, None, true), Active);
        assert_eq!(decide_phase(Some(Suspended), DesiredState::Active, false, None, true), Pending);
    }

    #[test]
    fn transitions_are_named_and_keyed() {
        assert_eq!(Transition::between(Some(Active), Active), None);
        let t = Transition::between(None, Active).unwrap();
        assert_eq!(
            (t.action().as_str(), t.event_reason(), t.grants()),
            ("agent.activate", "Activated", true)
        );
        assert_eq!(t.audit_key("u-1", 3, None), "agent.activate:u-1:3");
        assert_eq!(t.audit_key("u-1", 3, Some("r-1")), "agent.activate:u-1:3:r-1");
        let r = Transition::between(Some(Suspended), Active).unwrap();
        assert_eq!(r.event_reason(), "Resumed");
        let s = Transition::between(Some(Active), Suspended).unwrap();
        assert_eq!((s.action().as_str(), s.grants()), ("agent.suspend", false));
        assert_eq!(Transition::between(None, Pending).unwrap().action().as_str(), "agent.register");
        assert_eq!(Transition::between(Some(Active), Pending).unwrap().action().as_str(), "agent.deactivate");
    }

    #[test]
    fn an_agent_without_an_owner_is_discovered_until_adopted() {
        for current in [None, Some(Discovered)] {
            for valid in [true, false] {
                assert_eq!(decide_phase(current, DesiredState::Active, valid, None, false), Discovered);
                assert_eq!(decide_phase(current, DesiredState::Suspended, valid, None, false), Discovered);
                let held = Some(RevocationMode::Suspend);
                assert_eq!(decide_phase(current, DesiredState::Active, valid, held, false), Discovered);
            }
            // The kill switch and retirement still reach it.
            let revoke = Some(RevocationMode::Revoke);
            assert_eq!(decide_phase(current, DesiredState::Active, true, revoke, false), Revoked);
            assert_eq!(decide_phase(current, DesiredState::Retired, true, None, false), Retired);
        }
        // Adopted: an owner is named; a valid spec activates it like any registered agent.
        assert_eq!(decide_phase(Some(Discovered), DesiredState::Active, true, None, true), Active);
        assert_eq!(decide_phase(Some(Discovered), DesiredState::Active, false, None, true), Pending);
        let t = Transition::between(None, Discovered).unwrap();
        assert_eq!((t.action(), t.event_reason()), (Action::AgentDiscover, "ShadowAgentDiscovered"));
        assert!(!t.grants());
        let adopted = Transition::between(Some(Discovered), Pending).unwrap();
        assert_eq!(adopted.event_reason(), "Adopted");
    }
}
