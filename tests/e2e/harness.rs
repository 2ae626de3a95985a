//! Test harness for the e2e tier: a real kube-apiserver (started by tools/cluster.sh), one namespace and one
//! operator process per test, and polling helpers that wait on conditions instead of sleeping.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentiam::api::Agent;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use crate::pod::{ADMIN_PORT, HTTP_PORT, InCluster, PodOperator, WEBHOOK_PORT};

/// Default time to wait for the operator to react. Generous because tests share 2 cores.
pub const WAIT: Duration = Duration::from_secs(60);

/// Where the cluster and tools are.
#[derive(Clone, Debug)]
pub struct Env {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// Set in the in-cluster pass (tests/e2e/pod.rs): operators run as Pods on the local node.
    pub in_cluster: Option<InCluster>,
}

/// The e2e environment, or None when there is no control plane. With E2E_REQUIRED=1, a missing control plane
/// panics instead, so CI cannot pass by skipping.
pub fn env() -> Option<Env> {
    let kubeconfig = std::env::var_os("AGENTIAM_E2E_KUBECONFIG").map(PathBuf::from);
    let required = std::env::var("E2E_REQUIRED").is_ok_and(|v| v == "1");
    match kubeconfig {
        Some(k) if k.exists() => {
            let kubectl = std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
            Some(Env { kubeconfig: k, kubectl, in_cluster: InCluster::from_env() })
        }
        _ if required => panic!(
            "E2E_REQUIRED=1 but AGENTIAM_E2E_KUBECONFIG does not name a kubeconfig; run via `make test`"
        ),
        _ => {
            eprintln!("SKIPPED: no control plane (AGENTIAM_E2E_KUBECONFIG unset); run via `make test`");
            None
        }
    }
}

/// Ends the test early (a skip, with its reason) in the in-cluster pass, for tests that only make sense for an
/// operator process on loopback (tests/e2e/pod.rs).
#[macro_export]
macro_rules! process_only {
    ($env:expr, $why:expr) => {
        if $env.in_cluster.is_some() {
            eprintln!("SKIPPED in the in-cluster pass: {}", $why);
            return;
        }
    };
}

/// Returns the environment or ends the test early (skip).
#[macro_export]
macro_rules! require_cluster {
    () => {
        match $crate::harness::env() {
            Some(env) => env,
            None => return,
        }
    };
}

impl Env {
    /// The host at which the operator reaches a server a test runs (a notification receiver, a Shared
    /// Signals receiver): loopback for a process, the node's address on the pods' bridge for a pod.
    pub fn local_host(&self) -> &str {
        self.in_cluster.as_ref().map_or("127.0.0.1", InCluster::host_ip)
    }

    /// kubectl flags that act as the operator itself: nothing for a process (it uses the admin
    /// kubeconfig), impersonation of the chart's ServiceAccount for a pod.
    pub fn as_operator(&self, ns: &str) -> Vec<String> {
        match self.in_cluster {
            Some(_) => vec![format!("--as=system:serviceaccount:{ns}:agentiam")],
            None => Vec::new(),
        }
    }

    /// An API client for the admin kubeconfig.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config =
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Runs kubectl with optional stdin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_with_stdin(Command::new(&self.kubectl).args(args).env("KUBECONFIG", &self.kubeconfig), stdin)
    }

    /// Runs the kubectl-agentiam plugin binary.
    pub fn plugin(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-agentiam"));
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig).env_remove("AGENTIAM_AUDIT_LOG");
        run_with_stdin(&mut cmd, None)
    }
}

pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait for command")
}

/// Text of stdout and stderr together, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A namespace for one test, deleted (with any leftover finalizers removed) when dropped.
pub struct TestNs {
    pub name: String,
    pub client: Client,
    env: Env,
}

impl TestNs {
    pub async fn new(env: &Env, prefix: &str) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("e2e-{prefix}-{}", &suffix[..6]);
        let client = env.client().await;
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self { name, client, env: env.clone() }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates an Agent from a JSON spec.
    pub async fn create_agent(&self, name: &str, spec: Value) -> Agent {
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("agent JSON");
        self.api::<Agent>().create(&PostParams::default(), &agent).await.expect("create agent")
    }

