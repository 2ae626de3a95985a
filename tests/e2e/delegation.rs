//! Delegations on the real API server: a person with the verb `delegate` grants an agent a scoped,
//! time-bound root; the agent passes on only subsets; admission refuses every widening and the Delegation
//! controller re-checks each chain from fresh API state (accept/reject pairs).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Env, Operator, TestNs, WAIT, basic_spec, decide, records, secret_value, text, wait_for, wait_phase,
    wait_records,
};
use crate::require_cluster;

/// RBAC in the namespace: `subject` may create and read Delegations, and with `delegate` also holds the
/// verb on the Agents named in `agents` (all when empty).
pub(crate) fn grant(env: &Env, ns: &TestNs, role: &str, subject: &str, delegate: bool, agents: &[&str]) {
    let names =
        if agents.is_empty() { String::new() } else { format!(", resourceNames: [{}]", agents.join(", ")) };
    let delegate_rule = if delegate {
        format!("\n  - {{apiGroups: [agentiam.dev], resources: [agents], verbs: [delegate]{names}}}")
    } else {
        String::new()
    };
    let yaml = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {role}}}
rules:
  - {{apiGroups: [agentiam.dev], resources: [delegations, agents], verbs: [get, list, watch, create, delete]}}{delegate_rule}
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

pub(crate) fn user(name: &str) -> String {
    format!("{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {name}}}")
}

