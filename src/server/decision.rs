//! The decision API: `POST /v1/authorize` for gateways and SDKs, an Envoy `ext_authz` HTTP check endpoint
//! (`/v1/ext_authz/...`, also used by agentgateway's extAuth) with the MCP mapping, and [`Authorizer`], the
//! same decision path callable in-process.
//!
//! Every decision: validate the input (bad input is a 400, never a 500 and never an Allow) -> verify the
//! token with the strict verifier (cached per exact token, per key set) -> find the agent by the token's
//! UID in the policy index, and in the operator's ledger check it is Active and the token (by `jti`) is one
//! of its live credentials, for an audience and lifetime its spec still grants, and that it is not revoked
//! -> evaluate the policies and rate limits
//! -> queue an audit record -> answer. Delegated tokens will add their checks between verification and
//! evaluation. If the audit record cannot be queued (the log failed), the answer is Deny: nothing is
//! allowed that is not recorded.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::audit::{AuditLog, Entry, ObjectRef, Outcome};
use crate::authz::resource::{self, MAX_RESOURCE_BYTES};
use crate::authz::{Acting, Clock, Decision, Delegated, RateLimiter, Reason, Request, Subject, Verdict};
use crate::controller::authz::PolicyIndex;
use crate::identity::TrustDomain;
use crate::identity::cache::{CurrentVerifier, Either, Versioned};
use crate::identity::issuer::IssuerReceiver;
use crate::identity::jwt::CLAIM_UID;
use crate::identity::verify::{VerifiedAccess, VerifiedDelegated};
use crate::registry::ledger::{DelegatedStanding, Ledger};

use super::approvals::{ApprovalRef, Approvals, Asked, MAX_WAIT};
use super::mcp::{self, Mapping};

/// Path of the decision endpoint.
pub const AUTHORIZE_PATH: &str = "/v1/authorize";
/// Prefix of the Envoy ext_authz HTTP check endpoint (configure it as the service's `path_prefix`).
pub const EXT_AUTHZ_PREFIX: &str = "/v1/ext_authz";
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most top-level keys in a request context, and its deepest nesting.
const MAX_CONTEXT_KEYS: usize = 64;
const MAX_CONTEXT_DEPTH: usize = 4;

/// `POST /v1/authorize` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// The agent's JWT-SVID.
    #[serde(default)]
    pub token: String,
    /// The verb.
    pub action: String,
    /// The resource.
    pub resource: String,
    /// The MCP tool, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// When set, the token's audience must be exactly this (a gateway names the service it protects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Request attributes for attribute conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
    /// When set, only a token of this kind is accepted: "identity" (the agent's own JWT-SVID),
    /// "delegated" (a token of a Delegation, the agent acting for a human) or "access" (a task-scoped
    /// token from the token endpoint). Unset: any.
    #[serde(default, rename = "tokenType", skip_serializing_if = "Option::is_none")]
    pub token_type: Option<TokenType>,
    /// When the decision is RequireApproval, wait up to this many seconds (at most 60) for a human's
    /// answer before answering: Allow once approved, Deny once denied, RequireApproval when the wait ends.
    #[serde(default, rename = "waitSeconds", skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u32>,
    /// The `x5t#S256` (base64url SHA-256 of the DER) of the client certificate the caller's client
    /// presented on its mutual-TLS connection. A certificate-bound access token (RFC 8705 `cnf`) is
    /// allowed only with its own certificate's thumbprint here.
    #[serde(default, rename = "certificateThumbprint", skip_serializing_if = "Option::is_none")]
    pub certificate_thumbprint: Option<String>,
    /// In-process only (never read from a request body): ask whether some request context could be
    /// allowed, without recording, holding or charging anything ([`Authorizer::probe`]).
    #[serde(skip)]
    pub probe: bool,
    /// In-process only: the caller keeps the client's connection alive itself while a RequireApproval
    /// decision waits (the gateway's event stream), so the wait is bounded by `wait_seconds` (at most 60 s)
    /// alone, not by the listener's request timeout.
    #[serde(skip)]
    pub kept_alive: bool,
}

/// The kinds of token the decision API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// An identity JWT-SVID.
    Identity,
    /// A delegated token.
    Delegated,
    /// An access token from the token endpoint.
    Access,
}

impl TokenType {
    /// "an identity", "a delegated", "an access": for messages.
    pub fn with_article(self) -> &'static str {
        match self {
            Self::Identity => "an identity",
            Self::Delegated => "a delegated",
            Self::Access => "an access",
        }
    }

    /// The spelling in `tokenType` and `x-agentiam-token-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Delegated => "delegated",
            Self::Access => "access",
        }
    }
}

/// One link of the chain a delegated decision was made under, human first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainEntry {
    /// "User" for the human, "Agent" for each agent.
    pub kind: String,
    /// The username, or the agent's name.
    pub name: String,
    /// The agent's SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The UID of the Delegation that made this agent a link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_uid: Option<String>,
}

/// What a would-be decision of Audit-mode policies looked like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditModeOutcome {
    /// The verdict had the Audit-mode policies been enforced.
    pub would_decision: Verdict,
    /// Why.
    pub reason: String,
    /// The policy.
    pub policy: Option<String>,
    /// The rule.
    pub rule: Option<String>,
}

