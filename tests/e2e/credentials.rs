//! Credentials against the real API server: issuance into the Agent-owned Secret, verification from the
//! operator's published documents only (our strict verifier and the independent `spiffe` crate), the X.509
//! chain with openssl, rotation at 80%, scheduled and emergency key rotation, withdrawal, UID binding.

use std::collections::BTreeMap;

use agentiam::api::Agent;
use agentiam::identity::TrustDomain;
use agentiam::identity::verify::{JwtVerifier, VerifierConfig};
use jiff::Timestamp;
use jsonwebtoken::jwk::JwkSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::{
    Operator, TestNs, WAIT, delete_and_wait, http_get, records, text, wait_credentials, wait_for, wait_phase,
    wait_records,
};
use crate::require_cluster;

const TICKETS: &str = "https://tickets.example.com";
const CRM: &str = "https://crm.example.com";

fn spec(x509: bool, ttl: &str, env: &str) -> Value {
    json!({
        "owner": {"kind": "User", "name": "alice@example.com"},
        "purpose": "answers tickets",
        "environment": env,
        "credentials": {"audiences": [TICKETS, CRM], "ttl": ttl, "x509": x509},
    })
}

async fn secret(ns: &TestNs, agent: &str) -> Option<Secret> {
    ns.api::<Secret>().get_opt(&format!("{agent}-credentials")).await.ok().flatten()
}

fn data(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

fn annotation<'a>(s: &'a Secret, key: &str) -> &'a str {
    s.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str).unwrap_or_default()
}

/// A strict verifier built from nothing but the operator's /keys endpoint.
async fn verifier_from_endpoint(op: &Operator) -> JwtVerifier {
    let (status, _, body) = http_get(&op.http_addr, "/keys").await;
    assert_eq!(status, 200, "{body}");
    let jwks: JwkSet = serde_json::from_str(&body).unwrap();
    let config = VerifierConfig::new(TrustDomain::parse("cluster.local").unwrap(), op.base_url());
    JwtVerifier::new(config, &jwks).unwrap()
}

/// The spiffe crate's view of the operator's /v1/bundle (JWT authorities only, as a bundle consumer does).
async fn spiffe_bundles(op: &Operator) -> spiffe::JwtBundleSet {
    let (status, _, body) = http_get(&op.http_addr, "/v1/bundle").await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<Value> =
        doc["keys"].as_array().unwrap().iter().filter(|k| k["use"] == "jwt-svid").cloned().collect();
    let td = spiffe::TrustDomain::new("cluster.local").unwrap();
    let bundle =
        spiffe::JwtBundle::from_jwt_authorities(td, &serde_json::to_vec(&json!({"keys": keys})).unwrap())
            .unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(bundle);
    set
}

