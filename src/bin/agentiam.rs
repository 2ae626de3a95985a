//! `agentiam`: the operator, and the maintenance subcommands that ship with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentiam::controller::Config;
use agentiam::controller::keys::IssuerSettings;
use agentiam::crdgen;
use agentiam::identity::TrustDomain;
use agentiam::identity::keys::RotationPolicy;
use agentiam::operator::{self, Options};
use agentiam::registry::validate::parse_duration;
use agentiam::server::listener::Limits;
use agentiam::server::tls::{ApiTls, ApiTlsMode};
use agentiam::tls::secret::ServingSecret;
use agentiam::webhook::config::{WebhookClientConfig, WebhookSettings};
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the decision API allocates a few dozen small objects per
/// request on the runtime's workers and frees some of them on the audit writer thread, and glibc's
/// malloc spent a sixth of the operator's CPU on that under load (bench/authz.rs, perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// agentiam: identity and access management for autonomous AI agents.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text or json.
    #[arg(long, env = "AGENTIAM_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<RunArgs>),
    /// Write the CRD manifests generated from the Rust types.
    Crdgen {
        /// Directory to write agentiam.dev_<plural>.yaml files into; prints to stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// SPIFFE trust domain of agent IDs (spiffe://<trust-domain>/ns/<ns>/agent/<name>).
    #[arg(long, env = "AGENTIAM_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The operator's own namespace: holds the audit checkpoint ConfigMap and signing-key Secret.
    #[arg(long, env = "AGENTIAM_NAMESPACE", default_value = "agentiam-system")]
    namespace: String,
    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "AGENTIAM_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Audit log file (JSON lines, append-only, hash-chained).
    #[arg(long, env = "AGENTIAM_AUDIT_LOG", default_value = "/var/lib/agentiam/audit/audit.jsonl")]
    audit_log: PathBuf,
    /// Also stream audit records as JSON lines to stdout (operator logs go to stderr).
    #[arg(long, env = "AGENTIAM_AUDIT_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    audit_stdout: bool,
    /// How often the audit head is signed and published to the checkpoint ConfigMap.
    #[arg(long, env = "AGENTIAM_CHECKPOINT_INTERVAL", default_value = "30s")]
    checkpoint_interval: String,
    /// How old the operator's view of Revocations may get while its watch fails (the API server is
    /// unreachable) before the decision API, the token endpoint and introspection refuse everything: a
    /// Revocation made meanwhile could not be seen. "0s" turns the bound off.
    #[arg(long, env = "AGENTIAM_MAX_REVOCATION_STALENESS", default_value = "30s")]
    max_revocation_staleness: String,
    /// Find workloads that look like AI agents and record the ones no Agent covers as shadow agents, and
    /// (with the webhook) judge new ones in namespaces labelled agentiam.dev/workload-admission
    /// (docs/discovery.md).
    #[arg(long, env = "AGENTIAM_DISCOVERY", default_value_t = true, action = clap::ArgAction::Set)]
    discovery: bool,
    /// With discovery: ask each running, Ready pod for an A2A agent card (GET /.well-known/agent-card.json,
    /// then agent.json) on the TCP ports it declares, at its pod IP; a card is evidence of an agent.
    #[arg(long, env = "AGENTIAM_DISCOVERY_AGENT_CARDS", default_value_t = true, action = clap::ArgAction::Set)]
    discovery_agent_cards: bool,
    /// Learn each agent's behaviour from its decisions and act on anomalies (docs/monitoring.md).
    #[arg(long, env = "AGENTIAM_ANOMALY_DETECTION", default_value_t = true, action = clap::ArgAction::Set)]
    anomaly_detection: bool,
    /// The monitor's bucket: decisions are counted per bucket of this length.
    #[arg(long, env = "AGENTIAM_ANOMALY_BUCKET", default_value = "60s")]
    anomaly_bucket: String,
    /// Buckets learned per agent before anything is judged.
    #[arg(long, env = "AGENTIAM_ANOMALY_WARMUP", default_value_t = 20)]
    anomaly_warmup: u32,
    /// Anomaly score (standard deviations above the baseline) from which an alert is raised.
    #[arg(long, env = "AGENTIAM_ANOMALY_ALERT_SCORE", default_value_t = 4.0)]
    anomaly_alert_score: f64,
    /// Anomaly score from which the agent is suspended by a Revocation; 0 never suspends.
    #[arg(long, env = "AGENTIAM_ANOMALY_SUSPEND_SCORE", default_value_t = 8.0)]
    anomaly_suspend_score: f64,
    /// Address of the HTTP server: /healthz, /readyz, the issuer documents (/.well-known/openid-configuration,
    /// /keys, /v1/bundle), the decision API (/v1/authorize, /v1/ext_authz) and the token service
    /// (/v1/oauth/*). HTTPS with a certificate the operator manages unless --http-tls-cert-file or
    /// --http-plaintext says otherwise.
    #[arg(long, env = "AGENTIAM_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Serve the HTTP server as plain HTTP: for local development, or behind a proxy that terminates TLS.
    /// The issuer URL may then still be https:// (the proxy's).
    #[arg(long, env = "AGENTIAM_HTTP_PLAINTEXT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    http_plaintext: bool,
    /// A PEM certificate chain (leaf first) for the HTTP server, instead of the operator's own; re-read
    /// when it changes. Needs --http-tls-key-file.
    #[arg(long, env = "AGENTIAM_HTTP_TLS_CERT_FILE")]
    http_tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --http-tls-cert-file.
    #[arg(long, env = "AGENTIAM_HTTP_TLS_KEY_FILE")]
    http_tls_key_file: Option<PathBuf>,
    /// How often the HTTP server's certificate is checked: renewal of the operator's own, or changed
    /// --http-tls-cert-file / --http-tls-key-file.
    #[arg(long, env = "AGENTIAM_HTTP_TLS_CHECK_INTERVAL", default_value = "5m")]
    http_tls_check_interval: String,
    /// Another DNS name or IP address for the operator-managed HTTP certificate, besides the issuer URL's
    /// host (repeatable; the chart adds the Service's names).
    #[arg(long = "http-tls-san", env = "AGENTIAM_HTTP_TLS_SANS", value_delimiter = ',')]
    http_tls_sans: Vec<String>,
    /// Address of the admin server: /metrics (Prometheus text format), /healthz and /readyz, apart from the
    /// decision API so that scrapes and probes never share its port or its threads.
    #[arg(long, env = "AGENTIAM_ADMIN_ADDR", default_value = "0.0.0.0:8081")]
    admin_addr: SocketAddr,
    /// Threads of the HTTP server's own runtime (decision API, issuer documents, probes), apart from the
    /// controllers' runtime. Default: half the available CPUs, at least 1.
    #[arg(long, env = "AGENTIAM_API_THREADS")]
    api_threads: Option<std::num::NonZeroUsize>,
    /// The issuer URL: the `iss` claim of every JWT-SVID and the base of the OIDC discovery document. Defaults
    /// to the in-cluster Service `https://agentiam.<namespace>.svc`.
    #[arg(long, env = "AGENTIAM_ISSUER_URL")]
    issuer_url: Option<String>,
    /// How long a signing key signs before the next one (published one period earlier) takes over.
    #[arg(long, env = "AGENTIAM_KEY_ROTATION_PERIOD", default_value = "24h")]
    key_rotation_period: String,
    /// Serve the pod admission webhook that mounts credentials into agent pods.
    #[arg(long, env = "AGENTIAM_WEBHOOK", default_value_t = true, action = clap::ArgAction::Set)]
    webhook: bool,
    /// Where the webhook's TLS server listens.
    #[arg(long, env = "AGENTIAM_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    webhook_listen: SocketAddr,
    /// How the API server reaches the webhook server when the operator runs outside the cluster: a base URL
    /// such as `https://127.0.0.1:9443`, to which each webhook adds its path (`/mutate-pods`,
    /// `/validate/agents`, ...). Without it, the in-cluster Service --webhook-service is used.
    #[arg(long, env = "AGENTIAM_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// The Service (in the operator namespace, port 443) in front of the webhook, for in-cluster runs.
    #[arg(long, env = "AGENTIAM_WEBHOOK_SERVICE", default_value = "agentiam-webhook")]
    webhook_service: String,
    /// Every listener (HTTP API, webhook): a new connection must send its first request's headers within
    /// this long, and a later request's headers must be complete this long after its first byte.
    #[arg(long, env = "AGENTIAM_LISTENER_HEADER_READ_TIMEOUT", default_value = "10s")]
    listener_header_read_timeout: String,
    /// Every listener: how long a kept-alive connection may wait for its next request. Keep it longer than
    /// the clients' own idle timeout (90s for Go clients such as the API server), so they close first.
    #[arg(long, env = "AGENTIAM_LISTENER_IDLE_TIMEOUT", default_value = "120s")]
    listener_idle_timeout: String,
    /// Every listener: time from a request's headers to its response (body included); slower ones get 408.
    #[arg(long, env = "AGENTIAM_LISTENER_REQUEST_TIMEOUT", default_value = "30s")]
    listener_request_timeout: String,
    /// Every TLS listener (the webhook): time to complete the TLS handshake.
    #[arg(long, env = "AGENTIAM_LISTENER_TLS_HANDSHAKE_TIMEOUT", default_value = "10s")]
    listener_tls_handshake_timeout: String,
    /// Connections the HTTP server serves at once; at the bound, new ones wait in the backlog.
    #[arg(long, env = "AGENTIAM_HTTP_MAX_CONNECTIONS", default_value_t = agentiam::server::listener::DEFAULT_HTTP_MAX_CONNECTIONS)]
    http_max_connections: std::num::NonZeroUsize,
    /// Connections the webhook serves at once; at the bound, new ones wait in the backlog.
    #[arg(long, env = "AGENTIAM_WEBHOOK_MAX_CONNECTIONS", default_value_t = agentiam::server::listener::DEFAULT_WEBHOOK_MAX_CONNECTIONS)]
    webhook_max_connections: std::num::NonZeroUsize,
    /// Testing only: pause this long between writing an audit intent and acting on it.
    #[arg(long, env = "AGENTIAM_FAILPOINT_DELAY_AFTER_INTENT", default_value = "0s", hide = true)]
    failpoint_delay_after_intent: String,
    /// Testing only: pause this long between acting and writing the audit outcome.
    #[arg(long, env = "AGENTIAM_FAILPOINT_DELAY_AFTER_EFFECT", default_value = "0s", hide = true)]
    failpoint_delay_after_effect: String,
    /// Testing only: pause token exchanges this long after their intent is durable, before the handoff's
    /// Delegation is created.
    #[arg(long, env = "AGENTIAM_FAILPOINT_EXCHANGE_DELAY", default_value = "0s", hide = true)]
    failpoint_exchange_delay: String,
    /// Testing only: start the pod admission webhook this much later.
    #[arg(long, env = "AGENTIAM_FAILPOINT_WEBHOOK_START_DELAY", default_value = "0s", hide = true)]
    failpoint_webhook_start_delay: String,
    /// Testing only: `<task name>=<duration>` makes that supervised task fail after the duration.
    #[arg(long, env = "AGENTIAM_FAILPOINT_FAIL_TASK", hide = true)]
    failpoint_fail_task: Option<String>,
    /// Where pending approval requests are announced besides Events: a JSON POST (retried) to this
    /// http(s) URL, e.g. a chat incoming webhook. Unset: Events only.
    #[arg(long, env = "AGENTIAM_APPROVAL_NOTIFY_URL")]
    approval_notify_url: Option<String>,
    /// Testing only: evaluate policy time windows at this RFC 3339 instant instead of now.
    #[arg(long, env = "AGENTIAM_FAILPOINT_AUTHZ_TIME", hide = true)]
    failpoint_authz_time: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn"));
    // Colours only on a terminal: `make run` tees stderr into a file, and log shippers read a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn duration_arg(name: &str, value: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|e| format!("--{name}: {e}"))
}

