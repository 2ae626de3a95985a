//! Shadow-agent discovery against the real API server: workloads of every kind (kube-controller-manager
//! creates their ReplicaSets, Pods and Jobs) are classified; one that looks like an agent and that no Agent
//! covers gets a shadow Agent in phase Discovered, never any credentials, with evidence, an Event and audit
//! records; ordinary workloads get nothing; the record goes with its workload, and an adopted one stays.

use std::time::{Duration, Instant};

use agentiam::api::Agent;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams};

use crate::harness::{Operator, TestNs, WAIT, records, text, wait_for, wait_phase, wait_records};
use crate::require_cluster;

pub(crate) fn deployment(name: &str, pod: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  selector: \
         {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{pod}"
    )
}

pub(crate) fn statefulset(name: &str, pod: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}}}\nspec:\n  serviceName: {name}\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
         spec:\n{pod}"
    )
}

pub(crate) fn daemonset(name: &str, pod: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: \
         {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{pod}"
    )
}

pub(crate) fn job(name: &str, pod: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  template:\n    spec:\n      \
         restartPolicy: Never\n{pod}"
    )
}

pub(crate) fn cronjob(name: &str, labels: &str, pod: &str) -> String {
    // Once a year: kube-controller-manager never runs it during the test.
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: \"0 0 1 1 *\"\n  \
         jobTemplate:\n    spec:\n      template:\n        metadata: {{labels: {{{labels}}}}}\n        spec:\n          \
         restartPolicy: Never\n{}",
        indent(pod, 4)
    )
}

pub(crate) fn bare_pod(name: &str, pod: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{}", dedent(pod, 4))
}

/// A pod spec body (containers and volumes), indented for a template's `spec:` (6 spaces).
pub(crate) fn containers(image: &str, extra: &str) -> String {
    format!("      containers:\n      - name: main\n        image: {image}\n{extra}")
}

fn indent(s: &str, n: usize) -> String {
    s.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect()
}

fn dedent(s: &str, n: usize) -> String {
    s.lines().map(|l| format!("{}\n", l.get(n..).unwrap_or(l.trim_start()))).collect()
}

pub(crate) fn apply(ns: &TestNs, yaml: &str) {
    let out = ns.apply(yaml);
    assert!(out.status.success(), "kubectl apply failed: {}\n{yaml}", text(&out));
}

async fn wait_gone(ns: &TestNs, name: &str) {
    let api = ns.api::<Agent>();
    wait_for(&format!("shadow agent {name} to be gone"), WAIT, || async {
        api.get_opt(name).await.ok().map(|o| o.is_none()).filter(|gone| *gone)
    })
    .await;
}

