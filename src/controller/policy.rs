//! The AgentPolicy status controller: reports what the authorization index made of each policy (compiled
//! or not, with the errors; how many agents it governs). Decisions never wait for it: the index compiles
//! policies itself, and this controller only tells humans.
//!
//! Pipeline per reconcile: read the policy and the current index summary -> compute the status (pure,
//! [`desired_status`]) -> apply it when it differs -> Event on a Ready transition.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use crate::api::{AgentPolicy, AgentPolicyStatus};
use crate::authz::PolicySummary;
use crate::controller::shared::Shared;
use crate::controller::{Context, Error, FIELD_MANAGER, Result};
use crate::registry::status::set_condition;

/// The condition type that says whether the policy compiled.
pub const CONDITION_READY: &str = crate::names::CONDITION_READY;
/// Most errors listed in status; the rest are counted in the condition message.
const MAX_LISTED_ERRORS: usize = 20;

/// Runs the controller until `shutdown` resolves. Every index rebuild re-reconciles every policy (cheap: a
/// status is written only when it changes), so matched-agent counts follow agent changes.
/// Reads the shared watch of AgentPolicies.
pub async fn run(
    ctx: Arc<Context>,
    policies: Shared<AgentPolicy>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let rebuilds = futures::stream::unfold(ctx.authz.subscribe(), |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });
    Controller::for_shared_stream(policies.applied("AgentPolicy status controller"), policies.store())
        .reconcile_all_on(rebuilds)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "policy reconcile failed");
            }
        })
        .await;
}

/// Reconciles one AgentPolicy's status.
#[instrument(skip_all, fields(kind = "AgentPolicy", namespace = policy.namespace().unwrap_or_default(), name = %policy.name_any()))]
pub async fn reconcile(policy: Arc<AgentPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = crate::metrics::global().reconcile("agentpolicy");
    let ns = policy.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = policy.name_any();
    let snapshot = ctx.authz.load();
    let summary = snapshot.policies().iter().find(|p| p.namespace == ns && p.name == name);
    // The index has not seen this generation yet; its rebuild triggers another reconcile.
    let Some(summary) = summary.filter(|s| s.generation == policy.metadata.generation) else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let current = policy.status.as_ref();
    let desired = desired_status(summary, current, Timestamp::now());
    if current.is_some_and(|c| same_status(c, &desired)) {
        return Ok(Action::await_change());
    }
    let api: Api<AgentPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({ "apiVersion": AgentPolicy::api_version(&()), "kind": AgentPolicy::kind(&()), "status": desired });
    api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::ApplyStatus)?;
    let was_ready = current.and_then(|c| ready_of(c)).map(|c| c.status == "True");
    let is_ready = ready_of(&desired).is_some_and(|c| c.status == "True");
    if was_ready != Some(is_ready) {
        let (type_, reason, note) = if is_ready {
            (
                EventType::Normal,
                "Compiled",
                format!("{} rules compiled; governs {} agents", summary.rules, summary.matched_agents),
            )
        } else {
            (
                EventType::Warning,
                "RuleErrors",
                format!("the policy denies everything until fixed: {}", summary.errors.join("; ")),
            )
        };
        super::report::event(&ctx, policy.as_ref(), type_, reason, note).await;
    }
    Ok(Action::await_change())
}

fn error_policy(policy: Arc<AgentPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    super::report::error("agentpolicy", policy, error, ctx)
}

fn ready_of(status: &AgentPolicyStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == CONDITION_READY)
}

/// Equal apart from condition timestamps (kept by [`set_condition`] anyway).
fn same_status(a: &AgentPolicyStatus, b: &AgentPolicyStatus) -> bool {
    let strip = |s: &AgentPolicyStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

/// The status a policy should have given what the index made of it. Pure.
pub fn desired_status(
    summary: &PolicySummary,
    current: Option<&AgentPolicyStatus>,
    now: Timestamp,
) -> AgentPolicyStatus {
    let generation = summary.generation.unwrap_or_default();
    let (status, reason, message) = if summary.errors.is_empty() {
        (
            "True",
            "Compiled",
            format!("{} rules compiled; governs {} agents", summary.rules, summary.matched_agents),
        )
    } else {
        let more = summary.errors.len().saturating_sub(MAX_LISTED_ERRORS);
        let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        (
            "False",
            "RuleErrors",
            format!(
                "{} rule errors{tail}; the policy denies every request of the agents it governs until fixed",
                summary.errors.len()
            ),
        )
    };
    let mut conditions = current.map(|c| c.conditions.clone()).unwrap_or_default();
    set_condition(
        &mut conditions,
        Condition {
            type_: CONDITION_READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        },
    );
    AgentPolicyStatus {
        observed_generation: Some(generation),
        matched_agents: Some(summary.matched_agents),
        conditions,
        rule_errors: summary.errors.iter().take(MAX_LISTED_ERRORS).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(errors: &[&str], matched: u32) -> PolicySummary {
        PolicySummary {
            namespace: "ns".into(),
            name: "p".into(),
            generation: Some(4),
            matched_agents: matched,
            errors: errors.iter().map(|e| e.to_string()).collect(),
            rules: if errors.is_empty() { 3 } else { 0 },
        }
    }

    #[test]
    fn compiled_policies_are_ready_with_counts() {
        let s = desired_status(&summary(&[], 2), None, Timestamp::UNIX_EPOCH);
        assert_eq!((s.observed_generation, s.matched_agents), (Some(4), Some(2)));
        let ready = ready_of(&s).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Compiled"));
        assert_eq!(ready.observed_generation, Some(4));
        assert!(s.rule_errors.is_empty());
    }

    #[test]
    fn broken_policies_say_why_and_that_they_deny() {
        let errors: Vec<String> = (0..25).map(|i| format!("rule \"r{i}\": bad")).collect();
        let refs: Vec<&str> = errors.iter().map(String::as_str).collect();
        let s = desired_status(&summary(&refs, 1), None, Timestamp::UNIX_EPOCH);
        let ready = ready_of(&s).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "RuleErrors"));
        assert!(ready.message.contains("25 rule errors (and 5 more)") && ready.message.contains("denies"));
        assert_eq!(s.rule_errors.len(), MAX_LISTED_ERRORS);
    }

    #[test]
    fn recomputing_changes_nothing() {
        let first = desired_status(&summary(&[], 2), None, Timestamp::UNIX_EPOCH);
        let later = Timestamp::UNIX_EPOCH.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
        let second = desired_status(&summary(&[], 2), Some(&first), later);
        assert_eq!(first, second, "the transition time is kept while the status holds");
        assert!(!same_status(&first, &desired_status(&summary(&[], 3), Some(&first), later)));
    }
}
