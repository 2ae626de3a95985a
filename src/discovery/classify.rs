//! Classifies one pod template against the signatures: which matched, why, how sure that makes us, and which
//! static LLM keys it holds. Pure: the caller reads the key names of the Secrets and ConfigMaps the template
//! refers to (names only, never values) and passes them in.
//!
//! Nothing a workload holds as a value reaches the evidence: an environment variable is named, never shown;
//! an argument that matched is described by the pattern it matched, since arguments carry keys too.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::api::{Evidence, KeySource, StaticKey};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

use super::signatures::{Signature, SignatureKind, Signatures, combined};

/// The parts of a workload that signatures look at.
#[derive(Debug, Clone, Copy)]
pub struct Template<'a> {
    /// Labels of the workload and of its pod template.
    pub labels: &'a BTreeMap<String, String>,
    /// Annotations of the workload and of its pod template.
    pub annotations: &'a BTreeMap<String, String>,
    /// The pod spec.
    pub spec: &'a PodSpec,
}

/// The key names of one Secret or ConfigMap a template refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceKeys {
    /// Its keys (names only).
    pub keys: Vec<String>,
    /// agentiam issued it (its credentials or delegated-token Secret): what it holds is not a static key.
    pub issued_by_agentiam: bool,
}

/// Whether the Secret `name` with `labels` is one agentiam issued: labelled as managed by the operator and
/// for an agent, and named as that agent's credentials or delegated-token Secret (the only shape the
/// chart's admission policy lets the operator write). The label alone would let anyone hide a provider key
/// by copying it onto their own Secret.
pub fn issued_by_agentiam(name: &str, labels: &BTreeMap<String, String>) -> bool {
    labels.get(crate::names::MANAGED_BY_LABEL).map(String::as_str) == Some(crate::names::FIELD_MANAGER)
        && labels.get(crate::names::AGENT_LABEL).is_some_and(|agent| {
            name == crate::names::credentials_secret(agent) || name == crate::names::delegations_secret(agent)
        })
}

/// What the caller could read of the Secrets and ConfigMaps a template names (absent: not found or not
/// readable; then only what the template itself says counts).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Secrets by name, in the workload's namespace.
    pub secrets: BTreeMap<String, SourceKeys>,
    /// ConfigMaps by name, in the workload's namespace.
    pub config_maps: BTreeMap<String, SourceKeys>,
    /// A2A agent cards its running pods serve ([`super::card`]).
    pub agent_cards: Vec<super::card::ServedCard>,
}

/// What one template looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detection {
    /// The combined confidence of the signatures that matched (0 when none did).
    pub confidence: u8,
    /// One entry per signature that matched, in signature order.
    pub evidence: Vec<Evidence>,
    /// Static LLM keys it holds.
    pub static_keys: Vec<StaticKey>,
}

/// The annotation in which `kubectl apply` keeps the whole object it applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// At most this many places are listed per signature, so a status stays small.
pub const MAX_MATCHES: usize = 5;

impl Detection {
    /// Whether this is an agent at `threshold`.
    pub fn is_agent(&self, threshold: u8) -> bool {
        self.confidence >= threshold
    }
}

#[derive(Default)]
struct Collector<'s> {
    hits: BTreeMap<usize, (&'s Signature, BTreeSet<String>)>,
    keys: BTreeSet<StaticKey>,
}

impl<'s> Collector<'s> {
    /// Records every signature of `kind` that `text` matches, at `place`; returns the ones that did.
    fn check(
        &mut self,
        signatures: &'s Signatures,
        kind: SignatureKind,
        text: &str,
        place: impl Fn(&Signature) -> String,
    ) -> Vec<&'s Signature> {
        self.check_by(signatures, kind, |s| s.matches(text), place)
    }

    /// Records every signature of `kind` for which `hit` holds, at `place`; returns the ones that did.
    fn check_by(
        &mut self,
        signatures: &'s Signatures,
        kind: SignatureKind,
        hit: impl Fn(&Signature) -> bool,
        place: impl Fn(&Signature) -> String,
    ) -> Vec<&'s Signature> {
        let mut found = Vec::new();
        for (i, s) in signatures.all.iter().enumerate() {
            if s.kind == kind && hit(s) {
                self.hits.entry(i).or_insert_with(|| (s, BTreeSet::new())).1.insert(place(s));
                found.push(s);
            }
        }
        found
    }
}

