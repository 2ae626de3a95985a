//! Behavioural monitoring: the decision API hands every decision it made on an agent's policies to the
//! [`Monitor`], which keeps a [`baseline::Baseline`] per agent and reports what leaves it:
//!
//! - score at or above the alert threshold: a Warning Event `AnomalyDetected` on the Agent, an audit
//!   record `monitor.alert` with the evidence, and the metric `agentiam_anomalies_total`; once per agent
//!   and bucket;
//! - at or above the suspension threshold: a Suspend Revocation `anomaly-<agent>-<bucket>` in the agent's
//!   namespace, created by the operator and labelled `agentiam.dev/created-by: monitor`, with the evidence
//!   as its reason (visible in `kubectl get revocations`), after an audit record `monitor.suspend`. The kill
//!   switch does the rest. At most once per agent per [`SUSPEND_COOLDOWN_BUCKETS`].
//!
//! Decisions about agents that are already stopped (revoked, suspended, being deleted) are not
//! observed: they say nothing about the agent's behaviour. Thresholds are flags, and per agent the
//! annotation `agentiam.dev/anomaly-thresholds: "alert=6,suspend=12"` (`suspend=off` never suspends it).

pub mod baseline;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::PostParams;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::{Agent, Revocation};
use crate::audit::{Action, Entry, ObjectRef as AuditRef, Outcome};
use crate::controller::{ACTOR, Context};
use crate::registry::trust::{ALERT_PENALTY, DENIAL_PENALTY, SUSPEND_PENALTY, TrustPenalties};
use crate::supervisor::Supervisor;
use baseline::{Baseline, Evidence, Observation, Settings, Verdict};

/// Per-agent thresholds.
pub const THRESHOLDS_ANNOTATION: &str = "agentiam.dev/anomaly-thresholds";
/// Label on Revocations the monitor creates.
pub const CREATED_BY_LABEL: &str = "agentiam.dev/created-by";
/// Buckets after a suspension before the monitor may suspend the same agent again.
pub const SUSPEND_COOLDOWN_BUCKETS: i64 = 10;
/// Findings waiting for the task that acts on them; beyond that new ones are dropped (logged).
const QUEUE: usize = 1024;

/// What the monitor found about one agent.
#[derive(Debug, Clone)]
struct Finding {
    namespace: String,
    name: String,
    uid: String,
    suspend: bool,
    evidence: Evidence,
    bucket: i64,
}

#[derive(Debug, Default)]
struct Tracked {
    baseline: Baseline,
    alerted_bucket: Option<i64>,
    suspended_bucket: Option<i64>,
}

