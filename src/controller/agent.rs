//! The Agent registry controller: assigns identity, computes the trust score, drives the lifecycle, and
//! archives agents to the audit log before they go.
//!
//! Pipeline per reconcile: read (the object) -> decide (pure, `registry::status::decide`) -> close stale
//! audit intents -> write ahead (intent) -> apply status (server-side apply) -> outcome -> Event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::{Agent, AgentPhase, AgentPolicy, AgentStatus};
use crate::audit::{Entry, IntentState, ObjectRef, Outcome};
use crate::controller::{
    ACTOR, Context, Error, FIELD_MANAGER, Result, credentials, intents, scoped_api, watches,
};
use crate::registry::lifecycle::Transition;
use crate::registry::status::{CONDITION_VALID, Decision, Subject, decide};
use crate::registry::trust::trust_score;
use crate::registry::validate::redact_userinfo;

/// The finalizer that makes deletion wait until the agent is archived.
pub const FINALIZER: &str = "agentiam.dev/archive";

/// How often a settled agent is looked at again even without a change.
const RESYNC: Duration = Duration::from_secs(600);

/// Runs the Agent controller until `shutdown` resolves.
/// The Agent controller, not yet running. Its [`Controller::store`] is the in-memory view of all Agents that
/// the admission webhook reads, so pod admission never costs an API call.
pub fn controller(ctx: &Context) -> Controller<Agent> {
    let api: Api<Agent> = scoped_api(&ctx.client, ctx.config.watch_namespace.as_deref());
    // Every new issuer snapshot (a key rotation) re-reconciles every agent: trust bundles follow at once, and
    // credentials signed by a withdrawn key are replaced.
    let rotations = futures::stream::unfold(ctx.issuer.clone(), |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });
    let controller = watches::controller(api, "Agent controller: Agents").reconcile_all_on(rotations);
    // A policy change can change any agent's credential lifetime cap in its namespace (including agents it
    // no longer selects), so it re-reconciles every agent there.
    let agents = controller.store();
    let policies: Api<AgentPolicy> = scoped_api(&ctx.client, ctx.config.watch_namespace.as_deref());
    watches::watches(controller, policies, "Agent controller: AgentPolicies", move |policy: AgentPolicy| {
        let ns = policy.namespace();
        agents
            .state()
            .into_iter()
            .filter(|a| a.namespace() == ns)
            .map(|a| kube::runtime::reflector::ObjectRef::from_obj(a.as_ref()))
            .collect::<Vec<_>>()
    })
}

/// Runs the Agent controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<Agent>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(agent = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// Reconciles one Agent.
#[instrument(skip_all, fields(kind = "Agent", namespace = agent.namespace().unwrap_or_default(), name = %agent.name_any()))]
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, agent, |event| async {
        match event {
            Finalizer::Apply(agent) => apply(&agent, &ctx).await,
            Finalizer::Cleanup(agent) => archive(&agent, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Requeues transient failures with a short delay; logs and records every error as an Event.
pub fn error_policy(agent: Arc<Agent>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(agent = %agent.name_any(), error = %error, label = error.metric_label(), "reconcile failed");
    let note = error.to_string();
    let action = match error {
        // Permanent for this object: retrying cannot help until it changes.
        Error::MissingObjectKey(_) => Action::await_change(),
        // The log refuses appends until a restart; retry slowly so the warning stays visible.
        _ if ctx.audit.is_failed() => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(5)),
    };
    tokio::spawn(async move {
        publish(&ctx, &agent, EventType::Warning, "ReconcileError", note).await;
    });
    action
}

/// The audit reference for an agent.
pub fn object_ref(agent: &Agent) -> ObjectRef {
    ObjectRef {
        api_version: Agent::api_version(&()).into_owned(),
        kind: Agent::kind(&()).into_owned(),
        namespace: agent.namespace(),
        name: agent.name_any(),
        uid: agent.uid(),
    }
}

/// Publishes a Kubernetes Event about `agent`; failures are logged, never fatal.
pub(crate) async fn publish(ctx: &Context, agent: &Agent, type_: EventType, reason: &str, note: String) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &agent.object_ref(&())).await {
        warn!(error = %e, reason, "failed to publish event");
    }
}

