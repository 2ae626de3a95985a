//! Router-level tests of the decision API: real verifier, real index, real audit log in a temp dir; no
//! socket and no API server (the e2e tests cover those).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::decision::*;
use crate::api::{Agent, AgentPolicy};
use crate::audit::{AuditConfig, AuditLog};
use crate::authz::Builder;
use crate::controller::authz::PolicyIndex;
use crate::identity::TrustDomain;
use crate::identity::issuer::{self, Issuer, IssuerSender};
use crate::identity::jwt::{AgentClaims, Minter, SvidClaims};
use crate::identity::keys::{KeySet, RotationPolicy};
use crate::identity::spiffe::SpiffeId;
use crate::identity::x509::CertificateAuthority;
use crate::registry::ledger::{AgentRecord, Issuance, IssuedToken, Ledger, Stored};

const ISSUER_URL: &str = "https://issuer.test";

struct Fixture {
    _dir: tempfile::TempDir,
    audit: AuditLog,
    index: Arc<PolicyIndex>,
    app: axum::Router,
    minter: Minter,
    ledger: Arc<Ledger>,
    records: std::collections::HashMap<String, AgentRecord>,
    trust: Arc<crate::registry::trust::TrustPenalties>,
    _issuer: IssuerSender,
}

fn agent() -> Arc<Agent> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "bot", "namespace": "ns", "uid": "uid-bot"},
            "spec": {"owner": {"kind": "Team", "name": "t"}, "purpose": "p",
                     "credentials": {"audiences": ["crm"]}},
            "status": {"phase": "Active", "trustScore": 600},
        }))
        .unwrap(),
    )
}

