//! The Agent registry's pure logic: validation, trust scoring, the lifecycle state machine and the status it
//! leads to. The controller (src/controller/agent.rs) does the I/O around it.

pub mod credentials;
pub mod lifecycle;
pub mod selector;
pub mod status;
pub mod trust;
pub mod validate;
