//! An MCP call that may be held for a human's answer, behind an event stream the gateway keeps alive.
//!
//! The listener bounds the time to the start of an answer (its request timeout, 30 s by default), and a
//! human can take longer than that to approve a call. An MCP client that sends `Accept:
//! text/event-stream` takes a server-sent event stream as the answer to a POST, so for such a call the
//! gateway decides and forwards in a task of its own: an answer ready within [`STREAM_AFTER`] is sent as
//! usual; otherwise the gateway starts an event stream at once, sends an SSE comment every
//! [`KEEP_ALIVE_EVERY`] while the decision waits (up to the route's `approvalWaitSeconds`, at most 60 s),
//! and then sends the call's answer as the stream's event: the upstream's own events, its JSON-RPC
//! answer as a `message` event, or a JSON-RPC error for a refusal. The task ends with the stream: an agent
//! that goes away takes its call with it, which is never forwarded after that.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::proxy::{Call, Gateway, decide_and_forward};
use super::routes::Route;
use crate::server::decision::AuthorizeRequest;

/// How long the answer may take before the gateway starts an event stream instead.
pub const STREAM_AFTER: Duration = Duration::from_secs(2);
/// How often the stream says it is still waiting.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);
/// The largest answer sent as one event (the gateway holds it whole to do so).
const MAX_EVENT_ANSWER: usize = 16 * 1024 * 1024;
/// The JSON-RPC error code of a call the gateway could not complete.
const RPC_FAILED: i64 = -32000;

/// Whether the client takes an event stream as an answer (`Accept` lists `text/event-stream`).
pub fn accepts_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream")))
}

/// One call, owned, for its task.
pub struct Held {
    /// Its route.
    pub route: Route,
    /// The path below the route.
    pub rest: String,
    /// The request's head.
    pub parts: axum::http::request::Parts,
    /// Its body.
    pub body: Bytes,
    /// Its record so far.
    pub call: Call,
    /// When it arrived.
    pub started: Instant,
    /// The question.
    pub req: AuthorizeRequest,
    /// Its JSON-RPC id.
    pub id: Option<Value>,
}

/// Aborts the task when the stream (or the wait before it) is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Response>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The answer to `held`: as usual when it is ready within [`STREAM_AFTER`], else a kept-alive event stream.
pub async fn answer(gw: Arc<Gateway>, held: Held) -> Response {
    let id = held.id.clone().unwrap_or(Value::Null);
    let mut task = AbortOnDrop(tokio::spawn(async move {
        let Held { route, rest, parts, body, call, started, req, id } = held;
        decide_and_forward(&gw, &route, &rest, &parts, body, call, started, req, id.as_ref(), true).await
    }));
    match tokio::time::timeout(STREAM_AFTER, &mut task.0).await {
        Ok(Ok(response)) => return response,
        Ok(Err(_)) => return rpc_response(&id, "the gateway could not complete the call"),
        Err(_) => {}
    }
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE_EVERY, KEEP_ALIVE_EVERY);
    let stream = futures::stream::unfold((Some(task), tick, id), |(task, mut tick, id)| async move {
        let mut task = task?;
        tokio::select! {
            _ = tick.tick() => {
                let comment = Bytes::from_static(b": waiting for the call's answer (a human's approval)\n\n");
                Some((Ok::<Bytes, Infallible>(comment), (Some(task), tick, id)))
            }
            joined = &mut task.0 => {
                let event = match joined {
                    Ok(response) => as_event(response, &id).await,
                    Err(_) => rpc_event(&id, "the gateway could not complete the call"),
                };
                Some((Ok(event), (None, tick, id)))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A JSON-RPC error for `id` as one `message` event.
fn rpc_event(id: &Value, message: &str) -> Bytes {
    let error = json!({"jsonrpc": "2.0", "id": id, "error": {"code": RPC_FAILED, "message": message}});
    Bytes::from(format!("event: message\ndata: {error}\n\n"))
}

/// A JSON-RPC error for `id` as a plain JSON answer.
fn rpc_response(id: &Value, message: &str) -> Response {
    let error = json!({"jsonrpc": "2.0", "id": id, "error": {"code": RPC_FAILED, "message": message}});
    axum::response::IntoResponse::into_response(axum::Json(error))
}

/// The call's answer as the stream's event: the upstream's events as they are, a JSON-RPC message as a
/// `message` event, anything else (a refusal of the gateway's own, an upstream error page) as a JSON-RPC
/// error naming it.
async fn as_event(response: Response, id: &Value) -> Bytes {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_EVENT_ANSWER).await else {
        return rpc_event(id, "the upstream's answer could not be read whole");
    };
    let events = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    if events && parts.status.is_success() {
        let mut out = bytes.to_vec();
        if !out.ends_with(b"\n\n") {
            out.extend_from_slice(if out.ends_with(b"\n") { b"\n" } else { b"\n\n" });
        }
        return Bytes::from(out);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if v.get("jsonrpc").is_some() => Bytes::from(format!("event: message\ndata: {v}\n\n")),
        Ok(v) => {
            let why = v.get("error").and_then(Value::as_str).unwrap_or("the call was refused");
            rpc_event(id, &format!("{why} (HTTP {})", parts.status.as_u16()))
        }
        Err(_) => rpc_event(
            id,
            &format!("the upstream answered HTTP {} without a JSON-RPC message", parts.status.as_u16()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stream_is_accepted_only_when_the_client_lists_it() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            accepts_events(&h)
        };
        assert!(with("application/json, text/event-stream"));
        assert!(with("Text/Event-Stream;q=0.9"));
        assert!(!with("application/json"));
        assert!(!accepts_events(&HeaderMap::new()));
    }
}
