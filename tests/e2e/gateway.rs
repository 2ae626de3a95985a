//! The agent gateway (`/gateway/<route>/...` on the operator's API listener) in front of a real upstream
//! HTTP server this test runs: allowed calls reach it with the route's API key from a Secret in the
//! operator's namespace and never with the agent's token; denied, unauthenticated, malformed and oversized
//! calls never reach it; MCP `tools/call` is decided with its arguments; a Revocation cuts the agent off;
//! every call is an audit record, and the upstream key appears in no record and no log line.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use agentiam::api::Revocation;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::approval::{answer_as, grant, user};
use crate::authz::{FLIP_WITHIN, active_agent, apply_policy, rule};
use crate::harness::{Env, Operator, TestNs, WAIT, http_request, text, wait_for, wait_records};
use crate::require_cluster;

/// The upstream's API key: must reach the upstream on allowed calls and appear nowhere else.
const UPSTREAM_KEY: &str = "sk-upstream-7f3a9c-never-in-a-log";

/// What the upstream saw: one JSON object per request (method, path, headers, body).
type Seen = Arc<Mutex<Vec<Value>>>;

/// An upstream on the host the operator reaches (loopback, or the node's bridge for a pod) that records
/// every request and answers it: a JSON-RPC request with a result naming its method, anything else with
/// the echo of the request.
async fn upstream(env: &Env) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind((env.local_host(), 0)).await.expect("bind the upstream");
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let state = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let seen = Arc::clone(&state);
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or("?"))))
                .collect();
            let echo = json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or_default(),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            seen.lock().unwrap().push(echo.clone());
            let answer = match serde_json::from_slice::<Value>(&body) {
                Ok(rpc) if rpc.get("jsonrpc").is_some() => json!({
                    "jsonrpc": "2.0", "id": rpc["id"],
                    "result": {"content": [{"type": "text", "text": format!("did {}", rpc["method"])}]},
                }),
                _ => echo,
            };
            axum::Json(answer)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr.to_string(), seen)
}

/// A call through the gateway: (status, headers, body).
async fn call(
    op: &Operator,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> crate::harness::HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    headers.extend_from_slice(extra);
    http_request(&op.http_addr, method, &format!("/gateway{path}"), &headers, body.as_bytes()).await
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn tools_call(tool: &str, amount: u32) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": tool, "arguments": {"amount": amount}}})
    .to_string()
}

/// Creates the upstream key Secret and the routes ConfigMap in the operator's namespace (the test
/// operator's is the test namespace). The key has the trailing newline a Secret made from a file has.
async fn configure(env: &Env, ns: &TestNs, routes: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tickets-api"},
        "stringData": {"api-key": format!("{UPSTREAM_KEY}\n")},
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "agentiam-gateway"},
        "data": {"routes.yaml": routes},
    }))
    .unwrap();
    ns.api::<ConfigMap>().create(&PostParams::default(), &cm).await.unwrap();
    if env.in_cluster.is_some() {
        // The operator pod runs under the chart's RBAC rendered without routes; with routes that name this
        // Secret the chart grants exactly this read (tools/chart-check.sh checks that rendering).
        let rbac = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: gateway-credentials}}\n\
             rules: [{{apiGroups: [''], resources: [secrets], resourceNames: [tickets-api], verbs: [get]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: gateway-credentials}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: gateway-credentials}}\n\
             subjects: [{{kind: ServiceAccount, name: agentiam, namespace: {}}}]\n",
            ns.name
        );
        let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&rbac));
        assert!(out.status.success(), "{}", text(&out));
    }
}

