//! The audit log as written by the real operator: tampering is detected and named, trace works, records
//! stream to stdout, and the operator refuses to continue a log that does not match its checkpoint.

use std::path::Path;

use agentiam::api::Agent;

use crate::harness::{Operator, TestNs, basic_spec, records, text, wait_checkpoint_covers_log, wait_phase};

/// Runs an operator that activates, suspends and deletes a few agents, and waits until the checkpoint covers
/// the whole log. Returns the namespace, the stopped operator, and the number of records.
async fn settled_log(prefix: &str) -> Option<(crate::harness::Env, TestNs, Operator, u64)> {
    let env = crate::harness::env()?;
    let ns = TestNs::new(&env, prefix).await;
    let op = Operator::start(&env, &ns.name, &[]);
    let api = ns.api::<Agent>();
    for name in ["a", "b", "c"] {
        ns.create_agent(name, basic_spec()).await;
    }
    for name in ["a", "b", "c"] {
        wait_phase(&api, name, "Active").await;
        crate::harness::wait_credentials(&api, name).await;
    }
    crate::harness::delete_and_wait(&api, "c").await;
    let last = wait_checkpoint_covers_log(&ns, &op).await;
    Some((env, ns, op, last))
}

fn verify(env: &crate::harness::Env, ns: &TestNs, log: &Path) -> (bool, String) {
    let out =
        env.plugin(&["audit", "verify", "--log", log.to_str().unwrap(), "--operator-namespace", &ns.name]);
    (out.status.success(), text(&out))
}

fn tampered_copy(src: &Path, f: impl FnOnce(&mut Vec<u8>)) -> tempfile::NamedTempFile {
    let mut bytes = std::fs::read(src).unwrap();
    f(&mut bytes);
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(copy.path(), bytes).unwrap();
    copy
}

#[tokio::test]
async fn audit_verify_passes_on_the_operators_log() {
    let Some((env, ns, op, last)) = settled_log("verify-ok").await else { return };
    let (ok, out) = verify(&env, &ns, &op.audit_log());
    assert!(ok, "{out}");
    assert!(out.contains(&format!("records:          {last}")), "{out}");
    assert!(out.contains(&format!("checkpoint:       seq {last}")), "{out}");
}

#[tokio::test]
async fn flipping_one_byte_makes_verify_fail_and_name_the_record() {
    let Some((env, ns, op, _)) = settled_log("verify-flip").await else { return };
    let log = op.audit_log();
    let text_log = std::fs::read_to_string(&log).unwrap();
    // Flip a byte inside the reason of the third record: still valid JSON, different content.
    let third_start: usize = text_log.lines().take(2).map(|l| l.len() + 1).sum();
    let offset = third_start + text_log.lines().nth(2).unwrap().find("\"reason\":\"").unwrap() + 10;
    let copy = tampered_copy(&log, |b| b[offset] ^= 0x01);
    let (ok, out) = verify(&env, &ns, copy.path());
    assert!(!ok, "a flipped byte was not detected: {out}");
    assert!(out.contains("line 3 (seq 3)"), "the error must name the record: {out}");
    assert!(out.contains("hash mismatch"), "{out}");
}

#[tokio::test]
async fn deleting_a_line_makes_verify_fail_and_name_the_gap() {
    let Some((env, ns, op, _)) = settled_log("verify-del").await else { return };
    let log = op.audit_log();
    let copy = tampered_copy(&log, |b| {
        let s = String::from_utf8(b.clone()).unwrap();
        let kept: Vec<&str> = s.lines().enumerate().filter(|(i, _)| *i != 3).map(|(_, l)| l).collect();
        *b = format!("{}\n", kept.join("\n")).into_bytes();
    });
    let (ok, out) = verify(&env, &ns, copy.path());
    assert!(!ok, "a deleted line was not detected: {out}");
    assert!(out.contains("line 4") && out.contains("seq 5 follows seq 3"), "{out}");
}

#[tokio::test]
async fn cutting_the_tail_makes_verify_fail_through_the_checkpoint() {
    let Some((env, ns, op, last)) = settled_log("verify-cut").await else { return };
    let log = op.audit_log();
    let copy = tampered_copy(&log, |b| {
        let s = String::from_utf8(b.clone()).unwrap();
        let kept: Vec<&str> = s.lines().take(s.lines().count() - 2).collect();
        *b = format!("{}\n", kept.join("\n")).into_bytes();
    });
    // The chain alone is consistent after a clean cut...
    let offline = env.plugin(&["audit", "verify", "--offline", "--log", copy.path().to_str().unwrap()]);
    assert!(offline.status.success(), "{}", text(&offline));
    // ...but the signed checkpoint pins the head.
    let (ok, out) = verify(&env, &ns, copy.path());
    assert!(!ok, "a cut tail was not detected: {out}");
    assert!(
        out.contains(&format!("log truncated: checkpoint at seq {last} but log ends at seq {}", last - 2)),
        "{out}"
    );
    // A record cut mid-line is named too.
    let torn = tampered_copy(&log, |b| b.truncate(b.len() - 10));
    let (ok, out) = verify(&env, &ns, torn.path());
    assert!(!ok && out.contains(&format!("line {last}")) && out.contains("incomplete"), "{out}");
}

