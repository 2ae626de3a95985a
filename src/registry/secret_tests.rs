use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::identity::TrustDomain;
use crate::identity::issuer::Issuer;
use crate::identity::jwt::{AgentClaims, Minter, SvidClaims};
use crate::identity::keys::{KeySet, RotationPolicy};
use crate::registry::ledger::{IssuedToken, Stored};

const MANAGER: &str = "agentiam-operator";
const UID: &str = "uid-1";

struct Fixture {
    issuer: Issuer,
    id: SpiffeId,
    record: AgentRecord,
    secret: Secret,
}

/// An agent `bot` with one recorded issuance (two audiences, and an X.509-SVID when `x509`), and the Secret
/// the operator writes for it.
fn fixture(x509: bool) -> Fixture {
    let now = Timestamp::now();
    let td = TrustDomain::parse("example.org").unwrap();
    let issuer = Issuer {
        keys: KeySet::generate(now).unwrap(),
        ca: Arc::new(CertificateAuthority::generate(&td, SignedDuration::from_hours(24), now).unwrap()),
        issuer_url: "https://issuer.test".into(),
        trust_domain: td.clone(),
        policy: RotationPolicy::default(),
        sequence: 1,
    };
    let id = SpiffeId::for_agent(&td, "ns", "bot").unwrap();
    let mut minter = Minter::new(Arc::clone(issuer.keys.current()));
    let ttl = Duration::from_secs(600);
    let mut data = BTreeMap::new();
    let mut tokens = Vec::new();
    let auds: Vec<String> = vec!["https://crm".into(), "tickets".into()];
    for (aud, key) in token_keys(&auds) {
        let agent = AgentClaims { uid: UID, owner: "Team:t", trust_score: 500 };
        let claims = SvidClaims::new(&issuer.issuer_url, &id, &aud, agent, now, ttl).unwrap();
        tokens.push(IssuedToken { aud: aud.clone(), jti: claims.jti.clone() });
        data.insert(key, minter.mint(&claims).unwrap());
    }
    let mut serial = None;
    if x509 {
        let svid = issuer.ca.issue_svid(&id, SignedDuration::from_mins(10), now).unwrap();
        serial = Some(svid.serial_hex.clone());
        data.insert(SVID_PEM.into(), svid.chain_pem);
        data.insert(SVID_KEY_PEM.into(), svid.key_pem);
    }
    data.insert(BUNDLE_PEM.into(), issuer.ca.bundle_pem());
    let issued_at = Timestamp::from_second(now.as_second()).unwrap();
    let issuance = Issuance {
        key: format!("credential.issue:{UID}:{}", now.as_millisecond()),
        issued_at,
        expires_at: issued_at.checked_add(SignedDuration::from_secs(600)).unwrap(),
        ttl_secs: 600,
        key_id: issuer.keys.current().kid().to_owned(),
        fingerprint: Some("fp".into()),
        audiences: tokens.iter().map(|t| t.aud.clone()).collect(),
        tokens,
        x509,
        x509_serial: serial,
        stored: Stored::Yes,
    };
    let facts = IssuedFacts::from_issuance(UID, &issuance);
    let secret = desired("ns", "bot", UID, MANAGER, &facts, data, None);
    let record = AgentRecord { issuances: vec![issuance], ..AgentRecord::default() };
    Fixture { issuer, id, record, secret }
}

impl Fixture {
    fn check(&self, secret: &Secret) -> Found {
        let verifier = self.issuer.verifier().unwrap();
        let published: Vec<&str> = self.issuer.keys.published().map(|k| k.kid()).collect();
        let expected = Expected {
            agent: "bot",
            uid: UID,
            spiffe_id: &self.id,
            manager: MANAGER,
            record: Some(&self.record),
            verifier: &verifier,
            published: &published,
            ca: &self.issuer.ca,
        };
        check(secret, &expected)
    }

    fn data(&self, key: &str) -> ByteString {
        self.secret.data.as_ref().unwrap()[key].clone()
    }
}

fn with_data(secret: &Secret, change: impl FnOnce(&mut BTreeMap<String, ByteString>)) -> Secret {
    let mut s = secret.clone();
    change(s.data.as_mut().unwrap());
    s
}

fn foreign(found: Found) -> String {
    match found {
        Found::Foreign(why) => why,
        Found::Issued(f) => panic!("a tampered Secret was vouched for: {f:?}"),
    }
}

#[test]
fn the_secret_the_operator_wrote_is_vouched_for_with_the_recorded_facts() {
    for x509 in [false, true] {
        let f = fixture(x509);
        let Found::Issued(facts) = f.check(&f.secret) else { panic!("{:?}", f.check(&f.secret)) };
        let issuance = &f.record.issuances[0];
        assert_eq!(
            (facts.expires_at, facts.issue_key.as_deref()),
            (Some(issuance.expires_at), Some(&*issuance.key))
        );
    }
}