/// `POST /v1/authorize` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    /// Allow, Deny or RequireApproval.
    pub decision: Verdict,
    /// Why, for humans.
    pub reason: String,
    /// The deciding policy.
    pub policy: Option<String>,
    /// The deciding rule.
    pub rule: Option<String>,
    /// The `auditId` detail of the decision's audit record.
    pub audit_id: String,
    /// What Audit-mode policies would have decided, when stricter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_mode: Option<AuditModeOutcome>,
    /// For a delegated token: the human the agent acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// For a delegated token: the whole chain, human first, the acting agent last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainEntry>,
    /// For a rule that requires approval: the ApprovalRequest the decision waited on or used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// The agent the token proved, for in-process callers (the gateway's call record); None when the
    /// token proved nobody (missing, invalid, not an agent's). Not part of the API's answer.
    #[serde(skip)]
    pub agent: Option<DecidedAgent>,
}

/// The agent a decision was about, as its token proved it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecidedAgent {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID, as the token carries it.
    pub uid: Option<String>,
}

/// Input the API refuses (a 400), with a message that names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// How the decision was asked for (recorded in the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/authorize`.
    Api,
    /// The ext_authz check endpoint.
    ExtAuthz,
    /// The ext_authz endpoint with an MCP JSON-RPC body.
    Mcp,
    /// An in-process caller.
    InProcess,
    /// The agent gateway (`/gateway/...`), deciding a call it is about to forward.
    Gateway,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::ExtAuthz => "ext_authz",
            Self::Mcp => "mcp",
            Self::InProcess => "in-process",
            Self::Gateway => "gateway",
        }
    }
}

/// The decision path, shared by the HTTP handlers and in-process callers.
pub struct Authorizer {
    index: Arc<PolicyIndex>,
    ledger: Arc<Ledger>,
    audit: AuditLog,
    trust_domain: TrustDomain,
    limiter: RateLimiter,
    verifiers: Arc<CurrentVerifier>,
    fixed_time: Option<Timestamp>,
    id_prefix: String,
    ids: AtomicU64,
    approvals: OnceLock<Arc<Approvals>>,
    /// The behavioural monitor every decision about an agent's policies is shown to.
    monitor: OnceLock<Arc<crate::monitor::Monitor>>,
    /// What behaviour took off each agent's trust score (the monitor's).
    trust: OnceLock<Arc<crate::registry::trust::TrustPenalties>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl Authorizer {
    /// A decision path over `index` and `ledger` (the operator's own record of phases and issued tokens),
    /// verifying tokens against the keys `issuer` publishes and recording every decision in `audit`.
    /// `fixed_time` pins the clock of time windows (a test hook; None in production).
    pub fn new(
        index: Arc<PolicyIndex>,
        ledger: Arc<Ledger>,
        issuer: IssuerReceiver,
        audit: AuditLog,
        fixed_time: Option<Timestamp>,
    ) -> Arc<Self> {
        let trust_domain = issuer.borrow().trust_domain.clone();
        let verifiers = Arc::new(CurrentVerifier::new(issuer.clone()));
        let mut nonce = [0u8; 6];
        // Only uniqueness across restarts depends on this; a failure falls back to the clock.
        let id_prefix = match aws_lc_rs::rand::fill(&mut nonce) {
            Ok(()) => hex::encode(nonce),
            Err(_) => format!("{:012x}", Timestamp::now().as_nanosecond() & 0xffff_ffff_ffff),
        };
        Arc::new(Self {
            index,
            ledger,
            audit,
            trust_domain,
            limiter: RateLimiter::default(),
            verifiers,
            fixed_time,
            id_prefix,
            ids: AtomicU64::new(0),
            approvals: OnceLock::new(),
            monitor: OnceLock::new(),
            trust: OnceLock::new(),
        })
    }

    /// Turns on the approval step: RequireApproval decisions create ApprovalRequests and are answered
    /// from them. Without it (in-process tests, benchmarks) a RequireApproval stays one. Set once.
    pub fn set_approvals(&self, approvals: Arc<Approvals>) {
        let _ = self.approvals.set(approvals);
    }

    /// The rate-limit counters (swept periodically by the operator).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The verifier of the current key set, shared with the token endpoint.
    pub fn verifiers(&self) -> &Arc<CurrentVerifier> {
        &self.verifiers
    }

    /// The verifier for the current key set.
    fn verifier(&self) -> Option<Arc<Versioned>> {
        self.verifiers.get()
    }

    /// Decides one request and records it. `Err` only for input that is not a valid question (a 400).
    pub async fn authorize(
        &self,
        req: &AuthorizeRequest,
        source: Source,
    ) -> Result<AuthorizeResponse, BadRequest> {
        // From here on the request is the canonical one: decided, audited and answered as such.
        let canonical = validate(req, source)?;
        let req: &AuthorizeRequest = &canonical;
        let empty = Map::new();
        let context = req.context.as_ref().unwrap_or(&empty);
        let approvals = self.approvals.get();
        let wait = approvals.map_or(Duration::ZERO, |a| {
            let cap = if req.kept_alive { MAX_WAIT } else { a.max_wait() };
            Duration::from_secs(req.wait_seconds.unwrap_or(0).into()).min(cap)
        });
        let deadline = tokio::time::Instant::now() + wait;
        let mut waited_on: Option<String> = None;
        // Decide; when a human's answer is awaited and the caller waits, decide again (in full: a
        // revocation while waiting counts) each time an approval record lands, until the deadline.
        let (decision, who, approval, took) = loop {
            let changed = approvals.map(|a| a.ledger().approvals_changed().notified());
            let mut changed = std::pin::pin!(changed);
            if let Some(c) = changed.as_mut().as_pin_mut() {
                c.enable();
            }
            let now = Timestamp::now();
            let clock = Clock { now: self.fixed_time.unwrap_or(now), instant: Instant::now() };
            let started = Instant::now();
            let (decision, who) = self.decide(req, context, now, clock);
            let took = started.elapsed().as_secs_f64();
            let (decision, approval, uid) = match (approvals, who.uid.as_deref()) {
                (Some(approvals), Some(agent_uid)) if decision.verdict == Verdict::RequireApproval => {
                    let asked = Asked {
                        namespace: &who.namespace,
                        name: &who.name,
                        agent_uid,
                        audience: &who.audience,
                        delegation_uid: who.delegation_uid.as_deref(),
                        on_behalf_of: who.on_behalf_of.as_deref(),
                        action: &req.action,
                        resource: &req.resource,
                        tool: req.tool.as_deref(),
                        context,
                    };
                    let r = approvals.resolve(&asked, decision, waited_on.as_deref(), now).await;
                    (r.decision, r.approval, r.uid)
                }
                (_, _) => (decision, None, None),
            };
            let waiting = decision.verdict == Verdict::RequireApproval && approval.is_some();
            if !waiting || tokio::time::Instant::now() >= deadline {
                break (decision, who, approval, took);
            }
            waited_on = uid;
            if let Some(changed) = changed.as_pin_mut() {
                let _ = tokio::time::timeout_at(deadline, changed).await;
            }
        };
        if let (Some(monitor), Some(uid)) = (self.monitor.get(), who.uid.as_deref())
            && !stopped(&decision.reason)
        {
            let bytes = context.get("bytes").and_then(Value::as_u64);
            let obs = crate::monitor::baseline::Observation {
                at: Timestamp::now(),
                resource: &req.resource,
                tool: req.tool.as_deref(),
                denied: decision.verdict != Verdict::Allow,
                bytes,
            };
            monitor.observe(uid, &who.namespace, &who.name, &obs);
        }
        let (on_behalf_of, chain) = (who.on_behalf_of.clone(), who.chain.clone());
        let agent = (!who.name.is_empty()).then(|| DecidedAgent {
            namespace: who.namespace.clone(),
            name: who.name.clone(),
            uid: who.uid.clone(),
        });
        let audit_id = format!("{}-{}", self.id_prefix, self.ids.fetch_add(1, Ordering::Relaxed) + 1);
        let audited = Audited {
            action: req.action.clone(),
            resource: req.resource.clone(),
            tool: req.tool.clone(),
            context_keys: context_keys(req),
            source,
            decision: decision.clone(),
            who,
            audit_id: audit_id.clone(),
            approval: approval.as_ref().map(|a| format!("{}/{}", a.namespace, a.id)),
        };
        let decision = match self.audit.enqueue_with(move || audited.entry()).await {
            Ok(()) => decision,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the decision; denying");
                Decision::deny(Reason::Refused("the audit log is unavailable, so nothing is allowed".into()))
            }
        };
        crate::metrics::global().decision(decision.verdict == Verdict::Allow, took);
        let mut answer = response(decision, audit_id, on_behalf_of, chain);
        answer.approval = approval;
        answer.agent = agent;
        Ok(answer)
    }

