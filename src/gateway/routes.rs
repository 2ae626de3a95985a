//! The gateway's routes: what `routes.yaml` (the `agentiam-gateway` ConfigMap) may say, checked in full
//! before any route serves, and the mapping of one call to the question the policy engine decides. Pure.
//!
//! ```yaml
//! routes:
//!   - name: tickets                       # the path prefix /gateway/tickets/
//!     upstream: http://tickets.support.svc:8080/api
//!     protocol: http                      # or mcp (JSON-RPC tools/call decided with its arguments)
//!     audience: tickets                   # the only audience a token may carry here
//!     resource: tickets                   # the first segments of every resource (default: the name)
//!     tokenType: delegated                # optional: identity, delegated or access only
//!     timeoutSeconds: 25                  # the upstream's answer must start within this (1-25)
//!     maxBodyBytes: 1048576               # larger request bodies are refused with 413 (at most 16 MiB)
//!     approvalWaitSeconds: 60             # how long a call that needs approval is held (0-60)
//!     credential:                         # added to allowed calls only; from the operator's namespace
//!       header: {name: X-Api-Key, secretName: tickets-api, key: api-key, prefix: ""}
//!       # or basic: {secretName: tickets-basic}   (keys username and password)
//! ```
//!
//! The resource of a call is the route's `resource`, then the path below the route as sent, checked by
//! the one resource grammar (dot segments, encoded slashes and the rest refused): so the path the policy
//! judged is the path the upstream receives, with no second reading in between.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, Uri};
use serde::Deserialize;

use crate::authz::resource;
use crate::registry::validate::{is_dns_label, is_dns_subdomain};
use crate::server::decision::TokenType;

/// The path prefix of every gateway route: `/gateway/<route>/...`.
pub const PREFIX: &str = "/gateway";
/// The default and largest time for an upstream to start its answer: below the API listener's request
/// timeout (30 s), so the gateway answers 504 itself rather than the listener cutting the connection.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(25);
/// The default request body limit.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// The largest request body limit a route may set.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// The default and longest hold of a call that needs a human's approval.
pub const MAX_APPROVAL_WAIT: Duration = Duration::from_secs(60);
/// Most routes in one configuration.
pub const MAX_ROUTES: usize = 256;

/// How the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP: the action from the method, the resource from the path.
    Http,
    /// MCP over streamable HTTP: a JSON-RPC request is decided by its method, tool and arguments.
    Mcp,
}

/// Where an upstream credential's value is, in a Secret of the operator's namespace (which agents cannot
/// read; the chart grants the operator `get` on exactly the Secrets the routes name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// One header: `name: <prefix><value of key>`.
    Header {
        /// The header.
        name: HeaderName,
        /// The Secret.
        secret: String,
        /// Its key.
        key: String,
        /// Put before the value (`Bearer ` for an upstream that wants its API key as a bearer token).
        prefix: String,
    },
    /// HTTP basic authentication from the Secret's `username` and `password` keys.
    Basic {
        /// The Secret.
        secret: String,
    },
}

impl Credential {
    /// The Secret it reads.
    pub fn secret(&self) -> &str {
        match self {
            Self::Header { secret, .. } | Self::Basic { secret } => secret,
        }
    }
}

/// One route, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its name, the path segment after [`PREFIX`].
    pub name: String,
    /// The upstream: scheme, authority and a path prefix.
    pub upstream: Uri,
    /// How the upstream speaks.
    pub protocol: Protocol,
    /// The audience a token must carry.
    pub audience: String,
    /// The first segments of every resource.
    pub resource: String,
    /// Only this kind of token, when set.
    pub token_type: Option<TokenType>,
    /// The upstream's answer must start within this.
    pub timeout: Duration,
    /// Larger request bodies are refused.
    pub max_body: usize,
    /// How long a call that needs approval is held.
    pub approval_wait: Duration,
    /// Added to allowed calls.
    pub credential: Option<Credential>,
}

/// Every route, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSet {
    routes: BTreeMap<String, Route>,
}

