//! JWT-SVID minting: the claims, their lifetime, and a lean signing path.
//!
//! Tokens are `base64url(header) . base64url(claims) . base64url(r || s)`, ES256, header
//! `{"alg":"ES256","typ":"JWT","kid":<RFC 7638 thumbprint>}`. Minting is on the hot path, so it does not go
//! through `jsonwebtoken::encode` (which re-parses the PKCS#8 key for every token): the header is encoded once
//! per key, the claims are serialized into a reused buffer, and the token is built in one allocation.
//!
//! Besides the registered claims, a token carries three agentiam claims, namespaced with our API group so
//! they cannot collide with registered or other private claims:
//!
//! | claim | type | meaning |
//! |---|---|---|
//! | `agentiam.dev/uid` | string | the Agent object's `metadata.uid`: tells a re-created agent of the same name apart |
//! | `agentiam.dev/owner` | string | who answers for the agent, as `<Kind>:<name>` (e.g. `User:alice@example.com`) |
//! | `agentiam.dev/trust_score` | integer 0..=1000 | the agent's trust score when the token was minted |

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::identity::keys::{ES256_SIGNATURE_LEN, JwtType, KeyError, SigningKey};
use crate::identity::spiffe::SpiffeId;

/// Claim name of the Agent's `metadata.uid`.
pub const CLAIM_UID: &str = "agentiam.dev/uid";
/// Claim name of the Agent's owner.
pub const CLAIM_OWNER: &str = "agentiam.dev/owner";
/// Claim name of the Agent's trust score.
pub const CLAIM_TRUST_SCORE: &str = "agentiam.dev/trust_score";

/// Lifetime of a token when the agent asks for none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
/// The longest lifetime any token gets; key rotation keeps retired keys published this long (plus leeway).
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The shortest lifetime the trust-score reduction goes down to.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Below this trust score the lifetime is halved.
pub const LOW_TRUST: u16 = 400;
/// Below this trust score the lifetime is quartered.
pub const VERY_LOW_TRUST: u16 = 200;

/// Why a token could not be minted. Messages never contain the token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The claims could not be serialized.
    #[error("failed to encode claims: {0}")]
    Encode(String),
    /// The random generator failed to produce a token ID.
    #[error("failed to generate token ID")]
    Random,
    /// The claims are structurally wrong; minting them would produce a token no verifier should accept.
    #[error("invalid claims: {0}")]
    InvalidClaims(&'static str),
}

impl MintError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Key(e) => e.metric_label(),
            Self::Encode(_) => "encode",
            Self::Random => "random",
            Self::InvalidClaims(_) => "invalid_claims",
        }
    }
}

/// The agent-specific part of the claims.
#[derive(Debug, Clone, Copy)]
pub struct AgentClaims<'a> {
    /// The Agent's `metadata.uid`.
    pub uid: &'a str,
    /// Who answers for the agent, as `<Kind>:<name>`.
    pub owner: &'a str,
    /// The agent's trust score (0..=1000).
    pub trust_score: u16,
}

/// The claims of a JWT-SVID. Times are NumericDate (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidClaims {
    /// The issuer URL; also the OIDC discovery issuer.
    pub iss: String,
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The one audience, as a plain string (JWT-SVID allows an array; one value keeps replay narrow).
    pub aud: String,
    /// Issued at.
    pub iat: i64,
    /// Not before (equal to `iat`; verifiers apply their own leeway).
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// A unique token ID: 128 random bits, base64url.
    pub jti: String,
    /// The Agent's `metadata.uid` ([`CLAIM_UID`]).
    #[serde(rename = "agentiam.dev/uid")]
    pub agent_uid: String,
    /// The Agent's owner ([`CLAIM_OWNER`]).
    #[serde(rename = "agentiam.dev/owner")]
    pub owner: String,
    /// The agent's trust score ([`CLAIM_TRUST_SCORE`]).
    #[serde(rename = "agentiam.dev/trust_score")]
    pub trust_score: u16,
}

