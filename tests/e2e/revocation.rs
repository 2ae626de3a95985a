//! The kill switch against the real API server: a Revocation refuses its targets' identity and delegated
//! tokens at once, moves their phases, deletes their credentials, ends their delegations, evicts their
//! pods, asks for the emergency key rotation, and says all of it in its status; a Suspend lifts at its
//! expiry with fresh credentials only; a Revoke is final for those UIDs; an operator killed in the middle
//! completes the work after its restart.

use std::time::{Duration, Instant};

use agentiam::api::{Agent, Revocation};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::authz::{AUD, active_agent, apply_policy, rule, token};
use crate::delegation::{create_as, delegation, grant, user, wait_delegation};
use crate::harness::{
    Operator, TestNs, WAIT, decide, delete_and_wait, records, secret_value, text, wait_credentials, wait_for,
    wait_phase, wait_records,
};
use crate::require_cluster;

fn revocation(name: &str, spec: Value) -> Revocation {
    serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// Waits until the Revocation's status says `phase`; returns the status.
async fn wait_revocation(ns: &TestNs, name: &str, phase: &str) -> Value {
    let api = ns.api::<Revocation>();
    wait_for(&format!("Revocation {name} {phase}"), WAIT, || async {
        let r = api.get_opt(name).await.ok().flatten()?;
        let status = serde_json::to_value(r.status?).ok()?;
        (status["phase"] == phase).then_some(status)
    })
    .await
}

/// Asks in a tight loop until every token is denied; how long after `since` the last one was.
async fn all_denied(op: &Operator, tokens: &[&str], since: Instant) -> Duration {
    loop {
        let mut denied = true;
        for t in tokens {
            denied &= decide(op, t, "read", "crm:contacts/1", json!({})).await["decision"] == "Deny";
        }
        if denied {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(10), "still allowed after {:?}", since.elapsed());
    }
}

async fn allows(op: &Operator, token: &str) -> bool {
    decide(op, token, "read", "crm:contacts/1", json!({})).await["decision"] == "Allow"
}

async fn read_policy(ns: &TestNs) {
    apply_policy(
        ns,
        "read",
        json!({"agents": {"selector": {}}, "rules": [rule("read", "Allow", &["read"], &["crm:contacts/*"])]}),
    )
    .await;
}

#[tokio::test]
async fn revoking_an_agent_stops_its_tokens_phase_secrets_and_delegations_at_once_and_for_good() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-agent").await;
    let op = Operator::start(&env, &ns.name, &[]);
    read_policy(&ns).await;
    let identity = active_agent(&ns, "bot").await;
    grant(&env, &ns, "alice", &user("alice@example.com"), true, &[]);
    let alice = ["--as=alice@example.com"];
    let root = delegation("root", "bot", None, &["read@crm:contacts/*"], "2h");
    assert!(create_as(&env, &ns, &alice, &root).status.success());
    wait_delegation(&env, &ns, "root", "Active").await;
    let delegated =
        wait_for("bot's delegated token", WAIT, || secret_value(&ns, "bot-delegations", "delegation-root"))
            .await;
    wait_for("both tokens allowed", WAIT, || async {
        (allows(&op, &identity).await && allows(&op, &delegated).await).then_some(())
    })
    .await;

    // Revoke: both tokens refused at once, measured from the create call returning.
    let since = Instant::now();
    ns.api::<Revocation>()
        .create(
            &PostParams::default(),
            &revocation(
                "stop-bot",
                json!({"target": {"agentRef": {"name": "bot"}}, "mode": "Revoke", "reason": "INC-1"}),
            ),
        )
        .await
        .unwrap();
    let took = all_denied(&op, &[&identity, &delegated], since).await;
    eprintln!(
        "kill switch: identity and delegated tokens refused {} ms after the create returned",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Every effect in place, and the status says so with its counts.
    let status = wait_revocation(&ns, "stop-bot", "Enforced").await;
    eprintln!("Revocation status: {status}");
    assert_eq!(
        (status["affectedAgents"].as_u64(), status["affectedDelegations"].as_u64()),
        (Some(1), Some(1))
    );
    let latency = status["decisionApiLatencyMs"].as_u64().expect("decision API latency");
    assert!(latency < 1000, "{status}");
    for field in ["observedAt", "decisionApiEnforcedAt", "enforcedAt"] {
        assert!(status[field].is_string(), "{field}: {status}");
    }
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    );
    let agents = ns.api::<Agent>();
    let bot = wait_phase(&agents, "bot", "Revoked").await;
    let ready = bot.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.message, format!("revoked for good by Revocation {}/stop-bot", ns.name));
    assert!(ns.api::<Secret>().get_opt("bot-credentials").await.unwrap().is_none(), "credentials deleted");
    wait_delegation(&env, &ns, "root", "Revoked").await;
    assert_eq!(
        secret_value(&ns, "bot-delegations", "delegation-root").await,
        None,
        "delegated token withdrawn"
    );
    let recs = wait_records(&op, "the enforcement record", |recs| {
        recs.iter().any(|r| r["action"] == "revocation.enforce")
    })
    .await;
    let revoke =
        recs.iter().find(|r| r["action"] == "agent.revoke" && r["kind"] == "intent").expect("agent.revoke");
    let uid = ns.api::<Revocation>().get("stop-bot").await.unwrap().metadata.uid.unwrap();
    assert_eq!(revoke["details"]["revocationUID"], uid.as_str(), "{revoke}");
    assert!(revoke["key"].as_str().unwrap().ends_with(&format!(":{uid}")), "{revoke}");

    // Deleted: the lift is recorded, and a Revoke stays final.
    ns.api::<Revocation>().delete("stop-bot", &DeleteParams::default()).await.unwrap();
    wait_for("the Revocation to be gone", WAIT, || async {
        ns.api::<Revocation>().get_opt("stop-bot").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(records(&op.audit_log()).iter().any(|r| r["action"] == "revocation.lift"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agents.get("bot").await.unwrap().status.unwrap().phase.unwrap().as_str(), "Revoked");
    assert!(!allows(&op, &identity).await);

    // Registered anew under the same name: a new identity, and the old tokens stay dead.
    delete_and_wait(&agents, "bot").await;
    let fresh = active_agent(&ns, "bot").await;
    wait_for("the new agent allowed", WAIT, || async { allows(&op, &fresh).await.then_some(()) }).await;
    assert!(!allows(&op, &identity).await && !allows(&op, &delegated).await);
}

async fn labelled_agent(ns: &TestNs, name: &str, team: &str) -> String {
    let agent: Agent = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": name, "labels": {"team": team}},
        "spec": {"owner": {"kind": "Team", "name": team}, "purpose": "kill switch e2e", "credentials": {"audiences": [AUD]}},
    }))
    .unwrap();
    ns.api::<Agent>().create(&PostParams::default(), &agent).await.unwrap();
    wait_credentials(&ns.api::<Agent>(), name).await;
    token(ns, name).await
}

