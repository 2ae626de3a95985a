//! What a tenant can write is never authority (issue 10), against the real API server: a forged status
//! (transition times, a credentials summary, a terminal phase) changes no decision and is overwritten and
//! recorded; the credentials Secret holds exactly what the operator issued, whatever was written into it
//! before or after; narrowing an agent's credentials refuses the tokens it no longer has at once; a crash
//! between the Secret write and its outcome leaves every token in the log by its jti.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agentiam::api::Agent;
use agentiam::identity::verify::decode_unverified;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::authz::{
    AUD, FLIP_WITHIN, active_agent, apply_policy, ask, authorize, flip_latency, reason, rule, token,
    wait_decision,
};
use crate::harness::{
    Operator, TestNs, WAIT, basic_spec, records, text, wait_credentials, wait_for, wait_phase, wait_records,
};
use crate::require_cluster;

/// The field manager of the tenant who forges things.
const TENANT: &str = "tenant";

fn as_tenant() -> PatchParams {
    PatchParams { field_manager: Some(TENANT.into()), ..PatchParams::default() }
}

/// Writes `status` fields as a tenant with `patch agents/status` would (a JSON merge patch).
/// Writes `status` as a tenant and returns the object as the write left it (the operator may overwrite it
/// a moment later).
async fn forge_status(ns: &TestNs, name: &str, status: Value) -> Agent {
    ns.api::<Agent>()
        .patch_status(name, &as_tenant(), &Patch::Merge(json!({ "status": status })))
        .await
        .expect("forge the status")
}

/// Allows `read` on `crm:contacts/*` to the named agents.
pub(crate) async fn allow_reads(ns: &TestNs, agents: &[&str]) {
    let read = rule("read", "Allow", &["read"], &["crm:contacts/*"]);
    apply_policy(ns, "read", json!({"agents": {"names": agents}, "rules": [read]})).await;
}

/// Asks for `body` for `window` and fails if the answer is ever not `want` (the point is that nothing the
/// tenant wrote flips it, neither before nor after the operator rewrites the status).
async fn stays(op: &Operator, body: &Value, want: &str, window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        let r = authorize(op, body).await;
        assert_eq!(r["decision"], want, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the log holds an `agent.status.overwritten` record for `agent` naming `field`.
async fn wait_overwrite_recorded(op: &Operator, agent: &str, field: &str) -> Value {
    let recs = wait_records(op, &format!("the overwrite of {agent}'s {field} recorded"), |recs| {
        recs.iter().any(|r| overwrite_of(r, agent, field))
    })
    .await;
    recs.into_iter().find(|r| overwrite_of(r, agent, field)).unwrap()
}

fn overwrite_of(r: &Value, agent: &str, field: &str) -> bool {
    r["action"] == "agent.status.overwritten"
        && r["object"]["name"] == agent
        && r["details"]["manager"] == TENANT
        && r["details"]["fields"].as_str().is_some_and(|f| f.split(',').any(|x| x == field))
}

fn ready_since(a: &Agent) -> String {
    let c = a.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    c.last_transition_time.0.to_string()
}

#[tokio::test]
async fn a_forged_ready_time_never_brings_back_a_token_from_before_a_suspension() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "forge-ltt").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let first = active_agent(&ns, "bot").await;
    allow_reads(&ns, &["bot"]).await;
    wait_decision(&op, &ask(&first, "read", "crm:contacts/1"), "Allow").await;

    let lifecycle = |state: &str| Patch::Merge(json!({"spec": {"lifecycle": {"desiredState": state}}}));
    api.patch("bot", &PatchParams::default(), &lifecycle("Suspended")).await.unwrap();
    wait_for("bot Suspended without credentials", WAIT, || async {
        let st = api.get_opt("bot").await.ok().flatten()?.status?;
        (st.phase?.as_str() == "Suspended" && st.credentials.is_none()).then_some(())
    })
    .await;
    api.patch("bot", &PatchParams::default(), &lifecycle("Active")).await.unwrap();
    let resumed = wait_credentials(&api, "bot").await;
    let second = token(&ns, "bot").await;
    assert_ne!(first, second);
    wait_decision(&op, &ask(&second, "read", "crm:contacts/1"), "Allow").await;
    let old = ask(&first, "read", "crm:contacts/1");
    assert_eq!(authorize(&op, &old).await["decision"], "Deny");

    // The review's example: Ready's lastTransitionTime moved back before the first token was issued.
    let true_since = ready_since(&resumed);
    let mut conditions = resumed.status.clone().unwrap().conditions;
    for c in &mut conditions {
        c.last_transition_time.0 = "2000-01-01T00:00:00Z".parse().unwrap();
    }
    forge_status(&ns, "bot", json!({ "conditions": conditions })).await;
    stays(&op, &old, "Deny", Duration::from_secs(2)).await;
    // The operator overwrote it with the time it recorded, and recorded who wrote it.
    wait_for("the forged Ready time overwritten", WAIT, || async {
        let a = api.get_opt("bot").await.ok().flatten()?;
        (ready_since(&a) == true_since).then_some(())
    })
    .await;
    wait_overwrite_recorded(&op, "bot", "conditions").await;
    stays(&op, &old, "Deny", Duration::from_secs(1)).await;
    assert_eq!(authorize(&op, &ask(&second, "read", "crm:contacts/1")).await["decision"], "Allow");
}

