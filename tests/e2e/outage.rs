//! Recovery after an API server restart. The real kube-apiserver of the local control plane is killed, kept
//! down, and started again (etcd and the controller manager keep running): decisions for an Active agent are
//! answered all along from the operator's snapshot, and once the API server answers again the operator is
//! back to normal within seconds: a new Agent becomes Active and gets decisions within [`RECOVERY_TARGET`].
//!
//! This stops the API server every other test uses, so it is `#[ignore]`d: tools/e2e.sh runs the ignored
//! tests alone, after the parallel ones (and `make test` runs tools/e2e.sh).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agentiam::api::{Agent, AgentPolicy};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

use crate::harness::{Env, Operator, TestNs, http_get, http_post, text, wait_for, wait_phase};
use crate::require_cluster;

/// The functional target: a new Agent is Active this soon after the API server answers again.
const RECOVERY_TARGET: Duration = Duration::from_secs(10);
/// How long the API server stays stopped (its own start adds about 5 s of outage). Long enough for an
/// exponential backoff to grow well past the target: kube-runtime's default waited 7-18 s per watch by then.
const OUTAGE: Duration = Duration::from_secs(15);
/// How long the test waits for recovery before it gives up, well past the target, so that a slow recovery
/// is measured and reported rather than only failed.
const RECOVERY_GIVE_UP: Duration = Duration::from_secs(180);
/// The audience of the agents' tokens.
const AUD: &str = "crm";

/// The local control plane's kube-apiserver, stopped and started by tools/cluster.sh (by PID, in the state
/// dir tools/e2e.sh names). Dropped while stopped, it starts it again, so a failing test never leaves the
/// API server down for the tests and chart check that follow.
struct Apiserver {
    cluster_sh: PathBuf,
    state_dir: String,
    stopped: bool,
}

impl Apiserver {
    /// The local control plane's API server, or None when the tests run against another cluster (which this
    /// test must not restart).
    fn local() -> Option<Self> {
        let state_dir = std::env::var("AGENTIAM_E2E_CLUSTER_DIR").ok().filter(|d| !d.is_empty())?;
        let cluster_sh = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/cluster.sh");
        Some(Self { cluster_sh, state_dir, stopped: false })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cluster_sh);
        cmd.args(args).env("AGENTIAM_CLUSTER_DIR", &self.state_dir);
        cmd
    }

    /// SIGKILL, like a crash: no watch is closed gracefully.
    fn kill(&mut self) {
        let out =
            self.command(&["stop-apiserver", "--kill"]).output().expect("run cluster.sh stop-apiserver");
        assert!(out.status.success(), "stop-apiserver failed:\n{}", text(&out));
        self.stopped = true;
    }

    /// Starts it in the background; the caller watches for the moment it answers.
    fn start(&mut self) -> Child {
        self.stopped = false;
        self.command(&["start-apiserver"]).spawn().expect("run cluster.sh start-apiserver")
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        if self.stopped {
            let _ = self.command(&["start-apiserver"]).status();
        }
    }
}

/// An admin client for probing the API server. Without the client's own retries: a starting API server
/// answers some requests 503 with `Retry-After: 5`, and a probe that slept through that would see the API
/// server back late, and the recovery after it as shorter than it was.
async fn probe_client(env: &Env) -> Client {
    let kc = Kubeconfig::read_from(&env.kubeconfig).expect("read kubeconfig");
    let mut config =
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    config.default_retry = false;
    Client::try_from(config).expect("client")
}

/// Whether the API server answers `/readyz` with `ok` within a second.
async fn apiserver_ready(probe: &Client) -> bool {
    let req = http::Request::get("/readyz").body(Vec::new()).expect("request");
    let answer = tokio::time::timeout(Duration::from_secs(1), probe.request_text(req)).await;
    answer.is_ok_and(|r| r.is_ok_and(|body| body.trim() == "ok"))
}

/// The agent's current token for [`AUD`], once its credentials Secret holds one.
async fn token(ns: &TestNs, agent: &str) -> Option<String> {
    let s = ns.api::<Secret>().get_opt(&format!("{agent}-credentials")).await.ok()??;
    let raw = s.data?.get(&format!("token-{AUD}"))?.0.clone();
    String::from_utf8(raw).ok()
}

