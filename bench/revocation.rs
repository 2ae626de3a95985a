//! The kill switch's propagation on the local control plane: for a selector Revocation of N agents (100,
//! 1,000 and 10,000 by default, the tiers; BENCH_REVOCATION_AGENTS=100,1000 for a quicker run), how
//! long after the create call began until
//! - the decision API refuses each of a sample of the agents' identity tokens (up to 100, polled by 4 tasks),
//! - a feed follower (the library's `Follower`, on `/v1/revocations`) lists each sampled agent,
//! - every credentials Secret is gone,
//!
//! against the physical floor in the same run: a plain watch of Revocations (kube-rs, the same API server)
//! seeing the object. Nothing can act on a Revocation before it is delivered; the ratio says what the
//! operator adds on top.
//!
//! The peer, SPIRE (spire-server and spire-agent from tools/spire.sh, SPIRE's defaults): a workload's
//! JWT-SVID is fetched from the agent, its registration entry is deleted, and the agent's own validation
//! (`spire-agent api validate jwt`, as a second registered workload) is asked every 250 ms until it refuses
//! the token; beside it, how long the agent goes on issuing new JWT-SVIDs to the workload. Ours in the same
//! run: the smallest tier's p99s. BENCH_REVOCATION_SPIRE=0 skips the peer (it waits out a JWT-SVID's TTL,
//! 5 minutes by default). Writes `$BENCH_RESULTS_DIR/revocation.json`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

#[path = "support/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use cluster::{pct, round};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentiam::api::{Agent, AgentPolicy, Revocation};
use agentiam::identity::follower::Follower;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};

const SAMPLE: usize = 100;
const POLLERS: usize = 4;

async fn secrets_left(secrets: &Api<Secret>) -> usize {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=agentiam-operator");
    secrets
        .list_metadata(&lp)
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.ends_with("-credentials")))
                .count()
        })
        .unwrap_or(usize::MAX)
}

