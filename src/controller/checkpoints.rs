//! Publishing signed audit checkpoints to the API server, and checking the log against the last one at
//! startup.
//!
//! The signing key lives in a Secret in the operator's namespace; the latest checkpoint and the public key
//! live in a ConfigMap beside it, where `kubectl agentiam audit verify` reads them. Someone who can rewrite
//! the log file (a node or volume compromise) cannot also forge a checkpoint without the key, so truncating
//! or rewriting the log up to the last checkpoint is detected. Records written after the last checkpoint are
//! only protected by the hash chain; the interval bounds that window, and a checkpoint is also published on
//! shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::audit::{
    AuditLog, Checkpoint, CheckpointError, CheckpointSigner, VerifyError, public_key_from_pem, verify_log,
};
use crate::controller::FIELD_MANAGER;

/// Secret holding the checkpoint signing key (PKCS#8 DER under [`KEY_FIELD`]).
pub const SIGNING_KEY_SECRET: &str = crate::names::AUDIT_SIGNING_KEY_SECRET;
/// ConfigMap holding the latest checkpoint and the public key.
pub const CHECKPOINT_CONFIGMAP: &str = crate::names::AUDIT_CHECKPOINT_CONFIGMAP;
/// Secret data key of the PKCS#8 private key.
pub const KEY_FIELD: &str = "pkcs8.der";
/// ConfigMap data key of the latest checkpoint (JSON).
pub const CHECKPOINT_FIELD: &str = "checkpoint.json";
/// ConfigMap data key of the public key (SubjectPublicKeyInfo PEM).
pub const PUBLIC_KEY_FIELD: &str = "publicKey.pem";

/// Why checkpoint handling failed. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointsError {
    /// Reading or writing the Secret or ConfigMap failed.
    #[error("failed to {step} in namespace {namespace}: {source}")]
    Api {
        /// What was being done.
        step: &'static str,
        /// The operator namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The signing key could not be made, loaded or used.
    #[error("checkpoint key: {0}")]
    Key(#[source] CheckpointError),
    /// The Secret exists but has no usable key.
    #[error("secret {SIGNING_KEY_SECRET} has no {KEY_FIELD} entry")]
    MissingKey,
    /// The published checkpoint cannot be parsed.
    #[error("configmap {CHECKPOINT_CONFIGMAP} is malformed: {0}")]
    Malformed(String),
    /// The log does not match the published checkpoint.
    #[error(
        "the audit log does not match the last published checkpoint (refusing to run on it): {0}; restore the \
         log from backup, or, if it is known to be lost, delete configmap {CHECKPOINT_CONFIGMAP} in the operator \
         namespace to start a new chain of trust"
    )]
    Mismatch(#[source] VerifyError),
    /// The log file could not be read.
    #[error("failed to read the audit log: {0}")]
    ReadLog(#[source] std::io::Error),
}

fn api_err(step: &'static str, namespace: &str) -> impl FnOnce(kube::Error) -> CheckpointsError {
    let namespace = namespace.to_owned();
    move |source| CheckpointsError::Api { step, namespace, source }
}

fn labels() -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/managed-by".to_owned(), FIELD_MANAGER.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "agentiam".to_owned()),
    ]
    .into()
}

/// Loads the signing key from its Secret, creating both on first start. Two operators racing to create it
/// agree on whichever Secret the API server stored first.
pub async fn load_or_create_signer(
    client: &Client,
    namespace: &str,
) -> Result<CheckpointSigner, CheckpointsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(secret) =
        api.get_opt(SIGNING_KEY_SECRET).await.map_err(api_err("read the signing key", namespace))?
    {
        return signer_from(&secret);
    }
    let (signer, pkcs8) = CheckpointSigner::generate().map_err(CheckpointsError::Key)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SIGNING_KEY_SECRET.into()),
            labels: Some(labels()),
            ..Default::default()
        },
        data: Some([(KEY_FIELD.to_owned(), ByteString(pkcs8.as_bytes().to_vec()))].into()),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(key_id = signer.key_id(), "created audit checkpoint signing key");
            Ok(signer)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret =
                api.get(SIGNING_KEY_SECRET).await.map_err(api_err("read the signing key", namespace))?;
            signer_from(&secret)
        }
        Err(e) => Err(api_err("create the signing key", namespace)(e)),
    }
}

