//! The strict JWT-SVID verifier used by every endpoint that accepts an agent's token (decision API, CLI).
//!
//! It is deliberately independent of the minting code: it consumes only published public keys (a JWK set), so a
//! bug in how we sign cannot hide a bug in how we check, and anything that holds the JWKS can verify offline.
//!
//! The verifier is strict where the JWT specifications are loose, because every looseness is a known attack:
//! the algorithm is pinned by the key (ES256 on P-256) and never chosen by the token, header parameters that
//! could point at other keys (`jku`, `jwk`, `x5u`, `x5c`) or change how the token is processed (`crit`, `b64`,
//! `zip`) are refused, JSON with duplicate keys is refused (parsers disagree on which one wins), base64 must be
//! canonical, and the size limit is checked before anything is decoded. See [`JwtVerifier::verify`] for the
//! exact checks and their order.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations,
    PublicKeyUse,
};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::access::{ACCESS_TYP, CLAIM_MODEL, CLAIM_TASK};
use super::delegated::{CLAIM_CHAIN, CLAIM_DELEGATION, CLAIM_DELEGATION_UID, DELEGATED_TYP, MAX_CHAIN};
use super::jwt::CLAIM_UID;
use super::keys::JwtType;
use super::{SpiffeError, SpiffeId, TrustDomain};
use crate::authz::scope::{Scope, parse_all};

/// The only accepted signature algorithm: every key we publish is ECDSA P-256 with SHA-256.
pub const ALGORITHM: &str = "ES256";
/// The largest clock-skew allowance the verifier accepts; more would stretch every token's lifetime.
pub const MAX_LEEWAY: Duration = Duration::from_secs(30);
/// The default (and largest) token size; real JWT-SVIDs are well under 2 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// `use` value of JWT authorities in a SPIFFE trust bundle.
const USE_JWT_SVID: &str = "jwt-svid";
/// ES256 signatures are the fixed-width r||s form (RFC 7518 §3.4), never DER.
const SIGNATURE_LEN: usize = 64;
/// Bytes of one P-256 coordinate.
const COORDINATE_LEN: usize = 32;
/// How much of an attacker-chosen kid an error message may quote.
const MAX_QUOTED_KID: usize = 64;
/// Header parameters we know and refuse by name; anything else unknown is refused too, just without a name.
const FORBIDDEN_HEADERS: [&str; 11] =
    ["jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64", "zip", "cty", "enc"];
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// What the verifier checks tokens against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Trust domain every subject must belong to.
    pub trust_domain: TrustDomain,
    /// Exact value required in `iss`.
    pub issuer: String,
    /// Clock-skew allowance applied to `exp`, `nbf` and `iat`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Tokens longer than this many bytes are refused before any decoding; at most [`DEFAULT_MAX_TOKEN_BYTES`].
    pub max_token_bytes: usize,
    /// Require `sub` to be an agent ID (`/ns/<namespace>/agent/<name>`), as every SVID we mint is.
    pub require_agent: bool,
}

impl VerifierConfig {
    /// A config with the default leeway (30 s), size limit (16 KiB) and agent-only subjects.
    pub fn new(trust_domain: TrustDomain, issuer: impl Into<String>) -> Self {
        Self {
            trust_domain,
            issuer: issuer.into(),
            leeway: MAX_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            require_agent: true,
        }
    }
}

/// Why a verifier could not be built from a config and a key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    /// The leeway is larger than [`MAX_LEEWAY`].
    #[error("leeway {0:?} is larger than the {MAX_LEEWAY:?} maximum")]
    Leeway(Duration),
    /// The size limit is zero or larger than [`DEFAULT_MAX_TOKEN_BYTES`].
    #[error("token size limit {0} is not between 1 and {DEFAULT_MAX_TOKEN_BYTES} bytes")]
    TokenLimit(usize),
    /// The configured issuer is empty, which would make the `iss` check meaningless.
    #[error("issuer is empty")]
    EmptyIssuer,
    /// A signing key has no (or an empty) `kid`, so tokens could not name it.
    #[error("a signing key has no kid")]
    MissingKid,
    /// Two signing keys share a `kid`, so a token's key would be ambiguous.
    #[error("signing key {kid:?} appears more than once")]
    DuplicateKid {
        /// The repeated key ID.
        kid: String,
    },
    /// A signing key is not an EC P-256 key for ES256.
    #[error("signing key {kid:?} is not usable for ES256: {reason}")]
    UnsupportedKey {
        /// The key's ID.
        kid: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A signing key's coordinates are not a valid P-256 public point.
    #[error("signing key {kid:?} is not a valid P-256 public key")]
    InvalidKey {
        /// The key's ID.
        kid: String,
    },
}

