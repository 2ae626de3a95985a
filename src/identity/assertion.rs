//! Client assertions an agent signs itself with its X.509-SVID key (`private_key_jwt`, RFC 7523, with
//! the certificate in `x5c`): how an agent authenticates to the token endpoint as often as it needs,
//! each assertion fresh, short-lived and single use. Pure.
//!
//! Unlike our own tokens, such an assertion names its key (`x5c`). That is safe here because the key is
//! believed only through the certificate, and the certificate only when this operator's CA signed it
//! ([`CertificateAuthority::check_presented`]) and the operator still stands by its serial (the caller
//! checks the ledger). Checks, in order, each failing closed:
//! 1. at most [`DEFAULT_MAX_TOKEN_BYTES`], three canonical base64url segments;
//! 2. header: a JSON object without duplicate keys, only `alg`, `typ`, `kid` and `x5c`; `alg` "ES256";
//!    `typ` absent or "JWT"; `x5c` an array of 1 to 4 standard-base64 DER certificates;
//! 3. the chain: see [`CertificateAuthority::check_presented`];
//! 4. the signature (64 bytes, r||s) over `header.payload` with the leaf's key;
//! 5. claims: `iss` = `sub` = the certificate's SPIFFE ID (an agent of the trust domain); `aud` the
//!    expected audience (a string or a one-element array); `jti` a non-empty string of at most 256
//!    bytes; `exp` an integer in the future and at most [`MAX_ASSERTION_LIFETIME`] ahead (with leeway);
//!    `iat` and `nbf`, when present, not in the future beyond the leeway.

use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use serde_json::Value;

use super::verify::{DEFAULT_MAX_TOKEN_BYTES, MAX_LEEWAY, Part, Segments, decode, parse_object};
use super::x509::CertificateAuthority;
use super::{SpiffeId, TrustDomain};

/// The longest an assertion may live: it authenticates one request, made right away.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Most certificates in `x5c`.
const MAX_CHAIN: usize = 4;
/// Longest `jti`.
const MAX_JTI: usize = 256;

