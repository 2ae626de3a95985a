//! Which agents and delegations a Revocation stops, and whether it still holds. Pure.
//!
//! One rule for every reader: the policy index (the in-memory deny state of the decision API, the token
//! endpoint and introspection), the Agent controller (phases, credentials), the Delegation controller and
//! the Revocation controller (status, counts) all ask these functions, so they can never disagree about
//! whom a Revocation reaches.
//!
//! - A Revocation reaches its own namespace. One in the operator's namespace with
//!   `target.namespaceSelector` reaches every namespace whose labels match instead (the cluster-wide stop).
//!   A namespaceSelector anywhere else is ignored (admission refuses it; this is the re-check), so it
//!   still reaches its own namespace: a misplaced field never spares anyone.
//! - It holds from creation until it is deleted, or for a Suspend, until `expiresAt`. An `expiresAt` that
//!   cannot be read holds forever (fail closed; the CRD schema refuses one anyway).
//! - Within its reach it stops the agent named by `agentRef`, every agent its `selector` matches (a selector
//!   with an operator this version does not know matches everything: for the kill switch, stopping too
//!   much is the safe mistake), or every agent for `all`. `delegationRef` stops a chain, not agents.
//! - When several hold, Revoke wins over Suspend (it is final), then the first by namespace and name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::{Agent, Revocation, RevocationMode};
use crate::registry::selector::matches;

/// The labels of a namespace by its name, None for a namespace the operator does not know (in the
/// operator, a lookup in the store of its Namespace watch).
pub type NamespaceLookup = Arc<dyn Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync>;

/// Where Revocations may reach: the operator's namespace (where cluster-wide ones live) and the labels of
/// the namespaces a namespaceSelector is matched against.
#[derive(Clone, Default)]
pub struct Reach {
    /// The operator's own namespace (None: unknown, so no Revocation reaches past its own namespace).
    pub operator_namespace: Option<String>,
    /// Namespace labels (None in single-namespace mode, where only the watched namespace exists).
    pub namespaces: Option<NamespaceLookup>,
}

impl std::fmt::Debug for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reach")
            .field("operator_namespace", &self.operator_namespace)
            .field("namespaces", &self.namespaces.is_some())
            .finish()
    }
}

impl Reach {
    /// Namespace labels from a fixed map (tests, and tools that read the namespaces once).
    pub fn with_labels(operator_namespace: &str, labels: HashMap<String, BTreeMap<String, String>>) -> Self {
        let labels = Arc::new(labels);
        Self {
            operator_namespace: Some(operator_namespace.to_owned()),
            namespaces: Some(Arc::new(move |ns: &str| labels.get(ns).cloned())),
        }
    }

    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.as_ref().and_then(|f| f(namespace))
    }
}

/// A Revocation that holds an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The Revocation's namespace.
    pub namespace: Arc<str>,
    /// The Revocation's name.
    pub name: Arc<str>,
    /// The Revocation's UID (None only for objects not read from the API server).
    pub uid: Option<Arc<str>>,
    /// Suspend or Revoke.
    pub mode: RevocationMode,
}

impl Hold {
    fn of(r: &Revocation) -> Self {
        Self {
            namespace: r.namespace().unwrap_or_default().into(),
            name: r.name_any().into(),
            uid: r.metadata.uid.as_deref().map(Into::into),
            mode: r.spec.mode,
        }
    }

    /// Where it stands among several that hold the same agent: lowest counts. Revoke before Suspend (it
    /// is final), then by namespace and name, so every reader picks the same one.
    fn rank(&self) -> (bool, &str, &str) {
        (self.mode != RevocationMode::Revoke, &self.namespace, &self.name)
    }

    /// Whether this hold counts rather than `other` when both hold an agent.
    pub fn outranks(&self, other: &Hold) -> bool {
        self.rank() < other.rank()
    }

