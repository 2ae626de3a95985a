//! Killing the operator between an audit intent and its side effect loses and duplicates nothing.

use std::collections::BTreeMap;

use agentiam::api::Agent;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::{
    Operator, TestNs, WAIT, basic_spec, records, text, wait_checkpoint_covers_log, wait_for, wait_phase,
};
use crate::require_cluster;

/// Keys of intents without an outcome, in the file as it is now.
fn open_intents(recs: &[Value]) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    for r in recs {
        let key = r["key"].as_str().unwrap_or_default().to_owned();
        match r["kind"].as_str() {
            Some("intent") => open.push(key),
            Some("outcome") => open.retain(|k| *k != key),
            _ => {}
        }
    }
    open
}

/// Waits until the operator has written an intent it has not acted on yet, then SIGKILLs it.
async fn kill_inside_an_intent(op: &mut Operator) -> String {
    let key = wait_for("an open intent to kill inside", WAIT, || async {
        open_intents(&records(&op.audit_log())).pop()
    })
    .await;
    op.kill();
    key
}

#[tokio::test]
async fn killing_the_operator_mid_reconcile_loses_and_duplicates_no_audit_record() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "kill").await;
    let api = ns.api::<Agent>();
    let names: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();

    // 1. Killed after the intents were written, before the side effect (status) happened.
    let mut op = Operator::start(&env, &ns.name, &["--failpoint-delay-after-intent", "3s"]);
    for n in &names {
        ns.create_agent(n, basic_spec()).await;
    }
    let activations = wait_for("four open activation intents", WAIT, || async {
        let open = open_intents(&records(&op.audit_log()));
        (open.len() == 4).then_some(open)
    })
    .await;
    op.kill();
    for n in &names {
        let phase = api.get(n).await.unwrap().status.and_then(|s| s.phase);
        assert!(phase.is_none(), "{n} changed although the operator was killed before acting: {phase:?}");
    }

    // 2. An activation takes effect when its intent is durable (the ledger reads it from the log), so the
    //    restart confirms the open ones instead of redoing them, and writes the status from the record. Then
    //    killed after the credential Secrets were written, before the issuance outcomes.
    op.set_extra(&["--failpoint-delay-after-effect", "30s"]);
    op.restart();
    for n in &names {
        wait_phase(&api, n, "Active").await;
    }
    let open_issues = wait_for("four issuances written to their Secrets, outcomes pending", WAIT, || async {
        let open = open_intents(&records(&op.audit_log()));
        let issues: Vec<String> =
            open.iter().filter(|k| k.starts_with("credential.issue:")).cloned().collect();
        for n in &names {
            ns.api::<k8s_openapi::api::core::v1::Secret>()
                .get_opt(&format!("{n}-credentials"))
                .await
                .ok()??;
        }
        (issues.len() == 4).then_some(issues)
    })
    .await;
    let open = open_intents(&records(&op.audit_log()));
    assert!(activations.iter().all(|k| !open.contains(k)), "the restart confirmed the open activations");
    op.kill();

    // 3. Two agents are suspended (with the operator up: its validating webhook, failurePolicy Fail, records
    //    who did it, so no agentiam object changes while it is down); killed again inside the suspend intents.
    op.set_extra(&["--failpoint-delay-after-intent", "30s"]);
    op.restart();
    for n in &names[..2] {
        let patch = json!({"spec": {"lifecycle": {"desiredState": "Suspended"}}});
        api.patch(n, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
    wait_for("two open suspend intents", WAIT, || async {
        let open = open_intents(&records(&op.audit_log()));
        (open.iter().filter(|k| k.starts_with("agent.suspend:")).count() == 2).then_some(())
    })
    .await;
    op.kill();

    // 4. A clean restart finishes everything.
    op.set_extra(&[]);
    op.restart();
    for n in &names[..2] {
        wait_phase(&api, n, "Suspended").await;
    }
    for n in &names[2..] {
        wait_phase(&api, n, "Active").await;
    }
    wait_for("every intent to be closed", WAIT, || async {
        open_intents(&records(&op.audit_log())).is_empty().then_some(())
    })
    .await;

    let recs = records(&op.audit_log());
    // No duplicates: one intent and one outcome per key, and no other records (nothing was torn).
    let mut per_key: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for r in &recs {
        match r["kind"].as_str() {
            // The first start creates the issuer's keys and CA; nothing was torn, so no recovery record.
            Some("event") if r["action"].as_str().is_some_and(|a| a.starts_with("issuer.")) => continue,
            // Who created and changed the agents (the validating webhook's records).
            Some("event") if r["action"].as_str().is_some_and(|a| a.starts_with("admission.")) => continue,
            Some("intent" | "outcome") => {}
            other => panic!("unexpected record kind {other:?}: {r}"),
        }
        let e = per_key.entry(r["key"].as_str().unwrap_or("").to_owned()).or_default();
        if r["kind"] == "intent" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let lifecycle = per_key.keys().filter(|k| k.starts_with("agent.")).count();
    assert_eq!(lifecycle, 6, "4 activations and 2 suspensions: {per_key:?}");
    for (key, counts) in &per_key {
        assert_eq!(*counts, (1, 1), "key {key}: (intents, outcomes)");
    }
    // Nothing lost: each activation that happened before the crash is confirmed from the status after the
    // restart, and each agent's current phase has a successful outcome for its UID.
    for key in &activations {
        let o = recs.iter().find(|r| r["kind"] == "outcome" && r["key"] == key.as_str()).unwrap();
        assert_eq!(o["outcome"], "success", "{o}");
        assert_eq!(o["details"]["resolvedBy"], "intent-recovery", "{o}");
        assert!(o["reason"].as_str().unwrap().contains("confirmed after an interruption"), "{o}");
    }
    // The credentials stored before the kill are confirmed, naming what they were.
    for key in &open_issues {
        let o = recs.iter().find(|r| r["kind"] == "outcome" && r["key"] == key.as_str()).unwrap();
        assert_eq!(
            (&o["outcome"], &o["details"]["resolvedBy"]),
            (&json!("success"), &json!("intent-recovery")),
            "{o}"
        );
    }
    for n in &names {
        let a = api.get(n).await.unwrap();
        let uid = a.metadata.uid.clone().unwrap();
        let phase = a.status.unwrap().phase.unwrap();
        let action = if phase.as_str() == "Active" { "agent.activate" } else { "agent.suspend" };
        let ok = recs.iter().any(|r| {
            r["kind"] == "outcome"
                && r["outcome"] == "success"
                && r["action"] == action
                && r["object"]["uid"] == uid.as_str()
        });
        assert!(ok, "agent {n} is {phase} but the log has no successful {action} for it");
    }
    wait_checkpoint_covers_log(&ns, &op).await;
    let log = op.audit_log();
    let out =
        env.plugin(&["audit", "verify", "--log", log.to_str().unwrap(), "--operator-namespace", &ns.name]);
    assert!(out.status.success() && text(&out).contains("0 still open"), "{}", text(&out));
}

#[tokio::test]
async fn an_intent_whose_object_was_deleted_while_the_operator_was_down_is_abandoned() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "orphan").await;
    let mut op = Operator::start(&env, &ns.name, &["--failpoint-delay-after-intent", "3s"]);
    ns.create_agent("gone", basic_spec()).await;
    let key = kill_inside_an_intent(&mut op).await;
    // With the operator down, its validating webhook (failurePolicy Fail) refuses every change: only someone
    // who removes the webhook configuration first can change agents then, which is what this test does.
    let vwc = format!("agentiam-{}", ns.name);
    let out = env.kubectl(&["delete", "validatingwebhookconfiguration", &vwc], None);
    assert!(out.status.success(), "{}", text(&out));
    // Remove the finalizer by hand and delete: the object is gone without the operator seeing it.
    let out = env.kubectl(
        &[
            "patch",
            "agent",
            "gone",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = env.kubectl(&["delete", "agent", "gone", "-n", &ns.name, "--wait=true"], None);
    assert!(out.status.success(), "{}", text(&out));
    op.set_extra(&[]);
    op.restart();
    let outcome = wait_for("the orphaned intent to be closed", WAIT, || async {
        records(&op.audit_log()).into_iter().find(|r| r["kind"] == "outcome" && r["key"] == key.as_str())
    })
    .await;
    assert_eq!(outcome["outcome"], "abandoned");
    assert!(outcome["reason"].as_str().unwrap().contains("no longer exists"), "{outcome}");
    assert_eq!(outcome["details"]["resolvedBy"], "intent-recovery");
}

#[tokio::test]
async fn an_intent_outside_the_served_namespace_is_left_open_not_judged() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "scope").await;
    let other = TestNs::new(&env, "scope-other").await;
    let mut op = Operator::start(&env, &ns.name, &["--failpoint-delay-after-intent", "3s"]);
    ns.create_agent("elsewhere", basic_spec()).await;
    let key = kill_inside_an_intent(&mut op).await;
    let vwc = format!("agentiam-{}", ns.name);
    assert!(env.kubectl(&["delete", "validatingwebhookconfiguration", &vwc], None).status.success());
    let out = env.kubectl(
        &[
            "patch",
            "agent",
            "elsewhere",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        env.kubectl(&["delete", "agent", "elsewhere", "-n", &ns.name, "--wait=true"], None).status.success()
    );
    // The same log, now served by an operator scoped to another namespace (as after a `helm upgrade` that
    // set watchNamespace): it must neither judge nor crash on what it does not serve.
    op.namespace = other.name.clone();
    op.set_extra(&[]);
    op.restart();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let closed =
        records(&op.audit_log()).into_iter().any(|r| r["kind"] == "outcome" && r["key"] == key.as_str());
    assert!(!closed, "an intent about a namespace this operator does not serve was closed");
    assert!(op.stderr().contains("outside --watch-namespace; left open"), "{}", op.stderr());
}
