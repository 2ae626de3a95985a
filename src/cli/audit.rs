//! `kubectl agentiam audit verify|trace`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kube::Client;

use crate::audit::{Checkpoint, Record, VerifyReport, public_key_from_pem, trace, verify_log};
use crate::controller::checkpoints::{CHECKPOINT_CONFIGMAP, read_published};

/// Where the checkpoint to verify against comes from.
#[derive(Debug, Clone)]
pub enum CheckpointSource {
    /// The ConfigMap the operator publishes, in the operator's namespace.
    Cluster {
        /// The operator's namespace.
        namespace: String,
        /// A PEM public key file to use instead of the one published beside the checkpoint.
        pinned_key: Option<PathBuf>,
    },
    /// No checkpoint: check the chain only (cutting the tail is then undetectable).
    Offline,
}

/// Why a command failed. Messages are for the terminal and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The log file could not be read.
    #[error("cannot read audit log {path}: {source}")]
    ReadLog {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The pinned public key could not be read or parsed.
    #[error("cannot use public key {path}: {message}")]
    PublicKey {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No kubeconfig or cluster.
    #[error("cannot reach the cluster to read the checkpoint: {0} (use --offline to check the chain alone)")]
    Client(#[source] kube::Error),
    /// Reading the checkpoint failed.
    #[error("{0}")]
    Checkpoint(String),
    /// No checkpoint is published.
    #[error(
        "no audit checkpoint published in namespace {0:?} (configmap {CHECKPOINT_CONFIGMAP}); use --offline to check the chain alone"
    )]
    NoCheckpoint(String),
    /// The log failed verification; the message names the first bad record.
    #[error("audit log FAILED verification: {0}")]
    Verify(String),
}

fn read_log(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::ReadLog { path: path.to_owned(), source })
}

async fn checkpoint(source: &CheckpointSource) -> Result<Option<(Checkpoint, Vec<u8>)>, CliError> {
    let CheckpointSource::Cluster { namespace, pinned_key } = source else { return Ok(None) };
    let client = Client::try_default().await.map_err(CliError::Client)?;
    let (checkpoint, published_key) = read_published(&client, namespace)
        .await
        .map_err(|e| CliError::Checkpoint(e.to_string()))?
        .ok_or_else(|| CliError::NoCheckpoint(namespace.clone()))?;
    let key = match pinned_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| CliError::PublicKey { path: path.clone(), message: e.to_string() })?;
            public_key_from_pem(&pem)
                .map_err(|e| CliError::PublicKey { path: path.clone(), message: e.to_string() })?
        }
        None => published_key,
    };
    Ok(Some((checkpoint, key)))
}

/// Verifies the log at `path` and returns the report as text.
pub async fn verify(path: &Path, source: &CheckpointSource) -> Result<String, CliError> {
    let bytes = read_log(path)?;
    let cp = checkpoint(source).await?;
    let (checkpoints, key) = match &cp {
        Some((c, k)) => (std::slice::from_ref(c), Some(k.as_slice())),
        None => (&[][..], None),
    };
    let report = verify_log(&bytes, checkpoints, key).map_err(|e| CliError::Verify(e.to_string()))?;
    Ok(render_report(path, &report, cp.as_ref().map(|(c, _)| c)))
}

fn render_report(path: &Path, r: &VerifyReport, cp: Option<&Checkpoint>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "audit log {} OK", path.display());
    let _ = writeln!(out, "  records:          {}", r.records);
    let _ = writeln!(out, "  head:             seq {} hash {}", r.head_seq, r.head_hash);
    match cp {
        Some(c) => {
            let _ =
                writeln!(out, "  checkpoint:       seq {} signed by key {} at {}", c.seq, c.key_id, c.time);
            let _ = writeln!(
                out,
                "  after checkpoint: {} record(s) protected by the chain only",
                r.unpinned_records
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  checkpoint:       none (offline): truncation of the tail cannot be detected"
            );
        }
    }
    let _ = writeln!(out, "  intents:          {} ({} still open)", r.intents, r.open_intents);
    let _ = writeln!(out, "  recoveries:       {}", r.recoveries);
    out
}

/// Which records `trace` prints.
#[derive(Debug, Clone)]
pub struct TraceFilter {
    /// The kind of the object (`Agent`, `AgentPolicy`, ...).
    pub kind: String,
    /// The agent's namespace.
    pub namespace: String,
    /// The agent's name.
    pub name: String,
    /// Only this object UID (one incarnation of the name).
    pub uid: Option<String>,
    /// Only the records that name this token ID: its issuance (intent and outcome, also when an
    /// interruption was recovered) and every decision made on it.
    pub jti: Option<String>,
}

impl TraceFilter {
    fn matches(&self, r: &Record) -> bool {
        r.object.kind == self.kind
            && r.object.namespace.as_deref() == Some(self.namespace.as_str())
            && r.object.name == self.name
            && self.uid.as_ref().is_none_or(|u| r.object.uid.as_ref() == Some(u))
            && self.jti.as_ref().is_none_or(|j| names_jti(r, j))
    }
}

/// The kind `kubectl agentiam audit trace --kind` names, in any case: `agent`, `AgentPolicy`, ...
///
/// # Errors
/// The kind is not an agentiam kind.
pub fn trace_kind(kind: &str) -> Result<String, String> {
    crate::webhook::validate::Kind::ALL
        .into_iter()
        .map(|k| k.kind())
        .find(|k| k.eq_ignore_ascii_case(kind))
        .map(str::to_owned)
        .ok_or_else(|| format!("--kind {kind:?} is not one of Agent, AgentPolicy, Delegation, Revocation"))
}

/// Whether the record names the token `jti` (issuance records list theirs comma-separated).
fn names_jti(r: &Record, jti: &str) -> bool {
    r.details.get(crate::registry::actions::DETAIL_JTI).is_some_and(|v| v.split(',').any(|j| j == jti))
}

/// The records about one agent, in log order.
pub fn trace_records(path: &Path, filter: &TraceFilter) -> Result<Vec<Record>, CliError> {
    let bytes = read_log(path)?;
    trace(&bytes, |r| filter.matches(r)).map_err(|e| CliError::Verify(e.to_string()))
}

/// Renders records as a table for humans.
pub fn render_trace(records: &[Record]) -> String {
    let mut out = String::from("SEQ\tTIME\tKIND\tACTOR\tACTION\tOUTCOME\tUID\tREASON\n");
    for r in records {
        let uid = r.object.uid.as_deref().unwrap_or("-");
        let short_uid = uid.get(..8).unwrap_or(uid);
        // Who changed what: an admission record's spec changes follow its reason.
        let changes = r.details.get("specChanges").map(|c| format!(" {c}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{}\t{}\t{:?}\t{}\t{}\t{:?}\t{}\t{}{}",
            r.seq, r.time, r.kind, r.actor, r.action, r.outcome, short_uid, r.reason, changes
        );
    }
    out
}
