//! Verification of a whole log: the chain line by line, then signed checkpoints against it. Pure: works on
//! bytes, so the operator (at open), the CLI and tests share one implementation.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::checkpoint::{Checkpoint, CheckpointError, verify_checkpoint};
use super::record::{Record, RecordKind, ZERO_HASH};

/// What is wrong with one line. Messages say what the damage implies, for the human reading them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The last line has no newline or stops mid-JSON.
    #[error("incomplete record (log cut mid-record)")]
    Incomplete,
    /// Not a record at all (or has unknown fields).
    #[error("not a valid audit record: {0}")]
    Unparsable(String),
    /// Parses, but the bytes are not what serializing the record gives: something was edited by hand.
    #[error("record bytes differ from its canonical form: record was modified")]
    NotCanonical,
    /// The stored hash is not the hash of the record.
    #[error("hash mismatch: record was modified")]
    HashMismatch,
    /// The first record is not seq 1.
    #[error("log starts at seq {seq}, not 1: the head of the log was removed")]
    BadStart {
        /// The seq found on the first line.
        seq: u64,
    },
    /// A seq was skipped.
    #[error("seq {seq} follows seq {prev}: a record was deleted")]
    Gap {
        /// Seq of the previous line.
        prev: u64,
        /// Seq of this line.
        seq: u64,
    },
    /// A seq repeats or goes backwards.
    #[error("seq {seq} follows seq {prev}: a record was duplicated or reordered")]
    OutOfOrder {
        /// Seq of the previous line.
        prev: u64,
        /// Seq of this line.
        seq: u64,
    },
    /// `prev` is not the hash of the record before.
    #[error("prev does not match hash of seq {prev_seq}")]
    PrevMismatch {
        /// Seq of the record whose hash was expected (0 means the all-zero hash).
        prev_seq: u64,
    },
    /// Kind, key and outcome do not fit together (see [`Record::check_shape`]).
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// A second intent with a key that was already used.
    #[error("intent key {key:?} was already used")]
    DuplicateIntent {
        /// The intent key.
        key: String,
    },
    /// An outcome whose key has no open intent (never opened, or already closed).
    #[error("outcome for key {key:?} closes no open intent")]
    OrphanOutcome {
        /// The intent key.
        key: String,
    },
}

impl Problem {
    /// Whether the message already names the line's seq, so the location need not repeat it.
    fn names_seq(&self) -> bool {
        matches!(self, Self::BadStart { .. } | Self::Gap { .. } | Self::OutOfOrder { .. })
    }
}

/// The first bad line of a log: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// The seq the line claims, when it parsed.
    pub seq: Option<u64>,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, self.line, self.seq, &self.problem)
    }
}

/// "line N (seq S): problem", leaving out the seq when the problem's own message names it.
pub(crate) fn write_location(
    f: &mut fmt::Formatter<'_>,
    line: u64,
    seq: Option<u64>,
    problem: &Problem,
) -> fmt::Result {
    match seq {
        Some(seq) if !problem.names_seq() => write!(f, "line {line} (seq {seq}): {problem}"),
        _ => write!(f, "line {line}: {problem}"),
    }
}

impl std::error::Error for LineError {}

/// Checks lines one at a time against the chain so far: parse, canonical bytes, hash, seq, prev, shape.
///
/// Intent bookkeeping is left to the caller, because the operator and the verifier keep different amounts
/// of it in memory.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    lines: u64,
    last_seq: u64,
    last_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { lines: 0, last_seq: 0, last_hash: ZERO_HASH.to_owned() }
    }
}