#[tokio::test]
async fn a_selector_suspension_holds_until_its_expiry_and_the_agents_resume_with_new_credentials_only() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-suspend").await;
    let op = Operator::start(&env, &ns.name, &[]);
    read_policy(&ns).await;
    let (a1, a2, other) = (
        labelled_agent(&ns, "a1", "support").await,
        labelled_agent(&ns, "a2", "support").await,
        labelled_agent(&ns, "b1", "sales").await,
    );
    wait_for("the agents allowed", WAIT, || async { allows(&op, &a2).await.then_some(()) }).await;
    let end = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(12);
    let spec = json!({"target": {"selector": {"matchLabels": {"team": "support"}}}, "mode": "Suspend",
        "reason": "INC-2: support agents misbehave", "expiresAt": end.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()});
    let since = Instant::now();
    ns.api::<Revocation>().create(&PostParams::default(), &revocation("pause-support", spec)).await.unwrap();
    let took = all_denied(&op, &[&a1, &a2], since).await;
    eprintln!("selector suspension: 2 agents refused {} ms after the create returned", took.as_millis());
    assert!(allows(&op, &other).await, "an agent the selector does not match is untouched");
    let status = wait_revocation(&ns, "pause-support", "Enforced").await;
    assert_eq!(status["affectedAgents"], 2, "{status}");
    let agents = ns.api::<Agent>();
    for name in ["a1", "a2"] {
        let a = wait_phase(&agents, name, "Suspended").await;
        assert!(a.status.unwrap().credentials.is_none());
        assert!(ns.api::<Secret>().get_opt(&format!("{name}-credentials")).await.unwrap().is_none());
    }
    assert_eq!(agents.get("b1").await.unwrap().status.unwrap().phase.unwrap().as_str(), "Active");

    // The expiry lifts it by itself: Expired, and the agents are Active again with new credentials; the
    // tokens from before stay refused.
    wait_revocation(&ns, "pause-support", "Expired").await;
    wait_credentials(&agents, "a1").await;
    let resumed = token(&ns, "a1").await;
    assert_ne!(resumed, a1);
    wait_for("a1 allowed again", WAIT, || async { allows(&op, &resumed).await.then_some(()) }).await;
    assert!(!allows(&op, &a1).await, "a token from before the suspension is not brought back");
    let recs = records(&op.audit_log());
    assert!(recs.iter().any(|r| r["action"] == "revocation.lift"));
    let resume = recs
        .iter()
        .find(|r| r["action"] == "agent.activate" && r["details"]["liftedRevocationUID"].is_string())
        .expect("the resume names the lifted Revocation");
    assert_eq!(resume["object"]["name"].as_str().map(|n| n.starts_with('a')), Some(true));
}

