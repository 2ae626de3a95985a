//! Tests of the token endpoint's composition: real verifier, index, ledger (as the audit log's
//! projection) and audit log in a temp dir; no socket and no API server (the e2e tests cover those).

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::token::TokenService;
use crate::api::{Agent, AgentPolicy};
use crate::audit::{AuditConfig, AuditLog};
use crate::authz::Builder;
use crate::controller::authz::PolicyIndex;
use crate::identity::issuer::{self, Issuer, IssuerSender};
use crate::identity::keys::{KeySet, RotationPolicy};
use crate::identity::x509::CertificateAuthority;
use crate::identity::{SpiffeId, TrustDomain};
use crate::oauth::{ErrorCode, Form};
use crate::registry::ledger::{AgentRecord, Issuance, Ledger, Stored};

const ISSUER_URL: &str = "https://issuer.test";
const ENDPOINT: &str = "https://issuer.test/v1/oauth/token";

struct Fx {
    _dir: tempfile::TempDir,
    _issuer: IssuerSender,
    service: Arc<TokenService>,
    chain: Vec<String>,
    key: EcdsaKeyPair,
    id: String,
    /// The same agent's certificate from the same CA that the ledger never recorded.
    unrecorded: Vec<Vec<u8>>,
}

fn fx(now: Timestamp) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::default());
    let mut config = AuditConfig::new(dir.path().join("audit.log"));
    config.projection = Some(Arc::clone(&ledger) as Arc<dyn crate::audit::Projection>);
    let audit = AuditLog::open(config).unwrap();
    let td = TrustDomain::parse("cluster.local").unwrap();
    let ca = CertificateAuthority::generate(&td, SignedDuration::from_hours(24), now).unwrap();
    let spiffe = SpiffeId::for_agent(&td, "ns", "bot").unwrap();
    let svid = ca.issue_svid(&spiffe, SignedDuration::from_mins(10), now).unwrap();
    let unrecorded = ca.issue_svid(&spiffe, SignedDuration::from_mins(10), now).unwrap();
    let unrecorded = crate::identity::x509::parse_cert_pems(&unrecorded.chain_pem).unwrap();
    let (tx, rx) = issuer::channel(Issuer {
        keys: KeySet::generate(now).unwrap(),
        ca: Arc::new(ca),
        issuer_url: ISSUER_URL.into(),
        trust_domain: td,
        policy: RotationPolicy::default(),
        sequence: 1,
    });
    let agent: Agent = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": "bot", "namespace": "ns", "uid": "uid-bot"},
        "spec": {"owner": {"kind": "Team", "name": "t"}, "purpose": "p",
                 "credentials": {"audiences": ["crm"], "x509": true}},
    }))
    .unwrap();
    let policy: AgentPolicy = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
        "metadata": {"name": "p", "namespace": "ns", "uid": "uid-p", "generation": 1},
        "spec": {"agents": {"names": ["bot"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}]},
    }))
    .unwrap();
    let index = Arc::new(PolicyIndex::default());
    index.publish(Builder::default().build(&[Arc::new(agent)], &[Arc::new(policy)], &[]));
    // What the operator records when it issues the X.509-SVID: the agent Active, the serial live.
    ledger.set(
        "uid-bot",
        AgentRecord {
            phase: Some(crate::api::AgentPhase::Active),
            trust_score: Some(600),
            issuances: vec![Issuance {
                key: "credential.issue:uid-bot:1".into(),
                issued_at: now,
                expires_at: now.checked_add(SignedDuration::from_mins(10)).unwrap(),
                ttl_secs: 600,
                key_id: "k".into(),
                fingerprint: None,
                tokens: vec![],
                audiences: vec![],
                x509: true,
                x509_serial: Some(svid.serial_hex.clone()),
                stored: Stored::Yes,
            }],
            ..AgentRecord::default()
        },
    );
    let verifiers = Arc::new(crate::identity::cache::CurrentVerifier::new(rx.clone()));
    let (store, _writer) = kube::runtime::reflector::store::<Agent>();
    let service =
        Arc::new(TokenService::new(index, ledger, rx, audit, verifiers, store).with_mutual_tls(true));
    let chain = crate::identity::x509::parse_cert_pems(&svid.chain_pem)
        .unwrap()
        .iter()
        .map(|d| STANDARD.encode(d))
        .collect();
    let b64: String = svid.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &STANDARD.decode(b64).unwrap()).unwrap();
    Fx { _dir: dir, _issuer: tx, service, chain, key, id: spiffe.to_string(), unrecorded }
}