#[tokio::test]
async fn a_forged_credentials_summary_on_suspended_and_pending_agents_is_cleared() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "forge-creds").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let mut suspended = basic_spec();
    suspended["lifecycle"] = json!({"desiredState": "Suspended"});
    ns.create_agent("sus", suspended).await;
    // Passes the schema, fails the reconciler's validation: Pending.
    let mut pending = basic_spec();
    pending["provenance"] = json!({"image": "NOT A/VALID:image:"});
    ns.create_agent("pend", pending).await;
    wait_phase(&api, "sus", "Suspended").await;
    wait_phase(&api, "pend", "Pending").await;

    let forged = json!({"credentials": {
        "secretName": "x-credentials", "keyId": "forged-key",
        "issuedAt": "2026-01-01T00:00:00Z", "expiresAt": "2099-01-01T00:00:00Z",
    }});
    for name in ["sus", "pend"] {
        // The write's own answer: a re-read may already see the operator's correction.
        let forged_seen = forge_status(&ns, name, forged.clone()).await.status.unwrap().credentials;
        assert!(forged_seen.is_some(), "the forgery itself went through (the test's premise)");
    }
    for name in ["sus", "pend"] {
        wait_for(&format!("the forged credentials of {name} cleared"), WAIT, || async {
            let st = api.get_opt(name).await.ok().flatten()?.status?;
            st.credentials.is_none().then_some(())
        })
        .await;
        wait_overwrite_recorded(&op, name, "credentials").await;
    }
    // Nothing was issued to either.
    for name in ["sus", "pend"] {
        assert!(ns.api::<Secret>().get_opt(&format!("{name}-credentials")).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_forged_terminal_phase_is_rewritten_and_recorded_not_obeyed() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "forge-phase").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let tokens = [active_agent(&ns, "r1").await, active_agent(&ns, "r2").await];
    allow_reads(&ns, &["r1", "r2"]).await;
    for t in &tokens {
        wait_decision(&op, &ask(t, "read", "crm:contacts/1"), "Allow").await;
    }
    forge_status(&ns, "r1", json!({"phase": "Retired"})).await;
    forge_status(&ns, "r2", json!({"phase": "Revoked"})).await;
    for (name, t) in ["r1", "r2"].iter().zip(&tokens) {
        wait_phase(&api, name, "Active").await;
        wait_overwrite_recorded(&op, name, "phase").await;
        // Still Active where it counts: its credentials stand and its decisions allow.
        assert!(ns.api::<Secret>().get_opt(&format!("{name}-credentials")).await.unwrap().is_some());
        assert_eq!(authorize(&op, &ask(t, "read", "crm:contacts/1")).await["decision"], "Allow");
    }
    let recs = records(&op.audit_log());
    let terminal =
        recs.iter().filter(|r| r["action"] == "agent.retire" || r["action"] == "agent.revoke").count();
    assert_eq!(terminal, 0, "a forged phase is not a transition");
    // Its own terminal transition still holds: retire r1 for real.
    let retire = Patch::Merge(json!({"spec": {"lifecycle": {"desiredState": "Retired"}}}));
    api.patch("r1", &PatchParams::default(), &retire).await.unwrap();
    wait_phase(&api, "r1", "Retired").await;
    stays(&op, &ask(&tokens[0], "read", "crm:contacts/1"), "Deny", Duration::from_secs(1)).await;
    assert!(records(&op.audit_log()).iter().any(|r| r["action"] == "agent.retire"));
}

