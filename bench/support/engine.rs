//! Our engine in process: a snapshot built from one Agent and one AgentPolicy exactly as the operator builds
//! it (`authz::Builder`), and `Snapshot::decide` timed per call and in batches.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentiam::api::{Agent, AgentPhase, AgentPolicy};
use agentiam::authz::{self, Builder, Clock, RateLimiter, Snapshot, Subject};
use agentiam::registry::ledger::{AgentRecord, Issuance, IssuedToken, Stored};
use serde_json::{Value, json};

use crate::rules::{self, AGENT, Request};

/// The agent's UID in the in-process snapshot.
const UID: &str = "0b5e7c1a-3d2f-4a6b-9c8d-7e6f5a4b3c2d";
/// Decisions between two clock reads in the batched loop.
const BATCH: usize = 1000;
/// The audience and jti of the token every request presents.
const AUD: &str = "bench";
const JTI: &str = "bench-token";
/// Its lifetime (the default).
const LIFETIME: Duration = Duration::from_secs(600);

/// A snapshot holding one Active agent with `trust_score`, governed by the bench policy of `n` rules.
pub fn snapshot(namespace: &str, n: usize, trust_score: u16) -> Snapshot {
    let agent: Agent = serde_json::from_value(json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": AGENT, "namespace": namespace, "uid": UID, "generation": 1},
        "spec": {"owner": {"kind": "User", "name": "alice@example.com"}, "purpose": "authorization bench",
                 "credentials": {"audiences": [AUD]}},
        "status": {"phase": "Active", "trustScore": trust_score},
    }))
    .expect("bench Agent");
    let policy: AgentPolicy =
        serde_json::from_value(rules::agent_policy("bench-policy", namespace, n)).expect("bench AgentPolicy");
    let snap = Builder::default().build(&[Arc::new(agent)], &[Arc::new(policy)], &[]);
    let errors: Vec<&String> = snap.policies().iter().flat_map(|p| &p.errors).collect();
    assert!(errors.is_empty(), "the bench policy does not compile: {errors:?}");
    snap
}

/// The engine's requests, borrowing the generated ones.
pub fn requests(reqs: &[Request]) -> Vec<authz::Request<'_>> {
    reqs.iter()
        .map(|r| authz::Request {
            action: &r.action,
            resource: &r.resource,
            tool: r.tool.as_deref(),
            context: &r.context,
            delegation: None,
        })
        .collect()
}

pub fn subject(namespace: &str) -> Subject<'_> {
    Subject { uid: UID, namespace, name: AGENT, jti: JTI, audience: AUD, lifetime: Some(LIFETIME) }
}

/// What the operator's ledger holds for the agent: Active with `trust_score`, and the token the requests
/// present live (as the operator's decision API looks it up for every request).
pub fn record(trust_score: u16) -> AgentRecord {
    let now = jiff::Timestamp::now();
    AgentRecord {
        phase: Some(AgentPhase::Active),
        trust_score: Some(trust_score),
        issuances: vec![Issuance {
            key: "credential.issue:bench:0".into(),
            issued_at: now,
            expires_at: now.checked_add(jiff::SignedDuration::from_hours(24)).expect("a day ahead"),
            ttl_secs: LIFETIME.as_secs(),
            key_id: "bench".into(),
            fingerprint: None,
            tokens: vec![IssuedToken { aud: AUD.into(), jti: JTI.into() }],
            audiences: vec![AUD.into()],
            x509: false,
            x509_serial: None,
            stored: Stored::Yes,
        }],
        ..AgentRecord::default()
    }
}

/// Every request's decision as `{"decision", "rule"}`, the shape the Rego policy returns.
pub fn decisions(
    snap: &Snapshot,
    record: &AgentRecord,
    subject: Subject<'_>,
    reqs: &[authz::Request<'_>],
) -> Vec<Value> {
    let (clock, limiter) = (Clock::now(), RateLimiter::default());
    reqs.iter()
        .map(|r| {
            let d = snap.decide(subject, Some(record), r, clock, &limiter);
            json!({"decision": d.verdict.as_str(), "rule": d.rule.as_deref()})
        })
        .collect()
}

/// One round of the in-process measurement.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Per-call latencies in ns (clock read included), unsorted.
    pub per_call_ns: Vec<u32>,
    /// Mean ns per decision from the batched loop.
    pub batched_mean_ns: f64,
}

/// `count` decisions timed one by one, then `count` decisions timed in batches of [`BATCH`], cycling through
/// the requests. The clock is fixed for the whole round (no rule has a time window or a rate limit); the
/// server reads it once per request.
pub fn measure(
    snap: &Snapshot,
    record: &AgentRecord,
    subject: Subject<'_>,
    reqs: &[authz::Request<'_>],
    count: usize,
) -> Round {
    let (clock, limiter) = (Clock::now(), RateLimiter::default());
    let decide = |i: usize| {
        let r = &reqs[i % reqs.len()];
        black_box(snap.decide(black_box(subject), Some(record), black_box(r), clock, &limiter));
    };
    for i in 0..count / 10 {
        decide(i);
    }
    let mut per_call_ns = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        decide(i);
        per_call_ns.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < count {
        let t = Instant::now();
        for i in done..done + BATCH {
            decide(i);
        }
        total += t.elapsed();
        done += BATCH;
    }
    Round { per_call_ns, batched_mean_ns: total.as_nanos() as f64 / done as f64 }
}

/// What one `Instant::now()` + `elapsed()` pair costs: the floor under every per-call latency.
pub fn clock_overhead_ns(count: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..count)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX)
        })
        .collect();
    v.sort_unstable();
    v
}

/// Percentile `p` of sorted values.
pub fn pct(sorted: &[u32], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let idx = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
    sorted.get(idx).map_or(f64::NAN, |&v| f64::from(v))
}
