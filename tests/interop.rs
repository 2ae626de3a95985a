//! Interoperability: independent implementations accept what agentiam issues, using only the documents it
//! publishes. The Rust `spiffe` crate validates JWT-SVIDs against the SPIFFE bundle and parses its X.509
//! part; rustls-webpki verifies X.509-SVIDs against that part; PyJWT finds the keys through OIDC discovery
//! over HTTP, as a cloud provider's workload identity federation would.
//!
//! The PyJWT test needs `python3` with `pyjwt[crypto]` (`pip install "pyjwt[crypto]"`). Without it the test
//! prints SKIPPED and passes, unless `E2E_REQUIRED=1` (CI), where it fails.

// Test code: a panic is a failed test with a message, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agentiam::identity::issuer::{Issuer, channel};
use agentiam::identity::jwt::{AgentClaims, CLAIM_UID, Minter, SvidClaims};
use agentiam::identity::keys::{KeySet, RotationPolicy};
use agentiam::identity::x509::{CertificateAuthority, DEFAULT_CA_VALIDITY};
use agentiam::identity::{SpiffeId, TrustDomain};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::{SignedDuration, Timestamp};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const TRUST_DOMAIN: &str = "example.org";
const AUDIENCE: &str = "https://api.example.com";
const AGENT_UID: &str = "0b6f1a9e-5c4d-4e21-9d2f-7a1b2c3d4e5f";

fn trust_domain() -> TrustDomain {
    TrustDomain::parse(TRUST_DOMAIN).unwrap()
}

fn agent() -> SpiffeId {
    SpiffeId::for_agent(&trust_domain(), "default", "support-triage").unwrap()
}

fn issuer(url: &str) -> Issuer {
    let now = Timestamp::now();
    Issuer {
        keys: KeySet::generate(now).unwrap(),
        ca: Arc::new(CertificateAuthority::generate(&trust_domain(), DEFAULT_CA_VALIDITY, now).unwrap()),
        issuer_url: url.to_owned(),
        trust_domain: trust_domain(),
        policy: RotationPolicy::default(),
        sequence: 1,
    }
}

/// A JWT-SVID signed by `keys`' current key, for `audience`, issued at `at` for 10 minutes.
fn mint(keys: &KeySet, issuer_url: &str, audience: &str, at: Timestamp) -> String {
    let claims = SvidClaims::new(
        issuer_url,
        &agent(),
        audience,
        AgentClaims { uid: AGENT_UID, owner: "User:alice@example.com", trust_score: 950 },
        at,
        Duration::from_secs(600),
    )
    .unwrap();
    Minter::new(Arc::clone(keys.current())).mint(&claims).unwrap()
}

/// The published bundle, as a relying party receives it: bytes.
fn published_bundle(issuer: &Issuer) -> Vec<u8> {
    serde_json::to_vec(&issuer.spiffe_bundle().unwrap()).unwrap()
}

/// The bundle entries with the given `use`, re-serialized as a JWK Set.
fn entries_with_use(bundle: &[u8], key_use: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_slice(bundle).unwrap();
    doc["keys"].as_array().unwrap().iter().filter(|k| k["use"] == key_use).cloned().collect()
}

/// The spiffe crate's JWT bundle source for our trust domain, from the published bundle. The crate parses
/// JWK Sets of JWT authorities and leaves selecting the `jwt-svid` entries of a full SPIFFE bundle to the
/// caller (its documented contract), which is what a SPIFFE bundle consumer does.
fn spiffe_jwt_bundles(bundle: &[u8]) -> spiffe::JwtBundleSet {
    let jwt_keys = serde_json::json!({ "keys": entries_with_use(bundle, "jwt-svid") });
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let jwt_bundle =
        spiffe::JwtBundle::from_jwt_authorities(td, &serde_json::to_vec(&jwt_keys).unwrap()).unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(jwt_bundle);
    set
}

