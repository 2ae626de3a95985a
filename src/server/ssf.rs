//! The operator as a Shared Signals (SSF 1.0) transmitter: receivers register a push stream (RFC 8935),
//! and every agent the revocation feed newly lists reaches them as CAEP `session-revoked` and
//! `credential-change` Security Event Tokens (RFC 8417), signed with the keys the JWKS publishes.
//!
//! - `GET /.well-known/ssf-configuration`: the transmitter metadata (public).
//! - `POST /ssf/streams` (create), `GET /ssf/streams[?stream_id=]`, `DELETE /ssf/streams?stream_id=`,
//!   `GET /ssf/status?stream_id=`, `POST /ssf/verify` (a verification SET): for callers that send a
//!   Kubernetes token (`Authorization: Bearer`, TokenReview) and hold the RBAC verb `subscribe` on
//!   `revocations` in the operator's namespace (SubjectAccessReview). A stream makes the operator POST to
//!   the URL it names, so creating one is a privilege.
//! - Streams live in the ConfigMap `agentiam-ssf-streams` of the operator's namespace, so they survive
//!   restarts; creations and deletions are audit records (`ssf.stream.create`, `ssf.stream.delete`).
//! - Events come from the feed ([`crate::server::revocations`]): each new revision is compared with the
//!   one before, and every agent or Delegation UID newly listed becomes one SET per requested event
//!   type and stream. The first revision after a start is the baseline: what was revoked while the
//!   operator was down is in the feed, not re-sent.
//! - Delivery: HTTPS (or HTTP to a loopback address), `Content-Type: application/secevent+jwt`, a 202 (or
//!   any 2xx) accepts; up to [`ATTEMPTS`] tries with a growing backoff, then the SET is dropped and
//!   counted (the feed still has it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::audit::{AuditLog, Entry, ObjectRef, Outcome};
use crate::controller::authz::PolicyIndex;
use crate::identity::issuer::IssuerReceiver;
use crate::identity::jwt::Minter;
use crate::identity::revocations::RevocationList;
use crate::identity::set;
use crate::identity::{SpiffeId, TrustDomain};
use crate::server::revocations::Feed;
use crate::server::token::TokenService;
use crate::server::{Routes, Surface};
use crate::supervisor::Supervisor;

/// The ConfigMap the streams are kept in.
pub const STREAMS_CONFIGMAP: &str = crate::names::SSF_STREAMS_CONFIGMAP;
/// The only delivery method: push (RFC 8935).
pub const PUSH: &str = "urn:ietf:rfc:8935";
/// The RBAC verb on `revocations` that stream management needs.
pub const SUBSCRIBE_VERB: &str = "subscribe";
/// How many times a SET is tried.
pub const ATTEMPTS: u32 = 5;
/// How many SETs may wait for one stream's receiver; beyond that new ones are dropped (and counted).
const QUEUE: usize = 4096;
/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most streams kept.
const MAX_STREAMS: usize = 64;

/// One stream, as SSF 1.0 describes its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// Its ID.
    pub stream_id: String,
    /// The transmitter.
    pub iss: String,
    /// The audience of its SETs (the receiver's endpoint).
    pub aud: String,
    /// Push to where.
    pub delivery: Delivery,
    /// What the transmitter can send.
    pub events_supported: Vec<String>,
    /// What the receiver asked for.
    pub events_requested: Vec<String>,
    /// What it gets: the intersection.
    pub events_delivered: Vec<String>,
    /// A note from whoever created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who created it (the Kubernetes username).
    #[serde(default)]
    pub created_by: String,
}

/// Where a stream's SETs go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Always [`PUSH`].
    pub method: String,
    /// The receiver's endpoint.
    pub endpoint_url: String,
}