    /// Whether the agent `req.token` proves could be allowed `req` with some request context: the
    /// decision path without its audit record, approval step, monitor or rate-limit charge, attribute
    /// conditions it cannot judge counting as met by Allow rules and not by Deny rules (Allow and
    /// RequireApproval both count). For cutting down what an agent is shown (an MCP `tools/list`); it never
    /// allows anything.
    pub fn probe(&self, req: &AuthorizeRequest) -> bool {
        let Ok(canonical) = validate(req, Source::InProcess) else { return false };
        let mut req = canonical.into_owned();
        req.probe = true;
        let empty = Map::new();
        let now = Timestamp::now();
        let clock = Clock { now: self.fixed_time.unwrap_or(now), instant: Instant::now() };
        let (decision, _) = self.decide(&req, req.context.as_ref().unwrap_or(&empty), now, clock);
        matches!(decision.verdict, Verdict::Allow | Verdict::RequireApproval)
    }

    /// Shows every decision about an agent's policies to `monitor` from now on.
    pub fn set_monitor(&self, monitor: Arc<crate::monitor::Monitor>) {
        self.set_trust_penalties(monitor.penalties());
        let _ = self.monitor.set(monitor);
    }

    /// Lowers each agent's trust score by what its behaviour took off (the monitor's penalties).
    pub fn set_trust_penalties(&self, penalties: Arc<crate::registry::trust::TrustPenalties>) {
        let _ = self.trust.set(penalties);
    }

    /// The operator's record of the agent `uid`, with its trust score lowered by what its behaviour took
    /// off (the dynamic trust score, docs/monitoring.md).
    fn record_of(&self, uid: &str, now: Timestamp) -> Option<Arc<crate::registry::ledger::AgentRecord>> {
        let record = self.ledger.get(uid)?;
        Some(crate::registry::trust::with_penalty(record, uid, self.trust.get().map(|t| &**t), now))
    }

