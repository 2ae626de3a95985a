//! The token endpoint against the real API server: an agent authenticates with its own JWT-SVID for the
//! endpoint (private_key_jwt) and gets an access token for one resource carrying only the scopes its
//! policies allow unconditionally; each assertion works once, also after an operator restart; every bad
//! request gets its RFC 6749 error and no token; the access token verifies with the published JWKS, is
//! taken by the decision API within its scopes and refused where an identity token is required;
//! issuances and refusals are in the audit log, tokens never are.

use std::sync::Arc;
use std::time::Duration;

use agentiam::api::Agent;
use agentiam::identity::TrustDomain;
use agentiam::identity::verify::{JwtVerifier, VerifierConfig};
use agentiam::registry::credentials::token_keys;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::JwkSet;
use kube::api::{Patch, PatchParams};
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use crate::authz::apply_policy;
use crate::harness::{
    Operator, TestNs, WAIT, http_get, http_post, secret_value, wait_credentials, wait_for, wait_phase,
    wait_records,
};
use crate::require_cluster;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const ASSERTION_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";

fn endpoint(op: &Operator) -> String {
    format!("{}/v1/oauth/token", op.base_url())
}

fn spec(endpoint: &str, extra: &[String]) -> Value {
    let mut audiences = vec!["crm".to_owned(), endpoint.to_owned()];
    audiences.extend(extra.iter().cloned());
    json!({
        "owner": {"kind": "Team", "name": "e2e"},
        "purpose": "exercises the token endpoint",
        "provenance": {"model": "claude-sonnet-4-5"},
        "credentials": {"audiences": audiences, "x509": true},
    })
}

/// The agent's current JWT-SVID for `audience`.
async fn svid(ns: &TestNs, agent: &str, audience: &str) -> Option<String> {
    let key = token_keys(&[audience.to_owned()]).remove(0).1;
    secret_value(ns, &format!("{agent}-credentials"), &key).await
}

/// A new assertion: widening the audiences is a changed request, so the agent gets new tokens.
async fn fresh_assertion(ns: &TestNs, op: &Operator, round: usize) -> String {
    let before = svid(ns, "bot", &endpoint(op)).await;
    let extra: Vec<String> = (0..round).map(|i| format!("extra-{i}")).collect();
    let patch = json!({"spec": spec(&endpoint(op), &extra)});
    ns.api::<Agent>().patch("bot", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("a new JWT-SVID for the token endpoint", WAIT, || async {
        let now = svid(ns, "bot", &endpoint(op)).await;
        (now.is_some() && now != before).then_some(now).flatten()
    })
    .await
}

async fn post(op: &Operator, body: &str) -> (u16, Value, std::collections::BTreeMap<String, String>) {
    let (status, headers, text) = http_post(&op.http_addr, "/v1/oauth/token", &[FORM], body.as_bytes()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), headers)
}

/// The agent's X.509-SVID chain (standard base64 DER, leaf first) and its key.
async fn x509(ns: &TestNs) -> (Vec<String>, EcdsaKeyPair) {
    x509_of(ns, "bot").await
}

