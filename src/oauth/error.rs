//! Error answers of the token endpoint (RFC 6749 §5.2), shared by every OAuth endpoint.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// The RFC 6749 §5.2 (and RFC 8707, RFC 8693) error codes the token endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed, missing or repeated parameters.
    InvalidRequest,
    /// Client authentication failed (unknown client, bad or replayed assertion).
    InvalidClient,
    /// The grant (or a subject token) is invalid, expired or revoked.
    InvalidGrant,
    /// The client may not use this grant.
    UnauthorizedClient,
    /// The grant type is not supported.
    UnsupportedGrantType,
    /// The requested scope is invalid or wider than what is allowed.
    InvalidScope,
    /// The resource (RFC 8707) is invalid or not one the client may ask for.
    InvalidTarget,
    /// The revocation endpoint does not revoke this kind of token (RFC 7009 §2.2.1).
    UnsupportedTokenType,
    /// The server cannot answer now (the audit log is unavailable): try again later, nothing was issued.
    TemporarilyUnavailable,
}

impl ErrorCode {
    /// The `error` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// The HTTP status: 401 for a failed client authentication (RFC 6749 §5.2), 503 when the server cannot
    /// record what it would do, 400 otherwise. Never a 500 for anything a client sent.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// One error answer: the code and a description for the developer reading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    /// The code.
    pub code: ErrorCode,
    /// What was wrong, in the RFC 6749 character set.
    pub description: String,
}

impl OAuthError {
    /// An error with `code`; the description is cut to 300 characters and to the characters RFC 6749
    /// §5.2 allows (printable ASCII except `"` and `\`), so quoting hostile input cannot break the answer.
    pub fn new(code: ErrorCode, description: impl AsRef<str>) -> Self {
        let description = description
            .as_ref()
            .chars()
            .take(300)
            .map(|c| if (' '..='~').contains(&c) && c != '"' && c != '\\' { c } else { '?' })
            .collect();
        Self { code, description }
    }

    /// `invalid_request`.
    pub fn request(description: impl AsRef<str>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }

    /// `invalid_client`.
    pub fn client(description: impl AsRef<str>) -> Self {
        Self::new(ErrorCode::InvalidClient, description)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": self.code.as_str(), "error_description": self.description})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_keep_to_the_rfc_character_set_and_length() {
        let e = OAuthError::request("bad \"scope\" \\ é\n".to_owned() + &"x".repeat(400));
        assert!(e.description.starts_with("bad ?scope? ? ??x"));
        assert_eq!(e.description.chars().count(), 300);
        assert!(e.description.chars().all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'));
        assert_eq!(e.body()["error"], "invalid_request");
    }

    #[test]
    fn client_authentication_failures_are_401_and_nothing_a_client_sends_is_a_500() {
        assert_eq!(ErrorCode::InvalidClient.status(), StatusCode::UNAUTHORIZED);
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidGrant,
            ErrorCode::UnauthorizedClient,
            ErrorCode::UnsupportedGrantType,
            ErrorCode::InvalidScope,
            ErrorCode::InvalidTarget,
        ] {
            assert_eq!(code.status(), StatusCode::BAD_REQUEST, "{}", code.as_str());
        }
        assert_eq!(ErrorCode::TemporarilyUnavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