fn options(args: RunArgs) -> Result<Options, String> {
    let trust_domain = TrustDomain::parse(&args.trust_domain).map_err(|e| format!("--trust-domain: {e}"))?;
    let checkpoint_interval = duration_arg("checkpoint-interval", &args.checkpoint_interval)?;
    let max_revocation_staleness = duration_arg("max-revocation-staleness", &args.max_revocation_staleness)?;
    let anomaly_bucket = duration_arg("anomaly-bucket", &args.anomaly_bucket)?;
    if anomaly_bucket < Duration::from_secs(1) {
        return Err("--anomaly-bucket must be at least 1s".into());
    }
    let score = |name: &str, v: f64, zero_ok: bool| {
        if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) {
            Ok(v)
        } else {
            Err(format!("--{name} must be a positive number{}", if zero_ok { " (or 0)" } else { "" }))
        }
    };
    let monitor = agentiam::monitor::baseline::Settings {
        bucket: anomaly_bucket,
        warmup: args.anomaly_warmup,
        alert: score("anomaly-alert-score", args.anomaly_alert_score, false)?,
        suspend: score("anomaly-suspend-score", args.anomaly_suspend_score, true)?,
        ..agentiam::monitor::baseline::Settings::default()
    };
    if checkpoint_interval < Duration::from_millis(100) {
        return Err("--checkpoint-interval must be at least 100ms".into());
    }
    let authz_fixed_time = match &args.failpoint_authz_time {
        None => None,
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| format!("--failpoint-authz-time {t:?} is not an RFC 3339 time: {e}"))?,
        ),
    };
    let failpoint_fail_task = match &args.failpoint_fail_task {
        None => None,
        Some(v) => {
            let (name, after) =
                v.rsplit_once('=').ok_or("--failpoint-fail-task must be <task name>=<duration>")?;
            Some((name.to_owned(), duration_arg("failpoint-fail-task", after)?))
        }
    };
    let failpoint_delay_after_intent =
        duration_arg("failpoint-delay-after-intent", &args.failpoint_delay_after_intent)?;
    let failpoint_delay_after_effect =
        duration_arg("failpoint-delay-after-effect", &args.failpoint_delay_after_effect)?;
    let failpoint_exchange_delay = duration_arg("failpoint-exchange-delay", &args.failpoint_exchange_delay)?;
    let webhook_start_delay =
        duration_arg("failpoint-webhook-start-delay", &args.failpoint_webhook_start_delay)?;
    let rotation_period = duration_arg("key-rotation-period", &args.key_rotation_period)?;
    let policy = RotationPolicy { rotation_period, ..RotationPolicy::default() };
    policy.validate().map_err(|e| format!("--key-rotation-period: {e}"))?;
    let issuer_url =
        args.issuer_url.clone().unwrap_or_else(|| format!("https://agentiam.{}.svc", args.namespace));
    if !(issuer_url.starts_with("https://") || issuer_url.starts_with("http://")) || issuer_url.ends_with('/')
    {
        return Err("--issuer-url must be an http(s) URL without a trailing slash".into());
    }
    let http_tls = http_tls(&args, &issuer_url)?;
    let limits = |max_connections| -> Result<Limits, String> {
        let limits = Limits {
            header_read_timeout: duration_arg(
                "listener-header-read-timeout",
                &args.listener_header_read_timeout,
            )?,
            idle_timeout: duration_arg("listener-idle-timeout", &args.listener_idle_timeout)?,
            request_timeout: duration_arg("listener-request-timeout", &args.listener_request_timeout)?,
            tls_handshake_timeout: duration_arg(
                "listener-tls-handshake-timeout",
                &args.listener_tls_handshake_timeout,
            )?,
            ..Limits::with_max_connections(max_connections)
        };
        limits.validate().map_err(|e| format!("--listener-*-timeout: {e}"))?;
        Ok(limits)
    };
    let http_limits = limits(args.http_max_connections)?;
    let webhook_limits = limits(args.webhook_max_connections)?;
    // Before webhooks had one path each, the flag named the pod webhook's URL; that form still works.
    let webhook_base = args.webhook_url.as_deref().map(|u| {
        let base = u.strip_suffix("/mutate-pods").unwrap_or(u).trim_end_matches('/');
        if base.len() != u.len() {
            tracing::warn!(
                url = u,
                base,
                "--webhook-url is a base URL now; the webhooks add their own paths"
            );
        }
        base.to_owned()
    });
    if let Some(base) = &webhook_base
        && base.parse::<http::Uri>().ok().is_none_or(|uri| !matches!(uri.path(), "" | "/"))
    {
        return Err(format!(
            "--webhook-url {base:?} must be a base URL without a path, e.g. https://127.0.0.1:9443"
        ));
    }
    let webhook = args.webhook.then(|| {
        let client_config = match &webhook_base {
            Some(url) => WebhookClientConfig::Url(url.clone()),
            None => WebhookClientConfig::Service { name: args.webhook_service.clone(), port: 443 },
        };
        let mut settings = WebhookSettings::new(
            args.namespace.clone(),
            args.watch_namespace.clone(),
            client_config,
            args.webhook_listen,
        );
        settings.start_delay = webhook_start_delay;
        settings.limits = webhook_limits;
        settings
    });
    if let Some(url) = &args.webhook_url
        && !url.starts_with("https://")
    {
        return Err(
            "--webhook-url must be an https:// URL (the API server only calls webhooks over TLS)".into()
        );
    }
    let approval_notifier = match args.approval_notify_url.as_deref().filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => Some(
            agentiam::server::approvals::Notifier::new(url)
                .map_err(|e| format!("--approval-notify-url: {e}"))?,
        ),
    };
    Ok(Options {
        config: Config {
            trust_domain: trust_domain.clone(),
            operator_namespace: args.namespace,
            watch_namespace: args.watch_namespace,
            checkpoint_interval,
            failpoint_delay_after_intent,
            failpoint_delay_after_effect,
        },
        audit_log: args.audit_log,
        audit_stdout: args.audit_stdout,
        http_addr: args.http_addr,
        admin_addr: args.admin_addr,
        api_threads: args.api_threads.unwrap_or_else(agentiam::server::default_api_threads),
        http_limits,
        http_tls,
        issuer: IssuerSettings { issuer_url, trust_domain: trust_domain.clone(), policy },
        webhook,
        authz_fixed_time,
        failpoint_fail_task,
        failpoint_exchange_delay,
        approval_notifier,
        max_revocation_staleness: (!max_revocation_staleness.is_zero()).then_some(max_revocation_staleness),
        monitor: args.anomaly_detection.then_some(monitor),
        discovery: args.discovery,
        discovery_agent_cards: args.discovery_agent_cards,
    })
}