    /// `namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// When a Suspend lifts by itself: None for no expiry (or a Revoke), and for an expiry that cannot be read
/// (which therefore never lifts).
pub fn expires_at(r: &Revocation) -> Option<Timestamp> {
    match r.spec.mode {
        RevocationMode::Revoke => None,
        RevocationMode::Suspend => r.spec.expires_at.as_deref().and_then(|t| t.parse().ok()),
    }
}

/// Whether the Revocation holds at `now`: not being deleted, and not a Suspend past its expiry.
pub fn in_force(r: &Revocation, now: Timestamp) -> bool {
    r.metadata.deletion_timestamp.is_none() && expires_at(r).is_none_or(|end| now < end)
}

/// Whether a Revocation is allowed the namespaceSelector it carries (it lives in the operator's namespace).
pub fn may_reach_other_namespaces(r: &Revocation, reach: &Reach) -> bool {
    reach.operator_namespace.is_some() && r.namespace() == reach.operator_namespace
}

/// Whether the emergency key rotation it asks for may happen (only from the operator's namespace).
pub fn may_rotate_keys(r: &Revocation, reach: &Reach) -> bool {
    may_reach_other_namespaces(r, reach)
}

/// Whether the Revocation reaches agents and delegations in `namespace`.
pub fn reaches_namespace(r: &Revocation, namespace: &str, reach: &Reach) -> bool {
    match &r.spec.target.namespace_selector {
        Some(sel) if may_reach_other_namespaces(r, reach) => match reach.labels(namespace) {
            Some(labels) => selects(sel, &labels),
            // A namespace not (yet) in the operator's view: its own namespace is always reached; any other
            // is reached once its labels are known. Stopping an agent in a namespace the watch has not
            // delivered yet would need the labels the selector is about.
            None => r.namespace().as_deref() == Some(namespace),
        },
        _ => r.namespace().as_deref() == Some(namespace),
    }
}

/// A label selector as the kill switch reads it: an operator this version does not know matches
/// everything, the opposite of policy selectors (where an unknown operator grants nothing).
fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    matches(sel, labels) || has_unknown_operator(sel)
}

fn has_unknown_operator(s: &LabelSelector) -> bool {
    s.match_expressions
        .iter()
        .flatten()
        .any(|e| !matches!(e.operator.as_str(), "In" | "NotIn" | "Exists" | "DoesNotExist"))
}

/// Whether `r` stops `agent` at `now` (in force, in reach, and the target names or selects it).
pub fn stops_agent(r: &Revocation, agent: &Agent, reach: &Reach, now: Timestamp) -> bool {
    let Some(ns) = agent.namespace() else { return false };
    if !in_force(r, now) || !reaches_namespace(r, &ns, reach) {
        return false;
    }
    let t = &r.spec.target;
    t.agent_ref.as_ref().is_some_and(|a| a.name == agent.name_any())
        || t.selector.as_ref().is_some_and(|s| selects(s, agent.labels()))
        || t.all == Some(true)
}

/// The Revocation that holds `agent` at `now`, if any: Revoke before Suspend, then by namespace and name.
pub fn hold_on(
    agent: &Agent,
    revocations: &[Arc<Revocation>],
    reach: &Reach,
    now: Timestamp,
) -> Option<Hold> {
    strongest(revocations.iter().filter(|r| stops_agent(r, agent, reach, now)))
}

/// Of several Revocations that hold, the one that counts: Revoke before Suspend, then by namespace and name.
fn strongest<'a>(holding: impl Iterator<Item = &'a Arc<Revocation>>) -> Option<Hold> {
    holding.map(|r| Hold::of(r)).min_by(|a, b| a.rank().cmp(&b.rank()))
}

/// Whether `r` targets the Delegation `namespace/name` by `delegationRef` at `now` (in force, in reach).
pub fn targets_delegation(
    r: &Revocation,
    namespace: &str,
    name: &str,
    reach: &Reach,
    now: Timestamp,
) -> bool {
    in_force(r, now)
        && reaches_namespace(r, namespace, reach)
        && r.spec.target.delegation_ref.as_ref().is_some_and(|d| d.name == name)
}

/// The Revocation that targets the Delegation `namespace/name` by `delegationRef` at `now`, if any (its
/// descendants follow through their chain).
pub fn hold_on_delegation(
    namespace: &str,
    name: &str,
    revocations: &[Arc<Revocation>],
    reach: &Reach,
    now: Timestamp,
) -> Option<Hold> {
    strongest(revocations.iter().filter(|r| targets_delegation(r, namespace, name, reach, now)))
}

/// Why the Delegation `namespace/name` granted to an agent in `grantee_phase` (the operator's record) is
/// ended for good by the kill switch, if it is: a Revocation targets it by `delegationRef`, or its grantee
/// was revoked. (A suspended grantee only pauses it: the chain decides Pending while its agent is not
/// Active.) Descendants follow through their chain. The one rule for the Delegation controller and
/// admission.
pub fn ends_delegation(
    namespace: &str,
    name: &str,
    grantee_phase: Option<crate::api::AgentPhase>,
    revocations: &[Arc<Revocation>],
    reach: &Reach,
    now: Timestamp,
) -> Option<String> {
    if let Some(h) = hold_on_delegation(namespace, name, revocations, reach, now) {
        return Some(format!("Revocation {} targets Delegation {name:?}", h.describe()));
    }
    (grantee_phase == Some(crate::api::AgentPhase::Revoked))
        .then(|| format!("the grantee of Delegation {name:?} was revoked by the kill switch"))
}

