//! Tests for [`super`]: tampering of every kind must be caught and named.

use proptest::prelude::*;

use super::*;
use crate::audit::checkpoint::CheckpointSigner;
use crate::audit::record::tests::entry;
use crate::audit::record::{Entry, ObjectRef, Outcome, now_rfc3339};

/// Seals `specs` into a chain and returns the log bytes and the records.
fn chain(specs: Vec<(RecordKind, Option<&str>, Entry)>) -> (Vec<u8>, Vec<Record>) {
    let mut prev = ZERO_HASH.to_owned();
    let mut bytes = Vec::new();
    let mut records = Vec::new();
    for (i, (kind, key, entry)) in specs.into_iter().enumerate() {
        let seq = u64::try_from(i).unwrap() + 1;
        let record = Record::seal(&prev, seq, now_rfc3339(), kind, key.map(str::to_owned), entry).unwrap();
        bytes.extend_from_slice(record.to_line().unwrap().as_bytes());
        prev.clone_from(&record.hash);
        records.push(record);
    }
    (bytes, records)
}

fn pending(mut e: Entry) -> Entry {
    e.outcome = Outcome::Pending;
    e
}

/// Six records: events, an intent that is closed, an intent left open, and a recovery.
fn sample() -> (Vec<u8>, Vec<Record>) {
    chain(vec![
        (RecordKind::Event, None, entry(1)),
        (RecordKind::Intent, Some("grant-1"), pending(entry(2))),
        (RecordKind::Outcome, Some("grant-1"), entry(2)),
        (RecordKind::Event, None, entry(4)),
        (RecordKind::Intent, Some("grant-2"), pending(entry(5))),
        (RecordKind::Recovery, None, entry(6)),
    ])
}

fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

fn message(result: Result<VerifyReport, VerifyError>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn round_trip_and_report() {
    let (bytes, records) = sample();
    let (signer, _) = CheckpointSigner::generate().unwrap();
    let checkpoint = signer.sign(4, &records[3].hash, &now_rfc3339()).unwrap();
    let report = verify_log(&bytes, &[checkpoint], Some(signer.public_key_der())).unwrap();
    assert_eq!(
        report,
        VerifyReport {
            records: 6,
            head_seq: 6,
            head_hash: records[5].hash.clone(),
            checkpoints_verified: 1,
            unpinned_records: 2,
            intents: 2,
            open_intents: 1,
            recoveries: 1,
        }
    );
}

#[test]
fn empty_log_verifies() {
    let report = verify_log(b"", &[], None).unwrap();
    assert_eq!((report.records, report.head_hash.as_str()), (0, ZERO_HASH));
}

#[test]
fn flipping_any_byte_is_detected() {
    let (bytes, _) = sample();
    for position in 0..bytes.len() {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut tampered = bytes.clone();
            tampered[position] ^= mask;
            assert!(
                verify_log(&tampered, &[], None).is_err(),
                "flip {mask:#x} at byte {position} went unnoticed"
            );
        }
    }
}

#[test]
fn deleting_any_line_is_detected() {
    let (bytes, records) = sample();
    let (signer, _) = CheckpointSigner::generate().unwrap();
    let head = signer.sign(6, &records[5].hash, &now_rfc3339()).unwrap();
    let lines = lines_of(&bytes);
    for deleted in 0..lines.len() {
        let mut kept = lines.clone();
        kept.remove(deleted);
        let tampered = kept.concat();
        // Only the last line can go without breaking the chain; the checkpoint catches that one.
        if deleted + 1 < lines.len() {
            assert!(
                verify_log(&tampered, &[], None).is_err(),
                "deleting line {} went unnoticed",
                deleted + 1
            );
        }
        assert!(verify_log(&tampered, std::slice::from_ref(&head), Some(signer.public_key_der())).is_err());
    }
    let mut kept = lines.clone();
    kept.remove(0);
    assert_eq!(
        message(verify_log(&kept.concat(), &[], None)),
        "line 1: log starts at seq 2, not 1: the head of the log was removed"
    );
    let mut kept = lines;
    kept.remove(4);
    assert_eq!(
        message(verify_log(&kept.concat(), &[], None)),
        "line 5: seq 6 follows seq 4: a record was deleted"
    );
}

