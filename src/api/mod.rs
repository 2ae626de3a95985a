//! The `agentiam.dev/v1alpha1` API: CRD types only.
//!
//! Doc comments on these types become the field descriptions in the generated CRDs, so they are written for
//! the person reading `kubectl explain`. Single-object invariants are CEL rules (`x-kubernetes-validations`)
//! that the API server enforces; the reconcilers re-check everything, because a CRD can be installed without
//! them.

mod agent;
mod approval;
mod common;
mod delegation;
mod discovery;
mod policy;
mod revocation;

pub use agent::*;
pub use approval::*;
pub use common::*;
pub use delegation::*;
pub use discovery::*;
pub use policy::*;
pub use revocation::*;

/// The API group of every agentiam kind.
pub const GROUP: &str = "agentiam.dev";
/// The served and stored API version.
pub const VERSION: &str = "v1alpha1";
