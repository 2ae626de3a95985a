//! The writer thread: the only code that appends to the log file, one group commit per batch.
//!
//! It is an OS thread rather than a tokio task because `write` + `fsync` block for milliseconds, and a
//! dedicated thread keeps that off the runtime's workers without a `spawn_blocking` per batch.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};

use super::AuditError;
use super::record::{Entry, Outcome, Record, RecordKind, ZERO_HASH, now_rfc3339};
use super::state::{IntentState, Projection};
use super::stdout::StdoutSink;
use super::verify::Problem;

/// Most requests folded into one write + sync, so one batch's latency and memory stay bounded under load.
const MAX_BATCH: usize = 1024;
/// How long a batch of records that nobody waits for (authorization decisions) may wait for more before it
/// is written and synced. One sync per decision would cost more CPU than the decision; this bounds the
/// records a crash can lose to about this long. A waited-for request ends the wait at once.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

impl Request {
    /// True for records nobody waits for. The writer sleeps through a linger (one wake-up per batch,
    /// not a poll), so whoever queues anything else must [`std::thread::Thread::unpark`] it.
    fn is_unwaited(&self) -> bool {
        matches!(self, Self::Write { reply: None, .. })
    }
}

/// Where a record's line sits in the file.
#[derive(Clone, Copy, Debug)]
pub(super) struct Loc {
    offset: u64,
    len: u64,
}

/// What the log knows about its durable contents, rebuilt from the file at open.
///
/// Memory: open intents are kept whole (there are few: they are closed within one reconcile, or at
/// startup); closed intents cost their key plus a few dozen bytes each for the life of the process,
/// because an intent key must never be reused. Keep keys short (at most 256 bytes are accepted).
#[derive(Debug)]
pub(super) struct Index {
    pub(super) seq: u64,
    pub(super) hash: String,
    /// Length of the file up to the end of record `seq`.
    pub(super) len: u64,
    pub(super) open: BTreeMap<String, Record>,
    done: HashMap<String, Loc>,
}

impl Default for Index {
    fn default() -> Self {
        Self { seq: 0, hash: ZERO_HASH.to_owned(), len: 0, open: BTreeMap::new(), done: HashMap::new() }
    }
}

impl Index {
    /// Enforces one intent per key and one outcome per intent, for records read back at open.
    pub(super) fn check(&self, record: &Record) -> Result<(), Problem> {
        let Some(key) = &record.key else { return Ok(()) };
        match record.kind {
            RecordKind::Intent if self.open.contains_key(key) || self.done.contains_key(key) => {
                Err(Problem::DuplicateIntent { key: key.clone() })
            }
            RecordKind::Outcome if !self.open.contains_key(key) => {
                Err(Problem::OrphanOutcome { key: key.clone() })
            }
            _ => Ok(()),
        }
    }

    /// Takes in a record that is now durable, `line_len` bytes long including its newline.
    pub(super) fn apply(&mut self, record: &Record, line_len: u64) {
        let keyed = match (&record.key, record.kind) {
            (Some(_), RecordKind::Intent) => Keyed::Opened(Box::new(record.clone())),
            (Some(key), RecordKind::Outcome) => Keyed::Closed(key.clone()),
            _ => Keyed::No,
        };
        self.take(Durable { seq: record.seq, hash: record.hash.clone(), len: line_len, keyed });
    }

    fn take(&mut self, durable: Durable) {
        let loc = Loc { offset: self.len, len: durable.len };
        self.len += durable.len;
        self.seq = durable.seq;
        self.hash = durable.hash;
        match durable.keyed {
            Keyed::Opened(record) => {
                if let Some(key) = record.key.clone() {
                    self.open.insert(key, *record);
                }
            }
            Keyed::Closed(key) => {
                self.open.remove(&key);
                self.done.insert(key, loc);
            }
            Keyed::No => {}
        }
    }
}

/// What the index needs of a staged record once it is durable: position and hash, plus the intent
/// bookkeeping for keyed records (only intents are kept whole).
struct Durable {
    seq: u64,
    hash: String,
    len: u64,
    keyed: Keyed,
}

enum Keyed {
    No,
    Opened(Box<Record>),
    Closed(String),
}

