//! The validating webhooks of the agentiam kinds on the real API server: every admitted change is in the
//! audit log under the name of whoever made it, dry runs write nothing, and an agent's own ServiceAccount
//! may not change IAM objects while a pipeline with the same RBAC may (accept/reject pairs).

use serde_json::Value;

use crate::harness::{Env, Operator, TestNs, WAIT, basic_spec, records, text, wait_for, wait_phase};
use crate::require_cluster;

/// RBAC for `subject` (a User or ServiceAccount) to do everything with agentiam objects in the namespace.
fn grant(env: &Env, ns: &TestNs, role: &str, subject: &str) {
    let yaml = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {role}}}
rules:
  - apiGroups: ["agentiam.dev"]
    resources: ["agents", "agentpolicies", "delegations", "revocations"]
    verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {role}}}
subjects: [{subject}]
"#
    );
    let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", text(&out));
}

/// kubectl in `ns`, impersonating `who`.
fn kubectl_as(
    env: &Env,
    ns: &TestNs,
    who: &[&str],
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut all: Vec<&str> = who.to_vec();
    all.extend(["-n", &ns.name]);
    all.extend(args);
    env.kubectl(&all, stdin)
}

fn admissions(op: &Operator, name: &str) -> Vec<Value> {
    records(&op.audit_log())
        .into_iter()
        .filter(|r| {
            r["action"].as_str().is_some_and(|a| a.starts_with("admission.")) && r["object"]["name"] == name
        })
        .collect()
}

const AGENT: &str = r#"apiVersion: agentiam.dev/v1alpha1
kind: Agent
metadata: {name: helper}
spec:
  owner: {kind: User, name: alice}
  purpose: answers tickets
"#;

