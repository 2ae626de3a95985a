//! The workload admission webhook: `POST /validate/workloads/<mode>` for Pods and the workload kinds in the
//! namespaces whose [`admission::MODE_LABEL`] asks for it. The API server picks the path by the label (one webhook per
//! mode, see [`super::config::desired_validating`]), so the mode never depends on a lookup here.
//!
//! Each request is classified by discovery's signatures like the watches classify (the same
//! [`classify`], the same key-name reads of the Secrets and ConfigMaps it names), the Agent its pods name
//! is looked up in the operator's store and ledger, and [`admission::decide`] answers. Every decision on a
//! workload that looks like an agent is recorded (`workload.admit`) before it is answered, except for dry
//! runs, which have no side effects.
//!
//! What happens when something is missing follows the mode: in enforce mode a request that cannot be
//! judged or recorded is refused (fail closed, like `failurePolicy: Fail`); audit and warn promise never to
//! refuse, so there it is admitted, with a warning in warn mode and an operator log line.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::Resource;
use kube::core::admission::Operation;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use tracing::{info, warn};

use super::admission::{self as review_layer, Review, Verdict};
use super::server::Webhooks;
use super::validate::Requester;
use crate::audit::{Action, Entry, ObjectRef, Outcome as AuditOutcome};
use crate::discovery::admission::{self, Claim, Context, Judgement, Mode, Outcome, is_workload_controller};
use crate::discovery::classify::{Sources, Template, classify};
use crate::discovery::signatures::Signatures;
use crate::discovery::workload::{HasTemplate, Merged, merged};

/// The resources judged: API group, resource and kind. The seven kinds discovery watches.
pub const RESOURCES: [(&str, &str, &str); 7] = [
    ("", "pods", "Pod"),
    ("apps", "deployments", "Deployment"),
    ("apps", "replicasets", "ReplicaSet"),
    ("apps", "statefulsets", "StatefulSet"),
    ("apps", "daemonsets", "DaemonSet"),
    ("batch", "jobs", "Job"),
    ("batch", "cronjobs", "CronJob"),
];

/// The metrics label of these webhooks.
const WEBHOOK: &str = "workloads";

/// The path of the webhook for `mode`.
pub fn path(mode: Mode) -> String {
    format!("/validate/workloads/{}", mode.as_str())
}

/// What the workload webhook judges with: the signatures discovery uses.
#[derive(Debug, Clone)]
pub struct Workloads {
    /// The signatures in force (the same set discovery classifies with).
    pub signatures: Arc<Signatures>,
}

/// The route handler for `mode`.
pub async fn route(
    mode: Mode,
    State(webhooks): State<Webhooks>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let review = match review_layer::read(WEBHOOK, &headers, &body) {
        Ok(review) => review,
        Err(response) => {
            crate::metrics::global().admission(WEBHOOK, "error");
            return *response;
        }
    };
    let verdict = validate(mode, &webhooks, &review).await;
    crate::metrics::global().admission(WEBHOOK, if verdict.allowed() { "allowed" } else { "denied" });
    axum::Json(review.respond(verdict)).into_response()
}

/// One object as admission reads it.
struct Parsed {
    merged: Merged,
    spec: PodSpec,
}

fn parse_as<K>(object: &Value) -> Result<Option<Parsed>, serde_json::Error>
where
    K: Resource<DynamicType = ()> + HasTemplate + DeserializeOwned,
{
    let o: K = serde_json::from_value(object.clone())?;
    let Some((template, spec, _)) = o.template() else { return Ok(None) };
    Ok(Some(Parsed { merged: merged(&K::kind(&()), o.meta(), template), spec: spec.clone() }))
}

/// `object` read as `kind` (one of [`RESOURCES`]). None: it has no pod spec, or is no kind judged here.
fn parse(kind: &str, object: &Value) -> Result<Option<Parsed>, serde_json::Error> {
    match kind {
        "Pod" => parse_as::<Pod>(object),
        "Deployment" => parse_as::<Deployment>(object),
        "ReplicaSet" => parse_as::<ReplicaSet>(object),
        "StatefulSet" => parse_as::<StatefulSet>(object),
        "DaemonSet" => parse_as::<DaemonSet>(object),
        "Job" => parse_as::<Job>(object),
        "CronJob" => parse_as::<CronJob>(object),
        _ => Ok(None),
    }
}

/// What `mode` does with a request it cannot judge: enforce refuses; audit and warn admit.
fn unjudged(mode: Mode, why: String) -> Verdict {
    match mode {
        Mode::Enforce => Verdict::Deny(format!(
            "{why}; the namespace enforces agent workload admission, so it was refused"
        )),
        Mode::Warn => Verdict::Allow { warnings: vec![format!("agentiam: {why}; admitted unjudged")] },
        Mode::Audit | Mode::Off => Verdict::allow(),
    }
}