/// Why a configuration is refused; it names the route and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not YAML of the expected shape.
    #[error("routes.yaml is not a valid route list: {0}")]
    Syntax(String),
    /// More than [`MAX_ROUTES`].
    #[error("routes.yaml has {0} routes; at most {MAX_ROUTES} are allowed")]
    TooMany(usize),
    /// One route's field.
    #[error("route {route:?}: {message}")]
    Field {
        /// The route (or its position when it has no usable name).
        route: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    name: String,
    upstream: String,
    #[serde(default = "http_protocol")]
    protocol: Protocol,
    audience: String,
    resource: Option<String>,
    token_type: Option<TokenType>,
    timeout_seconds: Option<u64>,
    max_body_bytes: Option<usize>,
    approval_wait_seconds: Option<u64>,
    credential: Option<RawCredential>,
}

fn http_protocol() -> Protocol {
    Protocol::Http
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    header: Option<RawHeader>,
    basic: Option<RawBasic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHeader {
    name: String,
    secret_name: String,
    key: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBasic {
    secret_name: String,
}

/// Headers a credential may not set: the request's framing and routing, and the gateway's own.
const RESERVED_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "cookie",
];

fn secret_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl RouteSet {
    /// Parses and checks `routes.yaml`; any bad route refuses the whole file (a gateway that served the
    /// good half would be a configuration nobody wrote).
    ///
    /// # Errors
    /// The first problem found, naming its route and field.
    pub fn parse(yaml: &str) -> Result<Self, RouteError> {
        let file: File = serde_saphyr::from_str(yaml).map_err(|e| RouteError::Syntax(e.to_string()))?;
        if file.routes.len() > MAX_ROUTES {
            return Err(RouteError::TooMany(file.routes.len()));
        }
        let mut routes = BTreeMap::new();
        for (i, raw) in file.routes.into_iter().enumerate() {
            let label = if is_dns_label(&raw.name) { raw.name.clone() } else { format!("#{}", i + 1) };
            let route = check(raw).map_err(|message| RouteError::Field { route: label.clone(), message })?;
            if routes.contains_key(&route.name) {
                return Err(RouteError::Field { route: label, message: "the name is used twice".into() });
            }
            routes.insert(route.name.clone(), route);
        }
        Ok(Self { routes })
    }

    /// The route `name`.
    pub fn get(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The Secrets the routes' credentials read.
    pub fn secrets(&self) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.iter().filter_map(|r| r.credential.as_ref()).map(Credential::secret).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

fn check(raw: RawRoute) -> Result<Route, String> {
    if !is_dns_label(&raw.name) {
        return Err("name must be a DNS label (1-63 lowercase letters, digits and '-')".into());
    }
    let upstream = check_upstream(&raw.upstream)?;
    if raw.audience.is_empty() || raw.audience.len() > 255 || raw.audience.chars().any(char::is_control) {
        return Err("audience must be 1-255 characters without control characters".into());
    }
    let resource = raw.resource.unwrap_or_else(|| raw.name.clone());
    match resource::canonical(&resource) {
        Ok(c) if c == resource => {}
        Ok(c) => return Err(format!("resource {resource:?} is not in canonical form (write {c:?})")),
        Err(e) => return Err(format!("resource {resource:?} {e}")),
    }
    let timeout = match raw.timeout_seconds {
        None => MAX_TIMEOUT,
        Some(s) if (1..=MAX_TIMEOUT.as_secs()).contains(&s) => Duration::from_secs(s),
        Some(s) => return Err(format!("timeoutSeconds {s} is not between 1 and {}", MAX_TIMEOUT.as_secs())),
    };
    let max_body = match raw.max_body_bytes {
        None => DEFAULT_MAX_BODY,
        Some(b) if b <= MAX_BODY => b,
        Some(b) => return Err(format!("maxBodyBytes {b} is over {MAX_BODY}")),
    };
    let approval_wait = match raw.approval_wait_seconds {
        None => MAX_APPROVAL_WAIT,
        Some(s) if s <= MAX_APPROVAL_WAIT.as_secs() => Duration::from_secs(s),
        Some(s) => {
            return Err(format!("approvalWaitSeconds {s} is over {}", MAX_APPROVAL_WAIT.as_secs()));
        }
    };
    let credential = raw.credential.map(check_credential).transpose()?;
    Ok(Route {
        name: raw.name,
        upstream,
        protocol: raw.protocol,
        audience: raw.audience,
        resource,
        token_type: raw.token_type,
        timeout,
        max_body,
        approval_wait,
        credential,
    })
}

fn check_upstream(raw: &str) -> Result<Uri, String> {
    let bad = |why: &str| Err(format!("upstream {raw:?} {why}"));
    let Ok(uri) = raw.parse::<Uri>() else { return bad("is not a URL") };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return bad("must be an http:// or https:// URL"),
    }
    let Some(authority) = uri.authority() else { return bad("has no host") };
    if authority.as_str().contains('@') {
        return bad("must not carry credentials in the URL (use credential)");
    }
    if authority.host().is_empty() {
        return bad("has no host");
    }
    if uri.query().is_some() || raw.contains('#') {
        return bad("must not have a query or fragment");
    }
    Ok(uri)
}

fn check_credential(raw: RawCredential) -> Result<Credential, String> {
    match (raw.header, raw.basic) {
        (Some(h), None) => {
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                return Err(format!("credential.header.name {:?} is not a header name", h.name));
            };
            if RESERVED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("x-agentiam-") {
                return Err(format!("credential.header.name {:?} is reserved", h.name));
            }
            if !is_dns_subdomain(&h.secret_name) {
                return Err(format!("credential.header.secretName {:?} is not a Secret name", h.secret_name));
            }
            if !secret_key(&h.key) {
                return Err(format!("credential.header.key {:?} is not a Secret key", h.key));
            }
            if h.prefix.len() > 64 || !h.prefix.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err("credential.header.prefix must be at most 64 visible ASCII characters".into());
            }
            Ok(Credential::Header { name, secret: h.secret_name, key: h.key, prefix: h.prefix })
        }
        (None, Some(b)) => {
            if !is_dns_subdomain(&b.secret_name) {
                return Err(format!("credential.basic.secretName {:?} is not a Secret name", b.secret_name));
            }
            Ok(Credential::Basic { secret: b.secret_name })
        }
        _ => Err("credential must have exactly one of header and basic".into()),
    }
}