/// The monitor: baselines by agent UID.
pub struct Monitor {
    settings: Settings,
    penalties: Arc<TrustPenalties>,
    agents: Store<Agent>,
    tracked: Mutex<HashMap<String, Tracked>>,
    findings: mpsc::Sender<Finding>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// An agent's thresholds: its annotation over the defaults (None for suspend: never).
pub fn thresholds(annotation: Option<&str>, defaults: &Settings) -> (f64, Option<f64>) {
    let mut alert = defaults.alert;
    let mut suspend = (defaults.suspend > 0.0).then_some(defaults.suspend);
    for part in annotation.unwrap_or_default().split(',') {
        match part.trim().split_once('=') {
            Some(("alert", v)) => {
                if let Ok(x) = v.trim().parse::<f64>()
                    && x.is_finite()
                    && x > 0.0
                {
                    alert = x;
                }
            }
            Some(("suspend", v)) if v.trim() == "off" => suspend = None,
            Some(("suspend", v)) => {
                if let Ok(x) = v.trim().parse::<f64>()
                    && x.is_finite()
                    && x > 0.0
                {
                    suspend = Some(x);
                }
            }
            _ => {}
        }
    }
    (alert, suspend)
}

impl Monitor {
    /// Takes in one decision about the agent `namespace/name` (UID `uid`). Cheap: a lock, a few counters.
    pub fn observe(&self, uid: &str, namespace: &str, name: &str, obs: &Observation<'_>) {
        let annotation = self
            .agents
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|a| a.annotations().get(THRESHOLDS_ANNOTATION).cloned());
        let (alert, suspend) = thresholds(annotation.as_deref(), &self.settings);
        let settings = Settings { alert, suspend: suspend.unwrap_or(f64::INFINITY), ..self.settings.clone() };
        let secs = i64::try_from(settings.bucket.as_secs().max(1)).unwrap_or(60);
        let bucket = obs.at.as_second().div_euclid(secs);
        let finding = {
            let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
            let t = tracked.entry(uid.to_owned()).or_default();
            let _closed = t.baseline.observe(obs, &settings);
            match t.baseline.judge_open(&settings) {
                Verdict::Suspend(e)
                    if t.suspended_bucket.is_none_or(|b| bucket - b >= SUSPEND_COOLDOWN_BUCKETS) =>
                {
                    t.suspended_bucket = Some(bucket);
                    t.alerted_bucket = Some(bucket);
                    Some((true, e))
                }
                Verdict::Alert(e) | Verdict::Suspend(e) if t.alerted_bucket != Some(bucket) => {
                    t.alerted_bucket = Some(bucket);
                    Some((false, e))
                }
                _ => None,
            }
        };
        if obs.denied {
            self.penalties.add(uid, DENIAL_PENALTY, obs.at);
        }
        if let Some((suspend, _)) = &finding {
            self.penalties.add(uid, if *suspend { SUSPEND_PENALTY } else { ALERT_PENALTY }, obs.at);
        }
        if let Some((suspend, evidence)) = finding {
            let f = Finding {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
                suspend,
                evidence,
                bucket,
            };
            if self.findings.try_send(f).is_err() {
                tracing::warn!(agent = %name, %namespace, "anomaly findings queue full; one was dropped");
            }
        }
    }

    /// What behaviour takes off each agent's trust score: decisions and tokens read it.
    pub fn penalties(&self) -> Arc<TrustPenalties> {
        Arc::clone(&self.penalties)
    }

    /// Forgets agents no longer in the store (bounded memory).
    fn prune(&self) {
        let live: std::collections::HashSet<String> =
            self.agents.state().iter().filter_map(|a| a.metadata.uid.clone()).collect();
        self.tracked.lock().unwrap_or_else(PoisonError::into_inner).retain(|uid, _| live.contains(uid));
    }
}

/// Starts the monitor and the task that acts on its findings.
pub fn start(
    ctx: Arc<Context>,
    agents: Store<Agent>,
    settings: Settings,
    tasks: &mut Supervisor,
) -> Arc<Monitor> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let monitor = Arc::new(Monitor {
        settings,
        penalties: Arc::default(),
        agents,
        tracked: Mutex::new(HashMap::new()),
        findings: tx,
    });
    tasks.spawn_infallible("anomaly monitor", act(ctx, Arc::clone(&monitor), rx));
    monitor
}

async fn act(ctx: Arc<Context>, monitor: Arc<Monitor>, mut rx: mpsc::Receiver<Finding>) {
    let mut prune = tokio::time::interval(std::time::Duration::from_secs(300));
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => report(&ctx, &f).await,
                None => return,
            },
            _ = prune.tick() => monitor.prune(),
        }
    }
}

fn agent_ref(f: &Finding) -> AuditRef {
    AuditRef {
        api_version: "agentiam.dev/v1alpha1".into(),
        kind: "Agent".into(),
        namespace: Some(f.namespace.clone()),
        name: f.name.clone(),
        uid: Some(f.uid.clone()),
    }
}

