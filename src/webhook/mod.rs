//! The admission webhook: TLS server and AdmissionReview plumbing, with one pure decision function per kind.

pub mod pods;
