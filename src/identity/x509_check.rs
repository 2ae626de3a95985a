//! Telling whether an X.509-SVID and its key, as found in a Secret, are exactly the ones this CA issued
//! under a recorded serial (a tenant who can write the Secret could swap either).

use rcgen::KeyPair;
use x509_parser::extensions::GeneralName;

use super::{CertificateAuthority, parse_cert_pems};
use crate::identity::SpiffeId;

impl CertificateAuthority {
    /// Checks that `chain_pem` is a leaf this CA signed with serial `serial_hex` for `spiffe_id`, followed by
    /// exactly the intermediates [`issue_svid`](Self::issue_svid) adds, and that `key_pem` is the leaf's
    /// private key. On a mismatch, says what differs, never any value.
    pub fn check_issued(
        &self,
        chain_pem: &str,
        key_pem: &str,
        serial_hex: &str,
        spiffe_id: &SpiffeId,
    ) -> Result<(), &'static str> {
        let ders = parse_cert_pems(chain_pem).map_err(|_| "svid.pem is not a PEM certificate chain")?;
        let (leaf_der, rest) = ders.split_first().ok_or("svid.pem holds no certificate")?;
        let intermediates = self.chain_der.len().saturating_sub(1);
        if rest.len() != intermediates || rest.iter().zip(&self.chain_der).any(|(a, b)| a != b) {
            return Err("svid.pem does not carry the operator's CA chain");
        }
        let leaf = match x509_parser::parse_x509_certificate(leaf_der) {
            Ok(([], cert)) => cert,
            _ => return Err("svid.pem's leaf certificate cannot be parsed"),
        };
        let signing = match self.chain_der.first().map(|d| x509_parser::parse_x509_certificate(d)) {
            Some(Ok((_, cert))) => cert,
            _ => return Err("the operator's CA certificate cannot be parsed"),
        };
        if leaf.issuer().as_raw() != signing.subject().as_raw()
            || leaf.verify_signature(Some(signing.public_key())).is_err()
        {
            return Err("svid.pem was not signed by the operator's CA");
        }
        if hex::encode(leaf.serial.to_bytes_be()) != serial_hex {
            return Err("svid.pem is not the certificate the operator recorded");
        }
        let uri = spiffe_id.to_string();
        let names_it = leaf.subject_alternative_name().ok().flatten().is_some_and(|san| {
            san.value.general_names.iter().any(|n| matches!(n, GeneralName::URI(u) if *u == uri))
        });
        if !names_it {
            return Err("svid.pem names another identity");
        }
        let key = KeyPair::from_pem(key_pem).map_err(|_| "svid-key.pem is not a private key")?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err("svid-key.pem does not belong to svid.pem");
        }
        Ok(())
    }
}

/// An X.509-SVID a client presented that this CA issued, as [`CertificateAuthority::check_presented`]
/// found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The SPIFFE ID in its URI SAN.
    pub spiffe_id: SpiffeId,
    /// Its serial, hex (as the operator records it).
    pub serial_hex: String,
    /// Its P-256 public key, the uncompressed point.
    pub public_point: Vec<u8>,
}