#[tokio::test]
async fn stop_workloads_evicts_the_agents_pods_and_emergency_rotates_the_signing_keys() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-pods").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let agents = ns.api::<Agent>();
    let _ = active_agent(&ns, "bot").await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bot-1", "labels": {"agentiam.dev/agent": "bot"}},
        "spec": {"containers": [{"name": "main", "image": "registry.example/agent:1"}]}});
    let out = ns.apply(&pod.to_string());
    assert!(out.status.success(), "{}", text(&out));
    let spec = json!({"target": {"agentRef": {"name": "bot"}}, "mode": "Suspend", "reason": "INC-3",
        "stopWorkloads": true, "emergency": true});
    ns.api::<Revocation>().create(&PostParams::default(), &revocation("stop-bot", spec)).await.unwrap();
    let status = wait_revocation(&ns, "stop-bot", "Enforced").await;
    assert_eq!(status["podsEvicted"], 1, "{status}");
    assert!(ns.api::<Pod>().get_opt("bot-1").await.unwrap().is_none(), "the agent's pod is gone");
    let keys = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "KeysRotated").cloned();
    assert_eq!(keys.map(|c| c["status"].clone()), Some(json!("True")), "{status}");
    let recs = wait_records(&op, "the emergency rotation", |recs| {
        recs.iter().any(|r| r["action"] == "issuer.rotate" && r["details"]["kind"] == "emergency")
    })
    .await;
    assert!(recs.iter().any(|r| r["action"] == "revocation.evict" && r["object"]["name"] == "bot-1"));
    // Asked once: later reconciles (the status writes, the rotation's re-issuance) do not ask again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = records(&op.audit_log()).iter().filter(|r| r["action"] == "revocation.rotate-keys").count();
    assert_eq!(asked, 1);
    let rotations = records(&op.audit_log())
        .iter()
        .filter(|r| {
            r["action"] == "issuer.rotate" && r["kind"] == "intent" && r["details"]["kind"] == "emergency"
        })
        .count();
    assert_eq!(rotations, 1, "one emergency rotation");
    // A new pod of the stopped agent is refused by the pod webhook.
    let out = ns.apply(&pod.to_string());
    assert!(!out.status.success() && text(&out).contains("not Active"), "{}", text(&out));
    assert_eq!(agents.get("bot").await.unwrap().status.unwrap().phase.unwrap().as_str(), "Suspended");
}

#[tokio::test]
async fn an_operator_killed_in_the_middle_of_a_revocation_completes_it_after_the_restart() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-crash").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    read_policy(&ns).await;
    const N: usize = 30;
    let mut tokens = Vec::with_capacity(N);
    for i in 0..N {
        tokens.push(labelled_agent(&ns, &format!("w{i}"), "fleet").await);
    }
    let spec = json!({"target": {"selector": {"matchLabels": {"team": "fleet"}}}, "mode": "Revoke", "reason": "INC-4"});
    ns.api::<Revocation>().create(&PostParams::default(), &revocation("stop-fleet", spec)).await.unwrap();
    // Killed while it works through the fleet, then started again.
    tokio::time::sleep(Duration::from_millis(150)).await;
    op.kill();
    op.restart();
    let status = wait_revocation(&ns, "stop-fleet", "Enforced").await;
    assert_eq!(status["affectedAgents"], N as u64, "{status}");
    let agents = ns.api::<Agent>();
    for i in 0..N {
        wait_phase(&agents, &format!("w{i}"), "Revoked").await;
        assert!(ns.api::<Secret>().get_opt(&format!("w{i}-credentials")).await.unwrap().is_none());
    }
    for t in &tokens {
        assert!(!allows(&op, t).await);
    }
    // Each agent's revocation is recorded once, across both runs.
    let revokes = records(&op.audit_log())
        .into_iter()
        .filter(|r| r["action"] == "agent.revoke" && r["kind"] == "intent")
        .count();
    assert_eq!(revokes, N, "one agent.revoke intent per agent");
}

