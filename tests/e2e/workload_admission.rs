//! Workload admission against the real API server: the namespace label picks the webhook (audit, warn,
//! enforce), kubectl shows the warnings and refusals, kube-controller-manager's own writes (a Deployment's
//! Pods, a scale-up) go through it, and every decision on an agentic workload is in the audit log.

use serde_json::Value;

use crate::discovery::{apply, containers, cronjob, deployment, job, statefulset};
use crate::harness::{
    Env, Operator, TestNs, WAIT, basic_spec, records, text, wait_for, wait_phase, wait_records,
};
use crate::require_cluster;

const LABEL: &str = "agentiam.dev/workload-admission";

fn label(env: &Env, ns: &TestNs, mode: Option<&str>) {
    let arg = match mode {
        Some(m) => format!("{LABEL}={m}"),
        None => format!("{LABEL}-"),
    };
    let out = env.kubectl(&["label", "namespace", &ns.name, &arg, "--overwrite"], None);
    assert!(out.status.success(), "label the namespace: {}", text(&out));
}

/// Applies `yaml`: whether it was admitted, and what kubectl printed (warnings and refusals included).
fn try_apply(ns: &TestNs, yaml: &str) -> (bool, String) {
    let out = ns.apply(yaml);
    (out.status.success(), text(&out))
}

fn literal_key(var: &str) -> String {
    format!("        env: [{{name: {var}, value: sk-not-a-real-key}}]\n")
}

/// The `workload.admit` records about `name`.
fn admits<'a>(recs: &'a [Value], name: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["action"] == "workload.admit" && r["object"]["name"] == name).collect()
}

