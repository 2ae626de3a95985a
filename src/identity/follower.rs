//! Keeps a [`RevocationList`] current from the operator's feed, so a relying party in Rust refuses
//! revoked tokens without asking the operator per request: verify the token with the JWKS
//! ([`JwtVerifier`](super::verify::JwtVerifier)), then check it against [`Follower::fresh`].
//!
//! ```text
//! let follower = Follower::new("https://agentiam.agentiam-system.svc/v1/revocations", tls)?;
//! tokio::spawn(Arc::clone(&follower).run());
//! ...
//! let list = follower.fresh(Duration::from_secs(15)).ok_or("revocation feed stale: refusing")?;
//! list.check_svid(&verified)?;
//! ```
//!
//! It follows the feed's server-sent events (the whole list at once, then each revision as it is
//! published) and reconnects with a backoff when the stream ends. Every event and every keep-alive
//! comment (the feed sends one every 5 s) counts as hearing from the operator; [`Follower::fresh`] returns
//! nothing once that is older than the age the caller accepts, so a verifier that lost the feed fails
//! closed instead of trusting an old list.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::revocations::RevocationList;

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest event accepted (a list of 100,000 UIDs is about 4 MiB).
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// Why the feed could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The URL is not one.
    #[error("invalid feed URL {0:?}")]
    Url(String),
    /// The connection or the request failed.
    #[error("cannot reach the revocation feed: {0}")]
    Connect(String),
    /// The operator answered something else than a list.
    #[error("the revocation feed answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The body is not a revocation list.
    #[error("the revocation feed sent something that is not a revocation list: {0}")]
    Malformed(String),
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The follower: the last list received and when the operator was last heard from.
pub struct Follower {
    url: Uri,
    client: HttpsClient,
    list: ArcSwapOption<RevocationList>,
    heard: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Follower {
    /// A follower of the feed at `url` (`https://.../v1/revocations`; `http://` too, for a feed served
    /// with `--http-plaintext`), connecting with `tls`. Nothing is fetched until [`Self::run`] or
    /// [`Self::fetch`].
    ///
    /// # Errors
    /// The URL does not parse.
    pub fn new(url: &str, tls: rustls::ClientConfig) -> Result<Arc<Self>, FollowError> {
        let url: Uri = url.parse().map_err(|_| FollowError::Url(url.to_owned()))?;
        if url.host().is_none() {
            return Err(FollowError::Url(url.to_string()));
        }
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Arc::new(Self { url, client, list: ArcSwapOption::empty(), heard: Mutex::new(None) }))
    }

    /// The last list received, however old.
    pub fn list(&self) -> Option<Arc<RevocationList>> {
        self.list.load_full()
    }

    /// The last list received, if the operator was heard from within `max_age`; None otherwise (refuse
    /// every token then: the list may be missing revocations).
    pub fn fresh(&self, max_age: Duration) -> Option<Arc<RevocationList>> {
        let heard = self.heard.lock().ok().and_then(|h| *h)?;
        (heard.elapsed() <= max_age).then(|| self.list())?
    }

    fn heard_now(&self) {
        if let Ok(mut h) = self.heard.lock() {
            *h = Some(Instant::now());
        }
    }

    fn take(&self, list: RevocationList) {
        // A revision older than the one held (an old replica, a replayed event) never replaces it.
        if self.list.load().as_ref().is_none_or(|l| list.revision >= l.revision) {
            self.list.store(Some(Arc::new(list)));
        }
        self.heard_now();
    }

    /// Reads the list once (a plain GET) and keeps it.
    ///
    /// # Errors
    /// The feed cannot be reached, refuses, or sends something else.
    pub async fn fetch(&self) -> Result<Arc<RevocationList>, FollowError> {
        let response = self.get(false).await?;
        let body =
            response.into_body().collect().await.map_err(|e| FollowError::Connect(e.to_string()))?.to_bytes();
        let list: RevocationList =
            serde_json::from_slice(&body).map_err(|e| FollowError::Malformed(e.to_string()))?;
        self.take(list);
        self.list().ok_or_else(|| FollowError::Malformed("no list".into()))
    }