/// The Secret's data as text.
fn data(s: &Secret) -> BTreeMap<String, String> {
    let d = s.data.clone().unwrap_or_default();
    d.into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect()
}

fn keys(s: &Secret) -> BTreeSet<String> {
    data(s).into_keys().collect()
}

async fn secret(ns: &TestNs, agent: &str) -> Secret {
    ns.api::<Secret>().get(&format!("{agent}-credentials")).await.expect("credentials Secret")
}

/// Waits until the agent's Secret holds exactly `want` and a token other than `not` (when given); on
/// timeout, shows what it holds and the operator's log.
async fn wait_exact(op: &Operator, ns: &TestNs, agent: &str, want: &[&str], not: Option<&str>) -> Secret {
    let want: BTreeSet<String> = want.iter().map(ToString::to_string).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let s = ns.api::<Secret>().get_opt(&format!("{agent}-credentials")).await.ok().flatten();
        if let Some(s) = &s {
            let fresh = not.is_none_or(|t| data(s).get(&format!("token-{AUD}")).is_some_and(|x| x != t));
            if keys(s) == want && fresh {
                return s.clone();
            }
        }
        if Instant::now() > deadline {
            let log = op.stderr();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!(
                "{agent}'s Secret never held exactly {want:?}: {:?}\noperator log:\n{tail}",
                s.map(|s| keys(&s))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `exp` of a token, RFC 3339.
fn exp(token: &str) -> jiff::Timestamp {
    let (_, claims) = decode_unverified(token).unwrap();
    jiff::Timestamp::from_second(claims["exp"].as_i64().unwrap()).unwrap()
}

/// The status must report exactly what the Secret holds, and that is what was issued.
async fn assert_status_matches_secret(ns: &TestNs, agent: &str) {
    let api = ns.api::<Agent>();
    let s = secret(ns, agent).await;
    let t = data(&s)[&format!("token-{AUD}")].clone();
    let st = wait_for("the status to report the current credentials", WAIT, || async {
        let c = api.get(agent).await.ok()?.status?.credentials?;
        let at: jiff::Timestamp = c.expires_at.as_deref()?.parse().ok()?;
        (at == exp(&t)).then_some(c)
    })
    .await;
    assert!(exp(&t) <= jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1), "{st:?}");
}

#[tokio::test]
async fn the_credentials_secret_holds_exactly_what_the_operator_issued() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "secret-exact").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let secrets = ns.api::<Secret>();
    let exact = [format!("token-{AUD}"), "bundle.pem".to_owned()];
    let exact: Vec<&str> = exact.iter().map(String::as_str).collect();

    // Before issuance: a tenant puts a Secret of the agent's name in place, with an extra token, an SVID
    // for an agent without x509, and annotations that look like the operator's.
    let planted: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pre-credentials", "annotations": {
            "agentiam.dev/issue-key": "credential.issue:x:1", "agentiam.dev/expires-at": "2099-01-01T00:00:00Z"}},
        "type": "Opaque",
        "stringData": {"token-evil": "x.y.z", "svid.pem": "not a cert", "svid-key.pem": "not a key"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &planted).await.unwrap();
    let first = active_agent(&ns, "pre").await;
    let s = wait_exact(&op, &ns, "pre", &exact, None).await;
    assert_eq!(data(&s)[&format!("token-{AUD}")], first);
    assert_status_matches_secret(&ns, "pre").await;
    allow_reads(&ns, &["pre"]).await;
    wait_decision(&op, &ask(&first, "read", "crm:contacts/1"), "Allow").await;

    // After issuance: the same keys added, and the expiry annotation moved a year ahead.
    let mut tampered = secret(&ns, "pre").await;
    let d = tampered.data.get_or_insert_default();
    d.insert("token-evil".into(), ByteString(first.clone().into_bytes()));
    d.insert("svid.pem".into(), ByteString(b"not a cert".to_vec()));
    d.insert("svid-key.pem".into(), ByteString(b"not a key".to_vec()));
    let year = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)).to_string();
    tampered.metadata.annotations.get_or_insert_default().insert("agentiam.dev/expires-at".into(), year);
    secrets.replace("pre-credentials", &PostParams::default(), &tampered).await.unwrap();
    // Replaced within seconds (the operator watches its Secrets), and the tokens of the Secret it could not
    // vouch for are refused: it was tampered with.
    let s = wait_exact(&op, &ns, "pre", &exact, Some(&first)).await;
    let second = data(&s)[&format!("token-{AUD}")].clone();
    assert_status_matches_secret(&ns, "pre").await;
    wait_decision(&op, &ask(&second, "read", "crm:contacts/1"), "Allow").await;
    let r = authorize(&op, &ask(&first, "read", "crm:contacts/1")).await;
    assert_eq!(r["decision"], "Deny", "{r}");
    let recs = records(&op.audit_log());
    let replaced = recs.iter().any(|r| {
        r["action"] == "credential.issue"
            && r["kind"] == "intent"
            && r["details"]["supersedes"] == "all"
            && r["details"]["secretFound"].is_string()
    });
    assert!(replaced, "the replacement is recorded with what was found");

    // Our label taken off (which would hide the Secret from a label-selected watch): put back.
    let mut unlabelled = secret(&ns, "pre").await;
    unlabelled.metadata.labels.get_or_insert_default().remove("agentiam.dev/agent");
    secrets.replace("pre-credentials", &PostParams::default(), &unlabelled).await.unwrap();
    wait_for("the label restored", WAIT, || async {
        let s = secrets.get_opt("pre-credentials").await.ok()??;
        s.metadata.labels?.contains_key("agentiam.dev/agent").then_some(())
    })
    .await;
    let s = wait_exact(&op, &ns, "pre", &exact, None).await;
    assert!(s.metadata.owner_references.is_some_and(|o| o.len() == 1));
}

