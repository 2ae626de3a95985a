//! What makes a workload look like an AI agent: named signatures, each with a confidence, kept in
//! configuration so that a platform team can extend them without a rebuild.
//!
//! The built-in set ([`builtin`]) covers LLM provider credentials, agent frameworks and MCP servers, and the
//! labels users add. The ConfigMap `agentiam-discovery` in the operator's namespace (key
//! `signatures.yaml`, the chart's `discovery.signatures`) adds to it or, with `replaceBuiltin: true`,
//! replaces it. Pure: parsing, validation and matching; the I/O is in `controller::discovery`.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::api::SignatureKind;

/// One signature: a name, what it looks at, patterns, and how sure a match makes us.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Signature {
    /// A stable name, shown as the reason a workload was detected (DNS-label style).
    pub name: String,
    /// What the patterns are matched against.
    pub kind: SignatureKind,
    /// Globs (`*` matches any run of characters), matched without regard to case. At least one.
    pub patterns: Vec<String>,
    /// How sure one match makes us that the workload is an agent, 1 to 100.
    pub confidence: u8,
    /// A match is an LLM provider credential: a static key the workload holds (env and secretKey only).
    #[serde(default)]
    pub credential: bool,
}

/// The configuration as written in the ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureConfig {
    /// A workload is an agent when the combined confidence of its matches reaches this (1 to 100; default
    /// 50).
    #[serde(default)]
    pub threshold: Option<u8>,
    /// Use only the signatures below, not the built-in ones.
    #[serde(default)]
    pub replace_builtin: bool,
    /// Signatures added to (or, with a built-in's name, replacing) the built-in set.
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

/// The default threshold.
pub const DEFAULT_THRESHOLD: u8 = 50;

/// Why a configuration was refused (the previous one stays in force).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The YAML does not parse as a [`SignatureConfig`].
    #[error("signatures.yaml does not parse: {0}")]
    Parse(String),
    /// A field is out of range or empty.
    #[error("{field}: {message}")]
    Invalid {
        /// Where.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The signatures in force, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// The threshold in force.
    pub threshold: u8,
    /// Every signature, built-in ones first, in a stable order.
    pub all: Vec<Signature>,
}

impl Default for Signatures {
    fn default() -> Self {
        Self { threshold: DEFAULT_THRESHOLD, all: builtin() }
    }
}

impl Signatures {
    /// The set a configuration asks for: the built-in signatures (unless replaced), where a configured one of
    /// the same name takes the built-in's place, then the configured ones.
    pub fn from_config(config: &SignatureConfig) -> Result<Self, ConfigError> {
        let invalid =
            |field: String, message: &str| ConfigError::Invalid { field, message: message.to_owned() };
        let threshold = config.threshold.unwrap_or(DEFAULT_THRESHOLD);
        if !(1..=100).contains(&threshold) {
            return Err(invalid("threshold".into(), "must be between 1 and 100"));
        }
        let mut names = BTreeSet::new();
        for (i, s) in config.signatures.iter().enumerate() {
            let at = |f: &str| format!("signatures[{i}].{f}");
            if !crate::registry::validate::is_dns_label(&s.name) {
                return Err(invalid(at("name"), "must be a DNS-1123 label"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(at("name"), "is used twice"));
            }
            if s.patterns.is_empty() {
                return Err(invalid(at("patterns"), "must name at least one pattern"));
            }
            if let Some(p) = s.patterns.iter().position(|p| p.trim().is_empty() || p.len() > 253) {
                return Err(invalid(format!("{}[{p}]", at("patterns")), "must be 1 to 253 characters"));
            }
            if !(1..=100).contains(&s.confidence) {
                return Err(invalid(at("confidence"), "must be between 1 and 100"));
            }
            if s.credential && !matches!(s.kind, SignatureKind::Env | SignatureKind::SecretKey) {
                return Err(invalid(at("credential"), "only env and secretKey signatures find credentials"));
            }
        }
        let mut all: Vec<Signature> = if config.replace_builtin {
            Vec::new()
        } else {
            builtin().into_iter().filter(|b| !names.contains(b.name.as_str())).collect()
        };
        all.extend(config.signatures.iter().cloned());
        Ok(Self { threshold, all })
    }

    /// Parses and checks the ConfigMap's `signatures.yaml`.
    pub fn parse(yaml: &str) -> Result<Self, ConfigError> {
        let config: SignatureConfig =
            serde_saphyr::from_str(yaml).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::from_config(&config)
    }

    /// The signatures of one kind that `text` matches.
    pub fn matching<'a>(&'a self, kind: SignatureKind, text: &'a str) -> impl Iterator<Item = &'a Signature> {
        self.all.iter().filter(move |s| s.kind == kind && s.matches(text))
    }
}

impl Signature {
    /// Whether `text` matches one of the patterns, without regard to ASCII case.
    pub fn matches(&self, text: &str) -> bool {
        let text = text.to_ascii_lowercase();
        self.patterns.iter().any(|p| crate::authz::pattern::glob(&p.to_ascii_lowercase(), &text))
    }

