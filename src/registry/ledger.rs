//! The ledger: the operator's own record of what it decided about each agent and what it issued to it, kept
//! as a function of the audit log and of nothing else.
//!
//! Everything a tenant can write (an Agent's status, the credentials Secret and its annotations) is only a
//! report. The facts that grant something come from here: the phase the operator last recorded for an agent
//! UID (and since when), the trust score and generation it recorded, and the exact tokens (by `jti`) and
//! X.509 serials it minted and has not taken back. The decision API, the pod webhook and the credentials
//! step all read it; the lifecycle reads its own last decision from it instead of from the status.
//!
//! It is rebuilt from the whole log when the operator starts and updated by every new record once it is
//! durable (it is the log's [`Projection`]), so it survives restarts and can never be ahead of what is
//! recorded.
//!
//! # Rules
//! - A lifecycle or update **intent** takes effect when it is durable: the record is the decision, and the
//!   status written afterwards only reports it. Every phase but Active ends every issuance of the agent
//!   (a suspended agent's tokens never come back on resume).
//! - An issuance intent adds its tokens as live; an abandoned (or failed) outcome removes them, a success
//!   marks them stored. With `supersedes: all` it first ends every earlier issuance.
//! - A withdrawal intent ends every issuance of the agent.
//! - A successful archive removes the agent.
//! - Issuances past their expiry are dropped whenever the agent's entry changes.
//!
//! Pure apart from the lock in [`Ledger`]: [`Entries::apply`] is a function of the records.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{AgentPhase, DelegationPhase, Grantor};
use crate::audit::{Action, IntentKey, Outcome, Projection, Record, RecordKind};
use crate::registry::approval;
use crate::registry::delegation::{self, Grant, Recorded};

use super::actions as a;

/// One token an issuance minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// Its audience.
    pub aud: String,
    /// Its ID.
    pub jti: String,
}

/// Whether the credentials of an issuance reached the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Minted and recorded; the Secret write is in progress (or was interrupted).
    Pending,
    /// The Secret holds (or held) them.
    Yes,
}

/// One set of credentials the operator minted for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    /// The audit intent key (also stored on the Secret).
    pub key: String,
    /// When it was issued (the tokens' `iat`).
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Its lifetime in seconds.
    pub ttl_secs: u64,
    /// The signing key's ID.
    pub key_id: String,
    /// The request fingerprint it answered, if recorded.
    pub fingerprint: Option<String>,
    /// Its tokens, one per audience, in the order they were requested.
    pub tokens: Vec<IssuedToken>,
    /// The audiences it was requested for, in order (records of earlier versions name the matching jtis
    /// only in the outcome).
    pub audiences: Vec<String>,
    /// Whether an X.509-SVID was issued.
    pub x509: bool,
    /// The X.509-SVID's serial (hex), if one was issued.
    pub x509_serial: Option<String>,
    /// Whether it reached the Secret.
    pub stored: Stored,
}

/// What the operator recorded about one agent UID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRecord {
    /// The phase the operator last decided (None: nothing recorded yet).
    pub phase: Option<AgentPhase>,
    /// When that phase began (the decision's time).
    pub phase_since: Option<Timestamp>,
    /// The generation of the last lifecycle or update record.
    pub generation: Option<i64>,
    /// The trust score the operator last recorded.
    pub trust_score: Option<u16>,
    /// Whether the last recorded generation was valid, and since when that has been so.
    pub valid: Option<(bool, Timestamp)>,
    /// The UID of the Revocation the last recorded phase was due to (None: the owner's or the spec's).
    pub held_by: Option<String>,
    /// What behaviour takes off the trust score now (the monitor's penalty; never from the log: 0 in
    /// every record the ledger holds, set only on the copy a decision reads, see
    /// [`crate::registry::trust::with_penalty`]).
    pub trust_penalty: u16,
    /// Issuances not taken back, oldest first.
    pub issuances: Vec<Issuance>,
}

/// Whether a delegated token stands, by the operator's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelegatedStanding {
    /// Every link is Active and the token is one the operator minted for the leaf and has not taken back.
    Live,
    /// A link of the chain is not Active (its last recorded phase, None if nothing is recorded).
    NotInForce {
        /// The link's Delegation UID.
        uid: String,
        /// Its recorded phase.
        phase: Option<DelegationPhase>,
    },
    /// The chain is in force but the operator did not mint this token for it (or took it back).
    TokenNotIssued,
    /// The operator minted it, and it has expired.
    Expired,
}

/// Why a presented token is not a live credential of its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStanding {
    /// One of the agent's live issuances holds it, for this audience.
    Live,
    /// The operator never issued it to this agent, or has taken it back (withdrawn, superseded, expired).
    NotIssued,
}