#[tokio::test]
async fn narrowing_an_agents_credentials_refuses_what_it_no_longer_has_at_once() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "narrow").await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    let spec = json!({
        "owner": {"kind": "Team", "name": "e2e"}, "purpose": "narrowing",
        "credentials": {"audiences": [AUD, "tickets"], "x509": true},
    });
    ns.create_agent("bot", spec).await;
    wait_credentials(&api, "bot").await;
    let s = secret(&ns, "bot").await;
    let (crm, tickets) = (data(&s)[&format!("token-{AUD}")].clone(), data(&s)["token-tickets"].clone());
    assert!(keys(&s).contains("svid.pem"));
    allow_reads(&ns, &["bot"]).await;
    for t in [&crm, &tickets] {
        wait_decision(&op, &ask(t, "read", "crm:contacts/1"), "Allow").await;
    }

    // The review's example: an audience removed and x509 turned off.
    let narrow = Patch::Merge(json!({"spec": {"credentials": {"audiences": [AUD], "x509": false}}}));
    api.patch("bot", &PatchParams::default(), &narrow).await.unwrap();
    let (took, r) = flip_latency(
        &op,
        &ask(&tickets, "read", "crm:contacts/1"),
        "Deny",
        Instant::now(),
        "audience removed",
    )
    .await;
    assert!(took < FLIP_WITHIN, "removing an audience took {took:?} to refuse its token");
    assert!(reason(&r).contains("audience is no longer granted"), "{r}");
    let s = wait_exact(&op, &ns, "bot", &[&format!("token-{AUD}"), "bundle.pem"], Some(&crm)).await;
    assert!(!keys(&s).contains("token-tickets") && !keys(&s).contains("svid-key.pem"));
    // The CRM token from before is still one this agent may hold (same audience, same lifetime).
    assert_eq!(authorize(&op, &ask(&crm, "read", "crm:contacts/1")).await["decision"], "Allow");

    // A shorter lifetime: every token issued for the longer one is refused at once.
    let current = data(&s)[&format!("token-{AUD}")].clone();
    let shorter = Patch::Merge(json!({"spec": {"credentials": {"ttl": "5m"}}}));
    api.patch("bot", &PatchParams::default(), &shorter).await.unwrap();
    let (took, r) = flip_latency(
        &op,
        &ask(&current, "read", "crm:contacts/1"),
        "Deny",
        Instant::now(),
        "lifetime shortened",
    )
    .await;
    assert!(took < FLIP_WITHIN, "shortening the lifetime took {took:?} to refuse the longer tokens");
    assert!(reason(&r).contains("lifetime narrowed"), "{r}");
    let s = wait_exact(&op, &ns, "bot", &[&format!("token-{AUD}"), "bundle.pem"], Some(&current)).await;
    let fresh = data(&s)[&format!("token-{AUD}")].clone();
    wait_decision(&op, &ask(&fresh, "read", "crm:contacts/1"), "Allow").await;

    // The same rule for a policy: a lifetime cap below what the tokens were issued for refuses them at once.
    let read = rule("read", "Allow", &["read"], &["crm:contacts/*"]);
    let capped = json!({"agents": {"names": ["bot"]}, "rules": [read], "credentialTTLCap": "1m"});
    apply_policy(&ns, "read", capped).await;
    let (took, r) = flip_latency(
        &op,
        &ask(&fresh, "read", "crm:contacts/1"),
        "Deny",
        Instant::now(),
        "policy cap lowered",
    )
    .await;
    assert!(took < FLIP_WITHIN, "a lower policy cap took {took:?} to refuse the longer tokens");
    assert!(reason(&r).contains("lifetime narrowed"), "{r}");
    let s = wait_exact(&op, &ns, "bot", &[&format!("token-{AUD}"), "bundle.pem"], Some(&fresh)).await;
    let capped_token = data(&s)[&format!("token-{AUD}")].clone();
    wait_decision(&op, &ask(&capped_token, "read", "crm:contacts/1"), "Allow").await;
}

