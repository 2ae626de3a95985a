//! The Revocation controller: checks that every effect of a Revocation is in place, completes the ones
//! that are its own (evicting pods, asking for the emergency key rotation), and reports it.
//!
//! The effects themselves belong where the state lives, and follow the kill switch by watching the same
//! Revocations: the policy index refuses the targets at once (the decision API, the token endpoint,
//! introspection); the Agent controller records the phases (Suspended, Revoked) and withdraws credentials;
//! the Delegation controller ends the chains. All of them ask [`crate::registry::revocation`] whom a
//! Revocation stops, so this controller can check their work with the same rule instead of redoing it.
//!
//! Pipeline per reconcile: finalizer (its cleanup records the lift) -> expired? record the lift, report
//! Expired -> re-check what admission checked -> targets (agents, delegations) -> for each, is it refused by
//! the index, recorded stopped, its credentials gone -> stopWorkloads: evict its pods -> emergency: ask for
//! the key rotation once -> status (Pending until everything is in place, then Enforced) -> on the first
//! Enforced, an audit record and an Event with the counts and the decision API's latency.
//!
//! Nothing here grants anything, so nothing waits on the audit log's intents: records are appended, and a
//! log that refuses appends fails the reconcile (retried) without holding back any effect.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::{
    Agent, AgentPhase, Delegation, DelegationPhase, Revocation, RevocationMode, RevocationPhase,
    RevocationStatus,
};
use crate::audit::{Action as AuditAction, Entry, ObjectRef as AuditRef, Outcome};
use crate::controller::shared::Watched;
use crate::controller::{ACTOR, Context, Error, FIELD_MANAGER, Result, report};
use crate::names;
use crate::registry::revocation as rule;
use crate::registry::status::set_condition;

/// The finalizer that makes deletion wait until the lift is recorded.
pub const FINALIZER: &str = "agentiam.dev/revocation";

/// How soon a Revocation whose effects are not all in place is looked at again.
const RECHECK: Duration = Duration::from_millis(250);
/// How often an enforced Revocation is looked at again (a selector may match new agents; they are stopped
/// by the index and the Agent controller at once, this only refreshes the counts).
const RESYNC: Duration = Duration::from_secs(60);
/// How many unfinished effects the status message names.
const MESSAGE_EXAMPLES: usize = 3;

/// What the controller needs beyond the shared context: the stores of the targets.
pub struct Revocations {
    ctx: Arc<Context>,
    agents: Store<Agent>,
    delegations: Store<Delegation>,
    /// Per Revocation UID, the credentials (Secret UIDs, and delegated tokens as `delegation UID`) seen
    /// present on its targets while it held, so the count of withdrawals is of what was really there.
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

/// The Revocation controller, not yet running, and what its reconciles read.
pub fn controller(ctx: &Arc<Context>, watched: &Watched) -> (Controller<Revocation>, Arc<Revocations>) {
    let controller = Controller::for_shared_stream(
        watched.revocations.applied("Revocation controller"),
        watched.revocations.store(),
    );
    let state = Arc::new(Revocations {
        ctx: Arc::clone(ctx),
        agents: watched.agents.store(),
        delegations: watched.delegations.store(),
        seen: Mutex::new(HashMap::new()),
    });
    (controller, state)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<Revocation>,
    state: Arc<Revocations>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, state)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "revocation reconcile failed");
            }
        })
        .await;
}

fn error_policy(r: Arc<Revocation>, error: &Error, state: Arc<Revocations>) -> Action {
    report::error("revocation", r, error, Arc::clone(&state.ctx))
}

