//! Starting and stopping the operator: the order in which the audit log, the checkpoint key, intent recovery,
//! the controllers and the HTTP server come up, and go down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::audit::{AuditConfig, AuditError, AuditLog, Checkpoint, Entry, ObjectRef, Outcome};
use crate::controller::checkpoints::{self, CheckpointsError, SIGNING_KEY_SECRET};
use crate::controller::keys::IssuerSettings;
use crate::controller::{self, Config, Context};
use crate::registry::ledger::Ledger;
use crate::server::{self, Health};
use crate::supervisor::{Supervisor, TaskEnded};
use crate::webhook::config::WebhookSettings;

/// Settings that are not part of the controllers' [`Config`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Controller configuration.
    pub config: Config,
    /// Audit log file.
    pub audit_log: PathBuf,
    /// Stream audit records to stdout.
    pub audit_stdout: bool,
    /// Address of the HTTP server (probes, issuer documents, decision API).
    pub http_addr: SocketAddr,
    /// Address of the admin server: /metrics, /healthz, /readyz.
    pub admin_addr: SocketAddr,
    /// Threads of the HTTP server's own runtime (see [`server::spawn_api`]).
    pub api_threads: std::num::NonZeroUsize,
    /// Timeouts and the connection bound of the HTTP server (see [`server::listener`]).
    pub http_limits: server::listener::Limits,
    /// TLS on the HTTP server (see [`server::tls`]).
    pub http_tls: server::tls::ApiTls,
    /// The credentials issuer: URL, trust domain, key rotation.
    pub issuer: IssuerSettings,
    /// The pod admission webhook (None: disabled).
    pub webhook: Option<WebhookSettings>,
    /// Test hook: decisions evaluate time windows at this instant instead of now. None in production.
    pub authz_fixed_time: Option<jiff::Timestamp>,
    /// Test hook: the supervised task of this name fails this long after it starts. None in production.
    pub failpoint_fail_task: Option<(String, std::time::Duration)>,
    /// Test hook: token exchanges pause this long after their intent. Zero in production.
    pub failpoint_exchange_delay: std::time::Duration,
    /// Where pending approval requests are announced besides Events (None: Events only).
    pub approval_notifier: Option<server::approvals::Notifier>,
    /// How old the view of Revocations may get while its watch fails before decisions fail closed
    /// (None: no bound).
    pub max_revocation_staleness: Option<std::time::Duration>,
    /// The behavioural monitor's settings (None: off).
    pub monitor: Option<crate::monitor::baseline::Settings>,
    /// Shadow-agent discovery (docs/discovery.md): on unless turned off.
    pub discovery: bool,
    /// Discovery asks running pods for an A2A agent card on the ports they declare.
    pub discovery_agent_cards: bool,
}

/// The signatures discovery uses: the built-in set, as the ConfigMap `agentiam-discovery` in the operator's
/// namespace (key `signatures.yaml`) extends or replaces it. A ConfigMap that does not parse or check is
/// reported (log and Warning Event) and the built-in set is used: discovery only records, it grants
/// nothing, so it should not stop the operator. Read at startup; a change takes effect at the next start
/// (the chart restarts the operator when its values change).
async fn discovery_signatures(ctx: &Context) -> crate::discovery::signatures::Signatures {
    use crate::discovery::signatures::Signatures;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(ctx.client.clone(), &ctx.config.operator_namespace);
    let cm = match api.get_opt(crate::names::DISCOVERY_CONFIGMAP).await {
        Ok(cm) => cm,
        Err(e) => {
            warn!(error = %e, "could not read the discovery ConfigMap; using the built-in signatures");
            return Signatures::default();
        }
    };
    let Some(cm) = cm else { return Signatures::default() };
    let Some(yaml) = cm.data.as_ref().and_then(|d| d.get(crate::names::DISCOVERY_SIGNATURES_KEY)) else {
        return Signatures::default();
    };
    match Signatures::parse(yaml) {
        Ok(s) => {
            info!(signatures = s.all.len(), threshold = s.threshold, "discovery signatures loaded");
            s
        }
        Err(e) => {
            warn!(error = %e, "the discovery ConfigMap is invalid; using the built-in signatures");
            let note = format!("{e}; discovery uses the built-in signatures until this is fixed");
            controller::report::event(
                ctx,
                &cm,
                kube::runtime::events::EventType::Warning,
                "InvalidSignatures",
                note,
            )
            .await;
            Signatures::default()
        }
    }
}