#[tokio::test]
async fn an_active_agent_gets_tokens_that_independent_verifiers_accept() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "creds").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let created = ns.create_agent("bot", spec(false, "20m", "Production")).await;
    let a = wait_credentials(&api, "bot").await;
    let uid = created.metadata.uid.unwrap();
    let s = secret(&ns, "bot").await.expect("credentials Secret");
    let d = data(&s);
    assert_eq!(
        d.keys().cloned().collect::<Vec<_>>(),
        ["bundle.pem", "token-https___crm.example.com", "token-https___tickets.example.com"]
    );
    // Owned by this Agent object (garbage-collected with it) and bound to its UID.
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Agent", uid.as_str(), Some(true))
    );
    assert_eq!(annotation(&s, "agentiam.dev/agent-uid"), uid);
    let st = a.status.unwrap().credentials.unwrap();
    assert_eq!(st.secret_name.as_deref(), Some("bot-credentials"));
    assert_eq!(st.key_id.as_deref(), Some(annotation(&s, "agentiam.dev/key-id")));

    let verifier = verifier_from_endpoint(&op).await;
    let bundles = spiffe_bundles(&op).await;
    let id = format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name);
    for (key, aud) in [("token-https___tickets.example.com", TICKETS), ("token-https___crm.example.com", CRM)]
    {
        let token = &d[key];
        let v = verifier.verify(token, aud, Timestamp::now()).expect("our strict verifier accepts it");
        assert_eq!(v.spiffe_id.to_string(), id);
        assert_eq!(v.extra["agentiam.dev/uid"], uid.as_str());
        assert_eq!(v.extra["agentiam.dev/owner"], "User:alice@example.com");
        // Trust 275 (< 400) halves the requested 20m.
        let lifetime = v.expires_at.duration_since(v.issued_at.unwrap()).as_secs();
        assert_eq!(lifetime, 600, "20m requested, halved for a low trust score");
        assert!(
            verifier.verify(token, "https://other.example.com", Timestamp::now()).is_err(),
            "audience is bound"
        );
        let svid = spiffe::JwtSvid::parse_and_validate(token, &bundles, &[aud])
            .expect("the spiffe crate accepts it");
        assert_eq!(svid.spiffe_id().to_string(), id);
    }
    // The issuance is in the audit log, with the token IDs but never the tokens.
    let log = std::fs::read_to_string(op.audit_log()).unwrap();
    assert!(log.contains("\"action\":\"credential.issue\""));
    assert!(!log.contains(&d["token-https___tickets.example.com"]), "a token leaked into the audit log");
    assert!(
        !op.stderr().contains(&d["token-https___tickets.example.com"][..40]),
        "a token leaked into the logs"
    );
    let reasons = env.kubectl(&["get", "events", "-n", &ns.name, "-o", "jsonpath={.items[*].reason}"], None);
    assert!(text(&reasons).contains("CredentialsIssued"), "{}", text(&reasons));
}

#[tokio::test]
async fn the_x509_svid_chains_to_the_bundle_with_openssl() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "x509").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent("tls", spec(true, "30m", "Sandbox")).await;
    wait_credentials(&api, "tls").await;
    let d = data(&secret(&ns, "tls").await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    for f in ["svid.pem", "svid-key.pem", "bundle.pem"] {
        std::fs::write(dir.path().join(f), &d[f]).unwrap();
    }
    let path = |f: &str| dir.path().join(f).display().to_string();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", &path("bundle.pem"), "-purpose", "sslclient", &path("svid.pem")])
        .output()
        .expect("openssl is required");
    assert!(out.status.success(), "openssl verify: {}", text(&out));
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &path("svid.pem")])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(t.contains(&format!("URI:spiffe://cluster.local/ns/{}/agent/tls", ns.name)), "{t}");
    assert!(!t.contains("DNS:"), "the SPIFFE ID is the only SAN: {t}");
    // The trust bundle ConfigMap of the namespace carries the same CA.
    let cm = ns.api::<ConfigMap>().get("agentiam-trust-bundle").await.expect("trust bundle ConfigMap");
    let cm_data = cm.data.unwrap();
    assert_eq!(cm_data["trust-bundle.pem"], d["bundle.pem"]);
    let spiffe: Value = serde_json::from_str(&cm_data["spiffe-bundle.json"]).unwrap();
    assert!(spiffe["keys"].as_array().unwrap().iter().any(|k| k["use"] == "x509-svid"));
}

