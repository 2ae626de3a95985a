//! `kubectl agentiam discover` lists the agents discovery knows of, shadow and registered, with why each was
//! detected and the static keys it holds; `kubectl agentiam adopt <agent>` registers a shadow agent by naming
//! its owner and purpose, as you (the operator's webhook records who did it). Both read and write Agents
//! with your kubeconfig; the report is what the operator put in each Agent's `status.discovery`.

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{Agent, KeySource, Owner, PrincipalKind};
use crate::discovery::workload::{SHADOW_LABEL, WORKLOAD_ANNOTATION};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// No kubeconfig or cluster.
    #[error("cannot reach the cluster: {0}")]
    Client(#[source] kube::Error),
    /// Listing or reading failed.
    #[error("failed to read Agents: {0}")]
    Read(#[source] kube::Error),
    /// The API server refused the adoption (admission or CEL says why).
    #[error("the adoption was refused: {0}")]
    Refused(String),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// JSON or YAML output failed.
    #[error("failed to render: {0}")]
    Render(String),
}

/// Output formats of `discover`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A table.
    Table,
    /// A JSON array.
    Json,
    /// A YAML list.
    Yaml,
}

/// `kubectl agentiam discover` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DiscoverArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// The namespace. Default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Only shadow agents (no owner yet).
    #[arg(long)]
    pub shadow: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `kubectl agentiam adopt` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct AdoptArgs {
    /// The shadow agent (as `discover` lists it).
    pub agent: String,
    /// Its owner, `<User|Group|Team>:<name>`, e.g. `User:olivia@example.com`.
    #[arg(long)]
    pub owner: String,
    /// What it is for, in a sentence or two a reviewer can check its behaviour against.
    #[arg(long)]
    pub purpose: String,
    /// The namespace. Default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// One row of `discover`: an agent discovery knows of. Pure.
#[derive(serde::Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    /// Namespace.
    pub namespace: String,
    /// The Agent's name.
    pub agent: String,
    /// Shadow (no owner) or registered.
    pub shadow: bool,
    /// Its phase.
    pub phase: String,
    /// `<Kind>/<name>` of its workload.
    pub workload: String,
    /// The combined confidence.
    pub confidence: u8,
    /// Why it was detected: each signature with where it matched.
    pub reasons: Vec<String>,
    /// Static LLM keys it holds, `<container>: <name> (<source>)`.
    pub static_keys: Vec<String>,
    /// Its risk: `<Level> (<score>)`, and what raised it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    /// What raised the risk.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub risk_reasons: Vec<String>,
    /// The ServiceAccount it names is shared: with how many workloads and which other agents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub borrowed_service_account: Option<String>,
}

/// The agents among `agents` that discovery reported on, or that are shadow records. Pure.
pub fn found(agents: &[Agent], shadow_only: bool) -> Vec<Found> {
    let mut out = Vec::new();
    for a in agents {
        let shadow = a.spec.owner.is_none();
        let labelled = a.metadata.labels.as_ref().is_some_and(|l| l.contains_key(SHADOW_LABEL));
        let report = a.status.as_ref().and_then(|s| s.discovery.clone());
        if (shadow_only && !shadow) || (report.is_none() && !labelled && !shadow) {
            continue;
        }
        let report = report.unwrap_or_default();
        let workload =
            report.workload.as_ref().map(|w| format!("{}/{}", w.kind, w.name)).or_else(|| {
                a.metadata.annotations.as_ref().and_then(|an| an.get(WORKLOAD_ANNOTATION).cloned())
            });
        let borrowed = report.borrowed_service_account.as_ref().map(|b| {
            let mut with: Vec<String> = b.shared_with.clone();
            with.extend(b.other_agents.iter().map(|a| format!("Agent/{a}")));
            format!(
                "{} (shared with {} workload(s) and {} agent(s): {})",
                b.service_account,
                b.workloads,
                b.other_agents.len(),
                with.join(", ")
            )
        });
        out.push(Found {
            namespace: a.metadata.namespace.clone().unwrap_or_default(),
            agent: a.metadata.name.clone().unwrap_or_default(),
            shadow,
            phase: a.status.as_ref().and_then(|s| s.phase).map_or("-".to_owned(), |p| p.to_string()),
            workload: workload.unwrap_or_else(|| "-".to_owned()),
            confidence: report.confidence,
            reasons: report
                .evidence
                .iter()
                .map(|e| format!("{} ({}): {}", e.signature, e.confidence, e.matches.join("; ")))
                .collect(),
            static_keys: report
                .static_keys
                .iter()
                .map(|k| {
                    let source = match (&k.source, &k.from) {
                        (KeySource::Literal, _) => "literal value".to_owned(),
                        (KeySource::Secret, Some(s)) => format!("Secret {s}"),
                        (KeySource::ConfigMap, Some(m)) => format!("ConfigMap {m}"),
                        (KeySource::Secret, None) => "a Secret".to_owned(),
                        (KeySource::ConfigMap, None) => "a ConfigMap".to_owned(),
                    };
                    format!("{}: {} ({source})", k.container, k.name)
                })
                .collect(),
            borrowed_service_account: borrowed,
            risk: report.risk.as_ref().map(|r| format!("{:?} ({})", r.level, r.score)),
            risk_reasons: report.risk.as_ref().map(|r| r.reasons.clone()).unwrap_or_default(),
        });
    }
    out
}

