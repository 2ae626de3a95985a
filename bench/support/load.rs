//! A closed-loop HTTP/1.1 load generator: C keep-alive connections, each with one request in flight at a time,
//! cycling through pre-serialized requests. Every latency is kept (a few hundred thousand per point), so the
//! percentiles are exact. It runs on one thread (a current-thread Tokio runtime), so it takes at most one of the
//! machine's cores from the server under test, the same for every server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pre-serialized `POST` requests (head and body) for one server.
pub struct Requests {
    pub addr: SocketAddr,
    pub raw: Vec<Vec<u8>>,
}

impl Requests {
    /// One JSON request per body, to `path` on `addr`.
    pub fn post(addr: SocketAddr, path: &str, bodies: &[Vec<u8>]) -> Self {
        Self::post_as(addr, path, "application/json", bodies)
    }

    /// One request per body with the given `Content-Type` (forms for OAuth token endpoints).
    pub fn post_as(addr: SocketAddr, path: &str, content_type: &str, bodies: &[Vec<u8>]) -> Self {
        let raw = bodies
            .iter()
            .map(|b| {
                let mut r = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .into_bytes();
                r.extend_from_slice(b);
                r
            })
            .collect();
        Self { addr, raw }
    }
}

/// One measured point of a sweep.
#[derive(Clone, Debug, Default)]
pub struct Point {
    pub concurrency: usize,
    pub seconds: f64,
    pub completed: u64,
    /// Responses including the warm-up (for CPU time per request).
    pub all_completed: u64,
    /// Latencies in nanoseconds, sorted.
    pub latencies: Vec<u64>,
}

impl Point {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 { self.completed as f64 / self.seconds } else { 0.0 }
    }

    /// Percentile `p` (0..=1) in microseconds.
    pub fn pct_us(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        if n == 0 {
            return f64::NAN;
        }
        let idx = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        self.latencies.get(idx).map_or(f64::NAN, |&ns| ns as f64 / 1000.0)
    }

    /// Pools another run of the same point (rounds of a sweep).
    pub fn pool(&mut self, other: Point) {
        self.concurrency = other.concurrency;
        self.seconds += other.seconds;
        self.completed += other.completed;
        self.all_completed += other.all_completed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    pub fn to_json(&self) -> Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        json!({"concurrency": self.concurrency, "seconds": r(self.seconds), "requests": self.completed,
            "rps": r(self.rps()), "p50_us": r(self.pct_us(0.5)), "p90_us": r(self.pct_us(0.9)),
            "p99_us": r(self.pct_us(0.99)), "p999_us": r(self.pct_us(0.999)),
            "max_us": r(self.pct_us(1.0))})
    }
}

/// Runs `concurrency` connections against `reqs` for `warmup` (not recorded), then for `measure`.
/// Any response other than 200, or a closed connection, fails the bench.
pub fn run(reqs: &Arc<Requests>, concurrency: usize, warmup: Duration, measure: Duration) -> Point {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("load runtime");
    rt.block_on(async {
        let start = Instant::now();
        let (from, until) = (start + warmup, start + warmup + measure);
        let mut tasks = Vec::new();
        for c in 0..concurrency {
            let reqs = Arc::clone(reqs);
            let offset = c * reqs.raw.len() / concurrency.max(1);
            tasks.push(tokio::spawn(async move { connection(&reqs, offset, from, until).await }));
        }
        let mut point = Point { concurrency, seconds: measure.as_secs_f64(), ..Point::default() };
        for t in tasks {
            let (lat, all) = t.await.expect("load task");
            point.completed += lat.len() as u64;
            point.all_completed += all;
            point.latencies.extend(lat);
        }
        point.latencies.sort_unstable();
        point
    })
}

