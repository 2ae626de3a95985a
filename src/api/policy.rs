//! The `AgentPolicy` kind: fine-grained, context-aware authorization for agents.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rules that decide, at every consequential action, whether the agents it selects may perform it. Default
/// deny: an action no Allow rule matches is denied, and a matching Deny rule beats every Allow. A policy
/// with a rule that does not compile denies everything for the agents it governs until it is fixed.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentiam.dev",
    version = "v1alpha1",
    kind = "AgentPolicy",
    namespaced,
    status = "AgentPolicyStatus",
    shortname = "agpol",
    category = "agentiam",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Agents","type":"integer","jsonPath":".status.matchedAgents"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicySpec {
    /// Which agents in this namespace the policy governs.
    pub agents: AgentSelector,
    /// Enforce (default) applies decisions; Audit records "would deny" but allows, for safe rollout. An Audit
    /// policy never changes what Enforce policies decide; an agent governed only by Audit policies is allowed
    /// and every would-be denial is recorded.
    #[serde(default)]
    pub mode: PolicyMode,
    /// The rules, evaluated together with those of every other policy governing the agent: any matching Deny
    /// wins; then a matching rate-limited Allow over its limit denies; then a matching Allow that requires
    /// approval gives RequireApproval; then any matching Allow allows.
    #[schemars(
        length(min = 1, max = 1000),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub rules: Vec<PolicyRule>,
    /// Upper bound for the lifetime of credentials issued to the selected agents ("5m", "15m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('1m') && duration(self) <= duration('1h')")
        .message("spec.credentialTTLCap must be a duration such as \"5m\" between 1m and 1h"))]
    #[serde(rename = "credentialTTLCap")]
    pub credential_ttl_cap: Option<String>,
}

/// Selects agents by name, by label, or both (an agent matching either is selected).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.names) && size(self.names) > 0) || has(self.selector)")
    .message("spec.agents needs names, selector, or both"))]
pub struct AgentSelector {
    /// Agent names in this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)), extend("x-kubernetes-list-type" = "set"))]
    pub names: Vec<String>,
    /// A label selector over Agents in this namespace; `{}` selects all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Whether a policy's decisions are applied or only recorded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyMode {
    /// Decisions are applied.
    #[default]
    Enforce,
    /// Would-be denials are recorded in the audit log but the action is allowed.
    Audit,
}

/// Allow or Deny.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Effect {
    /// Permit the matched action (subject to conditions).
    Allow,
    /// Forbid the matched action; beats any Allow.
    Deny,
}

/// One rule: an effect for a set of actions on a set of resources or tools, under conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.resources) > 0 || (has(self.tools) && size(self.tools) > 0)")
    .message("a rule needs at least one resource or tool"))]
pub struct PolicyRule {
    /// The rule's name, unique within the policy; decisions and audit records name the rule that decided.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Allow or Deny.
    pub effect: Effect,
    /// Verbs such as "read", "update", "refund", "tools.call"; "*" matches every verb. The ext_authz endpoint
    /// maps HTTP methods to read/create/update/delete and MCP JSON-RPC methods to "tools.call" and the like.
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = 63), regex(pattern = r"^(\*|[a-zA-Z0-9][a-zA-Z0-9._:-]*)$"))
    )]
    pub actions: Vec<String>,
    /// Resource patterns such as "crm:contacts/*": segments are separated by '/', "*" as a segment matches
    /// exactly one segment, "**" any number (zero included), and "*" inside a segment any characters within
    /// it ("crm:**" is "crm:*/**"). Empty means the rule does not constrain the resource (it then needs tools).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    pub resources: Vec<String>,
    /// MCP tool names the rule covers ("*" inside matches any characters). A rule with tools only matches
    /// requests that name a tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub tools: Vec<String>,
    /// Further conditions that must all hold for the rule to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<RuleConditions>,
}