impl VerifierError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Leeway(_) | Self::TokenLimit(_) | Self::EmptyIssuer => "config",
            Self::MissingKid | Self::DuplicateKid { .. } => "key_id",
            Self::UnsupportedKey { .. } | Self::InvalidKey { .. } => "key",
        }
    }
}

/// Which JSON document of the token a problem was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The JOSE header.
    Header,
    /// The claims set (payload).
    Claims,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Header => "header",
            Self::Claims => "claims",
        })
    }
}

/// What is wrong with a token's header (other than its algorithm).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A known parameter that we refuse: key references (`jku`, `jwk`, `x5u`, `x5c`) would let the token choose
    /// its own key, and processing changes (`crit`, `b64`, `zip`, ...) would change what was signed.
    #[error("header parameter {0:?} is not allowed")]
    Forbidden(&'static str),
    /// A parameter other than `alg`, `typ` and `kid`; its name is not quoted because the signature is not yet
    /// checked and the name is attacker-chosen.
    #[error("header has a parameter other than alg, typ and kid")]
    Unknown,
    /// There is no `alg`.
    #[error("header has no alg")]
    MissingAlgorithm,
    /// `typ` is present but not "JWT" or "JOSE" (a delegated token is not an identity token).
    #[error("header typ is not \"JWT\" or \"JOSE\"")]
    Type,
    /// Where a delegated token is expected, `typ` is not [`DELEGATED_TYP`] (an identity token is not one).
    #[error("header typ is not \"{DELEGATED_TYP}\": not a delegated token")]
    NotDelegated,
    /// Where an access token is expected, `typ` is not [`ACCESS_TYP`] (no other token is one).
    #[error("header typ is not \"{ACCESS_TYP}\": not an access token")]
    NotAccess,
    /// There is no `kid`, or it is empty.
    #[error("header has no kid")]
    MissingKeyId,
    /// `kid` is not a string.
    #[error("header kid is not a string")]
    KeyIdType,
}

/// Why a token was refused. Messages never quote the token, its signature or (before the signature is checked)
/// anything attacker-chosen beyond a shortened kid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than the size limit; nothing was decoded.
    #[error("token is larger than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The token is not three canonical base64url segments of JSON objects and a 64-byte signature.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header or claims repeat a JSON key, which parsers resolve differently.
    #[error("token {0} has a duplicate JSON key")]
    DuplicateKey(Part),
    /// The header is not acceptable.
    #[error("token header is invalid: {0}")]
    Header(#[from] HeaderError),
    /// The header `alg` is not exactly "ES256".
    #[error("token algorithm is not {ALGORITHM}")]
    UnsupportedAlgorithm,
    /// No published key has the token's `kid` (the kid is shortened).
    #[error("token kid {0:?} is not a known signing key")]
    UnknownKey(String),
    /// The signature does not verify with the named key.
    #[error("token signature is invalid")]
    BadSignature,
    /// A required claim is absent.
    #[error("token claim {0} is missing")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type or an unusable value.
    #[error("token claim {0} has an invalid value")]
    InvalidClaim(&'static str),
    /// `exp` (plus leeway) has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` (minus leeway) has not been reached.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iat` is later than now plus leeway.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not the expected issuer")]
    Issuer,
    /// `aud` does not name the expected audience.
    #[error("token audience is not the expected audience")]
    Audience,
    /// `aud` is an array whose length is not one.
    #[error("token has {0} audiences but exactly one is accepted")]
    AudienceCount(usize),
    /// `sub` is not a valid SPIFFE ID, or not an agent ID when one is required.
    #[error("token subject is invalid: {0}")]
    Subject(SpiffeError),
    /// `sub` is a valid SPIFFE ID in another trust domain.
    #[error("token subject is not in the expected trust domain")]
    ForeignTrustDomain,
}

impl TokenError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::DuplicateKey(_) => "duplicate_key",
            Self::Header(_) => "header",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::Issuer => "issuer",
            Self::Audience | Self::AudienceCount(_) => "audience",
            Self::Subject(_) => "subject",
            Self::ForeignTrustDomain => "foreign_trust_domain",
        }
    }
}

