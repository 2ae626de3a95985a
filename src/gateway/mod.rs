//! The agent gateway: a reverse proxy in front of the systems agents call, on the operator's HTTP API
//! listener under `/gateway/<route>/`. Every call is authenticated (the agent's JWT-SVID, delegated token
//! or access token), decided by the same decision path as `/v1/authorize` with the call's own facts (for
//! MCP, the tool and its arguments), held while a human's approval is awaited, forwarded with an upstream
//! credential the agent never sees, and recorded. See docs/gateway.md.
//!
//! - [`routes`]: what the routes configuration may say, and how a call maps to a decision (pure).
//! - [`headers`]: what is forwarded each way (pure).
//! - [`tools_list`]: an MCP `tools/list` answer cut down to the tools the agent may call (pure).
//! - `hold`: an MCP call held for a human's answer behind a kept-alive event stream (I/O).
//! - [`proxy`]: the handler, the upstream client, the credential cache and the call records (I/O).

pub mod headers;
mod hold;
pub mod proxy;
pub mod routes;
pub mod tools_list;