/// A create request.
#[derive(Debug, Deserialize)]
struct CreateRequest {
    delivery: Delivery,
    #[serde(default)]
    events_requested: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Why a stream request is refused (as SSF's error answers: a status and a message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// Checks a create request and makes the stream (pure): a push delivery to HTTPS (or HTTP on loopback),
/// event types the transmitter knows (none asked: all of them).
pub fn new_stream(iss: &str, id: String, by: &str, body: &[u8]) -> Result<Stream, Refusal> {
    let bad = |m: String| Refusal::new(StatusCode::BAD_REQUEST, m);
    let req: CreateRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a stream request: {e}")))?;
    if req.delivery.method != PUSH {
        return Err(bad(format!("delivery.method must be {PUSH} (push); polling is not offered")));
    }
    check_endpoint(&req.delivery.endpoint_url).map_err(bad)?;
    let supported: Vec<String> = set::SUPPORTED.iter().map(|s| (*s).to_owned()).collect();
    let requested = if req.events_requested.is_empty() { supported.clone() } else { req.events_requested };
    if let Some(unknown) = requested.iter().find(|e| !supported.contains(e)) {
        return Err(bad(format!(
            "event type {unknown:?} is not supported; supported: {}",
            supported.join(", ")
        )));
    }
    let delivered: Vec<String> = supported.iter().filter(|e| requested.contains(e)).cloned().collect();
    let description = req.description.map(|d| d.chars().take(256).collect());
    Ok(Stream {
        stream_id: id,
        iss: iss.to_owned(),
        aud: req.delivery.endpoint_url.clone(),
        delivery: req.delivery,
        events_supported: supported,
        events_requested: requested,
        events_delivered: delivered,
        description,
        created_by: by.to_owned(),
    })
}

/// A receiver endpoint: HTTPS anywhere, plain HTTP only to a loopback address.
fn check_endpoint(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|_| format!("delivery.endpoint_url {url:?} is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("delivery.endpoint_url {url:?} has no host"))?;
    let loopback = crate::tls::is_loopback_host(host);
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if loopback => Ok(uri),
        _ => Err(format!("delivery.endpoint_url {url:?} must be https (http only to a loopback address)")),
    }
}

/// The SETs one change of the feed calls for, per stream (pure): for each agent and Delegation UID that
/// `now` lists and `before` did not, one SET per requested event type. `describe` names an agent UID's
/// SPIFFE ID (when known) and why it stopped.
pub fn events_for(
    before: &RevocationList,
    now: &RevocationList,
    stream: &Stream,
    iat: i64,
    describe: &dyn Fn(&str) -> (Option<String>, String),
    jti: &mut dyn FnMut() -> String,
) -> Vec<set::SetClaims> {
    let txn = Some(now.revision.to_string());
    let wants = |e: &str| stream.events_delivered.iter().any(|d| d == e);
    let mut out = Vec::new();
    let mut emit = |subject: Value, why: &str| {
        for (event, body) in [
            (set::SESSION_REVOKED, set::session_revoked(iat, set::Cause::Stopped(why))),
            (set::CREDENTIAL_CHANGE, set::credential_revoked(iat, set::Cause::Stopped(why))),
        ] {
            if wants(event) {
                let envelope = set::Envelope { iss: &stream.iss, aud: &stream.aud, iat, txn: txn.clone() };
                out.push(set::claims(&envelope, jti(), subject.clone(), event, body));
            }
        }
    };
    for uid in now.agents.difference(&before.agents) {
        let (spiffe_id, why) = describe(uid);
        emit(set::agent_subject(spiffe_id.as_deref(), uid), &why);
    }
    for uid in now.delegations.difference(&before.delegations) {
        emit(set::delegation_subject(uid), "the delegation is no longer in force");
    }
    out
}

type Pusher = HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A stream with its delivery queue.
struct Live {
    stream: Stream,
    queue: mpsc::Sender<String>,
}

/// The transmitter's state.
pub struct Transmitter {
    issuer_url: String,
    trust_domain: TrustDomain,
    namespace: String,
    issuer: IssuerReceiver,
    index: Arc<PolicyIndex>,
    feed: Arc<Feed>,
    client: kube::Client,
    audit: AuditLog,
    auth: Arc<TokenService>,
    pusher: Pusher,
    streams: RwLock<BTreeMap<String, Live>>,
    /// SETs that could not be delivered after every attempt, or found the queue full.
    dropped: Mutex<u64>,
}

impl std::fmt::Debug for Transmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transmitter").field("issuer_url", &self.issuer_url).finish_non_exhaustive()
    }
}