impl SvidClaims {
    /// Claims for `subject` valid from `now` for `ttl` (whole seconds), with a fresh `jti`.
    pub fn new(
        issuer: &str,
        subject: &SpiffeId,
        audience: &str,
        agent: AgentClaims<'_>,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Self, MintError> {
        let (iat, exp) = token_times(now, ttl);
        Ok(Self {
            iss: issuer.to_owned(),
            sub: subject.to_string(),
            aud: audience.to_owned(),
            iat,
            nbf: iat,
            exp,
            jti: new_jti()?,
            agent_uid: agent.uid.to_owned(),
            owner: agent.owner.to_owned(),
            trust_score: agent.trust_score,
        })
    }

    /// Cheap structural checks run before signing, so a bug upstream cannot produce a signed token that is
    /// already expired, unbounded or about nobody.
    pub fn check(&self) -> Result<(), MintError> {
        let fail = |why| Err(MintError::InvalidClaims(why));
        if !self.sub.starts_with("spiffe://") {
            return fail("sub is not a SPIFFE ID");
        }
        if self.aud.is_empty() || self.iss.is_empty() || self.jti.is_empty() {
            return fail("aud, iss and jti must be non-empty");
        }
        check_lifetime(self.iat, self.nbf, self.exp)?;
        Ok(())
    }
}

/// Claims the operator signs: one [`JwtType`] (the header's `typ`), serialised as the payload, and checked
/// before signing so a bug upstream cannot produce a signed token no verifier should accept.
pub trait TokenClaims: Serialize {
    /// The token type, written as the header's `typ`.
    const TYPE: JwtType;
    /// The structural checks run before signing.
    fn validate(&self) -> Result<(), MintError>;
}

impl TokenClaims for SvidClaims {
    const TYPE: JwtType = JwtType::Svid;

    fn validate(&self) -> Result<(), MintError> {
        self.check()
    }
}

/// `iat` and `exp` (whole seconds) of a token minted at `now` for `ttl`.
pub(crate) fn token_times(now: Timestamp, ttl: Duration) -> (i64, i64) {
    let iat = now.as_second();
    (iat, iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)))
}

/// The time checks every kind of claims passes before signing: `exp` after `iat` and `nbf`, and a
/// lifetime of at most [`MAX_TTL`].
pub(crate) fn check_lifetime(iat: i64, nbf: i64, exp: i64) -> Result<(), MintError> {
    if exp <= iat || nbf > exp {
        return Err(MintError::InvalidClaims("exp must be after iat and nbf"));
    }
    if exp.saturating_sub(iat) > i64::try_from(MAX_TTL.as_secs()).unwrap_or(i64::MAX) {
        return Err(MintError::InvalidClaims("lifetime exceeds the 1h maximum"));
    }
    Ok(())
}

/// A fresh token ID: 128 bits from the system CSPRNG, base64url without padding (22 characters).
pub fn new_jti() -> Result<String, MintError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| MintError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The lifetime a token gets:
///
/// 1. the requested lifetime, or [`DEFAULT_TTL`] (10m) if none, raised to at least [`MIN_TTL`] (1m);
/// 2. capped at [`MAX_TTL`] (1h) and at the policy cap, if any;
/// 3. then a trust score below [`LOW_TRUST`] (400) halves it and one below [`VERY_LOW_TRUST`] (200)
///    quarters it, because a poorly described agent should hold any one credential for less time; the
///    reduction stops at [`MIN_TTL`] (but never raises a lifetime a cap set lower);
/// 4. truncated to whole seconds, as JWT times are.
pub fn effective_ttl(
    requested: Option<Duration>,
    policy_cap: Option<Duration>,
    trust_score: u16,
) -> Duration {
    let capped =
        requested.unwrap_or(DEFAULT_TTL).max(MIN_TTL).min(MAX_TTL).min(policy_cap.unwrap_or(MAX_TTL));
    let divisor = match trust_score {
        s if s < VERY_LOW_TRUST => 4,
        s if s < LOW_TRUST => 2,
        _ => 1,
    };
    let lowered = (capped / divisor).max(MIN_TTL).min(capped);
    Duration::from_secs(lowered.as_secs())
}

/// Mints one JWT-SVID. Allocates a claims buffer per call; use a [`Minter`] to reuse it.
pub fn mint_jwt_svid(key: &SigningKey, claims: &SvidClaims) -> Result<String, MintError> {
    mint(key, claims)
}

/// Mints one token of any type the operator signs.
pub fn mint<C: TokenClaims>(key: &SigningKey, claims: &C) -> Result<String, MintError> {
    mint_with(key, claims, &mut Vec::with_capacity(CLAIMS_CAPACITY))
}

