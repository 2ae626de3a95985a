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
    }
}
