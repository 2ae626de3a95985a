//! Loading, creating and renewing the serving certificate Secret: the I/O around the pure
//! [`tls::plan`].
//!
//! Optimistic concurrency throughout: the Secret is created only if absent (409: someone else won, re-read)
//! and replaced only at the resourceVersion that was read (409: re-read and decide again), so two operator
//! processes starting together converge on one certificate instead of overwriting each other's.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use super::WebhookError;
use super::config::WebhookSettings;
use super::tls::{self, Plan, ServingCerts};
use crate::names::FIELD_MANAGER;

/// Reads and writes that lose a race are retried this often before giving up until the next check.
const ATTEMPTS: usize = 5;

fn api_err(step: &'static str) -> impl FnOnce(kube::Error) -> WebhookError {
    move |source| WebhookError::TlsSecret { step, source }
}

fn secret(name: &str, certs: &ServingCerts, resource_version: Option<String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version,
            labels: Some(
                [
                    ("app.kubernetes.io/managed-by".to_owned(), FIELD_MANAGER.to_owned()),
                    ("app.kubernetes.io/part-of".to_owned(), "agentiam".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(certs.to_secret_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        type_: Some("kubernetes.io/tls".to_owned()),
        ..Default::default()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// Returns the serving certificates in the Secret after one renewal step: created if missing, replaced if
/// unreadable, renewed when [`tls::plan`] says so, otherwise as stored. `serving` is what the server presents
/// now, if it has started (see [`tls::plan`]'s `in_use`).
pub async fn ensure(
    client: &Client,
    settings: &WebhookSettings,
    serving: Option<&ServingCerts>,
    now: Timestamp,
) -> Result<ServingCerts, WebhookError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.operator_namespace);
    let name = settings.tls_secret.as_str();
    for _ in 0..ATTEMPTS {
        let Some(existing) = api.get_opt(name).await.map_err(api_err("read the webhook TLS secret"))? else {
            let certs = ServingCerts::generate(&settings.sans, &settings.renewal, now)?;
            match api.create(&PostParams::default(), &secret(name, &certs, None)).await {
                Ok(_) => {
                    info!(secret = name, serial = %certs.leaf_serial(), "created the webhook serving certificate");
                    return Ok(certs);
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_err("create the webhook TLS secret")(e)),
            }
        };
        let data: BTreeMap<String, Vec<u8>> =
            existing.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        let (current, step) = match ServingCerts::from_secret_data(&data) {
            Ok(current) => {
                let in_use = serving.is_some_and(|s| s.same_leaf(&current));
                let step = tls::plan(&current, in_use, &settings.sans, now);
                (Some(current), step)
            }
            Err(e) => {
                warn!(secret = name, error = %e, "the webhook TLS secret is unusable; replacing it");
                (None, Plan::Create("the secret is unusable"))
            }
        };
        let next = match (&current, step) {
            (Some(current), Plan::Keep) => return Ok(current.clone()),
            (Some(current), step) => current.next(step, &settings.sans, &settings.renewal, now)?,
            (None, _) => None,
        };
        let next = match next {
            Some(next) => next,
            None => ServingCerts::generate(&settings.sans, &settings.renewal, now)?,
        };
        let replacement = secret(name, &next, existing.metadata.resource_version);
        match api.replace(name, &PostParams::default(), &replacement).await {
            Ok(_) => {
                info!(secret = name, step = ?step, serial = %next.leaf_serial(), "renewed the webhook serving certificate");
                return Ok(next);
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(api_err("replace the webhook TLS secret")(e)),
        }
    }
    Err(WebhookError::TlsSecretContended)
}
