//! Strict input at every boundary, against the real operator: ext_authz headers the decision depends on
//! that cannot be read are 400s (never "absent"); resources outside the canonical grammar are refused
//! (or canonicalised) the same way on `/v1/authorize`, ext_authz paths and headers, `can-i` and policy
//! compilation; and slowloris connections to the HTTP API and the webhook are closed at their timeouts
//! while other clients are served. Each case is an accept/reject pair.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentiam::api::{Agent, AgentPolicy};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    HttpResponse, Operator, TestNs, WAIT, http_get, http_post, http_request, text, wait_credentials, wait_for,
};
use crate::require_cluster;

const AUD: &str = "crm";

/// An Active agent `bot` with a token for [`AUD`] and a policy allowing `read` on `crm:contacts/*` (for
/// /v1/authorize) and `crm/contacts/*` (ext_authz: host crm + path), once the operator allows it.
async fn allowed_bot(ns: &TestNs, op: &Operator) -> String {
    let spec = json!({"owner": {"kind": "Team", "name": "e2e"}, "purpose": "strict input",
                      "credentials": {"audiences": [AUD]}});
    ns.create_agent("bot", spec).await;
    wait_credentials(&ns.api::<Agent>(), "bot").await;
    let secret = ns.api::<Secret>().get("bot-credentials").await.unwrap();
    let token = String::from_utf8(secret.data.unwrap()[&format!("token-{AUD}")].0.clone()).unwrap();
    let policy = json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "read"},
        "spec": {"agents": {"names": ["bot"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"],
             "resources": ["crm:contacts/*", "crm/contacts/*"]}]},
    });
    ns.api::<AgentPolicy>()
        .patch("read", &PatchParams::apply("agentiam-e2e").force(), &Patch::Apply(&policy))
        .await
        .unwrap();
    let ask = authorize_body(&token, "crm:contacts/1");
    wait_for("the policy to allow the baseline", WAIT, || async {
        let (status, _, body) = post(op, &ask).await;
        (status == 200 && body.contains("\"Allow\"")).then_some(())
    })
    .await;
    token
}

fn authorize_body(token: &str, resource: &str) -> String {
    json!({"token": token, "action": "read", "resource": resource}).to_string()
}

async fn post(op: &Operator, body: &str) -> HttpResponse {
    http_post(&op.http_addr, "/v1/authorize", &[("Content-Type", "application/json")], body.as_bytes()).await
}

/// An ext_authz GET of `path` with Host crm and the bearer token (unless `headers` brings its own) and
/// `headers`.
async fn ext(op: &Operator, token: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let bearer = format!("Bearer {token}");
    let mut all: Vec<(&str, &str)> = Vec::new();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        all.push(("Host", AUD));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
        all.push(("Authorization", &bearer));
    }
    all.extend_from_slice(headers);
    http_request(&op.http_addr, "GET", &format!("/v1/ext_authz{path}"), &all, b"").await
}

#[tokio::test]
async fn ext_authz_headers_that_cannot_be_read_are_400s_never_absent() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "input-headers").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = allowed_bot(&ns, &op).await;

    let (status, headers, body) = ext(&op, &token, "/contacts/1", &[]).await;
    assert_eq!((status, headers["x-agentiam-decision"].as_str()), (200, "Allow"), "baseline: {body}");
    // "réad" is sent as UTF-8 bytes, which are not visible ASCII. Each of these once fell back to the
    // method (read), host + path (crm/contacts/1) or any audience, and was allowed.
    for name in ["x-agentiam-action", "x-agentiam-resource", "x-agentiam-audience", "Authorization"] {
        let (status, headers, body) = ext(&op, &token, "/contacts/1", &[(name, "r\u{e9}ad")]).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            body.contains(&name.to_ascii_lowercase()) && body.contains("not visible ASCII"),
            "{name}: {body}"
        );
        assert_eq!(headers["x-agentiam-decision"], "Deny", "{name}");
    }
    // The same headers, readable, sent once: accepted (an action the policy allows, the resource, the audience).
    for (name, value) in [
        ("x-agentiam-action", "read"),
        ("x-agentiam-resource", "crm/contacts/2"),
        ("x-agentiam-audience", AUD),
    ] {
        let (status, _, body) = ext(&op, &token, "/contacts/1", &[(name, value)]).await;
        assert_eq!(status, 200, "{name}: {body}");
        // Sent twice: refused, neither copy picked.
        let (status, _, body) = ext(&op, &token, "/contacts/1", &[(name, value), (name, value)]).await;
        assert_eq!(status, 400, "{name} twice: {body}");
        assert!(body.contains("more than once"), "{name}: {body}");
    }
    // Host: lowercased (accepted), but it cannot add segments or be missing.
    let (status, _, body) = ext(&op, &token, "/contacts/1", &[("Host", "CRM")]).await;
    assert_eq!(status, 200, "Host CRM is crm: {body}");
    let (status, _, body) = ext(&op, &token, "/1", &[("Host", "crm/contacts")]).await;
    assert_eq!(status, 400, "Host with a '/': {body}");
}