impl Fx {
    fn form(&self, jti: &str, iat: Timestamp, ttl: i64) -> Form {
        let header = json!({"alg": "ES256", "x5c": self.chain});
        let t = iat.as_second();
        let claims =
            json!({"iss": self.id, "sub": self.id, "aud": ENDPOINT, "jti": jti, "iat": t, "exp": t + ttl});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        let assertion = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        let body = format!(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}&scope=read%40crm%3Acontacts%2F1&resource=crm"
        );
        Form::parse(body.as_bytes()).unwrap()
    }
}

#[tokio::test]
async fn an_assertion_stays_spent_while_any_verifier_would_still_accept_it() {
    let now = Timestamp::now();
    let f = fx(now);
    let form = f.form("j-1", now, 60);
    let issued = f.service.token(&form, None, now).await.unwrap();
    assert_eq!(issued.scope, "read@crm:contacts/1");
    // Just after its exp, the clock-skew leeway still lets it verify: it must still count as spent.
    let later = now.checked_add(SignedDuration::from_secs(75)).unwrap();
    let again = f.service.token(&form, None, later).await.unwrap_err();
    assert_eq!(again.code, ErrorCode::InvalidClient, "{again}");
    assert!(again.description.contains("used before"), "{again}");
    // Once the leeway has passed too, it is refused as expired, not remembered forever.
    let much_later = now.checked_add(SignedDuration::from_secs(95)).unwrap();
    let expired = f.service.token(&form, None, much_later).await.unwrap_err();
    assert!(expired.description.contains("expired"), "{expired}");
    // A new assertion from the same certificate works.
    assert!(f.service.token(&f.form("j-2", now, 60), None, now).await.is_ok());
}

impl Fx {
    fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|c| STANDARD.decode(c).unwrap()).collect()
    }

    /// A `tls_client_auth` request: no assertion, `client_id`.
    fn mtls_form(&self, client_id: &str) -> Form {
        let id: String = client_id.replace(':', "%3A").replace('/', "%2F");
        let body = format!(
            "grant_type=client_credentials&client_id={id}&scope=read%40crm%3Acontacts%2F1&resource=crm"
        );
        Form::parse(body.as_bytes()).unwrap()
    }
}

fn cnf(token: &str) -> serde_json::Value {
    crate::identity::verify::decode_unverified(token).unwrap().1["cnf"].clone()
}

#[tokio::test]
async fn mutual_tls_authenticates_with_the_recorded_certificate_and_binds_the_token_to_it() {
    let now = Timestamp::now();
    let f = fx(now);
    let chain = f.chain_der();
    let thumbprint = crate::identity::access::thumbprint(&chain[0]);
    // tls_client_auth: the certificate and client_id; the token is bound to the certificate.
    let issued = f.service.token(&f.mtls_form(&f.id), Some(&chain), now).await.unwrap();
    assert_eq!(cnf(&issued.access_token), json!({"x5t#S256": thumbprint}));
    // Repeatable: the handshake is the proof, nothing is spent.
    assert!(f.service.token(&f.mtls_form(&f.id), Some(&chain), now).await.is_ok());
    // client_id must name the certificate's agent, and a certificate must be shown.
    let other = f.id.replace("/bot", "/other");
    let e = f.service.token(&f.mtls_form(&other), Some(&chain), now).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidClient, "{e}");
    let e = f.service.token(&f.mtls_form(&f.id), None, now).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidClient, "{e}");
    // The CA's certificate for the same agent that the operator never recorded: refused.
    let e = f.service.token(&f.mtls_form(&f.id), Some(&f.unrecorded), now).await.unwrap_err();
    assert!(e.code == ErrorCode::InvalidClient && e.description.contains("not the agent's current"), "{e}");
    // An assertion beside the certificate: authenticated by the assertion, bound to the certificate.
    let issued = f.service.token(&f.form("j-m1", now, 60), Some(&chain), now).await.unwrap();
    assert_eq!(cnf(&issued.access_token), json!({"x5t#S256": thumbprint}));
    // ...but not beside a certificate the ledger does not stand by.
    let e = f.service.token(&f.form("j-m2", now, 60), Some(&f.unrecorded), now).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidClient, "{e}");
    // Without a certificate, a bearer token.
    let issued = f.service.token(&f.form("j-m3", now, 60), None, now).await.unwrap();
    assert_eq!(cnf(&issued.access_token), serde_json::Value::Null);
}
