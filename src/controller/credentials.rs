//! Credentials for Active agents: the `<agent>-credentials` Secret (one JWT-SVID per audience, optionally an
//! X.509-SVID, the CA bundle), rotated at 80% of its lifetime, withdrawn when the agent leaves Active, and
//! the trust bundle ConfigMap in every namespace with agents.
//!
//! Issuing is a grant: it is written ahead to the audit log and does not happen if the intent cannot be
//! written. The Secret is owned by the Agent (garbage-collected with it) and carries the Agent's UID, so a
//! recreated Agent of the same name never inherits its predecessor's credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{Agent, AgentPhase, AgentPolicy, CredentialStatus};
use crate::audit::{Entry, IntentState, Outcome};
use crate::controller::agent::{object_ref, publish};
use crate::controller::{ACTOR, Context, Error, FIELD_MANAGER, Result};
use crate::identity::SpiffeId;
use crate::identity::issuer::Issuer;
use crate::identity::jwt::{AgentClaims, Minter, SvidClaims, effective_ttl};
use crate::registry::credentials::{
    self as plan, ANNOTATION_EXPIRES_AT, ANNOTATION_FINGERPRINT, ANNOTATION_ISSUE_KEY, ANNOTATION_ISSUED_AT,
    ANNOTATION_KEY_ID, ANNOTATION_REFRESH_AT, ANNOTATION_UID, CredentialPlan, Desired, IssueReason,
    IssuedFacts,
};
use crate::registry::selector::credential_ttl_cap;
use crate::registry::validate::parse_duration;
use crate::webhook::pods::{AGENT_LABEL, TRUST_BUNDLE_CONFIGMAP, credentials_secret_name};

/// Secret key of the CA bundle in the credentials Secret.
pub const BUNDLE_PEM: &str = "bundle.pem";
/// Secret key of the X.509-SVID certificate chain.
pub const SVID_PEM: &str = "svid.pem";
/// Secret key of the X.509-SVID private key.
pub const SVID_KEY_PEM: &str = "svid-key.pem";
/// Trust bundle ConfigMap key: the CA certificates, PEM.
pub const TRUST_BUNDLE_PEM: &str = "trust-bundle.pem";
/// Trust bundle ConfigMap key: the SPIFFE bundle (JWKS with jwt-svid and x509-svid keys).
pub const TRUST_BUNDLE_SPIFFE: &str = "spiffe-bundle.json";

/// A trust bundle is re-applied at least this often even without a rotation, so a deleted or edited
/// ConfigMap comes back with the next reconcile of any agent in its namespace.
const BUNDLE_REAPPLY: Duration = Duration::from_secs(60);

/// What the credentials step decided, for the status and the requeue.
#[derive(Debug, Clone, Default)]
pub struct CredentialsResult {
    /// The status summary (None: the agent holds no credentials).
    pub status: Option<CredentialStatus>,
    /// When to look again.
    pub recheck_in: Option<Duration>,
    /// What the Secret holds now, as this step wrote or read it (None: no Secret).
    pub facts: Option<IssuedFacts>,
}

/// How long after a status write its echoes may be reconciled from [`KnownCredentials`] without reading the
/// Secret. Echoes arrive within milliseconds to seconds; the bound only limits for how long a change to the
/// Secret by someone else can go unnoticed by them (the resync reads it anyway).
const KNOWN_FOR: Duration = Duration::from_secs(30);

/// What this process's last status writes of an Active agent produced, by Agent UID: the `resourceVersion`s
/// of those writes (the phase write and then the credentials write, or one of them), the credentials
/// summary the last one carried, and what the Secret held then (written or read just before).
///
/// The reconciles that follow a status write are mostly caused by that write itself: the watch echoes each
/// write back, and often the echo of the first of two writes is reconciled before the second write reached
/// the cache. An Agent in hand at one of those `resourceVersion`s is the operator's own work: nothing else
/// changed the Agent in between, its status is the last write's minus at most the credentials summary, and
/// the Secret was read or written just before. Such a reconcile needs neither a read of the Secret nor a
/// status write to repeat what it already wrote. Any other `resourceVersion`, a later reconcile, or a
/// restart reads the Secret as before.
#[derive(Debug, Default)]
pub struct KnownCredentials(Mutex<HashMap<String, Known>>);

