//! `kubectl agentiam can-i`: what the operator's policy engine would decide for one agent's request.
//!
//! Like `kubectl auth can-i`, but for agents: it reads the Agent, the AgentPolicies and the Revocations of one
//! namespace with the user's kubeconfig, builds the same [`Snapshot`] the operator decides from, and asks it
//! with [`decide_for`]. Only reading and printing touch the outside world; [`parse_context_pair`],
//! [`answer`] and [`Answer::render`] are pure.
//!
//! The operator's rate-limit counters live in its memory, so this command cannot apply rate limits. It says
//! so when a governing rule has a rate limit and the answer is not already a Deny (the engine does not tell
//! which rules matched, so the note may also appear when the limited rule is not the one that matched).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::{Map, Number, Value, json};

use crate::api::{Agent, AgentPolicy, Revocation};
use crate::authz::resource::{self, ResourceError};
use crate::authz::{Builder, Clock, Decision, RateLimiter, Request, Snapshot, Verdict, decide_for};

/// Exit status when the action is allowed.
pub const EXIT_ALLOWED: u8 = 0;
/// Exit status when the action is denied or needs approval (as `kubectl auth can-i` exits on "no").
pub const EXIT_DENIED: u8 = 1;
/// Exit status when the question could not be answered (also clap's status for bad arguments).
pub const EXIT_ERROR: u8 = 2;

/// Printed when a governing rule has a rate limit that could turn the answer into a Deny.
pub const RATE_LIMIT_NOTE: &str = "note: rate limits are counted by the operator and not applied here";

/// Usage examples for `--help`.
pub const EXAMPLES: &str = "\
Examples:
  # May support-triage read a CRM contact?
  kubectl agentiam can-i support-triage read crm:contacts/42 -n support

  # An MCP tool call with request attributes, as of Saturday noon UTC
  kubectl agentiam can-i billing-bot tools.call mcp:payments/refunds --tool create_refund \\
      --context amount=250 --context customer.region=eu --at 2026-12-05T12:00:00Z

  # Machine-readable, for scripts
  kubectl agentiam can-i support-triage delete crm:contacts/42 -o json

Exit status: 0 yes, 1 no or approval required, 2 the question could not be answered.";

