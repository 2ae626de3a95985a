//! A2A agent cards: an agent that speaks the A2A protocol describes itself in a JSON document at
//! `/.well-known/agent-card.json` (`/.well-known/agent.json` before A2A 0.3). Discovery asks running pods for
//! one on the TCP ports they declare; a card is strong evidence of an agent, whatever else the template
//! says. Pure: which pods are asked, at which address, and what answer counts as a card; the requests are
//! made by `controller::discovery::cards`.
//!
//! The requests go to addresses tenants influence (a pod's ports are in its spec), so they are bounded:
//! the pod's IP from its status only, never loopback, link-local, multicast or unspecified addresses (the
//! node's and the cloud's metadata services), never a host-network pod (its IP is the node's), plain GETs
//! without credentials, no redirects, a size and a time limit, and nothing of the answer kept but a
//! sanitised name.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// Where a card is looked for, in order.
pub const PATHS: [&str; 2] = ["/.well-known/agent-card.json", "/.well-known/agent.json"];
/// A larger answer is not a card (real ones are a few KiB).
pub const MAX_BYTES: usize = 64 * 1024;
/// At most this many ports of one pod are asked.
pub const MAX_PORTS: usize = 8;
/// A card's name is kept to this many characters.
pub const MAX_NAME: usize = 63;

/// A running pod to ask for a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod's UID: each pod is asked once (and once more if nothing answered).
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its IP, from its status.
    pub ip: IpAddr,
    /// The TCP ports its containers declare, ascending, at most [`MAX_PORTS`].
    pub ports: Vec<u16>,
}

/// A card a pod served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServedCard {
    /// The port it answered on.
    pub port: u16,
    /// The card's name, sanitised ([`sanitise`]).
    pub name: String,
}

/// The pod as a target: running, Ready, not being deleted, not on the host's network, with an IP that may be
/// asked and at least one declared TCP port. None otherwise.
pub fn target(pod: &Pod) -> Option<Target> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    if !may_ask(ip) {
        return None;
    }
    let mut ports: Vec<u16> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.truncate(MAX_PORTS);
    if ports.is_empty() {
        return None;
    }
    Some(Target {
        uid: meta.uid.clone()?,
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        ip,
        ports,
    })
}

/// Whether discovery may send a request to `ip`: not this host (loopback), not a link-local address (the
/// metadata services of clouds and nodes live there), not multicast, broadcast or unspecified.
pub fn may_ask(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unicast_link_local() || v6.is_multicast() || v6.is_unspecified())
        }
    }
}

