//! The one accept loop every listener of the operator uses (the HTTP API, the admission webhook, and any
//! listener added later), with the limits that keep slow or idle clients from holding connections:
//!
//! - **TLS handshake timeout** (TLS listeners): a client that has not finished its handshake by then is
//!   dropped.
//! - **Header-read timeout**: a new connection must deliver its first request's headers within this long,
//!   and once the first bytes of a later request arrive, the rest of its headers must follow within this
//!   long. A slowloris client (a partial request line or partial headers, then silence) is closed at it.
//! - **Idle timeout**: how long a keep-alive connection may wait between requests (and how long a response
//!   write may stall). Separate from the header-read timeout so that clients can keep connections open
//!   while slow senders are still cut off quickly.
//! - **Request timeout**: from the headers to the response (reading the body and deciding); a slow body
//!   gets `408 Request Timeout` and the connection is closed.
//! - **Connection bound**: at most this many connections are served at once. At the bound the loop stops
//!   accepting, so further clients wait in the kernel's backlog until a connection ends (the timeouts above
//!   guarantee that one does), instead of being refused or exhausting file descriptors.
//!
//! hyper's own header-read timer is not used: it runs while a keep-alive connection waits, too, so it
//! cannot tell an idle client from a slow one.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// The limits of one listener; see the module documentation for what each one bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to the end of a request's headers (from accept, or from its first byte on a kept-alive
    /// connection).
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time from a request's headers to its response.
    pub request_timeout: Duration,
    /// Time to complete a TLS handshake (TLS listeners only).
    pub tls_handshake_timeout: Duration,
    /// Connections served at once.
    pub max_connections: NonZeroUsize,
    /// How long open connections get to finish on shutdown.
    pub drain_timeout: Duration,
}

/// The default header-read timeout: a client sends its headers in one write; ten seconds leave room for a
/// slow network and still free a slowloris connection quickly.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default idle timeout: longer than the 90 s after which Go clients (the API server calling the
/// webhook, most gateways) drop idle connections, so the client closes an idle connection first and never
/// sends a request into one we are closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The default request timeout: decisions and admissions take milliseconds; a request still unanswered
/// after this is a client trickling its body (or a server in trouble, which should not hold the slot).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default TLS handshake timeout.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound of the HTTP API (probes, issuer documents, decisions from every gateway).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: NonZeroUsize = non_zero(1024);
/// The default bound of the admission webhook, whose only client is the API server.
pub const DEFAULT_WEBHOOK_MAX_CONNECTIONS: NonZeroUsize = non_zero(256);
const fn non_zero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

/// How often, at most, reaching the connection bound is logged.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Shortest timeout accepted: shorter ones would cut off ordinary clients on a busy machine.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

impl Limits {
    /// The defaults, with `max_connections`.
    pub fn with_max_connections(max_connections: NonZeroUsize) -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            max_connections,
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// Checks that every timeout is at least [`MIN_TIMEOUT`].
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (name, value) in [
            ("header-read", self.header_read_timeout),
            ("idle", self.idle_timeout),
            ("request", self.request_timeout),
            ("tls-handshake", self.tls_handshake_timeout),
        ] {
            if value < MIN_TIMEOUT {
                return Err(LimitsError::TooShort { name, value });
            }
        }
        Ok(())
    }
}

/// Limits that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A timeout below [`MIN_TIMEOUT`].
    #[error("the {name} timeout {value:?} is shorter than {MIN_TIMEOUT:?}")]
    TooShort {
        /// Which timeout.
        name: &'static str,
        /// Its value.
        value: Duration,
    },
}

/// Where a connection is in its request cycle; decides which timeout applies while it waits for bytes.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the first byte of a request since then; `fresh` until a request was served.
    Waiting { since: Instant, fresh: bool },
    /// The first bytes of a request's head arrived then.
    Head { since: Instant },
    /// A request is being served; the request timeout applies instead.
    Busy,
}

/// The state of one connection, shared by its I/O wrapper and its service.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// The connection task, parked on I/O while a request was served: woken when the request ends, so the
    /// idle timer is armed at once. (hyper polls reads again after a response only when the socket wakes
    /// it, or when its own header timer, which we do not use, asks for it.)
    parked: Option<Waker>,
}

/// One connection's [`State`] and limits.
#[derive(Debug)]
struct Conn {
    state: Mutex<State>,
    limits: Limits,
}