impl AgentRecord {
    /// Whether the token `jti` for `aud` belongs to an issuance that is live at `now`.
    pub fn token(&self, jti: &str, aud: &str, now: Timestamp) -> TokenStanding {
        let live = self
            .issuances
            .iter()
            .filter(|i| i.expires_at > now)
            .any(|i| i.tokens.iter().any(|t| t.jti == jti && t.aud == aud));
        if live { TokenStanding::Live } else { TokenStanding::NotIssued }
    }

    /// The issuance recorded under `key`.
    pub fn issuance(&self, key: &str) -> Option<&Issuance> {
        self.issuances.iter().find(|i| i.key == key)
    }

    /// The newest issuance, stored or not.
    pub fn latest(&self) -> Option<&Issuance> {
        self.issuances.last()
    }
}

/// The records by agent UID, and by Delegation UID, as a plain value: what [`Ledger`] guards.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    agents: HashMap<Arc<str>, Arc<AgentRecord>>,
    /// What admission recorded when each Delegation was created: who, and the UIDs it was bound to.
    grants: HashMap<Arc<str>, Arc<Grant>>,
    /// The phase the Delegation controller last recorded for each Delegation, with its reason.
    delegations: HashMap<Arc<str>, Recorded>,
    /// The delegated tokens minted for each Delegation and not taken back, oldest first.
    delegated: HashMap<Arc<str>, Vec<DelegatedIssuance>>,
    /// Every approval request the operator made, and where each stands.
    approvals: approval::Book,
    /// The token endpoint's records: access tokens issued and client assertions used.
    tokens: TokenBook,
    /// The Revocations (by UID) whose emergency key rotation was asked for: asked once each, whatever
    /// their status says.
    rotations_asked: std::collections::HashSet<Arc<str>>,
    /// Agents archived and Delegations deleted, by UID, with how long their tokens may still verify
    /// for someone who only checks signatures: the revocation feed lists them until then.
    gone: HashMap<Arc<str>, (GoneKind, Timestamp)>,
    /// Signing keys an emergency rotation withdrew, with how long tokens they signed may live.
    withdrawn_keys: HashMap<Arc<str>, Timestamp>,
    /// Credentials and delegated tokens taken back before their expiry, by `jti`, until it.
    withdrawn_tokens: HashMap<Arc<str>, Timestamp>,
    /// Bumped by every record that can change the revocation feed.
    feed_changes: u64,
}

/// What a UID in [`Entries`]' `gone` was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneKind {
    /// An archived Agent.
    Agent,
    /// A deleted Delegation.
    Delegation,
}

/// What the operator's records void, for the revocation feed (see `crate::server::revocations`): every
/// UID, `jti` and key ID whose tokens a verifier that only checks signatures must refuse now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Voided {
    /// Agents recorded in any phase but Active, and agents archived less than a token lifetime ago.
    pub agents: Vec<String>,
    /// Delegations recorded in any phase but Active, and deleted ones, likewise.
    pub delegations: Vec<String>,
    /// Access tokens revoked one by one (RFC 7009), and credentials and delegated tokens taken back
    /// (suspension, withdrawal, a Delegation leaving Active), that have not expired.
    pub tokens: Vec<String>,
    /// Keys withdrawn by an emergency rotation less than a token lifetime ago.
    pub keys: Vec<String>,
}

/// One access token the token endpoint issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessIssuance {
    /// The Agent's UID.
    pub agent_uid: String,
    /// Its audience (the resource).
    pub aud: String,
    /// When its issuance was recorded.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Whether the outcome (the token signed and answered) was recorded.
    pub stored: Stored,
}

/// The token endpoint's memory: issued access tokens by `jti`, and the `jti`s of client assertions
/// already used (each may authenticate one request), each kept until it expires.
#[derive(Debug, Clone, Default)]
pub struct TokenBook {
    issued: HashMap<Arc<str>, AccessIssuance>,
    /// Access tokens revoked one by one (RFC 7009), until they expire: the revocation feed lists them.
    revoked: HashMap<Arc<str>, Timestamp>,
    assertions: HashMap<Arc<str>, Timestamp>,
    /// Size of both maps after the last sweep: the next sweeps when they have doubled, so sweeping costs
    /// a constant per record on average.
    swept_at: usize,
}