/// One agent's entry in [`KnownCredentials`].
#[derive(Debug, Clone)]
pub struct Known {
    resource_versions: Vec<String>,
    at: Instant,
    /// The credentials summary of the last status write.
    pub summary: CredentialStatus,
    /// What the Secret held at that write.
    pub facts: IssuedFacts,
}

impl KnownCredentials {
    /// Remembers the status writes of one reconcile of the Agent `uid`: the `resourceVersion` each produced,
    /// in order, the credentials summary the status now carries, and what the Secret held.
    pub fn remember(
        &self,
        uid: &str,
        resource_versions: Vec<String>,
        summary: CredentialStatus,
        facts: IssuedFacts,
    ) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(uid.to_owned(), Known { resource_versions, at: Instant::now(), summary, facts });
        }
    }

    /// The entry of `uid` if the Agent in hand is at a `resourceVersion` one of its writes produced, not longer
    /// than `KNOWN_FOR` (30 s) ago. Otherwise the entry is dropped: the Agent changed since, or it is too old.
    pub fn recall(&self, uid: &str, resource_version: Option<&str>) -> Option<Known> {
        let mut m = self.0.lock().ok()?;
        let usable = m.get(uid).is_some_and(|k| {
            k.at.elapsed() < KNOWN_FOR
                && resource_version.is_some_and(|rv| k.resource_versions.iter().any(|w| w == rv))
        });
        if usable {
            return m.get(uid).cloned();
        }
        m.remove(uid);
        None
    }

    /// Forgets the entry of `uid` (the agent is being archived).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }
}

fn owner_line(agent: &Agent) -> String {
    format!("{}:{}", agent.spec.owner.kind, agent.spec.owner.name)
}

/// What the agent asks for, with the lifetime capped by the policies that govern it and lowered for a low
/// trust score.
pub fn desired(agent: &Agent, policies: &[Arc<AgentPolicy>]) -> Desired {
    let creds = agent.spec.credentials.clone().unwrap_or_default();
    let requested = creds.ttl.as_deref().and_then(|t| parse_duration(t).ok());
    let trust = agent.status.as_ref().and_then(|s| s.trust_score).unwrap_or(0);
    let cap = credential_ttl_cap(policies.iter().map(AsRef::as_ref), agent);
    Desired { audiences: creds.audiences, x509: creds.x509, ttl: effective_ttl(requested, cap, trust) }
}

/// How long issuance waits for the first full list of AgentPolicies: issuing before the caps are known could
/// hand out a credential longer than a policy allows.
const POLICY_INDEX_WAIT: Duration = Duration::from_secs(30);

fn status_of(facts: &IssuedFacts, name: &str) -> CredentialStatus {
    CredentialStatus {
        secret_name: Some(name.to_owned()),
        issued_at: facts.issued_at.map(|t| t.to_string()),
        expires_at: facts.expires_at.map(|t| t.to_string()),
        key_id: facts.key_id.clone(),
    }
}