    async fn get(&self, stream: bool) -> Result<http::Response<hyper::body::Incoming>, FollowError> {
        let accept = if stream { "text/event-stream" } else { "application/json" };
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, accept)
            .body(Empty::new())
            .map_err(|e| FollowError::Url(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| FollowError::Connect(e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let body = String::from_utf8_lossy(body.get(..body.len().min(200)).unwrap_or_default())
                .trim()
                .to_owned();
            return Err(FollowError::Status { status, body });
        }
        Ok(response)
    }

    /// Follows the stream forever, reconnecting after a failure (250 ms, doubling up to 5 s).
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.follow_once().await {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.url, "revocation feed lost; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connection: until the stream ends (Ok) or fails.
    async fn follow_once(&self) -> Result<(), FollowError> {
        let mut body = self.get(true).await?.into_body();
        let mut parser = SseParser::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FollowError::Connect(e.to_string()))?;
            let Some(data) = frame.data_ref() else { continue };
            for item in parser.push(data)? {
                match item {
                    SseItem::Comment => self.heard_now(),
                    SseItem::Event { event, data } if event == "revocations" => {
                        let list: RevocationList =
                            serde_json::from_str(&data).map_err(|e| FollowError::Malformed(e.to_string()))?;
                        self.take(list);
                    }
                    SseItem::Event { .. } => self.heard_now(),
                }
            }
        }
        Ok(())
    }
}

/// One thing a server-sent event stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// An event (`event:` defaults to `message`; `data:` lines joined with newlines).
    Event {
        /// Its type.
        event: String,
        /// Its data.
        data: String,
    },
    /// A comment line (`: ...`), which servers send as keep-alives.
    Comment,
}

/// The server-sent events grammar (WHATWG HTML, section 9.2), incrementally: bytes in, items out. Pure.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Takes in the next bytes; returns every item they complete.
    ///
    /// # Errors
    /// An event larger than the parser accepts.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseItem>, FollowError> {
        self.buf.extend_from_slice(bytes);
        let mut items = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    let event = self.event.take().unwrap_or_else(|| "message".to_owned());
                    items.push(SseItem::Event { event, data });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                items.push(SseItem::Comment);
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => {
                    let data = self.data.get_or_insert_with(String::new);
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
        let pending = self.buf.len() + self.data.as_ref().map_or(0, String::len);
        if pending > MAX_EVENT {
            self.buf.clear();
            self.data = None;
            return Err(FollowError::Malformed(format!("an event larger than {MAX_EVENT} bytes")));
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_comments_are_read_across_chunk_boundaries() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b": keep-alive\n\nevent: revo").unwrap(), vec![SseItem::Comment]);
        assert_eq!(p.push(b"cations\nid: 7\ndata: {\"a\":\ndata: 1}\r\n").unwrap(), vec![]);
        assert_eq!(
            p.push(b"\n").unwrap(),
            vec![SseItem::Event { event: "revocations".into(), data: "{\"a\":\n1}".into() }]
        );
        // Without `event:` it is a message; a block without data is no event.
        assert_eq!(
            p.push(b"data:x\n\nid: 9\n\n").unwrap(),
            vec![SseItem::Event { event: "message".into(), data: "x".into() }]
        );
    }

    #[test]
    fn an_oversized_event_is_refused() {
        let mut p = SseParser::default();
        let big = vec![b'x'; MAX_EVENT + 1];
        assert!(p.push(&big).is_err());
        assert_eq!(p.push(b": ok\n").unwrap(), vec![SseItem::Comment], "and the parser goes on");
    }

    #[tokio::test]
    async fn a_follower_is_fresh_only_while_it_hears_from_the_feed_and_never_goes_back_a_revision() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let f = Follower::new("https://op.example/v1/revocations", tls).unwrap();
        assert!(f.fresh(Duration::from_secs(60)).is_none(), "never heard");
        let list = |revision| RevocationList { revision, ..RevocationList::default() };
        f.take(list(5));
        assert_eq!(f.fresh(Duration::from_secs(60)).unwrap().revision, 5);
        f.take(list(3));
        assert_eq!(f.list().unwrap().revision, 5, "an older revision does not replace a newer one");
        std::thread::sleep(Duration::from_millis(20));
        assert!(f.fresh(Duration::from_millis(10)).is_none(), "stale: fail closed");
        assert!(Follower::new("not a url", rustls_config()).is_err());
    }

    fn rustls_config() -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }
}