/// `agent`'s X.509-SVID chain and key.
async fn x509_of(ns: &TestNs, agent: &str) -> (Vec<String>, EcdsaKeyPair) {
    let chain = secret_value(ns, &format!("{agent}-credentials"), "svid.pem").await.expect("svid.pem");
    let key = secret_value(ns, &format!("{agent}-credentials"), "svid-key.pem").await.expect("svid-key.pem");
    let blocks = |pem: &str| -> Vec<String> {
        pem.split("-----END")
            .filter_map(|b| b.split_once("-----\n").map(|(_, body)| body.to_owned()))
            .map(|body| body.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
            .filter(|b| !b.is_empty())
            .collect()
    };
    let der = STANDARD.decode(&blocks(&key)[0]).unwrap();
    (blocks(&chain), EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap())
}

/// A client assertion signed with `key`, carrying `chain`, with `claims` over the defaults.
fn signed(key: &EcdsaKeyPair, chain: &[String], id: &str, aud: &str, jti: &str, ttl: i64) -> String {
    let now = jiff::Timestamp::now().as_second();
    let header = json!({"alg": "ES256", "typ": "JWT", "x5c": chain});
    let claims = json!({"iss": id, "sub": id, "aud": aud, "jti": jti, "iat": now, "exp": now + ttl});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// An answer as a failing assertion may print it: an access token in it replaced.
fn shown(answer: &Value) -> String {
    let mut a = answer.clone();
    if let Some(t) = a.get_mut("access_token") {
        *t = Value::from("<redacted>");
    }
    a.to_string()
}

fn request(assertion: &str, extra: &str) -> String {
    format!(
        "grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}&client_assertion={assertion}&{extra}"
    )
}

/// An independent OAuth client in Python, using only the published metadata: PyJWT signs the
/// `private_key_jwt` assertion with the agent's X.509-SVID key (certificate in `x5c`), urllib posts the
/// `client_credentials` request, and PyJWT validates the access token through the metadata's `jwks_uri`.
const PYTHON_CLIENT: &str = r#"
import json, sys, time, uuid, urllib.error, urllib.parse, urllib.request
import jwt
base, agent, chain, key = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.stdin.read()
meta = json.load(urllib.request.urlopen(base + "/.well-known/oauth-authorization-server"))
assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"], meta
assert "client_credentials" in meta["grant_types_supported"], meta
now = int(time.time())
assertion = jwt.encode(
    {"iss": agent, "sub": agent, "aud": meta["token_endpoint"], "jti": str(uuid.uuid4()), "iat": now, "exp": now + 60},
    key, algorithm="ES256", headers={"x5c": chain})
form = urllib.parse.urlencode({
    "grant_type": "client_credentials",
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "client_assertion": assertion, "scope": "read@crm:contacts/42", "resource": "crm"}).encode()
answer = json.load(urllib.request.urlopen(urllib.request.Request(meta["token_endpoint"], data=form)))
token = answer["access_token"]
assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
signing = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(token)
claims = jwt.decode(token, signing.key, algorithms=["ES256"], audience="crm", issuer=meta["issuer"])
assert claims["client_id"] == agent and claims["scope"] == "read@crm:contacts/42", claims
try:
    urllib.request.urlopen(urllib.request.Request(meta["token_endpoint"], data=form))
    sys.exit("the same assertion was accepted twice")
except urllib.error.HTTPError as e:
    assert e.code == 401 and json.load(e)["error"] == "invalid_client"
print(claims["sub"])
"#;

#[tokio::test]
async fn client_credentials_with_single_use_assertions_by_jwt_svid_and_by_x509_svid_key() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "token").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    let ep = endpoint(&op);
    apply_policy(
        &ns,
        "crm",
        json!({"agents": {"names": ["bot"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]},
            {"name": "no-vip", "effect": "Deny", "actions": ["read"], "resources": ["crm:contacts/vip-*"]},
            {"name": "refund", "effect": "Allow", "actions": ["refund"], "resources": ["pay:orders/*"],
             "conditions": {"attributes": [{"key": "amount", "operator": "LessThan", "value": "100"}]}}]}),
    )
    .await;
    ns.create_agent("bot", spec(&ep, &[])).await;
    wait_credentials(&ns.api::<Agent>(), "bot").await;
    let assertion = svid(&ns, "bot", &ep).await.expect("a JWT-SVID for the token endpoint");

    // The metadata names the endpoint, the grant and the one authentication method.
    let (status, _, meta) = http_get(&op.http_addr, "/.well-known/oauth-authorization-server").await;
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["token_endpoint"], ep);
    assert_eq!(meta["issuer"], op.base_url());
    assert_eq!(
        meta["grant_types_supported"],
        json!(["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"])
    );
    assert_eq!(meta["token_endpoint_auth_methods_supported"], json!(["private_key_jwt", "tls_client_auth"]));
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);

    // Refused before authentication: nothing here spends the assertion.
    let crm_svid = svid(&ns, "bot", "crm").await.unwrap();
    let ok = "scope=read%40crm%3Acontacts%2F42&resource=crm";
    for (body, code) in [
        (request(&crm_svid, ok), "invalid_client"),
        (request("not.a.jwt", ok), "invalid_client"),
        (request(&assertion, &format!("{ok}&scope=read%40x")), "invalid_request"),
        (request(&assertion, &format!("{ok}&x=%zz")), "invalid_request"),
        (format!("grant_type=password&username=u&password=p&{ok}"), "unsupported_grant_type"),
        (format!("grant_type=client_credentials&client_secret=s&{ok}"), "invalid_client"),
        (format!("grant_type=client_credentials&{ok}"), "invalid_client"),
        (request(&assertion, &format!("{ok}&client_id=spiffe%3A%2F%2Fother")), "invalid_client"),
        (request(&assertion, "resource=crm"), "invalid_scope"),
        (request(&assertion, "scope=read&resource=crm"), "invalid_scope"),
        (request(&assertion, "scope=read%40crm%3Acontacts%2F42"), "invalid_target"),
        (request(&"a".repeat(20_000), ok), "invalid_client"),
    ] {
        let (status, answer, headers) = post(&op, &body).await;
        assert_eq!(answer["error"], code, "expected {code}: {}", shown(&answer));
        assert!(status == 400 || status == 401, "{status} {}", shown(&answer));
        assert!(answer.get("access_token").is_none());
        assert_eq!(headers.get("cache-control").map(String::as_str), Some("no-store"));
    }
    let (status, _, _) =
        http_post(&op.http_addr, "/v1/oauth/token", &[("Content-Type", "application/json")], b"{}").await;
    assert_eq!(status, 400);
    let (status, answer, _) = {
        let h = [FORM, ("Authorization", "Basic Ym90OnNlY3JldA==")];
        let (s, _, t) =
            http_post(&op.http_addr, "/v1/oauth/token", &h, request(&assertion, ok).as_bytes()).await;
        (s, serde_json::from_str::<Value>(&t).unwrap(), ())
    };
    assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_client")));

    // Granted: only what the policy allows unconditionally; the conditional refund is left out.
    let asked = "scope=read%40crm%3Acontacts%2F42+refund%40pay%3Aorders%2F1+read%40crm%3Acontacts%2F*&resource=crm&task=t-1";
    let (status, answer, headers) = post(&op, &request(&assertion, asked)).await;
    assert_eq!(status, 200, "{}", shown(&answer));
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["scope"], "read@crm:contacts/42");
    assert_eq!(answer["expires_in"], 300);
    assert_eq!(headers.get("cache-control").map(String::as_str), Some("no-store"));
    let access = answer["access_token"].as_str().unwrap().to_owned();

    // It verifies with the published keys, as an access token and as nothing else.
    let (_, _, jwks) = http_get(&op.http_addr, "/keys").await;
    let jwks: JwkSet = serde_json::from_str(&jwks).unwrap();
    let config = VerifierConfig::new(TrustDomain::parse("cluster.local").unwrap(), op.base_url());
    let verifier = JwtVerifier::new(config, &jwks).unwrap();
    let v = verifier.verify_access(&access, jiff::Timestamp::now()).unwrap();
    assert_eq!(v.agent.to_string(), format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name));
    assert_eq!(v.audience, "crm");
    assert_eq!((v.task.as_deref(), v.model.as_deref()), (Some("t-1"), Some("claude-sonnet-4-5")));
    assert!(verifier.verify_any_audience(&access, jiff::Timestamp::now()).is_err());
    // `kubectl agentiam token verify` knows it as an access token.
    let out = env.plugin(&[
        "token",
        "verify",
        "--audience",
        "crm",
        "--issuer-url",
        &op.base_url(),
        "--cacert",
        &op.ca_file().display().to_string(),
        &access,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("access token (at+jwt)") && text.contains("scopes:        read@crm:contacts/42"),
        "{text}"
    );
    assert!(!text.contains(&access), "the plugin printed the token");

    // The decision API takes it within its scopes and the agent's policies, and as nothing else.
    let decide =
        |resource: &'static str, extra: Value| crate::harness::decide(&op, &access, "read", resource, extra);
    assert_eq!(decide("crm:contacts/42", json!({"tokenType": "access"})).await["decision"], "Allow");
    let d = decide("crm:contacts/43", json!({})).await;
    assert!(
        d["decision"] == "Deny" && d["reason"].as_str().unwrap().contains("scope of the access token"),
        "{d}"
    );
    let d = decide("crm:contacts/42", json!({"tokenType": "identity"})).await;
    assert_eq!(d["decision"], "Deny", "{d}");

    // An assertion the agent signs itself with its X.509-SVID key: as many tokens as it asks for, each
    // assertion once.
    let (chain, key) = x509(&ns).await;
    let id = format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name);
    let mine = signed(&key, &chain, &id, &ep, "x-1", 60);
    let (status, answer, _) = post(&op, &request(&mine, ok)).await;
    assert_eq!((status, answer["scope"].as_str()), (200, Some("read@crm:contacts/42")), "{}", shown(&answer));
    let (_, answer, _) = post(&op, &request(&mine, ok)).await;
    assert_eq!(answer["error"], "invalid_client", "the same X.509 assertion twice: {}", shown(&answer));
    let (status, _, _) = post(&op, &request(&signed(&key, &chain, &id, &ep, "x-2", 60), ok)).await;
    assert_eq!(status, 200, "a new assertion from the same certificate");
    let stranger = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    for (bad, why) in [
        (signed(&key, &chain, &id, "crm", "x-3", 60), "another audience"),
        (signed(&stranger, &chain, &id, &ep, "x-4", 60), "another key with the agent's certificate"),
        (signed(&key, &chain, &id, &ep, "x-5", 3600), "an hour long"),
        (signed(&key, &chain, &id.replace("/bot", "/other"), &ep, "x-6", 60), "another subject"),
    ] {
        let (_, answer, _) = post(&op, &request(&bad, ok)).await;
        assert_eq!(answer["error"], "invalid_client", "{why}: {}", shown(&answer));
    }

    // The same with an independent client: PyJWT and urllib, from the published metadata alone.
    let python = {
        use std::io::Write;
        let key_pem = secret_value(&ns, "bot-credentials", "svid-key.pem").await.unwrap();
        let chain_json = serde_json::to_string(&chain).unwrap();
        let mut child = std::process::Command::new(
            std::env::var("AGENTIAM_PYTHON").unwrap_or_else(|_| "python3".to_owned()),
        )
        .args(["-c", PYTHON_CLIENT, &op.base_url(), &id, &chain_json])
        .env("SSL_CERT_FILE", op.ca_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a Python with PyJWT is required (tools/e2e.sh makes one: tools/python-env.sh)");
        child.stdin.take().unwrap().write_all(key_pem.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(python.status.success(), "the Python client failed: {}", String::from_utf8_lossy(&python.stderr));
    assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), id);

    // Revocation by the holder (RFC 7009): durable, and the decision API refuses the token at once.
    let revoke = |assertion: String, token: String| {
        let op = &op;
        async move {
            let body =
                format!("client_assertion_type={ASSERTION_TYPE}&client_assertion={assertion}&token={token}");
            let (status, _, text) =
                http_post(&op.http_addr, "/v1/oauth/revoke", &[FORM], body.as_bytes()).await;
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    let (status, _, answer) = {
        let (s, a, h) = post(&op, &request(&signed(&key, &chain, &id, &ep, "x-r0", 60), ok)).await;
        (s, h, a)
    };
    assert_eq!(status, 200, "{}", shown(&answer));
    let doomed = answer["access_token"].as_str().unwrap().to_owned();
    let allowed = crate::harness::decide(&op, &doomed, "read", "crm:contacts/42", json!({})).await;
    assert_eq!(allowed["decision"], "Allow", "{allowed}");
    let r1 = signed(&key, &chain, &id, &ep, "x-r1", 60);
    assert_eq!(revoke(r1.clone(), doomed.clone()).await.0, 200);
    let d = crate::harness::decide(&op, &doomed, "read", "crm:contacts/42", json!({})).await;
    assert!(
        d["decision"] == "Deny" && d["reason"].as_str().unwrap().contains("not one the operator issued"),
        "{d}"
    );
    assert_eq!(revoke(r1, doomed.clone()).await.1["error"], "invalid_client", "a replayed assertion");
    assert_eq!(revoke(signed(&key, &chain, &id, &ep, "x-r2", 60), "not.a.token".into()).await.0, 200);
    assert_eq!(revoke("x.y.z".into(), doomed.clone()).await.1["error"], "invalid_client");
    let meta: Value =
        serde_json::from_str(&http_get(&op.http_addr, "/.well-known/oauth-authorization-server").await.2)
            .unwrap();
    assert_eq!(meta["revocation_endpoint"], format!("{}/v1/oauth/revoke", op.base_url()));

    // The assertion is spent: again, and after a restart, it is refused.
    let (status, answer, headers) = post(&op, &request(&assertion, asked)).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_client")), "{}", shown(&answer));
    assert!(answer["error_description"].as_str().unwrap().contains("used before"));
    assert!(headers.contains_key("www-authenticate"));
    op.restart();
    let (_, answer, _) = post(&op, &request(&assertion, asked)).await;
    assert_eq!(answer["error"], "invalid_client", "replay after a restart: {}", shown(&answer));
    let d = crate::harness::decide(&op, &doomed, "read", "crm:contacts/42", json!({})).await;
    assert_eq!(d["decision"], "Deny", "a revoked token stays revoked after a restart: {d}");

    // Refusals after authentication spend the assertion too, each with its own error.
    let a1 = fresh_assertion(&ns, &op, 1).await;
    let (_, answer, _) = post(
        &op,
        &request(&a1, "scope=refund%40pay%3Aorders%2F1+read%40crm%3Acontacts%2Fvip-1&resource=crm"),
    )
    .await;
    assert_eq!(answer["error"], "invalid_scope", "{}", shown(&answer));
    let text = answer["error_description"].as_str().unwrap();
    assert!(text.contains("refund@pay:orders/1") && text.contains("no-vip"), "{text}");
    let (_, answer, _) = post(&op, &request(&a1, ok)).await;
    assert_eq!(answer["error"], "invalid_client", "{}", shown(&answer));
    let a2 = fresh_assertion(&ns, &op, 2).await;
    let (_, answer, _) = post(&op, &request(&a2, "scope=read%40crm%3Acontacts%2F42&resource=payments")).await;
    assert_eq!(answer["error"], "invalid_target", "{}", shown(&answer));

    // A suspended agent gets no token, whatever it presents.
    let a3 = fresh_assertion(&ns, &op, 3).await;
    let patch = json!({"spec": {"lifecycle": {"desiredState": "Suspended"}}});
    ns.api::<Agent>().patch("bot", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_phase(&ns.api::<Agent>(), "bot", "Suspended").await;
    let (_, answer, _) = post(&op, &request(&a3, ok)).await;
    assert!(answer.get("access_token").is_none(), "{}", shown(&answer));
    let (_, answer, _) = post(&op, &request(&signed(&key, &chain, &id, &ep, "x-9", 60), ok)).await;
    assert!(answer.get("access_token").is_none(), "a suspended agent's certificate: {}", shown(&answer));
    let d = crate::harness::decide(&op, &access, "read", "crm:contacts/42", json!({})).await;
    assert_eq!(d["decision"], "Deny", "a suspended agent's access token: {d}");
    assert!(
        ["invalid_client", "unauthorized_client"].contains(&answer["error"].as_str().unwrap()),
        "{}",
        shown(&answer)
    );

    // The log holds the issuance (intent, then outcome) and the refusals, never a token.
    let recs = wait_records(&op, "token records", |r| {
        r.iter().any(|x| x["action"] == "token.issue" && x["kind"] == "outcome" && x["outcome"] == "success")
    })
    .await;
    let intent = recs.iter().find(|r| r["action"] == "token.issue" && r["kind"] == "intent").unwrap();
    assert_eq!(intent["details"]["scope"], "read@crm:contacts/42");
    assert_eq!(intent["details"]["task"], "t-1");
    let refused: Vec<&str> = recs
        .iter()
        .filter(|r| r["action"] == "token.refuse")
        .filter_map(|r| r["details"]["error"].as_str())
        .collect();
    for code in
        ["invalid_client", "invalid_request", "unsupported_grant_type", "invalid_scope", "invalid_target"]
    {
        assert!(refused.contains(&code), "{code} not recorded: {refused:?}");
    }
    let log = std::fs::read_to_string(op.audit_log()).unwrap();
    assert!(!log.contains(&access) && !log.contains(&assertion), "a token in the audit log");
    assert!(!op.stderr().contains(&access), "a token in the operator's log");
}

/// An independent mutual-TLS client: Python's ssl (OpenSSL) presents the agent's X.509-SVID, urllib asks
/// for a token with `tls_client_auth` (client_id, no assertion), and PyJWT checks the `cnf` binding
/// against the thumbprint of the certificate it presented.
const PYTHON_MTLS_CLIENT: &str = r#"
import base64, hashlib, json, ssl, sys, urllib.parse, urllib.request
import jwt
base, agent, cert, key, ca = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
meta = json.load(urllib.request.urlopen(base + "/.well-known/oauth-authorization-server", context=ctx))
assert "tls_client_auth" in meta["token_endpoint_auth_methods_supported"], meta
form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": agent,
    "scope": "read@crm:contacts/42", "resource": "crm"}).encode()
answer = json.load(urllib.request.urlopen(urllib.request.Request(meta["token_endpoint"], data=form), context=ctx))
claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
der = ssl.PEM_cert_to_DER_cert(open(cert).read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
x5t = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
assert claims["cnf"] == {"x5t#S256": x5t}, (claims.get("cnf"), x5t)
print(x5t)
"#;

/// `POST /v1/oauth/token` over a TLS connection that presents `identity` (chain PEM, key PEM).
async fn post_mtls(op: &Operator, identity: (&str, &str), body: &str) -> (u16, Value) {
    let ca = std::fs::read_to_string(op.ca_file()).unwrap();
    let config = Arc::new(crate::harness::client_config(&ca, Some(identity)));
    let tcp = tokio::net::TcpStream::connect(&op.http_addr).await.unwrap();
    let stream = crate::harness::connect_tls(tcp, config).await;
    let (status, _, text) = crate::harness::http_exchange(
        stream,
        &op.http_addr,
        "POST",
        "/v1/oauth/token",
        &[FORM],
        body.as_bytes(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn pct(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

#[tokio::test]
async fn mutual_tls_client_authentication_gives_tokens_bound_to_the_agents_certificate() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "token-mtls").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let ep = endpoint(&op);
    apply_policy(
        &ns,
        "crm",
        json!({"agents": {"names": ["bot", "other"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}]}),
    )
    .await;
    ns.create_agent("bot", spec(&ep, &[])).await;
    ns.create_agent("other", spec(&ep, &[])).await;
    wait_credentials(&ns.api::<Agent>(), "bot").await;
    wait_credentials(&ns.api::<Agent>(), "other").await;
    let cert = secret_value(&ns, "bot-credentials", "svid.pem").await.unwrap();
    let key = secret_value(&ns, "bot-credentials", "svid-key.pem").await.unwrap();
    let other_cert = secret_value(&ns, "other-credentials", "svid.pem").await.unwrap();
    let other_key = secret_value(&ns, "other-credentials", "svid-key.pem").await.unwrap();
    let id = format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name);
    let ask = |client_id: &str| {
        format!(
            "grant_type=client_credentials&client_id={}&scope=read%40crm%3Acontacts%2F42&resource=crm",
            pct(client_id)
        )
    };

    // tls_client_auth: the certificate is the proof; the token is bound to it.
    let (status, answer) = post_mtls(&op, (&cert, &key), &ask(&id)).await;
    assert_eq!(status, 200, "{}", shown(&answer));
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let claims = agentiam::identity::verify::decode_unverified(&token).unwrap().1;
    let leaf = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let x5t = agentiam::identity::access::thumbprint(leaf.as_ref());
    assert_eq!(claims["cnf"], json!({"x5t#S256": x5t}));

    // Refused: another agent's client_id; no client_id; no certificate and no assertion; the other agent's
    // certificate for bot.
    for ((c, k), body, why) in [
        ((&cert, &key), ask(&id.replace("/bot", "/other")), "another agent's client_id"),
        (
            (&cert, &key),
            "grant_type=client_credentials&scope=read%40crm%3Acontacts%2F42&resource=crm".to_owned(),
            "no client_id",
        ),
        ((&other_cert, &other_key), ask(&id), "the other agent's certificate"),
    ] {
        let (status, answer) = post_mtls(&op, (c, k), &body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (401, Some("invalid_client")),
            "{why}: {}",
            shown(&answer)
        );
    }
    let (status, answer, _) = post(&op, &ask(&id)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client")),
        "no certificate: {}",
        shown(&answer)
    );

    // The decision API allows the bound token only with its certificate's thumbprint, as a gateway
    // terminating the agent's mutual TLS reports it.
    let decide = |extra: Value| crate::harness::decide(&op, &token, "read", "crm:contacts/42", extra);
    assert_eq!(decide(json!({"certificateThumbprint": x5t})).await["decision"], "Allow");
    let d = decide(json!({})).await;
    assert!(
        d["decision"] == "Deny" && d["reason"].as_str().unwrap().contains("bound to a client certificate"),
        "{d}"
    );
    let other_leaf = rustls::pki_types::CertificateDer::from_pem_slice(other_cert.as_bytes()).unwrap();
    let other_x5t = agentiam::identity::access::thumbprint(other_leaf.as_ref());
    assert_eq!(decide(json!({"certificateThumbprint": other_x5t})).await["decision"], "Deny");
    // The same through ext_authz, with the header.
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-agentiam-resource", "crm:contacts/42"),
        ("x-agentiam-certificate-thumbprint", x5t.as_str()),
    ];
    let (status, h, _) =
        crate::harness::http_request(&op.http_addr, "GET", "/v1/ext_authz/x", &headers, b"").await;
    assert_eq!((status, h.get("x-agentiam-decision").map(String::as_str)), (200, Some("Allow")), "{h:?}");
    let (status, _, _) =
        crate::harness::http_request(&op.http_addr, "GET", "/v1/ext_authz/x", &headers[..2], b"").await;
    assert_eq!(status, 403, "the bound token without its certificate through ext_authz");

    // The audit record names the binding.
    let records = crate::harness::records(&op.audit_log());
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "token.issue" && r["details"]["certificateThumbprint"] == x5t.as_str()),
        "no token.issue record with the thumbprint"
    );

    // An independent client: Python's ssl and urllib, PyJWT.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svid.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("svid-key.pem"), &key).unwrap();
    let python =
        std::process::Command::new(std::env::var("AGENTIAM_PYTHON").unwrap_or_else(|_| "python3".to_owned()))
            .args(["-c", PYTHON_MTLS_CLIENT, &op.base_url(), &id])
            .arg(dir.path().join("svid.pem"))
            .arg(dir.path().join("svid-key.pem"))
            .arg(op.ca_file())
            .output()
            .expect("a Python with PyJWT is required (tools/e2e.sh makes one: tools/python-env.sh)");
    assert!(
        python.status.success(),
        "the Python mTLS client failed: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), x5t);

    // The same from the command line: request (the token goes to a 0600 file, never to the terminal),
    // introspect with a ServiceAccount's token, revoke as the holder.
    let (svid_pem, svid_key) = (dir.path().join("svid.pem"), dir.path().join("svid-key.pem"));
    let out_file = dir.path().join("access-token");
    let server =
        ["--issuer-url".to_owned(), op.base_url(), "--cacert".to_owned(), op.ca_file().display().to_string()];
    let agent = [
        "--cert".to_owned(),
        svid_pem.display().to_string(),
        "--key".to_owned(),
        svid_key.display().to_string(),
    ];
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.plugin(&args)
    };
    let mut args: Vec<String> =
        ["token", "request", "--scope", "read@crm:contacts/42", "--resource", "crm", "--out"]
            .iter()
            .map(ToString::to_string)
            .collect();
    args.push(out_file.display().to_string());
    args.extend(server.iter().cloned());
    args.extend(agent.iter().cloned());
    let out = run(args);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && printed.contains("scope: read@crm:contacts/42"), "{printed}");
    let cli_token = std::fs::read_to_string(&out_file).unwrap();
    assert!(!printed.contains(&cli_token), "the CLI printed the token");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777, 0o600);
    let caller = service_account_with(&env, &ns, "crm-server", &["introspect"], "bot");
    let caller_file = dir.path().join("caller");
    std::fs::write(&caller_file, &caller).unwrap();
    let introspect_cli = || {
        let mut args: Vec<String> = ["token", "introspect", &cli_token, "--caller-token-file"]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.push(caller_file.display().to_string());
        args.extend(server.iter().cloned());
        let out = run(args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let answer = introspect_cli();
    assert_eq!(
        (answer["active"].as_bool(), answer["cnf"]["x5t#S256"].as_str()),
        (Some(true), Some(x5t.as_str())),
        "{answer}"
    );
    let mut args: Vec<String> = ["token", "revoke", &cli_token].iter().map(ToString::to_string).collect();
    args.extend(server.iter().cloned());
    args.extend(agent.iter().cloned());
    let out = run(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(introspect_cli()["active"], false);
}

/// A ServiceAccount `name` in `ns` with `verbs` on the Agent `agent` (none: no Role), and a token of it.
fn service_account_with(
    env: &crate::harness::Env,
    ns: &TestNs,
    name: &str,
    verbs: &[&str],
    agent: &str,
) -> String {
    let out = env.kubectl(&["create", "serviceaccount", name, "-n", &ns.name], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if !verbs.is_empty() {
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns.name},
            "rules": [{"apiGroups": ["agentiam.dev"], "resources": ["agents"], "resourceNames": [agent], "verbs": verbs}],
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns.name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns.name}],
        });
        for doc in [role, binding] {
            let out = env.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let out = env.kubectl(&["create", "token", name, "-n", &ns.name], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `POST /v1/oauth/introspect` of `token` as `caller`.
async fn introspect(op: &Operator, caller: Option<&str>, token: &str) -> (u16, Value) {
    post_as(op, "/v1/oauth/introspect", caller, &format!("token={token}")).await
}

/// `POST path` with `Authorization: Bearer <caller>` (if any) and `form`.
async fn post_as(op: &Operator, path: &str, caller: Option<&str>, form: &str) -> (u16, Value) {
    let bearer = caller.map(|c| format!("Bearer {c}"));
    let mut headers = vec![FORM];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let (status, _, text) = http_post(&op.http_addr, path, &headers, form.as_bytes()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn introspection_and_administrator_revocation_answer_to_kubernetes_identities_with_the_rbac_verb() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "token-introspect").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    let ep = endpoint(&op);
    apply_policy(
        &ns,
        "crm",
        json!({"agents": {"names": ["bot"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}]}),
    )
    .await;
    ns.create_agent("bot", spec(&ep, &[])).await;
    wait_credentials(&ns.api::<Agent>(), "bot").await;
    let (chain, key) = x509(&ns).await;
    let id = format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name);
    let ok = "scope=read%40crm%3Acontacts%2F42&resource=crm&task=t-9";
    let token = |jti: &str| {
        let assertion = signed(&key, &chain, &id, &ep, jti, 60);
        let op = &op;
        async move {
            let (status, answer, _) = post(op, &request(&assertion, ok)).await;
            assert_eq!(status, 200, "{}", shown(&answer));
            answer["access_token"].as_str().unwrap().to_owned()
        }
    };
    let access = token("i-1").await;
    let doomed = token("i-2").await;
    let identity = svid(&ns, "bot", "crm").await.unwrap();

    let server = service_account_with(&env, &ns, "crm-server", &["introspect"], "bot");
    let admin = service_account_with(&env, &ns, "security-admin", &["revoke"], "bot");
    let nobody = service_account_with(&env, &ns, "nobody", &[], "bot");

    // The metadata names the endpoint.
    let meta: Value =
        serde_json::from_str(&http_get(&op.http_addr, "/.well-known/oauth-authorization-server").await.2)
            .unwrap();
    assert_eq!(meta["introspection_endpoint"], format!("{}/v1/oauth/introspect", op.base_url()));

    // Callers authenticate with a Kubernetes token the API server accepts.
    for (caller, why) in
        [(None, "no caller"), (Some("not-a-kubernetes-token"), "a token the API server refuses")]
    {
        let (status, answer) = introspect(&op, caller, &access).await;
        assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_client")), "{why}: {answer}");
    }
    // Without the verb, every token is inactive; with it, the token's facts.
    assert_eq!(introspect(&op, Some(&nobody), &access).await, (200, json!({"active": false})));
    let (status, answer) = introspect(&op, Some(&server), &access).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!((answer["client_id"].as_str(), answer["aud"].as_str()), (Some(id.as_str()), Some("crm")));
    assert_eq!(answer["scope"], "read@crm:contacts/42");
    assert_eq!(answer["agentiam.dev/token-kind"], "access");
    assert_eq!(answer["agentiam.dev/task"], "t-9");
    assert_eq!(answer["iss"], op.base_url());
    let (_, answer) = introspect(&op, Some(&server), &identity).await;
    assert_eq!(
        (answer["active"].as_bool(), answer["agentiam.dev/token-kind"].as_str()),
        (Some(true), Some("identity")),
        "{answer}"
    );
    assert_eq!(introspect(&op, Some(&server), "x.y.z").await, (200, json!({"active": false})));

    // An administrator revokes: only with the verb, durable before the answer, refused everywhere after.
    let revoke = |caller: &str, token: &str| {
        let (op, caller, form) =
            (&op, caller.to_owned(), format!("token={token}&token_type_hint=access_token"));
        async move { post_as(op, "/v1/oauth/revoke", Some(&caller), &form).await }
    };
    let (status, answer) = revoke(&nobody, &doomed).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("unauthorized_client")), "{answer}");
    let (status, answer) = revoke(&server, &doomed).await;
    assert_eq!(status, 400, "introspect is not revoke: {answer}");
    assert_eq!(revoke(&admin, &doomed).await.0, 200);
    assert_eq!(introspect(&op, Some(&server), &doomed).await, (200, json!({"active": false})));
    let d = crate::harness::decide(&op, &doomed, "read", "crm:contacts/42", json!({})).await;
    assert_eq!(d["decision"], "Deny", "{d}");
    assert_eq!(introspect(&op, Some(&server), &access).await.1["active"], true, "only that token");
    let records = crate::harness::records(&op.audit_log());
    let by_admin =
        records.iter().find(|r| r["action"] == "token.revoke" && r["outcome"] == "success").unwrap();
    assert_eq!(by_admin["actor"], format!("user:system:serviceaccount:{}:security-admin", ns.name));
    assert!(records.iter().any(|r| r["action"] == "token.introspect"), "introspections are recorded");
    assert!(
        !op.stderr().contains(&server) && !std::fs::read_to_string(op.audit_log()).unwrap().contains(&server),
        "a caller's Kubernetes token was written down"
    );

    // After a restart the revocation stands.
    op.restart();
    assert_eq!(introspect(&op, Some(&server), &doomed).await, (200, json!({"active": false})));
    assert_eq!(introspect(&op, Some(&server), &access).await.1["active"], true);

    // A Revocation of the agent makes every one of its tokens inactive at once.
    let revocation = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop-bot"},
        "spec": {"target": {"agentRef": {"name": "bot"}}, "mode": "Suspend", "reason": "incident 9"}});
    let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&revocation.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the access token to turn inactive", WAIT, || async {
        (introspect(&op, Some(&server), &access).await.1["active"] == false).then_some(())
    })
    .await;
    assert_eq!(introspect(&op, Some(&server), &identity).await.1["active"], false);
}

