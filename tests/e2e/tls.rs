//! TLS on the HTTP API: the operator's own certificate with its CA published (ConfigMap and every trust
//! bundle), a user-supplied certificate re-read when its files change, and settings that cannot work refused
//! at startup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentiam::api::Agent;
use agentiam::tls::certs::{RenewalPolicy, San, ServingCerts};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{
    Operator, TestNs, WAIT, client_config, http_exchange, http_get, trust, wait_credentials, wait_for,
};
use crate::require_cluster;

/// The CA bundle in `name`'s `key`, once it is there.
async fn config_map_value(ns: &TestNs, name: &str, key: &str) -> Option<String> {
    ns.api::<ConfigMap>().get_opt(name).await.ok()??.data?.get(key).cloned()
}

/// What a client trusting only `ca_pem` gets from `addr`: the status of `GET /readyz`, or the TLS error.
async fn readyz_trusting(addr: &str, ca_pem: &str) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = crate::harness::server_name(addr);
    let config = Arc::new(client_config(ca_pem, None));
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
    Ok(http_exchange(Box::new(tls), addr, "GET", "/readyz", &[], &[]).await.0)
}

fn certificate_for_loopback() -> ServingCerts {
    ServingCerts::generate(
        &[San::Ip("127.0.0.1".parse().unwrap())],
        &RenewalPolicy::default(),
        jiff::Timestamp::now(),
    )
    .unwrap()
}

/// Writes `certs`' leaf chain and key where `--http-tls-cert-file` / `--http-tls-key-file` point.
fn write_files(dir: &std::path::Path, certs: &ServingCerts) {
    let data = certs.to_secret_data();
    std::fs::write(dir.join("tls.crt.tmp"), &data["tls.crt"]).unwrap();
    std::fs::write(dir.join("tls.key.tmp"), &data["tls.key"]).unwrap();
    // Renames, as the kubelet's atomic writer swaps a mounted Secret: never a half-written file.
    std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
}

#[tokio::test]
async fn the_http_api_serves_tls_with_the_operators_certificate_and_publishes_its_ca() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "tls-managed").await;
    let mut op = Operator::start(&env, &ns.name, &[]);

    // The published CA is all a client needs: the discovery document names the https issuer.
    let ca = config_map_value(&ns, "agentiam-api-ca", "ca.crt").await.expect("the CA is published");
    assert_eq!(readyz_trusting(&op.http_addr, &ca).await, Ok(200));
    let (status, _, body) = http_get(&op.http_addr, "/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], format!("https://{}", op.http_addr));
    assert_eq!(doc["jwks_uri"], format!("https://{}/keys", op.http_addr));

    // The certificate and key live in a kubernetes.io/tls Secret; the CA is the operator's own, not the
    // agents' SPIFFE CA.
    let secret = ns.api::<Secret>().get("agentiam-api-tls").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let spiffe_ca = ns.api::<Secret>().get("agentiam-ca").await.ok();
    if let Some(spiffe_ca) = spiffe_ca {
        let spiffe_pem =
            spiffe_ca.data.unwrap_or_default().get("ca.crt").map(|b| b.0.clone()).unwrap_or_default();
        assert_ne!(String::from_utf8_lossy(&spiffe_pem), ca, "the API CA must not be the SPIFFE CA");
    }

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(&op.http_addr).await.unwrap();
    plain.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"), "plain HTTP was answered");

    // A client that trusts another CA refuses the server.
    let stranger = certificate_for_loopback();
    let refused = readyz_trusting(&op.http_addr, &stranger.ca_bundle_pem()).await;
    assert!(refused.is_err(), "a client trusting another CA accepted the server: {refused:?}");

    // Agent pods get the same CA through their namespace's trust bundle.
    ns.create_agent(
        "bot",
        json!({"owner": {"kind": "Team", "name": "e2e"}, "purpose": "reads the API CA",
            "credentials": {"audiences": ["crm"]}}),
    )
    .await;
    wait_credentials(&ns.api::<Agent>(), "bot").await;
    let bundled = wait_for("api-ca.crt in the trust bundle", WAIT, || async {
        config_map_value(&ns, "agentiam-trust-bundle", "api-ca.crt").await
    })
    .await;
    assert_eq!(bundled, ca);

    // A restart serves from the same Secret: clients keep trusting the CA they have.
    op.restart();
    assert_eq!(readyz_trusting(&op.http_addr, &ca).await, Ok(200));
    assert_eq!(config_map_value(&ns, "agentiam-api-ca", "ca.crt").await.as_deref(), Some(ca.as_str()));
}