/// Why an assertion was refused. Messages never quote the assertion or anything it carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// The JWS is malformed.
    #[error("the assertion is malformed: {0}")]
    Malformed(&'static str),
    /// The header is not what is accepted.
    #[error("the assertion's header is not accepted: {0}")]
    Header(&'static str),
    /// The certificate chain does not prove an identity.
    #[error("the assertion's certificate is not accepted: {0}")]
    Certificate(&'static str),
    /// The signature does not verify with the certificate's key.
    #[error("the assertion's signature does not verify with its certificate")]
    Signature,
    /// A claim is missing or wrong.
    #[error("the assertion's claim {0} is missing or wrong")]
    Claim(&'static str),
    /// Expired, too long-lived, or not yet valid.
    #[error("the assertion is {0}")]
    Time(&'static str),
}

/// An assertion that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The agent (the certificate's SPIFFE ID, equal to `iss` and `sub`).
    pub spiffe_id: SpiffeId,
    /// The certificate's serial (hex).
    pub serial_hex: String,
    /// `jti`.
    pub jti: String,
    /// `exp`.
    pub expires_at: Timestamp,
}

/// Verifies `token` for `audience` at `now` against `ca` (see the module docs).
pub fn verify(
    ca: &CertificateAuthority,
    trust_domain: &TrustDomain,
    token: &str,
    audience: &str,
    now: Timestamp,
) -> Result<VerifiedAssertion, AssertionError> {
    let malformed = |_| AssertionError::Malformed("not a compact JWS of canonical base64url segments");
    let segments = Segments::split(token, DEFAULT_MAX_TOKEN_BYTES).map_err(malformed)?;
    let header =
        decode(segments.header, "header").and_then(|b| parse_object(&b, Part::Header)).map_err(malformed)?;
    if header.keys().any(|k| !matches!(k.as_str(), "alg" | "typ" | "kid" | "x5c")) {
        return Err(AssertionError::Header("only alg, typ, kid and x5c are accepted"));
    }
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(AssertionError::Header("alg must be ES256"));
    }
    if header.get("typ").is_some_and(|t| t.as_str() != Some("JWT")) {
        return Err(AssertionError::Header("typ must be JWT when present"));
    }
    let chain: Vec<Vec<u8>> = match header.get("x5c") {
        Some(Value::Array(certs)) if (1..=MAX_CHAIN).contains(&certs.len()) => certs
            .iter()
            .map(|c| c.as_str().and_then(|c| STANDARD.decode(c).ok()))
            .collect::<Option<_>>()
            .ok_or(AssertionError::Header("x5c must hold standard base64 DER certificates"))?,
        _ => return Err(AssertionError::Header("x5c must be an array of 1 to 4 certificates")),
    };
    let presented = ca.check_presented(&chain, now).map_err(AssertionError::Certificate)?;
    let signature = decode(segments.signature, "signature").map_err(malformed)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &presented.public_point)
        .verify(segments.signing_input.as_bytes(), &signature)
        .map_err(|_| AssertionError::Signature)?;

    let claims =
        decode(segments.payload, "claims").and_then(|b| parse_object(&b, Part::Claims)).map_err(malformed)?;
    let id = presented.spiffe_id.to_string();
    presented
        .spiffe_id
        .agent_in(trust_domain)
        .map_err(|_| AssertionError::Certificate("it does not name an agent"))?;
    for name in ["iss", "sub"] {
        if claims.get(name).and_then(Value::as_str) != Some(id.as_str()) {
            return Err(AssertionError::Claim(name));
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.len() == 1 && a.first().and_then(Value::as_str) == Some(audience),
        _ => false,
    };
    if !aud_ok || audience.is_empty() {
        return Err(AssertionError::Claim("aud"));
    }
    let jti = match claims.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI => j.clone(),
        _ => return Err(AssertionError::Claim("jti")),
    };
    let second = |name: &'static str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or(AssertionError::Claim(name)),
    };
    let exp = second("exp")?.ok_or(AssertionError::Claim("exp"))?;
    let leeway = i64::try_from(MAX_LEEWAY.as_secs()).unwrap_or(0);
    let longest = i64::try_from(MAX_ASSERTION_LIFETIME.as_secs()).unwrap_or(0);
    let at = now.as_second();
    if at >= exp.saturating_add(leeway) {
        return Err(AssertionError::Time("expired"));
    }
    if exp > at.saturating_add(longest).saturating_add(leeway) {
        return Err(AssertionError::Time("valid for longer than 5 minutes"));
    }
    for name in ["iat", "nbf"] {
        if second(name)?.is_some_and(|t| t > at.saturating_add(leeway)) {
            return Err(AssertionError::Time("not valid yet"));
        }
    }
    let expires_at = Timestamp::from_second(exp).map_err(|_| AssertionError::Claim("exp"))?;
    Ok(VerifiedAssertion {
        spiffe_id: presented.spiffe_id,
        serial_hex: presented.serial_hex,
        jti,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jiff::SignedDuration;
    use serde_json::json;

    use super::*;

    const AUD: &str = "https://issuer/v1/oauth/token";

    struct Fx {
        ca: CertificateAuthority,
        td: TrustDomain,
        id: SpiffeId,
        chain: Vec<String>,
        key: EcdsaKeyPair,
        now: Timestamp,
    }

    fn fx() -> Fx {
        let td = TrustDomain::parse("cluster.local").unwrap();
        let now = Timestamp::now();
        let ca = CertificateAuthority::generate(&td, SignedDuration::from_hours(24), now).unwrap();
        let id = SpiffeId::for_agent(&td, "ns", "bot").unwrap();
        let svid = ca.issue_svid(&id, SignedDuration::from_mins(10), now).unwrap();
        let chain = crate::identity::x509::parse_cert_pems(&svid.chain_pem)
            .unwrap()
            .iter()
            .map(|d| STANDARD.encode(d))
            .collect();
        let key = pkcs8_key(&svid.key_pem);
        Fx { ca, td, id, chain, key, now }
    }

    fn pkcs8_key(pem: &str) -> EcdsaKeyPair {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &STANDARD.decode(b64).unwrap()).unwrap()
    }

    fn sign(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    impl Fx {
        fn header(&self) -> Value {
            json!({"alg": "ES256", "typ": "JWT", "x5c": self.chain})
        }
        fn claims(&self) -> Value {
            let t = self.now.as_second();
            json!({"iss": self.id.to_string(), "sub": self.id.to_string(), "aud": AUD, "jti": "j-1",
                   "iat": t, "exp": t + 60})
        }
        fn check(&self, token: &str) -> Result<VerifiedAssertion, AssertionError> {
            verify(&self.ca, &self.td, token, AUD, self.now)
        }
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    #[test]
    fn an_assertion_signed_with_the_svid_key_proves_the_agent() {
        let f = fx();
        let v = f.check(&sign(&f.key, &f.header(), &f.claims())).unwrap();
        assert_eq!(v.spiffe_id, f.id);
        assert_eq!(v.jti, "j-1");
        assert!(!v.serial_hex.is_empty());
        // The leaf alone (no intermediates) is enough; an array audience of one too.
        let leaf_only = json!({"alg": "ES256", "x5c": [f.chain[0]]});
        assert!(f.check(&sign(&f.key, &leaf_only, &with(f.claims(), "aud", json!([AUD])))).is_ok());
    }

    #[test]
    fn forged_or_stretched_assertions_are_refused() {
        let f = fx();
        let t = f.now.as_second();
        let other_key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        assert_eq!(f.check(&sign(&other_key, &f.header(), &f.claims())), Err(AssertionError::Signature));
        // A certificate from another CA with its own key.
        let foreign = CertificateAuthority::generate(&f.td, SignedDuration::from_hours(24), f.now).unwrap();
        let forged = foreign.issue_svid(&f.id, SignedDuration::from_mins(10), f.now).unwrap();
        let forged_chain: Vec<String> = crate::identity::x509::parse_cert_pems(&forged.chain_pem)
            .unwrap()
            .iter()
            .map(|d| STANDARD.encode(d))
            .collect();
        let forged_header = json!({"alg": "ES256", "x5c": forged_chain});
        assert!(matches!(
            f.check(&sign(&pkcs8_key(&forged.key_pem), &forged_header, &f.claims())),
            Err(AssertionError::Certificate(_))
        ));
        let other = SpiffeId::for_agent(&f.td, "ns", "other").unwrap().to_string();
        for (claims, want) in [
            (with(f.claims(), "sub", json!(other)), AssertionError::Claim("sub")),
            (with(f.claims(), "iss", json!(other)), AssertionError::Claim("iss")),
            (with(f.claims(), "aud", json!("https://elsewhere")), AssertionError::Claim("aud")),
            (with(f.claims(), "aud", json!([AUD, "x"])), AssertionError::Claim("aud")),
            (with(f.claims(), "jti", json!("")), AssertionError::Claim("jti")),
            (with(f.claims(), "exp", json!(t - 60)), AssertionError::Time("expired")),
            (
                with(f.claims(), "exp", json!(t + 3600)),
                AssertionError::Time("valid for longer than 5 minutes"),
            ),
            (with(f.claims(), "exp", json!("soon")), AssertionError::Claim("exp")),
            (with(f.claims(), "iat", json!(t + 600)), AssertionError::Time("not valid yet")),
        ] {
            assert_eq!(f.check(&sign(&f.key, &f.header(), &claims)), Err(want), "{claims}");
        }
        for header in [
            with(f.header(), "alg", json!("ES384")),
            with(f.header(), "alg", json!("none")),
            with(f.header(), "typ", json!("at+jwt")),
            with(f.header(), "jku", json!("https://evil")),
            with(f.header(), "x5c", json!([])),
            with(f.header(), "x5c", json!(["not base64!"])),
            with(f.header(), "x5c", json!([f.chain[0], f.chain[0], f.chain[0], f.chain[0], f.chain[0]])),
            json!({"alg": "ES256"}),
        ] {
            assert!(f.check(&sign(&f.key, &header, &f.claims())).is_err(), "{header}");
        }
        // Expired certificate.
        let later = f.now.checked_add(SignedDuration::from_mins(11)).unwrap();
        let late =
            with(with(f.claims(), "iat", json!(later.as_second())), "exp", json!(later.as_second() + 60));
        assert_eq!(
            verify(&f.ca, &f.td, &sign(&f.key, &f.header(), &late), AUD, later),
            Err(AssertionError::Certificate("the certificate is not valid now"))
        );
        assert!(f.check("a.b").is_err() && f.check(&"a".repeat(20_000)).is_err());
    }
}
