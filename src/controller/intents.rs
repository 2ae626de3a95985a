//! Resolving audit intents left without an outcome.
//!
//! An intent without an outcome means the operator stopped (crash, kill, lost node) between writing the intent
//! and writing its outcome. A lifecycle or update intent took effect when it became durable: the
//! [`ledger`](crate::registry::ledger) reads the decision from the record itself, and the status written
//! afterwards is only its report (a status is never evidence: anyone with `agents/status` can write one). So an
//! open intent about an object that still exists is confirmed, and the reconcile that follows writes the
//! status from the record; one whose object is gone is abandoned, since its report can never be written; an
//! intent the current reconcile is about to complete is left alone. The decision is pure ([`resolve`]); the
//! rest is I/O.

use std::collections::BTreeMap;

use kube::Api;
use tracing::{info, warn};

use crate::api::{Agent, Delegation};
use crate::audit::{Action, IntentKey, Outcome, Record};
use crate::controller::{Context, Error, Result};

/// What to do with one open intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Leave it open: the reconcile in progress will complete it.
    Keep,
    /// Close it with this outcome and reason.
    Close(Outcome, String),
}

/// Decides about one open intent, given the UID of the object of its name as it is now (`None` if no such
/// object exists) and the key the current reconcile is working on.
pub fn resolve(key: &str, object_uid: Option<&str>, in_progress: Option<&str>) -> Resolution {
    if in_progress == Some(key) {
        return Resolution::Keep;
    }
    let Some(k) = IntentKey::parse(key) else {
        return Resolution::Close(Outcome::Abandoned, format!("unrecognised intent key {key:?}"));
    };
    if object_uid != k.object_uid() || object_uid.is_none() {
        return Resolution::Close(
            Outcome::Abandoned,
            "the object no longer exists, so the change can no longer happen".into(),
        );
    }
    match k {
        // The object still exists and is being deleted: the cleanup will run again and complete this intent.
        IntentKey::Archive { .. } => return Resolution::Keep,
        IntentKey::Agent { .. } => {}
        // Resolved by their own step (the credentials step, the key manager), which sees the Secret.
        _ => return Resolution::Keep,
    }
    Resolution::Close(
        Outcome::Success,
        "confirmed after an interruption: the change took effect when it was recorded, and the status is \
         written from the record"
            .into(),
    )
}

/// Closes the open intents about the agent with `uid` (which exists), except `in_progress`.
pub async fn resolve_for_agent(ctx: &Context, uid: &str, in_progress: Option<&str>) -> Result<()> {
    // Only the registry's own intents: credential intents are resolved against the Secret by the credentials
    // step, which can see whether the issuance reached it.
    let mine = |i: &Record| {
        i.object.uid.as_deref() == Some(uid) && Action::parse(&i.action).is_some_and(Action::is_registry)
    };
    for intent in ctx.audit.open_intents_matching(mine) {
        close(ctx, &intent, resolve_key(&intent, Some(uid), in_progress)).await?;
    }
    Ok(())
}

fn resolve_key(intent: &Record, object_uid: Option<&str>, in_progress: Option<&str>) -> Resolution {
    match intent.key.as_deref() {
        Some(key) => resolve(key, object_uid, in_progress),
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

/// Whether an operator that serves `watch_namespace` (None: every namespace) may judge objects of `ns`.
pub fn in_scope(watch_namespace: Option<&str>, ns: &str) -> bool {
    watch_namespace.is_none_or(|w| w == ns)
}

/// At startup: closes open intents whose object is gone. Intents about objects that still exist are left to
/// their reconcile, which sees the object's current status. Intents about namespaces this operator does not
/// serve (its scope narrowed since they were written, e.g. a `helm upgrade` that set `watchNamespace`) are
/// left open with a warning: it may not even read those objects, and an operator that serves them will
/// resolve them.
pub async fn resolve_orphans(ctx: &Context) -> Result<()> {
    for intent in ctx.audit.open_intents() {
        if intent.object.kind != "Agent" && intent.object.kind != "Delegation" {
            continue;
        }
        let Some(ns) = intent.object.namespace.as_deref() else { continue };
        if !in_scope(ctx.config.watch_namespace.as_deref(), ns) {
            warn!(
                key = ?intent.key,
                namespace = ns,
                "an open audit intent is about a namespace outside --watch-namespace; left open"
            );
            continue;
        }
        let what = || format!("{} {ns}/{}", intent.object.kind, intent.object.name);
        let current_uid = if intent.object.kind == "Agent" {
            let api: Api<Agent> = Api::namespaced(ctx.client.clone(), ns);
            let found = api.get_opt(&intent.object.name).await;
            found.map_err(|source| Error::Read { what: what(), source })?.and_then(|a| a.metadata.uid)
        } else {
            let api: Api<Delegation> = Api::namespaced(ctx.client.clone(), ns);
            let found = api.get_opt(&intent.object.name).await;
            found.map_err(|source| Error::Read { what: what(), source })?.and_then(|d| d.metadata.uid)
        };
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

    #[test]
    fn only_intents_in_the_served_namespaces_are_judged() {
        assert!(in_scope(None, "anything"));
        assert!(in_scope(Some("team-a"), "team-a"));
        assert!(!in_scope(Some("team-a"), "team-b"));
    }

    #[test]
    fn the_intent_in_progress_is_kept() {
        assert_eq!(resolve("agent.activate:u1:1", Some("u1"), Some("agent.activate:u1:1")), Resolution::Keep);
    }

    #[test]
    fn a_recorded_change_of_an_existing_object_is_confirmed_whatever_the_status_says() {
        for key in ["agent.activate:u1:1", "agent.suspend:u1:2", "agent.update:u1:3", "agent.retire:u1:4"] {
            assert!(
                matches!(
                    resolve(key, Some("u1"), Some("agent.suspend:u1:9")),
                    Resolution::Close(Outcome::Success, _)
                ),
                "{key}"
            );
        }
    }

    #[test]
    fn a_gone_or_recreated_object_abandons_its_intents() {
        assert!(matches!(
            resolve("agent.activate:u1:1", None, None),
            Resolution::Close(Outcome::Abandoned, _)
        ));
        assert!(matches!(
            resolve("agent.activate:u1:1", Some("u2"), None),
            Resolution::Close(Outcome::Abandoned, _)
        ));
        assert!(matches!(resolve("agent.archive:u1", None, None), Resolution::Close(Outcome::Abandoned, _)));
        assert_eq!(resolve("agent.archive:u1", Some("u1"), None), Resolution::Keep);
        assert!(matches!(resolve("nonsense", Some("u1"), None), Resolution::Close(Outcome::Abandoned, _)));
        // A delegated token's intent: left to the Delegation's token step while it exists, else abandoned.
        assert_eq!(resolve("delegation.issue:d1:5", Some("d1"), None), Resolution::Keep);
        assert!(matches!(
            resolve("delegation.issue:d1:5", None, None),
            Resolution::Close(Outcome::Abandoned, _)
        ));
    }
}