impl Conn {
    fn new(limits: Limits) -> Arc<Self> {
        let phase = Phase::Waiting { since: Instant::now(), fresh: true };
        Arc::new(Self { state: Mutex::new(State { phase, parked: None }), limits })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means a panic elsewhere between two whole assignments: the value is intact.
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn bytes_arrived(&self) {
        self.with(|s| {
            if let Phase::Waiting { .. } = s.phase {
                s.phase = Phase::Head { since: Instant::now() };
            }
        });
    }

    fn request_started(&self) {
        self.with(|s| s.phase = Phase::Busy);
    }

    fn request_ended(&self) {
        let parked = self.with(|s| {
            s.phase = Phase::Waiting { since: Instant::now(), fresh: false };
            s.parked.take()
        });
        if let Some(waker) = parked {
            waker.wake();
        }
    }

    /// When waiting for I/O must end, or None while a request is being served (then `cx`'s task is
    /// remembered, to be woken when the request ends).
    fn deadline(&self, cx: &Context<'_>) -> Option<Instant> {
        let l = &self.limits;
        self.with(|s| match s.phase {
            Phase::Waiting { since, fresh: true } | Phase::Head { since } => {
                Some(since + l.header_read_timeout)
            }
            Phase::Waiting { since, fresh: false } => Some(since + l.idle_timeout),
            Phase::Busy => {
                if !s.parked.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.parked = Some(cx.waker().clone());
                }
                None
            }
        })
    }
}

/// A connection's byte stream, failing reads and writes that wait past the connection's deadline.
struct Timed<S> {
    io: S,
    conn: Arc<Conn>,
    sleep: Pin<Box<Sleep>>,
}

impl<S> Timed<S> {
    fn new(io: S, conn: Arc<Conn>) -> Self {
        let first = Instant::now() + conn.limits.header_read_timeout;
        Self { io, conn, sleep: Box::pin(tokio::time::sleep_until(first)) }
    }

    /// Called when the inner stream is not ready: Pending until the deadline, then a timeout error, which
    /// makes hyper close the connection.
    fn poll_deadline<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(deadline) = self.conn.deadline(cx) else { return Poll::Pending };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent nothing within the header-read or idle timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The certificate chain (DER, leaf first) a TLS client presented, in every request of that connection's
/// extensions. Absent on plain connections and when the client presented none.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[Vec<u8>]>);

/// The router as one connection's service: marks the connection busy while a request is served, and
/// answers 408 when the request takes longer than the request timeout.
struct Tracked {
    router: TowerToHyperService<Router>,
    conn: Arc<Conn>,
    peer_certificates: Option<PeerCertificates>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.conn.request_started();
        if let Some(certs) = &self.peer_certificates {
            request.extensions_mut().insert(certs.clone());
        }
        let answer = hyper::service::Service::call(&self.router, request);
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let response = match tokio::time::timeout(conn.limits.request_timeout, answer).await {
                Ok(response) => response,
                Err(_) => Ok(request_timeout(conn.limits.request_timeout)),
            };
            conn.request_ended();
            response
        })
    }
}

/// 408, closing the connection: its body may be only partly read, so it cannot carry another request.
fn request_timeout(limit: Duration) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(
        "the request was not completed within the request timeout ({limit:?})\n"
    )));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serves `router` over HTTP/1.1 on `listener` (over TLS when `tls` is given) within `limits`, until
/// `shutdown` resolves; then stops accepting and gives open connections `limits.drain_timeout` to finish.
/// `name` labels the log lines. Accept errors (out of file descriptors and the like) are logged and
/// retried after a short pause, so this only returns at shutdown.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.get()));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL) {
                    warned = Some(Instant::now());
                    warn!(
                        listener = name,
                        max_connections = limits.max_connections.get(),
                        "connection limit reached; new connections wait until one ends"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // Never closed; if it were, there would be nothing left to serve.
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(listener = name, error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle delay: a response is one write, and a client that sends its next request only after the
        // answer should never wait for a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(listener = name, error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        let router = router.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                return serve_connection(tcp, router, limits, watcher, name, peer, None).await;
            };
            match tokio::time::timeout(limits.tls_handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let certs = stream.get_ref().1.peer_certificates().filter(|c| !c.is_empty()).map(|c| {
                        PeerCertificates(c.iter().map(|d| d.as_ref().to_vec()).collect::<Vec<_>>().into())
                    });
                    serve_connection(stream, router, limits, watcher, name, peer, certs).await;
                }
                Ok(Err(e)) => debug!(listener = name, %peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(listener = name, %peer, "TLS handshake timed out; closed the connection"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        warn!(listener = name, "connections still open after the drain timeout; closing them");
    }
}

async fn serve_connection<S>(
    stream: S,
    router: Router,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
    name: &'static str,
    peer: std::net::SocketAddr,
    peer_certificates: Option<PeerCertificates>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn::new(limits);
    let io = TokioIo::new(Timed::new(stream, Arc::clone(&conn)));
    let service = Tracked { router: TowerToHyperService::new(router), conn, peer_certificates };
    let connection = hyper::server::conn::http1::Builder::new()
        // Our own timers replace hyper's (see the module documentation).
        .header_read_timeout(None)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        debug!(listener = name, %peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
