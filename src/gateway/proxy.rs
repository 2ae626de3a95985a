//! The gateway's handler: one call, in order: find the route -> read the body (bounded) -> map the call to
//! a decision request (the route's audience and resource, the method or the MCP tool and its arguments)
//! -> decide it with the decision API's own [`Authorizer`] (which verifies the token, checks the agent,
//! its chain and revocations, evaluates the policies, holds a call that needs approval and records the
//! decision before it answers) -> on Allow only, forward it without the agent's token and with the route's
//! upstream credential -> stream the answer back -> record the call (route, tool, a digest of the
//! arguments, decision, upstream status, bytes, latency) when the answer has been sent.
//!
//! Every refusal is the gateway's own answer (JSON, or a JSON-RPC error on an MCP route), never a 5xx
//! for bad input and never a forwarded call: 401 with `WWW-Authenticate` naming the route's protected
//! resource metadata when the token proves nobody, 403 for a denial, 413 for a body over the route's
//! limit, 502/504 when the upstream fails or is slow.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use super::headers;
use super::routes::{self, Credential, Protocol, Route, RouteSet};
use crate::audit::{AuditLog, Entry, ObjectRef, Outcome};
use crate::authz::Verdict;
use crate::server::decision::{AuthorizeRequest, AuthorizeResponse, Authorizer, BadRequest, Source, verb_of};
use crate::server::mcp::{self, Mapping};

/// How long a credential read from its Secret is used before it is read again (a rotated key is in use
/// this long after the Secret changes).
const CREDENTIAL_REFRESH: Duration = Duration::from_secs(30);
/// How long a credential already read stays usable while its Secret cannot be read (an API server
/// outage); after that, calls that need it are refused.
const CREDENTIAL_GRACE: Duration = Duration::from_secs(300);
/// The JSON-RPC error code of a refused MCP call (implementation-defined server errors are -32000 to
/// -32099).
const RPC_DENIED: i64 = -32003;

type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The gateway: its routes (or why they are refused), the decision path and the upstream client.
pub struct Gateway {
    routes: Result<RouteSet, String>,
    authorizer: Arc<Authorizer>,
    audit: AuditLog,
    client: UpstreamClient,
    credentials: Credentials,
    /// The operator's issuer URL, the base of the protected resource metadata's URLs.
    issuer_url: String,
    /// Every call is answered (headers) within this: the listener's request timeout, less a margin.
    budget: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("routes", &self.routes).finish_non_exhaustive()
    }
}

/// A Secret's data, by key.
type SecretData = std::collections::BTreeMap<String, Vec<u8>>;

/// The Secrets upstream credentials come from, read when first needed and again every
/// [`CREDENTIAL_REFRESH`].
struct Credentials {
    api: kube::Api<Secret>,
    cache: Mutex<HashMap<String, (Instant, Arc<SecretData>)>>,
}

/// Why a call that was allowed could not be forwarded.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("the upstream credential is unavailable: {0}")]
    Credential(String),
    #[error("the upstream URL cannot be built: {0}")]
    Url(String),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream could not be reached: {0}")]
    Connect(String),
}

impl Credentials {
    /// The header the credential `c` adds, its value marked sensitive (never logged by hyper).
    async fn header(&self, c: &Credential) -> Result<(HeaderName, HeaderValue), String> {
        let data = self.secret(c.secret()).await?;
        let read = |key: &str| -> Result<Vec<u8>, String> {
            let mut value = data
                .get(key)
                .cloned()
                .ok_or_else(|| format!("Secret {:?} has no key {key:?}", c.secret()))?;
            // Secrets made from files often end with a newline that is not part of the key.
            while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                value.pop();
            }
            Ok(value)
        };
        let (name, mut value) = match c {
            Credential::Header { name, key, prefix, .. } => {
                let mut v = prefix.as_bytes().to_vec();
                v.extend(read(key)?);
                (name.clone(), v)
            }
            Credential::Basic { .. } => {
                let mut pair = read("username")?;
                pair.push(b':');
                pair.extend(read("password")?);
                let encoded = base64::engine::general_purpose::STANDARD.encode(&pair);
                pair.iter_mut().for_each(|b| *b = 0);
                (header::AUTHORIZATION, format!("Basic {encoded}").into_bytes())
            }
        };
        let header_value = HeaderValue::from_bytes(&value)
            .map_err(|_| format!("the value in Secret {:?} cannot be sent in a header", c.secret()));
        value.iter_mut().for_each(|b| *b = 0);
        let mut header_value = header_value?;
        header_value.set_sensitive(true);
        Ok((name, header_value))
    }

    async fn secret(&self, name: &str) -> Result<Arc<SecretData>, String> {
        let cached = self.cache.lock().ok().and_then(|c| c.get(name).cloned());
        if let Some((at, data)) = &cached
            && at.elapsed() < CREDENTIAL_REFRESH
        {
            return Ok(Arc::clone(data));
        }
        match self.api.get_opt(name).await {
            Ok(Some(secret)) => {
                let data: SecretData =
                    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                let data = Arc::new(data);
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(name.to_owned(), (Instant::now(), Arc::clone(&data)));
                }
                Ok(data)
            }
            Ok(None) => {
                if let Ok(mut c) = self.cache.lock() {
                    c.remove(name);
                }
                Err(format!("Secret {name:?} does not exist in the operator's namespace"))
            }
            Err(e) => match cached {
                Some((at, data)) if at.elapsed() < CREDENTIAL_GRACE => {
                    tracing::warn!(secret = name, error = %e, "cannot re-read an upstream credential; using the one read {}s ago", at.elapsed().as_secs());
                    Ok(data)
                }
                _ => Err(format!("Secret {name:?} cannot be read: {e}")),
            },
        }
    }
}

