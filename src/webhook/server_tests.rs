use std::net::{Ipv4Addr, SocketAddr};

use axum::body::Body;
use axum::http::Request;
use axum::http::{StatusCode, header};
use jiff::Timestamp;
use json_patch::Patch;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

use super::*;
use crate::api::{AgentPhase, AgentSpec, AgentStatus, Owner, PrincipalKind};
use crate::registry::ledger::AgentRecord;
use crate::server::listener::Limits;
use crate::tls::certs::{RenewalPolicy, San, ServingCerts};
use crate::tls::handle::provider;
use crate::webhook::pods::{MOUNT_PATH, SPIFFE_ID_ENV};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

const SPIFFE_ID: &str = "spiffe://cluster.local/ns/team-a/agent/bot";

/// An Agent whose status claims `phase` (and a forged SPIFFE ID: the webhook must never use it).
fn agent(name: &str, phase: AgentPhase) -> Agent {
    let mut a = Agent::new(name, AgentSpec::new(Owner { kind: PrincipalKind::Team, name: "t".into() }, "p"));
    a.metadata.namespace = Some("team-a".into());
    a.metadata.uid = Some(format!("uid-{name}"));
    let forged_id = "spiffe://cluster.local/ns/kube-system/agent/admin".to_owned();
    a.status = Some(AgentStatus { phase: Some(phase), spiffe_id: Some(forged_id), ..Default::default() });
    a
}

fn agents(store: Store<Agent>, ledger: Ledger) -> Agents {
    Agents { store, ledger: Arc::new(ledger), trust_domain: TrustDomain::parse("cluster.local").unwrap() }
}

/// A ready store holding `bot`, recorded Active, `sleepy`, recorded Suspended, and `forged`, whose status
/// says Active but which the operator recorded Suspended, in namespace team-a.
fn store() -> Agents {
    let mut writer = Writer::<Agent>::default();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitApply(agent("bot", AgentPhase::Active)));
    writer.apply_watcher_event(&Event::InitApply(agent("sleepy", AgentPhase::Suspended)));
    writer.apply_watcher_event(&Event::InitApply(agent("forged", AgentPhase::Active)));
    writer.apply_watcher_event(&Event::InitDone);
    let store = writer.as_reader();
    // The store stays readable after the writer is gone.
    drop(writer);
    let ledger = Ledger::default();
    let recorded = |phase| AgentRecord { phase: Some(phase), ..AgentRecord::default() };
    ledger.set("uid-bot", recorded(AgentPhase::Active));
    ledger.set("uid-sleepy", recorded(AgentPhase::Suspended));
    ledger.set("uid-forged", recorded(AgentPhase::Suspended));
    agents(store, ledger)
}

/// The webhooks over [`store`], without an audit log (the validating routes then refuse everything).
fn webhooks() -> Webhooks {
    let (delegations, _) = kube::runtime::reflector::store();
    let (revocations, _) = kube::runtime::reflector::store();
    Webhooks {
        agents: store(),
        delegations: super::Delegations { store: delegations, revocations, reach: Default::default() },
        client: None,
        audit: None,
        unserved_namespace: None,
        operator_user: None,
        workloads: None,
    }
}

fn pod(labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team-a", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    })
}

fn review(operation: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a", "name": "p", "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object, "oldObject": null, "dryRun": false
        }
    }))
    .unwrap()
}

/// The `response` of an answered review, as JSON.
fn response(store: &Agents, body: &[u8]) -> Value {
    let review = admit(store, body).unwrap();
    let v = serde_json::to_value(&review).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4", "the uid is echoed");
    v["response"].clone()
}

