//! JWT-SVID mint and verify on one core, side by side with `openssl speed ecdsap256` in the same run.
//!
//! `cargo bench --bench jwt` (or `make bench`, which also merges the result into bench/results/report.md).
//! Every loop is single-threaded and time-boxed after a warm-up. Within a round our loops run in interleaved
//! slices; rounds of ours and runs of openssl alternate (ours, openssl, ours, openssl, ours) and each figure is
//! the median of its rounds, so slow drift of a shared machine hits both sides. Writes `$BENCH_RESULTS_DIR/jwt.json` (default bench/results), a fragment
//! bench/run.sh merges. Knobs: BENCH_SECONDS (3), BENCH_ROUNDS (3), OPENSSL (openssl), BENCH_PROFILE=<loop>.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

/// The operator binary's allocator (src/bin/agentiam.rs), so these loops allocate the way the operator does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentiam::identity::jwt::{AgentClaims, DEFAULT_TTL, Minter, SvidClaims, new_jti};
use agentiam::identity::keys::SigningKey;
use agentiam::identity::verify::{JwtVerifier, VerifierConfig, decode_unverified};
use agentiam::identity::{SpiffeId, TrustDomain};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, ParsedPublicKey,
};
use jiff::Timestamp;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

const ISSUER: &str = "https://agentiam.agentiam-system.svc";
const AUDIENCE: &str = "https://tickets.example.com";
const UID: &str = "3f8a2c1e-5b7d-4e9f-a1c3-0d2e4f6a8b9c";
const OWNER: &str = "User:alice@example.com";
/// Operations between two clock reads: keeps the clock out of the measurement even for sub-µs loops.
const BATCH: u64 = 32;
/// Each loop's time in a round is split into this many slices, run round-robin with the other loops.
const SLICES: u32 = 10;

/// One measured loop.
struct Case {
    name: &'static str,
    what: &'static str,
    unit: &'static str,
    /// Primary cases get the full BENCH_SECONDS; context cases half of it.
    primary: bool,
    /// The openssl figure this loop is comparable with ("sign", "verify"), if it is a whole operation.
    peer: Option<&'static str>,
    rounds: Vec<f64>,
}