impl Gateway {
    /// A gateway serving `routes` (or refusing every call with the reason they are invalid), deciding with
    /// `authorizer`, reading upstream credentials from Secrets in `namespace`, connecting to https
    /// upstreams with `tls`, answering every call within `budget`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        routes: Result<RouteSet, String>,
        authorizer: Arc<Authorizer>,
        audit: AuditLog,
        client: kube::Client,
        namespace: &str,
        tls: rustls::ClientConfig,
        issuer_url: String,
        budget: Duration,
    ) -> Arc<Self> {
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client_builder = Client::builder(TokioExecutor::new());
        let upstream = client_builder.build(connector);
        Arc::new(Self {
            routes,
            authorizer,
            audit,
            client: upstream,
            credentials: Credentials {
                api: kube::Api::namespaced(client, namespace),
                cache: Mutex::default(),
            },
            issuer_url: issuer_url.trim_end_matches('/').to_owned(),
            budget,
        })
    }

    fn metadata_url(&self, route: &str) -> String {
        format!("{}/.well-known/oauth-protected-resource{}/{route}", self.issuer_url, routes::PREFIX)
    }
}

/// The gateway's routes on the API listener.
pub fn surface(gateway: Arc<Gateway>) -> crate::server::Surface {
    let prefix = routes::PREFIX;
    crate::server::Routes::new("gateway")
        .route(&format!("{prefix}/{{route}}"), any(handle))
        .route(&format!("{prefix}/{{route}}/{{*rest}}"), any(handle))
        .route(&format!("/.well-known/oauth-protected-resource{prefix}/{{route}}"), get(resource_metadata))
        .finish(gateway)
}