impl CertificateAuthority {
    /// Checks a chain a client presented (DER, leaf first): the leaf, then nothing or exactly the
    /// intermediates this CA adds; the leaf signed by this CA, valid at `now`, an EC P-256 key, exactly one
    /// URI SAN that is a SPIFFE ID in this trust domain. Whether the operator still stands by that serial
    /// is the caller's check (the ledger). On a mismatch, says what differs, never any value.
    pub fn check_presented(
        &self,
        chain: &[Vec<u8>],
        now: jiff::Timestamp,
    ) -> Result<Presented, &'static str> {
        let (leaf_der, rest) = chain.split_first().ok_or("no certificate")?;
        let intermediates = self.chain_der.len().saturating_sub(1);
        if !(rest.is_empty()
            || (rest.len() == intermediates && rest.iter().zip(&self.chain_der).all(|(a, b)| a == b)))
        {
            return Err("the chain is not the operator's CA chain");
        }
        let leaf = match x509_parser::parse_x509_certificate(leaf_der) {
            Ok(([], cert)) => cert,
            _ => return Err("the certificate cannot be parsed"),
        };
        let signing = match self.chain_der.first().map(|d| x509_parser::parse_x509_certificate(d)) {
            Some(Ok((_, cert))) => cert,
            _ => return Err("the operator's CA certificate cannot be parsed"),
        };
        if leaf.issuer().as_raw() != signing.subject().as_raw()
            || leaf.verify_signature(Some(signing.public_key())).is_err()
        {
            return Err("the certificate was not signed by the operator's CA");
        }
        let at = now.as_second();
        let validity = leaf.validity();
        if at < validity.not_before.timestamp() || at >= validity.not_after.timestamp() {
            return Err("the certificate is not valid now");
        }
        if leaf.is_ca() {
            return Err("the certificate is a CA");
        }
        let spki = leaf.public_key();
        let p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
            && spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok())
                == Some(x509_parser::oid_registry::OID_EC_P256);
        let point = spki.subject_public_key.data.to_vec();
        if !p256 || point.len() != 65 || point.first() != Some(&4) {
            return Err("the certificate's key is not an EC P-256 key");
        }
        let san = leaf.subject_alternative_name().ok().flatten().ok_or("the certificate has no SAN")?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None })
            .collect();
        let [uri] = uris.as_slice() else { return Err("the certificate does not name exactly one URI") };
        let spiffe_id = SpiffeId::parse(uri).map_err(|_| "the certificate's URI is not a SPIFFE ID")?;
        if spiffe_id.trust_domain() != &self.trust_domain {
            return Err("the certificate's SPIFFE ID is in another trust domain");
        }
        Ok(Presented { spiffe_id, serial_hex: hex::encode(leaf.serial.to_bytes_be()), public_point: point })
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use crate::identity::x509::CertificateAuthority;
    use crate::identity::{SpiffeId, TrustDomain};

    #[test]
    fn only_the_recorded_certificate_with_its_own_key_passes() {
        let td = TrustDomain::parse("example.org").unwrap();
        let now = Timestamp::now();
        let ca = CertificateAuthority::generate(&td, SignedDuration::from_hours(48), now).unwrap();
        let id = SpiffeId::for_agent(&td, "ns", "bot").unwrap();
        let other = SpiffeId::for_agent(&td, "ns", "other").unwrap();
        let ttl = SignedDuration::from_mins(10);
        let svid = ca.issue_svid(&id, ttl, now).unwrap();
        assert_eq!(ca.check_issued(&svid.chain_pem, &svid.key_pem, &svid.serial_hex, &id), Ok(()));

        let second = ca.issue_svid(&id, ttl, now).unwrap();
        assert!(
            ca.check_issued(&second.chain_pem, &second.key_pem, &svid.serial_hex, &id).is_err(),
            "serial"
        );
        assert!(ca.check_issued(&svid.chain_pem, &second.key_pem, &svid.serial_hex, &id).is_err(), "key");
        assert!(ca.check_issued(&svid.chain_pem, &svid.key_pem, &svid.serial_hex, &other).is_err(), "id");
        let foreign = CertificateAuthority::generate(&td, SignedDuration::from_hours(48), now).unwrap();
        let forged = foreign.issue_svid(&id, ttl, now).unwrap();
        assert!(ca.check_issued(&forged.chain_pem, &forged.key_pem, &forged.serial_hex, &id).is_err(), "CA");
        assert!(ca.check_issued("garbage", &svid.key_pem, &svid.serial_hex, &id).is_err());
        assert!(ca.check_issued(&svid.chain_pem, "garbage", &svid.serial_hex, &id).is_err());
    }
}
