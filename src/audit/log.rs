//! The audit log handle: opening (verify, repair, lock) and the async API in front of the writer thread.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;

use aws_lc_rs::digest;
use tokio::sync::{mpsc, oneshot};

use super::AuditError;
use super::checkpoint::{Checkpoint, CheckpointError, CheckpointSigner};
use super::record::{Entry, ObjectRef, Outcome, Record, RecordKind, now_rfc3339};
pub use super::state::{IntentState, Projection};
use super::stdout::StdoutSink;
use super::verify::{ChainVerifier, LineError, Problem};
use super::writer::{DeferredEntry, Index, Op, Request, Shared, Writer, write_durably};

/// Requests that may queue for the writer before `append` itself waits: backpressure, not a batch size.
const QUEUE_DEPTH: usize = 4096;

/// Longest accepted intent key. Closed keys stay in memory for the life of the process.
const MAX_KEY_LEN: usize = 256;

/// Who writes records the log makes about itself.
const LOG_ACTOR: &str = "agentiam-audit";

/// Where and how to keep the audit log.
#[derive(Clone)]
pub struct AuditConfig {
    /// The JSON-lines file. Its directory is created (mode 0700) if missing; the file gets mode 0600.
    pub path: PathBuf,
    /// Also print every durable record as one JSON line on stdout, for log shippers. Operator logs go to
    /// stderr, so stdout then carries audit records only.
    pub stream_stdout: bool,
    /// State kept as a function of the log (see [`Projection`]): fed every record at open, then every new
    /// record once it is durable.
    pub projection: Option<Arc<dyn Projection>>,
}

impl AuditConfig {
    /// A log at `path`, without a stdout copy or a projection.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), stream_stdout: false, projection: None }
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("path", &self.path)
            .field("stream_stdout", &self.stream_stdout)
            .field("projection", &self.projection.is_some())
            .finish()
    }
}

