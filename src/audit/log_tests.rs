//! Tests for [`super`]: durability, recovery, intents and concurrency against real files.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::audit::record::ZERO_HASH;
use crate::audit::record::tests::entry;
use crate::audit::verify::{trace, verify_log};

fn config(dir: &tempfile::TempDir) -> AuditConfig {
    AuditConfig::new(dir.path().join("audit").join("audit.log"))
}

fn open(dir: &tempfile::TempDir) -> AuditLog {
    AuditLog::open(config(dir)).unwrap()
}

fn all_records(dir: &tempfile::TempDir) -> Vec<Record> {
    trace(&fs::read(config(dir).path).unwrap(), |_| true).unwrap()
}

fn ok_entry(n: u64) -> Entry {
    entry(n)
}

#[tokio::test]
async fn creates_private_files_and_appends_a_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    assert_eq!(log.head(), (0, ZERO_HASH.to_owned()));
    let first = log.append(ok_entry(1)).await.unwrap();
    let second = log.append(ok_entry(2)).await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(second.prev, first.hash);
    assert_eq!(log.head(), (2, second.hash.clone()));

    let path = config(&dir).path;
    let dir_mode = fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    let file_mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!((dir_mode, file_mode), (0o700, 0o600));
    let report = verify_log(&fs::read(&path).unwrap(), &[], None).unwrap();
    assert_eq!((report.records, report.head_hash), (2, second.hash));
}

#[tokio::test]
async fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    log.append(ok_entry(1)).await.unwrap();
    log.close().await;
    assert!(matches!(log.append(ok_entry(2)).await, Err(AuditError::Closed)));

    let log = open(&dir);
    assert_eq!(log.head().0, 1);
    assert_eq!(log.append(ok_entry(2)).await.unwrap().seq, 2);
    log.close().await;
    assert_eq!(all_records(&dir).len(), 2);
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    assert!(matches!(AuditLog::open(config(&dir)), Err(AuditError::Locked { .. })));
    log.close().await;
    open(&dir).close().await;
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_recorded() {
    for tail in [&b"{\"seq\":3,\"time\":\"20"[..], b"\0\0\0\0\0\0", b"garbage\n"] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(&dir);
        let acknowledged = [log.append(ok_entry(1)).await.unwrap(), log.append(ok_entry(2)).await.unwrap()];
        log.close().await;
        fs::OpenOptions::new().append(true).open(config(&dir).path).unwrap().write_all(tail).unwrap();

        let log = open(&dir);
        let (seq, _) = log.head();
        assert_eq!(seq, 3);
        log.append(ok_entry(4)).await.unwrap();
        log.close().await;
        let records = all_records(&dir);
        assert_eq!(records[..2], acknowledged[..], "acknowledged records survive");
        assert_eq!(records[2].kind, RecordKind::Recovery);
        assert_eq!(records[2].details["bytes"], tail.len().to_string());
        assert_eq!(records[2].details["line"], "3");
        assert_eq!(records[3].seq, 4);
    }
}

#[tokio::test]
async fn other_damage_fails_closed_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    for n in 1..=3 {
        log.append(ok_entry(n)).await.unwrap();
    }
    log.close().await;
    let path = config(&dir).path;
    let original = fs::read_to_string(&path).unwrap();

    fs::write(&path, original.replacen("agent-2", "agent-X", 1)).unwrap();
    let error = AuditLog::open(config(&dir)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "audit log is corrupt at line 2 (seq 2): hash mismatch: record was modified"
    );

    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    fs::write(&path, [lines[0], lines[2]].concat()).unwrap();
    let error = AuditLog::open(config(&dir)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "audit log is corrupt at line 2: seq 3 follows seq 1: a record was deleted"
    );

    // Garbage is only forgiven on the last line.
    fs::write(&path, [lines[0], "garbage\n", lines[2]].concat()).unwrap();
    let error = AuditLog::open(config(&dir)).unwrap_err();
    assert!(matches!(error, AuditError::Corrupt { line: 2, seq: None, .. }), "{error}");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        [lines[0], "garbage\n", lines[2]].concat(),
        "nothing was cut"
    );
}

