//! Delegated (on-behalf-of) tokens: what an Active Delegation yields to its grantee. Pure.
//!
//! A delegated token says "this agent acts for this human, within these scopes": `sub` is the human at
//! the root of the chain, `act` the agents in between (RFC 8693 §4.1: the outermost `act` is the agent
//! acting now, each nested one the agent that delegated to it), `client_id` the acting agent's SPIFFE ID,
//! `scope` the leaf Delegation's scopes. Its header's `typ` is [`DELEGATED_TYP`], and its `sub` is not a
//! SPIFFE ID, so neither this verifier nor any JWT-SVID verifier takes it for an identity token, and the
//! identity verifier refuses it by `typ`.
//!
//! | claim | type | meaning |
//! |---|---|---|
//! | `sub` | string | the human who granted the root Delegation (username as the API server authenticated it) |
//! | `act` | object | `{"sub": <acting agent>, "act": {"sub": <agent that delegated to it>, ...}}` |
//! | `client_id` | string | the acting agent's SPIFFE ID (equal to `act.sub`) |
//! | `scope` | string | the leaf Delegation's scopes, space-separated, each `<action>@<resource pattern>` |
//! | `aud` | string | exactly one audience |
//! | `agentiam.dev/uid` | string | the acting Agent's `metadata.uid` |
//! | `agentiam.dev/delegation` | string | the leaf Delegation's name (in the agent's namespace) |
//! | `agentiam.dev/delegation_uid` | string | the leaf Delegation's `metadata.uid` |
//! | `agentiam.dev/chain` | array of strings | the UIDs of every Delegation of the chain, root first, leaf last |
//! | `may_act` | object, optional | `{"sub": <agent>, "agentiam.dev/uid": <its UID>}`: the one agent that may take the rights over by token exchange (RFC 8693 §4.4), from the leaf's `spec.mayAct` |
//!
//! The verifier ([`crate::identity::verify::JwtVerifier::verify_delegated`]) checks the shape; whether
//! the chain is still in force is for the caller, against the operator's ledger, at every use.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::jwt::{MintError, TokenClaims, check_lifetime, new_jti, token_times};
pub use super::keys::DELEGATED_TYP;
use super::keys::JwtType;
use super::spiffe::SpiffeId;

/// Claim name of the leaf Delegation's name.
pub const CLAIM_DELEGATION: &str = "agentiam.dev/delegation";
/// Claim name of the leaf Delegation's UID.
pub const CLAIM_DELEGATION_UID: &str = "agentiam.dev/delegation_uid";
/// Claim name of the chain's Delegation UIDs, root first.
pub const CLAIM_CHAIN: &str = "agentiam.dev/chain";
/// The most links a token's chain may have: a root and at most ten sub-delegations (`maxDepth` <= 10).
pub const MAX_CHAIN: usize = 11;

/// An `act` claim: the acting party, and the one it acts for in turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The agent that delegated to this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The nested claim for `agents`, the acting agent first.
    pub fn nest(agents: &[SpiffeId]) -> Option<Self> {
        let (first, rest) = agents.split_first()?;
        Some(Self { sub: first.to_string(), act: Self::nest(rest).map(Box::new) })
    }

    /// The agents, acting one first.
    pub fn agents(&self) -> Vec<&str> {
        let mut out = vec![self.sub.as_str()];
        let mut next = self.act.as_deref();
        while let Some(a) = next {
            out.push(a.sub.as_str());
            next = a.act.as_deref();
        }
        out
    }
}

/// A `may_act` claim (RFC 8693 §4.4): the agent that may become the actor, bound to its UID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayAct {
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The Agent's `metadata.uid`.
    #[serde(rename = "agentiam.dev/uid")]
    pub uid: String,
}

