//! HTTP surfaces of the operator: health and readiness probes, and the issuer documents (OIDC discovery,
//! JWKS, SPIFFE bundle) once the operator has an issuer.

pub mod decision;
#[cfg(test)]
mod decision_tests;
pub mod issuer;
pub mod mcp;

use std::net::SocketAddr;
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

/// Binds the HTTP listener, returning the address actually bound (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves the routes until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health)).with_graceful_shutdown(shutdown).await
}

/// Serves the routes of [`router_with`] until `shutdown` resolves.
pub async fn serve_with(
    listener: TcpListener,
    health: Health,
    issuer: Option<IssuerReceiver>,
    authorizer: Option<Arc<decision::Authorizer>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router_with(health, issuer, authorizer)).with_graceful_shutdown(shutdown).await
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