const TOKEN_EXCHANGE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
const JWT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";

/// A token exchange form: `assertion` authenticates the client, `subject` is handed to `actor`.
fn exchange_form(assertion: &str, subject: &str, actor: &str, extra: &str) -> String {
    format!(
        "grant_type={TOKEN_EXCHANGE}&client_assertion_type={ASSERTION_TYPE}&client_assertion={assertion}\
         &subject_token={subject}&subject_token_type={JWT_TYPE}&actor_token={actor}&actor_token_type={JWT_TYPE}&{extra}"
    )
}

#[tokio::test]
async fn token_exchange_hands_a_narrower_delegation_to_another_agent_once_and_records_the_child() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "token-exchange").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    let ep = endpoint(&op);
    apply_policy(
        &ns,
        "crm",
        json!({"agents": {"names": ["bot", "helper"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}]}),
    )
    .await;
    ns.create_agent("bot", spec(&ep, &[])).await;
    ns.create_agent("helper", spec(&ep, &[])).await;
    wait_credentials(&ns.api::<Agent>(), "bot").await;
    wait_credentials(&ns.api::<Agent>(), "helper").await;
    // A human (the test's admin user) grants bot reading contacts for two hours.
    let root = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Delegation", "metadata": {"name": "alice-root"},
        "spec": {"agentRef": {"name": "bot"}, "scopes": ["read@crm:contacts/*"], "task": "answer ticket 4711",
                 "ttl": "2h", "audience": "crm"}});
    let out = env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&root.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let subject = wait_for("bot's delegated token", WAIT, || {
        secret_value(&ns, "bot-delegations", "delegation-alice-root")
    })
    .await;
    let actor = svid(&ns, "helper", &ep).await.expect("helper's JWT-SVID for the token endpoint");
    let identity = svid(&ns, "bot", "crm").await.unwrap();
    let (chain, key) = x509(&ns).await;
    let id = format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name);
    let assertion = |jti: &str| signed(&key, &chain, &id, &ep, jti, 60);
    let narrow = "scope=read%40crm%3Acontacts%2F42&audience=crm";

    // Refused before anything is spent: the wrong kind of subject, a wider scope, another audience.
    for (subject, extra, error, why) in [
        (identity.as_str(), narrow, "invalid_request", "an identity token as subject"),
        (subject.as_str(), "scope=read%40crm%3A**&audience=crm", "invalid_scope", "a wider scope"),
        (
            subject.as_str(),
            "scope=read%40crm%3Acontacts%2F42&audience=pay",
            "invalid_target",
            "another audience",
        ),
    ] {
        let (status, answer, _) =
            post(&op, &exchange_form(&assertion(&format!("x-{why}")), subject, &actor, extra)).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some(error)), "{why}: {}", shown(&answer));
        if why == "an identity token as subject" {
            assert!(answer["error_description"].as_str().unwrap().contains("delegated token"), "{answer}");
        }
    }

    // The handoff: a delegated token for helper, narrower, with the chain nested.
    let (status, answer, _) = post(&op, &exchange_form(&assertion("x-1"), &subject, &actor, narrow)).await;
    assert_eq!(status, 200, "{}", shown(&answer));
    assert_eq!(answer["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(answer["scope"], "read@crm:contacts/42");
    let handed = answer["access_token"].as_str().unwrap().to_owned();
    let claims = agentiam::identity::verify::decode_unverified(&handed).unwrap().1;
    let helper_id = format!("spiffe://cluster.local/ns/{}/agent/helper", ns.name);
    assert_eq!(claims["client_id"], helper_id, "{claims}");
    assert_eq!(claims["act"]["sub"], helper_id, "{claims}");
    assert_eq!(claims["act"]["act"]["sub"], id, "{claims}");
    let decide = |token: String, resource: &'static str| {
        let op = &op;
        async move { crate::harness::decide(op, &token, "read", resource, json!({})).await }
    };
    assert_eq!(decide(handed.clone(), "crm:contacts/42").await["decision"], "Allow");
    assert_eq!(decide(handed.clone(), "crm:contacts/43").await["decision"], "Deny");
    // The handoff is a Delegation under the root, visible in the tree, recorded in the audit log.
    let out = env.plugin(&["get", "delegations", "--tree", "-n", &ns.name]);
    let tree = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        tree.contains("alice-root") && tree.contains("alice-root-x-") && tree.contains("helper"),
        "{tree}"
    );
    let records = crate::harness::records(&op.audit_log());
    assert!(
        records.iter().any(|r| r["action"] == "token.exchange" && r["outcome"] == "success"),
        "no token.exchange outcome"
    );

    // The subject token is spent: again, and after a restart, refused.
    let (status, answer, _) = post(&op, &exchange_form(&assertion("x-2"), &subject, &actor, narrow)).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{}", shown(&answer));
    assert!(answer["error_description"].as_str().unwrap().contains("exchanged before"), "{answer}");
    op.restart();
    let (_, answer, _) = post(&op, &exchange_form(&assertion("x-3"), &subject, &actor, narrow)).await;
    assert!(
        answer["error_description"].as_str().unwrap_or_default().contains("exchanged before"),
        "after a restart: {answer}"
    );

    // A parent revoked between the request and the issuance: no token, and no child left in force.
    op.set_extra(&["--failpoint-exchange-delay", "3s"]);
    op.restart();
    // A new root, so the subject token is a fresh one.
    let root2 = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Delegation", "metadata": {"name": "alice-root2"},
        "spec": {"agentRef": {"name": "bot"}, "scopes": ["read@crm:contacts/*"], "task": "answer ticket 4712",
                 "ttl": "2h", "audience": "crm"}});
    let out = env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&root2.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let subject2 = wait_for("bot's second delegated token", WAIT, || {
        secret_value(&ns, "bot-delegations", "delegation-alice-root2")
    })
    .await;
    let actor2 = fresh_actor(&ns, &op, 1).await;
    let form = exchange_form(&assertion("x-4"), &subject2, &actor2, narrow);
    let pending = {
        let addr = op.http_addr.clone();
        tokio::spawn(async move { http_post(&addr, "/v1/oauth/token", &[FORM], form.as_bytes()).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let revocation = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop-root2"},
        "spec": {"target": {"delegationRef": {"name": "alice-root2"}}, "mode": "Revoke", "reason": "handoff cancelled"}});
    let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&revocation.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, _, text) = pending.await.unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{}", shown(&answer));
    assert!(answer.get("access_token").is_none());
    let out = env.kubectl(&["get", "delegations", "-n", &ns.name, "-o", "name"], None);
    let names = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!names.contains("alice-root2-x-"), "a child of the revoked parent was left: {names}");

    // An independent OAuth client: Authlib, from the published metadata, signs private_key_jwt with the
    // agent's X.509-SVID key, gets a client_credentials token, and does a token exchange.
    let root3 = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Delegation", "metadata": {"name": "alice-root3"},
        "spec": {"agentRef": {"name": "bot"}, "scopes": ["read@crm:contacts/*"], "task": "answer ticket 4713",
                 "ttl": "2h", "audience": "crm"}});
    let out = env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&root3.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let subject3 = wait_for("bot's third delegated token", WAIT, || {
        secret_value(&ns, "bot-delegations", "delegation-alice-root3")
    })
    .await;
    let actor3 = fresh_actor(&ns, &op, 2).await;
    let key_pem = secret_value(&ns, "bot-credentials", "svid-key.pem").await.unwrap();
    let input = json!({"base": op.base_url(), "agent": id, "x5c": chain, "key": key_pem,
        "subject": subject3, "actor": actor3});
    let python = {
        use std::io::Write;
        let mut child = std::process::Command::new(
            std::env::var("AGENTIAM_PYTHON").unwrap_or_else(|_| "python3".to_owned()),
        )
        .args(["-c", AUTHLIB_CLIENT])
        .env("SSL_CERT_FILE", op.ca_file())
        .env("REQUESTS_CA_BUNDLE", op.ca_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a Python with Authlib is required (tools/e2e.sh makes one: tools/python-env.sh)");
        child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        python.status.success(),
        "the Authlib client failed: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), helper_id);
}

/// `spec.mayAct` (RFC 8693 `may_act`): the named agent takes the rights over itself, as the client and
/// without an actor token, once; the holder may hand them to that agent only; no third agent may use them.
#[tokio::test]
async fn token_exchange_honours_may_act_bound_to_the_named_agent() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "token-may-act").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let ep = endpoint(&op);
    apply_policy(
        &ns,
        "crm",
        json!({"agents": {"names": ["bot", "helper", "other"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}]}),
    )
    .await;
    for a in ["bot", "helper", "other"] {
        ns.create_agent(a, spec(&ep, &[])).await;
        wait_credentials(&ns.api::<Agent>(), a).await;
    }
    // Admission refuses naming the grantee itself.
    let own = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Delegation", "metadata": {"name": "self"},
        "spec": {"agentRef": {"name": "bot"}, "scopes": ["read@crm:contacts/*"], "task": "t", "ttl": "1h",
                 "mayAct": {"name": "bot"}}});
    let out = env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&own.to_string()));
    assert!(!out.status.success(), "a Delegation whose mayAct is its grantee was admitted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.mayAct must name another agent"));

    let root = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Delegation", "metadata": {"name": "alice-handover"},
        "spec": {"agentRef": {"name": "bot"}, "scopes": ["read@crm:contacts/*"], "task": "hand over ticket 4720",
                 "ttl": "2h", "audience": "crm", "mayAct": {"name": "helper"}}});
    let out = env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&root.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let subject = wait_for("bot's delegated token", WAIT, || {
        secret_value(&ns, "bot-delegations", "delegation-alice-handover")
    })
    .await;
    let id = |a: &str| format!("spiffe://cluster.local/ns/{}/agent/{a}", ns.name);
    let helper_uid = ns.api::<Agent>().get("helper").await.unwrap().metadata.uid.unwrap();
    let claims = agentiam::identity::verify::decode_unverified(&subject).unwrap().1;
    assert_eq!(claims["may_act"], json!({"sub": id("helper"), "agentiam.dev/uid": helper_uid}), "{claims}");

    let signer = |agent: &'static str| {
        let ns = &ns;
        let ep = ep.clone();
        async move {
            let (chain, key) = x509_of(ns, agent).await;
            move |jti: &str| signed(&key, &chain, &id(agent), &ep, jti, 60)
        }
    };
    let (bot, helper, other) = (signer("bot").await, signer("helper").await, signer("other").await);
    let narrow = "scope=read%40crm%3Acontacts%2F42&audience=crm";
    let alone = |assertion: String| {
        format!(
            "grant_type={TOKEN_EXCHANGE}&client_assertion_type={ASSERTION_TYPE}&client_assertion={assertion}\
             &subject_token={subject}&subject_token_type={JWT_TYPE}&{narrow}"
        )
    };
    // The holder hands it to another agent than may_act names: refused, nothing spent.
    let to_other = svid(&ns, "other", &ep).await.unwrap();
    let (status, answer, _) = post(&op, &exchange_form(&bot("m-1"), &subject, &to_other, narrow)).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{}", shown(&answer));
    assert!(answer["error_description"].as_str().unwrap().contains("may_act names"), "{answer}");
    // The holder without an actor: it must name one.
    let (status, answer, _) = post(&op, &alone(bot("m-2"))).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_request")), "{}", shown(&answer));
    // A third agent as the client: not the holder, not named.
    let (status, answer, _) = post(&op, &alone(other("m-3"))).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{}", shown(&answer));
    assert!(answer["error_description"].as_str().unwrap().contains("another agent's"), "{answer}");
    // The named agent, as the client, with another agent's actor token: refused.
    let (status, answer, _) = post(&op, &exchange_form(&helper("m-4"), &subject, &to_other, narrow)).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{}", shown(&answer));

    // The named agent takes the rights over itself: a delegated token for helper, the chain nested.
    let (status, answer, _) = post(&op, &alone(helper("m-5"))).await;
    assert_eq!(status, 200, "{}", shown(&answer));
    assert_eq!(answer["scope"], "read@crm:contacts/42");
    let claims =
        agentiam::identity::verify::decode_unverified(answer["access_token"].as_str().unwrap()).unwrap().1;
    assert_eq!(claims["client_id"], id("helper"), "{claims}");
    assert_eq!(claims["act"]["act"]["sub"], id("bot"), "{claims}");
    assert!(claims.get("may_act").is_none(), "the child names no may_act: {claims}");
    // Once.
    let (status, answer, _) = post(&op, &alone(helper("m-6"))).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{}", shown(&answer));
    assert!(answer["error_description"].as_str().unwrap().contains("exchanged before"), "{answer}");
}

