//! What an agent's credentials should be, and whether the Secret holding them must be (re)issued, kept or
//! withdrawn. Pure: the controller checks the Secret against the operator's own record of the issuance it
//! names ([`super::secret::check`]), and acts on the [`CredentialPlan`]. The Secret's annotations are
//! written for people and tools; nothing here believes them.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::AgentPhase;
use crate::registry::ledger::Issuance;

/// Annotation: the UID of the Agent the credentials were issued to.
pub const ANNOTATION_UID: &str = "agentiam.dev/agent-uid";
/// Annotation: when the credentials were issued (RFC 3339).
pub const ANNOTATION_ISSUED_AT: &str = "agentiam.dev/issued-at";
/// Annotation: when the credentials expire (RFC 3339).
pub const ANNOTATION_EXPIRES_AT: &str = "agentiam.dev/expires-at";
/// Annotation: when the operator replaces them (80% of the lifetime, RFC 3339).
pub const ANNOTATION_REFRESH_AT: &str = "agentiam.dev/refresh-at";
/// Annotation: the ID of the key that signed the tokens.
pub const ANNOTATION_KEY_ID: &str = "agentiam.dev/key-id";
/// Annotation: a digest of what was asked for (audiences, x509, lifetime); a change re-issues.
pub const ANNOTATION_FINGERPRINT: &str = "agentiam.dev/request-fingerprint";
/// Annotation: the audit intent key of the issuance that wrote this Secret.
pub const ANNOTATION_ISSUE_KEY: &str = "agentiam.dev/issue-key";

/// Credentials are replaced once this fraction of their lifetime has passed.
pub const REFRESH_FRACTION: f64 = 0.8;

/// What the agent asks for, after policy and trust caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// One JWT-SVID per audience.
    pub audiences: Vec<String>,
    /// Also an X.509-SVID.
    pub x509: bool,
    /// Lifetime of every credential.
    pub ttl: Duration,
}

impl Desired {
    /// A short digest of the request, stored on the Secret so a spec change is noticed without parsing tokens.
    pub fn fingerprint(&self) -> String {
        let text = format!("v1|{}|{}|{}", self.audiences.join("\n"), self.x509, self.ttl.as_secs());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        hex::encode(digest.as_ref().get(..8).unwrap_or_default())
    }
}

/// What the operator recorded about the credentials a Secret holds (see [`Issuance`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IssuedFacts {
    /// Agent UID it was issued to.
    pub uid: Option<String>,
    /// When it was issued.
    pub issued_at: Option<Timestamp>,
    /// When to replace it.
    pub refresh_at: Option<Timestamp>,
    /// When it expires.
    pub expires_at: Option<Timestamp>,
    /// Signing key ID.
    pub key_id: Option<String>,
    /// Request fingerprint.
    pub fingerprint: Option<String>,
    /// The audit key of the issuance.
    pub issue_key: Option<String>,
}

impl IssuedFacts {
    /// The facts of a recorded issuance of the agent `uid`.
    pub fn from_issuance(uid: &str, i: &Issuance) -> Self {
        Self {
            uid: Some(uid.to_owned()),
            issued_at: Some(i.issued_at),
            refresh_at: Some(refresh_at(i.issued_at, Duration::from_secs(i.ttl_secs))),
            expires_at: Some(i.expires_at),
            key_id: Some(i.key_id.clone()),
            fingerprint: i.fingerprint.clone(),
            issue_key: Some(i.key.clone()),
        }
    }

    /// The annotations the operator writes on the Secret for these facts (informational: see the module docs).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let time = |t: Option<Timestamp>| t.map(|t| t.to_string());
        [
            (ANNOTATION_UID, self.uid.clone()),
            (ANNOTATION_ISSUED_AT, time(self.issued_at)),
            (ANNOTATION_EXPIRES_AT, time(self.expires_at)),
            (ANNOTATION_REFRESH_AT, time(self.refresh_at)),
            (ANNOTATION_KEY_ID, self.key_id.clone()),
            (ANNOTATION_FINGERPRINT, self.fingerprint.clone()),
            (ANNOTATION_ISSUE_KEY, self.issue_key.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
    }
}

/// What the credentials Secret was found to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Exactly the credentials of this issuance, as the operator recorded and wrote them.
    Issued(IssuedFacts),
    /// Anything else (someone wrote or changed it, or it names no issuance the operator recorded for this
    /// agent), with what differs.
    Foreign(String),
}