#[tokio::test]
async fn credentials_are_withdrawn_when_the_agent_leaves_active_and_reissued_on_resume() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "withdraw").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent("w", spec(true, "10m", "Production")).await;
    wait_credentials(&api, "w").await;
    let first = annotation(&secret(&ns, "w").await.unwrap(), "agentiam.dev/issue-key").to_owned();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"lifecycle": {"desiredState": "Suspended"}}})),
    )
    .await
    .unwrap();
    wait_for("the Secret to be deleted", WAIT, || async { secret(&ns, "w").await.is_none().then_some(()) })
        .await;
    let a = wait_phase(&api, "w", "Suspended").await;
    assert!(a.status.unwrap().credentials.is_none(), "status must not advertise withdrawn credentials");
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"lifecycle": {"desiredState": "Active"}}})),
    )
    .await
    .unwrap();
    wait_credentials(&api, "w").await;
    let second = annotation(&secret(&ns, "w").await.unwrap(), "agentiam.dev/issue-key").to_owned();
    assert_ne!(first, second, "fresh credentials after resuming");
    let recs = wait_records(&op, "the withdrawal record", |r| {
        r.iter().any(|x| x["action"] == "credential.withdraw")
    })
    .await;
    assert!(recs.iter().any(|x| x["action"] == "credential.withdraw" && x["kind"] == "outcome"));
}

#[tokio::test]
async fn a_recreated_agent_never_makes_old_credentials_valid_again() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rebind").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let first_uid = ns.create_agent("r", spec(false, "10m", "Production")).await.metadata.uid.unwrap();
    wait_credentials(&api, "r").await;
    let old_token = data(&secret(&ns, "r").await.unwrap())["token-https___tickets.example.com"].clone();
    delete_and_wait(&api, "r").await;
    assert!(secret(&ns, "r").await.is_none(), "archiving revoked the credentials");
    let second_uid = ns.create_agent("r", spec(false, "10m", "Production")).await.metadata.uid.unwrap();
    wait_credentials(&api, "r").await;
    let s = secret(&ns, "r").await.unwrap();
    assert_eq!(annotation(&s, "agentiam.dev/agent-uid"), second_uid);
    // The old token still has a valid signature (it has not expired), but it names the old UID: a relying
    // party that checks the UID claim against the current Agent (as the CLI does) refuses it.
    let (check, _) = token_verify(&op, &old_token, &second_uid);
    assert!(!check, "the old token was accepted for the new agent");
    let new_token = &data(&s)["token-https___tickets.example.com"];
    let (ok, out) = token_verify(&op, new_token, &second_uid);
    assert!(ok, "{out}");
    assert_ne!(first_uid, second_uid);
}

