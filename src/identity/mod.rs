//! Workload identity: SPIFFE IDs, signing keys and their rotation, JWT-SVID minting, the strict verifier,
//! the X.509 CA, and the published documents (JWKS, SPIFFE bundle, OIDC discovery). All pure: the controllers
//! persist and distribute what these modules compute.

pub mod access;
pub mod assertion;
pub mod bundle;
pub mod cache;
pub mod delegated;
pub mod follower;
pub mod issuer;
pub mod jwt;
pub mod keys;
pub mod revocations;
pub mod set;
pub mod spiffe;
pub mod verify;
pub mod x509;

pub use spiffe::{SpiffeError, SpiffeId, TrustDomain};
