//! Resolving audit intents left without an outcome.
//!
//! An intent without an outcome means the operator stopped (crash, kill, lost node) between writing the intent
//! and writing its outcome. Whether the side effect happened is read back from the object itself: the status the
//! transition writes is the side effect. Each open intent is closed exactly once, with Success when the status
//! shows it happened and Abandoned when it did not and never will under that key; an intent the current
//! reconcile is about to complete is left alone. The decision is pure ([`resolve`]); the rest is I/O.

use std::collections::BTreeMap;

use kube::Api;
use tracing::{info, warn};

use crate::api::{Agent, AgentPhase, AgentStatus};
use crate::audit::{Outcome, Record};
use crate::controller::{Context, Error, Result};

/// What to do with one open intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Leave it open: the reconcile in progress will complete it.
    Keep,
    /// Close it with this outcome and reason.
    Close(Outcome, String),
}

/// What an intent key says: the action, the object UID and (for phase transitions) the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentKey<'a> {
    /// e.g. "agent.activate".
    pub action: &'a str,
    /// The object UID.
    pub uid: &'a str,
    /// The generation, for transitions.
    pub generation: Option<i64>,
}

/// Parses `<action>:<uid>[:<generation>]`.
pub fn parse_key(key: &str) -> Option<IntentKey<'_>> {
    let mut parts = key.split(':');
    let action = parts.next()?;
    let uid = parts.next().filter(|u| !u.is_empty())?;
    let generation = match parts.next() {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    parts.next().is_none().then_some(IntentKey { action, uid, generation })
}

fn target_phase(action: &str) -> Option<AgentPhase> {
    match action {
        "agent.activate" => Some(AgentPhase::Active),
        "agent.register" | "agent.deactivate" => Some(AgentPhase::Pending),
        "agent.suspend" => Some(AgentPhase::Suspended),
        "agent.retire" => Some(AgentPhase::Retired),
        "agent.revoke" => Some(AgentPhase::Revoked),
        _ => None,
    }
}

/// Decides about one open intent, given the object as it is now (`None` if no object with the intent's UID
/// exists) and the key the current reconcile is working on.
pub fn resolve(
    key: &str,
    object: Option<(&str, Option<&AgentStatus>)>,
    in_progress: Option<&str>,
) -> Resolution {
    if in_progress == Some(key) {
        return Resolution::Keep;
    }
    let Some(k) = parse_key(key) else {
        return Resolution::Close(Outcome::Abandoned, format!("unrecognised intent key {key:?}"));
    };
    let status = match object {
        Some((uid, status)) if uid == k.uid => status,
        _ => {
            return Resolution::Close(
                Outcome::Abandoned,
                "the object no longer exists, so the change can no longer happen".into(),
            );
        }
    };
    if k.action == "agent.archive" {
        // The object still exists and is being deleted: the cleanup will run again and complete this intent.
        return Resolution::Keep;
    }
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
    if let ("agent.update", Some(generation)) = (k.action, k.generation) {
        return if observed >= generation {
            Resolution::Close(
                Outcome::Success,
                "confirmed after an interruption: the status reflects the change".into(),
            )
        } else {
            Resolution::Close(Outcome::Abandoned, "superseded: the status was not updated".into())
        };
    }
    let (Some(target), Some(generation)) = (target_phase(k.action), k.generation) else {
        return Resolution::Close(Outcome::Abandoned, format!("unrecognised intent key {key:?}"));
    };
    let phase = status.and_then(|s| s.phase);
    if phase == Some(target) && observed >= generation {
        Resolution::Close(Outcome::Success, format!("confirmed after an interruption: the agent is {target}"))
    } else {
        let now = phase.map_or_else(|| "without a phase".to_owned(), |p| p.to_string());
        Resolution::Close(
            Outcome::Abandoned,
            format!("superseded: the change did not happen and the agent is {now}"),
        )
    }
}

/// Closes the open intents about `agent` (by UID), except `in_progress`.
pub async fn resolve_for_agent(
    ctx: &Context,
    agent: &Agent,
    uid: &str,
    in_progress: Option<&str>,
) -> Result<()> {
    // Only the registry's own intents: credential intents are resolved against the Secret by the credentials
    // step, which can see whether the issuance reached it.
    let mine = |i: &Record| {
        i.object.uid.as_deref() == Some(uid) && i.key.as_deref().is_some_and(|k| k.starts_with("agent."))
    };
    for intent in ctx.audit.open_intents_matching(mine) {
        close(ctx, &intent, resolve_key(&intent, Some((uid, agent.status.as_ref())), in_progress)).await?;
    }
    Ok(())
}

fn resolve_key(
    intent: &Record,
    object: Option<(&str, Option<&AgentStatus>)>,
    in_progress: Option<&str>,
) -> Resolution {
    match intent.key.as_deref() {
        Some(key) => resolve(key, object, in_progress),
        None => Resolution::Close(Outcome::Abandoned, "intent without a key".into()),
    }
}

