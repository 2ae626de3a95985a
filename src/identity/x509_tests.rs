use std::path::Path;
use std::process::Command;

use rcgen::{CertifiedIssuer, RsaKeySize};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::oid_registry;

use super::*;

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn agent(trust_domain: &str, name: &str) -> SpiffeId {
    SpiffeId::for_agent(&td(trust_domain), "payments", name).unwrap()
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes()).map(|block| block.unwrap().contents).collect()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn generated(trust_domain: &str) -> CertificateAuthority {
    CertificateAuthority::generate(&td(trust_domain), DEFAULT_CA_VALIDITY, Timestamp::now()).unwrap()
}

/// Verifies the SVID chain against `bundle_pem` with rustls-webpki, an implementation independent of rcgen.
fn webpki_verify(
    svid: &X509Svid,
    bundle_pem: &str,
    at: Timestamp,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let chain: Vec<CertificateDer<'static>> =
        ders(&svid.chain_pem).into_iter().map(CertificateDer::from).collect();
    let roots: Vec<CertificateDer<'static>> =
        ders(bundle_pem).into_iter().map(CertificateDer::from).collect();
    let anchors: Vec<_> = roots.iter().map(|root| webpki::anchor_from_trusted_cert(root).unwrap()).collect();
    let (leaf, intermediates) = chain.split_first().unwrap();
    let leaf = webpki::EndEntityCert::try_from(leaf)?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.as_second().try_into().unwrap()));
    leaf.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, intermediates, time, usage, None, None)
        .map(|_| ())
}

fn webpki_verify_both_usages(svid: &X509Svid, bundle_pem: &str, at: Timestamp) {
    webpki_verify(svid, bundle_pem, at, webpki::KeyUsage::client_auth()).unwrap();
    webpki_verify(svid, bundle_pem, at, webpki::KeyUsage::server_auth()).unwrap();
}

/// Runs `openssl verify` at the current time. A missing openssl binary fails the test (the expect).
fn openssl_verify(dir: &Path, bundle_pem: &str, svid: &X509Svid, purpose: Option<&str>) -> (bool, String) {
    let chain = ders(&svid.chain_pem);
    let (leaf, intermediates) = chain.split_first().unwrap();
    std::fs::write(dir.join("ca.pem"), bundle_pem).unwrap();
    std::fs::write(dir.join("leaf.pem"), pem_encode("CERTIFICATE", leaf)).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(dir.join("ca.pem"));
    if !intermediates.is_empty() {
        let pem: String = intermediates.iter().map(|der| pem_encode("CERTIFICATE", der)).collect();
        std::fs::write(dir.join("untrusted.pem"), pem).unwrap();
        cmd.arg("-untrusted").arg(dir.join("untrusted.pem"));
    }
    if let Some(purpose) = purpose {
        cmd.arg("-purpose").arg(purpose);
    }
    let out = cmd.arg(dir.join("leaf.pem")).output().expect("openssl must be installed to run this test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A CA made the way a user would bring one, built with rcgen outside the code under test.
fn user_ca(
    key: &KeyPair,
    spiffe: Option<&str>,
    key_usages: Vec<KeyUsagePurpose>,
    is_ca: IsCa,
    not_before: Timestamp,
    not_after: Timestamp,
) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CountryName, "DE");
    params.distinguished_name.push(DnType::OrganizationName, "Example Corp");
    params.distinguished_name.push(DnType::CommonName, "Example Agents Root");
    params.subject_alt_names = spiffe.map(|uri| SanType::URI(uri.try_into().unwrap())).into_iter().collect();
    params.key_usages = key_usages;
    params.is_ca = is_ca;
    params.not_before = to_offset(not_before).unwrap();
    params.not_after = to_offset(not_after).unwrap();
    params.self_signed(key).unwrap().pem()
}

fn ca_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
}

fn unconstrained() -> IsCa {
    IsCa::Ca(BasicConstraints::Unconstrained)
}

