//! Loading, creating and renewing a serving certificate Secret: the I/O around the pure [`certs::plan`].
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

use super::ServingError;
use super::certs::{self, Plan, RenewalPolicy, San, ServingCerts};
use crate::names::FIELD_MANAGER;

/// Where one listener's serving certificate lives and what it must name.
#[derive(Debug, Clone)]
pub struct ServingSecret {
    /// Which listener, for log lines and errors (`webhook`, `http`).
    pub listener: &'static str,
    /// The namespace of the Secret (the operator's).
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// Subject alternative names of the leaf.
    pub sans: Vec<San>,
    /// Certificate lifetimes.
    pub renewal: RenewalPolicy,
}

/// Reads and writes that lose a race are retried this often before giving up until the next check.
const ATTEMPTS: usize = 5;

fn api_err(settings: &ServingSecret, step: &'static str) -> impl FnOnce(kube::Error) -> ServingError {
    let listener = settings.listener;
    move |source| ServingError::Secret { listener, step, source }
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
/// unreadable, renewed when [`certs::plan`] says so, otherwise as stored. `serving` is what the server
/// presents now, if it has started (see [`certs::plan`]'s `in_use`).
pub async fn ensure(
    client: &Client,
    settings: &ServingSecret,
    serving: Option<&ServingCerts>,
    now: Timestamp,
) -> Result<ServingCerts, ServingError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let name = settings.name.as_str();
    let listener = settings.listener;
    for _ in 0..ATTEMPTS {
        let Some(existing) = api.get_opt(name).await.map_err(api_err(settings, "read"))? else {
            let certs = ServingCerts::generate(&settings.sans, &settings.renewal, now)?;
            match api.create(&PostParams::default(), &secret(name, &certs, None)).await {
                Ok(_) => {
                    info!(listener, secret = name, serial = %certs.leaf_serial(), "created the serving certificate");
                    return Ok(certs);
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_err(settings, "create")(e)),
            }
        };
        let data: BTreeMap<String, Vec<u8>> =
            existing.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        let (current, step) = match ServingCerts::from_secret_data(&data) {
            Ok(current) => {
                let in_use = serving.is_some_and(|s| s.same_leaf(&current));
                let step = certs::plan(&current, in_use, &settings.sans, now);
                (Some(current), step)
            }
            Err(e) => {
                warn!(listener, secret = name, error = %e, "the serving certificate Secret is unusable; replacing it");
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
                info!(listener, secret = name, step = ?step, serial = %next.leaf_serial(), "renewed the serving certificate");
                return Ok(next);
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(api_err(settings, "replace")(e)),
        }
    }
    Err(ServingError::Contended { listener })
}
