//! HTTP surfaces of the operator: health and readiness probes, and the issuer documents (OIDC discovery,
//! JWKS, SPIFFE bundle) once the operator has an issuer.

pub mod decision;
#[cfg(test)]
mod decision_tests;
pub mod issuer;
pub mod listener;
pub mod mcp;

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::identity::issuer::IssuerReceiver;

/// A readiness check: returns why the operator is not ready, or None.
pub type Check = Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// Readiness: a flag set once the operator has started its controllers, plus checks of components that can
/// fail later (the audit log).
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    checks: Vec<Check>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("ready", &self.ready).field("checks", &self.checks.len()).finish()
    }
}

impl Health {
    /// Adds a check that can make the operator unready.
    #[must_use]
    pub fn with_check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Why the operator is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Acquire) {
            return Some("starting or stopping");
        }
        self.checks.iter().find_map(|c| c())
    }

    /// Marks the operator ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the operator is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    match health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// The probe routes.
pub fn router(health: Health) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(health)
}

/// The probe routes, plus the issuer documents when `issuer` is given (see [`issuer::routes`]) and the
/// decision API when `authorizer` is (see [`decision::routes`]).
pub fn router_with(
    health: Health,
    issuer: Option<IssuerReceiver>,
    authorizer: Option<Arc<decision::Authorizer>>,
) -> Router {
    let mut router = router(health);
    if let Some(issuer) = issuer {
        router = router.merge(issuer::routes(issuer));
    }
    if let Some(authorizer) = authorizer {
        router = router.merge(decision::routes(authorizer));
    }
    router
}

/// The default number of threads of the HTTP API's runtime: half the CPUs this process may use, at
/// least one. The other half is left to the controllers, the audit writer (which does a fifth of the
/// work of every decision: serialization, hashing, sync) and the kernel's network stack.
pub fn default_api_threads() -> NonZeroUsize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new(cpus / 2).unwrap_or(NonZeroUsize::MIN)
}

/// The HTTP server running on its own runtime (see [`spawn_api`]).
#[derive(Debug)]
pub struct ApiServer {
    done: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
}

impl ApiServer {
    /// Waits until the server has stopped (after its shutdown future resolved and connections closed).
    ///
    /// # Errors
    /// The server's I/O error, or an error if its thread ended without answering.
    pub async fn wait(self) -> std::io::Result<()> {
        self.done.await.unwrap_or_else(|_| Err(std::io::Error::other("the HTTP API thread stopped")))
    }
}

/// Serves `router` on `listener` from a runtime of its own with `threads` threads, within `limits` (see
/// [`listener`]), until `shutdown` resolves.
///
/// Why a runtime of its own: authorization decisions are answered on the request path of every agent
/// action, so they must not queue behind reconciles (a key rotation re-reconciles every Agent), and on
/// a small machine fewer threads hand requests around less: with one thread there is no work stealing
/// and no cross-core wake-up per request. The state the handlers use (policy index, audit queue,
/// issuer documents) is shared through runtime-independent primitives.
///
/// # Errors
/// The runtime or its thread could not be created.
pub fn spawn_api(
    listener: std::net::TcpListener,
    threads: NonZeroUsize,
    router: Router,
    limits: listener::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<ApiServer> {
    let runtime = if threads.get() == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.get())
            .thread_name("agentiam-api")
            .enable_all()
            .build()?
    };
    listener.set_nonblocking(true)?;
    let (tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("agentiam-api".into()).spawn(move || {
        let result = runtime.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            listener::serve(listener, router, None, limits, "http", shutdown).await;
            Ok(())
        });
        let _ = tx.send(result);
    })?;
    Ok(ApiServer { done })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_the_flag_and_every_check() {
        let failed = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&failed);
        let health = Health::default()
            .with_check(Arc::new(move || f.load(Ordering::Acquire).then_some("audit log failed")));
        assert_eq!(health.not_ready_reason(), Some("starting or stopping"));
        health.set_ready(true);
        assert!(health.is_ready());
        failed.store(true, Ordering::Release);
        assert_eq!(health.not_ready_reason(), Some("audit log failed"));
    }
}
