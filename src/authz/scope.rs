//! Delegation scopes and their algebra. Pure.
//!
//! A scope names what a delegation lets its grantee do on the grantor's behalf: one action (a verb, or `*`
//! for every verb) on the resources one pattern matches, written `<action>@<resource pattern>`:
//!
//! ```text
//! read@crm:contacts/*        read any one contact
//! refund@pay:orders/**       refund anything under pay:orders
//! *@tickets:queue/eu         every verb on one queue
//! ```
//!
//! The action is the AgentPolicy action grammar (`[a-zA-Z0-9][a-zA-Z0-9._:-]*`, or `*`), so it never holds
//! an `@`; the first `@` ends it. The pattern is an AgentPolicy resource pattern ([`ResourcePattern`]:
//! `*` one segment, `**` any number, `*` inside a segment), in canonical form, so look-alike characters,
//! escapes and dot segments are refused here as they are in policies.
//!
//! A scope **covers** another when every request the other allows, it allows too ([`Scope::covers`]): a
//! child Delegation must be covered, scope by scope, by its parent. The check is structural, never by
//! string prefix, and case-sensitive like matching.

use std::fmt;

use super::pattern::{PatternError, ResourcePattern, split_resource};

/// Longest scope accepted, in bytes (the CRD's bound too).
pub const MAX_SCOPE_LEN: usize = 253;
/// Longest action, as in AgentPolicy rules.
const MAX_ACTION_LEN: usize = 63;

/// Why a scope does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Longer than [`MAX_SCOPE_LEN`].
    #[error("is longer than {MAX_SCOPE_LEN} bytes")]
    TooLong,
    /// No `@` between the action and the resource pattern.
    #[error("needs the form <action>@<resource pattern>, such as read@crm:contacts/*")]
    NoSeparator,
    /// The action is not `*` or a verb.
    #[error("action {0:?} is not \"*\" or a verb of letters, digits and . _ : - (at most 63)")]
    Action(String),
    /// The resource pattern does not compile.
    #[error("resource pattern {pattern:?} {source}")]
    Resource {
        /// The pattern as written.
        pattern: String,
        /// Why.
        #[source]
        source: PatternError,
    },
}

/// What a scope lets through: one verb, or every verb.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verb {
    Any,
    Named(Box<str>),
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    source: Box<str>,
    verb: Verb,
    resource: ResourcePattern,
}

impl Scope {
    /// The one verb it lets through, or None for every verb (`*`).
    pub fn verb(&self) -> Option<&str> {
        match &self.verb {
            Verb::Any => None,
            Verb::Named(v) => Some(v),
        }
    }

    /// Its resource pattern.
    pub fn resource(&self) -> &ResourcePattern {
        &self.resource
    }

    /// Parses `scope`.
    pub fn parse(scope: &str) -> Result<Self, ScopeError> {
        if scope.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        let (action, pattern) = scope.split_once('@').ok_or(ScopeError::NoSeparator)?;
        let verb = if action == "*" {
            Verb::Any
        } else if valid_action(action) {
            Verb::Named(action.into())
        } else {
            return Err(ScopeError::Action(action.to_owned()));
        };
        let resource = ResourcePattern::parse(pattern)
            .map_err(|source| ScopeError::Resource { pattern: pattern.to_owned(), source })?;
        Ok(Self { source: scope.into(), verb, resource })
    }

    /// Whether the request (`action` on the canonical `resource`) is inside this scope.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        self.allows_action(action) && self.resource.matches(&split_resource(resource))
    }

    fn allows_action(&self, action: &str) -> bool {
        match &self.verb {
            Verb::Any => true,
            Verb::Named(v) => **v == *action,
        }
    }

    /// Whether every request `narrower` allows, this scope allows too.
    pub fn covers(&self, narrower: &Scope) -> bool {
        let verb = match (&self.verb, &narrower.verb) {
            (Verb::Any, _) => true,
            (Verb::Named(_), Verb::Any) => false,
            (Verb::Named(w), Verb::Named(n)) => w == n,
        };
        verb && self.resource.covers(&narrower.resource)
    }

    /// The scope as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn valid_action(action: &str) -> bool {
    let mut chars = action.chars();
    action.len() <= MAX_ACTION_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Parses every scope of a list, naming the first that does not parse.
pub fn parse_all<S: AsRef<str>>(scopes: &[S]) -> Result<Vec<Scope>, (String, ScopeError)> {
    scopes.iter().map(|s| Scope::parse(s.as_ref()).map_err(|e| (s.as_ref().to_owned(), e))).collect()
}

