//! Credential issuance for 1,000 Agents on the local control plane, side by side with the raw rate at which the
//! same API server accepts Secret creates, and with TokenRequest (`kubectl create token` and the API directly).
//!
//! `cargo bench --bench issuance` with KUBECONFIG set (bench/run.sh brings the cluster up and sets it).
//! Order: raw Secret creates (a concurrency sweep), TokenRequest, the floor (the three writes per agent that no
//! implementation of issues 2 and 3 can avoid, made by a bare client: the bound on what any operator can reach
//! here), ours (Agents created while the operator is
//! stopped, then the release operator started and timed until every `<agent>-credentials` Secret exists), raw
//! Secret creates again at the best concurrency, so drift of a shared machine shows. Writes
//! `$BENCH_RESULTS_DIR/issuance.json`. Knobs: BENCH_AGENTS (1000), BENCH_CONCURRENCY (8,32,64),
//! BENCH_FLOOR_CONCURRENCY (4,8,16,32,64),
//! BENCH_KUBECTL_TOKENS (100), BENCH_KUBECTL_CONCURRENCY (8,32), BENCH_API_TOKENS (1000), BENCH_TIMEOUT_SECS
//! (900), AGENTIAM_BIN (target/release/agentiam), KUBECTL (kubectl), AGENTIAM_CLUSTER_DIR (for CPU times).

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

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentiam::api::{Agent, CredentialStatus};
use agentiam::identity::jwt::{AgentClaims, DEFAULT_TTL, Minter, SvidClaims};
use agentiam::identity::keys::SigningKey;
use agentiam::identity::x509::CertificateAuthority;
use agentiam::identity::{SpiffeId, TrustDomain};
use agentiam::registry::credentials as plan;
use agentiam::registry::status::{Subject, decide};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};

use cluster::{Burst, CpuMeter, Settings, burst, create_namespace, metrics_diff, scrape};

const TICKETS: &str = "https://tickets.example.com";
const CRM: &str = "https://crm.example.com";
const AGENT_LABEL: &str = "agentiam.dev/agent";

