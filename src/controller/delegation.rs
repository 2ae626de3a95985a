//! The Delegation controller: decides every Delegation from its whole chain, read fresh from the API server
//! (never from the watch cache: admission checked against its stores, and this is the re-check before
//! anything is issued under the chain), with the operator's own records of who granted each link and what
//! it already decided ([`Ledger`](crate::registry::ledger::Ledger)).
//!
//! Pipeline per reconcile: read the chain (GET each Delegation up to the root, and each grantee Agent) ->
//! decide (pure, [`chain::decide`]) -> record a phase change in the audit log (durable
//! before anything reports it) -> apply the status -> Event -> requeue at the chain's expiry.
//!
//! A change to a Delegation re-reconciles its children, a change to an Agent the Delegations granted to
//! it, and a change to a Revocation every Delegation of its namespace, so an end up a chain reaches every
//! descendant at once.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use crate::api::{Agent, AgentPhase, Delegation, DelegationPhase, DelegationStatus, Revocation};
use crate::audit::{Action as AuditAction, Entry, ObjectRef as AuditRef, Outcome};
use crate::controller::delegated_token::{self, Grantee, TokenState};
use crate::controller::shared::Watched;
use crate::controller::{ACTOR, Context, Error, FIELD_MANAGER, Result, report};
use crate::registry::actions as a;
use crate::registry::delegation::{self as chain, Decision, Ending, Link, Step};
use crate::registry::revocation;
use crate::registry::status::set_condition;

/// The condition that says whether the delegation is in force.
pub const CONDITION_READY: &str = crate::names::CONDITION_READY;

/// Longest wait before a settled delegation is looked at again.
const RESYNC: Duration = Duration::from_secs(600);

/// The Delegation controller, not yet running.
pub fn controller(watched: &Watched, reach: revocation::Reach) -> Controller<Delegation> {
    let delegations = watched.delegations.store();
    let controller = Controller::for_shared_stream(
        watched.delegations.applied("Delegation controller"),
        delegations.clone(),
    );
    let children = delegations.clone();
    let controller = controller.watches_shared_stream(
        watched.delegations.touched("Delegation controller: parents"),
        move |parent: Arc<Delegation>| {
            let (ns, name) = (parent.namespace(), parent.name_any());
            children
                .state()
                .into_iter()
                .filter(|d| d.namespace() == ns && d.spec.parent_ref.as_ref().is_some_and(|p| p.name == name))
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    let granted = delegations.clone();
    let controller = controller.watches_shared_stream(
        watched.agents.touched("Delegation controller"),
        move |agent: Arc<Agent>| {
            let (ns, name) = (agent.namespace(), agent.name_any());
            granted
                .state()
                .into_iter()
                .filter(|d| {
                    d.namespace() == ns
                        && (d.spec.agent_ref.name == name
                            || d.spec.may_act.as_ref().is_some_and(|m| m.name == name))
                })
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    let relevant = crate::controller::revocation::Relevant::default();
    controller.watches_shared_stream(
        watched.revocations.touched("Delegation controller"),
        move |r: Arc<Revocation>| {
            if !relevant.changed(&r) {
                return Vec::new();
            }
            let within = revocation::namespaces_reached(&r, &reach);
            delegations
                .state()
                .into_iter()
                .filter(|d| within.is_none() || d.namespace() == within)
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        },
    )
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<Delegation>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "delegation reconcile failed");
            }
        })
        .await;
}

fn error_policy(delegation: Arc<Delegation>, error: &Error, ctx: Arc<Context>) -> Action {
    report::error("delegation", delegation, error, ctx)
}

