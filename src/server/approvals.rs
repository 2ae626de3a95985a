//! Human approval in the decision path: what a RequireApproval decision becomes once a human has (or has
//! not) answered.
//!
//! For a decision that a rule with `approval: required` made, [`Approvals::resolve`] computes the
//! request's binding ([`approval::binding`]: agent UID, delegation UID, audience, action, resource, tool,
//! the whole context, policy and rule) and looks it up in the operator's ledger:
//! - approved and still usable: one use is recorded, durably, and the decision becomes Allow. Uses are
//!   taken one at a time under a lock, so a single-use approval allows exactly one decision however many
//!   arrive at once;
//! - waiting: RequireApproval, naming the ApprovalRequest;
//! - denied (by a human, on the controller's re-check, or unanswered): Deny, until the request would have
//!   ended anyway, so an agent cannot ask again and again;
//! - nothing, or over (used up, expired): a new ApprovalRequest is created, its creation recorded in the
//!   audit log (which is what makes it count: the webhook and the controller refuse requests the log does
//!   not know), announced as an Event on the Agent and, when configured, to a notification URL.
//!
//! Nothing here grants on its own: the ledger says what the approval controller recorded after it
//! re-checked the human's answer against fresh API state, and every failure (API server, audit log) ends
//! in Deny.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request as HttpRequest, StatusCode, Uri, header};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::api::{
    Agent, ApprovalPhase, ApprovalRequest, ApprovalRequestSpec, LocalRef, PrincipalKind, RequestedAction,
};
use crate::audit::{Action as AuditAction, AuditLog, Entry, ObjectRef as AuditRef, Outcome};
use crate::authz::compile::ApprovalTerms;
use crate::authz::{Decision, Reason, Verdict};
use crate::controller::{ACTOR, FIELD_MANAGER};
use crate::registry::actions as a;
use crate::registry::approval::{self, Bound, Standing, State};
use crate::registry::ledger::Ledger;

/// Most requests one agent may have waiting at once; beyond that its RequireApproval decisions are
/// denied, so an agent cannot flood its approvers (or the API server).
pub const MAX_PENDING_PER_AGENT: usize = 20;
/// The longest wait a caller may ask for (`waitSeconds`, `x-agentiam-wait`).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How many times a notification is tried.
const NOTIFY_ATTEMPTS: u32 = 5;
/// How long one notification attempt may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// The request a decision was about, as the decision API verified it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The agent's namespace.
    pub namespace: &'a str,
    /// The agent's name.
    pub name: &'a str,
    /// The agent's UID (from the token, checked against the ledger by the decision).
    pub agent_uid: &'a str,
    /// The token's audience.
    pub audience: &'a str,
    /// For a delegated token: the leaf Delegation's UID.
    pub delegation_uid: Option<&'a str>,
    /// For a delegated token: the human the agent acts for.
    pub on_behalf_of: Option<&'a str>,
    /// The verb.
    pub action: &'a str,
    /// The resource (canonical).
    pub resource: &'a str,
    /// The MCP tool.
    pub tool: Option<&'a str>,
    /// The request context.
    pub context: &'a Map<String, Value>,
}

/// The approval request a decision is about, as the decision API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRef {
    /// The ApprovalRequest's name: what `kubectl agentiam approve|deny` takes.
    pub id: String,
    /// Its namespace (the agent's).
    pub namespace: String,
    /// Where it stands.
    pub phase: ApprovalPhase,
    /// When it ends unanswered (RFC 3339).
    pub expires_at: String,
}

/// What [`Approvals::resolve`] found.
#[derive(Debug)]
pub struct Resolved {
    /// The decision to answer.
    pub decision: Decision,
    /// The request it is about, if any.
    pub approval: Option<ApprovalRef>,
    /// The request's object UID (a caller that waits checks it is still the same request).
    pub uid: Option<String>,
}

/// Where pending requests are announced besides Events: a JSON POST to one URL.
#[derive(Clone)]
pub struct Notifier {
    url: Uri,
    client: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("url", &self.url).finish_non_exhaustive()
    }
}

