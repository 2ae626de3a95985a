//! The token endpoint (`POST /v1/oauth/token`): task-scoped access tokens for agents, by the
//! `client_credentials` grant with `private_key_jwt` client authentication.
//!
//! Each request, in order, every step failing closed with its RFC 6749 error:
//! 1. the form is read strictly ([`crate::oauth::form`]) and the request's grammar checked
//!    ([`crate::oauth::request`]); an `Authorization` header is refused (there are no client secrets);
//! 2. the client proves it is the agent, in one of three ways: a JWT the agent signed with its
//!    X.509-SVID key carrying the certificate in `x5c` (the CA signed it, the ledger records its serial
//!    for the agent's UID; [`crate::identity::assertion`]); the agent's JWT-SVID whose audience is this
//!    endpoint's URL (the identity verifier, then found among the agent's live credentials); or, RFC 8705
//!    `tls_client_auth`, its X.509-SVID as the TLS client certificate (the same certificate checks as
//!    the `x5c` form; the handshake proved the key) with `client_id` its SPIFFE ID;
//! 3. an assertion is single use: its `jti` (for the X.509 form, serial and `jti`) may not have
//!    authenticated a request before (the ledger, rebuilt from the audit log at start, so a restart does
//!    not forget; plus the requests in flight). A client certificate, when shown, must be the same
//!    agent's current X.509-SVID whatever the method, and binds the token to it (`cnf.x5t#S256`);
//! 4. the agent may act now, the resource is one of its granted audiences, and each scope is decided by
//!    [`crate::authz::Snapshot::grant_scopes`]; the token carries only the granted scopes
//!    (`invalid_scope` when none is);
//! 5. the issuance is recorded as a durable intent before the token is signed, and its outcome after;
//!    an audit log that cannot record means no token (`temporarily_unavailable`).
//!
//! Every refusal is recorded too (`token.refuse`); a refusal of an authenticated client durably, since
//! it used up the assertion.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, to_bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef as StoreRef, Store};
use serde_json::json;

use crate::api::Agent;
use crate::audit::{Action, AuditLog, Entry, IntentKey, ObjectRef, Outcome};
use crate::authz::grant::ScopeGrant;
use crate::authz::{Acting, Reason};
use crate::controller::authz::PolicyIndex;
use crate::identity::access::{AccessClaims, AccessGrant, DEFAULT_ACCESS_TTL};
use crate::identity::assertion;
use crate::identity::cache::CurrentVerifier;
use crate::identity::issuer::IssuerReceiver;
use crate::identity::jwt::{CLAIM_UID, Minter, effective_ttl};
use crate::identity::verify::{MAX_LEEWAY, decode_unverified};
use crate::identity::{SpiffeId, TrustDomain};
use crate::oauth::metadata::{INTROSPECT_PATH, METADATA_PATH, REVOKE_PATH, TOKEN_PATH, token_endpoint};
use crate::oauth::request::{self, ClientAuth, ClientCredentials};
use crate::oauth::{ErrorCode, Form, OAuthError};
use crate::registry::actions as a;
use crate::registry::ledger::{Ledger, TokenStanding};
use crate::server::listener::PeerCertificates;

#[path = "exchange.rs"]
pub mod exchange;
#[path = "introspect.rs"]
pub mod introspect;

/// Largest request body accepted.
pub const MAX_FORM_BYTES: usize = 32 * 1024;

