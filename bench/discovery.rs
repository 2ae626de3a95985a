//! Shadow-agent discovery on the local control plane, the two figures:
//! - **time to record**: with 1,000 ordinary Pods in the namespace (created first, and seen by the operator),
//!   100 agentic Pods (a literal `OPENAI_API_KEY`) are created at concurrency 8; for each, the time from just
//!   before its create call until the operator's shadow Agent `pod-<name>` appears on a watch of Agents.
//!   The peer is the floor in the same run: a plain kube-rs watch of Pods seeing each Pod (nothing can
//!   classify a Pod before it is delivered). Target p99 <= 2 s.
//! - **memory**: 10,000 Pods (100 of them agentic) in another namespace, watched by the release operator with
//!   discovery off and then, on the same Pods, with discovery on; each runs until it settled (discovery: its
//!   log says every kind is listed) plus a few seconds, and its peak RSS (VmHWM) is read. Target: discovery
//!   adds <= 64 MiB.
//!
//! Pods never run (bench/run.sh starts the cluster without its node); the API server and the operator see
//! them all the same. Knobs:
//! BENCH_DISCOVERY_ORDINARY (1000), BENCH_DISCOVERY_AGENTIC (100), BENCH_DISCOVERY_MEMORY_PODS (10000).
//! Writes `$BENCH_RESULTS_DIR/discovery.json`.

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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentiam::api::Agent;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn num(key: &str, default: usize) -> usize {
    std::env::var(key).ok().filter(|v| !v.is_empty()).map_or(default, |v| v.parse().expect(key))
}

fn pod(name: &str, agentic: bool) -> Pod {
    let env =
        if agentic { json!([{"name": "OPENAI_API_KEY", "value": "sk-bench-not-a-key"}]) } else { json!([]) };
    let (image, app) = if agentic { ("python:3.12", "bot") } else { ("nginx:1.27", "web") };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": image, "env": env,
            "ports": [{"containerPort": 8080, "name": "http"}]}]}
    }))
    .unwrap()
}