    fn decide(
        &self,
        req: &AuthorizeRequest,
        context: &Map<String, Value>,
        now: Timestamp,
        clock: Clock,
    ) -> (Decision, Who) {
        let refuse = |why: String| (Decision::deny(Reason::Refused(why)), Who::default());
        if req.token.is_empty() {
            return refuse("no token".into());
        }
        if let Some(why) = self.index.refusal() {
            return refuse(why);
        }
        let Some(verifier) = self.verifier() else {
            return refuse("no usable signing keys are published".into());
        };
        // Told apart by typ, each kind by its own verifier (and cache).
        let svid = match verifier.verifier.verify_either(&req.token, now) {
            Ok(Either::Identity(s)) => s,
            Ok(Either::Delegated(v)) => return self.decide_delegated(&v, req, context, now, clock),
            Ok(Either::Access(v)) => return self.decide_access(&v, req, context, now, clock),
            Err(e) => return refuse(format!("invalid token: {e}")),
        };
        if let Some(why) = kind_refusal(req, TokenType::Identity) {
            return refuse(why);
        }
        let Ok((namespace, name)) = svid.spiffe_id.agent_in(&self.trust_domain) else {
            return refuse("the token's subject is not an agent".into());
        };
        let who = Who {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: svid.extra.get(CLAIM_UID).and_then(Value::as_str).map(str::to_owned),
            audience: svid.audience.clone(),
            jti: svid.jti.clone(),
            ..Who::default()
        };
        if let Some(why) = audience_refusal(req, &svid.audience) {
            return (Decision::deny(Reason::Refused(why)), who);
        }
        let Some(uid) = who.uid.as_deref() else {
            return (Decision::deny(Reason::Refused(format!("the token has no {CLAIM_UID} claim"))), who);
        };
        let request = Request {
            action: &req.action,
            resource: &req.resource,
            tool: req.tool.as_deref(),
            context,
            delegation: None,
            probe: req.probe,
        };
        let lifetime = svid
            .issued_at
            .and_then(|iat| std::time::Duration::try_from(svid.expires_at.duration_since(iat)).ok());
        let subject = Subject {
            uid,
            namespace: &who.namespace,
            name: &who.name,
            jti: &svid.jti,
            audience: &svid.audience,
            lifetime,
        };
        let record = self.record_of(uid, now);
        let decision = self.index.load().decide(subject, record.as_deref(), &request, clock, &self.limiter);
        (decision, who)
    }
}

/// Why a token of kind `found` is refused when the request pins another kind (`tokenType`), if it is.
fn kind_refusal(req: &AuthorizeRequest, found: TokenType) -> Option<String> {
    let wanted = req.token_type.filter(|w| *w != found)?;
    Some(format!(
        "{} token where {} token is required (tokenType: {})",
        found.with_article(),
        wanted.with_article(),
        wanted.as_str()
    ))
}

/// Why a token for `audience` is refused when the request pins another audience, if it is.
fn audience_refusal(req: &AuthorizeRequest, audience: &str) -> Option<String> {
    let expected = req.audience.as_deref().filter(|e| *e != audience)?;
    Some(format!("the token is for audience {audience:?}, not {expected:?}"))
}

/// Whether a decision was about the agent being stopped, or about the token presented (not identified,
/// not one the operator issued or no longer, another audience or lifetime) rather than about what the
/// agent asked: those say nothing about its behaviour. A suspended agent's refused calls must not teach
/// the monitor that refusals are normal, and whoever replays a stale or stolen token must not be able to
/// lower the agent's trust score.
fn stopped(reason: &Reason) -> bool {
    matches!(
        reason,
        Reason::Revoked { .. }
            | Reason::NotActive(_)
            | Reason::Stopping(_)
            | Reason::Deleting
            | Reason::UnknownAgent
            | Reason::IdentityMismatch
            | Reason::Unrecorded
            | Reason::TokenNotIssued
            | Reason::AudienceNotGranted
            | Reason::LifetimeNotGranted
            | Reason::Refused(_)
    )
}

/// Who a decision was about, as far as the token told.
#[derive(Debug, Default)]
struct Who {
    namespace: String,
    name: String,
    uid: Option<String>,
    audience: String,
    jti: String,
    /// For a delegated token: the human, the chain, and the leaf Delegation's UID.
    on_behalf_of: Option<String>,
    chain: Vec<ChainEntry>,
    delegation_uid: Option<String>,
}

