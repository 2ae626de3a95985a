//! The admission webhook: TLS server and AdmissionReview plumbing, with one pure decision function per kind.

pub mod admission;
pub mod approval;
pub mod config;
pub mod pods;
pub mod run;
pub mod secret;
pub mod server;
pub mod tls;
pub mod validate;

use std::net::SocketAddr;

use tls::TlsError;

/// Why the webhook could not start or stopped. Variants name the step; messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Reading or writing the TLS Secret failed.
    #[error("failed to {step}: {source}")]
    TlsSecret {
        /// What was being done.
        step: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The TLS Secret kept changing under us.
    #[error("the webhook TLS secret changed on every attempt to renew it; will retry")]
    TlsSecretContended,
    /// Making or reading the certificates failed.
    #[error("failed to build the webhook serving certificate: {0}")]
    Certificate(#[from] TlsError),
    /// The certificate cannot be used by the TLS server.
    #[error("failed to load the webhook serving certificate: {0}")]
    ServerCertificate(&'static str),
    /// Applying the MutatingWebhookConfiguration failed.
    #[error("failed to apply the webhook configuration: {0}")]
    ApplyConfiguration(#[source] kube::Error),
    /// Deleting the MutatingWebhookConfiguration failed.
    #[error("failed to delete the webhook configuration: {0}")]
    DeleteConfiguration(#[source] kube::Error),
    /// The listener could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server task ended abnormally.
    #[error("the webhook server task failed: {0}")]
    ServerTask(String),
}

impl WebhookError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::TlsSecret { .. } | Self::TlsSecretContended => "tls_secret",
            Self::Certificate(_) | Self::ServerCertificate(_) => "certificate",
            Self::ApplyConfiguration(_) => "apply_configuration",
            Self::DeleteConfiguration(_) => "delete_configuration",
            Self::Bind { .. } => "bind",
            Self::ServerTask(_) => "server",
        }
    }
}
