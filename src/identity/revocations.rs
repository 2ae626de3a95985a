//! The revocation list: what the operator's feed (`GET /v1/revocations`) publishes, and the check a
//! verifier that never calls the decision API applies with it. Pure.
//!
//! The list names what a token must not carry: the UID of an agent the operator no longer vouches for
//! (stopped by a Revocation, in any phase but Active, or archived less than a token lifetime ago), the UID
//! of a Delegation not in force (or deleted), the `jti` of an access token revoked one by one (RFC 7009),
//! or the key ID of a signing key an emergency rotation withdrew. A token that verifies and names none of
//! them is as good as the operator's own checks by signature, lifetime and audience; only the operator's
//! ledger knows more (which exact tokens it minted), and the decision API and introspection ask it.
//!
//! [`crate::identity::follower::Follower`] keeps a list current from the feed.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::verify::{VerifiedAccess, VerifiedDelegated, VerifiedSvid};

/// The claim that carries an agent's UID in its identity tokens.
const UID_CLAIM: &str = "agentiam.dev/uid";

/// One revision of the feed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevocationList {
    /// Grows with every change of content (milliseconds since the epoch of the change, or one more than
    /// the previous revision), across operator restarts.
    pub revision: u64,
    /// The issuer the list is about (its tokens' `iss`).
    pub issuer: String,
    /// Agent UIDs: every token of these agents is refused.
    pub agents: BTreeSet<String>,
    /// Delegation UIDs: every delegated token whose chain holds one is refused.
    pub delegations: BTreeSet<String>,
    /// Token IDs (`jti`) revoked one by one.
    pub tokens: BTreeSet<String>,
    /// Key IDs (`kid`) withdrawn: every token they signed is refused.
    pub keys: BTreeSet<String>,
}

/// Why a token is refused by the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    /// Its agent is on the list.
    #[error("the agent {0} is revoked, suspended or gone")]
    Agent(String),
    /// A Delegation of its chain is on the list.
    #[error("the delegation {0} is not in force")]
    Delegation(String),
    /// The token itself is on the list.
    #[error("the token {0} was revoked")]
    Token(String),
    /// Its signing key is on the list.
    #[error("its signing key {0} was withdrawn")]
    Key(String),
    /// It is another issuer's token than the list is about.
    #[error("the list is about issuer {list:?}, the token is from {token:?}")]
    OtherIssuer {
        /// The list's issuer.
        list: String,
        /// The token's.
        token: String,
    },
}

impl RevocationList {
    /// Whether `other` says the same (everything but the revision).
    pub fn same_content(&self, other: &Self) -> bool {
        (&self.issuer, &self.agents, &self.delegations, &self.tokens, &self.keys)
            == (&other.issuer, &other.agents, &other.delegations, &other.tokens, &other.keys)
    }

    fn issuer(&self, issuer: &str) -> Result<(), Revoked> {
        if issuer == self.issuer {
            Ok(())
        } else {
            Err(Revoked::OtherIssuer { list: self.issuer.clone(), token: issuer.to_owned() })
        }
    }

    /// The token's own entries, checked after its agent's and chain's (which say more about why).
    fn common(&self, jti: &str, kid: &str) -> Result<(), Revoked> {
        if self.keys.contains(kid) {
            return Err(Revoked::Key(kid.to_owned()));
        }
        if self.tokens.contains(jti) {
            return Err(Revoked::Token(jti.to_owned()));
        }
        Ok(())
    }

    fn agent(&self, uid: &str) -> Result<(), Revoked> {
        if self.agents.contains(uid) { Err(Revoked::Agent(uid.to_owned())) } else { Ok(()) }
    }

    /// The check for an identity token (JWT-SVID) that verified. One without the agent UID claim is
    /// refused as if its agent were listed: the list cannot vouch for what it cannot identify.
    pub fn check_svid(&self, v: &VerifiedSvid) -> Result<(), Revoked> {
        self.issuer(&v.issuer)?;
        match v.extra.get(UID_CLAIM).and_then(serde_json::Value::as_str) {
            Some(uid) => self.agent(uid)?,
            None => return Err(Revoked::Agent(format!("(no {UID_CLAIM} claim in {})", v.spiffe_id))),
        }
        self.common(&v.jti, &v.kid)
    }

    /// The check for an access token that verified (`issuer` is the verifier's: access tokens name
    /// only the one they were verified against).
    pub fn check_access(&self, issuer: &str, v: &VerifiedAccess) -> Result<(), Revoked> {
        self.issuer(issuer)?;
        self.agent(&v.agent_uid)?;
        self.common(&v.jti, &v.kid)
    }

