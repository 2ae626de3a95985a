//! Task-scoped access tokens: what the token endpoint issues to an agent for one resource and one task
//! (RFC 9068, JWT profile for OAuth 2.0 access tokens). Pure.
//!
//! The header's `typ` is [`ACCESS_TYP`] (`at+jwt`, RFC 9068 §2.1), so no identity or delegated verifier
//! takes one for its own kind, and the access verifier refuses theirs. The claims:
//!
//! | claim | type | meaning |
//! |---|---|---|
//! | `sub`, `client_id` | string | the agent's SPIFFE ID (the agent is its own client) |
//! | `aud` | string | the one resource asked for (RFC 8707) |
//! | `scope` | string | the scopes the policy engine allowed, space-separated, each `<action>@<resource pattern>` |
//! | `iat`, `nbf`, `exp`, `jti`, `iss` | | as in every token we mint; `exp` at most 1h after `iat` |
//! | `agentiam.dev/uid` | string | the Agent's `metadata.uid` |
//! | `agentiam.dev/task` | string | the task id the agent named, if any |
//! | `agentiam.dev/model` | string | the model from the Agent's provenance, if declared |
//!
//! A resource server can verify one with the JWKS alone; the operator also records each one it issues,
//! so its own decision API and introspection can tell a live token from a revoked one.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::jwt::{MintError, TokenClaims, check_lifetime, new_jti, token_times};
pub use super::keys::ACCESS_TYP;
use super::keys::JwtType;
use super::spiffe::SpiffeId;

/// Claim name of the task id.
pub const CLAIM_TASK: &str = "agentiam.dev/task";
/// Claim name of the model the agent runs on.
pub const CLAIM_MODEL: &str = "agentiam.dev/model";
/// Lifetime of an access token: short, because it is for one task.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(5 * 60);

/// The claims of an access token. Times are NumericDate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The issuer URL.
    pub iss: String,
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The one resource.
    pub aud: String,
    /// Issued at.
    pub iat: i64,
    /// Not before (equal to `iat`).
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// A unique token ID.
    pub jti: String,
    /// The agent's SPIFFE ID again: the client the token was issued to (RFC 9068 §2.2).
    pub client_id: String,
    /// The allowed scopes, space-separated.
    pub scope: String,
    /// The Agent's `metadata.uid`.
    #[serde(rename = "agentiam.dev/uid")]
    pub agent_uid: String,
    /// The task id, if the agent named one.
    #[serde(rename = "agentiam.dev/task", default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The model from the Agent's provenance, if declared.
    #[serde(rename = "agentiam.dev/model", default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// RFC 8705 §3.1: the token is bound to the client certificate with this SHA-256 thumbprint; only a
    /// caller that shows that certificate may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim of a certificate-bound token (RFC 8705 §3.1, RFC 7800).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url (no padding) of the SHA-256 of the certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The `x5t#S256` thumbprint of a DER certificate: base64url, without padding, of its SHA-256.
pub fn thumbprint(der: &[u8]) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Whether `s` has the form of an `x5t#S256` thumbprint (43 base64url characters: 32 bytes).
pub fn is_thumbprint(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What an access token is minted from.
#[derive(Debug, Clone, Copy)]
pub struct AccessGrant<'a> {
    /// The issuer URL.
    pub issuer: &'a str,
    /// The agent.
    pub agent: &'a SpiffeId,
    /// The Agent's UID.
    pub agent_uid: &'a str,
    /// The resource.
    pub audience: &'a str,
    /// The allowed scopes.
    pub scopes: &'a [&'a str],
    /// The task id.
    pub task: Option<&'a str>,
    /// The model.
    pub model: Option<&'a str>,
    /// The `x5t#S256` of the client certificate the token is bound to (RFC 8705), if any.
    pub certificate: Option<&'a str>,
}

