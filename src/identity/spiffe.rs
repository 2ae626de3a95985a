//! SPIFFE IDs as the SPIFFE ID specification defines them, and the agent ID scheme
//! `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`.
//!
//! Pure: used by the registry to assign IDs and by the verifier to check the `sub` claim, so both agree on
//! one definition of "valid".

use std::fmt;

/// The longest SPIFFE ID the specification lets implementations rely on (URI length, in bytes).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name (a DNS name).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a trust domain or SPIFFE ID is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// The trust domain is empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The trust domain has a character outside [a-z0-9.-_].
    #[error("trust domain {0:?} may only contain lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainCharacter(String),
    /// The ID does not start with `spiffe://`.
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    Scheme,
    /// A path segment is empty, "." or "..", or has a forbidden character.
    #[error(
        "SPIFFE ID path segment {0:?} is invalid: segments are non-empty, not \".\" or \"..\", and use only [A-Za-z0-9.-_]"
    )]
    Segment(String),
    /// The ID has a query or fragment, or a trailing slash.
    #[error("SPIFFE ID must not have a query, fragment, port, userinfo or trailing slash")]
    Form,
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The ID is valid but not in the expected trust domain.
    #[error("SPIFFE ID trust domain {found:?} is not the expected {expected:?}")]
    ForeignTrustDomain {
        /// The trust domain the ID names.
        found: String,
        /// The trust domain that was required.
        expected: String,
    },
    /// The ID is valid but not of the form `/ns/<namespace>/agent/<name>`.
    #[error("SPIFFE ID path is not of the form /ns/<namespace>/agent/<name>")]
    NotAnAgent,
}

/// A validated SPIFFE trust domain name such as `cluster.local` or `prod.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name. Only lowercase is accepted (the specification requires IDs to be compared
    /// case-sensitively after the trust domain is normalised to lowercase; we refuse rather than normalise).
    pub fn parse(s: &str) -> Result<Self, SpiffeError> {
        if s.is_empty() {
            return Err(SpiffeError::EmptyTrustDomain);
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeError::TrustDomainTooLong);
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(SpiffeError::TrustDomainCharacter(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

fn check_segment(seg: &str) -> Result<(), SpiffeError> {
    let ok_chars = seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if seg.is_empty() || seg == "." || seg == ".." || !ok_chars {
        return Err(SpiffeError::Segment(seg.to_owned()));
    }
    Ok(())
}

impl SpiffeId {
    /// The ID of an agent: `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`.
    pub fn for_agent(trust_domain: &TrustDomain, namespace: &str, name: &str) -> Result<Self, SpiffeError> {
        check_segment(namespace)?;
        check_segment(name)?;
        let id = Self { trust_domain: trust_domain.clone(), path: format!("/ns/{namespace}/agent/{name}") };
        if id.to_string().len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        Ok(id)
    }

    /// Parses any SPIFFE ID (the path may be empty, as for a trust domain's own ID).
    pub fn parse(s: &str) -> Result<Self, SpiffeError> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeError::Scheme)?;
        if rest.contains(['?', '#', '@', ':', '%']) {
            return Err(SpiffeError::Form);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let trust_domain = TrustDomain::parse(td)?;
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err(SpiffeError::Form);
            }
            for seg in path.split('/').skip(1) {
                check_segment(seg)?;
            }
        }
        Ok(Self { trust_domain, path: path.to_owned() })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, starting with '/' (or empty).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// If this is an agent ID in `expected`, its (namespace, name).
    pub fn agent_in(&self, expected: &TrustDomain) -> Result<(&str, &str), SpiffeError> {
        if &self.trust_domain != expected {
            return Err(SpiffeError::ForeignTrustDomain {
                found: self.trust_domain.to_string(),
                expected: expected.to_string(),
            });
        }
        let mut parts = self.path.split('/').skip(1);
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("agent"), Some(name), None) => Ok((ns, name)),
            _ => Err(SpiffeError::NotAnAgent),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    #[test]
    fn agent_id_has_the_documented_shape() {
        let id = SpiffeId::for_agent(&td("cluster.local"), "payments", "refund-bot").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/payments/agent/refund-bot");
        assert_eq!(id.agent_in(&td("cluster.local")).unwrap(), ("payments", "refund-bot"));
    }

    #[test]
    fn trust_domains_are_checked() {
        assert_eq!(TrustDomain::parse(""), Err(SpiffeError::EmptyTrustDomain));
        assert!(matches!(TrustDomain::parse("Cluster.Local"), Err(SpiffeError::TrustDomainCharacter(_))));
        assert!(matches!(TrustDomain::parse("a/b"), Err(SpiffeError::TrustDomainCharacter(_))));
        assert!(matches!(TrustDomain::parse("a:8080"), Err(SpiffeError::TrustDomainCharacter(_))));
        assert_eq!(TrustDomain::parse(&"a".repeat(256)), Err(SpiffeError::TrustDomainTooLong));
        assert!(TrustDomain::parse("prod_1.example-corp.com").is_ok());
    }

    #[test]
    fn names_that_cannot_form_an_id_are_refused() {
        let t = td("cluster.local");
        for bad in ["", ".", "..", "a/b", "a b", "ä", "a%2f"] {
            assert!(SpiffeId::for_agent(&t, "ns", bad).is_err(), "{bad:?} accepted");
            assert!(SpiffeId::for_agent(&t, bad, "agent").is_err(), "{bad:?} accepted as namespace");
        }
        let long = "a".repeat(MAX_SPIFFE_ID_LEN);
        assert_eq!(SpiffeId::for_agent(&t, "ns", &long), Err(SpiffeError::TooLong));
    }

    #[test]
    fn parse_accepts_valid_and_refuses_malformed_ids() {
        let ok = SpiffeId::parse("spiffe://example.org/ns/a/agent/b").unwrap();
        assert_eq!(ok.path(), "/ns/a/agent/b");
        assert!(SpiffeId::parse("spiffe://example.org").unwrap().path().is_empty());
        for bad in [
            "http://example.org/x",
            "SPIFFE://example.org/x",
            "spiffe://",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/x/../y",
            "spiffe://example.org/x?y",
            "spiffe://example.org/x#y",
            "spiffe://user@example.org/x",
            "spiffe://example.org:443/x",
            "spiffe://EXAMPLE.org/x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn agent_in_checks_trust_domain_and_shape() {
        let id = SpiffeId::parse("spiffe://other.org/ns/a/agent/b").unwrap();
        assert!(matches!(id.agent_in(&td("cluster.local")), Err(SpiffeError::ForeignTrustDomain { .. })));
        let svc = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        assert_eq!(svc.agent_in(&td("cluster.local")), Err(SpiffeError::NotAnAgent));
        let longer = SpiffeId::parse("spiffe://cluster.local/ns/a/agent/b/c").unwrap();
        assert_eq!(longer.agent_in(&td("cluster.local")), Err(SpiffeError::NotAnAgent));
    }
}