/// Reconciles one Revocation.
#[instrument(skip_all, fields(kind = "Revocation", namespace = r.namespace().unwrap_or_default(), name = %r.name_any()))]
pub async fn reconcile(r: Arc<Revocation>, state: Arc<Revocations>) -> Result<Action> {
    let _timer = crate::metrics::global().reconcile("revocation");
    let ns = r.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<Revocation> = Api::namespaced(state.ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, r, |event| async {
        match event {
            Finalizer::Apply(r) => apply(&r, &state).await,
            Finalizer::Cleanup(r) => lift(&r, &state, "the Revocation was deleted").await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// What one look at the targets found.
#[derive(Debug, Default)]
struct Progress {
    agents: u32,
    delegations: u32,
    /// Effects not yet in place, in words (the first few are shown).
    pending: Vec<String>,
    /// Credentials seen present now (Secret UIDs, delegation UIDs with a token).
    present: HashSet<String>,
    /// Pods evicted by this reconcile.
    evicted: u32,
}

async fn apply(cached: &Revocation, state: &Revocations) -> Result<Action> {
    let ctx = &state.ctx;
    // Fresh: the status carries what earlier reconciles did (pods evicted, the rotation asked for), and
    // the cache may not hold the last write yet.
    let api: Api<Revocation> = Api::namespaced(ctx.client.clone(), &ns_of(cached));
    let name = cached.name_any();
    let read = |source| Error::Read { what: format!("Revocation {}/{name}", ns_of(cached)), source };
    let Some(fresh) = api.get_opt(&name).await.map_err(read)? else { return Ok(Action::await_change()) };
    let r = &fresh;
    let uid = r.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let now = Timestamp::now();
    if !rule::in_force(r, now) {
        // Only a Suspend past its expiry gets here (deletion runs the cleanup instead).
        if r.status.as_ref().and_then(|s| s.phase) != Some(RevocationPhase::Expired) {
            lift(r, state, "its expiresAt passed").await?;
            write_status(
                ctx,
                r,
                RevocationPhase::Expired,
                "Expired",
                "the suspension expired and is lifted".into(),
                None,
                now,
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    let reach = &ctx.reach;
    let mut notes = Vec::new();
    if r.spec.target.namespace_selector.is_some() && !rule::may_reach_other_namespaces(r, reach) {
        notes.push(format!(
            "spec.target.namespaceSelector is ignored: only a Revocation in the operator's namespace {:?} reaches other namespaces",
            ctx.config.operator_namespace
        ));
    }
    let rotate = r.spec.emergency == Some(true);
    if rotate && !rule::may_rotate_keys(r, reach) {
        notes.push(format!(
            "spec.emergency is refused: only a Revocation in the operator's namespace {:?} may rotate the signing keys",
            ctx.config.operator_namespace
        ));
    }

    let mut progress = Progress::default();
    let stopped: Vec<Arc<Agent>> =
        state.agents.state().into_iter().filter(|a| rule::stops_agent(r, a, reach, now)).collect();
    check_agents(state, r, &stopped, &mut progress).await?;
    check_delegations(state, r, &stopped, now, &mut progress).await?;
    if r.spec.stop_workloads == Some(true) {
        evict(state, r, &stopped, &mut progress).await?;
    }
    if rotate && rule::may_rotate_keys(r, reach) {
        rotate_keys(state, r).await?;
    }

    // Withdrawals: what was seen present on an earlier look and is gone now.
    let withdrawn = state
        .seen
        .lock()
        .map(|mut seen| {
            let set = seen.entry(uid.clone()).or_default();
            set.extend(progress.present.iter().cloned());
            set.iter().filter(|c| !progress.present.contains(*c)).count()
        })
        .unwrap_or_default();
    let previous = r.status.clone().unwrap_or_default();
    let mut status = RevocationStatus {
        affected_agents: Some(progress.agents),
        affected_delegations: Some(progress.delegations),
        credentials_withdrawn: Some(
            u32::try_from(withdrawn).unwrap_or(u32::MAX).max(previous.credentials_withdrawn.unwrap_or(0)),
        ),
        pods_evicted: Some(previous.pods_evicted.unwrap_or(0).saturating_add(progress.evicted)),
        ..previous.clone()
    };
    // The decision API's instants are those of the first enforcement; a restart observes it again later.
    if status.decision_api_enforced_at.is_none()
        && let Some(e) = ctx.authz.enforcement.get(&uid)
    {
        let enforced = e.enforced_at;
        status.observed_at = Some(format!("{:.3}", e.observed_at));
        status.decision_api_enforced_at = Some(format!("{enforced:.3}"));
        status.decision_api_latency_ms =
            Some(u64::try_from(enforced.duration_since(e.observed_at).as_millis()).unwrap_or(0));
    }
    if status.decision_api_enforced_at.is_none() {
        progress.pending.push("the decision API has not loaded it yet".into());
    }
    let done = progress.pending.is_empty();
    let (phase, reason, mut message) = if done {
        let what = match r.spec.mode {
            RevocationMode::Suspend => "suspended",
            RevocationMode::Revoke => "revoked",
        };
        (
            RevocationPhase::Enforced,
            "Enforced",
            format!("{} agents {what}, {} delegations ended", progress.agents, progress.delegations),
        )
    } else {
        let shown: Vec<&str> = progress.pending.iter().take(MESSAGE_EXAMPLES).map(String::as_str).collect();
        let more = progress.pending.len().saturating_sub(MESSAGE_EXAMPLES);
        let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        (RevocationPhase::Pending, "Enforcing", format!("waiting for: {}{tail}", shown.join("; ")))
    };
    for n in &notes {
        message.push_str(". ");
        message.push_str(n);
    }
    let first_enforced = done && previous.enforced_at.is_none();
    if first_enforced {
        status.enforced_at = Some(format!("{now:.3}"));
        record_enforced(ctx, r, &status).await?;
    }
    write_status(ctx, r, phase, reason, message, Some(status.clone()), now).await?;
    if first_enforced {
        let latency =
            status.decision_api_latency_ms.map_or_else(String::new, |ms| format!(" (decision API: {ms} ms)"));
        let note = format!(
            "{} agents, {} delegations, {} credentials withdrawn, {} pods evicted{latency}",
            progress.agents,
            progress.delegations,
            status.credentials_withdrawn.unwrap_or(0),
            status.pods_evicted.unwrap_or(0)
        );
        info!(revocation = %r.name_any(), %note, "revocation enforced");
        report::event(ctx, r, EventType::Normal, "Enforced", note).await;
    }
    for n in notes.iter().filter(|_| first_enforced) {
        report::event(ctx, r, EventType::Warning, "FieldIgnored", n.clone()).await;
    }
    if !done {
        return Ok(Action::requeue(RECHECK));
    }
    let until_expiry = rule::expires_at(r)
        .map(|end| end.duration_since(now).unsigned_abs().saturating_add(Duration::from_millis(50)));
    Ok(Action::requeue(until_expiry.map_or(RESYNC, |d| d.min(RESYNC))))
}

/// For each stopped agent: refused by the index, its stop recorded by the Agent controller, its
/// credentials Secret gone.
async fn check_agents(
    state: &Revocations,
    r: &Revocation,
    stopped: &[Arc<Agent>],
    progress: &mut Progress,
) -> Result<()> {
    let ctx = &state.ctx;
    let snapshot = ctx.authz.load();
    let mut secrets_by_ns: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    for agent in stopped {
        let (Some(ns), Some(uid)) = (agent.namespace(), agent.uid()) else { continue };
        progress.agents += 1;
        let name = agent.name_any();
        if snapshot.agent(&uid).is_none_or(|f| f.revoked_by.is_none()) {
            progress.pending.push(format!("the decision API to refuse {ns}/{name}"));
        }
        let phase = ctx.ledger.get(&uid).and_then(|rec| rec.phase);
        let stopped_ok = match r.spec.mode {
            RevocationMode::Revoke => matches!(phase, Some(AgentPhase::Revoked | AgentPhase::Retired)),
            RevocationMode::Suspend => {
                matches!(phase, Some(AgentPhase::Suspended | AgentPhase::Revoked | AgentPhase::Retired))
            }
        };
        if !stopped_ok {
            progress.pending.push(format!("Agent {ns}/{name} to be recorded stopped"));
        }
        if !secrets_by_ns.contains_key(&ns) {
            secrets_by_ns.insert(ns.clone(), credentials_secrets(ctx, &ns).await?);
        }
        let secret = names::credentials_secret(&name);
        if let Some(secret_uid) = secrets_by_ns.get(&ns).and_then(|s| s.get(&secret)) {
            progress.present.insert(secret_uid.clone());
            progress.pending.push(format!("Secret {ns}/{secret} to be deleted"));
        }
    }
    Ok(())
}

/// The operator's credentials Secrets in `ns`, name to UID (one metadata list per namespace).
async fn credentials_secrets(ctx: &Context, ns: &str) -> Result<HashMap<String, String>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{}={FIELD_MANAGER}", names::MANAGED_BY_LABEL);
    let list = secrets
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Read { what: format!("credentials Secrets in {ns}"), source })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.name?, s.metadata.uid.unwrap_or_default())))
        .filter(|(n, _)| n.ends_with(names::CREDENTIALS_SECRET_SUFFIX))
        .collect())
}

/// The delegations it ends: targeted by delegationRef, or granted to an agent it stops, and everything
/// below them. Each must be recorded not Active by the Delegation controller, its delegated token gone.
async fn check_delegations(
    state: &Revocations,
    r: &Revocation,
    stopped: &[Arc<Agent>],
    now: Timestamp,
    progress: &mut Progress,
) -> Result<()> {
    let ctx = &state.ctx;
    let all = state.delegations.state();
    let stopped_agents: HashSet<(String, String)> =
        stopped.iter().filter_map(|a| Some((a.namespace()?, a.name_any()))).collect();
    let mut ended: Vec<Arc<Delegation>> = all
        .iter()
        .filter(|d| {
            let Some(ns) = d.namespace() else { return false };
            stopped_agents.contains(&(ns.clone(), d.spec.agent_ref.name.clone()))
                || rule::targets_delegation(r, &ns, &d.name_any(), &ctx.reach, now)
        })
        .cloned()
        .collect();
    // Descendants, by parentRef within a namespace (cycles cannot grow the set: each is added once).
    let mut names: HashSet<(String, String)> =
        ended.iter().filter_map(|d| Some((d.namespace()?, d.name_any()))).collect();
    let mut frontier = ended.clone();
    while let Some(parent) = frontier.pop() {
        let (pns, pname) = (parent.namespace(), parent.name_any());
        for child in all
            .iter()
            .filter(|c| c.namespace() == pns && c.spec.parent_ref.as_ref().is_some_and(|p| p.name == pname))
        {
            if names.insert((child.namespace().unwrap_or_default(), child.name_any())) {
                ended.push(Arc::clone(child));
                frontier.push(Arc::clone(child));
            }
        }
    }
    let mut tokens: HashMap<(String, String), Option<Secret>> = HashMap::new();
    for d in &ended {
        let (Some(ns), Some(uid)) = (d.namespace(), d.uid()) else { continue };
        progress.delegations += 1;
        let name = d.name_any();
        let recorded = ctx.ledger.delegation_phase(&uid).map(|rec| rec.phase);
        if recorded.is_none_or(|p| p == DelegationPhase::Active) {
            progress.pending.push(format!("Delegation {ns}/{name} to be recorded ended"));
        }
        let secret_name = names::delegations_secret(&d.spec.agent_ref.name);
        let key = (ns.clone(), secret_name.clone());
        if !tokens.contains_key(&key) {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            let found = secrets
                .get_opt(&secret_name)
                .await
                .map_err(|source| Error::Read { what: format!("Secret {ns}/{secret_name}"), source })?;
            tokens.insert(key.clone(), found);
        }
        let token_key = names::delegation_token_key(&name);
        let held = tokens
            .get(&key)
            .and_then(Option::as_ref)
            .and_then(|s| s.data.as_ref())
            .is_some_and(|d| d.contains_key(&token_key));
        if held {
            progress.present.insert(uid);
            progress.pending.push(format!("the delegated token of {ns}/{name} to be withdrawn"));
        }
    }
    Ok(())
}

/// stopWorkloads: evicts every pod of every stopped agent (the pod webhook already refuses new ones).
/// Each eviction is recorded first; a pod still terminating is waited for.
async fn evict(
    state: &Revocations,
    r: &Revocation,
    stopped: &[Arc<Agent>],
    progress: &mut Progress,
) -> Result<()> {
    let ctx = &state.ctx;
    for agent in stopped {
        let Some(ns) = agent.namespace() else { continue };
        let name = agent.name_any();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let selector = format!("{}={name}", names::AGENT_LABEL);
        let list = pods
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| Error::Read { what: format!("pods of Agent {ns}/{name}"), source })?;
        for pod in list.items {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                progress.pending.push(format!("pod {ns}/{pod_name} to terminate"));
                continue;
            }
            let entry = Entry::new(
                ACTOR,
                AuditAction::RevocationEvict,
                pod_ref(&ns, &pod_name, pod.metadata.uid.as_deref()),
                Outcome::Success,
                format!("evicted: Revocation {}/{} stops Agent {name}", ns_of(r), r.name_any()),
            )
            .with_detail("revocation", format!("{}/{}", ns_of(r), r.name_any()))
            .with_detail("agent", name.clone());
            ctx.audit.append(entry).await.map_err(Error::AuditRecord)?;
            match pods.evict(&pod_name, &EvictParams::default()).await {
                Ok(_) => {
                    progress.evicted += 1;
                    report::event(
                        ctx,
                        r,
                        EventType::Normal,
                        "PodEvicted",
                        format!("evicted pod {ns}/{pod_name} of Agent {name}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                // 429: a PodDisruptionBudget refuses it for now; try again at the next look.
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    progress.pending.push(format!(
                        "pod {ns}/{pod_name} (a PodDisruptionBudget refuses its eviction for now)"
                    ));
                    continue;
                }
                Err(source) => {
                    return Err(Error::Write { what: format!("eviction of pod {ns}/{pod_name}"), source });
                }
            }
            progress.pending.push(format!("pod {ns}/{pod_name} to be gone"));
        }
    }
    Ok(())
}

/// emergency: asks the key manager for the emergency rotation, once per Revocation: the
/// `revocation.rotate-keys` record says it was asked (the ledger, never the status, which anyone with
/// `revocations/status` could forge), and the key manager removes the annotation once it has rotated.
/// The condition KeysRotated reports it.
async fn rotate_keys(state: &Revocations, r: &Revocation) -> Result<()> {
    let ctx = &state.ctx;
    let uid = r.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let reported = r
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .any(|c| c.type_ == CONDITION_KEYS_ROTATED && c.status == "True");
    if ctx.ledger.rotation_asked(&uid) {
        if !reported {
            report_rotation(ctx, r).await?;
        }
        return Ok(());
    }
    let why = format!("revocation {}/{}", ns_of(r), r.name_any());
    let entry = Entry::new(
        ACTOR,
        AuditAction::RevocationRotateKeys,
        revocation_ref(r),
        Outcome::Success,
        "emergency key rotation requested by the Revocation",
    );
    ctx.audit.append(entry).await.map_err(Error::AuditRecord)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.operator_namespace);
    let patch = json!({"metadata": {"annotations": {names::EMERGENCY_ROTATION_ANNOTATION: why}}});
    secrets
        .patch(names::SIGNING_KEYS_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Write { what: format!("Secret {}", names::SIGNING_KEYS_SECRET), source })?;
    let note = "asked for the emergency rotation of the signing keys: every credential signed by the withdrawn keys stops verifying".to_owned();
    warn!(revocation = %r.name_any(), "emergency key rotation requested");
    report::event(ctx, r, EventType::Warning, "EmergencyRotation", note).await;
    report_rotation(ctx, r).await
}