async fn report(ctx: &Context, f: &Finding) {
    crate::metrics::global().anomaly(f.evidence.feature.as_str(), f.suspend);
    // Its trust just fell: its next credentials take the lowered score's lifetime, so it is reconciled now.
    let _ = ctx.nudges.send(kube::runtime::reflector::ObjectRef::new(&f.name).within(&f.namespace));
    let action = if f.suspend { Action::MonitorSuspend } else { Action::MonitorAlert };
    let what = if f.suspend { "suspending the agent" } else { "alert" };
    let entry =
        Entry::new(ACTOR, action, agent_ref(f), Outcome::Success, format!("anomaly: {}; {what}", f.evidence))
            .with_detail("feature", f.evidence.feature.as_str())
            .with_detail("score", format!("{:.2}", f.evidence.score))
            .with_detail("observed", format!("{:.2}", f.evidence.observed))
            .with_detail("expected", format!("{:.2}", f.evidence.expected));
    if let Err(e) = ctx.audit.append(entry).await {
        tracing::error!(error = %e, "cannot record an anomaly");
    }
    tracing::warn!(agent = %f.name, namespace = %f.namespace, evidence = %f.evidence, suspend = f.suspend, "anomaly detected");
    let note = format!("behaviour left its baseline: {}", f.evidence);
    let reference = ObjectReference {
        api_version: Some("agentiam.dev/v1alpha1".into()),
        kind: Some("Agent".into()),
        namespace: Some(f.namespace.clone()),
        name: Some(f.name.clone()),
        uid: Some(f.uid.clone()),
        ..ObjectReference::default()
    };
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "AnomalyDetected".into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Monitor".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "failed to publish an anomaly event");
    }
    if f.suspend {
        suspend(ctx, f).await;
    }
}

/// A name for the monitor's Revocation: DNS-1123, at most 63 characters, unique per agent and bucket.
pub fn revocation_name(agent: &str, bucket: i64) -> String {
    let suffix = format!("-{bucket}");
    let room = 63usize.saturating_sub("anomaly-".len() + suffix.len());
    let agent: String = agent.chars().take(room).collect();
    format!("anomaly-{}{suffix}", agent.trim_end_matches('-'))
}

async fn suspend(ctx: &Context, f: &Finding) {
    let name = revocation_name(&f.name, f.bucket);
    let revocation: Result<Revocation, _> = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Revocation",
        "metadata": {"name": name, "namespace": f.namespace,
            "labels": {CREATED_BY_LABEL: "monitor", crate::names::AGENT_LABEL: f.name}},
        "spec": {"target": {"agentRef": {"name": f.name}}, "mode": "Suspend",
            "reason": format!("automatic suspension by the behavioural monitor: {}", f.evidence)},
    }));
    let Ok(revocation) = revocation else { return };
    let api: Api<Revocation> = Api::namespaced(ctx.client.clone(), &f.namespace);
    match api.create(&PostParams::default(), &revocation).await {
        Ok(_) => {
            tracing::warn!(agent = %f.name, revocation = %name, "agent suspended by the behavioural monitor")
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => tracing::error!(error = %e, agent = %f.name, "cannot create the monitor's Revocation"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_come_from_the_annotation_over_the_defaults() {
        let d = Settings::default();
        assert_eq!(thresholds(None, &d), (4.0, Some(8.0)));
        assert_eq!(thresholds(Some("alert=6, suspend=12"), &d), (6.0, Some(12.0)));
        assert_eq!(thresholds(Some("suspend=off"), &d), (4.0, None));
        assert_eq!(
            thresholds(Some("alert=-1,suspend=NaN,bogus"), &d),
            (4.0, Some(8.0)),
            "nonsense is ignored"
        );
        let off = Settings { suspend: 0.0, ..Settings::default() };
        assert_eq!(thresholds(None, &off), (4.0, None));
    }

    #[test]
    fn revocation_names_are_dns_labels() {
        assert_eq!(revocation_name("bot", 7), "anomaly-bot-7");
        let long = "a".repeat(80);
        let n = revocation_name(&long, 29_933_333);
        assert!(n.len() <= 63 && n.starts_with("anomaly-a") && n.ends_with("-29933333"), "{n}");
    }
}