#[test]
fn generated_ca_is_a_spiffe_signing_certificate() {
    let now = Timestamp::now();
    let ca = CertificateAuthority::generate(&td("cluster.local"), DEFAULT_CA_VALIDITY, now).unwrap();
    let cert = parse(ca.cert_der());

    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    let sans = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert_eq!(sans, &vec![GeneralName::URI("spiffe://cluster.local")]);
    assert_eq!(cert.subject().to_string(), "O=agentiam, CN=agentiam cluster.local CA");
    assert!(cert.verify_signature(None).is_ok(), "self-signed");
    assert_eq!(cert.raw_serial().len(), 17, "128-bit positive serial plus the sign byte");

    let start = now.as_second() - BACKDATE.as_secs();
    assert_eq!(cert.validity().not_before.timestamp(), start);
    assert_eq!(cert.validity().not_after.timestamp(), now.as_second() + DEFAULT_CA_VALIDITY.as_secs());
    assert_eq!(ca.not_after().as_second(), now.as_second() + DEFAULT_CA_VALIDITY.as_secs());
    assert_eq!(ca.bundle_pem(), ca.cert_pem());
}

#[test]
fn generate_refuses_a_validity_shorter_than_one_svid() {
    for validity in [SignedDuration::ZERO, SignedDuration::from_secs(-5), SignedDuration::from_mins(59)] {
        let err =
            CertificateAuthority::generate(&td("cluster.local"), validity, Timestamp::now()).unwrap_err();
        assert!(matches!(err, X509Error::InvalidCaValidity), "{validity:?}: {err}");
    }
    assert_eq!(X509Error::InvalidCaValidity.to_string(), "CA validity must be at least 1h");
}

#[test]
fn leaf_has_the_x509_svid_profile() {
    let ca = generated("cluster.local");
    let id = agent("cluster.local", "refund-bot");
    let svid = ca.issue_svid(&id, SignedDuration::from_mins(10), Timestamp::now()).unwrap();
    let der = ders(&svid.cert_pem).remove(0);
    let cert = parse(&der);

    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/payments/agent/refund-bot")]
    );
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign() && !ku.value.key_encipherment());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any && eku.other.is_empty());
    assert_eq!(cert.subject().to_string(), "O=agentiam");
    assert_eq!(cert.issuer().as_raw(), parse(ca.cert_der()).subject().as_raw());

    // The authority key identifier names the CA's subject key identifier, so path builders find it.
    let ca_cert = parse(ca.cert_der());
    let ski = ca_cert.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
        _ => None,
    });
    let aki = cert.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|k| k.0)
        }
        _ => None,
    });
    assert!(ski.is_some() && aki == ski);

    // A P-256 key, PKCS#8 PEM, matching the certificate.
    assert_eq!(
        cert.public_key().algorithm.parameters.as_ref().unwrap().as_oid().unwrap(),
        oid_registry::OID_EC_P256
    );
    assert!(svid.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let key = KeyPair::from_pem(&svid.key_pem).unwrap();
    assert_eq!(key.public_key_raw(), cert.public_key().subject_public_key.data.as_ref());

    // The serial is 128 bits, positive, and reported exactly.
    assert_eq!(svid.serial_hex.len(), 32);
    assert_eq!(hex::encode(cert.serial.to_bytes_be()), svid.serial_hex);
    assert_eq!(cert.validity().not_before.timestamp(), svid.not_before.as_second());
    assert_eq!(cert.validity().not_after.timestamp(), svid.not_after.as_second());

    // A generated CA is the root: the chain is the leaf alone and the bundle is the CA.
    assert_eq!(svid.chain_pem, svid.cert_pem);
    assert_eq!(svid.bundle_pem, ca.cert_pem());
}

#[test]
fn leaf_verifies_with_webpki_for_client_and_server_auth() {
    let ca = generated("cluster.local");
    let now = Timestamp::now();
    let svid = ca.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), now).unwrap();
    webpki_verify_both_usages(&svid, &svid.bundle_pem, now);
    // The encoded window is the one reported.
    let late = svid.not_after + SignedDuration::from_secs(1);
    assert!(matches!(
        webpki_verify(&svid, &svid.bundle_pem, late, webpki::KeyUsage::client_auth()),
        Err(webpki::Error::CertExpired { .. })
    ));
}

