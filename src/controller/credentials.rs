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
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{Agent, AgentPhase, AgentPolicy, CredentialStatus};
use crate::audit::{Action, Entry, IntentKey, IntentState, Outcome, Record};
use crate::controller::object_ref;
use crate::controller::report::event as publish;
use crate::controller::{ACTOR, Context, Error, FIELD_MANAGER, Result};
use crate::identity::SpiffeId;
use crate::identity::issuer::Issuer;
use crate::identity::jwt::{AgentClaims, Minter, SvidClaims, effective_ttl};
use crate::names::TRUST_BUNDLE_CONFIGMAP;
use crate::registry::actions as a;
use crate::registry::credentials::{self as plan, CredentialPlan, Desired, Found, IssueReason, IssuedFacts};
use crate::registry::ledger::{AgentRecord, IssuedToken, issuance_of};
use crate::registry::secret::{self, Expected};
use crate::registry::selector::credential_ttl_cap;
use crate::registry::trust::trust_score;
use crate::registry::validate::parse_duration;

pub use crate::registry::secret::{BUNDLE_PEM, SVID_KEY_PEM, SVID_PEM};
/// Trust bundle ConfigMap key: the CA certificates, PEM.
pub const TRUST_BUNDLE_PEM: &str = "trust-bundle.pem";
/// Trust bundle ConfigMap key: the SPIFFE bundle (JWKS with jwt-svid and x509-svid keys).
pub const TRUST_BUNDLE_SPIFFE: &str = "spiffe-bundle.json";
/// Trust bundle entry: the CA bundle of the operator's HTTP API (issuer documents, decision API, token
/// service), when the operator manages its certificate.
pub const API_CA_PEM: &str = "api-ca.crt";

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
    /// The `resourceVersion` of the Secret as this step wrote or read it.
    pub secret_version: Option<String>,
}

/// How long after a status write its echoes may be reconciled from [`KnownCredentials`] without reading the
/// Secret. Echoes arrive within milliseconds to seconds. A change to the Secret by anyone else drops the entry
/// at once (the Agent controller's Secret watch calls [`KnownCredentials::secret_changed`]), so the next
/// reconcile reads and checks it.
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
pub struct KnownCredentials(Mutex<HashMap<String, Known>>, Mutex<HashMap<String, String>>);

