//! Adversarial tests for the verifier. Tokens are built by hand here (serde_json + base64url + aws-lc-rs), never
//! with the minting code, so the two cannot share a mistake.

use super::*;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    EcdsaKeyPair, KeyPair,
};
use proptest::prelude::*;
use serde_json::json;

const TD: &str = "cluster.local";
const ISSUER: &str = "https://agentiam.agentiam-system.svc";
const AUD: &str = "agentiam-decision";
const SUB: &str = "spiffe://cluster.local/ns/payments/agent/refund-bot";
const KID: &str = "k1";
const T0: i64 = 1_800_000_000;

struct Signer {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Signer {
    fn new(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        Self { pair, kid: kid.to_owned() }
    }

    /// The uncompressed point 0x04 || x || y.
    fn point(&self) -> &[u8] {
        let point = self.pair.public_key().as_ref();
        assert_eq!((point.len(), point[0]), (65, 0x04));
        point
    }

    fn jwk(&self) -> Value {
        let p = self.point();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "jwt-svid", "x": b64(&p[1..33]), "y": b64(&p[33..])})
    }

    fn sign(&self, signing_input: &str) -> Vec<u8> {
        self.pair.sign(&SystemRandom::new(), signing_input.as_bytes()).unwrap().as_ref().to_vec()
    }

    /// Encodes header and claims as given (Value or raw JSON text) and signs them.
    fn token_raw(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let sig = b64(&self.sign(&input));
        format!("{input}.{sig}")
    }

    fn token(&self, header: &Value, claims: &Value) -> String {
        self.token_raw(&header.to_string(), &claims.to_string())
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwks(keys: &[Value]) -> JwkSet {
    serde_json::from_value(json!({ "keys": keys })).unwrap()
}

fn header() -> Value {
    json!({"alg": "ES256", "typ": "JWT", "kid": KID})
}

fn claims() -> Value {
    json!({
        "sub": SUB, "aud": [AUD], "iss": ISSUER, "exp": T0 + 300, "iat": T0, "nbf": T0, "jti": "jti-1",
        "agentiam": {"scopes": ["refunds:write"], "delegation": "d-1"}
    })
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).unwrap()
}

fn config() -> VerifierConfig {
    VerifierConfig::new(TrustDomain::parse(TD).unwrap(), ISSUER)
}

fn fixture() -> (Signer, JwtVerifier) {
    let signer = Signer::new(KID);
    let verifier = JwtVerifier::new(config(), &jwks(&[signer.jwk()])).unwrap();
    (signer, verifier)
}

fn with(mut value: Value, key: &str, v: Value) -> Value {
    value[key] = v;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

#[test]
fn a_valid_token_returns_exactly_its_claims() {
    let (signer, verifier) = fixture();
    let svid = verifier.verify(&signer.token(&header(), &claims()), AUD, at(T0 + 10)).unwrap();
    let mut extra = Map::new();
    extra.insert("agentiam".into(), json!({"scopes": ["refunds:write"], "delegation": "d-1"}));
    let expected = VerifiedSvid {
        spiffe_id: SpiffeId::parse(SUB).unwrap(),
        audience: AUD.into(),
        issuer: ISSUER.into(),
        issued_at: Some(at(T0)),
        expires_at: at(T0 + 300),
        not_before: Some(at(T0)),
        jti: "jti-1".into(),
        kid: KID.into(),
        extra,
    };
    assert_eq!(svid, expected);
    // A plain-string aud, "JOSE" and an absent typ, and absent iat/nbf are all accepted.
    let minimal = without(without(with(claims(), "aud", json!(AUD)), "iat"), "nbf");
    for h in [with(header(), "typ", json!("JOSE")), without(header(), "typ")] {
        let svid = verifier.verify(&signer.token(&h, &minimal), AUD, at(T0)).unwrap();
        assert_eq!((svid.issued_at, svid.not_before), (None, None));
    }
}

#[test]
fn alg_none_in_any_case_is_refused_with_or_without_a_signature() {
    let (signer, verifier) = fixture();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(with(header(), "alg", json!(alg)).to_string().as_bytes());
        let c = b64(claims().to_string().as_bytes());
        let input = format!("{h}.{c}");
        for token in [
            format!("{input}."),
            input.clone(),
            format!("{input}.{}", b64(&signer.sign(&input))),
            format!("{input}.{}", b64(&[0u8; 64])),
        ] {
            let err = verifier.verify(&token, AUD, at(T0)).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed(_) | TokenError::UnsupportedAlgorithm),
                "{alg}: {err:?}"
            );
        }
        let err = verifier.verify(&format!("{input}.{}", b64(&[1u8; 64])), AUD, at(T0)).unwrap_err();
        assert_eq!(err, TokenError::UnsupportedAlgorithm);
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let (signer, verifier) = fixture();
    let p = signer.point();
    let spki = signer.pair.public_key().as_der().unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        p[1..].to_vec(),
        p.to_vec(),
        spki.as_ref().to_vec(),
        signer.jwk().to_string().into_bytes(),
        serde_json::to_vec(&jwks(&[signer.jwk()])).unwrap(),
    ];
    for secret in &secrets {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        for alg in ["HS256", "ES256"] {
            let input = format!(
                "{}.{}",
                b64(with(header(), "alg", json!(alg)).to_string().as_bytes()),
                b64(claims().to_string().as_bytes())
            );
            let tag = hmac::sign(&key, input.as_bytes());
            let err = verifier.verify(&format!("{input}.{}", b64(tag.as_ref())), AUD, at(T0)).unwrap_err();
            let expected = if alg == "HS256" {
                TokenError::UnsupportedAlgorithm
            } else {
                TokenError::Malformed("signature is not 64 bytes")
            };
            assert_eq!(err, expected);
        }
    }
}