#[tokio::test]
async fn resources_outside_the_grammar_are_refused_the_same_way_everywhere() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "input-resources").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = allowed_bot(&ns, &op).await;

    // /v1/authorize: each refused one matched crm:contacts/* segment by segment and was allowed.
    for bad in [
        "crm:contacts/..",
        "crm:contacts/.",
        "crm:contacts/%2e%2e",
        "crm:contacts/%2E%2e",
        "crm:contacts/..%2fadmin",
        "crm:contacts/..%5Cadmin",
        "crm:contacts/..\\admin",
        "crm:contacts/..;",
        "crm:contacts//1",
    ] {
        let (status, _, body) = post(&op, &authorize_body(&token, bad)).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        let error = serde_json::from_str::<Value>(&body).unwrap()["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with("resource "), "{bad:?}: {error}");
    }
    // Accepted: the plain resource, and its percent-encoded spelling, canonicalised to it.
    for good in ["crm:contacts/1", "crm:contacts/%31"] {
        let (status, _, body) = post(&op, &authorize_body(&token, good)).await;
        assert!(status == 200 && body.contains("\"Allow\""), "{good:?}: {body}");
    }
    // A trailing "/" is dropped: crm:contacts/ once matched "*" as an empty segment; now it is
    // crm:contacts, which the policy does not allow.
    let (status, _, body) = post(&op, &authorize_body(&token, "crm:contacts/")).await;
    assert!(status == 200 && body.contains("\"Deny\""), "{body}");

    // ext_authz paths and the resource header: the same grammar.
    for bad in
        ["/contacts/%2e%2e", "/contacts/..", "/contacts/..%2f..%2fadmin", "/contacts/%5c..", "/contacts//1"]
    {
        let (status, _, body) = ext(&op, &token, bad, &[]).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(ext(&op, &token, "/contacts/%31", &[]).await.0, 200);
    let (status, _, _) = ext(&op, &token, "/x", &[("x-agentiam-resource", "crm/contacts/%2e%2e")]).await;
    assert_eq!(status, 400);
    assert_eq!(ext(&op, &token, "/x", &[("x-agentiam-resource", "crm/contacts/1")]).await.0, 200);

    // can-i: the same decision from the terminal.
    let can_i = |resource: &str| env.plugin(&["can-i", "bot", "read", resource, "-n", &ns.name]);
    let out = can_i("crm:contacts/1");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = can_i("crm:contacts/..");
    assert_eq!(out.status.code(), Some(2), "a dot segment is an error, not a yes: {}", text(&out));
    assert!(text(&out).contains("\"..\" segment"), "{}", text(&out));

    // Policy compilation: a pattern no canonical resource can match is a rule error, and the policy denies.
    let broken = json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "dots"},
        "spec": {"agents": {"names": ["bot"]}, "rules": [
            {"name": "up", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/../*"]}]},
    });
    let policies = ns.api::<AgentPolicy>();
    policies
        .patch("dots", &PatchParams::apply("agentiam-e2e").force(), &Patch::Apply(&broken))
        .await
        .unwrap();
    let errors = wait_for("the dots policy to report its rule error", WAIT, || async {
        let st = policies.get_opt("dots").await.ok().flatten()?.status?;
        (!st.rule_errors.is_empty()).then_some(st.rule_errors)
    })
    .await;
    assert!(errors.iter().any(|e| e.contains("rule \"up\"") && e.contains("\"..\" segment")), "{errors:?}");
}

/// Opens `n` connections to `addr` that send the start of a request (or nothing) and stall.
async fn stall(addr: &str, n: usize, partials: &[&[u8]]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(partials[i % partials.len()]).await.expect("write a partial request");
        out.push(s);
    }
    out
}

/// Waits until the server closes every connection (EOF or reset, and no response bytes); returns how long
/// after `since` the first and the last were closed.
async fn wait_closed(conns: &mut [TcpStream], since: Instant, bound: Duration) -> (Duration, Duration) {
    let closed = futures::future::join_all(conns.iter_mut().map(|s| async move {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(bound, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => since.elapsed(),
            Ok(Ok(n)) => {
                panic!("a stalled connection got {n} bytes: {:?}", String::from_utf8_lossy(&buf[..n]))
            }
            Err(_) => panic!("a stalled connection was still open {bound:?} after it stalled"),
        }
    }))
    .await;
    (*closed.iter().min().unwrap(), *closed.iter().max().unwrap())
}

/// A TLS client of the webhook that trusts the CA the operator published in its webhook configuration:
/// POSTs `body` to /mutate-pods and returns the status line.
async fn webhook_post(op: &Operator, ns: &TestNs, body: &[u8]) -> String {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
    let config = configs.get(&format!("agentiam-{}", ns.name)).await.unwrap();
    let ca = config.webhooks.unwrap()[0].client_config.ca_bundle.clone().unwrap().0;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(&op.webhook_addr).await.unwrap();
    let name = crate::harness::server_name(&op.webhook_addr);
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let head = format!(
        "POST /mutate-pods HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    out.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn slowloris_connections_are_closed_while_other_clients_are_served() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "input-slowloris").await;
    let timeout = Duration::from_secs(5);
    let op = Operator::start(
        &env,
        &ns.name,
        // Plain HTTP on the API, to stall inside HTTP itself (partial request lines and headers); stalled
        // TLS handshakes are the webhook's part below, served by the same accept loop.
        &[
            "--listener-header-read-timeout",
            "5s",
            "--listener-tls-handshake-timeout",
            "5s",
            "--http-plaintext",
        ],
    );
    wait_for("the operator to be ready (webhook serving)", WAIT, || async {
        (http_get(&op.http_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    // The decision API: silent connections, partial request lines, partial headers.
    let partials: [&[u8]; 3] = [b"", b"POST /v1/auth", b"POST /v1/authorize HTTP/1.1\r\nHost: x\r\nContent-"];
    let opened = Instant::now();
    let mut stalled = stall(&op.http_addr, 200, &partials).await;
    // (a) Normal clients are answered while all 200 are open: a probe, and a decision.
    let (status, _, _) = http_get(&op.http_addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, _, body) = post(&op, &authorize_body("not.a.jwt", "crm:contacts/1")).await;
    assert!(status == 200 && body.contains("invalid token"), "{body}");
    let answered = opened.elapsed();
    // (b) The server closes every stalled connection, at the header-read timeout.
    let (first, last) = wait_closed(&mut stalled, opened, timeout + Duration::from_secs(30)).await;
    assert!(
        answered < first,
        "the normal clients were answered {answered:?} after the stalls began, after the first stall was closed ({first:?})"
    );
    eprintln!(
        "slowloris on the HTTP API: 200 stalled connections closed {first:?} to {last:?} after opening \
         (header-read timeout {timeout:?}); normal clients answered after {answered:?}"
    );

    // The webhook: handshakes that never start or stop half-way, and stalled HTTP inside TLS is covered by
    // the same loop (unit tests). The API server's kind of client is still served.
    let hello: [&[u8]; 2] = [b"", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]];
    let opened = Instant::now();
    let mut stalled = stall(&op.webhook_addr, 50, &hello).await;
    let status = webhook_post(&op, &ns, b"{not json").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "a TLS client is served while handshakes stall");
    let answered = opened.elapsed();
    let (first, last) = wait_closed(&mut stalled, opened, timeout + Duration::from_secs(30)).await;
    assert!(answered < first, "answered {answered:?}, first stall closed {first:?}");
    eprintln!(
        "stalled TLS handshakes on the webhook: 50 closed {first:?} to {last:?} after opening \
         (TLS handshake timeout {timeout:?})"
    );
}
