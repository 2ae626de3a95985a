//! Audit records: what callers hand in ([`Entry`]), what is stored ([`Record`]), and the hash that chains
//! them.
//!
//! Everything here is pure. The stored form of a record is exactly `serde_json::to_string(&record)`
//! followed by one `\n`; a record's hash is SHA-256 over that same serialization with `hash` set to the empty
//! string. Fields serialize in declaration order and `details` is a `BTreeMap`, so the serialization is a
//! function of the record's values alone: verification can re-serialize a parsed record and demand the
//! stored bytes match it.

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

/// The `prev` of the first record: there is no previous record to hash.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The Kubernetes object an audit record is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// `apiVersion` of the object, e.g. `agentiam.dev/v1alpha1`.
    pub api_version: String,
    /// Kind of the object, e.g. `Agent`.
    pub kind: String,
    /// Namespace; absent for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
    /// UID, when known: it tells apart two objects that had the same name at different times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// What role a record plays in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordKind {
    /// A plain fact, written after it happened.
    Event,
    /// Written and made durable *before* a side effect that grants something, so a crash between the side
    /// effect and its outcome still leaves a trace. Always carries a key and the outcome `pending`.
    Intent,
    /// Closes the intent with the same key, after the side effect succeeded, failed or was abandoned.
    Outcome,
    /// Written by the log itself at startup when it had to resolve something, e.g. cut a torn final line.
    Recovery,
}

/// How an action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The action happened.
    Success,
    /// The action was attempted and failed.
    Failure,
    /// The action was refused by policy.
    Denied,
    /// An intent whose side effect was found not to have happened (typically after a crash) and will not be
    /// retried under this key.
    Abandoned,
    /// Only on intents: the side effect is about to happen.
    Pending,
}

/// What a caller records. The log adds sequence number, time, kind, key and hashes to make a [`Record`].
///
/// Callers must never put secrets in any field: no tokens, keys, passwords or credentials, not even
/// truncated or hashed ones. The log is read by humans and shipped to other systems; record that a
/// credential was issued and its identifier (e.g. a `jti` or serial), never the credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// Who acted: `agentiam-operator`, `user:alice`, `agent:ns/name`.
    pub actor: String,
    /// What was done, dotted: `agent.activate`, `credential.issue`.
    pub action: String,
    /// What it was done to.
    pub object: ObjectRef,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in a sentence for humans.
    pub reason: String,
    /// Extra facts as strings. Never secrets (see the type docs).
    pub details: BTreeMap<String, String>,
}

impl Entry {
    /// An entry without details.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        object: ObjectRef,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            object,
            outcome,
            reason: reason.into(),
            details: BTreeMap::new(),
        }
    }

    /// Adds one detail. Never a secret.
    #[must_use]
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// One stored line of the audit log.
///
/// Field order is part of the format: it fixes the canonical serialization that is hashed and stored.
/// The [`Entry`] fields are spelled out rather than `#[serde(flatten)]`ed because serde does not support
/// `flatten` together with `deny_unknown_fields`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// Position in the log: 1 for the first record, then contiguous.
    pub seq: u64,
    /// When the record was written: RFC 3339 in UTC with nine fractional digits.
    pub time: String,
    /// Role of the record.
    pub kind: RecordKind,
    /// The intent key, on intent and outcome records only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// See [`Entry::actor`].
    pub actor: String,
    /// See [`Entry::action`].
    pub action: String,
    /// See [`Entry::object`].
    pub object: ObjectRef,
    /// See [`Entry::outcome`].
    pub outcome: Outcome,
    /// See [`Entry::reason`].
    pub reason: String,
    /// See [`Entry::details`].
    pub details: BTreeMap<String, String>,
    /// Hash of the previous record, lowercase hex; [`ZERO_HASH`] for seq 1.
    pub prev: String,
    /// SHA-256 of this record's canonical serialization with `hash` empty, lowercase hex.
    pub hash: String,
}

/// Lowercase hex SHA-256 of `bytes`, encoded in one pass (the hash of every record is computed on the
/// writer thread's hot path).
fn sha256_hex(bytes: &[u8]) -> String {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 64];
    match hex::encode_to_slice(digest.as_ref(), &mut out).map(|()| std::str::from_utf8(&out)) {
        Ok(Ok(hex)) => hex.to_owned(),
        _ => hex::encode(digest.as_ref()),
    }
}

impl Record {
    /// Builds the record that follows `prev` and computes its hash.
    ///
    /// # Errors
    /// Fails only if serde_json cannot encode the record, which these types never trigger.
    pub fn seal(
        prev: &str,
        seq: u64,
        time: String,
        kind: RecordKind,
        key: Option<String>,
        entry: Entry,
    ) -> Result<Self, serde_json::Error> {
        let mut record = Self::unsealed(prev, seq, time, kind, key, entry);
        record.hash = record.compute_hash()?;
        Ok(record)
    }

