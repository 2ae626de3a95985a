//! The `Delegation` kind: a human grants an agent scoped, time-bound on-behalf-of rights.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LocalRef;

/// A grant of on-behalf-of rights to an agent. A root Delegation is created by a human (the admission webhook
/// records who); an agent may pass on a subset of its rights with a child Delegation naming its parent, so
/// every chain ends at an explicit human decision.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentiam.dev",
    version = "v1alpha1",
    kind = "Delegation",
    namespaced,
    status = "DelegationStatus",
    shortname = "dlg",
    category = "agentiam",
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".spec.agentRef.name"}"#,
    printcolumn = r#"{"name":"Parent","type":"string","jsonPath":".spec.parentRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ttl) != has(self.expiresAt)")
    .message("a Delegation needs exactly one of spec.ttl and spec.expiresAt"))]
#[x_kube(validation = Rule::new("!has(self.mayAct) || self.mayAct.name != self.agentRef.name")
    .message("spec.mayAct must name another agent than spec.agentRef"))]
#[x_kube(validation = Rule::new("self == oldSelf")
    .message("a Delegation is immutable once granted; revoke it and create a new one"))]
pub struct DelegationSpec {
    /// The grantee: the agent (in this namespace) that may act on the grantor's behalf.
    pub agent_ref: LocalRef,
    /// The Delegation this one re-delegates from. Absent for a root grant made by a human. A child's scopes
    /// must be a subset of its parent's and it cannot outlive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<LocalRef>,
    /// What the grantee may do on the grantor's behalf, each `<action>@<resource pattern>` with the
    /// AgentPolicy grammar: "read@crm:contacts/*", "refund@pay:orders/**", "*@tickets:queue/eu". A child's
    /// scopes must each be covered by one of its parent's (by what they match, never by their text).
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 3, max = 253), regex(pattern = r"^(\*|[a-zA-Z0-9][a-zA-Z0-9._:-]*)@\S+$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub scopes: Vec<String>,
    /// The task the rights are granted for, in words the grantor will recognise in an audit trail.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.task must not be blank"))]
    pub task: String,
    /// How long the grant lasts from creation, as a duration ("30m", "8h"); at most 30 days (720h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('1m') && duration(self) <= duration('720h')")
        .message("spec.ttl must be a duration such as \"8h\" between 1m and 720h"))]
    pub ttl: Option<String>,
    /// Absolute expiry (RFC 3339), as an alternative to ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$') && timestamp(self) > timestamp('2000-01-01T00:00:00Z')")
        .message("spec.expiresAt must be an RFC 3339 timestamp such as 2026-12-01T18:00:00Z"))]
    pub expires_at: Option<String>,
    /// The one audience (the service) its delegated tokens are for. When absent: the system all its scopes
    /// name (`crm` for `read@crm:contacts/*`), and for a child its parent's. A child's audience is its
    /// parent's: a delegation never moves to another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub audience: Option<String>,
    /// How many further levels of sub-delegation may follow this one (default 3 for a root). A child may
    /// lower it, never raise it: its bound is the smaller of its own and its parent's minus one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub max_depth: Option<u8>,
    /// Another agent of this namespace that may take this Delegation's rights over by token exchange
    /// (RFC 8693 `may_act`): it may exchange the grantee's delegated token itself, and it is the only agent
    /// the grantee may hand them to. Bound to that Agent's UID when the token is minted; no token is
    /// minted while it does not exist. Absent: only the grantee exchanges its tokens, for any agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<LocalRef>,
}

/// Sub-delegation levels a root allows when it does not say.
pub const DEFAULT_MAX_DEPTH: u8 = 3;

/// The phase of a delegation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DelegationPhase {
    /// Not yet validated.
    Pending,
    /// In force.
    Active,
    /// Past its expiry.
    Expired,
    /// Withdrawn by a Revocation or by its grantor.
    Revoked,
    /// Rejected: broader than its parent, a broken chain, or an unknown agent.
    Invalid,
    /// Waiting for a human's approval (approval requests).
    PendingApproval,
    /// A human refused it, or its approval request expired.
    Denied,
}

impl DelegationPhase {
    /// The phase's name, as in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Active => "Active",
            Self::Expired => "Expired",
            Self::Revoked => "Revoked",
            Self::Invalid => "Invalid",
            Self::PendingApproval => "PendingApproval",
            Self::Denied => "Denied",
        }
    }
}

/// Who granted a root delegation, as the API server authenticated them when it was created. Recorded by
/// the operator's admission webhook in its audit log; this is a copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grantor {
    /// The username.
    pub username: String,
    /// The user's UID, when the authenticator gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// One link of a delegation chain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainLink {
    /// "User" for the human at the root, "Agent" for each agent after.
    pub kind: String,
    /// The username, or the agent's name.
    pub name: String,
    /// The user's UID (when known) or the agent's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The Delegation that made this agent a link (agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<String>,
    /// That Delegation's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_uid: Option<String>,
}

/// What the operator observed about a delegation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DelegationStatus {
    /// Pending, Active, Expired, Revoked, Invalid, PendingApproval or Denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DelegationPhase>,
    /// The human at the root of the chain, as authenticated by the API server when the root was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantor: Option<Grantor>,
    /// The chain, human first, then each agent with the Delegation that made it a link; the last is this
    /// Delegation's grantee.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainLink>,
    /// How many sub-delegation levels may still follow this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_depth: Option<u8>,
    /// The audience its delegated tokens are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The Secret (in this namespace) that holds the grantee's delegated token for this Delegation, under
    /// the key named by `tokenKey`, while the Delegation is Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// The key of `tokenSecretName` that holds the token (the Delegation's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
    /// When the current token expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<String>,
    /// When the grant ends (RFC 3339), taking the parent's expiry into account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and other conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