/// `kubectl agentiam token verify` of `token` with the revocation feed: (success, output).
fn verify_with_feed(op: &Operator, token: &str) -> (bool, String) {
    let feed = format!("{}/v1/revocations", op.base_url());
    let ca = op.ca_file().display().to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-agentiam"));
    cmd.args(["token", "verify", token, "--audience", AUD, "--issuer-url", &op.base_url(), "--cacert", &ca])
        .args(["--revocations", &feed]);
    let out = crate::harness::run_with_stdin(&mut cmd, None);
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn the_revocation_feed_reaches_followers_that_refuse_revoked_tokens_offline() {
    use agentiam::identity::TrustDomain;
    use agentiam::identity::follower::Follower;
    use agentiam::identity::verify::{JwtVerifier, VerifierConfig};
    use jsonwebtoken::jwk::JwkSet;

    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-feed").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let identity = active_agent(&ns, "bot").await;
    let uid = ns.api::<Agent>().get("bot").await.unwrap().metadata.uid.unwrap();

    // A plain GET: the list, with a strong ETag that a conditional GET answers with 304.
    let (status, headers, body) = crate::harness::http_get(&op.http_addr, "/v1/revocations").await;
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["issuer"], op.base_url().as_str());
    assert!(!list["agents"].as_array().unwrap().iter().any(|a| a == uid.as_str()), "{list}");
    let etag = headers.get("etag").cloned().expect("ETag");
    let (status, _, _) = crate::harness::http_request(
        &op.http_addr,
        "GET",
        "/v1/revocations",
        &[("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(status, 304);

    // A follower (the library's helper) over the event stream, and the token verified offline.
    let ca = std::fs::read_to_string(op.ca_file()).unwrap();
    let follower =
        Follower::new(&format!("{}/v1/revocations", op.base_url()), crate::harness::client_config(&ca, None))
            .unwrap();
    tokio::spawn(std::sync::Arc::clone(&follower).run());
    let (_, _, jwks) = crate::harness::http_get(&op.http_addr, "/keys").await;
    let jwks: JwkSet = serde_json::from_str(&jwks).unwrap();
    let config = VerifierConfig::new(TrustDomain::parse("cluster.local").unwrap(), op.base_url());
    let verified =
        JwtVerifier::new(config, &jwks).unwrap().verify(&identity, AUD, jiff::Timestamp::now()).unwrap();
    let fresh = || follower.fresh(Duration::from_secs(15));
    wait_for("the follower to hear the feed", WAIT, || async { fresh().map(|_| ()) }).await;
    assert_eq!(fresh().unwrap().check_svid(&verified), Ok(()));
    let (ok, out) = verify_with_feed(&op, &identity);
    assert!(ok && out.contains("revocations:   not listed"), "{out}");

    // Revoked: the follower refuses the token without asking anyone, and so does the CLI.
    let since = Instant::now();
    let spec = json!({"target": {"agentRef": {"name": "bot"}}, "mode": "Suspend", "reason": "INC-5"});
    ns.api::<Revocation>().create(&PostParams::default(), &revocation("stop-bot", spec)).await.unwrap();
    let took = loop {
        if fresh().is_some_and(|l| l.check_svid(&verified).is_err()) {
            break since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(10), "the follower never refused the token");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!(
        "revocation feed: a follower refused the revoked agent's token {} ms after the create returned",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    let err = fresh().unwrap().check_svid(&verified).unwrap_err().to_string();
    assert!(err.contains(&uid), "{err}");
    let (ok, out) = verify_with_feed(&op, &identity);
    assert!(!ok && out.contains("REVOKED") && out.contains(&uid), "{out}");

    // Lifted: the agent resumes and is no longer listed, but the token the suspension took back stays
    // listed by its jti, for the follower as for the decision API; the new credentials verify and pass.
    ns.api::<Revocation>().delete("stop-bot", &DeleteParams::default()).await.unwrap();
    wait_for("the follower to drop the lifted agent", WAIT, || async {
        fresh().filter(|l| !l.agents.contains(&uid)).map(|_| ())
    })
    .await;
    let still = fresh().unwrap().check_svid(&verified);
    assert_eq!(still, Err(agentiam::identity::revocations::Revoked::Token(verified.jti.clone())));
    assert!(!allows(&op, &identity).await, "the decision API still refuses the withdrawn token");
    wait_credentials(&ns.api::<Agent>(), "bot").await;
    let resumed = token(&ns, "bot").await;
    let config = VerifierConfig::new(TrustDomain::parse("cluster.local").unwrap(), op.base_url());
    let again =
        JwtVerifier::new(config, &jwks).unwrap().verify(&resumed, AUD, jiff::Timestamp::now()).unwrap();
    assert_eq!(fresh().unwrap().check_svid(&again), Ok(()));
}

/// A Shared Signals receiver written against PyJWT alone: it fetches the operator's JWKS, verifies every
/// pushed SET (`typ`, ES256 signature, issuer, audience, one event) and prints one JSON line per SET it
/// accepted (`{"events": ..., "sub_id": ...}`) or refused (`{"refused": why}`, answered 400). Its first
/// line is its port.
const SSF_RECEIVER: &str = r#"
import json, sys, http.server, jwt
issuer, audience_prefix, host = sys.argv[1], sys.argv[2], sys.argv[3]
jwks = jwt.PyJWKClient(issuer + "/keys")
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        try:
            assert self.headers.get("Content-Type") == "application/secevent+jwt", "content type"
            assert jwt.get_unverified_header(body).get("typ") == "secevent+jwt", "typ"
            key = jwks.get_signing_key_from_jwt(body).key
            audience = "http://%s:%d%s" % (host, self.server.server_address[1], self.path)
            claims = jwt.decode(body, key, algorithms=["ES256"], audience=audience, issuer=issuer,
                                options={"require": ["iat", "jti", "aud", "iss"], "verify_exp": False})
            assert len(claims["events"]) == 1, "one event"
            print(json.dumps({"events": claims["events"], "sub_id": claims["sub_id"], "txn": claims.get("txn")}), flush=True)
            self.send_response(202)
        except Exception as e:
            print(json.dumps({"refused": repr(e)}), flush=True)
            self.send_response(400)
        self.end_headers()
server = http.server.ThreadingHTTPServer((host, 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[tokio::test]
async fn a_shared_signals_receiver_gets_verified_caep_events_for_each_revoked_agent() {
    use std::io::BufRead as _;
    let env = require_cluster!();
    crate::process_only!(
        env,
        "SSF push is https except to loopback, and a pod's loopback is not the host's: the test's receiver \
         would need a certificate from the operator's own API CA"
    );
    let ns = TestNs::new(&env, "rvk-ssf").await;
    let mut op = Operator::start(&env, &ns.name, &[]);
    let _ = active_agent(&ns, "bot").await;
    let uid = ns.api::<Agent>().get("bot").await.unwrap().metadata.uid.unwrap();

    // The receiver, an independent JOSE implementation (PyJWT), trusting the operator's API CA.
    let mut receiver =
        std::process::Command::new(std::env::var("AGENTIAM_PYTHON").unwrap_or_else(|_| "python3".into()))
            .args(["-c", SSF_RECEIVER, &op.base_url(), "/events", env.local_host()])
            .env("SSL_CERT_FILE", op.ca_file())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("a Python with PyJWT is required (tools/e2e.sh makes one: tools/python-env.sh)");
    let mut lines = std::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or(Value::Null));
        }
    });
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let _receiver = Kill(receiver);

    // The transmitter's metadata, and stream management only for callers with the verb.
    let (status, _, body) = crate::harness::http_get(&op.http_addr, "/.well-known/ssf-configuration").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["delivery_methods_supported"], json!(["urn:ietf:rfc:8935"]));
    assert_eq!(config["jwks_uri"], format!("{}/keys", op.base_url()));
    let endpoint = format!("http://{}:{port}/events", env.local_host());
    let create =
        json!({"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": endpoint}, "description": "e2e"})
            .to_string();
    let post = |bearer: Option<String>, path: &'static str, body: String| {
        let addr = op.http_addr.clone();
        async move {
            let auth = bearer.map(|b| format!("Bearer {b}"));
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("Authorization", a.as_str()));
            }
            let (status, _, text) = crate::harness::http_post(&addr, path, &headers, body.as_bytes()).await;
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    assert_eq!(post(None, "/ssf/streams", create.clone()).await.0, 401);
    let nobody = sa_token(&env, &ns, "nobody", false);
    let (status, answer) = post(Some(nobody), "/ssf/streams", create.clone()).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("subscribe"), "{answer}");
    let subscriber = sa_token(&env, &ns, "siem", true);
    let (status, stream) = post(Some(subscriber.clone()), "/ssf/streams", create).await;
    assert_eq!(status, 201, "{stream}");
    let stream_id = stream["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(stream["events_delivered"].as_array().unwrap().len(), 3, "{stream}");
    let recs = records(&op.audit_log());
    assert!(
        recs.iter()
            .any(|r| r["action"] == "ssf.stream.create" && r["details"]["streamID"] == stream_id.as_str())
    );

    // Verification: the receiver gets and verifies a verification event carrying our state.
    let verify = json!({"stream_id": stream_id, "state": "e2e-state"}).to_string();
    assert_eq!(post(Some(subscriber.clone()), "/ssf/verify", verify).await.0, 204);
    let got = next_set(&mut rx).await;
    let verification = "https://schemas.openid.net/secevent/ssf/event-type/verification";
    assert_eq!(got["events"][verification]["state"], "e2e-state", "{got}");

    // A revocation: a verified session-revoked and credential-change SET for the agent, by SPIFFE ID and UID.
    let since = Instant::now();
    let spec = json!({"target": {"agentRef": {"name": "bot"}}, "mode": "Revoke", "reason": "INC-6"});
    ns.api::<Revocation>().create(&PostParams::default(), &revocation("stop-bot", spec)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let got = next_set(&mut rx).await;
        assert!(got.get("refused").is_none() && !got.is_null(), "the receiver refused or got nothing: {got}");
        seen.push(got);
    }
    eprintln!(
        "shared signals: both SETs verified by the receiver {} ms after the create returned",
        since.elapsed().as_millis()
    );
    let spiffe = format!("spiffe://cluster.local/ns/{}/agent/bot", ns.name);
    for (got, event) in seen.iter().zip([
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
        "https://schemas.openid.net/secevent/caep/event-type/credential-change",
    ]) {
        assert!(got["events"].get(event).is_some(), "{got}");
        assert_eq!(got["sub_id"]["identifiers"][0]["uri"], spiffe.as_str(), "{got}");
        assert_eq!(got["sub_id"]["identifiers"][1]["id"], uid.as_str(), "{got}");
    }
    assert_eq!(
        seen[1]["events"]["https://schemas.openid.net/secevent/caep/event-type/credential-change"]["change_type"],
        "revoke"
    );

    // The stream survives a restart (it is kept in a ConfigMap), and deleting it is recorded.
    let cm = env.kubectl(&["get", "configmap", "agentiam-ssf-streams", "-n", &ns.name, "-o", "json"], None);
    assert!(String::from_utf8_lossy(&cm.stdout).contains(&stream_id));
    op.restart();
    let bearer = format!("Bearer {subscriber}");
    let path = format!("/ssf/streams?stream_id={stream_id}");
    let (status, _, body) =
        crate::harness::http_request(&op.http_addr, "GET", &path, &[("Authorization", &bearer)], b"").await;
    assert_eq!(status, 200, "the stream is back after a restart: {body}");
    let (status, _, _) = crate::harness::http_request(
        &op.http_addr,
        "DELETE",
        &format!("/ssf/streams?stream_id={stream_id}"),
        &[("Authorization", &format!("Bearer {subscriber}"))],
        b"",
    )
    .await;
    assert_eq!(status, 204);
    assert!(records(&op.audit_log()).iter().any(|r| r["action"] == "ssf.stream.delete"));
}