/// A notification URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// Not an absolute http(s) URL.
    #[error("approval notification URL {0:?} is not an absolute http:// or https:// URL")]
    Url(String),
    /// The TLS client could not be set up.
    #[error("approval notifications: TLS setup failed: {0}")]
    Tls(String),
}

impl Notifier {
    /// A notifier posting to `url` (https verified against the system's CA certificates; http allowed,
    /// since a notification carries no secret and no context values).
    pub fn new(url: &str) -> Result<Self, NotifierError> {
        let uri: Uri = url.parse().map_err(|_| NotifierError::Url(url.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(NotifierError::Url(url.to_owned()));
        }
        let config = crate::tls::system_roots_client().map_err(|e| NotifierError::Tls(e.to_string()))?;
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
        Ok(Self { url: uri, client: HttpClient::builder(TokioExecutor::new()).build(connector) })
    }

    /// Posts `body`, retrying with backoff (1 s, 2 s, 4 s, 8 s) on network errors, 5xx and 429. Returns
    /// the last failure when every attempt failed.
    pub async fn send(&self, body: &Value) -> Result<(), String> {
        let bytes = Bytes::from(body.to_string());
        let mut last = String::new();
        for attempt in 0..NOTIFY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            let request = HttpRequest::post(self.url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::USER_AGENT, concat!("agentiam/", env!("CARGO_PKG_VERSION")))
                .body(Full::new(bytes.clone()))
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(NOTIFY_TIMEOUT, self.client.request(request)).await {
                Ok(Ok(r)) if r.status().is_success() => return Ok(()),
                Ok(Ok(r)) => {
                    last = format!("HTTP status {}", r.status());
                    let retry = r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS;
                    if !retry {
                        return Err(last);
                    }
                }
                Ok(Err(e)) => last = crate::error_chain(&e),
                Err(_) => last = format!("no answer within {NOTIFY_TIMEOUT:?}"),
            }
        }
        Err(format!("{last} (after {NOTIFY_ATTEMPTS} attempts)"))
    }
}

/// The approval step of the decision path (see the module docs).
pub struct Approvals {
    client: Client,
    audit: AuditLog,
    recorder: Recorder,
    ledger: Arc<Ledger>,
    agents: Store<Agent>,
    notifier: Option<Notifier>,
    max_wait: Duration,
    /// One resolve at a time: a use is taken, or a request created, by one decision only.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").field("notifier", &self.notifier).finish_non_exhaustive()
    }
}

