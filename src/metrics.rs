//! The operator's metrics, in the Prometheus text format, served at `/metrics` on the admin listener
//! ([`crate::server::admin`]).
//!
//! One process-wide set ([`global`]), because the things counted happen in every layer (controllers, the
//! decision API on its own runtime, the audit writer thread, the webhooks, the watches) and threading a
//! handle through all of them would buy nothing: the metrics are write-only for the code and read only by
//! the scrape. Counter names get `_total` from the encoder. Labels are bounded sets (controller names,
//! error labels, outcomes, webhook and watch names), never object names, so cardinality stays fixed.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn decision_histogram() -> Histogram {
    // 1 us .. ~16 ms: in-process decisions take about a microsecond, HTTP ones tens of microseconds.
    Histogram::new(exponential_buckets(1e-6, 2.0, 15))
}

fn gateway_histogram() -> Histogram {
    // 100 us .. ~1.6 s: a decision plus an upstream's answer.
    Histogram::new(exponential_buckets(1e-4, 2.0, 15))
}

fn reconcile_histogram() -> Histogram {
    // 1 ms .. ~16 s: a reconcile is a few API calls and an fsync.
    Histogram::new(exponential_buckets(1e-3, 2.0, 15))
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_duration: Family<Labels, Histogram, fn() -> Histogram>,
    decisions: Family<Labels, Counter>,
    // The decision counters, looked up once: `decision` runs on every authorization request.
    decisions_allow: Counter,
    decisions_deny: Counter,
    decision_duration: Histogram,
    credentials: Family<Labels, Counter>,
    key_rotations: Counter,
    audit_records: Counter,
    audit_queue_depth: Gauge,
    audit_write_failures: Counter,
    admission_requests: Family<Labels, Counter>,
    watch_restarts: Family<Labels, Counter>,
    malformed_objects: Family<Labels, Counter>,
    anomalies: Family<Labels, Counter>,
    shadow_agents: Family<Labels, Counter>,
    discovered_workloads: Gauge,
    gateway_calls: Family<Labels, Counter>,
    gateway_duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("agentiam");
        let m = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_histogram as fn() -> Histogram),
            decisions: Family::default(),
            decisions_allow: Counter::default(),
            decisions_deny: Counter::default(),
            decision_duration: decision_histogram(),
            credentials: Family::default(),
            key_rotations: Counter::default(),
            audit_records: Counter::default(),
            audit_queue_depth: Gauge::default(),
            audit_write_failures: Counter::default(),
            admission_requests: Family::default(),
            watch_restarts: Family::default(),
            malformed_objects: Family::default(),
            anomalies: Family::default(),
            shadow_agents: Family::default(),
            discovered_workloads: Gauge::default(),
            gateway_calls: Family::default(),
            gateway_duration: Family::new_with_constructor(gateway_histogram as fn() -> Histogram),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles run, by controller", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and the step that failed (reason)",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "decisions",
            "Authorization decisions (decision API and ext_authz), by outcome",
            m.decisions.clone(),
        );
        registry.register(
            "decision_duration_seconds",
            "Time one authorization decision took, in process",
            m.decision_duration.clone(),
        );
        registry.register(
            "credentials",
            "Agent credentials issued (reason issued or rotated) and withdrawn, by event",
            m.credentials.clone(),
        );
        registry.register("key_rotations", "Signing key rotations", m.key_rotations.clone());
        registry.register("audit_records", "Audit records made durable", m.audit_records.clone());
        registry.register(
            "audit_queue_depth",
            "Audit records queued for the writer when its last batch was taken",
            m.audit_queue_depth.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit batches whose write or sync failed (the log then refuses appends)",
            m.audit_write_failures.clone(),
        );
        registry.register(
            "admission_requests",
            "Admission requests answered, by webhook and outcome (allowed, denied, error)",
            m.admission_requests.clone(),
        );
        registry.register(
            "watch_restarts",
            "Times a watch failed and was restarted after its backoff, by watch",
            m.watch_restarts.clone(),
        );
        registry.register(
            "malformed_objects",
            "Objects skipped because they do not read as their kind, by watch",
            m.malformed_objects.clone(),
        );
        registry.register(
            "anomalies",
            "Agent behaviour that left its baseline, by feature and action (alert, suspend)",
            m.anomalies.clone(),
        );
        registry.register(
            "shadow_agents",
            "Shadow agents discovery recorded (event detected) and cleaned up (event removed), by workload kind",
            m.shadow_agents.clone(),
        );
        registry.register(
            "discovered_workloads",
            "Workloads that look like AI agents as discovery sees them now, registered or not",
            m.discovered_workloads.clone(),
        );
        registry.register(
            "gateway_calls",
            "Calls the agent gateway answered, by route and outcome (forwarded, refused, error)",
            m.gateway_calls.clone(),
        );
        registry.register(
            "gateway_duration_seconds",
            "Time from a gateway call's arrival to the start of its answer, by route and outcome",
            m.gateway_duration.clone(),
        );
        let decisions_allow = m.decisions.get_or_create(&vec![("outcome", "allow".to_owned())]).clone();
        let decisions_deny = m.decisions.get_or_create(&vec![("outcome", "deny".to_owned())]).clone();
        Self { registry, decisions_allow, decisions_deny, ..m }
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::default)
}

