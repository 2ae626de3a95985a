//! Delegated tokens: the step of the Delegation controller that gives an Active Delegation's grantee its
//! token, rotates it at 80% of its lifetime, and takes it away when the Delegation leaves Active.
//!
//! Every grantee has one Secret, `<agent>-delegations`, owned by its Agent (by UID) and mounted by the pod
//! webhook beside the identity credentials (optional, so a pod starts before any delegation exists, and
//! the kubelet brings new tokens into running pods). Each Delegation writes only its own key,
//! `delegation-<name>`, with a replace at the `resourceVersion` it read, so two Delegations of one agent
//! never overwrite each other (a conflict is retried by the controller).
//!
//! Minting is a grant, written ahead like credentials: the intent records the token's `jti`, audience,
//! times and key before the Secret is written, so whatever reaches a pod is in the log, and the decision
//! API accepts only tokens the ledger holds for a Delegation it last recorded Active. An intent left open
//! by a crash is closed against the Secret on the next reconcile: the issuance happened iff the Secret
//! holds exactly that token.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::api::{Delegation, DelegationPhase};
use crate::audit::{Entry, IntentKey, IntentState, Outcome};
use crate::controller::{ACTOR, Context, Error, FIELD_MANAGER, Result, report};
use crate::identity::SpiffeId;
use crate::identity::delegated::{DelegatedClaims, Grant};
use crate::identity::jwt::{MAX_TTL, Minter};
use crate::names::{AGENT_LABEL, MANAGED_BY_LABEL, delegation_token_key, delegations_secret};
use crate::registry::actions as a;
use crate::registry::credentials::refresh_at;
use crate::registry::delegation::Decision;
use crate::registry::ledger::{DelegatedIssuance, Stored};
use crate::registry::secret::owner_reference;

/// The annotation naming the Agent UID a delegated-tokens Secret belongs to.
const ANNOTATION_AGENT_UID: &str = crate::registry::credentials::ANNOTATION_UID;
/// Longest Secret key Kubernetes accepts.
const MAX_KEY_LEN: usize = 253;
/// A token shorter-lived than this is not minted: the chain ends first.
const MIN_TTL: Duration = Duration::from_secs(1);

/// Where a Delegation's token is, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    /// The Secret's name.
    pub secret_name: String,
    /// The key in it.
    pub key: String,
    /// When the token in it expires.
    pub expires_at: Timestamp,
    /// When to look again (rotation).
    pub recheck_at: Timestamp,
}

/// The grantee Agent of the Delegation.
#[derive(Debug, Clone, Copy)]
pub struct Grantee<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its UID.
    pub uid: &'a str,
}

/// What to do with a Delegation's token, decided from what the Secret holds. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing is there and nothing should be.
    Nothing,
    /// The Secret holds the latest recorded token: keep it until `recheck_at`.
    Keep {
        /// When it is due for rotation.
        recheck_at: Timestamp,
    },
    /// Mint a token (initial, rotation, or the Secret does not hold the recorded one).
    Issue(&'static str),
    /// The key must go: the Delegation is not Active.
    Withdraw,
    /// Active, but the chain ends too soon for another token: look again at its end.
    WaitForEnd,
}

/// Decides about the token of a Delegation in `phase` ending at `end`. `found_jti` is the `jti` of the
/// token the Secret holds, if it verified with the published keys; `latest` the newest issuance the ledger
/// holds for the Delegation.
pub fn plan(
    phase: DelegationPhase,
    end: Option<Timestamp>,
    present: bool,
    found_jti: Option<&str>,
    latest: Option<&DelegatedIssuance>,
    now: Timestamp,
) -> Plan {
    if phase != DelegationPhase::Active {
        return if present { Plan::Withdraw } else { Plan::Nothing };
    }
    let Some(end) = end else { return Plan::WaitForEnd };
    let fresh_possible = end.duration_since(now) >= SignedDuration::try_from(MIN_TTL).unwrap_or_default();
    let Some(latest) = latest else {
        return if fresh_possible { Plan::Issue("initial issuance") } else { Plan::WaitForEnd };
    };
    let ttl = Duration::try_from(latest.expires_at.duration_since(latest.issued_at)).unwrap_or_default();
    let refresh = refresh_at(latest.issued_at, ttl);
    let holds_latest = present && found_jti == Some(latest.jti.as_str());
    if holds_latest && (now < refresh || latest.expires_at >= end) {
        // A token that already runs to the chain's end is never rotated: the next would end there too.
        return Plan::Keep { recheck_at: if latest.expires_at >= end { end } else { refresh } };
    }
    if !fresh_possible {
        return Plan::WaitForEnd;
    }
    if holds_latest {
        Plan::Issue("rotation at 80% of the lifetime")
    } else if found_jti.is_some() || present {
        Plan::Issue("the Secret does not hold the recorded token")
    } else {
        Plan::Issue("the token is missing from the Secret")
    }
}