/// Brings the credentials of `agent` (in `phase`, just written to its status) to what they should be.
///
/// `known` is what this process last wrote to or read from the Secret, if the caller can vouch that nothing
/// happened to the Agent since (see [`KnownCredentials`]). It is used only to skip the read
/// when it says that the credentials of an Active agent are to be kept; every other decision (issue, rotate,
/// withdraw) is taken from the Secret as read from the API server, so a stale `known` can at worst cost that
/// read.
pub async fn reconcile(
    ctx: &Context,
    agent: &Agent,
    phase: AgentPhase,
    known: Option<IssuedFacts>,
) -> Result<CredentialsResult> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let name = agent.name_any();
    let issuer = ctx.issuer.borrow().clone();
    ensure_trust_bundle(ctx, &ns, &issuer).await?;
    let secret_name = credentials_secret_name(&name);
    let kids: Vec<&str> = issuer.keys.published().map(|k| k.kid()).collect();

    // Without a read: only when the caller knows what the Secret holds, there is no interrupted credentials
    // step of this agent to close against the Secret, and the answer is to keep what it holds.
    if let Some(facts) = known.filter(|_| phase == AgentPhase::Active && !has_open_intents(ctx, &uid)) {
        let want = desired_when_ready(ctx, agent).await?;
        let now = Timestamp::now();
        if let CredentialPlan::Keep { recheck_at } = plan::plan(phase, &uid, &want, Some(&facts), &kids, now)
        {
            return Ok(keep(facts, &secret_name, now, recheck_at));
        }
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(|source| Error::Read { what: format!("Secret {ns}/{secret_name}"), source })?;
    let facts = existing.as_ref().map(|s| IssuedFacts::from_annotations(&s.annotations().clone()));
    resolve_stale_issues(ctx, &uid, facts.as_ref()).await?;

    let want = desired_when_ready(ctx, agent).await?;
    let now = Timestamp::now();
    match plan::plan(phase, &uid, &want, facts.as_ref(), &kids, now) {
        CredentialPlan::Nothing => Ok(CredentialsResult::default()),
        CredentialPlan::Keep { recheck_at } => match facts {
            Some(facts) => Ok(keep(facts, &secret_name, now, recheck_at)),
            None => Ok(CredentialsResult::default()),
        },
        CredentialPlan::Withdraw => {
            withdraw(ctx, agent, &secrets, existing.as_ref(), facts.as_ref(), phase).await?;
            Ok(CredentialsResult::default())
        }
        CredentialPlan::Issue(reason) => {
            let facts = issue(ctx, agent, &issuer, &want, reason, now).await?;
            Ok(CredentialsResult {
                status: Some(status_of(&facts, &secret_name)),
                recheck_in: facts.refresh_at.map(|r| until(Timestamp::now(), r)),
                facts: Some(facts),
            })
        }
    }
}

/// What the agent asks for, once the AgentPolicies that cap its lifetime are all known: never issue before.
async fn desired_when_ready(ctx: &Context, agent: &Agent) -> Result<Desired> {
    tokio::time::timeout(POLICY_INDEX_WAIT, ctx.authz.wait_ready())
        .await
        .map_err(|_| Error::Credentials("the AgentPolicy index is not ready yet; not issuing".into()))?;
    Ok(desired(agent, &ctx.policies.state()))
}

fn keep(facts: IssuedFacts, secret_name: &str, now: Timestamp, recheck_at: Timestamp) -> CredentialsResult {
    CredentialsResult {
        status: Some(status_of(&facts, secret_name)),
        recheck_in: Some(until(now, recheck_at)),
        facts: Some(facts),
    }
}