#[tokio::test]
async fn a_crash_between_the_secret_write_and_its_outcome_leaves_every_token_in_the_log() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "crash-jti").await;
    let mut op = Operator::start(&env, &ns.name, &["--failpoint-delay-after-effect", "6s"]);
    let spec = json!({
        "owner": {"kind": "Team", "name": "e2e"}, "purpose": "crash",
        "credentials": {"audiences": [AUD, "tickets"]},
    });
    ns.create_agent("bot", spec).await;
    // Killed once the Secret is written and before the issuance's outcome is.
    let key = wait_for("the Secret written, its issuance outcome pending", WAIT, || async {
        ns.api::<Secret>().get_opt("bot-credentials").await.ok()??;
        let recs = records(&op.audit_log());
        let open: Vec<&Value> =
            recs.iter().filter(|r| r["kind"] == "intent" && r["action"] == "credential.issue").collect();
        let intent = open
            .into_iter()
            .find(|i| !recs.iter().any(|r| r["kind"] == "outcome" && r["key"] == i["key"]))?;
        intent["key"].as_str().map(str::to_owned)
    })
    .await;
    op.kill();

    let s = secret(&ns, "bot").await;
    let jtis: Vec<String> = [format!("token-{AUD}"), "token-tickets".to_owned()]
        .iter()
        .map(|k| decode_unverified(&data(&s)[k]).unwrap().1["jti"].as_str().unwrap().to_owned())
        .collect();
    let recs = records(&op.audit_log());
    let intent = recs.iter().find(|r| r["kind"] == "intent" && r["key"] == key.as_str()).unwrap();
    let named: Vec<&str> = intent["details"]["jti"].as_str().unwrap().split(',').collect();
    for j in &jtis {
        assert!(named.contains(&j.as_str()), "token {j} in the Secret is not named by the intent {intent}");
    }

    op.set_extra(&[]);
    op.restart();
    let outcome = wait_for("the interrupted issuance resolved", WAIT, || async {
        records(&op.audit_log()).into_iter().find(|r| r["kind"] == "outcome" && r["key"] == key.as_str())
    })
    .await;
    assert_eq!(outcome["outcome"], "success", "{outcome}");
    assert_eq!(outcome["details"]["resolvedBy"], "intent-recovery", "{outcome}");
    let named: Vec<&str> = outcome["details"]["jti"].as_str().unwrap().split(',').collect();
    for j in &jtis {
        assert!(named.contains(&j.as_str()), "the recovery outcome does not name token {j}: {outcome}");
        // And the CLI finds the issuance by the token ID alone.
        let log = op.audit_log();
        let out = env.plugin(&[
            "audit",
            "trace",
            "bot",
            "-n",
            &ns.name,
            "--jti",
            j,
            "--log",
            log.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains("credential.issue") && t.contains("Intent") && t.contains("Outcome"), "{t}");
    }
    // The tokens that survived the crash are the agent's credentials, and decisions accept them.
    allow_reads(&ns, &["bot"]).await;
    let t = data(&secret(&ns, "bot").await)[&format!("token-{AUD}")].clone();
    wait_decision(&op, &ask(&t, "read", "crm:contacts/1"), "Allow").await;
}
