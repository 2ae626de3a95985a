//! The admission webhook's HTTPS server: `POST /mutate-pods` turns an AdmissionReview into a call to the pure
//! [`pods::decide`], with the Agent looked up in the controller's in-memory store (no API call per pod).
//!
//! Fail closed: a labelled pod is admitted only after it was checked. Anything the handler cannot read is
//! refused, as a denial when the request's UID can be recovered and as HTTP 400 otherwise (which the API
//! server, under `failurePolicy: Fail`, also turns into a refusal).
//!
//! The certificate is resolved per handshake from a [`CertHandle`], so renewal swaps it without a restart.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::pods::{self, AGENT_LABEL, PodDecision};
use super::run::WebhookError;
use super::tls::ServingCerts;
use crate::api::{Agent, AgentPhase};
use crate::identity::{SpiffeId, TrustDomain};
use crate::registry::ledger::Ledger;
use crate::server::listener::{self, Limits};

/// The pod mutation path.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";
/// Larger request bodies are refused (413). The API server caps objects well below this for ordinary pods.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate the server presents, replaceable while it runs. Cloning shares it.
#[derive(Clone)]
pub struct CertHandle {
    current: Arc<RwLock<(Arc<CertifiedKey>, Vec<u8>)>>,
}

impl std::fmt::Debug for CertHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertHandle").field("key", &"<redacted>").finish()
    }
}

fn certified_key(certs: &ServingCerts) -> Result<(Arc<CertifiedKey>, Vec<u8>), WebhookError> {
    let chain: Vec<CertificateDer<'static>> =
        certs.chain_der().iter().map(|d| CertificateDer::from(d.clone())).collect();
    let leaf = chain.first().map(|c| c.to_vec()).ok_or(WebhookError::ServerCertificate("no certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(certs.leaf_key_pem().as_bytes())
        .map_err(|_| WebhookError::ServerCertificate("the private key is not PEM"))?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|_| WebhookError::ServerCertificate("the private key does not fit the certificate"))?;
    Ok((Arc::new(key), leaf))
}

impl CertHandle {
    /// A handle presenting `certs`' leaf.
    pub fn new(certs: &ServingCerts) -> Result<Self, WebhookError> {
        Ok(Self { current: Arc::new(RwLock::new(certified_key(certs)?)) })
    }

    /// Presents `certs`' leaf from the next handshake on; open connections keep theirs.
    pub fn swap(&self, certs: &ServingCerts) -> Result<(), WebhookError> {
        let next = certified_key(certs)?;
        // A poisoned lock only means a writer panicked between two whole assignments: the value is intact.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// Whether the server presents `certs`' leaf.
    pub fn presents(&self, certs: &ServingCerts) -> bool {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        certs.chain_der().first() == Some(&current.1)
    }
}

impl ResolvesServerCert for CertHandle {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner).0))
    }
}

/// What the webhook knows about Agents: the controller's in-memory store of the objects (their specs), and
/// the operator's ledger of what it decided about each (their phases). Never the status.
#[derive(Clone)]
pub struct Agents {
    /// The Agents, kept current by the controller's watch.
    pub store: Store<Agent>,
    /// What the operator recorded about each agent UID.
    pub ledger: Arc<Ledger>,
    /// The trust domain of the agents' SPIFFE IDs.
    pub trust_domain: TrustDomain,
}

impl Agents {
    /// The Agent `namespace/name`, with its recorded phase and SPIFFE ID.
    fn claimed(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<(Arc<Agent>, Option<AgentPhase>, Option<String>)> {
        let agent = self.store.get(&ObjectRef::new(name).within(namespace))?;
        let phase = agent.metadata.uid.as_deref().and_then(|uid| self.ledger.get(uid)).and_then(|r| r.phase);
        let id = SpiffeId::for_agent(&self.trust_domain, namespace, name).ok().map(|id| id.to_string());
        Some((agent, phase, id))
    }
}

/// The webhook routes.
pub fn router(store: Agents) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(store)
}

async fn mutate_pods(State(store): State<Agents>, headers: HeaderMap, body: Bytes) -> Response {
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected application/json\n").into_response();
    }
    match admit(&store, &body) {
        Ok(review) => axum::Json(review).into_response(),
        Err(why) => {
            warn!(reason = why, "refused an unreadable admission request");
            (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
        }
    }
}