#[test]
fn leaf_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = generated("cluster.local");
    let svid =
        ca.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), Timestamp::now()).unwrap();
    for purpose in [None, Some("sslclient"), Some("sslserver")] {
        let (ok, out) = openssl_verify(dir.path(), &svid.bundle_pem, &svid, purpose);
        assert!(ok && out.contains("OK"), "openssl verify {purpose:?}: {out}");
    }
    std::fs::write(dir.path().join("key.pem"), &svid.key_pem).unwrap();
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(dir.path().join("key.pem"))
        .output()
        .expect("openssl must be installed to run this test");
    assert!(out.status.success(), "openssl cannot read the key: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn another_ca_does_not_verify_the_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let ca = generated("cluster.local");
    let other = generated("cluster.local");
    let now = Timestamp::now();
    let svid = ca.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), now).unwrap();
    let foreign = generated("other.org");
    // A CA of the same trust domain has the same subject name, so the signature is what fails.
    let err = webpki_verify(&svid, &other.bundle_pem(), now, webpki::KeyUsage::client_auth()).unwrap_err();
    assert!(matches!(err, webpki::Error::InvalidSignatureForPublicKey), "{err:?}");
    let err = webpki_verify(&svid, &foreign.bundle_pem(), now, webpki::KeyUsage::client_auth()).unwrap_err();
    assert!(matches!(err, webpki::Error::UnknownIssuer), "{err:?}");
    for bundle in [other.bundle_pem(), foreign.bundle_pem()] {
        let (ok, out) = openssl_verify(dir.path(), &bundle, &svid, None);
        assert!(!ok, "openssl accepted a leaf from another CA: {out}");
    }
}

#[test]
fn lifetime_is_at_most_one_hour_whatever_is_asked() {
    let ca = generated("cluster.local");
    let now = Timestamp::now();
    let start = Timestamp::from_second(now.as_second() - BACKDATE.as_secs()).unwrap();
    let id = agent("cluster.local", "a");

    let short = ca.issue_svid(&id, SignedDuration::from_mins(10), now).unwrap();
    assert_eq!(short.not_before, start);
    assert_eq!(short.not_after.as_second(), now.as_second() + 600);

    for ttl in [MAX_SVID_TTL, SignedDuration::from_hours(24), SignedDuration::from_hours(24 * 3650)] {
        let svid = ca.issue_svid(&id, ttl, now).unwrap();
        assert!(svid.not_after.duration_since(svid.not_before) <= MAX_SVID_TTL, "{ttl:?}");
        assert!(svid.not_after <= now + MAX_SVID_TTL);
        let cert_der = ders(&svid.cert_pem).remove(0);
        let cert = parse(&cert_der);
        let window = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(window <= MAX_SVID_TTL.as_secs(), "{ttl:?}: {window}s");
    }
}

#[test]
fn zero_or_negative_ttl_is_refused() {
    let ca = generated("cluster.local");
    let id = agent("cluster.local", "a");
    for ttl in [SignedDuration::ZERO, SignedDuration::from_secs(-1), SignedDuration::from_hours(-2)] {
        assert!(matches!(ca.issue_svid(&id, ttl, Timestamp::now()), Err(X509Error::InvalidTtl)), "{ttl:?}");
    }
}

#[test]
fn serials_are_distinct_and_full_length() {
    let ca = generated("cluster.local");
    let id = agent("cluster.local", "a");
    let serials: std::collections::BTreeSet<String> = (0..32)
        .map(|_| ca.issue_svid(&id, SignedDuration::from_mins(1), Timestamp::now()).unwrap().serial_hex)
        .collect();
    assert_eq!(serials.len(), 32);
    assert!(serials.iter().all(|s| s.len() == 32));
}

#[test]
fn ids_outside_the_trust_domain_or_without_a_path_are_refused() {
    let ca = generated("cluster.local");
    let ttl = SignedDuration::from_mins(5);
    let foreign = agent("other.org", "a");
    assert!(matches!(ca.issue_svid(&foreign, ttl, Timestamp::now()), Err(X509Error::ForeignSpiffeId { .. })));
    let root = SpiffeId::parse("spiffe://cluster.local").unwrap();
    assert!(matches!(ca.issue_svid(&root, ttl, Timestamp::now()), Err(X509Error::RootSpiffeId(_))));
}

