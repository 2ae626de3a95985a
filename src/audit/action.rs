//! Audit actions and intent keys as types. The log stores both as strings (that is the format, and it is
//! hashed); the code writes and reads them through these types, so nothing parses a key with `split` or
//! matches an action by prefix, and a new action is one variant, not a string to keep in step by hand.

use std::fmt;

/// Every action the operator records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A new agent waiting for a valid spec.
    AgentRegister,
    /// The agent became Active.
    AgentActivate,
    /// An agent that was not Pending went back to Pending (its spec became invalid).
    AgentDeactivate,
    /// The owner suspended the agent.
    AgentSuspend,
    /// The agent was retired for good.
    AgentRetire,
    /// The kill switch revoked the agent for good.
    AgentRevoke,
    /// The spec changed without a change of phase.
    AgentUpdate,
    /// The agent was deleted: its final state.
    AgentArchive,
    /// Someone other than the operator wrote the agent's status.
    AgentStatusOverwritten,
    /// Credentials were issued.
    CredentialIssue,
    /// Credentials were taken away.
    CredentialWithdraw,
    /// The signing keys rotated.
    IssuerRotate,
    /// The signing key set was created.
    IssuerKeysCreate,
    /// The X.509 CA was created.
    IssuerCaCreate,
    /// An authorization decision.
    AuthzDecide,
    /// The checkpoint signing key changed.
    AuditSigningKeyChange,
    /// The log cut a torn final line.
    AuditRecover,
    /// Someone created an agentiam object (the validating webhook's record).
    AdmissionCreate,
    /// Someone updated an agentiam object.
    AdmissionUpdate,
    /// Someone deleted an agentiam object.
    AdmissionDelete,
    /// A delegation came into force.
    DelegationActivate,
    /// A delegation is not in force while its grantee (or one up its chain) is not Active.
    DelegationPend,
    /// A delegation passed its expiry (its own or an ancestor's).
    DelegationExpire,
    /// A Revocation ended a delegation (or one up its chain), for good.
    DelegationRevoke,
    /// A delegation's chain is broken or wider than its parent, for good.
    DelegationInvalidate,
    /// A delegated token was minted for an Active delegation's grantee (an intent, then its outcome).
    DelegationIssue,
    /// A decision needed a human's approval: the operator created an ApprovalRequest for it.
    ApprovalRequest,
    /// A human's approval passed the operator's re-check and is in force.
    ApprovalApprove,
    /// A request was denied: by a human, because its answer failed the re-check, or forged.
    ApprovalDeny,
    /// A request ended unanswered (Denied), or an approval ended unused (Expired).
    ApprovalExpire,
    /// An approval was used: a decision it covers was allowed (durable before the Allow is answered).
    ApprovalUse,
    /// The token endpoint issued an access token (an intent, durable before signing, then its outcome).
    TokenIssue,
    /// The token endpoint refused a request.
    TokenRefuse,
    /// An access token was revoked by its holder or an administrator (RFC 7009), durable before the answer.
    TokenRevoke,
    /// A resource server introspected a token (RFC 7662): who asked, about which token, and the answer.
    TokenIntrospect,
    /// A token exchange (RFC 8693): an intent, durable before the child Delegation is created (it spends
    /// the subject token, the actor token and the client assertion), then its outcome.
    TokenExchange,
    /// Every effect of a Revocation is in place: its targets refused, phases recorded, Secrets gone.
    RevocationEnforce,
    /// A Revocation stopped holding: deleted, or a Suspend past its expiry.
    RevocationLift,
    /// A Revocation with stopWorkloads evicted a pod of an agent it stops.
    RevocationEvict,
    /// A Revocation with emergency asked for the emergency key rotation.
    RevocationRotateKeys,
    /// Someone registered a Shared Signals stream.
    SsfStreamCreate,
    /// Someone deleted a Shared Signals stream.
    SsfStreamDelete,
    /// An agent's behaviour left its baseline (the alert threshold).
    MonitorAlert,
    /// An agent's behaviour left its baseline far enough to suspend it.
    MonitorSuspend,
    /// A shadow agent's record was seen by the Agent controller for the first time (phase Discovered).
    AgentDiscover,
    /// Discovery found a workload that looks like an agent and no registered Agent covers: it recorded a
    /// shadow Agent.
    DiscoveryDetect,
    /// A shadow Agent's workload went: discovery deleted the record.
    DiscoveryCleanup,
    /// Workload admission judged a Pod or workload that looks like an agent, in a namespace that asks for
    /// it (admitted, admitted with warnings, or refused).
    WorkloadAdmit,
    /// The agent gateway answered a call: forwarded (with the upstream's status) or refused.
    GatewayCall,
}