impl AccessClaims {
    /// Claims for `grant`, valid from `now` for `ttl` (whole seconds), with a fresh `jti`.
    pub fn new(grant: AccessGrant<'_>, now: Timestamp, ttl: Duration) -> Result<Self, MintError> {
        let (iat, exp) = token_times(now, ttl);
        Ok(Self {
            iss: grant.issuer.to_owned(),
            sub: grant.agent.to_string(),
            aud: grant.audience.to_owned(),
            iat,
            nbf: iat,
            exp,
            jti: new_jti()?,
            client_id: grant.agent.to_string(),
            scope: grant.scopes.join(" "),
            agent_uid: grant.agent_uid.to_owned(),
            task: grant.task.map(str::to_owned),
            model: grant.model.map(str::to_owned),
            cnf: grant.certificate.map(|t| Confirmation { x5t_s256: t.to_owned() }),
        })
    }
}

impl TokenClaims for AccessClaims {
    const TYPE: JwtType = JwtType::Access;

    fn validate(&self) -> Result<(), MintError> {
        let fail = |why| Err(MintError::InvalidClaims(why));
        if !self.sub.starts_with("spiffe://") || self.client_id != self.sub {
            return fail("sub must be the agent's SPIFFE ID, equal to client_id");
        }
        if self.aud.is_empty() || self.iss.is_empty() || self.jti.is_empty() || self.scope.is_empty() {
            return fail("aud, iss, jti and scope must be non-empty");
        }
        if self.agent_uid.is_empty() {
            return fail("the agent UID must be named");
        }
        if self.cnf.as_ref().is_some_and(|c| !is_thumbprint(&c.x5t_s256)) {
            return fail("cnf x5t#S256 must be a SHA-256 thumbprint");
        }
        check_lifetime(self.iat, self.nbf, self.exp)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwt::mint;
    use crate::identity::keys::SigningKey;
    use crate::identity::verify::decode_unverified;

    pub(crate) fn claims() -> AccessClaims {
        let agent = SpiffeId::parse("spiffe://cluster.local/ns/default/agent/booker").unwrap();
        let grant = AccessGrant {
            issuer: "https://issuer",
            agent: &agent,
            agent_uid: "booker-uid",
            audience: "https://crm",
            scopes: &["read@crm:contacts/*"],
            task: Some("t-42"),
            model: Some("claude-sonnet-4-5"),
            certificate: None,
        };
        AccessClaims::new(grant, Timestamp::now(), DEFAULT_ACCESS_TTL).unwrap()
    }

    #[test]
    fn an_access_token_has_its_own_typ_and_the_task_and_model() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let token = mint(&key, &claims()).unwrap();
        let (header, payload) = decode_unverified(&token).unwrap();
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(payload["client_id"], payload["sub"]);
        assert_eq!(payload[CLAIM_TASK], "t-42");
        assert_eq!(payload[CLAIM_MODEL], "claude-sonnet-4-5");
        assert_eq!(payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(), 300);
    }

    #[test]
    fn a_bound_token_names_the_certificate_thumbprint() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let mut c = claims();
        let t = thumbprint(b"certificate DER");
        assert!(is_thumbprint(&t) && !is_thumbprint(&t[1..]) && !is_thumbprint(&format!("{}=", &t[1..])));
        c.cnf = Some(Confirmation { x5t_s256: t.clone() });
        let (_, payload) = decode_unverified(&mint(&key, &c).unwrap()).unwrap();
        assert_eq!(payload["cnf"], serde_json::json!({"x5t#S256": t}));
        let (_, unbound) = decode_unverified(&mint(&key, &claims()).unwrap()).unwrap();
        assert!(unbound.get("cnf").is_none());
    }

    #[test]
    fn malformed_claims_are_not_signed() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let cases: [fn(&mut AccessClaims); 7] = [
            |c| c.sub = "alice".to_owned(),
            |c| c.client_id = "spiffe://cluster.local/ns/default/agent/other".to_owned(),
            |c| c.scope.clear(),
            |c| c.aud.clear(),
            |c| c.exp = c.iat + 3601,
            |c| c.agent_uid.clear(),
            |c| c.cnf = Some(Confirmation { x5t_s256: "not a thumbprint".into() }),
        ];
        for (i, break_it) in cases.into_iter().enumerate() {
            let mut c = claims();
            break_it(&mut c);
            assert!(matches!(mint(&key, &c), Err(MintError::InvalidClaims(_))), "case {i}");
        }
    }
}
