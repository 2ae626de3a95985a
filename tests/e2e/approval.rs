//! Human approval on the real API server: a rule with `approval: required` turns a decision into an
//! ApprovalRequest; only a listed person with the RBAC verb `approve` (never the agent, never its owner
//! under four eyes) may answer; an approval allows exactly the approved request, as many times as it
//! covers; unanswered requests end Denied; a waiting decision returns when the answer lands; and a real
//! HTTP receiver gets the announcement.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{
    Env, Operator, TestNs, WAIT, basic_spec, decide, records, secret_value, text, wait_for, wait_phase,
};
use crate::require_cluster;

/// RBAC in the namespace for `subject`: read approval requests, and optionally patch them (`patch`) and
/// hold the verb `approve` (`approve`).
pub(crate) fn grant(env: &Env, ns: &TestNs, role: &str, subject: &str, patch: bool, approve: bool) {
    let mut verbs = vec!["get", "list", "watch"];
    if patch {
        verbs.extend(["patch", "update"]);
    }
    if approve {
        verbs.push("approve");
    }
    let yaml = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {role}}}
rules:
  - {{apiGroups: [agentiam.dev], resources: [approvalrequests], verbs: [{verbs}]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {role}}}
subjects: [{subject}]
"#,
        verbs = verbs.join(", ")
    );
    let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", text(&out));
}

pub(crate) fn user(name: &str) -> String {
    format!("{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {name}}}")
}

/// `kubectl patch` of the request's answer, as `who` (kubectl flags such as `--as=...`).
pub(crate) fn answer_as(
    env: &Env,
    ns: &TestNs,
    who: &[&str],
    id: &str,
    verdict: &str,
) -> std::process::Output {
    let patch =
        json!({"spec": {"decision": {"verdict": verdict, "reason": "checked the ticket"}}}).to_string();
    let mut args: Vec<&str> = who.to_vec();
    args.extend(["patch", "approvalrequest", id, "-n", &ns.name, "--type=merge", "-p", &patch]);
    env.kubectl(&args, None)
}

fn get(env: &Env, ns: &TestNs, id: &str) -> Value {
    let out = env.kubectl(&["get", "approvalrequest", id, "-n", &ns.name, "-o", "json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

async fn wait_request(env: &Env, ns: &TestNs, id: &str, phase: &str) -> Value {
    wait_for(&format!("approval request {id} {phase}"), WAIT, || async {
        let r = get(env, ns, id);
        (r["status"]["phase"] == phase).then_some(r)
    })
    .await
}

/// A decision on a refund of `amount` for order 7.
async fn refund(op: &Operator, token: &str, amount: f64, extra: Value) -> Value {
    let mut body = json!({"context": {"amount": amount, "currency": "EUR"}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    decide(op, token, "refund", "pay:orders/7", body).await
}

/// The request a RequireApproval answer names.
fn request_id(answer: &Value) -> String {
    assert_eq!(answer["decision"], "RequireApproval", "{answer}");
    answer["approval"]["id"].as_str().unwrap_or_default().to_owned()
}

/// A one-route HTTP receiver where the operator reaches the test: answers 200 to each POST and hands over
/// each body.
async fn receiver(env: &Env) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind((env.local_host(), 0)).await.expect("bind the receiver");
    let addr = listener.local_addr().expect("its address");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let body = loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                    let len = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break format!("{}\n{body}", head.lines().next().unwrap_or_default());
                    }
                };
                let _ =
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                let _ = tx.send(body);
            });
        }
    });
    (format!("http://{addr}/hooks/approvals"), rx)
}

fn count(op: &Operator, action: &str) -> usize {
    records(&op.audit_log()).iter().filter(|r| r["action"] == action).count()
}