impl Action {
    /// Every action.
    pub const ALL: [Self; 49] = [
        Self::AgentRegister,
        Self::AgentActivate,
        Self::AgentDeactivate,
        Self::AgentSuspend,
        Self::AgentRetire,
        Self::AgentRevoke,
        Self::AgentUpdate,
        Self::AgentArchive,
        Self::AgentStatusOverwritten,
        Self::CredentialIssue,
        Self::CredentialWithdraw,
        Self::IssuerRotate,
        Self::IssuerKeysCreate,
        Self::IssuerCaCreate,
        Self::AuthzDecide,
        Self::AuditSigningKeyChange,
        Self::AuditRecover,
        Self::AdmissionCreate,
        Self::AdmissionUpdate,
        Self::AdmissionDelete,
        Self::DelegationActivate,
        Self::DelegationPend,
        Self::DelegationExpire,
        Self::DelegationRevoke,
        Self::DelegationInvalidate,
        Self::DelegationIssue,
        Self::ApprovalRequest,
        Self::ApprovalApprove,
        Self::ApprovalDeny,
        Self::ApprovalExpire,
        Self::ApprovalUse,
        Self::TokenIssue,
        Self::TokenRefuse,
        Self::TokenRevoke,
        Self::TokenIntrospect,
        Self::TokenExchange,
        Self::RevocationEnforce,
        Self::RevocationLift,
        Self::RevocationEvict,
        Self::RevocationRotateKeys,
        Self::SsfStreamCreate,
        Self::SsfStreamDelete,
        Self::MonitorAlert,
        Self::MonitorSuspend,
        Self::AgentDiscover,
        Self::DiscoveryDetect,
        Self::DiscoveryCleanup,
        Self::WorkloadAdmit,
        Self::GatewayCall,
    ];

    /// The stored spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AgentRegister => "agent.register",
            Self::AgentActivate => "agent.activate",
            Self::AgentDeactivate => "agent.deactivate",
            Self::AgentSuspend => "agent.suspend",
            Self::AgentRetire => "agent.retire",
            Self::AgentRevoke => "agent.revoke",
            Self::AgentUpdate => "agent.update",
            Self::AgentArchive => "agent.archive",
            Self::AgentStatusOverwritten => "agent.status.overwritten",
            Self::CredentialIssue => "credential.issue",
            Self::CredentialWithdraw => "credential.withdraw",
            Self::IssuerRotate => "issuer.rotate",
            Self::IssuerKeysCreate => "issuer.keys.create",
            Self::IssuerCaCreate => "issuer.ca.create",
            Self::AuthzDecide => "authz.decide",
            Self::AuditSigningKeyChange => "audit.signing-key.change",
            Self::AuditRecover => "audit.recover",
            Self::AdmissionCreate => "admission.create",
            Self::AdmissionUpdate => "admission.update",
            Self::AdmissionDelete => "admission.delete",
            Self::DelegationActivate => "delegation.activate",
            Self::DelegationPend => "delegation.pend",
            Self::DelegationExpire => "delegation.expire",
            Self::DelegationRevoke => "delegation.revoke",
            Self::DelegationInvalidate => "delegation.invalidate",
            Self::DelegationIssue => "delegation.issue",
            Self::ApprovalRequest => "approval.request",
            Self::ApprovalApprove => "approval.approve",
            Self::ApprovalDeny => "approval.deny",
            Self::ApprovalExpire => "approval.expire",
            Self::ApprovalUse => "approval.use",
            Self::TokenIssue => "token.issue",
            Self::TokenRefuse => "token.refuse",
            Self::TokenRevoke => "token.revoke",
            Self::TokenIntrospect => "token.introspect",
            Self::TokenExchange => "token.exchange",
            Self::RevocationEnforce => "revocation.enforce",
            Self::RevocationLift => "revocation.lift",
            Self::RevocationEvict => "revocation.evict",
            Self::RevocationRotateKeys => "revocation.rotate-keys",
            Self::SsfStreamCreate => "ssf.stream.create",
            Self::SsfStreamDelete => "ssf.stream.delete",
            Self::MonitorAlert => "monitor.alert",
            Self::MonitorSuspend => "monitor.suspend",
            Self::AgentDiscover => "agent.discover",
            Self::DiscoveryDetect => "discovery.detect",
            Self::DiscoveryCleanup => "discovery.cleanup",
            Self::WorkloadAdmit => "workload.admit",
            Self::GatewayCall => "gateway.call",
        }
    }

    /// The action stored as `s`, if it is one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The registry's records of an agent: its lifecycle, updates, archive and status overwrites.
    pub fn is_registry(self) -> bool {
        self.is_transition()
            || matches!(self, Self::AgentUpdate | Self::AgentArchive | Self::AgentStatusOverwritten)
    }

    /// The credentials step's records.
    pub fn is_credential(self) -> bool {
        matches!(self, Self::CredentialIssue | Self::CredentialWithdraw)
    }

    /// A delegation's phase transitions.
    pub fn is_delegation(self) -> bool {
        matches!(
            self,
            Self::DelegationActivate
                | Self::DelegationPend
                | Self::DelegationExpire
                | Self::DelegationRevoke
                | Self::DelegationInvalidate
        )
    }

    /// An approval request's records.
    pub fn is_approval(self) -> bool {
        matches!(
            self,
            Self::ApprovalRequest
                | Self::ApprovalApprove
                | Self::ApprovalDeny
                | Self::ApprovalExpire
                | Self::ApprovalUse
        )
    }

    /// A phase transition (keyed by UID and generation).
    pub fn is_transition(self) -> bool {
        matches!(
            self,
            Self::AgentRegister
                | Self::AgentDiscover
                | Self::AgentActivate
                | Self::AgentDeactivate
                | Self::AgentSuspend
                | Self::AgentRetire
                | Self::AgentRevoke
        )
    }
}