#[test]
fn svids_never_outlive_the_ca() {
    let t0 = Timestamp::now();
    let ca = CertificateAuthority::generate(&td("cluster.local"), MAX_SVID_TTL, t0).unwrap();
    let id = agent("cluster.local", "a");
    let late = ca.issue_svid(&id, MAX_SVID_TTL, t0 + SignedDuration::from_mins(50)).unwrap();
    assert_eq!(late.not_after, ca.not_after());
    let expired = ca.issue_svid(&id, MAX_SVID_TTL, t0 + SignedDuration::from_hours(2));
    assert!(matches!(expired, Err(X509Error::CaExpired(_))));
}

#[test]
fn user_supplied_ca_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let cases = [
        ("P-384", KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()),
        ("RSA-2048", KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap()),
        ("P-256", KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()),
    ];
    for (name, key) in cases {
        let year = SignedDuration::from_hours(24 * 365);
        let cert_pem = user_ca(
            &key,
            Some("spiffe://cluster.local"),
            ca_usages(),
            unconstrained(),
            now - year,
            now + year,
        );
        let ca = CertificateAuthority::from_pem(&cert_pem, &key.serialize_pem(), &td("cluster.local"), now)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ders(&ca.cert_pem()), ders(&cert_pem), "{name}");
        let svid = ca.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), now).unwrap();
        let leaf_der = ders(&svid.cert_pem).remove(0);
        assert_eq!(parse(&leaf_der).issuer().as_raw(), parse(ca.cert_der()).subject().as_raw(), "{name}");
        webpki_verify_both_usages(&svid, &cert_pem, now);
        let (ok, out) = openssl_verify(dir.path(), &cert_pem, &svid, Some("sslclient"));
        assert!(ok, "{name}: {out}");
    }
}

#[test]
fn user_supplied_ca_without_spiffe_id_and_with_sec1_key_loads() {
    let now = Timestamp::now();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert_pem = user_ca(&key, None, ca_usages(), unconstrained(), now - MAX_SVID_TTL, now + MAX_SVID_TTL);
    // What `openssl ecparam -genkey` writes: a parameters block, then a SEC1 key.
    let sec1 = Command::new("openssl")
        .args(["ec", "-inform", "PEM", "-outform", "PEM"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(key.serialize_pem().as_bytes())?;
            child.wait_with_output()
        })
        .expect("openssl must be installed to run this test");
    let sec1 = String::from_utf8(sec1.stdout).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    let params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
    let ca = CertificateAuthority::from_pem(&cert_pem, &format!("{params}{sec1}"), &td("cluster.local"), now)
        .unwrap();
    assert!(ca.key_pem().starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    let svid = ca.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), now).unwrap();
    webpki_verify_both_usages(&svid, &svid.bundle_pem, now);
}

#[test]
fn user_supplied_intermediate_ships_in_the_chain_not_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let year = SignedDuration::from_hours(24 * 365);
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name.push(DnType::CommonName, "Example Root");
    root_params.is_ca = unconstrained();
    root_params.key_usages = ca_usages();
    root_params.not_before = to_offset(now - year).unwrap();
    root_params.not_after = to_offset(now + year * 5).unwrap();
    let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate().unwrap()).unwrap();

    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params.distinguished_name.push(DnType::CommonName, "Example Agents Intermediate");
    int_params.subject_alt_names = vec![SanType::URI("spiffe://cluster.local".try_into().unwrap())];
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = ca_usages();
    int_params.use_authority_key_identifier_extension = true;
    int_params.not_before = to_offset(now - year).unwrap();
    int_params.not_after = to_offset(now + year).unwrap();
    let int = int_params.signed_by(&int_key, &root).unwrap();

    let chain_pem = format!("{}{}", int.pem(), root.pem());
    let ca = CertificateAuthority::from_pem(&chain_pem, &int_key.serialize_pem(), &td("cluster.local"), now)
        .unwrap();
    assert_eq!(ca.not_after().as_second(), (now + year).as_second(), "the earliest expiry governs");
    let svid = ca.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), now).unwrap();
    assert_eq!(ders(&svid.chain_pem).len(), 2);
    assert_eq!(ders(&svid.chain_pem).get(1), Some(&int.der().to_vec()));
    assert_eq!(ders(&svid.bundle_pem), vec![root.der().to_vec()]);
    webpki_verify_both_usages(&svid, &svid.bundle_pem, now);
    let (ok, out) = openssl_verify(dir.path(), &svid.bundle_pem, &svid, None);
    assert!(ok, "{out}");

    // Without its root, or in the wrong order, the chain is refused.
    let alone =
        CertificateAuthority::from_pem(&int.pem(), &int_key.serialize_pem(), &td("cluster.local"), now);
    assert!(matches!(alone, Err(X509Error::NoRoot)), "{alone:?}");
    let reversed = format!("{}{}", root.pem(), int.pem());
    let reversed =
        CertificateAuthority::from_pem(&reversed, &int_key.serialize_pem(), &td("cluster.local"), now);
    assert!(matches!(reversed, Err(X509Error::BrokenChain(0))), "{reversed:?}");
}