/// The claims of a delegated token. Times are NumericDate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedClaims {
    /// The issuer URL (the same issuer as identity tokens).
    pub iss: String,
    /// The human at the root of the chain.
    pub sub: String,
    /// The one audience.
    pub aud: String,
    /// Issued at.
    pub iat: i64,
    /// Not before (equal to `iat`).
    pub nbf: i64,
    /// Expiry: never after the chain's end, and at most [`MAX_TTL`](super::jwt::MAX_TTL) after `iat`.
    pub exp: i64,
    /// A unique token ID.
    pub jti: String,
    /// The agents, acting one outermost.
    pub act: Actor,
    /// The acting agent's SPIFFE ID.
    pub client_id: String,
    /// The leaf Delegation's scopes, space-separated.
    pub scope: String,
    /// The acting Agent's `metadata.uid`.
    #[serde(rename = "agentiam.dev/uid")]
    pub agent_uid: String,
    /// The leaf Delegation's name.
    #[serde(rename = "agentiam.dev/delegation")]
    pub delegation: String,
    /// The leaf Delegation's UID.
    #[serde(rename = "agentiam.dev/delegation_uid")]
    pub delegation_uid: String,
    /// Every Delegation UID of the chain, root first.
    #[serde(rename = "agentiam.dev/chain")]
    pub chain: Vec<String>,
    /// The agent that may take the rights over by token exchange, if the leaf names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<MayAct>,
}

/// What a delegated token is minted from.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The issuer URL.
    pub issuer: &'a str,
    /// The human at the root.
    pub grantor: &'a str,
    /// The audience.
    pub audience: &'a str,
    /// The agents of the chain, root grantee first, acting agent (the leaf's grantee) last.
    pub agents: &'a [SpiffeId],
    /// The acting Agent's UID.
    pub agent_uid: &'a str,
    /// The leaf Delegation's name.
    pub delegation: &'a str,
    /// The Delegation UIDs of the chain, root first.
    pub chain: &'a [String],
    /// The leaf's scopes.
    pub scopes: &'a [String],
    /// The agent the leaf's `spec.mayAct` names, with its UID.
    pub may_act: Option<(&'a SpiffeId, &'a str)>,
}

impl DelegatedClaims {
    /// Claims for `grant`, valid from `now` for `ttl` (whole seconds), with a fresh `jti`.
    pub fn new(grant: Grant<'_>, now: Timestamp, ttl: Duration) -> Result<Self, MintError> {
        let (iat, exp) = token_times(now, ttl);
        let acting_first: Vec<SpiffeId> = grant.agents.iter().rev().cloned().collect();
        let act = Actor::nest(&acting_first).ok_or(MintError::InvalidClaims("a chain has no agent"))?;
        Ok(Self {
            iss: grant.issuer.to_owned(),
            sub: grant.grantor.to_owned(),
            aud: grant.audience.to_owned(),
            iat,
            nbf: iat,
            exp,
            jti: new_jti()?,
            client_id: act.sub.clone(),
            act,
            scope: grant.scopes.join(" "),
            agent_uid: grant.agent_uid.to_owned(),
            delegation: grant.delegation.to_owned(),
            delegation_uid: grant.chain.last().cloned().unwrap_or_default(),
            chain: grant.chain.to_vec(),
            may_act: grant.may_act.map(|(id, uid)| MayAct { sub: id.to_string(), uid: uid.to_owned() }),
        })
    }
}

impl TokenClaims for DelegatedClaims {
    const TYPE: JwtType = JwtType::Delegated;