/// The rows as a table. Pure.
pub fn render(rows: &[Found], with_namespace: bool) -> String {
    let mut table = vec![
        [
            "NAMESPACE",
            "AGENT",
            "KIND",
            "PHASE",
            "WORKLOAD",
            "CONFIDENCE",
            "RISK",
            "STATIC KEYS",
            "SHARED SA",
            "WHY",
        ]
        .map(str::to_owned),
    ];
    for f in rows {
        let why: Vec<&str> = f.reasons.iter().map(|r| r.split(" (").next().unwrap_or(r)).collect();
        table.push([
            f.namespace.clone(),
            f.agent.clone(),
            if f.shadow { "shadow" } else { "registered" }.to_owned(),
            f.phase.clone(),
            f.workload.clone(),
            f.confidence.to_string(),
            f.risk.clone().unwrap_or_else(|| "-".to_owned()),
            f.static_keys.len().to_string(),
            f.borrowed_service_account.as_deref().and_then(|b| b.split(' ').next()).unwrap_or("-").to_owned(),
            why.join(", "),
        ]);
    }
    if with_namespace {
        return super::table(&table);
    }
    let table: Vec<[String; 9]> =
        table.into_iter().map(|[_, a, b, c, d, e, f, g, h, i]| [a, b, c, d, e, f, g, h, i]).collect();
    super::table(&table)
}

/// Lists what discovery knows.
pub async fn discover(args: DiscoverArgs) -> Result<String, DiscoverError> {
    let client = Client::try_default().await.map_err(DiscoverError::Client)?;
    let api: Api<Agent> = if args.all_namespaces {
        Api::all(client)
    } else {
        let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
        Api::namespaced(client, &ns)
    };
    let list = api.list(&ListParams::default()).await.map_err(DiscoverError::Read)?;
    let rows = found(&list.items, args.shadow);
    match args.output {
        Format::Table => Ok(render(&rows, args.all_namespaces)),
        Format::Json => serde_json::to_string_pretty(&rows)
            .map(|s| s + "\n")
            .map_err(|e| DiscoverError::Render(e.to_string())),
        Format::Yaml => serde_saphyr::to_string(&rows).map_err(|e| DiscoverError::Render(e.to_string())),
    }
}

/// Parses `<User|Group|Team>:<name>`. Pure.
pub fn parse_owner(s: &str) -> Result<Owner, DiscoverError> {
    let usage = || {
        DiscoverError::Usage(format!(
            "--owner {s:?}: expected <User|Group|Team>:<name>, e.g. User:olivia@example.com"
        ))
    };
    let (kind, name) = s.split_once(':').ok_or_else(usage)?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "user" => PrincipalKind::User,
        "group" => PrincipalKind::Group,
        "team" => PrincipalKind::Team,
        _ => return Err(usage()),
    };
    let name = name.trim();
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err(usage());
    }
    Ok(Owner { kind, name: name.to_owned() })
}

