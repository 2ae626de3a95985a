//! Workload identity: SPIFFE IDs now; keys, SVID minting and the strict verifier arrive with the credentials
//! work.

pub mod bundle;
pub mod jwt;
pub mod keys;
pub mod spiffe;
pub mod verify;
pub mod x509;

pub use spiffe::{SpiffeError, SpiffeId, TrustDomain};