/// `kubectl agentiam token verify` against the operator's issuer, with the UID check.
fn token_verify(op: &Operator, token: &str, uid: &str) -> (bool, String) {
    let issuer = op.base_url();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-agentiam"))
        .args([
            "token",
            "verify",
            "-",
            "--audience",
            TICKETS,
            "--issuer-url",
            &issuer,
            "--expect-agent-uid",
            uid,
            "--cacert",
            &op.ca_file().display().to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn credentials_rotate_at_80_percent_of_their_lifetime() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rotate80").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    // Sandbox baseline 400 is not lowered: the lifetime is the requested 1m, so rotation is due after 48s.
    ns.create_agent("fast", spec(false, "1m", "Sandbox")).await;
    wait_credentials(&api, "fast").await;
    let s1 = secret(&ns, "fast").await.unwrap();
    let issued = annotation(&s1, "agentiam.dev/issued-at").parse::<Timestamp>().unwrap();
    let refresh = annotation(&s1, "agentiam.dev/refresh-at").parse::<Timestamp>().unwrap();
    assert_eq!(refresh.duration_since(issued).as_secs(), 48);
    let timeout = std::time::Duration::from_secs(120);
    let s2 = wait_for("the credentials to rotate", timeout, || async {
        let s = secret(&ns, "fast").await?;
        (annotation(&s, "agentiam.dev/issued-at") != annotation(&s1, "agentiam.dev/issued-at")).then_some(s)
    })
    .await;
    let rotated_at = annotation(&s2, "agentiam.dev/issued-at").parse::<Timestamp>().unwrap();
    assert!(rotated_at >= refresh, "rotated before 80%: {rotated_at} < {refresh}");
    assert!(
        rotated_at < annotation(&s1, "agentiam.dev/expires-at").parse::<Timestamp>().unwrap(),
        "rotated after expiry"
    );
    let recs = records(&op.audit_log());
    assert!(
        recs.iter()
            .any(|r| r["action"] == "credential.issue" && r["reason"] == "rotation at 80% of the lifetime")
    );
}

#[tokio::test]
async fn scheduled_key_rotation_keeps_old_tokens_valid_and_emergency_rotation_kills_them() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "keyrot").await;
    let op = Operator::start(&env, &ns.name, &["--key-rotation-period", "1m"]);
    let api = ns.api::<Agent>();
    ns.create_agent("k", spec(false, "30m", "Sandbox")).await;
    wait_credentials(&api, "k").await;
    let s1 = secret(&ns, "k").await.unwrap();
    let kid1 = annotation(&s1, "agentiam.dev/key-id").to_owned();
    let token1 = data(&s1)["token-https___tickets.example.com"].clone();
    let (_, _, keys_before) = http_get(&op.http_addr, "/keys").await;
    let next_kid = serde_json::from_str::<Value>(&keys_before).unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .find(|k| *k != kid1)
        .expect("the next key is published before it signs");

    // Scheduled rotation after one period: the published next key signs, the old one stays published.
    let recs = wait_records(&op, "a scheduled rotation", |r| {
        r.iter().any(|x| x["action"] == "issuer.rotate" && x["kind"] == "outcome")
    })
    .await;
    let rotation = recs.iter().find(|x| x["action"] == "issuer.rotate" && x["kind"] == "intent").unwrap();
    assert_eq!(rotation["details"]["kind"], "scheduled");
    assert_eq!(rotation["details"]["activated"], next_kid.as_str());
    let verifier = verifier_from_endpoint(&op).await;
    verifier.verify(&token1, TICKETS, Timestamp::now()).expect("a token of the previous key still verifies");
    // Existing credentials are not reissued by a scheduled rotation; new issuance uses the new key.
    ns.create_agent("k2", spec(false, "30m", "Sandbox")).await;
    wait_credentials(&api, "k2").await;
    assert_eq!(annotation(&secret(&ns, "k2").await.unwrap(), "agentiam.dev/key-id"), next_kid);

    // Emergency rotation: the old keys leave the published set at once and their tokens stop verifying.
    let out = env.kubectl(
        &[
            "annotate",
            "secret",
            "agentiam-signing-keys",
            "-n",
            &ns.name,
            "agentiam.dev/emergency-rotation=incident-42",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the old key to leave /keys", WAIT, || async {
        let (_, _, body) = http_get(&op.http_addr, "/keys").await;
        (!body.contains(&kid1) && !body.contains(&next_kid)).then_some(())
    })
    .await;
    let verifier = verifier_from_endpoint(&op).await;
    assert!(
        verifier.verify(&token1, TICKETS, Timestamp::now()).is_err(),
        "a withdrawn key's token still verifies"
    );
    // Every agent is re-issued under the new key.
    for name in ["k", "k2"] {
        wait_for(&format!("{name} re-issued under a published key"), WAIT, || async {
            let s = secret(&ns, name).await?;
            let kid = annotation(&s, "agentiam.dev/key-id").to_owned();
            (kid != kid1 && kid != next_kid).then_some(())
        })
        .await;
    }
    let recs = records(&op.audit_log());
    let emergency =
        recs.iter().find(|x| x["action"] == "issuer.rotate" && x["details"]["kind"] == "emergency").unwrap();
    assert!(emergency["reason"].as_str().unwrap().contains("incident-42"));
    let s = ns.api::<Secret>().get("agentiam-signing-keys").await.unwrap();
    assert!(
        !s.metadata.annotations.unwrap_or_default().contains_key("agentiam.dev/emergency-rotation"),
        "one request, one rotation"
    );
}