    /// The check for a delegated token that verified: its acting agent and every Delegation of its chain.
    pub fn check_delegated(&self, v: &VerifiedDelegated) -> Result<(), Revoked> {
        self.issuer(&v.issuer)?;
        self.agent(&v.agent_uid)?;
        for uid in v.chain.iter().chain(std::iter::once(&v.delegation_uid)) {
            if self.delegations.contains(uid) {
                return Err(Revoked::Delegation(uid.clone()));
            }
        }
        self.common(&v.jti, &v.kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;
    use jiff::Timestamp;

    fn list() -> RevocationList {
        RevocationList {
            revision: 7,
            issuer: "https://op".into(),
            agents: ["a-bad".to_owned()].into(),
            delegations: ["d-bad".to_owned()].into(),
            tokens: ["j-bad".to_owned()].into(),
            keys: ["k-bad".to_owned()].into(),
        }
    }

    fn svid(uid: Option<&str>, jti: &str, kid: &str) -> VerifiedSvid {
        let mut extra = serde_json::Map::new();
        if let Some(u) = uid {
            extra.insert(UID_CLAIM.into(), u.into());
        }
        VerifiedSvid {
            spiffe_id: SpiffeId::parse("spiffe://td/ns/n/agent/bot").unwrap(),
            audience: "crm".into(),
            issuer: "https://op".into(),
            issued_at: None,
            expires_at: Timestamp::UNIX_EPOCH,
            not_before: None,
            jti: jti.into(),
            kid: kid.into(),
            extra,
        }
    }

    #[test]
    fn an_identity_token_is_refused_for_its_agent_its_jti_its_key_or_no_uid() {
        let l = list();
        assert_eq!(l.check_svid(&svid(Some("a-ok"), "j", "k")), Ok(()));
        assert_eq!(
            l.check_svid(&svid(Some("a-bad"), "j-bad", "k")),
            Err(Revoked::Agent("a-bad".into())),
            "the agent first"
        );
        assert_eq!(l.check_svid(&svid(Some("a-bad"), "j", "k")), Err(Revoked::Agent("a-bad".into())));
        assert_eq!(l.check_svid(&svid(Some("a-ok"), "j-bad", "k")), Err(Revoked::Token("j-bad".into())));
        assert_eq!(l.check_svid(&svid(Some("a-ok"), "j", "k-bad")), Err(Revoked::Key("k-bad".into())));
        assert!(matches!(l.check_svid(&svid(None, "j", "k")), Err(Revoked::Agent(_))));
        let mut other = svid(Some("a-ok"), "j", "k");
        other.issuer = "https://elsewhere".into();
        assert!(matches!(l.check_svid(&other), Err(Revoked::OtherIssuer { .. })));
    }

    #[test]
    fn a_delegated_token_is_refused_for_any_link_of_its_chain() {
        let l = list();
        let mut d = VerifiedDelegated {
            grantor: "alice".into(),
            agents: vec![],
            scopes: vec![],
            audience: "crm".into(),
            issuer: "https://op".into(),
            issued_at: None,
            expires_at: Timestamp::UNIX_EPOCH,
            jti: "j".into(),
            kid: "k".into(),
            agent_uid: "a-ok".into(),
            delegation: "leaf".into(),
            delegation_uid: "d-leaf".into(),
            chain: vec!["d-root".into(), "d-leaf".into()],
            may_act: None,
        };
        assert_eq!(l.check_delegated(&d), Ok(()));
        d.chain[0] = "d-bad".into();
        assert_eq!(l.check_delegated(&d), Err(Revoked::Delegation("d-bad".into())));
        d.chain[0] = "d-root".into();
        d.agent_uid = "a-bad".into();
        assert_eq!(l.check_delegated(&d), Err(Revoked::Agent("a-bad".into())));
    }

    #[test]
    fn the_wire_format_is_camel_case_and_strict() {
        let json = serde_json::to_value(list()).unwrap();
        assert_eq!(json["revision"], 7);
        assert_eq!(json["agents"], serde_json::json!(["a-bad"]));
        let mut bad = json.clone();
        bad["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<RevocationList>(bad).is_err());
        let back: RevocationList = serde_json::from_value(json).unwrap();
        assert!(back.same_content(&list()));
        assert!(!back.same_content(&RevocationList { agents: BTreeSet::new(), ..list() }));
    }
}