/// Test hook (see [`crate::controller::Config`]): a pause inside a crash window.
async fn failpoint(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn subject_of(agent: &Agent) -> Result<(String, String, String, i64)> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let generation = agent.metadata.generation.ok_or(Error::MissingObjectKey("generation"))?;
    Ok((ns, agent.name_any(), uid, generation))
}

async fn apply(agent: &Agent, ctx: &Context) -> Result<Action> {
    let (ns, name, uid, generation) = subject_of(agent)?;
    // An Agent at a resourceVersion our own last status writes produced (the echo of the phase write may
    // arrive before the cache holds the credentials write after it): its status is that of our last write,
    // credentials summary included, and the Secret is as we last saw it.
    let known = ctx.known_credentials.recall(&uid, agent.resource_version().as_deref());
    let mut agent = agent.clone();
    if let (Some(status), Some(k)) = (agent.status.as_mut(), &known) {
        status.credentials = Some(k.summary.clone());
    }
    let agent = &agent;
    let mut written = Vec::new();
    let subject = Subject { namespace: &ns, name: &name, uid: &uid, generation };
    let mut decision =
        decide(&ctx.config.trust_domain, subject, &agent.spec, agent.status.as_ref(), Timestamp::now());
    // An agent that is not Active holds no credentials: say so in the same status write that changes the
    // phase, so no reader ever sees a stopped agent advertising credentials (the withdrawal follows below).
    if decision.status.phase != Some(AgentPhase::Active) {
        decision.status.credentials = None;
    }
    let key = decision.transition.map(|t| t.audit_key(&uid, generation));
    intents::resolve_for_agent(ctx, agent, &uid, key.as_deref()).await?;

    if let (Some(t), Some(key)) = (decision.transition, key.as_deref()) {
        let state = write_intent(ctx, agent, t, key, &decision).await?;
        failpoint(ctx.config.failpoint_delay_after_intent).await;
        written.extend(apply_status(ctx, &ns, &name, &decision.status).await?);
        failpoint(ctx.config.failpoint_delay_after_effect).await;
        if !matches!(state, Some(IntentState::Completed(_))) {
            let reason = format!("agent is now {}", t.to);
            ctx.audit
                .outcome(key, Outcome::Success, reason, BTreeMap::new())
                .await
                .map_err(Error::AuditOutcome)?;
        }
        info!(agent = %name, from = ?t.from, to = %t.to, spiffe_id = ?decision.status.spiffe_id, "lifecycle transition");
        let note = match (&decision.status.spiffe_id, t.to) {
            (Some(id), AgentPhase::Active) => format!("agent is Active as {id}"),
            _ => format!("agent is now {}", t.to),
        };
        publish(ctx, agent, EventType::Normal, t.event_reason(), note).await;
    } else if let Some(previous) = spec_changed(agent.status.as_ref(), generation) {
        // No phase change, but the spec did change (owner, provenance, ...): record it, write-ahead, because a
        // new trust score can widen what the agent may do.
        let key = format!("agent.update:{uid}:{generation}");
        let entry =
            Entry::new(ACTOR, "agent.update", object_ref(agent), Outcome::Pending, "agent spec changed")
                .with_detail("generation", generation.to_string())
                .with_detail("previousGeneration", previous.to_string())
                .with_detail("owner", format!("{}:{}", agent.spec.owner.kind, agent.spec.owner.name))
                .with_detail("trustScore", decision.status.trust_score.unwrap_or_default().to_string());
        let state = ctx.audit.intent(&key, entry).await.map_err(Error::AuditIntent)?;
        written.extend(apply_status(ctx, &ns, &name, &decision.status).await?);
        if !matches!(state, IntentState::Completed(_)) {
            ctx.audit
                .outcome(&key, Outcome::Success, "status updated", BTreeMap::new())
                .await
                .map_err(Error::AuditOutcome)?;
        }
    } else if agent.status.as_ref() != Some(&decision.status) {
        written.extend(apply_status(ctx, &ns, &name, &decision.status).await?);
    }
    if let Err(errors) = &decision.validation
        && newly_invalid(agent.status.as_ref(), generation)
    {
        publish(ctx, agent, EventType::Warning, "InvalidSpec", errors.to_string()).await;
    }

    // Credentials follow the phase that is now in the status: issued only to Active agents, withdrawn from
    // all others.
    let phase = decision.status.phase.unwrap_or(AgentPhase::Pending);
    let mut seen = agent.clone();
    seen.status = Some(decision.status.clone());
    let creds = credentials::reconcile(ctx, &seen, phase, known.map(|k| k.facts)).await?;
    if creds.status != decision.status.credentials {
        let mut status = decision.status.clone();
        status.credentials = creds.status.clone();
        written.extend(apply_status(ctx, &ns, &name, &status).await?);
    }
    if let (false, AgentPhase::Active, Some(summary), Some(facts)) =
        (written.is_empty(), phase, creds.status, creds.facts)
    {
        ctx.known_credentials.remember(&uid, written, summary, facts);
    }
    let requeue = creds.recheck_in.map_or(RESYNC, |r| r.clamp(Duration::from_secs(1), RESYNC));
    Ok(Action::requeue(requeue))
}