/// The scopes of `narrower` that no scope of `wider` covers (empty: `narrower` is an attenuation of
/// `wider`). Each scope must be covered by one scope on its own; a scope only a union would cover is
/// reported, which refuses some narrowings but never lets one through that widens.
pub fn uncovered<'a>(wider: &[Scope], narrower: &'a [Scope]) -> Vec<&'a Scope> {
    narrower.iter().filter(|n| !wider.iter().any(|w| w.covers(n))).collect()
}

/// Whether some scope of `scopes` allows the request.
pub fn any_allows(scopes: &[Scope], action: &str, resource: &str) -> bool {
    scopes.iter().any(|s| s.allows(action, resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Scope {
        Scope::parse(text).unwrap()
    }

    #[test]
    fn scopes_name_a_verb_and_a_pattern() {
        assert!(s("read@crm:contacts/*").allows("read", "crm:contacts/42"));
        assert!(!s("read@crm:contacts/*").allows("update", "crm:contacts/42"));
        assert!(!s("read@crm:contacts/*").allows("read", "crm:contacts/42/notes"));
        assert!(s("*@crm:contacts/**").allows("delete", "crm:contacts/42/notes"));
        assert!(s("tools.call@mcp:crm/search").allows("tools.call", "mcp:crm/search"));
        // The first @ ends the action; the pattern may hold more.
        assert!(s("read@mail:inbox/bob@example.com").allows("read", "mail:inbox/bob@example.com"));
    }

    #[test]
    fn malformed_scopes_are_refused_with_reasons() {
        assert_eq!(Scope::parse("crm:contacts:read"), Err(ScopeError::NoSeparator));
        assert!(matches!(Scope::parse("@crm:x"), Err(ScopeError::Action(_))));
        assert!(matches!(Scope::parse("re ad@crm:x"), Err(ScopeError::Action(_))));
        assert!(matches!(Scope::parse("read@"), Err(ScopeError::Resource { .. })));
        assert!(matches!(Scope::parse("read@crm:contacts/../admin"), Err(ScopeError::Resource { .. })));
        // A fullwidth solidus is a look-alike of the separator.
        assert!(matches!(Scope::parse("read@crm:contacts\u{FF0F}*"), Err(ScopeError::Resource { .. })));
        assert_eq!(Scope::parse(&format!("read@{}", "a".repeat(260))), Err(ScopeError::TooLong));
        let e = Scope::parse("read@crm:contacts/").unwrap_err().to_string();
        assert!(e.contains("canonical"), "{e}");
    }

    #[test]
    fn a_child_scope_must_be_covered_by_one_parent_scope() {
        let parent = parse_all(&["read@crm:contacts/*", "refund@pay:orders/**"]).unwrap();
        let ok = parse_all(&["read@crm:contacts/42", "refund@pay:orders/eu/*"]).unwrap();
        assert!(uncovered(&parent, &ok).is_empty());
        for widening in [
            "read@crm:contacts/**",
            "*@crm:contacts/42",
            "update@crm:contacts/42",
            "read@crm:*",
            "read@CRM:contacts/42",
            "refund@pay:**",
            "read@crm:contacts/*/notes",
        ] {
            let child = parse_all(&[widening]).unwrap();
            assert_eq!(uncovered(&parent, &child).len(), 1, "{widening} widens the parent");
        }
        assert!(s("*@crm:**").covers(&s("read@crm:contacts/42")));
    }

    proptest::proptest! {
        #[test]
        fn whatever_a_covered_scope_allows_its_cover_allows(
            wa in "(\\*|read|write)", wp in "(a|b|\\*|\\*\\*|a\\*)(/(a|b|\\*|\\*\\*|\\*b)){0,3}",
            na in "(\\*|read|write)", np in "(a|b|\\*|\\*\\*|a\\*|ab)(/(a|b|ab|\\*|\\*\\*|\\*b)){0,3}",
            action in "(read|write)", resource in "(a|b|ab)(/(a|b|ab|bb)){0,4}",
        ) {
            let (Ok(wide), Ok(narrow)) = (Scope::parse(&format!("{wa}@{wp}")), Scope::parse(&format!("{na}@{np}")))
            else {
                return Ok(());
            };
            if wide.covers(&narrow) && narrow.allows(&action, &resource) {
                proptest::prop_assert!(wide.allows(&action, &resource), "{wide} covers {narrow}");
            }
        }
    }
}