/// The gateway's routes from the `agentiam-gateway` ConfigMap, read at start (the chart rolls the pod when
/// they change). No ConfigMap: no routes. A ConfigMap that cannot be read or does not parse: an error that
/// every gateway call is refused with (fail closed; a Warning Event on the ConfigMap says why).
async fn gateway_routes(ctx: &Context) -> Result<crate::gateway::routes::RouteSet, String> {
    use crate::gateway::routes::RouteSet;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(ctx.client.clone(), &ctx.config.operator_namespace);
    let cm = match api.get_opt(crate::names::GATEWAY_CONFIGMAP).await {
        Ok(Some(cm)) => cm,
        Ok(None) => return Ok(RouteSet::default()),
        Err(e) => {
            warn!(error = %e, "could not read the gateway ConfigMap; the gateway refuses every call");
            return Err(format!("the ConfigMap {} could not be read: {e}", crate::names::GATEWAY_CONFIGMAP));
        }
    };
    let yaml =
        cm.data.as_ref().and_then(|d| d.get(crate::names::GATEWAY_ROUTES_KEY)).map_or("", String::as_str);
    match RouteSet::parse(yaml) {
        Ok(routes) => {
            let secrets = routes.secrets();
            info!(routes = routes.len(), credential_secrets = ?secrets, "gateway routes loaded");
            Ok(routes)
        }
        Err(e) => {
            warn!(error = %e, "the gateway ConfigMap is invalid; the gateway refuses every call");
            let note = format!(
                "{e}; the gateway refuses every call until this is fixed (and the operator restarted)"
            );
            controller::report::event(
                ctx,
                &cm,
                kube::runtime::events::EventType::Warning,
                "InvalidRoutes",
                note,
            )
            .await;
            Err(e.to_string())
        }
    }
}

/// The TLS client configuration SSF pushes use: the system's CA certificates, and the operator's own API
/// CA (when it manages its certificate) so a receiver serving a certificate from it is trusted too.
fn push_tls(api_ca: Option<&str>) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let system = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
        .into_iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    for pem in [system.as_slice(), api_ca.unwrap_or_default().as_bytes()] {
        for cert in CertificateDer::pem_slice_iter(pem).filter_map(Result::ok) {
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The default provider always supports the default versions; an empty config refuses every push.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    }
}