/// The lifetime of a token minted at `now` under a chain ending at `end`: at most an hour, never past the end.
pub fn ttl(now: Timestamp, end: Timestamp) -> Duration {
    let left = Duration::try_from(end.duration_since(now)).unwrap_or_default();
    Duration::from_secs(left.min(MAX_TTL).as_secs())
}

/// Brings the token of `d` (decided as `decision`) to what it should be. Returns where it is, when Active.
pub async fn reconcile(
    ctx: &Context,
    d: &Delegation,
    uid: &str,
    decision: &Decision,
    grantee: Option<Grantee<'_>>,
) -> Result<Option<TokenState>> {
    let ns = d.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = d.name_any();
    let agent = &d.spec.agent_ref.name;
    let secret_name = delegations_secret(agent);
    let key = delegation_token_key(&name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(|source| Error::Read { what: format!("Secret {ns}/{secret_name}"), source })?;
    // A Secret of another incarnation of the agent's name is not this agent's: none of its tokens count.
    let bound = |s: &Secret, agent_uid: &str| {
        s.metadata.owner_references.as_deref().is_some_and(|o| o.iter().any(|r| r.uid == agent_uid))
    };
    let issuer = ctx.issuer.borrow().clone();
    let verifier = issuer
        .verifier()
        .map_err(|e| Error::Credentials(format!("cannot verify with the published keys: {e}")))?;
    let held = existing.as_ref().and_then(|s| s.data.as_ref()?.get(&key)).map(|v| v.0.clone());
    let found_jti = held
        .as_ref()
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| verifier.verify_delegated(t, Timestamp::now()).ok())
        .filter(|v| v.delegation_uid == uid)
        .map(|v| v.jti);
    resolve_open(ctx, uid, found_jti.as_deref()).await?;

    let phase = decision.phase;
    let present = held.is_some();
    let latest = ctx.ledger.delegated_tokens(uid).into_iter().rfind(|i| i.stored == Stored::Yes);
    let now = Timestamp::now();
    // Never write into a Secret some other Agent of the same name owns (it is garbage-collected with it).
    let foreign = existing.as_ref().is_some_and(|s| grantee.is_none_or(|g| !bound(s, g.uid)));
    let decided = plan(phase, decision.expires_at, present, found_jti.as_deref(), latest.as_ref(), now);
    tracing::debug!(delegation = %name, ?decided, "delegated token checked");
    let state = |i: &DelegatedIssuance, recheck_at| TokenState {
        secret_name: secret_name.clone(),
        key: key.clone(),
        expires_at: i.expires_at,
        recheck_at,
    };
    match decided {
        Plan::Nothing | Plan::WaitForEnd => Ok(None),
        Plan::Keep { recheck_at } => Ok(latest.as_ref().map(|i| state(i, recheck_at))),
        Plan::Withdraw => {
            if let Some(s) = existing.filter(|_| !foreign) {
                write_key(&secrets, s, &key, None).await?;
                let note = format!(
                    "delegated token withdrawn from Secret {secret_name}: the Delegation is {}",
                    phase.as_str()
                );
                report::event(ctx, d, EventType::Normal, "DelegatedTokenWithdrawn", note).await;
            }
            Ok(None)
        }
        Plan::Issue(reason) => {
            let Some(grantee) = grantee.filter(|_| !foreign) else {
                return Err(Error::Credentials(format!(
                    "Secret {ns}/{secret_name} belongs to another Agent named {agent:?}; not writing into it"
                )));
            };
            if key.len() > MAX_KEY_LEN {
                return Err(Error::Credentials(format!(
                    "the Delegation's name is too long for a Secret key ({key:?} is over {MAX_KEY_LEN} bytes)"
                )));
            }
            let issued = issue(ctx, d, uid, decision, grantee, reason, &issuer, now).await?;
            let (token, issuance) = issued;
            let base = existing.unwrap_or_else(|| new_secret(&ns, &secret_name, grantee));
            if let Err(e) = write_key(&secrets, base, &key, Some(token)).await {
                let why = format!("the token was not stored: {e}");
                ctx.audit
                    .outcome(&issuance.key, Outcome::Failure, why, BTreeMap::new())
                    .await
                    .map_err(Error::AuditOutcome)?;
                return Err(e);
            }
            crate::controller::failpoint(ctx.config.failpoint_delay_after_effect).await;
            let mut details = BTreeMap::new();
            details.insert(a::DETAIL_JTI.to_owned(), issuance.jti.clone());
            ctx.audit
                .outcome(&issuance.key, Outcome::Success, "delegated token stored", details)
                .await
                .map_err(Error::AuditOutcome)?;
            let event =
                if reason == "initial issuance" { "DelegatedTokenIssued" } else { "DelegatedTokenRotated" };
            let note = format!(
                "token for audience {:?} in Secret {secret_name} key {key}, valid until {} ({reason})",
                issuance.aud, issuance.expires_at
            );
            report::event(ctx, d, EventType::Normal, event, note).await;
            let ttl = Duration::try_from(issuance.expires_at.duration_since(issuance.issued_at))
                .unwrap_or_default();
            let recheck = refresh_at(issuance.issued_at, ttl);
            Ok(Some(state(&issuance, recheck)))
        }
    }
}

