//! The e2e suite's in-cluster pass: each test's operator runs as a Pod on the local node (tools/node.sh)
//! instead of as a child process, so the suite proves the things a process run cannot:
//! - the image tools/images.sh assembled (libc, CA bundle, user 65532, read-only root filesystem) runs it;
//! - it talks to the API server with its ServiceAccount token, under exactly the RBAC the chart grants (the
//!   chart's ServiceAccount, Roles and ClusterRole, rendered by `helm template` for the test's namespace);
//! - clients and the API server reach it through a Service (kube-proxy), the way they do in a cluster: the
//!   issuer URL and the webhook URL are the Service's ClusterIP, which stays the same across restarts like
//!   the fixed loopback ports of a process run.
//!
//! tools/e2e-in-cluster.sh turns it on (AGENTIAM_E2E_OPERATOR_IMAGE and the node's paths). The test's
//! working directory (audit log, files named by flags) is a hostPath volume mounted at the same path, so a
//! test reads the audit log the pod writes as it reads a process's. Kill is SIGKILL of the container through
//! the CRI (`crictl stop --timeout 0`), stop is SIGTERM with the pod's grace period, as for a process.
//! Tests that only make sense for a process on loopback say so with `process_only!` and are listed, with
//! why, in docs/local-control-plane.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Env, WAIT, text};

/// Container ports of the operator pod (the chart's defaults).
pub const HTTP_PORT: u16 = 8443;
pub const WEBHOOK_PORT: u16 = 9443;
pub const ADMIN_PORT: u16 = 9090;

/// What running the operator as a Pod needs, from the environment tools/e2e-in-cluster.sh sets.
#[derive(Clone, Debug)]
pub struct InCluster {
    image: String,
    pod_logs: PathBuf,
    crictl: PathBuf,
    cri_endpoint: String,
    helm: PathBuf,
    host_ip: String,
}

impl InCluster {
    /// None for the process pass; panics when the in-cluster pass is asked for but incompletely configured.
    pub fn from_env() -> Option<Self> {
        let image = std::env::var("AGENTIAM_E2E_OPERATOR_IMAGE").ok().filter(|s| !s.is_empty())?;
        let var = |name: &str| {
            std::env::var_os(name).filter(|v| !v.is_empty()).unwrap_or_else(|| {
                panic!("AGENTIAM_E2E_OPERATOR_IMAGE is set but {name} is not: run tools/e2e-in-cluster.sh")
            })
        };
        Some(Self {
            image,
            pod_logs: PathBuf::from(var("AGENTIAM_E2E_POD_LOGS")),
            crictl: PathBuf::from(var("AGENTIAM_E2E_CRICTL")),
            cri_endpoint: var("AGENTIAM_E2E_CRI_ENDPOINT").to_string_lossy().into_owned(),
            helm: PathBuf::from(var("HELM")),
            host_ip: var("AGENTIAM_E2E_HOST_IP").to_string_lossy().into_owned(),
        })
    }

    /// The node's address on the pods' bridge: where a pod reaches a server on the host.
    pub fn host_ip(&self) -> &str {
        &self.host_ip
    }
}

/// The user the chart runs the operator as (values.yaml podSecurityContext).
pub const POD_USER: u32 = 65532;

/// One operator as Pods (one per run) behind one Service.
#[derive(Debug)]
pub struct PodOperator {
    cfg: InCluster,
    env: Env,
    ns: String,
    /// Names the Service and, with the run number, each pod.
    id: String,
    pub service_ip: String,
    run: Option<Run>,
}

/// The pod of one run, and its log once the pod is gone (the kubelet deletes a deleted pod's log files).
#[derive(Debug)]
struct Run {
    pod: String,
    uid: String,
    log: Option<String>,
    ended: bool,
}