/// The token endpoint's state.
pub struct TokenService {
    index: Arc<PolicyIndex>,
    ledger: Arc<Ledger>,
    issuer: IssuerReceiver,
    audit: AuditLog,
    verifiers: Arc<CurrentVerifier>,
    agents: Store<Agent>,
    trust_domain: TrustDomain,
    /// The URL of this endpoint: the audience every client assertion must name.
    endpoint: String,
    /// The listener serves TLS itself, so client certificates reach this endpoint (RFC 8705).
    mutual_tls: bool,
    /// The API client that authenticates (TokenReview) and authorizes (SubjectAccessReview) resource
    /// servers and administrators; None in tests without an API server (they are then refused).
    client: Option<kube::Client>,
    /// Those answers, cached briefly.
    callers: introspect::Callers,
    /// What token exchange reads to judge a handoff like admission does (None: exchange unavailable).
    handoff: Option<Handoffs>,
    /// What behaviour took off each agent's trust score (None: nothing).
    trust: Option<Arc<crate::registry::trust::TrustPenalties>>,
    /// Test hook: exchanges pause this long after their intent.
    exchange_delay: std::time::Duration,
    /// Client assertions of requests in flight: a second request with the same one is refused before
    /// the first is recorded.
    in_flight: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// The stores token exchange reads.
struct Handoffs {
    delegations: crate::webhook::server::Delegations,
}

/// A successful answer (RFC 6749 §5.1). `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The access token.
    pub access_token: String,
    /// Seconds it lives.
    pub expires_in: u64,
    /// The scopes it carries.
    pub scope: String,
    /// For a token exchange, the kind of token answered (RFC 8693 §2.2.1).
    pub issued_token_type: Option<&'static str>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Who a request turned out to come from, as far as it was established: for the audit record.
#[derive(Debug, Default)]
struct Client {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    /// The assertion, once it authenticated the client: its use is recorded.
    assertion: Option<(String, Timestamp)>,
    /// Other keys this request holds in flight (an exchange's subject and actor tokens).
    in_flight: Vec<String>,
}

impl TokenService {
    /// The endpoint over `index` and `ledger`, verifying with `verifiers`, signing with the keys `issuer`
    /// publishes, recording in `audit`; `agents` gives each agent's declared model. Without
    /// [`with_mutual_tls`](Self::with_mutual_tls) and [`with_client`](Self::with_client): no mutual TLS
    /// advertised, and no Kubernetes caller accepted.
    pub fn new(
        index: Arc<PolicyIndex>,
        ledger: Arc<Ledger>,
        issuer: IssuerReceiver,
        audit: AuditLog,
        verifiers: Arc<CurrentVerifier>,
        agents: Store<Agent>,
    ) -> Self {
        let (trust_domain, endpoint) = {
            let i = issuer.borrow();
            (i.trust_domain.clone(), token_endpoint(&i.issuer_url))
        };
        Self {
            index,
            ledger,
            issuer,
            audit,
            verifiers,
            agents,
            trust_domain,
            endpoint,
            mutual_tls: false,
            client: None,
            callers: introspect::Callers::default(),
            handoff: None,
            trust: None,
            exchange_delay: std::time::Duration::ZERO,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// The listener serves TLS, so the metadata advertises `tls_client_auth` and bound tokens.
    #[must_use]
    pub fn with_mutual_tls(mut self, mutual_tls: bool) -> Self {
        self.mutual_tls = mutual_tls;
        self
    }

    /// The API client that authenticates and authorizes resource servers and administrators.
    #[must_use]
    pub fn with_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Lowers each agent's trust score by what its behaviour took off (the monitor's penalties): scopes
    /// whose rules need a minimum trust, and the tokens' lifetimes, follow it.
    #[must_use]
    pub fn with_trust_penalties(mut self, penalties: Arc<crate::registry::trust::TrustPenalties>) -> Self {
        self.trust = Some(penalties);
        self
    }

    /// Testing only: pause exchanges this long after their intent is durable.
    #[must_use]
    pub fn with_failpoint_exchange_delay(mut self, delay: std::time::Duration) -> Self {
        self.exchange_delay = delay;
        self
    }

    /// The Delegations and Revocations token exchange judges handoffs by (it also needs
    /// [`with_client`](Self::with_client), to create the child Delegation).
    #[must_use]
    pub fn with_delegations(mut self, delegations: crate::webhook::server::Delegations) -> Self {
        self.handoff = Some(Handoffs { delegations });
        self
    }

    /// Closes the issuances a stop interrupted (an intent without an outcome) as abandoned, which voids
    /// their tokens in the ledger: whether the client got one is unknown, so none counts (fail closed; the
    /// agent asks again). Called once at startup, before the endpoint serves, so none is in flight.
    ///
    /// # Errors
    /// The audit log could not record an outcome.
    pub async fn void_interrupted(&self) -> Result<usize, crate::audit::AuditError> {
        let open = self.audit.open_intents_matching(|r| {
            r.action == Action::TokenIssue.as_str() || r.action == Action::TokenExchange.as_str()
        });
        for intent in &open {
            let Some(key) = intent.key.as_deref() else { continue };
            let reason = "the operator stopped before the token was answered; it is void";
            self.audit.outcome(key, Outcome::Abandoned, reason, Default::default()).await?;
        }
        Ok(open.len())
    }

    /// Answers one token request read from `form`, recording it. `peer`: the certificate chain the TLS
    /// client presented (DER, leaf first), if any.
    pub async fn token(
        &self,
        form: &Form,
        peer: Option<&[Vec<u8>]>,
        now: Timestamp,
    ) -> Result<Issued, OAuthError> {
        let mut client = Client::default();
        // The same fail-closed state as the decision API: no token while the index is loading or its view
        // of Revocations is older than the bound.
        if let Some(why) = self.index.refusal() {
            let result = Err(OAuthError::new(ErrorCode::TemporarilyUnavailable, why));
            return self.finish(&client, result).await;
        }
        let result = match request::parse_any(form, peer.is_some()) {
            Ok(request::TokenRequest::ClientCredentials(req)) => {
                self.client_credentials(&req, peer, &mut client, now).await
            }
            Ok(request::TokenRequest::Exchange(req)) => self.exchange(&req, peer, &mut client, now).await,
            Err(e) => Err(e),
        };
        self.finish(&client, result).await
    }

    /// Records a refusal, and lets go of the request's assertion (by now the ledger holds it as spent
    /// if it authenticated anything).
    async fn finish<T>(&self, client: &Client, result: Result<T, OAuthError>) -> Result<T, OAuthError> {
        if let Err(e) = &result {
            self.record_refusal(client, e).await;
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((jti, _)) = &client.assertion {
            in_flight.remove(jti);
        }
        for key in &client.in_flight {
            in_flight.remove(key);
        }
        drop(in_flight);
        result
    }

    /// Revokes one access token for its holder (RFC 7009): the client authenticates as for a token, and
    /// `token` must be an access token issued to that same agent. Durable before the answer; from then the
    /// decision API refuses the token. A token that does not verify, expired or is unknown is answered
    /// as revoked (RFC 7009 §2.2: nothing to do, and nothing learned).
    pub async fn revoke(
        &self,
        form: &Form,
        peer: Option<&[Vec<u8>]>,
        now: Timestamp,
    ) -> Result<(), OAuthError> {
        let mut client = Client::default();
        let result = self.revoke_inner(form, peer, &mut client, now).await;
        self.finish(&client, result).await
    }

    async fn revoke_inner(
        &self,
        form: &Form,
        peer: Option<&[Vec<u8>]>,
        client: &mut Client,
        now: Timestamp,
    ) -> Result<(), OAuthError> {
        let auth = request::client_auth(form, peer.is_some())?;
        let token = form.require("token")?.to_owned();
        if form.get("token_type_hint").is_some_and(|h| h != "access_token") {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedTokenType,
                "only access tokens (token_type_hint access_token) can be revoked here",
            ));
        }
        self.authenticate(&auth, peer, client, now)?;
        let Some(verifiers) = self.verifiers.get() else {
            return Err(OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "no usable signing keys are published",
            ));
        };
        let Ok(access) = verifiers.verifier.verifier().verify_access(&token, now) else {
            // Not a valid access token of ours: nothing to revoke, and the answer says no more (RFC 7009
            // §2.2). The record keeps the spent assertion.
            let entry = self.entry(
                client,
                Action::TokenRevoke,
                Outcome::Failure,
                "nothing to revoke: not a valid access token",
            );
            if let Err(e) = self.audit.append(entry).await {
                tracing::error!(error = %e, "cannot record a token revocation request");
            }
            return Ok(());
        };
        if client.uid.as_deref() != Some(access.agent_uid.as_str()) {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "the token was not issued to this client; only its holder can revoke it here",
            ));
        }
        let entry = self
            .entry(
                client,
                Action::TokenRevoke,
                Outcome::Success,
                "access token revoked by its holder (RFC 7009)",
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

    async fn client_credentials(
        &self,
        req: &ClientCredentials,
        peer: Option<&[Vec<u8>]>,
        client: &mut Client,
        now: Timestamp,
    ) -> Result<Issued, OAuthError> {
        let (svid, bound_to) = self.authenticate(&req.auth, peer, client, now)?;
        let uid = client.uid.clone().unwrap_or_default();
        let (namespace, name) =
            (client.namespace.clone().unwrap_or_default(), client.name.clone().unwrap_or_default());
        let record = self
            .ledger
            .get(&uid)
            .map(|r| crate::registry::trust::with_penalty(r, &uid, self.trust.as_deref(), now));
        let snapshot = self.index.load();
        let acting = Acting { uid: &uid, namespace: &namespace, name: &name };
        let grants = snapshot.grant_scopes(acting, record.as_deref(), &req.scopes, now).map_err(|d| {
            let code = match d.reason {
                Reason::NoPolicy | Reason::PolicyBroken => ErrorCode::InvalidScope,
                _ => ErrorCode::UnauthorizedClient,
            };
            OAuthError::new(code, format!("agent {namespace}/{name} may hold no token now: {}", d.reason))
        })?;
        let Some(agent) = snapshot.agent(&uid) else {
            return Err(OAuthError::new(ErrorCode::UnauthorizedClient, "the agent is gone"));
        };
        if !agent.audiences.contains(&req.resource) {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                format!(
                    "resource {} is not among the audiences agent {namespace}/{name} is granted \
                     (spec.credentials.audiences)",
                    req.resource
                ),
            ));
        }
        let granted: Vec<&str> =
            req.scopes.iter().zip(&grants).filter(|(_, g)| g.is_granted()).map(|(s, _)| s.as_str()).collect();
        if granted.is_empty() {
            let why: Vec<String> =
                req.scopes.iter().zip(&grants).map(|(s, g)| format!("{}: {g}", s.as_str())).collect();
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                format!("no scope is allowed: {}", why.join("; ")),
            ));
        }
        // A new access token follows the effective score (the recorded one minus behaviour's penalty).
        let trust = record.as_ref().map_or(0, |r| r.trust_score.unwrap_or(0).saturating_sub(r.trust_penalty));
        let ttl = DEFAULT_ACCESS_TTL.min(effective_ttl(agent.requested_ttl, agent.ttl_cap, trust));
        let model = self.model(&namespace, &name, &uid);
        let issuer = Arc::clone(&self.issuer.borrow());
        let grant = AccessGrant {
            issuer: &issuer.issuer_url,
            agent: &svid,
            agent_uid: &uid,
            audience: &req.resource,
            scopes: &granted,
            task: req.task.as_deref(),
            model: model.as_deref(),
            certificate: bound_to.as_deref(),
        };
        let unavailable = |why: String| OAuthError::new(ErrorCode::TemporarilyUnavailable, why);
        let claims =
            AccessClaims::new(grant, now, ttl).map_err(|e| unavailable(format!("cannot mint: {e}")))?;
        let expires_at = Timestamp::from_second(claims.exp).map_err(|_| unavailable("bad expiry".into()))?;
        let key = IntentKey::TokenIssue { jti: claims.jti.clone() }.to_string();
        let signing = issuer.keys.current();
        let mut entry = self
            .entry(
                client,
                Action::TokenIssue,
                Outcome::Pending,
                "access token for the client_credentials grant",
            )
            .with_detail(a::DETAIL_JTI, claims.jti.clone())
            .with_detail(a::DETAIL_AUDIENCES, req.resource.clone())
            .with_detail(a::DETAIL_SCOPE, claims.scope.clone())
            .with_detail(a::DETAIL_ISSUED_AT, now.to_string())
            .with_detail(a::DETAIL_EXPIRES_AT, expires_at.to_string())
            .with_detail(a::DETAIL_KEY_ID, signing.kid());
        if let Some(task) = &req.task {
            entry = entry.with_detail(a::DETAIL_TASK, task.clone());
        }
        if let Some(t) = &bound_to {
            entry = entry.with_detail(a::DETAIL_CERTIFICATE_THUMBPRINT, t.clone());
        }
        let refused: Vec<String> = req
            .scopes
            .iter()
            .zip(&grants)
            .filter(|(_, g)| !g.is_granted())
            .map(|(s, g)| format!("{}: {g}", s.as_str()))
            .collect();
        if !refused.is_empty() {
            entry = entry.with_detail("refusedScopes", refused.join("; "));
        }
        if let Some(ScopeGrant::Granted { policy, rule }) = grants.iter().find(|g| g.is_granted()) {
            entry = entry.with_detail("policy", policy.to_string()).with_detail("rule", rule.to_string());
        }
        self.audit.intent(&key, entry).await.map_err(|e| {
            tracing::error!(error = %e, "cannot record an access token issuance; refusing");
            unavailable("the audit log is unavailable, so nothing is issued".into())
        })?;
        // Recorded (the ledger holds the assertion as spent before `intent` returns): from here on the
        // assertion is spent whatever happens.
        let signed = Minter::new(Arc::clone(signing)).mint(&claims);
        let (outcome, why) = match &signed {
            Ok(_) => (Outcome::Success, "signed and answered".to_owned()),
            Err(e) => (Outcome::Failure, format!("signing failed: {e}")),
        };
        let closed = self.audit.outcome(&key, outcome, why, Default::default()).await;
        let token = signed.map_err(|e| unavailable(format!("cannot sign: {e}")))?;
        closed.map_err(|e| {
            tracing::error!(error = %e, "cannot record an access token's outcome; refusing");
            unavailable("the audit log is unavailable, so nothing is issued".into())
        })?;
        Ok(Issued {
            access_token: token,
            expires_in: ttl.as_secs(),
            scope: claims.scope,
            issued_token_type: None,
        })
    }

    /// Steps 2 and 3: the agent's SPIFFE ID, once the client proved it (an assertion is then marked in
    /// use), and the thumbprint of the client certificate the token is to be bound to, if one was shown.
    /// Three forms: the TLS client certificate alone (`tls_client_auth`), the agent's JWT-SVID for this
    /// endpoint, or a JWT it signed with its X.509-SVID key carrying the certificate in `x5c` (told apart
    /// by `x5c` in the header; each form is then verified in full).
    fn authenticate(
        &self,
        auth: &ClientAuth,
        peer: Option<&[Vec<u8>]>,
        client: &mut Client,
        now: Timestamp,
    ) -> Result<(SpiffeId, Option<String>), OAuthError> {
        let shown = match peer {
            Some(chain) => Some(self.by_tls_certificate(chain, now)?),
            None => None,
        };
        let Some(assertion) = auth.assertion.as_deref() else {
            // tls_client_auth: the certificate is the proof (`client_auth` only allows this with one).
            let Some((id, uid, thumbprint)) = shown else {
                return Err(OAuthError::client("no client certificate was presented"));
            };
            self.name_client(auth, client, &id)?;
            if auth.client_id.is_none() {
                return Err(OAuthError::client("tls_client_auth needs client_id"));
            }
            client.uid = Some(uid);
            return Ok((id, Some(thumbprint)));
        };
        let x509 = decode_unverified(assertion).is_ok_and(|(header, _)| header.get("x5c").is_some());
        let (id, spent_key, expires_at) = if x509 {
            self.by_certificate(auth, assertion, client, now)?
        } else {
            self.by_jwt_svid(auth, assertion, client, now)?
        };
        // A certificate beside an assertion must be the same agent's; it then binds the token.
        let bound_to = match shown {
            None => None,
            Some((shown_id, uid, thumbprint)) => {
                if shown_id != id || client.uid.as_deref() != Some(uid.as_str()) {
                    return Err(OAuthError::client(
                        "the TLS client certificate is another agent's than the client assertion's",
                    ));
                }
                Some(thumbprint)
            }
        };
        let fresh = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            !self.ledger.assertion_used(&spent_key, now) && in_flight.insert(spent_key.clone())
        };
        if !fresh {
            return Err(OAuthError::client(
                "the client assertion was used before: each authenticates one request (sign a new one)",
            ));
        }
        // Remembered until the verifiers would refuse it anyway: its `exp` plus their clock-skew leeway (an
        // assertion is accepted up to that long after its `exp`, so forgetting it at `exp` would reopen it).
        let leeway =
            jiff::SignedDuration::try_from(MAX_LEEWAY).unwrap_or(jiff::SignedDuration::from_secs(30));
        let remember_until = expires_at.checked_add(leeway).unwrap_or(Timestamp::MAX);
        client.assertion = Some((spent_key, remember_until));
        Ok((id, bound_to))
    }

    /// A TLS client certificate chain: an X.509-SVID the operator's CA issued to an agent, which the
    /// ledger records as that agent's current certificate (by the UID of the agent with that name). The
    /// handshake already proved the client holds its key. Returns its SPIFFE ID, the agent's UID and the
    /// leaf's `x5t#S256`.
    fn by_tls_certificate(
        &self,
        chain: &[Vec<u8>],
        now: Timestamp,
    ) -> Result<(SpiffeId, String, String), OAuthError> {
        let ca = Arc::clone(&self.issuer.borrow().ca);
        let presented = ca
            .check_presented(chain, now)
            .map_err(|why| OAuthError::client(format!("the TLS client certificate is refused: {why}")))?;
        let (id, serial) = (presented.spiffe_id, presented.serial_hex);
        let Ok((namespace, name)) = id.agent_in(&self.trust_domain) else {
            return Err(OAuthError::client("the TLS client certificate does not name an agent"));
        };
        let uid = self.live_serial(namespace, name, &serial, now).ok_or_else(|| {
            OAuthError::client(
                "the TLS client certificate is not the agent's current X.509-SVID (never issued, or taken back)",
            )
        })?;
        let leaf = chain.first().map(Vec::as_slice).unwrap_or_default();
        Ok((id, uid, crate::identity::access::thumbprint(leaf)))
    }

    /// The UID of the agent `namespace/name` if the ledger records `serial_hex` as one of its unexpired
    /// X.509-SVIDs.
    fn live_serial(&self, namespace: &str, name: &str, serial_hex: &str, now: Timestamp) -> Option<String> {
        let uid = self.index.load().agent_by_name(namespace, name).map(|a| a.uid.to_string())?;
        let live = self.ledger.get(&uid).is_some_and(|r| {
            r.issuances.iter().any(|i| i.expires_at > now && i.x509_serial.as_deref() == Some(serial_hex))
        });
        live.then_some(uid)
    }

    /// The client's identity from `client_id`, when sent, and the SPIFFE ID: they must agree.
    fn name_client(&self, auth: &ClientAuth, client: &mut Client, id: &SpiffeId) -> Result<(), OAuthError> {
        let Ok((namespace, name)) = id.agent_in(&self.trust_domain) else {
            return Err(OAuthError::client("the client assertion's subject is not an agent"));
        };
        client.namespace = Some(namespace.to_owned());
        client.name = Some(name.to_owned());
        if auth.client_id.as_ref().is_some_and(|c| *c != id.to_string()) {
            return Err(OAuthError::client("client_id is not the client assertion's subject"));
        }
        Ok(())
    }

    /// The JWT-SVID form: one of the agent's live JWT-SVIDs, for this endpoint. Spent by its `jti`.
    fn by_jwt_svid(
        &self,
        auth: &ClientAuth,
        assertion: &str,
        client: &mut Client,
        now: Timestamp,
    ) -> Result<(SpiffeId, String, Timestamp), OAuthError> {
        let Some(verifiers) = self.verifiers.get() else {
            return Err(OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "no usable signing keys are published",
            ));
        };
        let svid = verifiers
            .verifier
            .verify_any_audience(assertion, now)
            .map_err(|e| OAuthError::client(format!("the client assertion is not a valid JWT-SVID: {e}")))?;
        self.name_client(auth, client, &svid.spiffe_id)?;
        client.uid = svid.extra.get(CLAIM_UID).and_then(|v| v.as_str()).map(str::to_owned);
        if svid.audience != self.endpoint {
            return Err(OAuthError::client(format!(
                "the client assertion is for audience {}, not this token endpoint ({})",
                svid.audience, self.endpoint
            )));
        }
        let Some(uid) = client.uid.as_deref() else {
            return Err(OAuthError::client(format!("the client assertion has no {CLAIM_UID} claim")));
        };
        let live = self
            .ledger
            .get(uid)
            .is_some_and(|r| r.token(&svid.jti, &svid.audience, now) == TokenStanding::Live);
        if !live {
            return Err(OAuthError::client(
                "the client assertion is not one of the agent's current credentials (never issued, or taken back)",
            ));
        }
        Ok((svid.spiffe_id.clone(), svid.jti.clone(), svid.expires_at))
    }

    /// The X.509-SVID form: signed with the key of a certificate the operator's CA issued, whose serial
    /// the operator recorded for the agent with that name's UID and has not taken back. Spent by serial
    /// and `jti` (the client chooses the `jti`, so it is only unique per certificate).
    fn by_certificate(
        &self,
        auth: &ClientAuth,
        assertion: &str,
        client: &mut Client,
        now: Timestamp,
    ) -> Result<(SpiffeId, String, Timestamp), OAuthError> {
        let ca = Arc::clone(&self.issuer.borrow().ca);
        let v = assertion::verify(&ca, &self.trust_domain, assertion, &self.endpoint, now)
            .map_err(|e| OAuthError::client(e.to_string()))?;
        self.name_client(auth, client, &v.spiffe_id)?;
        let (namespace, name) =
            (client.namespace.clone().unwrap_or_default(), client.name.clone().unwrap_or_default());
        // For the record, the UID of the agent with that name, whether or not the certificate is current.
        client.uid = self.index.load().agent_by_name(&namespace, &name).map(|a| a.uid.to_string());
        if self.live_serial(&namespace, &name, &v.serial_hex, now).is_none() {
            return Err(OAuthError::client(
                "the client assertion's certificate is not the agent's current X.509-SVID (never issued, or taken back)",
            ));
        }
        Ok((v.spiffe_id, format!("x509:{}:{}", v.serial_hex, v.jti), v.expires_at))
    }

    /// The model the Agent declares, if the store holds the Agent with this UID.
    fn model(&self, namespace: &str, name: &str, uid: &str) -> Option<String> {
        let agent = self.agents.get(&StoreRef::new(name).within(namespace))?;
        if agent.metadata.uid.as_deref() != Some(uid) {
            return None;
        }
        agent.spec.provenance.as_ref().and_then(|p| p.model.clone())
    }

    fn entry(&self, client: &Client, action: Action, outcome: Outcome, reason: &str) -> Entry {
        let actor = match (&client.namespace, &client.name) {
            (Some(ns), Some(n)) => format!("agent:{ns}/{n}"),
            _ => "unauthenticated".to_owned(),
        };
        let object = ObjectRef {
            api_version: "agentiam.dev/v1alpha1".into(),
            kind: "Agent".into(),
            namespace: client.namespace.clone(),
            name: client.name.clone().unwrap_or_else(|| "unknown".into()),
            uid: client.uid.clone(),
        };
        let mut e = Entry::new(actor, action, object, outcome, reason);
        if let Some((jti, exp)) = &client.assertion {
            e = e
                .with_detail(a::DETAIL_ASSERTION_JTI, jti.clone())
                .with_detail(a::DETAIL_ASSERTION_EXPIRES_AT, exp.to_string());
        }
        e
    }

    /// Records a refusal: durably when it spent an assertion (so it stays spent after a restart), queued
    /// otherwise. A refusal stands whether or not it could be recorded.
    async fn record_refusal(&self, client: &Client, e: &OAuthError) {
        let entry = self
            .entry(client, Action::TokenRefuse, Outcome::Denied, &e.description)
            .with_detail(a::DETAIL_ERROR, e.code.as_str());
        let recorded = if client.assertion.is_some() {
            self.audit.append(entry).await.map(|_| ())
        } else {
            self.audit.enqueue(entry).await
        };
        if let Err(err) = recorded {
            tracing::error!(error = %err, "cannot record a refused token request");
        }
    }
}