#[test]
fn an_algorithm_other_than_es256_is_refused_even_with_a_valid_es256_signature() {
    let (signer, verifier) = fixture();
    for alg in
        [json!("ES384"), json!("RS256"), json!("EdDSA"), json!("PS256"), json!("es256"), json!("ES256 ")]
            .into_iter()
            .chain([json!(["ES256"]), json!(null), json!(256)])
    {
        let err = verifier.verify(&signer.token(&with(header(), "alg", alg.clone()), &claims()), AUD, at(T0));
        assert_eq!(err.unwrap_err(), TokenError::UnsupportedAlgorithm, "{alg}");
    }
    let err = verifier.verify(&signer.token(&without(header(), "alg"), &claims()), AUD, at(T0));
    assert_eq!(err.unwrap_err(), TokenError::Header(HeaderError::MissingAlgorithm));
}

#[test]
fn a_p384_signature_under_our_kid_is_refused() {
    let (_, verifier) = fixture();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let input = format!(
        "{}.{}",
        b64(with(header(), "alg", json!("ES384")).to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    let err = verifier.verify(&format!("{input}.{}", b64(sig.as_ref())), AUD, at(T0)).unwrap_err();
    assert_eq!(err, TokenError::UnsupportedAlgorithm);
}

#[test]
fn forbidden_and_unknown_header_parameters_are_refused() {
    let (signer, verifier) = fixture();
    let cases = [
        ("jku", json!("https://attacker.example/jwks.json"), Some("jku")),
        ("jwk", signer.jwk(), Some("jwk")),
        ("x5u", json!("https://attacker.example/cert.pem"), Some("x5u")),
        ("x5c", json!(["MIIB"]), Some("x5c")),
        ("x5t", json!("abc"), Some("x5t")),
        ("crit", json!(["exp"]), Some("crit")),
        ("b64", json!(false), Some("b64")),
        ("zip", json!("DEF"), Some("zip")),
        ("cty", json!("JWT"), Some("cty")),
        ("foo", json!("bar"), None),
        ("ALG", json!("ES256"), None),
    ];
    for (name, value, forbidden) in cases {
        let err = verifier.verify(&signer.token(&with(header(), name, value), &claims()), AUD, at(T0));
        let expected = forbidden.map_or(HeaderError::Unknown, HeaderError::Forbidden);
        assert_eq!(err.unwrap_err(), TokenError::Header(expected), "{name}");
    }
}

#[test]
fn typ_must_be_jwt_or_jose() {
    let (signer, verifier) = fixture();
    for typ in [json!("jwt"), json!("at+jwt"), json!("JWS"), json!(1), json!(null)] {
        let err = verifier.verify(&signer.token(&with(header(), "typ", typ), &claims()), AUD, at(T0));
        assert_eq!(err.unwrap_err(), TokenError::Header(HeaderError::Type));
    }
}

#[test]
fn kid_is_required_and_must_be_known() {
    let (signer, verifier) = fixture();
    let token = |h: Value| signer.token(&h, &claims());
    let missing = TokenError::Header(HeaderError::MissingKeyId);
    assert_eq!(verifier.verify(&token(without(header(), "kid")), AUD, at(T0)).unwrap_err(), missing);
    assert_eq!(verifier.verify(&token(with(header(), "kid", json!(""))), AUD, at(T0)).unwrap_err(), missing);
    let err = verifier.verify(&token(with(header(), "kid", json!(1))), AUD, at(T0)).unwrap_err();
    assert_eq!(err, TokenError::Header(HeaderError::KeyIdType));
    let err = verifier.verify(&token(with(header(), "kid", json!("k2"))), AUD, at(T0)).unwrap_err();
    assert_eq!(err, TokenError::UnknownKey("k2".into()));
    // A hostile kid is quoted shortened and escaped.
    let err =
        verifier.verify(&token(with(header(), "kid", json!("x\n".repeat(500)))), AUD, at(T0)).unwrap_err();
    assert!(err.to_string().len() < 250 && !err.to_string().contains('\n'), "{err}");
}

#[test]
fn a_token_from_a_key_outside_the_set_is_refused() {
    let (_, verifier) = fixture();
    let stranger = Signer::new(KID);
    let err = verifier.verify(&stranger.token(&header(), &claims()), AUD, at(T0)).unwrap_err();
    assert_eq!(err, TokenError::BadSignature);
    let err = verifier.verify(&stranger.token(&with(header(), "kid", json!("k9")), &claims()), AUD, at(T0));
    assert_eq!(err.unwrap_err(), TokenError::UnknownKey("k9".into()));
}

#[test]
fn each_required_claim_is_required() {
    let (signer, verifier) = fixture();
    for name in ["exp", "aud", "iss", "sub", "jti"] {
        let err =
            verifier.verify(&signer.token(&header(), &without(claims(), name)), AUD, at(T0)).unwrap_err();
        assert_eq!(err, TokenError::MissingClaim(name));
    }
}

#[test]
fn claims_of_the_wrong_type_are_refused() {
    let (signer, verifier) = fixture();
    let cases = [
        ("exp", json!("soon"), "exp"),
        ("exp", json!((T0 + 300) as f64 + 0.5), "exp"),
        ("exp", json!(u64::MAX), "exp"),
        ("exp", json!(i64::MAX), "exp"),
        ("nbf", json!("now"), "nbf"),
        ("iat", json!(null), "iat"),
        ("aud", json!(5), "aud"),
        ("aud", json!([5]), "aud"),
        ("aud", json!({"aud": AUD}), "aud"),
        ("iss", json!(1), "iss"),
        ("sub", json!(null), "sub"),
        ("jti", json!(""), "jti"),
        ("jti", json!(3), "jti"),
    ];
    for (name, value, claim) in cases {
        let err =
            verifier.verify(&signer.token(&header(), &with(claims(), name, value.clone())), AUD, at(T0));
        assert_eq!(err.unwrap_err(), TokenError::InvalidClaim(claim), "{name}={value}");
    }
}

#[test]
fn issuer_and_audience_must_match_exactly() {
    let (signer, verifier) = fixture();
    let verify =
        |c: Value, aud: &str| verifier.verify(&signer.token(&header(), &c), aud, at(T0)).unwrap_err();
    for iss in [format!("{ISSUER}/"), ISSUER.to_uppercase(), String::new(), "https://evil.example".into()] {
        assert_eq!(verify(with(claims(), "iss", json!(iss)), AUD), TokenError::Issuer);
    }
    for aud in [json!("other"), json!(["other"]), json!(format!("{AUD} ")), json!("")] {
        assert_eq!(verify(with(claims(), "aud", aud), AUD), TokenError::Audience);
    }
    assert_eq!(verify(with(claims(), "aud", json!("")), ""), TokenError::Audience);
    assert_eq!(verify(with(claims(), "aud", json!([AUD, "other"])), AUD), TokenError::AudienceCount(2));
    assert_eq!(verify(with(claims(), "aud", json!([AUD, AUD])), AUD), TokenError::AudienceCount(2));
    assert_eq!(verify(with(claims(), "aud", json!([])), AUD), TokenError::AudienceCount(0));
}

#[test]
fn expiry_is_checked_at_the_leeway_boundary() {
    let (signer, verifier) = fixture();
    let exp = T0 + 300;
    let token = signer.token(&header(), &claims());
    assert!(verifier.verify(&token, AUD, at(exp + 29)).is_ok());
    assert_eq!(verifier.verify(&token, AUD, at(exp + 30)).unwrap_err(), TokenError::Expired);
    assert_eq!(verifier.verify(&token, AUD, at(exp + 31)).unwrap_err(), TokenError::Expired);
    // Sub-second precision is not rounded away.
    let just_before = at(exp + 30).checked_sub(jiff::SignedDuration::from_nanos(1)).unwrap();
    assert!(verifier.verify(&token, AUD, just_before).is_ok());

    let strict =
        JwtVerifier::new(VerifierConfig { leeway: Duration::ZERO, ..config() }, &jwks(&[signer.jwk()]));
    let strict = strict.unwrap();
    assert!(strict.verify(&token, AUD, at(exp - 1)).is_ok());
    assert_eq!(strict.verify(&token, AUD, at(exp)).unwrap_err(), TokenError::Expired);
}

#[test]
fn not_before_and_issued_at_are_checked_at_the_leeway_boundary() {
    let (signer, verifier) = fixture();
    let nbf = T0;
    let token = signer.token(&header(), &without(claims(), "iat"));
    assert!(verifier.verify(&token, AUD, at(nbf - 29)).is_ok());
    assert!(verifier.verify(&token, AUD, at(nbf - 30)).is_ok());
    assert_eq!(verifier.verify(&token, AUD, at(nbf - 31)).unwrap_err(), TokenError::NotYetValid);

    let token = signer.token(&header(), &without(claims(), "nbf"));
    assert!(verifier.verify(&token, AUD, at(T0 - 30)).is_ok());
    assert_eq!(verifier.verify(&token, AUD, at(T0 - 31)).unwrap_err(), TokenError::IssuedInFuture);
}

#[test]
fn the_subject_must_be_an_agent_in_our_trust_domain() {
    let (signer, verifier) = fixture();
    let verify = |v: &JwtVerifier, sub: &str| {
        v.verify(&signer.token(&header(), &with(claims(), "sub", json!(sub))), AUD, at(T0))
    };
    for foreign in
        ["spiffe://other.org/ns/payments/agent/refund-bot", "spiffe://cluster.local.evil/ns/a/agent/b"]
    {
        assert_eq!(verify(&verifier, foreign).unwrap_err(), TokenError::ForeignTrustDomain, "{foreign}");
    }
    for bad in [
        "",
        "cluster.local/ns/a/agent/b",
        "https://cluster.local/ns/a/agent/b",
        "SPIFFE://cluster.local/ns/a/agent/b",
        "spiffe://CLUSTER.local/ns/a/agent/b",
        "spiffe://cluster.local/ns/a/agent/b/",
        "spiffe://cluster.local/ns//agent/b",
        "spiffe://cluster.local/ns/../agent/b",
        "spiffe://cluster.local/ns/a/agent/b?x=1",
        "spiffe://cluster.local/ns/a/agent/b#f",
        "spiffe://user@cluster.local/ns/a/agent/b",
        "spiffe://cluster.local:443/ns/a/agent/b",
        "spiffe://cluster.local/ns/a%2Fb/agent/c",
        "spiffe://cluster.local/ns/a b/agent/c",
    ] {
        assert!(matches!(verify(&verifier, bad), Err(TokenError::Subject(_))), "{bad:?}");
    }
    for not_agent in [
        "spiffe://cluster.local",
        "spiffe://cluster.local/ns/a/sa/b",
        SUB.replace("agent", "agents").as_str(),
    ] {
        assert_eq!(verify(&verifier, not_agent).unwrap_err(), TokenError::Subject(SpiffeError::NotAnAgent));
    }
    let any = JwtVerifier::new(VerifierConfig { require_agent: false, ..config() }, &jwks(&[signer.jwk()]));
    let svid = verify(&any.unwrap(), "spiffe://cluster.local/ns/a/sa/b").unwrap();
    assert_eq!(svid.spiffe_id.path(), "/ns/a/sa/b");
}

#[test]
fn flipping_any_bit_never_verifies() {
    let (signer, verifier) = fixture();
    let token = signer.token(&header(), &claims());
    assert!(verifier.verify(&token, AUD, at(T0)).is_ok());
    let mut checked = 0;
    for i in 0..token.len() {
        for bit in 0..8 {
            let mut bytes = token.clone().into_bytes();
            bytes[i] ^= 1 << bit;
            // A flip that leaves invalid UTF-8 cannot even be a &str; the rest must be refused.
            if let Ok(flipped) = String::from_utf8(bytes) {
                assert!(verifier.verify(&flipped, AUD, at(T0)).is_err(), "byte {i} bit {bit} verified");
                checked += 1;
            }
        }
    }
    assert!(checked > token.len() * 6);
}

#[test]
fn every_truncation_is_refused() {
    let (signer, verifier) = fixture();
    let token = signer.token(&header(), &claims());
    for len in 0..token.len() {
        assert!(verifier.verify(&token[..len], AUD, at(T0)).is_err(), "prefix of {len} verified");
        assert!(verifier.verify(&token[len + 1..], AUD, at(T0)).is_err(), "suffix from {} verified", len + 1);
    }
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let (signer, verifier) = fixture();
    let limit = TokenError::TooLarge { limit: DEFAULT_MAX_TOKEN_BYTES };
    let garbage = "\u{0}%%%".repeat(DEFAULT_MAX_TOKEN_BYTES / 4) + "!";
    assert_eq!(garbage.len(), DEFAULT_MAX_TOKEN_BYTES + 1);
    assert_eq!(verifier.verify(&garbage, AUD, at(T0)).unwrap_err(), limit);
    assert_eq!(decode_unverified(&garbage).unwrap_err(), limit);
    // One byte less and the same garbage reaches the parser.
    assert!(matches!(verifier.verify(&garbage[1..], AUD, at(T0)), Err(TokenError::Malformed(_))));

    // A genuinely signed token whose padding claim pushes it past the limit.
    let big = with(claims(), "pad", json!("a".repeat(DEFAULT_MAX_TOKEN_BYTES)));
    assert_eq!(verifier.verify(&signer.token(&header(), &big), AUD, at(T0)).unwrap_err(), limit);

    let small = JwtVerifier::new(VerifierConfig { max_token_bytes: 100, ..config() }, &jwks(&[signer.jwk()]));
    let err = small.unwrap().verify(&signer.token(&header(), &claims()), AUD, at(T0)).unwrap_err();
    assert_eq!(err, TokenError::TooLarge { limit: 100 });
}

#[test]
fn padding_whitespace_and_standard_base64_are_refused() {
    let (signer, verifier) = fixture();
    let token = signer.token(&header(), &claims());
    let (h, rest) = token.split_once('.').unwrap();
    let (c, s) = rest.split_once('.').unwrap();
    let variants = [
        format!("{h}=.{c}.{s}"),
        format!("{h}.{c}==.{s}"),
        format!("{h}.{c}.{s}="),
        format!("{h}.{c}.{s}=="),
        format!(" {token}"),
        format!("{token} "),
        format!("{token}\n"),
        format!("{h}.\t{c}.{s}"),
        format!("{h}.{c}.{}\r\n{}", &s[..40], &s[40..]),
        format!("{h}.{c}+.{s}"),
        format!("{h}.{c}.{s}/"),
        format!("{h}.{c}.{}", s.replace('-', "+").replace('_', "/")),
        format!("{h}..{c}.{s}"),
        format!("{h}.{c}.{s}."),
        format!(".{h}.{c}.{s}"),
        format!("{h}.{c}.{s}.{s}"),
        format!("Bearer {token}"),
    ];
    for variant in variants.iter().filter(|v| **v != token) {
        let err = verifier.verify(variant, AUD, at(T0)).unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)), "{err:?}");
    }
    // Non-zero trailing bits: the same 64 bytes, spelled differently, must not be accepted as a second encoding.
    let last = s.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    assert_eq!(idx & 0b1111, 0, "a canonical 64-byte encoding ends in 4 zero bits");
    let other = alphabet.chars().nth(idx | 1).unwrap();
    let variant = format!("{h}.{c}.{}{other}", &s[..s.len() - 1]);
    let err = verifier.verify(&variant, AUD, at(T0)).unwrap_err();
    assert_eq!(err, TokenError::Malformed("signature is not canonical base64url"));
}

