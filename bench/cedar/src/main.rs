//! `cedar-peer <job.json>`: evaluates the authorization bench's requests with Cedar and times it the way
//! bench/support/engine.rs times our engine (one clock pair per call; then batches of 1,000 per clock pair).
//!
//! The job (written by bench/authz.rs): `{"policies": "<Cedar text>", "requests": [<OPA input>...],
//! "decisions": N, "rounds": R}`. Each policy carries `@id("<rule name>")`, and `@approval("required")` when
//! the rule needs a human's approval. Prints one JSON object: every request's decision (`Allow`, `Deny` or
//! `RequireApproval`, and the deciding rule, as our engine reports them), then per-call percentiles and batched
//! means per round. Evaluation errors fail the run: an erroring Cedar policy is skipped, which would make its
//! verdict silently differ from ours.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Instant;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use serde_json::{Map, Value, json};

const BATCH: usize = 1_000;

/// What a policy stands for: its rule's name, and whether an Allow by it needs approval.
struct Meta {
    rule: String,
    approval: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("cedar-peer: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: cedar-peer <job.json>")?;
    let job: Value = serde_json::from_slice(&std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?)
        .map_err(|e| format!("{path}: {e}"))?;
    let text = job["policies"].as_str().ok_or("job.policies must be Cedar text")?;
    let policies = PolicySet::from_str(text).map_err(|e| format!("the policies do not parse: {e}"))?;
    let mut meta: HashMap<PolicyId, Meta> = HashMap::new();
    for p in policies.policies() {
        let rule = p.annotation("id").ok_or_else(|| format!("policy {} has no @id", p.id()))?.to_owned();
        meta.insert(p.id().clone(), Meta { rule, approval: p.annotation("approval") == Some("required") });
    }
    let inputs = job["requests"].as_array().ok_or("job.requests must be a list")?;
    let built: Vec<(Request, Entities)> = inputs.iter().map(build).collect::<Result<_, _>>()?;
    let authorizer = Authorizer::new();

    // Decisions, checked for evaluation errors.
    let mut decisions = Vec::with_capacity(built.len());
    for (i, (req, entities)) in built.iter().enumerate() {
        let resp = authorizer.is_authorized(req, &policies, entities);
        if let Some(e) = resp.diagnostics().errors().next() {
            return Err(format!("request {i}: a policy failed to evaluate: {e}"));
        }
        let (decision, rule) = verdict(&resp, &meta);
        decisions.push(json!({"decision": decision, "rule": rule}));
    }

    let count = job["decisions"].as_u64().unwrap_or(1_000_000) as usize;
    let rounds = job["rounds"].as_u64().unwrap_or(3).max(1) as usize;
    let mut out_rounds = Vec::new();
    let mut pooled: Vec<u32> = Vec::with_capacity(count * rounds);
    let mut sink = 0usize;
    for _ in 0..rounds {
        let mut per_call: Vec<u32> = Vec::with_capacity(count);
        for k in 0..count {
            let (req, entities) = &built[k % built.len()];
            let t = Instant::now();
            let resp = authorizer.is_authorized(req, &policies, entities);
            let (d, _) = verdict(&resp, &meta);
            per_call.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
            sink = sink.wrapping_add(d.len());
        }
        let mut batched = Vec::new();
        let mut k = 0;
        while k + BATCH <= count {
            let t = Instant::now();
            for m in 0..BATCH {
                let (req, entities) = &built[(k + m) % built.len()];
                let resp = authorizer.is_authorized(req, &policies, entities);
                sink = sink.wrapping_add(verdict(&resp, &meta).0.len());
            }
            batched.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
            k += BATCH;
        }
        pooled.extend_from_slice(&per_call);
        per_call.sort_unstable();
        let mean = batched.iter().sum::<f64>() / batched.len().max(1) as f64;
        out_rounds.push(json!({
            "decisions": per_call.len(),
            "p50_ns": pct(&per_call, 0.5), "p90_ns": pct(&per_call, 0.9), "p99_ns": pct(&per_call, 0.99),
            "p999_ns": pct(&per_call, 0.999), "max_ns": pct(&per_call, 1.0),
            "batched_mean_ns": (mean * 10.0).round() / 10.0,
        }));
    }
    pooled.sort_unstable();
    let means: Vec<f64> = out_rounds.iter().filter_map(|r| r["batched_mean_ns"].as_f64()).collect();
    let out = json!({
        "engine": "cedar-policy 4.14.1",
        "policies": meta.len(),
        "decisions": decisions,
        "rounds": out_rounds,
        "pooled": {"decisions": pooled.len(), "p50_ns": pct(&pooled, 0.5), "p90_ns": pct(&pooled, 0.9),
            "p99_ns": pct(&pooled, 0.99), "p999_ns": pct(&pooled, 0.999), "max_ns": pct(&pooled, 1.0),
            "mean_batched_ns": (means.iter().sum::<f64>() / means.len().max(1) as f64 * 10.0).round() / 10.0},
        "sink": sink % 2,
    });
    println!("{out}");
    Ok(())
}

