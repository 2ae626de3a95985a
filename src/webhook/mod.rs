//! The admission webhook: TLS server and AdmissionReview plumbing, with one pure decision function per kind.

pub mod admission;
pub mod approval;
pub mod config;
pub mod pods;
pub mod run;
pub mod server;
pub mod validate;
pub mod workloads;

use std::net::SocketAddr;

use crate::tls::ServingError;

/// Why the webhook could not start or stopped. Variants name the step; messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The serving certificate could not be loaded, made, renewed or used.
    #[error(transparent)]
    Serving(#[from] ServingError),
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
            Self::Serving(ServingError::Secret { .. } | ServingError::Contended { .. }) => "tls_secret",
            Self::Serving(_) => "certificate",
            Self::ApplyConfiguration(_) => "apply_configuration",
            Self::DeleteConfiguration(_) => "delete_configuration",
            Self::Bind { .. } => "bind",
            Self::ServerTask(_) => "server",
        }
    }
}