/// Room for typical claims (about 300 bytes), so the buffer rarely grows.
const CLAIMS_CAPACITY: usize = 512;

/// Mints JWT-SVIDs with one key, reusing its claims buffer across tokens. One per thread or task: minting
/// takes `&mut self`, which keeps the buffer free of locks.
#[derive(Debug)]
pub struct Minter {
    key: Arc<SigningKey>,
    claims_json: Vec<u8>,
}

impl Minter {
    /// A minter signing with `key`.
    pub fn new(key: Arc<SigningKey>) -> Self {
        Self { key, claims_json: Vec::with_capacity(CLAIMS_CAPACITY) }
    }

    /// The key it signs with.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// Switches to another key, e.g. after a rotation, keeping the buffer.
    pub fn set_key(&mut self, key: Arc<SigningKey>) {
        self.key = key;
    }

    /// Mints one token (a JWT-SVID, or a delegated token).
    pub fn mint<C: TokenClaims>(&mut self, claims: &C) -> Result<String, MintError> {
        mint_with(&self.key, claims, &mut self.claims_json)
    }
}

fn mint_with<C: TokenClaims>(key: &SigningKey, claims: &C, buf: &mut Vec<u8>) -> Result<String, MintError> {
    claims.validate()?;
    buf.clear();
    serde_json::to_writer(&mut *buf, claims).map_err(|e| MintError::Encode(e.to_string()))?;
    let header = key.header_b64_for(C::TYPE);
    let len = header.len() + 1 + b64_len(buf.len()) + 1 + b64_len(ES256_SIGNATURE_LEN);
    let mut token = String::with_capacity(len);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&*buf, &mut token);
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, &mut token);
    Ok(token)
}