    /// Applies a manifest with kubectl in this namespace.
    pub fn apply(&self, yaml: &str) -> Output {
        self.env.kubectl(&["apply", "-n", &self.name, "-f", "-"], Some(yaml))
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        // The operator of this test may be gone: its validating webhook (failurePolicy Fail) would refuse the
        // finalizer patches below, and the finalizers would keep the namespace forever.
        let webhook = format!("agentiam-{}", self.name);
        let _ = self
            .env
            .kubectl(&["delete", "validatingwebhookconfiguration", &webhook, "--ignore-not-found"], None);
        // Agents and Revocations carry the operator's finalizers.
        let listed = self.env.kubectl(&["get", "agents,revocations", "-n", &self.name, "-o", "name"], None);
        for obj in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = self.env.kubectl(
                &[
                    "patch",
                    "-n",
                    &self.name,
                    obj,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
                None,
            );
        }
        let _ = self.env.kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
        if self.env.in_cluster.is_some() {
            let rbac = crate::pod::cluster_rbac_name(&self.name);
            let _ = self
                .env
                .kubectl(&["delete", "clusterrole,clusterrolebinding", &rbac, "--ignore-not-found"], None);
        }
        // The operator of this namespace registered cluster-scoped webhook configurations for it.
        let _ = self.env.kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                &webhook,
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// A minimal valid Agent spec.
pub fn basic_spec() -> Value {
    serde_json::json!({
        "owner": {"kind": "Team", "name": "e2e"},
        "purpose": "exercises the e2e tests",
    })
}

/// The operator, run as a child process against one namespace, with its own audit log; in the in-cluster
/// pass, as a Pod on the local node (tests/e2e/pod.rs) with the same flags and the same audit log.
pub struct Operator {
    child: Option<Child>,
    pod: Option<PodOperator>,
    pub dir: PathBuf,
    pub namespace: String,
    env: Env,
    extra: Vec<String>,
    runs: u32,
    /// 127.0.0.1:<port> of the HTTP server (probes, issuer documents); fixed across restarts so the issuer URL
    /// in tokens stays the same.
    pub http_addr: String,
    /// 127.0.0.1:<port> of the admission webhook's TLS server.
    pub webhook_addr: String,
    _tmp: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator watching (and keeping its checkpoint in) `ns`, and waits until it runs.
    pub fn start(env: &Env, ns: &str, extra: &[&str]) -> Self {
        let mut op = Self::unstarted(env, ns, extra);
        op.spawn_and_wait();
        op
    }

    /// An operator for `ns` not yet started (change its addresses, then [`Operator::spawn`]).
    pub fn unstarted(env: &Env, ns: &str, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = env.in_cluster.as_ref().map(|cfg| PodOperator::new(cfg, env, ns));
        // A pod is reached through its Service, whose ClusterIP stays across restarts.
        let (http_addr, webhook_addr) = match &pod {
            Some(p) => (format!("{}:{HTTP_PORT}", p.service_ip), format!("{}:{WEBHOOK_PORT}", p.service_ip)),
            None => (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())),
        };
        Self {
            child: None,
            pod,
            dir: tmp.path().to_owned(),
            namespace: ns.to_owned(),
            env: env.clone(),
            extra: extra.iter().map(ToString::to_string).collect(),
            runs: 0,
            http_addr,
            webhook_addr,
            _tmp: tmp,
        }
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit").join("audit.jsonl")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("stderr-{}.log", self.runs))
    }

    /// stdout of the current run: the streamed audit records.
    pub fn stdout_path(&self) -> PathBuf {
        let path = self.dir.join(format!("stdout-{}.log", self.runs));
        if let Some(pod) = &self.pod {
            // A pod's stdout is in the kubelet's log: copied to where a process's would be.
            std::fs::write(&path, pod.stream("stdout")).expect("write the pod's stdout");
        }
        path
    }

    /// Spawns without waiting; returns the child for tests of startup failures.
    pub fn spawn(&mut self) {
        self.runs += 1;
        // A test that moves the operator to another namespace (as a `helm upgrade` of watchNamespace would)
        // gets a pod there, under that namespace's chart RBAC, behind a Service there.
        if let (Some(cfg), Some(pod)) = (&self.env.in_cluster, &self.pod)
            && pod.namespace() != self.namespace
        {
            let moved = PodOperator::new(cfg, &self.env, &self.namespace);
            self.http_addr = format!("{}:{HTTP_PORT}", moved.service_ip);
            self.webhook_addr = format!("{}:{WEBHOOK_PORT}", moved.service_ip);
            self.pod = Some(moved);
        }
        let args = self.command_args();
        if let Some(pod) = self.pod.as_mut() {
            pod.spawn(self.runs, &args, &self.dir);
            return;
        }
        let child = Command::new(env!("CARGO_BIN_EXE_agentiam"))
            .args(&args)
            .env("KUBECONFIG", &self.env.kubeconfig)
            .env("RUST_LOG", "info,agentiam=debug")
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(self.stdout_path()).expect("stdout file"))
            .stderr(std::fs::File::create(self.stderr_path()).expect("stderr file"))
            .spawn()
            .expect("spawn operator");
        self.child = Some(child);
    }