impl ChainVerifier {
    /// A verifier expecting seq 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next line, given without its trailing newline, and returns the record it holds.
    ///
    /// # Errors
    /// The [`LineError`] for this line. The verifier is then unusable: the chain is broken here.
    pub fn push(&mut self, line: &[u8]) -> Result<Record, LineError> {
        self.lines += 1;
        let fail = |seq, problem| LineError { line: self.lines, seq, problem };
        let record: Record = serde_json::from_slice(line).map_err(|e| {
            // An EOF error means a prefix of a record: the signature of a write cut short.
            let problem = if e.is_eof() && !line.is_empty() {
                Problem::Incomplete
            } else {
                Problem::Unparsable(e.to_string())
            };
            fail(None, problem)
        })?;
        let seq = Some(record.seq);
        let canonical =
            serde_json::to_vec(&record).map_err(|e| fail(seq, Problem::Unparsable(e.to_string())))?;
        if canonical != line {
            return Err(fail(seq, Problem::NotCanonical));
        }
        let hash = record.compute_hash().map_err(|e| fail(seq, Problem::Unparsable(e.to_string())))?;
        if hash != record.hash {
            return Err(fail(seq, Problem::HashMismatch));
        }
        let expected = self.last_seq.saturating_add(1);
        if record.seq != expected {
            let (prev, seq) = (self.last_seq, record.seq);
            let problem = match () {
                () if prev == 0 => Problem::BadStart { seq },
                () if seq > expected => Problem::Gap { prev, seq },
                () => Problem::OutOfOrder { prev, seq },
            };
            return Err(fail(Some(seq), problem));
        }
        if record.prev != self.last_hash {
            return Err(fail(seq, Problem::PrevMismatch { prev_seq: self.last_seq }));
        }
        record.check_shape().map_err(|reason| fail(seq, Problem::Malformed(reason)))?;
        self.last_seq = record.seq;
        self.last_hash.clone_from(&record.hash);
        Ok(record)
    }

    /// Lines checked so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Seq and hash of the last good record; `(0, ZERO_HASH)` before the first.
    pub fn head(&self) -> (u64, &str) {
        (self.last_seq, &self.last_hash)
    }
}

/// Why a log failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A line is bad; it is the first bad one.
    #[error("{0}")]
    Record(#[from] LineError),
    /// Checkpoints were given without a key to check them with.
    #[error("checkpoints were given but no public key to verify them")]
    MissingKey,
    /// A checkpoint's signature does not verify.
    #[error("checkpoint at seq {seq}: {source}")]
    Signature {
        /// The checkpoint's seq.
        seq: u64,
        /// Why it failed.
        source: CheckpointError,
    },
    /// The log is shorter than a checkpoint says it was.
    #[error("log truncated: checkpoint at seq {seq} but log ends at seq {last}")]
    Truncated {
        /// The checkpoint's seq.
        seq: u64,
        /// The last seq in the log.
        last: u64,
    },
    /// The record at a checkpoint's seq is not the one that was signed.
    #[error("log rewritten: record seq {seq} does not have the hash its signed checkpoint pins")]
    Rewritten {
        /// The checkpoint's seq.
        seq: u64,
    },
}

/// What a successful verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records.
    pub records: u64,
    /// Seq of the last record (0 for an empty log).
    pub head_seq: u64,
    /// Hash of the last record ([`ZERO_HASH`] for an empty log).
    pub head_hash: String,
    /// Checkpoints whose signature and head matched.
    pub checkpoints_verified: usize,
    /// Records after the highest checkpoint: these could have been cut without verify noticing.
    pub unpinned_records: u64,
    /// Intent records.
    pub intents: u64,
    /// Intents still without an outcome.
    pub open_intents: usize,
    /// Records the log wrote while recovering from a crash.
    pub recoveries: u64,
}

/// Remembers which intent keys are open or closed, to enforce one intent and at most one outcome per key.
#[derive(Default)]
pub(crate) struct IntentTracker {
    open: HashSet<String>,
    closed: HashSet<String>,
}

impl IntentTracker {
    /// Applies one verified record.
    pub(crate) fn apply(&mut self, record: &Record) -> Result<(), Problem> {
        let Some(key) = &record.key else { return Ok(()) };
        match record.kind {
            RecordKind::Intent if self.open.contains(key) || self.closed.contains(key) => {
                Err(Problem::DuplicateIntent { key: key.clone() })
            }
            RecordKind::Intent => {
                self.open.insert(key.clone());
                Ok(())
            }
            RecordKind::Outcome if self.open.remove(key) => {
                self.closed.insert(key.clone());
                Ok(())
            }
            RecordKind::Outcome => Err(Problem::OrphanOutcome { key: key.clone() }),
            RecordKind::Event | RecordKind::Recovery => Ok(()),
        }
    }
}