/// Length of unpadded base64 for `n` bytes.
const fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;

    const ISS: &str = "https://agentiam.agentiam-system.svc";

    fn subject() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/default/agent/support-triage").unwrap()
    }

    fn claims(ttl: Duration) -> SvidClaims {
        let agent = AgentClaims { uid: "0b6f1a9e-uid", owner: "User:alice@example.com", trust_score: 950 };
        SvidClaims::new(ISS, &subject(), "https://api.example.com", agent, Timestamp::now(), ttl).unwrap()
    }

    fn decode(token: &str, key: &SigningKey) -> jsonwebtoken::errors::Result<SvidClaims> {
        let decoding = DecodingKey::from_ec_components(key.x(), key.y()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://api.example.com"]);
        validation.set_issuer(&[ISS]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<SvidClaims>(token, &decoding, &validation).map(|d| d.claims)
    }

    fn segment(token: &str, i: usize) -> serde_json::Value {
        let part = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn minted_token_verifies_independently_with_exactly_the_claims() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let c = claims(Duration::from_secs(600));
        let token = mint_jwt_svid(&key, &c).unwrap();
        assert_eq!(decode(&token, &key).unwrap(), c);
        let payload = segment(&token, 1);
        let names: Vec<&str> = payload.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want =
            vec!["iss", "sub", "aud", "iat", "nbf", "exp", "jti", CLAIM_UID, CLAIM_OWNER, CLAIM_TRUST_SCORE];
        let mut got = names.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(payload["aud"].is_string(), "aud is one string, not an array");
        assert_eq!(payload[CLAIM_TRUST_SCORE], 950);
        assert_eq!(c.exp - c.iat, 600);
    }

    #[test]
    fn header_is_exactly_alg_typ_kid() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let token = Minter::new(Arc::new(key)).mint(&claims(DEFAULT_TTL)).unwrap();
        let key_kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert_eq!(segment(&token, 0), serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": key_kid}));
    }

    #[test]
    fn signature_is_fixed_size_and_tampering_fails() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let token = mint_jwt_svid(&key, &claims(DEFAULT_TTL)).unwrap();
        let sig = token.rsplit('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(sig).unwrap().len(), ES256_SIGNATURE_LEN);
        let mut other = claims(DEFAULT_TTL);
        other.sub = "spiffe://cluster.local/ns/default/agent/other".to_owned();
        let forged = mint_jwt_svid(&key, &other).unwrap();
        let (a, b): (Vec<&str>, Vec<&str>) = (token.split('.').collect(), forged.split('.').collect());
        let spliced = [a.first(), b.get(1), a.get(2)].map(|p| *p.unwrap()).join(".");
        assert!(decode(&spliced, &key).is_err(), "payload swapped under another token's signature");
        let stranger = SigningKey::generate(Timestamp::now()).unwrap();
        assert!(decode(&token, &stranger).is_err());
    }

    #[test]
    fn minter_reuses_its_buffer_and_tokens_match_the_free_function_shape() {
        let key = Arc::new(SigningKey::generate(Timestamp::now()).unwrap());
        let mut minter = Minter::new(Arc::clone(&key));
        let c = claims(DEFAULT_TTL);
        for _ in 0..3 {
            let token = minter.mint(&c).unwrap();
            assert_eq!(decode(&token, &key).unwrap(), c);
        }
        let next = Arc::new(SigningKey::generate(Timestamp::now()).unwrap());
        minter.set_key(Arc::clone(&next));
        let token = minter.mint(&c).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(), Some(next.kid()));
        assert!(decode(&token, &key).is_err());
    }

    #[test]
    fn jti_unique_across_10k_mints() {
        let key = Arc::new(SigningKey::generate(Timestamp::now()).unwrap());
        let mut minter = Minter::new(key);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let c = claims(DEFAULT_TTL);
            assert_eq!(URL_SAFE_NO_PAD.decode(&c.jti).unwrap().len(), 16);
            minter.mint(&c).unwrap();
            assert!(seen.insert(c.jti));
        }
    }

    #[test]
    fn malformed_claims_are_not_signed() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let cases: [fn(&mut SvidClaims); 5] = [
            |c| c.sub = "user:alice".to_owned(),
            |c| c.aud.clear(),
            |c| c.exp = c.iat,
            |c| c.exp = c.iat + 3601,
            |c| c.nbf = c.exp + 1,
        ];
        for (i, break_it) in cases.into_iter().enumerate() {
            let mut c = claims(DEFAULT_TTL);
            break_it(&mut c);
            assert!(matches!(mint_jwt_svid(&key, &c), Err(MintError::InvalidClaims(_))), "case {i}");
        }
    }

    #[test]
    fn expired_token_is_rejected_by_the_independent_verifier() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let mut c = claims(DEFAULT_TTL);
        (c.iat, c.nbf, c.exp) = (c.iat - 7200, c.iat - 7200, c.iat - 3600);
        let token = mint_jwt_svid(&key, &c).unwrap();
        assert!(decode(&token, &key).is_err());
    }

    #[test]
    fn effective_ttl_table() {
        let m = |mins: u64| Duration::from_secs(mins * 60);
        let cases = [
            // (requested, cap, score, expected)
            (None, None, 1000, m(10)),
            (None, None, 400, m(10)),
            (None, None, 399, m(5)),
            (None, None, 200, m(5)),
            (None, None, 199, m(2) + Duration::from_secs(30)),
            (None, None, 0, m(2) + Duration::from_secs(30)),
            (Some(m(120)), None, 1000, m(60)),
            (Some(m(60)), Some(m(15)), 1000, m(15)),
            (Some(m(60)), Some(m(90)), 1000, m(60)),
            (Some(m(60)), None, 250, m(30)),
            (Some(m(60)), None, 100, m(15)),
            (Some(m(2)), None, 100, m(1)),
            (Some(Duration::ZERO), None, 1000, m(1)),
            (Some(Duration::from_secs(10)), None, 1000, m(1)),
            (Some(m(5)), Some(Duration::from_secs(30)), 1000, Duration::from_secs(30)),
            (Some(m(5)), Some(Duration::from_secs(30)), 0, Duration::from_secs(30)),
            (Some(Duration::from_millis(90_500)), None, 1000, Duration::from_secs(90)),
        ];
        for (requested, cap, score, want) in cases {
            assert_eq!(effective_ttl(requested, cap, score), want, "{requested:?} {cap:?} {score}");
        }
    }

    #[test]
    fn max_ttl_matches_the_rotation_policy_default() {
        // Retired keys stay published for max_token_ttl + leeway; a longer token would outlive its key.
        assert_eq!(MAX_TTL, crate::identity::keys::RotationPolicy::default().max_token_ttl);
    }
}