/// Answers one AdmissionReview body. `Err` carries why the body could not be answered at all (no UID to
/// answer to); the caller sends it as HTTP 400.
pub fn admit(agents: &Agents, body: &[u8]) -> Result<AdmissionReview<DynamicObject>, &'static str> {
    let raw: Value = serde_json::from_slice(body).map_err(|_| "request body is not JSON")?;
    let uid = raw.pointer("/request/uid").and_then(Value::as_str).map(str::to_owned);
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(raw.clone()) {
        Ok(review) => review,
        Err(e) => {
            let uid = uid.ok_or("request body is not an AdmissionReview")?;
            return Ok(refuse(uid, format!("agentiam could not read the admission request: {e}")));
        }
    };
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| "the AdmissionReview has no request")?;
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != Operation::Create || request.sub_resource.is_some() {
        return Ok(AdmissionResponse::from(&request).into_review());
    }
    let object = raw.pointer("/request/object").cloned().unwrap_or(Value::Null);
    let claims_agent = object.pointer("/metadata/labels").and_then(|l| l.get(AGENT_LABEL)).is_some();
    let pod: Pod = match serde_json::from_value(object) {
        Ok(pod) => pod,
        Err(_) if !claims_agent => return Ok(AdmissionResponse::from(&request).into_review()),
        Err(e) => return Ok(deny(&request, format!("agentiam could not read the pod: {e}"))),
    };
    let Some(agent_name) = pods::claimed_agent(&pod) else {
        return Ok(AdmissionResponse::from(&request).into_review());
    };
    let Some(namespace) = request.namespace.clone().or_else(|| pod.metadata.namespace.clone()) else {
        return Ok(deny(&request, "the pod has no namespace".to_owned()));
    };
    // Before the first list completes the store is empty, and every pod would be told its Agent is missing.
    if agents.store.wait_until_ready().now_or_never().is_none_or(|r| r.is_err()) {
        return Ok(deny(
            &request,
            "agentiam is starting and has not loaded Agents yet; retry shortly".to_owned(),
        ));
    }
    let found = agents.claimed(&namespace, agent_name);
    let claimed = found.as_ref().map(|(agent, phase, id)| pods::Claimed {
        agent,
        phase: *phase,
        spiffe_id: id.as_deref(),
    });
    let decision = pods::decide(&pod, &namespace, claimed);
    let pod_name = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or_default();
    Ok(match decision {
        PodDecision::NotAnAgent => AdmissionResponse::from(&request).into_review(),
        PodDecision::Deny(message) => {
            info!(%namespace, pod = pod_name, agent = agent_name, %message, "refused an agent pod");
            deny(&request, message)
        }
        PodDecision::Mutate(patch) => match AdmissionResponse::from(&request).with_patch(patch) {
            Ok(response) => {
                info!(%namespace, pod = pod_name, agent = agent_name, "injected agent credentials");
                response.into_review()
            }
            Err(e) => deny(&request, format!("agentiam could not encode the patch: {e}")),
        },
    })
}

fn deny(request: &AdmissionRequest<DynamicObject>, message: String) -> AdmissionReview<DynamicObject> {
    let mut response = AdmissionResponse::from(request).deny(message);
    response.result.code = 403;
    response.result.reason = "Forbidden".to_owned();
    response.into_review()
}

fn refuse(uid: String, message: String) -> AdmissionReview<DynamicObject> {
    let mut response = AdmissionResponse::invalid(message);
    response.uid = uid;
    response.into_review()
}

/// Binds the listener, returning the address actually bound (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), WebhookError> {
    let bind_err = |source| WebhookError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}

/// Binds `addr` and serves until `shutdown` resolves; see [`serve_listener`].
pub async fn serve(
    addr: SocketAddr,
    cert: CertHandle,
    store: Agents,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WebhookError> {
    let (listener, _) = bind(addr).await?;
    serve_listener(listener, cert, store, limits, shutdown).await
}

/// Serves HTTPS (HTTP/1.1, TLS 1.2 and 1.3) on `listener` within `limits` (the shared accept loop of
/// [`listener`]) until `shutdown` resolves, then lets open requests finish for a
/// few seconds.
///
/// The idle timeout must stay longer than the API server's idle timeout for webhook connections (Go's
/// 90 s), so the client always closes an idle connection first: if we closed it while a POST was on its
/// way, the call would fail and, fail closed, the pod would be refused. The default (120 s) is.
pub async fn serve_listener(
    listener: TcpListener,
    cert: CertHandle,
    store: Agents,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WebhookError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|_| WebhookError::ServerCertificate("no usable TLS protocol version"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    listener::serve(listener, router(store), Some(acceptor), limits, "webhook", shutdown).await;
    Ok(())
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