/// A ServiceAccount `name` in `ns` (with the verb `subscribe` on revocations when `subscribe`), and a token.
fn sa_token(env: &crate::harness::Env, ns: &TestNs, name: &str, subscribe: bool) -> String {
    let out = env.kubectl(&["create", "serviceaccount", name, "-n", &ns.name], None);
    assert!(out.status.success(), "{}", text(&out));
    if subscribe {
        let yaml = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}}}\nrules:\n  - {{apiGroups: [agentiam.dev], resources: [revocations], verbs: [subscribe]}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\nsubjects: [{{kind: ServiceAccount, name: {name}, namespace: {}}}]\n",
            ns.name
        );
        let out = env.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = env.kubectl(&["create", "token", name, "-n", &ns.name], None);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The next line the SSF receiver printed (Null after 20 s of nothing).
async fn next_set(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.ok().flatten().unwrap_or(Value::Null)
}

#[tokio::test]
async fn an_agent_whose_behaviour_leaves_its_baseline_is_suspended_by_the_monitor() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-anomaly").await;
    // One-second buckets and a five-bucket warm-up, so the test learns in seconds what takes minutes.
    let op = Operator::start(&env, &ns.name, &["--anomaly-bucket", "1s", "--anomaly-warmup", "5"]);
    read_policy(&ns).await;
    let identity = active_agent(&ns, "bot").await;
    wait_for("bot allowed", WAIT, || async { allows(&op, &identity).await.then_some(()) }).await;

    // Ten seconds of its usual work: four reads a second of two contacts.
    let steady_until = Instant::now() + Duration::from_secs(10);
    let mut i = 0u32;
    while Instant::now() < steady_until {
        let resource = format!("crm:contacts/{}", i % 2);
        assert_eq!(decide(&op, &identity, "read", &resource, json!({})).await["decision"], "Allow");
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ns.api::<Revocation>().list(&Default::default()).await.unwrap().items.is_empty(),
        "steady work is normal"
    );

    // Then it reads forty different contacts in a second: the monitor suspends it.
    let since = Instant::now();
    for n in 100..140 {
        decide(&op, &identity, "read", &format!("crm:contacts/{n}"), json!({})).await;
    }
    let revocation = wait_for("the monitor's Revocation", WAIT, || async {
        let list = ns.api::<Revocation>().list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|r| r.labels().get("agentiam.dev/created-by").map(String::as_str) == Some("monitor"))
    })
    .await;
    eprintln!(
        "monitor: Revocation {} created {} ms after the burst began",
        revocation.name_any(),
        since.elapsed().as_millis()
    );
    assert_eq!(revocation.spec.mode, agentiam::api::RevocationMode::Suspend);
    assert!(revocation.spec.reason.contains("distinct-resources"), "{}", revocation.spec.reason);
    wait_phase(&ns.api::<Agent>(), "bot", "Suspended").await;
    assert!(!allows(&op, &identity).await);
    let recs = wait_records(&op, "the monitor's record", |recs| {
        recs.iter().any(|r| r["action"] == "monitor.suspend")
    })
    .await;
    let rec = recs.iter().find(|r| r["action"] == "monitor.suspend").unwrap();
    assert_eq!(rec["details"]["feature"], "distinct-resources", "{rec}");
    let events = env.kubectl(
        &["get", "events", "-n", &ns.name, "--field-selector", "reason=AnomalyDetected", "-o", "name"],
        None,
    );
    assert!(!String::from_utf8_lossy(&events.stdout).trim().is_empty(), "no AnomalyDetected Event");
}

