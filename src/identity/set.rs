//! Security Event Tokens (RFC 8417) as the Shared Signals Framework 1.0 shapes them: one event per SET,
//! the subject in `sub_id` (RFC 9493 subject identifiers), signed with the operator's published keys
//! (`typ` `secevent+jwt`). Pure; the transmitter (`crate::server::ssf`) decides when to send which.
//!
//! The events: CAEP `session-revoked` and `credential-change` (change type `revoke`) when the kill switch
//! stops an agent or ends a Delegation, and the SSF `verification` event a receiver asks for.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::jwt::{MintError, TokenClaims};
use super::keys::JwtType;

/// CAEP: every session of the subject ended.
pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP: a credential of the subject changed (here: was revoked).
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// SSF: the answer to a receiver's verification request.
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// The events a stream can carry.
pub const SUPPORTED: [&str; 3] = [SESSION_REVOKED, CREDENTIAL_CHANGE, VERIFICATION];

/// The claims of one SET.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetClaims {
    /// The transmitter (the operator's issuer URL).
    pub iss: String,
    /// When it was issued (seconds).
    pub iat: i64,
    /// Unique per SET.
    pub jti: String,
    /// The stream's audience.
    pub aud: String,
    /// The subject (RFC 9493).
    pub sub_id: Value,
    /// Exactly one event, by its type URI.
    pub events: Map<String, Value>,
    /// Ties the SETs of one cause together (the revocation feed's revision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
}

impl TokenClaims for SetClaims {
    const TYPE: JwtType = JwtType::SecEvent;

    fn validate(&self) -> Result<(), MintError> {
        if self.iss.is_empty() || self.jti.is_empty() || self.aud.is_empty() {
            return Err(MintError::InvalidClaims("iss, jti and aud must be non-empty"));
        }
        if self.events.len() != 1 {
            return Err(MintError::InvalidClaims("a SET carries exactly one event (SSF 1.0)"));
        }
        if !self.sub_id.get("format").is_some_and(Value::is_string) {
            return Err(MintError::InvalidClaims("sub_id needs a format"));
        }
        Ok(())
    }
}

/// The subject of an agent: its SPIFFE ID (a URI) when known, and its UID, as RFC 9493 aliases.
pub fn agent_subject(spiffe_id: Option<&str>, uid: &str) -> Value {
    let opaque = json!({"format": "opaque", "id": uid});
    match spiffe_id {
        Some(id) => json!({"format": "aliases", "identifiers": [{"format": "uri", "uri": id}, opaque]}),
        None => opaque,
    }
}

/// The subject of a Delegation: its UID.
pub fn delegation_subject(uid: &str) -> Value {
    json!({"format": "opaque", "id": uid})
}

/// What happened, for the events' `reason_admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause<'a> {
    /// The kill switch (or the owner) stopped it; the words say which.
    Stopped(&'a str),
}

/// The body of a `session-revoked` event at `at` (seconds).
pub fn session_revoked(at: i64, cause: Cause<'_>) -> Value {
    let Cause::Stopped(why) = cause;
    json!({"event_timestamp": at, "initiating_entity": "policy", "reason_admin": {"en": why}})
}

/// The body of a `credential-change` event (`revoke`) at `at` (seconds): the agent's X.509-SVID and its
/// tokens no longer count.
pub fn credential_revoked(at: i64, cause: Cause<'_>) -> Value {
    let Cause::Stopped(why) = cause;
    json!({"event_timestamp": at, "initiating_entity": "policy", "credential_type": "x509",
        "change_type": "revoke", "reason_admin": {"en": why}})
}

/// The body of a verification event answering `state`.
pub fn verification(state: Option<&str>) -> Value {
    match state {
        Some(s) => json!({"state": s}),
        None => json!({}),
    }
}

/// What every SET of one stream and one moment shares.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The transmitter.
    pub iss: &'a str,
    /// The stream's audience.
    pub aud: &'a str,
    /// When (seconds).
    pub iat: i64,
    /// The cause's transaction ID.
    pub txn: Option<String>,
}

/// One event about `subject` as claims, with its own `jti`.
pub fn claims(envelope: &Envelope<'_>, jti: String, subject: Value, event: &str, body: Value) -> SetClaims {
    let mut events = Map::new();
    events.insert(event.to_owned(), body);
    SetClaims {
        iss: envelope.iss.to_owned(),
        iat: envelope.iat,
        jti,
        aud: envelope.aud.to_owned(),
        sub_id: subject,
        events,
        txn: envelope.txn.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_carries_one_event_about_one_subject() {
        let subject = agent_subject(Some("spiffe://td/ns/n/agent/bot"), "u-1");
        assert_eq!(subject["identifiers"][0]["uri"], "spiffe://td/ns/n/agent/bot");
        assert_eq!(subject["identifiers"][1], json!({"format": "opaque", "id": "u-1"}));
        assert_eq!(agent_subject(None, "u-1"), json!({"format": "opaque", "id": "u-1"}));
        let body = session_revoked(100, Cause::Stopped("Revocation ns/stop"));
        let envelope = Envelope { iss: "https://op", aud: "https://rx", iat: 100, txn: Some("7".into()) };
        let c = claims(&envelope, "j".into(), subject, SESSION_REVOKED, body);
        assert!(c.validate().is_ok());
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["events"][SESSION_REVOKED]["reason_admin"]["en"], "Revocation ns/stop");
        assert_eq!(json["txn"], "7");
        let mut two = c.clone();
        two.events.insert(CREDENTIAL_CHANGE.into(), credential_revoked(100, Cause::Stopped("x")));
        assert!(two.validate().is_err(), "one event per SET");
        let mut bare = c;
        bare.sub_id = json!({"id": "u"});
        assert!(bare.validate().is_err());
    }
}