    /// Whether a label or annotation matches: a pattern with `=` is matched against `key=value`, one
    /// without against the key alone. (Matched against `key=value`, a key pattern such as `*/agent-card*`
    /// would also match any value that mentions it: a probe path in a document.)
    pub fn matches_pair(&self, key: &str, value: &str) -> bool {
        let (key, pair) = (key.to_ascii_lowercase(), format!("{key}={value}").to_ascii_lowercase());
        self.patterns.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            crate::authz::pattern::glob(&p, if p.contains('=') { &pair } else { &key })
        })
    }
}

/// The combined confidence of independent matches: the chance that at least one of them is right,
/// `100 * (1 - prod(1 - c_i / 100))`, rounded down. One match of 90 gives 90; two of 50 give 75; it never
/// exceeds 100 and never falls when a match is added.
pub fn combined(confidences: impl IntoIterator<Item = u8>) -> u8 {
    let miss: f64 = confidences.into_iter().map(|c| 1.0 - f64::from(c.min(100)) / 100.0).product();
    let c = (100.0 * (1.0 - miss) + 1e-9).floor();
    c.clamp(0.0, 100.0) as u8
}

fn sig(name: &str, kind: SignatureKind, confidence: u8, credential: bool, patterns: &[&str]) -> Signature {
    Signature {
        name: name.to_owned(),
        kind,
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        confidence,
        credential,
    }
}

/// Environment variable names of LLM provider API keys, as their SDKs read them.
pub const LLM_KEY_NAMES: &[&str] = &[
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_KEY",
    "GEMINI_API_KEY",
    "MISTRAL_API_KEY",
    "COHERE_API_KEY",
    "CO_API_KEY",
    "GROQ_API_KEY",
    "TOGETHER_API_KEY",
    "FIREWORKS_API_KEY",
    "DEEPSEEK_API_KEY",
    "XAI_API_KEY",
    "PERPLEXITY_API_KEY",
    "PPLX_API_KEY",
    "OPENROUTER_API_KEY",
    "VOYAGE_API_KEY",
    "REPLICATE_API_TOKEN",
    "HUGGINGFACEHUB_API_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
];

