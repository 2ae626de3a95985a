//! What a token request asks for, read from its form (RFC 6749 §4.4, RFC 7521/7523 client assertions,
//! RFC 8707 resource indicators). Pure: the checks that need keys, the ledger or policies are the
//! endpoint's.

use crate::authz::scope::{MAX_SCOPE_LEN, Scope};

use super::error::{ErrorCode, OAuthError};
use super::form::Form;
use super::metadata::{ASSERTION_TYPE_JWT, GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE};

/// Most scopes one request may ask for.
pub const MAX_SCOPES: usize = 16;
/// Longest task id.
pub const MAX_TASK: usize = 128;
/// Longest resource.
const MAX_RESOURCE: usize = 253;
/// Largest client assertion accepted, before anything is decoded (the verifier's limit too).
pub const MAX_ASSERTION: usize = 16 * 1024;

/// A `client_credentials` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// How the client authenticates.
    pub auth: ClientAuth,
    /// The scopes asked for, each once, in the order asked.
    pub scopes: Vec<Scope>,
    /// The one resource (the access token's audience).
    pub resource: String,
    /// The task the token is for, if named.
    pub task: Option<String>,
}

/// Reads a token request. Only `client_credentials` is served. `certificate`: the client presented a TLS
/// client certificate (which makes `tls_client_auth` possible).
///
/// # Errors
/// The RFC 6749 error for the first problem found, in this order: the grant type, the client
/// authentication parameters, the resource, the scope, the task.
pub fn parse(form: &Form, certificate: bool) -> Result<ClientCredentials, OAuthError> {
    match parse_any(form, certificate)? {
        TokenRequest::ClientCredentials(c) => Ok(c),
        TokenRequest::Exchange(_) => {
            Err(OAuthError::new(ErrorCode::UnsupportedGrantType, "not client_credentials"))
        }
    }
}

/// A request of either grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRequest {
    /// `client_credentials`.
    ClientCredentials(ClientCredentials),
    /// RFC 8693 token exchange.
    Exchange(TokenExchange),
}

/// The token type URI of a JWT (RFC 8693 §3): the only kind of subject and actor token taken.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The token type URI of an access token (RFC 8693 §3).
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An RFC 8693 token exchange for a handoff: the client hands the rights of its delegated token
/// (`subject_token`) on to the agent whose JWT-SVID is `actor_token`, narrowed to `scopes`. `Debug` leaves
/// both tokens out.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenExchange {
    /// How the client (the subject token's holder) authenticates.
    pub auth: ClientAuth,
    /// The delegated token whose rights are passed on.
    pub subject_token: String,
    /// The identity (JWT-SVID, audience the token endpoint) of the agent they are passed to; absent when
    /// the client itself takes them over (the agent the subject token's `may_act` names).
    pub actor_token: Option<String>,
    /// The scopes asked for (None: all of the subject token's).
    pub scopes: Option<Vec<Scope>>,
    /// The one audience (`audience` or `resource`): must be the subject token's.
    pub audience: Option<String>,
    /// The task, in words.
    pub task: Option<String>,
}

impl std::fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchange")
            .field("auth", &self.auth)
            .field("subject_token", &"<redacted>")
            .field("actor_token", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("task", &self.task)
            .finish()
    }
}

/// Reads a token request of either grant. `certificate`: the client presented a TLS client certificate.
///
/// # Errors
/// The RFC 6749 / RFC 8693 error for the first problem found.
pub fn parse_any(form: &Form, certificate: bool) -> Result<TokenRequest, OAuthError> {
    match form.require("grant_type")? {
        GRANT_CLIENT_CREDENTIALS => {}
        GRANT_TOKEN_EXCHANGE => return exchange(form, certificate).map(TokenRequest::Exchange),
        other => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                format!(
                    "grant type {other} is not supported; only client_credentials and token exchange are"
                ),
            ));
        }
    }
    client_credentials(form, certificate).map(TokenRequest::ClientCredentials)
}