/// Splits a log into lines without their newlines; the flag says whether the line had one.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    bytes.split_inclusive(|b| *b == b'\n').map(|chunk| match chunk.strip_suffix(b"\n") {
        Some(line) => (line, true),
        None => (chunk, false),
    })
}

/// Verifies a whole log and the given checkpoints.
///
/// Checks, in order: every line (see [`ChainVerifier::push`] and intent bookkeeping) with the first bad one
/// reported; then every checkpoint: its signature with `public_key` (DER SubjectPublicKeyInfo), that the log
/// reaches its seq, and that the record there has the signed hash.
///
/// # Errors
/// The first problem found, see [`VerifyError`].
pub fn verify_log(
    bytes: &[u8],
    checkpoints: &[Checkpoint],
    public_key: Option<&[u8]>,
) -> Result<VerifyReport, VerifyError> {
    // Only the hashes checkpoints ask about are kept, so memory does not grow with the log.
    let mut pinned: HashMap<u64, String> = checkpoints.iter().map(|c| (c.seq, String::new())).collect();
    pinned.insert(0, ZERO_HASH.to_owned());
    let mut chain = ChainVerifier::new();
    let mut tracker = IntentTracker::default();
    let (mut intents, mut recoveries) = (0, 0);
    for (line, complete) in lines(bytes) {
        if !complete {
            let error = LineError { line: chain.lines() + 1, seq: None, problem: Problem::Incomplete };
            return Err(error.into());
        }
        let record = chain.push(line)?;
        tracker.apply(&record).map_err(|problem| LineError {
            line: chain.lines(),
            seq: Some(record.seq),
            problem,
        })?;
        intents += u64::from(record.kind == RecordKind::Intent);
        recoveries += u64::from(record.kind == RecordKind::Recovery);
        if let Some(hash) = pinned.get_mut(&record.seq) {
            hash.clone_from(&record.hash);
        }
    }
    let (head_seq, head_hash) = chain.head();
    if !checkpoints.is_empty() && public_key.is_none() {
        return Err(VerifyError::MissingKey);
    }
    for checkpoint in checkpoints {
        let seq = checkpoint.seq;
        if let Some(key) = public_key {
            verify_checkpoint(checkpoint, key).map_err(|source| VerifyError::Signature { seq, source })?;
        }
        if seq > head_seq {
            return Err(VerifyError::Truncated { seq, last: head_seq });
        }
        if pinned.get(&seq) != Some(&checkpoint.head) {
            return Err(VerifyError::Rewritten { seq });
        }
    }
    let highest = checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
    Ok(VerifyReport {
        records: head_seq,
        head_seq,
        head_hash: head_hash.to_owned(),
        checkpoints_verified: checkpoints.len(),
        unpinned_records: head_seq.saturating_sub(highest),
        intents,
        open_intents: tracker.open.len(),
        recoveries,
    })
}

/// The records of a log that `filter` accepts, in order, e.g. everything about one agent for
/// `kubectl agentiam audit trace`. The chain is verified on the way, so a trace never shows a tampered
/// record; checkpoints are not (use [`verify_log`] for that).
///
/// # Errors
/// The first bad line.
pub fn trace(bytes: &[u8], filter: impl Fn(&Record) -> bool) -> Result<Vec<Record>, VerifyError> {
    let mut chain = ChainVerifier::new();
    let mut found = Vec::new();
    for (line, complete) in lines(bytes) {
        if !complete {
            let error = LineError { line: chain.lines() + 1, seq: None, problem: Problem::Incomplete };
            return Err(error.into());
        }
        let record = chain.push(line)?;
        if filter(&record) {
            found.push(record);
        }
    }
    Ok(found)
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