/// The claims of a token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedSvid {
    /// The subject.
    pub spiffe_id: SpiffeId,
    /// The single audience (equal to the expected one).
    pub audience: String,
    /// The issuer (equal to the configured one).
    pub issuer: String,
    /// `iat`, when present.
    pub issued_at: Option<Timestamp>,
    /// `exp`.
    pub expires_at: Timestamp,
    /// `nbf`, when present.
    pub not_before: Option<Timestamp>,
    /// `jti`, for replay tracking by the caller.
    pub jti: String,
    /// The `kid` of the key that signed the token.
    pub kid: String,
    /// Every other claim (for example agentiam's own), untouched.
    pub extra: Map<String, Value>,
}

/// The claims of a delegated token that passed every check of [`JwtVerifier::verify_delegated`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedDelegated {
    /// The human at the root of the chain (`sub`).
    pub grantor: String,
    /// The agents, the acting one (`client_id`) first, then each that delegated to the one before.
    pub agents: Vec<SpiffeId>,
    /// The leaf Delegation's scopes.
    pub scopes: Vec<Scope>,
    /// The single audience.
    pub audience: String,
    /// The issuer.
    pub issuer: String,
    /// `iat`, when present.
    pub issued_at: Option<Timestamp>,
    /// `exp`.
    pub expires_at: Timestamp,
    /// `jti`.
    pub jti: String,
    /// The signing key's ID.
    pub kid: String,
    /// The acting Agent's UID.
    pub agent_uid: String,
    /// The leaf Delegation's name.
    pub delegation: String,
    /// The leaf Delegation's UID.
    pub delegation_uid: String,
    /// The Delegation UIDs of the chain, root first.
    pub chain: Vec<String>,
    /// The agent that may take the rights over by token exchange (`may_act`), with its UID.
    pub may_act: Option<(SpiffeId, String)>,
}

/// The claims of an access token that passed every check of [`JwtVerifier::verify_access`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedAccess {
    /// The agent (`sub`, equal to `client_id`).
    pub agent: SpiffeId,
    /// The scopes.
    pub scopes: Vec<Scope>,
    /// The single audience (the resource).
    pub audience: String,
    /// `iat`, when present.
    pub issued_at: Option<Timestamp>,
    /// `exp`.
    pub expires_at: Timestamp,
    /// `jti`.
    pub jti: String,
    /// The signing key's ID.
    pub kid: String,
    /// The Agent's UID.
    pub agent_uid: String,
    /// The task id, if any.
    pub task: Option<String>,
    /// The model, if any.
    pub model: Option<String>,
    /// The `x5t#S256` of the client certificate the token is bound to (RFC 8705 `cnf`), if any.
    pub certificate: Option<String>,
}

/// Verifies JWT-SVIDs against a fixed set of public keys. Immutable: on key rotation build a new one with
/// [`JwtVerifier::with_keys`] and swap it in, so a verification never sees a half-updated key set.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    config: VerifierConfig,
    leeway_nanos: i128,
    keys: HashMap<String, ParsedPublicKey>,
}

impl JwtVerifier {
    /// Checks the config and prepares every usable key once.
    ///
    /// Keys whose `use` is neither absent, "sig" nor "jwt-svid", or whose `key_ops` omit "verify", are ignored
    /// (a SPIFFE bundle also carries X.509 authorities). Every other key must be EC P-256 (with `alg` absent or
    /// ES256), have a non-empty unique `kid` and valid coordinates, or the whole set is refused: a signing key we
    /// cannot use is a publishing mistake to surface, not to skip. An empty set is allowed and verifies nothing.
    pub fn new(config: VerifierConfig, keys: &JwkSet) -> Result<Self, VerifierError> {
        if config.leeway > MAX_LEEWAY {
            return Err(VerifierError::Leeway(config.leeway));
        }
        if config.max_token_bytes == 0 || config.max_token_bytes > DEFAULT_MAX_TOKEN_BYTES {
            return Err(VerifierError::TokenLimit(config.max_token_bytes));
        }
        if config.issuer.is_empty() {
            return Err(VerifierError::EmptyIssuer);
        }
        let leeway_nanos =
            i128::try_from(config.leeway.as_nanos()).map_err(|_| VerifierError::Leeway(config.leeway))?;
        Ok(Self { leeway_nanos, keys: prepare_keys(keys)?, config })
    }

    /// The same config with a new key set (rotation).
    pub fn with_keys(&self, keys: &JwkSet) -> Result<Self, VerifierError> {
        Ok(Self { config: self.config.clone(), leeway_nanos: self.leeway_nanos, keys: prepare_keys(keys)? })
    }

