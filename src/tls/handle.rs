//! The certificate a TLS listener presents, replaceable while it runs, and the server configuration built
//! around it.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ServingError;
use super::certs::ServingCerts;

/// The TLS provider every listener and client of the operator uses: aws-lc-rs (the one kube uses; never
/// ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate the server presents, replaceable while it runs. Cloning shares it.
#[derive(Clone)]
pub struct CertHandle {
    current: Arc<RwLock<(Arc<CertifiedKey>, Vec<u8>)>>,
}

impl std::fmt::Debug for CertHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertHandle").field("key", &"<redacted>").finish()
    }
}

fn certified_key(chain: &[Vec<u8>], key_pem: &str) -> Result<(Arc<CertifiedKey>, Vec<u8>), ServingError> {
    let chain: Vec<CertificateDer<'static>> = chain.iter().map(|d| CertificateDer::from(d.clone())).collect();
    let leaf = chain.first().map(|c| c.to_vec()).ok_or(ServingError::Unusable("no certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| ServingError::Unusable("the private key is not PEM"))?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|_| ServingError::Unusable("the private key does not fit the certificate"))?;
    Ok((Arc::new(key), leaf))
}

impl CertHandle {
    /// A handle presenting `certs`' leaf.
    pub fn new(certs: &ServingCerts) -> Result<Self, ServingError> {
        Self::from_parts(certs.chain_der(), certs.leaf_key_pem())
    }

    /// A handle presenting `chain` (DER, the leaf first) with the PEM private key `key_pem`.
    pub fn from_parts(chain: &[Vec<u8>], key_pem: &str) -> Result<Self, ServingError> {
        Ok(Self { current: Arc::new(RwLock::new(certified_key(chain, key_pem)?)) })
    }

    /// Presents `certs`' leaf from the next handshake on; open connections keep theirs.
    pub fn swap(&self, certs: &ServingCerts) -> Result<(), ServingError> {
        self.swap_parts(certs.chain_der(), certs.leaf_key_pem())
    }

    /// Presents `chain` with `key_pem` from the next handshake on.
    pub fn swap_parts(&self, chain: &[Vec<u8>], key_pem: &str) -> Result<(), ServingError> {
        let next = certified_key(chain, key_pem)?;
        // A poisoned lock only means a writer panicked between two whole assignments: the value is intact.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// Whether the server presents `certs`' leaf.
    pub fn presents(&self, certs: &ServingCerts) -> bool {
        self.presents_leaf(certs.chain_der().first().map(Vec::as_slice))
    }

    /// Whether the server presents the leaf `der`.
    pub fn presents_leaf(&self, der: Option<&[u8]>) -> bool {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        der == Some(current.1.as_slice())
    }
}

impl ResolvesServerCert for CertHandle {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner).0))
    }
}

/// An HTTP/1.1 server configuration (TLS 1.2 and 1.3) presenting `handle`'s certificate, asking for client
/// certificates with `clients` when given.
pub fn server_config(
    handle: CertHandle,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, ServingError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|_| ServingError::Unusable("no usable TLS protocol version"))?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(handle));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
