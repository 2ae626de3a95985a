//! The key manager: loads or creates the signing key set and the X.509 CA in the operator namespace, rotates
//! keys on schedule or on demand, and hands every new [`Issuer`] snapshot to its readers.
//!
//! Emergency rotation is asked for with an annotation on the key Secret, so the kill switch is a plain
//! `kubectl annotate`: `agentiam.dev/emergency-rotation=<reason>` withdraws the current and previous keys
//! (the already-published next key signs at once); the value `all` replaces every key, next included, for a
//! leaked Secret. Every rotation is written ahead to the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::audit::{Action, AuditError, AuditLog, Entry, IntentKey, IntentState, ObjectRef, Outcome};
use crate::controller::ACTOR;
use crate::identity::TrustDomain;
use crate::identity::issuer::{self, Issuer, IssuerReceiver, IssuerSender};
use crate::identity::keys::{KeyError, KeySet, Rotation, RotationPolicy};
use crate::identity::x509::{CertificateAuthority, DEFAULT_CA_VALIDITY, X509Error};

/// Secret holding the JWT-SVID signing key set.
pub const SIGNING_KEYS_SECRET: &str = crate::names::SIGNING_KEYS_SECRET;
/// Secret holding the X.509 CA (`ca.crt`, `ca.key`). Create it before the first start to bring your own CA.
pub const CA_SECRET: &str = crate::names::CA_SECRET;
/// Annotation on the key Secret that asks for an emergency rotation; `all` also replaces the next key.
pub const EMERGENCY_ANNOTATION: &str = crate::names::EMERGENCY_ROTATION_ANNOTATION;
/// How often the key Secret is looked at for an emergency request when nothing else is due.
const POLL: Duration = Duration::from_secs(2);

/// Settings of the issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The `iss` of every token.
    pub issuer_url: String,
    /// The SPIFFE trust domain.
    pub trust_domain: TrustDomain,
    /// Rotation schedule.
    pub policy: RotationPolicy,
}

/// Why key management failed. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Reading or writing a Secret failed.
    #[error("failed to {step} secret {name}: {source}")]
    Api {
        /// What was being done.
        step: &'static str,
        /// The Secret.
        name: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The key set could not be made, loaded or rotated.
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    /// The CA could not be made or loaded.
    #[error("X.509 CA in secret {CA_SECRET}: {0}")]
    Ca(#[from] X509Error),
    /// The rotation could not be written ahead to the audit log, so it did not happen.
    #[error("failed to record the key rotation, so it did not happen: {0}")]
    Audit(#[source] AuditError),
}

fn secret_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
        uid: None,
    }
}

fn data_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

fn new_secret(name: &str, data: BTreeMap<String, Vec<u8>>) -> Secret {
    let labels = [("app.kubernetes.io/managed-by".to_owned(), ACTOR.to_owned())].into();
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), ..Default::default() },
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Reads `name`, or creates it from `make()` when it does not exist. Two operators racing agree on whichever
/// Secret the API server stored first.
async fn load_or_create(
    api: &Api<Secret>,
    name: &'static str,
    make: impl FnOnce() -> Result<BTreeMap<String, Vec<u8>>, KeysError>,
) -> Result<(Secret, bool), KeysError> {
    let err = |step| move |source| KeysError::Api { step, name, source };
    if let Some(s) = api.get_opt(name).await.map_err(err("read"))? {
        return Ok((s, false));
    }
    match api.create(&PostParams::default(), &new_secret(name, make()?)).await {
        Ok(s) => Ok((s, true)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok((api.get(name).await.map_err(err("read"))?, false))
        }
        Err(e) => Err(err("create")(e)),
    }
}

