//! Shadow-agent discovery, pure: the signatures that make a workload look like an AI agent
//! ([`signatures`]), the classification of one pod template against them ([`classify`]), and workloads as
//! discovery sees them: which object is the workload, whether a registered Agent covers it, and the shadow
//! Agent that records it when none does ([`workload`]); and how risky each is ([`risk`]); what workload admission decides ([`admission`], not yet served by a
//! webhook). The watches and the writes are in
//! `controller::discovery`; docs/discovery.md describes the whole.

pub mod admission;
pub mod classify;
pub mod risk;
pub mod signatures;
pub mod workload;