pub(crate) fn delegation(
    name: &str,
    agent: &str,
    parent: Option<&str>,
    scopes: &[&str],
    ttl: &str,
) -> String {
    let mut spec = json!({"agentRef": {"name": agent}, "scopes": scopes, "task": "answer ticket 4711"});
    if let Some(p) = parent {
        spec["parentRef"] = json!({"name": p});
    }
    if ttl.ends_with('Z') {
        spec["expiresAt"] = json!(ttl);
    } else {
        spec["ttl"] = json!(ttl);
    }
    json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Delegation", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

/// `object` (a Delegation as JSON text) with `spec.<field>` set to `value`.
fn with_spec(object: &str, field: &str, value: Value) -> String {
    let mut d: Value = serde_json::from_str(object).unwrap_or(Value::Null);
    d["spec"][field] = value;
    d.to_string()
}

/// `kubectl create` of `object` as `who` (kubectl flags such as `--as=...`).
pub(crate) fn create_as(env: &Env, ns: &TestNs, who: &[&str], object: &str) -> std::process::Output {
    let mut args: Vec<&str> = who.to_vec();
    args.extend(["create", "-n", &ns.name, "-f", "-"]);
    env.kubectl(&args, Some(object))
}

pub(crate) fn get(env: &Env, ns: &TestNs, name: &str) -> Value {
    let out = env.kubectl(&["get", "delegation", name, "-n", &ns.name, "-o", "json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

pub(crate) async fn wait_delegation(env: &Env, ns: &TestNs, name: &str, phase: &str) -> Value {
    wait_for(&format!("delegation {name} {phase}"), WAIT, || async {
        let d = get(env, ns, name);
        (d["status"]["phase"] == phase).then_some(d)
    })
    .await
}

async fn agent_with_sa(ns: &TestNs, name: &str, sa: &str) {
    let mut spec = basic_spec();
    spec["workload"] = json!({"serviceAccountName": sa});
    ns.create_agent(name, spec).await;
    wait_phase(&ns.api(), name, "Active").await;
}

/// RFC 3339, `secs` from now.
fn in_secs(secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[tokio::test]
async fn a_person_grants_an_agent_passes_on_only_subsets_and_admission_refuses_every_widening() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "dlg").await;
    let op = Operator::start(&env, &ns.name, &[]);
    agent_with_sa(&ns, "triage", "triage-sa").await;
    agent_with_sa(&ns, "refunds", "refunds-sa").await;
    grant(&env, &ns, "alice", &user("alice@example.com"), true, &[]);
    grant(&env, &ns, "bob", &user("bob@example.com"), false, &[]);
    for sa in ["triage-sa", "refunds-sa"] {
        let subject = format!("{{kind: ServiceAccount, name: {sa}, namespace: {}}}", ns.name);
        grant(&env, &ns, sa, &subject, false, &[]);
    }
    let alice = ["--as=alice@example.com", "--as-group=support"];
    let bob = ["--as=bob@example.com"];
    let as_triage = format!("--as=system:serviceaccount:{}:triage-sa", ns.name);
    let as_refunds = format!("--as=system:serviceaccount:{}:refunds-sa", ns.name);
    let scopes = ["read@crm:contacts/*", "refund@pay:orders/**"];

    // Root: refused without the verb, and from an agent's ServiceAccount; admitted for alice.
    let root = delegation("root", "triage", None, &scopes, "2h");
    let out = create_as(&env, &ns, &bob, &root);
    assert!(!out.status.success() && text(&out).contains(r#"the RBAC verb "delegate""#), "{}", text(&out));
    let out = create_as(&env, &ns, &[&as_triage], &root);
    assert!(
        !out.status.success() && text(&out).contains("a root Delegation is a human's decision"),
        "{}",
        text(&out)
    );
    // Scopes over two systems name no one audience for its tokens: refused until spec.audience says.
    let out = create_as(&env, &ns, &alice, &root);
    assert!(!out.status.success() && text(&out).contains("spec.audience"), "{}", text(&out));
    let root = with_spec(&root, "audience", json!("crm"));
    let out = create_as(&env, &ns, &alice, &root);
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_delegation(&env, &ns, "root", "Active").await;
    assert_eq!(d["status"]["audience"], "crm", "{d}");
    assert_eq!(d["status"]["grantor"]["username"], "alice@example.com", "{d}");
    assert!(
        d["status"]["grantor"]["groups"].as_array().is_some_and(|g| g.contains(&json!("support"))),
        "{d}"
    );
    let chain = d["status"]["chain"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        (chain[0]["kind"].as_str(), chain[0]["name"].as_str()),
        (Some("User"), Some("alice@example.com"))
    );
    assert_eq!((chain[1]["kind"].as_str(), chain[1]["name"].as_str()), (Some("Agent"), Some("triage")));

    // Sub-delegation by the grantee: narrower is admitted and comes into force.
    let child = delegation("child", "refunds", Some("root"), &["refund@pay:orders/eu/*"], "1h");
    let out = create_as(&env, &ns, &[&as_triage], &child);
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_delegation(&env, &ns, "child", "Active").await;
    let chain: Vec<&str> =
        d["status"]["chain"].as_array().into_iter().flatten().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(chain, ["alice@example.com", "triage", "refunds"], "the chain starts at the human: {d}");

    // Refused: every widening, a later end, another agent passing on what it does not hold.
    for (why, scopes, ttl) in [
        ("a superset", vec!["refund@pay:orders/**", "read@crm:contacts/*", "read@crm:leads/*"], "1h"),
        ("a disjoint scope", vec!["delete@crm:contacts/1"], "1h"),
        ("** where the parent has *", vec!["read@crm:contacts/**"], "1h"),
        ("a wider verb", vec!["*@crm:contacts/1"], "1h"),
        ("another case", vec!["read@CRM:contacts/1"], "1h"),
        ("a text prefix", vec!["read@crm:contacts/1/notes"], "1h"),
        ("a later end", vec!["read@crm:contacts/1"], "3h"),
    ] {
        let widening = delegation("wider", "refunds", Some("root"), &scopes, ttl);
        let out = create_as(&env, &ns, &[&as_triage], &widening);
        assert!(!out.status.success(), "{why} was admitted");
        assert!(text(&out).contains("more than its parent"), "{why}: {}", text(&out));
    }
    // A child never moves to another audience.
    let other = with_spec(
        &delegation("wider", "refunds", Some("root"), &["read@crm:contacts/1"], "1h"),
        "audience",
        json!("pay"),
    );
    let out = create_as(&env, &ns, &[&as_triage], &other);
    assert!(!out.status.success() && text(&out).contains("another audience"), "{}", text(&out));
    // Look-alike characters never reach the cover check: the scope is not canonical.
    let lookalike = delegation("wider", "refunds", Some("root"), &["read@crm:contacts\u{FF0F}1"], "1h");
    let out = create_as(&env, &ns, &[&as_triage], &lookalike);
    assert!(!out.status.success() && text(&out).contains("spec.scopes"), "{}", text(&out));
    let out = create_as(
        &env,
        &ns,
        &[&as_refunds],
        &delegation("stolen", "refunds", Some("root"), &["read@crm:contacts/1"], "1h"),
    );
    assert!(!out.status.success() && text(&out).contains("only the agent that holds"), "{}", text(&out));

    // The who-did-what records bind the grant to its grantee and parent by UID.
    let created: Vec<Value> = records(&op.audit_log())
        .into_iter()
        .filter(|r| {
            r["action"] == "admission.create"
                && r["object"]["kind"] == "Delegation"
                && r["outcome"] == "success"
        })
        .collect();
    let child_record = created.iter().find(|r| r["object"]["name"] == "child").expect("the child's record");
    assert_eq!(
        child_record["details"]["requester.username"],
        format!("system:serviceaccount:{}:triage-sa", ns.name)
    );
    assert!(child_record["details"]["parentUID"].as_str().is_some_and(|u| !u.is_empty()), "{child_record}");
    assert!(child_record["details"]["agentUID"].as_str().is_some_and(|u| !u.is_empty()), "{child_record}");
    let activated =
        records(&op.audit_log()).into_iter().filter(|r| r["action"] == "delegation.activate").count();
    assert_eq!(activated, 2, "each transition is recorded once");

    // A forged grantor in status is ignored: the controller writes what admission recorded.
    let forged =
        json!({"status": {"grantor": {"username": "ceo@example.com"}, "phase": "Active"}}).to_string();
    let out = env.kubectl(
        &[
            "patch",
            "delegation",
            "child",
            "-n",
            &ns.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &forged,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the controller to restore the recorded grantor", WAIT, || async {
        let d = get(&env, &ns, "child");
        (d["status"]["grantor"]["username"] == "alice@example.com").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_chain_is_re_checked_from_fresh_state_and_ends_below_a_revoked_replaced_or_expired_parent() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "dlgchain").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    agent_with_sa(&ns, "a", "a-sa").await;
    agent_with_sa(&ns, "b", "b-sa").await;
    grant(&env, &ns, "alice", &user("alice@example.com"), true, &["a", "b"]);
    let alice = ["--as=alice@example.com"];

    // Depth: a root that allows one level; the second level is refused.
    let mut root =
        serde_json::from_str::<Value>(&delegation("shallow", "a", None, &["read@x:**"], "2h")).unwrap();
    root["spec"]["maxDepth"] = json!(1);
    assert!(create_as(&env, &ns, &alice, &root.to_string()).status.success());
    wait_delegation(&env, &ns, "shallow", "Active").await;
    let out = create_as(&env, &ns, &alice, &delegation("level1", "b", Some("shallow"), &["read@x:**"], "1h"));
    assert!(out.status.success(), "{}", text(&out));
    wait_delegation(&env, &ns, "level1", "Active").await;
    let out = create_as(&env, &ns, &alice, &delegation("level2", "a", Some("level1"), &["read@x:**"], "1h"));
    assert!(!out.status.success() && text(&out).contains("maxDepth"), "{}", text(&out));

    // A parent revoked after its child was admitted: both end for good.
    let out = create_as(&env, &ns, &alice, &delegation("p1", "a", None, &["read@x:**"], "2h"));
    assert!(out.status.success(), "{}", text(&out));
    wait_delegation(&env, &ns, "p1", "Active").await;
    assert!(
        create_as(&env, &ns, &alice, &delegation("c1", "b", Some("p1"), &["read@x:y/*"], "1h"))
            .status
            .success()
    );
    wait_delegation(&env, &ns, "c1", "Active").await;
    let revocation = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop-p1"},
        "spec": {"target": {"delegationRef": {"name": "p1"}}, "mode": "Revoke", "reason": "incident 17"}});
    let out = env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&revocation.to_string()));
    assert!(out.status.success(), "{}", text(&out));
    wait_delegation(&env, &ns, "p1", "Revoked").await;
    wait_delegation(&env, &ns, "c1", "Revoked").await;
    let out = env.kubectl(&["delete", "revocation", "stop-p1", "-n", &ns.name], None);
    assert!(out.status.success(), "{}", text(&out));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&env, &ns, "c1")["status"]["phase"], "Revoked", "a revoked delegation stays revoked");

    // A parent deleted and created again under the same name is another parent: the child is Invalid.
    assert!(
        create_as(&env, &ns, &alice, &delegation("p2", "a", None, &["read@x:**"], "2h")).status.success()
    );
    wait_delegation(&env, &ns, "p2", "Active").await;
    assert!(
        create_as(&env, &ns, &alice, &delegation("c2", "b", Some("p2"), &["read@x:*"], "1h"))
            .status
            .success()
    );
    wait_delegation(&env, &ns, "c2", "Active").await;
    assert!(env.kubectl(&["delete", "delegation", "p2", "-n", &ns.name], None).status.success());
    assert!(
        create_as(&env, &ns, &alice, &delegation("p2", "a", None, &["read@x:**"], "2h")).status.success()
    );
    let d = wait_delegation(&env, &ns, "c2", "Invalid").await;
    let reason = d["status"]["conditions"][0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(["ParentMissing", "ParentReplaced"].contains(&reason.as_str()), "{d}");
    wait_delegation(&env, &ns, "p2", "Active").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get(&env, &ns, "c2")["status"]["phase"],
        "Invalid",
        "the new parent does not revive the child"
    );

    // A root's expiry ends every descendant.
    let end = in_secs(8);
    assert!(
        create_as(&env, &ns, &alice, &delegation("brief", "a", None, &["read@x:**"], &end)).status.success()
    );
    wait_delegation(&env, &ns, "brief", "Active").await;
    let out =
        create_as(&env, &ns, &alice, &delegation("brief-child", "b", Some("brief"), &["read@x:*"], &end));
    assert!(out.status.success(), "{}", text(&out));
    wait_delegation(&env, &ns, "brief-child", "Active").await;
    let ends: jiff::Timestamp = end.parse().unwrap();
    tokio::time::sleep(ends.duration_since(jiff::Timestamp::now()).unsigned_abs()).await;
    let started = std::time::Instant::now();
    wait_delegation(&env, &ns, "brief-child", "Expired").await;
    wait_delegation(&env, &ns, "brief", "Expired").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "expiry reached the chain in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn kubectl_agentiam_delegate_grants_as_you_and_the_tree_shows_the_chain_from_the_human() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "dlgcli").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    agent_with_sa(&ns, "triage", "triage-sa").await;
    agent_with_sa(&ns, "refunds", "refunds-sa").await;
    // The kubeconfig's user is "admin" (system:masters: every verb, delegate included).
    let out = env.plugin(&[
        "delegate",
        "triage",
        "--scope",
        "refund@pay:orders/**",
        "--task",
        "weekend refunds",
        "--ttl",
        "2h",
        "--name",
        "shift",
        "-n",
        &ns.name,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("delegation.agentiam.dev/shift created") && t.contains("phase: Active"), "{t}");
    let out = env.plugin(&[
        "delegate",
        "refunds",
        "--parent",
        "shift",
        "--scope",
        "refund@pay:orders/eu/*",
        "--task",
        "EU refunds",
        "--ttl",
        "1h",
        "--name",
        "eu",
        "-n",
        &ns.name,
    ]);
    assert!(out.status.success() && text(&out).contains("phase: Active"), "{}", text(&out));
    // A widening is refused with admission's reason; a malformed scope before the server sees it.
    let out = env.plugin(&[
        "delegate",
        "refunds",
        "--parent",
        "shift",
        "--scope",
        "refund@pay:**",
        "--task",
        "more",
        "--ttl",
        "1h",
        "-n",
        &ns.name,
    ]);
    assert!(!out.status.success() && text(&out).contains("more than its parent"), "{}", text(&out));
    let out = env.plugin(&[
        "delegate",
        "refunds",
        "--scope",
        "pay:refund",
        "--task",
        "x",
        "--ttl",
        "1h",
        "-n",
        &ns.name,
    ]);
    assert!(!out.status.success() && text(&out).contains("<action>@<resource pattern>"), "{}", text(&out));

    let out = env.plugin(&["get", "delegations", "--tree", "-n", &ns.name]);
    assert!(out.status.success(), "{}", text(&out));
    let tree = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.first(), Some(&"admin"), "{tree}");
    assert!(lines.get(1).is_some_and(|l| l.contains("shift -> triage Active")), "{tree}");
    assert!(lines.get(2).is_some_and(|l| l.starts_with("    └── eu -> refunds Active")), "{tree}");
    let out = env.plugin(&["get", "delegations", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.starts_with("NAME") && table.contains("admin"), "{table}");
}

#[tokio::test]
async fn decisions_on_delegations_survive_a_crash_and_a_final_phase_stays_final_after_a_restart() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "dlgcrash").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    agent_with_sa(&ns, "a", "a-sa").await;
    agent_with_sa(&ns, "b", "b-sa").await;
    grant(&env, &ns, "alice", &user("alice@example.com"), true, &[]);
    let alice = ["--as=alice@example.com"];
    assert!(
        create_as(&env, &ns, &alice, &delegation("root", "a", None, &["read@x:**"], "2h")).status.success()
    );
    wait_delegation(&env, &ns, "root", "Active").await;
    assert!(
        create_as(&env, &ns, &alice, &delegation("child", "b", Some("root"), &["read@x:*"], "1h"))
            .status
            .success()
    );
    wait_delegation(&env, &ns, "child", "Active").await;
    let transitions = |op: &Operator| {
        records(&op.audit_log())
            .into_iter()
            .filter(|r| {
                r["action"].as_str().is_some_and(|a| a.starts_with("delegation.") && a != "delegation.issue")
            })
            .map(|r| format!("{} {}", r["action"].as_str().unwrap_or_default(), r["object"]["name"]))
            .collect::<Vec<_>>()
    };
    let issued = |op: &Operator| {
        records(&op.audit_log())
            .into_iter()
            .filter(|r| r["action"] == "delegation.issue" && r["kind"] == "intent")
            .map(|r| r["details"]["jti"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let before = transitions(&op);
    assert_eq!(before.len(), 2, "{before:?}");
    let tokens = wait_for("a token for each", WAIT, || async {
        let t = issued(&op);
        (t.len() == 2).then_some(t)
    })
    .await;

    // Killed (no graceful stop) and started again: the ledger is rebuilt from the log, so nothing is
    // recorded twice and the grantor still comes from the admission record.
    op.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(transitions(&op), before, "a restart records no transition again");
    assert_eq!(issued(&op), tokens, "a restart keeps the tokens the Secrets hold: none is minted again");
    assert_eq!(get(&env, &ns, "child")["status"]["grantor"]["username"], "alice@example.com");

    // Revoked, then the Revocation deleted while the operator is down: after the restart both stay Revoked.
    let revocation = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop"},
        "spec": {"target": {"delegationRef": {"name": "root"}}, "mode": "Revoke", "reason": "incident 18"}});
    assert!(
        env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&revocation.to_string())).status.success()
    );
    wait_delegation(&env, &ns, "child", "Revoked").await;
    op.kill();
    // The webhooks fail closed while the operator is down, so the Revocation can only go once their
    // configuration does (the operator applies it again as it starts).
    let vwc = format!("agentiam-{}", ns.name);
    assert!(env.kubectl(&["delete", "validatingwebhookconfiguration", &vwc], None).status.success());
    // Not waited for: its finalizer is removed by the operator, which is down.
    let out = env.kubectl(&["delete", "revocation", "stop", "-n", &ns.name, "--wait=false"], None);
    assert!(out.status.success(), "{}", text(&out));
    // A forged status while it is down says Active again.
    let forged = json!({"status": {"phase": "Active"}}).to_string();
    let out = env.kubectl(
        &[
            "patch",
            "delegation",
            "child",
            "-n",
            &ns.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &forged,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    op.restart();
    wait_delegation(&env, &ns, "child", "Revoked").await;
    wait_delegation(&env, &ns, "root", "Revoked").await;
    let after = transitions(&op);
    assert_eq!(after.len(), 4, "one revoke each, nothing else: {after:?}");
}

/// An Agent in `ns` whose pods run as `sa`, with identity tokens for `crm`, Active.
async fn crm_agent(ns: &TestNs, name: &str, sa: &str) {
    let mut spec = basic_spec();
    spec["workload"] = json!({"serviceAccountName": sa});
    spec["credentials"] = json!({"audiences": ["crm"]});
    ns.create_agent(name, spec).await;
    wait_phase(&ns.api(), name, "Active").await;
}

/// A JWT's header and claims, decoded (display only).
fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let part = |i: usize| {
        let seg = token.split('.').nth(i).unwrap_or_default();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg).unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (part(0), part(1))
}