    /// The config this verifier checks against.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// The IDs of the keys it accepts, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// Verifies a compact JWT-SVID for `expected_audience` at time `now`.
    ///
    /// Checks, in order, each failing closed with its own [`TokenError`]:
    /// 1. length ≤ `max_token_bytes` (before any decoding);
    /// 2. only base64url characters and dots, exactly three non-empty segments;
    /// 3. header: canonical unpadded base64url, a JSON object without duplicate keys, only `alg`, `typ`, `kid`;
    ///    `alg` exactly "ES256"; `typ` absent, "JWT" or "JOSE"; `kid` a non-empty string naming a known key;
    /// 4. signature: canonical base64url of exactly 64 bytes (r||s), valid over `header.payload` with that key;
    /// 5. claims (only now decoded): canonical base64url, a JSON object without duplicate keys; `exp`, `aud`,
    ///    `iss`, `sub`, `jti` present; `exp`, `nbf`, `iat` integer NumericDates (fractions refused: we mint
    ///    whole seconds); `jti` a non-empty string;
    /// 6. time: `now < exp + leeway`; `now >= nbf - leeway` when `nbf` is present; `iat <= now + leeway` when
    ///    `iat` is present;
    /// 7. `iss` equals the configured issuer exactly;
    /// 8. `aud` is a string or an array of exactly one string (the SPIFFE spec allows several, but our issuer
    ///    mints one, and a token valid for several services could be replayed between them) equal to
    ///    `expected_audience`, which must be non-empty;
    /// 9. `sub` is a valid SPIFFE ID in the configured trust domain, and an agent ID if `require_agent`.
    pub fn verify(
        &self,
        token: &str,
        expected_audience: &str,
        now: Timestamp,
    ) -> Result<VerifiedSvid, TokenError> {
        self.verify_inner(token, Some(expected_audience), now)
    }

    /// [`verify`](Self::verify) for a caller that accepts any single audience and decides on the result
    /// itself (the decision API, which records the audience). Every other check is the same, including that
    /// `aud` is present and names exactly one non-empty audience.
    pub fn verify_any_audience(&self, token: &str, now: Timestamp) -> Result<VerifiedSvid, TokenError> {
        self.verify_inner(token, None, now)
    }

