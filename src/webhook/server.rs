//! The admission webhook's HTTPS server: one server for every webhook, each a route that hands the shared
//! [`admission`] layer's decoded review to a pure decision:
//! - `POST /mutate-pods`: [`pods::decide`], with the Agent looked up in the in-memory store (no API call per
//!   pod);
//! - `POST /validate/<plural>` for the agentiam kinds: [`validate::decide`], and before any answer that is
//!   not a dry run, the who-did-what audit record of the request ([`validate::entry`]), durable. A request
//!   that cannot be recorded is refused: a change nobody can trace must not happen.
//! - `POST /validate/workloads/<mode>` for Pods and the workload kinds in namespaces that ask for workload
//!   admission: [`super::workloads`].
//!
//! The certificate is resolved per handshake from a [`CertHandle`], so renewal swaps it without a restart.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::WebhookError;
pub use super::admission::MAX_BODY_BYTES;
use super::admission::{self, Review, Verdict};
use super::pods::{self, AGENT_LABEL, PodDecision};
use super::validate::{self, Kind, Requester};
use crate::registry::revocation;
pub use crate::tls::handle::CertHandle;
use jiff::Timestamp;

use super::validate::ParentFacts;
use crate::api::{Agent, AgentPhase, Delegation, DelegationPhase, Revocation};
use crate::audit::AuditLog;
use crate::identity::{SpiffeId, TrustDomain};
use crate::registry::delegation as chain;
use crate::registry::ledger::Ledger;
use crate::server::listener::{self, Limits};