#[tokio::test]
async fn an_approved_request_allows_exactly_once_only_a_listed_person_answers_and_the_rest_ends_denied() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "apr").await;
    let (url, mut hooks) = receiver(&env).await;
    let op = Operator::start(&env, &ns.name, &[&format!("--approval-notify-url={url}")]);
    let mut spec = basic_spec();
    spec["owner"] = json!({"kind": "User", "name": "olivia@example.com"});
    spec["workload"] = json!({"serviceAccountName": "payer-sa"});
    spec["credentials"] = json!({"audiences": ["pay"]});
    ns.create_agent("payer", spec).await;
    wait_phase(&ns.api(), "payer", "Active").await;
    let approvers = |timeout: &str| {
        json!({"approval": "required", "approvers": {"groups": ["finance"], "users": ["admin"], "timeout": timeout,
            "validFor": "1m", "fourEyes": true}})
    };
    let policy = json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "payments"},
        "spec": {"agents": {"names": ["payer"]}, "rules": [
            {"name": "refunds", "effect": "Allow", "actions": ["refund"], "resources": ["pay:orders/*"],
             "conditions": approvers("10m")},
            {"name": "wires", "effect": "Allow", "actions": ["wire"], "resources": ["pay:accounts/*"],
             "conditions": approvers("10s")},
        ]},
    });
    let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&policy.to_string()));
    assert!(out.status.success(), "{}", text(&out));
    let sa = format!("{{kind: ServiceAccount, name: payer-sa, namespace: {}}}", ns.name);
    grant(&env, &ns, "payer-sa", &sa, true, true);
    grant(&env, &ns, "bob", &user("bob@example.com"), true, true);
    grant(&env, &ns, "olivia", &user("olivia@example.com"), true, true);
    grant(&env, &ns, "carol", &user("carol@example.com"), true, true);
    grant(&env, &ns, "dave", &user("dave@example.com"), true, false);
    let token =
        wait_for("payer's identity token", WAIT, || secret_value(&ns, "payer-credentials", "token-pay"))
            .await;
    let policy_ready = wait_for("the policy in force", WAIT, || async {
        let d = refund(&op, &token, 913.37, json!({})).await;
        (d["decision"] == "RequireApproval").then_some(d)
    })
    .await;

    // The decision names a pending request; asking again names the same one.
    let id = request_id(&policy_ready);
    assert_eq!(policy_ready["approval"]["phase"], "Pending", "{policy_ready}");
    assert!(policy_ready["reason"].as_str().unwrap_or_default().contains(&id), "{policy_ready}");
    assert_eq!(request_id(&refund(&op, &token, 913.37, json!({})).await), id, "one request per action");
    let r = wait_request(&env, &ns, &id, "Pending").await;
    assert_eq!(r["spec"]["request"]["agentRef"]["name"], "payer", "{r}");
    assert_eq!(r["spec"]["request"]["context"]["amount"], 913.37, "{r}");
    assert_eq!(r["metadata"]["ownerReferences"][0]["kind"], "Agent", "{r}");
    // The receiver got the announcement: the keys of the context, never its values.
    let hook = tokio::time::timeout(WAIT, hooks.recv()).await.expect("a notification").unwrap_or_default();
    assert!(hook.starts_with("POST /hooks/approvals "), "{hook}");
    let (_, body) = hook.split_once('\n').unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(
        (&body["id"], &body["agent"], &body["action"]),
        (&json!(id), &json!("payer"), &json!("refund"))
    );
    assert_eq!(body["contextKeys"], json!(["amount", "currency"]), "{body}");
    assert!(!hook.contains("913.37") && !hook.contains(&token), "values leaked: {hook}");
    let events = env.kubectl(&["get", "events", "-n", &ns.name, "-o", "jsonpath={.items[*].reason}"], None);
    assert!(text(&events).contains("ApprovalRequested"), "{}", text(&events));

    // Refused answers: the agent itself, its owner (four eyes), someone not listed, someone without the verb.
    for (who, why) in [
        (
            format!("--as=system:serviceaccount:{}:payer-sa", ns.name),
            "an agent may not update approvalrequests",
        ),
        ("--as=olivia@example.com".to_owned(), "owns the agent"),
        ("--as=carol@example.com".to_owned(), "not among the approvers"),
        ("--as=dave@example.com".to_owned(), r#"the RBAC verb "approve""#),
    ] {
        let groups = if who.contains("carol") { "--as-group=support" } else { "--as-group=finance" };
        let out = answer_as(&env, &ns, &[&who, groups], &id, "Approve");
        assert!(!out.status.success() && text(&out).contains(why), "{who}: {}", text(&out));
    }
    assert_eq!(refund(&op, &token, 913.37, json!({})).await["decision"], "RequireApproval");

    // bob (finance, with the verb) approves: the same action is allowed once, nothing else is.
    let out = answer_as(&env, &ns, &["--as=bob@example.com", "--as-group=finance"], &id, "Approve");
    assert!(out.status.success(), "{}", text(&out));
    let r = wait_request(&env, &ns, &id, "Approved").await;
    assert_eq!(r["status"]["decidedBy"]["username"], "bob@example.com", "{r}");
    assert_eq!(r["status"]["usesLeft"], 1, "{r}");
    let bigger = refund(&op, &token, 9133.7, json!({})).await;
    assert_ne!(request_id(&bigger), id, "a larger amount is another request");
    let other_order = decide(
        &op,
        &token,
        "refund",
        "pay:orders/8",
        json!({"context": {"amount": 913.37, "currency": "EUR"}}),
    )
    .await;
    assert_ne!(request_id(&other_order), id, "another order is another request");
    let allowed = refund(&op, &token, 913.37, json!({})).await;
    assert_eq!(allowed["decision"], "Allow", "{allowed}");
    assert!(
        allowed["reason"].as_str().unwrap_or_default().contains("approved by bob@example.com"),
        "{allowed}"
    );
    let again = refund(&op, &token, 913.37, json!({})).await;
    assert_ne!(again["decision"], "Allow", "a single-use approval allowed twice: {again}");
    // A use changes no object; the ledger's record of it still reaches status at once.
    let since = Instant::now();
    wait_request(&env, &ns, &id, "Used").await;
    assert!(since.elapsed() < Duration::from_secs(3), "status reported the use after {:?}", since.elapsed());
    assert_eq!(count(&op, "approval.use"), 1, "one use, recorded once");
    assert_eq!(count(&op, "approval.approve"), 1);

    // A waiting decision returns as soon as the answer lands.
    let small = refund(&op, &token, 12.5, json!({})).await;
    let small_id = request_id(&small);
    let waiting = {
        let (addr, token) = (op.http_addr.clone(), token.clone());
        tokio::spawn(async move {
            let body = json!({"token": token, "action": "refund", "resource": "pay:orders/7",
                "context": {"amount": 12.5, "currency": "EUR"}, "waitSeconds": 20});
            let headers = [("Content-Type", "application/json")];
            let started = Instant::now();
            let (status, _, answer) =
                crate::harness::http_post(&addr, "/v1/authorize", &headers, body.to_string().as_bytes())
                    .await;
            (status, answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the decision did not wait");
    let approved_at = Instant::now();
    let out = answer_as(&env, &ns, &["--as=bob@example.com", "--as-group=finance"], &small_id, "Approve");
    assert!(out.status.success(), "{}", text(&out));
    let (status, answer, took) = waiting.await.expect("the waiting decision");
    let after_answer = approved_at.elapsed();
    eprintln!("waiting decision answered {after_answer:?} after the approval ({took:?} in all)");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""decision":"Allow""#), "{answer}");
    assert!(after_answer < Duration::from_secs(3) && took < Duration::from_secs(15), "{after_answer:?}");

    // Denied with the plugin (admin is a listed user): the same action is then refused, with the reason.
    let denied_id = request_id(&bigger);
    let out = env.plugin(&["approvals", "-n", &ns.name]);
    assert!(
        out.status.success() && text(&out).contains(&denied_id) && !text(&out).contains(&id),
        "{}",
        text(&out)
    );
    let out = env.plugin(&["deny", &denied_id, "-n", &ns.name]);
    assert!(!out.status.success() && text(&out).contains("--reason"), "{}", text(&out));
    let out = env.plugin(&["deny", &denied_id, "-n", &ns.name, "--reason", "above the refund limit"]);
    assert!(out.status.success() && text(&out).contains("phase: Denied"), "{}", text(&out));
    let refused = refund(&op, &token, 9133.7, json!({})).await;
    assert_eq!(refused["decision"], "Deny", "{refused}");
    assert!(refused["reason"].as_str().unwrap_or_default().contains("above the refund limit"), "{refused}");
    // An answer is given once (the schema refuses a changed one; the webhook, one after the end).
    let out = answer_as(&env, &ns, &["--as=bob@example.com", "--as-group=finance"], &denied_id, "Approve");
    assert!(!out.status.success() && text(&out).contains("final once given"), "{}", text(&out));

    // Unanswered, a request ends Denied at its deadline (10 s for wires), recorded as expired.
    let wire = decide(&op, &token, "wire", "pay:accounts/42", json!({})).await;
    let wire_id = request_id(&wire);
    let r = wait_request(&env, &ns, &wire_id, "Denied").await;
    let deadline: jiff::Timestamp =
        r["spec"]["request"]["expiresAt"].as_str().unwrap_or_default().parse().unwrap();
    let late = jiff::Timestamp::now().duration_since(deadline);
    assert!(late < jiff::SignedDuration::from_secs(3), "ended {late:?} after its deadline");
    assert_eq!(count(&op, "approval.expire"), 1);

    // A flood of distinct requests stops at 20 waiting per agent: the next is denied, and creates nothing.
    let pending = || {
        let out = env.kubectl(&["get", "approvalrequests", "-n", &ns.name, "-o", "json"], None);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items.iter().filter(|r| r["status"]["phase"] == "Pending" || r["status"]["phase"].is_null()).count()
    };
    let mut refused = None;
    for i in 0..25 {
        let d = refund(&op, &token, 100.0 + f64::from(i), json!({})).await;
        if d["decision"] == "Deny" {
            refused = Some((i, d));
            break;
        }
        assert_eq!(d["decision"], "RequireApproval", "{d}");
    }
    let (at, refused) = refused.expect("the 21st waiting request is refused");
    assert!(
        refused["reason"].as_str().unwrap_or_default().contains("approval requests waiting (at most 20)"),
        "{refused}"
    );
    assert!(at <= 20, "refused only after {at} new requests");
    assert_eq!(pending(), 20, "exactly 20 requests wait");
}

#[tokio::test]
async fn only_the_operator_creates_approval_requests_and_one_it_did_not_record_approves_nothing() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "aprforge").await;
    let _op = Operator::start(&env, &ns.name, &[]);
    let agent = ns.create_agent("payer", basic_spec()).await;
    wait_phase(&ns.api(), "payer", "Active").await;
    let forged = |name: &str| {
        json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "ApprovalRequest", "metadata": {"name": name},
            "spec": {"request": {"agentRef": {"name": "payer"}, "agentUid": agent.metadata.uid, "action": "refund",
                "resource": "pay:orders/7", "audience": "pay", "policy": "payments", "rule": "refunds",
                "approvers": {"users": ["mallory@example.com"]}, "expiresAt": "2099-01-01T00:00:00Z",
                "validFor": "5m", "uses": 100, "binding": "0".repeat(64)}}})
        .to_string()
    };
    // Someone with RBAC create, not the operator: refused at admission.
    let yaml = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: mallory}}
