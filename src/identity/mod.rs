//! Workload identity: SPIFFE IDs now; keys, SVID minting and the strict verifier arrive with the credentials
//! work.

pub mod spiffe;

pub use spiffe::{SpiffeError, SpiffeId, TrustDomain};