impl TokenBook {
    fn apply(&mut self, record: &Record, at: Timestamp) {
        let d = &record.details;
        // What a request spent: the client assertion, and for an exchange its subject and actor tokens.
        for (jti, exp) in [
            (a::DETAIL_ASSERTION_JTI, a::DETAIL_ASSERTION_EXPIRES_AT),
            (a::DETAIL_SUBJECT_JTI, a::DETAIL_SUBJECT_EXPIRES_AT),
            (a::DETAIL_ACTOR_JTI, a::DETAIL_ACTOR_EXPIRES_AT),
        ] {
            if let (Some(jti), Some(exp)) = (d.get(jti), d.get(exp).and_then(|t| time(t))) {
                self.assertions.insert(jti.as_str().into(), exp);
            }
        }
        if Action::parse(&record.action) == Some(Action::TokenRevoke)
            && record.outcome == Outcome::Success
            && let Some(jti) = d.get(a::DETAIL_JTI)
            && let Some(i) = self.issued.remove(jti.as_str())
        {
            self.revoked.insert(jti.as_str().into(), i.expires_at);
        }
        if Action::parse(&record.action) == Some(Action::TokenIssue) {
            let key = record.key.as_deref().and_then(IntentKey::parse);
            let Some(IntentKey::TokenIssue { jti }) = key else { return };
            match record.kind {
                RecordKind::Intent => {
                    let issuance = (|| {
                        Some(AccessIssuance {
                            agent_uid: record.object.uid.clone()?,
                            aud: d.get(a::DETAIL_AUDIENCES)?.clone(),
                            issued_at: at,
                            expires_at: time(d.get(a::DETAIL_EXPIRES_AT)?)?,
                            stored: Stored::Pending,
                        })
                    })();
                    if let Some(i) = issuance {
                        self.issued.insert(jti.into(), i);
                    }
                }
                RecordKind::Outcome if record.outcome == Outcome::Success => {
                    if let Some(i) = self.issued.get_mut(jti.as_str()) {
                        i.stored = Stored::Yes;
                    }
                }
                RecordKind::Outcome => {
                    self.issued.remove(jti.as_str());
                }
                RecordKind::Event | RecordKind::Recovery => {}
            }
        }
        let size = self.issued.len() + self.assertions.len();
        if size > 2 * self.swept_at.max(512) {
            self.issued.retain(|_, i| i.expires_at > at);
            self.assertions.retain(|_, exp| *exp > at);
            self.revoked.retain(|_, exp| *exp > at);
            self.swept_at = self.issued.len() + self.assertions.len();
        }
    }

    /// Whether the client assertion `jti` authenticated a request before (and has not expired at `now`).
    pub fn assertion_used(&self, jti: &str, now: Timestamp) -> bool {
        self.assertions.get(jti).is_some_and(|exp| *exp > now)
    }

    /// The access token `jti`, if the operator issued it and it has not expired at `now`.
    pub fn access_token(&self, jti: &str, now: Timestamp) -> Option<&AccessIssuance> {
        self.issued.get(jti).filter(|i| i.expires_at > now)
    }
}

/// One delegated token the operator minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegatedIssuance {
    /// The audit intent key.
    pub key: String,
    /// The token's `jti`.
    pub jti: String,
    /// Its audience.
    pub aud: String,
    /// When it was minted (`iat`).
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The signing key's ID.
    pub key_id: String,
    /// Whether it reached the Secret.
    pub stored: Stored,
}

/// Reads a delegated issuance from its intent record. None if the record lacks what a decision needs.
pub fn delegated_issuance_of(record: &Record, key: &str) -> Option<DelegatedIssuance> {
    let d = &record.details;
    Some(DelegatedIssuance {
        key: key.to_owned(),
        jti: d.get(a::DETAIL_JTI)?.clone(),
        aud: d.get(a::DETAIL_AUDIENCES)?.clone(),
        issued_at: time(d.get(a::DETAIL_ISSUED_AT)?)?,
        expires_at: time(d.get(a::DETAIL_EXPIRES_AT)?)?,
        key_id: d.get(a::DETAIL_KEY_ID)?.clone(),
        stored: Stored::Pending,
    })
}

fn phase_of(action: &str) -> Option<AgentPhase> {
    match action {
        a::AGENT_ACTIVATE => Some(AgentPhase::Active),
        a::AGENT_DISCOVER => Some(AgentPhase::Discovered),
        a::AGENT_REGISTER | a::AGENT_DEACTIVATE => Some(AgentPhase::Pending),
        a::AGENT_SUSPEND => Some(AgentPhase::Suspended),
        a::AGENT_RETIRE => Some(AgentPhase::Retired),
        a::AGENT_REVOKE => Some(AgentPhase::Revoked),
        _ => None,
    }
}

fn delegation_phase_of(s: &str) -> Option<DelegationPhase> {
    [
        DelegationPhase::Pending,
        DelegationPhase::Active,
        DelegationPhase::Expired,
        DelegationPhase::Revoked,
        DelegationPhase::Invalid,
        DelegationPhase::PendingApproval,
        DelegationPhase::Denied,
    ]
    .into_iter()
    .find(|p| p.as_str() == s)
}

fn time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// The tokens of an issuance record: the exact JSON detail, or for records written before it existed, the
/// comma-separated audiences and jtis in the same order (given in the intent and the outcome
/// respectively; a count mismatch, from an audience with a comma in it, yields none, so those tokens are
/// simply not vouched for and the agent is issued new ones).
fn tokens_of(record: &Record, audiences: &[String]) -> Vec<IssuedToken> {
    if let Some(json) = record.details.get(a::DETAIL_TOKENS) {
        return serde_json::from_str(json).unwrap_or_default();
    }
    let Some(jtis) = record.details.get(a::DETAIL_JTI) else { return Vec::new() };
    let jtis: Vec<&str> = jtis.split(',').filter(|s| !s.is_empty()).collect();
    if audiences.len() != jtis.len() {
        return Vec::new();
    }
    audiences.iter().zip(jtis).map(|(aud, jti)| IssuedToken { aud: aud.clone(), jti: jti.into() }).collect()
}

