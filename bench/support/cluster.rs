//! Helpers for the issuance bench: settings, timed request bursts, CPU time of the control plane, API server
//! request counters, the operator process, and cleanup that also runs when the bench panics.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use agentiam::api::Agent;
use futures::stream;

/// The `p`th percentile (nearest rank) of `sorted`; NaN when it is empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `x` rounded to `nd` decimals, for the results' JSON.
pub fn round(x: f64, nd: i32) -> f64 {
    let f = 10f64.powi(nd);
    (x * f).round() / f
}

/// Everything the bench reads from the environment.
#[derive(Clone)]
pub struct Settings {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub operator_bin: PathBuf,
    pub cluster_dir: Option<PathBuf>,
    pub results_dir: PathBuf,
    pub agents: usize,
    pub concurrency: Vec<usize>,
    pub floor_concurrency: Vec<usize>,
    pub kubectl_tokens: usize,
    pub kubectl_concurrency: Vec<usize>,
    pub api_tokens: usize,
    pub timeout: Duration,
    /// Delegations created one after another, through the webhook and without it.
    pub delegations: usize,
}

impl Settings {
    pub fn from_env() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |k: &str, d: usize| var(k).map_or(d, |v| v.parse().unwrap_or_else(|_| panic!("{k}={v:?}")));
        let list = |k: &str, d: &str| -> Vec<usize> {
            var(k).unwrap_or_else(|| d.to_owned()).split(',').map(|c| c.trim().parse().expect(k)).collect()
        };
        let kubeconfig =
            var("KUBECONFIG").map(PathBuf::from).expect("KUBECONFIG is not set: run `make bench`");
        let operator_bin =
            var("AGENTIAM_BIN").map_or_else(|| root.join("target/release/agentiam"), PathBuf::from);
        assert!(
            operator_bin.exists(),
            "{} is missing: cargo build --release --bin agentiam",
            operator_bin.display()
        );
        Self {
            kubeconfig,
            kubectl: var("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from),
            operator_bin,
            cluster_dir: var("AGENTIAM_CLUSTER_DIR").map(PathBuf::from),
            results_dir: var("BENCH_RESULTS_DIR").map_or_else(|| root.join("bench/results"), PathBuf::from),
            agents: num("BENCH_AGENTS", 1000),
            delegations: num("BENCH_DELEGATIONS", 300),
            concurrency: list("BENCH_CONCURRENCY", "8,32,64"),
            floor_concurrency: list("BENCH_FLOOR_CONCURRENCY", "4,8,16,32,64"),
            kubectl_tokens: num("BENCH_KUBECTL_TOKENS", 100),
            kubectl_concurrency: list("BENCH_KUBECTL_CONCURRENCY", "8,32"),
            api_tokens: num("BENCH_API_TOKENS", 1000),
            timeout: Duration::from_secs(num("BENCH_TIMEOUT_SECS", 900) as u64),
        }
    }
}

/// One timed burst of `n` requests at a fixed concurrency.
pub struct Burst {
    pub label: String,
    pub n: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu: Value,
}

impl Burst {
    pub fn with_cpu(mut self, cpu: Value) -> Self {
        self.cpu = cpu;
        self
    }

    pub fn labelled(mut self, label: &str) -> Self {
        label.clone_into(&mut self.label);
        self
    }

    pub fn to_json(&self) -> Value {
        json!({"label": self.label, "n": self.n, "concurrency": self.concurrency, "seconds": self.seconds,
            "rate": (self.rate * 10.0).round() / 10.0, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "cluster_cpu_seconds": self.cpu})
    }
}