impl From<Action> for String {
    fn from(a: Action) -> Self {
        a.as_str().to_owned()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key of an intent: which change, of which object. Its stored form ([`fmt::Display`]) is
/// `<action>:<fields...>` and never changes for a variant, because the log holds keys written by earlier
/// versions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IntentKey {
    /// A phase transition, or a spec update, of the agent `uid` at `generation`.
    Agent {
        /// A transition or [`Action::AgentUpdate`].
        action: Action,
        /// The Agent's UID.
        uid: String,
        /// Its `metadata.generation`.
        generation: i64,
        /// The UID of the Revocation that caused the transition (it began to hold, or stopped holding),
        /// which does not change the generation: without it a resume after a suspension would reuse the
        /// key of the first activation.
        cause: Option<String>,
    },
    /// Archiving the agent `uid` on deletion.
    Archive {
        /// The Agent's UID.
        uid: String,
    },
    /// One issuance of credentials to the agent `uid`, at `issued_at_ms` (Unix milliseconds).
    CredentialIssue {
        /// The Agent's UID.
        uid: String,
        /// When it was issued.
        issued_at_ms: i64,
    },
    /// Withdrawing the Secret `secret_uid` of the agent `uid`.
    CredentialWithdraw {
        /// The Agent's UID.
        uid: String,
        /// The UID of the Secret object deleted (`unknown` when it had none).
        secret_uid: String,
    },
    /// One delegated token for the Delegation `uid`, minted at `issued_at_ms` (Unix milliseconds).
    DelegationIssue {
        /// The Delegation's UID.
        uid: String,
        /// When it was minted.
        issued_at_ms: i64,
    },
    /// One access token from the token endpoint, by its `jti`.
    TokenIssue {
        /// The token's `jti`.
        jti: String,
    },
    /// One token exchange, by an id drawn for it.
    TokenExchange {
        /// The exchange's id.
        id: String,
    },
    /// Rotating away from the current signing key `kid`.
    IssuerRotate {
        /// The key ID that was current.
        kid: String,
    },
}

impl IntentKey {
    /// The action the key is for.
    pub fn action(&self) -> Action {
        match self {
            Self::Agent { action, .. } => *action,
            Self::Archive { .. } => Action::AgentArchive,
            Self::CredentialIssue { .. } => Action::CredentialIssue,
            Self::CredentialWithdraw { .. } => Action::CredentialWithdraw,
            Self::IssuerRotate { .. } => Action::IssuerRotate,
            Self::DelegationIssue { .. } => Action::DelegationIssue,
            Self::TokenIssue { .. } => Action::TokenIssue,
            Self::TokenExchange { .. } => Action::TokenExchange,
        }
    }

    /// The UID of the object (an Agent, or a Delegation) the key is about (None for key rotations).
    pub fn object_uid(&self) -> Option<&str> {
        match self {
            Self::Agent { uid, .. }
            | Self::Archive { uid }
            | Self::CredentialIssue { uid, .. }
            | Self::CredentialWithdraw { uid, .. }
            | Self::DelegationIssue { uid, .. } => Some(uid),
            Self::IssuerRotate { .. } | Self::TokenIssue { .. } | Self::TokenExchange { .. } => None,
        }
    }

