//! The `Revocation` kind: the kill switch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LocalRef;

/// Stops agents: every credential of the targeted agents, delegation chain or selection stops working.
/// Suspend can be undone by deleting the Revocation; Revoke is final for the agents it hits.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentiam.dev",
    version = "v1alpha1",
    kind = "Revocation",
    namespaced,
    status = "RevocationStatus",
    shortname = "rvk",
    category = "agentiam",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Agents","type":"integer","jsonPath":".status.affectedAgents"}"#,
    printcolumn = r#"{"name":"Delegations","type":"integer","jsonPath":".status.affectedDelegations"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Revocation is immutable; delete it and create a new one"))]
#[x_kube(validation = Rule::new("!has(self.expiresAt) || self.mode == 'Suspend'")
    .message("spec.expiresAt lifts a suspension; a Revoke is final and cannot expire"))]
pub struct RevocationSpec {
    /// What to stop: exactly one of agentRef, delegationRef, selector or all.
    pub target: RevocationTarget,
    /// Suspend (reversible) or Revoke (final).
    pub mode: RevocationMode,
    /// Why, in words for the incident record.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.reason must not be blank"))]
    pub reason: String,
    /// When a Suspend lifts by itself (RFC 3339); without it, it holds until the Revocation is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$') && timestamp(self) > timestamp('2000-01-01T00:00:00Z')")
        .message("spec.expiresAt must be an RFC 3339 timestamp such as 2026-12-01T18:00:00Z"))]
    pub expires_at: Option<String>,
    /// Also evict the targeted agents' running pods (the pod webhook already refuses new ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_workloads: Option<bool>,
    /// Also rotate the signing keys at once (the emergency rotation), for verifiers that never ask the
    /// operator. Affects every agent's credentials, so only a Revocation in the operator's own namespace
    /// may ask for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency: Option<bool>,
}

/// What a Revocation stops.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.agentRef), has(self.delegationRef), has(self.selector), has(self.all) && self.all].filter(x, x).size() == 1")
    .message("spec.target needs exactly one of agentRef, delegationRef, selector or all: true"))]
#[x_kube(validation = Rule::new("!has(self.namespaceSelector) || !has(self.delegationRef)")
    .message("spec.target.namespaceSelector applies to agents; a delegationRef names one chain in this namespace"))]
pub struct RevocationTarget {
    /// One agent in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ref: Option<LocalRef>,
    /// A delegation in this namespace and every delegation derived from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_ref: Option<LocalRef>,
    /// Every agent in this namespace whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Every agent in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Only for a Revocation in the operator's own namespace: apply the target in every namespace whose
    /// labels match (`{}` matches every namespace), for a cluster-wide emergency stop. Anywhere else a
    /// Revocation reaches only its own namespace, and admission refuses this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// How hard a Revocation stops its targets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RevocationMode {
    /// Withdraw credentials; deleting the Revocation lets the agents resume.
    Suspend,
    /// Withdraw credentials for good: the agents move to phase Revoked.
    Revoke,
}

/// The phase of a revocation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RevocationPhase {
    /// Not yet applied.
    Pending,
    /// Applied to every target.
    Enforced,
    /// A Suspend whose expiresAt has passed: it no longer holds.
    Expired,
    /// Could not be applied (see conditions).
    Failed,
}

/// What the operator did about a revocation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationStatus {
    /// Pending, Enforced or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RevocationPhase>,
    /// How many agents it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::common::int32)]
    pub affected_agents: Option<u32>,
    /// How many delegations it ended (targeted, descendants, or granted to a stopped agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::common::int32)]
    pub affected_delegations: Option<u32>,
    /// How many credentials Secrets and delegated tokens of its targets the operator saw present and then
    /// withdrawn while enforcing it (seen by the Revocation controller; one withdrawn while it was down
    /// is not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::common::int32)]
    pub credentials_withdrawn: Option<u32>,
    /// How many pods were evicted (stopWorkloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::common::int32)]
    pub pods_evicted: Option<u32>,
    /// When the operator first saw it (RFC 3339, milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
    /// When the decision API, token endpoint and introspection first refused its targets (RFC 3339,
    /// milliseconds): the in-memory deny state, the first effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_api_enforced_at: Option<String>,
    /// decisionApiEnforcedAt minus observedAt, in milliseconds. creationTimestamp has one-second
    /// resolution, so the interval starts when the operator's watch delivered the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_api_latency_ms: Option<u64>,
    /// When every effect was complete: phases recorded, Secrets gone, pods evicted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_at: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and other conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