/// What the transmitter is built from.
pub struct Parts {
    /// The `iss` of its SETs.
    pub issuer_url: String,
    /// For SPIFFE IDs.
    pub trust_domain: TrustDomain,
    /// The operator's namespace (streams ConfigMap, RBAC check).
    pub namespace: String,
    /// The signing keys.
    pub issuer: IssuerReceiver,
    /// Names of agents by UID.
    pub index: Arc<PolicyIndex>,
    /// The revocation feed.
    pub feed: Arc<Feed>,
    /// The API client.
    pub client: kube::Client,
    /// Stream changes are recorded here.
    pub audit: AuditLog,
    /// Authenticates and authorizes callers.
    pub auth: Arc<TokenService>,
    /// TLS for pushes (the system roots plus the operator's own CA, so an in-cluster receiver works).
    pub tls: rustls::ClientConfig,
}

/// Loads the streams and starts the event task under `tasks`.
///
/// # Errors
/// The streams ConfigMap cannot be read.
pub async fn start(parts: Parts, tasks: &mut Supervisor) -> Result<Arc<Transmitter>, kube::Error> {
    let connector =
        HttpsConnectorBuilder::new().with_tls_config(parts.tls).https_or_http().enable_http1().build();
    let t = Arc::new(Transmitter {
        issuer_url: parts.issuer_url,
        trust_domain: parts.trust_domain,
        namespace: parts.namespace,
        issuer: parts.issuer,
        index: parts.index,
        feed: parts.feed,
        client: parts.client,
        audit: parts.audit,
        auth: parts.auth,
        pusher: HttpClient::builder(TokioExecutor::new()).build(connector),
        streams: RwLock::new(BTreeMap::new()),
        dropped: Mutex::new(0),
    });
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(t.client.clone(), &t.namespace);
    if let Some(cm) = api.get_opt(STREAMS_CONFIGMAP).await? {
        for (id, json) in cm.data.unwrap_or_default() {
            match serde_json::from_str::<Stream>(&json) {
                Ok(s) => t.open(s),
                Err(e) => {
                    tracing::warn!(stream = %id, error = %e, "skipping a stream that does not read as one")
                }
            }
        }
    }
    tasks.spawn_infallible("ssf transmitter", events(Arc::clone(&t)));
    Ok(t)
}