impl Approvals {
    /// The approval step, creating requests with `client`, recording in `audit`, reading `ledger` and the
    /// Agents in `agents`. A caller's wait is cut to `max_wait` (below the listener's request timeout).
    pub fn new(
        client: Client,
        audit: AuditLog,
        recorder: Recorder,
        ledger: Arc<Ledger>,
        agents: Store<Agent>,
        notifier: Option<Notifier>,
        max_wait: Duration,
    ) -> Self {
        Self {
            client,
            audit,
            recorder,
            ledger,
            agents,
            notifier,
            max_wait: max_wait.min(MAX_WAIT),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// The longest a decision waits for an answer.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The ledger whose approval changes wake waiting decisions.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What `decision` (RequireApproval by a rule with approvers) becomes for `asked`. `waited_on`: the
    /// request an earlier round of the same call waited for; when that one ended, the answer is its end
    /// (Deny), not a new request.
    pub async fn resolve(
        &self,
        asked: &Asked<'_>,
        decision: Decision,
        waited_on: Option<&str>,
        now: Timestamp,
    ) -> Resolved {
        let unchanged = |decision| Resolved { decision, approval: None, uid: None };
        let (Some(terms), Some(policy), Some(rule)) =
            (decision.approval.clone(), decision.policy.clone(), decision.rule.clone())
        else {
            return unchanged(decision);
        };
        if decision.verdict != Verdict::RequireApproval {
            return unchanged(decision);
        }
        let binding = approval::binding(&Bound {
            agent_uid: asked.agent_uid,
            delegation_uid: asked.delegation_uid,
            audience: asked.audience,
            action: asked.action,
            resource: asked.resource,
            tool: asked.tool,
            context: asked.context,
            policy: &policy,
            rule: &rule,
        });
        let _one = self.one_at_a_time.lock().await;
        let found = self.ledger.approvals(|book| {
            book.by_binding(&binding).map(|(uid, e)| {
                (
                    uid.to_owned(),
                    e.namespace.clone(),
                    e.name.clone(),
                    e.expires_at,
                    e.standing(now),
                    e.phase(now),
                )
            })
        });
        let deny =
            |reason: Reason| Decision { verdict: Verdict::Deny, reason, approval: None, ..decision.clone() };
        match found {
            Some((uid, ns, name, expires_at, Standing::Approved { by, .. }, phase)) => {
                let request = format!("{ns}/{name}");
                let approval = Some(reference(&ns, &name, phase, expires_at));
                match self.record_use(&uid, &ns, &name, asked, &by).await {
                    Ok(()) => Resolved {
                        decision: Decision {
                            verdict: Verdict::Allow,
                            reason: Reason::Approved { by, request },
                            approval: None,
                            ..decision
                        },
                        approval,
                        uid: Some(uid),
                    },
                    Err(e) => {
                        warn!(error = %e, "cannot record the use of an approval; denying");
                        Resolved {
                            decision: deny(Reason::Refused(
                                "the audit log is unavailable, so the approval cannot be used".into(),
                            )),
                            approval,
                            uid: Some(uid),
                        }
                    }
                }
            }
            Some((uid, ns, name, expires_at, Standing::Pending(_), phase)) => Resolved {
                decision: Decision { reason: Reason::AwaitingApproval(format!("{ns}/{name}")), ..decision },
                approval: Some(reference(&ns, &name, phase, expires_at)),
                uid: Some(uid),
            },
            Some((uid, ns, name, expires_at, Standing::Denied(why), phase)) => Resolved {
                decision: deny(Reason::ApprovalDenied { request: format!("{ns}/{name}"), why }),
                approval: Some(reference(&ns, &name, phase, expires_at)),
                uid: Some(uid),
            },
            over => {
                // The request this call waited for ended while it waited: that end is the answer.
                if let Some(waited) = waited_on
                    && let Some(ended) = self.ended(waited, now)
                {
                    return Resolved {
                        decision: deny(ended.0),
                        approval: Some(ended.1),
                        uid: Some(waited.to_owned()),
                    };
                }
                drop(over);
                self.create(asked, decision, &terms, &binding, now).await
            }
        }
    }

    /// Why the request `uid` ended, when it ended without being usable now.
    fn ended(&self, uid: &str, now: Timestamp) -> Option<(Reason, ApprovalRef)> {
        self.ledger.approvals(|book| {
            let e = book.get(uid)?;
            let why = match &e.state {
                State::Denied(why) => why.clone(),
                State::Pending => "nobody answered before it expired".to_owned(),
                State::Used => "its approval was used by another decision".to_owned(),
                State::Expired => "its approval expired unused".to_owned(),
                State::Approved { .. } => "its approval ran out".to_owned(),
            };
            let request = format!("{}/{}", e.namespace, e.name);
            Some((
                Reason::ApprovalDenied { request, why },
                reference(&e.namespace, &e.name, e.phase(now), e.expires_at),
            ))
        })
    }

    /// Records one use of the approval `uid`: durable before the Allow it grants is answered.
    async fn record_use(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        asked: &Asked<'_>,
        by: &str,
    ) -> Result<(), crate::audit::AuditError> {
        let entry = Entry::new(
            ACTOR,
            AuditAction::ApprovalUse,
            request_ref(namespace, name, uid),
            Outcome::Success,
            format!("a decision for agent {}/{} used the approval {by} gave", asked.namespace, asked.name),
        )
        .with_detail(a::DETAIL_AGENT_UID, asked.agent_uid)
        .with_detail(a::DETAIL_DECIDED_BY, by);
        self.audit.append(entry).await.map(|_| ())
    }

    /// Creates and records a new request; the decision stays RequireApproval, naming it.
    async fn create(
        &self,
        asked: &Asked<'_>,
        decision: Decision,
        terms: &ApprovalTerms,
        binding: &str,
        now: Timestamp,
    ) -> Resolved {
        let refuse = |why: String| Resolved {
            decision: Decision {
                verdict: Verdict::Deny,
                reason: Reason::Refused(why),
                approval: None,
                ..decision.clone()
            },
            approval: None,
            uid: None,
        };
        let pending = self.ledger.approvals(|b| b.pending_of(asked.agent_uid, now));
        if pending >= MAX_PENDING_PER_AGENT {
            return refuse(format!(
                "agent {}/{} already has {pending} approval requests waiting (at most {MAX_PENDING_PER_AGENT}); \
                 answer or let them expire first",
                asked.namespace, asked.name
            ));
        }
        let agent = self
            .agents
            .get(&ObjectRef::new(asked.name).within(asked.namespace))
            .filter(|a| a.metadata.uid.as_deref() == Some(asked.agent_uid));
        let Some(agent) = agent else {
            return refuse(format!("agent {}/{} is not known to the operator", asked.namespace, asked.name));
        };
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let Ok(expires_at) = now.checked_add(SignedDuration::from_secs(secs(terms.timeout))) else {
            return refuse("the approval timeout is out of range".into());
        };
        let Ok(id) = request_name(asked.name) else {
            return refuse("no randomness for an approval request name".into());
        };
        let request = RequestedAction {
            agent_ref: LocalRef { name: asked.name.to_owned() },
            agent_uid: asked.agent_uid.to_owned(),
            action: asked.action.to_owned(),
            resource: asked.resource.to_owned(),
            tool: asked.tool.map(str::to_owned),
            context: (!asked.context.is_empty()).then(|| asked.context.clone()),
            audience: asked.audience.to_owned(),
            on_behalf_of: asked.on_behalf_of.map(str::to_owned),
            delegation_uid: asked.delegation_uid.map(str::to_owned),
            policy: decision.policy.as_deref().unwrap_or_default().to_owned(),
            rule: decision.rule.as_deref().unwrap_or_default().to_owned(),
            approvers: terms.approvers.clone(),
            four_eyes: terms.four_eyes,
            expires_at: expires_at.to_string(),
            valid_for: format!("{}s", terms.valid_for.as_secs()),
            uses: terms.uses,
            binding: binding.to_owned(),
        };
        let mut object = ApprovalRequest::new(&id, ApprovalRequestSpec { request, decision: None });
        object.metadata = ObjectMeta {
            name: Some(id.clone()),
            namespace: Some(asked.namespace.to_owned()),
            labels: Some([(crate::names::AGENT_LABEL.to_owned(), asked.name.to_owned())].into()),
            owner_references: Some(vec![crate::registry::secret::owner_reference(
                asked.name,
                asked.agent_uid,
            )]),
            ..ObjectMeta::default()
        };
        let api: Api<ApprovalRequest> = Api::namespaced(self.client.clone(), asked.namespace);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
        let created = match api.create(&params, &object).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, agent = asked.name, "cannot create an ApprovalRequest; denying");
                return refuse(format!("the approval request could not be created ({e}); retry"));
            }
        };
        let Some(uid) = created.metadata.uid.clone() else {
            return refuse("the API server returned the approval request without a UID".into());
        };
        let entry = requested_entry(asked, &decision, terms, binding, &agent, &id, &uid, expires_at);
        if let Err(e) = self.audit.append(entry).await {
            warn!(error = %e, "cannot record an approval request; deleting it and denying");
            // Without its record nobody could approve it (the webhook refuses); remove it so nobody tries.
            let _ = api.delete(&id, &DeleteParams::default()).await;
            return refuse("the audit log is unavailable, so no approval can be asked for".into());
        }
        info!(namespace = asked.namespace, request = %id, agent = asked.name, action = asked.action, "approval requested");
        self.announce(&agent, asked, &decision, &id, expires_at);
        let approval = Some(reference(asked.namespace, &id, ApprovalPhase::Pending, expires_at));
        Resolved {
            decision: Decision {
                reason: Reason::AwaitingApproval(format!("{}/{id}", asked.namespace)),
                ..decision
            },
            approval,
            uid: Some(uid),
        }
    }

    /// The Event on the Agent and the notification, in the background (neither holds up the answer).
    fn announce(
        &self,
        agent: &Agent,
        asked: &Asked<'_>,
        decision: &Decision,
        id: &str,
        expires_at: Timestamp,
    ) {
        let note = format!(
            "{} on {} needs a human's approval (policy {}, rule {}): kubectl agentiam approve {id} -n {} \
             (or deny), before {expires_at}",
            asked.action,
            asked.resource,
            decision.policy.as_deref().unwrap_or_default(),
            decision.rule.as_deref().unwrap_or_default(),
            asked.namespace,
        );
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: "ApprovalRequested".into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Authorize".into(),
            secondary: None,
        };
        let (recorder, reference) = (self.recorder.clone(), agent.object_ref(&()));
        let body = json!({
            "type": "agentiam.approval.requested",
            "id": id,
            "namespace": asked.namespace,
            "agent": asked.name,
            "action": asked.action,
            "resource": asked.resource,
            "tool": asked.tool,
            // The keys only: the values may be personal data; an approver reads them from the object.
            "contextKeys": asked.context.keys().collect::<Vec<_>>(),
            "onBehalfOf": asked.on_behalf_of,
            "policy": decision.policy.as_deref(),
            "rule": decision.rule.as_deref(),
            "approvers": decision.approval.as_ref().map(|t| &t.approvers),
            "expiresAt": expires_at.to_string(),
            "approve": format!("kubectl agentiam approve {id} -n {}", asked.namespace),
            "deny": format!("kubectl agentiam deny {id} -n {} --reason ...", asked.namespace),
        });
        let notifier = self.notifier.clone();
        let (failed_reference, failed_recorder) = (reference.clone(), recorder.clone());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, "failed to publish the ApprovalRequested event");
            }
            let Some(notifier) = notifier else { return };
            if let Err(why) = notifier.send(&body).await {
                warn!(error = %why, "approval notification failed");
                let failed = KubeEvent {
                    type_: EventType::Warning,
                    reason: "ApprovalNotifyFailed".into(),
                    note: Some(format!("the approval notification could not be delivered: {why}")),
                    action: "Authorize".into(),
                    secondary: None,
                };
                let _ = failed_recorder.publish(&failed, &failed_reference).await;
            }
        });
    }
}

