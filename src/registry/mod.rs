//! The Agent registry's pure logic: validation, trust scoring, the lifecycle state machine and the status it
//! leads to, delegation chains, and the ledger of what the operator decided and issued (the authority that
//! status is only a report of). The controller (src/controller/agent.rs) does the I/O around it.

pub mod actions;
pub mod approval;
pub mod credentials;
pub mod delegation;
pub mod ledger;
pub mod lifecycle;
pub mod revocation;
pub mod secret;
pub mod selector;
pub mod status;
pub mod trust;
pub mod validate;