/// Classifies `object` in `namespace` with what `sources` holds, and looks up the Agent its pods name.
fn judge(
    webhooks: &Webhooks,
    signatures: &Signatures,
    namespace: &str,
    object: &Parsed,
    sources: &Sources,
) -> Judgement {
    let Merged { labels, annotations, template_labels } = &object.merged;
    let detection = classify(signatures, Template { labels, annotations, spec: &object.spec }, sources);
    let claim = match template_labels.get(crate::names::AGENT_LABEL) {
        None => Claim::None,
        Some(name) => match webhooks.agents.claimed(namespace, name) {
            None => Claim::Unknown(name.clone()),
            Some((_, phase, _)) => Claim::Registered { name: name.clone(), phase },
        },
    };
    admission::judge(&detection, signatures.threshold, &claim)
}

/// Judges one request in `mode`, records the decision, and answers.
async fn validate(mode: Mode, webhooks: &Webhooks, review: &Review) -> Verdict {
    let request = &review.request;
    let kind = request.kind.kind.as_str();
    let judged_here = RESOURCES.iter().any(|(group, _, k)| *group == request.kind.group && *k == kind);
    let operation_judged = matches!(request.operation, Operation::Create | Operation::Update);
    if !judged_here || !operation_judged || request.sub_resource.is_some() {
        return Verdict::allow();
    }
    // An object that is being deleted only sheds its finalizers: never stand in the way of that.
    if review.object_json().pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        return Verdict::allow();
    }
    let Some(workloads) = &webhooks.workloads else {
        return unjudged(mode, "agentiam has no discovery signatures to judge workloads with".to_owned());
    };
    if !webhooks.agents.ready() {
        return unjudged(mode, "agentiam is starting and has not loaded Agents yet".to_owned());
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let object = match parse(kind, review.object_json()) {
        Ok(Some(o)) => o,
        Ok(None) => return Verdict::allow(),
        Err(e) => return unjudged(mode, format!("agentiam could not read the {kind}: {e}")),
    };
    let signatures = &workloads.signatures;
    let old = match (&request.operation, parse(kind, review.old_object_json())) {
        (Operation::Update, Ok(Some(old))) => Some(old),
        _ => None,
    };
    // One read of what both templates name: an update usually names the same Secrets and ConfigMaps.
    let specs: Vec<&PodSpec> = std::iter::once(&object.spec).chain(old.as_ref().map(|o| &o.spec)).collect();
    let sources = match &webhooks.client {
        Some(client) => crate::controller::discovery::read_sources(client, &namespace, &specs).await,
        None => Sources::default(),
    };
    let now = judge(webhooks, signatures, &namespace, &object, &sources);
    let before = old.as_ref().map(|o| judge(webhooks, signatures, &namespace, o, &sources));
    let name = if request.name.is_empty() {
        review.object_json().pointer("/metadata/generateName").and_then(Value::as_str).unwrap_or_default()
    } else {
        request.name.as_str()
    };
    let requester = Requester::of(&request.user_info);
    let ctx = Context {
        kind,
        name,
        namespace: &namespace,
        by_workload_controller: is_workload_controller(&requester.username),
    };
    let outcome = admission::decide(mode, ctx, &now, before.as_ref());
    let verdict = match &outcome {
        Outcome::Ignored => return Verdict::allow(),
        Outcome::Admitted { warnings } => Verdict::Allow { warnings: warnings.clone() },
        Outcome::Refused(message) => Verdict::Deny(message.clone()),
    };
    if review.dry_run() {
        return verdict;
    }
    let Some(audit) = &webhooks.audit else {
        return unrecorded(mode, verdict, "agentiam has no audit log".to_owned());
    };
    let entry = entry(mode, review, ctx, &requester, &now, &outcome);
    match audit.append(entry).await {
        Ok(_) => {
            if let Outcome::Refused(_) = outcome {
                info!(%namespace, kind, name, "refused an agent workload");
            }
            verdict
        }
        Err(e) => {
            warn!(error = %e, %namespace, kind, name, "could not record a workload admission decision");
            unrecorded(
                mode,
                verdict,
                format!("agentiam could not record this decision in its audit log ({e})"),
            )
        }
    }
}

/// A decision that could not be recorded: refused in enforce mode; in audit and warn mode admitted as
/// decided (with a warning in warn mode), since those modes promise never to refuse.
fn unrecorded(mode: Mode, verdict: Verdict, why: String) -> Verdict {
    match (mode, verdict) {
        (Mode::Enforce, _) => Verdict::Deny(format!("{why}, so it was refused; retry")),
        (Mode::Warn, Verdict::Allow { mut warnings }) => {
            warnings.push(format!("agentiam: {why}"));
            Verdict::Allow { warnings }
        }
        (_, verdict) => verdict,
    }
}