/// Closes this Delegation's issuance intents that a crash left open: stored iff the Secret holds that token.
async fn resolve_open(ctx: &Context, uid: &str, found_jti: Option<&str>) -> Result<()> {
    let open = ctx.audit.open_intents_matching(|i| {
        i.object.uid.as_deref() == Some(uid) && i.action == crate::audit::Action::DelegationIssue.as_str()
    });
    for intent in open {
        let Some(key) = intent.key.as_deref() else { continue };
        let jti = intent.details.get(a::DETAIL_JTI).map(String::as_str);
        let mut details: BTreeMap<String, String> =
            [("resolvedBy".to_owned(), "intent-recovery".to_owned())].into();
        if let Some(j) = jti {
            details.insert(a::DETAIL_JTI.to_owned(), j.to_owned());
        }
        let (outcome, reason) = if jti.is_some() && jti == found_jti {
            (Outcome::Success, "confirmed after an interruption: the Secret holds exactly this token")
        } else {
            (Outcome::Abandoned, "the token never reached the Secret; it is refused")
        };
        ctx.audit.outcome(key, outcome, reason, details).await.map_err(Error::AuditOutcome)?;
    }
    Ok(())
}

/// Mints the token and records it (intent) before anything is stored.
#[allow(clippy::too_many_arguments)]
async fn issue(
    ctx: &Context,
    d: &Delegation,
    uid: &str,
    decision: &Decision,
    grantee: Grantee<'_>,
    reason: &str,
    issuer: &crate::identity::issuer::Issuer,
    now: Timestamp,
) -> Result<(String, DelegatedIssuance)> {
    let ns = d.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let fail = |why: String| Error::Credentials(why);
    let end = decision.expires_at.ok_or_else(|| fail("the chain has no end".into()))?;
    let audience = decision.audience.as_deref().ok_or_else(|| fail("the chain has no audience".into()))?;
    let grantor = decision.grantor.as_ref().ok_or_else(|| fail("the chain has no grantor".into()))?;
    let links: Vec<_> = decision.chain.iter().filter(|l| l.kind == "Agent").collect();
    let agents = links
        .iter()
        .map(|l| SpiffeId::for_agent(&issuer.trust_domain, &ns, &l.name))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("an agent of the chain has no valid SPIFFE ID: {e}")))?;
    let chain: Vec<String> = links.iter().map(|l| l.delegation_uid.clone().unwrap_or_default()).collect();
    if chain.last().map(String::as_str) != Some(uid)
        || links.last().and_then(|l| l.uid.as_deref()) != Some(grantee.uid)
    {
        return Err(fail("the chain does not end at this Delegation and its grantee".into()));
    }
    // `spec.mayAct`, bound to the UID the named Agent has now (fresh from the API server): a later
    // Agent of the same name is not the one the grantor named.
    let may_act = match &d.spec.may_act {
        None => None,
        Some(m) if m.name == grantee.name => {
            return Err(fail(
                "spec.mayAct names the grantee itself: name another agent, or leave it out".into(),
            ));
        }
        Some(m) => {
            let agents_api: Api<crate::api::Agent> = Api::namespaced(ctx.client.clone(), &ns);
            let agent = agents_api
                .get_opt(&m.name)
                .await
                .map_err(|source| Error::Read { what: format!("Agent {ns}/{}", m.name), source })?
                .ok_or_else(|| {
                    fail(format!(
                        "spec.mayAct names agent {:?}, which does not exist: no token until it does",
                        m.name
                    ))
                })?;
            let uid = agent.metadata.uid.ok_or(Error::MissingObjectKey("uid"))?;
            let id = SpiffeId::for_agent(&issuer.trust_domain, &ns, &m.name)
                .map_err(|e| fail(format!("spec.mayAct names an agent with no valid SPIFFE ID: {e}")))?;
            Some((id, uid))
        }
    };
    let issued_at = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let lifetime = ttl(issued_at, end);
    let grant = Grant {
        issuer: &issuer.issuer_url,
        grantor: &grantor.username,
        audience,
        agents: &agents,
        agent_uid: grantee.uid,
        delegation: &d.name_any(),
        chain: &chain,
        scopes: &d.spec.scopes,
        may_act: may_act.as_ref().map(|(id, uid)| (id, uid.as_str())),
    };
    let claims = DelegatedClaims::new(grant, issued_at, lifetime)
        .map_err(|e| fail(format!("failed to build claims: {e}")))?;
    let key = issuer.keys.current();
    let token = Minter::new(std::sync::Arc::clone(key))
        .mint(&claims)
        .map_err(|e| fail(format!("failed to sign: {e}")))?;
    let expires_at = Timestamp::from_second(claims.exp).map_err(|e| fail(format!("bad expiry: {e}")))?;
    let intent_key =
        IntentKey::DelegationIssue { uid: uid.to_owned(), issued_at_ms: now.as_millisecond() }.to_string();
    let object = crate::audit::ObjectRef {
        api_version: <Delegation as kube::Resource>::api_version(&()).into_owned(),
        kind: <Delegation as kube::Resource>::kind(&()).into_owned(),
        namespace: Some(ns.clone()),
        name: d.name_any(),
        uid: Some(uid.to_owned()),
    };
    let entry = Entry::new(ACTOR, crate::audit::Action::DelegationIssue, object, Outcome::Pending, reason)
        .with_detail(a::DETAIL_JTI, claims.jti.clone())
        .with_detail(a::DETAIL_AUDIENCES, audience)
        .with_detail(a::DETAIL_ISSUED_AT, issued_at.to_string())
        .with_detail(a::DETAIL_EXPIRES_AT, expires_at.to_string())
        .with_detail(a::DETAIL_TTL_SECONDS, lifetime.as_secs().to_string())
        .with_detail(a::DETAIL_KEY_ID, key.kid())
        .with_detail("grantor", grantor.username.clone())
        .with_detail("agent", grantee.name)
        .with_detail("scope", claims.scope.clone());
    match ctx.audit.intent(&intent_key, entry).await {
        Ok(IntentState::Fresh(_)) => {}
        Ok(IntentState::Pending(_) | IntentState::Completed(_)) => {
            return Err(fail(format!("issuance {intent_key} is already recorded; retrying")));
        }
        Err(e) => {
            let note = format!("delegated token refused: {e}");
            report::event(ctx, d, EventType::Warning, "AuditWriteFailed", note).await;
            return Err(Error::AuditIntent(e));
        }
    }
    let issuance = DelegatedIssuance {
        key: intent_key,
        jti: claims.jti,
        aud: audience.to_owned(),
        issued_at,
        expires_at,
        key_id: key.kid().to_owned(),
        stored: Stored::Pending,
    };
    Ok((token, issuance))
}