/// The routes: `POST` [`TOKEN_PATH`], `POST` [`REVOKE_PATH`] and `GET` [`METADATA_PATH`].
pub fn surface(service: Arc<TokenService>) -> crate::server::Surface {
    crate::server::Routes::new("token")
        .route(TOKEN_PATH, post(token))
        .route(REVOKE_PATH, post(revoke))
        .route(INTROSPECT_PATH, post(introspect_handler))
        .route(METADATA_PATH, get(oauth_metadata))
        .finish(service)
}

/// The authorization server metadata (RFC 8414), cached like the other issuer documents.
async fn oauth_metadata(
    State(service): State<Arc<TokenService>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let issuer = Arc::clone(&service.issuer.borrow());
    let doc = crate::oauth::metadata::document(&issuer.issuer_url, service.mutual_tls);
    crate::server::issuer::document(&issuer, &doc, crate::server::issuer::JSON_CONTENT_TYPE, &headers)
}

/// The certificate chain the TLS client presented on this request's connection.
fn peer_certificates(request: &HttpRequest) -> Option<PeerCertificates> {
    request.extensions().get::<PeerCertificates>().cloned()
}

async fn introspect_handler(State(service): State<Arc<TokenService>>, request: HttpRequest) -> Response {
    match read_form(request, true).await {
        Ok((form, bearer)) => match service.introspect(bearer.as_deref(), &form, Timestamp::now()).await {
            Ok(answer) => self::answer(StatusCode::OK, &answer),
            Err(e) => refusal(&e),
        },
        Err(e) => refusal(&e),
    }
}