/// State shared between the handles and the writer thread.
#[derive(Debug)]
pub(super) struct Shared {
    index: Mutex<Index>,
    /// Set on the first failed write or sync; never cleared (fail closed until restart).
    pub(super) failed: AtomicBool,
    /// Tests set this to make the next sync fail; nothing else writes it.
    pub(super) fail_next_sync: AtomicBool,
}

impl Shared {
    pub(super) fn new(index: Index) -> Self {
        Self {
            index: Mutex::new(index),
            failed: AtomicBool::new(false),
            fail_next_sync: AtomicBool::new(false),
        }
    }

    /// The index. A panic elsewhere while holding the lock cannot leave it half-updated (updates are
    /// single inserts), so a poisoned lock is still usable.
    pub(super) fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a caller asks the writer to record.
#[derive(Debug)]
pub(super) enum Op {
    Append(Entry),
    /// An entry the writer builds itself, so the caller's thread does not (see [`super::AuditLog::enqueue_with`]).
    Deferred(DeferredEntry),
    Intent {
        key: String,
        entry: Entry,
    },
    Outcome {
        key: String,
        outcome: Outcome,
        reason: String,
        details: BTreeMap<String, String>,
    },
}

/// Builds an entry on the writer thread.
pub(super) struct DeferredEntry(pub(super) Box<dyn FnOnce() -> Entry + Send>);

impl std::fmt::Debug for DeferredEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeferredEntry")
    }
}

/// A message to the writer thread.
#[derive(Debug)]
pub(super) enum Request {
    /// The op is boxed so queue slots stay small.
    Write {
        op: Box<Op>,
        /// None when nobody waits for the answer. Batches of only such records may linger (see
        /// [`LINGER`]) to share one sync.
        reply: Option<oneshot::Sender<Result<IntentState, AuditError>>>,
    },
    /// Finish the current batch, release the file (and its lock), then answer.
    Close { reply: oneshot::Sender<()> },
}

/// Records staged in the current batch, not yet durable, and what they do to intent keys.
struct Batch {
    seq: u64,
    prev: String,
    buf: Vec<u8>,
    written: Vec<Durable>,
    opened: HashMap<String, Record>,
    closed: HashMap<String, Record>,
    /// Copies of the records the projection wants, handed to it once the batch is durable.
    projected: Vec<Record>,
}

/// What is known about an intent key, counting staged records.
enum Known {
    Nothing,
    Open(Record),
    Done(Record),
    DoneAt(Loc),
}

/// The answer to one request, once the batch is durable.
enum Planned {
    Ready(Box<IntentState>),
    ReadBack(Loc),
}

impl Batch {
    /// `buf` is the previous batch's buffer, reused so a steady stream of batches does not grow a new one
    /// each time.
    fn new(index: &Index, mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self {
            seq: index.seq,
            prev: index.hash.clone(),
            buf,
            written: Vec::new(),
            opened: HashMap::new(),
            closed: HashMap::new(),
            projected: Vec::new(),
        }
    }

    fn stage(
        &mut self,
        projection: Option<&dyn Projection>,
        kind: RecordKind,
        key: Option<String>,
        entry: Entry,
    ) -> Result<Record, AuditError> {
        let seq = self.seq + 1;
        let (record, line) = Record::seal_line(&self.prev, seq, now_rfc3339(), kind, key, entry)
            .map_err(AuditError::Encode)?;
        self.buf.extend_from_slice(&line);
        self.seq = seq;
        self.prev.clone_from(&record.hash);
        let keyed = match &record.key {
            Some(key) if kind == RecordKind::Outcome => {
                self.opened.remove(key);
                self.closed.insert(key.clone(), record.clone());
                Keyed::Closed(key.clone())
            }
            Some(key) => {
                self.opened.insert(key.clone(), record.clone());
                Keyed::Opened(Box::new(record.clone()))
            }
            None => Keyed::No,
        };
        self.written.push(Durable { seq, hash: record.hash.clone(), len: line.len() as u64, keyed });
        if projection.is_some_and(|p| p.wants(&record.action)) {
            self.projected.push(record.clone());
        }
        Ok(record)
    }

    /// Closed wins over open: an intent opened before and closed in this batch is done.
    fn lookup(&self, index: &Index, key: &str) -> Known {
        if let Some(record) = self.closed.get(key) {
            Known::Done(record.clone())
        } else if let Some(loc) = index.done.get(key) {
            Known::DoneAt(*loc)
        } else if let Some(record) = self.opened.get(key).or_else(|| index.open.get(key)) {
            Known::Open(record.clone())
        } else {
            Known::Nothing
        }
    }

