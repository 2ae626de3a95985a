//! Authorization decisions, side by side with OPA and Cedar in the same run: the same rule sets (10, 100 and
//! 1,000 rules, written as an AgentPolicy, in Rego and in Cedar) and the same 1,000 requests for all three.
//!
//! `cargo bench --bench authz` (bench/run.sh builds OPA, brings the cluster up and sets KUBECONFIG).
//! 1. In process: `Snapshot::decide` timed per call and in batches, against `opa bench` of the same policy
//!    (the mean over the whole request mix, and OPA's own p50/p99 for one request of each outcome), and
//!    against the `cedar-policy` crate's `Authorizer::is_authorized`, timed the same way in its own process
//!    (bench/cedar, `CEDAR_PEER_BIN`).
//! 2. Over HTTP: the release operator's `POST /v1/authorize` against `opa run --server`'s
//!    `POST /v1/data/agentiam/authz/decision`, driven by the same closed-loop generator (bench/support/load.rs)
//!    over a concurrency sweep, ours and OPA alternating point by point.
//!
//! Before any timing, every request's decision is compared (ours in process, ours over HTTP, OPA); the bench
//! fails on the first difference. Writes `$BENCH_RESULTS_DIR/authz.json`. Knobs (bench/README.md):
//! BENCH_AUTHZ_RULES (10,100,1000), BENCH_AUTHZ_REQUESTS (1000), BENCH_AUTHZ_DECISIONS (1000000),
//! BENCH_AUTHZ_ROUNDS (3), BENCH_AUTHZ_CONCURRENCY (1,2,3,4,6,8,16,32), BENCH_AUTHZ_SECONDS (1.5),
//! BENCH_AUTHZ_WARMUP (0.3), BENCH_AUTHZ_HTTP_ROUNDS (2), BENCH_AUTHZ_HTTP (1; 0 skips the HTTP part),
//! OPA_BIN, AGENTIAM_BIN, KUBECONFIG.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

#[path = "support/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "support/engine.rs"]
mod engine;
#[path = "support/http.rs"]
mod http;
#[path = "support/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "support/opa.rs"]
mod opa;
#[path = "support/rules.rs"]
mod rules;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use opa::{Opa, QUERY};

/// The in-process budget of issue 4: p99 at 1,000 rules.
const P99_BUDGET_NS: f64 = 10_000.0;
/// Issue 12: in-process p99 of a decision with a delegated token of a depth-3 chain.
const DELEGATED_P99_BUDGET_NS: f64 = 2_000.0;
/// The namespace of the in-process snapshot (the HTTP part uses a fresh one on the cluster).
const LOCAL_NS: &str = "bench-authz";
/// The trust score of the in-process agent: what the bench Agent's spec earns (docs/trust-score.md).
const TRUST: u16 = 525;

struct Config {
    sizes: Vec<usize>,
    requests: usize,
    decisions: usize,
    /// Decisions per round for Cedar: it takes milliseconds per decision at 1,000 rules, so the
    /// million of ours would take hours; ten passes over the requests give a stable p99.
    cedar_decisions: usize,
    rounds: usize,
    http: http::HttpConfig,
    run_http: bool,
    results_dir: PathBuf,
}

impl Config {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |k: &str, d: f64| var(k).map_or(d, |v| v.parse().unwrap_or_else(|_| panic!("{k}={v:?}")));
        let list = |k: &str, d: &str| -> Vec<usize> {
            var(k).unwrap_or_else(|| d.to_owned()).split(',').map(|c| c.trim().parse().expect(k)).collect()
        };
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Self {
            sizes: list("BENCH_AUTHZ_RULES", "10,100,1000"),
            requests: num("BENCH_AUTHZ_REQUESTS", 1000.0) as usize,
            decisions: num("BENCH_AUTHZ_DECISIONS", 1_000_000.0) as usize,
            cedar_decisions: num("BENCH_CEDAR_DECISIONS", 10_000.0) as usize,
            rounds: num("BENCH_AUTHZ_ROUNDS", 3.0) as usize,
            http: http::HttpConfig {
                concurrency: list("BENCH_AUTHZ_CONCURRENCY", "1,2,3,4,6,8,16,32"),
                seconds: num("BENCH_AUTHZ_SECONDS", 1.5),
                warmup: num("BENCH_AUTHZ_WARMUP", 0.3),
                rounds: num("BENCH_AUTHZ_HTTP_ROUNDS", 2.0) as usize,
            },
            run_http: var("BENCH_AUTHZ_HTTP").is_none_or(|v| v != "0"),
            results_dir: var("BENCH_RESULTS_DIR").map_or_else(|| root.join("bench/results"), PathBuf::from),
        }
    }
}

