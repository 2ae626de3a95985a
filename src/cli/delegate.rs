//! `kubectl agentiam delegate` and `kubectl agentiam get delegations [--tree]`.
//!
//! `delegate` builds a Delegation from flags, checks its scopes with the operator's own parser before the
//! API server sees them, creates it as you (the operator's webhook records you as the grantor), and waits a
//! moment for the controller's decision. `get delegations --tree` shows each chain from its human down.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use crate::api::{Delegation, DelegationSpec, LocalRef};
use crate::authz::scope;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    /// No kubeconfig or cluster.
    #[error("cannot reach the cluster: {0}")]
    Client(#[source] kube::Error),
    /// A scope does not parse.
    #[error("--scope {scope:?} {source}")]
    Scope {
        /// The scope as given.
        scope: String,
        /// Why.
        #[source]
        source: scope::ScopeError,
    },
    /// Neither or both of --ttl and --expires-at.
    #[error("give exactly one of --ttl and --expires-at")]
    Expiry,
    /// The API server refused the Delegation (admission says why).
    #[error("the Delegation was refused: {0}")]
    Refused(String),
    /// Listing failed.
    #[error("failed to list Delegations: {0}")]
    List(#[source] kube::Error),
}

/// `kubectl agentiam delegate` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DelegateArgs {
    /// The grantee Agent.
    pub agent: String,
    /// A scope `<action>@<resource pattern>`, e.g. read@crm:contacts/*; repeat for more.
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// The task, in words you will recognise in an audit trail.
    #[arg(long)]
    pub task: String,
    /// How long the grant lasts ("30m", "8h"; at most 720h).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Absolute end (RFC 3339), instead of --ttl.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Pass on a subset of this Delegation (a sub-delegation) instead of granting a root.
    #[arg(long)]
    pub parent: Option<String>,
    /// The one audience (service) its tokens are for. Default: the system its scopes name (crm for
    /// read@crm:contacts/*); a child's is its parent's.
    #[arg(long)]
    pub audience: Option<String>,
    /// Levels of sub-delegation that may follow (default 3 for a root).
    #[arg(long)]
    pub max_depth: Option<u8>,
    /// Another agent that may take these rights over by token exchange (the tokens' `may_act`).
    #[arg(long, value_name = "AGENT")]
    pub may_act: Option<String>,
    /// The Delegation's name. Default: the agent's name and a random suffix.
    #[arg(long)]
    pub name: Option<String>,
    /// The namespace. Default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// The Delegation `args` describe. Pure.
pub fn build(args: &DelegateArgs) -> Result<Delegation, DelegateError> {
    for s in &args.scopes {
        scope::Scope::parse(s).map_err(|source| DelegateError::Scope { scope: s.clone(), source })?;
    }
    if args.ttl.is_some() == args.expires_at.is_some() {
        return Err(DelegateError::Expiry);
    }
    let spec = DelegationSpec {
        agent_ref: LocalRef { name: args.agent.clone() },
        parent_ref: args.parent.clone().map(|name| LocalRef { name }),
        scopes: args.scopes.clone(),
        task: args.task.clone(),
        ttl: args.ttl.clone(),
        expires_at: args.expires_at.clone(),
        max_depth: args.max_depth,
        audience: args.audience.clone(),
        may_act: args.may_act.clone().map(|name| LocalRef { name }),
    };
    let mut d = Delegation::new(args.name.as_deref().unwrap_or_default(), spec);
    if args.name.is_none() {
        d.metadata.name = None;
        d.metadata.generate_name = Some(format!("{}-", args.agent));
    }
    Ok(d)
}

/// Creates the Delegation and waits up to five seconds for its phase.
pub async fn delegate(args: DelegateArgs) -> Result<String, DelegateError> {
    let delegation = build(&args)?;
    let client = Client::try_default().await.map_err(DelegateError::Client)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<Delegation> = Api::namespaced(client, &namespace);
    let created = api.create(&PostParams::default(), &delegation).await.map_err(|e| match e {
        kube::Error::Api(status) => DelegateError::Refused(status.message),
        other => DelegateError::Refused(other.to_string()),
    })?;
    let name = created.metadata.name.clone().unwrap_or_default();
    let mut out = format!("delegation.agentiam.dev/{name} created in {namespace}\n");
    for _ in 0..50 {
        if let Some(status) = api.get_opt(&name).await.ok().flatten().and_then(|d| d.status)
            && let Some(phase) = status.phase
        {
            let message = status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.message.clone());
            let _ = writeln!(out, "phase: {}", phase.as_str());
            if let Some(m) = message.filter(|m| !m.is_empty()) {
                let _ = writeln!(out, "{m}");
            }
            return Ok(out);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.push_str("phase: not decided yet (is the operator running?)\n");
    Ok(out)
}

/// `kubectl agentiam get delegations` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// Show each chain as a tree, from its human down.
    #[arg(long)]
    pub tree: bool,
    /// The namespace. Default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Lists the namespace's Delegations, as a table or a tree.
pub async fn get(args: GetArgs) -> Result<String, DelegateError> {
    let client = Client::try_default().await.map_err(DelegateError::Client)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<Delegation> = Api::namespaced(client, &namespace);
    let list = api.list(&ListParams::default()).await.map_err(DelegateError::List)?;
    Ok(if args.tree { render_tree(&list.items) } else { render_table(&list.items) })
}

fn phase(d: &Delegation) -> &'static str {
    d.status.as_ref().and_then(|s| s.phase).map_or("-", |p| p.as_str())
}

fn name(d: &Delegation) -> &str {
    d.metadata.name.as_deref().unwrap_or_default()
}

/// One line per Delegation. Pure.
pub fn render_table(items: &[Delegation]) -> String {
    let mut rows = vec![["NAME", "AGENT", "PARENT", "PHASE", "GRANTOR", "EXPIRES"].map(str::to_owned)];
    for d in items {
        let status = d.status.as_ref();
        rows.push([
            name(d).to_owned(),
            d.spec.agent_ref.name.clone(),
            d.spec.parent_ref.as_ref().map_or("-".to_owned(), |p| p.name.clone()),
            phase(d).to_owned(),
            status.and_then(|s| s.grantor.as_ref()).map_or("-".to_owned(), |g| g.username.clone()),
            status.and_then(|s| s.expires_at.clone()).unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    super::table(&rows)
}

/// Each chain from its human down: roots grouped under their grantor, children under their parent, and
/// Delegations whose parent is missing listed last. Pure.
pub fn render_tree(items: &[Delegation]) -> String {
    let by_name: BTreeMap<&str, &Delegation> = items.iter().map(|d| (name(d), d)).collect();
    let mut children: BTreeMap<&str, Vec<&Delegation>> = BTreeMap::new();
    let mut roots: BTreeMap<String, Vec<&Delegation>> = BTreeMap::new();
    let mut orphans = Vec::new();
    for d in items {
        match &d.spec.parent_ref {
            Some(p) if by_name.contains_key(p.name.as_str()) => children.entry(&p.name).or_default().push(d),
            Some(_) => orphans.push(d),
            None => {
                let grantor = d.status.as_ref().and_then(|s| s.grantor.as_ref()).map(|g| g.username.clone());
                roots
                    .entry(grantor.unwrap_or_else(|| "(grantor not recorded yet)".to_owned()))
                    .or_default()
                    .push(d);
            }
        }
    }
    let mut out = String::new();
    let mut seen = HashSet::new();
    for (grantor, list) in &roots {
        let _ = writeln!(out, "{grantor}");
        for (i, d) in list.iter().enumerate() {
            node(&mut out, d, &children, "", i + 1 == list.len(), &mut seen);
        }
    }
    if !orphans.is_empty() {
        let _ = writeln!(out, "(parent missing)");
        for (i, d) in orphans.iter().enumerate() {
            node(&mut out, d, &children, "", i + 1 == orphans.len(), &mut seen);
        }
    }
    out
}

fn node<'a>(
    out: &mut String,
    d: &'a Delegation,
    children: &BTreeMap<&str, Vec<&'a Delegation>>,
    prefix: &str,
    last: bool,
    seen: &mut HashSet<&'a str>,
) {
    let (branch, more) = if last { ("└── ", "    ") } else { ("├── ", "│   ") };
    let until = d
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_deref())
        .map(|e| format!(" until {e}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{prefix}{branch}{} -> {} {} [{}]{until}",
        name(d),
        d.spec.agent_ref.name,
        phase(d),
        d.spec.scopes.join(", ")
    );
    // A name seen twice is a cycle in what the API server holds; print it once.
    if !seen.insert(name(d)) {
        return;
    }
    if let Some(list) = children.get(name(d)) {
        let prefix = format!("{prefix}{more}");
        for (i, c) in list.iter().enumerate() {
            node(out, c, children, &prefix, i + 1 == list.len(), seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DelegationPhase, DelegationStatus, Grantor};

    fn args(scopes: &[&str]) -> DelegateArgs {
        DelegateArgs {
            agent: "triage".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            task: "t".into(),
            ttl: Some("2h".into()),
            expires_at: None,
            parent: None,
            max_depth: None,
            may_act: None,
            audience: None,
            name: None,
            namespace: None,
        }
    }

    fn d(name: &str, parent: Option<&str>, phase: DelegationPhase, grantor: Option<&str>) -> Delegation {
        let mut spec = build(&args(&["read@a/*"])).unwrap().spec;
        spec.parent_ref = parent.map(|p| LocalRef { name: p.into() });
        let mut d = Delegation::new(name, spec);
        d.status = Some(DelegationStatus {
            phase: Some(phase),
            grantor: grantor.map(|g| Grantor { username: g.into(), ..Grantor::default() }),
            ..DelegationStatus::default()
        });
        d
    }

    #[test]
    fn flags_become_a_delegation_and_bad_scopes_are_refused_before_the_server() {
        let d = build(&args(&["read@crm:contacts/*"])).unwrap();
        assert_eq!(d.metadata.generate_name.as_deref(), Some("triage-"));
        assert_eq!(d.spec.scopes, ["read@crm:contacts/*"]);
        assert!(matches!(build(&args(&["crm:contacts:read"])), Err(DelegateError::Scope { .. })));
        let mut both = args(&["read@a"]);
        both.expires_at = Some("2030-01-01T00:00:00Z".into());
        assert!(matches!(build(&both), Err(DelegateError::Expiry)));
    }

    #[test]
    fn the_tree_starts_at_the_human_and_nests_children() {
        let items = vec![
            d("child", Some("root"), DelegationPhase::Active, None),
            d("root", None, DelegationPhase::Active, Some("alice@example.com")),
            d("grandchild", Some("child"), DelegationPhase::Active, None),
            d("stray", Some("gone"), DelegationPhase::Invalid, None),
        ];
        let tree = render_tree(&items);
        let lines: Vec<&str> = tree.lines().collect();
        assert_eq!(lines[0], "alice@example.com");
        assert!(lines[1].starts_with("└── root -> triage Active"), "{tree}");
        assert!(lines[2].starts_with("    └── child -> triage Active"), "{tree}");
        assert!(lines[3].starts_with("        └── grandchild"), "{tree}");
        assert_eq!(lines[4], "(parent missing)");
        assert!(lines[5].contains("stray -> triage Invalid"), "{tree}");
        let table = render_table(&items);
        assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
        assert!(table.contains("alice@example.com"), "{table}");
    }
}