fn exchange(form: &Form, certificate: bool) -> Result<TokenExchange, OAuthError> {
    let auth = client_auth(form, certificate)?;
    let token = |name: &'static str, type_name: &'static str| -> Result<String, OAuthError> {
        let t = form.get(name).ok_or_else(|| {
            OAuthError::request(match name {
                "subject_token" => "subject_token is required: the delegated token whose rights are handed on",
                _ => "actor_token is required: the JWT-SVID (audience: the token endpoint) of the agent that takes over",
            })
        })?;
        if t.len() > MAX_ASSERTION {
            return Err(OAuthError::request(format!("{name} is longer than {MAX_ASSERTION} bytes")));
        }
        match form.get(type_name) {
            Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS) => Ok(t.to_owned()),
            Some(other) => Err(OAuthError::request(format!(
                "{type_name} {other} is not supported: the operator's tokens are JWTs ({TOKEN_TYPE_JWT})"
            ))),
            None => Err(OAuthError::request(format!("{type_name} is required with {name}"))),
        }
    };
    let subject_token = token("subject_token", "subject_token_type")?;
    // RFC 8693 §2.1: actor_token is optional, and actor_token_type comes with it and only with it.
    let actor_token = match (form.get("actor_token"), form.get("actor_token_type")) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(OAuthError::request("actor_token_type was sent without actor_token"));
        }
        _ => Some(token("actor_token", "actor_token_type")?),
    };
    if let Some(t) =
        form.get("requested_token_type").filter(|t| !matches!(*t, TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS))
    {
        return Err(OAuthError::request(format!(
            "requested_token_type {t} cannot be issued: the answer is a delegated token ({TOKEN_TYPE_JWT})"
        )));
    }
    let audience = match (form.get("audience"), form.get("resource")) {
        (Some(a), Some(r)) if a != r => {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "audience and resource name different services",
            ));
        }
        (Some(a), _) | (None, Some(a)) => Some(target(a)?),
        (None, None) => None,
    };
    let scopes = match form.get("scope") {
        None => None,
        some => Some(scopes(some)?),
    };
    let task = form.get("task");
    if task.is_some_and(|t| t.len() > MAX_TASK) {
        return Err(OAuthError::request(format!("task is longer than {MAX_TASK} bytes")));
    }
    Ok(TokenExchange { auth, subject_token, actor_token, scopes, audience, task: task.map(str::to_owned) })
}

fn target(t: &str) -> Result<String, OAuthError> {
    if t.is_empty() || t.len() > MAX_RESOURCE || t.contains(' ') {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!("the target must be one audience of at most {MAX_RESOURCE} bytes without spaces"),
        ));
    }
    Ok(t.to_owned())
}

fn client_credentials(form: &Form, certificate: bool) -> Result<ClientCredentials, OAuthError> {
    let auth = client_auth(form, certificate)?;
    let resource = form.get("resource").ok_or_else(|| {
        OAuthError::new(ErrorCode::InvalidTarget, "resource is required: the one service the token is for")
    })?;
    if resource.len() > MAX_RESOURCE || resource.contains(' ') {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!("resource must be one audience of at most {MAX_RESOURCE} bytes without spaces"),
        ));
    }
    let scopes = scopes(form.get("scope"))?;
    let task = form.get("task");
    if task.is_some_and(|t| t.len() > MAX_TASK) {
        return Err(OAuthError::request(format!("task is longer than {MAX_TASK} bytes")));
    }
    Ok(ClientCredentials { auth, scopes, resource: resource.to_owned(), task: task.map(str::to_owned) })
}

/// How a client authenticates, never with a secret: `private_key_jwt` (RFC 7523 §2.2), or
/// `tls_client_auth` (RFC 8705 §2.1: its X.509-SVID as the TLS client certificate, and `client_id`).
/// `Debug` leaves the assertion out: it is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The client assertion: a JWT the agent signed with its X.509-SVID key, or its JWT-SVID for the
    /// token endpoint. None: `tls_client_auth`.
    pub assertion: Option<String>,
    /// `client_id`: required with `tls_client_auth`; with an assertion optional, and then it must name
    /// the assertion's subject.
    pub client_id: Option<String>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("assertion", &"<redacted>")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Reads the client authentication parameters of any endpoint's form; `certificate`: the client presented
/// a TLS client certificate.
///
/// # Errors
/// `invalid_client`: a secret, no or another assertion type, no or an oversized assertion, neither an
/// assertion nor a certificate, a certificate without `client_id`.
pub fn client_auth(form: &Form, certificate: bool) -> Result<ClientAuth, OAuthError> {
    if form.get("client_secret").is_some() {
        return Err(OAuthError::client(
            "no client secrets exist: authenticate with private_key_jwt or tls_client_auth",
        ));
    }
    let client_id = form.get("client_id").map(str::to_owned);
    let Some(assertion_type) = form.get("client_assertion_type") else {
        if form.get("client_assertion").is_some() {
            return Err(OAuthError::client(format!(
                "client_assertion needs client_assertion_type {ASSERTION_TYPE_JWT}"
            )));
        }
        if certificate {
            if client_id.is_none() {
                return Err(OAuthError::client(
                    "tls_client_auth needs client_id: the agent's SPIFFE ID, as in its certificate's URI SAN",
                ));
            }
            return Ok(ClientAuth { assertion: None, client_id });
        }
        return Err(OAuthError::client(format!(
            "client authentication is required: client_assertion_type {ASSERTION_TYPE_JWT} with a JWT the \
             agent signed with its X.509-SVID key (x5c), or its JWT-SVID for the token endpoint, as \
             client_assertion; or the agent's X.509-SVID as TLS client certificate with client_id"
        )));
    };
    if assertion_type != ASSERTION_TYPE_JWT {
        return Err(OAuthError::client(format!(
            "client_assertion_type must be {ASSERTION_TYPE_JWT}, not {assertion_type}"
        )));
    }
    let assertion =
        form.get("client_assertion").ok_or_else(|| OAuthError::client("client_assertion is missing"))?;
    if assertion.len() > MAX_ASSERTION {
        return Err(OAuthError::client(format!("client_assertion is longer than {MAX_ASSERTION} bytes")));
    }
    Ok(ClientAuth { assertion: Some(assertion.to_owned()), client_id })
}

