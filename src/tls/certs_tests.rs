use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;

fn t0() -> Timestamp {
    Timestamp::from_second(1_750_000_000).unwrap()
}

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

fn sans() -> Vec<San> {
    let mut s = San::for_service("agentiam-webhook", "agentiam-system");
    s.push(San::Ip("127.0.0.1".parse().unwrap()));
    s
}

fn generated() -> ServingCerts {
    ServingCerts::generate(&sans(), &RenewalPolicy::default(), t0()).unwrap()
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    Pem::iter_from_buffer(pem.as_bytes()).map(|b| CertificateDer::from(b.unwrap().contents)).collect()
}

/// Verifies the served leaf against the bundle with rustls-webpki (independent of rcgen), as a TLS client
/// connecting to `name` at `at` would.
fn verify(leaf: &ServingCerts, bundle_pem: &str, name: &str, at: Timestamp) -> Result<(), webpki::Error> {
    let roots = ders(bundle_pem);
    let anchors: Vec<_> = roots.iter().map(|r| webpki::anchor_from_trusted_cert(r).unwrap()).collect();
    let chain: Vec<CertificateDer<'static>> =
        leaf.chain_der().iter().map(|d| CertificateDer::from(d.clone())).collect();
    let (ee, rest) = chain.split_first().unwrap();
    let ee = webpki::EndEntityCert::try_from(ee)?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.as_second().try_into().unwrap()));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        rest,
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )?;
    ee.verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap())
}

#[test]
fn a_generated_leaf_verifies_for_every_san_and_needs_nothing() {
    let c = generated();
    let bundle = c.ca_bundle_pem();
    assert_eq!(ders(&bundle).len(), 1);
    for name in [
        "agentiam-webhook",
        "agentiam-webhook.agentiam-system",
        "agentiam-webhook.agentiam-system.svc",
        "agentiam-webhook.agentiam-system.svc.cluster.local",
        "127.0.0.1",
    ] {
        verify(&c, &bundle, name, t0()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    assert!(verify(&c, &bundle, "evil.example", t0()).is_err());
    assert_eq!(plan(&c, true, &sans(), t0()), Plan::Keep);
    let not_after = c.leaf_not_after().unwrap();
    assert_eq!(not_after, t0().checked_add(DEFAULT_LEAF_VALIDITY).unwrap());
}

#[test]
fn secret_data_round_trips_and_debug_hides_keys() {
    let c = generated();
    let data = c.to_secret_data();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        [SECRET_CA_CERT, SECRET_CA_KEY, SECRET_TLS_CERT, SECRET_TLS_KEY]
    );
    let back = ServingCerts::from_secret_data(&data).unwrap();
    assert!(back.same_leaf(&c));
    assert_eq!(back.ca_bundle_pem(), c.ca_bundle_pem());
    assert_eq!(back.leaf_key_pem(), c.leaf_key_pem());
    assert_eq!(plan(&back, true, &sans(), t0()), Plan::Keep);

    let debug = format!("{c:?}");
    assert!(!debug.contains("PRIVATE KEY") && debug.contains("<redacted>"), "{debug}");
}

#[test]
fn broken_secrets_are_refused_without_showing_keys() {
    let data = generated().to_secret_data();
    let mut missing = data.clone();
    missing.remove(SECRET_TLS_KEY);
    assert!(matches!(ServingCerts::from_secret_data(&missing), Err(TlsError::MissingEntry(SECRET_TLS_KEY))));

    let mut swapped = data.clone();
    let ca_key = swapped.get(SECRET_CA_KEY).unwrap().clone();
    swapped.insert(SECRET_TLS_KEY.into(), ca_key);
    let err = ServingCerts::from_secret_data(&swapped).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch(SECRET_TLS_KEY)), "{err}");
    assert!(!err.to_string().contains("BEGIN"));

    let mut garbage = data;
    garbage.insert(SECRET_CA_CERT.into(), b"not pem".to_vec());
    assert!(matches!(ServingCerts::from_secret_data(&garbage), Err(TlsError::BadEntry(SECRET_CA_CERT))));
}

