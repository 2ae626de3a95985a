//! Validation of an Agent as the reconciler sees it.
//!
//! The CRD's CEL rules refuse most bad objects at the API server, but a CRD can be installed without them (or an
//! older CRD can still be served), so the reconciler re-checks every rule here and adds the ones that are
//! awkward in CEL (image reference and URL syntax, label selector semantics). Pure: no I/O.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{AgentSpec, DesiredState};
use crate::identity::{SpiffeError, SpiffeId, TrustDomain};

/// The default credential lifetime.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(10 * 60);
/// The longest credential lifetime anyone may ask for.
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(60 * 60);
/// The shortest credential lifetime anyone may ask for.
pub const MIN_CREDENTIAL_TTL: Duration = Duration::from_secs(60);

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. "spec.credentials.ttl".
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems found, in field order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

/// What validation establishes about a valid agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAgent {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The credential lifetime it asked for (before policy and trust caps).
    pub credential_ttl: Duration,
}

/// Parses a Go-style duration ("90s", "10m", "1h30m") into a std Duration; negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = kube::core::Duration::from_str(s).map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d.into())
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label key: optional DNS-subdomain prefix and '/', then a name of 1-63 [A-Za-z0-9._-] starting and ending
/// alphanumeric.
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && is_label_value(name) && !name.is_empty()
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && (s.is_empty()
            || (s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
                && s.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)))
}

/// Checks a label selector the way the API server's label parser would before it is used to select pods.
pub fn validate_label_selector(field: &str, sel: &LabelSelector, errs: &mut Vec<FieldError>) {
    let mut err = |f: String, m: String| errs.push(FieldError { field: f, message: m });
    for (k, v) in sel.match_labels.iter().flatten() {
        if !is_label_key(k) {
            err(format!("{field}.matchLabels"), format!("{k:?} is not a valid label key"));
        }
        if !is_label_value(v) {
            err(format!("{field}.matchLabels.{k}"), format!("{v:?} is not a valid label value"));
        }
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if !is_label_key(&e.key) {
            err(format!("{f}.key"), format!("{:?} is not a valid label key", e.key));
        }
        let n = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if n == 0 => {
                err(format!("{f}.values"), format!("operator {} needs values", e.operator))
            }
            "Exists" | "DoesNotExist" if n > 0 => {
                err(format!("{f}.values"), format!("operator {} takes no values", e.operator))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                err(format!("{f}.operator"), format!("{other:?} is not In, NotIn, Exists or DoesNotExist"))
            }
        }
        for v in e.values.iter().flatten() {
            if !is_label_value(v) {
                err(format!("{f}.values"), format!("{v:?} is not a valid label value"));
            }
        }
    }
}