fn policy() -> Arc<AgentPolicy> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": "p", "namespace": "ns", "uid": "uid-p", "generation": 1},
            "spec": {"agents": {"names": ["bot"]}, "rules": [
                {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm/contacts/*"]},
                {"name": "export", "effect": "Allow", "actions": ["export"], "resources": ["crm/contacts/*"],
                 "conditions": {"minTrustScore": 550}},
                {"name": "search", "effect": "Allow", "actions": ["tools.call"], "tools": ["search_*"],
                 "conditions": {"attributes": [{"key": "limit", "operator": "LessThanOrEqual", "value": "50"}]}},
            ]},
        }))
        .unwrap(),
    )
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let audit = AuditLog::open(AuditConfig::new(dir.path().join("audit.log"))).unwrap();
    let now = jiff::Timestamp::now();
    let td = TrustDomain::parse("cluster.local").unwrap();
    let keys = KeySet::generate(now).unwrap();
    let minter = Minter::new(Arc::clone(keys.current()));
    let ca = CertificateAuthority::generate(&td, jiff::SignedDuration::from_hours(24), now).unwrap();
    let (tx, rx) = issuer::channel(Issuer {
        keys,
        ca: Arc::new(ca),
        issuer_url: ISSUER_URL.into(),
        trust_domain: td,
        policy: RotationPolicy::default(),
        sequence: 1,
    });
    let index = Arc::new(PolicyIndex::default());
    index.publish(Builder::default().build(&[agent()], &[policy()], &[]));
    let ledger = Arc::new(Ledger::default());
    let authorizer = Authorizer::new(Arc::clone(&index), Arc::clone(&ledger), rx, audit.clone(), None);
    let trust = Arc::new(crate::registry::trust::TrustPenalties::default());
    authorizer.set_trust_penalties(Arc::clone(&trust));
    let records = Default::default();
    Fixture { _dir: dir, audit, index, app: routes(authorizer), minter, ledger, records, trust, _issuer: tx }
}

impl Fixture {
    fn token(&mut self, uid: &str, audience: &str) -> String {
        let sub = SpiffeId::parse("spiffe://cluster.local/ns/ns/agent/bot").unwrap();
        let claims = SvidClaims::new(
            ISSUER_URL,
            &sub,
            audience,
            AgentClaims { uid, owner: "Team:t", trust_score: 600 },
            jiff::Timestamp::now(),
            Duration::from_secs(600),
        )
        .unwrap();
        // What the operator records when it issues a token: the agent Active, the jti live.
        let now = jiff::Timestamp::from_second(claims.iat).unwrap();
        let record = self.records.entry(uid.to_owned()).or_insert_with(|| AgentRecord {
            phase: Some(crate::api::AgentPhase::Active),
            phase_since: Some(jiff::Timestamp::UNIX_EPOCH),
            trust_score: Some(600),
            ..AgentRecord::default()
        });
        record.issuances.push(Issuance {
            key: format!("credential.issue:{uid}:{}", record.issuances.len()),
            issued_at: now,
            expires_at: now.checked_add(jiff::SignedDuration::from_secs(600)).unwrap(),
            ttl_secs: 600,
            key_id: "k".into(),
            fingerprint: None,
            tokens: vec![IssuedToken { aud: audience.into(), jti: claims.jti.clone() }],
            audiences: vec![audience.into()],
            x509: false,
            x509_serial: None,
            stored: Stored::Yes,
        });
        self.ledger.set(uid, record.clone());
        self.minter.mint(&claims).unwrap()
    }

    async fn send(&self, req: HttpRequest<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec();
        (status, headers, body)
    }

    /// The audit log's text and its decision records, once every decision so far is written (a marker
    /// appended after them is durable only when they are).
    async fn decision_records(&self) -> (String, Vec<Value>) {
        let object = crate::audit::ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: None,
            name: "marker".into(),
            uid: None,
        };
        let marker =
            crate::audit::Entry::new("test", "test.marker", object, crate::audit::Outcome::Success, "m");
        self.audit.append(marker).await.unwrap();
        let log = std::fs::read_to_string(self.audit.path()).unwrap();
        let decisions = log
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["action"] == "authz.decide")
            .collect();
        (log, decisions)
    }

    async fn authorize(&self, body: impl Into<Body>) -> (StatusCode, Value) {
        let req = HttpRequest::post(AUTHORIZE_PATH).body(body.into()).unwrap();
        let (status, _, body) = self.send(req).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_minimum_trust_rule_follows_the_dynamic_trust_score() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let export = json!({"token": token, "action": "export", "resource": "crm/contacts/7"}).to_string();
    assert_eq!(f.authorize(export.clone()).await.1["decision"], "Allow", "recorded 600 >= 550");
    // An alert takes 100 off: 500 is below the rule's minimum.
    let now = jiff::Timestamp::now();
    f.trust.add("uid-bot", crate::registry::trust::ALERT_PENALTY, now);
    let denied = f.authorize(export.clone()).await.1;
    assert_eq!(denied["decision"], "Deny", "{denied}");
    // The same alert two hours ago has faded to 25: allowed again.
    let f2 = fixture().await;
    f2.trust.add("uid-bot", crate::registry::trust::ALERT_PENALTY, now - jiff::SignedDuration::from_hours(2));
    let mut f2 = f2;
    let token = f2.token("uid-bot", "crm");
    let export = json!({"token": token, "action": "export", "resource": "crm/contacts/7"}).to_string();
    assert_eq!(f2.authorize(export).await.1["decision"], "Allow");
}

#[tokio::test]
async fn decisions_verify_the_token_and_are_recorded_without_it() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let (status, body) = f
        .authorize(json!({"token": token, "action": "read", "resource": "crm/contacts/7"}).to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["decision"].as_str(), body["policy"].as_str(), body["rule"].as_str()),
        (Some("Allow"), Some("p"), Some("read"))
    );
    let audit_id = body["auditId"].as_str().unwrap().to_owned();

    let (_, denied) = f
        .authorize(json!({"token": token, "action": "delete", "resource": "crm/contacts/7"}).to_string())
        .await;
    assert_eq!(denied["decision"], "Deny");
    assert!(denied["reason"].as_str().unwrap().contains("default deny"));

    let stale = f.token("uid-of-a-deleted-bot", "crm");
    let (_, body) = f
        .authorize(json!({"token": stale, "action": "read", "resource": "crm/contacts/7"}).to_string())
        .await;
    assert_eq!(body["decision"], "Deny", "credentials are bound to the UID");
    let (_, body) = f
        .authorize(
            json!({"token": token, "audience": "billing", "action": "read", "resource": "crm/contacts/7"})
                .to_string(),
        )
        .await;
    assert_eq!(body["decision"], "Deny");
    assert!(body["reason"].as_str().unwrap().contains("audience"));
    let (_, body) = f
        .authorize(
            json!({"token": "e30.e30.sig", "action": "read", "resource": "crm/contacts/7"}).to_string(),
        )
        .await;
    assert_eq!(body["decision"], "Deny");
    assert!(body["reason"].as_str().unwrap().starts_with("invalid token"));

    // Every decision is a record; none holds the token.
    // A waited-for append lands after every queued decision: once it is durable, they all are.
    let object = crate::audit::ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: None,
        name: "marker".into(),
        uid: None,
    };
    let marker = f
        .audit
        .append(crate::audit::Entry::new(
            "test",
            "test.marker",
            object,
            crate::audit::Outcome::Success,
            "marker",
        ))
        .await
        .unwrap();
    let log = std::fs::read_to_string(f.audit.path()).unwrap();
    let decisions: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "authz.decide")
        .collect();
    assert_eq!(decisions.len(), 5);
    assert_eq!(decisions[0]["details"]["auditId"], audit_id.as_str());
    assert_eq!(decisions[0]["outcome"], "success");
    assert_eq!(decisions[1]["outcome"], "denied");
    assert_eq!(decisions[0]["object"]["uid"], "uid-bot");
    assert!(!log.contains(&token) && !log.contains(token.split('.').nth(2).unwrap()));
    assert!(marker.seq > 5);
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_problem_never_an_allow() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let cases: Vec<(Body, &str)> = vec![
        (Body::from("{not json"), "malformed JSON"),
        (Body::from(vec![b' '; MAX_BODY_BYTES + 1]), "larger than 65536"),
        (
            Body::from(json!({"token": token, "action": "read", "resource": "x", "extra": 1}).to_string()),
            "unknown field `extra`",
        ),
        (Body::from(json!({"action": "read", "resource": "x"}).to_string()), "token is required"),
        (Body::from(json!({"token": token, "action": "", "resource": "x"}).to_string()), "action must be"),
        (
            Body::from(json!({"token": token, "action": "read", "resource": "a\nb"}).to_string()),
            "resource \"a\\nb\" contains the control or invisible character U+000A",
        ),
        (
            Body::from(json!({"token": token, "action": "read", "resource": ""}).to_string()),
            "resource is required",
        ),
        (Body::from(json!({"token": token, "resource": "x"}).to_string()), "missing field `action`"),
        (
            Body::from(
                json!({"token": token, "action": "read", "resource": "x", "context": [1]}).to_string(),
            ),
            "invalid request",
        ),
        (
            Body::from(json!({"token": token, "action": "read", "resource": "x", "tool": ""}).to_string()),
            "tool must be",
        ),
    ];
    for (body, expected) in cases {
        let (status, body) = f.authorize(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expected}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{message:?} should contain {expected:?}");
    }
}

#[tokio::test]
async fn an_unready_index_or_a_failed_audit_log_denies() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let ask = json!({"token": token, "action": "read", "resource": "crm/contacts/7"}).to_string();
    let fresh = Arc::new(PolicyIndex::default());
    let (_tx, rx) = {
        let now = jiff::Timestamp::now();
        let td = TrustDomain::parse("cluster.local").unwrap();
        issuer::channel(Issuer {
            keys: KeySet::generate(now).unwrap(),
            ca: Arc::new(
                CertificateAuthority::generate(&td, jiff::SignedDuration::from_hours(24), now).unwrap(),
            ),
            issuer_url: ISSUER_URL.into(),
            trust_domain: td,
            policy: RotationPolicy::default(),
            sequence: 1,
        })
    };
    let unready = Authorizer::new(fresh, Arc::clone(&f.ledger), rx, f.audit.clone(), None);
    let req: AuthorizeRequest = serde_json::from_str(&ask).unwrap();
    let d = unready.authorize(&req, Source::InProcess).await.unwrap();
    assert_eq!(d.decision, crate::authz::Verdict::Deny);
    assert!(d.reason.contains("loading"), "{}", d.reason);

    let _ = &f.index;
    f.audit.close().await;
    let (_, body) = f.authorize(ask).await;
    assert_eq!(body["decision"], "Deny");
    assert!(body["reason"].as_str().unwrap().contains("audit log"));
}

#[tokio::test]
async fn ext_authz_maps_http_and_mcp_requests() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let req = |method: &str, path: &str, auth: bool, body: Body| {
        let mut b = HttpRequest::builder().method(method).uri(path).header("host", "crm");
        if auth {
            b = b.header("authorization", format!("Bearer {token}"));
        }
        b.body(body).unwrap()
    };
    let (status, headers, _) =
        f.send(req("GET", "/v1/ext_authz/contacts/1?fields=all", true, Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-agentiam-decision"], "Allow");
    assert_eq!(
        (headers["x-agentiam-policy"].to_str().unwrap(), headers["x-agentiam-rule"].to_str().unwrap()),
        ("p", "read")
    );
    assert!(headers.contains_key("x-agentiam-audit-id"));

    let (status, headers, _) = f.send(req("DELETE", "/v1/ext_authz/contacts/1", true, Body::empty())).await;
    assert_eq!((status, headers["x-agentiam-decision"].to_str().unwrap()), (StatusCode::FORBIDDEN, "Deny"));
    let (status, _, _) = f.send(req("GET", "/v1/ext_authz/contacts/1", false, Body::empty())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no token");

    let call = |name: &str, limit: u32| {
        Body::from(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {"limit": limit}}}).to_string())
    };
    let (status, _, _) = f.send(req("POST", "/v1/ext_authz/mcp", true, call("search_contacts", 10))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = f.send(req("POST", "/v1/ext_authz/mcp", true, call("search_contacts", 500))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the tool's arguments are the context");
    let (status, _, _) = f.send(req("POST", "/v1/ext_authz/mcp", true, call("delete_everything", 1))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let batch = Body::from(
        json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_x"}}])
            .to_string(),
    );
    let (status, headers, _) = f.send(req("POST", "/v1/ext_authz/mcp", true, batch)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers["x-agentiam-reason"].to_str().unwrap().contains("batches"));
    let mut partial = req("POST", "/v1/ext_authz/mcp", true, call("search_contacts", 1));
    partial.headers_mut().insert("x-envoy-auth-partial-body", "true".parse().unwrap());
    assert_eq!(f.send(partial).await.0, StatusCode::FORBIDDEN, "a cut body cannot be judged");
}

/// A GET through ext_authz with Host crm and a valid token, plus `extra` headers (raw bytes allowed).
fn ext_get(path: &str, token: &str, extra: &[(&str, &[u8])]) -> HttpRequest<Body> {
    let mut b = HttpRequest::get(path).header("host", "crm");
    if !extra.iter().any(|(name, _)| *name == "authorization") {
        b = b.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in extra {
        b = b.header(*name, axum::http::HeaderValue::from_bytes(value).unwrap());
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn ext_authz_headers_that_cannot_be_read_are_400s_naming_the_header() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let (status, _, _) = f.send(ext_get("/v1/ext_authz/contacts/1", &token, &[])).await;
    assert_eq!(status, StatusCode::OK, "the baseline is allowed");
    // Each of these once fell back to a default (method, host + path, any audience) and was allowed.
    let unreadable: &[u8] = b"r\xe9ad";
    for name in ["x-agentiam-action", "x-agentiam-resource", "x-agentiam-audience", "authorization"] {
        let (status, headers, body) =
            f.send(ext_get("/v1/ext_authz/contacts/1", &token, &[(name, unreadable)])).await;
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(body.contains(name) && body.contains("not visible ASCII"), "{name}: {body}");
        assert_eq!(headers["x-agentiam-decision"], "Deny");
    }
    // Sent twice: refused, not the first or the last picked.
    for (name, value) in [
        ("x-agentiam-action", &b"read"[..]),
        ("x-agentiam-resource", b"crm/contacts/1"),
        ("x-agentiam-audience", b"crm"),
        ("x-envoy-auth-partial-body", b"false"),
    ] {
        let (status, _, body) =
            f.send(ext_get("/v1/ext_authz/contacts/1", &token, &[(name, value), (name, value)])).await;
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(body.contains(name) && body.contains("more than once"), "{name}: {body}");
    }
    let mut twice = ext_get("/v1/ext_authz/contacts/1", &token, &[]);
    twice.headers_mut().append("authorization", format!("Bearer {token}").parse().unwrap());
    let (status, _, body) = f.send(twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) =
        f.send(ext_get("/v1/ext_authz/contacts/1", &token, &[("x-envoy-auth-partial-body", b"yes")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the partial-body flag must be true or false");
    // A readable but invalid action header is bad input too, as on /v1/authorize.
    let (status, _, _) =
        f.send(ext_get("/v1/ext_authz/contacts/1", &token, &[("x-agentiam-action", b"re ad")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn ext_authz_hosts_are_lowercased_and_cannot_add_segments() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let with_host = |host: Option<&str>| {
        let mut b =
            HttpRequest::get("/v1/ext_authz/contacts/1").header("authorization", format!("Bearer {token}"));
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(f.send(with_host(Some("CRM"))).await.0, StatusCode::OK, "host names are case-insensitive");
    for bad in ["crm/contacts", "crm.", ".crm", "crm:80x", "crm:", "[::1", "c rm", "crm\\x"] {
        let (status, _, body) = f.send(with_host(Some(bad))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, body) = f.send(with_host(None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("no host header"));
}

#[tokio::test]
async fn resources_outside_the_grammar_are_refused_on_every_surface() {
    let mut f = fixture().await;
    let token = f.token("uid-bot", "crm");
    let ask = |resource: &str| json!({"token": token, "action": "read", "resource": resource}).to_string();
    // Each of these matched crm/contacts/* segment by segment and was allowed.
    for resource in [
        "crm/contacts/..",
        "crm/contacts/.",
        "crm/contacts/%2e%2e",
        "crm/contacts/%2E%2e",
        "crm/contacts/..%2fadmin",
        "crm/contacts/..%5Cadmin",
        "crm/contacts/..\\admin",
        "crm/contacts/..;",
        "crm//contacts",
    ] {
        let (status, body) = f.authorize(ask(resource)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{resource:?}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with("resource "), "{resource:?}: {body}");
    }
    // Canonicalised, then decided: a trailing "/" once matched "*" as an empty segment.
    let (status, body) = f.authorize(ask("crm/contacts/")).await;
    assert_eq!((status, body["decision"].as_str()), (StatusCode::OK, Some("Deny")), "{body}");
    let (_, body) = f.authorize(ask("crm/contacts/%37")).await;
    assert_eq!(body["decision"], "Allow", "{body}");

    for path in [
        "/v1/ext_authz/contacts/%2e%2e",
        "/v1/ext_authz/contacts/..",
        "/v1/ext_authz/contacts/./1",
        "/v1/ext_authz/contacts/..%2f..%2fadmin",
        "/v1/ext_authz/contacts/%5c..",
        "/v1/ext_authz/contacts//1",
        "/v1/ext_authz/contacts/1;x=..",
    ] {
        let (status, headers, body) = f.send(ext_get(path, &token, &[])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(headers["x-agentiam-decision"], "Deny", "{path}");
    }
    let (status, _, _) =
        f.send(ext_get("/v1/ext_authz/x", &token, &[("x-agentiam-resource", b"crm/contacts/%2e%2e")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the resource header follows the same grammar");
    let (status, _, _) =
        f.send(ext_get("/v1/ext_authz/x", &token, &[("x-agentiam-resource", b"crm/contacts/%31")])).await;
    assert_eq!(status, StatusCode::OK, "and is canonicalised the same way");

    // What is decided and recorded is the canonical form.
    let (_, decisions) = f.decision_records().await;
    let resources: Vec<String> =
        decisions.iter().map(|r| r["details"]["resource"].as_str().unwrap().to_owned()).collect();
    assert_eq!(resources, ["crm/contacts", "crm/contacts/7", "crm/contacts/1"]);
}

// Delegated tokens: the agent acting for a human, within the delegation's scopes and its own policies.

fn delegated_policy() -> Arc<AgentPolicy> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": "on-behalf", "namespace": "ns", "uid": "uid-d", "generation": 1},
            "spec": {"agents": {"names": ["bot"]}, "rules": [
                {"name": "refund-for-alice", "effect": "Allow", "actions": ["refund"], "resources": ["pay/orders/*"],
                 "conditions": {"delegationScope": "refund@pay/orders/**",
                                "delegationGrantors": {"users": ["alice@example.com"], "groups": ["finance"]}}},
            ]},
        }))
        .unwrap(),
    )
}

impl Fixture {
    /// A delegated token of the root Delegation `root-uid` granted by `grantor` to bot, recorded Active
    /// with this token live.
    fn delegated(&mut self, grantor: &str, groups: &[&str], scopes: &[&str], aud: &str) -> String {
        use crate::identity::delegated::{DelegatedClaims, Grant};
        use crate::registry::ledger::DelegatedIssuance;
        let agents = [SpiffeId::parse("spiffe://cluster.local/ns/ns/agent/bot").unwrap()];
        let chain = ["root-uid".to_owned()];
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let grant = Grant {
            issuer: ISSUER_URL,
            grantor,
            audience: aud,
            agents: &agents,
            agent_uid: "uid-bot",
            delegation: "root",
            chain: &chain,
            scopes: &scopes,
            may_act: None,
        };
        let claims = DelegatedClaims::new(grant, jiff::Timestamp::now(), Duration::from_secs(600)).unwrap();
        let at = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let issuance = DelegatedIssuance {
            key: "delegation.issue:root-uid:1".into(),
            jti: claims.jti.clone(),
            aud: aud.into(),
            issued_at: at(claims.iat),
            expires_at: at(claims.exp),
            key_id: "k".into(),
            stored: Stored::Yes,
        };
        let grantor = crate::api::Grantor {
            username: grantor.into(),
            uid: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        self.ledger.set_delegation("root-uid", crate::api::DelegationPhase::Active, grantor, vec![issuance]);
        self.minter.mint(&claims).unwrap()
    }

    async fn ask(&self, token: &str, action: &str, resource: &str, extra: Value) -> Value {
        let mut body = json!({"token": token, "action": action, "resource": resource});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, answer) = self.authorize(body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }
}

#[tokio::test]
async fn a_delegated_token_allows_only_inside_its_scopes_and_the_agents_policies_and_names_the_chain() {
    let mut f = fixture().await;
    f.index.publish(Builder::default().build(&[agent()], &[policy(), delegated_policy()], &[]));
    let identity = f.token("uid-bot", "crm");
    let delegated =
        f.delegated("alice@example.com", &[], &["read@crm/contacts/1", "refund@pay/orders/**"], "crm");

    let ok = f.ask(&delegated, "read", "crm/contacts/1", json!({})).await;
    assert_eq!(ok["decision"], "Allow", "{ok}");
    assert_eq!(ok["onBehalfOf"], "alice@example.com");
    let chain: Vec<&str> =
        ok["chain"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(chain, ["alice@example.com", "bot"]);
    assert_eq!(ok["chain"][1]["delegationUid"], "root-uid");

    // The agent's own token may read contact 2; acting for alice it may not (outside what she granted).
    assert_eq!(f.ask(&identity, "read", "crm/contacts/2", json!({})).await["decision"], "Allow");
    let out = f.ask(&delegated, "read", "crm/contacts/2", json!({})).await;
    assert_eq!(out["decision"], "Deny", "{out}");
    assert!(out["reason"].as_str().unwrap().contains("outside every scope"), "{out}");
    // A scope never adds rights: nothing in the policies lets bot delete, delegated or not.
    let mut f2 = fixture().await;
    f2.index.publish(Builder::default().build(&[agent()], &[policy(), delegated_policy()], &[]));
    let wide = f2.delegated("alice@example.com", &[], &["*@crm/**"], "crm");
    assert_eq!(f2.ask(&wide, "delete", "crm/contacts/1", json!({})).await["decision"], "Deny");

    // A rule that needs a delegation: the identity token never matches it, the delegated one does.
    assert_eq!(f.ask(&identity, "refund", "pay/orders/9", json!({})).await["decision"], "Deny");
    assert_eq!(f.ask(&delegated, "refund", "pay/orders/9", json!({})).await["decision"], "Allow");

    // tokenType: each kind refused where the other is required.
    let out = f.ask(&identity, "read", "crm/contacts/1", json!({"tokenType": "delegated"})).await;
    assert!(
        out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains("identity token where"),
        "{out}"
    );
    let out = f.ask(&delegated, "read", "crm/contacts/1", json!({"tokenType": "identity"})).await;
    assert!(
        out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains("delegated token where"),
        "{out}"
    );
    assert_eq!(
        f.ask(&delegated, "read", "crm/contacts/1", json!({"tokenType": "delegated"})).await["decision"],
        "Allow"
    );
    let out = f.ask(&delegated, "read", "crm/contacts/1", json!({"audience": "pay"})).await;
    assert_eq!(out["decision"], "Deny", "{out}");
}

#[tokio::test]
async fn grantor_restrictions_chain_standing_and_the_ledger_decide_a_delegated_token() {
    let mut f = fixture().await;
    f.index.publish(Builder::default().build(&[agent()], &[policy(), delegated_policy()], &[]));
    // An agent the operator never activated gets nothing, on anyone's behalf.
    let early = f.delegated("alice@example.com", &[], &["refund@pay/orders/**"], "crm");
    let out = f.ask(&early, "refund", "pay/orders/9", json!({})).await;
    assert!(out["reason"].as_str().unwrap().contains("no record of this agent"), "{out}");
    let _ = f.token("uid-bot", "crm");
    // Granted by someone the rule does not name: not allowed; by a member of a named group: allowed.
    let mallory = f.delegated("mallory@example.com", &["support"], &["refund@pay/orders/**"], "crm");
    let out = f.ask(&mallory, "refund", "pay/orders/9", json!({})).await;
    assert!(out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains("no rule"), "{out}");
    let finance = f.delegated("bob@example.com", &["finance"], &["refund@pay/orders/**"], "crm");
    let out = f.ask(&finance, "refund", "pay/orders/9", json!({})).await;
    assert_eq!(out["decision"], "Allow", "{out}");

    // The chain ends (revoked, expired, invalid...): its tokens stop at once.
    let token = f.delegated("alice@example.com", &[], &["read@crm/contacts/1"], "crm");
    assert_eq!(f.ask(&token, "read", "crm/contacts/1", json!({})).await["decision"], "Allow");
    let tokens = f.ledger.delegated_tokens("root-uid");
    let alice = crate::api::Grantor { username: "alice@example.com".into(), uid: None, groups: vec![] };
    f.ledger.set_delegation("root-uid", crate::api::DelegationPhase::Revoked, alice.clone(), tokens.clone());
    let out = f.ask(&token, "read", "crm/contacts/1", json!({})).await;
    assert!(out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains("Revoked"), "{out}");
    // In force, but the operator never minted (or took back) this very token.
    f.ledger.set_delegation("root-uid", crate::api::DelegationPhase::Active, alice, vec![]);
    let out = f.ask(&token, "read", "crm/contacts/1", json!({})).await;
    assert!(
        out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains("not a current token"),
        "{out}"
    );
    // The audit record carries the human and the chain.
    let (log, decisions) = f.decision_records().await;
    let last = decisions.last().unwrap();
    assert_eq!(last["details"]["onBehalfOf"], "alice@example.com", "{last}");
    assert_eq!(last["details"]["chain"], "User:alice@example.com > Agent:bot", "{last}");
    assert_eq!(last["details"]["delegationUID"], "root-uid", "{last}");
    assert!(!log.contains(&token), "no token in the log");
}

#[tokio::test]
async fn ext_authz_routes_can_require_one_kind_of_token() {
    let mut f = fixture().await;
    f.index.publish(Builder::default().build(&[agent()], &[policy(), delegated_policy()], &[]));
    let identity = f.token("uid-bot", "crm");
    let delegated = f.delegated("alice@example.com", &[], &["read@crm/contacts/1"], "crm");
    let kind = |t: &'static [u8]| [("x-agentiam-token-type", t)];
    for (token, header, want) in [
        (&identity, &b"identity"[..], StatusCode::OK),
        (&identity, b"delegated", StatusCode::FORBIDDEN),
        (&delegated, b"delegated", StatusCode::OK),
        (&delegated, b"identity", StatusCode::FORBIDDEN),
    ] {
        let (status, headers, body) = f.send(ext_get("/v1/ext_authz/contacts/1", token, &kind(header))).await;
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, want, "{}: {body}", String::from_utf8_lossy(header));
        if want == StatusCode::FORBIDDEN {
            assert!(body.contains("token where"), "{body}");
            assert_eq!(headers["x-agentiam-decision"], "Deny");
        }
    }
    // Without the header either kind is accepted; an unknown kind, or the header twice, is bad input.
    assert_eq!(f.send(ext_get("/v1/ext_authz/contacts/1", &delegated, &[])).await.0, StatusCode::OK);
    let (status, _, body) =
        f.send(ext_get("/v1/ext_authz/contacts/1", &delegated, &kind(b"Delegated"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8(body).unwrap().contains("x-agentiam-token-type"));
    let twice = [("x-agentiam-token-type", &b"delegated"[..]), ("x-agentiam-token-type", b"delegated")];
    assert_eq!(
        f.send(ext_get("/v1/ext_authz/contacts/1", &delegated, &twice)).await.0,
        StatusCode::BAD_REQUEST
    );
}

// Access tokens from the token endpoint: the agent within the token's scopes and its own policies.

impl Fixture {
    /// An access token for bot with `scopes` for `aud`; recorded as issued when `recorded`.
    fn access(&mut self, scopes: &[&str], aud: &str, recorded: bool) -> String {
        self.access_bound(scopes, aud, recorded, None)
    }

    /// [`Self::access`], bound to the client certificate with thumbprint `certificate` if given.
    fn access_bound(
        &mut self,
        scopes: &[&str],
        aud: &str,
        recorded: bool,
        certificate: Option<&str>,
    ) -> String {
        use crate::identity::access::{AccessClaims, AccessGrant};
        use crate::registry::ledger::AccessIssuance;
        // The agent's record (Active), as an identity token's issuance leaves it.
        let _ = self.token("uid-bot", "crm");
        let agent = SpiffeId::parse("spiffe://cluster.local/ns/ns/agent/bot").unwrap();
        let grant = AccessGrant {
            issuer: ISSUER_URL,
            agent: &agent,
            agent_uid: "uid-bot",
            audience: aud,
            scopes,
            task: Some("t"),
            model: None,
            certificate,
        };
        let claims = AccessClaims::new(grant, jiff::Timestamp::now(), Duration::from_secs(300)).unwrap();
        if recorded {
            let expires_at = jiff::Timestamp::from_second(claims.exp).unwrap();
            let issuance = AccessIssuance {
                agent_uid: "uid-bot".into(),
                aud: aud.into(),
                issued_at: jiff::Timestamp::now(),
                expires_at,
                stored: Stored::Yes,
            };
            self.ledger.set_access(&claims.jti, issuance);
        }
        self.minter.mint(&claims).unwrap()
    }
}

#[tokio::test]
async fn a_certificate_bound_access_token_is_allowed_only_with_its_certificates_thumbprint() {
    let mut f = fixture().await;
    let mine = crate::identity::access::thumbprint(b"the agent's certificate");
    let other = crate::identity::access::thumbprint(b"another certificate");
    let bound = f.access_bound(&["read@crm/contacts/1"], "crm", true, Some(&mine));
    let ask = |t: Option<&str>| match t {
        Some(t) => json!({"certificateThumbprint": t}),
        None => json!({}),
    };
    assert_eq!(f.ask(&bound, "read", "crm/contacts/1", ask(Some(&mine))).await["decision"], "Allow");
    for (thumbprint, why) in [(None, "names none"), (Some(other.as_str()), "another client certificate")] {
        let out = f.ask(&bound, "read", "crm/contacts/1", ask(thumbprint)).await;
        assert!(out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains(why), "{out}");
    }
    // An unbound token does not care; a malformed thumbprint is a bad request, not a decision.
    let bearer = f.access(&["read@crm/contacts/1"], "crm", true);
    assert_eq!(f.ask(&bearer, "read", "crm/contacts/1", ask(Some(&other))).await["decision"], "Allow");
    let req = AuthorizeRequest {
        token: bound,
        action: "read".into(),
        resource: "crm/contacts/1".into(),
        certificate_thumbprint: Some("short".into()),
        ..Default::default()
    };
    assert!(validate(&req, Source::Api).unwrap_err().0.contains("certificateThumbprint"));
}

#[tokio::test]
async fn an_access_token_allows_only_inside_its_scopes_the_agents_policies_and_when_issued() {
    let mut f = fixture().await;
    let access = f.access(&["read@crm/contacts/1", "tools.call@**"], "crm", true);
    let identity = f.token("uid-bot", "crm");
    assert_eq!(f.ask(&access, "read", "crm/contacts/1", json!({})).await["decision"], "Allow");
    // The identity token may read contact 2; the access token for contact 1 may not.
    assert_eq!(f.ask(&identity, "read", "crm/contacts/2", json!({})).await["decision"], "Allow");
    let out = f.ask(&access, "read", "crm/contacts/2", json!({})).await;
    assert!(
        out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains("scope of the access token"),
        "{out}"
    );
    // A scope never adds rights: the policy's attribute condition still applies.
    let search = |limit: u32| json!({"tool": "search_crm", "context": {"limit": limit}});
    assert_eq!(f.ask(&access, "tools.call", "x", search(10)).await["decision"], "Allow");
    assert_eq!(f.ask(&access, "tools.call", "x", search(500)).await["decision"], "Deny");
    // Each kind only where asked for.
    let out = f.ask(&access, "read", "crm/contacts/1", json!({"tokenType": "identity"})).await;
    assert!(
        out["decision"] == "Deny"
            && out["reason"].as_str().unwrap().contains("access token where an identity"),
        "{out}"
    );
    let out = f.ask(&identity, "read", "crm/contacts/1", json!({"tokenType": "access"})).await;
    assert!(
        out["decision"] == "Deny"
            && out["reason"].as_str().unwrap().contains("identity token where an access"),
        "{out}"
    );
    assert_eq!(
        f.ask(&access, "read", "crm/contacts/1", json!({"tokenType": "access"})).await["decision"],
        "Allow"
    );
    assert_eq!(
        f.ask(&access, "read", "crm/contacts/1", json!({"audience": "pay"})).await["decision"],
        "Deny"
    );
    // Signed with our key but never recorded (or voided): refused.
    let stray = f.access(&["read@crm/contacts/1"], "crm", false);
    let out = f.ask(&stray, "read", "crm/contacts/1", json!({})).await;
    assert!(
        out["decision"] == "Deny" && out["reason"].as_str().unwrap().contains("not one the operator issued"),
        "{out}"
    );
    // A suspended agent's access token is refused like its identity token.
    let mut suspended = (*agent()).clone();
    suspended.spec.lifecycle = serde_json::from_value(json!({"desiredState": "Suspended"})).unwrap();
    f.index.publish(Builder::default().build(&[Arc::new(suspended)], &[policy()], &[]));
    assert_eq!(f.ask(&access, "read", "crm/contacts/1", json!({})).await["decision"], "Deny");
}