/// Conditions on the moment, the agent and the request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleConditions {
    /// The rule matches only inside one of these windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub time_windows: Vec<TimeWindow>,
    /// The agent's trust score must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000), transform = super::common::int32)]
    pub min_trust_score: Option<u16>,
    /// The rule applies only to requests made with a delegated token (the agent acting on behalf of a
    /// human), for actions and resources inside this scope (`<action>@<resource pattern>`, as Delegations
    /// write them). The delegation's own scopes must allow the request too, as they must for every
    /// delegated request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 253), regex(pattern = r"^(\*|[a-zA-Z0-9][a-zA-Z0-9._:-]*)@\S+$"))]
    pub delegation_scope: Option<String>,
    /// Only delegations granted by these humans count for this rule (the user at the root of the chain,
    /// as the API server authenticated them). Needs `delegationScope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_grantors: Option<Grantors>,
    /// Constraints on attributes of the request context, e.g. amount <= 10000. An attribute that is missing
    /// or cannot be compared makes an Allow rule not match and a Deny rule match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub attributes: Vec<AttributeConstraint>,
    /// At most this many matching requests per agent per period; beyond it the rule denies. Allow rules only;
    /// counted in the operator's memory (a token bucket that refills over the period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// When Required, a matching Allow becomes RequireApproval: a human must approve the action. Needs
    /// `approvers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Who may approve actions this rule requires approval for, and how. Needs `approval: required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
}

/// The humans who may approve an action a rule requires approval for, and the terms of an approval.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approvers {
    /// Usernames that may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub users: Vec<String>,
    /// Groups whose members may approve (membership as the API server authenticates the approver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
    /// How long a request waits for an answer before it ends as Denied (default "15m", at most "24h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('10s') && duration(self) <= duration('24h')")
        .message("approvers.timeout must be a duration such as \"15m\" between 10s and 24h"))]
    pub timeout: Option<String>,
    /// How long an approval may be used once given (default "5m", at most "1h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('10s') && duration(self) <= duration('1h')")
        .message("approvers.validFor must be a duration such as \"5m\" between 10s and 1h"))]
    pub valid_for: Option<String>,
    /// How many allowed decisions one approval covers (default 1: single use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100), transform = super::common::int32)]
    pub uses: Option<u32>,
    /// Four eyes: the approver may be neither the human a delegated request acts for (the grantor at the
    /// root of its chain) nor the agent's owner.
    #[serde(default)]
    pub four_eyes: bool,
}

/// The humans whose delegations a rule accepts: any listed user, or any member of a listed group (at the
/// time the root Delegation was created).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grantors {
    /// Usernames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub users: Vec<String>,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
}

/// A recurring window of time, in a time zone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeWindow {
    /// Days of the week; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7), extend("x-kubernetes-list-type" = "set"))]
    pub days: Vec<Weekday>,
    /// Start time of day, "HH:MM" (inclusive).
    #[schemars(length(max = 5), regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// End time of day, "HH:MM" (exclusive); an end before the start spans midnight.
    #[schemars(length(max = 5), regex(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"))]
    pub end: String,
    /// IANA time zone such as "Europe/Berlin"; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// A comparison on one attribute of the request context.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.operator in ['In', 'NotIn']) == has(self.values)")
    .message("In and NotIn take values; the other operators take value"))]
#[x_kube(validation = Rule::new("(self.operator in ['In', 'NotIn']) != has(self.value)")
    .message("In and NotIn take values; the other operators take value"))]
pub struct AttributeConstraint {
    /// The context key, e.g. "amount" or "customer.region".
    #[schemars(length(min = 1, max = 128))]
    pub key: String,
    /// How the attribute is compared.
    pub operator: AttributeOperator,
    /// The value compared against; numeric operators compare numerically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub value: Option<String>,
    /// The set of values for In and NotIn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 256)))]
    pub values: Option<Vec<String>>,
}

/// Comparison operators for attribute constraints.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum AttributeOperator {
    Equals,
    NotEquals,
    In,
    NotIn,
    LessThan,
    LessThanOrEqual,
    GreaterThan,
    GreaterThanOrEqual,
}

/// A per-agent rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// How many matching requests are allowed per period.
    #[schemars(range(min = 1, max = 1_000_000), transform = super::common::int32)]
    pub requests: u32,
    /// The period, as a duration ("1s", "1m", "1h").
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("rateLimit.per must be a duration such as \"1m\" between 1s and 24h"))]
    pub per: String,
}

/// Whether a human must approve.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// A human must approve each matching action.
    Required,
}

/// What the operator observed about a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many agents the policy currently selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::common::int32)]
    pub matched_agents: Option<u32>,
    /// Ready (compiled) and other conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Rules that could not be compiled; while any exist the whole policy denies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_errors: Vec<String>,
}