async fn revoke(State(service): State<Arc<TokenService>>, request: HttpRequest) -> Response {
    let peer = peer_certificates(&request);
    let result = match read_form(request, true).await {
        // A Kubernetes bearer token: an administrator; otherwise the holder, as a client.
        Ok((form, Some(bearer))) => service.revoke_as_administrator(&bearer, &form, Timestamp::now()).await,
        Ok((form, None)) => service.revoke(&form, peer.as_ref().map(|p| &p.0[..]), Timestamp::now()).await,
        Err(e) => {
            service.record_refusal(&Client::default(), &e).await;
            Err(e)
        }
    };
    match result {
        Ok(()) => answer(StatusCode::OK, &json!({})),
        Err(e) => refusal(&e),
    }
}

async fn token(State(service): State<Arc<TokenService>>, request: HttpRequest) -> Response {
    let peer = peer_certificates(&request);
    match read_form(request, false).await {
        Ok((form, _)) => {
            match service.token(&form, peer.as_ref().map(|p| &p.0[..]), Timestamp::now()).await {
                Ok(issued) => {
                    let mut body = json!({"access_token": issued.access_token, "token_type": "Bearer",
                        "expires_in": issued.expires_in, "scope": issued.scope});
                    if let (Some(t), Some(b)) = (issued.issued_token_type, body.as_object_mut()) {
                        b.insert("issued_token_type".into(), json!(t));
                    }
                    answer(StatusCode::OK, &body)
                }
                Err(e) => refusal(&e),
            }
        }
        Err(e) => {
            service.record_refusal(&Client::default(), &e).await;
            refusal(&e)
        }
    }
}

