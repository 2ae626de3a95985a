//! The risk of a discovered agent (the article's step 2, "classify by risk"): what its ServiceAccount can
//! reach, the static keys it holds, the Secrets it mounts, and how many others share its identity. Pure: the
//! caller asks the API server what the ServiceAccount may do (SubjectAccessReview) and passes the answers in.
//!
//! The score is additive, so an owner can read off what raises it:
//!
//! | fact | points |
//! |---|---:|
//! | its ServiceAccount may do everything (`*` on `*`, cluster-wide) | 60 |
//! | it may list Secrets in every namespace | 45 |
//! | it may read Secrets in its own namespace | 25 |
//! | it may create pods in its own namespace (run anything as any ServiceAccount there) | 15 |
//! | each static LLM key, literal or in a ConfigMap / in a Secret agentiam did not issue | 25 / 15, at most 40 together |
//! | each Secret it mounts or reads that agentiam did not issue | 5, at most 15 |
//! | each other workload or Agent sharing its ServiceAccount | 5, at most 15 |
//!
//! Only the strongest RBAC fact counts (everything > Secrets cluster-wide > Secrets here), plus pod creation.
//! The score is capped at 100; the level is `Critical` from 70, `High` from 40, `Medium` from 20, else `Low`.

use crate::api::{KeySource, RiskAssessment, RiskLevel, StaticKey};

/// What the ServiceAccount may do, as the API server answered. None for a question that could not be
/// asked (then it counts as allowed: an unknown reach is not a small one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    /// Every verb on every resource in every namespace.
    pub everything: Option<bool>,
    /// `list secrets` in every namespace.
    pub secrets_cluster_wide: Option<bool>,
    /// `get secrets` in its namespace.
    pub secrets_here: Option<bool>,
    /// `create pods` in its namespace.
    pub create_pods: Option<bool>,
}

/// What the assessment looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The ServiceAccount's reach.
    pub reach: Reach,
    /// Static LLM keys it holds.
    pub static_keys: &'a [StaticKey],
    /// Secrets its pods mount or read that agentiam did not issue.
    pub foreign_secrets: usize,
    /// Other workloads and Agents sharing its ServiceAccount.
    pub sharing: usize,
}

/// Assesses one discovered agent.
pub fn assess(i: Inputs<'_>) -> RiskAssessment {
    let mut score: u32 = 0;
    let mut reasons = Vec::new();
    let yes = |v: Option<bool>| v.unwrap_or(true);
    let unknown = |v: Option<bool>| if v.is_none() { " (could not be checked)" } else { "" };
    let r = i.reach;
    if yes(r.everything) {
        score += 60;
        reasons.push(format!("its ServiceAccount may do everything, cluster-wide{}", unknown(r.everything)));
    } else if yes(r.secrets_cluster_wide) {
        score += 45;
        reasons.push(format!(
            "its ServiceAccount may list Secrets in every namespace{}",
            unknown(r.secrets_cluster_wide)
        ));
    } else if yes(r.secrets_here) {
        score += 25;
        reasons
            .push(format!("its ServiceAccount may read Secrets in its namespace{}", unknown(r.secrets_here)));
    }
    if yes(r.create_pods) && !yes(r.everything) {
        score += 15;
        reasons
            .push(format!("its ServiceAccount may create pods in its namespace{}", unknown(r.create_pods)));
    }
    let keys: u32 = i
        .static_keys
        .iter()
        .map(|k| match k.source {
            KeySource::Literal | KeySource::ConfigMap => 25,
            KeySource::Secret => 15,
        })
        .sum();
    if keys > 0 {
        score += keys.min(40);
        reasons.push(format!("it holds {} static LLM key(s)", i.static_keys.len()));
    }
    if i.foreign_secrets > 0 {
        score += (5 * i.foreign_secrets as u32).min(15);
        reasons.push(format!("it mounts or reads {} Secret(s) agentiam did not issue", i.foreign_secrets));
    }
    if i.sharing > 0 {
        score += (5 * i.sharing as u32).min(15);
        reasons.push(format!("{} other workload(s) or Agent(s) share its ServiceAccount", i.sharing));
    }
    let score = score.min(100) as u8;
    let level = match score {
        70.. => RiskLevel::Critical,
        40..=69 => RiskLevel::High,
        20..=39 => RiskLevel::Medium,
        _ => RiskLevel::Low,
    };
    RiskAssessment { level, score, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(source: KeySource) -> StaticKey {
        StaticKey { container: "c".into(), name: "OPENAI_API_KEY".into(), source, from: None }
    }

    const NOTHING: Reach = Reach {
        everything: Some(false),
        secrets_cluster_wide: Some(false),
        secrets_here: Some(false),
        create_pods: Some(false),
    };

    fn run(reach: Reach, keys: &[StaticKey], foreign: usize, sharing: usize) -> RiskAssessment {
        assess(Inputs { reach, static_keys: keys, foreign_secrets: foreign, sharing })
    }

    #[test]
    fn a_contained_agent_is_low_and_each_fact_adds_its_points() {
        let r = run(NOTHING, &[], 0, 0);
        assert_eq!((r.level, r.score), (RiskLevel::Low, 0));
        assert!(r.reasons.is_empty());
        assert_eq!(run(NOTHING, &[key(KeySource::Literal)], 0, 0).score, 25);
        assert_eq!(run(NOTHING, &[key(KeySource::Secret)], 0, 0).score, 15);
        assert_eq!(run(NOTHING, &vec![key(KeySource::Literal); 3], 0, 0).score, 40, "keys cap at 40");
        assert_eq!(run(NOTHING, &[], 9, 0).score, 15, "Secrets cap at 15");
        assert_eq!(run(NOTHING, &[], 0, 2).score, 10);
        let here = Reach { secrets_here: Some(true), ..NOTHING };
        let r = run(here, &[key(KeySource::Literal)], 0, 0);
        assert_eq!((r.level, r.score), (RiskLevel::High, 50));
        assert_eq!(r.reasons.len(), 2);
    }

    #[test]
    fn the_strongest_rbac_fact_counts_and_an_unknown_reach_is_not_a_small_one() {
        let admin = Reach {
            everything: Some(true),
            secrets_cluster_wide: Some(true),
            secrets_here: Some(true),
            create_pods: Some(true),
        };
        let r = run(admin, &[key(KeySource::Literal)], 0, 0);
        assert_eq!((r.level, r.score), (RiskLevel::Critical, 85));
        assert_eq!(r.reasons.len(), 2, "everything includes the rest: {:?}", r.reasons);
        let wide = Reach { secrets_cluster_wide: Some(true), secrets_here: Some(true), ..NOTHING };
        assert_eq!(run(wide, &[], 0, 0).score, 45);
        let unknown = Reach::default();
        let r = run(unknown, &[], 0, 0);
        assert_eq!((r.level, r.score), (RiskLevel::High, 60));
        assert!(r.reasons[0].contains("could not be checked"));
        assert_eq!(run(admin, &vec![key(KeySource::Literal); 2], 3, 3).score, 100, "capped");
    }
}
