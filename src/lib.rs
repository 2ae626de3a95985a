//! agentiam: identity and access management for autonomous AI agents, as a Kubernetes operator.
//!
//! The library holds everything the two binaries share. Pure logic (validation, trust scoring, audit hashing
//! and verification) lives apart from the code that talks to the API server, so it can be tested without one.

pub mod api;
pub mod crdgen;