async fn metric(op: &Operator, name: &str) -> Option<f64> {
    let (_, _, body) = crate::harness::http_get(&op.admin_addr(), "/metrics").await;
    body.lines()
        .find(|l| {
            l.starts_with(name) && l.as_bytes().get(name.len()).is_some_and(|b| *b == b' ' || *b == b'{')
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn signatures(a: &Agent) -> Vec<String> {
    let d = a.status.as_ref().and_then(|s| s.discovery.clone()).unwrap_or_default();
    d.evidence.iter().map(|e| e.signature.clone()).collect()
}

#[tokio::test]
async fn workloads_of_every_kind_and_signature_are_found_and_ordinary_ones_are_not() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "discovery").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: llm}\nstringData: {ANTHROPIC_API_KEY: \
                  sk-ant-not-a-real-key, region: eu}\n";
    apply(&ns, secret);

    // Ordinary workloads of each kind first: each kind's watch sees them before that kind's agentic one.
    let ordinary = [
        deployment("web", &containers("nginx:1.27", "        ports: [{containerPort: 80, name: http}]\n")),
        deployment(
            "orders-api",
            &containers(
                "ghcr.io/acme/orders-api:2.3.1",
                "        env: [{name: DATABASE_URL, value: 'postgres://orders'}, {name: STRIPE_API_KEY, value: x}]\n",
            ),
        ),
        statefulset("db", &containers("postgres:17", "        env: [{name: POSTGRES_PASSWORD, value: x}]\n")),
        daemonset("node-exporter", &containers("quay.io/prometheus/node-exporter:v1.9.0", "")),
        job("backup", &containers("alpine:3.20", "        command: [sh, -c, 'pg_dump > /dev/null']\n")),
        cronjob(
            "cleanup",
            "app: cleanup",
            &containers("bitnami/kubectl:1.33", "        args: [delete, pods]\n"),
        ),
        bare_pod("debug", &containers("busybox:1.36", "        command: [sleep, '3600']\n")),
        // More of what a cluster runs, 21 in all, with the near misses: Secrets mounted and brought in with
        // envFrom whose keys are not LLM keys, API keys of other services, ports named like protocols.
        deployment(
            "cache",
            &containers("redis:7.4", "        ports: [{containerPort: 6379, name: redis}]\n"),
        ),
        deployment(
            "dashboards",
            &containers(
                "grafana/grafana:11.3.0",
                "        env: [{name: GF_SECURITY_ADMIN_PASSWORD, value: x}]\n",
            ),
        ),
        deployment(
            "edge",
            &containers("envoyproxy/envoy:v1.32.1", "        args: [-c, /etc/envoy/envoy.yaml]\n"),
        ),
        deployment("sessions", &containers("memcached:1.6", "        args: [-m, '64']\n")),
        deployment(
            "static-site",
            &format!(
                "{}      volumes: [{{name: tls, secret: {{secretName: db}}}}]\n",
                containers("httpd:2.4", "        volumeMounts: [{name: tls, mountPath: /tls}]\n")
            ),
        ),
        deployment(
            "payments",
            &containers(
                "ghcr.io/acme/payments:5.0",
                "        envFrom: [{secretRef: {name: db}}]\n        env: [{name: SENDGRID_API_KEY, value: x}, {name: DATADOG_API_KEY, value: x}]\n",
            ),
        ),
        statefulset(
            "mysql",
            &containers("mysql:8.4", "        env: [{name: MYSQL_ROOT_PASSWORD, value: x}]\n"),
        ),
        statefulset(
            "docs-db",
            &containers("mongo:8.0", "        ports: [{containerPort: 27017, name: mongodb}]\n"),
        ),
        statefulset(
            "events",
            &containers("apache/kafka:3.9.0", "        ports: [{containerPort: 9092, name: broker}]\n"),
        ),
        statefulset(
            "search",
            &containers(
                "docker.elastic.co/elasticsearch/elasticsearch:8.16.1",
                "        env: [{name: ES_JAVA_OPTS, value: -Xms512m}]\n",
            ),
        ),
        daemonset(
            "logs",
            &containers("fluent/fluent-bit:3.2", "        args: [-c, /fluent-bit/etc/fluent-bit.conf]\n"),
        ),
        job(
            "migrate",
            &containers(
                "flyway/flyway:11",
                "        args: [migrate]\n        envFrom: [{secretRef: {name: db}}]\n",
            ),
        ),
        job("report", &containers("python:3.12", "        command: [python, report.py, --month, '11']\n")),
        cronjob(
            "logrotate",
            "app: logrotate",
            &containers("alpine:3.20", "        command: [logrotate, /etc/logrotate.conf]\n"),
        ),
    ];
    assert!(ordinary.len() >= 20, "the issue asks for at least 20 ordinary workloads");
    apply(
        &ns,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {username: app, password: x}\n",
    );
    for w in &ordinary {
        apply(&ns, w);
    }
    let created = Instant::now();
    let agentic = [
        (
            "deployment-llm-bot",
            deployment(
                "llm-bot",
                &containers(
                    "python:3.12",
                    "        env: [{name: OPENAI_API_KEY, value: sk-proj-not-a-real-key}]\n",
                ),
            ),
            "llm-provider-key",
        ),
        (
            "deployment-from-secret",
            deployment(
                "from-secret",
                &containers("python:3.12", "        envFrom: [{secretRef: {name: llm}}]\n"),
            ),
            "llm-provider-key",
        ),
        (
            "statefulset-github-tools",
            statefulset("github-tools", &containers("mcp/github:latest", "")),
            "mcp-server-image",
        ),
        (
            "daemonset-node-agent",
            daemonset("node-agent", &containers("ghcr.io/acme/langgraph-api:0.4", "")),
            "agent-framework-image",
        ),
        (
            "job-crew-run",
            job(
                "crew-run",
                &containers("node:22", "        args: [npx, -y, '@modelcontextprotocol/server-github']\n"),
            ),
            "mcp-server-args",
        ),
        (
            "cronjob-nightly",
            cronjob("nightly", "agentiam.dev/discover: agent", &containers("busybox:1.36", "")),
            "agent-label",
        ),
        (
            "deployment-reader-bot",
            deployment(
                "reader-bot",
                &containers("python:3.12", "        env: [{name: GROQ_API_KEY, value: not-a-real-key}]\n"),
            )
            .replace(
                "    spec:\n      containers:",
                "    spec:\n      serviceAccountName: reader\n      containers:",
            ),
            "llm-provider-key",
        ),
        (
            "deployment-mounted-key",
            deployment(
                "mounted-key",
                &format!(
                    "{}      volumes: [{{name: keys, secret: {{secretName: llm}}}}]\n",
                    containers("python:3.12", "        volumeMounts: [{name: keys, mountPath: /keys}]\n")
                ),
            ),
            "llm-provider-key-in-secret",
        ),
        (
            "statefulset-card",
            statefulset("card", &containers("ghcr.io/acme/helpdesk:3", "")).replace(
                "    metadata: {labels: {app: card}}",
                "    metadata: {labels: {app: card}, annotations: {a2a.agent-card: /.well-known/agent-card.json}}",
            ),
            "agent-annotation",
        ),
        (
            "pod-tools",
            bare_pod(
                "tools",
                &containers("acme/tools:1", "        ports: [{containerPort: 8080, name: mcp}]\n"),
            ),
            "mcp-port-name",
        ),
    ];
    // A ServiceAccount that may read the namespace's Secrets, for the risk classification.
    let reader = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reader}\n---\napiVersion: \
                  rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: secret-reader}\nrules: [{apiGroups: \
                  [''], resources: [secrets], verbs: [get, list]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\n\
                  kind: RoleBinding\nmetadata: {name: reader}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: \
                  Role, name: secret-reader}\nsubjects: [{kind: ServiceAccount, name: reader}]\n";
    apply(&ns, reader);
    for (_, w, _) in &agentic {
        apply(&ns, w);
    }
    let agents = ns.api::<Agent>();
    let mut latencies = Vec::new();
    for (name, _, signature) in &agentic {
        let a = wait_phase(&agents, name, "Discovered").await;
        latencies.push(created.elapsed());
        assert!(a.spec.owner.is_none(), "{name}");
        assert!(signatures(&a).iter().any(|s| s == signature), "{name}: {:?}", signatures(&a));
        let d = a.status.as_ref().and_then(|s| s.discovery.clone()).unwrap();
        assert!(d.confidence >= 50 && d.workload.is_some(), "{name}: {d:?}");
        let ready = a.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Discovered"));
    }
    println!(
        "discovery: {} shadow agents recorded, the last {:?} after the workloads were created",
        agentic.len(),
        latencies.last()
    );

    // Exactly these: no ordinary workload, and none of the ReplicaSets, Pods or Jobs the controllers made.
    let mut names: Vec<String> = agents
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|a| a.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = agentic.iter().map(|(n, _, _)| (*n).to_owned()).collect();
    want.sort();
    assert_eq!(names, want);

    // The risk: a static key, and for reader-bot a ServiceAccount that reads the namespace's Secrets.
    let risk = |a: &Agent| a.status.as_ref().and_then(|s| s.discovery.as_ref()?.risk.clone()).unwrap();
    let reader_bot = agents.get("deployment-reader-bot").await.unwrap();
    let r = risk(&reader_bot);
    assert!(r.reasons.iter().any(|x| x.contains("may read Secrets in its namespace")), "{r:?}");
    assert!(r.reasons.iter().any(|x| x.contains("static LLM key")), "{r:?}");
    assert!(r.score >= 50, "{r:?}");
    let tools = risk(&agents.get("pod-tools").await.unwrap());
    assert!(
        !tools.reasons.iter().any(|x| x.contains("Secrets in its namespace") || x.contains("static")),
        "{tools:?}"
    );
    assert!(tools.score < r.score, "{tools:?} vs {r:?}");

    // Static keys are named, never shown; a shadow agent never holds credentials.
    let bot = agents.get("deployment-llm-bot").await.unwrap();
    let keys = bot.status.as_ref().unwrap().discovery.as_ref().unwrap().static_keys.clone();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!((keys[0].name.as_str(), keys[0].container.as_str()), ("OPENAI_API_KEY", "main"));
    let from_secret = agents.get("deployment-from-secret").await.unwrap();
    let keys = from_secret.status.unwrap().discovery.unwrap().static_keys;
    assert_eq!(
        keys.iter().map(|k| (k.name.as_str(), k.from.as_deref())).collect::<Vec<_>>(),
        [("ANTHROPIC_API_KEY", Some("llm"))]
    );
    let yaml = text(&env.kubectl(&["get", "agents", "-n", &ns.name, "-o", "yaml"], None));
    assert!(!yaml.contains("not-a-real-key"), "a key's value reached an Agent");
    let secrets = ns.api::<Secret>().list(&ListParams::default()).await.unwrap();
    assert!(
        secrets.items.iter().all(|s| !s.metadata.name.clone().unwrap_or_default().ends_with("-credentials"))
    );

    // A Warning Event per record, audit records, the metric.
    let events = text(&env.kubectl(
        &["get", "events", "-n", &ns.name, "--field-selector", "reason=ShadowAgentDetected", "-o", "name"],
        None,
    ));
    assert!(events.lines().count() >= agentic.len(), "{events}");
    let recs = wait_records(&op, "a discovery.detect record per shadow agent", |r| {
        r.iter().filter(|x| x["action"] == "discovery.detect").count() >= agentic.len()
    })
    .await;
    assert!(
        recs.iter().any(|r| r["action"] == "agent.discover"),
        "the Agent controller records the phase too"
    );
    let detect = recs
        .iter()
        .find(|r| r["action"] == "discovery.detect" && r["object"]["name"] == "deployment-llm-bot")
        .unwrap();
    assert_eq!(detect["details"]["workloadKind"], "Deployment");
    assert_eq!(detect["details"]["staticKeys"], "1");
    assert_eq!(metric(&op, "agentiam_discovered_workloads").await, Some(agentic.len() as f64));

    // The workload goes: so does its record (the Deployment's watch sees it; its ReplicaSet and Pods,
    // which kube-controller-manager deletes after it, never stood for it).
    env.kubectl(&["delete", "deployment", "llm-bot", "-n", &ns.name, "--wait=false"], None);
    env.kubectl(
        &["delete", "pod", "tools", "-n", &ns.name, "--wait=false", "--grace-period=0", "--force"],
        None,
    );
    wait_gone(&ns, "deployment-llm-bot").await;
    wait_gone(&ns, "pod-tools").await;
    let recs = wait_records(&op, "discovery.cleanup records", |r| {
        r.iter().filter(|x| x["action"] == "discovery.cleanup").count() >= 2
    })
    .await;
    assert!(recs.iter().any(|r| r["action"] == "discovery.cleanup" && r["object"]["name"] == "pod-tools"));
}