#[tokio::test]
async fn open_intents_matching_copies_only_the_matches_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let mut made = Vec::new();
    for key in ["a-1", "b-1", "a-2", "b-2"] {
        let IntentState::Fresh(intent) = log.intent(key, ok_entry(1)).await.unwrap() else { panic!("{key}") };
        made.push(intent);
    }
    log.outcome("a-2", Outcome::Success, "done", BTreeMap::new()).await.unwrap();
    let a = log.open_intents_matching(|r| r.key.as_deref().is_some_and(|k| k.starts_with("a-")));
    assert_eq!(a, vec![made[0].clone()], "a-2 is closed");
    let b = log.open_intents_matching(|r| r.key.as_deref().is_some_and(|k| k.starts_with("b-")));
    assert_eq!(b, vec![made[1].clone(), made[3].clone()]);
    assert!(b[0].seq < b[1].seq);
    assert!(log.open_intents_matching(|_| false).is_empty());
    assert_eq!(log.open_intents_matching(|_| true), log.open_intents());
    log.close().await;
}

#[tokio::test]
async fn intents_are_idempotent_by_key_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let fresh = log.intent("grant-1", ok_entry(1)).await.unwrap();
    let IntentState::Fresh(intent) = fresh else { panic!("expected a fresh intent, got {fresh:?}") };
    assert_eq!(
        (intent.kind, intent.outcome, intent.key.as_deref()),
        (RecordKind::Intent, Outcome::Pending, Some("grant-1"))
    );
    assert_eq!(log.intent("grant-1", ok_entry(9)).await.unwrap(), IntentState::Pending(intent.clone()));
    log.close().await;

    // After a "crash", the open intent is known and not written twice.
    let log = open(&dir);
    assert_eq!(log.open_intents(), vec![intent.clone()]);
    assert!(log.any_open_intent(|r| r.key.as_deref() == Some("grant-1")));
    assert!(!log.any_open_intent(|r| r.key.as_deref() == Some("grant-2")));
    assert_eq!(log.intent("grant-1", ok_entry(1)).await.unwrap(), IntentState::Pending(intent.clone()));
    let details = BTreeMap::from([("jti".to_owned(), "abc".to_owned())]);
    let outcome = log.outcome("grant-1", Outcome::Success, "issued", details).await.unwrap();
    assert_eq!(
        (outcome.kind, outcome.outcome, outcome.key.as_deref()),
        (RecordKind::Outcome, Outcome::Success, Some("grant-1"))
    );
    assert_eq!((&outcome.actor, &outcome.object), (&intent.actor, &intent.object));
    assert!(log.open_intents().is_empty());
    assert!(!log.any_open_intent(|_| true));
    let again = log.outcome("grant-1", Outcome::Failure, "late retry", BTreeMap::new()).await.unwrap();
    assert_eq!(again, outcome, "a second outcome returns the first");
    assert_eq!(log.intent("grant-1", ok_entry(1)).await.unwrap(), IntentState::Completed(outcome.clone()));
    let head = log.head();
    log.close().await;

    // Completed keys are read back from the file after a restart.
    let log = open(&dir);
    assert_eq!(log.head(), head);
    assert_eq!(log.intent("grant-1", ok_entry(1)).await.unwrap(), IntentState::Completed(outcome.clone()));
    assert_eq!(log.outcome("grant-1", Outcome::Abandoned, "x", BTreeMap::new()).await.unwrap(), outcome);
    assert_eq!(log.head(), head, "nothing was written");
    log.close().await;
    assert_eq!(all_records(&dir).len(), 2);
}

#[tokio::test]
async fn intents_and_outcomes_in_one_batch_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let (a, b, c) = tokio::join!(
        log.intent("k", ok_entry(1)),
        log.intent("k", ok_entry(1)),
        log.outcome("k", Outcome::Success, "done", BTreeMap::new()),
    );
    assert!(matches!(a.unwrap(), IntentState::Fresh(_)));
    assert!(matches!(b.unwrap(), IntentState::Pending(_)));
    assert_eq!(c.unwrap().kind, RecordKind::Outcome);
    log.close().await;
    verify_log(&fs::read(config(&dir).path).unwrap(), &[], None).unwrap();
}