#[test]
fn messages_name_the_first_bad_record() {
    let (bytes, mut records) = sample();
    let text = String::from_utf8(bytes).unwrap();

    // Edited in place: the bytes are canonical but the hash no longer fits.
    let edited = text.replacen("agent-4", "agent-X", 1);
    assert_eq!(
        message(verify_log(edited.as_bytes(), &[], None)),
        "line 4 (seq 4): hash mismatch: record was modified"
    );

    // Edited with extra whitespace: caught before the hash is even computed.
    let spaced = text.replacen(r#""seq":3,"#, r#""seq": 3,"#, 1);
    assert_eq!(
        message(verify_log(spaced.as_bytes(), &[], None)),
        "line 3 (seq 3): record bytes differ from its canonical form: record was modified"
    );

    // Edited and re-hashed, but the next record still points at the old hash.
    records[2].reason = "rewritten".into();
    records[2].hash = records[2].compute_hash().unwrap();
    let rehashed: String = records.iter().map(|r| r.to_line().unwrap()).collect();
    assert_eq!(
        message(verify_log(rehashed.as_bytes(), &[], None)),
        "line 4 (seq 4): prev does not match hash of seq 3"
    );

    // Two records swapped.
    let mut lines = lines_of(text.as_bytes());
    lines.swap(1, 2);
    assert_eq!(
        message(verify_log(&lines.concat(), &[], None)),
        "line 2: seq 3 follows seq 1: a record was deleted"
    );

    // An unknown field.
    let extra = text.replacen(r#"{"seq":2,"#, r#"{"seq":2,"admin":true,"#, 1);
    assert!(
        message(verify_log(extra.as_bytes(), &[], None))
            .starts_with("line 2: not a valid audit record: unknown field")
    );
}

#[test]
fn truncation_is_detected_below_a_checkpoint() {
    let (bytes, records) = sample();
    let (signer, _) = CheckpointSigner::generate().unwrap();
    let key = Some(signer.public_key_der());
    let checkpoint = signer.sign(5, &records[4].hash, &now_rfc3339()).unwrap();
    let lines = lines_of(&bytes);
    for keep in 0..5 {
        let cut = lines[..keep].concat();
        assert_eq!(
            message(verify_log(&cut, std::slice::from_ref(&checkpoint), key)),
            format!("log truncated: checkpoint at seq 5 but log ends at seq {keep}")
        );
    }
    // Cutting the unpinned record 6 is not detectable by verify alone: the report says how much is at risk.
    let cut = lines[..5].concat();
    let report = verify_log(&cut, std::slice::from_ref(&checkpoint), key).unwrap();
    assert_eq!(report.unpinned_records, 0);
}

#[test]
fn a_cut_mid_record_is_reported_as_incomplete() {
    let (bytes, _) = sample();
    let lines = lines_of(&bytes);
    let start = lines[..3].concat().len();
    for end in start + 1..start + lines[3].len() {
        assert_eq!(
            message(verify_log(&bytes[..end], &[], None)),
            "line 4: incomplete record (log cut mid-record)"
        );
    }
}

#[test]
fn forged_checkpoints_fail() {
    let (bytes, records) = sample();
    let (signer, _) = CheckpointSigner::generate().unwrap();
    let (attacker, _) = CheckpointSigner::generate().unwrap();
    let key = Some(signer.public_key_der());
    let good = signer.sign(3, &records[2].hash, &now_rfc3339()).unwrap();
    verify_log(&bytes, std::slice::from_ref(&good), key).unwrap();

    let by_attacker = attacker.sign(3, &records[2].hash, &now_rfc3339()).unwrap();
    let mut moved = good.clone();
    moved.seq = 2;
    let mut rehead = good.clone();
    rehead.head.clone_from(&records[1].hash);
    for forged in [by_attacker, moved, rehead] {
        let err = verify_log(&bytes, &[forged], key).unwrap_err();
        assert!(matches!(err, VerifyError::Signature { seq: 2 | 3, .. }), "{err}");
    }
    assert!(matches!(verify_log(&bytes, std::slice::from_ref(&good), None), Err(VerifyError::MissingKey)));
}

#[test]
fn a_rewritten_log_does_not_match_its_checkpoint() {
    let (bytes, records) = sample();
    let (signer, _) = CheckpointSigner::generate().unwrap();
    let checkpoint = signer.sign(3, &records[2].hash, &now_rfc3339()).unwrap();
    // Someone with write access rebuilds a consistent chain with different history.
    let mut other = entry(2);
    other.reason = "nothing to see".into();
    let (rewritten, _) = chain(vec![
        (RecordKind::Event, None, entry(1)),
        (RecordKind::Intent, Some("grant-1"), pending(other.clone())),
        (RecordKind::Outcome, Some("grant-1"), other),
    ]);
    assert!(verify_log(&rewritten, &[], None).is_ok());
    assert_eq!(
        message(verify_log(&rewritten, &[checkpoint], Some(signer.public_key_der()))),
        "log rewritten: record seq 3 does not have the hash its signed checkpoint pins"
    );
    assert!(verify_log(&bytes, &[], None).is_ok());
}

#[test]
fn intent_keys_are_used_once() {
    let (twice, _) = chain(vec![
        (RecordKind::Intent, Some("k"), pending(entry(1))),
        (RecordKind::Intent, Some("k"), pending(entry(2))),
    ]);
    assert_eq!(message(verify_log(&twice, &[], None)), r#"line 2 (seq 2): intent key "k" was already used"#);
    let (orphan, _) = chain(vec![(RecordKind::Outcome, Some("k"), entry(1))]);
    assert_eq!(
        message(verify_log(&orphan, &[], None)),
        r#"line 1 (seq 1): outcome for key "k" closes no open intent"#
    );
    let (closed_twice, _) = chain(vec![
        (RecordKind::Intent, Some("k"), pending(entry(1))),
        (RecordKind::Outcome, Some("k"), entry(1)),
        (RecordKind::Outcome, Some("k"), entry(1)),
    ]);
    assert!(verify_log(&closed_twice, &[], None).is_err());
}

#[test]
fn trace_selects_records_about_one_object() {
    let (bytes, records) = sample();
    let found = trace(&bytes, |r| r.object.name == "agent-2").unwrap();
    assert_eq!(found, records[1..3].to_vec());
    let mut torn = bytes.clone();
    torn.pop();
    assert!(trace(&torn, |_| true).is_err());
}

fn arb_text() -> impl Strategy<Value = String> {
    // Control characters, quotes, backslashes and non-ASCII all have to survive escaping unchanged.
    prop_oneof![any::<String>(), "[a-z.:/\"\\\\\n\t ]{0,12}", "\\PC{0,8}"]
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    let outcome = prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Failure),
        Just(Outcome::Denied),
        Just(Outcome::Abandoned)
    ];
    (
        (arb_text(), arb_text(), arb_text(), proptest::option::of(arb_text()), arb_text()),
        (
            proptest::option::of(arb_text()),
            outcome,
            arb_text(),
            proptest::collection::btree_map(arb_text(), arb_text(), 0..4),
        ),
    )
        .prop_map(|((actor, action, kind, namespace, name), (uid, outcome, reason, details))| Entry {
            actor,
            action,
            object: ObjectRef { api_version: "v1".into(), kind, namespace, name, uid },
            outcome,
            reason,
            details,
        })
}

proptest! {
    #[test]
    fn arbitrary_entries_round_trip_and_verify(entries in proptest::collection::vec(arb_entry(), 1..6)) {
        let specs = entries.iter().cloned().map(|e| (RecordKind::Event, None, e)).collect();
        let (bytes, records) = chain(specs);
        let report = verify_log(&bytes, &[], None).unwrap();
        prop_assert_eq!(report.records, u64::try_from(entries.len()).unwrap());
        let parsed = trace(&bytes, |_| true).unwrap();
        prop_assert_eq!(&parsed, &records);
        for (record, entry) in parsed.iter().zip(&entries) {
            prop_assert_eq!(&record.entry(), entry);
        }
    }
}