    fn append(&mut self, p: Option<&dyn Projection>, entry: Entry) -> Result<IntentState, AuditError> {
        if entry.outcome == Outcome::Pending {
            return Err(AuditError::InvalidOutcome("only intents may be pending"));
        }
        Ok(IntentState::Fresh(self.stage(p, RecordKind::Event, None, entry)?))
    }

    fn plan(&mut self, index: &Index, p: Option<&dyn Projection>, op: Op) -> Result<Planned, AuditError> {
        let state = match op {
            Op::Deferred(build) => self.append(p, (build.0)())?,
            Op::Append(entry) => self.append(p, entry)?,
            Op::Intent { key, mut entry } => match self.lookup(index, &key) {
                Known::Nothing => {
                    entry.outcome = Outcome::Pending;
                    IntentState::Fresh(self.stage(p, RecordKind::Intent, Some(key), entry)?)
                }
                Known::Open(record) => IntentState::Pending(record),
                Known::Done(record) => IntentState::Completed(record),
                Known::DoneAt(loc) => return Ok(Planned::ReadBack(loc)),
            },
            Op::Outcome { key, outcome, reason, details } => {
                if outcome == Outcome::Pending {
                    return Err(AuditError::InvalidOutcome("an outcome cannot be pending"));
                }
                match self.lookup(index, &key) {
                    Known::Nothing => return Err(AuditError::UnknownIntent { key }),
                    Known::Open(intent) => {
                        // Who acted on what comes from the intent, so the pair always agrees.
                        let entry = Entry {
                            actor: intent.actor,
                            action: intent.action,
                            object: intent.object,
                            outcome,
                            reason,
                            details,
                        };
                        IntentState::Fresh(self.stage(p, RecordKind::Outcome, Some(key), entry)?)
                    }
                    Known::Done(record) => IntentState::Completed(record),
                    Known::DoneAt(loc) => return Ok(Planned::ReadBack(loc)),
                }
            }
        };
        Ok(Planned::Ready(Box::new(state)))
    }
}

/// Answers a request, if anyone waits for it.
fn answer(
    reply: Option<oneshot::Sender<Result<IntentState, AuditError>>>,
    result: Result<IntentState, AuditError>,
) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

/// Writes `buf` and makes it durable.
pub(super) fn write_durably(file: &mut File, buf: &[u8]) -> Result<(), AuditError> {
    file.write_all(buf).map_err(AuditError::Write)?;
    file.sync_data().map_err(AuditError::Sync)
}

/// An io::Error is not Clone; every caller in a failed batch gets one with the same kind and message.
fn copy_error(error: &AuditError) -> AuditError {
    let copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
    match error {
        AuditError::Write(e) => AuditError::Write(copy(e)),
        AuditError::Sync(e) => AuditError::Sync(copy(e)),
        _ => AuditError::Failed,
    }
}

/// Reads an earlier record back and checks it is still what was written.
fn read_back(file: &File, loc: Loc) -> Result<Record, AuditError> {
    let tampered = |reason: &str| AuditError::Tampered { offset: loc.offset, reason: reason.to_owned() };
    let len = usize::try_from(loc.len).map_err(|_| tampered("record too large"))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, loc.offset)
        .map_err(|source| AuditError::ReadBack { offset: loc.offset, source })?;
    let line = buf.strip_suffix(b"\n").ok_or_else(|| tampered("no newline"))?;
    let record: Record = serde_json::from_slice(line).map_err(|_| tampered("not a record"))?;
    let canonical = serde_json::to_vec(&record).map_err(AuditError::Encode)?;
    let hash = record.compute_hash().map_err(AuditError::Encode)?;
    if canonical != line || hash != record.hash {
        return Err(tampered("hash mismatch"));
    }
    Ok(record)
}

/// The writer thread's state.
pub(super) struct Writer {
    file: File,
    shared: Arc<Shared>,
    stdout: Option<StdoutSink>,
    rx: mpsc::Receiver<Request>,
    /// The last batch's buffer, for the next one.
    spare: Vec<u8>,
    projection: Option<Arc<dyn Projection>>,
}