fn signer_from(secret: &Secret) -> Result<CheckpointSigner, CheckpointsError> {
    let der = secret.data.as_ref().and_then(|d| d.get(KEY_FIELD)).ok_or(CheckpointsError::MissingKey)?;
    CheckpointSigner::from_pkcs8(&der.0).map_err(CheckpointsError::Key)
}

/// The published checkpoint and the public key that signed it, if any.
pub async fn read_published(
    client: &Client,
    namespace: &str,
) -> Result<Option<(Checkpoint, Vec<u8>)>, CheckpointsError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(cm) =
        api.get_opt(CHECKPOINT_CONFIGMAP).await.map_err(api_err("read the checkpoint", namespace))?
    else {
        return Ok(None);
    };
    let data = cm.data.unwrap_or_default();
    let (Some(cp), Some(pem)) = (data.get(CHECKPOINT_FIELD), data.get(PUBLIC_KEY_FIELD)) else {
        return Err(CheckpointsError::Malformed(format!("needs {CHECKPOINT_FIELD} and {PUBLIC_KEY_FIELD}")));
    };
    let checkpoint: Checkpoint =
        serde_json::from_str(cp).map_err(|e| CheckpointsError::Malformed(e.to_string()))?;
    let key = public_key_from_pem(pem).map_err(|e| CheckpointsError::Malformed(e.to_string()))?;
    Ok(Some((checkpoint, key)))
}

/// Refuses a log that is shorter than, or differs from, what the last published checkpoint pins: the
/// operator must not continue a chain that lost records.
pub async fn check_log(
    client: &Client,
    namespace: &str,
    log: &AuditLog,
) -> Result<Option<Checkpoint>, CheckpointsError> {
    let Some((checkpoint, key)) = read_published(client, namespace).await? else {
        warn!("no published audit checkpoint found; starting a new chain of trust");
        return Ok(None);
    };
    let bytes = tokio::fs::read(log.path()).await.map_err(CheckpointsError::ReadLog)?;
    let report = verify_log(&bytes, std::slice::from_ref(&checkpoint), Some(&key))
        .map_err(CheckpointsError::Mismatch)?;
    info!(
        checkpoint_seq = checkpoint.seq,
        head_seq = report.head_seq,
        "audit log matches the published checkpoint"
    );
    Ok(Some(checkpoint))
}

/// Signs the current head and publishes it (server-side apply), with the public key.
pub async fn publish(
    client: &Client,
    namespace: &str,
    log: &AuditLog,
    signer: &CheckpointSigner,
) -> Result<Checkpoint, CheckpointsError> {
    let checkpoint = log.checkpoint(signer).map_err(CheckpointsError::Key)?;
    let json = serde_json::to_string(&checkpoint).map_err(|e| CheckpointsError::Malformed(e.to_string()))?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CHECKPOINT_CONFIGMAP.into()),
            labels: Some(labels()),
            ..Default::default()
        },
        data: Some(
            [
                (CHECKPOINT_FIELD.to_owned(), json),
                (PUBLIC_KEY_FIELD.to_owned(), signer.public_key_pem()),
                ("keyID".to_owned(), signer.key_id().to_owned()),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&cm).map_err(|e| CheckpointsError::Malformed(e.to_string()))?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("apiVersion".into(), "v1".into());
        obj.insert("kind".into(), "ConfigMap".into());
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(CHECKPOINT_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value))
        .await
        .map_err(api_err("publish the checkpoint", namespace))?;
    Ok(checkpoint)
}

/// Publishes a checkpoint every `interval` when the log has grown, and once more when `shutdown` resolves.
pub async fn run_publisher(
    client: Client,
    namespace: String,
    log: AuditLog,
    signer: CheckpointSigner,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut published: Option<u64> = None;
    let mut tick = tokio::time::interval(interval);
    tokio::pin!(shutdown);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = &mut shutdown => true,
        };
        let seq = log.head().0;
        if published != Some(seq) {
            match publish(&client, &namespace, &log, &signer).await {
                Ok(cp) => {
                    tracing::debug!(seq = cp.seq, "published audit checkpoint");
                    published = Some(cp.seq);
                }
                Err(e) => warn!(error = %e, "failed to publish audit checkpoint; will retry"),
            }
        }
        if stopping {
            return;
        }
    }
}
