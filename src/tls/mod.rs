//! TLS for the operator's listeners: serving certificates it issues and renews itself ([`certs`], pure; their
//! Secret, [`secret`]) and the certificate a running listener presents ([`handle`]). The admission webhook and
//! the HTTP API share all three; each has its own CA and Secret.

pub mod certs;
pub mod client;
pub mod handle;
pub mod secret;

use certs::TlsError;

/// Whether `host` (a URL's host, IPv6 in brackets or not) is this machine: `localhost` or a loopback
/// address. The one rule for every place that allows plain HTTP only to a loopback address (fetching keys
/// in the CLI, pushing Security Event Tokens).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A TLS client configuration (aws-lc-rs) that trusts the system's CA certificates, for calls to servers
/// the user names (approval notification URLs, gateway upstreams). Without system CAs it trusts nothing:
/// https then fails at connect time with a clear error, and http still works.
///
/// # Errors
/// The provider refuses the default protocol versions (it does not, in practice).
pub fn system_roots_client() -> Result<rustls::ClientConfig, rustls::Error> {
    use hyper_rustls::ConfigBuilderExt;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    Ok(match builder.clone().with_native_roots() {
        Ok(b) => b.with_no_client_auth(),
        Err(_) => builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth(),
    })
}

/// Why a serving certificate could not be loaded, made, renewed or used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// Reading or writing the certificate's Secret failed.
    #[error("failed to {step} the {listener} serving certificate Secret: {source}")]
    Secret {
        /// Which listener.
        listener: &'static str,
        /// What was being done (`read`, `create`, `replace`).
        step: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Secret kept changing under us.
    #[error("the {listener} serving certificate Secret changed on every attempt to renew it; will retry")]
    Contended {
        /// Which listener.
        listener: &'static str,
    },
    /// Publishing the CA bundle that clients trust failed.
    #[error("failed to publish the {listener} CA bundle ConfigMap: {source}")]
    Publish {
        /// Which listener.
        listener: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Making or reading the certificates failed.
    #[error("failed to build the serving certificate: {0}")]
    Certificate(#[from] TlsError),
    /// The certificate cannot be used by the TLS server.
    #[error("failed to load the serving certificate: {0}")]
    Unusable(&'static str),
    /// A user-supplied certificate or key file could not be read.
    #[error("failed to read {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