#[tokio::test]
async fn the_issuer_documents_are_served_with_cache_headers() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "docs").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let (status, headers, body) = http_get(&op.http_addr, "/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], op.base_url());
    assert_eq!(doc["jwks_uri"], format!("{}/keys", op.base_url()));
    assert!(headers["cache-control"].contains("max-age="), "{headers:?}");
    let (status, headers, body) = http_get(&op.http_addr, "/keys").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("application/jwk-set+json"), "{headers:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["keys"].as_array().unwrap().len(),
        2,
        "next and current"
    );
    let (status, _, body) = http_get(&op.http_addr, "/v1/bundle").await;
    assert_eq!(status, 200);
    let b: Value = serde_json::from_str(&body).unwrap();
    assert!(b["spiffe_refresh_hint"].as_u64().unwrap() > 0);
    assert!(b["spiffe_sequence"].as_u64().unwrap() >= 1);
}

const PYJWT_DISCOVERY: &str = r#"
import json, sys, urllib.request
import jwt
base, aud = sys.argv[1], sys.argv[2]
token = sys.stdin.read().strip()
conf = json.load(urllib.request.urlopen(base + "/.well-known/openid-configuration"))
key = jwt.PyJWKClient(conf["jwks_uri"]).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=aud, issuer=conf["issuer"])
print(claims["sub"])
"#;

#[tokio::test]
async fn pyjwt_verifies_issued_tokens_through_the_operators_oidc_discovery() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "pyjwt").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    ns.create_agent("py", spec(false, "10m", "Production")).await;
    wait_credentials(&api, "py").await;
    let token = data(&secret(&ns, "py").await.unwrap())["token-https___tickets.example.com"].clone();
    let base = op.base_url();
    let run = |aud: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(
            std::env::var("AGENTIAM_PYTHON").unwrap_or_else(|_| "python3".to_owned()),
        )
        .args(["-c", PYJWT_DISCOVERY, &base, aud])
        // Python's default HTTPS context (urllib, PyJWKClient) trusts the operator's published CA.
        .env("SSL_CERT_FILE", op.ca_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a Python with PyJWT is required (tools/e2e.sh makes one: tools/python-env.sh)");
        child.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = run(TICKETS);
    assert!(ok.status.success(), "PyJWT refused our token: {}", text(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        format!("spiffe://cluster.local/ns/{}/agent/py", ns.name)
    );
    let wrong = run("https://elsewhere.example.com");
    assert!(!wrong.status.success() && text(&wrong).contains("Audience"), "{}", text(&wrong));
}

#[tokio::test]
async fn a_policy_ttl_cap_shortens_credentials_and_changing_it_reissues() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "ttlcap").await;
    let policy = |cap: &str| {
        json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "cap"},
            "spec": {"agents": {"names": ["capped"]}, "credentialTTLCap": cap,
                     "rules": [{"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["x"]}]},
        })
        .to_string()
    };
    assert!(ns.apply(&policy("5m")).status.success());
    let _op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    // Sandbox + individual owner = trust 425: not lowered, so only the policy shortens the requested 30m.
    ns.create_agent("capped", spec(false, "30m", "Sandbox")).await;
    wait_credentials(&api, "capped").await;
    let lifetime = |s: &Secret| {
        let at = |k: &str| annotation(s, k).parse::<Timestamp>().unwrap();
        at("agentiam.dev/expires-at").duration_since(at("agentiam.dev/issued-at")).as_secs()
    };
    assert_eq!(lifetime(&secret(&ns, "capped").await.unwrap()), 300, "capped at the policy's 5m");
    assert!(ns.apply(&policy("2m")).status.success());
    let s = wait_for("re-issuance under the lower cap", WAIT, || async {
        let s = secret(&ns, "capped").await?;
        (lifetime(&s) == 120).then_some(s)
    })
    .await;
    let token = &data(&s)["token-https___tickets.example.com"];
    let (_, claims) = agentiam::identity::verify::decode_unverified(token).unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);
}