/// Authlib's OAuth2Session with its PrivateKeyJWT client authentication (ES256, the certificate in `x5c`),
/// from the metadata alone: client_credentials, then an RFC 8693 exchange of the agent's delegated token
/// to helper. Prints the exchanged token's client_id.
const AUTHLIB_CLIENT: &str = r#"
import json, sys, time
import jwt, requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey
i = json.load(sys.stdin)
meta = requests.get(i["base"] + "/.well-known/oauth-authorization-server").json()
ep = meta["token_endpoint"]
assert "urn:ietf:params:oauth:grant-type:token-exchange" in meta["grant_types_supported"], meta
def session():
    # Authlib's assertions live an hour by default; the operator takes at most 5 minutes.
    auth = PrivateKeyJWT(ep, alg="ES256", headers={"x5c": i["x5c"]}, claims={"exp": int(time.time()) + 60})
    key = ECKey.import_key(i["key"])  # Authlib reads a PEM client_secret as RSA; an EC key goes in as a key
    return OAuth2Session(client_id=i["agent"], client_secret=key, token_endpoint_auth_method=auth)
t = session().fetch_token(ep, grant_type="client_credentials", scope="read@crm:contacts/42", resource="crm")
assert t["scope"] == "read@crm:contacts/42" and jwt.get_unverified_header(t["access_token"])["typ"] == "at+jwt", t
jwt_type = "urn:ietf:params:oauth:token-type:jwt"
x = session().fetch_token(ep, grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
    subject_token=i["subject"], subject_token_type=jwt_type, actor_token=i["actor"], actor_token_type=jwt_type,
    scope="read@crm:contacts/7", audience="crm")
assert x["issued_token_type"] == jwt_type and x["scope"] == "read@crm:contacts/7", x
print(jwt.decode(x["access_token"], options={"verify_signature": False})["client_id"])
"#;

/// A new JWT-SVID of helper for the token endpoint (widening its audiences makes the operator issue anew).
async fn fresh_actor(ns: &TestNs, op: &Operator, round: usize) -> String {
    let before = svid(ns, "helper", &endpoint(op)).await;
    let extra: Vec<String> = (0..round).map(|i| format!("extra-{i}")).collect();
    let patch = json!({"spec": spec(&endpoint(op), &extra)});
    ns.api::<Agent>().patch("helper", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("a new JWT-SVID of helper", WAIT, || async {
        let now = svid(ns, "helper", &endpoint(op)).await;
        (now.is_some() && now != before).then_some(now).flatten()
    })
    .await
}
