//! The audit log: an append-only, hash-chained, write-ahead JSON-lines file, and the tools to verify it.
//!
//! # Design
//!
//! **Hash chain.** Each line is one [`Record`]: the caller's [`Entry`] plus a contiguous `seq` (from 1), a
//! time, the hash of the previous record (`prev`) and its own SHA-256 `hash`. The hash covers the record's
//! canonical serialization (serde_json of the struct, fixed field order, `details` sorted), and the stored
//! line must *be* that serialization, byte for byte. So editing, inserting, deleting or reordering any
//! record in the middle breaks the chain at a line that verification names.
//!
//! **Write-ahead intents.** An action that grants something (issuing a credential, activating an agent)
//! first writes an [`RecordKind::Intent`] under a caller-chosen key and waits for it to be durable, then
//! performs the side effect, then writes an [`RecordKind::Outcome`] for the key. After a crash, intents
//! without outcome are exactly the side effects that may or may not have happened:
//! [`AuditLog::open_intents`] lists them so the operator can look at the real state and close each one as
//! `success` or `abandoned`. Intents are idempotent by key, so a retried reconcile neither writes a second
//! intent nor redoes a side effect that already has an outcome ([`IntentState`]).
//!
//! **Group commit.** One writer thread owns the file. Callers queue entries; the writer takes everything
//! queued, writes all lines with one `write`, calls `fsync` (`sync_data`) once and only then answers each
//! caller. An `Ok` therefore means durable. If the write or the sync fails, the whole batch gets an error
//! and the log refuses all further appends until restarted (fail closed): an operator that cannot record
//! what it does must stop doing it. An error means "not known to be durable": the record may still be in
//! the file after a restart, which is harmless for intents (they are resolved at startup) and is why
//! callers must not treat an error as proof that nothing was recorded. [`AuditLog::enqueue`] queues a
//! record without waiting (authorization decisions): a batch of only such records lingers up to 2 ms for
//! more before its one sync, and a waited-for request ends the linger at once.
//!
//! **Crash recovery.** Opening verifies the whole file. A crash mid-write can only leave an incomplete
//! final line, which was never acknowledged; it is cut and a [`RecordKind::Recovery`] record says so. Any
//! other damage makes [`AuditLog::open`] fail, naming the first bad line.
//!
//! **Checkpoints.** A chain proves internal consistency only: whoever can write the file can rebuild a
//! consistent chain, or simply cut records off the end. A [`Checkpoint`] signs (seq, hash) with an ECDSA
//! key, and is stored away from the log; [`verify_log`] then detects a log that is shorter than a
//! checkpoint or whose record at a checkpoint's seq differs.
//!
//! # What is and is not detectable
//!
//! Detected by [`verify_log`] alone: any changed byte, any deleted, inserted, duplicated or reordered
//! record except at the very end, a record cut mid-line. Detected with checkpoints: truncation below the
//! newest checkpoint and any rewrite of history up to it. **Not** detectable by verification alone:
//! cutting whole records *after* the newest checkpoint (the report's `unpinned_records` says how many are
//! exposed), and a rewrite by someone holding the checkpoint signing key. Checkpoint often, and keep the
//! key where the log's writer cannot read it if that matters.
//!
//! Records must never carry secrets; see [`Entry`].

mod action;
mod checkpoint;
mod log;
mod record;
mod state;
mod stdout;
mod verify;
mod writer;

use std::io;
use std::path::PathBuf;

pub use action::{Action, IntentKey};
pub use checkpoint::{
    CHECKPOINT_DOMAIN, Checkpoint, CheckpointError, CheckpointSigner, Pkcs8Key, checkpoint_message, key_id,
    public_key_from_pem, verify_checkpoint,
};
pub use log::{AuditConfig, AuditLog, IntentState, Projection};
pub use record::{Entry, ObjectRef, Outcome, Record, RecordKind, ZERO_HASH, now_rfc3339};
pub use verify::{ChainVerifier, LineError, Problem, VerifyError, VerifyReport, trace, verify_log};

/// Why an audit log operation failed. Variants name the step; messages never contain record contents
/// beyond intent keys, and never key material.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Creating the log's directory failed.
    #[error("failed to create audit log directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Opening or creating the log file failed.
    #[error("failed to open audit log {path}")]
    Open {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process (or another handle in this one) holds the log: two writers would fork the chain.
    #[error("audit log {path} is locked by another writer")]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// Reading the existing log at open failed.
    #[error("failed to read audit log {path}")]
    Read {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The existing log does not verify: the operator must not append to it.
    #[error("audit log is corrupt at {}", Location(*line, *seq, reason))]
    Corrupt {
        /// 1-based line number of the first bad line.
        line: u64,
        /// Its seq, when it parsed.
        seq: Option<u64>,
        /// What is wrong.
        reason: Problem,
    },
    /// Cutting a torn final line failed.
    #[error("failed to cut the incomplete final record of audit log {path}")]
    Repair {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("failed to start the audit writer thread")]
    Spawn(#[source] io::Error),
    /// A record could not be serialized (not expected to happen with these types).
    #[error("failed to encode audit record")]
    Encode(#[source] serde_json::Error),
    /// Writing a batch failed; the log now refuses appends.
    #[error("failed to write audit records")]
    Write(#[source] io::Error),
    /// Syncing a batch to disk failed; the log now refuses appends.
    #[error("failed to sync audit log to disk")]
    Sync(#[source] io::Error),
    /// An earlier write or sync failed; nothing more is accepted until restart.
    #[error("audit log stopped after an earlier write failure; restart to recover")]
    Failed,
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// Reading back an earlier outcome record failed.
    #[error("failed to read back audit record at byte {offset}")]
    ReadBack {
        /// Byte offset of the record in the file.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// An earlier record no longer matches what was written: the file was changed behind the log's back.
    #[error("audit record at byte {offset} changed on disk after it was written: {reason}")]
    Tampered {
        /// Byte offset of the record in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The intent key is empty or too long.
    #[error("invalid intent key: {0}")]
    InvalidKey(&'static str),
    /// The outcome does not fit the kind of record (only intents may be pending).
    #[error("invalid outcome: {0}")]
    InvalidOutcome(&'static str),
    /// An outcome was given for a key that has no intent.
    #[error("no intent with key {key:?}")]
    UnknownIntent {
        /// The key.
        key: String,
    },
}

impl AuditError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::CreateDir { .. } => "create_dir",
            Self::Open { .. } => "open",
            Self::Locked { .. } => "locked",
            Self::Read { .. } => "read",
            Self::Corrupt { .. } => "corrupt",
            Self::Repair { .. } => "repair",
            Self::Spawn(_) => "spawn",
            Self::Encode(_) => "encode",
            Self::Write(_) => "write",
            Self::Sync(_) => "sync",
            Self::Failed => "failed",
            Self::Closed => "closed",
            Self::ReadBack { .. } => "read_back",
            Self::Tampered { .. } => "tampered",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidOutcome(_) => "invalid_outcome",
            Self::UnknownIntent { .. } => "unknown_intent",
        }
    }
}

impl From<LineError> for AuditError {
    fn from(error: LineError) -> Self {
        Self::Corrupt { line: error.line, seq: error.seq, reason: error.problem }
    }
}

/// Formats a corrupt line's location the same way [`LineError`] does.
struct Location<'a>(u64, Option<u64>, &'a Problem);

impl std::fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        verify::write_location(f, self.0, self.1, self.2)
    }
}