    /// Verifies a delegated token (see [`crate::identity::delegated`]) for any single audience at `now`.
    ///
    /// Steps 1 to 8 are those of [`verify`](Self::verify), except that the header's `typ` must be exactly
    /// [`DELEGATED_TYP`] (so an identity token is refused here, as a delegated token is there). Then:
    /// `sub` is a non-empty string that is not a SPIFFE ID (the human); `act` is an object chain of at most
    /// [`MAX_CHAIN`] agents, each `sub` an agent SPIFFE ID in the trust domain, the outermost equal to
    /// `client_id`; `scope` is a space-separated list of valid scopes; the agent UID, the delegation name
    /// and UID are non-empty strings, and the chain of Delegation UIDs has one entry per agent and ends at
    /// the delegation's UID. Whether that chain is still in force is for the caller to check.
    pub fn verify_delegated(&self, token: &str, now: Timestamp) -> Result<VerifiedDelegated, TokenError> {
        let (claims, kid) = self.verify_signed(token, JwtType::Delegated, None, now)?;
        let Claims { aud, iss, sub, jti, iat, exp, mut extra, .. } = claims;
        if sub.is_empty() || sub.starts_with("spiffe://") {
            return Err(TokenError::InvalidClaim("sub"));
        }
        let client_id = take_string(&mut extra, "client_id")?;
        let act = extra.remove("act").ok_or(TokenError::MissingClaim("act"))?;
        let mut agents = Vec::new();
        let mut next = Some(act);
        while let Some(actor) = next.take() {
            let Value::Object(mut actor) = actor else { return Err(TokenError::InvalidClaim("act")) };
            let agent = take_string(&mut actor, "sub").map_err(|_| TokenError::InvalidClaim("act"))?;
            let id = SpiffeId::parse(&agent).map_err(TokenError::Subject)?;
            id.agent_in(&self.config.trust_domain).map_err(|_| TokenError::InvalidClaim("act"))?;
            agents.push(id);
            next = actor.remove("act");
            if !actor.is_empty() || agents.len() > MAX_CHAIN {
                return Err(TokenError::InvalidClaim("act"));
            }
        }
        if agents.first().is_none_or(|a| a.to_string() != client_id) {
            return Err(TokenError::InvalidClaim("client_id"));
        }
        let scope = take_string(&mut extra, "scope")?;
        let scopes = parse_all(&scope.split(' ').collect::<Vec<_>>())
            .map_err(|_| TokenError::InvalidClaim("scope"))?;
        let agent_uid = take_string(&mut extra, CLAIM_UID).and_then(|s| non_empty(s, CLAIM_UID))?;
        let delegation =
            take_string(&mut extra, CLAIM_DELEGATION).and_then(|s| non_empty(s, CLAIM_DELEGATION))?;
        let delegation_uid =
            take_string(&mut extra, CLAIM_DELEGATION_UID).and_then(|s| non_empty(s, CLAIM_DELEGATION_UID))?;
        let chain = match extra.remove(CLAIM_CHAIN) {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s),
                    _ => Err(TokenError::InvalidClaim(CLAIM_CHAIN)),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(TokenError::InvalidClaim(CLAIM_CHAIN)),
            None => return Err(TokenError::MissingClaim(CLAIM_CHAIN)),
        };
        if chain.len() != agents.len() || chain.last() != Some(&delegation_uid) {
            return Err(TokenError::InvalidClaim(CLAIM_CHAIN));
        }
        // `may_act`: exactly a SPIFFE ID of this trust domain's agents and a UID, nothing else.
        let may_act = match extra.remove("may_act") {
            None => None,
            Some(Value::Object(mut m)) => {
                let bad = |_| TokenError::InvalidClaim("may_act");
                let sub = take_string(&mut m, "sub").map_err(bad)?;
                let uid =
                    take_string(&mut m, CLAIM_UID).and_then(|s| non_empty(s, CLAIM_UID)).map_err(bad)?;
                let id = SpiffeId::parse(&sub).map_err(|_| TokenError::InvalidClaim("may_act"))?;
                id.agent_in(&self.config.trust_domain).map_err(|_| TokenError::InvalidClaim("may_act"))?;
                if !m.is_empty() || agents.first() == Some(&id) {
                    return Err(TokenError::InvalidClaim("may_act"));
                }
                Some((id, uid))
            }
            Some(_) => return Err(TokenError::InvalidClaim("may_act")),
        };
        Ok(VerifiedDelegated {
            grantor: sub,
            agents,
            scopes,
            audience: aud,
            issuer: iss,
            issued_at: iat.map(|t| t.timestamp),
            expires_at: exp.timestamp,
            jti,
            kid,
            agent_uid,
            delegation,
            delegation_uid,
            chain,
            may_act,
        })
    }

    /// Verifies an access token (see [`crate::identity::access`]) for any single audience at `now`.
    ///
    /// Steps 1 to 8 are those of [`verify`](Self::verify), except that the header's `typ` must be exactly
    /// [`ACCESS_TYP`]. Then: `sub` is an agent SPIFFE ID in the trust domain and `client_id` equals it;
    /// `scope` is a space-separated list of valid scopes; the agent UID is a non-empty string; the task and
    /// model, when present, are strings. Whether the token is still live (issued, not revoked, its agent
    /// Active) is for the caller to check against the operator's records.
    pub fn verify_access(&self, token: &str, now: Timestamp) -> Result<VerifiedAccess, TokenError> {
        let (claims, kid) = self.verify_signed(token, JwtType::Access, None, now)?;
        let Claims { aud, sub, jti, iat, exp, mut extra, .. } = claims;
        let agent = SpiffeId::parse(&sub).map_err(TokenError::Subject)?;
        agent.agent_in(&self.config.trust_domain).map_err(TokenError::Subject)?;
        if take_string(&mut extra, "client_id")? != sub {
            return Err(TokenError::InvalidClaim("client_id"));
        }
        let scope = take_string(&mut extra, "scope")?;
        let scopes = parse_all(&scope.split(' ').collect::<Vec<_>>())
            .map_err(|_| TokenError::InvalidClaim("scope"))?;
        let agent_uid = take_string(&mut extra, CLAIM_UID).and_then(|s| non_empty(s, CLAIM_UID))?;
        let optional = |extra: &mut Map<String, Value>, name: &'static str| match extra.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(TokenError::InvalidClaim(name)),
        };
        let task = optional(&mut extra, CLAIM_TASK)?;
        let model = optional(&mut extra, CLAIM_MODEL)?;
        // `cnf` is either absent or exactly {"x5t#S256": <thumbprint>}: a confirmation this verifier does
        // not understand must not be dropped, or a bound token would verify as a bearer token.
        let certificate = match extra.remove("cnf") {
            None => None,
            Some(Value::Object(cnf)) => match (cnf.len(), cnf.get("x5t#S256")) {
                (1, Some(Value::String(t))) if crate::identity::access::is_thumbprint(t) => Some(t.clone()),
                _ => return Err(TokenError::InvalidClaim("cnf")),
            },
            Some(_) => return Err(TokenError::InvalidClaim("cnf")),
        };
        Ok(VerifiedAccess {
            agent,
            scopes,
            audience: aud,
            issued_at: iat.map(|t| t.timestamp),
            expires_at: exp.timestamp,
            jti,
            kid,
            agent_uid,
            task,
            model,
            certificate,
        })
    }

    fn verify_inner(
        &self,
        token: &str,
        expected_audience: Option<&str>,
        now: Timestamp,
    ) -> Result<VerifiedSvid, TokenError> {
        let (claims, kid) = self.verify_signed(token, JwtType::Svid, expected_audience, now)?;
        let spiffe_id = SpiffeId::parse(&claims.sub).map_err(TokenError::Subject)?;
        if spiffe_id.trust_domain() != &self.config.trust_domain {
            return Err(TokenError::ForeignTrustDomain);
        }
        if self.config.require_agent {
            spiffe_id.agent_in(&self.config.trust_domain).map_err(TokenError::Subject)?;
        }
        Ok(VerifiedSvid {
            spiffe_id,
            audience: claims.aud,
            issuer: claims.iss,
            issued_at: claims.iat.map(|t| t.timestamp),
            expires_at: claims.exp.timestamp,
            not_before: claims.nbf.map(|t| t.timestamp),
            jti: claims.jti,
            kid,
            extra: claims.extra,
        })
    }

    /// Steps 1 to 8 of [`verify`](Self::verify), for a token of `typ`: the claims and the signing kid.
    fn verify_signed(
        &self,
        token: &str,
        typ: JwtType,
        expected_audience: Option<&str>,
        now: Timestamp,
    ) -> Result<(Claims, String), TokenError> {
        let segments = Segments::split(token, self.config.max_token_bytes)?;
        let header =
            parse_object(&decode(segments.header, "header is not canonical base64url")?, Part::Header)?;
        let kid = check_header(&header, typ)?;
        let key = self.keys.get(kid).ok_or_else(|| TokenError::UnknownKey(quote_kid(kid)))?;
        let signature = decode(segments.signature, "signature is not canonical base64url")?;
        if signature.len() != SIGNATURE_LEN {
            return Err(TokenError::Malformed("signature is not 64 bytes"));
        }
        key.verify_sig(segments.signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;

        let payload = decode(segments.payload, "claims are not canonical base64url")?;
        let claims = Claims::take(parse_object(&payload, Part::Claims)?)?;
        self.check_time(&claims, now)?;
        if claims.iss != self.config.issuer {
            return Err(TokenError::Issuer);
        }
        let audience_ok = match expected_audience {
            Some(expected) => !expected.is_empty() && claims.aud == expected,
            None => !claims.aud.is_empty(),
        };
        if !audience_ok {
            return Err(TokenError::Audience);
        }
        Ok((claims, kid.to_owned()))
    }

    /// Integer nanoseconds on both sides, so no boundary is lost to rounding and nothing can overflow.
    fn check_time(&self, claims: &Claims, now: Timestamp) -> Result<(), TokenError> {
        let now = now.as_nanosecond();
        if now >= claims.exp.nanos + self.leeway_nanos {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now < nbf.nanos - self.leeway_nanos) {
            return Err(TokenError::NotYetValid);
        }
        if claims.iat.is_some_and(|iat| iat.nanos > now + self.leeway_nanos) {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(())
    }
}

/// Decodes a token's header and claims WITHOUT verifying anything: not the signature, not the algorithm, not
/// a single claim. For display only (`kubectl agentiam token decode`); never base a decision on the result.
/// It still applies the 16 KiB limit, the segment and base64url checks and the duplicate-key check, so it
/// shows exactly the JSON that [`JwtVerifier::verify`] would judge.
pub fn decode_unverified(token: &str) -> Result<(Value, Value), TokenError> {
    let segments = Segments::split(token, DEFAULT_MAX_TOKEN_BYTES)?;
    let header = parse_object(&decode(segments.header, "header is not canonical base64url")?, Part::Header)?;
    let claims =
        parse_object(&decode(segments.payload, "claims are not canonical base64url")?, Part::Claims)?;
    decode(segments.signature, "signature is not canonical base64url")?;
    Ok((Value::Object(header), Value::Object(claims)))
}

/// The three segments of a compact JWS, still encoded.
pub(super) struct Segments<'a> {
    pub(super) header: &'a str,
    pub(super) payload: &'a str,
    pub(super) signature: &'a str,
    pub(super) signing_input: &'a str,
}

