//! The Agent registry controller: assigns identity, computes the trust score, drives the lifecycle, and
//! archives agents to the audit log before they go.
//!
//! Pipeline per reconcile: read (the object, and the operator's own record of it from the ledger) -> note
//! status writes by anyone else -> decide (pure, `registry::status::decide`, from the spec and the record,
//! never from the status) -> close stale audit intents -> write ahead (the intent, which is the decision)
//! -> replace the status -> outcome -> Event -> credentials.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::{Agent, AgentPhase, AgentPolicy, AgentStatus};
use crate::audit::{Action as AuditAction, Entry, IntentKey, IntentState, Outcome};
use crate::controller::{
    ACTOR, Context, Error, FIELD_MANAGER, Result, credentials, failpoint, intents, object_ref, report,
    scoped_api, shared::Watched, watches,
};
use crate::registry::actions as a;
use crate::registry::ledger::AgentRecord;
use crate::registry::lifecycle::Transition;
use crate::registry::revocation;
use crate::registry::secret;
use crate::registry::status::{CONDITION_VALID, Decision, Subject, decide};
use crate::registry::trust::trust_score;
use crate::registry::validate::redact_userinfo;
use k8s_openapi::api::core::v1::Secret;

/// The finalizer that makes deletion wait until the agent is archived.
pub const FINALIZER: &str = crate::names::AGENT_FINALIZER;

/// How many recorded status overwrites are remembered (so each is recorded once) before the memory is reset.
const MAX_OVERWRITES_REMEMBERED: usize = 10_000;

/// How often a settled agent is looked at again even without a change.
const RESYNC: Duration = Duration::from_secs(600);

