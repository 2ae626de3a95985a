//! `kubectl-agentiam`: the agentiam user CLI, usable as a kubectl plugin (`kubectl agentiam ...`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use agentiam::audit::Record;
use agentiam::cli::audit::{self, CheckpointSource, TraceFilter};
use agentiam::cli::token::{self, TokenCommand};
use clap::{Parser, Subcommand};

/// Inspect what agentiam records about AI agents.
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
    /// Print everything recorded about one agent, in order.
    Trace {
        /// The agent's name.
        agent: String,
        /// The agent's namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Only this incarnation (object UID) of the name.
        #[arg(long)]
        uid: Option<String>,
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

async fn run(cli: Cli) -> Result<String, String> {
    match cli.command {
        Command::Audit(AuditCommand::Verify { log, operator_namespace, public_key, offline }) => {
            let source = if offline {
                CheckpointSource::Offline
            } else {
                CheckpointSource::Cluster { namespace: operator_namespace, pinned_key: public_key }
            };
            audit::verify(&log.log, &source).await.map_err(|e| e.to_string())
        }
        Command::Audit(AuditCommand::Trace { agent, namespace, uid, output, log }) => {
            let filter = TraceFilter { namespace, name: agent, uid };
            let records = audit::trace_records(&log.log, &filter).map_err(|e| e.to_string())?;
            match output {
                Output::Text => Ok(audit::render_trace(&records)),
                Output::Json => records
                    .iter()
                    .map(Record::to_line)
                    .collect::<Result<String, _>>()
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
            token::run(command, std::io::stdin().lock()).await.map_err(|e| e.to_string())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl-agentiam: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("kubectl-agentiam: {message}");
            ExitCode::FAILURE
        }
    }
}