#[tokio::main]
async fn main() {
    let s = Settings::from_env();
    let client = Client::try_default().await.expect("a kubeconfig (run via `make bench`)");
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let ns_secrets = format!("bench-secrets-{suffix}");
    let ns_tokens = format!("bench-tokens-{suffix}");
    let ns_agents = format!("bench-agents-{suffix}");
    let ns_floor = format!("bench-floor-{suffix}");
    let ns_delegations = format!("bench-delegations-{suffix}");
    let mut guard = cluster::Cleanup::new(
        vec![
            ns_secrets.clone(),
            ns_tokens.clone(),
            ns_floor.clone(),
            ns_agents.clone(),
            ns_delegations.clone(),
        ],
        ns_agents.clone(),
    );
    for ns in [&ns_secrets, &ns_tokens, &ns_floor, &ns_agents, &ns_delegations] {
        create_namespace(&client, ns).await;
    }
    let cpu = CpuMeter::new(s.cluster_dir.as_deref());
    println!("issuance bench: {} agents, peer concurrency sweep {:?}", s.agents, s.concurrency);

    // Peer 1: raw Secret creates of the same shape and size as a credentials Secret.
    let template = secret_template(&ns_agents);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_secrets);
    let mut secret_runs = Vec::new();
    for &c in &s.concurrency {
        let cpu0 = cpu.sample();
        let run = burst(s.agents, c, |i| {
            let (api, mut obj) = (secrets.clone(), template.clone());
            obj.metadata.name = Some(format!("c{c}-agent-{i:04}-credentials"));
            async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
        })
        .await;
        let run = run.with_cpu(cpu.since(&cpu0));
        println!(
            "   raw Secret create   C={c:<3} {:>8.1}/s  p50 {:.1} ms  p99 {:.1} ms",
            run.rate, run.p50_ms, run.p99_ms
        );
        secret_runs.push(run);
    }
    let best_c = secret_runs.iter().max_by(|a, b| a.rate.total_cmp(&b.rate)).unwrap().concurrency;

    // Peer 2: TokenRequest, through kubectl (process spawn dominates) and through the API at the same concurrency.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns_tokens);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.expect("create ServiceAccount");
    let mut kubectl_runs = Vec::new();
    for &c in &s.kubectl_concurrency {
        let (kubectl, kubeconfig, ns) = (s.kubectl.clone(), s.kubeconfig.clone(), ns_tokens.clone());
        let run = burst(s.kubectl_tokens, c, move |_| {
            let mut cmd = tokio::process::Command::new(&kubectl);
            cmd.args(["create", "token", "bench", "-n", &ns, "--duration", "10m"])
                .env("KUBECONFIG", &kubeconfig);
            async move {
                let out = cmd.stderr(Stdio::piped()).output().await.expect("spawn kubectl");
                assert!(
                    out.status.success() && out.stdout.len() > 100,
                    "kubectl create token failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok::<(), kube::Error>(())
            }
        })
        .await;
        println!("   kubectl create token C={c:<3} {:>8.1}/s  p50 {:.1} ms", run.rate, run.p50_ms);
        kubectl_runs.push(run);
    }
    let mut token_runs = Vec::new();
    for &c in &s.concurrency {
        let cpu0 = cpu.sample();
        let run = burst(s.api_tokens, c, |_| {
            let api = sas.clone();
            let req = TokenRequest {
                spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..TokenRequestSpec::default() }),
                ..TokenRequest::default()
            };
            async move { api.create_token_request("bench", &PostParams::default(), &req).await.map(|_| ()) }
        })
        .await;
        let run = run.with_cpu(cpu.since(&cpu0));
        println!(
            "   TokenRequest (API)  C={c:<3} {:>8.1}/s  p50 {:.1} ms  p99 {:.1} ms",
            run.rate, run.p50_ms, run.p99_ms
        );
        token_runs.push(run);
    }

    // Peer 3, the floor: the fewest API writes an operator that does what issues 2 and 3 ask can make for a new
    // agent, by a bare client with no logic and the cheapest verbs: create the credentials Secret (owned by the
    // Agent), one JSON merge patch of the status (phase Active and the credentials summary together), one Event.
    // No finalizer, no reads, no audit log. Its rate over the raw Secret create rate bounds what ANY
    // implementation of those issues can reach on this API server.
    let floor_agents: Api<Agent> = Api::namespaced(client.clone(), &ns_floor);
    burst(s.agents, best_c, |i| {
        let (api, agent) = (floor_agents.clone(), agent_object(i));
        async move { api.create(&PostParams::default(), &agent).await.map(|_| ()) }
    })
    .await;
    let floor_targets: Vec<Agent> =
        floor_agents.list(&ListParams::default()).await.expect("list floor agents").items;
    assert_eq!(floor_targets.len(), s.agents, "floor agents");
    let floor_writer = Arc::new(FloorWriter::new(&client, &ns_floor, &template));
    let mut floor_runs = Vec::new();
    // A wider sweep than the raw creates': its best run is a bound, so it must not be missed by a coarse grid.
    for &c in &s.floor_concurrency {
        let cpu0 = cpu.sample();
        let run = burst(s.agents, c, |i| {
            let (writer, agent) = (Arc::clone(&floor_writer), floor_targets[i].clone());
            async move { writer.issue(&agent, &format!("c{c}")).await }
        })
        .await
        .with_cpu(cpu.since(&cpu0));
        println!(
            "   floor (3 writes)    C={c:<3} {:>8.1}/s  p50 {:.1} ms  p99 {:.1} ms",
            run.rate, run.p50_ms, run.p99_ms
        );
        floor_runs.push(run);
    }
    // Each of the floor's writes alone, at the floor's best concurrency: where its cost goes.
    let floor_c = floor_runs.iter().max_by(|a, b| a.rate.total_cmp(&b.rate)).unwrap().concurrency;
    let mut floor_parts = Vec::new();
    for part in [FloorPart::Secret, FloorPart::Status, FloorPart::Event] {
        let cpu0 = cpu.sample();
        let run = burst(s.agents, floor_c, |i| {
            let (writer, agent) = (Arc::clone(&floor_writer), floor_targets[i].clone());
            async move { writer.one(part, &agent).await }
        })
        .await
        .with_cpu(cpu.since(&cpu0))
        .labelled(part.label());
        println!("   floor part: {:<36} C={floor_c:<3} {:>8.1}/s", part.label(), run.rate);
        floor_parts.push(run);
    }

    // Ours: the Agents exist before the operator starts, so the whole backlog is issued in one go.
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns_agents);
    let cpu0 = cpu.sample();
    let agent_create = burst(s.agents, best_c, |i| {
        let (api, agent) = (agents.clone(), agent_object(i));
        async move { api.create(&PostParams::default(), &agent).await.map(|_| ()) }
    })
    .await
    .with_cpu(cpu.since(&cpu0));
    println!("   Agent create (no operator) C={best_c:<3} {:>5.1}/s", agent_create.rate);

    let metrics_before = scrape(&client).await;
    let cpu0 = cpu.sample();
    let mut op = cluster::Operator::start(&s, &ns_agents);
    let started = Instant::now();
    let secrets_ours: Api<Secret> = Api::namespaced(client.clone(), &ns_agents);
    let lp = ListParams::default().labels(AGENT_LABEL);
    let mut progress: Vec<(f64, usize)> = Vec::new();
    let deadline = started + s.timeout;
    loop {
        let list = secrets_ours.list_metadata(&lp).await.expect("list credentials Secrets");
        let n = list
            .items
            .iter()
            .filter(|m| m.metadata.name.as_deref().is_some_and(|n| n.ends_with("-credentials")))
            .count();
        let t = started.elapsed().as_secs_f64();
        if progress.last().is_none_or(|(_, last)| *last != n) {
            progress.push((t, n));
        }
        if n >= s.agents {
            break;
        }
        op.check_alive();
        assert!(
            Instant::now() < deadline,
            "only {n} of {} credentials Secrets after {:?}\n{}",
            s.agents,
            s.timeout,
            op.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let issue_secs = started.elapsed().as_secs_f64();
    let rate = s.agents as f64 / issue_secs;
    println!("   ours: {} credentials Secrets in {issue_secs:.2}s = {rate:.1} agents/s", s.agents);
    // The status (credentials summary) is written after the Secret; wait for it so the request count is complete.
    loop {
        let list = agents.list(&ListParams::default()).await.expect("list agents");
        let done = list
            .items
            .iter()
            .filter(|a| a.status.as_ref().and_then(|st| st.credentials.as_ref()).is_some())
            .count();
        if done >= s.agents {
            break;
        }
        op.check_alive();
        assert!(
            Instant::now() < deadline,
            "only {done} agents report credentials in status\n{}",
            op.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status_secs = started.elapsed().as_secs_f64();
    let metrics_after = scrape(&client).await;
    let cpu_ours = cpu.since(&cpu0);
    let rss = op.memory();
    let operator_cpu = op.cpu_seconds();
    op.stop();
    let audit = op.audit_summary();
    println!(
        "   ours: status complete at {status_secs:.2}s, peak RSS {} kB, {} audit records",
        rss.0, audit["records"]
    );

    // Peer 1 again at its best concurrency, after ours: shows how much the machine drifted.
    let cpu1 = cpu.sample();
    let after = burst(s.agents, best_c, |i| {
        let (api, mut obj) = (secrets.clone(), template.clone());
        obj.metadata.name = Some(format!("after-agent-{i:04}-credentials"));
        async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
    })
    .await
    .with_cpu(cpu.since(&cpu1));
    println!("   raw Secret create after ours C={best_c:<3} {:>5.1}/s", after.rate);
    secret_runs.push(after.labelled("after ours"));

    let (through, without) = delegation_admission(&client, &s, &ns_delegations).await;

    let peer_secrets = secret_runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    let peer_tokens = token_runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    let peer_kubectl = kubectl_runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    let floor = floor_runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    let requests = metrics_diff(&metrics_before, &metrics_after);
    let per_agent = |r: &Value| r.as_f64().unwrap_or(0.0) / s.agents as f64;
    let writes: f64 = requests.iter().filter(|r| r["write"] == true).map(|r| per_agent(&r["count"])).sum();
    let steady = steady_rate(&progress, s.agents);
    let figure = |bench: &str, ours: f64, peer: f64, unit: &str, target: Option<f64>| {
        let ratio = ours / peer;
        json!({"benchmark": bench, "ours": round1(ours), "peer": round1(peer), "unit": unit,
            "ratio": (ratio * 1000.0).round() / 1000.0, "target": target, "met": target.map(|t| ratio >= t)})
    };
    let n = s.agents;
    let fragment = json!({
        "bench": "issuance",
        "config": {"agents": n, "concurrency": s.concurrency, "floor_concurrency": s.floor_concurrency, "kubectl_tokens": s.kubectl_tokens,
            "kubectl_concurrency": s.kubectl_concurrency, "api_tokens": s.api_tokens, "poll_ms": 200},
        "raw_secret_creates": secret_runs.iter().map(Burst::to_json).collect::<Vec<_>>(),
        "secret_bytes": template_bytes(&template),
        "token_requests_api": token_runs.iter().map(Burst::to_json).collect::<Vec<_>>(),
        "token_requests_kubectl": kubectl_runs.iter().map(Burst::to_json).collect::<Vec<_>>(),
        "agent_creates": agent_create.to_json(),
        "floor": floor_runs.iter().map(Burst::to_json).collect::<Vec<_>>(),
        "floor_parts": floor_parts.iter().map(Burst::to_json).collect::<Vec<_>>(),
        "ours": {
            "agents": n, "seconds_to_all_secrets": issue_secs, "agents_per_s": rate,
            "seconds_to_all_status": status_secs, "startup_seconds": op.startup_seconds,
            "first_secret_seconds": progress.iter().find(|(_, c)| *c > 0).map(|(t, _)| *t),
            "steady_10_90_agents_per_s": steady,
            "peak_rss_kb": rss.0, "rss_kb_at_end": rss.1, "operator_cpu_seconds": operator_cpu,
            "cluster_cpu_seconds": cpu_ours, "audit": audit,
            "api_writes_per_agent": (writes * 100.0).round() / 100.0,
            "progress": progress.iter().map(|(t, c)| json!([(t * 100.0).round() / 100.0, c])).collect::<Vec<_>>(),
        },
        "api_requests_during_ours": requests,
        "delegation_admission": {"through_webhook": through.to_json(), "without_webhook": without.to_json()},
        "figures": [
            figure(&format!("{n}-agent credential issuance vs raw Secret create rate"), rate, peer_secrets, "objects/s", Some(0.8)),
            figure(&format!("{n}-agent credential issuance vs TokenRequest via the API (kube-rs)"), rate, peer_tokens, "objects/s", None),
            figure(&format!("{n}-agent credential issuance vs `kubectl create token`"), rate, peer_kubectl, "objects/s", None),
            figure(&format!("{n}-agent credential issuance vs the floor (the 3 writes per agent issues 2 and 3 require, bare client)"), rate, floor, "objects/s", None),
            figure("bound: the floor (Secret create + status merge patch + Event per agent) vs raw Secret create rate", floor, peer_secrets, "objects/s", None),
            figure("context: Agent create (CRD, CEL) vs raw Secret create rate", agent_create.rate, peer_secrets, "objects/s", None),
            figure("reported: Delegation create p99 through the agentiam webhook (SubjectAccessReview, chain check, durable audit record) vs the same create without it (ratio = ours / peer)", through.p99_ms, without.p99_ms, "ms", None),
            figure("context: Delegation create p50 through the agentiam webhook vs without it (ratio = ours / peer)", through.p50_ms, without.p50_ms, "ms", None),
        ],
    });
    let path = s.results_dir.join("issuance.json");
    std::fs::create_dir_all(&s.results_dir).expect("create results dir");
    std::fs::write(&path, serde_json::to_string_pretty(&fragment).unwrap() + "\n").expect("write fragment");
    println!(
        "issuance {rate:.1} agents/s vs raw Secret creates {peer_secrets:.1}/s = {:.3}x (target 0.8); {writes:.2} API writes per agent",
        rate / peer_secrets
    );
    println!(
        "floor {floor:.1} agents/s = {:.3}x raw Secret creates (the bound for any implementation); ours = {:.3}x the floor",
        floor / peer_secrets,
        rate / floor
    );
    println!("wrote {}", path.display());
    guard.run();
}

/// Delegation admission: `s.delegations` root Delegations created one after another (concurrency 1, so the
/// p99 is a latency, not a queue) by the admin user through the operator's validating webhook, which asks the
/// API server for a SubjectAccessReview, judges the grant and makes its audit record durable before it
/// answers; then the same creates with the webhook configuration removed, on the same API server and the same
/// operator. Returns (through the webhook, without it).
async fn delegation_admission(client: &Client, s: &Settings, ns: &str) -> (Burst, Burst) {
    use agentiam::api::{Delegation, DelegationSpec, LocalRef};
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let mut op = cluster::Operator::start_with_webhooks(s, ns);
    let agents: Api<Agent> = Api::namespaced(client.clone(), ns);
    let mut grantee = agent_object(0);
    grantee.metadata.name = Some("grantee".into());
    agents.create(&PostParams::default(), &grantee).await.expect("create the grantee Agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = agents.get("grantee").await.expect("read the grantee");
        if a.status.and_then(|st| st.phase).is_some_and(|p| p == agentiam::api::AgentPhase::Active) {
            break;
        }
        op.check_alive();
        assert!(Instant::now() < deadline, "the grantee did not become Active\n{}", op.stderr_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api: Api<Delegation> = Api::namespaced(client.clone(), ns);
    let make = |prefix: &'static str| {
        let api = api.clone();
        move |i: usize| {
            let api = api.clone();
            let spec = DelegationSpec {
                agent_ref: LocalRef { name: "grantee".into() },
                parent_ref: None,
                scopes: vec!["read@crm:contacts/*".into(), "refund@pay:orders/**".into()],
                task: "bench".into(),
                ttl: Some("1h".into()),
                expires_at: None,
                max_depth: None,
                audience: Some("crm".into()),
                may_act: None,
            };
            let d = Delegation::new(&format!("{prefix}-{i:04}"), spec);
            async move { api.create(&PostParams::default(), &d).await.map(|_| ()) }
        }
    };
    let through = burst(s.delegations, 1, make("through")).await.labelled("through the webhook");
    println!(
        "   Delegation create through the webhook C=1 p50 {:.2} ms  p99 {:.2} ms",
        through.p50_ms, through.p99_ms
    );
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let name = format!("agentiam-{ns}");
    vwcs.delete(&name, &Default::default()).await.expect("delete the webhook configuration");
    // The API server drops a deleted configuration from its admission chain within a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let without = burst(s.delegations, 1, make("without")).await.labelled("without the webhook");
    println!(
        "   Delegation create without it      C=1 p50 {:.2} ms  p99 {:.2} ms",
        without.p50_ms, without.p99_ms
    );
    op.stop();
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let _ = mwcs.delete(&name, &Default::default()).await;
    let _ = vwcs.delete(&name, &Default::default()).await;
    (through, without)
}

/// The Agent the bench creates (the same for ours and the floor): two audiences, no X.509.
fn agent_object(i: usize) -> Agent {
    serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": format!("agent-{i:04}")},
        "spec": {
            "owner": {"kind": "User", "name": "alice@example.com"},
            "purpose": "benchmark agent: answers support tickets",
            "credentials": {"audiences": [TICKETS, CRM], "x509": false},
        },
    }))
    .unwrap()
}

/// One of the floor's three writes, run alone to show its cost.
#[derive(Clone, Copy)]
enum FloorPart {
    Secret,
    Status,
    Event,
}

impl FloorPart {
    fn label(self) -> &'static str {
        match self {
            Self::Secret => "Secret create (owned by its Agent)",
            Self::Status => "Agent status merge patch",
            Self::Event => "Event create",
        }
    }
}