/// Sends each request at most once (single-use credentials: every assertion, subject and actor token works
/// once), over `concurrency` connections taking the next unsent request, until all are answered or `cap` has
/// passed. `seconds` is the time actually measured; there is no warm-up (the caller warms up with a pool of
/// its own). Any response other than 200 fails the bench.
pub fn run_once(reqs: &Arc<Requests>, concurrency: usize, cap: Duration) -> Point {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("load runtime");
    rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let until = start + cap;
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (reqs, next) = (Arc::clone(reqs), Arc::clone(&next));
            tasks.push(tokio::spawn(async move { connection_once(&reqs, &next, until).await }));
        }
        let mut point = Point { concurrency, ..Point::default() };
        for t in tasks {
            let lat = t.await.expect("load task");
            point.completed += lat.len() as u64;
            point.latencies.extend(lat);
        }
        point.seconds = start.elapsed().as_secs_f64();
        point.all_completed = point.completed;
        point.latencies.sort_unstable();
        point
    })
}

async fn connection_once(reqs: &Requests, next: &AtomicUsize, until: Instant) -> Vec<u64> {
    let mut stream =
        TcpStream::connect(reqs.addr).await.unwrap_or_else(|e| panic!("connect {}: {e}", reqs.addr));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let Some(raw) = reqs.raw.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
        let t0 = Instant::now();
        stream.write_all(raw).await.unwrap_or_else(|e| panic!("write to {}: {e}", reqs.addr));
        let status = read_response(&mut stream, &mut buf).await;
        let t1 = Instant::now();
        assert!(status == 200, "{} answered {status}: {}", reqs.addr, String::from_utf8_lossy(&buf));
        latencies.push((t1 - t0).as_nanos() as u64);
    }
    latencies
}

async fn connection(reqs: &Requests, offset: usize, from: Instant, until: Instant) -> (Vec<u64>, u64) {
    let mut stream =
        TcpStream::connect(reqs.addr).await.unwrap_or_else(|e| panic!("connect {}: {e}", reqs.addr));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut k = offset;
    loop {
        let raw = &reqs.raw[k % reqs.raw.len()];
        k += 1;
        let t0 = Instant::now();
        if t0 >= until {
            return (latencies, (k - offset - 1) as u64);
        }
        stream.write_all(raw).await.unwrap_or_else(|e| panic!("write to {}: {e}", reqs.addr));
        let status = read_response(&mut stream, &mut buf).await;
        let t1 = Instant::now();
        assert!(status == 200, "{} answered {status}: {}", reqs.addr, String::from_utf8_lossy(&buf));
        if t0 >= from && t1 <= until {
            latencies.push((t1 - t0).as_nanos() as u64);
        }
    }
}

/// Reads one response into `buf` (body only, afterwards) and returns its status. Handles Content-Length and
/// chunked bodies; no pipelining, so nothing follows the response.
pub async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let (head_len, status, length, chunked) = loop {
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(buf) {
            break head;
        }
    };
    buf.drain(..head_len);
    if chunked {
        // Read until the terminating zero-length chunk, then decode in place.
        while !buf.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut chunk).await.expect("read chunked body");
            assert!(n > 0, "server closed the connection mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        *buf = dechunk(buf);
    } else {
        let want = length.unwrap_or(0);
        while buf.len() < want {
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "server closed the connection mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    status
}

/// (head length, status, Content-Length, chunked) once the head is complete.
fn parse_head(buf: &[u8]) -> Option<(usize, u16, Option<usize>, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).expect("response head is not UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    Some((end + 4, status, length, chunked))
}

fn dechunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..pos])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let body = &rest[pos + 2..];
        out.extend_from_slice(&body[..size.min(body.len())]);
        rest = body.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// Sends each body once over one connection and returns the parsed JSON answers (the equivalence check).
pub fn answers(reqs: &Requests) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut stream =
            TcpStream::connect(reqs.addr).await.unwrap_or_else(|e| panic!("connect {}: {e}", reqs.addr));
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(reqs.raw.len());
        for raw in &reqs.raw {
            stream.write_all(raw).await.expect("write");
            let status = read_response(&mut stream, &mut buf).await;
            let body: Value = serde_json::from_slice(&buf).unwrap_or(Value::Null);
            out.push(json!({"status": status, "body": body}));
        }
        out
    })
}
