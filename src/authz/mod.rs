//! Authorization: AgentPolicy compilation, the in-memory index, and evaluation. No I/O.
//!
//! - [`resource`] defines the one canonical resource grammar every request and every pattern must follow.
//! - [`compile`](compile::compile) turns an `AgentPolicy` into rules with parsed patterns, time zones,
//!   numbers and rate limits, collecting every error; a policy with errors denies everything.
//! - [`Builder`] arranges Agents, compiled policies and Revocations into an immutable [`Snapshot`]: per
//!   agent the facts a decision needs from its spec (UID, granted audiences, revocation) and a [`RuleSet`] indexed by
//!   action and by the resource's first segment.
//! - [`scope`] parses delegation scopes (`read@crm:contacts/*`) and decides whether one covers another.
//! - [`Snapshot::decide`] answers one request in a few hash lookups and a short candidate scan; the
//!   semantics (default deny, Deny beats Allow, audit mode) are documented in [`eval`].
//!
//! The operator keeps a snapshot current from watches (`controller::authz`) and serves it over HTTP
//! (`server::decision`); `kubectl agentiam can-i` builds one from a single list of each kind.

pub mod compile;
pub mod conditions;
pub mod eval;
pub mod grant;
pub mod index;
pub mod pattern;
pub mod ratelimit;
pub mod resource;
pub mod scope;

#[cfg(test)]
mod eval_tests;

pub use eval::{Acting, Clock, Decision, Delegated, Reason, Request, Subject, Verdict, decide_for};
pub use index::{AgentFacts, Builder, PolicySummary, RuleSet, Snapshot, Standing};
pub use ratelimit::RateLimiter;