/// Runs `make(i)` for i in 0..n with at most `concurrency` in flight; any error fails the bench.
pub async fn burst<F, Fut>(n: usize, concurrency: usize, make: F) -> Burst
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), kube::Error>>,
{
    let start = Instant::now();
    let mut latencies: Vec<f64> = stream::iter(0..n)
        .map(|i| {
            let fut = make(i);
            async move {
                let t = Instant::now();
                fut.await.unwrap_or_else(|e| panic!("request {i} failed: {e}"));
                t.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    Burst {
        label: "sweep".into(),
        n,
        concurrency,
        seconds: r2(seconds),
        rate: n as f64 / seconds,
        p50_ms: r2(pct(0.5)),
        p99_ms: r2(pct(0.99)),
        cpu: Value::Null,
    }
}

pub async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// CPU seconds (user + system) of the control plane components and of this process.
pub struct CpuMeter {
    pids: Vec<(String, u32)>,
    pub ticks: f64,
}

impl CpuMeter {
    pub fn new(cluster_dir: Option<&Path>) -> Self {
        let mut pids = vec![("bench client".to_owned(), std::process::id())];
        for c in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let pid = cluster_dir
                .and_then(|d| std::fs::read_to_string(d.join("pids").join(format!("{c}.pid"))).ok())
                .and_then(|p| p.trim().parse().ok());
            if let Some(pid) = pid {
                pids.push((c.to_owned(), pid));
            }
        }
        let ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Self { pids, ticks }
    }

    pub fn sample(&self) -> BTreeMap<String, f64> {
        self.pids
            .iter()
            .filter_map(|(name, pid)| Some((name.clone(), cpu_seconds(*pid, self.ticks)?)))
            .collect()
    }

    /// CPU seconds each process used since `before`.
    pub fn since(&self, before: &BTreeMap<String, f64>) -> Value {
        let now = self.sample();
        let used: BTreeMap<&String, f64> = now
            .iter()
            .filter_map(|(k, v)| Some((k, ((v - before.get(k)?) * 100.0).round() / 100.0)))
            .collect();
        json!(used)
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / ticks)
}

/// `apiserver_request_total` summed by verb and resource (all codes).
pub async fn scrape(client: &Client) -> BTreeMap<(String, String), f64> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("read the API server's /metrics");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |k: &str| {
            labels.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned()
        };
        let (group, resource, sub) = (label("group"), label("resource"), label("subresource"));
        let mut res = if group.is_empty() { resource } else { format!("{resource}.{group}") };
        if !sub.is_empty() {
            res = format!("{res}/{sub}");
        }
        *out.entry((label("verb"), res)).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// The requests counted between two scrapes, largest first. Writes are POST, PUT, PATCH, APPLY and DELETE.
pub fn metrics_diff(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> Vec<Value> {
    let mut rows: Vec<(f64, &String, &String)> = after
        .iter()
        .map(|((verb, res), v)| {
            (v - before.get(&(verb.clone(), res.clone())).copied().unwrap_or(0.0), verb, res)
        })
        .filter(|(d, _, _)| *d >= 1.0)
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    rows.into_iter()
        .map(|(d, verb, res)| {
            let write = matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE");
            json!({"verb": verb, "resource": res, "count": d, "write": write})
        })
        .collect()
}

/// The release operator as a child process watching one namespace, with its own audit log.
pub struct Operator {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub startup_seconds: f64,
    /// Where it serves HTTP (health, issuer, decision API); the issuance bench does not need it.
    #[allow(dead_code)]
    pub addr: String,
}

impl Operator {
    /// Spawns the operator without its webhooks and returns once it logged "operator running".
    pub fn start(s: &Settings, ns: &str) -> Self {
        Self::start_with(s, ns, &["--webhook".to_owned(), "false".to_owned()])
    }

    /// Spawns the operator with its admission webhooks on a free loopback port.
    pub fn start_with_webhooks(s: &Settings, ns: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let url = format!("https://{listen}");
        Self::start_with(s, ns, &["--webhook-listen".to_owned(), listen, "--webhook-url".to_owned(), url])
    }

    /// Spawns the operator with `extra` flags (e.g. `--webhook false --discovery false`).
    pub fn start_with(s: &Settings, ns: &str, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let audit = dir.path().join("audit").join("audit.jsonl");
        let child = Command::new(&s.operator_bin)
            .args(["--log-format", "text", "run", "--namespace", ns, "--watch-namespace", ns])
            // Plain HTTP, as the peers (OPA's REST API, Cedar in process) are measured: the figures compare
            // deciding, not TLS stacks (bench/README.md).
            .args(["--http-addr", &addr, "--issuer-url", &format!("http://{addr}"), "--http-plaintext"])
            .args(["--admin-addr", "127.0.0.1:0", "--audit-stdout", "false"])
            .args(extra)
            .arg("--audit-log")
            .arg(&audit)
            .env("KUBECONFIG", &s.kubeconfig)
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("spawn the operator");
        let mut op = Self { child: Some(child), dir, startup_seconds: 0.0, addr };
        let start = Instant::now();
        while !op.stderr().contains("operator running") {
            op.check_alive();
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "operator did not start:\n{}",
                op.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        op.startup_seconds = (start.elapsed().as_secs_f64() * 100.0).round() / 100.0;
        op
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("operator running").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn stderr_tail(&self) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn check_alive(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("the operator exited with {status}:\n{}", self.stderr_tail());
        }
    }

    /// (VmHWM, VmRSS) in kB.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        let ticks = CpuMeter::new(None).ticks;
        cpu_seconds(self.pid(), ticks)
    }

    /// SIGTERM (a clean stop writes the final checkpoint) and wait.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                println!("   warning: the operator ignored SIGTERM for 60s and was killed");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The audit log's file.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit").join("audit.jsonl")
    }

    /// The audit log's record count, by kind and by action.
    pub fn audit_summary(&self) -> Value {
        let path = self.audit_path();
        let file = std::fs::File::open(&path).expect("audit log");
        let mut by_action: BTreeMap<String, u64> = BTreeMap::new();
        let mut records = 0u64;
        for line in BufReader::new(file).lines() {
            let rec: Value = serde_json::from_str(&line.unwrap()).expect("audit record is JSON");
            records += 1;
            let key =
                format!("{} {}", rec["kind"].as_str().unwrap_or("?"), rec["action"].as_str().unwrap_or("?"));
            *by_action.entry(key).or_insert(0) += 1;
        }
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        json!({"records": records, "bytes": bytes, "by_kind_and_action": by_action})
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deletes the bench namespaces, first dropping the Agents' finalizers (the operator is gone by then, so they
/// would hold the namespace in Terminating forever). Runs on its own thread and runtime, so it also works from
/// `Drop` during a panic inside the async main.
pub struct Cleanup {
    namespaces: Vec<String>,
    agents_ns: String,
    done: bool,
}

impl Cleanup {
    pub fn new(namespaces: Vec<String>, agents_ns: String) -> Self {
        Self { namespaces, agents_ns, done: false }
    }

    pub fn run(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let (namespaces, agents_ns) = (self.namespaces.clone(), self.agents_ns.clone());
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(cleanup_namespaces(namespaces, agents_ns));
        });
        if worker.join().is_err() {
            println!("   warning: cleanup failed; delete the bench-* namespaces by hand");
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

async fn cleanup_namespaces(namespaces: Vec<String>, agents_ns: String) {
    let client = Client::try_default().await.expect("client for cleanup");
    // Operators are stopped by now and their webhooks fail closed: without their configurations gone, the
    // finalizer patches below (and the namespace's deletion of its agentiam objects) would be refused. Every
    // bench namespace may have held an operator (`--namespace` = `--watch-namespace`) and Agents.
    let mut all_ns = namespaces.clone();
    if !all_ns.contains(&agents_ns) {
        all_ns.push(agents_ns);
    }
    let patch = json!({"metadata": {"finalizers": null}});
    for ns in &all_ns {
        let name = agentiam::names::webhook_configuration(ns);
        let vwc: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        let _ = vwc.delete(&name, &DeleteParams::default()).await;
        let mwc: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let _ = mwc.delete(&name, &DeleteParams::default()).await;
        let agents: Api<Agent> = Api::namespaced(client.clone(), ns);
        let names: Vec<String> = agents
            .list_metadata(&ListParams::default())
            .await
            .map(|l| {
                let held = l
                    .items
                    .into_iter()
                    .filter(|a| a.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()));
                held.filter_map(|a| a.metadata.name).collect()
            })
            .unwrap_or_default();
        stream::iter(names)
            .map(|name| {
                let (api, patch) = (agents.clone(), patch.clone());
                async move {
                    let _ = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }
    let all: Api<Namespace> = Api::all(client);
    for ns in &namespaces {
        let _ = all.delete(ns, &DeleteParams::default()).await;
    }
    // Wait until they are gone: bench/run.sh stops the cluster right after, and a namespace still terminating
    // then keeps its thousands of Agents in etcd for the next operator on this cluster (`make run`) to work
    // through.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut left = namespaces;
    while !left.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for ns in left {
            if !matches!(all.get_opt(&ns).await, Ok(None)) {
                still.push(ns);
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if left.is_empty() {
        println!("   cleanup: deleted the bench namespaces ({:.1} s)", started.elapsed().as_secs_f64());
    } else {
        println!("   warning: still terminating after 300 s: {}; delete them by hand", left.join(", "));
    }
}