/// RFC 9728 protected resource metadata of one route: where its tokens come from.
async fn resource_metadata(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(route): axum::extract::Path<String>,
) -> Response {
    let Ok(routes) = &gw.routes else {
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "the gateway routes are invalid");
    };
    if routes.get(&route).is_none() {
        return refusal(StatusCode::NOT_FOUND, &format!("no gateway route {route:?}"));
    }
    let body = json!({
        "resource": format!("{}{}/{route}", gw.issuer_url, routes::PREFIX),
        "authorization_servers": [gw.issuer_url],
        "bearer_methods_supported": ["header"],
        "resource_name": route,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// A refusal before any decision: JSON `{"error": ...}`.
pub(super) fn refusal(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// What one call was, for its audit record.
#[derive(Debug, Clone, Default)]
pub(super) struct Call {
    route: String,
    method: String,
    tool: Option<String>,
    arguments_digest: Option<String>,
    request_bytes: usize,
    decision: Option<AuthorizeResponse>,
}

impl Call {
    /// The call's record: the agent as its token proved it, the route, the decision's record id, and what
    /// came of it. Never the token, the credential or argument values (only their digest).
    fn entry(
        self,
        status: u16,
        upstream: Option<u16>,
        response_bytes: u64,
        elapsed: Duration,
        complete: bool,
        note: &str,
    ) -> Entry {
        let agent = self.decision.as_ref().and_then(|d| d.agent.clone());
        let actor = agent
            .as_ref()
            .map_or_else(|| "unauthenticated".to_owned(), |a| format!("agent:{}/{}", a.namespace, a.name));
        let object = match &agent {
            Some(a) => ObjectRef {
                api_version: "agentiam.dev/v1alpha1".into(),
                kind: "Agent".into(),
                namespace: Some(a.namespace.clone()),
                name: a.name.clone(),
                uid: a.uid.clone(),
            },
            None => ObjectRef {
                api_version: "agentiam.dev/v1alpha1".into(),
                kind: "Agent".into(),
                namespace: None,
                name: "unknown".into(),
                uid: None,
            },
        };
        let outcome = match upstream {
            Some(s) if s < 500 && complete => Outcome::Success,
            Some(_) => Outcome::Failure,
            None if status >= 500 => Outcome::Failure,
            None => Outcome::Denied,
        };
        let mut e = Entry::new(actor, crate::audit::Action::GatewayCall, object, outcome, note.to_owned())
            .with_detail("route", self.route)
            .with_detail("method", self.method)
            .with_detail("status", status.to_string())
            .with_detail("requestBytes", self.request_bytes.to_string())
            .with_detail("responseBytes", response_bytes.to_string())
            .with_detail("latencyMs", format!("{:.3}", elapsed.as_secs_f64() * 1000.0));
        if let Some(s) = upstream {
            e = e.with_detail("upstreamStatus", s.to_string());
            e = e.with_detail("complete", complete.to_string());
        }
        if let Some(t) = self.tool {
            e = e.with_detail("tool", t);
        }
        if let Some(d) = self.arguments_digest {
            e = e.with_detail("argumentsSHA256", d);
        }
        if let Some(d) = self.decision {
            e = e.with_detail("decision", d.decision.as_str()).with_detail("decisionAuditId", d.audit_id);
            if let Some(p) = d.policy {
                e = e.with_detail("policy", p);
            }
            if let Some(r) = d.rule {
                e = e.with_detail("rule", r);
            }
            if let Some(o) = d.on_behalf_of {
                e = e.with_detail("onBehalfOf", o);
            }
            if !d.chain.is_empty() {
                let chain: Vec<String> = d.chain.iter().map(|l| format!("{}:{}", l.kind, l.name)).collect();
                e = e.with_detail("chain", chain.join(" > "));
            }
            if let Some(a) = d.approval {
                e = e.with_detail("approvalRequest", format!("{}/{}", a.namespace, a.id));
            }
        }
        e
    }
}

/// Records `call` without waiting (the caller has answered or is answering). A record that cannot be
/// queued is logged: the decision before it was recorded already, and nothing is left to refuse.
fn record(audit: &AuditLog, entry: Entry) {
    let audit = audit.clone();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("no runtime to record a gateway call on");
        return;
    };
    runtime.spawn(async move {
        if let Err(e) = audit.enqueue(entry).await {
            tracing::error!(error = %e, "cannot record a gateway call");
        }
    });
}

/// The gateway's own answer to a call it does not forward, recorded.
fn refuse(
    gw: &Gateway,
    call: Call,
    started: Instant,
    status: StatusCode,
    response: Response,
    note: &str,
) -> Response {
    let outcome = if status.is_server_error() { "error" } else { "refused" };
    crate::metrics::global().gateway_call(&call.route, outcome, started.elapsed().as_secs_f64());
    record(&gw.audit, call.entry(status.as_u16(), None, 0, started.elapsed(), true, note));
    response
}

/// [`refuse`] with a plain JSON answer whose message is also the record's note.
fn refuse_plain(gw: &Gateway, call: Call, started: Instant, status: StatusCode, message: &str) -> Response {
    refuse(gw, call, started, status, refusal(status, message), message)
}

/// A JSON-RPC error answer to the request `id` (HTTP 200: the refusal is the call's result, as MCP
/// clients expect it).
fn rpc_error(id: &Value, message: &str, data: Value) -> Response {
    let body =
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": RPC_DENIED, "message": message, "data": data}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// What the gateway itself reads from an MCP route's body, in one parse: its JSON-RPC `id` (None for a
/// notification or a body that is not one), and whether some object in it has a `method` without saying
/// `"jsonrpc": "2.0"` (a lenient server could take it as a call the mapping, which reads only JSON-RPC
/// 2.0, never judged).
fn json_rpc_facts(body: &[u8]) -> (Option<Value>, bool) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return (None, false) };
    let objects: Vec<&serde_json::Map<String, Value>> = match &v {
        Value::Object(o) => vec![o],
        Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
        _ => return (None, false),
    };
    let not_2 = objects
        .iter()
        .any(|o| o.contains_key("method") && o.get("jsonrpc").and_then(Value::as_str) != Some("2.0"));
    (v.get("id").filter(|id| !id.is_null()).cloned(), not_2)
}

/// SHA-256 of the arguments as JSON (keys in order), hex: the record can prove which arguments were
/// judged without holding their values.
fn digest(arguments: &serde_json::Map<String, Value>) -> String {
    let text = Value::Object(arguments.clone()).to_string();
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()))
}

