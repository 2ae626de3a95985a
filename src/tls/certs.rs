//! Serving certificates managed by the operator itself, so that cert-manager is never required: the admission
//! webhook's (trusted by the API server) and the HTTP API's (trusted by agents, gateways and relying parties).
//!
//! Each listener has a dedicated self-signed serving CA of its own (never the SPIFFE CA: trusting the
//! agents' CA for server TLS would let any agent certificate impersonate the operator) that signs a
//! short-lived P-256 leaf. Both live in one Secret (see [`SECRET_CA_CERT`] and friends). Renewal is a small
//! state machine decided by the pure [`plan`], one step per check, so clients always trust the CA of the leaf
//! being served:
//!
//! 1. the leaf is re-issued from the current CA when it is past 2/3 of its lifetime;
//! 2. the CA is renewed at 2/3 of its lifetime: the new CA goes into the bundle *beside* the old one while
//!    the old leaf keeps being served;
//! 3. on the next check the leaf is re-issued from the new CA (the bundle published in step 2 trusts it);
//! 4. on the check after that, once the new leaf is in use, the old CA leaves the bundle.
//!
//! Pure: no Kubernetes client, and the clock is always a parameter. Key material never appears in `Debug`
//! output or errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use zeroize::Zeroizing;

/// Secret entry: the CA bundle clients trust (PEM), the current signing CA first, then retiring CAs.
pub const SECRET_CA_CERT: &str = "ca.crt";
/// Secret entry: the current signing CA's private key (PKCS#8 PEM).
pub const SECRET_CA_KEY: &str = "ca.key";
/// Secret entry: the serving leaf certificate (PEM).
pub const SECRET_TLS_CERT: &str = "tls.crt";
/// Secret entry: the serving leaf's private key (PKCS#8 PEM).
pub const SECRET_TLS_KEY: &str = "tls.key";
/// Default leaf lifetime: renewed after 20 days, so a failing renewal has 10 days to be noticed.
pub const DEFAULT_LEAF_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 30);
/// Default serving CA lifetime.
pub const DEFAULT_CA_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 365);
/// `notBefore` is set this far back (at most a tenth of the lifetime, so renewal at 2/3 still means 2/3 of
/// the requested lifetime), so an API server whose clock runs a little behind accepts a fresh certificate.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);
const ORGANIZATION: &str = "agentiam";

/// Why serving certificates could not be made or read. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The lifetimes cannot work: the leaf must fit three times into the CA lifetime, so a CA renewed at 2/3
    /// still outlives every leaf it signs.
    #[error("leaf validity must be positive and at most a third of the CA validity")]
    InvalidPolicy,
    /// No subject alternative names were configured.
    #[error("the serving certificate needs at least one subject alternative name")]
    NoSans,
    /// A DNS name cannot be written into a certificate.
    #[error("{0:?} is not a valid DNS name for a certificate")]
    InvalidDnsName(String),
    /// A time bound is outside what a certificate can encode.
    #[error("certificate validity is outside the representable time range")]
    TimeOutOfRange,
    /// The system random number generator failed.
    #[error("failed to draw random bytes for a serial number")]
    Random,
    /// Generating a key pair or signing failed.
    #[error("failed to {0}")]
    Crypto(&'static str, #[source] rcgen::Error),
    /// A Secret entry is missing.
    #[error("secret has no {0:?} entry")]
    MissingEntry(&'static str),
    /// A Secret entry is not the PEM it should be.
    #[error("secret entry {0:?} is not valid PEM of the expected kind")]
    BadEntry(&'static str),
    /// A private key does not belong to its certificate.
    #[error("secret entry {0:?} does not match its certificate")]
    KeyMismatch(&'static str),
}

/// A subject alternative name of the serving certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    /// A DNS name, compared case-insensitively.
    Dns(String),
    /// An IP address (127.0.0.1 when the operator runs outside the cluster).
    Ip(IpAddr),
}

impl San {
    /// The names under which the API server reaches a Service `name` in `namespace`.
    pub fn for_service(name: &str, namespace: &str) -> Vec<San> {
        [
            name.to_owned(),
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ]
        .into_iter()
        .map(San::Dns)
        .collect()
    }

    /// An IP address if `s` is one, a DNS name otherwise.
    pub fn parse(s: &str) -> San {
        let unbracketed = s.trim_start_matches('[').trim_end_matches(']');
        unbracketed.parse().map_or_else(|_| San::Dns(s.to_ascii_lowercase()), San::Ip)
    }

    fn normalized(&self) -> San {
        match self {
            San::Dns(d) => San::Dns(d.to_ascii_lowercase()),
            San::Ip(ip) => San::Ip(*ip),
        }
    }

    fn to_rcgen(&self) -> Result<SanType, TlsError> {
        match self {
            San::Dns(d) => Ia5String::try_from(d.as_str())
                .map(SanType::DnsName)
                .map_err(|_| TlsError::InvalidDnsName(d.clone())),
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        }
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// How long certificates live. Each is renewed at 2/3 of its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// Lifetime of the serving CA.
    pub ca_validity: SignedDuration,
    /// Lifetime of the serving leaf; at most a third of `ca_validity`.
    pub leaf_validity: SignedDuration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self { ca_validity: DEFAULT_CA_VALIDITY, leaf_validity: DEFAULT_LEAF_VALIDITY }
    }
}

impl RenewalPolicy {
    /// Refuses lifetimes that would make renewal loop or let a leaf outlive its CA.
    pub fn check(&self) -> Result<(), TlsError> {
        let third = self.ca_validity.checked_div(3).ok_or(TlsError::InvalidPolicy)?;
        if self.leaf_validity <= SignedDuration::ZERO || self.leaf_validity > third {
            return Err(TlsError::InvalidPolicy);
        }
        Ok(())
    }
}

/// The serving CA bundle and leaf, as stored in the Secret.
#[derive(Clone)]
pub struct ServingCerts {
    /// DER certificates clients trust: the current signing CA first, then CAs being retired.
    cas: Vec<Vec<u8>>,
    /// The current signing CA's key, PEM; `None` when the Secret was made by someone else.
    ca_key: Option<Zeroizing<String>>,
    /// The leaf first, then any intermediates.
    chain: Vec<Vec<u8>>,
    leaf_key: Zeroizing<String>,
}

impl fmt::Debug for ServingCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCerts")
            .field("cas", &self.cas.len())
            .field("ca_key", &self.ca_key.as_ref().map(|_| "<redacted>"))
            .field("chain", &self.chain.len())
            .field("leaf_key", &"<redacted>")
            .finish()
    }
}

