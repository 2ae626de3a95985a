//! End-to-end tests against a real kube-apiserver + etcd + kube-controller-manager started on 127.0.0.1 by
//! tools/cluster.sh (`make test` / `make e2e` do that). Each test has its own namespace and, where it needs
//! one, its own operator process watching only that namespace with its own audit log, so tests run in
//! parallel without seeing each other. tools/e2e-in-cluster.sh runs the same tests again with each operator
//! as a Pod on the local node, from the image we build, under the chart's RBAC (pod.rs).
//!
//! `#[ignore]` here means "disturbs the shared cluster" (restarts its API server): tools/e2e.sh runs those
//! tests alone, with `--ignored`, after the parallel ones.

// Test code: a panic is a failed test with a message, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod harness;
mod pod;

mod admission;
mod approval;
mod audit;
mod authz;
mod crds;
mod credentials;
mod delegation;
mod discovery;
mod gateway;
mod hardening;
mod input;
mod malformed;
mod outage;
mod recovery;
mod registry;
mod revocation;
mod supervision;
mod tls;
mod token;
mod validation;
mod webhook;
mod workload_admission;