/// Classifies a template.
pub fn classify(signatures: &Signatures, t: Template<'_>, sources: &Sources) -> Detection {
    let mut c = Collector::default();
    for (k, v) in t.labels {
        c.check_by(signatures, SignatureKind::Label, |s| s.matches_pair(k, v), |_| format!("label {k}={v}"));
    }
    for (k, v) in t.annotations {
        // kubectl's copy of the whole object: what it says is judged where it really is.
        if k == LAST_APPLIED {
            continue;
        }
        // Annotation values can be long documents: the evidence names the key only.
        c.check_by(
            signatures,
            SignatureKind::Annotation,
            |s| s.matches_pair(k, v),
            |_| format!("annotation {k}"),
        );
    }
    for ctr in t.spec.init_containers.iter().flatten().chain(t.spec.containers.iter()) {
        let name = &ctr.name;
        if let Some(image) = &ctr.image {
            c.check(signatures, SignatureKind::Image, image, |_| format!("container {name}: image {image}"));
        }
        for word in ctr.command.iter().flatten().chain(ctr.args.iter().flatten()) {
            c.check(signatures, SignatureKind::Arg, word, |s| {
                format!("container {name}: an argument matches {}", s.patterns.join(" | "))
            });
        }
        for port in ctr.ports.iter().flatten() {
            for text in [Some(port.container_port.to_string()), port.name.clone()].iter().flatten() {
                c.check(signatures, SignatureKind::Port, text, |_| format!("container {name}: port {text}"));
            }
        }
        for (var, origin) in env_names(ctr, sources) {
            let found = c.check(signatures, SignatureKind::Env, &var, |_| {
                format!("container {name}: env {var}{}", origin.describe())
            });
            if found.iter().any(|s| s.credential)
                && let Some(key) = origin.static_key(name, &var)
            {
                c.keys.insert(key);
            }
        }
    }
    for card in &sources.agent_cards {
        c.check(signatures, SignatureKind::AgentCard, &card.name, |_| {
            format!("a pod serves the A2A agent card {:?} on port {}", card.name, card.port)
        });
    }
    for vol in t.spec.volumes.iter().flatten() {
        let mut names: Vec<String> = vol.secret.iter().filter_map(|s| s.secret_name.clone()).collect();
        for p in vol.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            names.extend(p.secret.iter().map(|s| s.name.clone()));
        }
        for secret in names {
            let Some(found) = sources.secrets.get(&secret) else { continue };
            for key in &found.keys {
                let hit = c.check(signatures, SignatureKind::SecretKey, key, |_| {
                    format!("volume {}: Secret {secret} key {key}", vol.name)
                });
                if hit.iter().any(|s| s.credential) && !found.issued_by_agentiam {
                    c.keys.insert(StaticKey {
                        container: format!("volume:{}", vol.name),
                        name: key.clone(),
                        source: KeySource::Secret,
                        from: Some(secret.clone()),
                    });
                }
            }
        }
    }
    let evidence: Vec<Evidence> = c
        .hits
        .into_values()
        .map(|(s, places)| Evidence {
            signature: s.name.clone(),
            kind: s.kind,
            confidence: s.confidence,
            matches: places.into_iter().take(MAX_MATCHES).collect(),
        })
        .collect();
    Detection {
        confidence: combined(evidence.iter().map(|e| e.confidence)),
        evidence,
        static_keys: c.keys.into_iter().collect(),
    }
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// A literal value in the template (empty: no value, nothing held).
    Literal { empty: bool },
    /// A Secret key; `issued`: agentiam issued that Secret.
    Secret { name: String, issued: bool },
    /// A ConfigMap key.
    ConfigMap { name: String },
    /// The downward API or a resource field: nothing static.
    Field,
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Self::Literal { empty: false } => " (literal value)".into(),
            Self::Literal { empty: true } | Self::Field => String::new(),
            Self::Secret { name, .. } => format!(" from Secret {name}"),
            Self::ConfigMap { name } => format!(" from ConfigMap {name}"),
        }
    }

    fn static_key(&self, container: &str, var: &str) -> Option<StaticKey> {
        let key =
            |source, from| StaticKey { container: container.to_owned(), name: var.to_owned(), source, from };
        match self {
            Self::Literal { empty: false } => Some(key(KeySource::Literal, None)),
            Self::Secret { name, issued: false } => Some(key(KeySource::Secret, Some(name.clone()))),
            Self::ConfigMap { name } => Some(key(KeySource::ConfigMap, Some(name.clone()))),
            _ => None,
        }
    }
}

/// Every environment variable name a container gets, with its origin: its own `env`, then the keys `envFrom`
/// brings (with the prefix), where the source could be read.
fn env_names(ctr: &Container, sources: &Sources) -> Vec<(String, Origin)> {
    let mut out: Vec<(String, Origin)> =
        ctr.env.iter().flatten().map(|e| (e.name.clone(), origin(e, sources))).collect();
    for from in ctr.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(s) = &from.secret_ref
            && let Some(found) = sources.secrets.get(&s.name)
        {
            let o = Origin::Secret { name: s.name.clone(), issued: found.issued_by_agentiam };
            out.extend(found.keys.iter().map(|k| (format!("{prefix}{k}"), o.clone())));
        }
        if let Some(m) = &from.config_map_ref
            && let Some(found) = sources.config_maps.get(&m.name)
        {
            let o = Origin::ConfigMap { name: m.name.clone() };
            out.extend(found.keys.iter().map(|k| (format!("{prefix}{k}"), o.clone())));
        }
    }
    out
}

fn origin(e: &EnvVar, sources: &Sources) -> Origin {
    let Some(from) = &e.value_from else {
        return Origin::Literal { empty: e.value.as_deref().is_none_or(|v| v.trim().is_empty()) };
    };
    if let Some(s) = &from.secret_key_ref {
        let issued = sources.secrets.get(&s.name).is_some_and(|f| f.issued_by_agentiam);
        return Origin::Secret { name: s.name.clone(), issued };
    }
    if let Some(m) = &from.config_map_key_ref {
        return Origin::ConfigMap { name: m.name.clone() };
    }
    Origin::Field
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