fn bearer(headers: &HeaderMap) -> Result<String, String> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(first) = values.next() else { return Ok(String::new()) };
    if values.next().is_some() {
        return Err("header authorization was sent more than once".into());
    }
    let text = first.to_str().map_err(|_| "header authorization is not visible ASCII".to_owned())?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim().to_owned()),
        _ => Err("header authorization must be \"Bearer <token>\"".into()),
    }
}

async fn handle(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let Some((name, rest)) = routes::split_path(parts.uri.path()) else {
        return refusal(StatusCode::NOT_FOUND, "not a gateway path");
    };
    let routes = match &gw.routes {
        Ok(r) => r,
        Err(e) => {
            return refusal(StatusCode::SERVICE_UNAVAILABLE, &format!("the gateway routes are invalid: {e}"));
        }
    };
    let Some(route) = routes.get(name) else {
        return refusal(StatusCode::NOT_FOUND, &format!("no gateway route {name:?}"));
    };
    let mut call = Call { route: route.name.clone(), method: parts.method.to_string(), ..Call::default() };
    let token = match bearer(&parts.headers) {
        Ok(t) => t,
        Err(m) => {
            return refuse_plain(&gw, call, started, StatusCode::BAD_REQUEST, &m);
        }
    };
    let body = match Limited::new(body, route.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let m = format!("the request body is larger than this route's limit of {} bytes", route.max_body);
            return refuse_plain(&gw, call, started, StatusCode::PAYLOAD_TOO_LARGE, &m);
        }
        Err(_) => {
            let m = "the request body could not be read";
            return refuse_plain(&gw, call, started, StatusCode::BAD_REQUEST, m);
        }
    };
    call.request_bytes = body.len();
    let wait = u32::try_from(route.approval_wait.min(gw.budget).as_secs()).unwrap_or(0);
    let mut req = AuthorizeRequest {
        token,
        action: verb_of(&parts.method).to_owned(),
        resource: route.resource_of(rest),
        audience: Some(route.audience.clone()),
        token_type: route.token_type,
        wait_seconds: Some(wait),
        ..AuthorizeRequest::default()
    };
    let mut id = None;
    if route.protocol == Protocol::Mcp && parts.method == Method::POST {
        let (rpc_id, not_2) = json_rpc_facts(&body);
        if not_2 {
            let why =
                "an MCP route takes JSON-RPC 2.0: a request with a method must say \"jsonrpc\": \"2.0\"";
            return refuse_plain(&gw, call, started, StatusCode::BAD_REQUEST, why);
        }
        match mcp::map_body(&body) {
            Mapping::NotJsonRpc => {}
            Mapping::Refused(why) => {
                return refuse_plain(&gw, call, started, StatusCode::BAD_REQUEST, why);
            }
            Mapping::Call { action, tool, arguments } => {
                call.tool.clone_from(&tool);
                call.arguments_digest = (!arguments.is_empty()).then(|| digest(&arguments));
                req.action = action;
                req.tool = tool;
                req.context = (!arguments.is_empty()).then_some(arguments);
                id = rpc_id;
            }
        }
    }
    // An MCP request whose client takes an event stream can wait for a human's answer longer than the
    // listener would let a plain answer wait: once it takes a while, the gateway answers with an event
    // stream, keeps it alive, and sends the call's answer as its event (hold.rs).
    if route.protocol == Protocol::Mcp && id.is_some() && super::hold::accepts_events(&parts.headers) {
        req.wait_seconds = Some(u32::try_from(route.approval_wait.as_secs()).unwrap_or(0));
        req.kept_alive = true;
        let held = super::hold::Held {
            route: route.clone(),
            rest: rest.to_owned(),
            parts,
            body,
            call,
            started,
            req,
            id,
        };
        return super::hold::answer(Arc::clone(&gw), held).await;
    }
    decide_and_forward(&gw, route, rest, &parts, body, call, started, req, id.as_ref(), false).await
}