/// The lifetime of credentials as status reports them.
fn lifetime(a: &Agent) -> Option<i64> {
    let c = a.status.as_ref()?.credentials.as_ref()?;
    let at = |t: &Option<String>| t.as_deref()?.parse::<jiff::Timestamp>().ok();
    Some(at(&c.expires_at)?.as_second() - at(&c.issued_at)?.as_second())
}

#[tokio::test]
async fn an_alert_lowers_the_trust_score_and_new_credentials_follow_it() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-trust").await;
    // Alerts only: the monitor never suspends here.
    let op = Operator::start(
        &env,
        &ns.name,
        &["--anomaly-bucket", "1s", "--anomaly-warmup", "5", "--anomaly-suspend-score", "0"],
    );
    read_policy(&ns).await;
    let identity = active_agent(&ns, "bot").await;
    let agents = ns.api::<Agent>();
    let before = agents.get("bot").await.unwrap();
    // A Production agent with a Team owner scores 250: its credentials live half the default 10 minutes;
    // an alert's 100 points take it below 200, where they live a quarter.
    assert_eq!(before.status.as_ref().unwrap().trust_score, Some(250));
    assert_eq!(lifetime(&before), Some(300));
    let steady_until = Instant::now() + Duration::from_secs(10);
    let mut i = 0u32;
    while Instant::now() < steady_until {
        decide(&op, &identity, "read", &format!("crm:contacts/{}", i % 2), json!({})).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for n in 100..140 {
        decide(&op, &identity, "read", &format!("crm:contacts/{n}"), json!({})).await;
    }
    wait_records(&op, "the monitor's alert", |r| r.iter().any(|x| x["action"] == "monitor.alert")).await;
    let after = wait_for("credentials with the lowered score's lifetime", WAIT, || async {
        let a = agents.get("bot").await.ok()?;
        (lifetime(&a) == Some(150)).then_some(a)
    })
    .await;
    assert_eq!(
        after.status.as_ref().unwrap().phase,
        Some(agentiam::api::AgentPhase::Active),
        "an alert does not suspend"
    );
    assert!(ns.api::<Revocation>().list(&Default::default()).await.unwrap().items.is_empty());
    // The earlier token is still good: a penalty is not a revocation.
    assert!(allows(&op, &identity).await, "the token issued before the alert is still accepted");
}