/// Reconciles one Delegation.
#[instrument(skip_all, fields(kind = "Delegation", namespace = delegation.namespace().unwrap_or_default(), name = %delegation.name_any()))]
pub async fn reconcile(delegation: Arc<Delegation>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = crate::metrics::global().reconcile("delegation");
    let ns = delegation.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = delegation.name_any();
    let api: Api<Delegation> = Api::namespaced(ctx.client.clone(), &ns);
    let agents: Api<Agent> = Api::namespaced(ctx.client.clone(), &ns);
    // Fresh from the API server, the object itself included: the store may lag behind a delete and
    // re-create of a parent, and a chain must never be judged on what no longer exists.
    let read = |what: String| move |source| Error::Read { what, source };
    let Some(this) = api.get_opt(&name).await.map_err(read(format!("Delegation {ns}/{name}")))? else {
        return Ok(Action::await_change());
    };
    let uid = this.metadata.uid.clone().ok_or(Error::MissingObjectKey("uid"))?;
    let mut found = vec![Arc::new(this)];
    // Walk up by name, a GET per link (a chain is at most MAX_CHAIN long).
    let ending = loop {
        match chain::next_step(&found) {
            Step::Done(ending) => break ending,
            Step::Fetch(parent) => {
                match api.get_opt(&parent).await.map_err(read(format!("Delegation {ns}/{parent}")))? {
                    Some(p) => found.push(Arc::new(p)),
                    None => break Ending::MissingParent(parent),
                }
            }
        }
    };
    let mut grantees = Vec::with_capacity(found.len());
    let mut own_grantee: Option<(String, String)> = None;
    for d in &found {
        let agent_name = &d.spec.agent_ref.name;
        let agent = agents.get_opt(agent_name).await.map_err(read(format!("Agent {ns}/{agent_name}")))?;
        if own_grantee.is_none() && grantees.is_empty() {
            own_grantee = agent.as_ref().and_then(|a| Some((agent_name.clone(), a.metadata.uid.clone()?)));
        }
        let phase = agent
            .as_ref()
            .and_then(|a| a.metadata.uid.as_deref())
            .and_then(|u| ctx.ledger.get(u))
            .and_then(|r| r.phase);
        grantees.push((
            agent.and_then(|a| a.metadata.uid).map(|agent_uid| chain::Grantee {
                active: phase == Some(AgentPhase::Active),
                uid: agent_uid,
            }),
            phase,
        ));
    }
    let revocations = ctx.revocations.state();
    let now = Timestamp::now();
    let grants: Vec<_> =
        found.iter().map(|d| d.metadata.uid.as_deref().and_then(|u| ctx.ledger.grant(u))).collect();
    let links: Vec<Link<'_>> = found
        .iter()
        .zip(&grants)
        .zip(grantees)
        .map(|((d, grant), (grantee, phase))| {
            let d_name = d.metadata.name.as_deref().unwrap_or_default();
            let revoked_by = revocation::ends_delegation(&ns, d_name, phase, &revocations, &ctx.reach, now);
            let recorded = d.metadata.uid.as_deref().and_then(|u| ctx.ledger.delegation_phase(u));
            Link { delegation: d, grant: grant.as_deref(), grantee, revoked_by, recorded }
        })
        .collect();
    let decision = chain::decide(&links, &ending, now);
    let Some(this) = found.first() else { return Ok(Action::await_change()) };

    // Every change of phase is recorded once: the ledger holds the last one recorded.
    if ctx.ledger.delegation_phase(&uid).map(|r| r.phase) != Some(decision.phase) {
        record(&ctx, this, &uid, &decision).await?;
        let type_ =
            if decision.phase == DelegationPhase::Active { EventType::Normal } else { EventType::Warning };
        report::event(&ctx, this.as_ref(), type_, decision.reason, decision.message.clone()).await;
    }
    // The token only once the decision is recorded: a token never exists for a phase not in the log.
    let grantee = own_grantee.as_ref().map(|(name, uid)| Grantee { name, uid });
    let token = delegated_token::reconcile(&ctx, this, &uid, &decision, grantee).await?;
    apply_status(&api, this, &decision, token.as_ref()).await?;
    Ok(match (decision.phase, decision.expires_at) {
        (DelegationPhase::Active | DelegationPhase::Pending, Some(end)) => {
            let left = end.duration_since(now).unsigned_abs();
            let rotate = token.map(|t| t.recheck_at.duration_since(now).unsigned_abs()).unwrap_or(left);
            // A moment past the end, so the next look sees it ended.
            Action::requeue(left.min(rotate).saturating_add(Duration::from_millis(50)).min(RESYNC))
        }
        (DelegationPhase::Active | DelegationPhase::Pending, None) => Action::requeue(RESYNC),
        _ => Action::await_change(),
    })
}

