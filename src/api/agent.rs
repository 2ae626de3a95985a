//! The `Agent` kind: a registered identity for one autonomous AI agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LocalRef;
use super::common::PrincipalKind;

/// An autonomous AI agent registered with agentiam: who owns it, what it is for, where it came from, which
/// pods are it, and which policies govern it. The operator assigns it a SPIFFE ID and a trust score and drives
/// its lifecycle.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentiam.dev",
    version = "v1alpha1",
    kind = "Agent",
    namespaced,
    status = "AgentStatus",
    shortname = "ag",
    category = "agentiam",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner.name"}"#,
    printcolumn = r#"{"name":"Trust","type":"integer","jsonPath":".status.trustScore"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"SPIFFE ID","type":"string","priority":1,"jsonPath":".status.spiffeID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63")
        .message("metadata.name must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters) so that it forms a valid SPIFFE ID path segment"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.lifecycle) || oldSelf.lifecycle.desiredState != 'Retired' || (has(self.lifecycle) && self.lifecycle.desiredState == 'Retired')")
    .message("spec.lifecycle.desiredState: a Retired agent cannot be reactivated; create a new Agent instead")
    .reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(oldSelf.owner) || has(self.owner)")
    .message("spec.owner: an owner, once named, cannot be removed; retire the agent instead")
    .reason(Reason::FieldValueForbidden))]
pub struct AgentSpec {
    /// The accountable human principal: who answers for what this agent does. Required for every agent a
    /// person registers; only a shadow agent that discovery recorded has none (phase `Discovered`, no
    /// credentials) until its owner adopts it by naming one here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,

    /// What the agent is for, in one or two sentences a reviewer can check its behaviour against.
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.purpose must not be blank"))]
    #[schemars(length(min = 1, max = 1024))]
    pub purpose: String,

    /// Where the agent came from: who built it, on which model, from which image and source. Complete,
    /// pinned provenance raises the trust score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,

    /// The environment the agent acts in. Production agents start from a lower trust baseline than sandbox
    /// agents, because the same behaviour costs more there.
    #[serde(default)]
    pub environment: Environment,

    /// Which pods are this agent: a service account, a pod label selector, or both (a pod must then match
    /// both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,

    /// AgentPolicies (in this namespace) that govern this agent, in addition to policies that select it by
    /// label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub policy_refs: Vec<LocalRef>,

    /// Which credentials the agent receives while Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,

    /// The lifecycle the owner asks for. The operator decides the actual phase (see status.phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleSpec>,
}

impl AgentSpec {
    /// A spec with only the required fields set; everything else takes its default.
    pub fn new(owner: Owner, purpose: impl Into<String>) -> Self {
        Self { owner: Some(owner), ..Self::new_discovered(purpose) }
    }

    /// The owner as audit records and tokens name it, `<kind>:<name>`; `unknown` for a shadow agent.
    pub fn owner_line(&self) -> String {
        self.owner.as_ref().map_or_else(|| "unknown".to_owned(), |o| format!("{}:{}", o.kind, o.name))
    }

    /// The spec of a shadow agent that discovery records: no owner yet.
    pub fn new_discovered(purpose: impl Into<String>) -> Self {
        Self {
            owner: None,
            purpose: purpose.into(),
            provenance: None,
            environment: Environment::default(),
            workload: None,
            policy_refs: Vec::new(),
            credentials: None,
            lifecycle: None,
        }
    }
}

/// The accountable principal of an agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// User, Group or Team.
    pub kind: PrincipalKind,
    /// The principal's name as the identity provider knows it.
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.owner.name must not be blank"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where an agent came from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// Who built and ships the agent (team or vendor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub builder: Option<String>,
    /// The model the agent runs on, e.g. "claude-sonnet-4-5" or "llama-3.1-70b-instruct".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub model: Option<String>,
    /// Who serves the model, e.g. "anthropic", "openai", "self-hosted".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub model_provider: Option<String>,
    /// The agent's own release version, e.g. "1.4.2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub version: Option<String>,
    /// The container image the agent runs. An image pinned by digest (`@sha256:...`) raises the trust
    /// score; a mutable tag does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Where the agent's source lives, as an https:// URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub source_repository: Option<String>,
}

/// The environment an agent acts in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Environment {
    /// Acts on production systems and data.
    #[default]
    Production,
    /// Acts on pre-production systems.
    Staging,
    /// Acts on development systems.
    Development,
    /// Acts only on disposable systems.
    Sandbox,
}