/// Adopts a shadow agent: sets its owner and purpose, as you.
pub async fn adopt(args: AdoptArgs) -> Result<String, DiscoverError> {
    let owner = parse_owner(&args.owner)?;
    let purpose = args.purpose.trim();
    if purpose.is_empty() || purpose.len() > 1024 || purpose.chars().any(char::is_control) {
        return Err(DiscoverError::Usage(
            "--purpose must be 1 to 1024 characters, without control characters".into(),
        ));
    }
    let client = Client::try_default().await.map_err(DiscoverError::Client)?;
    let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<Agent> = Api::namespaced(client, &ns);
    let agent = api.get(&args.agent).await.map_err(DiscoverError::Read)?;
    if agent.spec.owner.is_some() {
        return Err(DiscoverError::Usage(format!(
            "agent {} in {ns} already has an owner ({}): it is registered, not a shadow agent",
            args.agent,
            agent.spec.owner_line()
        )));
    }
    // The UID precondition: adopt exactly the record that was looked at, not one created since.
    let patch = json!({
        "metadata": {"uid": agent.metadata.uid},
        "spec": {"owner": owner, "purpose": purpose},
    });
    api.patch(&args.agent, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| match e {
        kube::Error::Api(status) => DiscoverError::Refused(status.message),
        other => DiscoverError::Refused(other.to_string()),
    })?;
    Ok(format!(
        "agent.agentiam.dev/{} adopted in {ns}: owner {}:{}\nIts pods get credentials once the pod template \
         carries the label agentiam.dev/agent={} (and no static key: see `kubectl agentiam discover`).\n",
        args.agent, owner.kind, owner.name, args.agent
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, owned: bool, report: bool) -> Agent {
        let mut v = json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"purpose": "p"},
            "status": {"phase": if owned { "Active" } else { "Discovered" }},
        });
        if owned {
            v["spec"]["owner"] = json!({"kind": "Team", "name": "t"});
        }
        if report {
            v["status"]["discovery"] = json!({
                "workload": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bot", "uid": "u"},
                "confidence": 90,
                "evidence": [{"signature": "llm-provider-key", "kind": "env", "confidence": 90,
                    "matches": ["container main: env OPENAI_API_KEY (literal value)"]}],
                "staticKeys": [{"container": "main", "name": "OPENAI_API_KEY", "source": "literal"}],
                "risk": {"level": "High", "score": 50, "reasons": ["it holds 1 static LLM key(s)"]},
            });
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn discover_lists_shadow_and_reported_agents_with_why_and_their_keys() {
        let agents =
            [agent("deployment-bot", false, true), agent("plain", true, false), agent("adopted", true, true)];
        let rows = found(&agents, false);
        assert_eq!(rows.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>(), ["deployment-bot", "adopted"]);
        assert!(rows[0].shadow && !rows[1].shadow);
        assert_eq!(rows[0].static_keys, ["main: OPENAI_API_KEY (literal value)"]);
        assert!(rows[0].reasons[0].starts_with("llm-provider-key (90): container main"));
        let table = render(&rows, false);
        assert!(table.lines().next().unwrap().starts_with("AGENT"), "{table}");
        assert!(
            table.contains("shadow")
                && table.contains("Deployment/bot")
                && table.contains("llm-provider-key")
        );
        assert!(table.contains("High (50)"), "{table}");
        assert_eq!(found(&agents, true).len(), 1, "--shadow");
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["staticKeys"][0], "main: OPENAI_API_KEY (literal value)");
    }

    #[test]
    fn owners_parse_strictly() {
        assert_eq!(parse_owner("User:olivia@example.com").unwrap().kind, PrincipalKind::User);
        assert_eq!(parse_owner("team:payments").unwrap().name, "payments");
        for bad in ["olivia", "Robot:x", "User:", "User: ", "User:a\u{7}b"] {
            assert!(matches!(parse_owner(bad), Err(DiscoverError::Usage(_))), "{bad}");
        }
    }
}