#[tokio::test]
async fn an_adopted_shadow_agent_is_registered_and_stays_and_a_registered_workload_is_no_shadow() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "adopt").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let agents = ns.api::<Agent>();
    // A registered agent, and a workload that names it: covered, no shadow.
    ns.create_agent("support-bot", crate::harness::basic_spec()).await;
    wait_phase(&agents, "support-bot", "Active").await;
    let covered = deployment(
        "support",
        &containers("python:3.12", "        env: [{name: ANTHROPIC_API_KEY, value: k}]\n"),
    )
    .replace("labels: {app: support}}", "labels: {app: support, agentiam.dev/agent: support-bot}}");
    apply(&ns, &covered);
    apply(
        &ns,
        &deployment(
            "triage",
            &containers("python:3.12", "        env: [{name: OPENAI_API_KEY, value: k}]\n"),
        ),
    );
    let shadow = wait_phase(&agents, "deployment-triage", "Discovered").await;
    assert_eq!(metric(&op, "agentiam_discovered_workloads").await, Some(2.0), "both look like agents");
    assert!(
        agents.get_opt("deployment-support").await.unwrap().is_none(),
        "a covered workload has no shadow"
    );
    // The adopted spec keeps the workload binding discovery wrote.
    let wl = shadow.spec.workload.clone().unwrap();
    assert_eq!(wl.service_account_name.as_deref(), Some("default"));

    // The registered agent's status reports the workload it covers.
    wait_for("the registered agent's discovery report", WAIT, || async {
        let a = agents.get("support-bot").await.ok()?;
        let d = a.status?.discovery?;
        (d.workload?.name == "support").then_some(())
    })
    .await;
    // `discover` lists both, with why; JSON too.
    let out = env.plugin(&["discover", "-n", &ns.name]);
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    let line = |agent: &str| table.lines().find(|l| l.starts_with(agent)).unwrap_or_default().to_owned();
    assert!(
        line("deployment-triage").contains("shadow")
            && line("deployment-triage").contains("llm-provider-key"),
        "{table}"
    );
    assert!(
        line("support-bot").contains("registered") && line("support-bot").contains("Deployment/support"),
        "{table}"
    );
    let out = env.plugin(&["discover", "-n", &ns.name, "--shadow", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{}", text(&out));
    assert_eq!(rows[0]["staticKeys"][0], "main: OPENAI_API_KEY (literal value)");

    // Adoption: the owner names themselves (and a purpose); the agent moves through the lifecycle.
    let adopt = |purpose: &str| {
        env.plugin(&[
            "adopt",
            "deployment-triage",
            "-n",
            &ns.name,
            "--owner",
            "User:olivia@example.com",
            "--purpose",
            purpose,
        ])
    };
    let out = adopt("triages tickets");
    assert!(out.status.success(), "{}", text(&out));
    let out = adopt("x");
    assert!(!out.status.success() && text(&out).contains("already has an owner"), "{}", text(&out));
    let adopted = wait_phase(&agents, "deployment-triage", "Active").await;
    assert_eq!(adopted.metadata.uid, shadow.metadata.uid, "the same object, now registered");
    wait_records(&op, "the adoption transition", |r| {
        r.iter().any(|x| x["action"] == "agent.activate" && x["object"]["name"] == "deployment-triage")
    })
    .await;
    // An owner, once named, cannot be removed (that would turn a registered agent back into a shadow).
    let out = env.kubectl(
        &[
            "patch",
            "agent",
            "deployment-triage",
            "-n",
            &ns.name,
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/spec/owner"}]"#,
        ],
        None,
    );
    assert!(!out.status.success() && text(&out).contains("cannot be removed"), "{}", text(&out));

    // Its workload goes: discovery forgets it, and the adopted agent stays.
    env.kubectl(&["delete", "deployment", "triage", "-n", &ns.name, "--wait=false"], None);
    wait_for("discovery to forget the workload", WAIT, || async {
        (metric(&op, "agentiam_discovered_workloads").await == Some(1.0)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        agents.get_opt("deployment-triage").await.unwrap().is_some(),
        "an adopted agent is never cleaned up"
    );
    assert!(!records(&op.audit_log()).iter().any(|r| r["action"] == "discovery.cleanup"));

    // A borrowed ServiceAccount: an agent names one that an ETL job it does not cover runs as too, and a
    // second agent names it as well.
    let mut spec = crate::harness::basic_spec();
    spec["workload"] = serde_json::json!({"serviceAccountName": "shared", "podSelector": {"matchLabels": {"app": "sa-bot"}}});
    ns.create_agent("sa-bot", spec.clone()).await;
    spec["workload"] =
        serde_json::json!({"serviceAccountName": "shared", "podSelector": {"matchLabels": {"app": "other"}}});
    ns.create_agent("sa-other", spec).await;
    let sa = |name: &str| {
        deployment(name, &containers("busybox:1.36", "")).replace(
            "    spec:\n      containers:",
            "    spec:\n      serviceAccountName: shared\n      containers:",
        )
    };
    apply(&ns, &sa("sa-bot"));
    apply(&ns, &sa("etl"));
    let borrowed = wait_for("sa-bot's borrowed ServiceAccount report", WAIT, || async {
        let a = agents.get("sa-bot").await.ok()?;
        let b = a.status?.discovery?.borrowed_service_account?;
        (b.shared_with.iter().any(|w| w == "Deployment/etl")).then_some(b)
    })
    .await;
    assert_eq!(borrowed.service_account, "shared");
    assert_eq!(borrowed.workloads, 1, "etl only: {borrowed:?}");
    assert_eq!(borrowed.other_agents, ["sa-other"]);
    assert!(
        !borrowed.shared_with.iter().any(|w| w == "Deployment/sa-bot"),
        "its own workload is not borrowing: {borrowed:?}"
    );
    let out = env.plugin(&["discover", "-n", &ns.name, "-o", "json"]);
    assert!(text(&out).contains("shared (shared with"), "{}", text(&out));

    // A person cannot create an agent without an owner; only discovery records one.
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: agent-writer}}\nrules:\n- \
         apiGroups: [agentiam.dev]\n  resources: [agents]\n  verbs: [create, get]\n---\napiVersion: \
         rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: alice}}\nroleRef: {{apiGroup: \
         rbac.authorization.k8s.io, kind: Role, name: agent-writer}}\nsubjects: [{}]\n",
        crate::delegation::user("alice")
    );
    apply(&ns, &rbac);
    let ownerless =
        "apiVersion: agentiam.dev/v1alpha1\nkind: Agent\nmetadata: {name: nobody}\nspec: {purpose: x}\n";
    let out = crate::delegation::create_as(&env, &ns, &["--as=alice"], ownerless);
    assert!(!out.status.success() && text(&out).contains("spec.owner is required"), "{}", text(&out));
    let _ = agents.delete("support-bot", &DeleteParams::default()).await;
}

