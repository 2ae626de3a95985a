//! Controllers: the I/O around the pure logic. `mod.rs` owns the shared [`Context`], the operator
//! configuration, the error type and the wiring; one file per concern.

pub mod agent;
pub mod approval;
pub mod authz;
pub mod checkpoints;
pub mod credentials;
pub mod delegated_token;
pub mod delegation;
pub mod discovery;
pub mod intents;
pub mod keys;
pub mod policy;
pub mod report;
pub mod revocation;
pub mod shared;
pub mod watches;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use crate::api::{AgentPolicy, Revocation};
use crate::audit::{AuditError, AuditLog};
use crate::identity::TrustDomain;
use crate::identity::issuer::IssuerReceiver;
use crate::registry::ledger::Ledger;

/// The field manager under which the operator applies everything it owns (server-side apply).
pub const FIELD_MANAGER: &str = crate::names::FIELD_MANAGER;
/// The audit actor the operator writes under.
pub const ACTOR: &str = "agentiam-operator";

/// Operator settings, fixed at startup.
#[derive(Debug, Clone)]
pub struct Config {
    /// SPIFFE trust domain of every agent ID.
    pub trust_domain: TrustDomain,
    /// The operator's own namespace: the checkpoint ConfigMap and signing-key Secret live here.
    pub operator_namespace: String,
    /// Only watch this namespace (None: the whole cluster).
    pub watch_namespace: Option<String>,
    /// How often the audit head is signed and published.
    pub checkpoint_interval: Duration,
    /// Test hook: sleep this long after writing an audit intent and before the side effect, so tests can kill
    /// the operator inside the window the write-ahead log exists for. Zero in production.
    pub failpoint_delay_after_intent: Duration,
    /// Test hook: sleep this long after the side effect and before writing its outcome (the other crash
    /// window). Zero in production.
    pub failpoint_delay_after_effect: Duration,
}

/// The last trust bundle apply in one namespace: issuer snapshot sequence and time.
pub type BundleSlot = Arc<tokio::sync::Mutex<Option<(u64, Option<Arc<String>>, std::time::Instant)>>>;

/// Everything a reconcile needs, shared by all controllers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Operator settings.
    pub config: Config,
    /// The audit log.
    pub audit: AuditLog,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The current issuer snapshot (keys, CA), replaced on every rotation.
    pub issuer: IssuerReceiver,
    /// The issuer snapshot sequence last applied to each namespace's trust bundle ConfigMap, and when, so a
    /// bundle is written once per rotation rather than once per agent. The per-namespace lock is held while
    /// the bundle is applied.
    pub bundles_applied: Mutex<HashMap<String, BundleSlot>>,
    /// The CA bundle (PEM) clients of the HTTP API trust, when the operator manages its certificate: added
    /// to every trust bundle ConfigMap (`api-ca.crt`), so agent pods can verify the operator.
    pub api_ca: Arc<arc_swap::ArcSwapOption<String>>,
    /// Every AgentPolicy in scope, kept current by a watch; read for credential lifetime caps.
    pub policies: Store<AgentPolicy>,
    /// Every Revocation in scope (the Delegation controller ends the delegations they target).
    pub revocations: Store<Revocation>,
    /// Where those Revocations reach ([`crate::registry::revocation`]).
    pub reach: crate::registry::revocation::Reach,
    /// The authorization index decisions read; the policy status controller reports from it.
    pub authz: Arc<authz::PolicyIndex>,
    /// What this process's last status writes of each Active agent produced, so the reconciles their own
    /// echoes cause need neither read the Secret again nor repeat a write.
    pub known_credentials: Arc<credentials::KnownCredentials>,
    /// The operator's own record of what it decided and issued (the audit log's projection): the authority
    /// that every status is only a report of.
    pub ledger: Arc<Ledger>,
    /// Status writes by others already recorded (agent UID, manager, time), so each is recorded once.
    pub overwrites_seen: Mutex<std::collections::HashSet<String>>,
    /// Shadow-agent discovery, once started (unset when it is off): its reports go into Agent status.
    pub discovery: std::sync::OnceLock<Arc<discovery::Discovery>>,
    /// The behavioural monitor's trust penalties, once it runs (unset when it is off): new credentials of a
    /// penalised agent get the lifetime of its lowered trust score.
    pub trust: std::sync::OnceLock<Arc<crate::registry::trust::TrustPenalties>>,
    /// Agents to reconcile because something outside their watches changed (discovery's report, a trust
    /// penalty); the Agent controller takes them.
    pub nudges: tokio::sync::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<crate::api::Agent>>,
    /// The receiving end of `nudges`, until the Agent controller takes it.
    pub nudged: Mutex<
        Option<tokio::sync::mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<crate::api::Agent>>>,
    >,
}