#[tokio::test]
async fn the_gateway_forwards_allowed_calls_with_the_upstream_key_and_refuses_the_rest() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "gateway").await;
    let (upstream_addr, seen) = upstream(&env).await;
    let routes = format!(
        r#"routes:
  - name: tickets
    upstream: http://{upstream_addr}/api
    audience: crm
    maxBodyBytes: 1024
    credential:
      header: {{name: X-Api-Key, secretName: tickets-api, key: api-key}}
  - name: crm-mcp
    upstream: http://{upstream_addr}
    protocol: mcp
    audience: crm
    credential:
      header: {{name: Authorization, prefix: "Bearer ", secretName: tickets-api, key: api-key}}
"#
    );
    configure(&env, &ns, &routes).await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "gw").await;
    let search = json!({"name": "search-tools", "effect": "Allow", "actions": ["tools.call"],
        "tools": ["search_*"],
        "conditions": {"attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "10"}]}});
    let read = rule("read-queue", "Allow", &["read"], &["tickets/queue/*"]);
    apply_policy(&ns, "gateway", json!({"agents": {"names": ["gw"]}, "rules": [read, search]})).await;

    // Allowed: forwarded to the upstream's path, with the key and without the agent's token. A header
    // the agent sets in the gateway's name is replaced by the gateway's own.
    let (status, _, body) = wait_for("the gateway to allow the GET", WAIT, || async {
        let forged = [("X-Agentiam-Agent", "other/forged"), ("X-HTTP-Method-Override", "DELETE")];
        let r = call(&op, "GET", "/tickets/queue/1?page=2", Some(&token), &forged, "").await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(status, 200);
    let echo = json_of(&body);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/api/queue/1?page=2");
    assert_eq!(echo["headers"]["x-api-key"], UPSTREAM_KEY, "the key, without the Secret's newline: {echo}");
    assert!(echo["headers"].get("authorization").is_none(), "the agent's token reached the upstream: {echo}");
    assert_eq!(echo["headers"]["x-agentiam-agent"], format!("{}/gw", ns.name), "{echo}");
    assert!(
        echo["headers"].get("x-http-method-override").is_none(),
        "a method override reached the upstream: {echo}"
    );
    assert!(echo["headers"]["x-agentiam-audit-id"].is_string(), "{echo}");
    let forwarded = seen.lock().unwrap().len();

    // Denied by policy, unauthenticated, a path the resource grammar refuses, an oversized body, an
    // unknown route: answered by the gateway, never forwarded.
    let (status, _, body) = call(&op, "DELETE", "/tickets/queue/1", Some(&token), &[], "").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json_of(&body)["decision"], "Deny", "{body}");
    let (status, headers, body) = call(&op, "GET", "/tickets/queue/1", None, &[], "").await;
    assert_eq!(status, 401, "{body}");
    let challenge = &headers["www-authenticate"];
    let metadata_path = "/.well-known/oauth-protected-resource/gateway/tickets";
    assert!(
        challenge.starts_with("Bearer resource_metadata=") && challenge.contains(metadata_path),
        "{challenge}"
    );
    let (status, _, body) = call(&op, "GET", "/tickets/queue/1", Some("not-a-jwt"), &[], "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = call(&op, "GET", "/tickets/queue/../admin", Some(&token), &[], "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("segment"), "{body}");
    let (status, _, body) = call(&op, "POST", "/tickets/queue/1", Some(&token), &[], &"x".repeat(2000)).await;
    assert_eq!(status, 413, "{body}");
    let (status, _, body) = call(&op, "GET", "/nowhere/1", Some(&token), &[], "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(seen.lock().unwrap().len(), forwarded, "a refused call reached the upstream");

    // The protected resource metadata the challenge names (RFC 9728).
    let (status, _, body) = http_request(&op.http_addr, "GET", metadata_path, &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let metadata = json_of(&body);
    assert!(metadata["resource"].as_str().unwrap().ends_with("/gateway/tickets"), "{metadata}");
    assert_eq!(metadata["authorization_servers"].as_array().map(Vec::len), Some(1), "{metadata}");

    // MCP: tools/call decided with its arguments; the upstream gets the key as its bearer token.
    let (status, _, body) =
        call(&op, "POST", "/crm-mcp/mcp", Some(&token), &[], &tools_call("search_contacts", 5)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["result"]["content"][0]["text"], "did \"tools/call\"", "{body}");
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last["headers"]["authorization"], format!("Bearer {UPSTREAM_KEY}"), "{last}");
    let before = seen.lock().unwrap().len();
    for (tool, amount, why) in [
        ("search_contacts", 50, "an argument over the rule's limit"),
        ("delete_all", 1, "a tool no rule names"),
    ] {
        let (status, _, body) =
            call(&op, "POST", "/crm-mcp/mcp", Some(&token), &[], &tools_call(tool, amount)).await;
        assert_eq!(status, 200, "{why}: {body}");
        let answer = json_of(&body);
        assert_eq!(
            (answer["id"].as_i64(), answer["error"]["code"].as_i64()),
            (Some(7), Some(-32003)),
            "{why}: {body}"
        );
        assert_eq!(answer["error"]["data"]["decision"], "Deny", "{why}: {body}");
    }
    // Parser differentials: a key twice (a server reading the first copy would call delete_all), and a
    // call without "jsonrpc": "2.0" that a lenient server might still run.
    let twice = r#"{"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "delete_all", "name": "search_contacts", "arguments": {"amount": 1}}}"#;
    let (status, _, body) = call(&op, "POST", "/crm-mcp/mcp", Some(&token), &[], twice).await;
    assert_eq!(status, 400, "a key twice: {body}");
    let bare = r#"{"id": 7, "method": "tools/call", "params": {"name": "delete_all"}}"#;
    let (status, _, body) = call(&op, "POST", "/crm-mcp/mcp", Some(&token), &[], bare).await;
    assert_eq!(status, 400, "no jsonrpc member: {body}");
    let batch = format!("[{}]", tools_call("search_contacts", 5));
    let (status, _, body) = call(&op, "POST", "/crm-mcp/mcp", Some(&token), &[], &batch).await;
    assert_eq!(status, 400, "a JSON-RPC batch: {body}");
    assert_eq!(seen.lock().unwrap().len(), before, "a refused MCP call reached the upstream");

    // The kill switch: a Revocation cuts the agent off at the gateway within the decision API's latency.
    let revocation: Revocation = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop-gw"},
        "spec": {"target": {"agentRef": {"name": "gw"}}, "mode": "Suspend", "reason": "gateway test"},
    }))
    .unwrap();
    ns.api::<Revocation>().create(&PostParams::default(), &revocation).await.unwrap();
    let written = Instant::now();
    loop {
        let (status, _, body) = call(&op, "GET", "/tickets/queue/1", Some(&token), &[], "").await;
        if status == 403 {
            assert!(body.contains("Revocation stop-gw"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            written.elapsed() < FLIP_WITHIN * 5,
            "still forwarded {:?} after the Revocation",
            written.elapsed()
        );
    }
    eprintln!(
        "gateway: a Revocation stopped forwarding {} ms after its create returned",
        written.elapsed().as_millis()
    );

    // Every call is recorded: the forwarded GET with the upstream's status and the decision's record, the
    // MCP calls with a digest of their arguments; the upstream key is in no record and no log line.
    let recs = wait_records(&op, "the gateway's call records", |recs| {
        recs.iter().filter(|r| r["action"] == "gateway.call").count() >= 10
    })
    .await;
    let calls: Vec<&Value> = recs.iter().filter(|r| r["action"] == "gateway.call").collect();
    let get = calls
        .iter()
        .find(|r| r["details"]["route"] == "tickets" && r["details"]["upstreamStatus"] == "200")
        .expect("the forwarded GET's record");
    assert_eq!(get["actor"], format!("agent:{}/gw", ns.name), "{get}");
    assert_eq!(get["details"]["decision"], "Allow", "{get}");
    let decision_id = get["details"]["decisionAuditId"].as_str().unwrap();
    assert!(
        recs.iter().any(|r| r["action"] == "authz.decide"
            && r["details"]["auditId"] == decision_id
            && r["details"]["source"] == "gateway"),
        "the decision record the call names"
    );
    let denied_mcp = calls
        .iter()
        .find(|r| r["details"]["tool"] == "search_contacts" && r["details"]["decision"] == "Deny")
        .expect("the denied MCP call's record");
    assert_eq!(denied_mcp["details"]["argumentsSHA256"].as_str().map(str::len), Some(64), "{denied_mcp}");
    assert!(calls.iter().any(|r| r["details"]["status"] == "413"), "the oversized call's record");
    let log = std::fs::read_to_string(op.audit_log()).unwrap();
    assert!(!log.contains(UPSTREAM_KEY), "the upstream key is in the audit log");
    assert!(!op.stderr().contains(UPSTREAM_KEY), "the upstream key is in the operator's log");
}

/// Refunds through the gateway need bob's approval: the policy, and bob's right to answer.
async fn refunds_need_approval(env: &Env, ns: &TestNs) {
    let refunds = json!({"name": "refunds", "effect": "Allow", "actions": ["tools.call"], "tools": ["refund"],
        "conditions": {"approval": "required",
            "approvers": {"users": ["bob@example.com"], "timeout": "5m", "validFor": "1m"}}});
    apply_policy(ns, "payments", json!({"agents": {"names": ["payer"]}, "rules": [refunds]})).await;
    grant(env, ns, "bob", &user("bob@example.com"), true, true);
}

/// A refund of 900 posted to route `pay` in a task of its own: its answer and how long it took.
fn held_refund(
    op: &Operator,
    token: &str,
    accept: Option<&'static str>,
) -> tokio::task::JoinHandle<(crate::harness::HttpResponse, std::time::Duration)> {
    let (op_addr, bearer) = (op.http_addr.clone(), format!("Bearer {token}"));
    tokio::spawn(async move {
        let mut headers = vec![("Content-Type", "application/json"), ("Authorization", bearer.as_str())];
        if let Some(a) = accept {
            headers.push(("Accept", a));
        }
        let started = Instant::now();
        let body = tools_call("refund", 900);
        let r = http_request(&op_addr, "POST", "/gateway/pay/mcp", &headers, body.as_bytes()).await;
        (r, started.elapsed())
    })
}

/// The name of the (first) ApprovalRequest in the namespace, once there is one.
async fn approval_request(env: &Env, ns: &TestNs) -> String {
    wait_for("the call's ApprovalRequest", WAIT, || async {
        let out = env.kubectl(
            &["get", "approvalrequests", "-n", &ns.name, "-o", "jsonpath={.items[0].metadata.name}"],
            None,
        );
        let id = text(&out).trim().to_owned();
        (out.status.success() && !id.is_empty()).then_some(id)
    })
    .await
}

#[tokio::test]
async fn a_call_that_needs_approval_is_held_until_a_human_approves_exactly_that_call() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "gateway-apr").await;
    let (upstream_addr, seen) = upstream(&env).await;
    let routes = format!(
        "routes:\n  - {{name: pay, upstream: 'http://{upstream_addr}', protocol: mcp, audience: crm, \
         approvalWaitSeconds: 20, credential: {{header: {{name: X-Api-Key, secretName: tickets-api, key: api-key}}}}}}\n  \
         - {{name: pay-quick, upstream: 'http://{upstream_addr}', protocol: mcp, audience: crm, resource: pay, \
         approvalWaitSeconds: 1}}\n"
    );
    configure(&env, &ns, &routes).await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "payer").await;
    refunds_need_approval(&env, &ns).await;

    // Held: the call waits while the decision path has an ApprovalRequest pending.
    let held = held_refund(&op, &token, None);
    let id = approval_request(&env, &ns).await;
    assert!(!held.is_finished(), "the call was not held");
    assert!(seen.lock().unwrap().is_empty(), "the held call reached the upstream before the approval");
    let out = answer_as(&env, &ns, &["--as=bob@example.com"], &id, "Approve");
    assert!(out.status.success(), "{}", text(&out));
    let ((status, _, body), took) = held.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["result"]["content"][0]["text"],
        "did \"tools/call\"",
        "the approved call's answer: {body}"
    );
    eprintln!("gateway: the held call was forwarded {} ms after it arrived", took.as_millis());
    assert_eq!(seen.lock().unwrap().len(), 1, "the approved call reached the upstream once");

    // The approval covered that call once: the same call again, and a bigger refund, wait for a new answer.
    // (The quick route decides the same resources, and holds a call one second.)
    let route = "/pay-quick/mcp";
    for (amount, why) in
        [(900, "the same call, once the approval is used"), (9000, "a refund the approval does not cover")]
    {
        let started = Instant::now();
        let (status, _, body) =
            call(&op, "POST", route, Some(&token), &[], &tools_call("refund", amount)).await;
        assert_eq!(status, 200, "{why}: {body}");
        let answer = json_of(&body);
        assert_eq!(answer["error"]["data"]["decision"], "RequireApproval", "{why}: {body}");
        assert!(
            answer["error"]["data"]["approval"].is_string(),
            "{why}: names the request to approve: {body}"
        );
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(1),
            "{why}: answered before the route's wait"
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "an unapproved call reached the upstream");
}