fn action_of(phase: DelegationPhase) -> AuditAction {
    match phase {
        DelegationPhase::Active => AuditAction::DelegationActivate,
        DelegationPhase::Expired => AuditAction::DelegationExpire,
        DelegationPhase::Revoked => AuditAction::DelegationRevoke,
        DelegationPhase::Invalid | DelegationPhase::Denied => AuditAction::DelegationInvalidate,
        DelegationPhase::Pending | DelegationPhase::PendingApproval => AuditAction::DelegationPend,
    }
}

/// Records the decided phase: durable before the status or an Event says it, and what the ledger keeps
/// (a final phase stays final across restarts).
async fn record(ctx: &Context, d: &Delegation, uid: &str, decision: &Decision) -> Result<()> {
    let object = AuditRef {
        api_version: Delegation::api_version(&()).into_owned(),
        kind: Delegation::kind(&()).into_owned(),
        namespace: d.namespace(),
        name: d.name_any(),
        uid: Some(uid.to_owned()),
    };
    let mut entry =
        Entry::new(ACTOR, action_of(decision.phase), object, Outcome::Success, decision.message.clone())
            .with_detail(a::DETAIL_PHASE, decision.phase.as_str())
            .with_detail(a::DETAIL_REASON, decision.reason);
    if let Some(g) = &decision.grantor {
        entry = entry.with_detail("grantor", g.username.clone());
    }
    if !decision.chain.is_empty() {
        let chain: Vec<String> = decision.chain.iter().map(|l| format!("{}:{}", l.kind, l.name)).collect();
        entry = entry.with_detail("chain", chain.join(" > "));
    }
    if let Some(end) = decision.expires_at {
        entry = entry.with_detail("expiresAt", end.to_string());
    }
    if let Some(generation) = d.metadata.generation {
        entry = entry.with_detail("generation", generation.to_string());
    }
    ctx.audit.append(entry).await.map_err(Error::AuditRecord)?;
    Ok(())
}

async fn apply_status(
    api: &Api<Delegation>,
    d: &Delegation,
    decision: &Decision,
    token: Option<&TokenState>,
) -> Result<()> {
    let current = d.status.clone().unwrap_or_default();
    let mut conditions = current.conditions.clone();
    set_condition(
        &mut conditions,
        Condition {
            type_: CONDITION_READY.to_owned(),
            status: if decision.phase == DelegationPhase::Active { "True" } else { "False" }.to_owned(),
            reason: decision.reason.to_owned(),
            message: decision.message.chars().take(1024).collect(),
            observed_generation: d.metadata.generation,
            last_transition_time: Time(Timestamp::now()),
        },
    );
    let desired = DelegationStatus {
        phase: Some(decision.phase),
        grantor: decision.grantor.clone(),
        chain: decision.chain.clone(),
        remaining_depth: decision.remaining_depth,
        audience: decision.audience.clone(),
        token_secret_name: token.map(|t| t.secret_name.clone()),
        token_key: token.map(|t| t.key.clone()),
        token_expires_at: token.map(|t| t.expires_at.to_string()),
        expires_at: decision.expires_at.map(|t| t.to_string()),
        observed_generation: d.metadata.generation,
        conditions,
    };
    if same(&current, &desired) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": Delegation::api_version(&()),
        "kind": Delegation::kind(&()),
        "status": desired,
    });
    api.patch_status(&d.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::ApplyStatus)?;
    Ok(())
}

/// Equal apart from condition timestamps (kept by [`set_condition`] when nothing changed).
fn same(a: &DelegationStatus, b: &DelegationStatus) -> bool {
    let strip = |s: &DelegationStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}
