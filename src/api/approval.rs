//! The `ApprovalRequest` kind: one action an agent asked to take that a policy rule says a human must
//! approve first, and that human's answer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Grantor, Grantors, LocalRef};

/// A request for a human's approval of exactly one action: the agent, the action, the resource, the tool
/// and the whole request context it was asked with. Only the operator creates them (when a decision is
/// RequireApproval); a human answers by setting `spec.decision` (`kubectl agentiam approve|deny`), and the
/// operator's webhook records who did, checks that they may, and refuses anyone else. An approval covers
/// that exact request, is used up when the decision API allows it, and ends unused after a short while.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentiam.dev",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    namespaced,
    status = "ApprovalRequestStatus",
    shortname = "apr",
    category = "agentiam",
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".spec.request.agentRef.name"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.request.action"}"#,
    printcolumn = r#"{"name":"Resource","type":"string","jsonPath":".spec.request.resource"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"By","type":"string","jsonPath":".status.decidedBy.username"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".spec.request.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.request == oldSelf.request")
    .message("spec.request is what the agent asked for and never changes"))]
#[x_kube(validation = Rule::new("!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)")
    .message("spec.decision is final once given"))]
pub struct ApprovalRequestSpec {
    /// What the agent asked to do, written by the operator. Immutable.
    pub request: RequestedAction,
    /// The human's answer (`kubectl agentiam approve|deny`). Final once set; the operator's webhook records
    /// who set it and refuses anyone who may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ApprovalDecision>,
}

/// The action an approval is bound to, and who may approve it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedAction {
    /// The agent that asked.
    pub agent_ref: LocalRef,
    /// That Agent's UID: an agent deleted and registered again is another agent.
    #[schemars(length(max = 64))]
    pub agent_uid: String,
    /// The verb.
    #[schemars(length(min = 1, max = 63))]
    pub action: String,
    /// The resource, in canonical form.
    #[schemars(length(min = 1, max = 2048))]
    pub resource: String,
    /// The MCP tool, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub tool: Option<String>,
    /// The request context as the agent sent it (amount, order, ...): an approval covers these values only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "context_schema")]
    pub context: Option<Map<String, Value>>,
    /// The audience of the token the agent asked with.
    #[schemars(length(max = 253))]
    pub audience: String,
    /// For a request made with a delegated token: the human the agent acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub on_behalf_of: Option<String>,
    /// For a request made with a delegated token: the UID of the Delegation it carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub delegation_uid: Option<String>,
    /// The AgentPolicy whose rule asked for approval.
    #[schemars(length(max = 253))]
    pub policy: String,
    /// The rule.
    #[schemars(length(max = 63))]
    pub rule: String,
    /// Who may approve: any listed user, or any member of a listed group.
    pub approvers: Grantors,
    /// The approver may be neither the human the agent acts for nor the agent's owner.
    #[serde(default)]
    pub four_eyes: bool,
    /// When the request ends unanswered, as Denied (RFC 3339).
    #[schemars(length(max = 64))]
    pub expires_at: String,
    /// How long an approval may be used once given ("5m").
    #[schemars(length(max = 32))]
    pub valid_for: String,
    /// How many allowed decisions one approval covers (1: single use).
    #[schemars(range(min = 1, max = 100), transform = super::common::int32)]
    pub uses: u32,
    /// SHA-256 of the canonical request (agent UID, delegation UID, audience, action, resource, tool,
    /// context, policy, rule): what the decision API matches a later request against.
    #[schemars(length(max = 64))]
    pub binding: String,
}

fn context_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "The request context as the agent sent it (amount, order, ...): an approval covers these values only."
    })
}

/// A human's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecision {
    /// Approve or Deny.
    pub verdict: ApprovalVerdict,
    /// Why, in words the audit trail keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Approve or Deny.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ApprovalVerdict {
    /// The action may go ahead (once, by default).
    Approve,
    /// The action must not happen.
    Deny,
}

/// The phase of an approval request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ApprovalPhase {
    /// Waiting for a human.
    Pending,
    /// Approved, and not used up yet.
    Approved,
    /// A human refused it, its approver was refused on re-check, or it expired unanswered.
    Denied,
    /// Approved and used as many times as it covers.
    Used,
    /// Approved but not used before its approval ran out.
    Expired,
    /// Not made by the operator (or its agent is gone): it approves nothing.
    Invalid,
}

impl ApprovalPhase {
    /// The phase's name, as in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Approved => "Approved",
            Self::Denied => "Denied",
            Self::Used => "Used",
            Self::Expired => "Expired",
            Self::Invalid => "Invalid",
        }
    }
}

/// What the operator recorded about an approval request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    /// Pending, Approved, Denied, Used, Expired or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalPhase>,
    /// Who answered, as the API server authenticated them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<Grantor>,
    /// When the answer was recorded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Why it is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Until when an approval may be used (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_until: Option<String>,
    /// How many more allowed decisions the approval covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::common::int32)]
    pub uses_left: Option<u32>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and other conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