/// One agent's entry in [`KnownCredentials`].
#[derive(Debug, Clone)]
pub struct Known {
    resource_versions: Vec<String>,
    at: Instant,
    /// The credentials summary of the last status write.
    pub summary: CredentialStatus,
    /// What the Secret held at that write.
    pub facts: IssuedFacts,
    /// The Secret's `resourceVersion` then.
    pub secret_version: Option<String>,
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
        secret_version: Option<String>,
    ) {
        if let Ok(mut m) = self.0.lock() {
            let known = Known { resource_versions, at: Instant::now(), summary, facts, secret_version };
            m.insert(uid.to_owned(), known);
        }
    }

    /// The Agent `uid`'s Secret is now at `secret_version` (None: gone, or no longer ours to watch), as
    /// the Secret watch saw it. Unless that is the version this process last wrote or read, what is known
    /// about it is unusable from now on: someone else changed it, and the next reconcile reads it again.
    pub fn secret_changed(&self, uid: &str, secret_version: Option<&str>) {
        if let Ok(mut seen) = self.1.lock() {
            match secret_version {
                Some(v) => seen.insert(uid.to_owned(), v.to_owned()),
                None => seen.insert(uid.to_owned(), String::new()),
            };
        }
    }

    /// The entry of `uid` if the Agent in hand is at a `resourceVersion` one of its writes produced, not longer
    /// than `KNOWN_FOR` (30 s) ago. Otherwise the entry is dropped: the Agent changed since, or it is too old.
    pub fn recall(&self, uid: &str, resource_version: Option<&str>) -> Option<Known> {
        // The Secret as the watch last saw it: usable only while that is the version we wrote or read (or
        // the watch has not reported on it yet at all).
        let seen = self.1.lock().ok()?.get(uid).cloned();
        let mut m = self.0.lock().ok()?;
        let usable = m.get(uid).is_some_and(|k| {
            k.at.elapsed() < KNOWN_FOR
                && resource_version.is_some_and(|rv| k.resource_versions.iter().any(|w| w == rv))
                && seen.as_ref().is_none_or(|v| k.secret_version.as_ref() == Some(v))
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
        if let Ok(mut seen) = self.1.lock() {
            seen.remove(uid);
        }
    }
}

fn owner_line(agent: &Agent) -> String {
    agent.spec.owner_line()
}

/// What the agent asks for, with the lifetime capped by the policies that govern it and lowered for a low
/// trust score: the one computed from the spec (never read from the status), less the behavioural
/// monitor's `penalty` ([`crate::registry::trust::TrustPenalties`]).
pub fn desired(agent: &Agent, policies: &[Arc<AgentPolicy>], penalty: u16) -> Desired {
    let creds = agent.spec.credentials.clone().unwrap_or_default();
    let requested = creds.ttl.as_deref().and_then(|t| parse_duration(t).ok());
    let trust = trust_score(&agent.spec).score.saturating_sub(penalty);
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

/// Brings the credentials of `agent` (in `phase`, just decided and recorded) to what they should be.
///
/// `known` is what this process last wrote to or read from the Secret, if the caller can vouch that nothing
/// happened to the Agent since (see [`KnownCredentials`]). It is used only to skip the read
/// when it says that the credentials of an Active agent are to be kept; every other decision (issue, rotate,
/// withdraw) is taken from the Secret as read from the API server and checked against the ledger, so a stale
/// `known` can at worst cost that read.
pub async fn reconcile(
    ctx: &Context,
    agent: &Agent,
    phase: AgentPhase,
    known: Option<Known>,
) -> Result<CredentialsResult> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let name = agent.name_any();
    let issuer = ctx.issuer.borrow().clone();
    ensure_trust_bundle(ctx, &ns, &issuer).await?;
    let secret_name = secret::secret_name(&name);
    let kids: Vec<&str> = issuer.keys.published().map(|k| k.kid()).collect();

    // Without a read: only when the caller knows what the Secret holds, there is no interrupted credentials
    // step of this agent to close against the Secret, and the answer is to keep what it holds.
    if let Some(k) = known.filter(|_| phase == AgentPhase::Active && !has_open_intents(ctx, &uid)) {
        let want = desired_when_ready(ctx, agent).await?;
        let now = Timestamp::now();
        let found = Found::Issued(k.facts.clone());
        if let CredentialPlan::Keep { recheck_at } = plan::plan(phase, &uid, &want, Some(&found), &kids, now)
        {
            return Ok(keep(k.facts, &secret_name, now, recheck_at, k.secret_version));
        }
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(|source| Error::Read { what: format!("Secret {ns}/{secret_name}"), source })?;
    let spiffe_id = SpiffeId::for_agent(&issuer.trust_domain, &ns, &name)
        .map_err(|e| Error::Credentials(format!("agent has no valid SPIFFE ID: {e}")))?;
    let verifier = issuer
        .verifier()
        .map_err(|e| Error::Credentials(format!("cannot verify with the published keys: {e}")))?;
    let check = |record: Option<&AgentRecord>| {
        let expected = Expected {
            agent: &name,
            uid: &uid,
            spiffe_id: &spiffe_id,
            manager: FIELD_MANAGER,
            record,
            verifier: &verifier,
            published: &kids,
            ca: &issuer.ca,
        };
        existing.as_ref().map(|s| secret::check(s, &expected))
    };
    resolve_stale_issues(ctx, &uid, existing.is_some(), |intent| check(Some(intent))).await?;
    // After the resolutions: an abandoned issuance is gone from the record.
    let after = ctx.ledger.get(&uid);
    let found = check(after.as_deref());

    let want = desired_when_ready(ctx, agent).await?;
    let now = Timestamp::now();
    let decided = plan::plan(phase, &uid, &want, found.as_ref(), &kids, now);
    tracing::debug!(agent = %name, found = ?found.as_ref().map(|f| matches!(f, Found::Issued(_))), plan = ?decided, "credentials checked");
    match decided {
        CredentialPlan::Nothing => Ok(CredentialsResult::default()),
        CredentialPlan::Keep { recheck_at } => match found {
            Some(Found::Issued(facts)) => {
                let version = existing.as_ref().and_then(|s| s.metadata.resource_version.clone());
                Ok(keep(facts, &secret_name, now, recheck_at, version))
            }
            _ => Ok(CredentialsResult::default()),
        },
        CredentialPlan::Withdraw => {
            withdraw(ctx, agent, &secrets, existing.as_ref(), phase).await?;
            Ok(CredentialsResult::default())
        }
        CredentialPlan::Issue(reason) => {
            if let Some(Found::Foreign(why)) = &found {
                warn!(agent = %name, %why, "the credentials Secret is not what the operator issued; replacing it");
                let note = format!("Secret {secret_name} replaced: {why}");
                publish(ctx, agent, EventType::Warning, "CredentialsReplaced", note).await;
            }
            let foreign = match &found {
                Some(Found::Foreign(why)) => Some(why.as_str()),
                _ => None,
            };
            let (facts, version) =
                issue(ctx, agent, &issuer, &want, reason, foreign, existing.as_ref(), now).await?;
            Ok(CredentialsResult {
                status: Some(status_of(&facts, &secret_name)),
                recheck_in: facts.refresh_at.map(|r| until(Timestamp::now(), r)),
                facts: Some(facts),
                secret_version: version,
            })
        }
    }
}

/// What the agent asks for, once the AgentPolicies that cap its lifetime are all known: never issue before.
async fn desired_when_ready(ctx: &Context, agent: &Agent) -> Result<Desired> {
    tokio::time::timeout(POLICY_INDEX_WAIT, ctx.authz.wait_ready())
        .await
        .map_err(|_| Error::Credentials("the AgentPolicy index is not ready yet; not issuing".into()))?;
    let penalty = match (ctx.trust.get(), agent.uid()) {
        (Some(p), Some(uid)) => p.penalty(&uid, Timestamp::now()),
        _ => 0,
    };
    Ok(desired(agent, &ctx.policies.state(), penalty))
}

fn keep(
    facts: IssuedFacts,
    secret_name: &str,
    now: Timestamp,
    recheck_at: Timestamp,
    secret_version: Option<String>,
) -> CredentialsResult {
    CredentialsResult {
        status: Some(status_of(&facts, secret_name)),
        recheck_in: Some(until(now, recheck_at)),
        facts: Some(facts),
        secret_version,
    }
}

/// True if an issuance or withdrawal of the agent with `uid` was interrupted: it is closed against the
/// Secret as read, so the read must happen.
fn has_open_intents(ctx: &Context, uid: &str) -> bool {
    ctx.audit.any_open_intent(|i| {
        i.object.uid.as_deref() == Some(uid) && Action::parse(&i.action).is_some_and(Action::is_credential)
    })
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Closes issuance intents left open by an interruption: the issuance happened iff the Secret holds exactly
/// it, checked (`check`) against the issuance as its own intent recorded it (the ledger may have ended it
/// since, say by a suspension recorded before the restart). The outcome names the tokens and the
/// certificate either way, copied from the intent, so every credential that ever existed can be traced by
/// its `jti` or serial.
async fn resolve_stale_issues(
    ctx: &Context,
    uid: &str,
    secret_exists: bool,
    check: impl Fn(&AgentRecord) -> Option<Found>,
) -> Result<()> {
    for intent in ctx.audit.open_intents_matching(|i| i.object.uid.as_deref() == Some(uid)) {
        let Some(key) = intent.key.as_deref() else { continue };
        let mut details: BTreeMap<String, String> =
            [("resolvedBy".to_owned(), "intent-recovery".to_owned())].into();
        if intent.action == a::CREDENTIAL_WITHDRAW {
            // A withdrawal is confirmed once no Secret is left; otherwise the withdrawal in progress reuses the
            // same key and completes it.
            if !secret_exists {
                let reason = "confirmed after an interruption: the Secret is gone";
                ctx.audit
                    .outcome(key, Outcome::Success, reason, details)
                    .await
                    .map_err(Error::AuditOutcome)?;
            }
            continue;
        }
        if intent.action != a::CREDENTIAL_ISSUE {
            continue;
        }
        copy_credential_ids(&intent, &mut details);
        let recorded =
            issuance_of(&intent, key).map(|i| AgentRecord { issuances: vec![i], ..AgentRecord::default() });
        let stored = recorded.as_ref().and_then(&check).is_some_and(|f| matches!(f, Found::Issued(_)));
        let (outcome, reason) = if stored {
            (Outcome::Success, "confirmed after an interruption: the Secret holds exactly these credentials")
        } else {
            (
                Outcome::Abandoned,
                "the credentials never reached the Secret; they were superseded and are refused",
            )
        };
        ctx.audit.outcome(key, outcome, reason, details).await.map_err(Error::AuditOutcome)?;
    }
    Ok(())
}

/// The identifiers of the credentials an issuance intent recorded, for its outcome.
fn copy_credential_ids(intent: &Record, details: &mut BTreeMap<String, String>) {
    for k in [a::DETAIL_JTI, a::DETAIL_X509_SERIAL] {
        if let Some(v) = intent.details.get(k).filter(|v| !v.is_empty()) {
            details.insert(k.to_owned(), v.clone());
        }
    }
}

/// Whole seconds, as token and certificate times are: what status reports is exactly what was issued.
fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Mints a fresh set, records it (every `jti` and the serial in the intent, before anything is stored), and
/// replaces the Secret with exactly it.
#[allow(clippy::too_many_arguments)]
async fn issue(
    ctx: &Context,
    agent: &Agent,
    issuer: &Issuer,
    want: &Desired,
    reason: IssueReason,
    foreign: Option<&str>,
    existing: Option<&Secret>,
    now: Timestamp,
) -> Result<(IssuedFacts, Option<String>)> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let name = agent.name_any();
    let spiffe_id = SpiffeId::for_agent(&issuer.trust_domain, &ns, &name)
        .map_err(|e| Error::Credentials(format!("agent has no valid SPIFFE ID: {e}")))?;
    let ttl = want.ttl;
    let issued_at = whole_seconds(now);
    let expires_at =
        issued_at.checked_add(SignedDuration::from_secs(ttl.as_secs() as i64)).unwrap_or(issued_at);
    let key = issuer.keys.current();
    let issue_key =
        IntentKey::CredentialIssue { uid: uid.to_owned(), issued_at_ms: now.as_millisecond() }.to_string();

    // Mint first, in memory: the intent then names every token and the certificate, so whatever reaches the
    // Secret (even if the operator dies right after) is in the log by its jti and serial.
    let owner = owner_line(agent);
    let trust = trust_score(&agent.spec).score;
    let claims_for = |aud: &str| {
        SvidClaims::new(
            &issuer.issuer_url,
            &spiffe_id,
            aud,
            AgentClaims { uid: &uid, owner: &owner, trust_score: trust },
            issued_at,
            ttl,
        )
    };
    let mut minter = Minter::new(Arc::clone(key));
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    let mut tokens = Vec::new();
    for (aud, secret_key) in plan::token_keys(&want.audiences) {
        let claims =
            claims_for(&aud).map_err(|e| Error::Credentials(format!("failed to build claims: {e}")))?;
        tokens.push(IssuedToken { aud: aud.clone(), jti: claims.jti.clone() });
        let token =
            minter.mint(&claims).map_err(|e| Error::Credentials(format!("failed to sign token: {e}")))?;
        data.insert(secret_key, token);
    }
    let mut serial = None;
    if want.x509 {
        let ttl_signed = SignedDuration::from_secs(ttl.as_secs() as i64);
        let svid = issuer
            .ca
            .issue_svid(&spiffe_id, ttl_signed, issued_at)
            .map_err(|e| Error::Credentials(format!("failed to issue X.509-SVID: {e}")))?;
        serial = Some(svid.serial_hex.clone());
        data.insert(SVID_PEM.into(), svid.chain_pem.clone());
        data.insert(SVID_KEY_PEM.into(), svid.key_pem.clone());
    }
    data.insert(BUNDLE_PEM.into(), issuer.ca.bundle_pem());

    let jtis = tokens.iter().map(|t| t.jti.as_str()).collect::<Vec<_>>().join(",");
    let tokens_json = serde_json::to_string(&tokens)
        .map_err(|e| Error::Credentials(format!("failed to encode token IDs: {e}")))?;
    let mut entry =
        Entry::new(ACTOR, a::CREDENTIAL_ISSUE, object_ref(agent), Outcome::Pending, reason.as_str())
            .with_detail("spiffeID", spiffe_id.to_string())
            .with_detail(a::DETAIL_AUDIENCES, want.audiences.join(","))
            .with_detail(a::DETAIL_TOKENS, tokens_json)
            .with_detail(a::DETAIL_X509, want.x509.to_string())
            .with_detail(a::DETAIL_TTL_SECONDS, ttl.as_secs().to_string())
            .with_detail(a::DETAIL_KEY_ID, key.kid())
            .with_detail(a::DETAIL_ISSUED_AT, issued_at.to_string())
            .with_detail(a::DETAIL_EXPIRES_AT, expires_at.to_string())
            .with_detail(a::DETAIL_FINGERPRINT, want.fingerprint());
    if !jtis.is_empty() {
        entry = entry.with_detail(a::DETAIL_JTI, jtis.clone());
    }
    if let Some(s) = &serial {
        entry = entry.with_detail(a::DETAIL_X509_SERIAL, s.clone());
    }
    if reason.supersedes() {
        entry = entry.with_detail(a::DETAIL_SUPERSEDES, a::SUPERSEDES_ALL);
    }
    if let Some(why) = foreign {
        entry = entry.with_detail("secretFound", why);
    }
    match ctx.audit.intent(&issue_key, entry).await {
        Ok(IntentState::Fresh(_)) => {}
        // The key names what was recorded under it: never store other tokens under an existing key.
        Ok(IntentState::Pending(_) | IntentState::Completed(_)) => {
            return Err(Error::Credentials(format!("issuance {issue_key} is already recorded; retrying")));
        }
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

    // What the ledger now holds for this issuance is what the Secret says (the same facts, by construction).
    let facts = ctx
        .ledger
        .get(&uid)
        .and_then(|r| r.issuance(&issue_key).map(|i| IssuedFacts::from_issuance(&uid, i)))
        .ok_or_else(|| Error::Credentials(format!("issuance {issue_key} is missing from the ledger")))?;
    let version = write_secret(ctx, &ns, &name, &uid, &facts, data, existing).await?;
    crate::controller::failpoint(ctx.config.failpoint_delay_after_effect).await;

    let mut details = BTreeMap::new();
    if !jtis.is_empty() {
        details.insert(a::DETAIL_JTI.to_owned(), jtis);
    }
    if let Some(s) = serial {
        details.insert(a::DETAIL_X509_SERIAL.to_owned(), s);
    }
    ctx.audit
        .outcome(&issue_key, Outcome::Success, "credentials stored", details)
        .await
        .map_err(Error::AuditOutcome)?;
    let event = if reason == IssueReason::Initial { "CredentialsIssued" } else { "CredentialsRotated" };
    crate::metrics::global().credentials(if reason == IssueReason::Initial { "issued" } else { "rotated" });
    let note = format!(
        "{} token(s){} signed by key {}, valid until {expires_at} ({})",
        want.audiences.len(),
        if want.x509 { " and an X.509-SVID" } else { "" },
        key.kid(),
        reason.as_str()
    );
    info!(agent = %name, reason = reason.as_str(), key_id = key.kid(), %expires_at, "credentials issued");
    publish(ctx, agent, EventType::Normal, event, note).await;
    Ok((facts, version))
}

/// Replaces the Secret with exactly `data` and the recorded metadata, returning its new `resourceVersion`:
/// created if absent, replaced whole (optimistically, at the version read) if present, deleted and created
/// again if its type is not ours. A server-side apply would not do: it never removes keys it did not set, so
/// a key a tenant added before or after issuance would survive every write.
async fn write_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
    uid: &str,
    facts: &IssuedFacts,
    data: BTreeMap<String, String>,
    existing: Option<&Secret>,
) -> Result<Option<String>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = secret::secret_name(name);
    let what = || format!("Secret {ns}/{secret_name}");
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let replaceable = existing.filter(|e| !secret::needs_recreate(e));
    if let Some(e) = existing.filter(|e| secret::needs_recreate(e)) {
        delete_exact(&secrets, e).await?;
    }
    let desired = secret::desired(ns, name, uid, FIELD_MANAGER, facts, data, replaceable);
    let written = match replaceable {
        Some(_) => secrets.replace(&secret_name, &params, &desired).await,
        None => secrets.create(&params, &desired).await,
    };
    match written {
        Ok(s) => Ok(s.metadata.resource_version),
        // Someone changed or created it since the read: the next reconcile reads it again. The recorded
        // issuance is abandoned then, since the Secret does not hold it.
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict { what: what() }),
        Err(source) => Err(Error::Write { what: what(), source }),
    }
}