/// The previously observed generation, if the spec changed since the status was written.
fn spec_changed(current: Option<&AgentStatus>, generation: i64) -> Option<i64> {
    current.and_then(|s| s.observed_generation).filter(|g| *g != generation)
}

/// True unless the current status already reports this generation as invalid (so the Warning is published
/// once per bad generation, not on every resync).
fn newly_invalid(current: Option<&AgentStatus>, generation: i64) -> bool {
    !current.into_iter().flat_map(|s| s.conditions.iter()).any(|c| {
        c.type_ == CONDITION_VALID && c.status == "False" && c.observed_generation == Some(generation)
    })
}

/// Writes the intent for a transition. Granting transitions fail closed when the intent cannot be written;
/// ones that only take rights away go ahead (stopping an agent must not depend on the log), and the error is
/// logged.
async fn write_intent(
    ctx: &Context,
    agent: &Agent,
    t: Transition,
    key: &str,
    decision: &Decision,
) -> Result<Option<IntentState>> {
    let mut entry =
        Entry::new(ACTOR, t.action(), object_ref(agent), Outcome::Pending, format!("agent becomes {}", t.to))
            .with_detail("from", t.from.map_or("None", |p| p.as_str()))
            .with_detail("to", t.to.as_str())
            .with_detail("generation", agent.metadata.generation.unwrap_or_default().to_string())
            .with_detail("owner", format!("{}:{}", agent.spec.owner.kind, agent.spec.owner.name));
    if let Some(id) = &decision.status.spiffe_id {
        entry = entry.with_detail("spiffeID", id.clone());
    }
    if let Some(score) = decision.status.trust_score {
        entry = entry.with_detail("trustScore", score.to_string());
    }
    if let Err(errors) = &decision.validation {
        entry = entry.with_detail("validationErrors", errors.to_string());
    }
    if t.to == AgentPhase::Retired {
        entry = final_state(agent, entry);
    }
    match ctx.audit.intent(key, entry).await {
        Ok(state) => Ok(Some(state)),
        Err(e) if t.grants() => {
            publish(
                ctx,
                agent,
                EventType::Warning,
                "AuditWriteFailed",
                format!("{} refused: {e}", t.action()),
            )
            .await;
            Err(Error::AuditIntent(e))
        }
        Err(e) => {
            warn!(error = %e, action = t.action(), "audit intent failed; taking rights away regardless");
            Ok(None)
        }
    }
}

/// Adds everything known about the agent, so the archive record stands on its own after the object is gone.
fn final_state(agent: &Agent, mut entry: Entry) -> Entry {
    let s = &agent.spec;
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            entry.details.insert(k.to_owned(), v);
        }
    };
    add("owner", Some(format!("{}:{}", s.owner.kind, s.owner.name)));
    add("purpose", Some(s.purpose.clone()));
    add("environment", Some(format!("{:?}", s.environment)));
    add("finalPhase", agent.status.as_ref().and_then(|st| st.phase).map(|p| p.to_string()));
    add("spiffeID", agent.status.as_ref().and_then(|st| st.spiffe_id.clone()));
    add("trustScore", Some(trust_score(s).score.to_string()));
    add("createdAt", agent.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()));
    if let Some(p) = &s.provenance {
        add("provenance.builder", p.builder.clone());
        add("provenance.model", p.model.clone());
        add("provenance.modelProvider", p.model_provider.clone());
        add("provenance.version", p.version.clone());
        add("provenance.image", p.image.clone());
        add("provenance.sourceRepository", p.source_repository.as_deref().map(redact_userinfo));
    }
    entry
}

