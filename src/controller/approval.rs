//! The ApprovalRequest controller: turns a human's answer, as admission recorded it, into the operator's
//! decision, after checking it again against fresh API state; ends requests nobody answered and
//! approvals nobody used; reports all of it in status; removes finished requests after a day.
//!
//! Pipeline per reconcile: GET the object fresh -> look up the operator's record of it (the ledger) ->
//! no record: Invalid (after a grace period, since the record is written just after the object is
//! created) -> an answer waiting whose spec still says the same: re-check the approver (a person among
//! the rule's approvers, four eyes, and the RBAC verb `approve` by SubjectAccessReview, as of now) and
//! record approval.approve or approval.deny -> deadlines passed: record approval.expire -> apply the
//! status -> Event on a change of phase -> requeue at the next deadline.
//!
//! Every decision is an audit record, durable before any status reports it; the decision API reads the
//! ledger those records build, never the status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tracing::instrument;

use crate::api::{ApprovalPhase, ApprovalRequest, ApprovalRequestStatus, ApprovalVerdict, Grantor};
use crate::audit::{Action as AuditAction, Entry, Outcome};
use crate::controller::shared::Watched;
use crate::controller::{ACTOR, Context, Error, FIELD_MANAGER, Result, report};
use crate::registry::actions as a;
use crate::registry::approval::{self, Answer, State};
use crate::registry::ledger::Ledger;
use crate::registry::status::set_condition;
use crate::server::approvals::request_ref;
use crate::webhook::validate::Requester;

/// How long a request may exist without the operator's record of it before it is Invalid: the record
/// is appended right after the object is created, so only a crash in between (or a forgery) leaves one
/// without it.
const GRACE: Duration = Duration::from_secs(30);
/// How long a finished request stays for `kubectl get` before it is deleted (the audit log keeps it).
const RETAIN: SignedDuration = SignedDuration::from_hours(24);
/// Longest wait before a request is looked at again.
const RESYNC: Duration = Duration::from_secs(600);

/// The ApprovalRequest controller, not yet running: it reconciles on changes of the objects and on each
/// approval record the ledger applies (a use changes no object, yet its status must say so).
pub fn controller(watched: &Watched, ledger: &Ledger) -> Controller<ApprovalRequest> {
    let records = futures::stream::unfold(ledger.approval_records(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok((ns, name)) => return Some((ObjectRef::new(&name).within(&ns), rx)),
                // Missed triggers are reported at the requests' next requeue.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Controller::for_shared_stream(
        watched.approvals.applied("ApprovalRequest controller"),
        watched.approvals.store(),
    )
    .reconcile_on(records)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<ApprovalRequest>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "approval reconcile failed");
            }
        })
        .await;
}

fn error_policy(request: Arc<ApprovalRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    report::error("approval", request, error, ctx)
}

/// What the reconcile decided to report.
struct Report {
    phase: ApprovalPhase,
    reason: &'static str,
    message: String,
    decided_by: Option<Grantor>,
    approved_until: Option<Timestamp>,
    uses_left: Option<u32>,
    /// When to look again.
    next: Option<Timestamp>,
}

