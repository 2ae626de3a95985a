//! Token exchange (RFC 8693) for agent-to-agent handoff, at the token endpoint.
//!
//! Agent A (the client, authenticated like any client) hands the rights of its delegated token
//! (`subject_token`) to agent B (`actor_token`: B's JWT-SVID for the token endpoint), narrowed to `scope`,
//! for the same audience. In order, each step failing closed:
//! 1. the subject token is a delegated token (an identity or access token is `invalid_request`), held by
//!    the client (its acting agent and UID are the client's) or naming the client in `may_act` (RFC 8693
//!    §4.4, SPIFFE ID and UID), and live by the ledger (its whole chain in force);
//! 2. the actor: for the holder, `actor_token`, a live JWT-SVID of another agent of the same namespace for
//!    this endpoint, not already in the chain, and the agent `may_act` names when the token names one; for
//!    the agent `may_act` names, itself (an `actor_token`, if sent, must be its own);
//! 3. the handoff fits the leaf Delegation as admission would judge a child (scopes covered by what they
//!    match, the same audience, depth left, no later end), from the stores and the ledger;
//! 4. an intent `token.exchange` is durable before anything is written: it spends the subject token (as
//!    `subject:<jti>`), the actor token and the client assertion, so none of them works here again, also
//!    after a restart;
//! 5. the token service creates the child Delegation (parent: the leaf, grantee: B, annotated
//!    [`crate::names::EXCHANGE_ANNOTATION`]), which the webhook admits from the operator only, so the
//!    handoff is an object `kubectl get delegations --tree` shows, with its admission record;
//! 6. the Delegation controller checks the child's whole chain from fresh API state and mints its
//!    delegated token (the nested `act` chain); the exchange answers with that token once the ledger holds
//!    it live. A chain that ends meanwhile (a Revocation, an expiry) means no token: the child is deleted
//!    and the answer is `invalid_grant`.
//!
//! The outcome is recorded after. An exchange a stop interrupted is closed `abandoned` at the next start;
//! its child Delegation, if it was created, stays and is judged like any other.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef as StoreRef;

use super::{Client, Issued, TokenService};
use crate::api::{Delegation, DelegationPhase, DelegationSpec, LocalRef};
use crate::audit::{Action, IntentKey, Outcome};
use crate::authz::scope::{self, Scope};
use crate::identity::cache::Either;
use crate::identity::jwt::CLAIM_UID;
use crate::identity::verify::MAX_LEEWAY;
use crate::oauth::request::{TOKEN_TYPE_JWT, TokenExchange};
use crate::oauth::{ErrorCode, OAuthError};
use crate::registry::actions as a;
use crate::registry::ledger::{DelegatedStanding, TokenStanding};
use crate::webhook::validate::ParentFacts;

/// How long a handoff lasts at most (and never beyond its parent's chain).
pub const HANDOFF_LIFETIME: Duration = Duration::from_secs(3600);
/// How long the exchange waits for the Delegation controller to make the child's token.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(15);
/// How often the exchange looks for the child's token when no Delegation record woke it.
const HANDOFF_POLL: Duration = Duration::from_millis(250);

fn grant(why: impl AsRef<str>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidGrant, why)
}

fn unavailable(why: impl AsRef<str>) -> OAuthError {
    OAuthError::new(ErrorCode::TemporarilyUnavailable, why)
}

/// What the checks established, for the write steps.
struct Handoff {
    namespace: String,
    parent: String,
    parent_uid: String,
    actor: String,
    actor_uid: String,
    scopes: Vec<Scope>,
    audience: String,
    expires_at: Timestamp,
    task: String,
}

