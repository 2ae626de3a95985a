//! agentiam: identity and access management for autonomous AI agents, as a Kubernetes operator.
//!
//! The library holds everything the two binaries share. Pure logic (validation, trust scoring, the lifecycle,
//! audit hashing and verification) lives apart from the code that talks to the API server, so it is tested
//! without one.

pub mod api;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod discovery;
pub mod gateway;
pub mod identity;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod oauth;
pub mod operator;
pub mod registry;
pub mod server;
pub mod supervisor;
pub mod tls;
pub mod webhook;

/// An error and its causes on one line, `outer: cause: cause`: hyper's client errors alone say only
/// "client error (Connect)". Used wherever a network error is logged or returned.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