/// The files of one rule set, as OPA reads them.
pub struct Workload {
    pub n: usize,
    pub requests: Vec<rules::Request>,
    pub rego: PathBuf,
    /// `{"bench": {"requests": [input, ...]}}` for the whole-mix `opa bench` and the `opa eval` check.
    pub data: PathBuf,
    pub rego_lines: usize,
    pub policy_json_bytes: usize,
}

fn main() {
    let cfg = Config::from_env();
    let opa = Opa::locate();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "authz bench: rule sets {:?}, {} requests, OPA {} ({})",
        cfg.sizes,
        cfg.requests,
        opa.version(),
        opa.bin.display()
    );
    let workloads: Vec<Workload> = cfg.sizes.iter().map(|&n| workload(dir.path(), n, cfg.requests)).collect();

    let mut inprocess = Vec::new();
    let mut mixes = BTreeMap::new();
    let clock = engine::clock_overhead_ns(1_000_000);
    println!(
        "   clock read pair (Instant::now + elapsed): p50 {} ns, p99 {} ns",
        engine::pct(&clock, 0.5),
        engine::pct(&clock, 0.99)
    );
    for w in &workloads {
        let (row, mix) = in_process(&cfg, &opa, w, dir.path());
        mixes.insert(w.n.to_string(), mix);
        inprocess.push(row);
    }

    let http_rows = if cfg.run_http {
        http::run(&cfg.http, &opa, &workloads, dir.path())
    } else {
        println!("   BENCH_AUTHZ_HTTP=0: skipping the HTTP part");
        Vec::new()
    };

    let figures = figures(&inprocess, &http_rows);
    let fragment = json!({
        "bench": "authz",
        "config": {"rules": cfg.sizes, "requests": cfg.requests, "decisions_per_round": cfg.decisions,
            "cedar_decisions_per_round": cfg.cedar_decisions.min(cfg.decisions),
            "rounds": cfg.rounds, "http": cfg.http.to_json()},
        "opa": {"version": opa.version()},
        "clock_overhead_ns": {"p50": engine::pct(&clock, 0.5), "p99": engine::pct(&clock, 0.99)},
        "workload": workloads.iter().map(|w| json!({"rules": w.n, "rego_lines": w.rego_lines,
            "policy_json_bytes": w.policy_json_bytes, "mix": mixes[&w.n.to_string()]})).collect::<Vec<_>>(),
        "in_process": inprocess,
        "http": http_rows,
        "figures": figures,
    });
    std::fs::create_dir_all(&cfg.results_dir).expect("create results dir");
    let path = cfg.results_dir.join("authz.json");
    std::fs::write(&path, serde_json::to_string_pretty(&fragment).unwrap() + "\n").expect("write fragment");
    for f in fragment["figures"].as_array().unwrap() {
        println!(
            "   {}: ours {} vs {} {} -> ratio {} (target {})",
            f["benchmark"], f["ours"], f["peer"], f["unit"], f["ratio"], f["target"]
        );
    }
    println!("wrote {}", path.display());
}

fn workload(dir: &Path, n: usize, count: usize) -> Workload {
    let requests = rules::requests(n, count);
    let rego_text = rules::rego(n);
    let rego = dir.join(format!("policy-{n}.rego"));
    std::fs::write(&rego, &rego_text).expect("write rego");
    let inputs: Vec<Value> = requests.iter().map(|r| r.opa_input(LOCAL_NS, TRUST)).collect();
    let data = dir.join(format!("requests-{n}.json"));
    std::fs::write(&data, json!({"bench": {"requests": inputs}}).to_string()).expect("write requests");
    let policy_json_bytes = rules::agent_policy("bench-policy", LOCAL_NS, n).to_string().len();
    Workload { n, requests, rego, data, rego_lines: rego_text.lines().count(), policy_json_bytes }
}