#[tokio::test]
async fn a_rewritten_history_with_a_valid_chain_fails_against_the_checkpoint() {
    let Some((env, ns, op, _)) = settled_log("verify-rewrite").await else { return };
    // Rebuild a fully consistent chain with one reason changed: only the signed checkpoint can tell.
    let mut recs = records(&op.audit_log());
    recs[0]["reason"] = "nothing happened here".into();
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for r in &mut recs {
        r["prev"] = prev.clone().into();
        r["hash"] = "".into();
        let mut rec: agentiam::audit::Record = serde_json::from_value(r.clone()).unwrap();
        rec.hash = rec.compute_hash().unwrap();
        prev = rec.hash.clone();
        out.push_str(&rec.to_line().unwrap());
    }
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(copy.path(), out).unwrap();
    let offline = env.plugin(&["audit", "verify", "--offline", "--log", copy.path().to_str().unwrap()]);
    assert!(offline.status.success(), "the forged chain should be internally consistent: {}", text(&offline));
    let (ok, msg) = verify(&env, &ns, copy.path());
    assert!(!ok && msg.contains("log rewritten"), "{msg}");
}

#[tokio::test]
async fn trace_prints_an_agents_actions_in_order() {
    let Some((env, ns, op, _)) = settled_log("trace").await else { return };
    let log = op.audit_log();
    let out = env.plugin(&["audit", "trace", "c", "-n", &ns.name, "--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let all: Vec<&str> = stdout.lines().skip(1).map(|l| l.split('\t').nth(4).unwrap()).collect();
    // Who changed the agent (the admission records: created, its finalizer added and removed, deleted)...
    for a in ["admission.create", "admission.update", "admission.delete"] {
        assert!(all.contains(&a), "no {a} in {stdout}");
    }
    // ... beside what the operator did, in order.
    let actions: Vec<&str> = all.into_iter().filter(|a| !a.starts_with("admission.")).collect();
    let expected = [
        "agent.activate",
        "agent.activate",
        "credential.issue",
        "credential.issue",
        "agent.archive",
        "agent.archive",
    ];
    assert_eq!(actions, expected, "{stdout}");
    let seqs: Vec<u64> =
        stdout.lines().skip(1).map(|l| l.split('\t').next().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "not in log order: {seqs:?}");
    let none = env.plugin(&["audit", "trace", "c", "-n", "other-namespace", "--log", log.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8(none.stdout).unwrap().lines().count(),
        1,
        "only the header for another namespace"
    );
}

#[tokio::test]
async fn records_stream_to_stdout_exactly_as_written_to_the_file() {
    let Some((_env, _ns, mut op, _)) = settled_log("stdout").await else { return };
    op.stop();
    let file = std::fs::read_to_string(op.audit_log()).unwrap();
    let streamed = std::fs::read_to_string(op.stdout_path()).unwrap();
    assert!(!file.is_empty());
    assert_eq!(streamed, file, "stdout carries exactly the audit records, nothing else");
}

#[tokio::test]
async fn the_operator_refuses_a_log_that_lost_records_since_its_checkpoint() {
    let Some((_env, _ns, mut op, last)) = settled_log("refuse").await else { return };
    op.stop();
    let log = op.audit_log();
    let s = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = s.lines().take(s.lines().count() - 1).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();
    op.spawn();
    let (code, stderr) = op.wait_exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("does not match the last published checkpoint"), "{stderr}");
    assert!(stderr.contains(&format!("checkpoint at seq {last}")), "{stderr}");
}

#[tokio::test]
async fn the_operator_refuses_a_corrupted_log_naming_the_line() {
    let Some((_env, _ns, mut op, _)) = settled_log("refuse-flip").await else { return };
    op.stop();
    let log = op.audit_log();
    let mut bytes = std::fs::read(&log).unwrap();
    let first_line_len = bytes.iter().position(|b| *b == b'\n').unwrap();
    let pos = first_line_len + 1 + 20; // inside line 2's time field
    bytes[pos] = if bytes[pos] == b'1' { b'2' } else { b'1' };
    std::fs::write(&log, bytes).unwrap();
    op.spawn();
    let (code, stderr) = op.wait_exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[tokio::test]
async fn a_changed_checkpoint_signing_key_is_recorded_and_the_log_still_verifies() {
    let Some((env, ns, mut op, last)) = settled_log("key-change").await else { return };
    op.stop();
    let out = env.kubectl(&["delete", "secret", "agentiam-audit-signing-key", "-n", &ns.name], None);
    assert!(out.status.success(), "{}", text(&out));
    op.restart();
    let change = crate::harness::wait_for("the key change record", crate::harness::WAIT, || async {
        records(&op.audit_log()).into_iter().find(|r| r["action"] == "audit.signing-key.change")
    })
    .await;
    assert_eq!(change["seq"].as_u64(), Some(last + 1), "recorded first thing after the restart");
    assert_ne!(change["details"]["previousKeyID"], change["details"]["keyID"]);
    wait_checkpoint_covers_log(&ns, &op).await;
    let (ok, out) = verify(&env, &ns, &op.audit_log());
    assert!(ok, "{out}");
    assert!(
        out.contains(change["details"]["keyID"].as_str().unwrap()),
        "checkpoint signed by the new key: {out}"
    );
}