fn audiences_of(record: &Record) -> Vec<String> {
    let auds = record.details.get(a::DETAIL_AUDIENCES).map(String::as_str).unwrap_or_default();
    auds.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Reads an issuance from its intent record. None if the record lacks what a decision needs.
pub fn issuance_of(record: &Record, key: &str) -> Option<Issuance> {
    let d = &record.details;
    let ttl_secs: u64 = d.get(a::DETAIL_TTL_SECONDS)?.parse().ok()?;
    let expires_at = time(d.get(a::DETAIL_EXPIRES_AT)?)?;
    // Records before `issuedAt` existed: the key ends in the issuance time in milliseconds.
    let issued_at = match d.get(a::DETAIL_ISSUED_AT) {
        Some(t) => time(t)?,
        None => match IntentKey::parse(key)? {
            IntentKey::CredentialIssue { issued_at_ms, .. } => {
                Timestamp::from_millisecond(issued_at_ms).ok()?
            }
            _ => return None,
        },
    };
    let audiences = audiences_of(record);
    Some(Issuance {
        key: key.to_owned(),
        issued_at,
        expires_at,
        ttl_secs,
        key_id: d.get(a::DETAIL_KEY_ID)?.clone(),
        fingerprint: d.get(a::DETAIL_FINGERPRINT).cloned(),
        tokens: tokens_of(record, &audiences),
        audiences,
        x509: d.get(a::DETAIL_X509).is_some_and(|v| v == "true"),
        x509_serial: d.get(a::DETAIL_X509_SERIAL).cloned(),
        stored: Stored::Pending,
    })
}

impl Entries {
    /// The record of the agent with `uid`.
    pub fn get(&self, uid: &str) -> Option<Arc<AgentRecord>> {
        self.agents.get(uid).cloned()
    }

    /// How many agents have a record.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent has a record.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// What admission recorded about the Delegation with `uid`.
    pub fn grant(&self, uid: &str) -> Option<Arc<Grant>> {
        self.grants.get(uid).cloned()
    }

    /// The phase last recorded for the Delegation with `uid`.
    pub fn delegation_phase(&self, uid: &str) -> Option<Recorded> {
        self.delegations.get(uid).cloned()
    }

    /// The delegated tokens of the Delegation `uid` not taken back, oldest first.
    pub fn delegated_tokens(&self, uid: &str) -> Vec<DelegatedIssuance> {
        self.delegated.get(uid).cloned().unwrap_or_default()
    }

    /// Whether the delegated token `jti` for `aud` was minted for the Delegation `uid`, has not been taken
    /// back and has not expired at `now`.
    pub fn delegated_token_live(&self, uid: &str, jti: &str, aud: &str, now: Timestamp) -> bool {
        self.delegated
            .get(uid)
            .is_some_and(|v| v.iter().any(|i| i.jti == jti && i.aud == aud && i.expires_at > now))
    }

    /// Whether the Revocation with `uid` has asked for the emergency key rotation.
    pub fn rotation_asked(&self, uid: &str) -> bool {
        self.rotations_asked.contains(uid)
    }

    /// What the records void at `now` (see [`Voided`]).
    pub fn voided(&self, now: Timestamp) -> Voided {
        let mut v = Voided::default();
        for (uid, r) in &self.agents {
            if r.phase.is_some_and(|p| p != AgentPhase::Active) {
                v.agents.push(uid.to_string());
            }
        }
        for (uid, r) in &self.delegations {
            if r.phase != DelegationPhase::Active {
                v.delegations.push(uid.to_string());
            }
        }
        for (uid, (kind, until)) in &self.gone {
            if *until > now {
                match kind {
                    GoneKind::Agent => v.agents.push(uid.to_string()),
                    GoneKind::Delegation => v.delegations.push(uid.to_string()),
                }
            }
        }
        v.tokens = self
            .tokens
            .revoked
            .iter()
            .chain(self.withdrawn_tokens.iter())
            .filter(|(_, exp)| **exp > now)
            .map(|(j, _)| j.to_string())
            .collect();
        v.keys = self
            .withdrawn_keys
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(k, _)| k.to_string())
            .collect();
        for list in [&mut v.agents, &mut v.delegations, &mut v.tokens, &mut v.keys] {
            list.sort_unstable();
            list.dedup();
        }
        v
    }

    /// Changes whenever a record that can change [`Self::voided`] is applied.
    pub fn feed_changes(&self) -> u64 {
        self.feed_changes
    }

    /// The token endpoint's records.
    pub fn tokens(&self) -> &TokenBook {
        &self.tokens
    }

    /// The access token `jti`, if the operator issued it, it has not expired at `now`, and its agent has
    /// been Active since before it was issued: a suspension or revocation ends every access token issued
    /// before it, and a resume does not bring them back (as with credentials).
    pub fn access_token(&self, jti: &str, now: Timestamp) -> Option<&AccessIssuance> {
        let issued = self.tokens.access_token(jti, now)?;
        let agent = self.agents.get(issued.agent_uid.as_str())?;
        let active_since = agent.phase_since.filter(|_| agent.phase == Some(AgentPhase::Active))?;
        (active_since <= issued.issued_at).then_some(issued)
    }

    /// Takes in one durable record (see the module docs for the rules).
    pub fn apply(&mut self, record: &Record) {
        // Tokens the record takes back before they expire (a suspension, a withdrawal, a Delegation
        // leaving Active) stay refused for verifiers that only have the revocation feed: a resume must not
        // bring them back there either.
        let kind = record.object.kind.as_str();
        let uid = record.object.uid.as_deref().filter(|_| matches!(kind, "Agent" | "Delegation"));
        let before = uid.map(|u| self.live_tokens(u)).unwrap_or_default();
        self.apply_record(record);
        if let Some(u) = uid
            && !before.is_empty()
        {
            let at = time(&record.time).unwrap_or(Timestamp::UNIX_EPOCH);
            let after = self.live_tokens(u);
            let taken: Vec<(Arc<str>, Timestamp)> = before
                .into_iter()
                .filter(|(jti, exp)| *exp > at && !after.iter().any(|(j, _)| j == jti))
                .collect();
            if !taken.is_empty() {
                self.withdrawn_tokens.retain(|_, exp| *exp > at);
                self.withdrawn_tokens.extend(taken);
                self.feed_changes = self.feed_changes.wrapping_add(1);
            }
        }
    }

    /// The `jti`s (with their expiry) of the credentials and delegated tokens the records hold live for
    /// the Agent or Delegation `uid`.
    fn live_tokens(&self, uid: &str) -> Vec<(Arc<str>, Timestamp)> {
        let mut live: Vec<(Arc<str>, Timestamp)> = self
            .agents
            .get(uid)
            .into_iter()
            .flat_map(|r| r.issuances.iter())
            .flat_map(|i| i.tokens.iter().map(move |t| (Arc::from(t.jti.as_str()), i.expires_at)))
            .collect();
        live.extend(
            self.delegated.get(uid).into_iter().flatten().map(|i| (Arc::from(i.jti.as_str()), i.expires_at)),
        );
        live
    }

    fn apply_record(&mut self, record: &Record) {
        let action = Action::parse(&record.action);
        if action.is_some_and(|a| a.is_transition() || a.is_delegation() || a == Action::TokenRevoke)
            || matches!(action, Some(Action::AgentArchive | Action::AdmissionDelete | Action::IssuerRotate))
        {
            self.feed_changes = self.feed_changes.wrapping_add(1);
        }
        let at = time(&record.time).unwrap_or(Timestamp::UNIX_EPOCH);
        // A token lives at most this long after whatever ended its subject.
        let until = at.checked_add(jiff::SignedDuration::from_secs(3600)).unwrap_or(at);
        if action == Some(Action::IssuerRotate) && record.kind == RecordKind::Intent {
            if let Some(kids) = record.details.get("withdrawn") {
                for kid in kids.split(',').filter(|k| !k.is_empty()) {
                    self.withdrawn_keys.insert(kid.into(), until);
                }
            }
            self.withdrawn_keys.retain(|_, u| *u > at);
            return;
        }
        if let Some(uid) = record.object.uid.as_deref() {
            let gone = match (action, record.object.kind.as_str(), record.kind) {
                (Some(Action::AgentArchive), "Agent", RecordKind::Intent) => Some(GoneKind::Agent),
                (Some(Action::AdmissionDelete), "Delegation", _) if record.outcome == Outcome::Success => {
                    Some(GoneKind::Delegation)
                }
                _ => None,
            };
            if let Some(kind) = gone {
                self.gone.insert(uid.into(), (kind, until));
                self.gone.retain(|_, (_, u)| *u > at);
            }
        }
        if matches!(
            Action::parse(&record.action),
            Some(Action::TokenIssue | Action::TokenRefuse | Action::TokenRevoke | Action::TokenExchange)
        ) {
            self.tokens.apply(record, time(&record.time).unwrap_or(Timestamp::UNIX_EPOCH));
            return;
        }
        if record.object.kind == "ApprovalRequest" {
            self.approvals.apply(record);
            return;
        }
        if Action::parse(&record.action) == Some(Action::RevocationRotateKeys) {
            if let Some(uid) = record.object.uid.as_deref() {
                self.rotations_asked.insert(uid.into());
            }
            return;
        }
        if record.object.kind == "Delegation" {
            self.apply_delegation(record);
            return;
        }
        if record.object.kind != "Agent" {
            return;
        }
        let Some(uid) = record.object.uid.as_deref() else { return };
        let at = time(&record.time).unwrap_or(Timestamp::UNIX_EPOCH);
        let Some(key) = record.key.as_deref() else { return };
        match (record.action.as_str(), record.kind) {
            (a::AGENT_ARCHIVE, RecordKind::Outcome) if record.outcome == Outcome::Success => {
                self.agents.remove(uid);
            }
            (a::AGENT_ARCHIVE, RecordKind::Intent) => self.update(uid, at, |r| r.issuances.clear()),
            (action, RecordKind::Intent) if phase_of(action).is_some() || action == a::AGENT_UPDATE => {
                self.update(uid, at, |r| decided(r, record, phase_of(action), at));
            }
            (a::CREDENTIAL_ISSUE, RecordKind::Intent) => {
                let Some(issuance) = issuance_of(record, key) else { return };
                let all = record.details.get(a::DETAIL_SUPERSEDES).is_some_and(|v| v == a::SUPERSEDES_ALL);
                self.update(uid, at, |r| {
                    if all {
                        r.issuances.clear();
                    }
                    r.issuances.retain(|i| i.key != key);
                    r.issuances.push(issuance);
                });
            }
            (a::CREDENTIAL_ISSUE, RecordKind::Outcome) => {
                let success = record.outcome == Outcome::Success;
                self.update(uid, at, |r| {
                    if !success {
                        r.issuances.retain(|i| i.key != key);
                    } else if let Some(i) = r.issuances.iter_mut().find(|i| i.key == key) {
                        i.stored = Stored::Yes;
                        // Records before the intent carried the tokens named them only in the outcome.
                        if i.tokens.is_empty() {
                            i.tokens = tokens_of(record, &i.audiences);
                        }
                    }
                });
            }
            (a::CREDENTIAL_WITHDRAW, RecordKind::Intent) => self.update(uid, at, |r| r.issuances.clear()),
            _ => {}
        }
    }

    /// A Delegation's admission (its grant), deletion, or phase.
    fn apply_delegation(&mut self, record: &Record) {
        let Some(uid) = record.object.uid.as_deref() else { return };
        let d = &record.details;
        match Action::parse(&record.action) {
            Some(Action::AdmissionCreate) if record.outcome == Outcome::Success => {
                let Some(username) = d.get(a::DETAIL_REQUESTER_USERNAME) else { return };
                let groups = d
                    .get(a::DETAIL_REQUESTER_GROUPS)
                    .map(|g| serde_json::from_str::<Vec<String>>(g).unwrap_or_else(|_| vec![g.clone()]))
                    .unwrap_or_default();
                let grant = Grant {
                    requester: Grantor {
                        username: username.clone(),
                        uid: d.get(a::DETAIL_REQUESTER_UID).cloned(),
                        groups,
                    },
                    agent_uid: d.get(a::DETAIL_AGENT_UID).cloned(),
                    parent_uid: d.get(a::DETAIL_PARENT_UID).cloned(),
                };
                self.grants.insert(uid.into(), Arc::new(grant));
            }
            Some(Action::AdmissionDelete) if record.outcome == Outcome::Success => {
                self.grants.remove(uid);
                self.delegations.remove(uid);
                self.delegated.remove(uid);
            }
            Some(Action::DelegationIssue) => {
                let Some(key) = record.key.as_deref() else { return };
                let at = time(&record.time).unwrap_or(Timestamp::UNIX_EPOCH);
                let tokens = self.delegated.entry(uid.into()).or_default();
                match record.kind {
                    RecordKind::Intent => {
                        if let Some(i) = delegated_issuance_of(record, key) {
                            tokens.retain(|t| t.key != key);
                            tokens.push(i);
                        }
                    }
                    RecordKind::Outcome if record.outcome == Outcome::Success => {
                        if let Some(t) = tokens.iter_mut().find(|t| t.key == key) {
                            t.stored = Stored::Yes;
                        }
                    }
                    RecordKind::Outcome => tokens.retain(|t| t.key != key),
                    RecordKind::Event | RecordKind::Recovery => {}
                }
                tokens.retain(|t| t.expires_at > at);
            }
            Some(action) if action.is_delegation() => {
                if let Some(phase) = d.get(a::DETAIL_PHASE).and_then(|p| delegation_phase_of(p)) {
                    let reason = d.get(a::DETAIL_REASON).map_or("ChainBroken", |r| delegation::reason(r));
                    let recorded = Recorded { phase, reason, message: record.reason.clone() };
                    self.delegations.insert(uid.into(), recorded);
                    // Only an Active delegation's tokens count: any other phase takes them all back.
                    if phase != DelegationPhase::Active {
                        self.delegated.remove(uid);
                    }
                }
            }
            _ => {}
        }
    }

    /// Changes the record of `uid` (creating it), then drops its expired issuances. Copy-on-write: readers
    /// holding the previous version keep it unchanged.
    fn update(&mut self, uid: &str, at: Timestamp, f: impl FnOnce(&mut AgentRecord)) {
        let entry = self.agents.entry(uid.into()).or_default();
        let record = Arc::make_mut(entry);
        f(record);
        record.issuances.retain(|i| i.expires_at > at);
    }
}