/// `<agent>-<10 hex>`: unique, and readable next to its agent.
fn request_name(agent: &str) -> Result<String, ()> {
    let mut nonce = [0u8; 5];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| ())?;
    let stem: String = agent.chars().take(200).collect();
    let stem = stem.trim_end_matches(['.', '-']);
    Ok(format!("{stem}-{}", hex::encode(nonce)))
}

fn reference(namespace: &str, name: &str, phase: ApprovalPhase, expires_at: Timestamp) -> ApprovalRef {
    ApprovalRef {
        id: name.to_owned(),
        namespace: namespace.to_owned(),
        phase,
        expires_at: expires_at.to_string(),
    }
}

/// The audit reference of an ApprovalRequest.
pub fn request_ref(namespace: &str, name: &str, uid: &str) -> AuditRef {
    AuditRef {
        api_version: ApprovalRequest::api_version(&()).into_owned(),
        kind: ApprovalRequest::kind(&()).into_owned(),
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
        uid: Some(uid.to_owned()),
    }
}

/// The `approval.request` record: everything the webhook and the controller later need to judge an answer
/// (read back by [`approval::Book::apply`]).
#[allow(clippy::too_many_arguments)]
fn requested_entry(
    asked: &Asked<'_>,
    decision: &Decision,
    terms: &ApprovalTerms,
    binding: &str,
    agent: &Agent,
    name: &str,
    uid: &str,
    expires_at: Timestamp,
) -> Entry {
    let approvers = serde_json::to_string(&terms.approvers).unwrap_or_else(|_| "{}".into());
    let mut e = Entry::new(
        ACTOR,
        AuditAction::ApprovalRequest,
        request_ref(asked.namespace, name, uid),
        Outcome::Success,
        format!(
            "agent {}/{} asked to {} {}: rule {} of policy {} needs a human's approval",
            asked.namespace,
            asked.name,
            asked.action,
            asked.resource,
            decision.rule.as_deref().unwrap_or_default(),
            decision.policy.as_deref().unwrap_or_default()
        ),
    )
    .with_detail(a::DETAIL_BINDING, binding)
    .with_detail(a::DETAIL_AGENT_UID, asked.agent_uid)
    .with_detail(a::DETAIL_APPROVERS, approvers)
    .with_detail(a::DETAIL_FOUR_EYES, terms.four_eyes.to_string())
    .with_detail(a::DETAIL_EXPIRES_AT, expires_at.to_string())
    .with_detail(a::DETAIL_VALID_FOR_SECONDS, terms.valid_for.as_secs().to_string())
    .with_detail(a::DETAIL_USES, terms.uses.to_string())
    .with_detail("requestAction", asked.action)
    .with_detail("resource", asked.resource);
    if let Some(p) = asked.on_behalf_of {
        e = e.with_detail(a::DETAIL_ON_BEHALF_OF, p);
    }
    if let Some(o) = agent.spec.owner.as_ref().filter(|o| o.kind == PrincipalKind::User) {
        e = e.with_detail(a::DETAIL_OWNER, o.name.clone());
    }
    if let Some(sa) = agent.spec.workload.as_ref().and_then(|w| w.service_account_name.as_deref()) {
        e = e.with_detail(a::DETAIL_SERVICE_ACCOUNT, format!("{}:{sa}", asked.namespace));
    }
    if let Some(p) = decision.policy.as_deref() {
        e = e.with_detail("policy", p);
    }
    if let Some(r) = decision.rule.as_deref() {
        e = e.with_detail("rule", r);
    }
    if !asked.context.is_empty() {
        let keys: Vec<&str> = asked.context.keys().map(String::as_str).collect();
        e = e.with_detail("contextKeys", keys.join(","));
    }
    e
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::api::Grantors;
    use crate::audit::{Record, RecordKind, ZERO_HASH};

    fn agent() -> Agent {
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "payer", "namespace": "pay", "uid": "a-1"},
            "spec": {"owner": {"kind": "User", "name": "olivia@example.com"}, "purpose": "refunds",
                "workload": {"serviceAccountName": "payer-sa"}},
        }))
        .expect("an Agent")
    }

    fn sealed(entries: Vec<Entry>) -> Vec<Record> {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let time = format!("2026-12-01T10:00:{i:02}.000000000Z");
                Record::seal(ZERO_HASH, i as u64 + 1, time, RecordKind::Event, None, e).expect("sealed")
            })
            .collect()
    }

    /// The record `create` writes is what the webhook and the controller later judge answers by: every
    /// term must come back from the ledger as it went in, or an answer would be judged by other rules.
    #[test]
    fn the_request_record_carries_every_term_the_ledger_judges_answers_by() {
        let context = json!({"amount": 913.37, "currency": "EUR"}).as_object().cloned().unwrap_or_default();
        let asked = Asked {
            namespace: "pay",
            name: "payer",
            agent_uid: "a-1",
            audience: "pay",
            delegation_uid: Some("d-1"),
            on_behalf_of: Some("alice@example.com"),
            action: "refund",
            resource: "pay:orders/7",
            tool: None,
            context: &context,
        };
        let terms = ApprovalTerms {
            approvers: Grantors { users: vec!["bob@example.com".into()], groups: vec!["finance".into()] },
            timeout: Duration::from_secs(600),
            valid_for: Duration::from_secs(60),
            uses: 3,
            four_eyes: true,
        };
        let decision = Decision {
            policy: Some("payments".into()),
            rule: Some("refunds".into()),
            ..Decision::deny(Reason::Refused(String::new()))
        };
        let expires_at: Timestamp = "2026-12-01T10:10:00Z".parse().unwrap();
        let record = requested_entry(
            &asked,
            &decision,
            &terms,
            "bind-1",
            &agent(),
            "payer-0a1b2c3d4e",
            "r-1",
            expires_at,
        );
        assert!(
            !record.details.values().any(|v| v.contains("913.37")),
            "a context value in the log: {record:?}"
        );
        let use_it = Entry::new(
            ACTOR,
            AuditAction::ApprovalUse,
            request_ref("pay", "payer-0a1b2c3d4e", "r-1"),
            Outcome::Success,
            "used",
        );
        let approve = Entry::new(
            ACTOR,
            AuditAction::ApprovalApprove,
            request_ref("pay", "payer-0a1b2c3d4e", "r-1"),
            Outcome::Success,
            "approved",
        )
        .with_detail(a::DETAIL_DECIDED_BY, "bob@example.com")
        .with_detail(a::DETAIL_APPROVED_UNTIL, "2026-12-01T10:01:00Z");
        let ledger = Ledger::from_records(&sealed(vec![record, approve, use_it]));
        let (uid, e) = ledger
            .approvals(|b| b.by_binding("bind-1").map(|(u, e)| (u.to_owned(), e.clone())))
            .expect("the request, found by its binding");
        assert_eq!((uid.as_str(), e.name.as_str(), e.namespace.as_str()), ("r-1", "payer-0a1b2c3d4e", "pay"));
        assert_eq!(
            (e.agent_uid.as_str(), e.expires_at, e.valid_for_secs, e.uses),
            ("a-1", expires_at, 60, 3)
        );
        assert_eq!(e.terms.approvers, terms.approvers);
        assert!(e.terms.four_eyes);
        assert_eq!(e.terms.on_behalf_of.as_deref(), Some("alice@example.com"));
        assert_eq!(e.terms.owner.as_deref(), Some("olivia@example.com"));
        assert_eq!(e.terms.service_account, Some(("pay".to_owned(), "payer-sa".to_owned())));
        let now: Timestamp = "2026-12-01T10:00:30Z".parse().unwrap();
        assert_eq!(
            e.standing(now),
            Standing::Approved { by: "bob@example.com".into(), uses_left: 2 },
            "one of three used"
        );
    }

    #[test]
    fn request_names_are_the_agent_s_name_and_ten_hex_digits_and_stay_object_names() {
        let a = request_name("payer").unwrap();
        let b = request_name("payer").unwrap();
        assert_ne!(a, b);
        let (stem, hex) = a.rsplit_once('-').unwrap();
        assert_eq!(stem, "payer");
        assert!(hex.len() == 10 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        let long = request_name(&format!("{}.{}", "x".repeat(199), "y".repeat(53))).unwrap();
        assert!(long.len() <= 253 && !long.contains(".-"), "{long}");
    }

    #[test]
    fn a_notification_url_must_be_absolute_http_or_https() {
        for bad in ["", "hooks.example.org/x", "/x", "ftp://hooks.example.org/x", "file:///etc/passwd"] {
            assert!(Notifier::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Notifier::new("https://hooks.example.org/x").is_ok());
        assert!(Notifier::new("http://127.0.0.1:9/x").is_ok());
    }

    /// A loopback HTTP server answering each request with the next status of `statuses`; returns its URL
    /// and the bodies it received.
    async fn server(statuses: Vec<u16>) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for status in statuses {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(body.to_owned());
                            break;
                        }
                    }
                }
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_notification_is_retried_on_5xx_and_given_up_on_4xx() {
        let (url, mut bodies) = server(vec![503, 200]).await;
        let notifier = Notifier::new(&url).unwrap();
        let body = json!({"id": "payer-0a1b2c3d4e"});
        notifier.send(&body).await.expect("delivered on the second attempt");
        for _ in 0..2 {
            assert_eq!(bodies.recv().await.as_deref(), Some(body.to_string().as_str()));
        }
        let (url, mut bodies) = server(vec![400, 200]).await;
        let err = Notifier::new(&url).unwrap().send(&body).await.expect_err("a 400 is final");
        assert!(err.contains("400"), "{err}");
        assert!(bodies.recv().await.is_some());
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), bodies.recv()).await.is_err(),
            "a 4xx was retried"
        );
    }
}