impl<'a> Segments<'a> {
    pub(super) fn split(token: &'a str, limit: usize) -> Result<Self, TokenError> {
        // First, so a huge input costs one length comparison and nothing else.
        if token.len() > limit {
            return Err(TokenError::TooLarge { limit });
        }
        // Refuses padding, whitespace and standard-base64 characters up front, whatever the decoder tolerates.
        // A fold without short-circuit: the compiler vectorizes it, and this scan was a fifth of the parsing.
        let base64url_or_dot = |b: u8| b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'.');
        if !token.bytes().fold(true, |ok, b| ok & base64url_or_dot(b)) {
            return Err(TokenError::Malformed("token has a character outside base64url"));
        }
        let three = "token does not have exactly three non-empty segments";
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed(three))?;
        let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed(three))?;
        if payload.contains('.') || header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(TokenError::Malformed(three));
        }
        Ok(Self { header, payload, signature, signing_input })
    }
}

/// Canonical unpadded base64url only: non-zero trailing bits would give one value many encodings.
pub(super) fn decode(segment: &str, what: &'static str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| TokenError::Malformed(what))
}

pub(super) fn parse_object(bytes: &[u8], part: Part) -> Result<Map<String, Value>, TokenError> {
    let not_json = match part {
        Part::Header => "header is not a JSON object",
        Part::Claims => "claims are not a JSON object",
    };
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictJson { duplicate: &duplicate }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    if duplicate.get() {
        return Err(TokenError::DuplicateKey(part));
    }
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed(not_json)),
    }
}