#[test]
fn a_secret_without_ca_key_is_served_but_recreated_when_self_managed() {
    let mut data = generated().to_secret_data();
    data.remove(SECRET_CA_KEY);
    let external = ServingCerts::from_secret_data(&data).unwrap();
    assert!(matches!(plan(&external, true, &sans(), t0()), Plan::Create(_)));
}

#[test]
fn the_leaf_is_renewed_at_two_thirds_of_its_lifetime() {
    let c = generated();
    let policy = RenewalPolicy::default();
    let just_before = t0().checked_add(days(20)).unwrap().checked_sub(SignedDuration::from_mins(10)).unwrap();
    assert_eq!(plan(&c, true, &sans(), just_before), Plan::Keep);
    let due = t0().checked_add(days(20)).unwrap();
    let step = plan(&c, true, &sans(), due);
    assert!(matches!(step, Plan::IssueLeaf(_)), "{step:?}");
    let renewed = c.next(step, &sans(), &policy, due).unwrap().unwrap();
    assert!(!renewed.same_leaf(&c));
    assert_eq!(renewed.ca_bundle_pem(), c.ca_bundle_pem(), "a leaf renewal keeps the CA");
    assert_eq!(plan(&renewed, true, &sans(), due), Plan::Keep);
    verify(&renewed, &renewed.ca_bundle_pem(), "127.0.0.1", due).unwrap();
}

#[test]
fn changed_sans_foreign_or_expired_leaves_and_expired_cas_are_replaced() {
    let c = generated();
    let other = vec![San::Dns("webhook.other.svc".into())];
    assert_eq!(plan(&c, true, &other, t0()), Plan::IssueLeaf("the subject alternative names changed"));
    let uppercase: Vec<San> = sans()
        .into_iter()
        .map(|s| if let San::Dns(d) = s { San::Dns(d.to_uppercase()) } else { s })
        .collect();
    assert_eq!(plan(&c, true, &uppercase, t0()), Plan::Keep, "DNS names compare case-insensitively");

    let mut foreign = c.clone();
    foreign.chain = generated().chain;
    assert!(matches!(plan(&foreign, true, &sans(), t0()), Plan::IssueLeaf(_)));

    let late = t0().checked_add(days(31)).unwrap();
    assert!(matches!(plan(&c, true, &sans(), late), Plan::IssueLeaf(_)));
    let dead = t0().checked_add(days(366)).unwrap();
    assert!(matches!(plan(&c, true, &sans(), dead), Plan::Create(_)));
    let fresh =
        c.next(plan(&c, true, &sans(), dead), &sans(), &RenewalPolicy::default(), dead).unwrap().unwrap();
    assert_eq!(plan(&fresh, true, &sans(), dead), Plan::Keep);
    verify(&fresh, &fresh.ca_bundle_pem(), "127.0.0.1", dead).unwrap();
}

/// Runs the operator's renewal loop over two simulated years, one check a day, and checks the promise the
/// state machine exists for: at every moment, the bundle the API server trusts verifies both the leaf
/// served before the step and the leaf served after it.
#[test]
fn ca_rotation_keeps_both_leaves_trusted_across_every_step() {
    let policy = RenewalPolicy::default();
    let mut state = generated();
    let mut steps = Vec::new();
    for day in 1..=730 {
        let now = t0().checked_add(days(day)).unwrap();
        let step = plan(&state, true, &sans(), now);
        let Some(next) = state.next(step, &sans(), &policy, now).unwrap() else { continue };
        steps.push(step);
        // The operator publishes next's bundle, then swaps to next's leaf: both must verify under it.
        verify(&state, &next.ca_bundle_pem(), "127.0.0.1", now)
            .unwrap_or_else(|e| panic!("day {day}: {e:?}"));
        verify(&next, &next.ca_bundle_pem(), "127.0.0.1", now).unwrap_or_else(|e| panic!("day {day}: {e:?}"));
        assert!(!matches!(step, Plan::Create(_)), "day {day}: a healthy state never starts over");
        state = next;
    }
    let rotation = steps.iter().position(|s| *s == Plan::RenewCa).expect("the CA was renewed");
    assert_eq!(steps.get(rotation + 1), Some(&Plan::IssueLeaf("moving to the renewed serving CA")));
    assert_eq!(steps.get(rotation + 2), Some(&Plan::DropRetiredCas));
    assert!(steps.iter().filter(|s| **s == Plan::RenewCa).count() >= 2, "{steps:?}");
    assert_eq!(ders(&state.ca_bundle_pem()).len(), 1);
}