#[test]
fn spiffe_crate_validates_jwt_svids_against_the_published_bundle() {
    let issuer = issuer("https://issuer.example.org");
    let bundles = spiffe_jwt_bundles(&published_bundle(&issuer));
    let now = Timestamp::now();
    let token = mint(&issuer.keys, &issuer.issuer_url, AUDIENCE, now);

    let svid = spiffe::JwtSvid::parse_and_validate(&token, &bundles, &[AUDIENCE]).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), agent().to_string());
    assert_eq!(svid.audience(), [AUDIENCE.to_owned()]);
    assert_eq!(svid.key_id(), issuer.keys.current().kid());

    // The next key is published before it signs, so tokens it signs after a rotation already validate.
    let mut rotated = issuer.keys.clone();
    rotated.emergency_rotate(now).unwrap();
    assert_eq!(rotated.current().kid(), issuer.keys.next().kid());
    let after_rotation = mint(&rotated, &issuer.issuer_url, AUDIENCE, now);
    spiffe::JwtSvid::parse_and_validate(&after_rotation, &bundles, &[AUDIENCE]).unwrap();
}

#[test]
fn spiffe_crate_rejects_unpublished_keys_other_audiences_and_expired_tokens() {
    let issuer = issuer("https://issuer.example.org");
    let bundles = spiffe_jwt_bundles(&published_bundle(&issuer));
    let now = Timestamp::now();

    let unpublished = KeySet::generate(now).unwrap();
    let forged = mint(&unpublished, &issuer.issuer_url, AUDIENCE, now);
    let err = spiffe::JwtSvid::parse_and_validate(&forged, &bundles, &[AUDIENCE]).unwrap_err();
    assert!(matches!(err, spiffe::JwtSvidError::AuthorityNotFound(_)), "{err:?}");

    let token = mint(&issuer.keys, &issuer.issuer_url, AUDIENCE, now);
    let err = spiffe::JwtSvid::parse_and_validate(&token, &bundles, &["https://other.example.com"]);
    assert!(err.is_err(), "a token for another audience must be rejected");

    let two_hours_ago = now.checked_sub(SignedDuration::from_hours(2)).unwrap();
    let expired = mint(&issuer.keys, &issuer.issuer_url, AUDIENCE, two_hours_ago);
    assert!(spiffe::JwtSvid::parse_and_validate(&expired, &bundles, &[AUDIENCE]).is_err());
}

/// The X.509 authorities of the published bundle, through the spiffe crate's X509Bundle.
fn spiffe_x509_bundle(bundle: &[u8]) -> spiffe::X509Bundle {
    let ders: Vec<Vec<u8>> = entries_with_use(bundle, "x509-svid")
        .iter()
        .map(|entry| {
            let x5c = entry["x5c"].as_array().unwrap();
            assert_eq!(x5c.len(), 1, "exactly one certificate per x509-svid entry");
            STANDARD.decode(x5c[0].as_str().unwrap()).unwrap()
        })
        .collect();
    let refs: Vec<&[u8]> = ders.iter().map(Vec::as_slice).collect();
    spiffe::X509Bundle::from_x509_authorities(spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap(), &refs).unwrap()
}

/// Verifies an SVID chain (PEM) against the bundle's authorities with rustls-webpki, for both TLS roles.
fn webpki_verify(bundle: &spiffe::X509Bundle, chain_pem: &str) -> Result<(), webpki::Error> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let roots: Vec<CertificateDer<'_>> =
        bundle.authorities().iter().map(|c| CertificateDer::from(c.as_bytes())).collect();
    let anchors: Vec<_> = roots.iter().map(|r| webpki::anchor_from_trusted_cert(r).unwrap()).collect();
    let (leaf, intermediates) = chain.split_first().unwrap();
    let leaf = webpki::EndEntityCert::try_from(leaf)?;
    let now = UnixTime::now();
    for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[test]