impl Authorizer {
    /// The decision for an access token from the token endpoint: verified as one; the operator issued it
    /// to this agent for this audience and it has not been voided (ledger); the agent's own standing and
    /// policies; and the token's scopes allowing the request.
    fn decide_access(
        &self,
        v: &VerifiedAccess,
        req: &AuthorizeRequest,
        context: &Map<String, Value>,
        now: Timestamp,
        clock: Clock,
    ) -> (Decision, Who) {
        let refuse = |why: String, who: Who| (Decision::deny(Reason::Refused(why)), who);
        let Ok((namespace, name)) = v.agent.agent_in(&self.trust_domain) else {
            return refuse("the token's subject is not an agent".into(), Who::default());
        };
        let who = Who {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: Some(v.agent_uid.clone()),
            audience: v.audience.clone(),
            jti: v.jti.clone(),
            ..Who::default()
        };
        if let Some(why) = kind_refusal(req, TokenType::Access).or_else(|| audience_refusal(req, &v.audience))
        {
            return refuse(why, who);
        }
        if let Some(bound) = &v.certificate {
            // RFC 8705 §3: a bound token is usable only by the holder of its certificate; the caller
            // vouches for the certificate its client showed. Constant time is not needed: thumbprints
            // are public.
            if req.certificate_thumbprint.as_deref() != Some(bound.as_str()) {
                let why = if req.certificate_thumbprint.is_none() {
                    "the access token is bound to a client certificate (cnf x5t#S256), and the request names none (certificateThumbprint)"
                } else {
                    "the access token is bound to another client certificate than the one the request names"
                };
                return refuse(why.into(), who);
            }
        }
        let issued = self.ledger.access_token(&v.jti, now);
        if !issued.is_some_and(|i| i.agent_uid == v.agent_uid && i.aud == v.audience) {
            return refuse(
                "the access token is not one the operator issued to this agent (or its issuance was voided)"
                    .into(),
                who,
            );
        }
        let request = Request {
            action: &req.action,
            resource: &req.resource,
            tool: req.tool.as_deref(),
            context,
            delegation: None,
            probe: req.probe,
        };
        let record = self.record_of(&v.agent_uid, now);
        let acting = Acting { uid: &v.agent_uid, namespace: &who.namespace, name: &who.name };
        let decision = self.index.load().decide_access(
            acting,
            record.as_deref(),
            &v.scopes,
            &request,
            clock,
            &self.limiter,
        );
        (decision, who)
    }

    /// The decision for a delegated token: verified as one; every link of its chain last recorded Active
    /// by the operator and the token one it minted for the leaf (ledger); the acting agent's own standing
    /// and policies; and the delegation's scopes allowing the request.
    fn decide_delegated(
        &self,
        v: &VerifiedDelegated,
        req: &AuthorizeRequest,
        context: &Map<String, Value>,
        now: Timestamp,
        clock: Clock,
    ) -> (Decision, Who) {
        let refuse = |why: String, who: Who| (Decision::deny(Reason::Refused(why)), who);
        let Some(Ok((namespace, name))) = v.agents.first().map(|a| a.agent_in(&self.trust_domain)) else {
            return refuse("the token's actor is not an agent".into(), Who::default());
        };
        // Root grantee first, as status shows a chain.
        let mut chain = vec![ChainEntry {
            kind: "User".into(),
            name: v.grantor.clone(),
            spiffe_id: None,
            delegation_uid: None,
        }];
        for (agent, delegation_uid) in v.agents.iter().rev().zip(&v.chain) {
            let agent_name =
                agent.agent_in(&self.trust_domain).map(|(_, n)| n.to_owned()).unwrap_or_default();
            chain.push(ChainEntry {
                kind: "Agent".into(),
                name: agent_name,
                spiffe_id: Some(agent.to_string()),
                delegation_uid: Some(delegation_uid.clone()),
            });
        }
        let who = Who {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: Some(v.agent_uid.clone()),
            audience: v.audience.clone(),
            jti: v.jti.clone(),
            on_behalf_of: Some(v.grantor.clone()),
            chain,
            delegation_uid: Some(v.delegation_uid.clone()),
        };
        if let Some(why) =
            kind_refusal(req, TokenType::Delegated).or_else(|| audience_refusal(req, &v.audience))
        {
            return refuse(why, who);
        }
        match self.ledger.delegated_standing(&v.chain, &v.jti, &v.audience, now) {
            DelegatedStanding::Live => {}
            DelegatedStanding::NotInForce { uid, phase } => {
                let phase = phase.map_or("not yet decided", |p| p.as_str());
                return refuse(
                    format!("the delegation chain is not in force: Delegation {uid} is {phase}"),
                    who,
                );
            }
            DelegatedStanding::Expired => {
                return refuse(
                    "the token has expired (a delegated token never outlives its chain)".into(),
                    who,
                );
            }
            DelegatedStanding::TokenNotIssued => {
                return refuse(
                    "the token is not a current token of its delegation (never issued, or taken back)".into(),
                    who,
                );
            }
        }
        let grant = v.chain.first().and_then(|root| self.ledger.grant(root));
        let groups = grant.as_ref().map_or(&[][..], |g| g.requester.groups.as_slice());
        let delegated = Delegated { scopes: &v.scopes, grantor: &v.grantor, grantor_groups: groups };
        let request = Request {
            action: &req.action,
            resource: &req.resource,
            tool: req.tool.as_deref(),
            context,
            delegation: Some(&delegated),
            probe: req.probe,
        };
        let record = self.record_of(&v.agent_uid, now);
        let acting = Acting { uid: &v.agent_uid, namespace: &who.namespace, name: &who.name };
        let decision =
            self.index.load().decide_delegated(acting, record.as_deref(), &request, clock, &self.limiter);
        (decision, who)
    }
}

fn response(
    decision: Decision,
    audit_id: String,
    on_behalf_of: Option<String>,
    chain: Vec<ChainEntry>,
) -> AuthorizeResponse {
    AuthorizeResponse {
        on_behalf_of,
        chain,
        approval: None,
        agent: None,
        decision: decision.verdict,
        reason: decision.reason.to_string(),
        policy: decision.policy.as_deref().map(str::to_owned),
        rule: decision.rule.as_deref().map(str::to_owned),
        audit_id,
        audit_mode: decision.would.map(|w| AuditModeOutcome {
            would_decision: w.verdict,
            reason: w.reason.to_string(),
            policy: w.policy.as_deref().map(str::to_owned),
            rule: w.rule.as_deref().map(str::to_owned),
        }),
    }
}

