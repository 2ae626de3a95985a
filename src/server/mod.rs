//! HTTP surfaces of the operator: health and readiness probes, and the issuer documents (OIDC discovery,
//! JWKS, SPIFFE bundle) once the operator has an issuer.

pub mod approvals;
pub mod decision;
#[cfg(test)]
mod decision_tests;
pub mod issuer;
pub mod listener;
pub mod mcp;
pub mod revocations;
pub mod ssf;
pub mod tls;
pub mod token;
#[cfg(test)]
mod token_tests;

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
        // The most specific reason first: what is still missing says more than "starting".
        let failed = self.checks.iter().find_map(|c| c());
        match failed {
            Some(why) => Some(why),
            None => (!self.ready.load(Ordering::Acquire)).then_some("starting or stopping"),
        }
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

/// Routes being assembled: an axum router that remembers every path it was given, so the paths a server
/// serves are logged from what it really routes (never from a list kept by hand).
pub struct Routes<S = ()> {
    name: &'static str,
    router: Router<S>,
    paths: Vec<String>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// No routes yet, for the surface `name` (e.g. `decision`).
    pub fn new(name: &'static str) -> Self {
        Self { name, router: Router::new(), paths: Vec::new() }
    }

    /// Adds `path`.
    #[must_use]
    pub fn route(mut self, path: &str, method_router: axum::routing::MethodRouter<S>) -> Self {
        self.paths.push(path.to_owned());
        self.router = self.router.route(path, method_router);
        self
    }

    /// Applies `f` to the router (layers), keeping the paths.
    #[must_use]
    pub fn map(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    /// The finished surface, with its state.
    pub fn finish(self, state: S) -> Surface {
        Surface { name: self.name, router: self.router.with_state(state), paths: self.paths }
    }
}

/// A finished set of routes: what one component serves.
pub struct Surface {
    name: &'static str,
    router: Router,
    paths: Vec<String>,
}

impl Surface {
    /// The router.
    pub fn router(self) -> Router {
        self.router
    }

    /// The paths, in the order they were added.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }
}

/// Every surface one listener serves, merged.
#[derive(Default)]
pub struct Surfaces {
    surfaces: Vec<Surface>,
}

impl Surfaces {
    /// Adds a surface.
    #[must_use]
    pub fn with(mut self, surface: Surface) -> Self {
        self.surfaces.push(surface);
        self
    }

    /// `name: path, path; name: path`, for the log line that says what a listener serves.
    pub fn describe(&self) -> String {
        self.surfaces
            .iter()
            .map(|s| format!("{}: {}", s.name, s.paths.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// One router serving them all.
    pub fn into_router(self) -> Router {
        self.surfaces.into_iter().fold(Router::new(), |r, s| r.merge(s.router))
    }
}

/// The probe routes: `/healthz` (the process serves) and `/readyz` (every check passes).
pub fn probes(health: Health) -> Surface {
    Routes::new("probes").route("/healthz", get(healthz)).route("/readyz", get(readyz)).finish(health)
}

async fn metrics(headers: axum::http::HeaderMap) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    // OpenMetrics for clients that ask for it (Prometheus does); the Prometheus text format otherwise
    // (promtool, curl, older scrapers).
    let wants_openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let m = crate::metrics::global();
    if wants_openmetrics {
        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        ([(axum::http::header::CONTENT_TYPE, content_type)], m.render())
    } else {
        let content_type = "text/plain; version=0.0.4; charset=utf-8";
        ([(axum::http::header::CONTENT_TYPE, content_type)], m.render_prometheus_text())
    }
}

/// The admin surface, on a listener of its own apart from the decision API and the issuer documents:
/// `/metrics` (see [`crate::metrics`]) and the probes.
pub fn admin(health: Health) -> Surfaces {
    let metrics = Routes::new("metrics").route("/metrics", get(metrics)).finish(());
    Surfaces::default().with(probes(health)).with(metrics)
}

/// The probe routes as a router.
pub fn router(health: Health) -> Router {
    probes(health).router()
}

/// The probe routes, plus the issuer documents when `issuer` is given (see [`issuer::routes`]) and the
/// decision API when `authorizer` is (see [`decision::routes`]).
pub fn router_with(
    health: Health,
    issuer: Option<IssuerReceiver>,
    authorizer: Option<Arc<decision::Authorizer>>,
) -> Router {
    let mut surfaces = Surfaces::default().with(probes(health));
    if let Some(issuer) = issuer {
        surfaces = surfaces.with(issuer::surface(issuer));
    }
    if let Some(authorizer) = authorizer {
        surfaces = surfaces.with(decision::surface(authorizer));
    }
    surfaces.into_router()
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

/// Serves `router` on `listener` (over TLS when `tls` is given) from a runtime of its own with `threads` threads, within `limits` (see
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
    tls: Option<tokio_rustls::TlsAcceptor>,
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
            listener::serve(listener, router, tls, limits, "http", shutdown).await;
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
