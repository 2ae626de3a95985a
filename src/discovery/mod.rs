//! Shadow-agent discovery, pure: the signatures that make a workload look like an AI agent
//! ([`signatures`]), the classification of one pod template against them ([`classify`]), and workloads as
//! discovery sees them: which object is the workload, whether a registered Agent covers it, and the shadow
//! Agent that records it when none does ([`workload`]); how risky each is ([`risk`]); which running pods are
//! asked for an A2A agent card and what counts as one ([`card`]); and what workload admission decides
//! ([`admission`], served by `webhook::workloads`). The watches, the requests and the writes are in
//! `controller::discovery`; docs/discovery.md describes the whole.

pub mod admission;
pub mod card;
pub mod classify;
pub mod risk;
pub mod signatures;
pub mod workload;
