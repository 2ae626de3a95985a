//! `kubectl-agentiam`: the agentiam user CLI, usable as a kubectl plugin (`kubectl agentiam ...`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use agentiam::audit::Record;
use agentiam::cli::approve;
use agentiam::cli::audit::{self, CheckpointSource, TraceFilter};
use agentiam::cli::can_i::{self, CanIArgs};
use agentiam::cli::delegate;
use agentiam::cli::discover;
use agentiam::cli::token::{self, TokenCommand};
use clap::{Parser, Subcommand};

/// Ask what agentiam would decide for AI agents, and inspect what it records about them.
#[derive(Parser, Debug)]
#[command(name = "kubectl agentiam", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work with the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Decode or verify a JWT-SVID (reads the token from stdin by default).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask whether an agent may perform an action, as the operator's policy engine would decide.
    ///
    /// Like `kubectl auth can-i`, for agents. Reads the Agent, the AgentPolicies and the Revocations of the
    /// namespace with your kubeconfig (so you need get on agents and list on agentpolicies and revocations)
    /// and evaluates the request with the operator's own engine: the agent must be Active and not revoked;
    /// default deny; any matching Deny rule wins; then an Allow that requires approval; then any Allow.
    ///
    /// Prints `yes`, `no` or `approval required`, then the decision, its reason, and the policy and rule that
    /// decided it. When Audit-mode policies would have decided more strictly, an `audit mode: would be ...`
    /// line says what and why. Rate limits are counted by the running operator, so they are not applied
    /// here; a note says so when the answer is not `no` and a rule governing the agent has a rate limit.
    #[command(after_help = can_i::EXAMPLES)]
    CanI(CanIArgs),
    /// Grant an agent scoped, time-bound rights on your behalf (creates a Delegation as you).
    ///
    /// You need the RBAC verb "delegate" on the Agent and create on delegations. With --parent, pass on a
    /// subset of a Delegation instead: every scope covered by the parent's, ending no later.
    #[command(after_help = DELEGATE_EXAMPLES)]
    Delegate(delegate::DelegateArgs),
    /// List agentiam objects.
    #[command(subcommand)]
    Get(GetCommand),
    /// List the approval requests waiting for a human (--all: answered and finished ones too).
    Approvals(approve::ListArgs),
    /// Approve one request: the action it names may go ahead (once, by default). You need the RBAC verb
    /// "approve" on it and must be one of its rule's approvers; never the agent itself.
    Approve(approve::AnswerArgs),
    /// Deny one request (--reason required).
    Deny(approve::AnswerArgs),
    /// List the agents discovery found running: shadow agents (no owner yet) and registered ones, with
    /// why each was detected and the static LLM keys it holds.
    Discover(discover::DiscoverArgs),
    /// Register a shadow agent: name its owner and purpose (you need patch on agents). It then goes through
    /// the normal lifecycle and is never cleaned up by discovery.
    #[command(
        after_help = "Example:\n  kubectl agentiam adopt deployment-llm-bot --owner User:olivia@example.com \\\n    --purpose 'triages support tickets'"
    )]
    Adopt(discover::AdoptArgs),
}

const DELEGATE_EXAMPLES: &str = "Examples:
  kubectl agentiam delegate support-triage --scope 'refund@pay:orders/**' --scope 'read@crm:contacts/*' \\
    --task 'weekend incident refunds' --ttl 8h
  kubectl agentiam delegate refunds-bot --parent support-triage-x7k2p --scope 'refund@pay:orders/eu/*' \\
    --task 'EU refunds' --ttl 2h
  kubectl agentiam get delegations --tree";

#[derive(Subcommand, Debug)]
enum GetCommand {
    /// The Delegations of a namespace; --tree shows each chain from its human down.
    Delegations(delegate::GetArgs),
}

impl Command {
    /// The exit status of a failed command. `can-i` exits 1 for "no", as `kubectl auth can-i` does, so its
    /// errors exit 2 (clap's status for bad arguments) to stay distinguishable.
    fn error_code(&self) -> u8 {
        match self {
            Self::CanI(_) => can_i::EXIT_ERROR,
            Self::Audit(_)
            | Self::Token(_)
            | Self::Delegate(_)
            | Self::Get(_)
            | Self::Approvals(_)
            | Self::Approve(_)
            | Self::Deny(_)
            | Self::Discover(_)
            | Self::Adopt(_) => 1,
        }
    }
}