/// The card's name if `body` is an A2A agent card: a JSON object (at most [`MAX_BYTES`]) with a non-empty
/// string `name` and an array `skills`, the two members every version of the A2A specification requires
/// and that an unrelated JSON document rarely has together.
pub fn parse(body: &[u8]) -> Option<String> {
    if body.len() > MAX_BYTES {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = doc.get("name")?.as_str()?;
    doc.get("skills")?.as_array()?;
    let name = sanitise(name);
    (!name.is_empty()).then_some(name)
}

/// A name as discovery shows it (in status, Events, the CLI): control characters and the invisible ones that
/// reorder or hide text (bidirectional overrides, zero-width characters) become spaces, whitespace runs one
/// space, trimmed, at most [`MAX_NAME`] characters.
pub fn sanitise(name: &str) -> String {
    let invisible = |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_control() || c.is_whitespace() || invisible(c) { ' ' } else { c })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(MAX_NAME).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(patch: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 8080}, {"containerPort": 9000, "protocol": "UDP"}, {"containerPort": 8080},
                {"containerPort": 7000, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.0.7",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        json_patch(&mut base, patch);
        serde_json::from_value(base).unwrap()
    }

    fn json_patch(base: &mut serde_json::Value, patch: serde_json::Value) {
        match (base, patch) {
            (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    json_patch(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }

    #[test]
    fn a_ready_running_pod_is_asked_on_its_declared_tcp_ports() {
        let t = target(&pod(json!({}))).unwrap();
        assert_eq!(t.ports, vec![7000, 8080], "TCP only, deduplicated, ascending");
        assert_eq!(t.ip, "10.244.0.7".parse::<IpAddr>().unwrap());
        assert_eq!((t.uid.as_str(), t.namespace.as_str(), t.name.as_str()), ("u1", "ns", "p"));
    }

    #[test]
    fn pods_that_cannot_or_must_not_be_asked_are_not_targets() {
        for (why, patch) in [
            ("pending", json!({"status": {"phase": "Pending"}})),
            ("not ready", json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
            ("host network", json!({"spec": {"hostNetwork": true}})),
            ("being deleted", json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})),
            ("no IP", json!({"status": {"podIP": null}})),
            ("not an IP", json!({"status": {"podIP": "example.org"}})),
            ("loopback", json!({"status": {"podIP": "127.0.0.1"}})),
            ("metadata service", json!({"status": {"podIP": "169.254.169.254"}})),
            ("v4-mapped loopback", json!({"status": {"podIP": "::ffff:127.0.0.1"}})),
            (
                "no TCP port",
                json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]}}),
            ),
            ("no ports", json!({"spec": {"containers": [{"name": "c"}]}})),
        ] {
            assert_eq!(target(&pod(patch)), None, "{why}");
        }
    }

    #[test]
    fn at_most_max_ports_are_asked() {
        let ports: Vec<_> = (1..=20).map(|p| json!({"containerPort": 8000 + p})).collect();
        let t = target(&pod(json!({"spec": {"containers": [{"name": "c", "ports": ports}]}}))).unwrap();
        assert_eq!(t.ports.len(), MAX_PORTS);
    }

    #[test]
    fn addresses_that_may_be_asked() {
        for ok in ["10.0.0.5", "192.168.1.2", "172.16.0.1", "fd00::1", "2001:db8::1"] {
            assert!(may_ask(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!may_ask(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn a_card_has_a_name_and_skills() {
        let card = json!({"name": "Refund helper", "description": "d", "url": "http://x", "version": "1",
                          "capabilities": {}, "skills": [{"id": "refund"}]});
        assert_eq!(parse(card.to_string().as_bytes()).as_deref(), Some("Refund helper"));
        for not in [
            json!({"name": "x"}),
            json!({"skills": []}),
            json!({"name": "", "skills": []}),
            json!({"name": 7, "skills": []}),
            json!({"name": "x", "skills": {}}),
            json!(["name", "skills"]),
        ] {
            assert_eq!(parse(not.to_string().as_bytes()), None, "{not}");
        }
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(b"{\"name\": \"x\", \"skills\": ["), None, "truncated");
        let big = format!("{{\"name\": \"x\", \"skills\": [], \"pad\": \"{}\"}}", "a".repeat(MAX_BYTES));
        assert_eq!(parse(big.as_bytes()), None, "too large");
        let deep = format!("{{\"name\": \"x\", \"skills\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse(deep.as_bytes()), None, "nesting beyond serde_json's limit is refused, not a crash");
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitise("  a\u{1b}[31m\tb\n\nc  "), "a [31m b c");
        assert_eq!(sanitise(&"x".repeat(200)).chars().count(), MAX_NAME);
        assert_eq!(sanitise("evil\u{202e}gpj.exe\u{0}"), "evil gpj.exe", "no bidirectional overrides");
        assert_eq!(sanitise("a\u{200b}b\u{feff}"), "a b");
        assert_eq!(
            sanitise("Agent für Erstattungen"),
            "Agent für Erstattungen",
            "letters of any script stay"
        );
        let card = json!({"name": "\n\t ", "skills": []});
        assert_eq!(parse(card.to_string().as_bytes()), None, "a name of nothing printable is no name");
    }
}