/// What a decision's audit record says, moved to the audit writer thread, which formats it (see
/// [`Audited::entry`]), so the request's own thread does not.
struct Audited {
    action: String,
    resource: String,
    tool: Option<String>,
    context_keys: Option<String>,
    source: Source,
    decision: Decision,
    who: Who,
    audit_id: String,
    approval: Option<String>,
}

/// The request context's keys, comma-separated; never its values (they may hold personal data).
fn context_keys(req: &AuthorizeRequest) -> Option<String> {
    let ctx = req.context.as_ref().filter(|c| !c.is_empty())?;
    Some(ctx.keys().map(String::as_str).collect::<Vec<_>>().join(","))
}

impl Audited {
    /// The decision's audit record. Never the token, never context values: only the context's keys.
    fn entry(self) -> Entry {
        let Self { action, resource, tool, context_keys, source, decision: d, who, audit_id, approval } =
            self;
        let known = !who.name.is_empty();
        let actor = if known {
            format!("agent:{}/{}", who.namespace, who.name)
        } else {
            "unauthenticated".to_owned()
        };
        let object = ObjectRef {
            api_version: "agentiam.dev/v1alpha1".into(),
            kind: "Agent".into(),
            namespace: known.then_some(who.namespace),
            name: if known { who.name } else { "unknown".into() },
            uid: who.uid,
        };
        let outcome = if d.verdict == Verdict::Allow { Outcome::Success } else { Outcome::Denied };
        let mut e =
            Entry::new(actor, crate::audit::Action::AuthzDecide, object, outcome, d.reason.to_string())
                .with_detail("auditId", audit_id)
                .with_detail("decision", d.verdict.as_str())
                .with_detail("requestAction", action)
                .with_detail("resource", resource)
                .with_detail("source", source.as_str());
        let mut add = |k: &str, v: Option<&str>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                e.details.insert(k.to_owned(), v.to_owned());
            }
        };
        add("tool", tool.as_deref());
        add("policy", d.policy.as_deref());
        add("rule", d.rule.as_deref());
        add("audience", Some(&who.audience));
        add("jti", Some(&who.jti));
        add("onBehalfOf", who.on_behalf_of.as_deref());
        add("delegationUID", who.delegation_uid.as_deref());
        if !who.chain.is_empty() {
            let chain: Vec<String> = who.chain.iter().map(|l| format!("{}:{}", l.kind, l.name)).collect();
            add("chain", Some(&chain.join(" > ")));
        }
        if let Some(w) = &d.would {
            add("wouldDecision", Some(w.verdict.as_str()));
            add("wouldPolicy", w.policy.as_deref());
            add("wouldRule", w.rule.as_deref());
        }
        add("contextKeys", context_keys.as_deref());
        add("approvalRequest", approval.as_deref());
        e
    }
}

/// Checks the request's fields, naming the bad one, and returns it with its resource in canonical form
/// (borrowed when it already was; see [`resource`] for the grammar and what is canonicalised).
pub fn validate(req: &AuthorizeRequest, source: Source) -> Result<Cow<'_, AuthorizeRequest>, BadRequest> {
    let bad = |m: String| Err(BadRequest(m));
    if source == Source::Api && req.token.is_empty() {
        return bad("token is required".into());
    }
    if req.token.len() > 16 * 1024 {
        return bad("token is longer than 16384 bytes".into());
    }
    let action_ok = |a: &str| a.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if req.action.is_empty() || req.action.len() > 63 || !action_ok(&req.action) {
        return bad("action must be 1-63 characters of letters, digits, '.', '_', ':' and '-'".into());
    }
    let canonical = match resource::canonical(&req.resource) {
        Ok(c) => c,
        Err(resource::ResourceError::Empty) => return bad("resource is required".into()),
        Err(resource::ResourceError::TooLong) => {
            return bad(format!("resource is longer than {MAX_RESOURCE_BYTES} bytes"));
        }
        Err(e) => return bad(format!("resource {:?} {e}", req.resource)),
    };
    if let Some(t) = &req.tool
        && (t.is_empty() || t.len() > 253 || t.chars().any(char::is_control))
    {
        return bad("tool must be 1-253 characters without control characters".into());
    }
    if let Some(a) = &req.audience
        && a.is_empty()
    {
        return bad("audience must not be empty when given".into());
    }
    if req.certificate_thumbprint.as_deref().is_some_and(|t| !crate::identity::access::is_thumbprint(t)) {
        return bad(
            "certificateThumbprint must be the base64url SHA-256 of the client certificate (43 characters)"
                .into(),
        );
    }
    if let Some(w) = req.wait_seconds
        && u64::from(w) > MAX_WAIT.as_secs()
    {
        return bad(format!("waitSeconds must be at most {}", MAX_WAIT.as_secs()));
    }
    if let Some(ctx) = &req.context {
        if ctx.len() > MAX_CONTEXT_KEYS {
            return bad(format!("context has more than {MAX_CONTEXT_KEYS} keys"));
        }
        if ctx.values().any(|v| depth(v) > MAX_CONTEXT_DEPTH) {
            return bad(format!("context is nested deeper than {MAX_CONTEXT_DEPTH} levels"));
        }
    }
    Ok(match canonical {
        Cow::Borrowed(r) if r.len() == req.resource.len() => Cow::Borrowed(req),
        c => Cow::Owned(AuthorizeRequest { resource: c.into_owned(), ..req.clone() }),
    })
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The routes of the decision API.
pub fn routes(authorizer: Arc<Authorizer>) -> Router {
    surface(authorizer).router()
}