/// Times one reconcile; counts it and records its duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    controller: &'static str,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let m = global();
        let labels = vec![("controller", self.controller.to_owned())];
        m.reconciles.get_or_create(&labels).inc();
        m.reconcile_duration.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The exposition in the Prometheus text format 0.0.4, for clients that do not ask for OpenMetrics
    /// (`promtool check metrics`, curl); see [`to_prometheus_text`].
    pub fn render_prometheus_text(&self) -> String {
        to_prometheus_text(&self.render())
    }

    /// Starts timing a reconcile of `controller`.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer { controller, started: Instant::now() }
    }

    /// A reconcile of `controller` failed at the step `reason` (the error's metric label).
    pub fn reconcile_error(&self, controller: &'static str, reason: &'static str) {
        let labels = vec![("controller", controller.to_owned()), ("reason", reason.to_owned())];
        self.reconcile_errors.get_or_create(&labels).inc();
    }

    /// A decision that allowed (or not) took `seconds`.
    pub fn decision(&self, allowed: bool, seconds: f64) {
        if allowed { &self.decisions_allow } else { &self.decisions_deny }.inc();
        self.decision_duration.observe(seconds);
    }

    /// The gateway answered a call on `route` (a configured name: a bounded set) with `outcome`
    /// (`forwarded`, `refused`, `error`), `seconds` after it arrived.
    pub fn gateway_call(&self, route: &str, outcome: &'static str, seconds: f64) {
        let labels = vec![("route", route.to_owned()), ("outcome", outcome.to_owned())];
        self.gateway_calls.get_or_create(&labels).inc();
        self.gateway_duration.get_or_create(&labels).observe(seconds);
    }

    /// Credentials of one agent were `event` (`issued`, `rotated`, `withdrawn`).
    pub fn credentials(&self, event: &'static str) {
        self.credentials.get_or_create(&vec![("event", event.to_owned())]).inc();
    }

    /// The signing key rotated.
    pub fn key_rotation(&self) {
        self.key_rotations.inc();
    }

    /// A batch of `records` audit records is durable; `queued` were waiting when it was taken.
    pub fn audit_batch(&self, records: u64, queued: i64) {
        self.audit_records.inc_by(records);
        self.audit_queue_depth.set(queued);
    }

    /// An audit batch failed to be written.
    pub fn audit_write_failure(&self) {
        self.audit_write_failures.inc();
    }

    /// The webhook `webhook` answered a request with `outcome`.
    pub fn admission(&self, webhook: &'static str, outcome: &'static str) {
        let labels = vec![("webhook", webhook.to_owned()), ("outcome", outcome.to_owned())];
        self.admission_requests.get_or_create(&labels).inc();
    }

    /// The watch `watch` skipped an object that does not read as its kind.
    pub fn malformed_object(&self, watch: &str) {
        self.malformed_objects.get_or_create(&vec![("watch", watch.to_owned())]).inc();
    }

    /// The behavioural monitor found an anomaly in `feature`, and alerted or suspended.
    pub fn anomaly(&self, feature: &str, suspended: bool) {
        let action = if suspended { "suspend" } else { "alert" };
        self.anomalies
            .get_or_create(&vec![("feature", feature.to_owned()), ("action", action.to_owned())])
            .inc();
    }

    /// Discovery recorded (`detected`) or cleaned up (`removed`) a shadow agent of a workload of `kind`.
    pub fn shadow_agent(&self, event: &'static str, kind: &str) {
        self.shadow_agents.get_or_create(&vec![("event", event.to_owned()), ("kind", kind.to_owned())]).inc();
    }

    /// How many workloads look like agents now (registered or not).
    pub fn discovered_workloads(&self, n: usize) {
        self.discovered_workloads.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The watch `watch` failed and will be restarted.
    pub fn watch_restart(&self, watch: &str) {
        self.watch_restarts.get_or_create(&vec![("watch", watch.to_owned())]).inc();
    }
}

/// OpenMetrics text to the Prometheus text format 0.0.4: a counter family `x` becomes `x_total` in its
/// `# HELP` and `# TYPE` lines (its samples are already `x_total`), `# UNIT` lines and the final `# EOF`
/// are dropped. Samples, labels and values are the same in both formats for what this crate exports
/// (counters without `_created`, gauges, histograms).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_and_counts() {
        let m = Metrics::default();
        m.reconcile_error("agent", "write");
        m.decision(true, 2e-6);
        m.admission("agents", "denied");
        m.audit_batch(3, 1);
        let text = m.render();
        for name in [
            "agentiam_reconcile_errors_total{controller=\"agent\",reason=\"write\"} 1",
            "agentiam_decisions_total{outcome=\"allow\"} 1",
            "agentiam_decision_duration_seconds_count 1",
            "agentiam_admission_requests_total{webhook=\"agents\",outcome=\"denied\"} 1",
            "agentiam_audit_records_total 3",
            "agentiam_audit_queue_depth 1",
            "# EOF",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        let plain = m.render_prometheus_text();
        assert!(plain.contains("# TYPE agentiam_audit_records_total counter"), "{plain}");
        assert!(plain.contains("# HELP agentiam_audit_records_total Audit records made durable."), "{plain}");
        assert!(plain.contains("# TYPE agentiam_audit_queue_depth gauge"), "{plain}");
        assert!(!plain.contains("# EOF") && plain.contains("agentiam_audit_records_total 3"), "{plain}");
    }
}
