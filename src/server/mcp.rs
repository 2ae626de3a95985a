//! The MCP mapping: a JSON-RPC 2.0 request body (Model Context Protocol over HTTP) mapped to the action,
//! tool and context a decision is asked about. Pure.
//!
//! `tools/call` becomes action `tools.call` with the tool `params.name` and `params.arguments` as the
//! request context (so `amount <= 10000` constrains a refund tool's argument); any other method `a/b`
//! becomes action `a.b` (`resources/read` -> `resources.read`) without a tool. Batches are refused: one
//! request must be one decision (and MCP no longer allows batching).

use serde_json::{Map, Value};

/// What a request body says.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// Not a JSON-RPC request (no body, not JSON, or JSON without `jsonrpc` and `method`): plain HTTP.
    NotJsonRpc,
    /// A JSON-RPC request.
    Call {
        /// The action (`tools.call`, `resources.read`, ...).
        action: String,
        /// The tool, for `tools/call`.
        tool: Option<String>,
        /// `params.arguments` of a `tools/call`.
        arguments: Map<String, Value>,
    },
    /// A JSON-RPC request the mapping refuses, with why.
    Refused(&'static str),
}

/// Maps a request body.
pub fn map_body(body: &[u8]) -> Mapping {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Mapping::NotJsonRpc;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return Mapping::NotJsonRpc };
    let object = match value {
        Value::Array(items) if items.iter().any(is_json_rpc) => {
            return Mapping::Refused("JSON-RPC batches are not supported; send one request at a time");
        }
        Value::Object(o) if is_json_rpc_object(&o) => o,
        _ => return Mapping::NotJsonRpc,
    };
    // A key sent twice is read as its last copy here, and as its first by some servers: the tool decided
    // would not be the tool called.
    if has_duplicate_keys(body) {
        return Mapping::Refused(
            "the JSON-RPC request has a key twice; readers disagree on which one counts",
        );
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return Mapping::Refused("JSON-RPC method is not a string");
    };
    if method.is_empty()
        || method.len() > 63
        || !method.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        return Mapping::Refused(
            "JSON-RPC method is empty, too long or has characters an action cannot have",
        );
    }
    let action = method.replace('/', ".");
    if method != "tools/call" {
        return Mapping::Call { action, tool: None, arguments: Map::new() };
    }
    let params = object.get("params").and_then(Value::as_object);
    let Some(tool) = params.and_then(|p| p.get("name")).and_then(Value::as_str).filter(|t| !t.is_empty())
    else {
        return Mapping::Refused("tools/call without a tool name in params.name");
    };
    if tool.len() > 253 || tool.chars().any(char::is_control) {
        return Mapping::Refused("tool name is too long or has control characters");
    }
    let arguments = match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(_) => return Mapping::Refused("tools/call params.arguments is not an object"),
    };
    Mapping::Call { action, tool: Some(tool.to_owned()), arguments }
}

/// Whether any object in the JSON `body` has a key twice.
pub fn has_duplicate_keys(body: &[u8]) -> bool {
    use serde::de::DeserializeSeed as _;
    NoDuplicates.deserialize(&mut serde_json::Deserializer::from_slice(body)).is_err()
}

/// Walks a JSON document and fails at the first object with a key twice (or on anything not JSON).
struct NoDuplicates;

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicates {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicates {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicates)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("a key twice"));
            }
            map.next_value_seed(NoDuplicates)?;
        }
        Ok(())
    }
}

fn is_json_rpc(v: &Value) -> bool {
    v.as_object().is_some_and(is_json_rpc_object)
}

fn is_json_rpc_object(o: &Map<String, Value>) -> bool {
    o.get("jsonrpc").is_some() && o.contains_key("method")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Mapping {
        map_body(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn tools_call_maps_to_the_tool_and_its_arguments() {
        let m = map(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": "refund", "arguments": {"amount": 120, "order": "o-1"}}}));
        let Mapping::Call { action, tool, arguments } = m else { panic!("{m:?}") };
        assert_eq!((action.as_str(), tool.as_deref()), ("tools.call", Some("refund")));
        assert_eq!(arguments.get("amount"), Some(&json!(120)));
    }

    #[test]
    fn other_methods_map_to_dotted_actions() {
        assert_eq!(
            map(json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "x"}})),
            Mapping::Call { action: "resources.read".into(), tool: None, arguments: Map::new() }
        );
        assert_eq!(
            map(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Mapping::Call { action: "notifications.initialized".into(), tool: None, arguments: Map::new() }
        );
    }

    #[test]
    fn non_json_rpc_bodies_are_plain_http() {
        assert_eq!(map_body(b""), Mapping::NotJsonRpc);
        assert_eq!(map_body(b"  \n"), Mapping::NotJsonRpc);
        assert_eq!(map_body(b"name=x&y=z"), Mapping::NotJsonRpc);
        assert_eq!(map(json!({"method": "tools/call"})), Mapping::NotJsonRpc, "no jsonrpc member");
        assert_eq!(map(json!([1, 2])), Mapping::NotJsonRpc);
    }

    #[test]
    fn suspicious_json_rpc_is_refused() {
        let refused = |v| matches!(map(v), Mapping::Refused(_));
        assert!(refused(json!([{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "a"}}])));
        assert!(refused(json!({"jsonrpc": "2.0", "method": "tools/call", "params": {}})));
        assert!(refused(json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": ""}})));
        assert!(refused(
            json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "a", "arguments": [1]}})
        ));
        assert!(refused(json!({"jsonrpc": "2.0", "method": 7})));
        assert!(refused(json!({"jsonrpc": "2.0", "method": "tools call"})));
        // The same key twice: a server reading the first copy would call delete_all.
        let twice = br#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "delete_all", "name": "search_contacts"}}"#;
        assert!(matches!(map_body(twice), Mapping::Refused(m) if m.contains("twice")));
        let outer =
            br#"{"jsonrpc": "2.0", "method": "tools/call", "method": "ping", "params": {"name": "a"}}"#;
        assert!(matches!(map_body(outer), Mapping::Refused(_)));
        assert!(!has_duplicate_keys(br#"{"a": {"b": 1}, "c": [{"b": 2}, {"b": 3}]}"#));
    }
}