/// A cheaply clonable handle to the audit log, usable from any number of tasks.
///
/// Futures returned by the methods do not need to be polled to completion: once a request is queued, the
/// writer records it even if the caller stops waiting.
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    tx: mpsc::Sender<Request>,
    /// The writer thread, woken after queueing anything a caller waits for (it may be lingering).
    writer: thread::Thread,
    shared: Arc<Shared>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (or creates) the log, verifies every record, cuts a torn final line left by a crash (writing a
    /// recovery record about it), takes an exclusive lock on the file and starts the writer thread.
    ///
    /// Blocking: reads the whole file. Call it at startup, or from `spawn_blocking`.
    ///
    /// # Errors
    /// [`AuditError::Corrupt`] naming the first bad line if the log does not verify (fail closed: the
    /// operator must not run on a broken log); [`AuditError::Locked`] if another writer has it; I/O errors.
    pub fn open(config: AuditConfig) -> Result<Self, AuditError> {
        let path = config.path;
        let mut file = open_file(&path)?;
        file.try_lock().map_err(|error| match error {
            TryLockError::WouldBlock => AuditError::Locked { path: path.clone() },
            TryLockError::Error(source) => AuditError::Open { path: path.clone(), source },
        })?;
        let (mut index, torn) = scan(&file, &path, config.projection.as_deref())?;
        let recovery = match torn {
            Some(torn) => Some(repair(&mut file, &path, &mut index, &torn)?),
            None => None,
        };
        let stdout =
            if config.stream_stdout { Some(StdoutSink::start().map_err(AuditError::Spawn)?) } else { None };
        if let (Some(line), Some(stdout)) = (recovery, stdout.as_ref()) {
            stdout.send(&line);
        }
        let shared = Arc::new(Shared::new(index));
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer::new(file, Arc::clone(&shared), stdout, rx, config.projection);
        let writer = thread::Builder::new()
            .name("agentiam-audit".into())
            .spawn(move || writer.run())
            .map_err(AuditError::Spawn)?
            .thread()
            .clone();
        Ok(Self { inner: Arc::new(Handle { tx, writer, shared, path }) })
    }

    /// Records a plain event. Returns once the record is durable.
    ///
    /// # Errors
    /// [`AuditError::InvalidOutcome`] for a pending outcome; write, sync, failed and closed errors.
    pub async fn append(&self, entry: Entry) -> Result<Record, AuditError> {
        self.request(Op::Append(entry)).await.map(IntentState::into_record)
    }

    /// Queues a plain record without waiting for it to be durable, for records made at a high rate where
    /// the caller must not wait for a disk sync (authorization decisions). It waits only for queue space, so
    /// under load callers slow down rather than records being dropped; the writer group-commits queued
    /// records within milliseconds. What is lost in a crash is at most the batch being written.
    ///
    /// # Errors
    /// [`AuditError::Failed`] once the log has failed, [`AuditError::Closed`] after close: the caller must
    /// then refuse what it was about to allow (fail closed).
    pub async fn enqueue(&self, entry: Entry) -> Result<(), AuditError> {
        self.send_unwaited(Op::Append(entry)).await
    }

    /// [`AuditLog::enqueue`] with the entry built by `build` on the writer thread: a caller on a latency
    /// path (the decision API) then spends its own thread only on moving the facts, not on formatting them.
    /// `build` must be cheap and must not panic (it runs on the writer thread).
    ///
    /// # Errors
    /// As [`AuditLog::enqueue`].
    pub async fn enqueue_with(
        &self,
        build: impl FnOnce() -> Entry + Send + 'static,
    ) -> Result<(), AuditError> {
        self.send_unwaited(Op::Deferred(DeferredEntry(Box::new(build)))).await
    }

    async fn send_unwaited(&self, op: Op) -> Result<(), AuditError> {
        if self.inner.shared.failed.load(Ordering::Acquire) {
            return Err(AuditError::Failed);
        }
        // Nobody waits for the answer, so no reply channel and no wake-up: the writer lingers for more.
        self.inner
            .tx
            .send(Request::Write { op: Box::new(op), reply: None })
            .await
            .map_err(|_| AuditError::Closed)
    }

    /// Records the intent to perform a granting side effect, idempotently by `key` (see [`IntentState`]).
    /// The entry's outcome is stored as pending whatever it was.
    ///
    /// # Errors
    /// [`AuditError::InvalidKey`]; write, sync, failed and closed errors.
    pub async fn intent(&self, key: &str, entry: Entry) -> Result<IntentState, AuditError> {
        check_key(key)?;
        self.request(Op::Intent { key: key.to_owned(), entry }).await
    }

    /// Closes the open intent `key` with an outcome; actor, action and object are copied from the intent.
    /// If the key already has an outcome, that record is returned and nothing is written.
    ///
    /// # Errors
    /// [`AuditError::UnknownIntent`] if no intent has this key; [`AuditError::InvalidOutcome`] for
    /// [`Outcome::Pending`]; write, sync, failed and closed errors.
    pub async fn outcome(
        &self,
        key: &str,
        outcome: Outcome,
        reason: impl Into<String>,
        details: BTreeMap<String, String>,
    ) -> Result<Record, AuditError> {
        check_key(key)?;
        let op = Op::Outcome { key: key.to_owned(), outcome, reason: reason.into(), details };
        self.request(op).await.map(IntentState::into_record)
    }

    async fn request(&self, op: Op) -> Result<IntentState, AuditError> {
        if self.inner.shared.failed.load(Ordering::Acquire) {
            return Err(AuditError::Failed);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Request::Write { op: Box::new(op), reply: Some(reply) })
            .await
            .map_err(|_| AuditError::Closed)?;
        self.inner.writer.unpark();
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Intents without an outcome, oldest first: after a crash, the side effects to check and resolve.
    pub fn open_intents(&self) -> Vec<Record> {
        self.open_intents_matching(|_| true)
    }

    /// The intents without an outcome that match `pred`, oldest first. Only the matches are copied: a
    /// reconcile asks for the few intents of its own object while hundreds of others may be open.
    pub fn open_intents_matching(&self, pred: impl Fn(&Record) -> bool) -> Vec<Record> {
        let mut open: Vec<Record> =
            self.inner.shared.index().open.values().filter(|r| pred(r)).cloned().collect();
        open.sort_by_key(|record| record.seq);
        open
    }

    /// Whether any intent without an outcome matches `pred`, looked at in place (no copies: reconciles ask
    /// this on their hot path).
    pub fn any_open_intent(&self, pred: impl Fn(&Record) -> bool) -> bool {
        self.inner.shared.index().open.values().any(pred)
    }

    /// True once a write or sync failed: the log refuses every append until the operator restarts.
    pub fn is_failed(&self) -> bool {
        self.inner.shared.failed.load(Ordering::Acquire)
    }

    /// Seq and hash of the last durable record; `(0, ZERO_HASH)` for an empty log.
    pub fn head(&self) -> (u64, String) {
        let index = self.inner.shared.index();
        (index.seq, index.hash.clone())
    }

    /// Signs the current head, to be stored away from the log.
    ///
    /// # Errors
    /// See [`CheckpointSigner::sign`].
    pub fn checkpoint(&self, signer: &CheckpointSigner) -> Result<Checkpoint, CheckpointError> {
        let (seq, head) = self.head();
        signer.sign(seq, &head, &now_rfc3339())
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Finishes queued work, then releases the file and its lock. Later calls on any clone fail with
    /// [`AuditError::Closed`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.tx.send(Request::Close { reply }).await.is_ok() {
            self.inner.writer.unpark();
            // An error means the writer is already gone, which is what was asked for.
            let _ = done.await;
        }
    }

    #[cfg(test)]
    fn fail_next_sync(&self) {
        self.inner.shared.fail_next_sync.store(true, Ordering::Release);
    }
}