/// The pod mutation path.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";
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
    /// Whether the store has completed its first list.
    pub fn ready(&self) -> bool {
        self.store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok())
    }

    /// The Agents (`namespace/name`) whose workload runs as the requester's ServiceAccount.
    pub fn running_as(&self, requester: &Requester) -> Vec<String> {
        let Some((ns, sa)) = requester.service_account() else { return Vec::new() };
        self.store
            .state()
            .iter()
            .filter(|a| a.metadata.namespace.as_deref() == Some(ns))
            .filter(|a| a.spec.workload.as_ref().and_then(|w| w.service_account_name.as_deref()) == Some(sa))
            .map(|a| format!("{ns}/{}", a.metadata.name.as_deref().unwrap_or_default()))
            .collect()
    }

    /// The Agent `namespace/name`, with its recorded phase and SPIFFE ID.
    pub(crate) fn claimed(
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

/// What the webhooks read and write: the Agents, and the audit log the validating webhooks record to.
#[derive(Clone)]
pub struct Webhooks {
    /// The Agents and what the operator recorded about them.
    pub agents: Agents,
    /// The Delegations (a child is judged against its parent's chain) and the Revocations that end them.
    pub delegations: Delegations,
    /// Asks the API server whether a requester may delegate (SubjectAccessReview). None: every grant is
    /// refused (fail closed).
    pub client: Option<kube::Client>,
    /// Where who-did-what records go. None: the validating webhooks refuse everything (fail closed).
    pub audit: Option<AuditLog>,
    /// A namespace whose Agents the operator does not serve (its own, when it watches the whole cluster):
    /// they are not agents, so their ServiceAccounts, the operator's own among them, are not restricted.
    pub unserved_namespace: Option<String>,
    /// The username the operator authenticates as: the only requester that may create ApprovalRequests.
    /// None: nobody may.
    pub operator_user: Option<String>,
    /// What workload admission judges with (discovery's signatures). None: discovery is off, and a
    /// namespace that asks for enforcement has its workloads refused (fail closed).
    pub workloads: Option<super::workloads::Workloads>,
}

/// What the webhook knows about Delegations: the shared stores of Delegations and Revocations.
#[derive(Clone)]
pub struct Delegations {
    /// Every Delegation in scope.
    pub store: Store<Delegation>,
    /// Every Revocation in scope.
    pub revocations: Store<Revocation>,
    /// Where they reach.
    pub reach: crate::registry::revocation::Reach,
}

impl Delegations {
    /// The parent `name` in `namespace` and whether its chain is in force now, judged like the Delegation
    /// controller judges it, from the stores and the ledger.
    pub fn parent(&self, agents: &Agents, namespace: &str, name: &str, now: Timestamp) -> ParentFacts {
        let get = |n: &str| self.store.get(&ObjectRef::new(n).within(namespace));
        let Some(parent) = get(name) else { return ParentFacts::Missing(name.to_owned()) };
        let (found, ending) = chain::walk(parent, get);
        let grants: Vec<_> =
            found.iter().map(|d| d.metadata.uid.as_deref().and_then(|u| agents.ledger.grant(u))).collect();
        let revocations = self.revocations.state();
        let links: Vec<chain::Link<'_>> = found
            .iter()
            .zip(&grants)
            .map(|(d, grant)| {
                let d_name = d.metadata.name.as_deref().unwrap_or_default();
                let grantee_uid = agents
                    .store
                    .get(&ObjectRef::new(&d.spec.agent_ref.name).within(namespace))
                    .and_then(|a| a.metadata.uid.clone());
                let phase =
                    grantee_uid.as_deref().and_then(|uid| agents.ledger.get(uid)).and_then(|r| r.phase);
                let grantee =
                    grantee_uid.map(|uid| chain::Grantee { active: phase == Some(AgentPhase::Active), uid });
                let revoked_by =
                    revocation::ends_delegation(namespace, d_name, phase, &revocations, &self.reach, now);
                let recorded = d.metadata.uid.as_deref().and_then(|u| agents.ledger.delegation_phase(u));
                chain::Link { delegation: d, grant: grant.as_deref(), grantee, revoked_by, recorded }
            })
            .collect();
        let decision = chain::decide(&links, &ending, now);
        let Some(first) = found.first() else { return ParentFacts::Missing(name.to_owned()) };
        match (decision.phase, decision.expires_at, decision.remaining_depth, chain::scopes_of(first)) {
            (DelegationPhase::Active, Some(expires_at), Some(remaining_depth), Ok(scopes))
                if decision.audience.is_some() =>
            {
                ParentFacts::Active {
                    name: name.to_owned(),
                    grantee: first.spec.agent_ref.name.clone(),
                    bounds: chain::Bounds {
                        scopes,
                        expires_at,
                        remaining_depth,
                        audience: decision.audience.clone().unwrap_or_default(),
                    },
                }
            }
            (phase, ..) => ParentFacts::NotActive {
                name: name.to_owned(),
                why: format!("it is {}: {}", phase.as_str(), decision.message),
            },
        }
    }
}

/// Asks the API server whether `requester` may `verb` the agentiam `resource` named `name` in `namespace`
/// (`delegate` on an Agent, `approve` on an ApprovalRequest).
pub async fn may(
    client: Option<&kube::Client>,
    requester: &Requester,
    namespace: &str,
    resource: &str,
    verb: &str,
    name: &str,
) -> Result<bool, String> {
    let attributes = k8s_openapi::api::authorization::v1::ResourceAttributes {
        group: Some(crate::names::API_GROUP.to_owned()),
        resource: Some(resource.to_owned()),
        verb: Some(verb.to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    review(client, requester, attributes).await
}

/// Whether `requester` may do what `attributes` describe, by SubjectAccessReview: the one way the operator
/// asks RBAC about someone else (agentiam verbs above; discovery asks what a ServiceAccount can reach).
pub async fn review(
    client: Option<&kube::Client>,
    requester: &Requester,
    attributes: k8s_openapi::api::authorization::v1::ResourceAttributes,
) -> Result<bool, String> {
    use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewSpec};
    let Some(client) = client else { return Err("no API client".to_owned()) };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(requester.username.clone()),
            uid: requester.uid.clone(),
            groups: Some(requester.groups.clone()),
            resource_attributes: Some(attributes),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: kube::Api<SubjectAccessReview> = kube::Api::all(client.clone());
    let answer = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| format!("SubjectAccessReview failed: {e}"))?;
    Ok(answer.status.is_some_and(|s| s.allowed && !s.denied.unwrap_or(false)))
}

pub use crate::names::DELEGATE_VERB;

/// The webhook routes: the pod mutation, one validating route per agentiam kind, and one per workload
/// admission mode.
pub fn router(webhooks: Webhooks) -> Router {
    surface(webhooks).router()
}

/// [`router`], with the paths it serves.
pub fn surface(webhooks: Webhooks) -> crate::server::Surface {
    let mut routes = crate::server::Routes::new("webhooks").route(MUTATE_PODS_PATH, post(mutate_pods));
    for kind in Kind::ALL {
        routes = routes.route(
            kind.path(),
            post(move |state: State<Webhooks>, headers: HeaderMap, body: Bytes| {
                validate_kind(kind, state, headers, body)
            }),
        );
    }
    for mode in crate::discovery::admission::Mode::JUDGED {
        routes = routes.route(
            &super::workloads::path(mode),
            post(move |state: State<Webhooks>, headers: HeaderMap, body: Bytes| {
                super::workloads::route(mode, state, headers, body)
            }),
        );
    }
    routes.map(|r| r.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))).finish(webhooks)
}

