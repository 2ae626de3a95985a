//! The peer of the authorization bench: the `opa` binary built by tools/build-tools.sh, as a REST server
//! (`opa run --server`) and through `opa bench` / `opa eval` for in-process evaluation.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The query both the REST API and `opa bench` evaluate.
pub const QUERY: &str = "data.agentiam.authz.decision";
/// The REST path of [`QUERY`].
pub const REST_PATH: &str = "/v1/data/agentiam/authz/decision";

/// The `opa` executable.
pub struct Opa {
    pub bin: PathBuf,
}

/// What `opa bench` measured for one query.
#[derive(Debug, Clone)]
pub struct BenchRun {
    pub what: String,
    pub ns_per_op: f64,
    pub samples: u64,
    pub allocs_per_op: u64,
    /// OPA's own histogram of query evaluation time (`histogram_timer_rego_query_eval_ns_*`).
    pub eval_p50_ns: f64,
    pub eval_p99_ns: f64,
}

impl BenchRun {
    pub fn to_json(&self) -> Value {
        json!({"what": self.what, "ns_per_op": self.ns_per_op.round(), "samples": self.samples,
            "allocs_per_op": self.allocs_per_op, "eval_p50_ns": self.eval_p50_ns.round(),
            "eval_p99_ns": self.eval_p99_ns.round()})
    }
}

impl Opa {
    /// `OPA_BIN`, else the cache path tools/build-tools.sh builds into.
    pub fn locate() -> Self {
        let bin = std::env::var_os("OPA_BIN").filter(|v| !v.is_empty()).map_or_else(
            || {
                let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                let versions = std::fs::read_to_string(root.join("tools/versions.env")).unwrap_or_default();
                let version = versions
                    .lines()
                    .find_map(|l| l.strip_prefix("OPA_VERSION="))
                    .unwrap_or("unknown")
                    .trim()
                    .to_owned();
                let cache = std::env::var_os("AGENTIAM_TOOLS_CACHE").map_or_else(
                    || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/agentiam-tools"),
                    PathBuf::from,
                );
                cache.join(format!("opa-{version}")).join("opa")
            },
            PathBuf::from,
        );
        assert!(bin.exists(), "{} is missing: tools/build-tools.sh opa (or set OPA_BIN)", bin.display());
        Self { bin }
    }

    pub fn version(&self) -> String {
        let out = Command::new(&self.bin).arg("version").output().expect("opa version");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .unwrap_or("unknown")
            .to_owned()
    }

    /// `opa eval` of `query` with the policy and data files; the first expression's value.
    pub fn eval(&self, files: &[&Path], query: &str) -> Value {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["eval", "--format", "json"]);
        for f in files {
            cmd.arg("--data").arg(f);
        }
        let out = cmd.arg(query).output().expect("run opa eval");
        assert!(out.status.success(), "opa eval failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("opa eval JSON");
        v["result"][0]["expressions"][0]["value"].clone()
    }

    /// `opa bench` of `query` (Go's benchmark loop: about a second of evaluations after compiling once).
    pub fn bench(&self, what: &str, files: &[&Path], input: Option<&Path>, query: &str) -> BenchRun {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["bench", "--format", "json"]);
        for f in files {
            cmd.arg("--data").arg(f);
        }
        if let Some(i) = input {
            cmd.arg("--input").arg(i);
        }
        let out = cmd.arg(query).output().expect("run opa bench");
        assert!(out.status.success(), "opa bench failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("opa bench output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        });
        let n = v["N"].as_f64().filter(|n| *n > 0.0).expect("opa bench N");
        let extra = |k: &str| {
            v["Extra"][format!("histogram_timer_rego_query_eval_ns_{k}")].as_f64().unwrap_or(f64::NAN)
        };
        BenchRun {
            what: what.to_owned(),
            ns_per_op: v["T"].as_f64().expect("opa bench T") / n,
            samples: n as u64,
            allocs_per_op: (v["MemAllocs"].as_f64().unwrap_or(0.0) / n).round() as u64,
            eval_p50_ns: extra("median"),
            eval_p99_ns: extra("99%"),
        }
    }

    /// `opa run --server` with one policy on a free loopback port; returns once it answers /health.
    /// `gomaxprocs` sets the Go runtime's thread budget (None: Go's default, every CPU).
    pub fn serve(&self, policy: &Path, log: &Path, gomaxprocs: Option<usize>) -> OpaServer {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(&self.bin);
        if let Some(n) = gomaxprocs {
            command.env("GOMAXPROCS", n.to_string());
        }
        let child = command
            .args(["run", "--server", "--addr", &addr.to_string(), "--log-level", "error"])
            .args(["--disable-telemetry"])
            .arg(policy)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).expect("opa log"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("opa log"))
            .spawn()
            .expect("spawn opa run");
        let server = OpaServer { child: Some(child), addr };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                if text.starts_with("HTTP/1.1 200") {
                    return server;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "opa did not become healthy on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `opa run --server`; killed on drop.
pub struct OpaServer {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl OpaServer {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for OpaServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