#[tokio::test]
async fn invalid_requests_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let unknown = log.outcome("nope", Outcome::Success, "", BTreeMap::new()).await;
    assert!(matches!(unknown, Err(AuditError::UnknownIntent { ref key }) if key == "nope"));
    log.intent("k", ok_entry(1)).await.unwrap();
    let pending = log.outcome("k", Outcome::Pending, "", BTreeMap::new()).await;
    assert!(matches!(pending, Err(AuditError::InvalidOutcome(_))));
    let mut event = ok_entry(2);
    event.outcome = Outcome::Pending;
    assert!(matches!(log.append(event).await, Err(AuditError::InvalidOutcome(_))));
    assert!(matches!(log.intent("", ok_entry(1)).await, Err(AuditError::InvalidKey(_))));
    assert!(matches!(log.intent(&"k".repeat(257), ok_entry(1)).await, Err(AuditError::InvalidKey(_))));
    assert_eq!(log.head().0, 1);
    log.close().await;
}

#[tokio::test]
async fn a_failed_sync_fails_the_batch_and_every_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    log.append(ok_entry(1)).await.unwrap();
    log.fail_next_sync();
    assert!(matches!(log.append(ok_entry(2)).await, Err(AuditError::Sync(_))));
    assert!(matches!(log.append(ok_entry(3)).await, Err(AuditError::Failed)));
    assert!(matches!(log.intent("k", ok_entry(4)).await, Err(AuditError::Failed)));
    assert_eq!(log.head().0, 1, "the head only moves on durable records");
    log.close().await;
    // The failed record may or may not be on disk; either way the log still opens and verifies.
    let log = open(&dir);
    assert!(log.head().0 >= 1);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_form_one_contiguous_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let tasks: Vec<_> = (1..=200)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.append(ok_entry(n)).await })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.push(task.await.unwrap().unwrap());
    }
    log.close().await;
    acknowledged.sort_by_key(|record| record.seq);
    let seqs: Vec<u64> = acknowledged.iter().map(|record| record.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let bytes = fs::read(config(&dir).path).unwrap();
    assert_eq!(verify_log(&bytes, &[], None).unwrap().records, 200);
    assert_eq!(trace(&bytes, |_| true).unwrap(), acknowledged);
}

#[tokio::test]
async fn checkpoints_of_the_head_verify_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = CheckpointSigner::generate().unwrap();
    let log = open(&dir);
    let empty = log.checkpoint(&signer).unwrap();
    log.append(ok_entry(1)).await.unwrap();
    let one = log.checkpoint(&signer).unwrap();
    log.append(ok_entry(2)).await.unwrap();
    log.close().await;
    let bytes = fs::read(config(&dir).path).unwrap();
    let report = verify_log(&bytes, &[empty, one], Some(signer.public_key_der())).unwrap();
    assert_eq!((report.checkpoints_verified, report.unpinned_records), (2, 1));
}

#[tokio::test]
async fn enqueued_records_are_all_written_in_order_and_refused_after_failure() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    // Far more than the queue holds: enqueue must wait for space, never drop.
    for n in 1..=10_000 {
        if n % 2 == 0 {
            log.enqueue(ok_entry(n)).await.unwrap();
        } else {
            // Built on the writer thread, in queue order like the others.
            log.enqueue_with(move || ok_entry(n)).await.unwrap();
        }
    }
    // A waited-for append lands after every queued record, so once it is durable they all are.
    let last = log.append(ok_entry(10_001)).await.unwrap();
    assert_eq!(last.seq, 10_001);
    let records = all_records(&dir);
    assert_eq!(records.len(), 10_001);
    assert!(records.iter().zip(1..).all(|(r, n)| r.seq == n && r.entry() == ok_entry(n)));

    log.fail_next_sync();
    assert!(log.append(ok_entry(1)).await.is_err());
    assert!(matches!(log.enqueue(ok_entry(2)).await, Err(AuditError::Failed)));
    assert!(matches!(log.enqueue_with(|| ok_entry(3)).await, Err(AuditError::Failed)));
}