/// Deletes exactly the Secret that was read (by UID), tolerating that it is already gone.
async fn delete_exact(secrets: &Api<Secret>, secret: &Secret) -> Result<bool> {
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: secret.uid(), resource_version: None }),
        ..DeleteParams::default()
    };
    match secrets.delete(&secret.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Err(Error::Conflict { what: format!("Secret {}", secret.name_any()) })
        }
        Err(source) => Err(Error::Write { what: format!("Secret {}", secret.name_any()), source }),
    }
}

async fn withdraw(
    ctx: &Context,
    agent: &Agent,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    phase: AgentPhase,
) -> Result<()> {
    let Some(secret) = existing else { return Ok(()) };
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    // One withdrawal per Secret object: its UID tells them apart, whatever it holds.
    let key = IntentKey::CredentialWithdraw {
        uid: uid.to_owned(),
        secret_uid: secret.uid().unwrap_or_else(|| "unknown".into()),
    }
    .to_string();
    let entry = Entry::new(
        ACTOR,
        a::CREDENTIAL_WITHDRAW,
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
    delete_exact(secrets, secret).await?;
    if recorded {
        ctx.audit
            .outcome(&key, Outcome::Success, "credentials deleted", BTreeMap::new())
            .await
            .map_err(Error::AuditOutcome)?;
    }
    crate::metrics::global().credentials("withdrawn");
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

/// Deletes the agent's credentials Secret if it belongs to this agent (its owner reference names the
/// agent's UID); returns whether one was deleted. Used when the agent is archived.
pub async fn delete_secret(ctx: &Context, agent: &Agent) -> Result<bool> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let name = secret::secret_name(&agent.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(found) = secrets
        .get_opt(&name)
        .await
        .map_err(|source| Error::Read { what: format!("Secret {ns}/{name}"), source })?
    else {
        return Ok(false);
    };
    if !found.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(false);
    }
    delete_exact(&secrets, &found).await
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
    let api_ca = ctx.api_ca.load_full();
    if last.as_ref().is_some_and(|(seq, ca, at)| {
        *seq == issuer.sequence && *ca == api_ca && at.elapsed() < BUNDLE_REAPPLY
    }) {
        return Ok(());
    }
    let spiffe = issuer
        .spiffe_bundle()
        .map_err(|e| Error::Credentials(format!("failed to build the trust bundle: {e}")))?;
    let mut data = serde_json::Map::new();
    data.insert(TRUST_BUNDLE_PEM.into(), json!(issuer.ca.bundle_pem()));
    data.insert(TRUST_BUNDLE_SPIFFE.into(), json!(spiffe.to_string()));
    if let Some(ca) = &api_ca {
        data.insert(API_CA_PEM.into(), json!(ca.as_str()));
    }
    let patch = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": TRUST_BUNDLE_CONFIGMAP, "namespace": namespace,
            "labels": {secret::MANAGED_BY_LABEL: ACTOR},
            "annotations": {"agentiam.dev/bundle-sequence": issuer.sequence.to_string()},
        },
        "data": data,
    });
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(TRUST_BUNDLE_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Write {
            what: format!("ConfigMap {namespace}/{TRUST_BUNDLE_CONFIGMAP}"),
            source,
        })?;
    *last = Some((issuer.sequence, api_ca, std::time::Instant::now()));
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
    fn a_trust_penalty_shortens_the_lifetime_of_new_credentials() {
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "a", "namespace": "n"},
            "spec": {"owner": {"kind": "User", "name": "u"}, "purpose": "p", "environment": "Sandbox",
                "provenance": {"builder": "b", "model": "m", "modelProvider": "x", "version": "1",
                    "image": "r/i@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                    "sourceRepository": "https://example.com/r"},
                "credentials": {"audiences": ["crm"], "ttl": "40m"}}}))
        .unwrap();
        let score = trust_score(&agent.spec).score;
        assert!(score >= 400, "a well-known agent: {score}");
        let full = desired(&agent, &[], 0).ttl;
        assert_eq!(full, Duration::from_secs(40 * 60));
        // An alert (100 points) may not cross a threshold; a suspension's 300 and more do.
        assert_eq!(desired(&agent, &[], score - 399).ttl, full / 2, "below 400: half");
        assert_eq!(desired(&agent, &[], score - 199).ttl, full / 4, "below 200: a quarter");
        assert_eq!(desired(&agent, &[], u16::MAX).ttl, full / 4, "never below the floor of the table");
    }

    #[test]
    fn known_credentials_serve_only_the_objects_our_own_writes_produced() {
        let known = KnownCredentials::default();
        known.remember("u1", vec!["10".into(), "11".into()], summary("t1"), facts("a"), None);
        // The echo of the phase write, then the one of the credentials write: both are ours.
        assert_eq!(known.recall("u1", Some("10")).map(|k| k.facts), Some(facts("a")));
        assert_eq!(known.recall("u1", Some("11")).map(|k| k.summary), Some(summary("t1")));
        assert!(known.recall("u1", Some("11")).is_some(), "a second echo of the same write");
        // Another incarnation of the name has another UID.
        assert!(known.recall("u2", Some("11")).is_none());

        // Someone else changed the Agent (or the watch went past our writes): the entry is gone for good.
        assert!(known.recall("u1", Some("12")).is_none());
        assert!(known.recall("u1", Some("11")).is_none());
        known.remember("u1", vec!["13".into()], summary("t2"), facts("b"), None);
        assert!(known.recall("u1", None).is_none());
        assert!(known.recall("u1", Some("13")).is_none());

        known.remember("u1", vec!["14".into()], summary("t3"), facts("c"), None);
        known.forget("u1");
        assert!(known.recall("u1", Some("14")).is_none());
    }

    #[test]
    fn a_secret_changed_by_anyone_else_is_read_again() {
        let known = KnownCredentials::default();
        known.remember("u1", vec!["10".into()], summary("t1"), facts("a"), Some("s5".into()));
        assert!(known.recall("u1", Some("10")).is_some(), "before the watch reports anything");
        known.secret_changed("u1", Some("s5"));
        assert!(known.recall("u1", Some("10")).is_some(), "the echo of our own Secret write");
        known.secret_changed("u1", Some("s6"));
        assert!(known.recall("u1", Some("10")).is_none(), "someone else's write");
        // Even when our reconcile remembers its read after the foreign write was reported.
        known.remember("u1", vec!["11".into()], summary("t1"), facts("a"), Some("s5".into()));
        assert!(known.recall("u1", Some("11")).is_none(), "a write reported after our read");
        known.remember("u1", vec!["12".into()], summary("t1"), facts("a"), Some("s7".into()));
        known.secret_changed("u1", None);
        assert!(known.recall("u1", Some("12")).is_none(), "a deletion (or a Secret leaving the watch)");
    }

    #[test]
    fn known_credentials_expire() {
        let known = KnownCredentials::default();
        known.remember("u1", vec!["10".into()], summary("t1"), facts("a"), None);
        if let Ok(mut m) = known.0.lock()
            && let Some(k) = m.get_mut("u1")
        {
            k.at = Instant::now().checked_sub(KNOWN_FOR).unwrap();
        }
        assert!(known.recall("u1", Some("10")).is_none());
    }
}
