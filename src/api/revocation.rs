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
    printcolumn = r#"{"name":"Affected","type":"integer","jsonPath":".status.affectedAgents"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Revocation is immutable; delete it and create a new one"))]
pub struct RevocationSpec {
    /// What to stop: exactly one of agentRef, delegationRef, selector or all.
    pub target: RevocationTarget,
    /// Suspend (reversible) or Revoke (final).
    pub mode: RevocationMode,
    /// Why, in words for the incident record.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.reason must not be blank"))]
    pub reason: String,
}

/// What a Revocation stops.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.agentRef), has(self.delegationRef), has(self.selector), has(self.all) && self.all].filter(x, x).size() == 1")
    .message("spec.target needs exactly one of agentRef, delegationRef, selector or all: true"))]
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
    /// When enforcement completed (RFC 3339).
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