fn main() {
    let seconds: f64 = env_or("BENCH_SECONDS", 3.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let openssl = std::env::var("OPENSSL").unwrap_or_else(|_| "openssl".into());
    let out_dir = std::env::var_os("BENCH_RESULTS_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results"), PathBuf::from);

    let fx = Fixture::new();
    // Profiling aid: `BENCH_PROFILE=verify perf record -g target/release/deps/jwt-*` runs one loop, writes nothing.
    if let Ok(name) = std::env::var("BENCH_PROFILE") {
        let (ops, secs) = fx.run(&name, Duration::from_secs_f64(seconds));
        println!("{name}: {:.1}/s", ops as f64 / secs);
        return;
    }
    let mut cases = vec![
        case("mint", "SvidClaims::new (fresh jti) + Minter::mint: what the operator does per token", true),
        case("mint_hot_path", "Minter::mint with prebuilt claims (serialize, base64, SHA-256, sign)", true),
        case("verify", "JwtVerifier::verify (strict: parse, signature, every claim)", true),
        case("awslc_sign_signing_input", "aws-lc EcdsaKeyPair::sign of a token's signing input", false),
        case("awslc_sign_32b", "aws-lc EcdsaKeyPair::sign of 32 bytes (closest to openssl speed)", false),
        case("awslc_verify_signing_input", "aws-lc ParsedPublicKey::verify_sig of a token", false),
        case(
            "decode_unverified",
            "verify::decode_unverified: split, base64url, strict JSON of both parts",
            false,
        ),
        case("claims_new", "SvidClaims::new alone (allocations + 16 random bytes for jti)", false),
        case("new_jti", "new_jti alone (aws-lc CSPRNG, base64url)", false),
        case("claims_json", "serde_json::to_writer of the claims into a reused buffer", false),
        case(
            "jsonwebtoken_encode",
            "SvidClaims::new + jsonwebtoken::encode (EncodingKey::from_ec_der)",
            false,
        ),
        case("jsonwebtoken_decode", "jsonwebtoken::decode (DecodingKey::from_ec_components, ES256)", false),
    ];
    let mut openssl_runs = Vec::new();
    println!("jwt bench: {seconds}s per primary loop, {rounds} rounds, peer: {openssl} speed ecdsap256");
    for round in 0..rounds {
        println!("-- round {} of {rounds} (ours, {SLICES} interleaved slices per loop)", round + 1);
        for c in &cases {
            fx.run(c.name, Duration::from_millis(100)); // warm-up, discarded
        }
        // Round-robin slices, so drift during the round hits every loop alike and the breakdown adds up.
        let mut totals = vec![(0u64, 0f64); cases.len()];
        for _ in 0..SLICES {
            for (c, total) in cases.iter().zip(&mut totals) {
                let secs = if c.primary { seconds } else { (seconds / 2.0).max(0.5) };
                let (ops, took) = fx.run(c.name, Duration::from_secs_f64(secs / SLICES as f64));
                total.0 += ops;
                total.1 += took;
            }
        }
        for (c, (ops, secs)) in cases.iter_mut().zip(totals) {
            let rate = ops as f64 / secs;
            println!("   {:<28} {:>12.1} {}", c.name, rate, c.unit);
            c.rounds.push(rate);
        }
        if round + 1 < rounds {
            let run = openssl_speed(&openssl, seconds);
            println!("-- openssl: sign {:.1}/s, verify {:.1}/s", run.sign, run.verify);
            openssl_runs.push(run);
        }
    }
    if openssl_runs.is_empty() {
        openssl_runs.push(openssl_speed(&openssl, seconds));
    }

    let sign = median(openssl_runs.iter().map(|r| r.sign).collect());
    let verify = median(openssl_runs.iter().map(|r| r.verify).collect());
    let get = |name: &str| median(cases.iter().find(|c| c.name == name).unwrap().rounds.clone());
    let figure = |bench: &str, ours: f64, peer: f64, unit: &str, target: Option<f64>| {
        let ratio = ours / peer;
        json!({
            "benchmark": bench, "ours": round1(ours), "peer": round1(peer), "unit": unit,
            "ratio": round3(ratio), "target": target, "met": target.map(|t| ratio >= t),
        })
    };
    let figures = vec![
        figure("JWT-SVID mint per core vs openssl ecdsap256 sign", get("mint"), sign, "ops/s", Some(0.8)),
        figure(
            "JWT-SVID verify per core vs openssl ecdsap256 verify",
            get("verify"),
            verify,
            "ops/s",
            Some(1.0),
        ),
        figure(
            "context: Minter::mint hot path (prebuilt claims) vs openssl sign",
            get("mint_hot_path"),
            sign,
            "ops/s",
            None,
        ),
        figure(
            "context: raw aws-lc ECDSA P-256 sign (32 B) vs openssl sign",
            get("awslc_sign_32b"),
            sign,
            "ops/s",
            None,
        ),
        figure(
            "context: raw aws-lc ECDSA P-256 verify vs openssl verify",
            get("awslc_verify_signing_input"),
            verify,
            "ops/s",
            None,
        ),
        figure(
            "context: plain jsonwebtoken encode vs openssl sign",
            get("jsonwebtoken_encode"),
            sign,
            "ops/s",
            None,
        ),
        figure(
            "context: plain jsonwebtoken decode vs openssl verify",
            get("jsonwebtoken_decode"),
            verify,
            "ops/s",
            None,
        ),
    ];
    let measurements: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({"name": c.name, "what": c.what, "unit": c.unit, "primary": c.primary, "openssl_peer": c.peer,
                "rounds": c.rounds.iter().map(|r| round1(*r)).collect::<Vec<_>>(), "median": round1(median(c.rounds.clone()))})
        })
        .collect();
    let fragment = json!({
        "bench": "jwt",
        "config": {"seconds_primary": seconds, "seconds_context": (seconds / 2.0).max(0.5), "rounds": rounds,
            "batch": BATCH, "slices": SLICES, "order": "ours, openssl, ours, ... (alternating); medians of rounds"},
        "token": {"bytes": fx.token.len(), "claims_json_bytes": fx.claims_json_len, "signing_input_bytes": fx.signing_input.len()},
        "openssl": {
            "command": format!("{openssl} speed -seconds {} ecdsap256", seconds.round()),
            "version": openssl_version(&openssl),
            "runs": openssl_runs.iter().map(|r| json!({"sign": r.sign, "verify": r.verify, "line": r.line})).collect::<Vec<_>>(),
            "sign": sign, "verify": verify,
        },
        "measurements": measurements,
        "figures": figures,
    });
    std::fs::create_dir_all(&out_dir).expect("create results dir");
    let path = out_dir.join("jwt.json");
    std::fs::write(&path, serde_json::to_string_pretty(&fragment).unwrap() + "\n").expect("write fragment");
    println!(
        "mint {:.0}/s vs openssl sign {sign:.0}/s = {:.3}x (target 0.8)",
        get("mint"),
        get("mint") / sign
    );
    println!(
        "verify {:.0}/s vs openssl verify {verify:.0}/s = {:.3}x (target 1.0)",
        get("verify"),
        get("verify") / verify
    );
    println!("wrote {}", path.display());
}