#[test]
fn retired_cas_stay_until_the_new_leaf_is_served() {
    let policy = RenewalPolicy::default();
    let renew_ca = t0().checked_add(days(244)).unwrap();
    // Keep the leaf fresh so the CA is what is due.
    let c = generated();
    let c = c.next(Plan::IssueLeaf("test"), &sans(), &policy, renew_ca).unwrap().unwrap();
    assert_eq!(plan(&c, true, &sans(), renew_ca), Plan::RenewCa);
    let overlap = c.next(Plan::RenewCa, &sans(), &policy, renew_ca).unwrap().unwrap();
    assert!(overlap.same_leaf(&c), "the leaf keeps being served while the new CA is published");
    assert_eq!(ders(&overlap.ca_bundle_pem()).len(), 2);
    let moved =
        overlap.next(plan(&overlap, true, &sans(), renew_ca), &sans(), &policy, renew_ca).unwrap().unwrap();
    assert_eq!(plan(&moved, false, &sans(), renew_ca), Plan::Keep, "not served yet: keep the old CA");
    assert_eq!(plan(&moved, true, &sans(), renew_ca), Plan::DropRetiredCas);
}

#[test]
fn policies_that_would_let_a_leaf_outlive_its_ca_are_refused() {
    let bad = RenewalPolicy { ca_validity: days(30), leaf_validity: days(11) };
    assert!(matches!(ServingCerts::generate(&sans(), &bad, t0()), Err(TlsError::InvalidPolicy)));
    let zero = RenewalPolicy { ca_validity: days(30), leaf_validity: SignedDuration::ZERO };
    assert!(matches!(zero.check(), Err(TlsError::InvalidPolicy)));
    assert!(matches!(ServingCerts::generate(&[], &RenewalPolicy::default(), t0()), Err(TlsError::NoSans)));
}

#[test]
fn san_parsing() {
    assert_eq!(San::parse("127.0.0.1"), San::Ip("127.0.0.1".parse().unwrap()));
    assert_eq!(San::parse("[::1]"), San::Ip("::1".parse().unwrap()));
    assert_eq!(San::parse("Webhook.NS.svc"), San::Dns("webhook.ns.svc".into()));
    assert_eq!(San::for_service("w", "ns").len(), 4);
}

#[test]
fn short_lifetimes_are_not_renewed_at_once() {
    // The backdate shrinks with the lifetime; a fixed one would put a 30 s leaf past 2/3 when issued.
    let policy = RenewalPolicy {
        ca_validity: SignedDuration::from_secs(90),
        leaf_validity: SignedDuration::from_secs(30),
    };
    let c = ServingCerts::generate(&sans(), &policy, t0()).unwrap();
    let at = |s: i64| t0().checked_add(SignedDuration::from_secs(s)).unwrap();
    assert_eq!(plan(&c, true, &sans(), t0()), Plan::Keep);
    assert_eq!(plan(&c, true, &sans(), at(18)), Plan::Keep);
    assert!(matches!(plan(&c, true, &sans(), at(20)), Plan::IssueLeaf(_)));
}