/// The HTTP server's TLS mode from the flags. An http:// issuer URL needs --http-plaintext: the
/// discovery document would otherwise advertise URLs nobody can reach.
fn http_tls(args: &RunArgs, issuer_url: &str) -> Result<ApiTls, String> {
    use agentiam::tls::certs::{RenewalPolicy, San};
    let check_interval = duration_arg("http-tls-check-interval", &args.http_tls_check_interval)?;
    if check_interval < Duration::from_secs(1) {
        return Err("--http-tls-check-interval must be at least 1s".into());
    }
    let files = (args.http_tls_cert_file.clone(), args.http_tls_key_file.clone());
    if args.http_plaintext {
        if files.0.is_some() || files.1.is_some() || !args.http_tls_sans.is_empty() {
            return Err("--http-plaintext serves no certificate: drop --http-tls-cert-file, --http-tls-key-file and --http-tls-san".into());
        }
        return Ok(ApiTls { mode: ApiTlsMode::Plaintext, check_interval });
    }
    if issuer_url.starts_with("http://") {
        return Err(format!(
            "--issuer-url {issuer_url} is plain http while the HTTP server serves TLS: use an https:// URL, or \
             --http-plaintext for local development"
        ));
    }
    let mode = match files {
        (Some(cert), Some(key)) => {
            if !args.http_tls_sans.is_empty() {
                return Err("--http-tls-san names the operator's own certificate; a supplied certificate names its own hosts".into());
            }
            ApiTlsMode::Files { cert, key }
        }
        (None, None) => {
            let host = issuer_url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned))
                .ok_or_else(|| format!("--issuer-url {issuer_url} has no host"))?;
            let mut sans = vec![San::parse(&host)];
            for extra in &args.http_tls_sans {
                let san = San::parse(extra.trim());
                if extra.trim().is_empty() {
                    return Err("--http-tls-san must not be empty".into());
                }
                if !sans.contains(&san) {
                    sans.push(san);
                }
            }
            ApiTlsMode::Managed(ServingSecret {
                listener: "http",
                namespace: args.namespace.clone(),
                name: agentiam::names::API_TLS_SECRET.to_owned(),
                sans,
                renewal: RenewalPolicy::default(),
            })
        }
        _ => return Err("--http-tls-cert-file and --http-tls-key-file go together".into()),
    };
    Ok(ApiTls { mode, check_interval })
}

fn crdgen(out: Option<PathBuf>) -> Result<(), String> {
    for crd in crdgen::all() {
        let yaml =
            crdgen::render(&crd).map_err(|e| format!("failed to render {}: {e}", crdgen::file_name(&crd)))?;
        match &out {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
                let path = dir.join(crdgen::file_name(&crd));
                std::fs::write(&path, yaml)
                    .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
            }
            None => {
                use std::io::Write;
                std::io::stdout()
                    .write_all(yaml.as_bytes())
                    .map_err(|e| format!("failed to write stdout: {e}"))?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Crdgen { out } => crdgen(out),
        Command::Run(args) => options(*args).and_then(|opts| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("failed to start the async runtime: {e}"))?;
            runtime.block_on(operator::run(opts)).map_err(|e| e.to_string())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("agentiam: {message}");
            ExitCode::FAILURE
        }
    }
}
