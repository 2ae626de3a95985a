//! The copy of audit records on stdout, for log shippers.
//!
//! The file is the record of truth; stdout is a convenience copy. It is written by its own thread through a
//! bounded queue so that a stalled reader (a full pipe, a paused container runtime) can never block the
//! writer thread and with it every grant the operator makes. If the queue is full, batches are dropped from
//! the stdout copy only, counted, and reported on stderr.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};

/// Batches that may wait for a slow stdout reader before the copy starts dropping.
const QUEUE: usize = 4096;

/// Handle to the stdout copier thread.
pub(super) struct StdoutSink {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl StdoutSink {
    /// Starts the copier thread.
    pub(super) fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let thread = thread::Builder::new().name("agentiam-audit-stdout".into()).spawn(move || {
            let stdout = io::stdout();
            for buf in rx {
                let mut out = stdout.lock();
                if let Err(error) = out.write_all(&buf).and_then(|()| out.flush()) {
                    tracing::warn!(%error, "failed to copy audit records to stdout; the audit log file has them");
                }
            }
        })?;
        Ok(Self { tx: Some(tx), dropped: Arc::new(AtomicU64::new(0)), thread: Some(thread) })
    }

    /// Queues a copy of durable records; never blocks.
    pub(super) fn send(&self, buf: &[u8]) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(buf.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Report the 1st, 2nd, 4th, 8th, ... drop: visible without flooding stderr.
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped_batches = n,
                        "stdout reader is too slow; audit records dropped from stdout only"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Batches dropped from the stdout copy so far.
    #[cfg(test)]
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for StdoutSink {
    /// Drains what is queued, so a clean shutdown loses nothing from the copy either.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_never_blocks_and_drop_drains() {
        let sink = StdoutSink::start().unwrap();
        for _ in 0..10 {
            sink.send(b"");
        }
        assert_eq!(sink.dropped(), 0);
        drop(sink);
    }
}
