//! `kubectl agentiam`: the user CLI. Thin over the library, so the same checks run here as in the operator.

pub mod audit;
pub mod can_i;
pub mod delegate;
pub mod token;