#[tokio::test]
async fn enforce_mode_refuses_new_agent_workloads_with_guidance_and_never_breaks_existing_ones() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "wl-enforce").await;
    let op = Operator::start(&env, &ns.name, &[]);
    ns.create_agent("bot", basic_spec()).await;
    wait_phase(&ns.api(), "bot", "Active").await;
    apply(
        &ns,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: llm}\nstringData: {OPENAI_API_KEY: sk-not-real}\n",
    );

    // Before enforcement: a workload with a literal key is admitted (the namespace is not labelled).
    let legacy = deployment("legacy", &containers("python:3.12", &literal_key("OPENAI_API_KEY")));
    apply(&ns, &legacy);
    label(&env, &ns, Some("enforce"));

    // The API server picks the webhook by the label as soon as its namespace cache has it.
    let refused = deployment("literal", &containers("python:3.12", &literal_key("OPENAI_API_KEY")));
    let message = wait_for("the enforce webhook to refuse", WAIT, || async {
        let (ok, out) = try_apply(&ns, &refused);
        (!ok).then_some(out)
    })
    .await;
    let what = format!("agentiam refused Deployment {}/literal", ns.name);
    assert!(message.contains(&what), "{message}");
    assert!(
        message.contains("enforces agent workload admission (agentiam.dev/workload-admission=enforce)"),
        "{message}"
    );
    assert!(message.contains("it looks like an AI agent (llm-provider-key)"), "{message}");
    assert!(message.contains("it names no registered Agent"), "{message}");
    assert!(message.contains("container main gets OPENAI_API_KEY as a literal value"), "{message}");
    assert!(message.contains("let the agent authenticate with the credentials agentiam issues"), "{message}");
    assert!(!message.contains("sk-not-a-real-key"), "the key's value is never shown: {message}");

    // A registered, Active Agent is not enough when the key comes from a Secret agentiam did not issue.
    let from_secret = statefulset(
        "from-secret",
        &containers("python:3.12", "        envFrom: [{secretRef: {name: llm}}]\n"),
    )
    .replace(
        "metadata: {labels: {app: from-secret}}",
        "metadata: {labels: {app: from-secret, agentiam.dev/agent: bot}}",
    );
    let (ok, out) = try_apply(&ns, &from_secret);
    assert!(!ok, "{out}");
    assert!(
        out.contains("container main gets OPENAI_API_KEY from Secret llm, which agentiam did not issue"),
        "{out}"
    );
    assert!(!out.contains("names no registered Agent"), "it names bot: {out}");

    // An Agent that is not registered.
    let ghost = job("crew-run", &containers("ghcr.io/acme/crewai-runner:1", "")).replace(
        "    spec:\n      restartPolicy",
        "    metadata: {labels: {agentiam.dev/agent: ghost}}\n    spec:\n      restartPolicy",
    );
    let (ok, out) = try_apply(&ns, &ghost);
    assert!(!ok, "{out}");
    assert!(out.contains("its pods name Agent ghost, which is not registered in this namespace"), "{out}");

    // An agent in order is admitted; the same CronJob with a literal key is not.
    let fine =
        cronjob("nightly", "agentiam.dev/agent: bot", &containers("ghcr.io/acme/langgraph-api:0.4", ""));
    let (ok, out) = try_apply(&ns, &fine);
    assert!(ok, "an agent in order is admitted: {out}");
    assert!(!out.contains("Warning"), "{out}");
    let keyed = cronjob(
        "keyed",
        "agentiam.dev/agent: bot",
        &containers("python:3.12", &literal_key("ANTHROPIC_API_KEY")),
    );
    let (ok, out) = try_apply(&ns, &keyed);
    assert!(!ok && out.contains("container main gets ANTHROPIC_API_KEY as a literal value"), "{out}");

    // Ordinary workloads are never judged.
    for plain in [
        deployment("web", &containers("nginx:1.27", "        ports: [{containerPort: 80}]\n")),
        statefulset("db", &containers("postgres:17", "        env: [{name: POSTGRES_PASSWORD, value: x}]\n")),
    ] {
        let (ok, out) = try_apply(&ns, &plain);
        assert!(ok && !out.contains("Warning"), "{out}");
    }

    // A dry run is answered the same, and leaves no record.
    let dry = deployment("dry", &containers("python:3.12", &literal_key("OPENAI_API_KEY")));
    let out = env.kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&dry));
    assert!(!out.status.success() && text(&out).contains("agentiam refused Deployment"), "{}", text(&out));

    // The existing workload: an update that adds nothing is admitted with a warning, and the Pods
    // kube-controller-manager makes for it are admitted too.
    let patch = r#"{"spec":{"replicas":2}}"#;
    let out = env.kubectl(&["patch", "deployment", "legacy", "-n", &ns.name, "-p", patch], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(admitted, as it was before)"), "{}", text(&out));
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    wait_for("two pods of legacy", WAIT, || async {
        let list = pods.list(&kube::api::ListParams::default().labels("app=legacy")).await.ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await;
    // An update that adds a key is refused, naming only what it adds.
    let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","env":[{"name":"ANTHROPIC_API_KEY","value":"sk-ant-x"}]}]}}}}"#;
    let out = env.kubectl(&["patch", "deployment", "legacy", "-n", &ns.name, "-p", patch], None);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("ANTHROPIC_API_KEY as a literal value") && !t.contains("OPENAI_API_KEY"), "{t}");

    // A value this version does not know is enforced.
    label(&env, &ns, Some("strict"));
    let unknown = deployment("unknown-mode", &containers("python:3.12", &literal_key("OPENAI_API_KEY")));
    let out = wait_for("an unknown mode to enforce", WAIT, || async {
        let (ok, out) = try_apply(&ns, &unknown);
        (!ok).then_some(out)
    })
    .await;
    assert!(out.contains("agentiam refused Deployment"), "{out}");

    // Every decision is recorded, refusals as denied, with what was wrong; the controller's Pods too.
    let recs = wait_records(&op, "workload.admit records", |r| {
        admits(r, "legacy").len() >= 2
            && r.iter().any(|x| x["action"] == "workload.admit" && x["object"]["kind"] == "Pod")
    })
    .await;
    let refused = admits(&recs, "literal");
    assert!(!refused.is_empty() && refused.iter().all(|r| r["outcome"] == "denied"), "{refused:?}");
    let r = refused[0];
    assert_eq!(r["object"]["apiVersion"], "apps/v1");
    assert_eq!(r["details"]["mode"], "enforce");
    assert_eq!(r["details"]["operation"], "CREATE");
    assert_eq!(r["details"]["signatures"], "llm-provider-key");
    assert!(r["details"]["problems"].as_str().unwrap().contains("names no registered Agent"), "{r}");
    assert!(r["actor"].as_str().unwrap().starts_with("user:"), "{r}");
    let ok: Vec<&Value> =
        admits(&recs, "nightly").into_iter().filter(|r| r["details"]["operation"] == "CREATE").collect();
    assert!(ok.len() == 1 && ok[0]["outcome"] == "success", "{ok:?}");
    assert!(ok[0]["reason"].as_str().unwrap().contains("the agent is in order"), "{ok:?}");
    let pod = recs.iter().find(|x| x["action"] == "workload.admit" && x["object"]["kind"] == "Pod").unwrap();
    assert_eq!(pod["outcome"], "success");
    assert_eq!(pod["details"]["byWorkloadController"], "true", "{pod}");
    assert!(admits(&recs, "dry").is_empty(), "a dry run has no side effects");
    assert!(
        admits(&recs, "web").is_empty() && admits(&recs, "db").is_empty(),
        "ordinary workloads are not recorded"
    );
    let legacy_updates = admits(&recs, "legacy");
    assert!(
        legacy_updates.iter().any(|r| r["outcome"] == "success" && r["details"]["operation"] == "UPDATE")
    );
    assert!(legacy_updates.iter().any(|r| r["outcome"] == "denied"));
}

#[tokio::test]
async fn audit_and_warn_admit_and_record_and_only_enforce_fails_closed_when_the_operator_is_down() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "wl-modes").await;
    let mut op = Operator::start(&env, &ns.name, &[]);

    label(&env, &ns, Some("audit"));
    let audited = deployment("audited", &containers("python:3.12", &literal_key("OPENAI_API_KEY")));
    let (ok, out) = try_apply(&ns, &audited);
    assert!(ok && !out.contains("Warning"), "audit admits silently: {out}");
    wait_records(&op, "the audit mode record", |r| !admits(r, "audited").is_empty()).await;

    label(&env, &ns, Some("warn"));
    let warned = job("warned", &containers("mcp/github:latest", &literal_key("MISTRAL_API_KEY")));
    let out = wait_for("the warn webhook to warn", WAIT, || async {
        let name = format!("warned-{}", uuid::Uuid::new_v4().simple().to_string().get(..6)?.to_owned());
        let (ok, out) = try_apply(&ns, &warned.replace("name: warned", &format!("name: {name}")));
        assert!(ok, "warn mode admits: {out}");
        out.contains("Warning: agentiam:").then_some(out)
    })
    .await;
    assert!(out.contains("it names no registered Agent"), "{out}");
    assert!(out.contains("container main gets MISTRAL_API_KEY as a literal value"), "{out}");

    // No label (or off): not judged, not recorded.
    label(&env, &ns, Some("off"));
    let off = deployment("unjudged", &containers("python:3.12", &literal_key("OPENAI_API_KEY")));
    wait_for("the off label to stop judging", WAIT, || async {
        let _ =
            env.kubectl(&["delete", "deployment", "unjudged", "-n", &ns.name, "--ignore-not-found"], None);
        let (ok, out) = try_apply(&ns, &off);
        assert!(ok, "{out}");
        (!out.contains("Warning")).then_some(())
    })
    .await;

    let recs = records(&op.audit_log());
    // The Deployment controller's own updates of it (its revision annotation) are judged and recorded too.
    let audit: Vec<&Value> =
        admits(&recs, "audited").into_iter().filter(|r| r["details"]["operation"] == "CREATE").collect();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["outcome"], "success");
    assert_eq!(audit[0]["details"]["mode"], "audit");
    assert!(
        audit[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("admitted in audit mode: it names no registered Agent")
    );
    assert!(recs.iter().any(|r| r["action"] == "workload.admit" && r["details"]["mode"] == "warn"));

    // The operator down: audit and warn admit (failurePolicy Ignore), enforce refuses (Fail).
    op.stop();
    label(&env, &ns, Some("warn"));
    let while_down = deployment("while-down", &containers("python:3.12", &literal_key("OPENAI_API_KEY")));
    let (ok, out) = try_apply(&ns, &while_down);
    assert!(ok, "warn mode never refuses, even with the operator down: {out}");
    label(&env, &ns, Some("enforce"));
    let plain = deployment("plain", &containers("nginx:1.27", ""));
    let out = wait_for("enforce to fail closed", WAIT, || async {
        let (ok, out) = try_apply(&ns, &plain);
        (!ok).then_some(out)
    })
    .await;
    assert!(
        out.contains("failed calling webhook") && out.contains("workloads-enforce.agentiam.dev"),
        "{out}"
    );
}
