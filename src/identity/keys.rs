//! The operator's JWT-SVID signing keys: ES256 (P-256) key pairs, the next / current / previous key set and its
//! rotation, and the document the set is persisted in (one Secret in the operator's own namespace).
//!
//! Rotation is designed so that no valid token ever fails to verify because of a scheduled rotation: the
//! `next` key is published one full rotation period before it signs anything, and a retired key stays
//! published until every token it signed has expired. Emergency rotation trades that away on purpose: the
//! withdrawn keys leave the published set at once, so every token they signed stops verifying.

use std::fmt;
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters, EllipticCurveKeyType,
    Jwk, KeyAlgorithm, PublicKeyUse,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

mod rotation;
mod store;

pub use rotation::{KeySet, RetiredKey, Rotation, RotationKind, RotationPolicy};
pub use store::SECRET_KEY;

/// Length in bytes of a P-256 field element, and so of each public key coordinate and of `r` and `s`.
pub const P256_COORDINATE_LEN: usize = 32;
/// Length in bytes of a fixed-size ES256 signature (`r || s`, RFC 7518 section 3.4).
pub const ES256_SIGNATURE_LEN: usize = 2 * P256_COORDINATE_LEN;

/// Why a key could not be generated, loaded, used or persisted. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The crypto library could not generate a key pair.
    #[error("failed to generate signing key")]
    Generate,
    /// The bytes are not a PKCS#8 P-256 private key.
    #[error("failed to parse signing key {kid}: not a PKCS#8 P-256 private key")]
    Pkcs8 {
        /// The key ID the document claimed, or "(new)" when loading bytes with no stored ID.
        kid: String,
    },
    /// The crypto library failed to sign.
    #[error("failed to sign token")]
    Sign,
    /// The key set could not be serialized.
    #[error("failed to encode key set: {0}")]
    Encode(String),
    /// The Secret has no key set entry.
    #[error("key secret has no {0:?} entry")]
    MissingEntry(&'static str),
    /// The key set entry is not a valid document.
    #[error("key secret is malformed: {0}")]
    Malformed(String),
    /// The document was written by a format this version does not know.
    #[error("key set format version {0} is not supported")]
    Version(u32),
    /// The current or next role does not have exactly one key.
    #[error("key set must have exactly one {role} key, found {found}")]
    RoleCount {
        /// The role that is missing or repeated.
        role: KeyRole,
        /// How many keys had it.
        found: usize,
    },
    /// A stored key ID is not the thumbprint of the stored key: the document was edited or corrupted.
    #[error("stored key ID {stored} does not match the key's thumbprint {computed}")]
    KidMismatch {
        /// The ID the document claimed.
        stored: String,
        /// The RFC 7638 thumbprint of the key it holds.
        computed: String,
    },
    /// The same key appears twice.
    #[error("key {0} appears more than once in the key set")]
    DuplicateKid(String),
    /// A timestamp that the key's role requires is absent.
    #[error("{role} key {kid} has no {field}")]
    MissingTimestamp {
        /// The key.
        kid: String,
        /// Its role.
        role: KeyRole,
        /// The missing field's name in the document.
        field: &'static str,
    },
    /// A rotation policy value is out of range.
    #[error("invalid rotation policy: {0}")]
    Policy(&'static str),
}

impl KeyError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Pkcs8 { .. } => "pkcs8",
            Self::Sign => "sign",
            Self::Encode(_) => "encode",
            Self::MissingEntry(_)
            | Self::Malformed(_)
            | Self::Version(_)
            | Self::RoleCount { .. }
            | Self::KidMismatch { .. }
            | Self::DuplicateKid(_)
            | Self::MissingTimestamp { .. } => "corrupt_secret",
            Self::Policy(_) => "policy",
        }
    }
}

/// Where a key stands in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Published, not yet signing: verifiers learn it a full rotation period before it signs.
    Next,
    /// Published and signing every new token.
    Current,
    /// Published, no longer signing, kept until every token it signed has expired.
    Previous,
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Previous => "previous",
        })
    }
}

/// The `use` a published JWK carries, which decides who will accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwkUse {
    /// `"use": "sig"` with `"alg": "ES256"`: plain JWKS for OIDC relying parties (the `/keys` document).
    Signature,
    /// `"use": "jwt-svid"` without `alg`: an entry of a SPIFFE bundle (JWT-SVID spec section 6; the bundle
    /// spec asks implementers not to add parameters neither spec defines).
    JwtSvid,
}

