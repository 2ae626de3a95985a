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
