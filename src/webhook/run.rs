//! Running the webhook inside the operator: certificate, configuration, server, and the renewal loop.

use std::future::Future;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

pub use super::WebhookError;
use super::config::{self, WebhookSettings};
use super::server::{self, CertHandle};
use crate::tls::ServingError;
use crate::tls::certs::ServingCerts;
use crate::tls::secret;

/// Runs the webhook until `shutdown` resolves: (a) loads or creates the TLS Secret, (b) applies the webhook
/// configuration with its CA bundle, (c) serves, and (d) every `check_interval` renews the certificate when
/// due, re-applies the configuration (which also repairs edits to it) and only then swaps the served
/// certificate, so the API server already trusts the CA of every certificate it is shown.
///
/// Startup errors are returned; renewal errors are logged and retried at the next check (the leaf is renewed
/// with a third of its lifetime to spare). The configuration is left in place on shutdown (see
/// [`config`]). `serving` is set once (c) has begun; the operator's readiness waits for it.
pub async fn run(
    client: Client,
    settings: WebhookSettings,
    store: server::Webhooks,
    serving: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WebhookError> {
    settings.renewal.check().map_err(ServingError::from)?;
    if !settings.start_delay.is_zero() {
        tokio::time::sleep(settings.start_delay).await;
    }
    let certs = secret::ensure(&client, &settings.serving_secret(), None, Timestamp::now()).await?;
    let handle = CertHandle::new(&certs)?;
    let (listener, addr) = server::bind(settings.listen).await?;
    config::apply(&client, &settings, &certs.ca_bundle_pem()).await?;
    info!(
        %addr,
        configuration = %settings.configuration_name,
        serial = %certs.leaf_serial(),
        not_after = ?certs.leaf_not_after(),
        "serving the admission webhooks"
    );

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let limits = settings.limits;
    let mut server =
        tokio::spawn(server::serve_listener(listener, handle.clone(), store, limits, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
    // Only now: the listener is bound, the server task runs and the API server has the configuration with this
    // caBundle. Until this point /readyz says not ready, so a Service never routes admissions to a pod that
    // cannot answer them yet.
    serving.store(true, Ordering::Release);
    let mut served = certs;
    let mut ticks = tokio::time::interval(settings.check_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            ended = &mut server => return ended.map_err(|e| WebhookError::ServerTask(e.to_string()))?,
            _ = ticks.tick() => match renew(&client, &settings, &handle, &served).await {
                Ok(next) => served = next,
                Err(e) => warn!(error = %e, "webhook certificate check failed; retrying at the next check"),
            },
        }
    }
    let _ = stop_tx.send(true);
    server.await.map_err(|e| WebhookError::ServerTask(e.to_string()))?
}

/// One check: renew if due, publish the bundle, then present the new leaf.
async fn renew(
    client: &Client,
    settings: &WebhookSettings,
    handle: &CertHandle,
    served: &ServingCerts,
) -> Result<ServingCerts, WebhookError> {
    let certs = secret::ensure(client, &settings.serving_secret(), Some(served), Timestamp::now()).await?;
    config::apply(client, settings, &certs.ca_bundle_pem()).await?;
    if !handle.presents(&certs) {
        handle.swap(&certs)?;
        info!(serial = %certs.leaf_serial(), not_after = ?certs.leaf_not_after(), "now serving the renewed webhook certificate");
    }
    Ok(certs)
}