fn x509_svids_verify_against_the_x509_part_of_the_same_bundle() {
    let issuer = issuer("https://issuer.example.org");
    let bundle = spiffe_x509_bundle(&published_bundle(&issuer));
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(bundle.authorities()[0].as_bytes(), issuer.ca.cert_der());

    let svid = issuer.ca.issue_svid(&agent(), SignedDuration::from_mins(10), Timestamp::now()).unwrap();
    // The spiffe crate's own X.509-SVID checks: leaf SPIFFE ID, key usage, not a CA, the key pair.
    let chain_der: Vec<u8> =
        CertificateDer::pem_slice_iter(svid.chain_pem.as_bytes()).flat_map(|c| c.unwrap().to_vec()).collect();
    let key_der = match PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes()).unwrap() {
        PrivateKeyDer::Pkcs8(key) => key.secret_pkcs8_der().to_vec(),
        other => panic!("SVID key is not PKCS#8: {other:?}"),
    };
    let parsed = spiffe::X509Svid::parse_from_der(&chain_der, &key_der).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), agent().to_string());
    // The spiffe crate has no chain verifier; webpki does that with the bundle's certificates as anchors.
    webpki_verify(&bundle, &svid.chain_pem).unwrap();

    let stranger =
        CertificateAuthority::generate(&trust_domain(), DEFAULT_CA_VALIDITY, Timestamp::now()).unwrap();
    let foreign = stranger.issue_svid(&agent(), SignedDuration::from_mins(10), Timestamp::now()).unwrap();
    assert!(webpki_verify(&bundle, &foreign.chain_pem).is_err(), "an SVID from another CA must not verify");
}

/// Discovers the keys, validates the token and prints `sub`; then checks another audience is rejected.
const PYJWT_SCRIPT: &str = r#"
import json, sys, urllib.request
import jwt

issuer, audience = sys.argv[1], sys.argv[2]
token = sys.stdin.read().strip()
with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as response:
    discovery = json.load(response)
assert discovery["issuer"] == issuer, discovery
key = jwt.PyJWKClient(discovery["jwks_uri"], timeout=10).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=issuer)
try:
    jwt.decode(token, key.key, algorithms=["ES256"], audience="https://other.example.com", issuer=issuer)
    print("ACCEPTED-OTHER-AUDIENCE")
except jwt.InvalidAudienceError:
    print("rejected-other-audience")
print("sub=" + claims["sub"])
print("uid=" + claims["agentiam.dev/uid"])
"#;

/// The Python with PyJWT: `$AGENTIAM_PYTHON` (`make test` points it at the virtualenv tools/python-env.sh
/// makes), else `python3`.
fn python() -> String {
    std::env::var("AGENTIAM_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".to_owned())
}

/// Whether python3 with PyJWT and its crypto backend is usable; fails or skips (by E2E_REQUIRED) otherwise.
async fn pyjwt_available() -> bool {
    let probe = tokio::process::Command::new(python())
        .args(["-c", "import jwt, cryptography; jwt.algorithms.ECAlgorithm"])
        .output()
        .await;
    let why = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => {
            format!("PyJWT with crypto is not importable: {}", String::from_utf8_lossy(&out.stderr).trim())
        }
        Err(e) => format!("python3 cannot be run: {e}"),
    };
    let fix = "run it through `make unit` or `make test`, or set AGENTIAM_PYTHON=$(tools/python-env.sh)";
    if std::env::var("E2E_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("E2E_REQUIRED=1 but {why}; {fix}");
    }
    eprintln!("SKIPPED pyjwt_validates_tokens_through_oidc_discovery: {why}; {fix}");
    false
}

#[tokio::test]
async fn pyjwt_validates_tokens_through_oidc_discovery() {
    if !pyjwt_available().await {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_url = format!("http://{}", listener.local_addr().unwrap());
    let (_tx, rx) = channel(issuer(&issuer_url));
    let app = agentiam::server::issuer::routes(rx.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let token = mint(&rx.borrow().keys, &issuer_url, AUDIENCE, Timestamp::now());

    // The token goes through stdin, as a bearer credential should.
    let mut child = tokio::process::Command::new(python())
        .args(["-c", PYJWT_SCRIPT, &issuer_url, AUDIENCE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(token.as_bytes()).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "PyJWT failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["rejected-other-audience".to_owned(), format!("sub={}", agent()), format!("uid={AGENT_UID}"),],
        "claim {CLAIM_UID} and sub as PyJWT sees them"
    );
    server.abort();
}
