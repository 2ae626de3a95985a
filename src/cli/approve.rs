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
            truncated(&context, 80),
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

/// `s` cut to `max` characters, the cut marked (the full context is in the object: `kubectl get apr -o yaml`).
fn truncated(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, phase: Option<&str>, context: serde_json::Value) -> ApprovalRequest {
        serde_json::from_value(json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"name": name, "namespace": "pay"},
            "spec": {"request": {"agentRef": {"name": "payer"}, "agentUid": "a-1", "action": "refund",
                "resource": "pay:orders/7", "context": context, "audience": "pay", "policy": "p", "rule": "r",
                "approvers": {"groups": ["finance"]}, "expiresAt": "2026-12-01T10:15:00Z", "validFor": "5m",
                "uses": 1, "binding": "b"}},
            "status": phase.map(|p| json!({"phase": p})),
        }))
        .expect("an ApprovalRequest")
    }

    #[test]
    fn the_list_shows_waiting_requests_unless_all_and_keeps_each_row_on_one_line() {
        let long = "x".repeat(200);
        let items = [
            request("payer-1", None, json!({"amount": 913.37})),
            request("payer-2", Some("Pending"), json!({"a": "line\nbreak", "long": long})),
            request("payer-3", Some("Approved"), json!({})),
        ];
        let out = render(&items, false, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("ID") && !lines[0].contains("NAMESPACE"), "{out}");
        assert!(lines[1].contains("payer-1") && lines[1].contains(r#"{"amount":913.37}"#), "{out}");
        assert!(lines[1].contains("Pending"), "not decided yet counts as pending: {out}");
        assert!(lines[2].contains(r#"line\nbreak"#) && !lines[2].contains(&long), "{out}");
        assert!(lines[2].contains("xx…  Pending"), "the cut is marked: {out}");
        assert!(!out.contains("payer-3"), "{out}");
        let out = render(&items, true, true);
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(out.starts_with("NAMESPACE") && out.contains("Approved"), "{out}");
    }

    #[tokio::test]
    async fn a_denial_needs_a_reason_and_no_reason_holds_control_characters() {
        let args = |reason: Option<&str>| AnswerArgs {
            id: "payer-1".into(),
            reason: reason.map(str::to_owned),
            namespace: Some("pay".into()),
        };
        // Refused before any cluster is contacted.
        for (reason, verdict) in [
            (None, ApprovalVerdict::Deny),
            (Some(""), ApprovalVerdict::Deny),
            (Some("ok\u{1b}[2J"), ApprovalVerdict::Approve),
        ] {
            let err = answer(args(reason), verdict).await.expect_err("refused");
            assert!(matches!(err, ApproveError::Reason(_)), "{err}");
        }
        let long = "x".repeat(1025);
        let err = answer(args(Some(&long)), ApprovalVerdict::Approve).await.expect_err("refused");
        assert!(err.to_string().contains("1024"), "{err}");
    }
}