/// A lifecycle or update decision: the phase (for transitions), generation, trust score and validity.
fn decided(r: &mut AgentRecord, record: &Record, phase: Option<AgentPhase>, at: Timestamp) {
    let d = &record.details;
    let since = d.get(a::DETAIL_DECIDED_AT).and_then(|t| time(t)).unwrap_or(at);
    if let Some(p) = phase {
        if r.phase != Some(p) {
            r.phase_since = Some(since);
        }
        r.phase = Some(p);
        r.held_by = d.get(a::DETAIL_REVOCATION_UID).cloned();
        if p != AgentPhase::Active {
            r.issuances.clear();
        }
    }
    if let Some(g) = d.get(a::DETAIL_GENERATION).and_then(|g| g.parse().ok()) {
        r.generation = Some(g);
    }
    if let Some(t) = d.get(a::DETAIL_TRUST_SCORE).and_then(|t| t.parse().ok()) {
        r.trust_score = Some(t);
    }
    if let Some(v) = d.get(a::DETAIL_VALID).map(|v| v == "true")
        && r.valid.is_none_or(|(was, _)| was != v)
    {
        r.valid = Some((v, since));
    }
}

/// The ledger shared by the operator's tasks: read by decisions (a read lock and an `Arc` clone), written
/// only by the audit log's writer thread.
#[derive(Debug)]
pub struct Ledger {
    entries: RwLock<Entries>,
    /// Woken whenever an approval record is applied: decisions waiting for a human look again.
    approvals_changed: tokio::sync::Notify,
    /// The request (namespace, name) of each approval record applied: the approval controller reports a
    /// use, an answer or the operator's own record of a new request at once, not at its next deadline.
    approval_records: tokio::sync::broadcast::Sender<(String, String)>,
    /// Woken whenever a Delegation record is applied (admission, phases, delegated tokens): a token
    /// exchange waiting for its child's token looks again at once instead of at its next poll.
    delegations_changed: tokio::sync::Notify,
    /// The [`Entries::feed_changes`] count, for the revocation feed to wait on.
    feed: tokio::sync::watch::Sender<u64>,
}