/// Sets the condition KeysRotated (under its own field manager, so the status apply keeps it).
async fn report_rotation(ctx: &Context, r: &Revocation) -> Result<()> {
    let api: Api<Revocation> = Api::namespaced(ctx.client.clone(), &ns_of(r));
    let condition = Condition {
        type_: CONDITION_KEYS_ROTATED.into(),
        status: "True".into(),
        reason: "Requested".into(),
        message: "the emergency key rotation was requested".into(),
        observed_generation: r.metadata.generation,
        last_transition_time: Time(Timestamp::now()),
    };
    let patch = json!({
        "apiVersion": Revocation::api_version(&()),
        "kind": Revocation::kind(&()),
        "status": {"conditions": [condition]},
    });
    api.patch_status(&r.name_any(), &PatchParams::apply(KEYS_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::ApplyStatus)?;
    Ok(())
}

/// Condition type: the emergency key rotation was asked for.
pub const CONDITION_KEYS_ROTATED: &str = "KeysRotated";
/// The field manager of the KeysRotated condition, apart from the rest of the status so that the status
/// apply (which lists only Ready) does not remove it.
const KEYS_MANAGER: &str = "agentiam-operator-keys";

/// Records that the Revocation stopped holding (deleted, or expired), once per cause.
async fn lift(r: &Revocation, state: &Revocations, why: &str) -> Result<Action> {
    let ctx = &state.ctx;
    if let Some(uid) = r.uid()
        && let Ok(mut seen) = state.seen.lock()
    {
        seen.remove(&uid);
    }
    let after = match r.spec.mode {
        RevocationMode::Suspend => "its agents resume unless something else stops them",
        RevocationMode::Revoke => {
            "the agents it revoked stay revoked; new ones may be registered under their names"
        }
    };
    let entry = Entry::new(
        ACTOR,
        AuditAction::RevocationLift,
        revocation_ref(r),
        Outcome::Success,
        format!("lifted: {why}; {after}"),
    )
    .with_detail("mode", format!("{:?}", r.spec.mode));
    ctx.audit.append(entry).await.map_err(Error::AuditRecord)?;
    info!(revocation = %r.name_any(), why, "revocation lifted");
    report::event(ctx, r, EventType::Normal, "Lifted", format!("{why}; {after}")).await;
    Ok(Action::await_change())
}

async fn record_enforced(ctx: &Context, r: &Revocation, status: &RevocationStatus) -> Result<()> {
    let n = |v: Option<u32>| v.unwrap_or(0).to_string();
    let mut entry = Entry::new(
        ACTOR,
        AuditAction::RevocationEnforce,
        revocation_ref(r),
        Outcome::Success,
        format!("enforced: {}", r.spec.reason.chars().take(256).collect::<String>()),
    )
    .with_detail("mode", format!("{:?}", r.spec.mode))
    .with_detail("agents", n(status.affected_agents))
    .with_detail("delegations", n(status.affected_delegations))
    .with_detail("credentialsWithdrawn", n(status.credentials_withdrawn))
    .with_detail("podsEvicted", n(status.pods_evicted));
    if let Some(ms) = status.decision_api_latency_ms {
        entry = entry.with_detail("decisionApiLatencyMs", ms.to_string());
    }
    ctx.audit.append(entry).await.map_err(Error::AuditRecord)?;
    Ok(())
}

async fn write_status(
    ctx: &Context,
    r: &Revocation,
    phase: RevocationPhase,
    reason: &str,
    message: String,
    counts: Option<RevocationStatus>,
    now: Timestamp,
) -> Result<()> {
    let current = r.status.clone().unwrap_or_default();
    let mut desired = counts.unwrap_or_else(|| current.clone());
    desired.phase = Some(phase);
    desired.observed_generation = r.metadata.generation;
    // Only Ready is ours here; KeysRotated belongs to its own field manager.
    let mut conditions: Vec<Condition> =
        current.conditions.iter().filter(|c| c.type_ == names::CONDITION_READY).cloned().collect();
    set_condition(
        &mut conditions,
        Condition {
            type_: names::CONDITION_READY.to_owned(),
            status: if phase == RevocationPhase::Enforced { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.chars().take(1024).collect(),
            observed_generation: r.metadata.generation,
            last_transition_time: Time(now),
        },
    );
    desired.conditions = conditions;
    let mut compare = current.clone();
    compare.conditions.retain(|c| c.type_ == names::CONDITION_READY);
    if compare == desired {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": Revocation::api_version(&()),
        "kind": Revocation::kind(&()),
        "status": desired,
    });
    let api: Api<Revocation> = Api::namespaced(ctx.client.clone(), &ns_of(r));
    api.patch_status(&r.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::ApplyStatus)?;
    Ok(())
}

fn ns_of(r: &Revocation) -> String {
    r.namespace().unwrap_or_default()
}

fn revocation_ref(r: &Revocation) -> AuditRef {
    AuditRef {
        api_version: Revocation::api_version(&()).into_owned(),
        kind: Revocation::kind(&()).into_owned(),
        namespace: r.namespace(),
        name: r.name_any(),
        uid: r.uid(),
    }
}

fn pod_ref(ns: &str, name: &str, uid: Option<&str>) -> AuditRef {
    AuditRef {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: Some(ns.to_owned()),
        name: name.to_owned(),
        uid: uid.map(str::to_owned),
    }
}

/// Which changes of a Revocation matter to the objects it stops: its appearance, its deletion starting,
/// and its expiry (the status says Expired). Its status writes while enforcing do not, and mapping each to
/// every agent of a namespace would reconcile ten thousand agents several times a second. The spec is
/// immutable, so nothing else can change whom it stops.
#[derive(Debug, Default)]
pub struct Relevant {
    seen: Mutex<HashMap<String, (bool, bool)>>,
}

impl Relevant {
    /// Whether this version of `r` differs from the last one seen in what it stops. Forgets Revocations
    /// once they are being deleted and were seen so, keeping the map as large as the live ones.
    pub fn changed(&self, r: &Revocation) -> bool {
        let Some(uid) = r.uid() else { return true };
        let expired = r.status.as_ref().and_then(|s| s.phase) == Some(RevocationPhase::Expired);
        let signature = (r.metadata.deletion_timestamp.is_some(), expired);
        let Ok(mut seen) = self.seen.lock() else { return true };
        if seen.len() > 100_000 {
            seen.clear();
        }
        seen.insert(uid, signature) != Some(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LocalRef, RevocationSpec, RevocationTarget};

    #[test]
    fn only_appearance_deletion_and_expiry_are_relevant_changes() {
        let mut r = Revocation::new(
            "stop",
            RevocationSpec {
                target: RevocationTarget {
                    agent_ref: Some(LocalRef { name: "bot".into() }),
                    ..Default::default()
                },
                mode: RevocationMode::Suspend,
                reason: "incident".into(),
                expires_at: None,
                stop_workloads: None,
                emergency: None,
            },
        );
        r.metadata.uid = Some("u".into());
        let relevant = Relevant::default();
        assert!(relevant.changed(&r), "first seen");
        r.status = Some(RevocationStatus { phase: Some(RevocationPhase::Pending), ..Default::default() });
        assert!(!relevant.changed(&r), "a status write while enforcing");
        r.status = Some(RevocationStatus { phase: Some(RevocationPhase::Enforced), ..Default::default() });
        assert!(!relevant.changed(&r));
        r.status = Some(RevocationStatus { phase: Some(RevocationPhase::Expired), ..Default::default() });
        assert!(relevant.changed(&r), "expired");
        r.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(relevant.changed(&r), "deleting");
        assert!(!relevant.changed(&r));
    }
}