fn new_secret(ns: &str, name: &str, grantee: Grantee<'_>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(
                [
                    (AGENT_LABEL.to_owned(), grantee.name.to_owned()),
                    (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
                ]
                .into(),
            ),
            annotations: Some([(ANNOTATION_AGENT_UID.to_owned(), grantee.uid.to_owned())].into()),
            owner_references: Some(vec![owner_reference(grantee.name, grantee.uid)]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// Sets (`Some`) or removes (`None`) one key of the Secret, replacing it at the version read (created when
/// it has none), so a concurrent writer's change is never lost: the conflict fails this reconcile, which
/// is retried on the fresh Secret.
async fn write_key(
    secrets: &Api<Secret>,
    mut secret: Secret,
    key: &str,
    token: Option<String>,
) -> Result<()> {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    match token {
        Some(t) => {
            data.insert(key.to_owned(), ByteString(t.into_bytes()));
        }
        None => {
            if data.remove(key).is_none() {
                return Ok(());
            }
        }
    }
    secret.string_data = None;
    let name = secret.name_any();
    let result = if secret.metadata.resource_version.is_some() {
        secrets.replace(&name, &PostParams::default(), &secret).await
    } else {
        secrets.create(&PostParams::default(), &secret).await
    };
    result.map(|_| ()).map_err(|source| match &source {
        kube::Error::Api(s) if s.code == 409 => Error::Conflict { what: format!("Secret {name}") },
        _ => Error::Write { what: format!("Secret {name}"), source },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn issuance(jti: &str, from: &str, to: &str) -> DelegatedIssuance {
        DelegatedIssuance {
            key: format!("delegation.issue:u:{jti}"),
            jti: jti.into(),
            aud: "crm".into(),
            issued_at: t(from),
            expires_at: t(to),
            key_id: "k".into(),
            stored: Stored::Yes,
        }
    }

    #[test]
    fn tokens_are_issued_kept_rotated_at_80_percent_and_withdrawn() {
        let end = Some(t("2026-12-01T12:00:00Z"));
        let now = t("2026-12-01T10:00:00Z");
        let active = DelegationPhase::Active;
        assert_eq!(plan(active, end, false, None, None, now), Plan::Issue("initial issuance"));
        let i = issuance("j1", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z");
        assert_eq!(
            plan(active, end, true, Some("j1"), Some(&i), t("2026-12-01T10:47:00Z")),
            Plan::Keep { recheck_at: t("2026-12-01T10:48:00Z") }
        );
        assert_eq!(
            plan(active, end, true, Some("j1"), Some(&i), t("2026-12-01T10:48:00Z")),
            Plan::Issue("rotation at 80% of the lifetime")
        );
        // Someone put another (valid, older) token there, or emptied the key.
        assert!(matches!(plan(active, end, true, Some("j0"), Some(&i), now), Plan::Issue(_)));
        assert!(matches!(plan(active, end, true, None, Some(&i), now), Plan::Issue(_)));
        assert!(matches!(plan(active, end, false, None, Some(&i), now), Plan::Issue(_)));
        // A token that already runs to the chain's end is kept to the end; nothing is minted after it.
        let last = issuance("j2", "2026-12-01T11:30:00Z", "2026-12-01T12:00:00Z");
        assert_eq!(
            plan(active, end, true, Some("j2"), Some(&last), t("2026-12-01T11:59:00Z")),
            Plan::Keep { recheck_at: t("2026-12-01T12:00:00Z") }
        );
        assert_eq!(plan(active, end, false, None, None, t("2026-12-01T12:00:00Z")), Plan::WaitForEnd);
        for phase in [DelegationPhase::Revoked, DelegationPhase::Expired, DelegationPhase::Pending] {
            assert_eq!(plan(phase, end, true, Some("j1"), Some(&i), now), Plan::Withdraw);
            assert_eq!(plan(phase, end, false, None, Some(&i), now), Plan::Nothing);
        }
    }

    #[test]
    fn a_token_lives_at_most_an_hour_and_never_past_the_chain() {
        let now = t("2026-12-01T10:00:00Z");
        assert_eq!(ttl(now, t("2026-12-01T18:00:00Z")), MAX_TTL);
        assert_eq!(ttl(now, t("2026-12-01T10:20:00.5Z")), Duration::from_secs(1200));
        assert_eq!(ttl(now, t("2026-12-01T09:00:00Z")), Duration::ZERO);
    }
}
