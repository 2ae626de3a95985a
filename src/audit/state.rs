//! The two types the log's handle and its writer thread both speak: what an intent call finds
//! ([`IntentState`]), and the hook that sees every durable record ([`Projection`]). Here, so that neither
//! of those modules imports the other for them.

use super::record::Record;

/// State derived from the log and nothing else, such as the operator's own record of what it decided and
/// issued. It sees every record of the file in order when the log opens, and afterwards every new record
/// once it is durable and before any caller is told so: whoever hears `Ok` from [`AuditLog::intent`](super::AuditLog::intent) finds
/// the projection already updated. A crash therefore never leaves it ahead of, or behind, the file.
pub trait Projection: Send + Sync + 'static {
    /// Whether records of `action` change the projection. Called on the writer thread for every record, so
    /// it must be cheap; only records it wants are copied and passed to [`Projection::apply`].
    fn wants(&self, action: &str) -> bool;
    /// Takes in one durable record. Must not block or panic (it runs on the writer thread).
    fn apply(&self, record: &Record);
}

/// The result of [`AuditLog::intent`](super::AuditLog::intent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntentState {
    /// A new intent record was written and is durable: perform the side effect, then call
    /// [`AuditLog::outcome`](super::AuditLog::outcome).
    Fresh(Record),
    /// An intent with this key is already open, e.g. from before a crash; nothing was written. Find out
    /// whether the side effect happened before redoing it.
    Pending(Record),
    /// This key already has an outcome (the returned record); do not redo the side effect.
    Completed(Record),
}

impl IntentState {
    /// The record, whichever state.
    pub fn record(&self) -> &Record {
        match self {
            Self::Fresh(record) | Self::Pending(record) | Self::Completed(record) => record,
        }
    }

    /// The record, whichever state.
    pub fn into_record(self) -> Record {
        match self {
            Self::Fresh(record) | Self::Pending(record) | Self::Completed(record) => record,
        }
    }
}
