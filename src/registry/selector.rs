//! Label selectors and which AgentPolicies govern an agent. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::{Agent, AgentPolicy};
use crate::registry::validate::parse_duration;

/// Whether a label selector matches `labels`, as the API server's label selectors do; an unknown operator
/// never matches (fail closed).
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match (e.operator.as_str(), labels.get(&e.key)) {
            ("In", Some(v)) => values.contains(v),
            ("In", None) => false,
            ("NotIn", Some(v)) => !values.contains(v),
            ("NotIn", None) => true,
            ("Exists", v) => v.is_some(),
            ("DoesNotExist", v) => v.is_none(),
            // Unknown operators never match: fail closed.
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether `policy` governs `agent`: same namespace, and the agent is named in `spec.agents.names`, matched
/// by `spec.agents.selector`, or names the policy in its own `spec.policyRefs`.
pub fn governs(policy: &AgentPolicy, agent: &Agent) -> bool {
    if policy.namespace() != agent.namespace() {
        return false;
    }
    let name = agent.name_any();
    let sel = &policy.spec.agents;
    sel.names.contains(&name)
        || sel.selector.as_ref().is_some_and(|s| matches(s, agent.labels()))
        || agent.spec.policy_refs.iter().any(|r| r.name == policy.name_any())
}

/// The lowest `credentialTTLCap` of the policies that govern `agent`. A cap that does not parse counts as
/// the shortest lifetime allowed (1m): a broken policy must shorten credentials, never lengthen them.
pub fn credential_ttl_cap<'a>(
    policies: impl IntoIterator<Item = &'a AgentPolicy>,
    agent: &Agent,
) -> Option<Duration> {
    policies
        .into_iter()
        .filter(|p| governs(p, agent))
        .filter_map(|p| p.spec.credential_ttl_cap.as_deref())
        .map(|cap| parse_duration(cap).unwrap_or(Duration::from_secs(60)))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentSelector, AgentSpec, LocalRef, Owner, PrincipalKind};

    fn agent(name: &str, labels: &[(&str, &str)], refs: &[&str]) -> Agent {
        let mut a =
            Agent::new(name, AgentSpec::new(Owner { kind: PrincipalKind::Team, name: "t".into() }, "p"));
        a.metadata.namespace = Some("ns".into());
        a.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        a.spec.policy_refs = refs.iter().map(|r| LocalRef { name: r.to_string() }).collect();
        a
    }

    fn policy(name: &str, names: &[&str], selector: Option<LabelSelector>, cap: Option<&str>) -> AgentPolicy {
        let mut p: AgentPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"agents": {}, "rules": [{"name": "r", "effect": "Allow", "actions": ["read"], "resources": ["x"]}]},
        }))
        .unwrap();
        p.spec.agents = AgentSelector { names: names.iter().map(|n| n.to_string()).collect(), selector };
        p.spec.credential_ttl_cap = cap.map(String::from);
        p
    }

    #[test]
    fn selector_semantics() {
        let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let expr = |op: &str, vals: Option<Vec<&str>>| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "a".into(),
                    operator: op.into(),
                    values: vals.map(|v| v.into_iter().map(String::from).collect()),
                },
            ]),
        };
        assert!(matches(&expr("In", Some(vec!["1", "2"])), &labels));
        assert!(!matches(&expr("NotIn", Some(vec!["1"])), &labels));
        assert!(matches(&expr("Exists", None), &labels));
        assert!(!matches(&expr("DoesNotExist", None), &labels));
        assert!(!matches(&expr("Matches", None), &labels), "unknown operators fail closed");
        assert!(matches(&LabelSelector::default(), &labels), "the empty selector matches everything");
    }

    #[test]
    fn policies_govern_by_name_label_or_reference_in_the_same_namespace() {
        let a = agent("bot", &[("team", "x")], &["by-ref"]);
        let by_label = LabelSelector {
            match_labels: Some([("team".to_string(), "x".to_string())].into()),
            match_expressions: None,
        };
        assert!(governs(&policy("p", &["bot"], None, None), &a));
        assert!(governs(&policy("p", &[], Some(by_label), None), &a));
        assert!(governs(&policy("by-ref", &["other"], None, None), &a));
        assert!(!governs(&policy("p", &["other"], None, None), &a));
        let mut elsewhere = policy("p", &["bot"], None, None);
        elsewhere.metadata.namespace = Some("other".into());
        assert!(!governs(&elsewhere, &a));
    }

    #[test]
    fn the_lowest_cap_wins_and_a_broken_cap_shortens() {
        let a = agent("bot", &[], &[]);
        let ps = [
            policy("a", &["bot"], None, Some("15m")),
            policy("b", &["bot"], None, Some("5m")),
            policy("c", &["x"], None, Some("1m")),
        ];
        assert_eq!(credential_ttl_cap(&ps, &a), Some(Duration::from_secs(300)));
        assert_eq!(credential_ttl_cap(&ps[..1], &a), Some(Duration::from_secs(900)));
        assert_eq!(
            credential_ttl_cap(&[policy("d", &["bot"], None, Some("soon"))], &a),
            Some(Duration::from_secs(60))
        );
        assert_eq!(credential_ttl_cap(&[] as &[AgentPolicy], &a), None);
    }
}
