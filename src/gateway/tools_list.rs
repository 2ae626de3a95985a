//! Filtering an MCP `tools/list` answer to the tools the agent may call. Pure.
//!
//! The answer is a JSON-RPC response, sent as `application/json` or as server-sent events (one event per
//! message; the response is one of them). Every message whose `result.tools` is a list keeps only the
//! tools `may_call` accepts by name; everything else passes unchanged. An answer that cannot be read (a
//! body or an event that is not JSON) is an error, never forwarded unfiltered: the list of tools is itself
//! something an agent should see only as far as its policies go.

use serde_json::Value;

/// Why an answer could not be filtered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The JSON body, or an event's data, is not JSON.
    #[error("the tools/list answer is not JSON: {0}")]
    NotJson(String),
    /// Neither JSON nor an event stream.
    #[error("the tools/list answer has content type {0:?}, neither JSON nor an event stream")]
    ContentType(String),
}

/// The filtered answer, and how many tools it left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// The body to send on.
    pub body: Vec<u8>,
    /// Tools removed.
    pub removed: usize,
}

/// Filters `body` (of `content_type`) down to the tools `may_call` accepts.
///
/// # Errors
/// The answer cannot be read (see [`FilterError`]).
pub fn filter(
    body: &[u8],
    content_type: Option<&str>,
    may_call: &mut dyn FnMut(&str) -> bool,
) -> Result<Filtered, FilterError> {
    let media = content_type.and_then(|c| c.split(';').next()).map(|m| m.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/json") => {
            let mut v: Value =
                serde_json::from_slice(body).map_err(|e| FilterError::NotJson(e.to_string()))?;
            let removed = filter_message(&mut v, may_call);
            let body = serde_json::to_vec(&v).map_err(|e| FilterError::NotJson(e.to_string()))?;
            Ok(Filtered { body, removed })
        }
        Some("text/event-stream") => filter_events(body, may_call),
        other => Err(FilterError::ContentType(other.unwrap_or_default().to_owned())),
    }
}

/// Keeps only the callable tools of one message; returns how many it removed.
fn filter_message(message: &mut Value, may_call: &mut dyn FnMut(&str) -> bool) -> usize {
    let Some(tools) =
        message.get_mut("result").and_then(|r| r.get_mut("tools")).and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let before = tools.len();
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(&mut *may_call));
    before - tools.len()
}

/// An event stream: each event's `data` lines joined (as SSE defines) and filtered as one message; the
/// event's other fields and the blank lines between events are kept as sent.
fn filter_events(body: &[u8], may_call: &mut dyn FnMut(&str) -> bool) -> Result<Filtered, FilterError> {
    let text = std::str::from_utf8(body).map_err(|e| FilterError::NotJson(e.to_string()))?;
    let mut out = String::with_capacity(text.len());
    let mut removed = 0;
    // Events are separated by a blank line; a trailing partial event (no blank line) is one too.
    let normalised = text.replace("\r\n", "\n");
    for (i, event) in normalised.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        let mut data: Vec<&str> = Vec::new();
        let mut others: Vec<&str> = Vec::new();
        for line in event.split('\n') {
            match line.strip_prefix("data:") {
                Some(d) => data.push(d.strip_prefix(' ').unwrap_or(d)),
                None => others.push(line),
            }
        }
        if data.is_empty() {
            out.push_str(event);
            continue;
        }
        let mut message: Value =
            serde_json::from_str(&data.join("\n")).map_err(|e| FilterError::NotJson(e.to_string()))?;
        removed += filter_message(&mut message, may_call);
        let mut lines: Vec<String> =
            others.iter().filter(|l| !l.is_empty()).map(|l| (*l).to_owned()).collect();
        lines.push(format!("data: {message}"));
        out.push_str(&lines.join("\n"));
    }
    Ok(Filtered { body: out.into_bytes(), removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_search(name: &str) -> bool {
        name.starts_with("search_")
    }

    fn answer() -> Value {
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
            {"name": "search_contacts", "inputSchema": {"type": "object"}},
            {"name": "delete_all", "inputSchema": {"type": "object"}},
            {"inputSchema": {"type": "object"}},
        ], "nextCursor": "c2"}})
    }

    #[test]
    fn a_json_answer_keeps_only_the_callable_tools() {
        let body = answer().to_string();
        let f = filter(body.as_bytes(), Some("application/json; charset=utf-8"), &mut only_search).unwrap();
        let v: Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v["result"]["tools"][0]["name"], "search_contacts");
        assert_eq!((v["result"]["nextCursor"].as_str(), v["id"].as_i64()), (Some("c2"), Some(2)));
        assert_eq!(f.removed, 2, "the unnamed tool goes too");
    }

    #[test]
    fn an_event_stream_is_filtered_event_by_event() {
        let progress =
            serde_json::json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}});
        let body = format!(
            "event: message\r\nid: 1\r\ndata: {progress}\r\n\r\nevent: message\nid: 2\ndata: {}\n\n",
            answer()
        );
        let f = filter(body.as_bytes(), Some("text/event-stream"), &mut only_search).unwrap();
        let text = String::from_utf8(f.body).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2, "{text}");
        assert!(events[0].starts_with("event: message\nid: 1\ndata: "), "{text}");
        assert!(events[1].starts_with("event: message\nid: 2\ndata: "), "{text}");
        let last: Value = serde_json::from_str(events[1].rsplit_once("data: ").unwrap().1).unwrap();
        assert_eq!(last["result"]["tools"].as_array().unwrap().len(), 1, "{text}");
        assert_eq!(f.removed, 2);
        // Data split over several lines is one message.
        let split = "data: {\"jsonrpc\": \"2.0\", \"id\": 1,\ndata: \"result\": {\"tools\": [{\"name\": \"x\"}]}}\n\n";
        let f = filter(split.as_bytes(), Some("text/event-stream"), &mut only_search).unwrap();
        assert_eq!(f.removed, 1);
    }

    #[test]
    fn what_cannot_be_read_is_refused_not_forwarded() {
        for (body, ct) in [
            ("not json", Some("application/json")),
            ("data: not json\n\n", Some("text/event-stream")),
            ("{}", Some("text/html")),
            ("{}", None),
        ] {
            assert!(filter(body.as_bytes(), ct, &mut only_search).is_err(), "{body} {ct:?}");
        }
    }
}