/// An MCP server on the official Python SDK (`mcp`, streamable HTTP at `/mcp`) with two tools; the test
/// waits for its port.
const MCP_SERVER: &str = r#"
import sys
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

host, port = sys.argv[1], int(sys.argv[2])
server = MCPServer("crm")

@server.tool()
def search_contacts(query: str, amount: int) -> str:
    """Finds contacts."""
    return f"found {amount} contacts for {query}"

@server.tool()
def delete_all() -> str:
    """Deletes every contact."""
    return "deleted everything"

# The gateway sets Host to the upstream's address; DNS rebinding checks are for browsers on loopback.
server.run("streamable-http", host=host, port=port,
           transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
"#;

/// An MCP client on the official Python SDK, through the gateway with the agent's token: initialize,
/// list the tools (the gateway filters the answer), call one in bounds, out of bounds and one no rule names; print `{"ready": true}`, wait
/// for a line on stdin, call the allowed one again; print everything as one JSON line.
const MCP_CLIENT: &str = r#"
import asyncio, json, ssl, sys
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

url, token, ca = sys.argv[1], sys.argv[2], sys.argv[3]

async def call(session, name, args):
    try:
        r = await session.call_tool(name, args)
        return {"text": [getattr(c, "text", None) for c in r.content], "isError": bool(r.is_error)}
    except MCPError as e:
        return {"code": e.code, "message": e.message}

async def main():
    out = {}
    verify = ssl.create_default_context(cafile=ca) if ca else True
    headers = {"Authorization": "Bearer " + token}
    async with httpx2.AsyncClient(headers=headers, verify=verify, timeout=httpx2.Timeout(30, read=60)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                out["allowed"] = await call(session, "search_contacts", {"query": "acme", "amount": 5})
                out["over_limit"] = await call(session, "search_contacts", {"query": "acme", "amount": 50})
                out["unlisted"] = await call(session, "delete_all", {})
                print(json.dumps({"ready": True}), flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                out["after_revocation"] = await call(session, "search_contacts", {"query": "acme", "amount": 5})
    print(json.dumps(out), flush=True)

asyncio.run(main())
"#;

/// A child process killed when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> std::process::Command {
    std::process::Command::new(std::env::var("AGENTIAM_PYTHON").unwrap_or_else(|_| "python3".into()))
}

#[tokio::test]
async fn the_mcp_python_sdk_works_through_the_gateway_with_each_call_decided_and_a_revocation_mid_session() {
    use std::io::{BufRead as _, Write as _};
    let env = require_cluster!();
    let ns = TestNs::new(&env, "gateway-mcp").await;
    let port = crate::harness::free_port();
    let _server = Child(
        python()
            .args(["-c", MCP_SERVER, env.local_host(), &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("a Python with the MCP SDK is required (tools/e2e.sh makes one: tools/python-env.sh)"),
    );
    let upstream = format!("{}:{port}", env.local_host());
    wait_for("the MCP server to listen", WAIT, || async {
        tokio::net::TcpStream::connect(&upstream).await.ok().map(|_| ())
    })
    .await;
    let routes = format!(
        "routes:\n  - {{name: crm-mcp, upstream: 'http://{upstream}', protocol: mcp, audience: crm, \
         credential: {{header: {{name: X-Api-Key, secretName: tickets-api, key: api-key}}}}}}\n"
    );
    configure(&env, &ns, &routes).await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "mcp-agent").await;
    // The session's own methods (initialize, its notification, tools/list, the GET stream and the DELETE
    // that ends it) need a rule like any other action; tools/call only within the argument's bound.
    let session = json!({"name": "mcp-session", "effect": "Allow", "resources": ["crm-mcp/mcp"],
        "actions": ["initialize", "notifications.initialized", "tools.list", "read", "delete"]});
    let search = json!({"name": "search-tools", "effect": "Allow", "actions": ["tools.call"],
        "tools": ["search_*"],
        "conditions": {"attributes": [{"key": "amount", "operator": "LessThanOrEqual", "value": "10"}]}});
    apply_policy(&ns, "mcp", json!({"agents": {"names": ["mcp-agent"]}, "rules": [session, search]})).await;
    // In force once a plain decision allows the session's first method.
    wait_for("the policy in force", WAIT, || async {
        let d = crate::harness::decide(&op, &token, "initialize", "crm-mcp/mcp", json!({})).await;
        (d["decision"] == "Allow").then_some(())
    })
    .await;

    let ca = if op.tls() { op.ca_file().display().to_string() } else { String::new() };
    let mut client = python()
        .args(["-c", MCP_CLIENT, &format!("{}/gateway/crm-mcp/mcp", op.base_url()), &token, &ca])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the MCP client");
    let mut stdin = client.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let mut client = Child(client);
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    if ready != r#"{"ready": true}"# {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(client.0.stderr.as_mut().unwrap(), &mut err);
        panic!("the MCP client stopped before its calls were done: {ready}\n{err}\n{}", op.stderr());
    }
    // Revoked mid-session: the next call on the same MCP session is refused.
    let revocation: Revocation = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop-mcp"},
        "spec": {"target": {"agentRef": {"name": "mcp-agent"}}, "mode": "Suspend", "reason": "mid-session"},
    }))
    .unwrap();
    ns.api::<Revocation>().create(&PostParams::default(), &revocation).await.unwrap();
    let written = Instant::now();
    wait_for("the Revocation in force", WAIT, || async {
        let d = crate::harness::decide(&op, &token, "initialize", "crm-mcp/mcp", json!({})).await;
        (d["decision"] == "Deny").then_some(())
    })
    .await;
    eprintln!(
        "gateway (MCP SDK): the Revocation was in force {} ms after its create",
        written.elapsed().as_millis()
    );
    writeln!(stdin, "go").unwrap();
    let out: Value =
        serde_json::from_str(&lines.next().and_then(Result::ok).unwrap_or_default()).unwrap_or(Value::Null);
    let status = client.0.wait().unwrap();
    assert!(status.success(), "the MCP client failed: {out}");

    // The list holds only what the agent may call (delete_all is left out); calling it anyway is denied.
    assert_eq!(out["tools"], json!(["search_contacts"]), "{out}");
    assert_eq!(out["allowed"], json!({"text": ["found 5 contacts for acme"], "isError": false}), "{out}");
    for (key, why) in
        [("over_limit", "an argument over the rule's bound"), ("unlisted", "a tool no rule names")]
    {
        assert_eq!(out[key]["code"], -32003, "{why}: {out}");
        assert!(
            out[key]["message"].as_str().unwrap_or_default().starts_with("agentiam Deny"),
            "{why}: {out}"
        );
    }
    assert_eq!(out["after_revocation"]["code"], -32003, "{out}");
    assert!(
        out["after_revocation"]["message"].as_str().unwrap_or_default().contains("Revocation stop-mcp"),
        "{out}"
    );

    // Each tools/call is a record with its tool and its arguments' digest.
    let recs = wait_records(&op, "the MCP calls' records", |recs| {
        recs.iter().filter(|r| r["action"] == "gateway.call" && r["details"]["tool"].is_string()).count() >= 4
    })
    .await;
    let digests: std::collections::BTreeSet<&str> = recs
        .iter()
        .filter(|r| r["action"] == "gateway.call" && r["details"]["tool"] == "search_contacts")
        .filter_map(|r| r["details"]["argumentsSHA256"].as_str())
        .collect();
    assert_eq!(digests.len(), 2, "two argument sets, two digests: {digests:?}");
    let list = recs
        .iter()
        .find(|r| r["action"] == "gateway.call" && r["details"]["toolsRemoved"].is_string())
        .expect("the tools/list call's record");
    assert_eq!(list["details"]["toolsRemoved"], "1", "{list}");
}