/// An OCI image reference, checked loosely but safely: a name of lowercase path components with an optional
/// registry host (which may have a port), then an optional tag and/or a sha256 digest.
pub fn is_image_reference(s: &str) -> bool {
    if s.is_empty() || s.len() > 512 || s.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return false;
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let Some(hex) = d.strip_prefix("sha256:") else { return false };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return false;
        }
    }
    // A ':' after the last '/' starts a tag; one before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest.get(last_slash..).and_then(|tail| tail.find(':')) {
        Some(i) => (rest.get(..last_slash + i).unwrap_or(""), rest.get(last_slash + i + 1..)),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !t.starts_with(['.', '-']);
        if !ok {
            return false;
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // A first component with a '.' or ':' (or "localhost") is a registry host, optionally with a port.
    if parts.len() > 1
        && let Some(host) = parts.first().copied()
        && (host.contains(['.', ':']) || host == "localhost")
    {
        let (h, port) = host.split_once(':').unwrap_or((host, ""));
        if !is_dns_subdomain(&h.to_ascii_lowercase()) || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        parts.remove(0);
    }
    !parts.is_empty()
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
                && p.as_bytes().first().is_some_and(|b| b.is_ascii_alphanumeric())
                && p.as_bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

/// An https URL with a host and no credentials.
pub fn is_https_url(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    !authority.is_empty()
        && !authority.contains('@')
        && !s.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// The URL with any `user:password@` part replaced by `REDACTED@`, for records that outlive the object.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://REDACTED@{host}{tail}"),
        None => url.to_owned(),
    }
}

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Validates an Agent's name and spec. Returns every problem, not just the first, so one status update tells
/// the owner everything to fix.
pub fn validate_agent(
    trust_domain: &TrustDomain,
    namespace: &str,
    name: &str,
    spec: &AgentSpec,
) -> Result<ValidAgent, ValidationErrors> {
    let mut errs: Vec<FieldError> = Vec::new();
    let mut err = |f: &str, m: String| errs.push(FieldError { field: f.to_owned(), message: m });

    if !is_dns_label(name) {
        err("metadata.name", format!("{name:?} must be a DNS-1123 label to form a SPIFFE ID path segment"));
    }
    let spiffe_id = match SpiffeId::for_agent(trust_domain, namespace, name) {
        Ok(id) => Some(id),
        Err(e @ (SpiffeError::Segment(_) | SpiffeError::TooLong)) => {
            err("metadata.name", format!("cannot form a SPIFFE ID: {e}"));
            None
        }
        Err(e) => {
            err("metadata.name", e.to_string());
            None
        }
    };
    match &spec.owner {
        None => err("spec.owner", "is not set: name the accountable owner to register the agent".into()),
        Some(o) if blank(&o.name) => err("spec.owner.name", "must not be blank".into()),
        Some(_) => {}
    }
    if blank(&spec.purpose) {
        err("spec.purpose", "must not be blank".into());
    } else if spec.purpose.len() > 1024 {
        err("spec.purpose", "must be at most 1024 characters".into());
    }
    if let Some(p) = &spec.provenance {
        let fields = [
            ("spec.provenance.builder", &p.builder),
            ("spec.provenance.model", &p.model),
            ("spec.provenance.modelProvider", &p.model_provider),
            ("spec.provenance.version", &p.version),
        ];
        for (f, v) in fields {
            if v.as_deref().is_some_and(blank) {
                err(f, "must not be blank when set".into());
            }
        }
        if let Some(image) = &p.image
            && !is_image_reference(image)
        {
            err("spec.provenance.image", format!("{image:?} is not a valid image reference"));
        }
        if let Some(src) = &p.source_repository
            && !is_https_url(src)
        {
            err(
                "spec.provenance.sourceRepository",
                // Not echoed: a URL with embedded credentials must not reach conditions, Events or the audit log.
                "must be an https:// URL without credentials".into(),
            );
        }
    }
    if let Some(w) = &spec.workload {
        if w.service_account_name.is_none() && w.pod_selector.is_none() {
            err("spec.workload", "needs serviceAccountName, podSelector, or both".into());
        }
        if let Some(sa) = &w.service_account_name
            && !is_dns_subdomain(sa)
        {
            err("spec.workload.serviceAccountName", format!("{sa:?} is not a valid ServiceAccount name"));
        }
    }
    for (i, r) in spec.policy_refs.iter().enumerate() {
        if !is_dns_subdomain(&r.name) {
            err(&format!("spec.policyRefs[{i}].name"), format!("{:?} is not a valid object name", r.name));
        }
    }
    let mut credential_ttl = DEFAULT_CREDENTIAL_TTL;
    if let Some(c) = &spec.credentials {
        if c.audiences.len() > 16 {
            err("spec.credentials.audiences", "at most 16 audiences".into());
        }
        for (i, a) in c.audiences.iter().enumerate() {
            if a.is_empty() || a.len() > 256 || a.bytes().any(|b| b.is_ascii_control()) {
                err(&format!("spec.credentials.audiences[{i}]"), "must be 1-256 printable characters".into());
            }
            if c.audiences.iter().take(i).any(|b| b == a) {
                err(&format!("spec.credentials.audiences[{i}]"), format!("{a:?} is repeated"));
            }
        }
        if let Some(ttl) = &c.ttl {
            match parse_duration(ttl) {
                Ok(d) if (MIN_CREDENTIAL_TTL..=MAX_CREDENTIAL_TTL).contains(&d) => credential_ttl = d,
                Ok(_) => err("spec.credentials.ttl", format!("{ttl:?} must be between 1m and 1h")),
                Err(e) => err("spec.credentials.ttl", e),
            }
        }
    }
    if let Some(w) = spec.workload.as_ref().and_then(|w| w.pod_selector.as_ref()) {
        validate_label_selector("spec.workload.podSelector", w, &mut errs);
    }
    match (errs.is_empty(), spiffe_id) {
        (true, Some(spiffe_id)) => Ok(ValidAgent { spiffe_id, credential_ttl }),
        _ => Err(ValidationErrors(errs)),
    }
}