/// What renewal should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Everything is valid and not yet due.
    Keep,
    /// No usable CA: start over with a new CA and leaf.
    Create(&'static str),
    /// The CA is past 2/3 of its lifetime: add a new CA to the bundle, keep serving the current leaf.
    RenewCa,
    /// Issue a new leaf from the current CA, keeping the bundle.
    IssueLeaf(&'static str),
    /// The leaf comes from the current CA: drop the retiring CAs from the bundle.
    DropRetiredCas,
}

/// Decides the next renewal step for `current` at `now`, serving `sans`. `in_use` says whether the server
/// already presents `current`'s leaf: retiring CAs stay in the bundle until it does, so a client that still
/// sees the previous leaf keeps trusting it.
pub fn plan(current: &ServingCerts, in_use: bool, sans: &[San], now: Timestamp) -> Plan {
    let now = now.as_second();
    let (Some(ca_der), Some(_)) = (current.cas.first(), &current.ca_key) else {
        return Plan::Create("the secret holds no serving CA key");
    };
    let Some(ca) = parse(ca_der) else { return Plan::Create("the serving CA does not parse") };
    if !valid_at(&ca, now) {
        return Plan::Create("the serving CA is expired or not yet valid");
    }
    let Some(leaf) = current.chain.first().and_then(|der| parse(der)) else {
        return Plan::IssueLeaf("the serving certificate does not parse");
    };
    if !valid_at(&leaf, now) {
        return Plan::IssueLeaf("the serving certificate is expired or not yet valid");
    }
    let trusted = current.cas.iter().filter_map(|der| parse(der)).any(|ca| signed_by(&leaf, &ca));
    if !trusted {
        return Plan::IssueLeaf("the serving certificate is not signed by a CA in the bundle");
    }
    let wanted: BTreeSet<San> = sans.iter().map(San::normalized).collect();
    if leaf_sans(&leaf) != wanted {
        return Plan::IssueLeaf("the subject alternative names changed");
    }
    if !signed_by(&leaf, &ca) {
        return Plan::IssueLeaf("moving to the renewed serving CA");
    }
    // Checked before the leaf: a leaf issued now would come from the CA about to be replaced.
    if past_two_thirds(&ca, now) {
        return Plan::RenewCa;
    }
    if past_two_thirds(&leaf, now) {
        return Plan::IssueLeaf("the serving certificate is past 2/3 of its lifetime");
    }
    if current.cas.len() > 1 && in_use {
        return Plan::DropRetiredCas;
    }
    Plan::Keep
}

impl ServingCerts {
    /// A new CA and a leaf for `sans`.
    pub fn generate(sans: &[San], policy: &RenewalPolicy, now: Timestamp) -> Result<Self, TlsError> {
        policy.check()?;
        let (ca_der, ca_key) = new_ca(policy, now)?;
        let mut certs = Self {
            cas: vec![ca_der],
            ca_key: Some(ca_key),
            chain: Vec::new(),
            leaf_key: Zeroizing::default(),
        };
        certs.issue_leaf(sans, policy, now)?;
        Ok(certs)
    }

    /// Carries out `plan`, returning the new state, or `None` for [`Plan::Keep`].
    pub fn next(
        &self,
        plan: Plan,
        sans: &[San],
        policy: &RenewalPolicy,
        now: Timestamp,
    ) -> Result<Option<Self>, TlsError> {
        policy.check()?;
        let mut next = self.clone();
        match plan {
            Plan::Keep => return Ok(None),
            Plan::Create(_) => return Self::generate(sans, policy, now).map(Some),
            Plan::RenewCa => {
                let (ca_der, ca_key) = new_ca(policy, now)?;
                // Retiring CAs that have expired are useless in the bundle; the one signing the leaf is kept.
                let secs = now.as_second();
                next.cas.retain(|der| parse(der).is_some_and(|c| valid_at(&c, secs)));
                next.cas.insert(0, ca_der);
                next.ca_key = Some(ca_key);
            }
            Plan::IssueLeaf(_) => next.issue_leaf(sans, policy, now)?,
            Plan::DropRetiredCas => next.cas.truncate(1),
        }
        Ok(Some(next))
    }

    /// Reads the Secret data written by [`to_secret_data`](Self::to_secret_data). `ca.key` is optional so
    /// that a Secret issued by someone else (cert-manager) can be served, though not renewed.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, TlsError> {
        let entry = |name: &'static str| -> Result<&str, TlsError> {
            let bytes = data.get(name).ok_or(TlsError::MissingEntry(name))?;
            std::str::from_utf8(bytes).map_err(|_| TlsError::BadEntry(name))
        };
        let cas = cert_ders(entry(SECRET_CA_CERT)?, SECRET_CA_CERT)?;
        let chain = cert_ders(entry(SECRET_TLS_CERT)?, SECRET_TLS_CERT)?;
        let leaf_key = Zeroizing::new(entry(SECRET_TLS_KEY)?.to_owned());
        check_key(&leaf_key, chain.first(), SECRET_TLS_KEY)?;
        let ca_key = match data.get(SECRET_CA_KEY) {
            None => None,
            Some(_) => {
                let key = Zeroizing::new(entry(SECRET_CA_KEY)?.to_owned());
                check_key(&key, cas.first(), SECRET_CA_KEY)?;
                Some(key)
            }
        };
        Ok(Self { cas, ca_key, chain, leaf_key })
    }

    /// The Secret data that stores these certificates. Holds private keys.
    pub fn to_secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::from([
            (SECRET_CA_CERT.to_owned(), self.ca_bundle_pem().into_bytes()),
            (SECRET_TLS_CERT.to_owned(), pem_all(&self.chain).into_bytes()),
            (SECRET_TLS_KEY.to_owned(), self.leaf_key.as_bytes().to_vec()),
        ]);
        if let Some(key) = &self.ca_key {
            data.insert(SECRET_CA_KEY.to_owned(), key.as_bytes().to_vec());
        }
        data
    }

    /// The CA bundle clients trust (the webhook configuration's `caBundle`, the API's published CA), PEM.
    pub fn ca_bundle_pem(&self) -> String {
        pem_all(&self.cas)
    }

    /// The leaf followed by any intermediates, DER: what the server presents.
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The leaf's private key, PEM. Secret: only for the TLS server.
    pub fn leaf_key_pem(&self) -> &str {
        &self.leaf_key
    }

    /// Whether `other` serves the same leaf; the bundle may differ.
    pub fn same_leaf(&self, other: &ServingCerts) -> bool {
        self.chain == other.chain
    }

    /// The leaf's serial number, hex, for logs.
    pub fn leaf_serial(&self) -> String {
        self.chain.first().and_then(|d| parse(d)).map(|c| c.raw_serial_as_string()).unwrap_or_default()
    }

    /// When the leaf expires, if it parses.
    pub fn leaf_not_after(&self) -> Option<Timestamp> {
        let leaf = parse(self.chain.first()?)?;
        Timestamp::from_second(leaf.validity().not_after.timestamp()).ok()
    }

    fn issue_leaf(&mut self, sans: &[San], policy: &RenewalPolicy, now: Timestamp) -> Result<(), TlsError> {
        let first = sans.first().ok_or(TlsError::NoSans)?;
        let (Some(ca_der), Some(ca_key)) = (self.cas.first(), &self.ca_key) else {
            return Err(TlsError::MissingEntry(SECRET_CA_KEY));
        };
        let ca_not_after = parse(ca_der)
            .map(|c| c.validity().not_after.timestamp())
            .ok_or(TlsError::BadEntry(SECRET_CA_CERT))?;
        let ca_key = KeyPair::from_pem(ca_key).map_err(|_| TlsError::BadEntry(SECRET_CA_KEY))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key)
            .map_err(|_| TlsError::BadEntry(SECRET_CA_CERT))?;

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Crypto("generate a key pair", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name.push(DnType::CommonName, first.to_string());
        params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let (not_before, not_after) = window(now, policy.leaf_validity)?;
        params.not_before = to_offset(not_before)?;
        // Never outlive the CA: a verifier would reject the tail end anyway.
        params.not_after = to_offset(not_after.min(ca_not_after))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| TlsError::Crypto("sign the serving certificate", e))?;

        self.chain = vec![cert.der().to_vec()];
        self.leaf_key = Zeroizing::new(key.serialize_pem());
        Ok(())
    }
}