fn denial(r: &Value) -> String {
    assert_eq!(r["allowed"], false, "{r}");
    assert!(r.get("patch").is_none(), "{r}");
    r["status"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn unlabelled_pods_and_other_operations_pass_unchanged() {
    let r = response(&store(), &review("CREATE", pod(json!({"app": "x"}))));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    let r = response(&store(), &review("UPDATE", pod(json!({AGENT_LABEL: "ghost"}))));
    assert_eq!(r["allowed"], true, "only CREATE is checked");
}

#[test]
fn an_active_agents_pod_is_mutated() {
    let r = response(&store(), &review("CREATE", pod(json!({AGENT_LABEL: "bot"}))));
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let bytes: Vec<u8> = serde_json::from_value(r["patch"].clone()).unwrap();
    let patch: Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod(json!({AGENT_LABEL: "bot"}));
    json_patch::patch(&mut out, &patch).unwrap();
    let c = &out["spec"]["containers"][0];
    assert_eq!(c["volumeMounts"][0]["mountPath"], MOUNT_PATH);
    assert_eq!(c["env"][0], json!({"name": SPIFFE_ID_ENV, "value": SPIFFE_ID}));
    assert_eq!(out["spec"]["volumes"][0]["projected"]["sources"][0]["secret"]["name"], "bot-credentials");
}

#[test]
fn missing_inactive_and_foreign_agents_are_refused() {
    let s = store();
    let r = response(&s, &review("CREATE", pod(json!({AGENT_LABEL: "ghost"}))));
    assert!(denial(&r).contains("has no Agent of that name"));
    assert_eq!(r["status"]["code"], 403);
    let r = response(&s, &review("CREATE", pod(json!({AGENT_LABEL: "sleepy"}))));
    assert!(denial(&r).contains("not Active"));
    // A status forged to Active is not what the operator recorded.
    let r = response(&s, &review("CREATE", pod(json!({AGENT_LABEL: "forged"}))));
    assert!(denial(&r).contains("is Suspended, not Active"), "{r}");
    // `bot` lives in team-a: the same claim from another namespace finds nothing.
    let mut foreign: Value =
        serde_json::from_slice(&review("CREATE", pod(json!({AGENT_LABEL: "bot"})))).unwrap();
    foreign["request"]["namespace"] = json!("team-b");
    foreign["request"]["object"]["metadata"]["namespace"] = json!("team-b");
    let r = response(&s, &serde_json::to_vec(&foreign).unwrap());
    assert!(denial(&r).contains("namespace \"team-b\" has no Agent"));
}

#[test]
fn nothing_is_admitted_before_the_store_has_listed_agents() {
    let writer = Writer::<Agent>::default();
    let r = response(
        &agents(writer.as_reader(), Ledger::default()),
        &review("CREATE", pod(json!({AGENT_LABEL: "bot"}))),
    );
    assert!(denial(&r).contains("starting"));
}

#[test]
fn unreadable_input_is_refused_never_admitted() {
    let s = store();
    assert_eq!(admit(&s, b"{not json").unwrap_err(), "request body is not JSON");
    assert!(admit(&s, b"{\"kind\": \"AdmissionReview\"}").is_err(), "no request, no uid: HTTP 400");

    // A labelled pod that does not deserialize (containers is not a list) is denied, not waved through.
    let mut broken = pod(json!({AGENT_LABEL: "bot"}));
    broken["spec"]["containers"] = json!("nope");
    let r = response(&s, &review("CREATE", broken));
    assert!(denial(&r).contains("could not read the pod"));

    // A request whose envelope is broken but whose uid is readable gets a denial it can be matched to.
    let mut envelope: Value =
        serde_json::from_slice(&review("CREATE", pod(json!({AGENT_LABEL: "bot"})))).unwrap();
    envelope["request"]["operation"] = json!("EXPLODE");
    let r = response(&s, &serde_json::to_vec(&envelope).unwrap());
    assert!(denial(&r).contains("could not read the admission request"));
}

async fn call(content_type: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let request = Request::post(MUTATE_PODS_PATH)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    let response = router(webhooks()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, bytes.to_vec())
}

#[tokio::test]
async fn the_route_checks_type_and_size_before_reading() {
    let (status, body) = call("application/json", review("CREATE", pod(json!({AGENT_LABEL: "ghost"})))).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], false);

    let (status, _) = call("application/json", b"[1, 2".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call("text/plain", review("CREATE", pod(json!({})))).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut big = pod(json!({AGENT_LABEL: "bot"}));
    big["metadata"]["annotations"] = json!({"padding": "x".repeat(MAX_BODY_BYTES)});
    let (status, _) = call("application/json; charset=utf-8", review("CREATE", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

fn certs() -> ServingCerts {
    let sans = [San::Ip(Ipv4Addr::LOCALHOST.into())];
    ServingCerts::generate(&sans, &RenewalPolicy::default(), Timestamp::now()).unwrap()
}

/// POSTs a review over TLS, trusting only `ca_bundle_pem`, and returns the HTTP status line and body.
async fn post_tls(
    addr: SocketAddr,
    ca_bundle_pem: &str,
    body: &[u8],
) -> Result<(String, String), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await?;
    let head = format!(
        "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.lines().next().unwrap_or_default().to_owned(), body.to_owned()))
}

#[tokio::test]
async fn tls_round_trip_and_hot_certificate_swap() {
    let first = certs();
    let handle = CertHandle::new(&first).unwrap();
    assert!(handle.presents(&first));
    assert!(format!("{handle:?}").contains("redacted"));
    let (listener, addr) = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = Limits::with_max_connections(crate::server::listener::DEFAULT_WEBHOOK_MAX_CONNECTIONS);
    let server = tokio::spawn(serve_listener(listener, handle.clone(), webhooks(), limits, async move {
        let _ = stop_rx.await;
    }));

    let body = review("CREATE", pod(json!({AGENT_LABEL: "bot"})));
    let (status, answer) = post_tls(addr, &first.ca_bundle_pem(), &body).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    // A renewal under a different CA: new handshakes get the new certificate without a restart.
    let second = certs();
    handle.swap(&second).unwrap();
    assert!(handle.presents(&second) && !handle.presents(&first));
    let (status, _) = post_tls(addr, &second.ca_bundle_pem(), &body).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let stale = post_tls(addr, &first.ca_bundle_pem(), &body).await;
    assert!(stale.is_err(), "a client trusting only the old CA must fail the handshake");

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn stalled_tls_handshakes_are_closed_while_the_api_server_is_served() {
    let certs = certs();
    let handle = CertHandle::new(&certs).unwrap();
    let (listener, addr) = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let limits = Limits {
        tls_handshake_timeout: std::time::Duration::from_millis(800),
        header_read_timeout: std::time::Duration::from_millis(800),
        ..Limits::with_max_connections(crate::server::listener::DEFAULT_WEBHOOK_MAX_CONNECTIONS)
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_listener(listener, handle, webhooks(), limits, async move {
        let _ = stop_rx.await;
    }));
    // Silent clients, and clients that stop in the middle of a ClientHello.
    let mut stalled = Vec::new();
    for i in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        }
        stalled.push(s);
    }
    let body = review("CREATE", pod(json!({AGENT_LABEL: "bot"})));
    let (status, _) = post_tls(addr, &certs.ca_bundle_pem(), &body).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "a normal client is served while handshakes stall");
    for s in &mut stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a stalled handshake was not closed: {read:?}");
    }
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