/// Which pods are this agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.serviceAccountName) || has(self.podSelector)")
    .message("spec.workload needs serviceAccountName, podSelector, or both"))]
pub struct Workload {
    /// The ServiceAccount (in this namespace) that the agent's pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Labels that select the agent's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Which credentials an Active agent receives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// One JWT-SVID is issued per audience (the `aud` claim): the services the agent calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)), extend("x-kubernetes-list-type" = "set"))]
    pub audiences: Vec<String>,
    /// Lifetime of each credential, as a duration ("10m", "30m", "1h"); default 10m, at most 1h. Policies and
    /// a low trust score can shorten it further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('1m') && duration(self) <= duration('1h')")
        .message("spec.credentials.ttl must be a duration such as \"10m\" between 1m and 1h"))]
    pub ttl: Option<String>,
    /// Also issue an X.509-SVID (certificate and key) for mutual TLS.
    #[serde(default)]
    pub x509: bool,
}

/// The lifecycle the owner asks for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleSpec {
    /// Active (default), Suspended (credentials withdrawn, can be resumed) or Retired (archived for good).
    #[serde(default)]
    pub desired_state: DesiredState,
}

/// The lifecycle state an owner can ask for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum DesiredState {
    /// The agent may hold credentials and act.
    #[default]
    Active,
    /// The agent keeps its identity but holds no credentials until resumed.
    Suspended,
    /// The agent is archived: its final state is written to the audit log and it never acts again.
    Retired,
}

/// The phase of an agent, decided by the operator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AgentPhase {
    /// A shadow agent: found running by discovery, with no owner yet. It never holds credentials; naming
    /// an owner (adoption) moves it on like any registered agent.
    Discovered,
    /// Registered but not (yet) valid or not yet processed.
    Pending,
    /// Valid and allowed to act.
    Active,
    /// Suspended by its owner; holds no credentials.
    Suspended,
    /// Stopped by the kill switch (a Revocation); only a human can clear it.
    Revoked,
    /// Archived for good.
    Retired,
}

impl AgentPhase {
    /// The name as it appears in status.phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discovered => "Discovered",
            Self::Pending => "Pending",
            Self::Active => "Active",
            Self::Suspended => "Suspended",
            Self::Revoked => "Revoked",
            Self::Retired => "Retired",
        }
    }
}

impl std::fmt::Display for AgentPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator observed and decided about an agent: a report, written only by the operator and replaced
/// whole at every write. Nothing the operator decides reads it back; anything else written here is
/// overwritten and recorded in the audit log (`agent.status.overwritten`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Discovered, Pending, Active, Suspended, Revoked or Retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AgentPhase>,
    /// The agent's SPIFFE ID: `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`.
    #[serde(rename = "spiffeID", default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Trust score from 0 to 1000, computed from provenance completeness and environment (see
    /// docs/trust-score.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000), transform = super::common::int32)]
    pub trust_score: Option<u16>,
    /// The object UID the identity is bound to. A deleted and recreated Agent of the same name has a new UID
    /// and therefore a new identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Valid and other conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The credentials currently issued to the agent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialStatus>,
    /// What discovery found about the agent's workload: why it looks like an agent and the static keys it
    /// holds (shadow agents, and registered agents whose workload discovery sees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

/// What discovery found about one workload. Never contains a value the workload holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryStatus {
    /// The workload, bound by UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<super::WorkloadRef>,
    /// The combined confidence (0 to 100) that it is an AI agent.
    #[serde(default)]
    #[schemars(range(max = 100), transform = super::common::int32)]
    pub confidence: u8,
    /// Each signature that matched, and where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub evidence: Vec<super::Evidence>,
    /// LLM provider keys the workload holds itself (literal values, Secrets agentiam did not issue,
    /// ConfigMaps): what to move to agentiam-issued credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub static_keys: Vec<super::StaticKey>,
    /// The ServiceAccount its pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The ServiceAccount this agent names is borrowed: other workloads run as it, or other Agents name it,
    /// so a credential or RBAC right of that ServiceAccount is not this agent's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrowed_service_account: Option<super::BorrowedServiceAccount>,
    /// How much harm it could do: what its ServiceAccount can reach, the static keys and Secrets it holds,
    /// who shares its identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<super::RiskAssessment>,
}

/// A summary of the credentials currently issued to an agent. Never contains key material.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// The Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the current credentials were issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// When the current credentials expire (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The ID of the key that signed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}