fn new_ca(policy: &RenewalPolicy, now: Timestamp) -> Result<(Vec<u8>, Zeroizing<String>), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Crypto("generate a key pair", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
    // The issue time tells an old and a new CA apart during the overlap, for people and for verifiers that
    // pick a trust anchor by subject.
    params.distinguished_name.push(DnType::CommonName, format!("agentiam serving CA {}", now.as_second()));
    // pathlen 0: this CA only ever signs the serving leaf.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    let (not_before, not_after) = window(now, policy.ca_validity)?;
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    let cert = params.self_signed(&key).map_err(|e| TlsError::Crypto("sign the serving CA", e))?;
    Ok((cert.der().to_vec(), Zeroizing::new(key.serialize_pem())))
}

/// `notBefore` and `notAfter` in whole seconds: backdated start, `validity` from `now`.
fn window(now: Timestamp, validity: SignedDuration) -> Result<(i64, i64), TlsError> {
    let backdate = BACKDATE.min(validity.checked_div(10).unwrap_or(SignedDuration::ZERO));
    let start = now.checked_sub(backdate).map_err(|_| TlsError::TimeOutOfRange)?;
    let end = now.checked_add(validity).map_err(|_| TlsError::TimeOutOfRange)?;
    Ok((start.as_second(), end.as_second()))
}

