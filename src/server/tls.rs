//! TLS on the HTTP API listener (issuer documents, decision API, token service).
//!
//! Three modes, chosen at startup:
//! - **managed** (the default): the operator issues its own serving CA and leaf into the Secret
//!   [`crate::names::API_TLS_SECRET`] with the same renewal machine as the webhook's
//!   ([`crate::tls::certs`]), publishes the CA bundle to the ConfigMap [`crate::names::API_CA_CONFIGMAP`]
//!   in its namespace (and, through the credentials controller, into every namespace's trust bundle
//!   ConfigMap that agent pods mount), and presents a renewed leaf only after the bundle that trusts it
//!   is published;
//! - **files**: a certificate chain and key the user supplies (cert-manager, a corporate CA), re-read
//!   when they change on disk;
//! - **plaintext**: plain HTTP, only behind an explicit flag, for local development and for a TLS proxy
//!   in front.
//!
//! In both TLS modes the listener asks clients for a certificate without requiring one
//! ([`crate::tls::client`]), for RFC 8705 mutual TLS at the token endpoint.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::names::{API_CA_CONFIGMAP, FIELD_MANAGER};
use crate::tls::ServingError;
use crate::tls::certs::ServingCerts;
use crate::tls::client::RequestClientCertificate;
use crate::tls::handle::{CertHandle, provider, server_config};
use crate::tls::secret::{self, ServingSecret};

/// The key of the CA bundle in [`API_CA_CONFIGMAP`] (and `api-ca.crt` in the trust bundle ConfigMaps).
pub const API_CA_KEY: &str = "ca.crt";

/// How the HTTP API is served.
#[derive(Debug, Clone)]
pub enum ApiTlsMode {
    /// A certificate the operator issues and renews, in this Secret.
    Managed(ServingSecret),
    /// A PEM certificate chain (leaf first) and PEM private key the user supplies.
    Files {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// Plain HTTP (development, or a TLS-terminating proxy in front).
    Plaintext,
}

/// The HTTP API's TLS settings.
#[derive(Debug, Clone)]
pub struct ApiTls {
    /// The mode.
    pub mode: ApiTlsMode,
    /// How often the certificate is checked (renewal, or changed files).
    pub check_interval: Duration,
}

impl ApiTls {
    /// Whether the listener serves TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self.mode, ApiTlsMode::Plaintext)
    }
}

/// What is being served, to tell when it changed.
enum Served {
    Managed(ServingCerts),
    /// The bytes of the certificate and key files.
    Files(Vec<u8>),
}

/// A TLS listener set up: the acceptor to serve with, and what keeps its certificate current.
pub struct Prepared {
    acceptor: TlsAcceptor,
    handle: CertHandle,
    served: Served,
    settings: ApiTls,
    /// The CA bundle clients trust, PEM, when the operator manages it.
    ca_bundle: Arc<ArcSwapOption<String>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Sets up TLS for the HTTP API: None in plaintext mode. Managed mode loads or creates the certificate
/// Secret and publishes the CA bundle before anything is served; files mode reads and checks the files.
/// `ca_bundle` receives the managed CA bundle (for the trust bundle ConfigMaps).
///
/// # Errors
/// The certificate could not be loaded, made or published.
pub async fn prepare(
    client: &Client,
    settings: &ApiTls,
    ca_bundle: Arc<ArcSwapOption<String>>,
) -> Result<Option<Prepared>, ServingError> {
    let (handle, served) = match &settings.mode {
        ApiTlsMode::Plaintext => return Ok(None),
        ApiTlsMode::Managed(secret_settings) => {
            secret_settings.renewal.check()?;
            let certs = secret::ensure(client, secret_settings, None, Timestamp::now()).await?;
            publish(client, &secret_settings.namespace, &certs.ca_bundle_pem()).await?;
            ca_bundle.store(Some(Arc::new(certs.ca_bundle_pem())));
            info!(
                secret = %secret_settings.name,
                serial = %certs.leaf_serial(),
                not_after = ?certs.leaf_not_after(),
                ca = %format!("ConfigMap {}/{API_CA_CONFIGMAP}", secret_settings.namespace),
                "serving the HTTP API over TLS with the operator's certificate"
            );
            (CertHandle::new(&certs)?, Served::Managed(certs))
        }
        ApiTlsMode::Files { cert, key } => {
            let (bytes, chain, key_pem) = read_files(cert, key).await?;
            let handle = CertHandle::from_parts(&chain, &key_pem)?;
            info!(cert = %cert.display(), "serving the HTTP API over TLS with the supplied certificate");
            (handle, Served::Files(bytes))
        }
    };
    let verifier = RequestClientCertificate::new(&provider());
    let config = server_config(handle.clone(), Some(verifier))?;
    Ok(Some(Prepared {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        handle,
        served,
        settings: settings.clone(),
        ca_bundle,
    }))
}

impl Prepared {
    /// The acceptor the listener serves with; it presents the current certificate at each handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Keeps the certificate current until `shutdown`: every check interval, managed mode takes one
    /// renewal step, publishes the bundle, and only then presents a new leaf; files mode presents the
    /// files again when their bytes changed. A failed check is logged and retried at the next one (the
    /// leaf is renewed with a third of its lifetime to spare; a bad file keeps the last good certificate).
    pub async fn run(mut self, client: Client, shutdown: impl Future<Output = ()> + Send) {
        let mut ticks = tokio::time::interval(self.settings.check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {
                    if let Err(e) = self.check(&client).await {
                        warn!(error = %e, "HTTP API certificate check failed; retrying at the next check");
                    }
                }
            }
        }
    }

