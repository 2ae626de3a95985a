//! kubectl agentiam.
fn main() {}
