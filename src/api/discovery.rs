//! The types discovery reports in an Agent's status (`status.discovery`): what was found, never a value the
//! workload holds. The logic that finds them is in `crate::discovery`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a signature looks at.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SignatureKind {
    /// The name of an environment variable of a container: set inline, from a Secret or ConfigMap key, or
    /// brought by `envFrom` (the source's keys, with its prefix).
    Env,
    /// The key of a Secret the pod mounts as a volume (or projects).
    SecretKey,
    /// A container image reference (lowercase).
    Image,
    /// One word of a container's command or args.
    Arg,
    /// A container port: its number or its name.
    Port,
    /// A label of the workload or its pod template: `key` or `key=value`.
    Label,
    /// An annotation of the workload or its pod template: `key` or `key=value`.
    Annotation,
    /// The name of an A2A agent card a running pod of the workload serves at
    /// `/.well-known/agent-card.json` (or the older `agent.json`) on a port it declares.
    AgentCard,
}

impl SignatureKind {
    /// The name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::SecretKey => "secretKey",
            Self::Image => "image",
            Self::Arg => "arg",
            Self::Port => "port",
            Self::Label => "label",
            Self::Annotation => "annotation",
            Self::AgentCard => "agentCard",
        }
    }
}

/// Where a static key comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeySource {
    /// Written into the workload as a literal value.
    Literal,
    /// From a Secret agentiam did not issue.
    Secret,
    /// From a ConfigMap (not even a Secret).
    ConfigMap,
}

/// An LLM provider credential the workload holds itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticKey {
    /// The container (or `volume:<name>` for a mounted Secret).
    pub container: String,
    /// The variable or key name.
    pub name: String,
    /// Where it comes from.
    pub source: KeySource,
    /// The Secret or ConfigMap, when it comes from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// One reason a workload was detected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The signature's name.
    pub signature: String,
    /// What it looked at.
    pub kind: SignatureKind,
    /// The signature's confidence.
    #[schemars(range(max = 100), transform = super::common::int32)]
    pub confidence: u8,
    /// Where it matched, e.g. `container app: env OPENAI_API_KEY from Secret llm`; never a value.
    pub matches: Vec<String>,
}

/// A workload, named as its owner references name it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Its apiVersion, e.g. `apps/v1`.
    pub api_version: String,
    /// Its kind, e.g. `Deployment`.
    pub kind: String,
    /// Its name (in the namespace of the record).
    pub name: String,
    /// Its UID: a workload deleted and created again under the same name is a new workload.
    pub uid: String,
}

/// A ServiceAccount an agent shares with workloads it does not cover, or with other Agents.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BorrowedServiceAccount {
    /// The ServiceAccount.
    pub service_account: String,
    /// How many workloads the agent does not cover run as it.
    #[schemars(transform = super::common::int32)]
    pub workloads: u32,
    /// Some of them, `<Kind>/<name>` (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub shared_with: Vec<String>,
    /// Other Agents of the namespace that name it too (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub other_agents: Vec<String>,
}

/// How much harm a discovered agent could do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum RiskLevel {
    /// Score below 20.
    Low,
    /// 20 to 39.
    Medium,
    /// 40 to 69.
    High,
    /// 70 and above.
    Critical,
}

/// The risk classification of a discovered agent (docs/discovery.md#risk).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RiskAssessment {
    /// Low, Medium, High or Critical.
    pub level: RiskLevel,
    /// 0 to 100, the sum of the facts below.
    #[schemars(range(max = 100), transform = super::common::int32)]
    pub score: u8,
    /// What raised it, e.g. `its ServiceAccount may read Secrets in its namespace`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub reasons: Vec<String>,
}