/// The Agent controller, not yet running: fed by the shared watches of Agents and AgentPolicies (the same
/// stores the policy index and the webhooks read), and its own watch of credentials Secrets.
///
/// `nudges` names Agents to reconcile because something outside their watches changed about them (what
/// discovery reports of their workload).
pub fn controller(
    ctx: &Context,
    watched: &Watched,
    nudges: Option<tokio::sync::mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<Agent>>>,
) -> Controller<Agent> {
    // Every new issuer snapshot (a key rotation) re-reconciles every agent: trust bundles follow at once, and
    // credentials signed by a withdrawn key are replaced.
    let rotations = futures::stream::unfold(ctx.issuer.clone(), |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });
    let agents = watched.agents.store();
    let controller =
        Controller::for_shared_stream(watched.agents.applied("Agent controller"), agents.clone())
            .reconcile_all_on(rotations);
    let controller = match nudges {
        Some(mut rx) => controller.reconcile_on(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))),
        None => controller,
    };
    // A policy change can change any agent's credential lifetime cap in its namespace (including agents it
    // no longer selects), so it re-reconciles every agent there.
    let controller = controller.watches_shared_stream(
        watched.policies.touched("Agent controller"),
        move |policy: Arc<AgentPolicy>| {
            let ns = policy.namespace();
            agents
                .state()
                .into_iter()
                .filter(|a| a.namespace() == ns)
                .map(|a| kube::runtime::reflector::ObjectRef::from_obj(a.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    // A Revocation created, lifted (deleted) or expired re-reconciles every agent it may reach: the phase
    // and the credentials follow the kill switch at once.
    let (reachable, reach) = (watched.agents.store(), ctx.reach.clone());
    let relevant = crate::controller::revocation::Relevant::default();
    let controller = controller.watches_shared_stream(
        watched.revocations.touched("Agent controller"),
        move |r: Arc<crate::api::Revocation>| {
            if !relevant.changed(&r) {
                return Vec::new();
            }
            let within = revocation::namespaces_reached(&r, &reach);
            reachable
                .state()
                .into_iter()
                .filter(|a| within.is_none() || a.namespace() == within)
                .map(|a| kube::runtime::reflector::ObjectRef::from_obj(a.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    // A change to a credentials Secret (a key added, a token swapped, the Secret deleted, or our label taken
    // off, which ends its match) reconciles its Agent at once, which checks it against the ledger and
    // replaces what it cannot vouch for. Not a store: the objects are only mapped to their Agent.
    let secrets: Api<Secret> = scoped_api(&ctx.client, ctx.config.watch_namespace.as_deref());
    let ours = format!("{}={FIELD_MANAGER}", secret::MANAGED_BY_LABEL);
    let (agents, known) = (controller.store(), Arc::clone(&ctx.known_credentials));
    watches::watches_labelled(
        controller,
        secrets,
        &ours,
        "Agent controller: credentials Secrets",
        move |s: Secret| {
            let name = s
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_suffix(crate::names::CREDENTIALS_SECRET_SUFFIX))?;
            let agent = kube::runtime::reflector::ObjectRef::<Agent>::new(name)
                .within(s.metadata.namespace.as_deref()?);
            // Unless this is the version this process wrote or read, the next reconcile must read it again.
            if let Some(uid) = agents.get(&agent).and_then(|a| a.metadata.uid.clone()) {
                known.secret_changed(&uid, s.metadata.resource_version.as_deref());
            }
            Some(agent)
        },
    )
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
    let _timer = crate::metrics::global().reconcile("agent");
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, agent, |event| async {
        match event {
            Finalizer::Apply(agent) => apply(&agent, &ctx).await,
            Finalizer::Cleanup(agent) => archive(&agent, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// Reports every error through the one reporter ([`report::error`]).
pub fn error_policy(agent: Arc<Agent>, error: &Error, ctx: Arc<Context>) -> Action {
    report::error("agent", agent, error, ctx)
}

/// Publishes a Kubernetes Event about `agent` (see [`report::event`]).
pub(crate) async fn publish(ctx: &Context, agent: &Agent, type_: EventType, reason: &str, note: String) {
    report::event(ctx, agent, type_, reason, note).await;
}

fn subject_of(agent: &Agent) -> Result<(String, String, String, i64)> {
    let ns = agent.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let uid = agent.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let generation = agent.metadata.generation.ok_or(Error::MissingObjectKey("generation"))?;
    Ok((ns, agent.name_any(), uid, generation))
}

async fn apply(agent: &Agent, ctx: &Context) -> Result<Action> {
    let (ns, name, uid, generation) = subject_of(agent)?;
    let recorded = ctx.ledger.get(&uid);
    record_foreign_status_writes(ctx, agent, &uid).await?;
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
    let now = Timestamp::now();
    // The same rule the policy index applies, over the same store: whatever the index refuses, the
    // lifecycle stops.
    let hold = revocation::hold_on(agent, &ctx.revocations.state(), &ctx.reach, now);
    let mut decision = decide(
        &ctx.config.trust_domain,
        subject,
        &agent.spec,
        recorded.as_deref(),
        agent.status.as_ref(),
        hold.as_ref(),
        now,
    );
    decision.status.discovery = ctx.discovery.get().and_then(|d| d.report_for(agent));
    keep_summary(&mut decision, agent.status.as_ref());
    let key = decision.transition.map(|t| t.audit_key(&uid, generation, decision.cause.as_deref()));
    intents::resolve_for_agent(ctx, &uid, key.as_deref()).await?;

    if let (Some(t), Some(key)) = (decision.transition, key.as_deref()) {
        let state = write_intent(ctx, agent, t, key, &decision, now).await?;
        failpoint(ctx.config.failpoint_delay_after_intent).await;
        written.extend(apply_status(ctx, &ns, &name, &decision.status).await?);
        failpoint(ctx.config.failpoint_delay_after_effect).await;
        match state {
            Some(IntentState::Fresh(_)) => {
                let reason = format!("agent is now {}", t.to);
                ctx.audit
                    .outcome(key, Outcome::Success, reason, BTreeMap::new())
                    .await
                    .map_err(Error::AuditOutcome)?;
            }
            // Written by an earlier attempt that was interrupted: it took effect then, the status follows now.
            Some(IntentState::Pending(_)) => {
                let reason = format!("confirmed after an interruption: the agent is {}", t.to);
                let details = [("resolvedBy".to_owned(), "intent-recovery".to_owned())].into();
                ctx.audit
                    .outcome(key, Outcome::Success, reason, details)
                    .await
                    .map_err(Error::AuditOutcome)?;
            }
            Some(IntentState::Completed(_)) | None => {}
        }
        info!(agent = %name, from = ?t.from, to = %t.to, spiffe_id = ?decision.status.spiffe_id, "lifecycle transition");
        let note = match (&decision.status.spiffe_id, t.to, &decision.hold) {
            (_, _, Some(h)) => format!("agent is now {}: Revocation {} holds it", t.to, h.describe()),
            (Some(id), AgentPhase::Active, None) => format!("agent is Active as {id}"),
            _ => format!("agent is now {}", t.to),
        };
        publish(ctx, agent, EventType::Normal, t.event_reason(), note).await;
    } else if let Some(previous) = spec_changed(recorded.as_deref(), generation) {
        // No phase change, but the spec did change (owner, provenance, ...): record it, write-ahead, because a
        // new trust score can widen what the agent may do (decisions read the recorded one).
        let key =
            IntentKey::Agent { action: AuditAction::AgentUpdate, uid: uid.clone(), generation, cause: None }
                .to_string();
        let entry =
            Entry::new(ACTOR, a::AGENT_UPDATE, object_ref(agent), Outcome::Pending, "agent spec changed")
                .with_detail(
                    "previousGeneration",
                    previous.map_or_else(|| "unknown".into(), |g| g.to_string()),
                )
                .with_detail("owner", agent.spec.owner_line());
        let entry = with_decision(entry, generation, &decision, now);
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

    // Credentials follow the phase just decided: issued only to Active agents, withdrawn from all others.
    let phase = decision.status.phase.unwrap_or(AgentPhase::Pending);
    let mut seen = agent.clone();
    seen.status = Some(decision.status.clone());
    let creds = credentials::reconcile(ctx, &seen, phase, known).await?;
    if creds.status != decision.status.credentials {
        let mut status = decision.status.clone();
        status.credentials = creds.status.clone();
        written.extend(apply_status(ctx, &ns, &name, &status).await?);
    }
    if let (false, AgentPhase::Active, Some(summary), Some(facts)) =
        (written.is_empty(), phase, creds.status, creds.facts)
    {
        ctx.known_credentials.remember(&uid, written, summary, facts, creds.secret_version);
    }
    let requeue = creds.recheck_in.map_or(RESYNC, |r| r.clamp(Duration::from_secs(1), RESYNC));
    Ok(Action::requeue(requeue))
}

/// An agent that is not Active holds no credentials: its status says so in the same write that changes the
/// phase, so no reader ever sees a stopped agent advertising credentials (the withdrawal follows). An Active
/// one keeps the summary it shows until the credentials step, which reads the ledger and the Secret, states
/// the real one in the same reconcile (so a forged summary lasts no longer than that).
fn keep_summary(decision: &mut Decision, found: Option<&AgentStatus>) {
    if decision.status.phase == Some(AgentPhase::Active) && decision.transition.is_none() {
        decision.status.credentials = found.and_then(|s| s.credentials.clone());
    }
}

/// The status writes of managers other than the operator that still own fields of this Agent's status:
/// someone with `agents/status` wrote them. Nothing reads them as facts (decisions read the ledger), and the
/// next status write replaces them; this records that it happened, once per write.
fn foreign_status_writes(agent: &Agent) -> Vec<&ManagedFieldsEntry> {
    agent
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter(|m| m.manager.as_deref() != Some(FIELD_MANAGER))
        .collect()
}

/// The status fields a managed-fields entry owns, top level only (`phase`, `credentials`, ...).
fn owned_status_fields(entry: &ManagedFieldsEntry) -> String {
    let fields = entry.fields_v1.as_ref().map(|f| &f.0);
    let status = fields.and_then(|f| f.get("f:status")).and_then(|s| s.as_object());
    let mut names: Vec<&str> =
        status.into_iter().flatten().filter_map(|(k, _)| k.strip_prefix("f:")).collect();
    names.sort_unstable();
    names.join(",")
}

async fn record_foreign_status_writes(ctx: &Context, agent: &Agent, uid: &str) -> Result<()> {
    for entry in foreign_status_writes(agent) {
        let manager = entry.manager.clone().unwrap_or_else(|| "unknown".into());
        let at = entry.time.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let seen = format!("{uid}|{manager}|{at}|{}", entry.operation.as_deref().unwrap_or_default());
        let fresh = ctx
            .overwrites_seen
            .lock()
            .map(|mut s| {
                // Bounded: someone writing status over and over (each write has its own time) must not grow
                // the operator's memory. Forgetting only means a write may be recorded a second time.
                if s.len() >= MAX_OVERWRITES_REMEMBERED {
                    s.clear();
                }
                s.insert(seen)
            })
            .unwrap_or(true);
        if !fresh {
            continue;
        }
        let fields = owned_status_fields(entry);
        warn!(agent = %agent.name_any(), %manager, %fields, "someone else wrote this agent's status; overwriting it");
        let record = Entry::new(
            ACTOR,
            a::AGENT_STATUS_OVERWRITTEN,
            object_ref(agent),
            Outcome::Denied,
            "the status was written by someone other than the operator; it is not a fact and is overwritten",
        )
        .with_detail("manager", manager.clone())
        .with_detail("operation", entry.operation.clone().unwrap_or_default())
        .with_detail("writtenAt", at)
        .with_detail("fields", fields.clone());
        ctx.audit.append(record).await.map_err(Error::AuditRecord)?;
        let note = format!(
            "status fields [{fields}] written by {manager:?} are overwritten: only the operator writes status"
        );
        publish(ctx, agent, EventType::Warning, "StatusOverwritten", note).await;
    }
    Ok(())
}

/// The details every lifecycle and update record carries: what the ledger takes in as the decision.
fn with_decision(entry: Entry, generation: i64, decision: &Decision, now: Timestamp) -> Entry {
    let mut entry = entry
        .with_detail(a::DETAIL_GENERATION, generation.to_string())
        .with_detail(a::DETAIL_VALID, decision.validation.is_ok().to_string())
        .with_detail(a::DETAIL_DECIDED_AT, now.to_string());
    if let Some(score) = decision.status.trust_score {
        entry = entry.with_detail(a::DETAIL_TRUST_SCORE, score.to_string());
    }
    entry
}

/// `Some(previous recorded generation)` if the operator has not recorded a decision for this generation
/// yet (the inner None: its records predate the generation detail).
fn spec_changed(recorded: Option<&AgentRecord>, generation: i64) -> Option<Option<i64>> {
    let last = recorded.and_then(|r| r.generation);
    (last != Some(generation)).then_some(last)
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
    now: Timestamp,
) -> Result<Option<IntentState>> {
    let entry =
        Entry::new(ACTOR, t.action(), object_ref(agent), Outcome::Pending, format!("agent becomes {}", t.to))
            .with_detail("from", t.from.map_or("None", |p| p.as_str()))
            .with_detail(a::DETAIL_TO, t.to.as_str())
            .with_detail("owner", agent.spec.owner_line());
    let mut entry = with_decision(entry, agent.metadata.generation.unwrap_or_default(), decision, now);
    if let Some(id) = &decision.status.spiffe_id {
        entry = entry.with_detail("spiffeID", id.clone());
    }
    if let Err(errors) = &decision.validation {
        entry = entry.with_detail("validationErrors", errors.to_string());
    }
    match (&decision.hold, &decision.cause) {
        (Some(h), _) => {
            entry = entry.with_detail(a::DETAIL_REVOCATION, h.describe());
            if let Some(uid) = &h.uid {
                entry = entry.with_detail(a::DETAIL_REVOCATION_UID, uid.to_string());
            }
        }
        (None, Some(lifted)) => entry = entry.with_detail(a::DETAIL_LIFTED_REVOCATION_UID, lifted.clone()),
        (None, None) => {}
    }
    if t.to == AgentPhase::Retired {
        entry = final_state(agent, ctx.ledger.get(&agent.uid().unwrap_or_default()).as_deref(), entry);
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
            warn!(error = %e, action = %t.action(), "audit intent failed; taking rights away regardless");
            Ok(None)
        }
    }
}

/// Adds everything known about the agent, so the archive record stands on its own after the object is gone.
/// The phase is the one the operator recorded, not the status's.
fn final_state(agent: &Agent, recorded: Option<&AgentRecord>, mut entry: Entry) -> Entry {
    let s = &agent.spec;
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            entry.details.insert(k.to_owned(), v);
        }
    };
    add("owner", Some(s.owner_line()));
    add("purpose", Some(s.purpose.clone()));
    add("environment", Some(format!("{:?}", s.environment)));
    add("finalPhase", recorded.and_then(|r| r.phase).map(|p| p.to_string()));
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

/// Replaces the whole status (a JSON patch `add` of `/status`, which replaces it when present); returns the
/// Agent's new `resourceVersion`. Not server-side apply: an apply never clears a field another manager set,
/// so a forged `credentials` or condition would outlive every write.
async fn apply_status(ctx: &Context, ns: &str, name: &str, status: &AgentStatus) -> Result<Option<String>> {
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), ns);
    let value = serde_json::to_value(status)
        .map_err(|e| Error::Credentials(format!("failed to encode status: {e}")))?;
    let patch: json_patch::Patch =
        serde_json::from_value(json!([{ "op": "add", "path": "/status", "value": value }]))
            .map_err(|e| Error::Credentials(format!("failed to build the status patch: {e}")))?;
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let written =
        api.patch_status(name, &params, &Patch::<()>::Json(patch)).await.map_err(Error::ApplyStatus)?;
    Ok(written.resource_version())
}

/// Deletion: write the agent's final state to the audit log (write-ahead, keyed by UID so a retried cleanup
/// writes it once), revoke what was issued to it, then let the finalizer go.
async fn archive(agent: &Agent, ctx: &Context) -> Result<Action> {
    let (_, name, uid, _) = subject_of(agent)?;
    ctx.known_credentials.forget(&uid);
    let key = IntentKey::Archive { uid: uid.clone() }.to_string();
    intents::resolve_for_agent(ctx, &uid, Some(&key)).await?;
    let entry = final_state(
        agent,
        ctx.ledger.get(&uid).as_deref(),
        Entry::new(
            ACTOR,
            a::AGENT_ARCHIVE,
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
            issued_at: Some("1970-01-01T00:01:40Z".into()),
            expires_at: Some("1970-01-01T00:11:40Z".into()),
            key_id: Some("k1".into()),
        };
        // The phase write, then the credentials write, as the API server stores them (JSON).
        let round_trip = |s: &AgentStatus| -> AgentStatus {
            serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap()
        };
        let t0 = Timestamp::from_second(100).unwrap();
        let first = decide(&td, subject, &spec, None, None, None, t0);
        let phase_write = round_trip(&first.status);
        let credentials_write =
            round_trip(&AgentStatus { credentials: Some(summary.clone()), ..phase_write.clone() });
        // What the ledger holds once the activation was recorded.
        let record = AgentRecord {
            phase: first.status.phase,
            phase_since: Some(t0),
            generation: Some(1),
            trust_score: first.status.trust_score,
            valid: Some((true, t0)),
            held_by: None,
            trust_penalty: 0,
            issuances: Vec::new(),
        };

        // The echo of the phase write, seen with the summary our credentials write added (what
        // KnownCredentials gives), and the echo of the credentials write, decided again later: no change.
        let later = Timestamp::from_second(5000).unwrap();
        let seen_early = AgentStatus { credentials: Some(summary), ..phase_write.clone() };
        for echo in [&seen_early, &credentials_write] {
            let mut again = decide(&td, subject, &spec, Some(&record), Some(echo), None, later);
            keep_summary(&mut again, Some(echo));
            assert!(again.transition.is_none());
            assert_eq!(again.status, credentials_write, "nothing to write");
        }
        // Without it, the early echo looks like a status without credentials, and was written again.
        let mut again = decide(&td, subject, &spec, Some(&record), Some(&phase_write), None, later);
        keep_summary(&mut again, Some(&phase_write));
        assert_ne!(again.status, credentials_write);
    }

    #[test]
    fn status_writes_by_others_are_found_in_managed_fields() {
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "bot", "namespace": "ns", "managedFields": [
                {"manager": FIELD_MANAGER, "operation": "Update", "subresource": "status",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}},
                {"manager": "kubectl-patch", "operation": "Update", "subresource": "status",
                 "time": "2026-12-01T00:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:credentials": {"f:keyId": {}}, "f:phase": {}}}},
                {"manager": "kubectl-edit", "operation": "Update",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:purpose": {}}}},
            ]},
            "spec": {"owner": {"kind": "Team", "name": "t"}, "purpose": "p"},
        }))
        .unwrap();
        let foreign = foreign_status_writes(&agent);
        assert_eq!(foreign.len(), 1, "our own writes and spec edits are not status forgeries");
        assert_eq!(foreign[0].manager.as_deref(), Some("kubectl-patch"));
        assert_eq!(owned_status_fields(foreign[0]), "credentials,phase");
    }

    #[test]
    fn invalid_spec_warning_is_published_once_per_generation() {
        assert!(newly_invalid(None, 1));
        assert!(!newly_invalid(Some(&invalid_at(1)), 1));
        assert!(newly_invalid(Some(&invalid_at(1)), 2));
    }
}