/// One ES256 signing key. The parsed key pair is kept so signing never re-parses PKCS#8; the PKCS#8 bytes
/// are kept (zeroized on drop) only to persist the key. `Debug` never prints key material.
pub struct SigningKey {
    kid: String,
    key_pair: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    x: String,
    y: String,
    /// The base64url header for each [`JwtType`], by [`JwtType::index`], computed once.
    headers_b64: [String; JwtType::ALL.len()],
    created_at: Timestamp,
    // aws-lc-rs ignores the RNG argument (AWS-LC draws its own nonces), so one instance per key costs nothing
    // and keeps the signing call free of per-token setup.
    rng: SystemRandom,
}

impl SigningKey {
    /// Generates a fresh P-256 key pair created at `now`.
    pub fn generate(now: Timestamp) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref(), now).map_err(|_| KeyError::Generate)
    }

    /// Loads a key from an unencrypted PKCS#8 v1 or v2 document holding a P-256 private key.
    pub fn from_pkcs8(der: &[u8], created_at: Timestamp) -> Result<Self, KeyError> {
        let invalid = || KeyError::Pkcs8 { kid: "(new)".to_owned() };
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|_| invalid())?;
        // An uncompressed SEC1 point: 0x04 || X || Y.
        let point = key_pair.public_key().as_ref();
        let Some((&0x04, xy)) = point.split_first() else { return Err(invalid()) };
        let Some((x, y)) = xy.split_at_checked(P256_COORDINATE_LEN) else { return Err(invalid()) };
        if y.len() != P256_COORDINATE_LEN {
            return Err(invalid());
        }
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let kid = ec_thumbprint(&x, &y);
        let headers_b64 = JwtType::ALL.map(|t| header_b64(&kid, t));
        Ok(Self {
            kid,
            key_pair,
            pkcs8: Zeroizing::new(der.to_vec()),
            x,
            y,
            headers_b64,
            created_at,
            rng: SystemRandom::new(),
        })
    }

    /// The key ID: the RFC 7638 JWK thumbprint (base64url SHA-256), so any party can recompute it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When the key was generated.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// The public key's x coordinate, base64url without padding (32 bytes decoded).
    pub fn x(&self) -> &str {
        &self.x
    }

    /// The public key's y coordinate, base64url without padding (32 bytes decoded).
    pub fn y(&self) -> &str {
        &self.y
    }

    /// The base64url JWT header `{"alg":"ES256","typ":"JWT","kid":...}`, computed once per key because it
    /// is the same for every token the key signs.
    pub fn jwt_header_b64(&self) -> &str {
        self.header_b64_for(JwtType::Svid)
    }

    /// The base64url JWT header for tokens of `typ`, computed once per key.
    pub fn header_b64_for(&self, typ: JwtType) -> &str {
        self.headers_b64.get(typ.index()).map_or("", String::as_str)
    }

    /// The public key as a JWK with `"use": "sig"` and `"alg": "ES256"`, for the `/keys` JWKS.
    pub fn public_jwk(&self) -> Jwk {
        self.public_jwk_for(JwkUse::Signature)
    }

    /// The public key as a JWK with the given `use`.
    pub fn public_jwk_for(&self, key_use: JwkUse) -> Jwk {
        let (public_key_use, key_algorithm) = match key_use {
            JwkUse::Signature => (PublicKeyUse::Signature, Some(KeyAlgorithm::ES256)),
            JwkUse::JwtSvid => (PublicKeyUse::Other("jwt-svid".to_owned()), None),
        };
        Jwk {
            common: CommonParameters {
                public_key_use: Some(public_key_use),
                key_algorithm,
                key_id: Some(self.kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: self.x.clone(),
                y: self.y.clone(),
            }),
        }
    }

    /// Signs `msg` with ECDSA P-256 / SHA-256 and returns the fixed-size `r || s` form JWS requires.
    pub fn sign(&self, msg: &[u8]) -> Result<[u8; ES256_SIGNATURE_LEN], KeyError> {
        let sig = self.key_pair.sign(&self.rng, msg).map_err(|_| KeyError::Sign)?;
        <[u8; ES256_SIGNATURE_LEN]>::try_from(sig.as_ref()).map_err(|_| KeyError::Sign)
    }

    /// The PKCS#8 bytes, for persisting only; kept private to the module so key material has one exit.
    fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The RFC 7638 thumbprint of a P-256 public key given as base64url coordinates: base64url(SHA-256) of the