impl Context {
    /// A context with a recorder reporting as `agentiam-operator` from this instance.
    pub fn new(
        client: Client,
        config: Config,
        audit: AuditLog,
        issuer: IssuerReceiver,
        watched: &shared::Watched,
        authz: Arc<authz::PolicyIndex>,
        ledger: Arc<Ledger>,
    ) -> Arc<Self> {
        let (nudges, nudged) = tokio::sync::mpsc::unbounded_channel();
        let instance = std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok());
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance };
        let recorder = Recorder::new(client.clone(), reporter);
        let reach = watched.reach(&config.operator_namespace);
        Arc::new(Self {
            client,
            config,
            audit,
            recorder,
            issuer,
            bundles_applied: Mutex::new(HashMap::new()),
            api_ca: Arc::default(),
            policies: watched.policies.store(),
            revocations: watched.revocations.store(),
            reach,
            authz,
            known_credentials: Arc::default(),
            ledger,
            overwrites_seen: Mutex::new(std::collections::HashSet::new()),
            discovery: std::sync::OnceLock::new(),
            trust: std::sync::OnceLock::new(),
            nudges,
            nudged: Mutex::new(Some(nudged)),
        })
    }
}

/// The audit reference for an agent.
pub fn object_ref(agent: &crate::api::Agent) -> crate::audit::ObjectRef {
    crate::audit::ObjectRef {
        api_version: <crate::api::Agent as kube::Resource>::api_version(&()).into_owned(),
        kind: <crate::api::Agent as kube::Resource>::kind(&()).into_owned(),
        namespace: agent.namespace(),
        name: agent.name_any(),
        uid: agent.uid(),
    }
}

/// Test hook (see [`Config`]): a pause inside a crash window.
pub(crate) async fn failpoint(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// An API for kind `K` in `namespace`, or in every namespace when None (`--watch-namespace` unset).
pub fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}

/// Errors a reconcile can end with. Variants name the step that failed; messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace, name or UID (it was not read from the API server).
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// Writing the intent record failed: the grant does not happen (fail closed).
    #[error("failed to write audit intent, so the change was not made: {0}")]
    AuditIntent(#[source] AuditError),
    /// Writing the outcome record failed; the intent stays open and is resolved on the next reconcile.
    #[error("failed to write audit outcome: {0}")]
    AuditOutcome(#[source] AuditError),
    /// Writing a plain audit record failed.
    #[error("failed to write audit record: {0}")]
    AuditRecord(#[source] AuditError),
    /// Applying the status failed.
    #[error("failed to apply status: {0}")]
    ApplyStatus(#[source] kube::Error),
    /// Reading an object failed.
    #[error("failed to read {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing an object failed.
    #[error("failed to write {what}: {source}")]
    Write {
        /// What was being written.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object changed since it was read (optimistic concurrency): the next reconcile reads it again.
    #[error("{what} changed while being written; retrying")]
    Conflict {
        /// What was being written.
        what: String,
    },
    /// A SubjectAccessReview could not be made (the re-check of who may do something).
    #[error("access review failed: {0}")]
    AccessReview(String),
    /// Credentials could not be minted (never contains key or token material).
    #[error("credentials: {0}")]
    Credentials(String),
    /// Adding or removing the finalizer failed (the steps inside it keep their own variants, see
    /// [`Error::from_finalizer`]).
    #[error("finalizer step failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The error of a reconcile run through kube's `finalizer`: the step's own error when the apply or
    /// cleanup step failed (so retries, Events and metrics see the real cause), and [`Error::Finalizer`]
    /// only when adding or removing the finalizer itself did.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            other => Self::Finalizer(Box::new(other)),
        }
    }

    /// The reason of the Warning Event a failure of this step publishes (PascalCase).
    pub fn event_reason(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "InvalidObject",
            Self::AuditIntent(_) => "AuditIntentFailed",
            Self::AuditOutcome(_) => "AuditOutcomeFailed",
            Self::AuditRecord(_) => "AuditRecordFailed",
            Self::ApplyStatus(_) => "StatusWriteFailed",
            Self::Read { .. } => "ReadFailed",
            Self::Write { .. } => "WriteFailed",
            Self::Conflict { .. } => "Conflict",
            Self::AccessReview(_) => "AccessReviewFailed",
            Self::Credentials(_) => "CredentialsFailed",
            Self::Finalizer(_) => "FinalizerFailed",
        }
    }
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::AuditIntent(_) => "audit_intent",
            Self::AuditOutcome(_) => "audit_outcome",
            Self::AuditRecord(_) => "audit_record",
            Self::ApplyStatus(_) => "apply_status",
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::Conflict { .. } => "conflict",
            Self::AccessReview(_) => "access_review",
            Self::Credentials(_) => "credentials",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