/// [`routes`], with the paths it serves.
pub fn surface(authorizer: Arc<Authorizer>) -> crate::server::Surface {
    crate::server::Routes::new("decision")
        .route(AUTHORIZE_PATH, post(authorize))
        .route(EXT_AUTHZ_PREFIX, any(ext_authz))
        .route(&format!("{EXT_AUTHZ_PREFIX}/{{*path}}"), any(ext_authz))
        .finish(authorizer)
}

fn bad_request(message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, String> {
    to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| format!("request body is larger than {MAX_BODY_BYTES} bytes"))
}

async fn authorize(State(authorizer): State<Arc<Authorizer>>, request: HttpRequest) -> Response {
    let bytes = match read_body(request.into_body()).await {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    let req: AuthorizeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) if e.is_syntax() || e.is_eof() => return bad_request(format!("malformed JSON: {e}")),
        Err(e) => return bad_request(format!("invalid request: {e}")),
    };
    match authorizer.authorize(&req, Source::Api).await {
        Ok(resp) => (StatusCode::OK, axum::Json(resp)).into_response(),
        Err(BadRequest(m)) => bad_request(m),
    }
}

/// Why an ext_authz request is answered without a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtAuthzRefusal {
    /// Input the decision depends on cannot be read (a header sent twice or not visible ASCII, a bad
    /// `Host`): HTTP 400, never "absent", so nothing falls back to a default.
    #[error("{0}")]
    BadRequest(String),
    /// A readable request the mapping will not judge (a cut body, a JSON-RPC batch): HTTP 403, a denial.
    #[error("{0}")]
    Denied(String),
}

/// The headers an ext_authz decision depends on. Each must be sent at most once and be visible ASCII.
pub const DECISION_HEADERS: [&str; 8] = [
    "authorization",
    "x-agentiam-action",
    "x-agentiam-resource",
    "x-agentiam-audience",
    TOKEN_TYPE_HEADER,
    WAIT_HEADER,
    PARTIAL_BODY_HEADER,
    CERTIFICATE_THUMBPRINT_HEADER,
];
/// The `x5t#S256` of the client certificate on the agent's connection to the gateway (the
/// `certificateThumbprint` of `/v1/authorize`), for certificate-bound access tokens.
pub const CERTIFICATE_THUMBPRINT_HEADER: &str = "x-agentiam-certificate-thumbprint";
/// Which kind of token the route accepts: `identity`, `delegated` or `access` (the `tokenType` of
/// `/v1/authorize`).
pub const TOKEN_TYPE_HEADER: &str = "x-agentiam-token-type";
/// How long to wait for a human's answer when the decision is RequireApproval (seconds, at most 60).
pub const WAIT_HEADER: &str = "x-agentiam-wait";
/// Set by Envoy when it cut the body at `max_request_bytes`.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// One header the decision depends on: None when absent, an error naming it when it cannot be read. A
/// header sent twice is refused rather than picked from: a gateway that adds its own copy next to a
/// client's would otherwise let the order of the two decide.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ExtAuthzRefusal> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ExtAuthzRefusal::BadRequest(format!(
            "header {name} was sent more than once; the decision depends on it, so it must be sent once"
        )));
    }
    first.to_str().map(Some).map_err(|_| {
        ExtAuthzRefusal::BadRequest(format!(
            "header {name} is not visible ASCII; the decision depends on it, so it must be readable"
        ))
    })
}

/// The `Host` header as the first resource segment: lowercased (host names are case-insensitive, and a
/// Deny on `crm/...` must not be escaped with `Host: CRM`), with any port kept as sent. Anything but a host
/// name, IPv4 or bracketed IPv6 address and an optional port is refused, so `Host` cannot add segments.
fn host_segment(host: &str) -> Result<String, ExtAuthzRefusal> {
    let bad = |why: &str| ExtAuthzRefusal::BadRequest(format!("header host {host:?} {why}"));
    let host = host.to_ascii_lowercase();
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']').ok_or_else(|| bad("has an unclosed \"[\""))?;
            if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return Err(bad("is not a bracketed IPv6 address"));
            }
            let port = match after {
                "" => None,
                // Whatever follows "]" must be ":port"; anything else fails the port check below.
                a => Some(a.strip_prefix(':').unwrap_or_default()),
            };
            (None, port)
        }
        None => match host.split_once(':') {
            Some((name, port)) => (Some(name.to_owned()), Some(port)),
            None => (Some(host.clone()), None),
        },
    };
    if let Some(name) = &name {
        let label_ok =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !name.split('.').all(label_ok) {
            return Err(bad(
                "is not a host name (letters, digits, '-', '_' in dot-separated labels, no trailing dot)",
            ));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("has a port that is not 1-5 digits"));
    }
    Ok(host)
}