/// Our engine's verdict from Cedar's answer: a satisfied `forbid` denies (named by the smallest rule name,
/// as our engine and the Rego module report); otherwise a satisfied approval `permit` asks for approval;
/// otherwise a satisfied `permit` allows; nothing satisfied denies by default.
fn verdict(resp: &cedar_policy::Response, meta: &HashMap<PolicyId, Meta>) -> (&'static str, Option<String>) {
    let reasons = resp.diagnostics().reason();
    match resp.decision() {
        Decision::Deny => {
            let rule = reasons.filter_map(|id| meta.get(id)).map(|m| m.rule.as_str()).min();
            ("Deny", rule.map(str::to_owned))
        }
        Decision::Allow => {
            let (mut approval, mut allow): (Option<&str>, Option<&str>) = (None, None);
            for m in reasons.filter_map(|id| meta.get(id)) {
                let slot = if m.approval { &mut approval } else { &mut allow };
                if slot.is_none_or(|r| m.rule.as_str() < r) {
                    *slot = Some(m.rule.as_str());
                }
            }
            match (approval, allow) {
                (Some(r), _) => ("RequireApproval", Some(r.to_owned())),
                (None, r) => ("Allow", r.map(str::to_owned)),
            }
        }
    }
}

/// The Cedar request for one OPA input: principal `Agent::"<name>"` with its trust score, the action, and the
/// resource, tool and attributes in the context. Numeric strings become numbers (Cedar's context is typed; our
/// engine and the Rego module compare them numerically), as a gateway's schema-typed mapping would.
fn build(input: &Value) -> Result<(Request, Entities), String> {
    let name = input["agent"]["name"].as_str().ok_or("input.agent.name")?;
    let principal = uid("Agent", name)?;
    let trust = input["agent"]["trustScore"].as_i64().ok_or("input.agent.trustScore")?;
    let attrs = HashMap::from([("trustScore".to_owned(), RestrictedExpression::new_long(trust))]);
    let agent = Entity::new(principal.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
    let entities = Entities::from_entities([agent], None).map_err(|e| e.to_string())?;
    let action = uid("Action", input["action"].as_str().ok_or("input.action")?)?;
    let resource = uid("Resource", "request")?;
    let mut ctx = Map::new();
    ctx.insert("resource".into(), input["resource"].clone());
    if let Some(t) = input.get("tool") {
        ctx.insert("tool".into(), t.clone());
    }
    let mut attrs = Map::new();
    for (k, v) in input.get("context").and_then(Value::as_object).into_iter().flatten() {
        let typed = match v {
            Value::String(s) => s.parse::<i64>().map_or_else(|_| v.clone(), Value::from),
            other => other.clone(),
        };
        attrs.insert(k.clone(), typed);
    }
    ctx.insert("attrs".into(), Value::Object(attrs));
    let context = Context::from_json_value(Value::Object(ctx), None).map_err(|e| e.to_string())?;
    let req = Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())?;
    Ok((req, entities))
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let quoted = serde_json::to_string(id).map_err(|e| e.to_string())?;
    EntityUid::from_str(&format!("{kind}::{quoted}")).map_err(|e| format!("{kind} {id:?}: {e}"))
}

/// The same percentile as bench/support/engine.rs: the sample at rank ceil(n * q).
fn pct(sorted: &[u32], q: f64) -> u32 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let idx = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
    sorted[idx]
}