/// nginx's configuration, as docs/authorization.md gives it: `auth_request` on every request asks the
/// operator's ext_authz endpoint with the agent's `Authorization` and the original URI; `Host` names the
/// resource's first segment. nginx sends that subrequest as a GET whatever the client's method, so the
/// action is mapped from the method in nginx and sent as `x-agentiam-action`, and every other decision
/// header a client could send is cleared. Only a 2xx lets nginx proxy to the upstream, without the token.
fn nginx_conf(dir: &std::path::Path, listen: &str, op: &Operator, upstream: &str) -> String {
    let d = dir.display();
    let tls = if op.tls() {
        format!(
            "proxy_ssl_verify on; proxy_ssl_trusted_certificate {}; proxy_ssl_name {};",
            op.ca_file().display(),
            op.http_addr.rsplit_once(':').map_or("", |(h, _)| h)
        )
    } else {
        String::new()
    };
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{}}
http {{
  access_log off;
  map $request_method $agentiam_action {{
    GET read; HEAD read; OPTIONS read; POST create; PUT update; PATCH update; DELETE delete; default unknown;
  }}
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen {listen};
    location / {{
      auth_request /_agentiam;
      proxy_set_header Authorization "";
      proxy_pass http://{upstream};
    }}
    location = /_agentiam {{
      internal;
      proxy_pass {base}/v1/ext_authz$request_uri;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Host crm;
      proxy_set_header X-Agentiam-Action $agentiam_action;
      proxy_set_header X-Agentiam-Audience crm;
      proxy_set_header X-Agentiam-Resource "";
      proxy_set_header X-Agentiam-Token-Type "";
      proxy_set_header X-Agentiam-Wait "";
      proxy_set_header X-Agentiam-Certificate-Thumbprint "";
      proxy_set_header X-Envoy-Auth-Partial-Body "";
      {tls}
    }}
  }}
}}
"#,
        base = op.base_url()
    )
}