fn check_key(key: &str) -> Result<(), AuditError> {
    if key.is_empty() {
        return Err(AuditError::InvalidKey("empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(AuditError::InvalidKey("longer than 256 bytes"));
    }
    Ok(())
}

/// Opens the log file, creating it and its directory with owner-only permissions if missing.
fn open_file(path: &Path) -> Result<File, AuditError> {
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty());
    if let Some(parent) = parent {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| AuditError::CreateDir { path: parent.to_owned(), source })?;
    }
    let open_error = |source| AuditError::Open { path: path.to_owned(), source };
    let mut options = OpenOptions::new();
    options.read(true).append(true).mode(0o600);
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            // A new file's directory entry is only durable once the directory is synced.
            let dir = parent.unwrap_or(Path::new("."));
            File::open(dir).and_then(|dir| dir.sync_all()).map_err(open_error)?;
            Ok(file)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => options.open(path).map_err(open_error),
        Err(error) => Err(open_error(error)),
    }
}

/// An incomplete final line found at open.
struct Torn {
    line: u64,
    offset: u64,
    len: u64,
    sha256: String,
}

/// Verifies the whole file and rebuilds the index. A bad *last* line that is incomplete or unparsable is
/// reported as torn rather than corrupt: `append` writes whole lines in one write and acknowledges only
/// after sync, so such a line is the remains of a write that no caller was told succeeded.
fn scan(
    file: &File,
    path: &Path,
    projection: Option<&dyn Projection>,
) -> Result<(Index, Option<Torn>), AuditError> {
    let read_error = |source| AuditError::Read { path: path.to_owned(), source };
    let mut reader = BufReader::new(file);
    let mut chain = ChainVerifier::new();
    let mut index = Index::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_error)?;
        if n == 0 {
            return Ok((index, None));
        }
        let torn = |line| Torn {
            line,
            offset: index.len,
            len: n as u64,
            sha256: hex::encode(digest::digest(&digest::SHA256, &buf)),
        };
        // Without a newline, read_until stopped at the end of the file.
        let Some(line) = buf.strip_suffix(b"\n") else {
            let torn = torn(chain.lines() + 1);
            return Ok((index, Some(torn)));
        };
        match chain.push(line) {
            Ok(record) => {
                let at = |problem| LineError { line: chain.lines(), seq: Some(record.seq), problem };
                index.check(&record).map_err(at)?;
                index.apply(&record, n as u64);
                if let Some(p) = projection.filter(|p| p.wants(&record.action)) {
                    p.apply(&record);
                }
            }
            Err(error) if matches!(error.problem, Problem::Incomplete | Problem::Unparsable(_)) => {
                if reader.fill_buf().map_err(read_error)?.is_empty() {
                    let torn = torn(error.line);
                    return Ok((index, Some(torn)));
                }
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Cuts a torn final line and records that it did, durably, before anything else is appended.
/// Returns the recovery record's line.
fn repair(file: &mut File, path: &Path, index: &mut Index, torn: &Torn) -> Result<Vec<u8>, AuditError> {
    tracing::warn!(
        path = %path.display(),
        line = torn.line,
        bytes = torn.len,
        "audit log ends in an incomplete record left by a crash mid-write; cutting it"
    );
    let repair_error = |source| AuditError::Repair { path: path.to_owned(), source };
    file.set_len(torn.offset).map_err(repair_error)?;
    // The cut must be durable before the recovery record lands after it.
    file.sync_data().map_err(repair_error)?;
    let entry = Entry::new(
        LOG_ACTOR,
        super::Action::AuditRecover,
        log_object(path),
        Outcome::Success,
        "cut an incomplete final record left by a crash mid-write; it was never acknowledged",
    )
    .with_detail("line", torn.line.to_string())
    .with_detail("offset", torn.offset.to_string())
    .with_detail("bytes", torn.len.to_string())
    .with_detail("sha256", torn.sha256.clone());
    let (record, line) =
        Record::seal_line(&index.hash, index.seq + 1, now_rfc3339(), RecordKind::Recovery, None, entry)
            .map_err(AuditError::Encode)?;
    write_durably(file, &line)?;
    index.apply(&record, line.len() as u64);
    Ok(line)
}

/// The object of records the log writes about itself. `AuditLog` is not an API kind: it names the file.
fn log_object(path: &Path) -> ObjectRef {
    ObjectRef {
        api_version: format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
        kind: "AuditLog".into(),
        namespace: None,
        name: path.display().to_string(),
        uid: None,
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