/// Builds a `serde_json::Value` like serde_json does, but fails on a repeated object key at any depth
/// (after unescaping, so `"s\u0075b"` repeats `"sub"`), and records that it was a duplicate.
#[derive(Clone, Copy)]
struct StrictJson<'a> {
    duplicate: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for StrictJson<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictJson<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value without duplicate object keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                self.duplicate.set(true);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = access.next_value_seed(self)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Checks the header of a token expected to be of `typ` and returns its kid.
fn check_header(header: &Map<String, Value>, typ: JwtType) -> Result<&str, TokenError> {
    for name in header.keys() {
        if !matches!(name.as_str(), "alg" | "typ" | "kid") {
            let known = FORBIDDEN_HEADERS.iter().find(|f| **f == name.as_str());
            return Err(known.map_or(HeaderError::Unknown, |f| HeaderError::Forbidden(f)).into());
        }
    }
    match header.get("alg") {
        None => return Err(HeaderError::MissingAlgorithm.into()),
        Some(Value::String(alg)) if alg == ALGORITHM => {}
        Some(_) => return Err(TokenError::UnsupportedAlgorithm),
    }
    match (typ, header.get("typ")) {
        (JwtType::Svid, None) => {}
        (JwtType::Svid, Some(Value::String(t))) if t == "JWT" || t == "JOSE" => {}
        (JwtType::Svid, Some(_)) => return Err(HeaderError::Type.into()),
        (JwtType::Delegated, Some(Value::String(t))) if t == DELEGATED_TYP => {}
        (JwtType::Delegated, _) => return Err(HeaderError::NotDelegated.into()),
        (JwtType::Access, Some(Value::String(t))) if t == ACCESS_TYP => {}
        (JwtType::Access, _) => return Err(HeaderError::NotAccess.into()),
        // Security Event Tokens are for Shared Signals receivers; nothing here accepts one as a credential.
        (JwtType::SecEvent, _) => return Err(HeaderError::Type.into()),
    }
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid),
        None | Some(Value::String(_)) => Err(HeaderError::MissingKeyId.into()),
        Some(_) => Err(HeaderError::KeyIdType.into()),
    }
}

/// Bounded and later Debug-escaped, so a hostile kid cannot flood or forge log lines.
fn quote_kid(kid: &str) -> String {
    kid.chars().take(MAX_QUOTED_KID).collect()
}

/// A NumericDate claim, both as a timestamp and in nanoseconds for exact comparisons.
#[derive(Clone, Copy)]
struct Instant {
    timestamp: Timestamp,
    nanos: i128,
}

/// The registered claims, typed; `extra` keeps everything else.
struct Claims {
    exp: Instant,
    aud: String,
    iss: String,
    sub: String,
    jti: String,
    nbf: Option<Instant>,
    iat: Option<Instant>,
    extra: Map<String, Value>,
}