/// True if an issuance or withdrawal of the agent with `uid` was interrupted: it is closed against the
/// Secret as read, so the read must happen.
fn has_open_intents(ctx: &Context, uid: &str) -> bool {
    ctx.audit.any_open_intent(|i| i.object.uid.as_deref() == Some(uid) && i.action.starts_with("credential."))
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Closes issuance intents left open by an interruption: the issuance happened iff the Secret carries its key.
async fn resolve_stale_issues(ctx: &Context, uid: &str, facts: Option<&IssuedFacts>) -> Result<()> {
    for intent in ctx.audit.open_intents_matching(|i| i.object.uid.as_deref() == Some(uid)) {
        let Some(key) = intent.key.as_deref() else { continue };
        if intent.action == "credential.withdraw" {
            // A withdrawal is confirmed once no Secret is left; otherwise the withdrawal in progress reuses the
            // same key and completes it.
            if facts.is_none() {
                let details = [("resolvedBy".to_owned(), "intent-recovery".to_owned())].into();
                let reason = "confirmed after an interruption: the Secret is gone";
                ctx.audit
                    .outcome(key, Outcome::Success, reason, details)
                    .await
                    .map_err(Error::AuditOutcome)?;
            }
            continue;
        }
        if intent.action != "credential.issue" {
            continue;
        }
        let stored = facts.and_then(|f| f.issue_key.as_deref()) == Some(key);
        let (outcome, reason) = if stored {
            (Outcome::Success, "confirmed after an interruption: the Secret holds these credentials")
        } else {
            (Outcome::Abandoned, "the credentials never reached the Secret; they were superseded")
        };
        let details = [("resolvedBy".to_owned(), "intent-recovery".to_owned())].into();
        ctx.audit.outcome(key, outcome, reason, details).await.map_err(Error::AuditOutcome)?;
    }
    Ok(())
}

async fn issue(
    ctx: &Context,
    agent: &Agent,
    issuer: &Issuer,
    want: &Desired,
    reason: IssueReason,
    now: Timestamp,
) -> Result<IssuedFacts> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let name = agent.name_any();
    let spiffe_id = SpiffeId::for_agent(&issuer.trust_domain, &ns, &name)
        .map_err(|e| Error::Credentials(format!("agent has no valid SPIFFE ID: {e}")))?;
    let ttl = want.ttl;
    let expires_at = now.checked_add(SignedDuration::from_secs(ttl.as_secs() as i64)).unwrap_or(now);
    let refresh_at = plan::refresh_at(now, ttl);
    let key = issuer.keys.current();
    let issue_key = format!("credential.issue:{uid}:{}", now.as_millisecond());

    let entry = Entry::new(ACTOR, "credential.issue", object_ref(agent), Outcome::Pending, reason.as_str())
        .with_detail("spiffeID", spiffe_id.to_string())
        .with_detail("audiences", want.audiences.join(","))
        .with_detail("x509", want.x509.to_string())
        .with_detail("ttlSeconds", ttl.as_secs().to_string())
        .with_detail("keyID", key.kid())
        .with_detail("expiresAt", expires_at.to_string());
    match ctx.audit.intent(&issue_key, entry).await {
        Ok(IntentState::Fresh(_) | IntentState::Pending(_)) => {}
        Ok(IntentState::Completed(_)) => {}
        Err(e) => {
            publish(
                ctx,
                agent,
                EventType::Warning,
                "AuditWriteFailed",
                format!("credential issuance refused: {e}"),
            )
            .await;
            return Err(Error::AuditIntent(e));
        }
    }

    let owner = owner_line(agent);
    let trust_score = agent.status.as_ref().and_then(|s| s.trust_score).unwrap_or(0);
    let claims_for = |aud: &str| {
        SvidClaims::new(
            &issuer.issuer_url,
            &spiffe_id,
            aud,
            AgentClaims { uid: &uid, owner: &owner, trust_score },
            now,
            ttl,
        )
    };
    let mut minter = Minter::new(Arc::clone(key));
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    let mut jtis = Vec::new();
    for (aud, secret_key) in plan::token_keys(&want.audiences) {
        let claims =
            claims_for(&aud).map_err(|e| Error::Credentials(format!("failed to build claims: {e}")))?;
        jtis.push(claims.jti.clone());
        let token =
            minter.mint(&claims).map_err(|e| Error::Credentials(format!("failed to sign token: {e}")))?;
        data.insert(secret_key, token);
    }
    let mut serial = None;
    if want.x509 {
        let ttl_signed = SignedDuration::from_secs(ttl.as_secs() as i64);
        let svid = issuer
            .ca
            .issue_svid(&spiffe_id, ttl_signed, now)
            .map_err(|e| Error::Credentials(format!("failed to issue X.509-SVID: {e}")))?;
        serial = Some(svid.serial_hex.clone());
        data.insert(SVID_PEM.into(), svid.chain_pem.clone());
        data.insert(SVID_KEY_PEM.into(), svid.key_pem.clone());
    }
    data.insert(BUNDLE_PEM.into(), issuer.ca.bundle_pem());

    let annotations: BTreeMap<String, String> = [
        (ANNOTATION_UID, uid.clone()),
        (ANNOTATION_ISSUED_AT, now.to_string()),
        (ANNOTATION_EXPIRES_AT, expires_at.to_string()),
        (ANNOTATION_REFRESH_AT, refresh_at.to_string()),
        (ANNOTATION_KEY_ID, key.kid().to_owned()),
        (ANNOTATION_FINGERPRINT, want.fingerprint()),
        (ANNOTATION_ISSUE_KEY, issue_key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let secret_name = credentials_secret_name(&name);
    let owner_ref = json!({
        "apiVersion": Agent::api_version(&()), "kind": Agent::kind(&()), "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true,
    });
    let patch = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": secret_name, "namespace": ns,
            "labels": {AGENT_LABEL: name, "app.kubernetes.io/managed-by": ACTOR},
            "annotations": annotations,
            "ownerReferences": [owner_ref],
        },
        "type": "Opaque",
        "stringData": data,
    });
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    secrets
        .patch(&secret_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Write { what: format!("Secret {ns}/{secret_name}"), source })?;

    let mut details = BTreeMap::new();
    details.insert("jti".to_owned(), jtis.join(","));
    if let Some(s) = serial {
        details.insert("x509Serial".to_owned(), s);
    }
    ctx.audit
        .outcome(&issue_key, Outcome::Success, "credentials stored", details)
        .await
        .map_err(Error::AuditOutcome)?;
    let event = if reason == IssueReason::Initial { "CredentialsIssued" } else { "CredentialsRotated" };
    let note = format!(
        "{} token(s){} signed by key {}, valid until {expires_at} ({})",
        want.audiences.len(),
        if want.x509 { " and an X.509-SVID" } else { "" },
        key.kid(),
        reason.as_str()
    );
    info!(agent = %name, reason = reason.as_str(), key_id = key.kid(), %expires_at, "credentials issued");
    publish(ctx, agent, EventType::Normal, event, note).await;
    Ok(IssuedFacts::from_annotations(&annotations))
}