/// Checks that OPA and our engine decide every request alike, then times both. Returns the row and the mix
/// of outcomes.
fn in_process(cfg: &Config, opa: &Opa, w: &Workload, dir: &Path) -> (Value, Value) {
    let snap = engine::snapshot(LOCAL_NS, w.n, TRUST);
    let record = engine::record(TRUST);
    let subject = engine::subject(LOCAL_NS);
    let reqs = engine::requests(&w.requests);
    let ours = engine::decisions(&snap, &record, subject, &reqs);
    let theirs = opa.eval(
        &[&w.rego, &w.data],
        &format!("[d | some r in data.bench.requests; d := {QUERY} with input as r]"),
    );
    let theirs = theirs.as_array().cloned().unwrap_or_default();
    assert_same(w, "our engine in process", &ours, "opa eval", &theirs);
    let mix = mix_of(w, &ours);
    println!(
        "   {} rules: in-process decisions agree with OPA on all {} requests; mix {mix}",
        w.n,
        ours.len()
    );

    // One input of each outcome for OPA's per-query histogram.
    let mut singles = Vec::new();
    for (label, want) in [
        ("Allow", json!({"decision": "Allow"})),
        ("Deny by rule", json!({"decision": "Deny", "by_rule": true})),
        ("Deny by default", json!({"decision": "Deny", "by_rule": false})),
        ("RequireApproval", json!({"decision": "RequireApproval"})),
    ] {
        let pick = ours.iter().position(|d| {
            d["decision"] == want["decision"]
                && want.get("by_rule").is_none_or(|b| b.as_bool() == Some(!d["rule"].is_null()))
        });
        if let Some(i) = pick {
            let path = dir.join(format!("input-{}-{}.json", w.n, singles.len()));
            std::fs::write(&path, w.requests[i].opa_input(LOCAL_NS, TRUST).to_string()).expect("write input");
            singles.push((label, path));
        }
    }

    // Ours and OPA alternate: ours, OPA (whole mix), ours, OPA (one input per outcome), ours.
    let mut rounds = Vec::new();
    let mut opa_mix = None;
    let mut opa_singles = Vec::new();
    for round in 0..cfg.rounds.max(1) {
        rounds.push(engine::measure(&snap, &record, subject, &reqs, cfg.decisions));
        if round == 0 {
            let mix_query = format!("[d | some r in data.bench.requests; d := {QUERY} with input as r]");
            opa_mix = Some(opa.bench("whole mix", &[&w.rego, &w.data], None, &mix_query));
        } else if round == 1 {
            for (label, path) in &singles {
                opa_singles.push(opa.bench(label, &[&w.rego], Some(path), QUERY));
            }
        }
    }
    let opa_mix = opa_mix.expect("opa bench ran");
    let per_decision_opa = opa_mix.ns_per_op / w.requests.len() as f64;
    let mut all: Vec<u32> = rounds.iter().flat_map(|r| r.per_call_ns.iter().copied()).collect();
    all.sort_unstable();
    let round_p99: Vec<f64> = rounds
        .iter()
        .map(|r| {
            let mut v = r.per_call_ns.clone();
            v.sort_unstable();
            engine::pct(&v, 0.99)
        })
        .collect();
    let batched: Vec<f64> = rounds.iter().map(|r| (r.batched_mean_ns * 10.0).round() / 10.0).collect();
    let mean_batched = batched.iter().sum::<f64>() / batched.len() as f64;
    let (p50, p99, p999) = (engine::pct(&all, 0.5), engine::pct(&all, 0.99), engine::pct(&all, 0.999));
    let opa_p99 = opa_singles.iter().map(|s| s.eval_p99_ns).fold(0.0, f64::max);

    // Cedar, in its own process (bench/cedar), on the same requests: decisions first, compared with ours.
    let cedar = cedar_peer(cfg, w, dir);
    let cedar_decisions = cedar["decisions"].as_array().cloned().unwrap_or_default();
    assert_same(w, "our engine in process", &ours, "Cedar", &cedar_decisions);
    let cp = &cedar["pooled"];
    println!(
        "   {} rules in process, Cedar: p50 {} ns, p99 {} ns, batched mean {} ns (decisions agree on all {})",
        w.n,
        cp["p50_ns"],
        cp["p99_ns"],
        cp["mean_batched_ns"],
        cedar_decisions.len()
    );

    // The same requests with a delegated token of a depth-3 chain (scope `*@**`, so every verdict must be
    // the identity token's): the chain's standing in the ledger, then `Snapshot::decide_delegated`.
    let fx = engine::delegated_fixture(LOCAL_NS);
    let delegated = engine::delegated_decisions(&snap, &record, &fx, LOCAL_NS, &reqs);
    assert_same(w, "identity decisions", &ours, "delegated decisions", &delegated);
    let delegated_rounds: Vec<engine::Round> = (0..cfg.rounds.max(1))
        .map(|_| engine::measure_delegated(&snap, &record, &fx, LOCAL_NS, &reqs, cfg.decisions))
        .collect();
    let mut dall: Vec<u32> = delegated_rounds.iter().flat_map(|r| r.per_call_ns.iter().copied()).collect();
    dall.sort_unstable();
    let dmean =
        delegated_rounds.iter().map(|r| r.batched_mean_ns).sum::<f64>() / delegated_rounds.len() as f64;
    let (dp50, dp99) = (engine::pct(&dall, 0.5), engine::pct(&dall, 0.99));
    println!(
        "   {} rules in process, delegated token (depth {}): p50 {dp50} ns, p99 {dp99} ns, batched mean {dmean:.1} ns",
        w.n,
        engine::DELEGATION_DEPTH
    );
    println!(
        "   {} rules in process: ours p50 {p50} ns, p99 {p99} ns (rounds {round_p99:?}), batched mean {mean_batched:.1} ns; \
         opa bench {per_decision_opa:.0} ns/decision over the mix, worst single-input p99 {opa_p99:.0} ns",
        w.n
    );
    let row = json!({
        "rules": w.n,
        "ours": {"decisions": all.len(), "p50_ns": p50, "p90_ns": engine::pct(&all, 0.9), "p99_ns": p99,
            "p999_ns": p999, "max_ns": engine::pct(&all, 1.0), "round_p99_ns": round_p99,
            "batched_mean_ns": batched, "mean_batched_ns": (mean_batched * 10.0).round() / 10.0},
        "delegated": {"depth": engine::DELEGATION_DEPTH, "decisions": dall.len(), "p50_ns": dp50,
            "p99_ns": dp99, "p999_ns": engine::pct(&dall, 0.999), "mean_batched_ns": (dmean * 10.0).round() / 10.0},
        "cedar": {"engine": cedar["engine"], "rounds": cedar["rounds"], "pooled": cedar["pooled"]},
        "opa": {"mix": opa_mix.to_json(), "mix_ns_per_decision": per_decision_opa.round(),
            "singles": opa_singles.iter().map(opa::BenchRun::to_json).collect::<Vec<_>>(),
            "worst_single_p99_ns": opa_p99},
    });
    (row, mix)
}