/// The test-agent image on the local node (tools/images.sh agent-python: Python 3.11 and busybox), or None
/// when the cluster runs without its node (then pods do not run; E2E_REQUIRED=1 makes that a failure).
fn agent_image() -> Option<String> {
    match std::env::var("AGENTIAM_E2E_AGENT_IMAGE").ok().filter(|s| !s.is_empty()) {
        Some(image) => Some(image),
        None if std::env::var("E2E_REQUIRED").is_ok_and(|v| v == "1") => {
            panic!(
                "E2E_REQUIRED=1 but AGENTIAM_E2E_AGENT_IMAGE is unset: tools/e2e.sh sets it when the node runs"
            )
        }
        None => {
            eprintln!("SKIPPED: no local node (AGENTIAM_E2E_AGENT_IMAGE unset): pods do not run");
            None
        }
    }
}

/// A Deployment whose pod serves `document` at /.well-known/agent-card.json on port 8080 (Python's
/// http.server, which logs each request), Ready once it does.
fn serving(name: &str, image: &str, document: &str) -> String {
    let script = "mkdir -p /w/.well-known && printf %s \"$DOC\" > /w/.well-known/agent-card.json && cd /w && \
                  exec python3 -m http.server 8080";
    deployment(
        name,
        &format!(
            "      containers:\n      - name: main\n        image: {image}\n        imagePullPolicy: Never\n        \
             command: [sh, -c, '{script}']\n        env: [{{name: DOC, value: '{document}'}}]\n        \
             ports: [{{containerPort: 8080, name: http}}]\n        readinessProbe: {{httpGet: {{path: \
             /.well-known/agent-card.json, port: 8080}}, periodSeconds: 1}}\n        volumeMounts: [{{name: w, \
             mountPath: /w}}]\n      volumes: [{{name: w, emptyDir: {{}}}}]\n"
        ),
    )
}

