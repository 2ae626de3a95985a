//! Client certificates on the HTTP API (RFC 8705 mutual TLS): asked for, never required, and checked where
//! they are used.
//!
//! The handshake only proves that the client holds the private key of the leaf it presents (rustls checks
//! its CertificateVerify signature with the provider's algorithms). Whether that leaf is an X.509-SVID the
//! operator issued and still stands by is decided per request by the endpoint that relies on it, with the
//! same check as a certificate-signed client assertion ([`crate::identity::x509::CertificateAuthority::
//! check_presented`] and the ledger's serials): the SPIFFE CA rotates and serials are taken back while
//! connections stay open, so a trust decision frozen at handshake time would outlive both. Everything
//! else on the listener ignores client certificates, and clients without one are served as before.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Asks every client for a certificate and accepts any, once it proved it holds the key (see the module
/// documentation).
#[derive(Debug)]
pub struct RequestClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl RequestClientCertificate {
    /// With `provider`'s signature algorithms.
    pub fn new(provider: &Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Self { algorithms: provider.signature_verification_algorithms })
    }
}

impl ClientCertVerifier for RequestClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
