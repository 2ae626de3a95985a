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
            probe: false,
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
    timed(count, |i: usize| {
        let r = &reqs[i % reqs.len()];
        black_box(snap.decide(black_box(subject), Some(record), black_box(r), clock, &limiter));
    })
}

/// `decide(i)` for `count` calls timed one by one, then `count` calls timed in batches of [`BATCH`], after
/// a warm-up of a tenth of that.
fn timed(count: usize, decide: impl Fn(usize)) -> Round {
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

/// The depth of the delegation chain the delegated decisions carry (issue 12: depth 3).
pub const DELEGATION_DEPTH: usize = 3;
/// The delegated token's jti.
const DELEGATED_JTI: &str = "bench-delegated-token";

/// A delegation chain of `DELEGATION_DEPTH` links as the operator's ledger holds it, built from the audit
/// records the operator writes (each link's `delegation.activate`, the root's `admission.create` with its
/// grantor, the leaf's `delegation.issue` intent and outcome), and the leaf's scopes.
pub struct DelegatedFixture {
    pub ledger: agentiam::registry::ledger::Ledger,
    pub chain: Vec<String>,
    pub scopes: Vec<agentiam::authz::scope::Scope>,
    pub grantor: String,
    pub groups: Vec<String>,
}

pub fn delegated_fixture(namespace: &str) -> DelegatedFixture {
    use agentiam::audit::{Entry, ObjectRef, Outcome, Record, RecordKind};
    let chain: Vec<String> = (0..DELEGATION_DEPTH).map(|i| format!("dlg-uid-{i}")).collect();
    let object = |uid: &str| ObjectRef {
        api_version: "agentiam.dev/v1alpha1".into(),
        kind: "Delegation".into(),
        namespace: Some(namespace.into()),
        name: uid.into(),
        uid: Some(uid.into()),
    };
    let now = jiff::Timestamp::now();
    let later = now.checked_add(jiff::SignedDuration::from_hours(24)).expect("a day ahead");
    let mut entries = vec![(
        RecordKind::Event,
        None,
        Entry::new("user:alice", "admission.create", object(&chain[0]), Outcome::Success, "admitted")
            .with_detail("requester.username", "alice@example.com")
            .with_detail("requester.groups", r#"["support"]"#),
    )];
    for uid in &chain {
        let e =
            Entry::new("agentiam-operator", "delegation.activate", object(uid), Outcome::Success, "in force")
                .with_detail("phase", "Active")
                .with_detail("reason", "Granted");
        entries.push((RecordKind::Event, None, e));
    }
    let leaf = chain.last().expect("a chain");
    let key = format!("delegation.issue:{leaf}:1");
    let intent =
        Entry::new("agentiam-operator", "delegation.issue", object(leaf), Outcome::Pending, "initial")
            .with_detail("jti", DELEGATED_JTI)
            .with_detail("audiences", AUD)
            .with_detail("issuedAt", now.to_string())
            .with_detail("expiresAt", later.to_string())
            .with_detail("keyID", "bench");
    entries.push((RecordKind::Intent, Some(key.clone()), intent));
    let outcome =
        Entry::new("agentiam-operator", "delegation.issue", object(leaf), Outcome::Success, "stored");
    entries.push((RecordKind::Outcome, Some(key), outcome));
    let mut prev = agentiam::audit::ZERO_HASH.to_owned();
    let mut records = Vec::new();
    for (seq, (kind, key, entry)) in entries.into_iter().enumerate() {
        let r = Record::seal(&prev, seq as u64 + 1, now.to_string(), kind, key, entry).expect("seal");
        prev = r.hash.clone();
        records.push(r);
    }
    let ledger = agentiam::registry::ledger::Ledger::from_records(&records);
    let scopes = agentiam::authz::scope::parse_all(&["*@**"]).expect("scope");
    DelegatedFixture {
        ledger,
        chain,
        scopes,
        grantor: "alice@example.com".into(),
        groups: vec!["support".into()],
    }
}

/// What the decision API does for a delegated token once it is verified (from its cache): the chain's
/// standing in the ledger, then `Snapshot::decide_delegated`.
fn decide_delegated(
    snap: &Snapshot,
    record: &AgentRecord,
    fx: &DelegatedFixture,
    namespace: &str,
    r: &authz::Request<'_>,
    clock: Clock,
    limiter: &RateLimiter,
) -> authz::Decision {
    use agentiam::registry::ledger::DelegatedStanding;
    if fx.ledger.delegated_standing(&fx.chain, DELEGATED_JTI, AUD, clock.now) != DelegatedStanding::Live {
        return authz::Decision::deny(authz::Reason::Refused("chain not in force".into()));
    }
    let delegated = authz::Delegated { scopes: &fx.scopes, grantor: &fx.grantor, grantor_groups: &fx.groups };
    let request = authz::Request { delegation: Some(&delegated), ..*r };
    let acting = authz::Acting { uid: UID, namespace, name: AGENT };
    snap.decide_delegated(acting, Some(record), &request, clock, limiter)
}

/// Every request's decision with the delegated token, as [`decisions`] gives them.
pub fn delegated_decisions(
    snap: &Snapshot,
    record: &AgentRecord,
    fx: &DelegatedFixture,
    namespace: &str,
    reqs: &[authz::Request<'_>],
) -> Vec<Value> {
    let (clock, limiter) = (Clock::now(), RateLimiter::default());
    reqs.iter()
        .map(|r| {
            let d = decide_delegated(snap, record, fx, namespace, r, clock, &limiter);
            json!({"decision": d.verdict.as_str(), "rule": d.rule.as_deref()})
        })
        .collect()
}

/// [`measure`] for delegated decisions.
pub fn measure_delegated(
    snap: &Snapshot,
    record: &AgentRecord,
    fx: &DelegatedFixture,
    namespace: &str,
    reqs: &[authz::Request<'_>],
    count: usize,
) -> Round {
    let (clock, limiter) = (Clock::now(), RateLimiter::default());
    timed(count, |i: usize| {
        let r = &reqs[i % reqs.len()];
        black_box(decide_delegated(snap, record, black_box(fx), namespace, black_box(r), clock, &limiter));
    })
}