#[test]
fn any_key_added_removed_or_swapped_is_foreign() {
    let f = fixture(false);
    let crm = "token-https___crm";
    // An extra token, and an SVID on an agent without x509: exactly the review's example.
    let extra = with_data(&f.secret, |d| {
        d.insert("token-evil".into(), f.data(crm));
    });
    assert!(foreign(f.check(&extra)).contains("data keys"));
    let svid = with_data(&f.secret, |d| {
        d.insert(SVID_PEM.into(), ByteString(b"x".to_vec()));
        d.insert(SVID_KEY_PEM.into(), ByteString(b"y".to_vec()));
    });
    assert!(foreign(f.check(&svid)).contains("data keys"));
    let missing = with_data(&f.secret, |d| {
        d.remove("token-tickets");
    });
    assert!(foreign(f.check(&missing)).contains("data keys"));
    // A genuine token of the operator's, moved to another audience's key.
    let swapped = with_data(&f.secret, |d| {
        d.insert("token-tickets".into(), f.data(crm));
    });
    assert!(foreign(f.check(&swapped)).contains("token"));
    // A genuine token of another issuance (another fixture's keys do not verify here at all).
    let other = fixture(false);
    let alien = with_data(&f.secret, |d| {
        d.insert(crm.into(), other.data(crm));
    });
    assert!(foreign(f.check(&alien)).contains("token"));
    let bundle = with_data(&f.secret, |d| {
        d.insert(BUNDLE_PEM.into(), other.data(BUNDLE_PEM));
    });
    assert!(foreign(f.check(&bundle)).contains("bundle"));
}

#[test]
fn a_certificate_or_key_that_is_not_the_recorded_one_is_foreign() {
    let f = fixture(true);
    let other = fixture(true);
    for key in [SVID_PEM, SVID_KEY_PEM] {
        let s = with_data(&f.secret, |d| {
            d.insert(key.into(), other.data(key));
        });
        assert!(foreign(f.check(&s)).contains("svid"), "{key}");
    }
}

#[test]
fn plausible_annotations_prove_nothing() {
    let f = fixture(false);
    // A year ahead: the review's example. Status must never report it.
    let mut s = f.secret.clone();
    s.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(crate::registry::credentials::ANNOTATION_EXPIRES_AT.into(), "2099-01-01T00:00:00Z".into());
    assert!(foreign(f.check(&s)).contains("annotations"));
    // An issue key the operator never recorded for this agent.
    let mut s = f.secret.clone();
    s.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(crate::registry::credentials::ANNOTATION_ISSUE_KEY.into(), "credential.issue:uid-1:1".into());
    assert!(foreign(f.check(&s)).contains("no issuance"));
    // Nothing recorded at all (a Secret written before the operator's log, or by someone else).
    let verifier = f.issuer.verifier().unwrap();
    let e = Expected {
        agent: "bot",
        uid: UID,
        spiffe_id: &f.id,
        manager: MANAGER,
        record: None,
        verifier: &verifier,
        published: &[],
        ca: &f.issuer.ca,
    };
    assert!(matches!(check(&f.secret, &e), Found::Foreign(_)));
}

#[test]
fn metadata_outside_agentiam_is_kept_and_ours_is_checked() {
    let f = fixture(false);
    let mut s = f.secret.clone();
    s.metadata.labels.as_mut().unwrap().insert("backup".into(), "daily".into());
    s.metadata.annotations.as_mut().unwrap().insert("reloader/match".into(), "true".into());
    assert!(matches!(f.check(&s), Found::Issued(_)), "foreign labels and annotations are no tampering");
    let facts = IssuedFacts::from_issuance(UID, &f.record.issuances[0]);
    let rewritten = desired("ns", "bot", UID, MANAGER, &facts, BTreeMap::new(), Some(&s));
    assert_eq!(rewritten.metadata.labels.as_ref().unwrap()["backup"], "daily");
    assert_eq!(rewritten.metadata.annotations.as_ref().unwrap()["reloader/match"], "true");

    let mut s = f.secret.clone();
    s.metadata.labels.as_mut().unwrap().remove(AGENT_LABEL);
    assert!(foreign(f.check(&s)).contains("labels"));
    let mut s = f.secret.clone();
    s.metadata.owner_references = None;
    assert!(foreign(f.check(&s)).contains("owner"));
    let mut s = f.secret.clone();
    s.type_ = Some("kubernetes.io/service-account-token".into());
    assert!(foreign(f.check(&s)).contains("type"));
    assert!(needs_recreate(&s));
}