/// members crv, kty, x, y in lexicographic order, with no whitespace.
pub fn ec_thumbprint(x: &str, y: &str) -> String {
    // x and y are base64url, so they need no JSON escaping.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// Adds a duration, saturating at the largest timestamp so absurd policy values cannot fail a rotation.
fn add(ts: Timestamp, d: Duration) -> Timestamp {
    ts.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// The kinds of JWT the operator signs, told apart by the header's `typ` (RFC 8725 §3.11 explicit typing):
/// a verifier expecting one refuses the other, so a delegated token is never taken for an identity token
/// or the reverse, even by a relying party that only checks signatures and `typ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtType {
    /// An identity JWT-SVID: `typ` "JWT", as the SPIFFE JWT-SVID specification has it.
    Svid,
    /// A delegated (on-behalf-of) token: `typ` [`DELEGATED_TYP`].
    Delegated,
    /// A task-scoped access token from the token endpoint: `typ` [`ACCESS_TYP`] (RFC 9068).
    Access,
    /// A Security Event Token for Shared Signals receivers: `typ` [`SECEVENT_TYP`] (RFC 8417 §2.3).
    SecEvent,
}

/// The `typ` of delegated tokens.
pub const DELEGATED_TYP: &str = "agentiam-delegation+jwt";
/// The `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TYP: &str = "at+jwt";
/// The `typ` of Security Event Tokens (RFC 8417 §2.3).
pub const SECEVENT_TYP: &str = "secevent+jwt";

impl JwtType {
    /// Every type.
    pub const ALL: [Self; 4] = [Self::Svid, Self::Delegated, Self::Access, Self::SecEvent];

    /// The header's `typ` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Svid => "JWT",
            Self::Delegated => DELEGATED_TYP,
            Self::Access => ACCESS_TYP,
            Self::SecEvent => SECEVENT_TYP,
        }
    }

    /// Its position in [`Self::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Self::Svid => 0,
            Self::Delegated => 1,
            Self::Access => 2,
            Self::SecEvent => 3,
        }
    }
}

/// The base64url JWT header for a key ID and token type; computed once per key by [`SigningKey`] (here, not
/// in `jwt`, so keys never import the module that signs with them).
pub(crate) fn header_b64(kid: &str, typ: JwtType) -> String {
    // Field order is fixed by the struct, so every token from one key has byte-identical headers.
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'static str,
        typ: &'static str,
        kid: &'a str,
    }
    // Serializing three string fields cannot fail; fall back to an empty header rather than panic, which
    // every verifier rejects.
    let json = serde_json::to_vec(&Header { alg: "ES256", typ: typ.as_str(), kid }).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::jwk::ThumbprintHash;

    fn now() -> Timestamp {
        Timestamp::from_second(1_750_000_000).unwrap()
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_computed_independently() {
        let key = SigningKey::generate(now()).unwrap();
        let independent = key.public_jwk().thumbprint(ThumbprintHash::SHA256).unwrap();
        assert_eq!(key.kid(), independent);
        assert_eq!(key.kid().len(), 43, "base64url of 32 bytes, no padding");
    }

    #[test]
    fn thumbprint_method_matches_the_rfc7638_worked_example() {
        // RFC 7638 section 3.1 gives an RSA key; the method (sorted required members, no whitespace,
        // SHA-256, base64url) is the same one ec_thumbprint applies, so check jsonwebtoken's implementation
        // of it against the RFC's published value, then use that implementation as our EC oracle above.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let key = SigningKey::generate(now()).unwrap();
        let again = SigningKey::from_pkcs8(key.pkcs8(), now()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!((key.x(), key.y()), (again.x(), again.y()));
    }

    #[test]
    fn garbage_and_wrong_curve_are_rejected() {
        assert!(matches!(SigningKey::from_pkcs8(b"not a key", now()), Err(KeyError::Pkcs8 { .. })));
        let p384 = EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        assert!(matches!(SigningKey::from_pkcs8(p384.as_ref(), now()), Err(KeyError::Pkcs8 { .. })));
    }

    #[test]
    fn signature_verifies_with_the_published_point() {
        let key = SigningKey::generate(now()).unwrap();
        let sig = key.sign(b"message").unwrap();
        let mut point = vec![0x04];
        point.extend(URL_SAFE_NO_PAD.decode(key.x()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(key.y()).unwrap());
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        );
        public.verify(b"message", &sig).unwrap();
        assert!(public.verify(b"other", &sig).is_err());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::generate(now()).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()));
        let der_b64 = STANDARD.encode(key.pkcs8());
        assert!(!shown.contains(&der_b64) && !shown.contains("pkcs8"), "{shown}");
    }

    #[test]
    fn jwk_uses() {
        let key = SigningKey::generate(now()).unwrap();
        let sig = serde_json::to_value(key.public_jwk()).unwrap();
        assert_eq!(
            sig,
            serde_json::json!({"use": "sig", "alg": "ES256", "kid": key.kid(), "kty": "EC", "crv": "P-256",
                "x": key.x(), "y": key.y()})
        );
        let svid = serde_json::to_value(key.public_jwk_for(JwkUse::JwtSvid)).unwrap();
        assert_eq!(
            svid,
            serde_json::json!({"use": "jwt-svid", "kid": key.kid(), "kty": "EC", "crv": "P-256",
                "x": key.x(), "y": key.y()})
        );
    }
}