#[tokio::test]
async fn a_supplied_certificate_is_served_and_replaced_when_its_files_change() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "tls-files").await;
    // The files live in the operator's directory (a pod has it mounted), for the address it serves on.
    let mut op = Operator::unstarted(&env, &ns.name, &[]);
    let dir = op.dir.join("tls");
    std::fs::create_dir(&dir).unwrap();
    let host = op.http_addr.parse::<std::net::SocketAddr>().unwrap().ip();
    let certificate = || {
        ServingCerts::generate(&[San::Ip(host)], &RenewalPolicy::default(), jiff::Timestamp::now()).unwrap()
    };
    let first = certificate();
    write_files(&dir, &first);
    let (cert, key) = (dir.join("tls.crt").display().to_string(), dir.join("tls.key").display().to_string());
    op.set_extra(&[
        "--http-tls-cert-file",
        &cert,
        "--http-tls-key-file",
        &key,
        "--http-tls-check-interval",
        "1s",
    ]);
    op.spawn_and_wait();
    assert_eq!(readyz_trusting(&op.http_addr, &first.ca_bundle_pem()).await, Ok(200));
    trust(&op.http_addr, &first.ca_bundle_pem());
    let (status, _, body) = http_get(&op.http_addr, "/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{body}");
    // The operator publishes no CA of its own for a certificate it did not issue.
    assert!(ns.api::<ConfigMap>().get_opt("agentiam-api-ca").await.unwrap().is_none());
    assert!(ns.api::<Secret>().get_opt("agentiam-api-tls").await.unwrap().is_none());

    // New files (a renewed certificate from another CA): served from the next check on.
    let second = certificate();
    write_files(&dir, &second);
    let started = Instant::now();
    wait_for("the new certificate to be served", WAIT, || async {
        (readyz_trusting(&op.http_addr, &second.ca_bundle_pem()).await == Ok(200)).then_some(())
    })
    .await;
    eprintln!("changed certificate files served after {:?}", started.elapsed());
    assert!(readyz_trusting(&op.http_addr, &first.ca_bundle_pem()).await.is_err());

    // A broken file keeps the last good certificate (and says so in the log).
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    wait_for("the failed check in the log", WAIT, || async {
        op.stderr().contains("HTTP API certificate check failed").then_some(())
    })
    .await;
    assert_eq!(readyz_trusting(&op.http_addr, &second.ca_bundle_pem()).await, Ok(200));
}

#[tokio::test]
async fn tls_settings_that_cannot_work_stop_the_operator_with_a_clear_error() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "tls-refused").await;
    let missing = "/nonexistent/agentiam/tls.crt";
    for (extra, expected) in [
        (vec!["--issuer-url", "http://127.0.0.1:1"], "is plain http while the HTTP server serves TLS"),
        (vec!["--http-tls-cert-file", missing], "--http-tls-cert-file and --http-tls-key-file go together"),
        (
            vec!["--http-tls-cert-file", missing, "--http-tls-key-file", missing],
            "failed to read /nonexistent/agentiam/tls.crt",
        ),
        (vec!["--http-plaintext", "--http-tls-san", "x.example"], "--http-plaintext serves no certificate"),
    ] {
        let mut op = Operator::unstarted(&env, &ns.name, &extra);
        op.spawn();
        let (code, stderr) = op.wait_exit();
        assert_ne!(code, Some(0), "{extra:?} started");
        assert!(stderr.contains(expected), "{extra:?}: expected {expected:?} in:\n{stderr}");
    }
}
