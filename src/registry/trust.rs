//! The trust score: a number from 0 to 1000 saying how much is known and pinned about an agent.
//!
//! It is deliberately simple and additive so an owner can read off what raises it. It measures provenance
//! completeness, not behaviour: a high score means "we know exactly what this is", which policies can require
//! (`minTrustScore`) and which lengthens the credential lifetime an agent may hold. docs/trust-score.md
//! documents the same table; a unit test keeps the two in step.

use crate::api::{AgentSpec, Environment, PrincipalKind};

/// The highest possible score.
pub const MAX_TRUST_SCORE: u16 = 1000;

/// One contribution to the score, for explaining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factor {
    /// A stable name, e.g. "image-pinned-by-digest".
    pub name: &'static str,
    /// Points it adds.
    pub points: u16,
}

/// The score and the factors it is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustScore {
    /// 0..=1000.
    pub score: u16,
    /// What contributed, in table order.
    pub factors: Vec<Factor>,
}

/// The baseline for each environment: the more a mistake costs there, the lower the start.
pub fn environment_baseline(env: Environment) -> u16 {
    match env {
        Environment::Sandbox => 400,
        Environment::Development => 350,
        Environment::Staging => 300,
        Environment::Production => 250,
    }
}

/// True for an image reference pinned by a sha256 digest, e.g. `registry/agent@sha256:<64 hex>`.
pub fn is_pinned_by_digest(image: &str) -> bool {
    image.rsplit_once("@sha256:").is_some_and(|(name, hex)| {
        !name.is_empty()
            && hex.len() == 64
            && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Computes the trust score of an agent spec. See docs/trust-score.md for the table.
pub fn trust_score(spec: &AgentSpec) -> TrustScore {
    let mut factors =
        vec![Factor { name: "environment-baseline", points: environment_baseline(spec.environment) }];
    let mut add = |name: &'static str, points: u16, present: bool| {
        if present {
            factors.push(Factor { name, points });
        }
    };
    add("individual-owner", 25, spec.owner.as_ref().is_some_and(|o| o.kind == PrincipalKind::User));
    let p = spec.provenance.clone().unwrap_or_default();
    add("builder-named", 50, p.builder.is_some());
    add("model-named", 100, p.model.is_some());
    add("model-provider-named", 50, p.model_provider.is_some());
    add("version-named", 50, p.version.is_some());
    add("image-named", 50, p.image.is_some());
    add("image-pinned-by-digest", 200, p.image.as_deref().is_some_and(is_pinned_by_digest));
    add(
        "source-repository-https",
        100,
        p.source_repository.as_deref().is_some_and(|s| s.starts_with("https://")),
    );
    let w = spec.workload.clone().unwrap_or_default();
    add("workload-service-account", 50, w.service_account_name.is_some());
    add("workload-pod-selector", 25, w.pod_selector.is_some());
    let sum: u32 = factors.iter().map(|f| u32::from(f.points)).sum();
    let score = u16::try_from(sum.min(u32::from(MAX_TRUST_SCORE))).unwrap_or(MAX_TRUST_SCORE);
    TrustScore { score, factors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Owner, Provenance, Workload};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn spec(env: Environment) -> AgentSpec {
        AgentSpec {
            environment: env,
            ..AgentSpec::new(Owner { kind: PrincipalKind::Team, name: "payments".into() }, "refunds")
        }
    }

    fn full(env: Environment) -> AgentSpec {
        let mut s = spec(env);
        if let Some(o) = s.owner.as_mut() {
            o.kind = PrincipalKind::User;
        }
        s.provenance = Some(Provenance {
            builder: Some("payments-team".into()),
            model: Some("claude-sonnet-4-5".into()),
            model_provider: Some("anthropic".into()),
            version: Some("1.2.0".into()),
            image: Some(format!("ghcr.io/acme/refund-bot@sha256:{}", "a".repeat(64))),
            source_repository: Some("https://github.com/acme/refund-bot".into()),
        });
        s.workload = Some(Workload {
            service_account_name: Some("refund-bot".into()),
            pod_selector: Some(LabelSelector::default()),
        });
        s
    }

    #[test]
    fn bare_agents_score_their_environment_baseline() {
        assert_eq!(trust_score(&spec(Environment::Production)).score, 250);
        assert_eq!(trust_score(&spec(Environment::Staging)).score, 300);
        assert_eq!(trust_score(&spec(Environment::Development)).score, 350);
        assert_eq!(trust_score(&spec(Environment::Sandbox)).score, 400);
    }

    #[test]
    fn complete_pinned_provenance_scores_high_and_caps_at_1000() {
        assert_eq!(trust_score(&full(Environment::Production)).score, 950);
        assert_eq!(trust_score(&full(Environment::Sandbox)).score, MAX_TRUST_SCORE);
    }

    #[test]
    fn a_digest_is_worth_more_than_a_tag() {
        let mut tagged = full(Environment::Production);
        if let Some(p) = tagged.provenance.as_mut() {
            p.image = Some("ghcr.io/acme/refund-bot:latest".into());
        }
        assert_eq!(trust_score(&full(Environment::Production)).score - trust_score(&tagged).score, 200);
    }

    #[test]
    fn plain_http_source_does_not_count() {
        let mut s = full(Environment::Production);
        if let Some(p) = s.provenance.as_mut() {
            p.source_repository = Some("http://example.com/x".into());
        }
        assert_eq!(trust_score(&s).score, 850);
    }

    #[test]
    fn digest_detection_is_strict() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(is_pinned_by_digest(&format!("r/a@sha256:{hex}")));
        assert!(!is_pinned_by_digest(&format!("@sha256:{hex}")));
        assert!(!is_pinned_by_digest(&format!("r/a@sha256:{}", &hex[1..])));
        assert!(!is_pinned_by_digest(&format!("r/a@sha256:{}", hex.to_uppercase())));
        assert!(!is_pinned_by_digest("r/a:sha256"));
    }

    #[test]
    fn factors_sum_to_the_score_below_the_cap() {
        let t = trust_score(&full(Environment::Staging));
        let sum: u16 = t.factors.iter().map(|f| f.points).sum();
        assert_eq!(sum, t.score);
    }

    #[test]
    fn docs_table_matches_the_code() {
        let doc = include_str!("../../docs/trust-score.md");
        for (name, points) in [
            ("individual-owner", 25),
            ("builder-named", 50),
            ("model-named", 100),
            ("model-provider-named", 50),
            ("version-named", 50),
            ("image-named", 50),
            ("image-pinned-by-digest", 200),
            ("source-repository-https", 100),
            ("workload-service-account", 50),
            ("workload-pod-selector", 25),
        ] {
            assert!(
                doc.contains(&format!("| `{name}` | {points} |")),
                "docs/trust-score.md lacks {name} = {points}"
            );
        }
        for (env, points) in [("Production", 250), ("Staging", 300), ("Development", 350), ("Sandbox", 400)] {
            assert!(
                doc.contains(&format!("| {env} | {points} |")),
                "docs/trust-score.md lacks {env} = {points}"
            );
        }
    }
}

/// Points a denied decision takes off the trust score.
pub const DENIAL_PENALTY: f64 = 1.0;
/// Points an anomaly alert takes off.
pub const ALERT_PENALTY: f64 = 100.0;
/// Points an automatic suspension takes off.
pub const SUSPEND_PENALTY: f64 = 300.0;
/// How fast a penalty fades: it halves every hour, so trust falls at once and recovers slowly.
pub const PENALTY_HALF_LIFE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What an agent's behaviour takes off its trust score: points added by denials and anomalies, fading
/// with [`PENALTY_HALF_LIFE`]. The effective score is the recorded one minus the penalty, and it is what
/// policies' `minTrustScore` and the lifetime of access tokens follow. In memory only (the behaviour it
/// reflects is in memory too, see docs/monitoring.md).
#[derive(Debug, Default)]
pub struct TrustPenalties {
    by_agent: std::sync::Mutex<std::collections::HashMap<String, (f64, jiff::Timestamp)>>,
}

/// The penalty `points` set at `since`, decayed to `now`.
pub fn decayed(points: f64, since: jiff::Timestamp, now: jiff::Timestamp) -> f64 {
    let elapsed = now.duration_since(since).as_secs_f64().max(0.0);
    points * 0.5_f64.powf(elapsed / PENALTY_HALF_LIFE.as_secs_f64())
}

/// Most agents tracked; beyond, the smallest penalties are forgotten first.
const MAX_PENALIZED: usize = 100_000;

impl TrustPenalties {
    /// Takes `points` off the agent `uid` at `at`.
    pub fn add(&self, uid: &str, points: f64, at: jiff::Timestamp) {
        let mut map = self.by_agent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_PENALIZED && !map.contains_key(uid) {
            map.retain(|_, (p, since)| decayed(*p, *since, at) >= 1.0);
        }
        let entry = map.entry(uid.to_owned()).or_insert((0.0, at));
        *entry = (decayed(entry.0, entry.1, at) + points, at);
    }

    /// The whole points taken off the agent `uid` at `now`.
    pub fn penalty(&self, uid: &str, now: jiff::Timestamp) -> u16 {
        let map = self.by_agent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = map.get(uid).map_or(0.0, |(p, since)| decayed(*p, *since, now));
        // Bounded by the highest score, so the cast cannot overflow.
        p.clamp(0.0, f64::from(MAX_TRUST_SCORE)) as u16
    }

    /// `recorded` minus the agent's penalty at `now`.
    pub fn effective(&self, uid: &str, recorded: u16, now: jiff::Timestamp) -> u16 {
        recorded.saturating_sub(self.penalty(uid, now))
    }
}

#[cfg(test)]
mod penalty_tests {
    use super::*;

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_796_000_000 + secs).unwrap()
    }

    #[test]
    fn trust_falls_at_once_and_recovers_by_half_every_hour() {
        let p = TrustPenalties::default();
        assert_eq!(p.effective("a", 700, t(0)), 700);
        p.add("a", ALERT_PENALTY, t(0));
        for _ in 0..100 {
            p.add("a", DENIAL_PENALTY, t(0));
        }
        assert_eq!(p.penalty("a", t(0)), 200);
        assert_eq!(p.effective("a", 700, t(0)), 500);
        assert_eq!(p.penalty("a", t(3600)), 100, "half after an hour");
        assert_eq!(p.penalty("a", t(7200)), 50);
        assert_eq!(p.effective("a", 150, t(0)), 0, "never below zero");
        assert_eq!(p.penalty("b", t(0)), 0, "per agent");
        // A later penalty adds to what is left of the earlier one.
        p.add("a", SUSPEND_PENALTY, t(3600));
        assert_eq!(p.penalty("a", t(3600)), 400);
        assert_eq!(p.penalty("a", t(0)), 400, "a time before the last change does not undo it");
        assert!(decayed(1000.0, t(0), t(36_000)) < 1.0, "ten hours later it is gone");
    }
}

/// `record` carrying the agent's penalty at `now` (the same record when there is none, so decisions about
/// well-behaved agents copy nothing). Rules judge the recorded score minus it; the lifetime an identity
/// credential may have keeps to the recorded score, the one it was issued under.
pub fn with_penalty(
    record: std::sync::Arc<crate::registry::ledger::AgentRecord>,
    uid: &str,
    penalties: Option<&TrustPenalties>,
    now: jiff::Timestamp,
) -> std::sync::Arc<crate::registry::ledger::AgentRecord> {
    let penalty = penalties.map_or(0, |p| p.penalty(uid, now));
    if penalty == 0 {
        return record;
    }
    let mut lowered = (*record).clone();
    lowered.trust_penalty = penalty;
    std::sync::Arc::new(lowered)
}
