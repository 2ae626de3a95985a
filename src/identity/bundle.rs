//! The public documents the issuer serves, built purely (no HTTP): the JWKS at `/keys`, the SPIFFE trust
//! bundle, and the OIDC discovery document.
//!
//! The SPIFFE bundle follows the SPIFFE Trust Domain and Bundle specification (section 4): a JWK Set with
//! `spiffe_sequence` and `spiffe_refresh_hint`, where JWT-SVID keys have `"use": "jwt-svid"` and a `kid`
//! (JWT-SVID spec section 6), and each X.509 CA certificate is its own entry with `"use": "x509-svid"`,
//! exactly one certificate in `x5c`, its public key parameters, and no `kid` (X509-SVID spec section 6.1).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION,
};

use crate::identity::keys::{JwkUse, SigningKey};

/// The only JWS algorithm the issuer signs with.
pub const SIGNING_ALG: &str = "ES256";
/// The path of the JWKS relative to the issuer URL.
pub const JWKS_PATH: &str = "/keys";

/// Why a bundle could not be built. Only public certificates are involved, but messages still name the
/// certificate by position rather than echo its bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// A CA certificate is not DER X.509, or has trailing bytes.
    #[error("CA certificate {0} is not a DER X.509 certificate")]
    Certificate(usize),
    /// A CA certificate's key type or curve cannot be expressed as a JWK here.
    #[error(
        "CA certificate {0} has a public key type that cannot be published (want EC P-256/384/521 or RSA)"
    )]
    UnsupportedKey(usize),
}

impl BundleError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Certificate(_) => "ca_certificate",
            Self::UnsupportedKey(_) => "ca_key_type",
        }
    }
}

/// The JWKS served at `/keys` for OIDC relying parties: every published key with `"use": "sig"` and
/// `"alg": "ES256"`.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({ "keys": jwk_list(keys, JwkUse::Signature) })
}

/// The SPIFFE trust bundle: JWT-SVID keys, then one `x509-svid` entry per CA certificate (DER), with the
/// refresh hint in whole seconds and the sequence number, which the caller must increase whenever the
/// contents change (spec section 4.1.1).
pub fn spiffe_bundle<'a>(
    jwt_keys: impl IntoIterator<Item = &'a SigningKey>,
    x509_ca_der: &[Vec<u8>],
    refresh_hint: Duration,
    sequence: u64,
) -> Result<Value, BundleError> {
    let mut keys = jwk_list(jwt_keys, JwkUse::JwtSvid);
    for (i, der) in x509_ca_der.iter().enumerate() {
        keys.push(x509_svid_jwk(i, der)?);
    }
    Ok(json!({
        "keys": keys,
        "spiffe_refresh_hint": refresh_hint.as_secs(),
        "spiffe_sequence": sequence,
    }))
}

/// The OIDC discovery document (`/.well-known/openid-configuration`) for `issuer_url`, which must equal the
/// `iss` claim character for character. Only the fields relying parties such as cloud workload identity
/// federation read: there is no authorization endpoint, because nobody logs in here.
pub fn openid_configuration(issuer_url: &str) -> Value {
    json!({
        "issuer": issuer_url,
        "jwks_uri": format!("{}{JWKS_PATH}", issuer_url.trim_end_matches('/')),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [SIGNING_ALG],
    })
}

fn jwk_list<'a>(keys: impl IntoIterator<Item = &'a SigningKey>, key_use: JwkUse) -> Vec<Value> {
    // A JWK of plain strings always serializes; a failure would drop the key rather than panic.
    keys.into_iter().filter_map(|k| serde_json::to_value(k.public_jwk_for(key_use)).ok()).collect()
}

