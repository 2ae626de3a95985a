//! Introspection (RFC 7662, `POST /v1/oauth/introspect`) and revocation by an administrator (RFC 7009,
//! `POST /v1/oauth/revoke` with a Kubernetes bearer token): the token service's answers to resource
//! servers and people, as opposed to agents.
//!
//! Callers are Kubernetes identities (a resource server's ServiceAccount, a person): they send their own
//! Kubernetes token as `Authorization: Bearer`, which the API server authenticates (TokenReview), and
//! they need an RBAC verb on the Agent the inspected token belongs to (SubjectAccessReview):
//! [`INTROSPECT_VERB`] to learn about its tokens, [`REVOKE_VERB`] to revoke them. Both answers are cached
//! for [`CALLER_CACHE_TTL`], so a resource server asking per request costs two API calls per 10 s, not per
//! request; an RBAC change reaches introspection within that time.
//!
//! A token is active when, at this moment: it verifies (signature, `typ`, times, issuer); the operator
//! recorded issuing it and has not taken it back (an access token: issued to that agent for that audience
//! and not revoked; a delegated token: every link of its chain in force and the token live; an identity
//! JWT-SVID: a live credential of that UID); and its agent may act (known under that name, recorded,
//! Active, not under a Revocation). Anything else, including a token the caller may not introspect, is
//! `{"active": false}` and nothing more (RFC 7662 §2.2), so the answer never tells a caller about tokens it
//! has no right to see.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use serde_json::{Map, Value, json};

use super::TokenService;
use crate::audit::{Action, Entry, ObjectRef, Outcome};
use crate::authz::Acting;
use crate::identity::cache::Either;
use crate::identity::jwt::CLAIM_UID;
use crate::oauth::{ErrorCode, Form, OAuthError};
use crate::registry::actions as a;
use crate::registry::ledger::{DelegatedStanding, TokenStanding};
use crate::webhook::validate::Requester;

/// The RBAC verb on `agents.agentiam.dev` (by name, in the agent's namespace) that lets a caller
/// introspect that agent's tokens.
pub const INTROSPECT_VERB: &str = "introspect";
/// The RBAC verb on `agents.agentiam.dev` that lets a caller revoke that agent's access tokens.
pub const REVOKE_VERB: &str = "revoke";
/// How long an authenticated caller and an RBAC answer are reused.
pub const CALLER_CACHE_TTL: Duration = Duration::from_secs(10);
/// Most cached entries of each kind; beyond it the cache is emptied (it refills at the next requests).
const CACHE_CAPACITY: usize = 4096;
/// Longest caller token accepted.
const MAX_CALLER_TOKEN: usize = 16 * 1024;

/// Authenticated callers (by SHA-256 of their token) and RBAC answers, each for [`CALLER_CACHE_TTL`].
#[derive(Default)]
pub struct Callers {
    identities: Mutex<HashMap<[u8; 32], (Requester, Instant)>>,
    permissions: Mutex<HashMap<String, (bool, Instant)>>,
}

impl std::fmt::Debug for Callers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callers").finish_non_exhaustive()
    }
}