/// Loads (or creates) the key set and CA and returns the issuer channel plus the manager that rotates keys.
pub async fn bootstrap(
    client: &Client,
    namespace: &str,
    settings: IssuerSettings,
    audit: &AuditLog,
) -> Result<(KeyManager, IssuerReceiver), KeysError> {
    settings.policy.validate()?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let now = Timestamp::now();
    let (key_secret, created_keys) =
        load_or_create(&api, SIGNING_KEYS_SECRET, || Ok(KeySet::generate(now)?.to_secret_data()?)).await?;
    let keys = KeySet::from_secret_data(&data_of(&key_secret))?;
    let td = settings.trust_domain.clone();
    let (ca_secret, created_ca) = load_or_create(&api, CA_SECRET, || {
        Ok(CertificateAuthority::generate(&td, DEFAULT_CA_VALIDITY, now)?.to_secret_data())
    })
    .await?;
    let ca = CertificateAuthority::from_secret_data(&data_of(&ca_secret), &settings.trust_domain, now)?;
    for (created, name, action) in [
        (created_keys, SIGNING_KEYS_SECRET, Action::IssuerKeysCreate),
        (created_ca, CA_SECRET, Action::IssuerCaCreate),
    ] {
        if created {
            let entry = Entry::new(
                ACTOR,
                action,
                secret_ref(namespace, name),
                Outcome::Success,
                "created at first start",
            );
            audit.append(entry).await.map_err(KeysError::Audit)?;
        }
    }
    resolve_open_rotations(audit, &keys).await?;
    info!(current = keys.current().kid(), next = keys.next().kid(), ca_not_after = %ca.not_after(), "issuer keys loaded");
    let issuer = Issuer {
        keys,
        ca: Arc::new(ca),
        issuer_url: settings.issuer_url.clone(),
        trust_domain: settings.trust_domain.clone(),
        policy: settings.policy,
        // Unix seconds: strictly higher than any sequence an earlier run published (clocks permitting), so
        // relying parties that compare spiffe_sequence never see it go back after a restart.
        sequence: u64::try_from(now.as_second()).unwrap_or(1),
    };
    let (tx, rx) = issuer::channel(issuer);
    let manager = KeyManager { api, namespace: namespace.to_owned(), audit: audit.clone(), tx };
    Ok((manager, rx))
}

/// Closes rotation intents left open by a crash: a rotation happened iff the stored current key is no longer
/// the one named in the intent key.
async fn resolve_open_rotations(audit: &AuditLog, keys: &KeySet) -> Result<(), KeysError> {
    for intent in audit.open_intents() {
        let Some(key) = intent.key.as_deref() else { continue };
        let Some(IntentKey::IssuerRotate { kid: old_kid }) = IntentKey::parse(key) else { continue };
        let done = keys.current().kid() != old_kid;
        let (outcome, reason) = if done {
            (Outcome::Success, "confirmed after an interruption: the stored key set was rotated")
        } else {
            (Outcome::Abandoned, "the rotation was not stored before the interruption")
        };
        let details = [("resolvedBy".to_owned(), "intent-recovery".to_owned())].into();
        audit.outcome(key, outcome, reason, details).await.map_err(KeysError::Audit)?;
    }
    Ok(())
}

/// Rotates keys and publishes new issuer snapshots.
pub struct KeyManager {
    api: Api<Secret>,
    namespace: String,
    audit: AuditLog,
    tx: IssuerSender,
}