impl Writer {
    pub(super) fn new(
        file: File,
        shared: Arc<Shared>,
        stdout: Option<StdoutSink>,
        rx: mpsc::Receiver<Request>,
        projection: Option<Arc<dyn Projection>>,
    ) -> Self {
        Self { file, shared, stdout, rx, spare: Vec::new(), projection }
    }

    /// Serves batches until every handle is dropped or one asks to close.
    pub(super) fn run(mut self) {
        let mut close = None;
        while close.is_none() {
            let Some(first) = self.rx.blocking_recv() else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            if batch.iter().all(Request::is_unwaited) {
                self.linger(&mut batch);
            }
            close = self.process(batch);
        }
        // Dropping the receiver fails everything still queued with `Closed`; dropping the file releases
        // its lock, which the close reply promises.
        let Self { file, rx, stdout, .. } = self;
        drop(rx);
        drop(file);
        // Drains the stdout copy before answering, so a clean shutdown prints every record.
        drop(stdout);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// Waits up to [`LINGER`] for more records to share the batch's sync, asleep in between: unwaited
    /// senders do not wake the thread, anyone else does (see [`Request::is_unwaited`]), which ends the
    /// linger at once.
    fn linger(&mut self, batch: &mut Vec<Request>) {
        let deadline = std::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(request) => {
                    let waited = !request.is_unwaited();
                    batch.push(request);
                    if waited {
                        return;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return;
                    }
                    std::thread::park_timeout(deadline - now);
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Plans, commits and answers one batch. Returns the close reply if the batch asked to close.
    fn process(&mut self, batch: Vec<Request>) -> Option<oneshot::Sender<()>> {
        let failed = self.shared.failed.load(Ordering::Acquire);
        let mut close = None;
        let mut waiting = Vec::new();
        let mut staged = {
            let index = self.shared.index();
            let mut staged = Batch::new(&index, std::mem::take(&mut self.spare));
            for request in batch {
                match request {
                    Request::Close { reply } => close = close.or(Some(reply)),
                    Request::Write { reply, .. } if close.is_some() => answer(reply, Err(AuditError::Closed)),
                    Request::Write { reply, .. } if failed => answer(reply, Err(AuditError::Failed)),
                    Request::Write { op, reply } => {
                        match staged.plan(&index, self.projection.as_deref(), *op) {
                            Ok(planned) => {
                                if let Some(reply) = reply {
                                    waiting.push((reply, planned));
                                }
                            }
                            Err(error) => answer(reply, Err(error)),
                        }
                    }
                }
            }
            staged
        };
        if !staged.buf.is_empty() {
            if let Err(error) = self.commit(&staged.buf) {
                self.shared.failed.store(true, Ordering::Release);
                crate::metrics::global().audit_write_failure();
                tracing::error!(%error, "audit log write failed; refusing further appends until restart");
                for (reply, _) in waiting {
                    let _ = reply.send(Err(copy_error(&error)));
                }
                return close;
            }
            let lines = staged.buf.iter().filter(|b| **b == b'\n').count();
            let queued = i64::try_from(self.rx.len()).unwrap_or(i64::MAX);
            crate::metrics::global().audit_batch(lines as u64, queued);
            let mut index = self.shared.index();
            for durable in staged.written.drain(..) {
                index.take(durable);
            }
            drop(index);
            // Durable now, and nobody has been answered yet: the projection is never behind an `Ok`.
            if let Some(p) = &self.projection {
                for record in staged.projected.drain(..) {
                    p.apply(&record);
                }
            }
        }
        for (reply, planned) in waiting {
            let answer = match planned {
                Planned::Ready(state) => Ok(*state),
                Planned::ReadBack(loc) => read_back(&self.file, loc).map(IntentState::Completed),
            };
            // A caller that gave up waiting is fine: its record is durable either way.
            let _ = reply.send(answer);
        }
        if let Some(stdout) = self.stdout.as_ref().filter(|_| !staged.buf.is_empty()) {
            stdout.send(&staged.buf);
        }
        self.spare = staged.buf;
        close
    }

    fn commit(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        if self.shared.fail_next_sync.swap(false, Ordering::AcqRel) {
            // The write goes through as in a real sync failure, where the data may or may not be on disk.
            self.file.write_all(buf).map_err(AuditError::Write)?;
            return Err(AuditError::Sync(io::Error::other("injected sync failure")));
        }
        write_durably(&mut self.file, buf)
    }
}
