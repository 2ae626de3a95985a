//! The authorization server metadata document (RFC 8414), served at
//! `/.well-known/oauth-authorization-server`.
//!
//! It names exactly what the endpoints do and nothing more: there is no authorization endpoint (nobody
//! logs in here; agents are clients of their own), so no response types, PKCE methods or authorization
//! response parameters are listed; a client library reading the document learns the token endpoint, the
//! one grant, the client authentication methods (`private_key_jwt` with its algorithm, and over TLS
//! `tls_client_auth` with certificate-bound tokens, RFC 8705), where the keys are, and the revocation
//! endpoint (RFC 7009).

use serde_json::{Value, json};

use crate::identity::bundle::JWKS_PATH;

/// Path of the metadata document.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/v1/oauth/token";
/// Path of the revocation endpoint (RFC 7009).
pub const REVOKE_PATH: &str = "/v1/oauth/revoke";
/// Path of the introspection endpoint (RFC 7662).
pub const INTROSPECT_PATH: &str = "/v1/oauth/introspect";
/// The `client_credentials` grant.
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// The RFC 8693 token exchange grant.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const ASSERTION_TYPE_JWT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The client authentication method (OpenID Connect Core §9; RFC 7523).
pub const AUTH_PRIVATE_KEY_JWT: &str = "private_key_jwt";
/// Mutual-TLS client authentication with a PKI certificate (RFC 8705 §2.1): the agent's X.509-SVID, whose
/// URI SAN is its SPIFFE ID, the `client_id`.
pub const AUTH_TLS_CLIENT: &str = "tls_client_auth";

/// The token endpoint's URL for `issuer_url`: also the audience a client assertion must name.
pub fn token_endpoint(issuer_url: &str) -> String {
    format!("{}{TOKEN_PATH}", issuer_url.trim_end_matches('/'))
}

/// The document for `issuer_url` (equal to the `iss` of every token, character for character).
/// `mutual_tls`: the operator serves TLS itself, so clients can authenticate with their certificate and get
/// certificate-bound tokens (behind a proxy that terminates TLS they cannot, and it is not advertised).
pub fn document(issuer_url: &str, mutual_tls: bool) -> Value {
    let base = issuer_url.trim_end_matches('/');
    let methods: &[&str] =
        if mutual_tls { &[AUTH_PRIVATE_KEY_JWT, AUTH_TLS_CLIENT] } else { &[AUTH_PRIVATE_KEY_JWT] };
    let mut doc = json!({
        "issuer": issuer_url,
        "token_endpoint": token_endpoint(issuer_url),
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "grant_types_supported": [GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "revocation_endpoint": format!("{base}{REVOKE_PATH}"),
        "revocation_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "introspection_endpoint": format!("{base}{INTROSPECT_PATH}"),
        // Resource servers and administrators send their Kubernetes token (RFC 6750 bearer); not an OAuth
        // client authentication method of RFC 8414's registry, so the list names none.
        "introspection_endpoint_auth_methods_supported": [],
        "response_types_supported": [],
    });
    if mutual_tls && let Some(d) = doc.as_object_mut() {
        d.insert("tls_client_certificate_bound_access_tokens".into(), Value::Bool(true));
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_what_the_token_endpoint_does() {
        let doc = document("https://agentiam.example/i", false);
        assert_eq!(doc["issuer"], "https://agentiam.example/i");
        assert_eq!(doc["token_endpoint"], "https://agentiam.example/i/v1/oauth/token");
        assert_eq!(doc["jwks_uri"], "https://agentiam.example/i/keys");
        assert_eq!(
            doc["grant_types_supported"],
            json!(["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"])
        );
        assert_eq!(doc["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
        assert_eq!(doc["response_types_supported"], json!([]));
        assert_eq!(doc["revocation_endpoint"], "https://agentiam.example/i/v1/oauth/revoke");
        assert_eq!(doc["introspection_endpoint"], "https://agentiam.example/i/v1/oauth/introspect");
        assert!(doc.get("authorization_endpoint").is_none());
        assert!(doc.get("code_challenge_methods_supported").is_none());
        assert_eq!(token_endpoint("https://a/"), "https://a/v1/oauth/token");
        assert!(doc.get("tls_client_certificate_bound_access_tokens").is_none());
        let tls = document("https://agentiam.example/i", true);
        assert_eq!(
            tls["token_endpoint_auth_methods_supported"],
            json!(["private_key_jwt", "tls_client_auth"])
        );
        assert_eq!(tls["tls_client_certificate_bound_access_tokens"], true);
    }
}