    async fn check(&mut self, client: &Client) -> Result<(), ServingError> {
        match (&self.settings.mode, &self.served) {
            (ApiTlsMode::Managed(settings), Served::Managed(served)) => {
                let certs = secret::ensure(client, settings, Some(served), Timestamp::now()).await?;
                publish(client, &settings.namespace, &certs.ca_bundle_pem()).await?;
                self.ca_bundle.store(Some(Arc::new(certs.ca_bundle_pem())));
                if !self.handle.presents(&certs) {
                    self.handle.swap(&certs)?;
                    info!(serial = %certs.leaf_serial(), not_after = ?certs.leaf_not_after(), "now serving the renewed HTTP API certificate");
                }
                self.served = Served::Managed(certs);
            }
            (ApiTlsMode::Files { cert, key }, Served::Files(served)) => {
                let (bytes, chain, key_pem) = read_files(cert, key).await?;
                if &bytes != served {
                    self.handle.swap_parts(&chain, &key_pem)?;
                    info!(cert = %cert.display(), "now serving the changed HTTP API certificate files");
                    self.served = Served::Files(bytes);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The files' bytes (to notice changes), the chain as DER and the key PEM; checked to be usable.
async fn read_files(
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<(Vec<u8>, Vec<Vec<u8>>, zeroize::Zeroizing<String>), ServingError> {
    let read = |path: &PathBuf| {
        let path = path.clone();
        async move { tokio::fs::read(&path).await.map_err(|source| ServingError::File { path, source }) }
    };
    let cert_bytes = read(cert).await?;
    let key_bytes = zeroize::Zeroizing::new(read(key).await?);
    let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|_| ServingError::Unusable("the certificate file is not PEM certificates"))?;
    if chain.is_empty() {
        return Err(ServingError::Unusable("the certificate file holds no certificate"));
    }
    let key_pem = zeroize::Zeroizing::new(
        String::from_utf8(key_bytes.to_vec())
            .map_err(|_| ServingError::Unusable("the private key file is not PEM"))?,
    );
    // Fingerprint of both files: a rotated key with the same certificate (or the reverse) is a change.
    let mut bytes = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert_bytes).as_ref().to_vec();
    bytes.extend_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key_bytes).as_ref());
    Ok((bytes, chain, key_pem))
}

/// Publishes the CA bundle clients of the API trust (server-side apply; only public certificates).
async fn publish(client: &Client, namespace: &str, bundle_pem: &str) -> Result<(), ServingError> {
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": API_CA_CONFIGMAP, "namespace": namespace,
            "labels": {crate::names::MANAGED_BY_LABEL: FIELD_MANAGER, "app.kubernetes.io/part-of": "agentiam"},
        },
        "data": {API_CA_KEY: bundle_pem},
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(API_CA_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| ServingError::Publish { listener: "HTTP API", source })?;
    Ok(())
}