/// Why credentials are (re)issued, for events and audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    /// None exist.
    Initial,
    /// 80% of the lifetime passed.
    Rotation,
    /// The request changed (audiences, x509, lifetime).
    SpecChanged,
    /// The signing key left the published set (emergency rotation).
    KeyWithdrawn,
    /// The Secret belongs to another incarnation of the name.
    Rebind,
    /// The Secret does not hold exactly what the operator issued (someone wrote or changed it).
    Tampered,
}

impl IssueReason {
    /// Human wording.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial issuance",
            Self::Rotation => "rotation at 80% of the lifetime",
            Self::SpecChanged => "the requested credentials changed",
            Self::KeyWithdrawn => "the signing key was withdrawn",
            Self::Rebind => "the existing credentials are not bound to this agent",
            Self::Tampered => "the Secret does not hold exactly what the operator issued",
        }
    }

    /// Whether the new issuance ends every earlier one at once, rather than letting them run out: when the
    /// earlier credentials can no longer be vouched for (the Secret was tampered with or belongs to someone
    /// else, or their key was withdrawn). A rotation or a changed request keeps them until they expire, so a
    /// pod still reading the old files is not cut off; a narrower request is enforced by the decision API
    /// at once regardless (see `authz::eval`).
    pub fn supersedes(self) -> bool {
        matches!(self, Self::Rebind | Self::Tampered | Self::KeyWithdrawn)
    }
}

/// What to do with the credentials Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialPlan {
    /// Nothing exists and nothing should.
    Nothing,
    /// Keep the Secret; look again at `recheck_at`.
    Keep {
        /// When the credentials are due for rotation.
        recheck_at: Timestamp,
    },
    /// Issue a fresh set.
    Issue(IssueReason),
    /// Delete the Secret: the agent may not hold credentials.
    Withdraw,
}

/// Decides about the credentials of one agent. `existing` is what its Secret was found to hold (None: no
/// Secret). `published_kids` are the keys currently published; a Secret signed by any other key holds tokens
/// nobody can verify any more.
pub fn plan(
    phase: AgentPhase,
    uid: &str,
    desired: &Desired,
    existing: Option<&Found>,
    published_kids: &[&str],
    now: Timestamp,
) -> CredentialPlan {
    let Some(found) = existing else {
        return if phase == AgentPhase::Active {
            CredentialPlan::Issue(IssueReason::Initial)
        } else {
            CredentialPlan::Nothing
        };
    };
    if phase != AgentPhase::Active {
        return CredentialPlan::Withdraw;
    }
    let facts = match found {
        Found::Issued(facts) => facts,
        Found::Foreign(_) => return CredentialPlan::Issue(IssueReason::Tampered),
    };
    let (Some(refresh_at), Some(_), Some(kid)) =
        (facts.refresh_at, facts.expires_at, facts.key_id.as_deref())
    else {
        return CredentialPlan::Issue(IssueReason::Rebind);
    };
    if facts.uid.as_deref() != Some(uid) {
        return CredentialPlan::Issue(IssueReason::Rebind);
    }
    if !published_kids.contains(&kid) {
        return CredentialPlan::Issue(IssueReason::KeyWithdrawn);
    }
    if facts.fingerprint.as_deref() != Some(desired.fingerprint().as_str()) {
        return CredentialPlan::Issue(IssueReason::SpecChanged);
    }
    if desired.audiences.is_empty() && !desired.x509 {
        // Only the CA bundle: nothing in the Secret expires, so there is nothing to rotate.
        let day = now.checked_add(SignedDuration::from_hours(24)).unwrap_or(now);
        return CredentialPlan::Keep { recheck_at: day };
    }
    if now >= refresh_at {
        return CredentialPlan::Issue(IssueReason::Rotation);
    }
    CredentialPlan::Keep { recheck_at: refresh_at }
}

