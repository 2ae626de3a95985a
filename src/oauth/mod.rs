//! The OAuth 2.0 authorization server's pure half: request forms, error answers, the metadata document
//! and the token request grammar. The HTTP handlers are in [`crate::server::token`].
//!
//! What is served (see docs/token-service.md): the token endpoint with the `client_credentials` grant,
//! agents authenticating with `private_key_jwt` (a single-use assertion signed with the agent's
//! X.509-SVID key, or the agent's JWT-SVID for the token endpoint's URL), and the authorization server
//! metadata of RFC 8414. No client secrets exist.

pub mod error;
pub mod form;
pub mod metadata;
pub mod request;

pub use error::{ErrorCode, OAuthError};
pub use form::Form;