async fn mutate_pods(State(webhooks): State<Webhooks>, headers: HeaderMap, body: Bytes) -> Response {
    match admission::read("pods", &headers, &body) {
        Ok(review) => {
            let verdict = mutate_pod(&webhooks.agents, &review);
            count("pods", &verdict);
            axum::Json(review.respond(verdict)).into_response()
        }
        Err(response) => {
            crate::metrics::global().admission("pods", "error");
            *response
        }
    }
}

fn count(webhook: &'static str, verdict: &Verdict) {
    crate::metrics::global().admission(webhook, if verdict.allowed() { "allowed" } else { "denied" });
}

/// Answers one pod AdmissionReview body. `Err` carries why the body could not be answered at all (no UID to
/// answer to); the route sends it as HTTP 400.
pub fn admit(agents: &Agents, body: &[u8]) -> Result<AdmissionReview<DynamicObject>, &'static str> {
    match admission::decode(body) {
        Ok(review) => Ok(review.respond(mutate_pod(agents, &review))),
        Err(admission::Unanswerable::BadRequest(why)) => Err(why),
        Err(admission::Unanswerable::Refused(review)) => Ok(*review),
    }
}

/// The pod webhook: `Mutate<Pod>`.
fn mutate_pod(agents: &Agents, review: &Review) -> Verdict {
    let request = &review.request;
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != Operation::Create || request.sub_resource.is_some() {
        return Verdict::allow();
    }
    let claims_agent =
        review.object_json().pointer("/metadata/labels").and_then(|l| l.get(AGENT_LABEL)).is_some();
    let pod: Pod = match review.object::<Pod>() {
        Some(Ok(pod)) => pod,
        _ if !claims_agent => return Verdict::allow(),
        Some(Err(e)) => return Verdict::Deny(format!("agentiam could not read the pod: {e}")),
        None => return Verdict::Deny("the admission request has no pod".to_owned()),
    };
    let Some(agent_name) = pods::claimed_agent(&pod) else { return Verdict::allow() };
    let Some(namespace) = request.namespace.clone().or_else(|| pod.metadata.namespace.clone()) else {
        return Verdict::Deny("the pod has no namespace".to_owned());
    };
    // Before the first list completes the store is empty, and every pod would be told its Agent is missing.
    if !agents.ready() {
        return Verdict::Deny("agentiam is starting and has not loaded Agents yet; retry shortly".to_owned());
    }
    let found = agents.claimed(&namespace, agent_name);
    let claimed = found.as_ref().map(|(agent, phase, id)| pods::Claimed {
        agent,
        phase: *phase,
        spiffe_id: id.as_deref(),
    });
    let pod_name = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or_default();
    match pods::decide(&pod, &namespace, claimed) {
        PodDecision::NotAnAgent => Verdict::allow(),
        PodDecision::Deny(message) => {
            info!(%namespace, pod = pod_name, agent = agent_name, %message, "refused an agent pod");
            Verdict::Deny(message)
        }
        PodDecision::Mutate(patch) => {
            info!(%namespace, pod = pod_name, agent = agent_name, "injected agent credentials");
            Verdict::Patch(patch)
        }
    }
}