impl Transmitter {
    /// Starts a stream's delivery worker and keeps it.
    fn open(self: &Arc<Self>, stream: Stream) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = stream.stream_id.clone();
        let endpoint = stream.delivery.endpoint_url.clone();
        tokio::spawn(deliver(Arc::clone(self), id.clone(), endpoint, rx));
        if let Ok(mut streams) = self.streams.write() {
            streams.insert(id, Live { stream, queue: tx });
        }
    }

    fn streams(&self) -> Vec<Stream> {
        self.streams.read().map(|s| s.values().map(|l| l.stream.clone()).collect()).unwrap_or_default()
    }

    /// Signs and queues `claims` for stream `id`.
    fn send(&self, id: &str, claims: &set::SetClaims) {
        let key = self.issuer.borrow().keys.current().clone();
        let token = match Minter::new(key).mint(claims) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a security event token");
                return;
            }
        };
        let queued =
            self.streams.read().ok().and_then(|s| s.get(id).map(|l| l.queue.try_send(token).is_ok()));
        if queued != Some(true) {
            self.drop_one(id, "its queue is full");
        }
    }

    fn drop_one(&self, id: &str, why: &str) {
        if let Ok(mut n) = self.dropped.lock() {
            *n = n.saturating_add(1);
        }
        tracing::warn!(stream = %id, why, "a security event token was dropped; the revocation feed still lists its subject");
    }

    /// The SPIFFE ID of the agent `uid` (when the index knows it) and why it stopped.
    fn describe(&self, uid: &str) -> (Option<String>, String) {
        let snapshot = self.index.load();
        let Some(agent) = snapshot.agent(uid) else {
            return (None, "the agent is gone or not Active".to_owned());
        };
        let id = SpiffeId::for_agent(&self.trust_domain, &agent.namespace, &agent.name)
            .ok()
            .map(|i| i.to_string());
        let why = match &agent.revoked_by {
            Some(h) => format!("{:?} by Revocation {}", h.mode, h.describe()),
            None => "the agent is not Active".to_owned(),
        };
        (id, why)
    }

    async fn save(&self, id: &str, stream: Option<&Stream>) -> Result<(), Refusal> {
        let value = match stream {
            Some(s) => Value::String(serde_json::to_string(s).unwrap_or_default()),
            None => Value::Null,
        };
        let patch = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": STREAMS_CONFIGMAP, "namespace": self.namespace}, "data": {id: value}});
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams::apply(crate::names::FIELD_MANAGER).force();
        let result = match stream {
            Some(_) => api.patch(STREAMS_CONFIGMAP, &params, &Patch::Apply(&patch)).await.map(|_| ()),
            // A key leaves an applied map only if the manager stops listing it: a merge patch with null removes it.
            None => {
                api.patch(STREAMS_CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
            }
        };
        result.map_err(|e| {
            tracing::warn!(error = %e, "cannot store the SSF streams");
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the streams could not be stored; try again")
        })
    }

    async fn record(&self, action: crate::audit::Action, who: &str, stream: &Stream) {
        let object = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some(self.namespace.clone()),
            name: STREAMS_CONFIGMAP.into(),
            uid: None,
        };
        let entry = Entry::new(
            format!("user:{who}"),
            action,
            object,
            Outcome::Success,
            format!("stream {}", stream.stream_id),
        )
        .with_detail("streamID", stream.stream_id.clone())
        .with_detail("endpoint", stream.delivery.endpoint_url.clone())
        .with_detail("events", stream.events_delivered.join(","));
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, action = %action, "cannot record an SSF stream change");
        }
    }

    /// Authenticates the caller and checks `subscribe` on `revocations` in the operator's namespace.
    async fn authorize(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let requester = self
            .auth
            .caller(bearer)
            .await
            .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, e.description))?;
        if !self.auth.permitted_on(&requester, "revocations", SUBSCRIBE_VERB, &self.namespace, "").await {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not manage SSF streams: it needs the verb {SUBSCRIBE_VERB:?} on revocations.agentiam.dev in namespace {:?}",
                    requester.username, self.namespace
                ),
            ));
        }
        Ok(requester.username)
    }
}

/// Follows the feed and turns each change into SETs.
async fn events(t: Arc<Transmitter>) {
    let mut rx = t.feed.subscribe();
    let mut before: Option<RevocationList> = None;
    loop {
        if let Some(now) = t.feed.current() {
            if let Some(prev) = &before
                && now.revision != prev.revision
            {
                let iat = Timestamp::now().as_second();
                let mut jti = || uuid_like();
                for stream in t.streams() {
                    let describe = |uid: &str| t.describe(uid);
                    for claims in events_for(prev, &now, &stream, iat, &describe, &mut jti) {
                        t.send(&stream.stream_id, &claims);
                    }
                }
            }
            before = Some(now);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A random identifier (128 bits, base64url).
fn uuid_like() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One stream's delivery worker: each SET in order, up to [`ATTEMPTS`] tries.
async fn deliver(t: Arc<Transmitter>, id: String, endpoint: String, mut rx: mpsc::Receiver<String>) {
    while let Some(token) = rx.recv().await {
        let mut wait = Duration::from_millis(200);
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            match push(&t.pusher, &endpoint, &token).await {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(stream = %id, attempt, error = %e, "push of a security event token failed");
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(wait).await;
                        wait = wait.saturating_mul(3);
                    }
                }
            }
        }
        if !delivered {
            t.drop_one(&id, "the receiver did not accept it");
        }
        // A deleted stream ends its worker.
        if t.streams.read().is_ok_and(|s| !s.contains_key(&id)) {
            return;
        }
    }
}

async fn push(pusher: &Pusher, endpoint: &str, token: &str) -> Result<(), String> {
    let request = http::Request::post(endpoint)
        .header(CONTENT_TYPE, "application/secevent+jwt")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(token.to_owned())))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(PUSH_TIMEOUT, pusher.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {status}")) }
}