/// The scopes of a `scope` parameter: space-separated, each `<action>@<resource pattern>` as in
/// Delegations. Required: a token for nothing in particular is what this service exists to avoid.
fn scopes(scope: Option<&str>) -> Result<Vec<Scope>, OAuthError> {
    let invalid = |why: String| OAuthError::new(ErrorCode::InvalidScope, why);
    let scope = scope.ok_or_else(|| {
        invalid("scope is required: name each <action>@<resource pattern> the task needs".into())
    })?;
    let mut out: Vec<Scope> = Vec::new();
    for s in scope.split(' ') {
        if s.is_empty() {
            return Err(invalid("scope holds an empty entry (two spaces, or one at an end)".into()));
        }
        let parsed = Scope::parse(s).map_err(|e| {
            let shown: String = s.chars().take(MAX_SCOPE_LEN.min(80)).collect();
            invalid(format!("scope {shown} {e}"))
        })?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
        if out.len() > MAX_SCOPES {
            return Err(invalid(format!("more than {MAX_SCOPES} scopes")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSERTION: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";

    fn form(extra: &str) -> Form {
        let body = format!(
            "grant_type=client_credentials&client_assertion_type={ASSERTION}&client_assertion=a.b.c&{extra}"
        );
        Form::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn reads_a_client_credentials_request() {
        let r = parse(&form("scope=read%40crm%3Acontacts%2F*+read%40crm%3Acontacts%2F*+refund%40pay%3A**&resource=https%3A%2F%2Fcrm&task=t-1"), false).unwrap();
        assert_eq!(r.auth.assertion.as_deref(), Some("a.b.c"));
        assert_eq!(r.resource, "https://crm");
        assert_eq!(r.task.as_deref(), Some("t-1"));
        let scopes: Vec<&str> = r.scopes.iter().map(Scope::as_str).collect();
        assert_eq!(scopes, ["read@crm:contacts/*", "refund@pay:**"], "a repeated scope counts once");
    }

    #[test]
    fn a_client_certificate_with_client_id_is_tls_client_auth() {
        let body = |extra: &str| {
            Form::parse(format!("grant_type=client_credentials&scope=read%40a&resource=r{extra}").as_bytes())
                .unwrap()
        };
        let id = "&client_id=spiffe%3A%2F%2Fcluster.local%2Fns%2Fa%2Fagent%2Fb";
        let r = parse(&body(id), true).unwrap();
        assert_eq!(r.auth.assertion, None);
        assert_eq!(r.auth.client_id.as_deref(), Some("spiffe://cluster.local/ns/a/agent/b"));
        // Without the certificate, or without client_id, nobody is authenticated.
        assert_eq!(parse(&body(id), false).unwrap_err().code, ErrorCode::InvalidClient);
        let e = parse(&body(""), true).unwrap_err();
        assert!(e.code == ErrorCode::InvalidClient && e.description.contains("client_id"), "{e:?}");
        // An assertion without its type is refused, certificate or not.
        assert_eq!(
            parse(&body(&format!("{id}&client_assertion=a.b.c")), true).unwrap_err().code,
            ErrorCode::InvalidClient
        );
        // An assertion beside a certificate is private_key_jwt (the certificate may still bind the token).
        let r = parse(&body(&format!("&client_assertion_type={ASSERTION}&client_assertion=a.b.c")), true)
            .unwrap();
        assert_eq!(r.auth.assertion.as_deref(), Some("a.b.c"));
    }

    #[test]
    fn reads_a_token_exchange_and_refuses_what_it_cannot_serve() {
        let jwt = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";
        let base = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&client_assertion_type={ASSERTION}&client_assertion=a.b.c"
        );
        let parse_ex =
            |extra: &str| parse_any(&Form::parse(format!("{base}&{extra}").as_bytes()).unwrap(), false);
        let ok =
            format!("subject_token=s.s.s&subject_token_type={jwt}&actor_token=t.t.t&actor_token_type={jwt}");
        let TokenRequest::Exchange(x) =
            parse_ex(&format!("{ok}&scope=read%40crm%3Aa%2F1&audience=crm")).unwrap()
        else {
            panic!("not an exchange")
        };
        assert_eq!(
            (x.subject_token.as_str(), x.actor_token.as_deref(), x.audience.as_deref()),
            ("s.s.s", Some("t.t.t"), Some("crm"))
        );
        assert_eq!(x.scopes.as_ref().map(Vec::len), Some(1));
        assert!(!format!("{x:?}").contains("s.s.s"), "Debug shows the subject token");
        let TokenRequest::Exchange(x) = parse_ex(&format!("{ok}&resource=crm")).unwrap() else { panic!() };
        assert_eq!((x.audience.as_deref(), x.scopes), (Some("crm"), None));
        let code = |extra: &str| parse_ex(extra).unwrap_err().code;
        assert_eq!(
            code(&format!("subject_token_type={jwt}&actor_token=t&actor_token_type={jwt}")),
            ErrorCode::InvalidRequest
        );
        // Without an actor: the client takes the rights over itself (the exchange decides whether it may).
        let TokenRequest::Exchange(x) =
            parse_ex(&format!("subject_token=s&subject_token_type={jwt}")).unwrap()
        else {
            panic!()
        };
        assert_eq!(x.actor_token, None);
        assert_eq!(
            code(&format!("subject_token=s&subject_token_type={jwt}&actor_token_type={jwt}")),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(&format!("subject_token=s&subject_token_type={jwt}&actor_token=t")),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(&format!("subject_token=s&actor_token=t&actor_token_type={jwt}")),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(&format!("{ok}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2")),
            ErrorCode::InvalidRequest
        );
        assert_eq!(code(&format!("{ok}&audience=crm&resource=pay")), ErrorCode::InvalidTarget);
        assert_eq!(code(&format!("{ok}&scope=read")), ErrorCode::InvalidScope);
        assert_eq!(
            code(&format!("subject_token=s&subject_token_type=urn%3Ax&actor_token=t&actor_token_type={jwt}")),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn each_problem_gets_its_rfc_error() {
        let code = |body: &str| parse(&Form::parse(body.as_bytes()).unwrap(), false).unwrap_err().code;
        let ok = "scope=read%40a&resource=r";
        assert_eq!(code(&format!("client_assertion_type={ASSERTION}&{ok}")), ErrorCode::InvalidRequest);
        assert_eq!(code("grant_type=password&username=u"), ErrorCode::UnsupportedGrantType);
        assert_eq!(
            code("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"),
            ErrorCode::InvalidClient,
            "a token exchange authenticates its client first"
        );
        assert_eq!(code(&format!("grant_type=client_credentials&{ok}")), ErrorCode::InvalidClient);
        assert_eq!(
            code(&format!(
                "grant_type=client_credentials&client_secret=s&client_assertion_type={ASSERTION}&client_assertion=x&{ok}"
            )),
            ErrorCode::InvalidClient
        );
        assert_eq!(
            code(&format!(
                "grant_type=client_credentials&client_assertion_type=urn%3Ax&client_assertion=x&{ok}"
            )),
            ErrorCode::InvalidClient
        );
        assert_eq!(
            code(&format!("grant_type=client_credentials&client_assertion_type={ASSERTION}&{ok}")),
            ErrorCode::InvalidClient
        );
        let big = "a".repeat(MAX_ASSERTION + 1);
        assert_eq!(
            code(&format!(
                "grant_type=client_credentials&client_assertion_type={ASSERTION}&client_assertion={big}&{ok}"
            )),
            ErrorCode::InvalidClient
        );
        let e = |extra: &str| parse(&form(extra), false).unwrap_err();
        assert_eq!(e("scope=read%40a").code, ErrorCode::InvalidTarget);
        assert_eq!(e("scope=read%40a&resource=a+b").code, ErrorCode::InvalidTarget);
        assert_eq!(e("resource=r").code, ErrorCode::InvalidScope);
        for bad in
            ["read", "read%40A%2F..%2Fb", "read%40a++write%40b", "+read%40a", "r%C3%A9ad%40a", "read%40a%2F"]
        {
            assert_eq!(e(&format!("resource=r&scope={bad}")).code, ErrorCode::InvalidScope, "{bad}");
        }
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("v{i}%40a")).collect();
        assert_eq!(e(&format!("resource=r&scope={}", many.join("+"))).code, ErrorCode::InvalidScope);
        assert_eq!(e(&format!("{ok}&task={}", "t".repeat(MAX_TASK + 1))).code, ErrorCode::InvalidRequest);
    }
}