/// Splits a request path `/gateway/<route>[/<rest>]` into the route's name and the rest (without its
/// leading `/`; empty for the route's root). None for a path outside the gateway.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let below = path.strip_prefix(PREFIX)?.strip_prefix('/')?;
    Some(below.split_once('/').unwrap_or((below, "")))
}

/// Why a call cannot be mapped to a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MapError(pub String);

impl Route {
    /// The resource a call to `rest` (the path below the route, as sent) is decided on: the route's
    /// resource, then `rest`. The decision canonicalises it with the resource grammar, which refuses
    /// anything an upstream could read as another path.
    pub fn resource_of(&self, rest: &str) -> String {
        if rest.is_empty() { self.resource.clone() } else { format!("{}/{rest}", self.resource) }
    }

    /// The upstream URL of a call to `rest` with `query`: the upstream's path, then `rest`, byte for byte
    /// as the agent sent it (the resource decided is the same bytes).
    ///
    /// # Errors
    /// The result is not a URL (it cannot be when `rest` passed the resource grammar).
    pub fn upstream_uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, MapError> {
        let base = self.upstream.path().trim_end_matches('/');
        let mut path_and_query = match rest {
            "" if base.is_empty() => "/".to_owned(),
            "" => base.to_owned(),
            r => format!("{base}/{r}"),
        };
        if let Some(q) = query {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query =
            Some(path_and_query.parse().map_err(|_| MapError("the upstream URL would not be valid".into()))?);
        Uri::from_parts(parts).map_err(|_| MapError("the upstream URL would not be valid".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
routes:
  - name: tickets
    upstream: http://tickets.support.svc:8080/api/
    audience: tickets
    credential:
      header: {name: X-Api-Key, secretName: tickets-api, key: api-key}
  - name: crm-mcp
    upstream: https://crm.example.com
    protocol: mcp
    audience: crm
    resource: "crm:mcp"
    tokenType: delegated
    timeoutSeconds: 5
    approvalWaitSeconds: 30
    credential: {basic: {secretName: crm-basic}}
"#;

    #[test]
    fn a_good_file_is_read_with_its_defaults() {
        let set = RouteSet::parse(GOOD).unwrap();
        assert_eq!(set.len(), 2);
        let t = set.get("tickets").unwrap();
        assert_eq!((t.protocol, t.resource.as_str(), t.timeout), (Protocol::Http, "tickets", MAX_TIMEOUT));
        assert_eq!((t.max_body, t.approval_wait, t.token_type), (DEFAULT_MAX_BODY, MAX_APPROVAL_WAIT, None));
        let m = set.get("crm-mcp").unwrap();
        assert_eq!((m.protocol, m.token_type), (Protocol::Mcp, Some(TokenType::Delegated)));
        assert_eq!(m.credential, Some(Credential::Basic { secret: "crm-basic".into() }));
        assert_eq!(set.secrets(), ["crm-basic", "tickets-api"]);
        assert!(RouteSet::parse("routes: []").unwrap().is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let route = |extra: &str| {
            format!("routes:\n  - name: r\n    upstream: http://up:80\n    audience: a\n{extra}")
        };
        for (yaml, want) in [
            ("routes:\n  - {name: R, upstream: 'http://u', audience: a}".to_owned(), "DNS label"),
            ("routes:\n  - {name: r, upstream: 'ftp://u', audience: a}".to_owned(), "http:// or https://"),
            (
                "routes:\n  - {name: r, upstream: 'http://u:p@h', audience: a}".to_owned(),
                "credentials in the URL",
            ),
            ("routes:\n  - {name: r, upstream: 'http://h/?q=1', audience: a}".to_owned(), "query"),
            ("routes:\n  - {name: r, upstream: 'http://h', audience: ''}".to_owned(), "audience"),
            (route("    resource: a/../b\n"), "\"..\" segment"),
            (route("    resource: a/\n"), "canonical"),
            (route("    timeoutSeconds: 0\n"), "timeoutSeconds"),
            (route("    timeoutSeconds: 26\n"), "timeoutSeconds"),
            (route("    maxBodyBytes: 99999999\n"), "maxBodyBytes"),
            (route("    approvalWaitSeconds: 61\n"), "approvalWaitSeconds"),
            (route("    tokenType: session\n"), "not a valid route list"),
            (route("    colour: red\n"), "not a valid route list"),
            (route("    credential: {}\n"), "exactly one"),
            (route("    credential: {header: {name: Host, secretName: s, key: k}}\n"), "reserved"),
            (
                route("    credential: {header: {name: x-agentiam-agent, secretName: s, key: k}}\n"),
                "reserved",
            ),
            (route("    credential: {header: {name: 'a b', secretName: s, key: k}}\n"), "not a header name"),
            (route("    credential: {header: {name: k, secretName: S_, key: k}}\n"), "not a Secret name"),
            (route("    credential: {header: {name: k, secretName: s, key: 'a/b'}}\n"), "not a Secret key"),
            (
                route("    credential: {header: {name: k, secretName: s, key: k, prefix: \"\\n\"}}\n"),
                "prefix",
            ),
            (format!("{}  - {{name: r, upstream: 'http://u', audience: a}}\n", route("")), "used twice"),
        ] {
            let err = RouteSet::parse(&yaml).expect_err(&yaml).to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn paths_split_into_route_and_rest() {
        assert_eq!(split_path("/gateway/tickets/queue/1"), Some(("tickets", "queue/1")));
        assert_eq!(split_path("/gateway/tickets"), Some(("tickets", "")));
        assert_eq!(split_path("/gateway/tickets/"), Some(("tickets", "")));
        assert_eq!(split_path("/gatewayx/tickets"), None);
        assert_eq!(split_path("/v1/authorize"), None);
    }

    #[test]
    fn the_resource_and_the_upstream_path_are_the_same_bytes() {
        let set = RouteSet::parse(GOOD).unwrap();
        let t = set.get("tickets").unwrap();
        assert_eq!(t.resource_of("queue/1"), "tickets/queue/1");
        assert_eq!(t.resource_of(""), "tickets");
        assert_eq!(
            t.upstream_uri("queue/1", Some("a=b")).unwrap(),
            "http://tickets.support.svc:8080/api/queue/1?a=b"
        );
        assert_eq!(t.upstream_uri("", None).unwrap(), "http://tickets.support.svc:8080/api");
        let m = set.get("crm-mcp").unwrap();
        assert_eq!(m.upstream_uri("", None).unwrap(), "https://crm.example.com/");
        assert_eq!(m.upstream_uri("mcp", None).unwrap(), "https://crm.example.com/mcp");
        assert_eq!(m.resource_of("mcp"), "crm:mcp/mcp");
    }
}