/// Decides the call and, on Allow, forwards it. With `kept_alive` the caller keeps the agent's connection
/// alive itself (an event stream), so the upstream gets the route's whole timeout however long the
/// decision waited.
#[allow(clippy::too_many_arguments)]
pub(super) async fn decide_and_forward(
    gw: &Gateway,
    route: &Route,
    rest: &str,
    parts: &axum::http::request::Parts,
    body: Bytes,
    mut call: Call,
    started: Instant,
    req: AuthorizeRequest,
    id: Option<&Value>,
    kept_alive: bool,
) -> Response {
    let decision = match gw.authorizer.authorize(&req, Source::Gateway).await {
        Ok(d) => d,
        Err(BadRequest(m)) => {
            return refuse_plain(gw, call, started, StatusCode::BAD_REQUEST, &m);
        }
    };
    call.decision = Some(decision.clone());
    if decision.decision != Verdict::Allow {
        return denied(gw, route, call, started, &decision, id);
    }
    let timeout = if kept_alive {
        route.timeout
    } else {
        route.timeout.min(gw.budget.saturating_sub(started.elapsed()))
    };
    // A tools/list answer is filtered to the tools this agent may call, judged like the calls would be.
    let list = (route.protocol == Protocol::Mcp && req.action == "tools.list").then_some(&req);
    forward(gw, route, rest, parts, body, call, started, &decision, list, timeout).await
}