fn cached<K: std::hash::Hash + Eq, V: Clone>(map: &Mutex<HashMap<K, (V, Instant)>>, key: &K) -> Option<V> {
    let map = map.lock().unwrap_or_else(PoisonError::into_inner);
    map.get(key).filter(|(_, at)| at.elapsed() < CALLER_CACHE_TTL).map(|(v, _)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(map: &Mutex<HashMap<K, (V, Instant)>>, key: K, value: V) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= CACHE_CAPACITY {
        map.clear();
    }
    map.insert(key, (value, Instant::now()));
}

/// What a token turned out to be: whose, and whether it is active now.
#[derive(Debug)]
struct Inspected {
    namespace: String,
    name: String,
    uid: String,
    jti: String,
    expires_at: Timestamp,
    /// The RFC 7662 members of an active answer (without `active`).
    claims: Map<String, Value>,
    /// Why it is not active, if it is not.
    inactive: Option<String>,
}

impl TokenService {
    /// The Kubernetes identity behind `bearer`, by TokenReview (cached).
    pub(crate) async fn caller(&self, bearer: Option<&str>) -> Result<Requester, OAuthError> {
        let unauthenticated = |why: &str| {
            OAuthError::client(format!(
                "{why}: send your Kubernetes token (a ServiceAccount's, or your own) as Authorization: Bearer"
            ))
        };
        let Some(bearer) = bearer.filter(|b| !b.is_empty()) else {
            return Err(unauthenticated("the caller is not authenticated"));
        };
        if bearer.len() > MAX_CALLER_TOKEN {
            return Err(unauthenticated("the bearer token is too long"));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bearer.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some(requester) = cached(&self.callers.identities, &key) {
            return Ok(requester);
        }
        let Some(client) = &self.client else {
            return Err(OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "no API client to authenticate callers",
            ));
        };
        let review = TokenReview {
            spec: TokenReviewSpec { token: bearer.to_owned(), audiences: None },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
        let answer = api.create(&kube::api::PostParams::default(), &review).await.map_err(|e| {
            tracing::warn!(error = %e, "TokenReview failed");
            OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "the API server could not authenticate the caller",
            )
        })?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.filter(|_| status.authenticated == Some(true));
        let Some(user) = user.filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty())) else {
            return Err(unauthenticated("the API server does not accept the bearer token"));
        };
        let requester = Requester {
            username: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
        };
        remember(&self.callers.identities, key, requester.clone());
        Ok(requester)
    }

    /// Whether `requester` holds `verb` on the Agent `namespace/name` (SubjectAccessReview, cached). An
    /// error is a no: fail closed.
    async fn permitted(&self, requester: &Requester, verb: &str, namespace: &str, name: &str) -> bool {
        self.permitted_on(requester, "agents", verb, namespace, name).await
    }

    /// Whether `requester` holds `verb` on the agentiam `resource` `namespace/name` (SubjectAccessReview,
    /// cached). An error is a no: fail closed.
    pub(crate) async fn permitted_on(
        &self,
        requester: &Requester,
        resource: &str,
        verb: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        let key = format!(
            "{}\u{0}{}\u{0}{resource}\u{0}{verb}\u{0}{namespace}\u{0}{name}",
            requester.username,
            requester.groups.join(",")
        );
        if let Some(allowed) = cached(&self.callers.permissions, &key) {
            return allowed;
        }
        match crate::webhook::server::may(self.client.as_ref(), requester, namespace, resource, verb, name)
            .await
        {
            Ok(allowed) => {
                remember(&self.callers.permissions, key, allowed);
                allowed
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a token service caller's permission; refusing");
                false
            }
        }
    }

    /// Verifies `token` and judges its standing now.
    fn inspect(&self, token: &str, now: Timestamp) -> Option<Inspected> {
        // Loading, or the view of Revocations too old: nothing is active (fail closed).
        if self.index.refusal().is_some() {
            return None;
        }
        let verifiers = self.verifiers.get()?;
        let verified = verifiers.verifier.verify_either(token, now).ok()?;
        let snapshot = self.index.load();
        let base = |agent: &crate::identity::SpiffeId, uid: &str, jti: &str, expires_at: Timestamp| {
            let (namespace, name) = agent.agent_in(&self.trust_domain).ok()?;
            Some(Inspected {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
                jti: jti.to_owned(),
                expires_at,
                claims: Map::new(),
                inactive: None,
            })
        };
        let mut found = match &verified {
            Either::Access(v) => {
                let mut i = base(&v.agent, &v.agent_uid, &v.jti, v.expires_at)?;
                let issued = self.ledger.access_token(&v.jti, now);
                if !issued.is_some_and(|t| t.agent_uid == v.agent_uid && t.aud == v.audience) {
                    i.inactive = Some("not issued by the operator, voided or revoked".into());
                }
                let scopes: Vec<&str> = v.scopes.iter().map(crate::authz::scope::Scope::as_str).collect();
                i.claims = claims(
                    v.agent.to_string(),
                    v.agent.to_string(),
                    &v.audience,
                    &scopes,
                    v.issued_at,
                    v.expires_at,
                    &v.jti,
                    "access",
                );
                if let Some(task) = &v.task {
                    i.claims.insert(crate::identity::access::CLAIM_TASK.into(), json!(task));
                }
                if let Some(model) = &v.model {
                    i.claims.insert(crate::identity::access::CLAIM_MODEL.into(), json!(model));
                }
                if let Some(x5t) = &v.certificate {
                    i.claims.insert("cnf".into(), json!({"x5t#S256": x5t}));
                }
                i
            }
            Either::Delegated(v) => {
                let acting = v.agents.first()?;
                let mut i = base(acting, &v.agent_uid, &v.jti, v.expires_at)?;
                if self.ledger.delegated_standing(&v.chain, &v.jti, &v.audience, now)
                    != DelegatedStanding::Live
                {
                    i.inactive =
                        Some("its delegation chain is not in force, or the token is not live".into());
                }
                let scopes: Vec<&str> = v.scopes.iter().map(crate::authz::scope::Scope::as_str).collect();
                i.claims = claims(
                    v.grantor.clone(),
                    acting.to_string(),
                    &v.audience,
                    &scopes,
                    v.issued_at,
                    v.expires_at,
                    &v.jti,
                    "delegated",
                );
                let agents: Vec<String> = v.agents.iter().map(ToString::to_string).collect();
                i.claims.insert("agentiam.dev/agents".into(), json!(agents));
                i.claims.insert("agentiam.dev/delegation".into(), json!(v.delegation));
                i
            }
            Either::Identity(v) => {
                let uid = v.extra.get(CLAIM_UID).and_then(Value::as_str)?;
                let mut i = base(&v.spiffe_id, uid, &v.jti, v.expires_at)?;
                let live = self
                    .ledger
                    .get(uid)
                    .is_some_and(|r| r.token(&v.jti, &v.audience, now) == TokenStanding::Live);
                if !live {
                    i.inactive = Some("not a live credential of the agent".into());
                }
                let id = v.spiffe_id.to_string();
                i.claims =
                    claims(id.clone(), id, &v.audience, &[], v.issued_at, v.expires_at, &v.jti, "identity");
                i
            }
        };
        found.claims.insert("iss".into(), json!(self.issuer.borrow().issuer_url));
        found.claims.insert(CLAIM_UID.into(), json!(found.uid));
        if found.inactive.is_none() {
            let record = self.ledger.get(&found.uid);
            let acting = Acting { uid: &found.uid, namespace: &found.namespace, name: &found.name };
            if let Some(reason) = snapshot.may_not_act(acting, record.as_deref()) {
                found.inactive = Some(format!("the agent may not act: {reason}"));
            }
        }
        Some(found)
    }

    /// Answers one introspection request (RFC 7662 §2.2): the caller authenticates with its Kubernetes
    /// token, and learns about a token only if it holds [`INTROSPECT_VERB`] on the token's Agent.
    pub async fn introspect(
        &self,
        bearer: Option<&str>,
        form: &Form,
        now: Timestamp,
    ) -> Result<Value, OAuthError> {
        let requester = self.caller(bearer).await?;
        // RFC 7662 §2.1: `token_type_hint` is only a hint; every kind is looked up, so it is not read.
        let token = form.require("token")?;
        let found = self.inspect(token, now);
        let (answer, outcome, reason, object) = match found {
            None => (
                json!({"active": false}),
                Outcome::Success,
                "inactive: not a valid token of this issuer".to_owned(),
                None,
            ),
            Some(i) => {
                if !self.permitted(&requester, INTROSPECT_VERB, &i.namespace, &i.name).await {
                    let why = format!(
                        "inactive to this caller: no {INTROSPECT_VERB} on agent {}/{}",
                        i.namespace, i.name
                    );
                    (json!({"active": false}), Outcome::Denied, why, Some(i))
                } else if let Some(why) = &i.inactive {
                    (json!({"active": false}), Outcome::Success, format!("inactive: {why}"), Some(i))
                } else {
                    let mut body = i.claims.clone();
                    body.insert("active".into(), Value::Bool(true));
                    (Value::Object(body), Outcome::Success, "active".to_owned(), Some(i))
                }
            }
        };
        let entry = self.caller_entry(&requester, Action::TokenIntrospect, outcome, &reason, object.as_ref());
        if let Err(e) = self.audit.enqueue(entry).await {
            tracing::error!(error = %e, "cannot record an introspection; refusing");
            return Err(OAuthError::new(ErrorCode::TemporarilyUnavailable, "the audit log is unavailable"));
        }
        Ok(answer)
    }

    /// Revokes an access token for an administrator: a Kubernetes identity holding [`REVOKE_VERB`] on the
    /// token's Agent. Durable before the answer; from then on the decision API, introspection and exchange
    /// refuse it. A token that does not verify is answered as revoked (RFC 7009 §2.2).
    pub async fn revoke_as_administrator(
        &self,
        bearer: &str,
        form: &Form,
        now: Timestamp,
    ) -> Result<(), OAuthError> {
        let requester = self.caller(Some(bearer)).await?;
        let token = form.require("token")?;
        if form.get("token_type_hint").is_some_and(|h| h != "access_token") {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedTokenType,
                "only access tokens (token_type_hint access_token) can be revoked here; stop an agent or a chain with a Revocation",
            ));
        }
        let access = self.verifiers.get().and_then(|v| v.verifier.verifier().verify_access(token, now).ok());
        let Some(access) = access else {
            let entry = self.caller_entry(
                &requester,
                Action::TokenRevoke,
                Outcome::Failure,
                "nothing to revoke: not a valid access token",
                None,
            );
            if let Err(e) = self.audit.append(entry).await {
                tracing::error!(error = %e, "cannot record a token revocation request");
            }
            return Ok(());
        };
        let Ok((namespace, name)) = access.agent.agent_in(&self.trust_domain) else { return Ok(()) };
        let found = Inspected {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: access.agent_uid.clone(),
            jti: access.jti.clone(),
            expires_at: access.expires_at,
            claims: Map::new(),
            inactive: None,
        };
        if !self.permitted(&requester, REVOKE_VERB, namespace, name).await {
            let why = format!(
                "{} may not revoke tokens of agent {namespace}/{name} (RBAC verb {REVOKE_VERB} on agents)",
                requester.username
            );
            let entry =
                self.caller_entry(&requester, Action::TokenRevoke, Outcome::Denied, &why, Some(&found));
            if let Err(e) = self.audit.append(entry).await {
                tracing::error!(error = %e, "cannot record a refused token revocation");
            }
            return Err(OAuthError::new(ErrorCode::UnauthorizedClient, why));
        }
        let entry = self
            .caller_entry(
                &requester,
                Action::TokenRevoke,
                Outcome::Success,
                "access token revoked by an administrator (RFC 7009)",
                Some(&found),
            )
            .with_detail(a::DETAIL_JTI, access.jti.clone())
            .with_detail(a::DETAIL_EXPIRES_AT, access.expires_at.to_string());
        self.audit.append(entry).await.map_err(|e| {
            tracing::error!(error = %e, "cannot record a token revocation; refusing");
            OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "the audit log is unavailable; nothing was revoked",
            )
        })?;
        Ok(())
    }

    /// An audit entry of a Kubernetes caller's request about the token `found` (if it was one of ours).
    fn caller_entry(
        &self,
        requester: &Requester,
        action: Action,
        outcome: Outcome,
        reason: &str,
        found: Option<&Inspected>,
    ) -> Entry {
        let object = ObjectRef {
            api_version: "agentiam.dev/v1alpha1".into(),
            kind: "Agent".into(),
            namespace: found.map(|i| i.namespace.clone()),
            name: found.map_or_else(|| "unknown".into(), |i| i.name.clone()),
            uid: found.map(|i| i.uid.clone()),
        };
        let mut e = Entry::new(format!("user:{}", requester.username), action, object, outcome, reason);
        if let Some(i) = found {
            e = e
                .with_detail("tokenJti", i.jti.clone())
                .with_detail("tokenExpiresAt", i.expires_at.to_string());
        }
        e
    }
}

/// The RFC 7662 members every kind shares.
#[allow(clippy::too_many_arguments)]
fn claims(
    sub: String,
    client_id: String,
    aud: &str,
    scopes: &[&str],
    iat: Option<Timestamp>,
    exp: Timestamp,
    jti: &str,
    kind: &str,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("token_type".into(), json!("Bearer"));
    m.insert("sub".into(), json!(sub));
    m.insert("client_id".into(), json!(client_id));
    m.insert("aud".into(), json!(aud));
    if !scopes.is_empty() {
        m.insert("scope".into(), json!(scopes.join(" ")));
    }
    if let Some(iat) = iat {
        m.insert("iat".into(), json!(iat.as_second()));
    }
    m.insert("exp".into(), json!(exp.as_second()));
    m.insert("jti".into(), json!(jti));
    m.insert("agentiam.dev/token-kind".into(), json!(kind));
    m
}