#[test]
fn duplicate_json_keys_are_refused() {
    let (signer, verifier) = fixture();
    let h = r#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#;
    let c = claims().to_string();
    let body = c.trim_start_matches('{');
    let dup_claims = [
        format!(r#"{{"sub":"spiffe://cluster.local/ns/other/agent/evil",{body}"#),
        format!(r#"{{"s\u0075b":"spiffe://cluster.local/ns/other/agent/evil",{body}"#),
        format!(r#"{{"exp":{},{body}"#, T0 + 300),
        c.replace(r#""delegation":"d-1""#, r#""delegation":"d-1","delegation":"d-2""#),
    ];
    for dup in &dup_claims {
        assert_ne!(dup, &c);
        let err = verifier.verify(&signer.token_raw(h, dup), AUD, at(T0)).unwrap_err();
        assert_eq!(err, TokenError::DuplicateKey(Part::Claims), "{dup}");
        assert_eq!(
            decode_unverified(&signer.token_raw(h, dup)).unwrap_err(),
            TokenError::DuplicateKey(Part::Claims)
        );
    }
    for dup in [
        r#"{"alg":"ES256","alg":"ES256","typ":"JWT","kid":"k1"}"#,
        r#"{"alg":"none","alg":"ES256","typ":"JWT","kid":"k1"}"#,
        r#"{"alg":"ES256","typ":"JWT","kid":"k1","kid":"k1"}"#,
    ] {
        let err = verifier.verify(&signer.token_raw(dup, &c), AUD, at(T0)).unwrap_err();
        assert_eq!(err, TokenError::DuplicateKey(Part::Header), "{dup}");
    }
}

#[test]
fn json_that_is_not_one_object_is_refused() {
    let (signer, verifier) = fixture();
    let h = header().to_string();
    let c = claims().to_string();
    for (header, claims) in [
        ("[]".to_owned(), c.clone()),
        (format!("{h} {h}"), c.clone()),
        (format!("{h}x"), c.clone()),
        (h.clone(), "null".to_owned()),
        (h.clone(), format!("{c}{c}")),
        (h.clone(), c[..c.len() - 1].to_owned()),
    ] {
        let err = verifier.verify(&signer.token_raw(&header, &claims), AUD, at(T0)).unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)), "{err:?}");
    }
    let bad_utf8 = format!("{}.{}", b64(h.as_bytes()), b64(b"{\"sub\":\"\xff\"}"));
    let token = format!("{bad_utf8}.{}", b64(&signer.sign(&bad_utf8)));
    assert!(matches!(verifier.verify(&token, AUD, at(T0)), Err(TokenError::Malformed(_))));
}

#[test]
fn signatures_of_the_wrong_length_or_encoding_are_refused() {
    let (signer, verifier) = fixture();
    let token = signer.token(&header(), &claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let mut longer = sig.clone();
    longer.push(0);
    for bad in
        [sig[..63].to_vec(), longer, sig[..32].to_vec(), vec![0u8; 64], [sig.as_slice(), &sig].concat()]
    {
        assert!(verifier.verify(&format!("{input}.{}", b64(&bad)), AUD, at(T0)).is_err());
    }
    // The same key's DER (ASN.1) signature is refused: ES256 is r||s only.
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new()).unwrap();
    let der_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let der_signer = Signer { pair: der_pair, kid: KID.into() };
    let der_verifier = JwtVerifier::new(config(), &jwks(&[der_signer.jwk()])).unwrap();
    let err = der_verifier.verify(&der_signer.token(&header(), &claims()), AUD, at(T0)).unwrap_err();
    assert_eq!(err, TokenError::Malformed("signature is not 64 bytes"));
}

#[test]
fn key_sets_are_checked_when_loaded() {
    let a = Signer::new("a");
    let b = Signer::new("b");
    let new = |keys: &[Value]| JwtVerifier::new(config(), &jwks(keys));
    assert_eq!(new(&[a.jwk(), with(b.jwk(), "kid", json!("a"))]).unwrap_err().metric_label(), "key_id");
    assert_eq!(new(&[without(a.jwk(), "kid")]).unwrap_err(), VerifierError::MissingKid);
    assert_eq!(new(&[with(a.jwk(), "kid", json!(""))]).unwrap_err(), VerifierError::MissingKid);
    for (jwk, reason) in [
        (with(a.jwk(), "alg", json!("ES384")), "alg is not ES256"),
        (with(a.jwk(), "crv", json!("P-384")), "curve is not P-256"),
        (json!({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}), "not an EC key"),
        (json!({"kty": "oct", "kid": "h", "k": b64(a.point())}), "not an EC key"),
    ] {
        assert!(matches!(new(&[jwk]), Err(VerifierError::UnsupportedKey { reason: r, .. }) if r == reason));
    }
    let p = a.point();
    let mut off_curve = p[33..].to_vec();
    off_curve[31] ^= 1;
    for jwk in [
        with(a.jwk(), "y", json!(b64(&off_curve))),
        with(a.jwk(), "x", json!(b64(&p[1..32]))),
        with(a.jwk(), "x", json!(format!("{}=", b64(&p[1..33])))),
    ] {
        assert_eq!(new(&[jwk]).unwrap_err(), VerifierError::InvalidKey { kid: "a".into() });
    }
    // Keys that are not for signatures are skipped, not refused.
    let v = new(&[
        with(a.jwk(), "use", json!("enc")),
        with(with(a.jwk(), "use", json!("x509-svid")), "kid", json!("x")),
        with(without(b.jwk(), "use"), "key_ops", json!(["encrypt"])),
    ])
    .unwrap();
    assert!(v.key_ids().is_empty());
    let v = new(&[with(a.jwk(), "use", json!("sig")), with(without(b.jwk(), "use"), "alg", json!("ES256"))]);
    assert_eq!(v.unwrap().key_ids(), ["a", "b"]);
}

#[test]
fn configs_out_of_bounds_are_refused() {
    let keys = jwks(&[]);
    let new = |c: VerifierConfig| JwtVerifier::new(c, &keys);
    assert!(new(VerifierConfig { leeway: MAX_LEEWAY, ..config() }).is_ok());
    let over = MAX_LEEWAY + Duration::from_nanos(1);
    assert_eq!(new(VerifierConfig { leeway: over, ..config() }).unwrap_err(), VerifierError::Leeway(over));
    for limit in [0, DEFAULT_MAX_TOKEN_BYTES + 1] {
        let err = new(VerifierConfig { max_token_bytes: limit, ..config() }).unwrap_err();
        assert_eq!(err, VerifierError::TokenLimit(limit));
    }
    assert_eq!(
        new(VerifierConfig { issuer: String::new(), ..config() }).unwrap_err(),
        VerifierError::EmptyIssuer
    );
}

#[test]
fn the_verifier_can_be_shared_across_tasks() {
    // The decision API shares one verifier (behind an Arc or a swap cell) between request handlers.
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<JwtVerifier>();
    shareable::<TokenError>();
    shareable::<VerifierError>();
}

#[test]
fn rotation_swaps_the_key_set_and_keeps_the_config() {
    let (old, verifier) = fixture();
    let new = Signer::new("k2");
    let rotated = verifier.with_keys(&jwks(&[new.jwk()])).unwrap();
    assert_eq!(rotated.config(), verifier.config());
    let old_token = old.token(&header(), &claims());
    let new_token = new.token(&with(header(), "kid", json!("k2")), &claims());
    assert!(verifier.verify(&old_token, AUD, at(T0)).is_ok());
    assert!(matches!(verifier.verify(&new_token, AUD, at(T0)), Err(TokenError::UnknownKey(_))));
    assert!(rotated.verify(&new_token, AUD, at(T0)).is_ok());
    assert!(matches!(rotated.verify(&old_token, AUD, at(T0)), Err(TokenError::UnknownKey(_))));
}

#[test]
fn decode_unverified_shows_the_json_and_checks_structure_only() {
    let (signer, _) = fixture();
    let stranger = Signer::new("nobody");
    let expired = with(claims(), "exp", json!(1));
    let (h, c) = decode_unverified(&stranger.token(&header(), &expired)).unwrap();
    assert_eq!((h, c), (header(), expired));
    let token = signer.token(&header(), &claims());
    assert!(matches!(decode_unverified(&token[..token.len() - 87]), Err(TokenError::Malformed(_))));
    assert!(matches!(decode_unverified(&format!("{token}=")), Err(TokenError::Malformed(_))));
}

#[test]
fn error_messages_never_quote_the_token() {
    let (signer, verifier) = fixture();
    let token = signer.token(&header(), &claims());
    let segments: Vec<&str> = token.split('.').collect();
    let stranger = Signer::new(KID).token(&header(), &claims());
    let failures = [
        verifier.verify(&stranger, AUD, at(T0)),
        verifier.verify(&token, AUD, at(T0 + 10_000)),
        verifier.verify(&token, "other", at(T0)),
        verifier.verify(&format!("{token}="), AUD, at(T0)),
        verifier.verify(&signer.token(&with(header(), "x5u", json!("u")), &claims()), AUD, at(T0)),
    ];
    for err in failures.into_iter().map(Result::unwrap_err) {
        let message = err.to_string();
        assert!(message.starts_with(|c: char| c.is_ascii_lowercase()), "{message}");
        for segment in stranger.split('.').chain(segments.iter().copied()) {
            assert!(!message.contains(&segment[..16]), "{message}");
        }
        let label = err.metric_label();
        assert!(!label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_strings_never_verify_or_panic(s in "\\PC{0,300}", dotted in "[A-Za-z0-9_-]{1,80}\\.[A-Za-z0-9_-]{1,80}\\.[A-Za-z0-9_-]{86}") {
        let (_, verifier) = fixture();
        prop_assert!(verifier.verify(&s, AUD, at(T0)).is_err());
        prop_assert!(verifier.verify(&dotted, AUD, at(T0)).is_err());
        let _ = decode_unverified(&s);
        let _ = decode_unverified(&dotted);
    }

    #[test]
    fn random_edits_of_a_valid_token_never_verify(pos in 0usize..400, byte in any::<u8>()) {
        let (signer, verifier) = fixture();
        let mut bytes = signer.token(&header(), &claims()).into_bytes();
        let pos = pos % bytes.len();
        prop_assume!(bytes[pos] != byte);
        bytes[pos] = byte;
        if let Ok(edited) = String::from_utf8(bytes) {
            prop_assert!(verifier.verify(&edited, AUD, at(T0)).is_err());
        }
    }
}

#[test]
fn any_audience_still_requires_exactly_one_and_every_other_check() {
    let (signer, verifier) = fixture();
    let ok = verifier.verify_any_audience(&signer.token(&header(), &claims()), at(T0 + 10)).unwrap();
    assert_eq!(ok.audience, AUD);
    let other = with(claims(), "aud", json!("billing"));
    assert_eq!(
        verifier.verify_any_audience(&signer.token(&header(), &other), at(T0)).unwrap().audience,
        "billing"
    );
    let cases = [
        (with(claims(), "aud", json!("")), TokenError::Audience),
        (with(claims(), "aud", json!([AUD, "other"])), TokenError::AudienceCount(2)),
        (without(claims(), "aud"), TokenError::MissingClaim("aud")),
        (with(claims(), "iss", json!("https://evil.example")), TokenError::Issuer),
    ];
    for (c, expected) in cases {
        assert_eq!(verifier.verify_any_audience(&signer.token(&header(), &c), at(T0)).unwrap_err(), expected);
    }
    assert_eq!(
        verifier.verify_any_audience(&signer.token(&header(), &claims()), at(T0 + 400)).unwrap_err(),
        TokenError::Expired
    );
}

// Delegated tokens: their own typ, a human subject, the nested act chain.

const AGENT_A: &str = "spiffe://cluster.local/ns/payments/agent/planner";

fn delegated_header() -> Value {
    json!({"alg": "ES256", "typ": "agentiam-delegation+jwt", "kid": KID})
}

fn delegated_claims() -> Value {
    json!({
        "sub": "alice@example.com", "aud": "pay", "iss": ISSUER, "exp": T0 + 300, "iat": T0, "nbf": T0,
        "jti": "d-jti", "client_id": SUB, "act": {"sub": SUB, "act": {"sub": AGENT_A}},
        "scope": "refund@pay:orders/** read@pay:orders/*",
        "agentiam.dev/uid": "agent-uid", "agentiam.dev/delegation": "child",
        "agentiam.dev/delegation_uid": "child-uid", "agentiam.dev/chain": ["root-uid", "child-uid"]
    })
}

#[test]
fn a_delegated_token_verifies_as_one_and_never_as_an_identity_token() {
    let (signer, verifier) = fixture();
    let token = signer.token(&delegated_header(), &delegated_claims());
    let v = verifier.verify_delegated(&token, at(T0 + 10)).unwrap();
    assert_eq!(v.grantor, "alice@example.com");
    assert_eq!(v.agents.iter().map(ToString::to_string).collect::<Vec<_>>(), [SUB, AGENT_A]);
    assert_eq!(v.scopes.len(), 2);
    assert_eq!((v.delegation.as_str(), v.delegation_uid.as_str()), ("child", "child-uid"));
    assert_eq!(v.chain, ["root-uid", "child-uid"]);
    assert_eq!(v.may_act, None);
    let named = with(delegated_claims(), "may_act", json!({"sub": AGENT_A, CLAIM_UID: "a-uid"}));
    let v = verifier.verify_delegated(&signer.token(&delegated_header(), &named), at(T0 + 10)).unwrap();
    assert_eq!(
        v.may_act.map(|(id, uid)| (id.to_string(), uid)),
        Some((AGENT_A.to_owned(), "a-uid".to_owned()))
    );
    assert_eq!(
        verifier.verify_any_audience(&token, at(T0 + 10)).unwrap_err(),
        TokenError::Header(HeaderError::Type)
    );
    // An identity token, and a delegated body under the identity typ (or none), are not delegated tokens.
    for h in
        [header(), json!({"alg": "ES256", "kid": KID}), json!({"alg": "ES256", "typ": "JOSE", "kid": KID})]
    {
        for c in [claims(), delegated_claims()] {
            assert_eq!(
                verifier.verify_delegated(&signer.token(&h, &c), at(T0 + 10)).unwrap_err(),
                TokenError::Header(HeaderError::NotDelegated)
            );
        }
    }
}

#[test]
fn a_delegated_token_with_a_forged_shape_is_refused() {
    let (signer, verifier) = fixture();
    let other_td = "spiffe://evil.example/ns/payments/agent/refund-bot";
    let not_agent = "spiffe://cluster.local/ns/payments/sa/default";
    let cases = [
        (with(delegated_claims(), "sub", json!(SUB)), TokenError::InvalidClaim("sub")),
        (with(delegated_claims(), "sub", json!("")), TokenError::InvalidClaim("sub")),
        (with(delegated_claims(), "client_id", json!(AGENT_A)), TokenError::InvalidClaim("client_id")),
        (without(delegated_claims(), "client_id"), TokenError::MissingClaim("client_id")),
        (without(delegated_claims(), "act"), TokenError::MissingClaim("act")),
        (with(delegated_claims(), "act", json!("x")), TokenError::InvalidClaim("act")),
        (with(delegated_claims(), "act", json!({"sub": SUB, "iss": "x"})), TokenError::InvalidClaim("act")),
        (
            with(delegated_claims(), "act", json!({"sub": SUB, "act": {"sub": not_agent}})),
            TokenError::InvalidClaim("act"),
        ),
        (with(delegated_claims(), "act", json!({"sub": other_td})), TokenError::InvalidClaim("act")),
        (with(delegated_claims(), "act", json!({"sub": SUB})), TokenError::InvalidClaim(CLAIM_CHAIN)),
        (with(delegated_claims(), "scope", json!("refund")), TokenError::InvalidClaim("scope")),
        (with(delegated_claims(), "scope", json!("")), TokenError::InvalidClaim("scope")),
        (with(delegated_claims(), "scope", json!(["refund@pay:x"])), TokenError::InvalidClaim("scope")),
        (
            with(delegated_claims(), CLAIM_CHAIN, json!(["root-uid", "other"])),
            TokenError::InvalidClaim(CLAIM_CHAIN),
        ),
        (with(delegated_claims(), CLAIM_CHAIN, json!("child-uid")), TokenError::InvalidClaim(CLAIM_CHAIN)),
        (
            with(delegated_claims(), CLAIM_DELEGATION_UID, json!("")),
            TokenError::InvalidClaim(CLAIM_DELEGATION_UID),
        ),
        (without(delegated_claims(), CLAIM_UID), TokenError::MissingClaim(CLAIM_UID)),
        (with(delegated_claims(), "aud", json!(["pay", "crm"])), TokenError::AudienceCount(2)),
        (with(delegated_claims(), "iss", json!("https://evil.example")), TokenError::Issuer),
        // may_act: an agent of this trust domain other than the acting one, with a UID, and nothing else.
        (with(delegated_claims(), "may_act", json!("x")), TokenError::InvalidClaim("may_act")),
        (with(delegated_claims(), "may_act", json!({"sub": AGENT_A})), TokenError::InvalidClaim("may_act")),
        (
            with(delegated_claims(), "may_act", json!({"sub": AGENT_A, CLAIM_UID: ""})),
            TokenError::InvalidClaim("may_act"),
        ),
        (
            with(delegated_claims(), "may_act", json!({"sub": other_td, CLAIM_UID: "u"})),
            TokenError::InvalidClaim("may_act"),
        ),
        (
            with(delegated_claims(), "may_act", json!({"sub": not_agent, CLAIM_UID: "u"})),
            TokenError::InvalidClaim("may_act"),
        ),
        (
            with(delegated_claims(), "may_act", json!({"sub": SUB, CLAIM_UID: "agent-uid"})),
            TokenError::InvalidClaim("may_act"),
        ),
        (
            with(delegated_claims(), "may_act", json!({"sub": AGENT_A, CLAIM_UID: "u", "iss": "x"})),
            TokenError::InvalidClaim("may_act"),
        ),
    ];
    for (i, (c, expected)) in cases.into_iter().enumerate() {
        let token = signer.token(&delegated_header(), &c);
        assert_eq!(verifier.verify_delegated(&token, at(T0)).unwrap_err(), expected, "case {i}");
    }
    // A chain deeper than any Delegation may be.
    let mut act = json!({"sub": AGENT_A});
    for _ in 0..MAX_CHAIN {
        act = json!({"sub": SUB, "act": act});
    }
    let deep = with(with(delegated_claims(), "act", act), CLAIM_CHAIN, json!(vec!["u"; MAX_CHAIN + 1]));
    let deep = with(deep, CLAIM_DELEGATION_UID, json!("u"));
    assert_eq!(
        verifier.verify_delegated(&signer.token(&delegated_header(), &deep), at(T0)).unwrap_err(),
        TokenError::InvalidClaim("act")
    );
    assert_eq!(
        verifier
            .verify_delegated(&signer.token(&delegated_header(), &delegated_claims()), at(T0 + 400))
            .unwrap_err(),
        TokenError::Expired
    );
}

fn access_header() -> Value {
    json!({"alg": "ES256", "typ": "at+jwt", "kid": KID})
}

fn access_claims() -> Value {
    json!({
        "sub": SUB, "client_id": SUB, "aud": "https://crm", "iss": ISSUER, "exp": T0 + 300, "iat": T0,
        "nbf": T0, "jti": "a-jti", "scope": "read@crm:contacts/* close@tickets:**",
        "agentiam.dev/uid": "agent-uid", "agentiam.dev/task": "t-1", "agentiam.dev/model": "m"
    })
}

#[test]
fn an_access_token_verifies_as_one_and_as_no_other_kind() {
    let (signer, verifier) = fixture();
    let token = signer.token(&access_header(), &access_claims());
    let v = verifier.verify_access(&token, at(T0 + 10)).unwrap();
    assert_eq!(v.agent.to_string(), SUB);
    assert_eq!(v.audience, "https://crm");
    assert_eq!(
        v.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
        ["read@crm:contacts/*", "close@tickets:**"]
    );
    assert_eq!((v.task.as_deref(), v.model.as_deref()), (Some("t-1"), Some("m")));
    assert_eq!(
        verifier.verify_any_audience(&token, at(T0 + 10)).unwrap_err(),
        TokenError::Header(HeaderError::Type)
    );
    assert_eq!(
        verifier.verify_delegated(&token, at(T0 + 10)).unwrap_err(),
        TokenError::Header(HeaderError::NotDelegated)
    );
    for h in [
        header(),
        delegated_header(),
        json!({"alg": "ES256", "kid": KID}),
        json!({"alg": "ES256", "typ": "AT+JWT", "kid": KID}),
    ] {
        for c in [claims(), delegated_claims(), access_claims()] {
            assert_eq!(
                verifier.verify_access(&signer.token(&h, &c), at(T0 + 10)).unwrap_err(),
                TokenError::Header(HeaderError::NotAccess)
            );
        }
    }
    assert_eq!(verifier.verify_access(&token, at(T0 + 400)).unwrap_err(), TokenError::Expired);
}

#[test]
fn an_access_token_with_a_forged_shape_is_refused() {
    let (signer, verifier) = fixture();
    let not_agent = "spiffe://cluster.local/ns/payments/sa/default";
    let cases = [
        (with(access_claims(), "client_id", json!(AGENT_A)), TokenError::InvalidClaim("client_id")),
        (without(access_claims(), "client_id"), TokenError::MissingClaim("client_id")),
        (
            with(with(access_claims(), "sub", json!(not_agent)), "client_id", json!(not_agent)),
            TokenError::Subject(SpiffeError::NotAnAgent),
        ),
        (with(access_claims(), "scope", json!("read")), TokenError::InvalidClaim("scope")),
        (with(access_claims(), "scope", json!("")), TokenError::InvalidClaim("scope")),
        (without(access_claims(), "scope"), TokenError::MissingClaim("scope")),
        (with(access_claims(), "agentiam.dev/uid", json!("")), TokenError::InvalidClaim("agentiam.dev/uid")),
        (with(access_claims(), "agentiam.dev/task", json!(7)), TokenError::InvalidClaim("agentiam.dev/task")),
        (with(access_claims(), "aud", json!(["a", "b"])), TokenError::AudienceCount(2)),
    ];
    for (c, expected) in cases {
        let token = signer.token(&access_header(), &c);
        assert_eq!(verifier.verify_access(&token, at(T0 + 10)).unwrap_err(), expected, "{c}");
    }
}