/// How many approval records may wait for a slow approval controller; beyond that it misses triggers and
/// reports them at its next requeue instead.
const APPROVAL_RECORDS_BUFFER: usize = 1024;

impl Default for Ledger {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            approvals_changed: tokio::sync::Notify::new(),
            approval_records: tokio::sync::broadcast::channel(APPROVAL_RECORDS_BUFFER).0,
            delegations_changed: tokio::sync::Notify::new(),
            feed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Ledger {
    /// The record of the agent with `uid`, if the operator recorded anything about it.
    pub fn get(&self, uid: &str) -> Option<Arc<AgentRecord>> {
        // A panic while holding the lock cannot leave an entry half-changed (entries are swapped whole).
        self.entries.read().unwrap_or_else(PoisonError::into_inner).get(uid)
    }

    /// Whether the client assertion `jti` was used before (see [`TokenBook::assertion_used`]).
    pub fn assertion_used(&self, jti: &str, now: Timestamp) -> bool {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).tokens.assertion_used(jti, now)
    }

    /// Whether the Revocation with `uid` has asked for the emergency key rotation (its audit record).
    pub fn rotation_asked(&self, uid: &str) -> bool {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).rotation_asked(uid)
    }

    /// The access token `jti`, if issued and not expired (see [`TokenBook::access_token`]).
    pub fn access_token(&self, jti: &str, now: Timestamp) -> Option<AccessIssuance> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).access_token(jti, now).cloned()
    }

    /// What admission recorded when the Delegation with `uid` was created.
    pub fn grant(&self, uid: &str) -> Option<Arc<Grant>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).grant(uid)
    }

    /// The phase last recorded for the Delegation with `uid`.
    pub fn delegation_phase(&self, uid: &str) -> Option<Recorded> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).delegation_phase(uid)
    }

    /// The delegated tokens of the Delegation `uid` not taken back.
    pub fn delegated_tokens(&self, uid: &str) -> Vec<DelegatedIssuance> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).delegated_tokens(uid)
    }

    /// Whether the chain `chain` (Delegation UIDs) is in force by the operator's records: each link last
    /// recorded Active; and the token `jti` for `aud` a live token of the last one.
    pub fn delegated_standing(
        &self,
        chain: &[String],
        jti: &str,
        aud: &str,
        now: Timestamp,
    ) -> DelegatedStanding {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        for uid in chain {
            match entries.delegations.get(uid.as_str()) {
                Some(r) if r.phase == DelegationPhase::Active => {}
                Some(r) => return DelegatedStanding::NotInForce { uid: uid.clone(), phase: Some(r.phase) },
                None => return DelegatedStanding::NotInForce { uid: uid.clone(), phase: None },
            }
        }
        let Some(leaf) = chain.last() else { return DelegatedStanding::TokenNotIssued };
        if entries.delegated_token_live(leaf, jti, aud, now) {
            return DelegatedStanding::Live;
        }
        // Exactly at its exp, without the verifier's clock-skew leeway: the operator's own clock decides.
        let minted = entries.delegated.get(leaf.as_str()).is_some_and(|v| v.iter().any(|i| i.jti == jti));
        if minted { DelegatedStanding::Expired } else { DelegatedStanding::TokenNotIssued }
    }

    /// Reads the approval book under the lock (decisions and the approval controller).
    pub fn approvals<T>(&self, f: impl FnOnce(&approval::Book) -> T) -> T {
        f(&self.entries.read().unwrap_or_else(PoisonError::into_inner).approvals)
    }

    /// Notified after every approval record is applied. Create the `notified()` future before looking at
    /// the book, so a change between the look and the wait is not missed.
    pub fn approvals_changed(&self) -> &tokio::sync::Notify {
        &self.approvals_changed
    }

    /// Notified after every Delegation record is applied. Create the `notified()` future (and `enable` it)
    /// before looking, so a change between the look and the wait is not missed.
    pub fn delegations_changed(&self) -> &tokio::sync::Notify {
        &self.delegations_changed
    }

    /// Changes whenever a record that can change [`Self::voided`] was applied.
    pub fn feed_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    /// What the records void at `now`, for the revocation feed (see [`Voided`]).
    pub fn voided(&self, now: Timestamp) -> Voided {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).voided(now)
    }

    /// The (namespace, name) of every approval record applied from now on.
    pub fn approval_records(&self) -> tokio::sync::broadcast::Receiver<(String, String)> {
        self.approval_records.subscribe()
    }

    /// A copy of every entry (tests, diagnostics).
    pub fn entries(&self) -> Entries {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A ledger over the given records (tests, and tools that read a log file).
    pub fn from_records<'r>(records: impl IntoIterator<Item = &'r Record>) -> Self {
        let mut entries = Entries::default();
        for r in records {
            entries.apply(r);
        }
        Self { entries: RwLock::new(entries), ..Self::default() }
    }
}