/// Applies the whole status; returns the Agent's new `resourceVersion`.
async fn apply_status(ctx: &Context, ns: &str, name: &str, status: &AgentStatus) -> Result<Option<String>> {
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({ "apiVersion": Agent::api_version(&()), "kind": Agent::kind(&()), "status": status });
    let written = api
        .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::ApplyStatus)?;
    Ok(written.resource_version())
}

/// Deletion: write the agent's final state to the audit log (write-ahead, keyed by UID so a retried cleanup
/// writes it once), revoke what was issued to it, then let the finalizer go.
async fn archive(agent: &Agent, ctx: &Context) -> Result<Action> {
    let (_, name, uid, _) = subject_of(agent)?;
    ctx.known_credentials.forget(&uid);
    let key = format!("agent.archive:{uid}");
    intents::resolve_for_agent(ctx, agent, &uid, Some(&key)).await?;
    let entry = final_state(
        agent,
        Entry::new(
            ACTOR,
            "agent.archive",
            object_ref(agent),
            Outcome::Pending,
            "agent deleted: archiving its final state",
        ),
    );
    // Fail closed here too: an agent must not disappear without its archive record.
    let state = ctx.audit.intent(&key, entry).await.map_err(Error::AuditIntent)?;
    failpoint(ctx.config.failpoint_delay_after_intent).await;
    // Revoke what was issued before the object goes, rather than leave it to the garbage collector: the
    // archive record then says the credentials are gone.
    let withdrawn = credentials::delete_secret(ctx, agent).await?;
    if !matches!(state, IntentState::Completed(_)) {
        let details = [("credentialsWithdrawn".to_owned(), withdrawn.to_string())].into();
        ctx.audit
            .outcome(&key, Outcome::Success, "agent archived", details)
            .await
            .map_err(Error::AuditOutcome)?;
    }
    info!(agent = %name, "agent archived");
    publish(ctx, agent, EventType::Normal, "Archived", "final state written to the audit log".into()).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn invalid_at(generation: i64) -> AgentStatus {
        AgentStatus {
            conditions: vec![Condition {
                type_: CONDITION_VALID.into(),
                status: "False".into(),
                reason: "SpecInvalid".into(),
                message: String::new(),
                observed_generation: Some(generation),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_echo_of_our_own_writes_decides_the_status_they_wrote() {
        use crate::api::{AgentSpec, CredentialStatus, Owner, PrincipalKind};
        use crate::identity::TrustDomain;
        let td = TrustDomain::parse("example.org").unwrap();
        let spec = AgentSpec::new(Owner { kind: PrincipalKind::Team, name: "support".into() }, "triage");
        let subject = Subject { namespace: "ns", name: "bot", uid: "u1", generation: 1 };
        let summary = CredentialStatus {
            secret_name: Some("bot-credentials".into()),
            issued_at: Some("1970-01-01T00:01:40.25Z".into()),
            expires_at: Some("1970-01-01T00:11:40.25Z".into()),
            key_id: Some("k1".into()),
        };
        // The phase write, then the credentials write, as the API server stores them (JSON).
        let round_trip = |s: &AgentStatus| -> AgentStatus {
            serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap()
        };
        let phase_write =
            round_trip(&decide(&td, subject, &spec, None, Timestamp::from_second(100).unwrap()).status);
        let credentials_write =
            round_trip(&AgentStatus { credentials: Some(summary.clone()), ..phase_write.clone() });

        // The echo of the phase write, seen with the summary our credentials write added (what
        // KnownCredentials gives), and the echo of the credentials write, decided again later: no change.
        let seen_early = AgentStatus { credentials: Some(summary), ..phase_write.clone() };
        for echo in [&seen_early, &credentials_write] {
            let again = decide(&td, subject, &spec, Some(echo), Timestamp::from_second(5000).unwrap());
            assert!(again.transition.is_none());
            assert_eq!(again.status, credentials_write, "nothing to write");
        }
        // Without it, the early echo looks like a status without credentials, and was written again.
        let again = decide(&td, subject, &spec, Some(&phase_write), Timestamp::from_second(5000).unwrap());
        assert_ne!(again.status, credentials_write);
    }

    #[test]
    fn invalid_spec_warning_is_published_once_per_generation() {
        assert!(newly_invalid(None, 1));
        assert!(!newly_invalid(Some(&invalid_at(1)), 1));
        assert!(newly_invalid(Some(&invalid_at(1)), 2));
    }
}