/// Arguments of `kubectl agentiam can-i`.
#[derive(clap::Args, Debug, Clone)]
pub struct CanIArgs {
    /// The Agent's name.
    pub agent: String,
    /// The action (verb) the agent would perform, as AgentPolicy rules name it ("read", "tools.call").
    pub action: String,
    /// The resource it would act on, as rules' resource patterns match it ("crm:contacts/42").
    pub resource: String,
    /// The MCP tool the request calls. Rules that list tools never match a request without one.
    #[arg(long, value_name = "TOOL")]
    pub tool: Option<String>,
    /// A request attribute for attribute conditions; repeat for more. Values that are finite numbers become
    /// numbers, `true`/`false` booleans, anything else a string. A dotted key ("customer.region") is passed
    /// as one flat key, which conditions look up before the nested path. The last of a repeated key wins.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_context_pair)]
    pub context: Vec<(String, Value)>,
    /// The namespace of the Agent and of the policies that govern it. Default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Decide as of this time (RFC 3339, with an offset: "2026-11-30T10:00:00Z"), for time-window
    /// conditions. The agent's phase, trust score and revocations are always the current ones.
    #[arg(long, value_name = "RFC3339", value_parser = parse_at)]
    pub at: Option<Timestamp>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// How the answer is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `yes`/`no`/`approval required`, then the decision and what decided it, one fact a line.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// Why the question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum CanIError {
    /// No kubeconfig or cluster.
    #[error("cannot reach the cluster: {0}")]
    Client(#[source] kube::Error),
    /// Reading objects from the API server failed (forbidden, unreachable, CRDs not installed, ...).
    #[error("failed to read {what} in namespace {namespace}: {source}")]
    Read {
        /// The kind, plural when listed.
        what: &'static str,
        /// The namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The agent does not exist.
    #[error("agent {namespace}/{name} not found")]
    AgentNotFound {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
    /// The resource is outside the canonical grammar (the operator would answer 400).
    #[error("resource {resource:?} {source}")]
    Resource {
        /// The resource as given.
        resource: String,
        /// Why it is refused.
        #[source]
        source: ResourceError,
    },
    /// The answer could not be serialized.
    #[error("failed to render the answer as JSON: {0}")]
    Render(#[source] serde_json::Error),
}

/// What the command prints on stdout and the status it exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The rendered answer.
    pub output: String,
    /// [`EXIT_ALLOWED`] or [`EXIT_DENIED`].
    pub exit_code: u8,
}

/// Parses one `--context KEY=VALUE` (see [`CanIArgs::context`] for how values are typed).
pub fn parse_context_pair(pair: &str) -> Result<(String, Value), String> {
    let Some((key, value)) = pair.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {pair:?}"));
    };
    if key.trim().is_empty() {
        return Err(format!("empty key in {pair:?}; expected KEY=VALUE"));
    }
    Ok((key.to_owned(), context_value(value)))
}

fn context_value(value: &str) -> Value {
    match value {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    // Integers stay integers so JSON output shows what was typed; other finite numbers become floats.
    if let Ok(i) = value.parse::<i64>() {
        return Value::Number(i.into());
    }
    match value.parse::<f64>().ok().and_then(Number::from_f64) {
        Some(n) => Value::Number(n),
        None => Value::String(value.to_owned()),
    }
}

/// The request context from `--context` pairs; a later pair replaces an earlier one with the same key.
pub fn context_map(pairs: &[(String, Value)]) -> Map<String, Value> {
    pairs.iter().cloned().collect()
}

fn parse_at(s: &str) -> Result<Timestamp, String> {
    s.parse()
        .map_err(|e| format!("expected an RFC 3339 time with an offset, like 2026-11-30T10:00:00Z ({e})"))
}

/// A decision with what it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The agent, as `namespace/name`.
    pub agent: String,
    /// The resource decided about, in canonical form (`crm:contacts/%34%32` is `crm:contacts/42`).
    pub resource: String,
    /// The time the decision was made for.
    pub at: Timestamp,
    /// What the policy engine decided.
    pub decision: Decision,
    /// Whether a governing rule has a rate limit and the answer is not a Deny: with the operator's counters,
    /// the answer might have been a Deny.
    pub rate_limits_not_applied: bool,
}

/// Decides `request` for the agent `namespace/name` in `snapshot` as of `at`, as the operator would with
/// fresh rate-limit counters, on its resource canonicalised (or refused) by the same grammar first. The phase and trust score are what the agent's status reports: the
/// operator's own records (its audit log) are not readable here, and it decides from those, so an answer
/// for a status someone else wrote can differ from the operator's. Credentials are not looked at (no token
/// is involved): this asks what the policies allow the agent, not whether a given token is still current.
pub fn answer(
    snapshot: &Snapshot,
    namespace: &str,
    name: &str,
    request: &Request<'_>,
    at: Timestamp,
) -> Result<Answer, CanIError> {
    let canonical = resource::canonical(request.resource)
        .map_err(|source| CanIError::Resource { resource: request.resource.to_owned(), source })?;
    let request = &Request { resource: &canonical, ..*request };
    let agent = snapshot
        .agent_by_name(namespace, name)
        .ok_or_else(|| CanIError::AgentNotFound { namespace: namespace.to_owned(), name: name.to_owned() })?;
    let clock = Clock { now: at, instant: Instant::now() };
    let decision = decide_for(agent, agent.reported, request, clock, &RateLimiter::default());
    // A rate limit only ever turns a non-Deny into a Deny, and the audit-mode "would" is only reported when
    // the verdict is not already Deny: after a Deny no counter can change anything.
    let rate_limits_not_applied = decision.verdict != Verdict::Deny && agent.rules.has_rate_limits();
    let resource = canonical.into_owned();
    Ok(Answer { agent: format!("{namespace}/{name}"), resource, at, decision, rate_limits_not_applied })
}

impl Answer {
    /// 0 for Allow, 1 for Deny or RequireApproval.
    pub fn exit_code(&self) -> u8 {
        match self.decision.verdict {
            Verdict::Allow => EXIT_ALLOWED,
            Verdict::RequireApproval | Verdict::Deny => EXIT_DENIED,
        }
    }

    /// The answer in `format`, ending with a newline.
    pub fn render(&self, format: Format) -> Result<String, CanIError> {
        match format {
            Format::Text => Ok(self.to_text()),
            Format::Json => {
                let mut out = serde_json::to_string_pretty(&self.to_json()).map_err(CanIError::Render)?;
                out.push('\n');
                Ok(out)
            }
        }
    }

    /// The text form: the `kubectl auth can-i` style first line, then one fact a line.
    pub fn to_text(&self) -> String {
        let d = &self.decision;
        let headline = match d.verdict {
            Verdict::Allow => "yes",
            Verdict::Deny => "no",
            Verdict::RequireApproval => "approval required",
        };
        let mut out = format!("{headline}\ndecision: {}\nreason: {}\n", d.verdict, d.reason);
        if let Some(policy) = &d.policy {
            let _ = writeln!(out, "policy: {policy}");
        }
        if let Some(rule) = &d.rule {
            let _ = writeln!(out, "rule: {rule}");
        }
        if let Some(would) = &d.would {
            let _ = writeln!(out, "audit mode: would be {} ({})", would.verdict, provenance(would));
        }
        if self.rate_limits_not_applied {
            let _ = writeln!(out, "{RATE_LIMIT_NOTE}");
        }
        out
    }

    /// The JSON form: `decision`, `reason`, `policy`, `rule`, `would` (the same four, or null), `agent`,
    /// `resource` (canonical), `at`.
    pub fn to_json(&self) -> Value {
        let mut object = decision_json(&self.decision);
        object.insert(
            "would".into(),
            self.decision.would.as_deref().map_or(Value::Null, |w| decision_json(w).into()),
        );
        object.insert("agent".into(), self.agent.clone().into());
        object.insert("resource".into(), self.resource.clone().into());
        object.insert("at".into(), self.at.to_string().into());
        object.into()
    }
}

/// "policy X, rule Y: reason", leaving out what is not set.
fn provenance(d: &Decision) -> String {
    let mut out = String::new();
    if let Some(policy) = &d.policy {
        let _ = write!(out, "policy {policy}");
    }
    if let Some(rule) = &d.rule {
        let _ = write!(out, "{}rule {rule}", if out.is_empty() { "" } else { ", " });
    }
    if out.is_empty() { d.reason.to_string() } else { format!("{out}: {}", d.reason) }
}

fn decision_json(d: &Decision) -> Map<String, Value> {
    let json = json!({
        "decision": d.verdict.as_str(),
        "reason": d.reason.to_string(),
        "policy": d.policy.as_deref(),
        "rule": d.rule.as_deref(),
    });
    match json {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Reads the agent and the policies and revocations of its namespace, and indexes them as the operator does.
/// Policies select agents by name and labels only, so the one agent asked about is all the snapshot needs.
pub async fn read_snapshot(client: Client, namespace: &str, name: &str) -> Result<Snapshot, CanIError> {
    let failed = |what: &'static str| {
        move |source: kube::Error| CanIError::Read { what, namespace: namespace.to_owned(), source }
    };
    let list = ListParams::default();
    let (agent, policies, revocations) = tokio::try_join!(
        async {
            Api::<Agent>::namespaced(client.clone(), namespace).get_opt(name).await.map_err(failed("Agent"))
        },
        async {
            Api::<AgentPolicy>::namespaced(client.clone(), namespace)
                .list(&list)
                .await
                .map_err(failed("AgentPolicies"))
        },
        async {
            Api::<Revocation>::namespaced(client.clone(), namespace)
                .list(&list)
                .await
                .map_err(failed("Revocations"))
        },
    )?;
    let agent = agent
        .ok_or_else(|| CanIError::AgentNotFound { namespace: namespace.to_owned(), name: name.to_owned() })?;
    let policies: Vec<Arc<AgentPolicy>> = policies.items.into_iter().map(Arc::new).collect();
    let revocations: Vec<Arc<Revocation>> = revocations.items.into_iter().map(Arc::new).collect();
    Ok(Builder::default().build(&[Arc::new(agent)], &policies, &revocations))
}

/// Runs `can-i` against the cluster of the current kubeconfig.
pub async fn run(args: CanIArgs) -> Result<Outcome, CanIError> {
    let client = Client::try_default().await.map_err(CanIError::Client)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    let snapshot = read_snapshot(client, &namespace, &args.agent).await?;
    let context = context_map(&args.context);
    let request = Request {
        action: &args.action,
        resource: &args.resource,
        tool: args.tool.as_deref(),
        context: &context,
        delegation: None,
        probe: false,
    };
    let answer =
        answer(&snapshot, &namespace, &args.agent, &request, args.at.unwrap_or_else(Timestamp::now))?;
    Ok(Outcome { output: answer.render(args.output)?, exit_code: answer.exit_code() })
}

#[cfg(test)]
#[path = "can_i_tests.rs"]
mod tests;