/// The time the pod of Deployment `app` became Ready, once it is.
async fn ready_at(env: &crate::harness::Env, ns: &TestNs, app: &str) -> jiff::Timestamp {
    wait_for(&format!("the pod of {app} Ready"), Duration::from_secs(120), || async {
        let out = env.kubectl(
            &[
                "get",
                "pods",
                "-n",
                &ns.name,
                "-l",
                &format!("app={app}"),
                "-o",
                "jsonpath={.items[0].status.conditions[?(@.type==\"Ready\")].status} \
                 {.items[0].status.conditions[?(@.type==\"Ready\")].lastTransitionTime}",
            ],
            None,
        );
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, at) = s.split_once(' ')?;
        (status == "True").then(|| at.trim().parse().ok()).flatten()
    })
    .await
}

#[tokio::test]
async fn a_running_pod_that_serves_an_a2a_agent_card_is_found_by_its_card() {
    let env = require_cluster!();
    let Some(image) = agent_image() else { return };
    let ns = TestNs::new(&env, "a2a").await;
    let op = Operator::start(&env, &ns.name, &[]);
    // Nothing in either template looks like an agent: no keys, no framework, a port named http.
    let card =
        r#"{"name": "Refund\u0007 helper", "description": "refunds", "url": "http://x", "version": "1",
                   "capabilities": {}, "skills": [{"id": "refund", "name": "refund"}]}"#
            .replace('\n', " ");
    apply(&ns, &serving("helper", &image, &card));
    apply(&ns, &serving("web", &image, r#"{"name": "a web app", "status": "ok"}"#));

    let agents = ns.api::<Agent>();
    let ready = ready_at(&env, &ns, "helper").await;
    let shadow = wait_phase(&agents, "deployment-helper", "Discovered").await;
    let seen = jiff::Timestamp::now();
    let d = shadow.status.as_ref().and_then(|s| s.discovery.clone()).unwrap_or_default();
    let evidence = d.evidence.iter().find(|e| e.signature == "a2a-agent-card").expect("card evidence");
    assert_eq!(
        evidence.matches,
        vec![r#"a pod serves the A2A agent card "Refund helper" on port 8080"#.to_owned()],
        "the card's name, sanitised, and where it was served: {d:?}"
    );
    assert_eq!(d.workload.as_ref().map(|w| w.kind.as_str()), Some("Deployment"), "the workload, not its pod");
    eprintln!("shadow agent recorded {:?} after its pod was Ready", seen.duration_since(ready));

    // The other pod was asked both paths (its log shows the requests) and is not an agent.
    wait_for("both paths asked of the web pod", WAIT, || async {
        let out = env.kubectl(&["logs", "-n", &ns.name, "deploy/web"], None);
        let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (log.contains("GET /.well-known/agent.json") && log.contains("404")).then_some(())
    })
    .await;
    let web = agents.get_opt("deployment-web").await.unwrap();
    assert!(
        web.is_none(),
        "a JSON document without skills is no card: {:?}",
        web.and_then(|w| w.status).and_then(|s| s.discovery)
    );
    wait_records(&op, "the detection audited", |recs| {
        recs.iter().any(|r| r["action"] == "discovery.detect" && r["object"]["name"] == "deployment-helper")
    })
    .await;
    assert!(!records(&op.audit_log()).iter().any(|r| r["object"]["name"] == "deployment-web"));
}