fn case(name: &'static str, what: &'static str, primary: bool) -> Case {
    let verifies = name.contains("verify") || name == "jsonwebtoken_decode";
    let signs = name.contains("mint") || name.contains("sign") || name == "jsonwebtoken_encode";
    let peer = if verifies {
        Some("verify")
    } else if signs {
        Some("sign")
    } else {
        None
    };
    let unit = if verifies { "verifications/s" } else { "ops/s" };
    Case { name, what, unit, primary, peer, rounds: Vec::new() }
}

/// Keys, claims and a token, built once.
struct Fixture {
    subject: SpiffeId,
    minter: std::cell::RefCell<Minter>,
    key: Arc<SigningKey>,
    raw_key: EcdsaKeyPair,
    rng: SystemRandom,
    claims: SvidClaims,
    claims_json_len: usize,
    token: String,
    signing_input: String,
    signature: Vec<u8>,
    public: ParsedPublicKey,
    verifier: JwtVerifier,
    jwt_encoding: EncodingKey,
    jwt_header: Header,
    jwt_decoding: DecodingKey,
    jwt_validation: Validation,
}

impl Fixture {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = Arc::new(SigningKey::from_pkcs8(pkcs8.as_ref(), Timestamp::now()).unwrap());
        let raw_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let td = TrustDomain::parse("cluster.local").unwrap();
        // A realistic namespace and name length: the operator's SPIFFE IDs look like this one.
        let subject = SpiffeId::for_agent(&td, "support-tools", "support-triage-0001").unwrap();
        let claims = new_claims(&subject);
        let mut minter = Minter::new(Arc::clone(&key));
        let token = minter.mint(&claims).unwrap();
        let (signing_input, sig_b64) = token.rsplit_once('.').unwrap();
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig_b64).unwrap();
        let mut point = vec![0x04];
        point.extend(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key.x()).unwrap());
        point.extend(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key.y()).unwrap());
        let public = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).unwrap();
        let verifier =
            JwtVerifier::new(VerifierConfig::new(td, ISSUER), &JwkSet { keys: vec![key.public_jwk()] })
                .unwrap();
        let mut jwt_header = Header::new(Algorithm::ES256);
        jwt_header.kid = Some(key.kid().to_owned());
        let mut jwt_validation = Validation::new(Algorithm::ES256);
        jwt_validation.set_audience(&[AUDIENCE]);
        jwt_validation.set_issuer(&[ISSUER]);
        jwt_validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        let fx = Self {
            claims_json_len: serde_json::to_vec(&claims).unwrap().len(),
            subject,
            minter: std::cell::RefCell::new(minter),
            raw_key,
            rng,
            claims,
            signing_input: signing_input.to_owned(),
            signature,
            public,
            verifier,
            jwt_encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwt_header,
            jwt_decoding: DecodingKey::from_ec_components(key.x(), key.y()).unwrap(),
            jwt_validation,
            token,
            key,
        };
        fx.self_check();
        fx
    }

    /// Every loop must do real, successful work; a loop that fails fast would look fast.
    fn self_check(&self) {
        self.verifier
            .verify(&self.token, AUDIENCE, Timestamp::now())
            .expect("our verifier accepts our token");
        self.public.verify_sig(self.signing_input.as_bytes(), &self.signature).expect("raw verify");
        let encoded =
            jsonwebtoken::encode(&self.jwt_header, &new_claims(&self.subject), &self.jwt_encoding).unwrap();
        self.verifier.verify(&encoded, AUDIENCE, Timestamp::now()).expect("jsonwebtoken's token verifies");
        jsonwebtoken::decode::<SvidClaims>(&self.token, &self.jwt_decoding, &self.jwt_validation)
            .expect("jsonwebtoken accepts our token");
        assert_eq!(self.key.sign(b"x").unwrap().len(), 64);
    }

    /// Runs one case for `dur`; returns (operations, seconds).
    fn run(&self, name: &str, dur: Duration) -> (u64, f64) {
        match name {
            "mint" => measure(dur, || {
                let claims = new_claims(&self.subject);
                black_box(self.minter.borrow_mut().mint(&claims).unwrap());
            }),
            "mint_hot_path" => measure(dur, || {
                black_box(self.minter.borrow_mut().mint(black_box(&self.claims)).unwrap());
            }),
            "verify" => measure(dur, || {
                black_box(self.verifier.verify(black_box(&self.token), AUDIENCE, Timestamp::now()).unwrap());
            }),
            "awslc_sign_signing_input" => measure(dur, || {
                black_box(self.raw_key.sign(&self.rng, black_box(self.signing_input.as_bytes())).unwrap());
            }),
            "awslc_sign_32b" => measure(dur, || {
                black_box(self.raw_key.sign(&self.rng, black_box(&[7u8; 32])).unwrap());
            }),
            "awslc_verify_signing_input" => measure(dur, || {
                self.public.verify_sig(black_box(self.signing_input.as_bytes()), &self.signature).unwrap();
            }),
            "decode_unverified" => measure(dur, || {
                black_box(decode_unverified(black_box(&self.token)).unwrap());
            }),
            "claims_new" => measure(dur, || {
                black_box(new_claims(&self.subject));
            }),
            "new_jti" => measure(dur, || {
                black_box(new_jti().unwrap());
            }),
            "claims_json" => {
                let mut buf = Vec::with_capacity(512);
                measure(dur, || {
                    buf.clear();
                    serde_json::to_writer(&mut buf, black_box(&self.claims)).unwrap();
                    black_box(&buf);
                })
            }
            "jsonwebtoken_encode" => measure(dur, || {
                let claims = new_claims(&self.subject);
                black_box(jsonwebtoken::encode(&self.jwt_header, &claims, &self.jwt_encoding).unwrap());
            }),
            "jsonwebtoken_decode" => measure(dur, || {
                black_box(
                    jsonwebtoken::decode::<SvidClaims>(
                        black_box(&self.token),
                        &self.jwt_decoding,
                        &self.jwt_validation,
                    )
                    .unwrap(),
                );
            }),
            other => panic!("unknown case {other}"),
        }
    }
}

