//! The admission webhook: TLS server and AdmissionReview plumbing, with one pure decision function per kind.

pub mod admission;
pub mod config;
pub mod pods;
pub mod run;
pub mod secret;
pub mod server;
pub mod tls;
pub mod validate;
