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
    /// Threads of the HTTP server's own runtime (see [`server::spawn_api`]).
    pub api_threads: std::num::NonZeroUsize,
    /// Timeouts and the connection bound of the HTTP server (see [`server::listener`]).
    pub http_limits: server::listener::Limits,
    /// The credentials issuer: URL, trust domain, key rotation.
    pub issuer: IssuerSettings,
    /// The pod admission webhook (None: disabled).
    pub webhook: Option<WebhookSettings>,
    /// Test hook: decisions evaluate time windows at this instant instead of now. None in production.
    pub authz_fixed_time: Option<jiff::Timestamp>,
}

/// Why the operator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("failed to create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
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
    /// Resolving intents left open by a previous run failed.
    #[error("failed to resolve open audit intents: {0}")]
    Recovery(#[source] controller::Error),
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
        "audit.signing-key.change",
        object,
        Outcome::Success,
        "the checkpoint signing key is not the one that signed the last published checkpoint",
    )
    .with_detail("previousKeyID", previous.key_id.clone())
    .with_detail("keyID", key_id);
    audit.append(entry).await.map_err(StartupError::Audit)?;
    Ok(())
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(opts: Options) -> Result<(), StartupError> {
    let client = Client::try_default().await.map_err(StartupError::Client)?;
    let ns = opts.config.operator_namespace.clone();
    let ns_api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    ns_api.get(&ns).await.map_err(|source| StartupError::Namespace { namespace: ns.clone(), source })?;

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
    // The authorization index: watches of Agents, AgentPolicies and Revocations, rebuilt on every change.
    // Its AgentPolicy store also gives the credentials controller its lifetime caps.
    let authz = controller::authz::start(&client, opts.config.watch_namespace.as_deref());
    let ctx = Context::new(
        client.clone(),
        opts.config.clone(),
        audit.clone(),
        issuer.clone(),
        authz.policies.clone(),
        Arc::clone(&authz.index),
        Arc::clone(&ledger),
    );
    let authorizer = server::decision::Authorizer::new(
        Arc::clone(&authz.index),
        Arc::clone(&ledger),
        issuer.clone(),
        audit.clone(),
        opts.authz_fixed_time,
    );
    controller::intents::resolve_orphans(&ctx).await.map_err(StartupError::Recovery)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let audit_for_health = audit.clone();
    let webhook_failed = Arc::new(AtomicBool::new(false));
    let webhook_for_health = Arc::clone(&webhook_failed);
    // Without a webhook there is nothing to wait for.
    let webhook_serving = Arc::new(AtomicBool::new(opts.webhook.is_none()));
    let serving_for_health = Arc::clone(&webhook_serving);
    let health = Health::default()
        .with_check(Arc::new(move || {
            audit_for_health.is_failed().then_some("the audit log failed; restart the operator")
        }))
        .with_check(Arc::new(move || {
            webhook_for_health.load(Ordering::Acquire).then_some("the pod admission webhook stopped")
        }))
        .with_check(Arc::new(move || {
            (!serving_for_health.load(Ordering::Acquire))
                .then_some("the pod admission webhook is not serving yet")
        }));
    let http_error = |source| StartupError::Http { addr: opts.http_addr, source };
    let listener = std::net::TcpListener::bind(opts.http_addr).map_err(http_error)?;
    let addr = listener.local_addr().map_err(http_error)?;
    // The bound address is logged in this exact form; tests and scripts read it when they ask for port 0.
    info!(
        "http server listening on {addr} (/healthz, /readyz, /.well-known/openid-configuration, /keys, /v1/bundle, /v1/authorize, /v1/ext_authz)"
    );
    let http = server::spawn_api(
        listener,
        opts.api_threads,
        server::router_with(health.clone(), Some(issuer), Some(Arc::clone(&authorizer))),
        opts.http_limits,
        stopped(stop_rx.clone()),
    )
    .map_err(http_error)?;
    let sweeper = tokio::spawn(async move {
        // Idle rate-limit buckets are full again anyway; forgetting them bounds memory.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            authorizer.limiter().sweep(std::time::Instant::now(), std::time::Duration::from_secs(24 * 3600));
        }
    });
    let policy_status = tokio::spawn(controller::policy::run(Arc::clone(&ctx), stopped(stop_rx.clone())));
    let keys = tokio::spawn(key_manager.run(stopped(stop_rx.clone())));

    // The publisher stops after the controllers, so its final checkpoint covers everything they wrote.
    let (publisher_stop_tx, publisher_stop_rx) = watch::channel(false);
    let publisher = tokio::spawn(checkpoints::run_publisher(
        client.clone(),
        ns.clone(),
        audit.clone(),
        signer,
        opts.config.checkpoint_interval,
        stopped(publisher_stop_rx),
    ));
    let agent_controller = controller::agent::controller(&ctx);
    let webhook = opts.webhook.clone().map(|settings| {
        let store = crate::webhook::server::Agents {
            store: agent_controller.store(),
            ledger: Arc::clone(&ledger),
            trust_domain: opts.config.trust_domain.clone(),
        };
        let (client, failed) = (client.clone(), Arc::clone(&webhook_failed));
        let serving = Arc::clone(&webhook_serving);
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            info!(listen = %settings.listen, configuration = %settings.configuration_name, "starting the pod admission webhook");
            if let Err(e) = crate::webhook::run::run(client, settings, store, serving, stop).await {
                // Labelled pods are refused while the webhook is down (failurePolicy Fail); say so loudly.
                error!(error = %e, "the pod admission webhook stopped");
                failed.store(true, Ordering::Release);
            }
        })
    });
    let agents =
        tokio::spawn(controller::agent::run(agent_controller, Arc::clone(&ctx), stopped(stop_rx.clone())));
    health.set_ready(true);
    info!(trust_domain = %opts.config.trust_domain, watch_namespace = ?opts.config.watch_namespace, "operator running");

    shutdown_signal().await;
    info!("shutting down");
    health.set_ready(false);
    let _ = stop_tx.send(true);
    let _ = agents.await;
    let _ = policy_status.await;
    if let Some(w) = webhook {
        let _ = w.await;
    }
    let _ = keys.await;
    let _ = publisher_stop_tx.send(true);
    let _ = publisher.await;
    if let Err(e) = http.wait().await {
        warn!(error = %e, "the http server stopped with an error");
    }
    sweeper.abort();
    for task in authz.tasks {
        task.abort();
    }
    audit.close().await;
    info!("stopped");
    Ok(())
}