impl KeyManager {
    /// Runs until `shutdown` resolves: scheduled rotations, pruning of expired previous keys, and emergency
    /// rotations asked for by annotation.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.tick(Timestamp::now()).await {
                warn!(error = %e, "key management step failed; will retry");
            }
            let wait = self.until_next_event(Timestamp::now()).min(POLL);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => return,
            }
        }
    }

    fn until_next_event(&self, now: Timestamp) -> Duration {
        let issuer = self.tx.borrow().clone();
        let mut at = issuer.keys.next_rotation_at(&issuer.policy);
        if let Some(prune) = issuer.keys.next_prune_at() {
            at = at.min(prune);
        }
        Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
    }

    /// One step: emergency request, scheduled rotation, pruning. Each change is audited and stored before
    /// the new keys are used.
    pub async fn tick(&mut self, now: Timestamp) -> Result<(), KeysError> {
        let err = |step| move |source| KeysError::Api { step, name: SIGNING_KEYS_SECRET, source };
        let stored = self.api.get(SIGNING_KEYS_SECRET).await.map_err(err("read"))?;
        let mut keys = KeySet::from_secret_data(&data_of(&stored))?;
        let current = self.tx.borrow().clone();
        if keys.current().kid() != current.keys.current().kid()
            || keys.next().kid() != current.keys.next().kid()
        {
            // Someone else (another operator, a restore) changed the stored set: follow it.
            self.publish(keys, None);
            return Ok(());
        }
        let emergency =
            stored.metadata.annotations.as_ref().and_then(|a| a.get(EMERGENCY_ANNOTATION)).cloned();
        let old_kid = keys.current().kid().to_owned();
        let rotation = match emergency.as_deref() {
            Some("all") => Some(keys.emergency_rotate_all(now)?),
            Some(_) => Some(keys.emergency_rotate(now)?),
            None => keys.rotate_if_due(now, &current.policy)?,
        };
        let pruned = keys.prune(now);
        if rotation.is_none() && pruned.is_empty() {
            return Ok(());
        }
        let intent_key = IntentKey::IssuerRotate { kid: old_kid.to_string() }.to_string();
        if let Some(r) = &rotation {
            let reason = match &emergency {
                Some(why) => {
                    format!("emergency rotation requested: {}", why.chars().take(256).collect::<String>())
                }
                None => "scheduled rotation".to_owned(),
            };
            let entry = rotation_entry(&self.namespace, r, reason);
            match self.audit.intent(&intent_key, entry).await {
                Ok(IntentState::Fresh(_) | IntentState::Pending(_)) => {}
                Ok(IntentState::Completed(_)) => warn!(key = intent_key, "rotation already recorded as done"),
                // An emergency rotation takes trust away: it must not wait for a working log.
                Err(e) if emergency.is_some() => {
                    warn!(error = %e, "audit intent failed; rotating regardless")
                }
                // A scheduled rotation puts a new key to work: fail closed.
                Err(e) => return Err(KeysError::Audit(e)),
            }
        }
        let mut secret = new_secret(SIGNING_KEYS_SECRET, keys.to_secret_data()?);
        // Optimistic concurrency: the replace fails if anyone changed the Secret since it was read above.
        secret.metadata.resource_version = stored.metadata.resource_version.clone();
        // Replacing drops the emergency annotation, so one request causes one rotation.
        self.api.replace(SIGNING_KEYS_SECRET, &PostParams::default(), &secret).await.map_err(err("store"))?;
        if let Some(r) = &rotation {
            let recorded = self
                .audit
                .outcome(&intent_key, Outcome::Success, "rotated keys stored", BTreeMap::new())
                .await;
            if let Err(e) = recorded {
                warn!(error = %e, "failed to record the outcome of the key rotation");
            }
            crate::metrics::global().key_rotation();
            info!(kind = r.kind.as_str(), activated = %r.activated, withdrawn = ?r.withdrawn, "signing keys rotated");
        }
        if !pruned.is_empty() {
            info!(?pruned, "expired previous keys left the published set");
        }
        self.publish(keys, rotation.as_ref());
        Ok(())
    }

    fn publish(&self, keys: KeySet, rotation: Option<&Rotation>) {
        let old = self.tx.borrow().clone();
        let next = Issuer {
            keys,
            ca: Arc::clone(&old.ca),
            issuer_url: old.issuer_url.clone(),
            trust_domain: old.trust_domain.clone(),
            policy: old.policy,
            sequence: old
                .sequence
                .saturating_add(1)
                .max(u64::try_from(Timestamp::now().as_second()).unwrap_or(0)),
        };
        if let Some(r) = rotation {
            tracing::debug!(
                kind = r.kind.as_str(),
                sequence = next.sequence,
                "publishing new issuer snapshot"
            );
        }
        self.tx.send_replace(Arc::new(next));
    }
}

fn rotation_entry(namespace: &str, r: &Rotation, reason: String) -> Entry {
    let mut entry = Entry::new(
        ACTOR,
        Action::IssuerRotate.as_str(),
        secret_ref(namespace, SIGNING_KEYS_SECRET),
        Outcome::Pending,
        reason,
    )
    .with_detail("kind", r.kind.as_str())
    .with_detail("activated", r.activated.clone())
    .with_detail("staged", r.staged.clone());
    if let Some(retired) = &r.retired {
        entry = entry.with_detail("retired", retired.clone());
    }
    if !r.withdrawn.is_empty() {
        entry = entry.with_detail("withdrawn", r.withdrawn.join(","));
    }
    entry
}