#[tokio::test]
#[ignore = "creates and revokes 1,000 Agents; tools/e2e.sh runs it alone, after the parallel tests"]
async fn a_selector_revocation_of_a_thousand_agents_denies_them_all_and_deletes_their_secrets() {
    use futures::StreamExt as _;
    const N: usize = 1000;
    const SAMPLE: usize = 50;
    let env = require_cluster!();
    let ns = TestNs::new(&env, "rvk-fleet").await;
    let op = Operator::start(&env, &ns.name, &[]);
    read_policy(&ns).await;
    let agents = ns.api::<Agent>();
    let started = Instant::now();
    futures::stream::iter(0..N)
        .map(|i| {
            let agents = agents.clone();
            async move {
                let agent: Agent = serde_json::from_value(json!({
                    "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
                    "metadata": {"name": format!("f{i}"), "labels": {"fleet": "blue"}},
                    "spec": {"owner": {"kind": "Team", "name": "fleet"}, "purpose": "a fleet", "credentials": {"audiences": [AUD]}},
                }))
                .unwrap();
                agents.create(&PostParams::default(), &agent).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let secrets = ns.api::<Secret>();
    let labelled = kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=agentiam-operator");
    let count = || async {
        secrets
            .list_metadata(&labelled)
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.ends_with("-credentials")))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for("1,000 agents with credentials", Duration::from_secs(600), || async {
        (count().await == N).then_some(())
    })
    .await;
    eprintln!("fleet: {N} agents Active with credentials after {} s", started.elapsed().as_secs());
    let mut sample = Vec::with_capacity(SAMPLE);
    for i in (0..N).step_by(N / SAMPLE) {
        sample.push(token(&ns, &format!("f{i}")).await);
    }
    for t in &sample {
        assert!(allows(&op, t).await);
    }

    let since = Instant::now();
    let spec = json!({"target": {"selector": {"matchLabels": {"fleet": "blue"}}}, "mode": "Revoke", "reason": "INC-7"});
    ns.api::<Revocation>().create(&PostParams::default(), &revocation("stop-fleet", spec)).await.unwrap();
    let refs: Vec<&str> = sample.iter().map(String::as_str).collect();
    let denied = all_denied(&op, &refs, since).await;
    eprintln!(
        "fleet: {SAMPLE} sampled tokens of {N} refused {} ms after the create returned",
        denied.as_millis()
    );
    // Asking about 50 tokens one after the other takes most of this; the status says when the index
    // refused them.
    assert!(denied < Duration::from_secs(2), "{denied:?}");
    let status = wait_for("the fleet's Revocation Enforced", Duration::from_secs(600), || async {
        let r = ns.api::<Revocation>().get_opt("stop-fleet").await.ok().flatten()?;
        let status = serde_json::to_value(r.status?).ok()?;
        (status["phase"] == "Enforced").then_some(status)
    })
    .await;
    eprintln!(
        "fleet: Enforced (every phase recorded, every Secret gone) {} s after the create: {status}",
        since.elapsed().as_secs()
    );
    assert_eq!(status["affectedAgents"], N as u64, "{status}");
    assert!(status["decisionApiLatencyMs"].as_u64().is_some_and(|ms| ms < 250), "{status}");
    assert_eq!(count().await, 0, "every credentials Secret is gone");
    let list = agents.list(&Default::default()).await.unwrap();
    let revoked = list
        .items
        .iter()
        .filter(|a| a.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.as_str() == "Revoked"))
        .count();
    assert_eq!(revoked, N);
    for t in &sample {
        assert!(!allows(&op, t).await);
    }
}