/// The desired state, defaulting to Active.
pub fn desired_state(spec: &AgentSpec) -> DesiredState {
    spec.lifecycle.as_ref().map(|l| l.desired_state).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CredentialsSpec, Owner, PrincipalKind, Provenance, Workload};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn td() -> TrustDomain {
        TrustDomain::parse("cluster.local").unwrap()
    }

    fn spec() -> AgentSpec {
        AgentSpec::new(
            Owner { kind: PrincipalKind::User, name: "alice@example.com".into() },
            "answers support tickets",
        )
    }

    fn fields(r: Result<ValidAgent, ValidationErrors>) -> Vec<String> {
        r.err().map(|e| e.0.into_iter().map(|f| f.field).collect()).unwrap_or_default()
    }

    #[test]
    fn a_minimal_agent_is_valid_with_default_ttl() {
        let v = validate_agent(&td(), "support", "triage", &spec()).unwrap();
        assert_eq!(v.spiffe_id.to_string(), "spiffe://cluster.local/ns/support/agent/triage");
        assert_eq!(v.credential_ttl, DEFAULT_CREDENTIAL_TTL);
    }

    #[test]
    fn names_that_cannot_form_a_spiffe_id_are_refused() {
        for bad in ["Triage", "tri_age", "a.b", "-a", &"a".repeat(64)] {
            assert!(
                fields(validate_agent(&td(), "ns", bad, &spec())).contains(&"metadata.name".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = spec();
        s.purpose = "  ".into();
        if let Some(o) = s.owner.as_mut() {
            o.name = "".into();
        }
        s.credentials = Some(CredentialsSpec {
            audiences: vec!["a".into(), "a".into()],
            ttl: Some("2h".into()),
            x509: false,
        });
        let f = fields(validate_agent(&td(), "ns", "n", &s));
        assert_eq!(
            f,
            ["spec.owner.name", "spec.purpose", "spec.credentials.audiences[1]", "spec.credentials.ttl"]
        );
        s.owner = None;
        assert_eq!(
            fields(validate_agent(&td(), "ns", "n", &s)).first().map(String::as_str),
            Some("spec.owner")
        );
    }

    #[test]
    fn ttl_is_parsed_and_bounded() {
        let mut s = spec();
        for (ttl, ok) in [
            ("30m", true),
            ("1h", true),
            ("1m", true),
            ("59s", false),
            ("61m", false),
            ("10x", false),
            ("-5m", false),
        ] {
            s.credentials = Some(CredentialsSpec { ttl: Some(ttl.into()), ..Default::default() });
            assert_eq!(validate_agent(&td(), "ns", "n", &s).is_ok(), ok, "{ttl}");
        }
        s.credentials = Some(CredentialsSpec { ttl: Some("30m".into()), ..Default::default() });
        assert_eq!(validate_agent(&td(), "ns", "n", &s).unwrap().credential_ttl, Duration::from_secs(1800));
    }

    #[test]
    fn image_references() {
        let d = "a".repeat(64);
        for ok in [
            "busybox".to_string(),
            "library/busybox:1.36".into(),
            "ghcr.io/acme/bot:v1.2.3".into(),
            "localhost:5000/bot".into(),
            format!("ghcr.io/acme/bot@sha256:{d}"),
            format!("ghcr.io/acme/bot:v1@sha256:{d}"),
        ] {
            assert!(is_image_reference(&ok), "{ok}");
        }
        for bad in
            ["", "Bot", "ghcr.io/acme/bot:", "bot@sha256:abc", "bot@md5:x", "a b", "ghcr.io//bot", "bot:-x"]
        {
            assert!(!is_image_reference(bad), "{bad}");
        }
    }

    #[test]
    fn provenance_and_workload_are_checked() {
        let mut s = spec();
        s.provenance = Some(Provenance {
            image: Some("NOT AN IMAGE".into()),
            source_repository: Some("git@github.com:acme/bot".into()),
            builder: Some(" ".into()),
            ..Default::default()
        });
        s.workload = Some(Workload { service_account_name: Some("Bad_SA".into()), pod_selector: None });
        let f = fields(validate_agent(&td(), "ns", "n", &s));
        assert_eq!(
            f,
            [
                "spec.provenance.builder",
                "spec.provenance.image",
                "spec.provenance.sourceRepository",
                "spec.workload.serviceAccountName"
            ]
        );
    }

    #[test]
    fn label_selectors_are_checked() {
        let mut s = spec();
        s.workload = Some(Workload {
            service_account_name: None,
            pod_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), "bad value".to_string())].into()),
                match_expressions: Some(vec![
                    LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: None },
                    LabelSelectorRequirement { key: "x".into(), operator: "Matches".into(), values: None },
                ]),
            }),
        });
        let f = fields(validate_agent(&td(), "ns", "n", &s));
        assert_eq!(
            f,
            [
                "spec.workload.podSelector.matchLabels.app",
                "spec.workload.podSelector.matchExpressions[0].values",
                "spec.workload.podSelector.matchExpressions[1].operator"
            ]
        );
    }

    #[test]
    fn credentials_in_urls_are_neither_echoed_nor_archived() {
        let mut s = spec();
        s.provenance = Some(Provenance {
            source_repository: Some("https://bob:hunter2@git.example.com/x".into()),
            ..Default::default()
        });
        let e = validate_agent(&td(), "ns", "n", &s).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            redact_userinfo("https://bob:hunter2@git.example.com/x?y@z"),
            "https://REDACTED@git.example.com/x?y@z"
        );
        assert_eq!(redact_userinfo("https://git.example.com/x"), "https://git.example.com/x");
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }

    #[test]
    fn https_urls() {
        assert!(is_https_url("https://github.com/acme/bot"));
        assert!(!is_https_url("http://github.com/acme/bot"));
        assert!(!is_https_url("https://user:pw@github.com/x"));
        assert!(!is_https_url("https://"));
    }
}
