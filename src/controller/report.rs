//! One reporter for every controller's results, and the one way the operator publishes Events.
//!
//! A failed reconcile is reported here, the same way for every kind: a structured log line at warn level
//! (controller, namespace, name, the error with its cause, its metric label), a Warning Event on the object
//! with a PascalCase reason named after the step that failed ([`Error::event_reason`]), the retry the error
//! calls for, and the reconcile-error metric ([`crate::metrics`]).

use std::sync::Arc;
use std::time::Duration;

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use tracing::warn;

use super::{Context, Error};

/// Publishes an Event about `object`; failures are logged, never fatal. Notes are cut to 1000 characters
/// and, like everything the operator says, never carry secrets.
pub async fn event<K>(ctx: &Context, object: &K, type_: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        warn!(error = %e, reason, "failed to publish event");
    }
}

/// The `error_policy` of every controller: reports `error` about `object` and says when to retry.
pub fn error<K>(controller: &'static str, object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let label = error.metric_label();
    crate::metrics::global().reconcile_error(controller, label);
    let namespace = object.namespace().unwrap_or_default();
    warn!(controller, %namespace, name = %object.name_any(), error = %error, label, "reconcile failed");
    let action = match error {
        // Permanent for this object: retrying cannot help until it changes.
        Error::MissingObjectKey(_) => Action::await_change(),
        // Someone wrote between our read and our write: read again soon, and no Event (nothing is wrong).
        Error::Conflict { .. } => return Action::requeue(Duration::from_secs(1)),
        // The log refuses appends until a restart; retry slowly so the warning stays visible.
        _ if ctx.audit.is_failed() => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(5)),
    };
    let (reason, note) = (error.event_reason(), error.to_string());
    tokio::spawn(async move {
        event(&ctx, object.as_ref(), EventType::Warning, reason, note).await;
    });
    action
}