/// Polls the decision until it is Deny; how long after `since` that was, and why.
async fn denied_after(
    op: &Operator,
    token: &str,
    action: &str,
    resource: &str,
    since: Instant,
) -> (Duration, String) {
    wait_for("the decision to turn Deny", WAIT, || async {
        let d = decide(op, token, action, resource, json!({})).await;
        let why = d["reason"].as_str().unwrap_or_default().to_owned();
        (d["decision"] == "Deny").then(|| (since.elapsed(), why))
    })
    .await
}

#[tokio::test]
async fn an_active_delegation_yields_a_token_that_allows_only_inside_its_chain_and_stops_when_the_chain_ends()
{
    let env = require_cluster!();
    let ns = TestNs::new(&env, "dlgtoken").await;
    let op = Operator::start(&env, &ns.name, &[]);
    crm_agent(&ns, "triage", "triage-sa").await;
    crm_agent(&ns, "refunds", "refunds-sa").await;
    let policy = json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "p"},
        "spec": {"agents": {"names": ["triage", "refunds"]}, "rules": [
            {"name": "read", "effect": "Allow", "actions": ["read"], "resources": ["crm:contacts/*"]},
            {"name": "refund-for-a-human", "effect": "Allow", "actions": ["refund"], "resources": ["crm:orders/**"],
             "conditions": {"delegationScope": "refund@crm:orders/**"}},
        ]},
    });
    let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&policy.to_string()));
    assert!(out.status.success(), "{}", text(&out));
    grant(&env, &ns, "alice", &user("alice@example.com"), true, &[]);
    let subject = format!("{{kind: ServiceAccount, name: triage-sa, namespace: {}}}", ns.name);
    grant(&env, &ns, "triage-sa", &subject, false, &[]);
    let alice = ["--as=alice@example.com"];
    let as_triage = format!("--as=system:serviceaccount:{}:triage-sa", ns.name);
    let identity =
        wait_for("triage's identity token", WAIT, || secret_value(&ns, "triage-credentials", "token-crm"))
            .await;

    // The root ends in 40 s: its token lives no longer, and every descendant ends with it.
    let end_at = in_secs(40);
    let root = delegation("root", "triage", None, &["read@crm:contacts/1", "refund@crm:orders/**"], &end_at);
    assert!(create_as(&env, &ns, &alice, &root).status.success());
    wait_delegation(&env, &ns, "root", "Active").await;
    let d = wait_for("the root's token in status", WAIT, || async {
        let d = get(&env, &ns, "root");
        d["status"]["tokenSecretName"].is_string().then_some(d)
    })
    .await;
    assert_eq!(
        (d["status"]["tokenSecretName"].as_str(), d["status"]["tokenKey"].as_str()),
        (Some("triage-delegations"), Some("delegation-root")),
        "{d}"
    );
    let token =
        wait_for("the root's token", WAIT, || secret_value(&ns, "triage-delegations", "delegation-root"))
            .await;
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["typ"], "agentiam-delegation+jwt");
    assert_eq!(claims["sub"], "alice@example.com", "the human, never the agent: {claims}");
    let triage_id = format!("spiffe://cluster.local/ns/{}/agent/triage", ns.name);
    assert_eq!((&claims["client_id"], &claims["act"]["sub"]), (&json!(triage_id), &json!(triage_id)));
    assert_eq!(claims["aud"], "crm");
    let end: jiff::Timestamp = d["status"]["expiresAt"].as_str().unwrap_or_default().parse().unwrap();
    assert!(claims["exp"].as_i64() <= Some(end.as_second()), "the token outlives its chain: {claims}");
    assert!(claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0) <= 3600);

    // Accept/reject pairs: inside the delegation and the policies; outside what alice granted; a rule that
    // needs a delegation; each kind of token where the other is required.
    let ok = decide(&op, &token, "read", "crm:contacts/1", json!({})).await;
    assert_eq!(
        (ok["decision"].as_str(), ok["onBehalfOf"].as_str()),
        (Some("Allow"), Some("alice@example.com")),
        "{ok}"
    );
    assert_eq!(decide(&op, &identity, "read", "crm:contacts/2", json!({})).await["decision"], "Allow");
    let out = decide(&op, &token, "read", "crm:contacts/2", json!({})).await;
    assert!(
        out["decision"] == "Deny"
            && out["reason"].as_str().unwrap_or_default().contains("outside every scope"),
        "{out}"
    );
    assert_eq!(decide(&op, &identity, "refund", "crm:orders/7", json!({})).await["decision"], "Deny");
    assert_eq!(decide(&op, &token, "refund", "crm:orders/7", json!({})).await["decision"], "Allow");
    assert_eq!(
        decide(&op, &identity, "read", "crm:contacts/1", json!({"tokenType": "delegated"})).await["decision"],
        "Deny"
    );
    assert_eq!(
        decide(&op, &token, "read", "crm:contacts/1", json!({"tokenType": "identity"})).await["decision"],
        "Deny"
    );

    // triage passes on a subset to refunds: its token carries the whole chain, human first.
    let child = delegation("child", "refunds", Some("root"), &["refund@crm:orders/eu/*"], &end_at);
    let out = create_as(&env, &ns, &[&as_triage], &child);
    assert!(out.status.success(), "{}", text(&out));
    wait_delegation(&env, &ns, "child", "Active").await;
    let child_token =
        wait_for("the child's token", WAIT, || secret_value(&ns, "refunds-delegations", "delegation-child"))
            .await;
    let (_, c) = jwt_parts(&child_token);
    assert_eq!(c["act"]["act"]["sub"], json!(triage_id), "the agent that delegated is nested: {c}");
    let ok = decide(&op, &child_token, "refund", "crm:orders/eu/1", json!({})).await;
    let chain: Vec<&str> =
        ok["chain"].as_array().into_iter().flatten().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(
        (ok["decision"].as_str(), chain),
        (Some("Allow"), vec!["alice@example.com", "triage", "refunds"]),
        "{ok}"
    );
    assert_eq!(decide(&op, &child_token, "refund", "crm:orders/us/1", json!({})).await["decision"], "Deny");
    let chain = json!("User:alice@example.com > Agent:triage > Agent:refunds");
    wait_records(&op, "the decision's record names the chain", |recs| {
        recs.iter().any(|r| r["action"] == "authz.decide" && r["details"]["chain"] == chain)
    })
    .await;

    // A second root, revoked: its token stops within a second, measured from the Revocation's creation.
    let other = delegation("other", "triage", None, &["read@crm:contacts/1"], "1h");
    assert!(create_as(&env, &ns, &alice, &other).status.success());
    wait_delegation(&env, &ns, "other", "Active").await;
    let other_token =
        wait_for("the token", WAIT, || secret_value(&ns, "triage-delegations", "delegation-other")).await;
    assert_eq!(decide(&op, &other_token, "read", "crm:contacts/1", json!({})).await["decision"], "Allow");
    let revocation = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop"},
        "spec": {"target": {"delegationRef": {"name": "other"}}, "mode": "Revoke", "reason": "incident 19"}});
    let since = Instant::now();
    assert!(
        env.kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&revocation.to_string())).status.success()
    );
    let (took, why) = denied_after(&op, &other_token, "read", "crm:contacts/1", since).await;
    eprintln!("delegated token refused {took:?} after the Revocation was created: {why}");
    assert!(took < Duration::from_secs(1) && why.contains("is Revoked"), "{took:?} {why}");
    // The root's own token still works: the Revocation targets one Delegation.
    assert_eq!(decide(&op, &token, "read", "crm:contacts/1", json!({})).await["decision"], "Allow");

    // The root expires: the child's token stops within a second of that moment (not at its own exp).
    let wait = Duration::try_from(end.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    tokio::time::sleep(wait).await;
    let since = Instant::now();
    let (took, why) = denied_after(&op, &child_token, "refund", "crm:orders/eu/1", since).await;
    eprintln!("child's delegated token refused {took:?} after the root's expiry: {why}");
    assert!(
        took < Duration::from_secs(1) && (why.contains("is Expired") || why.contains("has expired")),
        "{took:?} {why}"
    );
    assert_eq!(decide(&op, &token, "read", "crm:contacts/1", json!({})).await["decision"], "Deny");
    // And the tokens leave the Secrets.
    wait_for("the tokens withdrawn", WAIT, || async {
        let gone = secret_value(&ns, "refunds-delegations", "delegation-child").await.is_none()
            && secret_value(&ns, "triage-delegations", "delegation-root").await.is_none();
        gone.then_some(())
    })
    .await;
    assert_eq!(get(&env, &ns, "child")["status"]["phase"], "Expired");
}