/// The floor's writes for one agent: what is left of issuance when everything optional is taken away.
struct FloorWriter {
    secrets: Api<Secret>,
    agents: Api<Agent>,
    recorder: Recorder,
    template: Secret,
    trust_domain: TrustDomain,
    kid: String,
}

impl FloorWriter {
    fn new(client: &Client, ns: &str, template: &Secret) -> Self {
        let reporter = Reporter { controller: "agentiam-bench-floor".into(), instance: None };
        let kid = template
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(plan::ANNOTATION_KEY_ID))
            .cloned()
            .unwrap_or_default();
        Self {
            secrets: Api::namespaced(client.clone(), ns),
            agents: Api::namespaced(client.clone(), ns),
            recorder: Recorder::new(client.clone(), reporter),
            template: template.clone(),
            trust_domain: TrustDomain::parse("cluster.local").unwrap(),
            kid,
        }
    }

    /// Secret create, status merge patch, Event: in the order an operator must make them (the status must not
    /// announce credentials that are not stored yet). `tag` keeps the Secret names of the runs apart.
    async fn issue(&self, agent: &Agent, tag: &str) -> Result<(), kube::Error> {
        let secret_name = self.create_secret(agent, tag).await?;
        self.patch_status(agent, secret_name).await?;
        self.publish(agent).await
    }

    async fn one(&self, part: FloorPart, agent: &Agent) -> Result<(), kube::Error> {
        match part {
            FloorPart::Secret => self.create_secret(agent, "part").await.map(|_| ()),
            FloorPart::Status => {
                let secret = format!("{}-credentials", agent.metadata.name.clone().unwrap());
                self.patch_status(agent, secret).await
            }
            FloorPart::Event => self.publish(agent).await,
        }
    }

    async fn create_secret(&self, agent: &Agent, tag: &str) -> Result<String, kube::Error> {
        let name = agent.metadata.name.clone().unwrap();
        let mut secret = self.template.clone();
        let secret_name = format!("{name}-{tag}-credentials");
        secret.metadata.name = Some(secret_name.clone());
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "agentiam.dev/v1alpha1".into(),
            kind: "Agent".into(),
            name,
            uid: agent.metadata.uid.clone().unwrap(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        self.secrets.create(&PostParams::default(), &secret).await?;
        Ok(secret_name)
    }

    /// The status the operator writes for a newly active agent, computed by the same pure function.
    async fn patch_status(&self, agent: &Agent, secret_name: String) -> Result<(), kube::Error> {
        let name = agent.metadata.name.clone().unwrap();
        let uid = agent.metadata.uid.clone().unwrap();
        let ns = agent.metadata.namespace.clone().unwrap();
        let now = Timestamp::now();
        let subject = Subject { namespace: &ns, name: &name, uid: &uid, generation: 1 };
        let mut status = decide(&self.trust_domain, subject, &agent.spec, None, None, None, now).status;
        status.credentials = Some(CredentialStatus {
            secret_name: Some(secret_name),
            issued_at: Some(now.to_string()),
            expires_at: Some(now.checked_add(DEFAULT_TTL).unwrap().to_string()),
            key_id: Some(self.kid.clone()),
        });
        let patch = Patch::Merge(json!({"status": status}));
        self.agents.patch_status(&name, &PatchParams::default(), &patch).await.map(|_| ())
    }

    async fn publish(&self, agent: &Agent) -> Result<(), kube::Error> {
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: "CredentialsIssued".into(),
            note: Some(format!("issued credentials for 2 audiences, key {}", self.kid)),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.recorder.publish(&event, &agent.object_ref(&())).await
    }
}