/// The form of a request: `application/x-www-form-urlencoded`, at most [`MAX_FORM_BYTES`]; and the
/// `Authorization: Bearer` token of a Kubernetes caller where `bearer_allowed` (introspection and an
/// administrator's revocation), which is otherwise refused (it would be a client secret).
async fn read_form(request: HttpRequest, bearer_allowed: bool) -> Result<(Form, Option<String>), OAuthError> {
    let headers = request.headers();
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let bearer = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(_), _) if !bearer_allowed => {
            return Err(OAuthError::client(
                "no client secrets exist: authenticate with private_key_jwt or tls_client_auth, not a header",
            ));
        }
        (Some(v), None) => {
            let token = v.to_str().ok().and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
            });
            Some(
                token.ok_or_else(|| {
                    OAuthError::client("Authorization must be Bearer <your Kubernetes token>")
                })?,
            )
        }
        (Some(_), Some(_)) => return Err(OAuthError::client("Authorization was sent twice")),
    };
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let form_type = match (types.next(), types.next()) {
        (Some(t), None) => t.to_str().ok().and_then(|t| t.split(';').next()).map(str::trim),
        _ => None,
    };
    if !form_type.is_some_and(|t| t.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(OAuthError::request(
            "the body must be application/x-www-form-urlencoded (one Content-Type)",
        ));
    }
    let body: Body = request.into_body();
    let bytes = to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| OAuthError::request(format!("the body is larger than {MAX_FORM_BYTES} bytes")))?;
    Ok((Form::parse(&bytes)?, bearer))
}

fn refusal(e: &OAuthError) -> Response {
    let mut response = answer(e.code.status(), &e.body());
    if e.code == ErrorCode::InvalidClient {
        // RFC 6749 §5.2: a 401 names the scheme; ours is the client assertion, not HTTP auth.
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("private_key_jwt"));
    }
    response
}

/// A JSON answer that no cache keeps (RFC 6749 §5.1).
fn answer(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