/// One `x509-svid` entry: the key parameters of the certificate's public key plus the certificate itself.
/// RFC 7517 requires the key parameters for `kty`, and common consumers (go-jose, used by go-spiffe) check
/// that they match the certificate in `x5c`.
fn x509_svid_jwk(index: usize, der: &[u8]) -> Result<Value, BundleError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| BundleError::Certificate(index))?;
    if !rest.is_empty() {
        return Err(BundleError::Certificate(index));
    }
    let spki = cert.public_key();
    let unsupported = || BundleError::UnsupportedKey(index);
    let mut jwk = Map::new();
    jwk.insert("use".into(), "x509-svid".into());
    if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve =
            spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).ok_or_else(unsupported)?;
        let (crv, len) = if curve == OID_EC_P256 {
            ("P-256", 32)
        } else if curve == OID_NIST_EC_P384 {
            ("P-384", 48)
        } else if curve == OID_NIST_EC_P521 {
            ("P-521", 66)
        } else {
            return Err(unsupported());
        };
        // Only the uncompressed form (0x04 || X || Y) maps onto JWK coordinates.
        let point = spki.subject_public_key.data.as_ref();
        let Some((&0x04, xy)) = point.split_first() else { return Err(unsupported()) };
        let Some((x, y)) = xy.split_at_checked(len).filter(|(_, y)| y.len() == len) else {
            return Err(unsupported());
        };
        jwk.insert("kty".into(), "EC".into());
        jwk.insert("crv".into(), crv.into());
        jwk.insert("x".into(), URL_SAFE_NO_PAD.encode(x).into());
        jwk.insert("y".into(), URL_SAFE_NO_PAD.encode(y).into());
    } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(unsupported());
        };
        jwk.insert("kty".into(), "RSA".into());
        // JWK integers are unsigned big-endian without the DER sign byte (RFC 7518 section 6.3.1).
        jwk.insert("n".into(), URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.modulus)).into());
        jwk.insert("e".into(), URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.exponent)).into());
    } else {
        return Err(unsupported());
    }
    // x5c is standard base64 (with padding), not base64url (RFC 7517 section 4.7).
    jwk.insert("x5c".into(), json!([STANDARD.encode(der)]));
    Ok(Value::Object(jwk))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    fn keys(n: usize) -> Vec<SigningKey> {
        (0..n).map(|_| SigningKey::generate(Timestamp::now()).unwrap()).collect()
    }

    /// A self-signed P-256 CA certificate and its uncompressed public point.
    fn ca() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.der().to_vec(), key.public_key_raw().to_vec())
    }

    #[test]
    fn jwks_lists_every_key_for_signature_use() {
        let ks = keys(3);
        let doc = jwks(&ks);
        let entries = doc["keys"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        for (entry, key) in entries.iter().zip(&ks) {
            assert_eq!(
                entry,
                &json!({"kty": "EC", "crv": "P-256", "x": key.x(), "y": key.y(), "kid": key.kid(),
                    "use": "sig", "alg": "ES256"})
            );
        }
        assert_eq!(doc.as_object().unwrap().len(), 1, "only `keys` at the top level");
    }

    #[test]
    fn jwks_keys_parse_as_a_jsonwebtoken_jwk_set() {
        let ks = keys(2);
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks(&ks)).unwrap();
        assert_eq!(set.find(ks[1].kid()).map(|j| j.is_supported()), Some(true));
    }

    #[test]
    fn spiffe_bundle_has_the_spec_shape() {
        let ks = keys(2);
        let (der, point) = ca();
        let doc = spiffe_bundle(&ks, std::slice::from_ref(&der), Duration::from_secs(300), 7).unwrap();
        let mut top: Vec<&String> = doc.as_object().unwrap().keys().collect();
        top.sort_unstable();
        assert_eq!(top, ["keys", "spiffe_refresh_hint", "spiffe_sequence"]);
        assert_eq!(doc["spiffe_refresh_hint"], 300);
        assert_eq!(doc["spiffe_sequence"], 7);
        let entries = doc["keys"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        for (entry, key) in entries.iter().zip(&ks) {
            assert_eq!(
                entry,
                &json!({"kty": "EC", "crv": "P-256", "x": key.x(), "y": key.y(), "kid": key.kid(),
                    "use": "jwt-svid"})
            );
        }
        let (x, y) = point[1..].split_at(32);
        assert_eq!(
            entries[2],
            json!({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y), "x5c": [STANDARD.encode(&der)]})
        );
    }

    #[test]
    fn spiffe_bundle_with_no_ca_has_only_jwt_keys() {
        let ks = keys(1);
        let doc = spiffe_bundle(&ks, &[], Duration::from_millis(90_900), 1).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 1);
        assert_eq!(doc["spiffe_refresh_hint"], 90);
    }

    #[test]
    fn bad_ca_certificates_are_reported_by_position() {
        let (der, _) = ca();
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(
            spiffe_bundle([], &[der.clone(), b"junk".to_vec()], Duration::ZERO, 1),
            Err(BundleError::Certificate(1))
        );
        assert_eq!(spiffe_bundle([], &[trailing], Duration::ZERO, 1), Err(BundleError::Certificate(0)));
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_cert = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&ed).unwrap();
        assert_eq!(
            spiffe_bundle([], &[ed_cert.der().to_vec()], Duration::ZERO, 1),
            Err(BundleError::UnsupportedKey(0))
        );
    }

    #[test]
    fn openid_configuration_fields() {
        let doc = openid_configuration("https://issuer.example.com/agentiam");
        assert_eq!(
            doc,
            json!({
                "issuer": "https://issuer.example.com/agentiam",
                "jwks_uri": "https://issuer.example.com/agentiam/keys",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            })
        );
        assert_eq!(openid_configuration("https://i.example/")["jwks_uri"], "https://i.example/keys");
        assert_eq!(openid_configuration("https://i.example/")["issuer"], "https://i.example/");
    }

    #[test]
    fn rsa_integers_lose_their_sign_byte() {
        assert_eq!(strip_leading_zeros(&[0, 0x80, 1]), &[0x80, 1]);
        assert_eq!(strip_leading_zeros(&[1, 0, 1]), &[1, 0, 1]);
        assert_eq!(strip_leading_zeros(&[0, 0]), &[] as &[u8]);
    }
}