    fn validate(&self) -> Result<(), MintError> {
        let fail = |why| Err(MintError::InvalidClaims(why));
        if self.sub.is_empty() || self.sub.starts_with("spiffe://") {
            return fail("sub must be the human grantor, not empty and not a SPIFFE ID");
        }
        if self.aud.is_empty() || self.iss.is_empty() || self.jti.is_empty() || self.scope.is_empty() {
            return fail("aud, iss, jti and scope must be non-empty");
        }
        check_lifetime(self.iat, self.nbf, self.exp)?;
        let agents = self.act.agents();
        if agents.len() != self.chain.len() || self.chain.len() > MAX_CHAIN {
            return fail("act must name one agent per Delegation of the chain");
        }
        if agents.iter().any(|a| !a.starts_with("spiffe://")) || self.client_id != self.act.sub {
            return fail("act must name SPIFFE IDs, the outermost equal to client_id");
        }
        if self.chain.last() != Some(&self.delegation_uid) || self.chain.iter().any(String::is_empty) {
            return fail("the chain must end at the delegation");
        }
        if self.agent_uid.is_empty() || self.delegation.is_empty() {
            return fail("the agent UID and the delegation must be named");
        }
        if let Some(m) = &self.may_act
            && (!m.sub.starts_with("spiffe://") || m.uid.is_empty() || m.sub == self.client_id)
        {
            return fail("may_act must name another agent by SPIFFE ID and UID");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwt::mint;
    use crate::identity::keys::SigningKey;
    use crate::identity::verify::decode_unverified;

    fn agent(name: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/agent/{name}")).unwrap()
    }

    fn claims() -> DelegatedClaims {
        let agents = [agent("planner"), agent("booker")];
        let chain = ["root-uid".to_owned(), "child-uid".to_owned()];
        let scopes = ["read@crm:contacts/*".to_owned()];
        let grant = Grant {
            issuer: "https://issuer",
            grantor: "alice@example.com",
            audience: "crm",
            agents: &agents,
            agent_uid: "booker-uid",
            delegation: "child",
            chain: &chain,
            scopes: &scopes,
            may_act: None,
        };
        DelegatedClaims::new(grant, Timestamp::now(), Duration::from_secs(600)).unwrap()
    }

    #[test]
    fn act_nests_the_acting_agent_outermost_and_the_header_has_its_own_typ() {
        let c = claims();
        assert_eq!(c.client_id, agent("booker").to_string());
        assert_eq!(
            c.act.agents(),
            vec![c.client_id.as_str(), "spiffe://cluster.local/ns/default/agent/planner"]
        );
        assert_eq!(c.delegation_uid, "child-uid");
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let token = mint(&key, &c).unwrap();
        let (header, payload) = decode_unverified(&token).unwrap();
        assert_eq!(header["typ"], DELEGATED_TYP);
        assert_eq!(payload["act"]["act"]["sub"], "spiffe://cluster.local/ns/default/agent/planner");
        assert!(payload["act"]["act"].get("act").is_none());
        assert_eq!(payload[CLAIM_CHAIN], serde_json::json!(["root-uid", "child-uid"]));
    }

    #[test]
    fn malformed_claims_are_not_signed() {
        let key = SigningKey::generate(Timestamp::now()).unwrap();
        let cases: [fn(&mut DelegatedClaims); 12] = [
            |c| c.sub = "spiffe://cluster.local/ns/default/agent/x".to_owned(),
            |c| c.sub.clear(),
            |c| c.scope.clear(),
            |c| c.exp = c.iat + 3601,
            |c| c.exp = c.iat,
            |c| {
                c.chain.pop();
            },
            |c| c.client_id = "spiffe://cluster.local/ns/default/agent/other".to_owned(),
            |c| c.delegation_uid = "other".to_owned(),
            |c| c.act.sub = "alice".to_owned(),
            |c| c.may_act = Some(MayAct { sub: "alice".into(), uid: "u".into() }),
            |c| c.may_act = Some(MayAct { sub: c.client_id.clone(), uid: "u".into() }),
            |c| {
                c.may_act =
                    Some(MayAct { sub: "spiffe://cluster.local/ns/default/agent/b".into(), uid: "".into() })
            },
        ];
        for (i, break_it) in cases.into_iter().enumerate() {
            let mut c = claims();
            break_it(&mut c);
            assert!(matches!(mint(&key, &c), Err(MintError::InvalidClaims(_))), "case {i}");
        }
    }
}