fn to_offset(secs: i64) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| TlsError::TimeOutOfRange)
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TlsError::Random)?;
    // Positive and always 16 bytes long.
    if let Some(first) = bytes.first_mut() {
        *first = (*first | 0x40) & 0x7f;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

fn valid_at(cert: &X509Certificate<'_>, now: i64) -> bool {
    let v = cert.validity();
    v.not_before.timestamp() <= now && now < v.not_after.timestamp()
}

fn past_two_thirds(cert: &X509Certificate<'_>, now: i64) -> bool {
    let v = cert.validity();
    let (start, end) = (v.not_before.timestamp(), v.not_after.timestamp());
    let renew_at = start.saturating_add(end.saturating_sub(start) / 3 * 2);
    now >= renew_at
}

fn signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    leaf.issuer().as_raw() == ca.subject().as_raw() && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn leaf_sans(leaf: &X509Certificate<'_>) -> BTreeSet<San> {
    let Ok(Some(ext)) = leaf.subject_alternative_name() else { return BTreeSet::new() };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => Some(San::Dns(d.to_ascii_lowercase())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| San::Ip(IpAddr::from(a))),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| San::Ip(IpAddr::from(a))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Checks that `key_pem` is a private key whose public half is the one in `cert_der`.
fn check_key(key_pem: &str, cert_der: Option<&Vec<u8>>, entry: &'static str) -> Result<(), TlsError> {
    let key = KeyPair::from_pem(key_pem).map_err(|_| TlsError::BadEntry(entry))?;
    let cert = cert_der.and_then(|d| parse(d)).ok_or(TlsError::KeyMismatch(entry))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::KeyMismatch(entry));
    }
    Ok(())
}

fn cert_ders(pem: &str, entry: &'static str) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|_| TlsError::BadEntry(entry))?;
        if block.label != "CERTIFICATE" || parse(&block.contents).is_none() {
            return Err(TlsError::BadEntry(entry));
        }
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err(TlsError::BadEntry(entry));
    }
    Ok(ders)
}

fn pem_all(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|der| pem_encode(der)).collect()
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.extend(line.iter().map(|b| char::from(*b)));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;