#[tokio::test]
async fn nginx_with_auth_request_lets_through_only_what_the_decision_api_allows() {
    let env = require_cluster!();
    let Ok(nginx) = std::env::var("AGENTIAM_NGINX") else {
        assert!(
            std::env::var("E2E_REQUIRED").as_deref() != Ok("1"),
            "AGENTIAM_NGINX is not set (tools/e2e.sh sets it)"
        );
        eprintln!("SKIPPED: AGENTIAM_NGINX is not set (tools/e2e.sh builds it: tools/build-tools.sh nginx)");
        return;
    };
    let ns = TestNs::new(&env, "gateway-nginx").await;
    let (upstream_addr, seen) = upstream(&env).await;
    let op = Operator::start(&env, &ns.name, &[]);
    let token = active_agent(&ns, "web").await;
    let other = active_agent(&ns, "stranger").await;
    let read = rule("read-contacts", "Allow", &["read"], &["crm/contacts/*"]);
    apply_policy(&ns, "nginx", json!({"agents": {"names": ["web"]}, "rules": [read]})).await;

    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", crate::harness::free_port());
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir.path(), &listen, &op, &upstream_addr)).unwrap();
    let _nginx = Child(
        std::process::Command::new(&nginx)
            .args([
                "-p",
                &dir.path().display().to_string(),
                "-c",
                &conf.display().to_string(),
                "-e",
                "stderr",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx"),
    );
    wait_for("nginx to listen", WAIT, || async {
        tokio::net::TcpStream::connect(&listen).await.ok().map(|_| ())
    })
    .await;
    let through = |method: &'static str, token: Option<String>| {
        let listen = listen.clone();
        async move {
            let bearer = token.map(|t| format!("Bearer {t}"));
            // What a client would send to choose its own decision: nginx replaces or clears each.
            let mut headers = vec![("X-Agentiam-Action", "read"), ("X-Agentiam-Resource", "crm/contacts/1")];
            if let Some(b) = &bearer {
                headers.push(("Authorization", b.as_str()));
            }
            http_request(&listen, method, "/contacts/1", &headers, b"").await
        }
    };
    let error_log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();

    let (status, _, body) = wait_for("nginx to let the allowed GET through", WAIT, || async {
        let r = through("GET", Some(token.clone())).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(status, 200, "{body}\n{}", error_log());
    let echo = json_of(&body);
    assert_eq!(echo["path"], "/contacts/1", "{echo}");
    assert!(echo["headers"].get("authorization").is_none(), "nginx passed the token on: {echo}");
    let forwarded = seen.lock().unwrap().len();
    for (method, token, why) in [
        ("DELETE", Some(token.clone()), "an action no rule allows"),
        ("GET", Some(other.clone()), "an agent no policy governs"),
        ("GET", None, "no token"),
    ] {
        let (status, _, body) = through(method, token).await;
        assert_eq!(status, 403, "{why}: {body}\n{}", error_log());
    }
    assert_eq!(seen.lock().unwrap().len(), forwarded, "nginx let a denied request through");

    // Revoked: nginx stops letting the agent through from the next request.
    let revocation: Revocation = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": "stop-web"},
        "spec": {"target": {"agentRef": {"name": "web"}}, "mode": "Suspend", "reason": "nginx test"},
    }))
    .unwrap();
    ns.api::<Revocation>().create(&PostParams::default(), &revocation).await.unwrap();
    let written = Instant::now();
    loop {
        let (status, _, body) = through("GET", Some(token.clone())).await;
        if status == 403 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(written.elapsed() < FLIP_WITHIN * 5, "nginx still let the revoked agent through");
    }
    eprintln!(
        "nginx: a Revocation stopped the agent {} ms after its create returned",
        written.elapsed().as_millis()
    );
}