async fn tier(s: &cluster::Settings, client: &Client, n: usize) -> Value {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let ns = format!("bench-rvk-{n}-{}", &suffix[..6]);
    cluster::create_namespace(client, &ns).await;
    let mut op = cluster::Operator::start(s, &ns);
    let policy: AgentPolicy = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "read"},
        "spec": {"agents": {"selector": {}}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]}]}}))
    .unwrap();
    Api::<AgentPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // Each poll lists the metadata of every Secret: poll a large fleet less often.
    let poll = Duration::from_millis((n as u64 / 10).clamp(100, 1000));
    let created = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let agents = agents.clone();
            async move {
                let a: Agent = serde_json::from_value(json!({
                    "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
                    "metadata": {"name": format!("a{i}"), "labels": {"fleet": "bench"}},
                    "spec": {"owner": {"kind": "Team", "name": "bench"}, "purpose": "revocation bench",
                        "credentials": {"audiences": ["crm"]}}}))
                .unwrap();
                agents.create(&PostParams::default(), &a).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    while secrets_left(&secrets).await != n {
        op.check_alive();
        assert!(created.elapsed() < s.timeout, "{n} agents did not get credentials in time");
        tokio::time::sleep(poll).await;
    }
    let issued_s = created.elapsed().as_secs_f64();
    println!("revocation: {n} agents Active with credentials in {issued_s:.1} s");

    // The sample: tokens and UIDs of up to SAMPLE agents spread over the fleet.
    let step = (n / SAMPLE.min(n)).max(1);
    let mut sample = Vec::new();
    for i in (0..n).step_by(step).take(SAMPLE) {
        let name = format!("a{i}");
        let secret = secrets.get(&format!("{name}-credentials")).await.unwrap();
        let token = String::from_utf8(secret.data.unwrap()["token-crm"].0.clone()).unwrap();
        let uid = agents.get(&name).await.unwrap().metadata.uid.unwrap();
        sample.push((token, uid));
    }

    // The floor: a plain watch of Revocations in the namespace.
    let seen: Arc<Mutex<Option<Instant>>> = Arc::default();
    let watch = {
        let (seen, api) = (Arc::clone(&seen), Api::<Revocation>::namespaced(client.clone(), &ns));
        tokio::spawn(async move {
            let mut stream = Box::pin(watcher(api, watcher::Config::default()));
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) = event
                    && r.metadata.name.as_deref() == Some("stop")
                {
                    seen.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        })
    };
    // The follower of the feed (plain HTTP: the operator runs with --http-plaintext here).
    let tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let follower = Follower::new(&format!("http://{}/v1/revocations", op.addr), tls).unwrap();
    let following = tokio::spawn(Arc::clone(&follower).run());
    let fresh = Instant::now();
    while follower.fresh(Duration::from_secs(10)).is_none() {
        assert!(fresh.elapsed() < Duration::from_secs(30), "the feed never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let http: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let url: http::Uri = format!("http://{}/v1/authorize", op.addr).parse().unwrap();
    let decide = move |token: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({"token": token, "action": "read", "resource": "crm:contacts/1"}).to_string();
            let req = http::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = http.request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&body).unwrap()["decision"] == "Deny"
        }
    };
    for (token, _) in &sample {
        assert!(!decide(token.clone()).await, "a sampled agent is not allowed before the Revocation");
    }

    // The Revocation, and the clocks from just before its create call.
    let revocations: Api<Revocation> = Api::namespaced(client.clone(), &ns);
    let r: Revocation = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop"},
        "spec": {"target": {"selector": {"matchLabels": {"fleet": "bench"}}}, "mode": "Revoke", "reason": "bench"}}))
    .unwrap();
    let t0 = Instant::now();
    let pollers: Vec<_> = sample
        .chunks(sample.len().div_ceil(POLLERS))
        .map(|chunk| {
            let tokens: Vec<String> = chunk.iter().map(|(t, _)| t.clone()).collect();
            let decide = decide.clone();
            tokio::spawn(async move {
                let mut pending: Vec<Option<String>> = tokens.into_iter().map(Some).collect();
                let mut done = Vec::new();
                while done.len() < pending.len() {
                    for slot in pending.iter_mut() {
                        if let Some(t) = slot.clone()
                            && decide(t).await
                        {
                            done.push(t0.elapsed().as_secs_f64() * 1e3);
                            *slot = None;
                        }
                    }
                    assert!(t0.elapsed() < Duration::from_secs(120), "sampled tokens still allowed");
                }
                done
            })
        })
        .collect();
    let feed_poll = {
        let follower = Arc::clone(&follower);
        let uids: Vec<String> = sample.iter().map(|(_, u)| u.clone()).collect();
        tokio::spawn(async move {
            let mut pending: Vec<Option<String>> = uids.into_iter().map(Some).collect();
            let mut done = Vec::new();
            while done.len() < pending.len() {
                if let Some(list) = follower.list() {
                    for slot in pending.iter_mut() {
                        if slot.as_ref().is_some_and(|u| list.agents.contains(u)) {
                            done.push(t0.elapsed().as_secs_f64() * 1e3);
                            *slot = None;
                        }
                    }
                }
                assert!(t0.elapsed() < Duration::from_secs(120), "the feed never listed the sample");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            done
        })
    };
    revocations.create(&PostParams::default(), &r).await.unwrap();
    let returned_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut decision_ms: Vec<f64> = Vec::new();
    for p in pollers {
        decision_ms.extend(p.await.unwrap());
    }
    let mut feed_ms = feed_poll.await.unwrap();
    while secrets_left(&secrets).await != 0 {
        assert!(t0.elapsed() < s.timeout, "Secrets still there");
        tokio::time::sleep(poll).await;
    }
    let secrets_s = t0.elapsed().as_secs_f64();
    let floor_ms =
        seen.lock().unwrap().map(|at| at.duration_since(t0).as_secs_f64() * 1e3).unwrap_or(f64::NAN);
    watch.abort();
    following.abort();
    decision_ms.sort_by(f64::total_cmp);
    feed_ms.sort_by(f64::total_cmp);
    let status = serde_json::to_value(revocations.get("stop").await.unwrap().status).unwrap();
    let (peak_kb, _) = op.memory();
    // Tear down with the operator still running (Agents and Revocations carry its finalizers): the fleet is
    // deleted here, and the step waits until it is gone, so that the next tier and the next bench do not
    // share the API server with a fleet being deleted. Not by deleting the namespace: its controller first
    // deletes the tens of thousands of Events a large fleet leaves, in calls that time out, and reaches the
    // Agents many minutes later. A collection delete of 10,000 Agents can time out too; it is repeated until
    // every Agent is marked.
    let teardown = Instant::now();
    let lp = ListParams::default().limit(1);
    let fleet = ListParams::default().labels("fleet=bench");
    let mut asked: Option<Instant> = None;
    let _ = revocations.delete("stop", &Default::default()).await;
    // Bounded: at 10,000 agents the operator archives only 5-9 a second (20-30 minutes in all), which is a
    // finding, not a reason to lose the run. What is left after the cap is counted and released below.
    let cap = s.timeout.min(Duration::from_secs(300));
    let mut complete = false;
    while teardown.elapsed() < cap {
        let left = agents.list_metadata(&lp).await.map_or(true, |l| !l.items.is_empty())
            || revocations.list_metadata(&lp).await.map_or(true, |l| !l.items.is_empty());
        if !left {
            complete = true;
            break;
        }
        if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
            let _ = agents.delete_collection(&Default::default(), &fleet).await;
            asked = Some(Instant::now());
        }
        op.check_alive();
        tokio::time::sleep(poll).await;
    }
    let teardown_s = teardown.elapsed().as_secs_f64();
    let left_after_cap = if complete {
        0
    } else {
        agents.list_metadata(&ListParams::default()).await.map_or(0, |l| l.items.len())
    };
    op.stop();
    // What the operator did not archive within the cap is released by taking its finalizers off (the
    // operator is stopped now), so the cluster does not keep the fleet for the next run.
    if !complete {
        let strip = kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}}));
        let names: Vec<String> = agents
            .list_metadata(&ListParams::default())
            .await
            .map(|l| l.items.into_iter().filter_map(|a| a.metadata.name).collect())
            .unwrap_or_default();
        futures::stream::iter(names)
            .map(|name| {
                let (agents, strip) = (agents.clone(), strip.clone());
                async move {
                    let _ = agents.delete(&name, &Default::default()).await;
                    let _ = agents.patch(&name, &kube::api::PatchParams::default(), &strip).await;
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        let _ = revocations.patch("stop", &kube::api::PatchParams::default(), &strip).await;
    }
    // The namespace (its Events) goes on kube-controller-manager's time: waited for up to two minutes, so
    // that the next tier does not share the API server with it (a 100- or 1,000-agent namespace goes well
    // within that; the 10,000-agent one, the last tier, may not, and is left to it).
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let _ = namespaces.delete(&ns, &Default::default()).await;
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(120) && namespaces.get_opt(&ns).await.ok().flatten().is_some()
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let row = json!({
        "agents": n, "sampled": sample.len(), "issuance_seconds": round(issued_s, 1),
        "create_returned_ms": round(returned_ms, 1), "watch_floor_ms": round(floor_ms, 1),
        "decision_p50_ms": round(pct(&decision_ms, 50.0), 1), "decision_p99_ms": round(pct(&decision_ms, 99.0), 1),
        "feed_p50_ms": round(pct(&feed_ms, 50.0), 1), "feed_p99_ms": round(pct(&feed_ms, 99.0), 1),
        "secrets_gone_seconds": round(secrets_s, 1),
        "status_decision_api_latency_ms": status["decisionApiLatencyMs"],
        "teardown_seconds": round(teardown_s, 1),
        "teardown_complete": complete,
        "agents_left_after_teardown_cap": left_after_cap,
        "operator_peak_rss_mib": round(peak_kb as f64 / 1024.0, 1),
    });
    println!("revocation: {row}");
    row
}

/// Runs a SPIRE command line; Ok(stdout) when it exits 0, Err(stderr + stdout) otherwise.
fn spire_cmd(bin: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out =
        std::process::Command::new(bin).args(args).output().map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stderr), text(&out.stdout)))
    }
}

