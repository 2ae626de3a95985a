//! The revocation feed, `GET /v1/revocations`, for verifiers that do not call the decision API: the
//! current [`RevocationList`] as JSON with a strong `ETag` (a poll with `If-None-Match` costs a 304), and
//! as server-sent events (`Accept: text/event-stream`, or `?watch=true`): the list at once, then each new
//! revision the moment it is published, with a keep-alive comment every few seconds so a follower can
//! tell a quiet feed from a dead one.
//!
//! The list is the union of the policy index's deny state (every agent a Revocation holds, from the watch
//! event on, before any phase is recorded) and what the operator's records void (the ledger: agents not
//! Active or gone, Delegations not in force or gone, access tokens revoked one by one, keys withdrawn). It
//! is recomputed when either changes and at least every 30 s, when entries age out.
//!
//! The feed is public, like the JWKS: it holds opaque UIDs, token IDs and key IDs, nothing a caller could
//! use. Until the policy index has loaded it answers 503: an empty list then would be a lie that accepts.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::watch;

use crate::controller::authz::PolicyIndex;
use crate::identity::revocations::RevocationList;
use crate::registry::ledger::Ledger;
use crate::server::issuer::{entity_tag, if_none_match};
use crate::server::{Routes, Surface};
use crate::supervisor::Supervisor;

/// The path.
pub const PATH: &str = "/v1/revocations";
/// How often the list is recomputed without a change (entries of gone agents and expired tokens age out).
const PRUNE: Duration = Duration::from_secs(30);
/// How often a stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One published revision, rendered once for every reader.
#[derive(Debug)]
struct Published {
    list: RevocationList,
    body: Bytes,
    etag: String,
}

/// The feed: the current revision, and a signal for streams.
#[derive(Debug)]
pub struct Feed {
    published: ArcSwap<Option<Published>>,
    revision: watch::Sender<u64>,
}

impl Feed {
    /// The current list, once the index has loaded.
    pub fn current(&self) -> Option<RevocationList> {
        self.published.load().as_ref().as_ref().map(|p| p.list.clone())
    }

    /// Changes with every new revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Publishes `list` as the next revision if its content differs from the current one (or nothing is
    /// published yet). The revision is the time of the change in milliseconds, or one more than the last,
    /// so it grows across restarts too.
    fn offer(&self, mut list: RevocationList, now: Timestamp) {
        let current = self.published.load();
        if let Some(p) = current.as_ref()
            && p.list.same_content(&list)
        {
            return;
        }
        let last = current.as_ref().as_ref().map_or(0, |p| p.list.revision);
        let millis = u64::try_from(now.as_millisecond()).unwrap_or(0);
        list.revision = millis.max(last.saturating_add(1));
        let Ok(body) = serde_json::to_vec(&list) else { return };
        let etag = entity_tag(&body);
        let revision = list.revision;
        self.published.store(Arc::new(Some(Published { list, body: Bytes::from(body), etag })));
        self.revision.send_replace(revision);
    }
}

/// Starts the task that keeps the feed current under `tasks`.
pub fn start(
    index: Arc<PolicyIndex>,
    ledger: Arc<Ledger>,
    issuer: String,
    tasks: &mut Supervisor,
) -> Arc<Feed> {
    let feed = Arc::new(Feed { published: ArcSwap::from_pointee(None), revision: watch::Sender::new(0) });
    let task = keep_current(Arc::clone(&feed), index, ledger, issuer);
    tasks.spawn_infallible("revocation feed", task);
    feed
}

/// The list as the index and the records have it now.
pub fn compute(index: &PolicyIndex, ledger: &Ledger, issuer: &str, now: Timestamp) -> RevocationList {
    let voided = ledger.voided(now);
    let snapshot = index.load();
    let mut agents: std::collections::BTreeSet<String> = voided.agents.into_iter().collect();
    agents.extend(snapshot.held().map(str::to_owned));
    RevocationList {
        revision: 0,
        issuer: issuer.to_owned(),
        agents,
        delegations: voided.delegations.into_iter().collect(),
        tokens: voided.tokens.into_iter().collect(),
        keys: voided.keys.into_iter().collect(),
    }
}

/// Shortest time between two recomputations. The first change after a quiet spell is published at once;
/// a burst (a thousand agents revoked, each a record) is published at most this often, so the list is
/// not rebuilt and serialized once per agent (which grows with the square of the fleet).
const MIN_INTERVAL: Duration = Duration::from_millis(50);

async fn keep_current(feed: Arc<Feed>, index: Arc<PolicyIndex>, ledger: Arc<Ledger>, issuer: String) {
    let (mut snapshots, mut records) = (index.subscribe(), ledger.feed_changes());
    index.wait_ready().await;
    loop {
        let started = tokio::time::Instant::now();
        feed.offer(compute(&index, &ledger, &issuer, Timestamp::now()), Timestamp::now());
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = records.changed() => if r.is_err() { return },
            () = tokio::time::sleep(PRUNE) => {}
        }
        tokio::time::sleep_until(started + MIN_INTERVAL).await;
    }
}

/// The feed's route.
pub fn surface(feed: Arc<Feed>) -> Surface {
    Routes::new("revocations").route(PATH, get(serve)).finish(feed)
}

/// Whether the query asks for the stream (`watch=true`).
fn watch_asked(uri: &axum::http::Uri) -> bool {
    uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

async fn serve(State(feed): State<Arc<Feed>>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let stream = watch_asked(&uri)
        || headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
    let published = feed.published.load_full();
    let Some(current) = published.as_ref() else {
        let mut r =
            (StatusCode::SERVICE_UNAVAILABLE, "the revocation feed is still loading\n").into_response();
        r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    };
    if stream {
        return events(feed).into_response();
    }
    let Ok(etag) = HeaderValue::from_str(&current.etag) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut response = if if_none_match(&headers, &current.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut ok = current.body.clone().into_response();
        ok.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        ok
    };
    response.headers_mut().insert(ETAG, etag);
    // Always revalidate: a cached copy is exactly what a kill switch must not be served from.
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The stream: the current revision, then each new one (a reader that falls behind gets the newest,
/// never a backlog: each event is the whole list).
fn events(feed: Arc<Feed>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = feed.subscribe();
    let stream = futures::stream::unfold((feed, rx, true), |(feed, mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        rx.borrow_and_update();
        let published = feed.published.load_full();
        let p = published.as_ref().as_ref()?;
        let body = String::from_utf8_lossy(&p.body).into_owned();
        let event = Event::default().event("revocations").id(p.list.revision.to_string()).data(body);
        Some((Ok(event), (feed, rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_is_published_only_for_new_content_and_always_grows() {
        let feed = Feed { published: ArcSwap::from_pointee(None), revision: watch::Sender::new(0) };
        let t = |ms| Timestamp::from_millisecond(ms).unwrap();
        let list = |agents: &[&str]| RevocationList {
            issuer: "https://op".into(),
            agents: agents.iter().map(|a| (*a).to_owned()).collect(),
            ..RevocationList::default()
        };
        feed.offer(list(&[]), t(1000));
        assert_eq!(feed.current().unwrap().revision, 1000);
        feed.offer(list(&[]), t(2000));
        assert_eq!(feed.current().unwrap().revision, 1000, "same content: same revision");
        feed.offer(list(&["a"]), t(500));
        assert_eq!(feed.current().unwrap().revision, 1001, "a clock behind still grows the revision");
        feed.offer(list(&[]), t(5000));
        assert_eq!(feed.current().unwrap().revision, 5000);
        assert_eq!(*feed.subscribe().borrow(), 5000);
    }
}