#[tokio::test]
async fn the_audit_trace_names_the_human_who_changed_an_agent_and_dry_runs_write_nothing() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "who").await;
    let op = Operator::start(&env, &ns.name, &[]);
    grant(&env, &ns, "editors", "{kind: User, apiGroup: rbac.authorization.k8s.io, name: alice@example.com}");
    let alice = ["--as=alice@example.com", "--as-group=ticket-team"];

    let out = kubectl_as(&env, &ns, &alice, &["apply", "-f", "-"], Some(AGENT));
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&ns.api(), "helper", "Active").await;
    let suspend = r#"{"spec":{"lifecycle":{"desiredState":"Suspended"}}}"#;
    // A dry run is admitted and recorded nowhere.
    let before = admissions(&op, "helper").len();
    let out = kubectl_as(
        &env,
        &ns,
        &alice,
        &["patch", "agent", "helper", "--type=merge", "--dry-run=server", "-p", suspend],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out =
        kubectl_as(&env, &ns, &alice, &["patch", "agent", "helper", "--type=merge", "-p", suspend], None);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&ns.api(), "helper", "Suspended").await;

    let recs = admissions(&op, "helper");
    let by_alice: Vec<&Value> = recs.iter().filter(|r| r["actor"] == "user:alice@example.com").collect();
    assert_eq!(by_alice.len(), 2, "alice's create and her one real patch, not the dry run: {recs:#?}");
    assert!(recs.len() > before, "{recs:#?}");
    let (create, update) = (by_alice[0], by_alice[1]);
    assert_eq!(create["action"], "admission.create");
    assert_eq!(update["action"], "admission.update");
    assert_eq!(update["details"]["requester.username"], "alice@example.com");
    assert!(update["details"]["requester.groups"].as_str().unwrap().contains("ticket-team"), "{update}");
    assert!(update["details"]["specChanges"].as_str().unwrap().contains("Suspended"), "{update}");
    let uid = ns.api::<agentiam::api::Agent>().get("helper").await.unwrap().metadata.uid.unwrap();
    assert_eq!(update["object"]["uid"], uid.as_str(), "bound to the object's UID");
    assert!(create["object"]["uid"] == uid.as_str(), "the UID is known at create: {create}");
    // Never a token or userInfo.extra.
    let line = serde_json::to_string(&recs).unwrap();
    assert!(!line.contains("extra") && !line.contains("eyJ"), "{line}");

    // And `kubectl agentiam audit trace` answers "who suspended this agent" beside the operator's records.
    let log = op.audit_log();
    let out = env.plugin(&["audit", "trace", "helper", "-n", &ns.name, "--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    let line = t
        .lines()
        .find(|l| l.contains("admission.update") && l.contains("Suspended"))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(line.contains("user:alice@example.com"), "{line}");
    assert!(t.lines().any(|l| l.contains("agent.suspend")), "{t}");

    // A policy edit is traced the same way (--kind).
    let policy = r#"apiVersion: agentiam.dev/v1alpha1
kind: AgentPolicy
metadata: {name: reads}
spec:
  agents: {names: [helper]}
  rules: [{name: read, effect: Allow, actions: [read], resources: ["crm:**"]}]
"#;
    let out = kubectl_as(&env, &ns, &alice, &["apply", "-f", "-"], Some(policy));
    assert!(out.status.success(), "{}", text(&out));
    let out = env.plugin(&[
        "audit",
        "trace",
        "reads",
        "--kind",
        "agentpolicy",
        "-n",
        &ns.name,
        "--log",
        log.to_str().unwrap(),
    ]);
    assert!(
        text(&out).contains("user:alice@example.com") && text(&out).contains("admission.create"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn an_agents_own_service_account_may_not_change_iam_objects_but_a_pipeline_with_the_same_rights_may() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "self").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let mut spec = basic_spec();
    spec["workload"] = serde_json::json!({"serviceAccountName": "bot-sa"});
    ns.create_agent("bot", spec).await;
    wait_phase(&ns.api(), "bot", "Active").await;
    for sa in ["bot-sa", "ci"] {
        grant(
            &env,
            &ns,
            &format!("edit-{sa}"),
            &format!("{{kind: ServiceAccount, name: {sa}, namespace: {}}}", ns.name),
        );
    }
    let as_bot = format!("--as=system:serviceaccount:{}:bot-sa", ns.name);
    let as_ci = format!("--as=system:serviceaccount:{}:ci", ns.name);
    let raise = r#"{"spec":{"purpose":"anything it likes"}}"#;
    let policy = r#"apiVersion: agentiam.dev/v1alpha1
kind: AgentPolicy
metadata: {name: everything}
spec:
  agents: {names: [bot]}
  rules: [{name: all, effect: Allow, actions: ["*"], resources: ["**"]}]
"#;

    // Refused: the agent edits its own registration, grants itself a policy, or deletes itself.
    for (args, stdin) in [
        (vec!["patch", "agent", "bot", "--type=merge", "-p", raise], None),
        (vec!["apply", "-f", "-"], Some(policy)),
        (vec!["delete", "agent", "bot", "--wait=false"], None),
    ] {
        let out = kubectl_as(&env, &ns, &[&as_bot], &args, stdin);
        assert!(!out.status.success(), "{args:?} was admitted");
        let t = text(&out);
        assert!(
            t.contains("denied the request") && t.contains(&format!("runs agent {}/bot", ns.name)),
            "{t}"
        );
    }
    let denied: Vec<Value> = records(&op.audit_log())
        .into_iter()
        .filter(|r| {
            r["action"].as_str().is_some_and(|a| a.starts_with("admission.")) && r["outcome"] == "denied"
        })
        .collect();
    assert_eq!(denied.len(), 3, "every refused attempt is recorded: {denied:#?}");
    assert!(denied.iter().all(|r| r["actor"] == format!("user:system:serviceaccount:{}:bot-sa", ns.name)));

    // Admitted: the same changes by a ServiceAccount that runs no agent.
    let out = kubectl_as(&env, &ns, &[&as_ci], &["patch", "agent", "bot", "--type=merge", "-p", raise], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = kubectl_as(&env, &ns, &[&as_ci], &["apply", "-f", "-"], Some(policy));
    assert!(out.status.success(), "{}", text(&out));
    // A policy that cannot work (an unknown time zone, which no CRD rule can check) is admitted with a
    // warning that says why (the policy status says it too, and it denies everything until fixed).
    let broken = r#"apiVersion: agentiam.dev/v1alpha1
kind: AgentPolicy
metadata: {name: broken-zone}
spec:
  agents: {names: [bot]}
  rules:
    - name: office-hours
      effect: Allow
      actions: [read]
      resources: ["crm:x"]
      conditions: {timeWindows: [{start: "09:00", end: "17:00", timeZone: Mars/Olympus_Mons}]}
"#;
    let out = kubectl_as(&env, &ns, &[&as_ci], &["apply", "-f", "-"], Some(broken));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Warning") && text(&out).contains("denies everything"), "{}", text(&out));

    // The agent's workload moves to another ServiceAccount: bot-sa is no longer an agent, and is admitted.
    let out = kubectl_as(
        &env,
        &ns,
        &[&as_ci],
        &[
            "patch",
            "agent",
            "bot",
            "--type=merge",
            "-p",
            r#"{"spec":{"workload":{"serviceAccountName":"other"}}}"#,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the webhook to see the new workload", WAIT, || async {
        let out = kubectl_as(
            &env,
            &ns,
            &[&as_bot],
            &["patch", "agent", "bot", "--type=merge", "--dry-run=server", "-p", raise],
            None,
        );
        out.status.success().then_some(())
    })
    .await;
}

/// A tmpfs of `size` mounted on `dir` for as long as it lives (unmounted, lazily, when dropped).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// None when this machine cannot mount (not root): the caller skips, unless E2E_REQUIRED=1.
    /// Owned by the user the operator runs as (the chart's, for a pod).
    fn mount(env: &crate::harness::Env, dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let owner = match env.in_cluster {
            Some(_) => format!(",uid={0},gid={0}", crate::pod::POD_USER),
            None => String::new(),
        };
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700{owner}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Self(dir.to_owned()));
        }
        assert!(
            std::env::var("E2E_REQUIRED").ok().is_none_or(|v| v != "1"),
            "E2E_REQUIRED=1 but a tmpfs cannot be mounted here (the test needs root): {}",
            text(&out)
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {}", text(&out));
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the filesystem holding `dir` until it refuses to hold a byte more.
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).expect("create the filler");
    let block = [0u8; 4096];
    while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
    while f.write_all(&block[..1]).and_then(|()| f.sync_data()).is_ok() {}
}

#[tokio::test]
async fn a_change_that_cannot_be_recorded_is_refused_and_readiness_says_why() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "nolog").await;
    let mut op = Operator::unstarted(&env, &ns.name, &[]);
    let dir = op.audit_log().parent().expect("the audit directory").to_owned();
    // A real disk-full, not an injected error: the audit log lives on a small tmpfs that is then filled.
    let Some(_tmpfs) = Tmpfs::mount(&env, &dir, "1m") else { return };
    op.spawn_and_wait();
    let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(AGENT));
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&ns.api(), "helper", "Active").await;
    fill(&dir);

    // The first writes after the fill may still fit in the file's last page; within a few, one does not,
    // and from then on the log refuses every record, so every change is refused.
    let mut admitted = Vec::new();
    let refusal = (0..20)
        .find_map(|i| {
            let purpose = format!("answers tickets, take {i}");
            let patch = serde_json::json!({"spec": {"purpose": purpose}}).to_string();
            let out = env
                .kubectl(&["patch", "agent", "helper", "-n", &ns.name, "--type=merge", "-p", &patch], None);
            if out.status.success() {
                admitted.push(purpose);
                None
            } else {
                Some(text(&out))
            }
        })
        .expect("a change was refused once the disk was full");
    assert!(
        refusal.contains("could not record this change in its audit log") && refusal.contains("refused"),
        "{refusal}"
    );
    let again = env.kubectl(
        &["patch", "agent", "helper", "-n", &ns.name, "--type=merge", "-p", r#"{"spec":{"purpose":"x"}}"#],
        None,
    );
    assert!(!again.status.success(), "a failed log refuses every later change: {}", text(&again));

    // What was admitted is recorded, and nothing else changed.
    let agent: Value = serde_json::from_slice(
        &env.kubectl(&["get", "agent", "helper", "-n", &ns.name, "-o", "json"], None).stdout,
    )
    .expect("agent JSON");
    let last = admitted.last().map_or("answers tickets", String::as_str);
    assert_eq!(agent["spec"]["purpose"], last);
    let updates: Vec<String> = admissions(&op, "helper")
        .into_iter()
        .filter(|r| r["action"] == "admission.update")
        .map(|r| r["details"]["specChanges"].to_string())
        .collect();
    for purpose in &admitted {
        assert!(
            updates.iter().any(|c| c.contains(purpose.as_str())),
            "no record of {purpose:?}: {updates:?}"
        );
    }

    let (status, _, body) = crate::harness::http_get(&op.admin_addr(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the audit log failed"), "{body}");
    op.kill();
}