async fn withdraw(
    ctx: &Context,
    agent: &Agent,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    facts: Option<&IssuedFacts>,
    phase: AgentPhase,
) -> Result<()> {
    let Some(secret) = existing else { return Ok(()) };
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let issued = facts.and_then(|f| f.issue_key.clone()).unwrap_or_else(|| "unknown".into());
    let key = format!("credential.withdraw:{uid}:{}", issued.rsplit(':').next().unwrap_or("unknown"));
    let entry = Entry::new(
        ACTOR,
        "credential.withdraw",
        object_ref(agent),
        Outcome::Pending,
        format!("agent is {phase}"),
    )
    .with_detail("secret", secret.name_any());
    // Taking credentials away must not depend on the log: go ahead if the intent cannot be written.
    let recorded = match ctx.audit.intent(&key, entry).await {
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e, "audit intent failed; withdrawing credentials regardless");
            false
        }
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: secret.uid(), resource_version: None }),
        ..DeleteParams::default()
    };
    match secrets.delete(&secret.name_any(), &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(Error::Write { what: format!("Secret {}", secret.name_any()), source }),
    }
    if recorded {
        ctx.audit
            .outcome(&key, Outcome::Success, "credentials deleted", BTreeMap::new())
            .await
            .map_err(Error::AuditOutcome)?;
    }
    info!(agent = %agent.name_any(), %phase, "credentials withdrawn");
    publish(
        ctx,
        agent,
        EventType::Normal,
        "CredentialsWithdrawn",
        format!("credentials deleted: the agent is {phase}"),
    )
    .await;
    Ok(())
}

/// Deletes the agent's credentials Secret if it belongs to this agent (by UID); returns whether one was
/// deleted. Used when the agent is archived.
pub async fn delete_secret(ctx: &Context, agent: &Agent) -> Result<bool> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let name = credentials_secret_name(&agent.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = secrets
        .get_opt(&name)
        .await
        .map_err(|source| Error::Read { what: format!("Secret {ns}/{name}"), source })?
    else {
        return Ok(false);
    };
    if secret.annotations().get(ANNOTATION_UID) != Some(&uid) {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: secret.uid(), resource_version: None }),
        ..DeleteParams::default()
    };
    match secrets.delete(&name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(Error::Write { what: format!("Secret {ns}/{name}"), source }),
    }
}