    /// The record with `hash` still empty.
    fn unsealed(
        prev: &str,
        seq: u64,
        time: String,
        kind: RecordKind,
        key: Option<String>,
        entry: Entry,
    ) -> Self {
        Self {
            seq,
            time,
            kind,
            key,
            actor: entry.actor,
            action: entry.action,
            object: entry.object,
            outcome: entry.outcome,
            reason: entry.reason,
            details: entry.details,
            prev: prev.to_owned(),
            hash: String::new(),
        }
    }

    /// SHA-256 over the canonical serialization with `hash` set to the empty string, lowercase hex.
    ///
    /// # Errors
    /// Fails only if serde_json cannot encode the record.
    pub fn compute_hash(&self) -> Result<String, serde_json::Error> {
        let mut unsealed = self.clone();
        unsealed.hash.clear();
        let bytes = serde_json::to_vec(&unsealed)?;
        Ok(sha256_hex(&bytes))
    }

    /// [`Record::seal`] and [`Record::to_line`] in one serialization, for the writer's hot path.
    ///
    /// The canonical form hashed is the record with `hash` empty, and `hash` is its last field, so the
    /// stored line is that serialization with the digest spliced into the final `""`. Should the field
    /// order ever change, the splice does not apply and this falls back to serializing twice.
    ///
    /// # Errors
    /// Fails only if serde_json cannot encode the record.
    pub fn seal_line(
        prev: &str,
        seq: u64,
        time: String,
        kind: RecordKind,
        key: Option<String>,
        entry: Entry,
    ) -> Result<(Self, Vec<u8>), serde_json::Error> {
        const EMPTY_HASH_TAIL: &[u8] = br#","hash":""}"#;
        let mut record = Self::unsealed(prev, seq, time, kind, key, entry);
        // Records are a few hundred bytes: one allocation instead of a series of doublings.
        let mut line = Vec::with_capacity(1024);
        serde_json::to_writer(&mut line, &record)?;
        record.hash = sha256_hex(&line);
        if line.ends_with(EMPTY_HASH_TAIL) {
            line.truncate(line.len() - 2);
            line.extend_from_slice(record.hash.as_bytes());
            line.extend_from_slice(b"\"}\n");
        } else {
            line = record.to_line()?.into_bytes();
        }
        Ok((record, line))
    }

    /// The stored form: canonical JSON and a trailing newline.
    ///
    /// # Errors
    /// Fails only if serde_json cannot encode the record.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(self)?;
        line.push('\n');
        Ok(line)
    }

    /// The caller-supplied part of the record.
    pub fn entry(&self) -> Entry {
        Entry {
            actor: self.actor.clone(),
            action: self.action.clone(),
            object: self.object.clone(),
            outcome: self.outcome,
            reason: self.reason.clone(),
            details: self.details.clone(),
        }
    }

    /// Checks the rules that tie kind, key and outcome together, and the time format.
    ///
    /// # Errors
    /// A short description of the first broken rule.
    pub fn check_shape(&self) -> Result<(), &'static str> {
        let keyed = matches!(self.kind, RecordKind::Intent | RecordKind::Outcome);
        match (&self.key, keyed) {
            (Some(key), true) if key.is_empty() => return Err("empty intent key"),
            (None, true) => return Err("intent or outcome record without a key"),
            (Some(_), false) => return Err("only intent and outcome records carry a key"),
            _ => {}
        }
        let pending = self.outcome == Outcome::Pending;
        if (self.kind == RecordKind::Intent) != pending {
            return Err("intents, and only intents, have the outcome pending");
        }
        if self.time.parse::<jiff::Timestamp>().is_err() {
            return Err("time is not an RFC 3339 timestamp");
        }
        Ok(())
    }
}