/// The ext_authz mapping of an HTTP request (see docs/authorization.md): token from `Authorization:
/// Bearer`, action from `x-agentiam-action` or the method, resource from `x-agentiam-resource` or
/// host + path, audience from `x-agentiam-audience`, the accepted kind of token from
/// `x-agentiam-token-type`; an MCP JSON-RPC body sets action, tool and context.
/// The resource is returned as sent; [`validate`] canonicalises it like every other resource.
pub fn ext_authz_request(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(AuthorizeRequest, Source), ExtAuthzRefusal> {
    let header = |name: &str| single_header(headers, name);
    match header(PARTIAL_BODY_HEADER)? {
        None | Some("false") => {}
        Some("true") => {
            return Err(ExtAuthzRefusal::Denied(
                "the request body was cut short (raise max_request_bytes); it cannot be judged".into(),
            ));
        }
        Some(other) => {
            return Err(ExtAuthzRefusal::BadRequest(format!(
                "header {PARTIAL_BODY_HEADER} is {other:?}, not \"true\" or \"false\""
            )));
        }
    }
    let token = header("authorization")?
        .and_then(|h| {
            let (scheme, rest) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
        })
        .unwrap_or_default();
    let action = header("x-agentiam-action")?.map_or_else(|| verb_of(method).to_owned(), str::to_owned);
    let resource = match header("x-agentiam-resource")? {
        Some(r) => r.to_owned(),
        None => {
            let Some(host) = single_header(headers, header::HOST.as_str())? else {
                return Err(ExtAuthzRefusal::BadRequest(
                    "no host header and no x-agentiam-resource: the resource cannot be derived".into(),
                ));
            };
            let host = host_segment(host)?;
            let path = path.strip_prefix(EXT_AUTHZ_PREFIX).unwrap_or(path);
            let path = path.split(['?', '#']).next().unwrap_or_default();
            format!("{host}{path}")
        }
    };
    let wait_seconds = match header(WAIT_HEADER)? {
        None => None,
        Some(w) => Some(w.parse::<u32>().map_err(|_| {
            ExtAuthzRefusal::BadRequest(format!("header {WAIT_HEADER} {w:?} is not a number of seconds"))
        })?),
    };
    let token_type = match header(TOKEN_TYPE_HEADER)? {
        None => None,
        Some("identity") => Some(TokenType::Identity),
        Some("delegated") => Some(TokenType::Delegated),
        Some("access") => Some(TokenType::Access),
        Some(other) => {
            return Err(ExtAuthzRefusal::BadRequest(format!(
                "header {TOKEN_TYPE_HEADER} {other:?} is not \"identity\", \"delegated\" or \"access\""
            )));
        }
    };
    let mut req = AuthorizeRequest {
        token,
        action,
        resource,
        audience: header("x-agentiam-audience")?.map(str::to_owned),
        token_type,
        wait_seconds,
        certificate_thumbprint: header(CERTIFICATE_THUMBPRINT_HEADER)?.map(str::to_owned),
        ..Default::default()
    };
    match mcp::map_body(body) {
        Mapping::NotJsonRpc => Ok((req, Source::ExtAuthz)),
        Mapping::Refused(why) => Err(ExtAuthzRefusal::Denied(why.to_owned())),
        Mapping::Call { action, tool, arguments } => {
            req.action = action;
            req.tool = tool;
            req.context = Some(arguments);
            Ok((req, Source::Mcp))
        }
    }
}

/// HTTP methods as verbs: reads are `read`, the rest follow REST (the ext_authz mapping and the gateway).
pub fn verb_of(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => "read",
        Method::POST => "create",
        Method::PUT | Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// An ext_authz answer without a decision: Deny, with the reason as header and body.
fn ext_authz_refused(status: StatusCode, why: String) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("x-agentiam-decision"), HeaderValue::from_static("Deny"));
    insert(&mut headers, "x-agentiam-reason", &why);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    (status, headers, why).into_response()
}

async fn ext_authz(State(authorizer): State<Arc<Authorizer>>, request: HttpRequest) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(m) => return ext_authz_refused(StatusCode::FORBIDDEN, m),
    };
    let (req, source) = match ext_authz_request(&parts.method, parts.uri.path(), &parts.headers, &bytes) {
        Ok(r) => r,
        Err(ExtAuthzRefusal::BadRequest(m)) => return ext_authz_refused(StatusCode::BAD_REQUEST, m),
        Err(ExtAuthzRefusal::Denied(m)) => return ext_authz_refused(StatusCode::FORBIDDEN, m),
    };
    let resp = match authorizer.authorize(&req, source).await {
        Ok(r) => r,
        // Bad input (an action header with odd characters, a resource outside the grammar) is a 400 here
        // as on /v1/authorize; Envoy passes the status on to the client, and a 4xx is a denial either way.
        Err(BadRequest(m)) => return ext_authz_refused(StatusCode::BAD_REQUEST, m),
    };
    let mut headers = HeaderMap::new();
    insert(&mut headers, "x-agentiam-decision", resp.decision.as_str());
    insert(&mut headers, "x-agentiam-reason", &resp.reason);
    insert(&mut headers, "x-agentiam-audit-id", &resp.audit_id);
    if let Some(p) = &resp.policy {
        insert(&mut headers, "x-agentiam-policy", p);
    }
    if let Some(r) = &resp.rule {
        insert(&mut headers, "x-agentiam-rule", r);
    }
    if let Some(a) = &resp.approval {
        insert(&mut headers, "x-agentiam-approval-id", &format!("{}/{}", a.namespace, a.id));
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    let status = if resp.decision == Verdict::Allow { StatusCode::OK } else { StatusCode::FORBIDDEN };
    (status, headers, resp.reason).into_response()
}

/// Sets a header, replacing characters a header value cannot carry.
fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    let clean: String =
        value.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).collect();
    if let Ok(v) = HeaderValue::from_str(&clean) {
        headers.insert(HeaderName::from_static(name), v);
    }
}