#[test]
fn unusable_user_supplied_cas_are_refused_with_clear_errors() {
    let now = Timestamp::now();
    let day = SignedDuration::from_hours(24);
    let key = KeyPair::generate().unwrap();
    let key_pem = key.serialize_pem();
    let td_uri = Some("spiffe://cluster.local");
    let load = |cert_pem: &str, key_pem: &str| {
        CertificateAuthority::from_pem(cert_pem, key_pem, &td("cluster.local"), now)
    };

    let leaf = user_ca(
        &key,
        td_uri,
        vec![KeyUsagePurpose::DigitalSignature],
        IsCa::ExplicitNoCa,
        now - day,
        now + day,
    );
    let err = load(&leaf, &key_pem).unwrap_err();
    assert!(matches!(err, X509Error::NotACa(0)), "{err}");
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
    let no_bc = user_ca(&key, td_uri, ca_usages(), IsCa::NoCa, now - day, now + day);
    assert!(matches!(load(&no_bc, &key_pem), Err(X509Error::NotACa(0))));

    let good = user_ca(&key, td_uri, ca_usages(), unconstrained(), now - day, now + day);
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let err = load(&good, &other_key).unwrap_err();
    assert!(matches!(err, X509Error::KeyMismatch), "{err}");
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap().serialize_pem();
    assert!(matches!(load(&good, &rsa), Err(X509Error::KeyMismatch)));

    let expired = user_ca(&key, td_uri, ca_usages(), unconstrained(), now - day * 400, now - day);
    let err = load(&expired, &key_pem).unwrap_err();
    assert!(matches!(err, X509Error::CaExpired(_)), "{err}");
    assert!(err.to_string().starts_with("CA certificate expired at "), "{err}");
    let future = user_ca(&key, td_uri, ca_usages(), unconstrained(), now + day, now + day * 2);
    assert!(matches!(load(&future, &key_pem), Err(X509Error::CaNotYetValid(_))));

    let foreign =
        user_ca(&key, Some("spiffe://other.org"), ca_usages(), unconstrained(), now - day, now + day);
    let err = load(&foreign, &key_pem).unwrap_err();
    assert!(matches!(err, X509Error::CaForeignTrustDomain { .. }), "{err}");
    assert_eq!(err.to_string(), "CA certificate belongs to trust domain other.org, not cluster.local");
    let with_path =
        user_ca(&key, Some("spiffe://cluster.local/ca"), ca_usages(), unconstrained(), now - day, now + day);
    assert!(matches!(load(&with_path, &key_pem), Err(X509Error::CaSpiffeId { index: 0, .. })));

    let crl_only =
        user_ca(&key, td_uri, vec![KeyUsagePurpose::CrlSign], unconstrained(), now - day, now + day);
    assert!(matches!(load(&crl_only, &key_pem), Err(X509Error::MissingCertSign(0))));
    let no_ku = user_ca(&key, td_uri, vec![], unconstrained(), now - day, now + day);
    assert!(matches!(load(&no_ku, &key_pem), Err(X509Error::MissingCertSign(0))));

    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_ca = user_ca(&ed, td_uri, ca_usages(), unconstrained(), now - day, now + day);
    let err = load(&ed_ca, &ed.serialize_pem()).unwrap_err();
    assert!(matches!(err, X509Error::UnsupportedKey(ref k) if k == "Ed25519"), "{err}");
}