#[cfg(test)]
impl Ledger {
    /// Sets the record of `uid` directly (tests of the readers, which need a record, not a log).
    pub(crate) fn set(&self, uid: &str, record: AgentRecord) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.agents.insert(uid.into(), Arc::new(record));
    }

    /// Records an access token directly (tests of the readers).
    pub(crate) fn set_access(&self, jti: &str, issuance: AccessIssuance) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.tokens.issued.insert(jti.into(), issuance);
    }

    /// Sets a Delegation's recorded phase, grantor groups and live tokens directly (tests of the readers).
    pub(crate) fn set_delegation(
        &self,
        uid: &str,
        phase: DelegationPhase,
        grantor: Grantor,
        tokens: Vec<DelegatedIssuance>,
    ) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let recorded = Recorded { phase, reason: "Granted", message: String::new() };
        entries.delegations.insert(uid.into(), recorded);
        let grant = Grant { requester: grantor, agent_uid: None, parent_uid: None };
        entries.grants.insert(uid.into(), Arc::new(grant));
        entries.delegated.insert(uid.into(), tokens);
    }
}

impl Projection for Ledger {
    fn wants(&self, action: &str) -> bool {
        Action::parse(action).is_some_and(|a| {
            a.is_registry()
                || a.is_credential()
                || a.is_delegation()
                || a.is_approval()
                || matches!(
                    a,
                    Action::AdmissionCreate
                        | Action::AdmissionUpdate
                        | Action::AdmissionDelete
                        | Action::DelegationIssue
                        | Action::TokenIssue
                        | Action::TokenRefuse
                        | Action::TokenRevoke
                        | Action::TokenExchange
                        | Action::RevocationRotateKeys
                        | Action::IssuerRotate
                )
        })
    }

    fn apply(&self, record: &Record) {
        let changes = {
            let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
            entries.apply(record);
            entries.feed_changes()
        };
        self.feed.send_if_modified(|n| std::mem::replace(n, changes) != changes);
        if record.object.kind == "ApprovalRequest" {
            self.approvals_changed.notify_waiters();
            if let Some(ns) = &record.object.namespace {
                // No receiver (no controller running) is fine: nobody needs the trigger.
                let _ = self.approval_records.send((ns.clone(), record.object.name.clone()));
            }
        } else if record.object.kind == "Delegation" {
            self.delegations_changed.notify_waiters();
        }
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