/// Reconciles one ApprovalRequest.
#[instrument(skip_all, fields(kind = "ApprovalRequest", namespace = request.namespace().unwrap_or_default(), name = %request.name_any()))]
pub async fn reconcile(request: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = crate::metrics::global().reconcile("approval");
    let ns = request.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = request.name_any();
    let api: Api<ApprovalRequest> = Api::namespaced(ctx.client.clone(), &ns);
    let read = |source| Error::Read { what: format!("ApprovalRequest {ns}/{name}"), source };
    // Fresh: the answer that counts is the one the object holds now.
    let Some(this) = api.get_opt(&name).await.map_err(read)? else { return Ok(Action::await_change()) };
    let uid = this.metadata.uid.clone().ok_or(Error::MissingObjectKey("uid"))?;
    let now = Timestamp::now();
    let Some(entry) = ctx.ledger.approvals(|b| b.get(&uid).cloned()) else {
        let created = this.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let age = now.duration_since(created).unsigned_abs();
        if age < GRACE {
            return Ok(Action::requeue(GRACE.saturating_sub(age).max(Duration::from_secs(1))));
        }
        let report = Report {
            phase: ApprovalPhase::Invalid,
            reason: "NotRecorded",
            message: "agentiam has no record of making this request, so it approves nothing".to_owned(),
            decided_by: None,
            approved_until: None,
            uses_left: None,
            next: None,
        };
        apply(&ctx, &api, &this, &report).await?;
        return Ok(Action::await_change());
    };

    // A human's answer, re-checked before it counts.
    if entry.state == State::Pending
        && now < entry.expires_at
        && let Some(answer) = &entry.answer
        && still_says(&this, answer)
    {
        decide_answer(&ctx, &ns, &name, &uid, &entry, answer, now).await?;
    }
    // Deadlines.
    let entry = ctx.ledger.approvals(|b| b.get(&uid).cloned()).unwrap_or(entry);
    match &entry.state {
        State::Pending if now >= entry.expires_at => {
            let why = format!("nobody answered before {}", entry.expires_at);
            record(&ctx, &ns, &name, &uid, AuditAction::ApprovalExpire, why, &[]).await?;
        }
        State::Approved { until, .. } if now >= *until => {
            let why = format!("the approval was not used before {until}");
            record(&ctx, &ns, &name, &uid, AuditAction::ApprovalExpire, why, &[]).await?;
        }
        _ => {}
    }
    let entry = ctx.ledger.approvals(|b| b.get(&uid).cloned()).unwrap_or(entry);
    let report = report_of(&entry, now);
    apply(&ctx, &api, &this, &report).await?;

    // Finished requests go after a day; the audit log keeps them for good.
    let final_at = match &entry.state {
        State::Approved { until, .. } => *until,
        _ => entry.expires_at,
    };
    let next = match report.next {
        Some(t) => t,
        None => {
            let gone_at = final_at.checked_add(RETAIN).unwrap_or(final_at);
            if now >= gone_at {
                api.delete(&name, &DeleteParams::default()).await.map_err(|source| Error::Write {
                    what: format!("ApprovalRequest {ns}/{name}"),
                    source,
                })?;
                return Ok(Action::await_change());
            }
            gone_at
        }
    };
    let left = next.duration_since(now).unsigned_abs();
    Ok(Action::requeue(left.saturating_add(Duration::from_millis(50)).min(RESYNC)))
}

/// Whether the object's `spec.decision` is still the answer admission recorded (the CEL rule keeps it
/// final; this is the re-check of that).
fn still_says(this: &ApprovalRequest, answer: &Answer) -> bool {
    this.spec.decision.as_ref().is_some_and(|d| d.verdict == answer.verdict && d.reason == answer.reason)
}

/// Re-checks `answer` and records the operator's decision about it.
async fn decide_answer(
    ctx: &Context,
    ns: &str,
    name: &str,
    uid: &str,
    entry: &approval::Entry,
    answer: &Answer,
    now: Timestamp,
) -> Result<()> {
    let by = &answer.by.username;
    let refused = match approval::check_approver(&answer.by, &entry.terms) {
        Err(e) => Some(e),
        Ok(()) => {
            let requester = Requester {
                username: by.clone(),
                uid: answer.by.uid.clone(),
                groups: answer.by.groups.clone(),
            };
            let verb = crate::names::APPROVE_VERB;
            match crate::webhook::server::may(
                Some(&ctx.client),
                &requester,
                ns,
                "approvalrequests",
                verb,
                name,
            )
            .await
            {
                Ok(true) => None,
                Ok(false) => Some(format!("{by} no longer holds the RBAC verb \"{verb}\" on this request")),
                Err(e) => return Err(Error::AccessReview(e)),
            }
        }
    };
    let reason = answer.reason.as_deref().unwrap_or("no reason given");
    if let Some(why) = refused {
        let why = format!("the answer of {by} was refused on re-check: {why}");
        return record(ctx, ns, name, uid, AuditAction::ApprovalDeny, why, &[(a::DETAIL_DECIDED_BY, by)])
            .await;
    }
    match answer.verdict {
        ApprovalVerdict::Approve => {
            let valid_for =
                SignedDuration::from_secs(i64::try_from(entry.valid_for_secs).unwrap_or(i64::MAX));
            let until = now.checked_add(valid_for).unwrap_or(now).min(
                // An approval never outlives what it approves by much: at most valid_for past the request's
                // own end.
                entry.expires_at.checked_add(valid_for).unwrap_or(entry.expires_at),
            );
            let until_s = until.to_string();
            let why = format!("approved by {by}: {reason}");
            let details = [(a::DETAIL_DECIDED_BY, by.as_str()), (a::DETAIL_APPROVED_UNTIL, until_s.as_str())];
            record(ctx, ns, name, uid, AuditAction::ApprovalApprove, why, &details).await
        }
        ApprovalVerdict::Deny => {
            let why = format!("denied by {by}: {reason}");
            record(ctx, ns, name, uid, AuditAction::ApprovalDeny, why, &[(a::DETAIL_DECIDED_BY, by)]).await
        }
    }
}