impl TokenService {
    /// Answers a token exchange (see the module documentation).
    pub(super) async fn exchange(
        &self,
        req: &TokenExchange,
        peer: Option<&[Vec<u8>]>,
        client: &mut Client,
        now: Timestamp,
    ) -> Result<Issued, OAuthError> {
        let (caller, _) = self.authenticate(&req.auth, peer, client, now)?;
        let caller_uid = client.uid.clone().unwrap_or_default();
        let verifiers =
            self.verifiers.get().ok_or_else(|| unavailable("no usable signing keys are published"))?;
        // 1. The subject token.
        let subject = match verifiers.verifier.verify_either(&req.subject_token, now) {
            Ok(Either::Delegated(v)) => v,
            Ok(Either::Identity(_)) => {
                return Err(OAuthError::request(
                    "subject_token is an identity token (JWT-SVID): a handoff passes on a delegated token, the \
                     rights a human granted",
                ));
            }
            Ok(Either::Access(_)) => {
                return Err(OAuthError::request(
                    "subject_token is an access token: a handoff passes on a delegated token",
                ));
            }
            Err(e) => return Err(grant(format!("subject_token is not a valid token of this issuer: {e}"))),
        };
        let holds = subject.agents.first() == Some(&caller) && subject.agent_uid == caller_uid;
        let named = subject.may_act.as_ref().is_some_and(|(id, uid)| *id == caller && *uid == caller_uid);
        if !holds && !named {
            return Err(grant(
                "the subject token is another agent's: only its holder, or the agent its may_act names, may \
                 exchange it",
            ));
        }
        let Some(holder) = subject.agents.first().cloned() else {
            return Err(grant("the subject token names no agent"));
        };
        if self.ledger.delegated_standing(&subject.chain, &subject.jti, &subject.audience, now)
            != DelegatedStanding::Live
        {
            return Err(grant(
                "the subject token's delegation chain is not in force, or the token was taken back",
            ));
        }
        // 2. The actor: the agent named by actor_token, or the client itself.
        let actor_token = match &req.actor_token {
            Some(t) => {
                let actor = verifiers
                    .verifier
                    .verify_any_audience(t, now)
                    .map_err(|e| grant(format!("actor_token is not a valid JWT-SVID: {e}")))?;
                if actor.audience != self.endpoint {
                    return Err(grant(format!(
                        "actor_token is for audience {}, not this token endpoint ({})",
                        actor.audience, self.endpoint
                    )));
                }
                let uid = actor.extra.get(CLAIM_UID).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                let live = self
                    .ledger
                    .get(&uid)
                    .is_some_and(|r| r.token(&actor.jti, &actor.audience, now) == TokenStanding::Live);
                if !live {
                    return Err(grant("actor_token is not one of the agent's current credentials"));
                }
                Some((actor, uid))
            }
            None if holds => {
                return Err(OAuthError::request(
                    "actor_token is required: the JWT-SVID (audience: the token endpoint) of the agent the \
                     holder hands its rights to",
                ));
            }
            None => None,
        };
        let (actor_id, actor_uid) = match &actor_token {
            Some((a, uid)) => (a.spiffe_id.clone(), uid.clone()),
            None => (caller.clone(), caller_uid.clone()),
        };
        if !holds && (actor_id != caller || actor_uid != caller_uid) {
            return Err(grant(
                "the agent the subject token's may_act names takes the rights over itself: an actor_token, if \
                 sent, must be its own",
            ));
        }
        if let Some((id, uid)) = &subject.may_act
            && (actor_id != *id || actor_uid != *uid)
        {
            return Err(grant(format!(
                "the subject token's may_act names {id}: its rights may be handed to that agent only"
            )));
        }
        let (namespace, actor_name) = actor_id
            .agent_in(&self.trust_domain)
            .map_err(|_| grant("actor_token's subject is not an agent"))?;
        let (holder_ns, _) =
            holder.agent_in(&self.trust_domain).map_err(|_| grant("the client is not an agent"))?;
        if namespace != holder_ns {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "the actor is in another namespace: a delegation is passed on within its namespace",
            ));
        }
        if subject.agents.contains(&actor_id) {
            return Err(grant("the actor is already in the subject token's chain: a handoff never loops"));
        }
        // 3. The handoff's bounds.
        if let Some(aud) = &req.audience
            && *aud != subject.audience
        {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                format!(
                    "the subject token is for {:?}: a delegation never moves to another audience",
                    subject.audience
                ),
            ));
        }
        let scopes = req.scopes.clone().unwrap_or_else(|| subject.scopes.clone());
        let wider = scope::uncovered(&subject.scopes, &scopes);
        if !wider.is_empty() {
            let names: Vec<&str> = wider.iter().map(|s| s.as_str()).collect();
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                format!("scopes {names:?} are not covered by the subject token's: a handoff only narrows"),
            ));
        }
        let Some(handoff) = &self.handoff else {
            return Err(unavailable("token exchange needs the operator's API client"));
        };
        let agents = crate::webhook::server::Agents {
            store: self.agents.clone(),
            ledger: std::sync::Arc::clone(&self.ledger),
            trust_domain: self.trust_domain.clone(),
        };
        let lifetime =
            jiff::SignedDuration::try_from(HANDOFF_LIFETIME).unwrap_or(jiff::SignedDuration::from_hours(1));
        let bounds = match handoff.delegations.parent(&agents, namespace, &subject.delegation, now) {
            ParentFacts::Active { bounds, .. } => bounds,
            ParentFacts::Missing(name) => {
                return Err(grant(format!("the subject token's Delegation {name:?} is gone")));
            }
            ParentFacts::NotActive { why, .. } => {
                return Err(grant(format!("the subject token's Delegation is not in force: {why}")));
            }
        };
        let parent_uid = handoff
            .delegations
            .store
            .get(&StoreRef::new(&subject.delegation).within(namespace))
            .and_then(|d| d.metadata.uid.clone());
        if parent_uid.as_deref() != Some(subject.delegation_uid.as_str()) {
            return Err(grant("the subject token's Delegation was replaced"));
        }
        let expires_at = now.checked_add(lifetime).unwrap_or(bounds.expires_at).min(bounds.expires_at);
        crate::registry::delegation::check_child(&bounds, &scopes, expires_at, None, Some(&subject.audience))
            .map_err(|e| grant(format!("the handoff would hold more than its parent: {e}")))?;
        let task =
            req.task.clone().unwrap_or_else(|| format!("handoff from agent {holder} by token exchange"));
        let plan = Handoff {
            namespace: namespace.to_owned(),
            parent: subject.delegation.clone(),
            parent_uid: subject.delegation_uid.clone(),
            actor: actor_name.to_owned(),
            actor_uid,
            scopes,
            audience: subject.audience.clone(),
            expires_at,
            task,
        };
        // 4. Spend the subject and actor tokens (and, already, the assertion), durably.
        let leeway =
            jiff::SignedDuration::try_from(MAX_LEEWAY).unwrap_or(jiff::SignedDuration::from_secs(30));
        let until = |t: Timestamp| t.checked_add(leeway).unwrap_or(Timestamp::MAX);
        let subject_key = format!("subject:{}", subject.jti);
        let actor_key = actor_token.as_ref().map(|(a, _)| a.jti.clone());
        let spent: Vec<String> = std::iter::once(subject_key.clone()).chain(actor_key).collect();
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for key in &spent {
                if self.ledger.assertion_used(key, now) || in_flight.contains(key) {
                    return Err(grant(if key == &subject_key {
                        "the subject token was exchanged before: each is handed on once"
                    } else {
                        "the actor token was used before: each authenticates one request"
                    }));
                }
            }
            in_flight.extend(spent.iter().cloned());
        }
        client.in_flight.extend(spent);
        let id =
            crate::identity::jwt::new_jti().map_err(|e| unavailable(format!("cannot draw an id: {e}")))?;
        let key = IntentKey::TokenExchange { id: id.clone() }.to_string();
        let child = child_name(&plan.parent, &id);
        let scope_text = plan.scopes.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ");
        let why = if holds {
            "token exchange: a handoff to another agent"
        } else {
            "token exchange: the agent the subject token's may_act names takes its rights over"
        };
        let mut entry = self
            .entry(client, Action::TokenExchange, Outcome::Pending, why)
            .with_detail(a::DETAIL_SUBJECT_JTI, subject_key)
            .with_detail(a::DETAIL_SUBJECT_EXPIRES_AT, until(subject.expires_at).to_string());
        if let Some((actor, _)) = &actor_token {
            entry = entry
                .with_detail(a::DETAIL_ACTOR_JTI, actor.jti.clone())
                .with_detail(a::DETAIL_ACTOR_EXPIRES_AT, until(actor.expires_at).to_string());
        }
        let entry = entry
            .with_detail(a::DETAIL_PARENT_UID, plan.parent_uid.clone())
            .with_detail("actor", actor_id.to_string())
            .with_detail("delegation", child.clone())
            .with_detail(a::DETAIL_SCOPE, scope_text.clone())
            .with_detail(a::DETAIL_AUDIENCES, plan.audience.clone())
            .with_detail(a::DETAIL_EXPIRES_AT, plan.expires_at.to_string());
        self.audit.intent(&key, entry).await.map_err(|e| {
            tracing::error!(error = %e, "cannot record a token exchange; refusing");
            unavailable("the audit log is unavailable, so nothing is exchanged")
        })?;
        if !self.exchange_delay.is_zero() {
            tokio::time::sleep(self.exchange_delay).await;
        }
        // 5 and 6.
        let result = self.hand_off(&plan, &child, &key).await;
        let (outcome, why) = match &result {
            Ok((uid, _, _)) => (
                Outcome::Success,
                format!("child Delegation {child} ({uid}) is in force and its token answered"),
            ),
            Err(e) => (Outcome::Failure, e.description.clone()),
        };
        if let Err(e) = self.audit.outcome(&key, outcome, why, Default::default()).await {
            tracing::error!(error = %e, "cannot record a token exchange's outcome; refusing");
            self.delete_child(&plan.namespace, &child).await;
            return Err(unavailable("the audit log is unavailable, so nothing is exchanged"));
        }
        let (_, token, expires_at) = result?;
        let expires_in = u64::try_from(expires_at.as_second() - now.as_second()).unwrap_or(0);
        Ok(Issued {
            access_token: token,
            expires_in,
            scope: scope_text,
            issued_token_type: Some(TOKEN_TYPE_JWT),
        })
    }

    /// Creates the child Delegation and waits for its token; deletes the child when no token comes.
    async fn hand_off(
        &self,
        plan: &Handoff,
        child: &str,
        key: &str,
    ) -> Result<(String, String, Timestamp), OAuthError> {
        let Some(client) = self.client.clone() else { return Err(unavailable("no API client")) };
        let delegation = Delegation {
            metadata: ObjectMeta {
                name: Some(child.to_owned()),
                namespace: Some(plan.namespace.clone()),
                annotations: Some([(crate::names::EXCHANGE_ANNOTATION.to_owned(), key.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: DelegationSpec {
                agent_ref: LocalRef { name: plan.actor.clone() },
                parent_ref: Some(LocalRef { name: plan.parent.clone() }),
                scopes: plan.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
                task: plan.task.clone(),
                ttl: None,
                expires_at: Some(plan.expires_at.to_string()),
                audience: None,
                max_depth: None,
                may_act: None,
            },
            status: None,
        };
        let api: kube::Api<Delegation> = kube::Api::namespaced(client.clone(), &plan.namespace);
        let created = api.create(&PostParams::default(), &delegation).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 || s.code == 400 || s.code == 422 => {
                grant(format!("the handoff was not admitted: {}", s.message))
            }
            e => unavailable(format!("cannot create the handoff's Delegation: {e}")),
        })?;
        let uid = created.metadata.uid.clone().unwrap_or_default();
        let waited = self.wait_for_token(&client, plan, child, &uid).await;
        if waited.is_err() {
            self.delete_child(&plan.namespace, child).await;
        }
        waited.map(|(token, exp)| (uid, token, exp))
    }

    /// The child's delegated token once the controller minted it and the ledger holds it live, for the
    /// actor; an error as soon as the child is recorded in a final phase other than Active, or after
    /// [`HANDOFF_WAIT`].
    async fn wait_for_token(
        &self,
        client: &kube::Client,
        plan: &Handoff,
        child: &str,
        uid: &str,
    ) -> Result<(String, Timestamp), OAuthError> {
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &plan.namespace);
        let secret = crate::names::delegations_secret(&plan.actor);
        let entry = crate::names::delegation_token_key(child);
        let deadline = tokio::time::Instant::now() + HANDOFF_WAIT;
        loop {
            // Armed before looking: the controller's issuance record, applied to the ledger once the
            // Secret holds the token, wakes this wait; the poll below is only the fallback.
            let changed = self.ledger.delegations_changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(r) = self.ledger.delegation_phase(uid)
                && r.phase != DelegationPhase::Active
                && r.phase != DelegationPhase::Pending
            {
                return Err(grant(format!(
                    "the handoff's Delegation became {}: {}",
                    r.phase.as_str(),
                    r.message
                )));
            }
            let token = secrets
                .get_opt(&secret)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.data?.get(&entry).map(|b| b.0.clone()))
                .and_then(|b| String::from_utf8(b).ok());
            if let Some(token) = token {
                let now = Timestamp::now();
                let verified = self
                    .verifiers
                    .get()
                    .and_then(|v| v.verifier.verifier().verify_delegated(&token, now).ok());
                if let Some(v) = verified
                    && v.delegation_uid == uid
                    && v.agent_uid == plan.actor_uid
                    && self.ledger.delegated_standing(&v.chain, &v.jti, &v.audience, now)
                        == DelegatedStanding::Live
                {
                    return Ok((token, v.expires_at));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(
                    "the handoff's Delegation got no token in time; it was withdrawn, retry",
                ));
            }
            let _ = tokio::time::timeout(HANDOFF_POLL, changed).await;
        }
    }

    async fn delete_child(&self, namespace: &str, child: &str) {
        let Some(client) = self.client.clone() else { return };
        let api: kube::Api<Delegation> = kube::Api::namespaced(client, namespace);
        if let Err(e) = api.delete(child, &DeleteParams::default()).await {
            tracing::warn!(error = %e, delegation = child, "cannot delete a failed handoff's Delegation");
        }
    }
}

/// `<parent>-x-<10 hex>`: a DNS subdomain name under 253 characters, unique per exchange.
fn child_name(parent: &str, id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let suffix = hex::encode(digest.as_ref().get(..5).unwrap_or_default());
    let stem: String = parent.chars().take(200).collect();
    format!("{}-x-{suffix}", stem.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    #[test]
    fn child_names_are_valid_and_distinct() {
        let a = super::child_name("alice-refunds", "id-1");
        let b = super::child_name("alice-refunds", "id-2");
        assert!(a.starts_with("alice-refunds-x-") && a.len() == "alice-refunds-x-".len() + 10, "{a}");
        assert_ne!(a, b);
        assert!(super::child_name(&"p".repeat(300), "x").len() < 253);
    }
}