#[derive(clap::Args, Debug)]
struct LogArg {
    /// The audit log file (the operator's --audit-log).
    #[arg(long, env = "AGENTIAM_AUDIT_LOG", default_value = "/var/lib/agentiam/audit/audit.jsonl")]
    log: PathBuf,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain, the sequence and the signed checkpoint; name the first bad record.
    Verify {
        #[command(flatten)]
        log: LogArg,
        /// Namespace where the operator publishes its checkpoint.
        #[arg(long, env = "AGENTIAM_NAMESPACE", default_value = "agentiam-system")]
        operator_namespace: String,
        /// Verify the checkpoint with this PEM public key instead of the one published beside it.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Do not read the checkpoint from the cluster; cutting the tail then goes unnoticed.
        #[arg(long)]
        offline: bool,
    },
    /// Print everything recorded about one agent (or, with --kind, one policy, delegation or revocation), in
    /// order: the operator's own records and who changed the object (admission records).
    Trace {
        /// The object's name.
        agent: String,
        /// The kind of the object: Agent, AgentPolicy, Delegation or Revocation.
        #[arg(long, default_value = "Agent")]
        kind: String,
        /// The agent's namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Only this incarnation (object UID) of the name.
        #[arg(long)]
        uid: Option<String>,
        /// Only the records naming this token ID (`jti`): its issuance and the decisions made on it.
        /// Token IDs are base64url and may start with '-', so the value is taken as given.
        #[arg(long, allow_hyphen_values = true)]
        jti: Option<String>,
        /// Output format: text or json (one record per line).
        #[arg(short, long, default_value = "text")]
        output: Output,
        #[command(flatten)]
        log: LogArg,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Output {
    Text,
    Json,
}

/// A command that succeeded: what it prints, with exit status 0.
fn done(stdout: String) -> (String, u8) {
    (stdout, 0)
}

/// Runs a command: what it prints on stdout and its exit status, or the message for stderr.
async fn run(command: Command) -> Result<(String, u8), String> {
    match command {
        Command::Audit(AuditCommand::Verify { log, operator_namespace, public_key, offline }) => {
            let source = if offline {
                CheckpointSource::Offline
            } else {
                CheckpointSource::Cluster { namespace: operator_namespace, pinned_key: public_key }
            };
            audit::verify(&log.log, &source).await.map(done).map_err(|e| e.to_string())
        }
        Command::Audit(AuditCommand::Trace { agent, kind, namespace, uid, jti, output, log }) => {
            let kind = audit::trace_kind(&kind).map_err(|e| e.to_string())?;
            let filter = TraceFilter { kind, namespace, name: agent, uid, jti };
            let records = audit::trace_records(&log.log, &filter).map_err(|e| e.to_string())?;
            match output {
                Output::Text => Ok(done(audit::render_trace(&records))),
                Output::Json => records
                    .iter()
                    .map(Record::to_line)
                    .collect::<Result<String, _>>()
                    .map(done)
                    .map_err(|e| format!("failed to render records: {e}")),
            }
        }
        Command::Token(command) => {
            // Hints go to stderr so stdout stays exactly the command's output.
            if let Some(warning) = command.history_warning() {
                eprintln!("kubectl-agentiam: {warning}");
            }
            if command.reads_stdin() && std::io::stdin().is_terminal() {
                eprintln!("kubectl-agentiam: reading the token from stdin (paste it, then Ctrl-D)");
            }
            token::run(command, std::io::stdin().lock()).await.map(done).map_err(|e| e.to_string())
        }
        Command::CanI(args) => {
            can_i::run(args).await.map(|o| (o.output, o.exit_code)).map_err(|e| e.to_string())
        }
        Command::Delegate(args) => delegate::delegate(args).await.map(done).map_err(|e| e.to_string()),
        Command::Get(GetCommand::Delegations(args)) => {
            delegate::get(args).await.map(done).map_err(|e| e.to_string())
        }
        Command::Approvals(args) => approve::list(args).await.map(done).map_err(|e| e.to_string()),
        Command::Discover(args) => discover::discover(args).await.map(done).map_err(|e| e.to_string()),
        Command::Adopt(args) => discover::adopt(args).await.map(done).map_err(|e| e.to_string()),
        Command::Approve(args) => approve::answer(args, agentiam::api::ApprovalVerdict::Approve)
            .await
            .map(done)
            .map_err(|e| e.to_string()),
        Command::Deny(args) => approve::answer(args, agentiam::api::ApprovalVerdict::Deny)
            .await
            .map(done)
            .map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let error_code = ExitCode::from(cli.command.error_code());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl-agentiam: failed to start the async runtime: {e}");
            return error_code;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok((text, code)) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::from(code)
        }
        Err(message) => {
            eprintln!("kubectl-agentiam: {message}");
            error_code
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn a_token_id_that_starts_with_a_hyphen_is_a_value_not_a_flag() {
        let cli = Cli::try_parse_from(["kubectl-agentiam", "audit", "trace", "bot", "--jti", "-gQx2"]);
        assert!(cli.is_ok(), "{:?}", cli.err());
    }
}