fn new_claims(subject: &SpiffeId) -> SvidClaims {
    let agent = AgentClaims { uid: UID, owner: OWNER, trust_score: 725 };
    SvidClaims::new(ISSUER, subject, AUDIENCE, agent, Timestamp::now(), DEFAULT_TTL).unwrap()
}

/// Counts operations until `dur` has passed; returns (operations, seconds).
fn measure(dur: Duration, mut op: impl FnMut()) -> (u64, f64) {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..BATCH {
            op();
        }
        n += BATCH;
        let elapsed = start.elapsed();
        if elapsed >= dur {
            return (n, elapsed.as_secs_f64());
        }
    }
}

struct OpensslRun {
    sign: f64,
    verify: f64,
    line: String,
}

/// Runs `openssl speed -seconds N ecdsap256` (one process, one core) and parses its sign/s and verify/s.
fn openssl_speed(openssl: &str, seconds: f64) -> OpensslRun {
    let secs = (seconds.round() as u64).max(1).to_string();
    let out = Command::new(openssl)
        .args(["speed", "-seconds", &secs, "ecdsap256"])
        .output()
        .unwrap_or_else(|e| panic!("failed to run {openssl} speed: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{openssl} speed failed with {}:\n{text}", out.status);
    parse_openssl_speed(&text).unwrap_or_else(|| {
        panic!("could not find the `256 bits ecdsa (nistp256) ... sign/s verify/s` line in:\n{text}")
    })
}

/// Finds the table row `256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  13000.0` and takes its two
/// trailing numbers (sign/s, verify/s). The row must also carry the two per-operation times ending in "s".
fn parse_openssl_speed(text: &str) -> Option<OpensslRun> {
    text.lines().find_map(|line| {
        let l = line.trim();
        if !(l.contains("ecdsa") && l.contains("(nistp256)")) {
            return None;
        }
        let fields: Vec<&str> = l.split_whitespace().collect();
        let n = fields.len();
        if n < 4 || !fields[n - 3].ends_with('s') || !fields[n - 4].ends_with('s') {
            return None;
        }
        let sign: f64 = fields[n - 2].parse().ok()?;
        let verify: f64 = fields[n - 1].parse().ok()?;
        (sign > 0.0 && verify > 0.0).then(|| OpensslRun { sign, verify, line: l.to_owned() })
    })
}

fn openssl_version(openssl: &str) -> String {
    Command::new(openssl)
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}