/// Runs the Cedar peer (`CEDAR_PEER_BIN`, built by bench/run.sh) on this workload; its JSON answer.
fn cedar_peer(cfg: &Config, w: &Workload, dir: &Path) -> Value {
    let bin =
        std::env::var_os("CEDAR_PEER_BIN").map(PathBuf::from).expect("CEDAR_PEER_BIN (bench/run.sh sets it)");
    let inputs: Vec<Value> = w.requests.iter().map(|r| r.opa_input(LOCAL_NS, TRUST)).collect();
    let job = json!({"policies": rules::cedar(w.n), "requests": inputs, "decisions": cfg.cedar_decisions.min(cfg.decisions),
        "rounds": cfg.rounds.max(1)});
    let path = dir.join(format!("cedar-{}.json", w.n));
    std::fs::write(&path, job.to_string()).expect("write the Cedar job");
    let out = std::process::Command::new(&bin).arg(&path).output().expect("run the Cedar peer");
    assert!(out.status.success(), "the Cedar peer failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the Cedar peer's JSON")
}

/// Fails the bench, listing the first differences, unless both lists decide every request alike.
pub fn assert_same(w: &Workload, a_name: &str, a: &[Value], b_name: &str, b: &[Value]) {
    assert_eq!(a.len(), b.len(), "{a_name} answered {} requests, {b_name} {}", a.len(), b.len());
    let diffs: Vec<String> = a
        .iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x["decision"] != y["decision"] || x["rule"] != y["rule"])
        .take(10)
        .map(|(i, (x, y))| {
            let r = &w.requests[i];
            format!(
                "  request {i} ({}): {} {} tool={:?} context={}\n    {a_name}: {x}\n    {b_name}: {y}",
                r.intent,
                r.action,
                r.resource,
                r.tool,
                Value::Object(r.context.clone())
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{} rules: {a_name} and {b_name} disagree (first {} differences):\n{}",
        w.n,
        diffs.len(),
        diffs.join("\n")
    );
}

/// Counts of each outcome, and of each request intent.
fn mix_of(w: &Workload, decisions: &[Value]) -> Value {
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut intents: BTreeMap<String, usize> = BTreeMap::new();
    for (d, r) in decisions.iter().zip(&w.requests) {
        let kind = match (d["decision"].as_str().unwrap_or("?"), d["rule"].is_null()) {
            ("Deny", true) => "Deny (default)".to_owned(),
            ("Deny", false) => "Deny (rule)".to_owned(),
            (v, _) => v.to_owned(),
        };
        *outcomes.entry(kind).or_default() += 1;
        *intents.entry(r.intent.to_owned()).or_default() += 1;
    }
    json!({"outcomes": outcomes, "intents": intents})
}

fn figures(inprocess: &[Value], http_rows: &[Value]) -> Vec<Value> {
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    // `ratio` is None when the peer has nothing to divide by. A target is then not judged (`met: null`):
    // "5x of zero" says nothing, and the equal-bound context row is the comparison to read.
    let figure =
        |bench: String, ours: f64, peer: f64, unit: &str, ratio: Option<f64>, target: Option<f64>| {
            let met = target.and_then(|t| ratio.map(|r| r >= t));
            json!({"benchmark": bench, "ours": r1(ours), "peer": r1(peer), "unit": unit,
            "ratio": ratio.map(r3), "target": target, "met": met})
        };
    let label = |n: u64| if n >= 1000 { format!("{},{:03}", n / 1000, n % 1000) } else { n.to_string() };
    let rps = |row: &Value, side: &str, key: &str| row[side][key]["rps"].as_f64().unwrap_or(0.0);
    let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let mut out = Vec::new();
    for row in http_rows {
        let n = label(row["rules"].as_u64().unwrap_or(0));
        let (ours, peer) = (rps(row, "ours", "best_under_1ms"), rps(row, "opa", "best_under_1ms"));
        let note = if peer > 0.0 {
            ""
        } else {
            " (OPA reached no point with p99<=1ms: not judged; see the equal-bound row)"
        };
        out.push(figure(
            format!("decision API HTTP throughput at p99<=1ms vs OPA REST, {n} rules{note}"),
            ours,
            peer,
            "req/s",
            div(ours, peer),
            Some(5.0),
        ));
    }
    if let Some(row) = inprocess.iter().find(|r| r["rules"] == 1000) {
        let p99 = row["ours"]["p99_ns"].as_f64().unwrap_or(f64::NAN);
        out.push(figure(
            "in-process decision p99 at 1,000 rules vs the 10 µs budget (ratio = budget / p99)".into(),
            p99 / 1000.0,
            P99_BUDGET_NS / 1000.0,
            "µs",
            Some(P99_BUDGET_NS / p99),
            Some(1.0),
        ));
    }
    for row in http_rows.iter().filter(|r| r["ours_delegated"].is_object()) {
        let n = label(row["rules"].as_u64().unwrap_or(0));
        let (ours, peer) = (rps(row, "ours_delegated", "best_under_1ms"), rps(row, "ours", "best_under_1ms"));
        out.push(figure(
            format!("decision API HTTP throughput at p99<=1ms, delegated token (chain depth 3) vs identity token, {n} rules"),
            ours,
            peer,
            "req/s",
            div(ours, peer),
            Some(0.9),
        ));
    }
    if let Some(row) = inprocess.iter().find(|r| r["rules"] == 1000) {
        let p99 = row["delegated"]["p99_ns"].as_f64().unwrap_or(f64::NAN);
        out.push(figure(
            "in-process delegated-token decision p99 (chain depth 3) at 1,000 rules vs the 2 µs budget (ratio = budget / p99)".into(),
            p99 / 1000.0,
            DELEGATED_P99_BUDGET_NS / 1000.0,
            "µs",
            Some(DELEGATED_P99_BUDGET_NS / p99),
            Some(1.0),
        ));
        let identity = row["ours"]["p99_ns"].as_f64().unwrap_or(f64::NAN);
        out.push(figure(
            "context: in-process p99, delegated token (depth 3) vs identity token, 1,000 rules (ratio = identity / delegated)".into(),
            p99 / 1000.0,
            identity / 1000.0,
            "µs",
            div(identity, p99),
            None,
        ));
    }
    for row in http_rows {
        let n = label(row["rules"].as_u64().unwrap_or(0));
        if let Some(bound) = row["equal_bound"].as_object() {
            let (ours, peer) =
                (bound["ours_rps"].as_f64().unwrap_or(0.0), bound["opa_rps"].as_f64().unwrap_or(0.0));
            let ms = bound["p99_bound_us"].as_f64().unwrap_or(0.0) / 1000.0;
            out.push(figure(
                format!("context: decision API HTTP throughput vs OPA REST at p99<={ms:.1}ms (OPA's best p99), {n} rules"),
                ours,
                peer,
                "req/s",
                div(ours, peer),
                None,
            ));
        }
        let (ours, peer) =
            (rps(row, "ours", "max"), rps(row, "opa", "max").max(rps(row, "opa_other", "max")));
        out.push(figure(
            format!("context: decision API max HTTP throughput (any p99) vs OPA REST, {n} rules"),
            ours,
            peer,
            "req/s",
            div(ours, peer),
            None,
        ));
    }
    for row in inprocess.iter().filter(|r| r["cedar"].is_object()) {
        let n = label(row["rules"].as_u64().unwrap_or(0));
        let ours = row["ours"]["p99_ns"].as_f64().unwrap_or(f64::NAN);
        let peer = row["cedar"]["pooled"]["p99_ns"].as_f64().unwrap_or(f64::NAN);
        out.push(figure(
            format!("in-process decision p99 vs Cedar (cedar-policy, is_authorized), {n} rules (ratio = Cedar / ours)"),
            ours,
            peer,
            "ns",
            div(peer, ours),
            Some(5.0),
        ));
        let ours = row["ours"]["mean_batched_ns"].as_f64().unwrap_or(f64::NAN);
        let peer = row["cedar"]["pooled"]["mean_batched_ns"].as_f64().unwrap_or(f64::NAN);
        out.push(figure(
            format!("context: in-process mean time per decision vs Cedar, {n} rules (ratio = Cedar / ours)"),
            ours,
            peer,
            "ns",
            div(peer, ours),
            None,
        ));
    }
    for row in inprocess {
        let n = label(row["rules"].as_u64().unwrap_or(0));
        let ours = row["ours"]["mean_batched_ns"].as_f64().unwrap_or(f64::NAN);
        let peer = row["opa"]["mix_ns_per_decision"].as_f64().unwrap_or(f64::NAN);
        out.push(figure(
            format!(
                "context: in-process mean time per decision vs `opa bench`, {n} rules (ratio = OPA / ours)"
            ),
            ours,
            peer,
            "ns",
            div(peer, ours),
            None,
        ));
    }
    out
}