/// The current time in the format records use: RFC 3339, UTC, nine fractional digits, so times sort as text.
pub fn now_rfc3339() -> String {
    format!("{:.9}", jiff::Timestamp::now())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An object reference for tests.
    pub(crate) fn agent_ref(name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "agentiam.dev/v1alpha1".into(),
            kind: "Agent".into(),
            namespace: Some("team-a".into()),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
        }
    }

    /// An event entry for tests.
    pub(crate) fn entry(n: u64) -> Entry {
        Entry::new(
            "agentiam-operator",
            "agent.activate",
            agent_ref(&format!("agent-{n}")),
            Outcome::Success,
            "all checks passed",
        )
        .with_detail("n", n.to_string())
    }

    #[test]
    fn seal_computes_a_hash_that_recomputes() {
        let record = Record::seal(ZERO_HASH, 1, now_rfc3339(), RecordKind::Event, None, entry(1)).unwrap();
        assert_eq!(record.hash.len(), 64);
        assert_eq!(record.compute_hash().unwrap(), record.hash);
        assert!(record.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(record.entry(), entry(1));
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = Record::seal(ZERO_HASH, 1, now_rfc3339(), RecordKind::Event, None, entry(1)).unwrap();
        let edits: Vec<fn(&mut Record)> = vec![
            |r| r.seq = 2,
            |r| r.time.push('0'),
            |r| r.kind = RecordKind::Recovery,
            |r| r.key = Some("k".into()),
            |r| r.actor.push('x'),
            |r| r.action.push('x'),
            |r| r.object.namespace = None,
            |r| r.object.uid = None,
            |r| r.outcome = Outcome::Denied,
            |r| r.reason.push('x'),
            |r| {
                r.details.insert("extra".into(), String::new());
            },
            |r| r.prev = "1".repeat(64),
        ];
        for edit in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            assert_ne!(changed.compute_hash().unwrap(), base.hash);
        }
    }

    #[test]
    fn line_is_canonical_json_with_fixed_field_order() {
        let record = Record::seal(
            ZERO_HASH,
            1,
            "2026-01-02T03:04:05.000000006Z".into(),
            RecordKind::Event,
            None,
            entry(1),
        )
        .unwrap();
        let line = record.to_line().unwrap();
        assert!(line.ends_with("}\n"));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(
            line.starts_with(r#"{"seq":1,"time":"2026-01-02T03:04:05.000000006Z","kind":"event","actor":"#)
        );
        let parsed: Record = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(parsed, record);
    }

    #[test]
    fn seal_line_is_seal_then_to_line() {
        let time = "2026-01-02T03:04:05.000000006Z";
        let quoted = entry(2).with_detail("quote\"d", "line\nbreak \\ \u{1F600} \"hash\":\"\"}");
        let cases = [
            (RecordKind::Event, None, entry(1)),
            (RecordKind::Intent, Some("credential.issue:uid-1:3".to_owned()), quoted),
            (RecordKind::Outcome, Some("k".to_owned()), Entry { details: BTreeMap::new(), ..entry(3) }),
        ];
        for (kind, key, entry) in cases {
            let prev = "ab".repeat(32);
            let sealed = Record::seal(&prev, 7, time.into(), kind, key.clone(), entry.clone()).unwrap();
            let (record, line) = Record::seal_line(&prev, 7, time.into(), kind, key, entry).unwrap();
            assert_eq!(record, sealed);
            assert_eq!(String::from_utf8(line).unwrap(), sealed.to_line().unwrap());
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let record = Record::seal(ZERO_HASH, 1, now_rfc3339(), RecordKind::Event, None, entry(1)).unwrap();
        let line = record.to_line().unwrap().replacen("{", r#"{"extra":1,"#, 1);
        assert!(serde_json::from_str::<Record>(line.trim_end()).is_err());
    }

    #[test]
    fn time_has_nanoseconds_in_utc() {
        let time = now_rfc3339();
        assert!(time.ends_with('Z'), "{time}");
        let fraction = time.rsplit('.').next().unwrap();
        assert_eq!(fraction.len(), 10, "{time}");
    }

    #[test]
    fn shape_rules() {
        let seal = |kind, key: Option<&str>, outcome| {
            let mut e = entry(1);
            e.outcome = outcome;
            Record::seal(ZERO_HASH, 1, now_rfc3339(), kind, key.map(str::to_owned), e).unwrap()
        };
        assert!(seal(RecordKind::Event, None, Outcome::Success).check_shape().is_ok());
        assert!(seal(RecordKind::Intent, Some("k"), Outcome::Pending).check_shape().is_ok());
        assert!(seal(RecordKind::Outcome, Some("k"), Outcome::Abandoned).check_shape().is_ok());
        assert!(seal(RecordKind::Event, Some("k"), Outcome::Success).check_shape().is_err());
        assert!(seal(RecordKind::Event, None, Outcome::Pending).check_shape().is_err());
        assert!(seal(RecordKind::Intent, None, Outcome::Pending).check_shape().is_err());
        assert!(seal(RecordKind::Intent, Some(""), Outcome::Pending).check_shape().is_err());
        assert!(seal(RecordKind::Intent, Some("k"), Outcome::Success).check_shape().is_err());
        assert!(seal(RecordKind::Outcome, Some("k"), Outcome::Pending).check_shape().is_err());
        let mut bad_time = seal(RecordKind::Event, None, Outcome::Success);
        bad_time.time = "yesterday".into();
        assert!(bad_time.check_shape().is_err());
    }
}