    /// Reads a stored key. None for anything that is not exactly one of the forms above.
    pub fn parse(key: &str) -> Option<Self> {
        let (action, rest) = key.split_once(':')?;
        let action = Action::parse(action)?;
        let two = |rest: &str| {
            let (a, b) = rest.split_once(':')?;
            (!a.is_empty() && !b.is_empty() && !b.contains(':')).then(|| (a.to_owned(), b.to_owned()))
        };
        let one = |rest: &str| (!rest.is_empty() && !rest.contains(':')).then(|| rest.to_owned());
        match action {
            a if a.is_transition() || a == Action::AgentUpdate => {
                let (uid, generation, cause) = match rest.splitn(3, ':').collect::<Vec<_>>()[..] {
                    [uid, generation] => (uid, generation, None),
                    [uid, generation, cause]
                        if a.is_transition() && !cause.is_empty() && !cause.contains(':') =>
                    {
                        (uid, generation, Some(cause.to_owned()))
                    }
                    _ => return None,
                };
                if uid.is_empty() {
                    return None;
                }
                Some(Self::Agent {
                    action: a,
                    uid: uid.to_owned(),
                    generation: generation.parse().ok()?,
                    cause,
                })
            }
            Action::AgentArchive => Some(Self::Archive { uid: one(rest)? }),
            Action::CredentialIssue => {
                let (uid, ms) = two(rest)?;
                Some(Self::CredentialIssue { uid, issued_at_ms: ms.parse().ok()? })
            }
            Action::CredentialWithdraw => {
                let (uid, secret_uid) = two(rest)?;
                Some(Self::CredentialWithdraw { uid, secret_uid })
            }
            Action::IssuerRotate => Some(Self::IssuerRotate { kid: one(rest)? }),
            Action::TokenIssue => Some(Self::TokenIssue { jti: one(rest)? }),
            Action::TokenExchange => Some(Self::TokenExchange { id: one(rest)? }),
            Action::DelegationIssue => {
                let (uid, ms) = two(rest)?;
                Some(Self::DelegationIssue { uid, issued_at_ms: ms.parse().ok()? })
            }
            _ => None,
        }
    }
}

impl fmt::Display for IntentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = self.action();
        match self {
            Self::Agent { uid, generation, cause: None, .. } => write!(f, "{action}:{uid}:{generation}"),
            Self::Agent { uid, generation, cause: Some(cause), .. } => {
                write!(f, "{action}:{uid}:{generation}:{cause}")
            }
            Self::Archive { uid } => write!(f, "{action}:{uid}"),
            Self::CredentialIssue { uid, issued_at_ms } => write!(f, "{action}:{uid}:{issued_at_ms}"),
            Self::CredentialWithdraw { uid, secret_uid } => write!(f, "{action}:{uid}:{secret_uid}"),
            Self::IssuerRotate { kid } => write!(f, "{action}:{kid}"),
            Self::TokenIssue { jti } => write!(f, "{action}:{jti}"),
            Self::TokenExchange { id } => write!(f, "{action}:{id}"),
            Self::DelegationIssue { uid, issued_at_ms } => write!(f, "{action}:{uid}:{issued_at_ms}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert!(seen.insert(a.as_str()), "{a}");
        }
        assert_eq!(Action::parse("agent.activate.extra"), None);
        assert!(Action::AgentArchive.is_registry() && !Action::AgentArchive.is_transition());
        assert!(Action::CredentialIssue.is_credential() && !Action::AdmissionUpdate.is_registry());
    }

    #[test]
    fn keys_keep_the_stored_forms_of_earlier_versions() {
        for stored in [
            "agent.activate:u1:3",
            "agent.update:u1:4",
            "agent.archive:u1",
            "credential.issue:u1:1795900447108",
            "credential.withdraw:u1:s-uid",
            "credential.withdraw:u1:unknown",
            "issuer.rotate:pagnOM1Y2Br3EgEqA8uB3iTfBkNyFX7GXHURIaJGcPw",
            "delegation.issue:d-uid:1796300000000",
            "token.issue:Zm9vYmFyYmF6cXV4cXV1eA",
        ] {
            let key = IntentKey::parse(stored).unwrap_or_else(|| panic!("{stored}"));
            assert_eq!(key.to_string(), stored);
        }
        assert_eq!(
            IntentKey::parse("agent.activate:u1:3"),
            Some(IntentKey::Agent {
                action: Action::AgentActivate,
                uid: "u1".into(),
                generation: 3,
                cause: None
            })
        );
        // A transition a Revocation caused names it.
        let caused = IntentKey::parse("agent.suspend:u1:3:r-uid").unwrap();
        assert_eq!(
            caused,
            IntentKey::Agent {
                action: Action::AgentSuspend,
                uid: "u1".into(),
                generation: 3,
                cause: Some("r-uid".into())
            }
        );
        assert_eq!(caused.to_string(), "agent.suspend:u1:3:r-uid");
    }

    #[test]
    fn anything_else_is_not_a_key() {
        for bad in [
            "agent.activate:u1:x",
            "agent.activate::1",
            "agent.activate:u1:1:2:3",
            "agent.activate:u1:1:",
            "agent.update:u1:1:r",
            "agent.activate::1:r",
            "agent.archive:u1:3",
            "agent.archive:",
            "authz.decide:u1",
            "nonsense",
            "issuer.rotate:",
            "credential.issue:u1:",
        ] {
            assert_eq!(IntentKey::parse(bad), None, "{bad}");
        }
    }
}