/// The built-in signatures. Confidences are deliberately modest where a name is also used outside AI (a
/// Google API key serves Maps too; port 8000 serves anything): such a match alone stays below the default
/// threshold, and only adds to another.
pub fn builtin() -> Vec<Signature> {
    use SignatureKind::*;
    vec![
        sig("llm-provider-key", Env, 90, true, LLM_KEY_NAMES),
        sig("llm-provider-key-in-secret", SecretKey, 80, true, LLM_KEY_NAMES),
        sig(
            "ambiguous-provider-key",
            Env,
            40,
            true,
            &["GOOGLE_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"],
        ),
        sig(
            "llm-endpoint",
            Env,
            40,
            false,
            &[
                "OPENAI_BASE_URL",
                "OPENAI_API_BASE",
                "ANTHROPIC_BASE_URL",
                "AZURE_OPENAI_ENDPOINT",
                "OLLAMA_HOST",
                "LITELLM_*",
                "MCP_SERVER_*",
                "MCP_SERVERS",
            ],
        ),
        sig(
            "agent-framework-image",
            Image,
            70,
            false,
            &[
                "*langchain*",
                "*langgraph*",
                "*crewai*",
                "*autogen*",
                "*llama-index*",
                "*llamaindex*",
                "*semantic-kernel*",
                "*openai-agents*",
                "*smolagents*",
                "*letta*",
                "*memgpt*",
                "*autogpt*",
                "*flowise*",
                "*langflow*",
                "*dify-api*",
                "*haystack*",
                "*agno*",
            ],
        ),
        sig(
            "mcp-server-image",
            Image,
            70,
            false,
            &["mcp/*", "*/mcp/*", "*mcp-server*", "*-mcp:*", "*-mcp", "*modelcontextprotocol*", "*fastmcp*"],
        ),
        sig(
            "mcp-server-args",
            Arg,
            60,
            false,
            &["@modelcontextprotocol/*", "*mcp-server*", "mcp-proxy", "fastmcp", "*mcp_server*"],
        ),
        sig(
            "agent-framework-args",
            Arg,
            50,
            false,
            &["langgraph", "crewai", "chainlit", "autogen*", "letta", "smolagents", "*agent_server*"],
        ),
        sig("mcp-port-name", Port, 50, false, &["mcp", "mcp-*"]),
        sig("a2a-port-name", Port, 50, false, &["a2a", "a2a-*"]),
        sig(
            "agent-label",
            Label,
            100,
            false,
            &["agentiam.dev/discover=agent", "kagenti.io/type=agent", "app.kubernetes.io/component=ai-agent"],
        ),
        // A pod that answers with an A2A agent card says what it is; any name counts.
        sig("a2a-agent-card", AgentCard, 90, false, &["*"]),
        sig(
            "agent-annotation",
            Annotation,
            100,
            false,
            &["agentiam.dev/discover=agent", "a2a.agent-card*", "*/agent-card*"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_confidence_is_the_chance_that_one_match_is_right() {
        assert_eq!(combined([]), 0);
        assert_eq!(combined([90]), 90);
        assert_eq!(combined([50, 50]), 75);
        assert_eq!(combined([40, 40]), 64);
        assert_eq!(combined([100, 10]), 100);
        assert_eq!(combined([99, 99, 99]), 99, "rounded down, never 100 without a certain match");
        // Adding a match never lowers it.
        for a in 0..=100u8 {
            for b in [1u8, 20, 50, 99] {
                assert!(combined([a, b]) >= combined([a]), "{a} {b}");
            }
        }
    }

    #[test]
    fn the_builtin_set_is_valid_and_has_stable_names() {
        let config = SignatureConfig { signatures: builtin(), replace_builtin: true, threshold: None };
        let s = Signatures::from_config(&config).unwrap();
        assert_eq!(s, Signatures::default());
        assert!(s.all.iter().any(|s| s.name == "llm-provider-key" && s.credential));
    }

    #[test]
    fn matching_ignores_case_and_uses_globs() {
        let s = Signatures::default();
        let names = |k, t| s.matching(k, t).map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(SignatureKind::Env, "openai_api_key"), ["llm-provider-key"]);
        assert_eq!(names(SignatureKind::Env, "LITELLM_MASTER_KEY"), ["llm-endpoint"]);
        assert_eq!(names(SignatureKind::Image, "ghcr.io/acme/LangGraph-api:1.2"), ["agent-framework-image"]);
        assert_eq!(names(SignatureKind::Image, "mcp/github:latest"), ["mcp-server-image"]);
        assert!(names(SignatureKind::Env, "OPENAI_API_KEY_FILE_X").is_empty(), "a glob is anchored");
        assert!(names(SignatureKind::Image, "nginx:1.27").is_empty());
    }

    #[test]
    fn configuration_adds_replaces_and_is_checked() {
        let s = Signatures::parse(
            "threshold: 70\nsignatures:\n- name: llm-provider-key\n  kind: env\n  patterns: [MY_LLM_KEY]\n  \
             confidence: 95\n  credential: true\n- name: internal-gateway\n  kind: env\n  patterns: \
             ['ACME_AI_*']\n  confidence: 60\n",
        )
        .unwrap();
        assert_eq!(s.threshold, 70);
        let key: Vec<_> = s.all.iter().filter(|x| x.name == "llm-provider-key").collect();
        assert_eq!(key.len(), 1, "a configured signature of a built-in's name replaces it");
        assert_eq!(key[0].patterns, ["MY_LLM_KEY"]);
        assert!(s.all.iter().any(|x| x.name == "internal-gateway"));
        assert!(s.all.iter().any(|x| x.name == "mcp-server-image"), "the other built-ins stay");

        let only = Signatures::parse(
            "replaceBuiltin: true\nsignatures:\n- {name: x, kind: image, patterns: ['*x*'], confidence: 60}\n",
        )
        .unwrap();
        assert_eq!(only.all.len(), 1);

        for (yaml, want) in [
            ("threshold: 0", "threshold"),
            ("signatures:\n- {name: X!, kind: env, patterns: [A], confidence: 5}", "signatures[0].name"),
            ("signatures:\n- {name: a, kind: env, patterns: [], confidence: 5}", "signatures[0].patterns"),
            (
                "signatures:\n- {name: a, kind: env, patterns: [' '], confidence: 5}",
                "signatures[0].patterns[0]",
            ),
            (
                "signatures:\n- {name: a, kind: env, patterns: [A], confidence: 101}",
                "signatures[0].confidence",
            ),
            (
                "signatures:\n- {name: a, kind: image, patterns: [A], confidence: 5, credential: true}",
                "credential",
            ),
            (
                "signatures:\n- {name: a, kind: env, patterns: [A], confidence: 5}\n- {name: a, kind: env, \
                 patterns: [B], confidence: 5}",
                "signatures[1].name",
            ),
        ] {
            let e = Signatures::parse(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        assert!(matches!(Signatures::parse("signatures: {oops"), Err(ConfigError::Parse(_))));
        assert!(matches!(Signatures::parse("unknownField: 1"), Err(ConfigError::Parse(_))));
    }
}
