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