/// When credentials issued at `issued_at` for `ttl` are replaced.
pub fn refresh_at(issued_at: Timestamp, ttl: Duration) -> Timestamp {
    let secs = (ttl.as_secs_f64() * REFRESH_FRACTION).floor();
    // `secs` is at most 0.8h, so the conversion cannot overflow.
    let delay = SignedDuration::from_secs(secs as i64);
    issued_at.checked_add(delay).unwrap_or(issued_at)
}

/// The Secret key under which the token for `audience` is stored: `token-` and the audience with every
/// character outside `[-._a-zA-Z0-9]` replaced by `_`. Audiences that collide after that replacement (or are
/// too long) get a short digest appended, so every audience keeps its own key.
pub fn token_keys(audiences: &[String]) -> Vec<(String, String)> {
    let slug = |a: &str| -> String {
        a.chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') { c } else { '_' })
            .collect()
    };
    let digest = |a: &str| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, a.as_bytes());
        hex::encode(d.as_ref().get(..4).unwrap_or_default())
    };
    let slugs: Vec<String> = audiences.iter().map(|a| slug(a)).collect();
    audiences
        .iter()
        .zip(&slugs)
        .map(|(a, s)| {
            let clash = slugs.iter().filter(|o| *o == s).count() > 1;
            // Secret keys are at most 253 characters.
            let key = if clash || s.len() > 200 {
                format!("token-{}-{}", s.chars().take(200).collect::<String>(), digest(a))
            } else {
                format!("token-{s}")
            };
            (a.clone(), key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn desired() -> Desired {
        Desired {
            audiences: vec!["https://tickets.example.com".into()],
            x509: false,
            ttl: Duration::from_secs(600),
        }
    }

    fn facts(d: &Desired) -> Found {
        Found::Issued(IssuedFacts {
            uid: Some("u1".into()),
            issued_at: Some(t(0)),
            refresh_at: Some(t(480)),
            expires_at: Some(t(600)),
            key_id: Some("k1".into()),
            fingerprint: Some(d.fingerprint()),
            issue_key: Some("credential.issue:u1:0".into()),
        })
    }

    fn with(f: Found, change: impl FnOnce(&mut IssuedFacts)) -> Found {
        match f {
            Found::Issued(mut facts) => {
                change(&mut facts);
                Found::Issued(facts)
            }
            other => other,
        }
    }

    #[test]
    fn only_active_agents_hold_credentials() {
        let d = desired();
        assert_eq!(
            plan(AgentPhase::Active, "u1", &d, None, &["k1"], t(0)),
            CredentialPlan::Issue(IssueReason::Initial)
        );
        for phase in [AgentPhase::Pending, AgentPhase::Suspended, AgentPhase::Revoked, AgentPhase::Retired] {
            assert_eq!(plan(phase, "u1", &d, None, &["k1"], t(0)), CredentialPlan::Nothing);
            assert_eq!(
                plan(phase, "u1", &d, Some(&facts(&d)), &["k1"], t(0)),
                CredentialPlan::Withdraw,
                "{phase}"
            );
        }
    }

    #[test]
    fn credentials_rotate_at_80_percent() {
        let d = desired();
        let f = facts(&d);
        assert_eq!(
            plan(AgentPhase::Active, "u1", &d, Some(&f), &["k1"], t(479)),
            CredentialPlan::Keep { recheck_at: t(480) }
        );
        assert_eq!(
            plan(AgentPhase::Active, "u1", &d, Some(&f), &["k1"], t(480)),
            CredentialPlan::Issue(IssueReason::Rotation)
        );
        assert_eq!(refresh_at(t(0), Duration::from_secs(600)), t(480));
        assert_eq!(refresh_at(t(0), Duration::from_secs(3600)), t(2880));
    }

    #[test]
    fn a_new_incarnation_a_withdrawn_key_or_a_changed_request_reissues() {
        let d = desired();
        let f = facts(&d);
        assert_eq!(
            plan(AgentPhase::Active, "u2", &d, Some(&f), &["k1"], t(0)),
            CredentialPlan::Issue(IssueReason::Rebind)
        );
        assert_eq!(
            plan(AgentPhase::Active, "u1", &d, Some(&f), &["k2"], t(0)),
            CredentialPlan::Issue(IssueReason::KeyWithdrawn)
        );
        let more = Desired { x509: true, ..desired() };
        assert_eq!(
            plan(AgentPhase::Active, "u1", &more, Some(&f), &["k1"], t(0)),
            CredentialPlan::Issue(IssueReason::SpecChanged)
        );
        let unreadable = with(f, |f| f.refresh_at = None);
        assert_eq!(
            plan(AgentPhase::Active, "u1", &d, Some(&unreadable), &["k1"], t(0)),
            CredentialPlan::Issue(IssueReason::Rebind)
        );
    }

    #[test]
    fn a_secret_the_operator_cannot_vouch_for_is_replaced_and_ends_the_earlier_credentials() {
        let d = desired();
        let foreign = Found::Foreign("an extra key".into());
        assert_eq!(
            plan(AgentPhase::Active, "u1", &d, Some(&foreign), &["k1"], t(0)),
            CredentialPlan::Issue(IssueReason::Tampered)
        );
        assert_eq!(
            plan(AgentPhase::Suspended, "u1", &d, Some(&foreign), &["k1"], t(0)),
            CredentialPlan::Withdraw
        );
        assert!(IssueReason::Tampered.supersedes() && IssueReason::Rebind.supersedes());
        assert!(!IssueReason::Rotation.supersedes() && !IssueReason::SpecChanged.supersedes());
    }

    #[test]
    fn facts_come_from_the_recorded_issuance() {
        let i = Issuance {
            key: "credential.issue:u1:0".into(),
            issued_at: t(0),
            expires_at: t(600),
            ttl_secs: 600,
            key_id: "k1".into(),
            fingerprint: Some("fp".into()),
            tokens: Vec::new(),
            audiences: Vec::new(),
            x509: false,
            x509_serial: None,
            stored: crate::registry::ledger::Stored::Yes,
        };
        let f = IssuedFacts::from_issuance("u1", &i);
        assert_eq!((f.refresh_at, f.expires_at), (Some(t(480)), Some(t(600))));
        assert_eq!(
            f.annotations().get(ANNOTATION_ISSUE_KEY).map(String::as_str),
            Some("credential.issue:u1:0")
        );
        assert_eq!(f.annotations().len(), 7);
    }

    #[test]
    fn a_secret_without_tokens_or_certificates_is_not_rotated_on_time() {
        let d = Desired { audiences: vec![], x509: false, ttl: Duration::from_secs(600) };
        let f = facts(&d);
        assert!(matches!(
            plan(AgentPhase::Active, "u1", &d, Some(&f), &["k1"], t(10_000)),
            CredentialPlan::Keep { .. }
        ));
    }

    #[test]
    fn fingerprints_change_with_every_part_of_the_request() {
        let base = desired().fingerprint();
        assert_ne!(Desired { ttl: Duration::from_secs(300), ..desired() }.fingerprint(), base);
        assert_ne!(Desired { x509: true, ..desired() }.fingerprint(), base);
        assert_ne!(Desired { audiences: vec!["a".into()], ..desired() }.fingerprint(), base);
        assert_eq!(desired().fingerprint(), base);
    }

    #[test]
    fn token_keys_are_valid_secret_keys_and_never_collide() {
        let auds: Vec<String> =
            ["https://a.example.com/x", "https://a.example.com_x", "plain", &"x".repeat(300)]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let keys = token_keys(&auds);
        let names: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(names[2], "token-plain");
        assert!(names[0].starts_with("token-https___a.example.com_x-"), "{}", names[0]);
        assert_ne!(names[0], names[1]);
        for n in &names {
            assert!(
                n.len() <= 253 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                "{n}"
            );
        }
    }
}