impl PodOperator {
    /// Applies the chart's ServiceAccount and RBAC for `ns` and creates the Service; no pod yet.
    pub fn new(cfg: &InCluster, env: &Env, ns: &str) -> Self {
        apply_chart_rbac(cfg, env, ns);
        let id = format!("op-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": id, "namespace": ns},
            "spec": {
                "selector": {"agentiam.dev/e2e-operator": id},
                "ports": [
                    {"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT},
                    {"name": "webhook", "port": WEBHOOK_PORT, "targetPort": WEBHOOK_PORT},
                ],
            },
        });
        let out = env
            .kubectl(&["create", "-f", "-", "-o", "jsonpath={.spec.clusterIP}"], Some(&service.to_string()));
        let service_ip = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !service_ip.is_empty(),
            "create the operator's Service: {}",
            text(&out)
        );
        Self { cfg: cfg.clone(), env: env.clone(), ns: ns.to_owned(), id, service_ip, run: None }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Creates the pod of run `n` with the operator's arguments, the test's directory mounted at its own path.
    pub fn spawn(&mut self, n: u32, args: &[String], dir: &Path) {
        // The chart's user (65532) writes the audit log into the test's directory.
        make_world_writable(dir);
        let name = format!("{}-{n}", self.id);
        let dir = dir.display().to_string();
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": self.ns,
                "labels": {"app.kubernetes.io/name": "agentiam", "agentiam.dev/e2e-operator": self.id},
            },
            "spec": {
                "serviceAccountName": "agentiam",
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 30,
                "enableServiceLinks": false,
                // The chart's pod and container security contexts (values.yaml).
                "securityContext": {
                    "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [{
                    "name": "operator",
                    "image": self.cfg.image,
                    "imagePullPolicy": "Never",
                    "args": args,
                    "env": [{"name": "RUST_LOG", "value": "info,agentiam=debug"}, {"name": "NO_COLOR", "value": "1"}],
                    "securityContext": {
                        "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "privileged": false,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "work", "mountPath": dir}],
                }],
                "volumes": [{"name": "work", "hostPath": {"path": dir, "type": "Directory"}}],
            },
        });
        let out = self
            .env
            .kubectl(&["create", "-f", "-", "-o", "jsonpath={.metadata.uid}"], Some(&pod.to_string()));
        let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(out.status.success() && !uid.is_empty(), "create the operator pod: {}", text(&out));
        self.run = Some(Run { pod: name, uid, log: None, ended: false });
    }

    /// The container's stream `stream` (stdout or stderr) of the current run, as written so far.
    pub fn stream(&self, stream: &str) -> String {
        let Some(run) = &self.run else { return String::new() };
        let raw = match &run.log {
            Some(log) => log.clone(),
            None => self.read_log_files(run),
        };
        cri_stream(&raw, stream)
    }

    /// The kubelet's log files of the run's container (CRI format), oldest first, concatenated.
    fn read_log_files(&self, run: &Run) -> String {
        let dir = self.cfg.pod_logs.join(format!("{}_{}_{}", self.ns, run.pod, run.uid)).join("operator");
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        // Rotated files (0.log.<time>, compressed ones unread) before the live 0.log.
        files.sort_by_key(|f| (f.extension().is_some_and(|e| e == "log"), f.clone()));
        files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect()
    }

    /// The pod's phase and its container's exit code, if it ended.
    fn state(&self) -> (String, Option<i32>) {
        let Some(run) = &self.run else { return (String::new(), None) };
        let (phase, code, _) =
            self.phase_and(&run.pod, "{.status.containerStatuses[0].state.terminated.exitCode}");
        (phase, code.and_then(|c| c.parse().ok()))
    }

    /// The pod's phase and one more field (a jsonpath), and whether kubectl could read the pod.
    fn phase_and(&self, pod: &str, field: &str) -> (String, Option<String>, bool) {
        let path = format!("jsonpath={{.status.phase}} {field}");
        let out = self.env.kubectl(&["get", "pod", pod, "-n", &self.ns, "-o", &path], None);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = s.split_whitespace();
        let phase = words.next().unwrap_or_default().to_owned();
        (phase, words.next().map(str::to_owned), out.status.success())
    }

    /// The exit code once the container ended during startup (Some), or None while it runs.
    pub fn exited(&self) -> Option<i32> {
        match self.state() {
            (phase, code) if phase == "Failed" || phase == "Succeeded" => Some(code.unwrap_or(-1)),
            (_, code) => code,
        }
    }

    /// The pod's IP (the admin server is reached there: the Service has no admin port, as in the chart).
    pub fn pod_ip(&self) -> String {
        let run = self.run.as_ref().expect("an operator pod");
        let out = self
            .env
            .kubectl(&["get", "pod", &run.pod, "-n", &self.ns, "-o", "jsonpath={.status.podIP}"], None);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until the Service forwards to this run's pod (kube-proxy has its endpoint), so that the first
    /// request of a test, or the API server's first webhook call, does not race the iptables update.
    pub fn wait_routed(&self) {
        let deadline = Instant::now() + WAIT;
        for port in [HTTP_PORT, WEBHOOK_PORT] {
            let addr: std::net::SocketAddr =
                format!("{}:{port}", self.service_ip).parse().expect("service address");
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the Service {} does not reach its pod on port {port}",
                    self.id
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Ends the current run: SIGKILL (`grace` zero) or SIGTERM with up to `grace` before SIGKILL, through the
    /// CRI as the kubelet does; keeps the log; deletes the pod.
    pub fn end(&mut self, grace: Duration) {
        let Some(run) = self.run.as_ref().filter(|r| !r.ended) else { return };
        let pod = run.pod.clone();
        let container = self.container_id(&pod);
        if let Some(id) = &container {
            let out = Command::new(&self.cfg.crictl)
                .args(["--runtime-endpoint", &self.cfg.cri_endpoint, "--timeout", "90s", "stop", "--timeout"])
                .arg(grace.as_secs().to_string())
                .arg(id)
                .output()
                .expect("run crictl");
            assert!(out.status.success(), "crictl stop {id}: {}", text(&out));
        }
        let log = self.run.as_ref().filter(|r| r.log.is_none()).map(|r| self.read_log_files(r));
        if let Some(run) = self.run.as_mut() {
            run.ended = true;
            if let Some(log) = log {
                run.log = Some(log);
            }
        }
        let _ = self.env.kubectl(
            &[
                "delete",
                "pod",
                &pod,
                "-n",
                &self.ns,
                "--grace-period=0",
                "--force",
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
    }

    /// The running container's ID, waiting briefly for a pod that is still starting; None for a pod that
    /// never started a container.
    fn container_id(&self, pod: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (phase, id, ok) = self.phase_and(pod, "{.status.containerStatuses[0].containerID}");
            if let Some(id) = id.as_deref().and_then(|id| id.strip_prefix("containerd://")) {
                return Some(id.to_owned());
            }
            if !ok || phase == "Failed" || phase == "Succeeded" || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PodOperator {
    fn drop(&mut self) {
        self.end(Duration::ZERO);
    }
}

/// The chart's ServiceAccount, ClusterRole, Roles and bindings for an operator whose release namespace and
/// watched namespace are both `ns`: what `helm install --namespace ns --set watchNamespace=ns` grants.
fn apply_chart_rbac(cfg: &InCluster, env: &Env, ns: &str) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/agentiam");
    let mut cmd = Command::new(&cfg.helm);
    cmd.args(["template", "agentiam"]).arg(&chart).args(["--namespace", ns, "--set"]);
    cmd.arg(format!("watchNamespace={ns}"));
    for t in ["serviceaccount", "rbac-cluster", "rbac-operator-namespace", "rbac-watch-namespace"] {
        cmd.args(["--show-only", &format!("templates/{t}.yaml")]);
    }
    let rendered = cmd.output().expect("run helm");
    assert!(rendered.status.success(), "helm template: {}", text(&rendered));
    let out = env.kubectl(
        &["apply", "--server-side", "--field-manager=agentiam-e2e", "-f", "-"],
        Some(&String::from_utf8_lossy(&rendered.stdout)),
    );
    assert!(out.status.success(), "apply the chart's RBAC: {}", text(&out));
}

/// The cluster-scoped objects [`apply_chart_rbac`] created for `ns`, for the namespace's cleanup.
pub fn cluster_rbac_name(ns: &str) -> String {
    format!("agentiam-{ns}")
}

fn make_world_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod the test directory");
}

/// The lines of one stream from a CRI log (`<time> <stream> <P|F> <text>`; P marks a line split by the
/// runtime, continued by the next entry of the same stream).
fn cri_stream(raw: &str, stream: &str) -> String {
    let mut out = String::new();
    for entry in raw.lines() {
        let mut parts = entry.splitn(4, ' ');
        let (_, s, tag, line) = (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
        if s != Some(stream) {
            continue;
        }
        out.push_str(line);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}