/// `POST /v1/authorize` for reading a contact: (HTTP status, answer).
async fn decide(op: &Operator, token: &str) -> (u16, Value) {
    let body = json!({"token": token, "action": "read", "resource": "crm:contacts/1"}).to_string();
    let headers = [("Content-Type", "application/json")];
    let (status, _, text) = http_post(&op.http_addr, "/v1/authorize", &headers, body.as_bytes()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn allowed(answer: &(u16, Value)) -> bool {
    answer.0 == 200 && answer.1["decision"] == "Allow"
}

/// The operator's log lines about watches, for failure messages and for reading how recovery went.
fn watch_lines(op: &Operator) -> String {
    let log = op.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("watch")).collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[tokio::test]
#[ignore = "restarts the shared kube-apiserver; tools/e2e.sh runs it alone, after the parallel tests"]
async fn after_an_apiserver_restart_a_new_agent_is_active_within_seconds_and_decisions_never_stop() {
    let env = require_cluster!();
    let Some(mut apiserver) = Apiserver::local() else {
        eprintln!(
            "SKIPPED: not the local control plane (AGENTIAM_E2E_CLUSTER_DIR unset); it is not ours to restart"
        );
        return;
    };
    let ns = TestNs::new(&env, "outage").await;
    let probe = probe_client(&env).await;
    let op = Operator::start(&env, &ns.name, &[]);
    let read =
        json!({"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]});
    let policy = json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "crm-read"},
        "spec": {"agents": {"names": ["before", "after"]}, "rules": [read]},
    });
    ns.api::<AgentPolicy>()
        .patch("crm-read", &PatchParams::apply("agentiam-e2e").force(), &Patch::Apply(&policy))
        .await
        .expect("apply AgentPolicy");
    let spec = json!({
        "owner": {"kind": "Team", "name": "e2e"},
        "purpose": "exercises recovery after an API server restart",
        "credentials": {"audiences": [AUD]},
    });
    ns.create_agent("before", spec.clone()).await;
    let before = wait_for("a token of agent before", RECOVERY_GIVE_UP, || token(&ns, "before")).await;
    wait_for("decisions to allow agent before", RECOVERY_GIVE_UP, || async {
        allowed(&decide(&op, &before).await).then_some(())
    })
    .await;

    // The outage. Decisions keep coming from the snapshot, and the operator stays ready (restarting it
    // would help nothing: it could not even start without the API server).
    apiserver.kill();
    assert!(!apiserver_ready(&probe).await, "the API server still answers after it was killed");
    let outage_started = Instant::now();
    let mut answered = 0;
    while outage_started.elapsed() < OUTAGE {
        let answer = decide(&op, &before).await;
        assert!(allowed(&answer), "during the outage agent before got {answer:?}");
        let (status, _, body) = http_get(&op.http_addr, "/readyz").await;
        assert_eq!(status, 200, "the operator went unready during the outage: {body}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The API server comes back: from the moment it answers, a new Agent is Active within the target.
    let mut starting = apiserver.start();
    let back = wait_for("the API server to answer again", Duration::from_secs(120), || async {
        apiserver_ready(&probe).await.then(Instant::now)
    })
    .await;
    eprintln!(
        "outage: the API server was back {} ms after it was killed; {answered} decisions answered meanwhile",
        outage_started.elapsed().saturating_sub(back.elapsed()).as_millis()
    );
    ns.create_agent("after", spec).await;
    let agents = ns.api::<Agent>();
    wait_for("agent after to be Active", RECOVERY_GIVE_UP, || async {
        let a = agents.get_opt("after").await.ok().flatten()?;
        (a.status?.phase?.as_str() == "Active").then_some(())
    })
    .await;
    let active = back.elapsed();
    let after = wait_for("a token of agent after", RECOVERY_GIVE_UP, || token(&ns, "after")).await;
    wait_for("decisions to allow agent after", RECOVERY_GIVE_UP, || async {
        allowed(&decide(&op, &after).await).then_some(())
    })
    .await;
    let decided = back.elapsed();
    eprintln!(
        "recovery after an API server restart: new agent Active {} ms, allowed by the decision API {} ms \
         after the API server answered again",
        active.as_millis(),
        decided.as_millis()
    );
    // E2E_OUTAGE_LOG=<file> keeps the operator's whole log, to read how each watch recovered.
    if let Some(path) = std::env::var_os("E2E_OUTAGE_LOG") {
        std::fs::write(path, op.stderr()).expect("write E2E_OUTAGE_LOG");
    }
    let status = starting.wait().expect("wait for cluster.sh start-apiserver");
    assert!(status.success(), "cluster.sh start-apiserver failed: {status}");
    assert!(
        active < RECOVERY_TARGET && decided < RECOVERY_TARGET,
        "recovery took {active:?} (Active) and {decided:?} (decision), over the {RECOVERY_TARGET:?} target; \
         the operator's watch log:\n{}",
        watch_lines(&op)
    );
    let answer = decide(&op, &before).await;
    assert!(allowed(&answer), "after the outage agent before got {answer:?}");
    wait_phase(&agents, "before", "Active").await;
}

#[tokio::test]
#[ignore = "restarts the shared kube-apiserver; tools/e2e.sh runs it alone, after the parallel tests"]
async fn decisions_fail_closed_once_the_view_of_revocations_is_older_than_its_bound() {
    let env = require_cluster!();
    let Some(mut apiserver) = Apiserver::local() else {
        eprintln!("SKIPPED: not the local control plane (AGENTIAM_E2E_CLUSTER_DIR unset)");
        return;
    };
    let ns = TestNs::new(&env, "stale").await;
    let probe = probe_client(&env).await;
    let op = Operator::start(&env, &ns.name, &["--max-revocation-staleness", "3s"]);
    let read =
        json!({"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]});
    let policy = json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "crm-read"},
        "spec": {"agents": {"names": ["bot"]}, "rules": [read]},
    });
    ns.api::<AgentPolicy>()
        .patch("crm-read", &PatchParams::apply("agentiam-e2e").force(), &Patch::Apply(&policy))
        .await
        .expect("apply AgentPolicy");
    let spec = json!({"owner": {"kind": "Team", "name": "e2e"}, "purpose": "staleness bound",
        "credentials": {"audiences": [AUD]}});
    ns.create_agent("bot", spec).await;
    let bot = wait_for("a token of bot", RECOVERY_GIVE_UP, || token(&ns, "bot")).await;
    wait_for("decisions to allow bot", RECOVERY_GIVE_UP, || async {
        allowed(&decide(&op, &bot).await).then_some(())
    })
    .await;

    // Killed: allowed from the snapshot while the view is younger than the bound, then refused.
    // Timed from before the call: `cluster.sh stop-apiserver --kill` takes a while to start and returns only
    // once the process is gone, and the watch fails as soon as the API server does (once measured: refused
    // 2,847 ms after the call returned, more than 3 s after the watch failed).
    let killed = Instant::now();
    apiserver.kill();
    let denied = wait_for("decisions to fail closed", Duration::from_secs(30), || async {
        let answer = decide(&op, &bot).await;
        (answer.0 == 200 && answer.1["decision"] == "Deny").then_some((killed.elapsed(), answer.1))
    })
    .await;
    eprintln!(
        "staleness bound 3s: decisions refused {} ms after the API server was killed",
        denied.0.as_millis()
    );
    assert!(denied.0 >= Duration::from_secs(3), "refused before the bound: {denied:?}");
    assert!(
        denied.1["reason"].as_str().is_some_and(|r| r.contains("not been able to watch Revocations")),
        "{}",
        denied.1
    );

    // Back: allowed again as soon as the watch of Revocations answers.
    let mut starting = apiserver.start();
    wait_for("the API server to answer again", Duration::from_secs(120), || async {
        apiserver_ready(&probe).await.then_some(())
    })
    .await;
    wait_for("decisions to allow bot again", RECOVERY_GIVE_UP, || async {
        allowed(&decide(&op, &bot).await).then_some(())
    })
    .await;
    let status = starting.wait().expect("wait for cluster.sh start-apiserver");
    assert!(status.success(), "cluster.sh start-apiserver failed: {status}");
}