/// Creates the Pods `names` at `concurrency`; returns the instant just before each create call.
async fn create_pods(
    pods: &Api<Pod>,
    names: Vec<(String, bool)>,
    concurrency: usize,
) -> HashMap<String, Instant> {
    futures::stream::iter(names)
        .map(|(name, agentic)| {
            let pods = pods.clone();
            async move {
                let p = pod(&name, agentic);
                let started = Instant::now();
                pods.create(&PostParams::default(), &p).await.unwrap();
                (name, started)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Records when each object `name_of` names is first seen on a watch of `api`.
fn watch_seen<K>(api: Api<K>, seen: Seen, name_of: fn(&K) -> Option<String>) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    tokio::spawn(async move {
        let mut stream = Box::pin(watcher(api, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event
                && let Some(name) = name_of(&o)
            {
                seen.lock().unwrap().entry(name).or_insert_with(Instant::now);
            }
        }
    })
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Latencies in ms of `seen` against `started`, sorted (a name never seen fails the bench).
fn latencies(started: &HashMap<String, Instant>, seen: &Seen, key: impl Fn(&str) -> String) -> Vec<f64> {
    let seen = seen.lock().unwrap();
    let mut out: Vec<f64> = started
        .iter()
        .map(|(name, t0)| {
            let at = seen.get(&key(name)).unwrap_or_else(|| panic!("{} was never seen", key(name)));
            at.saturating_duration_since(*t0).as_secs_f64() * 1e3
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

async fn time_to_record(s: &cluster::Settings, client: &Client, ns: &str) -> Value {
    let (ordinary, agentic) = (num("BENCH_DISCOVERY_ORDINARY", 1000), num("BENCH_DISCOVERY_AGENTIC", 100));
    let mut op = cluster::Operator::start(s, ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (pods_seen, agents_seen): (Seen, Seen) = (Arc::default(), Arc::default());
    let name = |o: &Pod| o.metadata.name.clone();
    let pod_watch = watch_seen(pods.clone(), Arc::clone(&pods_seen), name);
    let agent_name = |o: &Agent| o.metadata.name.clone();
    let agent_watch =
        watch_seen(Api::<Agent>::namespaced(client.clone(), ns), Arc::clone(&agents_seen), agent_name);

    let t = Instant::now();
    create_pods(&pods, (0..ordinary).map(|i| (format!("web-{i}"), false)).collect(), 16).await;
    wait_until("the ordinary pods are seen", s.timeout, || pods_seen.lock().unwrap().len() >= ordinary).await;
    let ordinary_s = t.elapsed().as_secs_f64();
    // The operator's Pod watch gets the same events; a few seconds let it work through them first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    op.check_alive();
    println!("discovery: {ordinary} ordinary pods created in {ordinary_s:.1} s");

    let started = create_pods(&pods, (0..agentic).map(|i| (format!("bot-{i}"), true)).collect(), 8).await;
    let shadow = |n: &str| agentiam::discovery::workload::shadow_name("Pod", n);
    wait_until("every agentic pod has its shadow Agent", s.timeout, || {
        let seen = agents_seen.lock().unwrap();
        started.keys().all(|n| seen.contains_key(&shadow(n)))
    })
    .await;
    pod_watch.abort();
    agent_watch.abort();
    let ours = latencies(&started, &agents_seen, shadow);
    let floor = latencies(&started, &pods_seen, str::to_owned);
    let false_positives = agents_seen.lock().unwrap().keys().filter(|n| n.starts_with("pod-web-")).count();
    assert_eq!(false_positives, 0, "ordinary pods got shadow records");
    let (hwm, _) = op.memory();
    op.stop();
    let row = json!({
        "ordinary_pods": ordinary, "agentic_pods": agentic, "concurrency": 8,
        "record_p50_ms": round(pct(&ours, 50.0), 1), "record_p99_ms": round(pct(&ours, 99.0), 1),
        "record_max_ms": round(pct(&ours, 100.0), 1),
        "watch_floor_p50_ms": round(pct(&floor, 50.0), 1), "watch_floor_p99_ms": round(pct(&floor, 99.0), 1),
        "false_positives": false_positives,
        "operator_peak_rss_mib": round(hwm as f64 / 1024.0, 1),
    });
    println!("discovery: time to record {row}");
    row
}

/// Runs the operator with `extra` flags over the namespace's Pods until it settled; its peak and final RSS.
fn settled_memory(s: &cluster::Settings, ns: &str, extra: &[&str], discovery: bool) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut op =
        cluster::Operator::start_with(s, ns, &extra.iter().map(ToString::to_string).collect::<Vec<_>>());
    if discovery {
        while !op.stderr().contains("discovery has listed every kind") {
            op.check_alive();
            assert!(start.elapsed() < s.timeout, "discovery did not list everything:\n{}", op.stderr_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let settled = start.elapsed().as_secs_f64();
    // Whatever follows the first list (shadow records, status writes, Events) settles too.
    std::thread::sleep(Duration::from_secs(10));
    op.check_alive();
    let (hwm, rss) = op.memory();
    op.stop();
    (round(hwm as f64 / 1024.0, 1), round(rss as f64 / 1024.0, 1), round(settled, 1))
}

async fn memory(s: &cluster::Settings, client: &Client, ns: &str) -> Value {
    let total = num("BENCH_DISCOVERY_MEMORY_PODS", 10_000);
    let agentic = total / 100;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    let names = (0..total)
        .map(|i| if i % 100 == 0 { (format!("bot-{i}"), true) } else { (format!("web-{i}"), false) });
    create_pods(&pods, names.collect(), 32).await;
    println!("discovery: {total} pods ({agentic} agentic) created in {:.1} s", t.elapsed().as_secs_f64());
    let (s2, ns2) = (s.clone(), ns.to_owned());
    let off = tokio::task::spawn_blocking(move || {
        settled_memory(&s2, &ns2, &["--webhook", "false", "--discovery", "false"], false)
    })
    .await
    .unwrap();
    // The second operator starts a new audit log in the same namespace: it would refuse the first one's
    // published checkpoint (a log that lost records).
    let checkpoints: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    checkpoints.delete("agentiam-audit-checkpoint", &Default::default()).await.unwrap();
    let (s2, ns2) = (s.clone(), ns.to_owned());
    let on = tokio::task::spawn_blocking(move || settled_memory(&s2, &ns2, &["--webhook", "false"], true))
        .await
        .unwrap();
    let row = json!({
        "pods": total, "agentic_pods": agentic,
        "off_peak_rss_mib": off.0, "off_rss_mib": off.1,
        "on_peak_rss_mib": on.0, "on_rss_mib": on.1, "on_listed_after_seconds": on.2,
        "added_peak_mib": round(on.0 - off.0, 1), "added_rss_mib": round(on.1 - off.1, 1),
    });
    println!("discovery: memory {row}");
    row
}

fn figure(benchmark: &str, ours: f64, peer: f64, unit: &str, target: Option<f64>) -> Value {
    let ratio = (peer > 0.0).then(|| round(ours / peer, 3));
    json!({"benchmark": benchmark, "ours": round(ours, 1), "peer": round(peer, 1), "unit": unit,
        "ratio": ratio, "target": target, "met": target.map(|t| ours <= t)})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let s = cluster::Settings::from_env();
    let client = Client::try_default().await.unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (record_ns, memory_ns) =
        (format!("bench-disc-rec-{}", &suffix[..6]), format!("bench-disc-mem-{}", &suffix[..6]));
    let mut cleanup = cluster::Cleanup::new(vec![record_ns.clone(), memory_ns.clone()], record_ns.clone());
    cluster::create_namespace(&client, &record_ns).await;
    cluster::create_namespace(&client, &memory_ns).await;
    let record = time_to_record(&s, &client, &record_ns).await;
    let mem = memory(&s, &client, &memory_ns).await;
    cleanup.run();
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let figures = vec![
        figure(
            &format!(
                "discovery: a new agentic Pod's shadow record (p99, {} ordinary + {} agentic pods) vs a watch seeing the Pod",
                record["ordinary_pods"], record["agentic_pods"]
            ),
            f(&record, "record_p99_ms"),
            f(&record, "watch_floor_p99_ms"),
            "ms",
            Some(2000.0),
        ),
        figure(
            &format!(
                "discovery: operator peak memory it adds with {} pods watched (peer: the same operator with discovery off)",
                mem["pods"]
            ),
            f(&mem, "added_peak_mib"),
            f(&mem, "off_peak_rss_mib"),
            "MiB",
            Some(64.0),
        ),
    ];
    let fragment = json!({"bench": "discovery", "time_to_record": record, "memory": mem, "figures": figures});
    let path = s.results_dir.join("discovery.json");
    std::fs::write(&path, serde_json::to_string_pretty(&fragment).unwrap() + "\n").unwrap();
    println!("wrote {}", path.display());
}