/// A Secret shaped like an operator-issued credentials Secret: real tokens for two audiences, a real CA bundle,
/// the same labels and annotations. No ownerReference (its owner would not exist and the garbage collector
/// would delete it).
fn secret_template(ns: &str) -> Secret {
    let now = Timestamp::now();
    let td = TrustDomain::parse("cluster.local").unwrap();
    let key = Arc::new(SigningKey::generate(now).unwrap());
    let ca = CertificateAuthority::generate(&td, jiff::SignedDuration::from_hours(24 * 365), now).unwrap();
    let id = SpiffeId::for_agent(&td, ns, "agent-0000").unwrap();
    let uid = uuid::Uuid::new_v4().to_string();
    let mut minter = Minter::new(Arc::clone(&key));
    let mut data = BTreeMap::new();
    let audiences = vec![TICKETS.to_owned(), CRM.to_owned()];
    for (aud, secret_key) in plan::token_keys(&audiences) {
        let agent = AgentClaims { uid: &uid, owner: "User:alice@example.com", trust_score: 275 };
        let claims = SvidClaims::new("http://127.0.0.1:8080", &id, &aud, agent, now, DEFAULT_TTL).unwrap();
        data.insert(secret_key, minter.mint(&claims).unwrap());
    }
    data.insert("bundle.pem".to_owned(), ca.bundle_pem());
    let annotations: BTreeMap<String, String> = [
        (plan::ANNOTATION_UID, uid.clone()),
        (plan::ANNOTATION_ISSUED_AT, now.to_string()),
        (plan::ANNOTATION_EXPIRES_AT, now.to_string()),
        (plan::ANNOTATION_REFRESH_AT, now.to_string()),
        (plan::ANNOTATION_KEY_ID, key.kid().to_owned()),
        (plan::ANNOTATION_FINGERPRINT, "0123456789abcdef0123456789abcdef".to_owned()),
        (plan::ANNOTATION_ISSUE_KEY, format!("credential.issue:{uid}:{}", now.as_millisecond())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    serde_json::from_value(json!({
        "metadata": {
            "labels": {AGENT_LABEL: "agent-0000", "app.kubernetes.io/managed-by": "agentiam-operator"},
            "annotations": annotations,
        },
        "type": "Opaque",
        "stringData": data,
    }))
    .unwrap()
}

fn template_bytes(s: &Secret) -> Value {
    let data = s.string_data.clone().unwrap_or_default();
    let sizes: BTreeMap<String, usize> = data.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    json!({"data": sizes, "total_json": serde_json::to_vec(s).unwrap().len()})
}

/// Issuance rate between 10% and 90% of the Secrets: throughput without the startup and the tail.
fn steady_rate(progress: &[(f64, usize)], n: usize) -> Option<f64> {
    let at = |frac: f64| progress.iter().find(|(_, c)| *c as f64 >= frac * n as f64).copied();
    let ((t1, c1), (t2, c2)) = (at(0.1)?, at(0.9)?);
    (t2 > t1).then(|| (c2 - c1) as f64 / (t2 - t1))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