/// The answer to a call the decision did not allow: 401 when the token proved nobody, else 403 (a
/// JSON-RPC error on an MCP route), naming the rule and, while a human's answer is awaited, the approval.
fn denied(
    gw: &Gateway,
    route: &Route,
    call: Call,
    started: Instant,
    d: &AuthorizeResponse,
    id: Option<&Value>,
) -> Response {
    let note = format!("{}: {}", d.decision.as_str(), d.reason);
    if d.agent.is_none() {
        let challenge =
            format!("Bearer resource_metadata=\"{}\", error=\"invalid_token\"", gw.metadata_url(&route.name));
        let mut response = refusal(StatusCode::UNAUTHORIZED, &format!("not authenticated: {}", d.reason));
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return refuse(gw, call, started, StatusCode::UNAUTHORIZED, response, &note);
    }
    let data = json!({
        "decision": d.decision.as_str(),
        "reason": d.reason,
        "policy": d.policy,
        "rule": d.rule,
        "auditId": d.audit_id,
        "approval": d.approval.as_ref().map(|a| format!("{}/{}", a.namespace, a.id)),
    });
    let response = match id {
        Some(id) if route.protocol == Protocol::Mcp => {
            let rule = d.rule.as_deref().map_or_else(String::new, |r| format!(" (rule {r})"));
            rpc_error(id, &format!("agentiam {}{rule}: {}", d.decision.as_str(), d.reason), data)
        }
        _ => (StatusCode::FORBIDDEN, axum::Json(data)).into_response(),
    };
    refuse(gw, call, started, StatusCode::FORBIDDEN, response, &note)
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    gw: &Gateway,
    route: &Route,
    rest: &str,
    parts: &axum::http::request::Parts,
    body: Bytes,
    call: Call,
    started: Instant,
    decision: &AuthorizeResponse,
    list: Option<&AuthorizeRequest>,
    timeout: Duration,
) -> Response {
    match send(gw, route, rest, parts, body, decision, timeout).await {
        Ok(upstream) => match list.filter(|_| upstream.status().is_success()) {
            Some(asked) => filtered_list(gw, route, call, started, upstream, asked).await,
            None => streamed(gw, route, call, started, upstream),
        },
        Err(e) => {
            let status = match e {
                ForwardError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            tracing::warn!(route = %route.name, error = %e, "a gateway call could not be forwarded");
            let m = e.to_string();
            refuse_plain(gw, call, started, status, &m)
        }
    }
}

/// The upstream's answer streamed to the agent as it comes; the call is recorded when it ends.
fn streamed(
    gw: &Gateway,
    route: &Route,
    call: Call,
    started: Instant,
    upstream: hyper::Response<Incoming>,
) -> Response {
    let (up, upstream_body) = upstream.into_parts();
    let mut response = Response::new(Body::new(Counted {
        inner: upstream_body,
        bytes: 0,
        finish: Some(Finish { audit: gw.audit.clone(), call, status: up.status.as_u16(), started }),
    }));
    *response.status_mut() = up.status;
    *response.headers_mut() = headers::agent_response(&up.headers);
    crate::metrics::global().gateway_call(&route.name, "forwarded", started.elapsed().as_secs_f64());
    response
}

/// The largest tools/list answer the gateway filters (it must hold it whole to do so).
const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// Forwards a tools/list answer holding only the tools the agent may call: for each, the decision path
/// is asked (as a probe: nothing recorded, held or charged) whether `tools.call` of it could be allowed
/// with some arguments. An answer that cannot be read whole is refused (502), never passed unfiltered.
async fn filtered_list(
    gw: &Gateway,
    route: &Route,
    call: Call,
    started: Instant,
    upstream: hyper::Response<Incoming>,
    asked: &AuthorizeRequest,
) -> Response {
    let (up, body) = upstream.into_parts();
    let bytes = match Limited::new(body, MAX_LIST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let m = format!("the tools/list answer could not be read whole (at most {MAX_LIST_BYTES} bytes)");
            return refuse_plain(gw, call, started, StatusCode::BAD_GATEWAY, &m);
        }
    };
    let content_type = up.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let mut may_call = |tool: &str| {
        let probe = AuthorizeRequest {
            action: "tools.call".to_owned(),
            tool: Some(tool.to_owned()),
            context: None,
            wait_seconds: None,
            ..asked.clone()
        };
        gw.authorizer.probe(&probe)
    };
    let filtered = match super::tools_list::filter(&bytes, content_type, &mut may_call) {
        Ok(f) => f,
        Err(e) => return refuse_plain(gw, call, started, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let length = filtered.body.len() as u64;
    let mut response = Response::new(Body::from(filtered.body));
    *response.status_mut() = up.status;
    *response.headers_mut() = headers::agent_response(&up.headers);
    crate::metrics::global().gateway_call(&route.name, "forwarded", started.elapsed().as_secs_f64());
    let note = format!("forwarded; {} tool(s) the agent may not call left out of the list", filtered.removed);
    let entry =
        call.entry(up.status.as_u16(), Some(up.status.as_u16()), length, started.elapsed(), true, &note);
    record(&gw.audit, entry.with_detail("toolsRemoved", filtered.removed.to_string()));
    response
}

#[allow(clippy::too_many_arguments)]
async fn send(
    gw: &Gateway,
    route: &Route,
    rest: &str,
    parts: &axum::http::request::Parts,
    body: Bytes,
    decision: &AuthorizeResponse,
    timeout: Duration,
) -> Result<hyper::Response<Incoming>, ForwardError> {
    let uri = route.upstream_uri(rest, parts.uri.query()).map_err(|e| ForwardError::Url(e.to_string()))?;
    let mut out = headers::upstream_request(&parts.headers);
    if let Ok(v) = HeaderValue::from_str(&decision.audit_id) {
        out.insert(HeaderName::from_static("x-agentiam-audit-id"), v);
    }
    if let Some(agent) = &decision.agent
        && let Ok(v) = HeaderValue::from_str(&format!("{}/{}", agent.namespace, agent.name))
    {
        out.insert(HeaderName::from_static("x-agentiam-agent"), v);
    }
    if let Some(c) = &route.credential {
        let (name, value) = gw.credentials.header(c).await.map_err(ForwardError::Credential)?;
        out.insert(name, value);
    }
    let mut request = hyper::Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = out;
    match tokio::time::timeout(timeout, gw.client.request(request)).await {
        Err(_) => Err(ForwardError::Timeout(timeout)),
        Ok(Err(e)) => Err(ForwardError::Connect(crate::error_chain(&e))),
        Ok(Ok(r)) => Ok(r),
    }
}

/// What the call record needs once the answer has been sent.
struct Finish {
    audit: AuditLog,
    call: Call,
    status: u16,
    started: Instant,
}

/// The upstream's body on its way to the agent, counted; the call is recorded when it ends (completely,
/// with an error, or because the agent went away).
struct Counted {
    inner: Incoming,
    bytes: u64,
    finish: Option<Finish>,
}

impl Counted {
    fn done(&mut self, complete: bool) {
        if let Some(f) = self.finish.take() {
            let note = if complete { "forwarded" } else { "forwarded; the answer was cut off" };
            let entry =
                f.call.entry(f.status, Some(f.status), self.bytes, f.started.elapsed(), complete, note);
            record(&f.audit, entry);
        }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.done(false),
            Poll::Ready(None) => self.done(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // An empty body can end without ever being polled.
        let ended = self.inner.is_end_stream();
        self.done(ended);
    }
}
