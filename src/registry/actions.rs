//! The names under which the registry writes audit records (spelled by [`Action`]), and the details
//! [`super::ledger`] reads back.
//!
//! One home for them, because the writers (the Agent and credentials controllers) and the reader (the
//! ledger, which is rebuilt from these records at every start) must agree on every spelling: a typo on
//! either side would silently lose the operator's own memory of what it decided.

use crate::audit::Action;

/// A new agent waiting for a valid spec.
pub const AGENT_REGISTER: &str = Action::AgentRegister.as_str();
/// A shadow agent's phase, Discovered.
pub const AGENT_DISCOVER: &str = Action::AgentDiscover.as_str();
/// The agent became Active.
pub const AGENT_ACTIVATE: &str = Action::AgentActivate.as_str();
/// An agent that was not Pending went back to Pending (its spec became invalid).
pub const AGENT_DEACTIVATE: &str = Action::AgentDeactivate.as_str();
/// The owner suspended the agent.
pub const AGENT_SUSPEND: &str = Action::AgentSuspend.as_str();
/// The agent was retired for good.
pub const AGENT_RETIRE: &str = Action::AgentRetire.as_str();
/// The kill switch revoked the agent for good.
pub const AGENT_REVOKE: &str = Action::AgentRevoke.as_str();
/// The spec changed without a change of phase (owner, provenance, and so the trust score).
pub const AGENT_UPDATE: &str = Action::AgentUpdate.as_str();
/// The agent was deleted: its final state.
pub const AGENT_ARCHIVE: &str = Action::AgentArchive.as_str();
/// Someone other than the operator wrote the agent's status; the operator overwrote it.
pub const AGENT_STATUS_OVERWRITTEN: &str = Action::AgentStatusOverwritten.as_str();
/// Credentials were issued (intent: minted, about to be stored; outcome: stored or abandoned).
pub const CREDENTIAL_ISSUE: &str = Action::CredentialIssue.as_str();
/// Credentials were taken away (the Secret deleted).
pub const CREDENTIAL_WITHDRAW: &str = Action::CredentialWithdraw.as_str();

/// Detail: the `metadata.generation` a lifecycle or update record decided for.
pub const DETAIL_GENERATION: &str = "generation";
/// Detail: the trust score the operator computed for that generation.
pub const DETAIL_TRUST_SCORE: &str = "trustScore";
/// Detail: whether that generation's spec passed validation (`true` / `false`).
pub const DETAIL_VALID: &str = "valid";
/// Detail: the instant the operator decided (RFC 3339): the start of the phase it records.
pub const DETAIL_DECIDED_AT: &str = "decidedAt";
/// Detail: the phase a transition goes to.
pub const DETAIL_TO: &str = "to";
/// Detail of a transition a Revocation causes: the Revocation, `namespace/name`.
pub const DETAIL_REVOCATION: &str = "revocation";
/// Detail of a transition a Revocation causes: its UID (the ledger remembers it as what holds the agent).
pub const DETAIL_REVOCATION_UID: &str = "revocationUID";
/// Detail of a transition after a Revocation stopped holding: the UID of the one lifted.
pub const DETAIL_LIFTED_REVOCATION_UID: &str = "liftedRevocationUID";
/// Detail of an issuance: the tokens it minted, a JSON array of `{"aud": ..., "jti": ...}`.
pub const DETAIL_TOKENS: &str = "tokens";
/// Detail of an issuance: the token IDs, comma-separated, in the order of `audiences` (for readers and
/// `audit trace --jti`).
pub const DETAIL_JTI: &str = "jti";
/// Detail of an issuance: the audiences, comma-separated (for readers; [`DETAIL_TOKENS`] is exact).
pub const DETAIL_AUDIENCES: &str = "audiences";
/// Detail of an issuance: whether an X.509-SVID was issued.
pub const DETAIL_X509: &str = "x509";
/// Detail of an issuance: the X.509-SVID's serial number (hex).
pub const DETAIL_X509_SERIAL: &str = "x509Serial";
/// Detail of an issuance: when it was issued (RFC 3339; the tokens' `iat`).
pub const DETAIL_ISSUED_AT: &str = "issuedAt";
/// Detail of an issuance: when it expires (RFC 3339).
pub const DETAIL_EXPIRES_AT: &str = "expiresAt";
/// Detail of an issuance: the lifetime in seconds.
pub const DETAIL_TTL_SECONDS: &str = "ttlSeconds";
/// Detail of an issuance: the ID of the signing key.
pub const DETAIL_KEY_ID: &str = "keyID";
/// Detail of an issuance: the request fingerprint (audiences, x509, lifetime).
pub const DETAIL_FINGERPRINT: &str = "fingerprint";
/// Detail of an issuance: `all` when it ends every earlier issuance of the agent at once (the earlier
/// credentials cannot be vouched for), absent when earlier ones stay valid until they expire (rotation).
pub const DETAIL_SUPERSEDES: &str = "supersedes";
/// Value of [`DETAIL_SUPERSEDES`].
pub const SUPERSEDES_ALL: &str = "all";