/// The `iat` and `exp` of a JWT, read without verifying it (SPIRE verifies it; we only want its times).
fn jwt_times(token: &str) -> (i64, i64) {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
            .unwrap();
    (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// SPIRE after a registration entry is deleted: how long the JWT-SVID the agent issued before still
/// validates, and how long the agent goes on issuing new ones.
fn spire_peer() -> Value {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tools/spire.sh");
    let out =
        std::process::Command::new(&script).arg("install").output().expect("run tools/spire.sh install");
    assert!(out.status.success(), "tools/spire.sh install failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let bin_dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let (server, agent) = (bin_dir.join("spire-server"), bin_dir.join("spire-agent"));
    // Unix socket paths are short: a directory under /tmp, not the cluster directory.
    let dir = std::env::temp_dir().join(format!("agentiam-spire-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = std::process::Command::new(&script)
        .args(["start", dir.to_str().unwrap(), &port.to_string()])
        .status()
        .expect("run tools/spire.sh start");
    assert!(started.success(), "tools/spire.sh start failed (logs in {})", dir.display());
    let stop = || {
        let _ = std::process::Command::new(&script).args(["stop", dir.to_str().unwrap()]).status();
    };
    let (ssock, asock) = (dir.join("server.sock"), dir.join("agent.sock"));
    let (ssock, asock) = (ssock.to_str().unwrap(), asock.to_str().unwrap());
    // Both entries select this process by its uid; the workload's entry adds its gid, so
    // deleting it leaves the verifier's identity (and with it the bundle it validates with) in place.
    let uid = String::from_utf8(std::process::Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let gid = String::from_utf8(std::process::Command::new("id").arg("-g").output().unwrap().stdout).unwrap();
    let (uid, gid) = (format!("unix:uid:{}", uid.trim()), format!("unix:gid:{}", gid.trim()));
    let parent = "spiffe://bench.test/node";
    for (id, spiffe, selectors) in [
        ("verifier", "spiffe://bench.test/verifier", vec![uid.as_str()]),
        ("agent", "spiffe://bench.test/agent", vec![uid.as_str(), gid.as_str()]),
    ] {
        let mut args = vec![
            "entry",
            "create",
            "-socketPath",
            ssock,
            "-entryID",
            id,
            "-parentID",
            parent,
            "-spiffeID",
            spiffe,
        ];
        for sel in selectors {
            args.extend(["-selector", sel]);
        }
        if let Err(e) = spire_cmd(&server, &args) {
            stop();
            panic!("spire-server entry create {id}: {e}");
        }
    }
    let fetch = || -> Result<String, String> {
        let out = spire_cmd(
            &agent,
            &[
                "api",
                "fetch",
                "jwt",
                "-socketPath",
                asock,
                "-audience",
                "bench",
                "-spiffeID",
                "spiffe://bench.test/agent",
            ],
        )?;
        // Pretty output: "token(<id>):" then the token on the next line, indented.
        let mut lines = out.lines();
        lines.find(|l| l.starts_with("token(")).ok_or_else(|| format!("no token in: {out}"))?;
        lines.next().map(|l| l.trim().to_owned()).ok_or_else(|| format!("no token in: {out}"))
    };
    let validate = |token: &str| {
        spire_cmd(
            &agent,
            &["api", "validate", "jwt", "-socketPath", asock, "-audience", "bench", "-svid", token],
        )
    };
    // The agent learns of entries by its periodic sync (every 5 s), so the first fetch waits for it.
    let since = Instant::now();
    let token = loop {
        match fetch() {
            Ok(t) => break t,
            Err(e) if since.elapsed() > Duration::from_secs(60) => {
                stop();
                panic!("spire-agent never issued the workload a JWT-SVID: {e}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let (iat, exp) = jwt_times(&token);
    let lifetime = (exp - iat) as f64;
    if let Err(e) = validate(&token) {
        stop();
        panic!("spire-agent does not validate the JWT-SVID it just issued: {e}");
    }
    let t0 = Instant::now();
    if let Err(e) = spire_cmd(&server, &["entry", "delete", "-socketPath", ssock, "-entryID", "agent"]) {
        stop();
        panic!("spire-server entry delete: {e}");
    }
    let deleted_at = unix_now();
    let (mut refused, mut stopped_issuing, mut last_error, mut refused_at) = (None, None, String::new(), 0.0);
    // SPIRE validates with go-jose's default leeway (a minute past `exp`, seen here): wait for that too.
    let limit = Duration::from_secs_f64(lifetime + 180.0);
    while refused.is_none() && t0.elapsed() < limit {
        match validate(&token) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(t0.elapsed().as_secs_f64());
                refused_at = unix_now();
                last_error = e.trim().to_owned();
            }
        }
        if stopped_issuing.is_none() && fetch().is_err() {
            stopped_issuing = Some(t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop();
    let _ = std::fs::remove_dir_all(&dir);
    let refused = refused.unwrap_or_else(|| panic!("SPIRE still validated the JWT-SVID after {limit:?}"));
    let row = json!({
        "version": std::fs::read_to_string(root.join("tools/versions.env")).ok()
            .and_then(|v| v.lines().find_map(|l| l.strip_prefix("SPIRE_VERSION=").map(str::to_owned))),
        "jwt_svid_lifetime_seconds": lifetime,
        "lifetime_left_at_delete_seconds": round(exp as f64 - deleted_at, 1),
        "validates_after_delete_seconds": round(refused, 1),
        "validates_past_exp_seconds": round(refused_at - exp as f64, 1),
        "issues_after_delete_seconds": stopped_issuing.map(|v| round(v, 1)),
        "refusal": last_error,
        "poll_ms": 250,
    });
    println!("revocation: SPIRE {row}");
    row
}

fn figure(benchmark: String, ours: f64, peer: f64, unit: &str, target: Option<f64>) -> Value {
    // Three significant digits: a ratio against SPIRE's minutes is far below 0.001.
    let ratio = (peer > 0.0).then(|| {
        let r = ours / peer;
        let digits = if r > 0.0 { (2 - r.log10().floor() as i32).max(3) } else { 3 };
        round(r, digits)
    });
    // Targets here are upper bounds on a latency: met when ours is at most the target.
    let met = target.map(|t| ours <= t);
    json!({"benchmark": benchmark, "ours": round(ours, 1), "peer": round(peer, 1), "unit": unit,
        "ratio": ratio, "target": target, "met": met})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let s = cluster::Settings::from_env();
    let tiers: Vec<usize> = std::env::var("BENCH_REVOCATION_AGENTS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "100,1000,10000".into())
        .split(',')
        .map(|v| v.trim().parse().expect("BENCH_REVOCATION_AGENTS"))
        .collect();
    let client = Client::try_default().await.unwrap();
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for n in tiers {
        let row = tier(&s, &client, n).await;
        let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        let floor = f("watch_floor_ms");
        // The targets are set at 10,000 agents; the smaller tiers are context.
        let (dt, ft) = if n >= 10_000 { (Some(100.0), Some(250.0)) } else { (None, None) };
        figures.push(figure(
            format!("revocation of {n} agents: decision API denies (p99) vs a watch seeing the Revocation"),
            f("decision_p99_ms"),
            floor,
            "ms",
            dt,
        ));
        figures.push(figure(
            format!("revocation of {n} agents: feed follower refuses (p99) vs a watch seeing the Revocation"),
            f("feed_p99_ms"),
            floor,
            "ms",
            ft,
        ));
        figures.push(figure(
            format!("revocation of {n} agents: every credentials Secret deleted"),
            f("secrets_gone_seconds"),
            f64::NAN,
            "s",
            None,
        ));
        rows.push(row);
    }
    let spire = (std::env::var("BENCH_REVOCATION_SPIRE").as_deref() != Ok("0")).then(spire_peer);
    if let (Some(peer), Some(first)) = (&spire, rows.first()) {
        let n = first["agents"].as_u64().unwrap_or(0);
        let peer_ms = peer["validates_after_delete_seconds"].as_f64().unwrap_or(f64::NAN) * 1e3;
        for (key, what) in [("decision_p99_ms", "decision API"), ("feed_p99_ms", "feed follower")] {
            figures.push(figure(
                format!(
                    "a revoked agent's issued token still accepted: ours ({what}, p99 of {n}) vs SPIRE \
                     (JWT-SVID validates after its entry is deleted)"
                ),
                first[key].as_f64().unwrap_or(f64::NAN),
                peer_ms,
                "ms",
                None,
            ));
        }
    }
    let fragment = json!({"bench": "revocation", "config": {"sample": SAMPLE, "pollers": POLLERS},
        "tiers": rows, "spire": spire, "figures": figures});
    let path = s.results_dir.join("revocation.json");
    std::fs::write(&path, serde_json::to_string_pretty(&fragment).unwrap() + "\n").unwrap();
    println!("wrote {}", path.display());
}