rules:
  - {{apiGroups: [agentiam.dev], resources: [approvalrequests], verbs: [create, get, patch, approve]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: mallory}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: mallory}}
subjects: [{}]
"#,
        user("mallory@example.com")
    );
    assert!(env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml)).status.success());
    let out =
        env.kubectl(&["--as=mallory@example.com", "create", "-n", &ns.name, "-f", "-"], Some(&forged("f1")));
    assert!(
        !out.status.success() && text(&out).contains("may not create ApprovalRequests"),
        "{}",
        text(&out)
    );
    // Written with the operator's own credentials (the kubeconfig's admin for a process, its ServiceAccount
    // for a pod) but never recorded by the operator: answering it is refused, and the controller ends it
    // Invalid.
    let as_operator = env.as_operator(&ns.name);
    let mut args: Vec<&str> = as_operator.iter().map(String::as_str).collect();
    args.extend(["create", "-n", &ns.name, "-f", "-"]);
    let out = env.kubectl(&args, Some(&forged("f2")));
    assert!(out.status.success(), "{}", text(&out));
    let out = answer_as(&env, &ns, &["--as=mallory@example.com"], "f2", "Approve");
    assert!(!out.status.success() && text(&out).contains("was not made by agentiam"), "{}", text(&out));
    let r = wait_for("the forgery Invalid", Duration::from_secs(60), || async {
        let r = get(&env, &ns, "f2");
        (r["status"]["phase"] == "Invalid").then_some(r)
    })
    .await;
    assert!(r["status"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
}