/// The transmitter's routes.
pub fn surface(t: Arc<Transmitter>) -> Surface {
    Routes::new("ssf")
        .route("/.well-known/ssf-configuration", get(configuration))
        .route("/ssf/streams", get(read).post(create).delete(delete))
        .route("/ssf/status", get(status))
        .route("/ssf/verify", post(verify))
        .finish(t)
}

async fn configuration(State(t): State<Arc<Transmitter>>) -> Response {
    let base = t.issuer_url.trim_end_matches('/');
    axum::Json(json!({
        "spec_version": "1_0",
        "issuer": t.issuer_url,
        "jwks_uri": format!("{base}/keys"),
        "delivery_methods_supported": [PUSH],
        "configuration_endpoint": format!("{base}/ssf/streams"),
        "status_endpoint": format!("{base}/ssf/status"),
        "verification_endpoint": format!("{base}/ssf/verify"),
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
        "default_subjects": "ALL",
    }))
    .into_response()
}

fn stream_id_of(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("stream_id="))
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

async fn create(State(t): State<Arc<Transmitter>>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match t.authorize(&headers).await {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    if t.streams().len() >= MAX_STREAMS {
        return Refusal::new(StatusCode::CONFLICT, format!("at most {MAX_STREAMS} streams")).into_response();
    }
    let stream = match new_stream(&t.issuer_url, uuid_like(), &who, &body) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = t.save(&stream.stream_id, Some(&stream)).await {
        return r.into_response();
    }
    t.record(crate::audit::Action::SsfStreamCreate, &who, &stream).await;
    t.open(stream.clone());
    (StatusCode::CREATED, axum::Json(stream)).into_response()
}

async fn read(State(t): State<Arc<Transmitter>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = t.authorize(&headers).await {
        return r.into_response();
    }
    let streams = t.streams();
    match stream_id_of(&uri) {
        Some(id) => match streams.into_iter().find(|s| s.stream_id == id) {
            Some(s) => axum::Json(s).into_response(),
            None => Refusal::new(StatusCode::NOT_FOUND, format!("no stream {id:?}")).into_response(),
        },
        None => axum::Json(streams).into_response(),
    }
}

async fn delete(State(t): State<Arc<Transmitter>>, headers: HeaderMap, uri: Uri) -> Response {
    let who = match t.authorize(&headers).await {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let Some(id) = stream_id_of(&uri) else {
        return Refusal::new(StatusCode::BAD_REQUEST, "stream_id is required").into_response();
    };
    let Some(stream) = t.streams().into_iter().find(|s| s.stream_id == id) else {
        return Refusal::new(StatusCode::NOT_FOUND, format!("no stream {id:?}")).into_response();
    };
    if let Err(r) = t.save(&id, None).await {
        return r.into_response();
    }
    if let Ok(mut streams) = t.streams.write() {
        streams.remove(&id);
    }
    t.record(crate::audit::Action::SsfStreamDelete, &who, &stream).await;
    StatusCode::NO_CONTENT.into_response()
}

async fn status(State(t): State<Arc<Transmitter>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = t.authorize(&headers).await {
        return r.into_response();
    }
    let Some(id) = stream_id_of(&uri) else {
        return Refusal::new(StatusCode::BAD_REQUEST, "stream_id is required").into_response();
    };
    if !t.streams().iter().any(|s| s.stream_id == id) {
        return Refusal::new(StatusCode::NOT_FOUND, format!("no stream {id:?}")).into_response();
    }
    axum::Json(json!({"stream_id": id, "status": "enabled"})).into_response()
}

#[derive(Debug, Deserialize)]
struct VerifyRequest {
    stream_id: String,
    #[serde(default)]
    state: Option<String>,
}

async fn verify(State(t): State<Arc<Transmitter>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = t.authorize(&headers).await {
        return r.into_response();
    }
    let req: VerifyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Refusal::new(StatusCode::BAD_REQUEST, format!("not a verification request: {e}"))
                .into_response();
        }
    };
    let Some(stream) = t.streams().into_iter().find(|s| s.stream_id == req.stream_id) else {
        return Refusal::new(StatusCode::NOT_FOUND, format!("no stream {:?}", req.stream_id)).into_response();
    };
    if !stream.events_delivered.iter().any(|e| e == set::VERIFICATION) {
        return Refusal::new(StatusCode::BAD_REQUEST, "the stream does not carry verification events")
            .into_response();
    }
    let state: Option<String> = req.state.map(|s| s.chars().take(256).collect());
    let subject = json!({"format": "opaque", "id": stream.stream_id});
    let envelope =
        set::Envelope { iss: &t.issuer_url, aud: &stream.aud, iat: Timestamp::now().as_second(), txn: None };
    let claims =
        set::claims(&envelope, uuid_like(), subject, set::VERIFICATION, set::verification(state.as_deref()));
    t.send(&stream.stream_id, &claims);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(events: &[&str]) -> Stream {
        let body = json!({"delivery": {"method": PUSH, "endpoint_url": "https://rx.example/events"},
            "events_requested": events});
        new_stream("https://op", "s1".into(), "alice", body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn streams_are_push_to_https_or_loopback_with_known_events() {
        let s = stream(&[set::SESSION_REVOKED]);
        assert_eq!(
            (s.aud.as_str(), s.events_delivered.as_slice()),
            ("https://rx.example/events", &[set::SESSION_REVOKED.to_owned()][..])
        );
        assert_eq!(stream(&[]).events_delivered.len(), 3, "none asked: all");
        let refuse = |body: Value| {
            new_stream("https://op", "s".into(), "a", body.to_string().as_bytes()).unwrap_err().message
        };
        assert!(
            refuse(json!({"delivery": {"method": "urn:ietf:rfc:8936", "endpoint_url": "https://x"}}))
                .contains("push")
        );
        assert!(
            refuse(json!({"delivery": {"method": PUSH, "endpoint_url": "http://rx.example/"}}))
                .contains("https")
        );
        assert!(refuse(json!({"delivery": {"method": PUSH, "endpoint_url": "https://x"}, "events_requested": ["urn:x"]})).contains("not supported"));
        assert!(refuse(json!({"nonsense": 1})).contains("not a stream request"));
        new_stream(
            "https://op",
            "s".into(),
            "a",
            json!({"delivery": {"method": PUSH, "endpoint_url": "http://127.0.0.1:9/e"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    }

    #[test]
    fn each_newly_listed_agent_or_delegation_is_one_set_per_requested_event() {
        let list = |agents: &[&str], delegations: &[&str], revision| RevocationList {
            revision,
            issuer: "https://op".into(),
            agents: agents.iter().map(|a| (*a).to_owned()).collect(),
            delegations: delegations.iter().map(|a| (*a).to_owned()).collect(),
            ..RevocationList::default()
        };
        let describe = |uid: &str| {
            (Some(format!("spiffe://td/ns/n/agent/{uid}")), "Revoke by Revocation n/stop".to_owned())
        };
        let mut n = 0;
        let mut jti = || {
            n += 1;
            format!("j{n}")
        };
        let before = list(&["old"], &[], 1);
        let now = list(&["old", "new"], &["d1"], 2);
        let all = events_for(&before, &now, &stream(&[]), 100, &describe, &mut jti);
        assert_eq!(
            all.len(),
            4,
            "two events for the new agent, two for the Delegation; none for the old one"
        );
        assert!(all.iter().all(|c| c.txn.as_deref() == Some("2") && c.aud == "https://rx.example/events"));
        assert_eq!(all[0].sub_id["identifiers"][0]["uri"], "spiffe://td/ns/n/agent/new");
        assert_eq!(all[2].sub_id, json!({"format": "opaque", "id": "d1"}));
        let only = events_for(&before, &now, &stream(&[set::CREDENTIAL_CHANGE]), 100, &describe, &mut jti);
        assert_eq!(only.len(), 2);
        assert!(events_for(&now, &now, &stream(&[]), 100, &describe, &mut jti).is_empty());
    }
}