async fn validate_kind(
    kind: Kind,
    State(webhooks): State<Webhooks>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let review = match admission::read(kind.plural(), &headers, &body) {
        Ok(review) => review,
        Err(response) => {
            crate::metrics::global().admission(kind.plural(), "error");
            return *response;
        }
    };
    let verdict = validate_request(kind, &webhooks, &review).await;
    count(kind.plural(), &verdict);
    axum::Json(review.respond(verdict)).into_response()
}

/// `Validate<K>` for the agentiam kinds, and the who-did-what record.
async fn validate_request(kind: Kind, webhooks: &Webhooks, review: &Review) -> Verdict {
    let request = &review.request;
    if Kind::from_kind(&request.kind.kind) != Some(kind) || request.sub_resource.is_some() {
        // Only the kind's own resource is configured; anything else is not ours to judge.
        return Verdict::allow();
    }
    let requester = Requester::of(&request.user_info);
    if !webhooks.agents.ready() {
        return Verdict::Deny("agentiam is starting and has not loaded Agents yet; retry shortly".to_owned());
    }
    let mut acting = webhooks.agents.running_as(&requester);
    if let Some(ns) = &webhooks.unserved_namespace {
        acting.retain(|a| a.split_once('/').is_none_or(|(n, _)| n != ns));
    }
    let (object, old_object) = (review.object_json(), review.old_object_json());
    let req = validate::Request {
        kind,
        operation: request.operation.clone(),
        requester: &requester,
        requester_is_agent: &acting,
        object: (!object.is_null()).then_some(object),
        old_object: (!old_object.is_null()).then_some(old_object),
    };
    let mut verdict = validate::decide(&webhooks.agents.trust_domain, &req);
    if kind == Kind::Revocation && request.operation == Operation::Create && verdict.allowed() {
        let namespace = request.namespace.clone().unwrap_or_default();
        if let Some(why) = validate::revocation_reach(&namespace, object, &webhooks.delegations.reach) {
            verdict = Verdict::Deny(why);
        }
    }
    if kind == Kind::Agent && request.operation == Operation::Create && verdict.allowed() {
        let by_operator = webhooks.operator_user.as_deref() == Some(requester.username.as_str());
        if let Some(why) = validate::agent_owner(object, by_operator) {
            verdict = Verdict::Deny(why);
        }
    }
    // Bound at admission: the grantee's and the parent's UIDs go into the record the controller checks.
    let mut bound: Vec<(&'static str, String)> = Vec::new();
    if kind == Kind::Delegation && request.operation == Operation::Create && verdict.allowed() {
        let namespace = request.namespace.clone().unwrap_or_default();
        let delegation = serde_json::from_value::<Delegation>(object.clone()).map_err(|e| e.to_string());
        let now = Timestamp::now();
        let (mut grantee_active, mut parent, mut sar_for) = (None, None, None);
        if let Ok(d) = &delegation {
            let grantee =
                webhooks.agents.store.get(&ObjectRef::new(&d.spec.agent_ref.name).within(&namespace));
            if let Some(uid) = grantee.as_ref().and_then(|a| a.metadata.uid.clone()) {
                grantee_active =
                    Some(webhooks.agents.ledger.get(&uid).and_then(|r| r.phase) == Some(AgentPhase::Active));
                bound.push((crate::registry::actions::DETAIL_AGENT_UID, uid));
            }
            if let Some(p) = &d.spec.parent_ref {
                let facts = webhooks.delegations.parent(&webhooks.agents, &namespace, &p.name, now);
                let parent_uid = webhooks
                    .delegations
                    .store
                    .get(&ObjectRef::new(&p.name).within(&namespace))
                    .and_then(|p| p.metadata.uid.clone());
                if let Some(uid) = parent_uid {
                    bound.push((crate::registry::actions::DETAIL_PARENT_UID, uid));
                }
                parent = Some(facts);
            }
            if acting.is_empty() && crate::registry::delegation::is_person(&requester.username) {
                sar_for = Some(d.spec.agent_ref.name.clone());
            }
        }
        let may = match sar_for {
            Some(agent) => Some(
                may(webhooks.client.as_ref(), &requester, &namespace, "agents", DELEGATE_VERB, &agent).await,
            ),
            None => None,
        };
        let by_operator = webhooks.operator_user.as_deref() == Some(requester.username.as_str());
        let facts = validate::DelegationFacts {
            delegation,
            grantee_active,
            parent,
            may_delegate: may,
            now,
            by_operator,
        };
        verdict = validate::decide_delegation(&namespace, &req, &facts);
    }
    if kind == Kind::ApprovalRequest && verdict.allowed() {
        let namespace = request.namespace.clone().unwrap_or_default();
        let answer = super::approval::answer_of(&req);
        let uid = object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        let recorded = webhooks.agents.ledger.approvals(|b| b.get(uid).cloned());
        let ask = answer.is_some()
            && recorded.is_some()
            && crate::registry::delegation::is_person(&requester.username);
        let may_approve = if ask {
            let verb = super::approval::APPROVE_VERB;
            Some(
                may(
                    webhooks.client.as_ref(),
                    &requester,
                    &namespace,
                    "approvalrequests",
                    verb,
                    &request.name,
                )
                .await,
            )
        } else {
            None
        };
        let facts = super::approval::ApprovalFacts {
            operator_user: webhooks.operator_user.as_deref(),
            recorded: recorded.as_ref(),
            may_approve,
            now: Timestamp::now(),
        };
        verdict = super::approval::decide(&namespace, &request.name, &req, &facts);
        if let (Some(answer), true) = (answer, verdict.allowed()) {
            let verdict_name = match answer.verdict {
                crate::api::ApprovalVerdict::Approve => "Approve",
                crate::api::ApprovalVerdict::Deny => "Deny",
            };
            bound.push((crate::registry::actions::DETAIL_APPROVAL_VERDICT, verdict_name.to_owned()));
            if let Some(reason) = answer.reason {
                bound.push((crate::registry::actions::DETAIL_APPROVAL_REASON, reason));
            }
        }
    }
    if review.dry_run() {
        return verdict;
    }
    let Some(audit) = &webhooks.audit else {
        return Verdict::Deny("agentiam has no audit log to record this change in".to_owned());
    };
    let uid = req.object.or(req.old_object).and_then(|o| o.pointer("/metadata/uid")).and_then(|u| u.as_str());
    let Some(mut entry) =
        validate::entry(&req, request.namespace.as_deref(), &request.name, uid, &request.uid, &verdict)
    else {
        return verdict;
    };
    for (key, value) in bound {
        entry.details.insert(key.to_owned(), value);
    }
    match audit.append(entry).await {
        Ok(_) => verdict,
        Err(e) => {
            warn!(error = %e, kind = kind.kind(), "could not record a change in the audit log; refused it");
            Verdict::Deny(format!(
                "agentiam could not record this change in its audit log ({e}), so it was refused; retry"
            ))
        }
    }
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
    store: Webhooks,
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
    store: Webhooks,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WebhookError> {
    let config = crate::tls::handle::server_config(cert, None)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let surface = surface(store);
    info!(paths = %surface.paths().join(", "), "webhook routes");
    listener::serve(listener, surface.router(), Some(acceptor), limits, "webhook", shutdown).await;
    Ok(())
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