/// Keeps the trust bundle ConfigMap of `namespace` at the current issuer snapshot. Applied at most once per
/// snapshot and namespace (and again after `BUNDLE_REAPPLY`): reconciles of agents in the same namespace
/// that run at once wait for one apply instead of each making their own.
pub async fn ensure_trust_bundle(ctx: &Context, namespace: &str, issuer: &Issuer) -> Result<()> {
    let slot = match ctx.bundles_applied.lock() {
        Ok(mut m) => Arc::clone(m.entry(namespace.to_owned()).or_default()),
        // A poisoned map only costs the sharing: apply, unrecorded.
        Err(_) => Arc::default(),
    };
    let mut last = slot.lock().await;
    if last.is_some_and(|(seq, at)| seq == issuer.sequence && at.elapsed() < BUNDLE_REAPPLY) {
        return Ok(());
    }
    let spiffe = issuer
        .spiffe_bundle()
        .map_err(|e| Error::Credentials(format!("failed to build the trust bundle: {e}")))?;
    let patch = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": TRUST_BUNDLE_CONFIGMAP, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": ACTOR},
            "annotations": {"agentiam.dev/bundle-sequence": issuer.sequence.to_string()},
        },
        "data": {
            TRUST_BUNDLE_PEM: issuer.ca.bundle_pem(),
            TRUST_BUNDLE_SPIFFE: spiffe.to_string(),
        },
    });
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(TRUST_BUNDLE_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Write {
            what: format!("ConfigMap {namespace}/{TRUST_BUNDLE_CONFIGMAP}"),
            source,
        })?;
    *last = Some((issuer.sequence, std::time::Instant::now()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(issue_key: &str) -> IssuedFacts {
        IssuedFacts { issue_key: Some(issue_key.into()), ..IssuedFacts::default() }
    }

    fn summary(issued_at: &str) -> CredentialStatus {
        CredentialStatus { issued_at: Some(issued_at.into()), ..CredentialStatus::default() }
    }

    #[test]
    fn known_credentials_serve_only_the_objects_our_own_writes_produced() {
        let known = KnownCredentials::default();
        known.remember("u1", vec!["10".into(), "11".into()], summary("t1"), facts("a"));
        // The echo of the phase write, then the one of the credentials write: both are ours.
        assert_eq!(known.recall("u1", Some("10")).map(|k| k.facts), Some(facts("a")));
        assert_eq!(known.recall("u1", Some("11")).map(|k| k.summary), Some(summary("t1")));
        assert!(known.recall("u1", Some("11")).is_some(), "a second echo of the same write");
        // Another incarnation of the name has another UID.
        assert!(known.recall("u2", Some("11")).is_none());

        // Someone else changed the Agent (or the watch went past our writes): the entry is gone for good.
        assert!(known.recall("u1", Some("12")).is_none());
        assert!(known.recall("u1", Some("11")).is_none());
        known.remember("u1", vec!["13".into()], summary("t2"), facts("b"));
        assert!(known.recall("u1", None).is_none());
        assert!(known.recall("u1", Some("13")).is_none());

        known.remember("u1", vec!["14".into()], summary("t3"), facts("c"));
        known.forget("u1");
        assert!(known.recall("u1", Some("14")).is_none());
    }

    #[test]
    fn known_credentials_expire() {
        let known = KnownCredentials::default();
        known.remember("u1", vec!["10".into()], summary("t1"), facts("a"));
        if let Ok(mut m) = known.0.lock()
            && let Some(k) = m.get_mut("u1")
        {
            k.at = Instant::now().checked_sub(KNOWN_FOR).unwrap();
        }
        assert!(known.recall("u1", Some("10")).is_none());
    }
}