    /// Whether the HTTP server serves TLS: yes, with the operator's own certificate, unless the extra
    /// flags ask for plain HTTP or supply a certificate.
    pub fn tls(&self) -> bool {
        !self.extra.iter().any(|a| a.starts_with("--http-plaintext"))
    }

    /// The HTTP server's base URL: the issuer URL.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }

    /// A PEM file with the CA bundle the HTTP server's certificate chains to, as the operator published it
    /// (ConfigMap agentiam-api-ca), for clients run by the tests (the CLI, Python).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("api-ca.crt")
    }

    fn command_args(&self) -> Vec<String> {
        let issuer = self.base_url();
        let supplied_issuer = self.extra.iter().any(|a| a.starts_with("--issuer-url"));
        // A pod listens on all its addresses, on the ports its Service targets.
        let (http_listen, webhook_listen, admin_listen) = match self.pod {
            Some(_) => (
                format!("0.0.0.0:{HTTP_PORT}"),
                format!("0.0.0.0:{WEBHOOK_PORT}"),
                format!("0.0.0.0:{ADMIN_PORT}"),
            ),
            None => (self.http_addr.clone(), self.webhook_addr.clone(), "127.0.0.1:0".to_owned()),
        };
        let mut args: Vec<String> = [
            "--log-format",
            "text",
            "run",
            "--namespace",
            &self.namespace,
            "--watch-namespace",
            &self.namespace,
            "--http-addr",
            &http_listen,
            // Port 0: three fixed ports per operator made collisions between parallel tests likely; the
            // bound address is read back from the log (see `admin_addr`).
            "--admin-addr",
            &admin_listen,
            "--webhook-listen",
            &webhook_listen,
            "--webhook-url",
            &format!("https://{}", self.webhook_addr),
            "--checkpoint-interval",
            "500ms",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if !supplied_issuer {
            args.extend(["--issuer-url".to_owned(), issuer]);
        }
        args.push("--audit-log".into());
        args.push(self.audit_log().display().to_string());
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Replaces the extra flags used by the next (re)start.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(ToString::to_string).collect();
    }

    /// Spawns and waits until the operator runs (and, for a pod, its Service reaches it).
    pub fn spawn_and_wait(&mut self) {
        self.spawn();
        let deadline = Instant::now() + WAIT;
        let mut polls = 0u32;
        loop {
            if self.stderr().contains("operator running") {
                if let Some(pod) = &self.pod {
                    pod.wait_routed();
                }
                self.trust_api_ca();
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("operator exited during startup with {status}:\n{}", self.stderr());
            }
            // A pod's state costs an API call: every second.
            polls += 1;
            if let Some(code) =
                self.pod.as_ref().filter(|_| polls.is_multiple_of(20)).and_then(PodOperator::exited)
            {
                panic!("the operator pod exited during startup with code {code}:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "operator did not start:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads the CA bundle the operator published for its HTTP server (managed TLS), writes it to
    /// [`Operator::ca_file`] and lets [`http_request`] trust it for this address.
    pub fn trust_api_ca(&self) {
        if !self.tls() || self.extra.iter().any(|a| a.starts_with("--http-tls-cert-file")) {
            return;
        }
        let out = self.env.kubectl(
            &[
                "get",
                "configmap",
                "agentiam-api-ca",
                "-n",
                &self.namespace,
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
            None,
        );
        let pem = String::from_utf8(out.stdout).expect("utf-8 CA bundle");
        assert!(
            pem.contains("BEGIN CERTIFICATE"),
            "no API CA bundle published: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(self.ca_file(), &pem).expect("write the CA file");
        trust(&self.http_addr, &pem);
    }

    /// Waits for the process to exit (for startup-failure tests) and returns its exit code and stderr.
    pub fn wait_exit(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return (status.code(), self.stderr());
            }
            if let Some(code) = self.pod.as_ref().and_then(PodOperator::exited) {
                // The kubelet writes the last lines of the log when the container ends.
                std::thread::sleep(Duration::from_millis(500));
                let stderr = self.stderr();
                if let Some(pod) = self.pod.as_mut() {
                    pod.end(Duration::ZERO);
                }
                return (Some(code), stderr);
            }
            assert!(Instant::now() < deadline, "operator did not exit:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// 127.0.0.1:<port> of the admin server (/metrics and the probes) of the current run, from its log line
    /// `admin server listening on <addr> (...)`.
    pub fn admin_addr(&self) -> String {
        if let Some(pod) = &self.pod {
            return format!("{}:{ADMIN_PORT}", pod.pod_ip());
        }
        let stderr = self.stderr();
        let line = stderr.lines().rev().find(|l| l.contains("admin server listening on "));
        line.and_then(|l| l.split("admin server listening on ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("the admin server has not logged its address yet:\n{stderr}"))
    }

    pub fn stderr(&self) -> String {
        if let Some(pod) = &self.pod {
            return pod.stream("stderr");
        }
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// SIGKILL: no cleanup, no final checkpoint, like a crash or OOM kill.
    pub fn kill(&mut self) {
        if let Some(pod) = self.pod.as_mut() {
            pod.end(Duration::ZERO);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the graceful path (final checkpoint).
    pub fn stop(&mut self) {
        if let Some(pod) = self.pod.as_mut() {
            // The chart's terminationGracePeriodSeconds; `crictl stop` sends SIGKILL after it, where the
            // process run panics: the stop below would not have waited either.
            pod.end(Duration::from_secs(30));
        }
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + WAIT;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("operator ignored SIGTERM:\n{}", self.stderr());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts again with the same audit log and namespace.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the agent's status.phase is `phase` and returns the agent.
pub async fn wait_phase(api: &Api<Agent>, name: &str, phase: &str) -> Agent {
    wait_for(&format!("agent {name} to be {phase}"), WAIT, || async {
        let a = api.get_opt(name).await.ok().flatten()?;
        let p = a.status.as_ref()?.phase?;
        (p.as_str() == phase).then_some(a)
    })
    .await
}

/// Deletes an agent and waits until it is gone (i.e. its finalizer ran).
pub async fn delete_and_wait(api: &Api<Agent>, name: &str) {
    api.delete(name, &DeleteParams::default()).await.expect("delete agent");
    wait_for(&format!("agent {name} to be gone"), WAIT, || async {
        api.get_opt(name).await.ok().map(|o| o.is_none()).filter(|gone| *gone)
    })
    .await;
}

/// The audit log's records as JSON values. A final line without its newline is a write that failed
/// midway (a full disk, a crash): never acknowledged, cut by the log when it next opens, and left out here.
pub fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(|l| serde_json::from_str(l).expect("audit line is JSON")).collect()
}

/// The seq of the published checkpoint, if any.
pub async fn published_checkpoint_seq(ns: &TestNs) -> Option<u64> {
    let cm = ns
        .api::<k8s_openapi::api::core::v1::ConfigMap>()
        .get_opt("agentiam-audit-checkpoint")
        .await
        .ok()??;
    let json = cm.data?.get("checkpoint.json")?.clone();
    serde_json::from_str::<Value>(&json).ok()?.get("seq")?.as_u64()
}

/// Waits until the published checkpoint covers every record in the log.
pub async fn wait_checkpoint_covers_log(ns: &TestNs, op: &Operator) -> u64 {
    wait_for("the checkpoint to cover the whole log", WAIT, || async {
        let last = records(&op.audit_log()).last()?.get("seq")?.as_u64()?;
        (published_checkpoint_seq(ns).await? == last).then_some(last)
    })
    .await
}

/// Waits until the audit log satisfies `pred`, and returns its records.
pub async fn wait_records(op: &Operator, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(what, WAIT, || async {
        let recs = records(&op.audit_log());
        pred(&recs).then_some(recs)
    })
    .await
}

/// The actions of the outcome records in the log, in order.
pub fn outcome_actions(recs: &[Value]) -> Vec<String> {
    recs.iter()
        .filter(|r| r["kind"] == "outcome")
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the agent's credentials are issued and summarised in its status (the last step of settling).
pub async fn wait_credentials(api: &Api<Agent>, name: &str) -> Agent {
    wait_for(&format!("credentials of {name} in its status"), WAIT, || async {
        let a = api.get_opt(name).await.ok().flatten()?;
        a.status.as_ref()?.credentials.as_ref()?;
        Some(a)
    })
    .await
}

/// A port that was free a moment ago, below the kernel's ephemeral range (32768 and up on Linux): a port
/// taken from that range and let go is the next one the kernel may hand to anything that binds port 0 (the
/// operators' admin servers do), which once gave a webhook's port to another operator's admin server.
/// Each call tries ports from its own pseudo-random start, skipping those in use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed =
        std::process::id().wrapping_mul(7919) ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729);
    for i in 0..SPAN {
        let port = (LOW + (seed.wrapping_add(i.wrapping_mul(613))) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal HTTP/1.1 GET against the operator on loopback: (status, headers lowercased, body).
pub async fn http_get(addr: &str, path: &str) -> HttpResponse {
    http_request(addr, "GET", path, &[], &[]).await
}

/// An HTTP response as the helpers below return it: (status, headers lowercased, body).
pub type HttpResponse = (u16, std::collections::BTreeMap<String, String>, String);

/// A minimal HTTP/1.1 POST against the operator on loopback, with extra headers (a `Host` among them
/// replaces the default).
pub async fn http_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http_request(addr, "POST", path, headers, body).await
}

/// Addresses served over TLS, with the client configuration that trusts their CA.
static TLS_TARGETS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, Arc<rustls::ClientConfig>>>,
> = std::sync::LazyLock::new(Default::default);

/// Lets [`http_request`] reach `addr` over TLS, trusting the CA certificates in `ca_pem` (and presenting
/// no client certificate).
pub fn trust(addr: &str, ca_pem: &str) {
    TLS_TARGETS.lock().unwrap().insert(addr.to_owned(), Arc::new(client_config(ca_pem, None)));
}

/// A TLS client configuration trusting `ca_pem`, presenting `identity` (chain PEM, key PEM) if given.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain: Vec<_> =
                CertificateDer::pem_slice_iter(chain.as_bytes()).map(|c| c.unwrap()).collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
                .unwrap()
        }
    }
}

/// A byte stream to the operator: TLS where [`trust`] registered the address.
pub async fn connect(addr: &str) -> Box<dyn Stream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the operator");
    let config = TLS_TARGETS.lock().unwrap().get(addr).cloned();
    match config {
        None => Box::new(tcp),
        Some(config) => connect_tls(tcp, config).await,
    }
}

/// A TLS connection over `tcp` with `config`, for the server name of the address it is connected to (the
/// operator's IP: 127.0.0.1, or its Service's ClusterIP in the in-cluster pass).
pub async fn connect_tls(tcp: tokio::net::TcpStream, config: Arc<rustls::ClientConfig>) -> Box<dyn Stream> {
    let name = server_name(&tcp.peer_addr().expect("peer address").to_string());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the operator");
    Box::new(tls)
}

/// The TLS server name of the operator at `addr` (ip:port): its IP, which its certificates name.
pub fn server_name(addr: &str) -> rustls::pki_types::ServerName<'static> {
    let ip = addr.parse::<std::net::SocketAddr>().expect("an ip:port address").ip();
    rustls::pki_types::ServerName::IpAddress(ip.into())
}

/// What [`connect`] returns.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A minimal HTTP/1.1 request with any method, extra headers and a body (sent with Content-Length), over
/// TLS where [`trust`] registered the address (every operator the harness starts, unless plain HTTP was
/// asked for). The server may answer before reading all of a large body and then reset the connection;
/// what it answered is still returned.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let s = connect(addr).await;
    http_exchange(s, addr, method, path, headers, body).await
}

/// One request and its answer over `s`.
pub async fn http_exchange(
    mut s: Box<dyn Stream>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    // A write cut short by an early answer is fine: the answer is what the test looks at.
    let _ = s.write_all(&req).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            // A TLS peer that closes without close_notify after answering: the answer is complete.
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading the response to {method} {path}: {e}"),
        }
    }
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The value of `key` in the Secret `name`, once it is there.
pub async fn secret_value(ns: &TestNs, name: &str, key: &str) -> Option<String> {
    let s = ns.api::<k8s_openapi::api::core::v1::Secret>().get_opt(name).await.ok()??;
    String::from_utf8(s.data?.get(key)?.0.clone()).ok()
}

/// `POST /v1/authorize`: the answer.
pub async fn decide(op: &Operator, token: &str, action: &str, resource: &str, extra: Value) -> Value {
    let mut body = json!({"token": token, "action": action, "resource": resource});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let headers = [("Content-Type", "application/json")];
    let (status, _, answer) =
        http_post(&op.http_addr, "/v1/authorize", &headers, body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap_or(Value::Null)
}