/// One durable record about the request (the ledger applies it before this returns).
async fn record(
    ctx: &Context,
    ns: &str,
    name: &str,
    uid: &str,
    action: AuditAction,
    why: String,
    details: &[(&str, &str)],
) -> Result<()> {
    let mut entry = Entry::new(ACTOR, action, request_ref(ns, name, uid), Outcome::Success, why);
    for (k, v) in details {
        entry = entry.with_detail(*k, *v);
    }
    ctx.audit.append(entry).await.map_err(Error::AuditRecord)?;
    Ok(())
}

fn report_of(entry: &approval::Entry, now: Timestamp) -> Report {
    let decided_by = entry.answer.as_ref().map(|a| a.by.clone());
    let phase = entry.phase(now);
    let (reason, message, approved_until, uses_left, next) = match &entry.state {
        State::Pending => (
            "Waiting",
            format!("waiting for an approver until {}", entry.expires_at),
            None,
            None,
            Some(entry.expires_at),
        ),
        State::Approved { by, until, uses_left } => (
            "Approved",
            format!("approved by {by}; usable {uses_left} more time(s) until {until}"),
            Some(*until),
            Some(*uses_left),
            Some(*until),
        ),
        State::Denied(why) => ("Denied", why.clone(), None, None, None),
        State::Used => ("Used", "the approval was used".to_owned(), None, Some(0), None),
        State::Expired => ("Expired", "the approval expired unused".to_owned(), None, None, None),
    };
    Report { phase, reason, message, decided_by, approved_until, uses_left, next }
}

async fn apply(
    ctx: &Context,
    api: &Api<ApprovalRequest>,
    this: &ApprovalRequest,
    report: &Report,
) -> Result<()> {
    let current = this.status.clone().unwrap_or_default();
    let mut conditions = current.conditions.clone();
    set_condition(
        &mut conditions,
        Condition {
            type_: crate::names::CONDITION_READY.to_owned(),
            status: if report.phase == ApprovalPhase::Approved { "True" } else { "False" }.to_owned(),
            reason: report.reason.to_owned(),
            message: report.message.chars().take(1024).collect(),
            observed_generation: this.metadata.generation,
            last_transition_time: Time(Timestamp::now()),
        },
    );
    let decided_at = match (&current.decided_at, &report.decided_by) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => Some(Timestamp::now().to_string()),
        (None, None) => None,
    };
    let desired = ApprovalRequestStatus {
        phase: Some(report.phase),
        decided_by: report.decided_by.clone(),
        decided_at,
        message: Some(report.message.chars().take(1024).collect()),
        approved_until: report.approved_until.map(|t| t.to_string()),
        uses_left: report.uses_left,
        observed_generation: this.metadata.generation,
        conditions,
    };
    if same(&current, &desired) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "agentiam.dev/v1alpha1",
        "kind": "ApprovalRequest",
        "status": desired,
    });
    api.patch_status(&this.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::ApplyStatus)?;
    if current.phase != Some(report.phase) {
        let type_ = match report.phase {
            ApprovalPhase::Pending | ApprovalPhase::Approved | ApprovalPhase::Used => EventType::Normal,
            _ => EventType::Warning,
        };
        let reason = match report.phase {
            ApprovalPhase::Pending => "ApprovalPending",
            ApprovalPhase::Approved => "ApprovalGranted",
            ApprovalPhase::Denied => "ApprovalDenied",
            ApprovalPhase::Used => "ApprovalUsed",
            ApprovalPhase::Expired => "ApprovalExpired",
            ApprovalPhase::Invalid => "ApprovalInvalid",
        };
        report::event(ctx, this, type_, reason, report.message.clone()).await;
    }
    Ok(())
}

/// Equal apart from condition timestamps.
fn same(a: &ApprovalRequestStatus, b: &ApprovalRequestStatus) -> bool {
    let strip = |s: &ApprovalRequestStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}