async fn close(ctx: &Context, intent: &Record, resolution: Resolution) -> Result<()> {
    let (Resolution::Close(outcome, reason), Some(key)) = (resolution, intent.key.as_deref()) else {
        return Ok(());
    };
    info!(key, ?outcome, %reason, "resolving open audit intent");
    let mut details = BTreeMap::new();
    details.insert("resolvedBy".to_owned(), "intent-recovery".to_owned());
    ctx.audit.outcome(key, outcome, reason, details).await.map_err(Error::AuditOutcome)?;
    Ok(())
}

/// At startup: closes open intents whose object is gone. Intents about objects that still exist are left to
/// their reconcile, which sees the object's current status.
pub async fn resolve_orphans(ctx: &Context) -> Result<()> {
    for intent in ctx.audit.open_intents() {
        if intent.object.kind != "Agent" {
            continue;
        }
        let Some(ns) = intent.object.namespace.as_deref() else { continue };
        let api: Api<Agent> = Api::namespaced(ctx.client.clone(), ns);
        let current = api
            .get_opt(&intent.object.name)
            .await
            .map_err(|source| Error::Read { what: format!("Agent {ns}/{}", intent.object.name), source })?;
        let current_uid = current.as_ref().and_then(|a| a.metadata.uid.clone());
        let same = current_uid.is_some() && current_uid == intent.object.uid;
        if !same {
            warn!(key = ?intent.key, "open audit intent refers to an object that no longer exists");
            close(ctx, &intent, resolve_key(&intent, None, None)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: AgentPhase, generation: i64) -> AgentStatus {
        AgentStatus { phase: Some(phase), observed_generation: Some(generation), ..Default::default() }
    }

    #[test]
    fn keys_parse() {
        assert_eq!(
            parse_key("agent.activate:u1:3"),
            Some(IntentKey { action: "agent.activate", uid: "u1", generation: Some(3) })
        );
        assert_eq!(
            parse_key("agent.archive:u1"),
            Some(IntentKey { action: "agent.archive", uid: "u1", generation: None })
        );
        assert_eq!(parse_key("agent.activate:u1:x"), None);
        assert_eq!(parse_key("agent.activate::1"), None);
        assert_eq!(parse_key("a:b:1:2"), None);
    }

    #[test]
    fn the_intent_in_progress_is_kept() {
        let s = status(AgentPhase::Pending, 1);
        assert_eq!(
            resolve("agent.activate:u1:1", Some(("u1", Some(&s))), Some("agent.activate:u1:1")),
            Resolution::Keep
        );
    }

    #[test]
    fn a_change_visible_in_status_is_confirmed() {
        let s = status(AgentPhase::Active, 1);
        assert!(matches!(
            resolve("agent.activate:u1:1", Some(("u1", Some(&s))), None),
            Resolution::Close(Outcome::Success, _)
        ));
        let later = status(AgentPhase::Active, 4);
        assert!(matches!(
            resolve("agent.activate:u1:1", Some(("u1", Some(&later))), None),
            Resolution::Close(Outcome::Success, _)
        ));
    }

    #[test]
    fn a_change_not_visible_is_abandoned() {
        let s = status(AgentPhase::Suspended, 2);
        assert!(matches!(
            resolve("agent.activate:u1:1", Some(("u1", Some(&s))), Some("agent.suspend:u1:2")),
            Resolution::Close(Outcome::Abandoned, _)
        ));
        assert!(matches!(
            resolve("agent.activate:u1:1", Some(("u1", None)), None),
            Resolution::Close(Outcome::Abandoned, _)
        ));
    }

    #[test]
    fn spec_updates_are_confirmed_by_the_observed_generation() {
        let s = status(AgentPhase::Active, 3);
        assert!(matches!(
            resolve("agent.update:u1:3", Some(("u1", Some(&s))), None),
            Resolution::Close(Outcome::Success, _)
        ));
        assert!(matches!(
            resolve("agent.update:u1:4", Some(("u1", Some(&s))), None),
            Resolution::Close(Outcome::Abandoned, _)
        ));
    }

    #[test]
    fn a_gone_or_recreated_object_abandons_its_intents() {
        let s = status(AgentPhase::Active, 1);
        assert!(matches!(
            resolve("agent.activate:u1:1", None, None),
            Resolution::Close(Outcome::Abandoned, _)
        ));
        assert!(matches!(
            resolve("agent.activate:u1:1", Some(("u2", Some(&s))), None),
            Resolution::Close(Outcome::Abandoned, _)
        ));
        assert!(matches!(resolve("agent.archive:u1", None, None), Resolution::Close(Outcome::Abandoned, _)));
        assert_eq!(resolve("agent.archive:u1", Some(("u1", Some(&s))), None), Resolution::Keep);
    }
}