#[test]
fn malformed_pem_is_refused_without_echoing_it() {
    let now = Timestamp::now();
    let ca = generated("cluster.local");
    let load = |cert_pem: &str, key_pem: &str| {
        CertificateAuthority::from_pem(cert_pem, key_pem, &td("cluster.local"), now)
    };

    assert!(matches!(load("", ca.key_pem()), Err(X509Error::CertificatePem(_))));
    assert!(matches!(load(ca.key_pem(), ca.key_pem()), Err(X509Error::CertificatePem(_))));
    let junk_cert = pem_encode("CERTIFICATE", b"not der");
    assert!(matches!(load(&junk_cert, ca.key_pem()), Err(X509Error::CertificateParse(0))));

    let encrypted = pem_encode("ENCRYPTED PRIVATE KEY", b"secret-bytes");
    assert!(matches!(load(&ca.cert_pem(), &encrypted), Err(X509Error::KeyPem(_))));
    assert!(matches!(load(&ca.cert_pem(), ""), Err(X509Error::KeyPem(_))));
    let two = format!("{}{}", ca.key_pem(), ca.key_pem());
    assert!(matches!(load(&ca.cert_pem(), &two), Err(X509Error::KeyPem(_))));
    let junk_key = pem_encode("PRIVATE KEY", b"secret-bytes-that-are-not-a-key");
    let err = load(&ca.cert_pem(), &junk_key).unwrap_err();
    assert!(matches!(err, X509Error::KeyParse), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("c2VjcmV0") && !shown.contains("secret-bytes"), "{shown}");

    // A mismatched real key is not echoed either.
    let other = generated("cluster.local");
    let err = load(&ca.cert_pem(), other.key_pem()).unwrap_err();
    let body = other.key_pem().lines().nth(1).unwrap();
    assert!(!format!("{err} {err:?}").contains(body));
}

#[test]
fn secret_data_round_trip() {
    let now = Timestamp::now();
    let ca = generated("cluster.local");
    let data = ca.to_secret_data();
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["ca.crt", "ca.key"]);
    let loaded = CertificateAuthority::from_secret_data(&data, &td("cluster.local"), now).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());
    assert_eq!(loaded.not_after(), ca.not_after());
    // Leaves from the reloaded CA verify against the original CA certificate.
    let svid = loaded.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), now).unwrap();
    webpki_verify_both_usages(&svid, &ca.cert_pem(), now);

    let other_td = CertificateAuthority::from_secret_data(&data, &td("other.org"), now);
    assert!(matches!(other_td, Err(X509Error::CaForeignTrustDomain { .. })));
    let mut missing = data.clone();
    missing.remove(SECRET_CA_KEY);
    let err = CertificateAuthority::from_secret_data(&missing, &td("cluster.local"), now).unwrap_err();
    assert_eq!(err.to_string(), "CA Secret has no \"ca.key\" entry");
    let mut binary = data;
    binary.insert(SECRET_CA_CERT.to_owned(), vec![0xff, 0xfe]);
    let err = CertificateAuthority::from_secret_data(&binary, &td("cluster.local"), now).unwrap_err();
    assert!(matches!(err, X509Error::SecretNotUtf8("ca.crt")));
}

#[test]
fn debug_output_never_shows_keys() {
    let ca = generated("cluster.local");
    let svid =
        ca.issue_svid(&agent("cluster.local", "a"), SignedDuration::from_mins(5), Timestamp::now()).unwrap();
    let shown = format!("{ca:?} {svid:?} {ca:#?} {svid:#?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let ca_body = ca.key_pem().lines().nth(1).unwrap();
    let leaf_body = svid.key_pem.lines().nth(1).unwrap();
    assert!(!shown.contains(ca_body) && !shown.contains(leaf_body));
    assert!(shown.contains("<redacted>") && shown.contains(&svid.serial_hex));
}