/// Why the operator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("failed to create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The Shared Signals streams could not be read.
    #[error("failed to read the SSF streams (ConfigMap agentiam-ssf-streams): {0}")]
    Ssf(#[source] kube::Error),
    /// The operator namespace is missing or unreadable.
    #[error("operator namespace {namespace:?} is not usable: {source}")]
    Namespace {
        /// The namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The audit log could not be opened (or failed verification).
    #[error("failed to open the audit log: {0}")]
    Audit(#[source] AuditError),
    /// The audit task panicked or was cancelled.
    #[error("audit log open task failed: {0}")]
    AuditTask(String),
    /// The checkpoint key or the published checkpoint.
    #[error(transparent)]
    Checkpoints(#[from] CheckpointsError),
    /// The signing keys or the CA could not be loaded or created.
    #[error(transparent)]
    Keys(controller::keys::KeysError),
    /// The HTTP server's certificate could not be loaded, made or published.
    #[error("failed to set up TLS for the HTTP server: {0}")]
    HttpTls(#[source] crate::tls::ServingError),
    /// Access token issuances a stop interrupted could not be closed.
    #[error("failed to void interrupted access token issuances: {0}")]
    VoidTokens(#[source] AuditError),
    /// Resolving intents left open by a previous run failed.
    #[error("failed to resolve open audit intents: {0}")]
    Recovery(#[source] controller::Error),
    /// The cluster has no CRD API, or it could not be read.
    #[error("failed to read the agentiam CRDs: {source}")]
    Crds {
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// CRDs the operator needs are missing or not yet Established.
    #[error("the agentiam CRDs are not ready: {0}; install them (kubectl apply -f crds/, or the Helm chart)")]
    MissingCrds(String),
    /// A supervised task ended while the operator ran (see [`crate::supervisor`]).
    #[error("{0}")]
    Task(TaskEnded),
    /// The operator could not learn who it authenticates as (a SelfSubjectReview).
    #[error("could not learn the operator's own username (SelfSubjectReview): {0}")]
    WhoAmI(String),
    /// The HTTP server could not bind or failed.
    #[error("http server on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The username the operator's credentials authenticate as: the webhook admits ApprovalRequests created by
/// this user only, so it must be known before the webhooks serve.
async fn own_username(client: &Client) -> Result<String, StartupError> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let review = SelfSubjectReview::default();
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let answer = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| StartupError::WhoAmI(e.to_string()))?;
    answer
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| StartupError::WhoAmI("the API server returned no username".to_owned()))
}

/// Records in the audit log that the checkpoint signing key is not the one that signed the last checkpoint
/// (the Secret was deleted or replaced), so a key change is never silent.
async fn record_key_rotation(
    audit: &AuditLog,
    namespace: &str,
    published: Option<&Checkpoint>,
    key_id: &str,
) -> Result<(), StartupError> {
    let Some(previous) = published.filter(|c| c.key_id != key_id) else { return Ok(()) };
    warn!(previous = %previous.key_id, current = key_id, "the audit checkpoint signing key changed");
    let object = ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(namespace.to_owned()),
        name: SIGNING_KEY_SECRET.into(),
        uid: None,
    };
    let entry = Entry::new(
        controller::ACTOR,
        crate::audit::Action::AuditSigningKeyChange,
        object,
        Outcome::Success,
        "the checkpoint signing key is not the one that signed the last published checkpoint",
    )
    .with_detail("previousKeyID", previous.key_id.clone())
    .with_detail("keyID", key_id);
    audit.append(entry).await.map_err(StartupError::Audit)?;
    Ok(())
}

/// The CRDs the operator needs, by name.
pub const REQUIRED_CRDS: [&str; 5] = [
    "agents.agentiam.dev",
    "agentpolicies.agentiam.dev",
    "approvalrequests.agentiam.dev",
    "delegations.agentiam.dev",
    "revocations.agentiam.dev",
];

/// Checks that every CRD the operator watches is installed and Established, naming those that are not:
/// without this the watches would retry forever, and the operator would look alive doing nothing.
async fn check_crds(client: &Client) -> Result<(), StartupError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let mut missing = Vec::new();
    for name in REQUIRED_CRDS {
        let crd = api.get_opt(name).await.map_err(|source| StartupError::Crds { source })?;
        let established = crd
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        match (crd, established) {
            (None, _) => missing.push(format!("{name} (not installed)")),
            (Some(_), false) => missing.push(format!("{name} (not Established)")),
            (Some(_), true) => {}
        }
    }
    if missing.is_empty() { Ok(()) } else { Err(StartupError::MissingCrds(missing.join(", "))) }
}

/// Runs the operator until SIGTERM or Ctrl-C, or until one of its tasks ends (an error).
pub async fn run(opts: Options) -> Result<(), StartupError> {
    let client = Client::try_default().await.map_err(StartupError::Client)?;
    let ns = opts.config.operator_namespace.clone();
    let ns_api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    ns_api.get(&ns).await.map_err(|source| StartupError::Namespace { namespace: ns.clone(), source })?;
    check_crds(&client).await?;

    // The ledger is rebuilt from the whole log as it opens, and kept current by every record after.
    let ledger = Arc::new(Ledger::default());
    let audit_config = AuditConfig {
        path: opts.audit_log.clone(),
        stream_stdout: opts.audit_stdout,
        projection: Some(Arc::clone(&ledger) as Arc<dyn crate::audit::Projection>),
    };
    let audit = tokio::task::spawn_blocking(move || AuditLog::open(audit_config))
        .await
        .map_err(|e| StartupError::AuditTask(e.to_string()))?
        .map_err(StartupError::Audit)?;
    info!(path = %opts.audit_log.display(), head = audit.head().0, "audit log open");

    let signer = checkpoints::load_or_create_signer(&client, &ns).await?;
    let published = checkpoints::check_log(&client, &ns, &audit).await?;
    record_key_rotation(&audit, &ns, published.as_ref(), signer.key_id()).await?;

    let (key_manager, issuer) = controller::keys::bootstrap(&client, &ns, opts.issuer.clone(), &audit)
        .await
        .map_err(StartupError::Keys)?;
    let mut tasks = Supervisor::default().with_failpoint(opts.failpoint_fail_task.clone());
    // One watch each of Agents, AgentPolicies and Revocations, shared by everyone below: the authorization
    // index (rebuilt on every change), the webhooks (the Agent store, filled before any controller runs),
    // the credentials step (the AgentPolicy store, for lifetime caps) and the controllers.
    let watched =
        controller::shared::Watched::start(&client, opts.config.watch_namespace.as_deref(), &mut tasks);
    let bound = opts.max_revocation_staleness.map(|d| (watched.revocations.health(), d));
    let index =
        controller::authz::start(&watched, watched.reach(&opts.config.operator_namespace), bound, &mut tasks);
    let ctx = Context::new(
        client.clone(),
        opts.config.clone(),
        audit.clone(),
        issuer.clone(),
        &watched,
        Arc::clone(&index),
        Arc::clone(&ledger),
    );
    let authorizer = server::decision::Authorizer::new(
        Arc::clone(&index),
        Arc::clone(&ledger),
        issuer.clone(),
        audit.clone(),
        opts.authz_fixed_time,
    );
    let monitor = opts.monitor.clone().map(|settings| {
        let monitor = crate::monitor::start(Arc::clone(&ctx), watched.agents.store(), settings, &mut tasks);
        authorizer.set_monitor(Arc::clone(&monitor));
        let _ = ctx.trust.set(monitor.penalties());
        monitor
    });
    // A wait for a human's answer ends before the listener's request timeout would cut the answer off.
    let max_wait = opts.http_limits.request_timeout.saturating_sub(std::time::Duration::from_secs(5));
    authorizer.set_approvals(Arc::new(server::approvals::Approvals::new(
        client.clone(),
        audit.clone(),
        ctx.recorder.clone(),
        Arc::clone(&ledger),
        watched.agents.store(),
        opts.approval_notifier.clone(),
        max_wait,
    )));

    let token_service = server::token::TokenService::new(
        Arc::clone(&index),
        Arc::clone(&ledger),
        issuer.clone(),
        audit.clone(),
        Arc::clone(authorizer.verifiers()),
        watched.agents.store(),
    )
    .with_mutual_tls(opts.http_tls.is_tls())
    .with_client(client.clone())
    .with_delegations(crate::webhook::server::Delegations {
        store: watched.delegations.store(),
        revocations: watched.revocations.store(),
        reach: watched.reach(&opts.config.operator_namespace),
    })
    .with_failpoint_exchange_delay(opts.failpoint_exchange_delay);
    let token_service = match &monitor {
        Some(m) => token_service.with_trust_penalties(m.penalties()),
        None => token_service,
    };
    let token_service = Arc::new(token_service);

    let voided = token_service.void_interrupted().await.map_err(StartupError::VoidTokens)?;
    if voided > 0 {
        info!(voided, "voided access tokens whose issuance a stop interrupted");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let audit_for_health = audit.clone();
    let failed = tasks.failed();
    // Without a webhook there is nothing to wait for.
    let webhook_serving = Arc::new(AtomicBool::new(opts.webhook.is_none()));
    let serving_for_health = Arc::clone(&webhook_serving);
    let index_for_health = Arc::clone(&index);
    let health = Health::default()
        .with_check(Arc::new(move || {
            audit_for_health.is_failed().then_some("the audit log failed; restart the operator")
        }))
        .with_check(Arc::new(move || {
            // Decisions before the first complete list of each kind are refused ("still loading"): a
            // Service must not send them here yet.
            (!index_for_health.is_ready())
                .then_some("the policy index has not loaded Agents, policies and revocations yet")
        }))
        .with_check(Arc::new(move || {
            failed.get().is_some().then_some("a task of the operator ended; it is stopping (see its log)")
        }))
        .with_check(Arc::new(move || {
            (!serving_for_health.load(Ordering::Acquire))
                .then_some("the admission webhooks are not serving yet")
        }));
    let tls = server::tls::prepare(&client, &opts.http_tls, Arc::clone(&ctx.api_ca))
        .await
        .map_err(StartupError::HttpTls)?;
    if tls.is_none() {
        warn!(
            "the HTTP server serves plain HTTP (--http-plaintext): tokens and decisions cross the network unencrypted; use it only for local development or behind a TLS proxy"
        );
    }
    let acceptor = tls.as_ref().map(server::tls::Prepared::acceptor);
    if let Some(tls) = tls {
        let (client, stop) = (client.clone(), stopped(stop_rx.clone()));
        tasks.spawn_infallible("http certificate", tls.run(client, stop));
    }
    let http_error = |source| StartupError::Http { addr: opts.http_addr, source };
    let listener = std::net::TcpListener::bind(opts.http_addr).map_err(http_error)?;
    let addr = listener.local_addr().map_err(http_error)?;
    let feed = server::revocations::start(
        Arc::clone(&index),
        Arc::clone(&ledger),
        opts.issuer.issuer_url.clone(),
        &mut tasks,
    );
    let ssf = server::ssf::start(
        server::ssf::Parts {
            issuer_url: opts.issuer.issuer_url.clone(),
            trust_domain: opts.config.trust_domain.clone(),
            namespace: ns.clone(),
            issuer: issuer.clone(),
            index: Arc::clone(&index),
            feed: Arc::clone(&feed),
            client: client.clone(),
            audit: audit.clone(),
            auth: Arc::clone(&token_service),
            tls: push_tls(ctx.api_ca.load_full().as_deref().map(String::as_str)),
        },
        &mut tasks,
    )
    .await
    .map_err(StartupError::Ssf)?;
    let gateway = crate::gateway::proxy::Gateway::new(
        gateway_routes(&ctx).await,
        Arc::clone(&authorizer),
        audit.clone(),
        client.clone(),
        &ns,
        push_tls(ctx.api_ca.load_full().as_deref().map(String::as_str)),
        opts.issuer.issuer_url.clone(),
        opts.http_limits.request_timeout.saturating_sub(std::time::Duration::from_secs(1)),
    );
    let surfaces = server::Surfaces::default()
        .with(server::probes(health.clone()))
        .with(server::issuer::surface(issuer))
        .with(server::revocations::surface(feed))
        .with(server::ssf::surface(ssf))
        .with(server::decision::surface(Arc::clone(&authorizer)))
        .with(server::token::surface(token_service))
        .with(crate::gateway::proxy::surface(gateway));
    // The bound address is logged in this exact form; tests and scripts read it when they ask for port 0.
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    info!("http server listening on {addr} ({scheme}; {})", surfaces.describe());
    let http = server::spawn_api(
        listener,
        opts.api_threads,
        surfaces.into_router(),
        acceptor,
        opts.http_limits,
        stopped(stop_rx.clone()),
    )
    .map_err(http_error)?;
    tasks.spawn("http server", async move { http.wait().await });
    let admin_error = |source| StartupError::Http { addr: opts.admin_addr, source };
    let admin_listener = tokio::net::TcpListener::bind(opts.admin_addr).await.map_err(admin_error)?;
    let admin_addr = admin_listener.local_addr().map_err(admin_error)?;
    let admin = server::admin(health.clone());
    info!("admin server listening on {admin_addr} ({})", admin.describe());
    let (admin_router, admin_stop) = (admin.into_router(), stopped(stop_rx.clone()));
    tasks.spawn_infallible("admin server", async move {
        server::listener::serve(admin_listener, admin_router, None, opts.http_limits, "admin", admin_stop)
            .await;
    });
    let sweeping = Arc::clone(&authorizer);
    tasks.spawn_infallible("rate-limit sweeper", async move {
        // Idle rate-limit buckets are full again anyway; forgetting them bounds memory.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            sweeping.limiter().sweep(std::time::Instant::now(), std::time::Duration::from_secs(24 * 3600));
        }
    });

    // Everything below judges from the watched state: the webhooks (which refuse every request until the
    // Agents are listed) and the controllers. So wait for the first complete lists first.
    tasks.wait_for(index.wait_ready()).await.map_err(StartupError::Task)?;
    info!("policy index loaded");
    // Discovery and workload admission classify with one set of signatures, read once.
    let signatures = match opts.discovery {
        true => Some(Arc::new(discovery_signatures(&ctx).await)),
        false => None,
    };
    // The webhooks serve before anything writes agentiam objects: with its configuration in place from an
    // earlier run, every write (a finalizer, an archive) goes through them.
    if let Some(mut settings) = opts.webhook.clone() {
        settings.workload_admission = signatures.is_some();
        let operator_user = own_username(&client).await?;
        info!(user = %operator_user, "the operator authenticates as this user; only it may create ApprovalRequests");
        let webhooks = crate::webhook::server::Webhooks {
            agents: crate::webhook::server::Agents {
                store: watched.agents.store(),
                ledger: Arc::clone(&ledger),
                trust_domain: opts.config.trust_domain.clone(),
            },
            delegations: crate::webhook::server::Delegations {
                store: watched.delegations.store(),
                revocations: watched.revocations.store(),
                reach: watched.reach(&opts.config.operator_namespace),
            },
            client: Some(client.clone()),
            audit: Some(audit.clone()),
            unserved_namespace: opts.config.watch_namespace.is_none().then(|| ns.clone()),
            operator_user: Some(operator_user.clone()),
            workloads: signatures
                .clone()
                .map(|signatures| crate::webhook::workloads::Workloads { signatures }),
        };
        let (client, serving) = (client.clone(), Arc::clone(&webhook_serving));
        let stop = stopped(stop_rx.clone());
        info!(listen = %settings.listen, configuration = %settings.configuration_name, "starting the admission webhooks");
        tasks
            .spawn("admission webhooks", crate::webhook::run::run(client, settings, webhooks, serving, stop));
        let serving = async {
            while !webhook_serving.load(Ordering::Acquire) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tasks.wait_for(serving).await.map_err(StartupError::Task)?;
    }
    controller::intents::resolve_orphans(&ctx).await.map_err(StartupError::Recovery)?;

    tasks.spawn_infallible(
        "policy status controller",
        controller::policy::run(Arc::clone(&ctx), watched.policies.clone(), stopped(stop_rx.clone())),
    );
    tasks.spawn_infallible("key manager", key_manager.run(stopped(stop_rx.clone())));
    // The publisher stops after the controllers, so its final checkpoint covers everything they wrote.
    let (publisher_stop_tx, publisher_stop_rx) = watch::channel(false);
    tasks.spawn_infallible(
        "checkpoint publisher",
        checkpoints::run_publisher(
            client.clone(),
            ns.clone(),
            audit.clone(),
            signer,
            opts.config.checkpoint_interval,
            stopped(publisher_stop_rx),
        ),
    );
    if let Some(signatures) = signatures {
        let discovery = controller::discovery::start(
            Arc::clone(&ctx),
            &watched.agents,
            signatures,
            opts.discovery_agent_cards,
            &mut tasks,
        );
        let _ = ctx.discovery.set(discovery);
    }
    let nudged = ctx.nudged.lock().ok().and_then(|mut n| n.take());
    let agent_controller = controller::agent::controller(&ctx, &watched, nudged);
    tasks.spawn_infallible(
        "agent controller",
        controller::agent::run(agent_controller, Arc::clone(&ctx), stopped(stop_rx.clone())),
    );
    let delegation_controller = controller::delegation::controller(&watched, ctx.reach.clone());
    tasks.spawn_infallible(
        "delegation controller",
        controller::delegation::run(delegation_controller, Arc::clone(&ctx), stopped(stop_rx.clone())),
    );
    let (revocation_controller, revocations) = controller::revocation::controller(&ctx, &watched);
    tasks.spawn_infallible(
        "revocation controller",
        controller::revocation::run(revocation_controller, revocations, stopped(stop_rx.clone())),
    );
    let approval_controller = controller::approval::controller(&watched, &ctx.ledger);
    tasks.spawn_infallible(
        "approval controller",
        controller::approval::run(approval_controller, Arc::clone(&ctx), stopped(stop_rx.clone())),
    );
    health.set_ready(true);
    info!(trust_domain = %opts.config.trust_domain, watch_namespace = ?opts.config.watch_namespace, "operator running");

    let ended = tasks.run_until(shutdown_signal()).await;
    if ended.is_none() {
        info!("shutting down");
    }
    health.set_ready(false);
    let _ = stop_tx.send(true);
    tasks
        .join(&[
            "agent controller",
            "delegation controller",
            "approval controller",
            "policy status controller",
            "admission webhooks",
            "key manager",
        ])
        .await;
    let _ = publisher_stop_tx.send(true);
    tasks.join(&["checkpoint publisher", "http server", "http certificate", "admin server"]).await;
    tasks.abort_all();
    audit.close().await;
    match ended {
        None => {
            info!("stopped");
            Ok(())
        }
        Some(ended) => Err(StartupError::Task(ended)),
    }
}