/// Detail of an admission record: the requester's username.
pub const DETAIL_REQUESTER_USERNAME: &str = "requester.username";
/// Detail of an admission record: the requester's UID.
pub const DETAIL_REQUESTER_UID: &str = "requester.uid";
/// Detail of an admission record: the requester's groups, a JSON array (a group name may hold a comma).
pub const DETAIL_REQUESTER_GROUPS: &str = "requester.groups";
/// Detail of a Delegation's admission record: the grantee Agent's UID at admission.
pub const DETAIL_AGENT_UID: &str = "agentUID";
/// Detail of a Delegation's admission record: the parent Delegation's UID at admission.
pub const DETAIL_PARENT_UID: &str = "parentUID";
/// Detail of a delegation record: the phase decided.
pub const DETAIL_PHASE: &str = "phase";
/// Detail of a delegation record: the decision's reason.
pub const DETAIL_REASON: &str = "reason";

/// Approval records: what the request is bound to (SHA-256 hex, [`super::approval::binding`]).
pub const DETAIL_BINDING: &str = "binding";
/// Approval records: who may approve (JSON `{"users": [...], "groups": [...]}`).
pub const DETAIL_APPROVERS: &str = "approvers";
/// Approval records: "true" when the rule asks for four eyes.
pub const DETAIL_FOUR_EYES: &str = "fourEyes";
/// Approval records: the human a delegated request acts for.
pub const DETAIL_ON_BEHALF_OF: &str = "onBehalfOf";
/// Approval records: the agent's owner (a user).
pub const DETAIL_OWNER: &str = "owner";
/// Approval records: the ServiceAccount of the agent's workload, `namespace:name`.
pub const DETAIL_SERVICE_ACCOUNT: &str = "serviceAccount";
/// Approval records: how long an approval may be used, in seconds.
pub const DETAIL_VALID_FOR_SECONDS: &str = "validForSeconds";
/// Approval records: how many allowed decisions an approval covers.
pub const DETAIL_USES: &str = "uses";
/// Approval records: until when an approval may be used (RFC 3339).
pub const DETAIL_APPROVED_UNTIL: &str = "approvedUntil";
/// Approval records: who answered (the username admission recorded).
pub const DETAIL_DECIDED_BY: &str = "decidedBy";
/// Admission record of an answer: Approve or Deny.
pub const DETAIL_APPROVAL_VERDICT: &str = "approval.verdict";
/// Admission record of an answer: the approver's reason.
pub const DETAIL_APPROVAL_REASON: &str = "approval.reason";
/// Detail: the `jti` of the client assertion a token request authenticated with (single use).
pub const DETAIL_ASSERTION_JTI: &str = "assertionJti";
/// Detail: when that assertion expires (RFC 3339): how long its use must be remembered.
pub const DETAIL_ASSERTION_EXPIRES_AT: &str = "assertionExpiresAt";
/// Detail: the scopes an access token carries (space-separated).
pub const DETAIL_SCOPE: &str = "scope";
/// Detail: the OAuth error code of a refused token request.
pub const DETAIL_ERROR: &str = "error";
/// Detail: the task id an access token names.
pub const DETAIL_TASK: &str = "task";
/// Detail: the spent subject token of an exchange (`subject:<jti>`) and until when it is remembered.
pub const DETAIL_SUBJECT_JTI: &str = "subjectTokenJti";
/// See [`DETAIL_SUBJECT_JTI`].
pub const DETAIL_SUBJECT_EXPIRES_AT: &str = "subjectTokenExpiresAt";
/// Detail: the spent actor token of an exchange (its `jti`, the same space as JWT-SVID assertions).
pub const DETAIL_ACTOR_JTI: &str = "actorTokenJti";
/// See [`DETAIL_ACTOR_JTI`].
pub const DETAIL_ACTOR_EXPIRES_AT: &str = "actorTokenExpiresAt";
/// Audit detail: the `x5t#S256` of the client certificate an access token is bound to (RFC 8705).
pub const DETAIL_CERTIFICATE_THUMBPRINT: &str = "certificateThumbprint";