/// The audit record of one decision: who asked, what the object looks like, what is wrong with it, and
/// what was answered. Problems are named (variables, Secrets), never shown.
fn entry(
    mode: Mode,
    review: &Review,
    ctx: Context<'_>,
    requester: &Requester,
    judged: &Judgement,
    outcome: &Outcome,
) -> Entry {
    let request = &review.request;
    let api_version = if request.kind.group.is_empty() {
        request.kind.version.clone()
    } else {
        format!("{}/{}", request.kind.group, request.kind.version)
    };
    let uid = review.object_json().pointer("/metadata/uid").and_then(Value::as_str).map(str::to_owned);
    let problems: Vec<String> = judged.problems.iter().map(|p| p.describe()).collect();
    let (outcome, reason) = match outcome {
        Outcome::Refused(message) => (AuditOutcome::Denied, message.clone()),
        _ if problems.is_empty() => {
            (AuditOutcome::Success, format!("admitted in {} mode: the agent is in order", mode.as_str()))
        }
        _ => (AuditOutcome::Success, format!("admitted in {} mode: {}", mode.as_str(), problems.join("; "))),
    };
    let mut details = BTreeMap::new();
    requester.record_in(&mut details);
    details.insert("mode".to_owned(), mode.as_str().to_owned());
    details.insert("operation".to_owned(), format!("{:?}", request.operation).to_uppercase());
    details.insert("admissionUID".to_owned(), request.uid.clone());
    details.insert("signatures".to_owned(), judged.signatures.join(","));
    if !problems.is_empty() {
        details.insert("problems".to_owned(), serde_json::to_string(&problems).unwrap_or_default());
    }
    if ctx.by_workload_controller {
        details.insert("byWorkloadController".to_owned(), "true".to_owned());
    }
    Entry {
        actor: format!("user:{}", requester.username),
        action: Action::WorkloadAdmit.into(),
        object: ObjectRef {
            api_version,
            kind: ctx.kind.to_owned(),
            namespace: Some(ctx.namespace.to_owned()),
            name: ctx.name.to_owned(),
            uid,
        },
        outcome,
        reason,
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_judged_kind_reads_its_pod_template() {
        let spec = serde_json::json!({"containers": [{"name": "app", "image": "python:3.12",
            "env": [{"name": "OPENAI_API_KEY", "value": "sk-literal"}]}]});
        let template = serde_json::json!({"metadata": {"labels": {"app": "x", "agentiam.dev/agent": "bot"}}, "spec": spec});
        let selector = serde_json::json!({"matchLabels": {"app": "x"}});
        let objects = [
            (
                "Pod",
                serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "x", "labels": {"app": "x", "agentiam.dev/agent": "bot"}}, "spec": spec}),
            ),
            (
                "Deployment",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                "spec": {"selector": selector, "template": template}}),
            ),
            (
                "ReplicaSet",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "x"},
                "spec": {"selector": selector, "template": template}}),
            ),
            (
                "StatefulSet",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
                "spec": {"selector": selector, "serviceName": "x", "template": template}}),
            ),
            (
                "DaemonSet",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
                "spec": {"selector": selector, "template": template}}),
            ),
            (
                "Job",
                serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
                "spec": {"template": template}}),
            ),
            (
                "CronJob",
                serde_json::json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "x"},
                "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}),
            ),
        ];
        assert_eq!(objects.len(), RESOURCES.len());
        for (kind, object) in objects {
            let parsed = parse(kind, &object).unwrap().unwrap_or_else(|| panic!("{kind} has a pod spec"));
            assert_eq!(
                parsed.merged.template_labels.get("agentiam.dev/agent").map(String::as_str),
                Some("bot"),
                "{kind}"
            );
            assert_eq!(parsed.spec.containers[0].name, "app", "{kind}");
            let sources = Default::default();
            let t = Template {
                labels: &parsed.merged.labels,
                annotations: &parsed.merged.annotations,
                spec: &parsed.spec,
            };
            let d = classify(&Signatures::default(), t, &sources);
            assert_eq!(d.static_keys.len(), 1, "{kind}: the literal key is found");
        }
        assert!(parse("Deployment", &serde_json::json!({"spec": "not a spec"})).is_err());
        assert!(parse("Service", &serde_json::json!({})).unwrap().is_none());
    }

    #[test]
    fn a_request_that_cannot_be_judged_or_recorded_is_refused_only_in_enforce_mode() {
        assert!(!unjudged(Mode::Enforce, "x".into()).allowed());
        assert_eq!(unjudged(Mode::Audit, "x".into()), Verdict::allow());
        let Verdict::Allow { warnings } = unjudged(Mode::Warn, "x".into()) else { panic!() };
        assert_eq!(warnings, ["agentiam: x; admitted unjudged"]);
        let Verdict::Deny(m) = unrecorded(Mode::Enforce, Verdict::allow(), "no log".into()) else { panic!() };
        assert_eq!(m, "no log, so it was refused; retry");
        let Verdict::Allow { warnings } = unrecorded(Mode::Warn, Verdict::allow(), "no log".into()) else {
            panic!()
        };
        assert_eq!(warnings, ["agentiam: no log"]);
        assert_eq!(unrecorded(Mode::Audit, Verdict::allow(), "no log".into()), Verdict::allow());
    }
}