impl Claims {
    fn take(mut map: Map<String, Value>) -> Result<Self, TokenError> {
        let exp = required(&mut map, "exp")?;
        let aud = required(&mut map, "aud")?;
        let iss = required(&mut map, "iss")?;
        let sub = required(&mut map, "sub")?;
        let jti = required(&mut map, "jti")?;
        let nbf = map.remove("nbf");
        let iat = map.remove("iat");
        Ok(Self {
            exp: instant(exp, "exp")?,
            aud: audience(aud)?,
            iss: string(iss, "iss")?,
            sub: string(sub, "sub")?,
            jti: string(jti, "jti").and_then(|j| non_empty(j, "jti"))?,
            nbf: nbf.map(|v| instant(v, "nbf")).transpose()?,
            iat: iat.map(|v| instant(v, "iat")).transpose()?,
            extra: map,
        })
    }
}

fn required(map: &mut Map<String, Value>, name: &'static str) -> Result<Value, TokenError> {
    map.remove(name).ok_or(TokenError::MissingClaim(name))
}

fn take_string(map: &mut Map<String, Value>, name: &'static str) -> Result<String, TokenError> {
    string(required(map, name)?, name)
}

fn string(value: Value, name: &'static str) -> Result<String, TokenError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(TokenError::InvalidClaim(name)),
    }
}

fn non_empty(s: String, name: &'static str) -> Result<String, TokenError> {
    if s.is_empty() { Err(TokenError::InvalidClaim(name)) } else { Ok(s) }
}

fn instant(value: Value, name: &'static str) -> Result<Instant, TokenError> {
    let seconds = value.as_i64().ok_or(TokenError::InvalidClaim(name))?;
    let timestamp = Timestamp::from_second(seconds).map_err(|_| TokenError::InvalidClaim(name))?;
    Ok(Instant { timestamp, nanos: i128::from(seconds) * NANOS_PER_SECOND })
}

/// A string, or an array of exactly one string.
fn audience(value: Value) -> Result<String, TokenError> {
    match value {
        Value::String(aud) => Ok(aud),
        Value::Array(items) => {
            let count = items.len();
            let mut items = items.into_iter();
            match (items.next(), items.next()) {
                (Some(Value::String(aud)), None) => Ok(aud),
                (Some(_), None) => Err(TokenError::InvalidClaim("aud")),
                _ => Err(TokenError::AudienceCount(count)),
            }
        }
        _ => Err(TokenError::InvalidClaim("aud")),
    }
}

fn prepare_keys(keys: &JwkSet) -> Result<HashMap<String, ParsedPublicKey>, VerifierError> {
    let mut prepared = HashMap::new();
    for jwk in keys.keys.iter().filter(|jwk| for_verification(&jwk.common)) {
        let kid =
            jwk.common.key_id.as_deref().filter(|kid| !kid.is_empty()).ok_or(VerifierError::MissingKid)?;
        let key = p256_key(kid, jwk)?;
        if prepared.insert(kid.to_owned(), key).is_some() {
            return Err(VerifierError::DuplicateKid { kid: kid.to_owned() });
        }
    }
    Ok(prepared)
}

fn for_verification(common: &CommonParameters) -> bool {
    let use_ok = match &common.public_key_use {
        None | Some(PublicKeyUse::Signature) => true,
        Some(PublicKeyUse::Other(other)) => other == USE_JWT_SVID,
        Some(PublicKeyUse::Encryption) => false,
    };
    let ops_ok = common.key_operations.as_ref().is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    use_ok && ops_ok
}

fn p256_key(kid: &str, jwk: &Jwk) -> Result<ParsedPublicKey, VerifierError> {
    let unsupported = |reason| VerifierError::UnsupportedKey { kid: kid.to_owned(), reason };
    let invalid = || VerifierError::InvalidKey { kid: kid.to_owned() };
    if jwk.common.key_algorithm.is_some_and(|alg| alg != KeyAlgorithm::ES256) {
        return Err(unsupported("alg is not ES256"));
    }
    let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
        return Err(unsupported("not an EC key"));
    };
    if ec.curve != EllipticCurve::P256 {
        return Err(unsupported("curve is not P-256"));
    }
    let x = URL_SAFE_NO_PAD.decode(&ec.x).map_err(|_| invalid())?;
    let y = URL_SAFE_NO_PAD.decode(&ec.y).map_err(|_| invalid())?;
    if x.len() != COORDINATE_LEN || y.len() != COORDINATE_LEN {
        return Err(invalid());
    }
    // SEC1 uncompressed point; parsing it now checks it is on the curve, once, instead of at every verification.
    let mut point = Vec::with_capacity(1 + 2 * COORDINATE_LEN);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).map_err(|_| invalid())
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
