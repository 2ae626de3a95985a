//! `kubectl agentiam approvals`, `approve <id>` and `deny <id>`: list the requests waiting for a human, and
//! answer one by setting its `spec.decision` as you (the operator's webhook records you as the approver and
//! refuses you unless you may; the approval controller checks again before the answer counts).

use std::time::Duration;

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{ApprovalPhase, ApprovalRequest, ApprovalVerdict};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// No kubeconfig or cluster.
    #[error("cannot reach the cluster: {0}")]
    Client(#[source] kube::Error),
    /// Listing failed.
    #[error("failed to list ApprovalRequests: {0}")]
    List(#[source] kube::Error),
    /// The API server refused the answer (admission says why).
    #[error("the answer was refused: {0}")]
    Refused(String),
    /// A reason with control characters, or a deny without one.
    #[error("{0}")]
    Reason(String),
}

/// `kubectl agentiam approvals` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Also the answered and finished requests (default: Pending only).
    #[arg(long)]
    pub all: bool,
    /// The namespace. Default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// `kubectl agentiam approve|deny` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct AnswerArgs {
    /// The ApprovalRequest (its name, as `approvals` lists it).
    pub id: String,
    /// Why, in words the audit trail keeps (required to deny).
    #[arg(long)]
    pub reason: Option<String>,
    /// The namespace. Default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

fn phase(r: &ApprovalRequest) -> Option<ApprovalPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

/// The requests as a table (pending ones only unless `all`). Pure.
pub fn render(items: &[ApprovalRequest], all: bool, with_namespace: bool) -> String {
    let mut rows = vec![
        ["NAMESPACE", "ID", "AGENT", "ACTION", "RESOURCE", "CONTEXT", "PHASE", "EXPIRES"].map(str::to_owned),
    ];
    for r in items {
        let p = phase(r);
        // Not decided yet counts as pending: the controller reports within moments.
        if !all && !matches!(p, None | Some(ApprovalPhase::Pending)) {
            continue;
        }
        let q = &r.spec.request;
        let context =
            q.context.as_ref().map_or("-".to_owned(), |c| serde_json::Value::Object(c.clone()).to_string());
        rows.push([
            r.metadata.namespace.clone().unwrap_or_default(),
            r.metadata.name.clone().unwrap_or_default(),
            q.agent_ref.name.clone(),
            q.action.clone(),
            q.resource.clone(),
            context.chars().take(80).collect(),
            p.map_or("Pending", ApprovalPhase::as_str).to_owned(),
            q.expires_at.clone(),
        ]);
    }
    if !with_namespace {
        let rows: Vec<[String; 7]> =
            rows.into_iter().map(|[_, a, b, c, d, e, f, g]| [a, b, c, d, e, f, g]).collect();
        return super::table(&rows);
    }
    super::table(&rows)
}

/// Lists the approval requests.
pub async fn list(args: ListArgs) -> Result<String, ApproveError> {
    let client = Client::try_default().await.map_err(ApproveError::Client)?;
    let api: Api<ApprovalRequest> = if args.all_namespaces {
        Api::all(client)
    } else {
        let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
        Api::namespaced(client, &ns)
    };
    let list = api.list(&ListParams::default()).await.map_err(ApproveError::List)?;
    Ok(render(&list.items, args.all, args.all_namespaces))
}

/// Answers one request, then waits up to five seconds for the operator's decision about the answer.
pub async fn answer(args: AnswerArgs, verdict: ApprovalVerdict) -> Result<String, ApproveError> {
    if let Some(r) = &args.reason
        && (r.chars().any(char::is_control) || r.len() > 1024)
    {
        return Err(ApproveError::Reason(
            "--reason must be at most 1024 characters, without control characters".into(),
        ));
    }
    if verdict == ApprovalVerdict::Deny && args.reason.as_deref().is_none_or(str::is_empty) {
        return Err(ApproveError::Reason(
            "deny needs --reason: the agent's owner will want to know why".into(),
        ));
    }
    let client = Client::try_default().await.map_err(ApproveError::Client)?;
    let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<ApprovalRequest> = Api::namespaced(client, &ns);
    let verdict_s = match verdict {
        ApprovalVerdict::Approve => "Approve",
        ApprovalVerdict::Deny => "Deny",
    };
    let patch = json!({"spec": {"decision": {"verdict": verdict_s, "reason": args.reason}}});
    api.patch(&args.id, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| match e {
        kube::Error::Api(status) => ApproveError::Refused(status.message),
        other => ApproveError::Refused(other.to_string()),
    })?;
    let mut out = format!("approvalrequest.agentiam.dev/{} answered {verdict_s} in {ns}\n", args.id);
    for _ in 0..50 {
        if let Some(r) = api.get_opt(&args.id).await.ok().flatten()
            && let Some(status) = r.status
            && status.phase.is_some_and(|p| p != ApprovalPhase::Pending)
        {
            let p = status.phase.map_or("-", ApprovalPhase::as_str);
            out.push_str(&format!("phase: {p}\n{}\n", status.message.unwrap_or_default()));
            return Ok(out);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.push_str("phase: not decided yet (is the operator running?)\n");
    Ok(out)
}
