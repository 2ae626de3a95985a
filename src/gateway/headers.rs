//! What the gateway forwards: the agent's headers to the upstream without its token, the hop-by-hop
//! headers or anything it could use to speak for the gateway; the upstream's headers back without the
//! hop-by-hop ones. Pure.

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded either way.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers some frameworks read as the request's method: the decision judged the method that was sent.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Whether `name` is dropped from what goes either way: hop-by-hop, or named in a `Connection` header.
fn hop_by_hop(name: &HeaderName, connection: &[String]) -> bool {
    HOP_BY_HOP.contains(name)
        || name.as_str() == "proxy-connection"
        || connection.iter().any(|c| c.eq_ignore_ascii_case(name.as_str()))
}

/// The header names a `Connection` header lists (they are hop-by-hop for this message).
fn connection_names(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The agent's request headers as the upstream gets them: without `Authorization` (the agent's token
/// never leaves the gateway: no passthrough), without `Host` (the client sets the upstream's), without
/// hop-by-hop headers, without any `x-agentiam-*` header (the gateway's own, which an upstream may
/// trust because only the gateway sets them) and without method overrides (`x-http-method-override`).
pub fn upstream_request(headers: &HeaderMap) -> HeaderMap {
    let connection = connection_names(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let drop = hop_by_hop(name, &connection)
            || name == header::AUTHORIZATION
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name.as_str().starts_with("x-agentiam-")
            || METHOD_OVERRIDES.contains(&name.as_str());
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The upstream's response headers as the agent gets them: without hop-by-hop headers (the gateway
/// frames the response itself).
pub fn agent_response(headers: &HeaderMap) -> HeaderMap {
    let connection = connection_names(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !hop_by_hop(name, &connection) && name != header::CONTENT_LENGTH {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_and_the_gateways_own_headers_never_reach_the_upstream() {
        let sent = map(&[
            ("authorization", "Bearer agent-token"),
            ("host", "gateway"),
            ("x-agentiam-agent", "ns/forged"),
            ("x-agentiam-audit-id", "forged"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("content-length", "12"),
            ("accept", "application/json"),
            ("mcp-session-id", "s1"),
            ("x-request-id", "r1"),
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "DELETE"),
        ]);
        let out = upstream_request(&sent);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "mcp-session-id", "x-request-id"]);
    }

    #[test]
    fn hop_by_hop_headers_do_not_come_back() {
        let got = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "s1"),
        ]);
        let out = agent_response(&got);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "mcp-session-id"]);
    }
}