/// The namespaces `r` may reach, for mapping a change of it to the objects to look at again: None means
/// possibly every namespace (a cluster-wide Revocation).
pub fn namespaces_reached(r: &Revocation, reach: &Reach) -> Option<String> {
    match &r.spec.target.namespace_selector {
        Some(_) if may_reach_other_namespaces(r, reach) => None,
        _ => r.namespace(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{LocalRef, RevocationSpec, RevocationTarget};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn agent(ns: &str, name: &str, labels: &[(&str, &str)]) -> Agent {
        let mut a = Agent::new(
            name,
            crate::api::AgentSpec::new(
                crate::api::Owner { kind: crate::api::PrincipalKind::Team, name: "t".into() },
                "p",
            ),
        );
        a.metadata.namespace = Some(ns.into());
        a.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        a
    }

    /// A Revocation `ns/name` with UID `uid-<name>` (other modules' tests use it too).
    pub(crate) fn revocation(
        ns: &str,
        name: &str,
        mode: RevocationMode,
        target: RevocationTarget,
    ) -> Arc<Revocation> {
        let mut r = Revocation::new(
            name,
            RevocationSpec {
                target,
                mode,
                reason: "incident".into(),
                expires_at: None,
                stop_workloads: None,
                emergency: None,
            },
        );
        r.metadata.namespace = Some(ns.into());
        r.metadata.uid = Some(format!("uid-{name}"));
        Arc::new(r)
    }

    /// The target `agentRef: name`.
    pub(crate) fn by_name(name: &str) -> RevocationTarget {
        RevocationTarget { agent_ref: Some(LocalRef { name: name.into() }), ..Default::default() }
    }

    fn reach(labels: &[(&str, &[(&str, &str)])]) -> Reach {
        let namespaces = labels
            .iter()
            .map(|(ns, l)| ((*ns).to_owned(), l.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()))
            .collect();
        Reach::with_labels("agentiam-system", namespaces)
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn targets_by_name_selector_and_all_within_the_namespace() {
        let now = t("2026-12-07T00:00:00Z");
        let r = reach(&[]);
        let bot = agent("ns", "bot", &[("team", "support")]);
        let other_ns = agent("other", "bot", &[("team", "support")]);
        let named = revocation("ns", "a", RevocationMode::Suspend, by_name("bot"));
        assert!(stops_agent(&named, &bot, &r, now));
        assert!(!stops_agent(&named, &other_ns, &r, now), "its own namespace only");
        assert!(!stops_agent(&named, &agent("ns", "bot2", &[]), &r, now));
        let sel = |labels: &[(&str, &str)]| RevocationTarget {
            selector: Some(LabelSelector {
                match_labels: Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(stops_agent(
            &revocation("ns", "s", RevocationMode::Revoke, sel(&[("team", "support")])),
            &bot,
            &r,
            now
        ));
        assert!(!stops_agent(
            &revocation("ns", "s", RevocationMode::Revoke, sel(&[("team", "sales")])),
            &bot,
            &r,
            now
        ));
        let all = RevocationTarget { all: Some(true), ..Default::default() };
        assert!(stops_agent(&revocation("ns", "all", RevocationMode::Suspend, all.clone()), &bot, &r, now));
        assert!(!stops_agent(&revocation("ns", "all", RevocationMode::Suspend, all), &other_ns, &r, now));
        // A delegation target stops no agent.
        let d =
            RevocationTarget { delegation_ref: Some(LocalRef { name: "bot".into() }), ..Default::default() };
        assert!(!stops_agent(&revocation("ns", "d", RevocationMode::Revoke, d), &bot, &r, now));
    }

    #[test]
    fn an_unknown_selector_operator_stops_rather_than_spares() {
        let now = t("2026-12-07T00:00:00Z");
        let target = RevocationTarget {
            selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "team".into(),
                    operator: "Matches".into(),
                    values: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = revocation("ns", "x", RevocationMode::Suspend, target);
        assert!(stops_agent(&r, &agent("ns", "bot", &[]), &reach(&[]), now));
    }

    #[test]
    fn only_the_operator_namespace_reaches_other_namespaces() {
        let now = t("2026-12-07T00:00:00Z");
        let r =
            reach(&[("prod", &[("tier", "prod")]), ("dev", &[("tier", "dev")]), ("agentiam-system", &[])]);
        let prod_sel = LabelSelector {
            match_labels: Some([("tier".to_owned(), "prod".to_owned())].into()),
            ..Default::default()
        };
        let target =
            RevocationTarget { all: Some(true), namespace_selector: Some(prod_sel), ..Default::default() };
        let cluster = revocation("agentiam-system", "stop", RevocationMode::Suspend, target.clone());
        assert!(stops_agent(&cluster, &agent("prod", "bot", &[]), &r, now));
        assert!(!stops_agent(&cluster, &agent("dev", "bot", &[]), &r, now));
        assert!(
            !stops_agent(&cluster, &agent("agentiam-system", "bot", &[]), &r, now),
            "the selector decides"
        );
        assert_eq!(namespaces_reached(&cluster, &r), None);
        // An empty selector matches every namespace.
        let everywhere = RevocationTarget {
            all: Some(true),
            namespace_selector: Some(LabelSelector::default()),
            ..Default::default()
        };
        let everywhere = revocation("agentiam-system", "all", RevocationMode::Revoke, everywhere);
        for ns in ["prod", "dev", "agentiam-system"] {
            assert!(stops_agent(&everywhere, &agent(ns, "bot", &[]), &r, now), "{ns}");
        }
        // Elsewhere the field is ignored: its own namespace, and only that.
        let tenant = revocation("dev", "stop", RevocationMode::Suspend, target);
        assert!(stops_agent(&tenant, &agent("dev", "bot", &[]), &r, now));
        assert!(!stops_agent(&tenant, &agent("prod", "bot", &[]), &r, now));
        assert_eq!(namespaces_reached(&tenant, &r), Some("dev".into()));
        assert!(!may_rotate_keys(&tenant, &r) && may_rotate_keys(&cluster, &r));
        // Without a known operator namespace nothing reaches further than its own namespace.
        let unknown = Reach { operator_namespace: None, ..r };
        assert!(!stops_agent(&cluster, &agent("prod", "bot", &[]), &unknown, now));
    }

    #[test]
    fn a_suspend_lifts_at_its_expiry_and_a_revoke_never_expires() {
        let mut s = (*revocation("ns", "s", RevocationMode::Suspend, by_name("bot"))).clone();
        s.spec.expires_at = Some("2026-12-07T01:00:00Z".into());
        let bot = agent("ns", "bot", &[]);
        let r = reach(&[]);
        assert!(stops_agent(&s, &bot, &r, t("2026-12-07T00:59:59Z")));
        assert!(!stops_agent(&s, &bot, &r, t("2026-12-07T01:00:00Z")));
        s.spec.expires_at = Some("not a time".into());
        assert!(stops_agent(&s, &bot, &r, t("2099-01-01T00:00:00Z")), "unreadable: holds");
        let mut k = s.clone();
        k.spec.mode = RevocationMode::Revoke;
        k.spec.expires_at = Some("2026-12-07T01:00:00Z".into());
        assert!(stops_agent(&k, &bot, &r, t("2099-01-01T00:00:00Z")), "a Revoke is final");
        s.spec.expires_at = None;
        s.metadata.deletion_timestamp = Some(Time(t("2026-12-07T00:00:00Z")));
        assert!(!stops_agent(&s, &bot, &r, t("2026-12-07T00:00:01Z")), "being deleted: lifted");
    }

    #[test]
    fn revoke_wins_over_suspend_then_the_first_by_name() {
        let now = t("2026-12-07T00:00:00Z");
        let bot = agent("ns", "bot", &[]);
        let all = RevocationTarget { all: Some(true), ..Default::default() };
        let list = vec![
            revocation("ns", "a-suspend", RevocationMode::Suspend, by_name("bot")),
            revocation("ns", "z-revoke", RevocationMode::Revoke, all.clone()),
            revocation("ns", "m-revoke", RevocationMode::Revoke, by_name("bot")),
        ];
        let hold = hold_on(&bot, &list, &reach(&[]), now).unwrap();
        assert_eq!(
            (&*hold.name, hold.mode, hold.uid.as_deref()),
            ("m-revoke", RevocationMode::Revoke, Some("uid-m-revoke"))
        );
        assert_eq!(hold_on(&agent("ns", "bot2", &[]), &list[..1], &reach(&[]), now), None);
        let d = RevocationTarget {
            delegation_ref: Some(LocalRef { name: "grant".into() }),
            ..Default::default()
        };
        let list = vec![revocation("ns", "d", RevocationMode::Suspend, d)];
        assert!(hold_on_delegation("ns", "grant", &list, &reach(&[]), now).is_some());
        assert!(hold_on_delegation("ns", "other", &list, &reach(&[]), now).is_none());
        assert!(hold_on_delegation("other", "grant", &list, &reach(&[]), now).is_none());
    }
}