#[tokio::test]
async fn an_mcp_call_held_past_the_listeners_timeout_is_kept_alive_and_answered_after_the_approval() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "gateway-keep").await;
    let (upstream_addr, seen) = upstream(&env).await;
    let routes = format!(
        "routes:\n  - {{name: pay, upstream: 'http://{upstream_addr}', protocol: mcp, audience: crm, \
         approvalWaitSeconds: 40}}\n"
    );
    configure(&env, &ns, &routes).await;
    // A listener that lets a plain answer wait 6 s at most: the approval below comes later than that.
    let op = Operator::start(&env, &ns.name, &["--listener-request-timeout=6s"]);
    let token = active_agent(&ns, "payer").await;
    refunds_need_approval(&env, &ns).await;

    let held = held_refund(&op, &token, Some("application/json, text/event-stream"));
    let id = approval_request(&env, &ns).await;
    // Approved after the listener's timeout and after the first keep-alive (2 s + 10 s).
    tokio::time::sleep(std::time::Duration::from_secs(13)).await;
    assert!(!held.is_finished(), "the held call was answered before the approval");
    let out = answer_as(&env, &ns, &["--as=bob@example.com"], &id, "Approve");
    assert!(out.status.success(), "{}", text(&out));
    let ((status, headers, body), took) = held.await.unwrap();
    eprintln!(
        "gateway: a call held behind a kept-alive event stream was answered after {} ms",
        took.as_millis()
    );
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"].starts_with("text/event-stream"), "{headers:?}");
    assert!(body.contains(": waiting for the call's answer"), "no keep-alive: {body}");
    let data = body.lines().rev().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
    let answer = json_of(data);
    assert_eq!(
        answer["result"]["content"][0]["text"], "did \"tools/call\"",
        "the approved call's answer: {body}"
    );
    assert!(took > std::time::Duration::from_secs(6), "answered within the listener's timeout: {took:?}");
    assert_eq!(seen.lock().unwrap().len(), 1, "the approved call reached the upstream once");
}
