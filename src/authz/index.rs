//! The in-memory index: every Agent, compiled AgentPolicy and Revocation in scope, arranged so a decision
//! is a few hash lookups and a short candidate scan. Pure: built from objects the caller read (from watch
//! caches in the operator, from one list call in `kubectl agentiam can-i`).
//!
//! A [`Snapshot`] is immutable. The operator builds a new one on every change and swaps it in atomically,
//! so a decision always sees one consistent state and never waits for a rebuild.

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;

use crate::api::{Agent, AgentPhase, AgentPolicy, DesiredState, PolicyMode, Revocation};
use crate::registry::revocation::{self, Hold, Reach};
use crate::registry::selector::{credential_ttl_cap, governs};
use crate::registry::validate::parse_duration;

use super::compile::{CompiledPolicy, CompiledRule, compile};
use super::ratelimit::agent_key;

/// Marks a candidate of a rule that does not constrain the resource (tool-only rules).
pub(super) const NO_PATTERN: u16 = u16::MAX;

/// One place a rule may match: the rule and which of its resource patterns to try.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub(super) rule: u32,
    pub(super) pattern: u16,
}

/// Candidates for one action, split by the resource's first segment.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    pub(super) by_prefix: HashMap<Box<str>, Vec<Candidate>>,
    pub(super) other: Vec<Candidate>,
}

impl Bucket {
    fn add(&mut self, rule_index: u32, rule: &CompiledRule) {
        if rule.resources.is_empty() {
            self.other.push(Candidate { rule: rule_index, pattern: NO_PATTERN });
        }
        for (i, p) in rule.resources.iter().enumerate() {
            let candidate = Candidate { rule: rule_index, pattern: u16::try_from(i).unwrap_or(NO_PATTERN) };
            match p.literal_prefix() {
                Some(prefix) => self.by_prefix.entry(prefix.into()).or_default().push(candidate),
                None => self.other.push(candidate),
            }
        }
    }
}

/// The combined rules of one set of policies (agents governed by the same policies share one).
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Every rule, ordered by policy name then position in the policy.
    pub(super) rules: Vec<Arc<CompiledRule>>,
    pub(super) by_action: HashMap<Box<str>, Bucket>,
    pub(super) any_action: Bucket,
    /// Governing policies that do not compile, with their modes: they deny everything.
    pub(super) broken: Vec<(Arc<str>, PolicyMode)>,
    /// How many governing policies are in Enforce mode (broken ones included).
    pub(super) enforce_policies: u32,
    /// How many governing policies are in Audit mode (broken ones included).
    pub(super) audit_policies: u32,
}

impl RuleSet {
    fn build(policies: &[&CompiledPolicy]) -> Self {
        let mut set = Self::default();
        for p in policies {
            match p.mode {
                PolicyMode::Enforce => set.enforce_policies += 1,
                PolicyMode::Audit => set.audit_policies += 1,
            }
            if p.is_broken() {
                set.broken.push((Arc::clone(&p.name), p.mode));
                continue;
            }
            for rule in &p.rules {
                let Ok(index) = u32::try_from(set.rules.len()) else { continue };
                if rule.any_action {
                    set.any_action.add(index, rule);
                } else {
                    for a in &rule.actions {
                        set.by_action.entry(a.clone()).or_default().add(index, rule);
                    }
                }
                set.rules.push(Arc::clone(rule));
            }
        }
        set
    }

    /// How many rules the set holds.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the set holds no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule has a rate limit (which only a caller holding the live counters can apply).
    pub fn has_rate_limits(&self) -> bool {
        self.rules.iter().any(|r| r.rate_limit.is_some())
    }
}

/// Where an agent stands: its phase and trust score. In the operator both come from its own records (the
/// ledger), never from the status; `kubectl agentiam can-i` can only read what the status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Current phase (None: nothing decided yet).
    pub phase: Option<AgentPhase>,
    /// Current trust score (0 when unknown).
    pub trust_score: u16,
}

/// What a decision needs to know about an agent, from its spec and metadata (which only its author writes).
#[derive(Debug, Clone)]
pub struct AgentFacts {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// The object UID tokens are bound to.
    pub uid: Arc<str>,
    /// What the status reports (phase, trust score). Only `kubectl agentiam can-i` uses it, for want of
    /// anything better; the operator decides from its ledger.
    pub reported: Standing,
    /// What its owner asked for: a pending suspension denies before the controller catches up.
    pub desired: DesiredState,
    /// Whether the object is being deleted.
    pub deleting: bool,
    /// The audiences its spec grants now: a token for any other audience is refused at once, even one
    /// issued before the audience was removed.
    pub audiences: Arc<[String]>,
    /// The credential lifetime its spec asks for.
    pub requested_ttl: Option<std::time::Duration>,
    /// The lowest credential lifetime cap of the policies that govern it.
    pub ttl_cap: Option<std::time::Duration>,
    /// The Revocation that holds it, if any ([`revocation::hold_on`]).
    pub revoked_by: Option<Hold>,
    /// The rules of every policy that governs it.
    pub rules: Arc<RuleSet>,
    pub(super) limiter_key: u64,
}

/// Agent UIDs by namespace and name.
type ByName = HashMap<(Arc<str>, Arc<str>), Arc<str>>;

/// An immutable view of everything decisions depend on.
///
/// Cloning copies the per-agent facts (a few reference counts each) and shares the rest, which is what
/// [`Snapshot::with_holds`] needs to stop agents without a rebuild.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    by_uid: HashMap<Arc<str>, AgentFacts>,
    by_name: Arc<ByName>,
    policies: Arc<[PolicySummary]>,
}

/// What the index knows about one policy, for its status.
#[derive(Debug, Clone)]
pub struct PolicySummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The generation compiled.
    pub generation: Option<i64>,
    /// How many agents it governs.
    pub matched_agents: u32,
    /// Compilation errors (non-empty: the policy denies everything).
    pub errors: Vec<String>,
    /// How many rules compiled.
    pub rules: usize,
}

impl Snapshot {
    /// The facts of the agent with this UID.
    pub fn agent(&self, uid: &str) -> Option<&AgentFacts> {
        self.by_uid.get(uid)
    }

    /// The facts of the agent `namespace/name`.
    pub fn agent_by_name(&self, namespace: &str, name: &str) -> Option<&AgentFacts> {
        let key: (Arc<str>, Arc<str>) = (namespace.into(), name.into());
        self.by_name.get(&key).and_then(|uid| self.by_uid.get(uid))
    }

    /// How many agents are indexed.
    pub fn agents(&self) -> usize {
        self.by_uid.len()
    }

    /// The UIDs of the agents a Revocation holds.
    pub fn held(&self) -> impl Iterator<Item = &str> {
        self.by_uid.values().filter(|f| f.revoked_by.is_some()).map(|f| &*f.uid)
    }

    /// Every policy with what the index made of it.
    pub fn policies(&self) -> &[PolicySummary] {
        &self.policies
    }

    /// This snapshot with each agent of `holds` also held by its Revocation, where that hold outranks
    /// the one it has ([`Hold::outranks`], the same order a rebuild uses). Agents it does not know are
    /// skipped (a rebuild indexes them with their holds). Nothing else changes, so the kill switch can deny
    /// before a full rebuild, which takes a hundred milliseconds or more at ten thousand agents.
    pub fn with_holds(&self, holds: &[(Arc<str>, Hold)]) -> Snapshot {
        let mut next = self.clone();
        for (uid, hold) in holds {
            if let Some(facts) = next.by_uid.get_mut(uid)
                && facts.revoked_by.as_ref().is_none_or(|held| hold.outranks(held))
            {
                facts.revoked_by = Some(hold.clone());
            }
        }
        next
    }
}

/// The UID an agent is indexed under: its object UID, or `namespace/name` for objects not read from the
/// API server.
fn uid_of(agent: &Agent) -> Arc<str> {
    agent
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", agent.namespace().unwrap_or_default(), agent.name_any()))
        .into()
}

/// The agents `revocations` stop at `now`, each with the strongest of them that holds it, for
/// [`Snapshot::with_holds`]. The same rule as a rebuild ([`revocation::hold_on`]), over the given
/// Revocations only.
pub fn holds_from(
    revocations: &[Arc<Revocation>],
    agents: &[Arc<Agent>],
    reach: &Reach,
    now: jiff::Timestamp,
) -> Vec<(Arc<str>, Hold)> {
    if revocations.is_empty() {
        return Vec::new();
    }
    agents
        .iter()
        .filter_map(|a| revocation::hold_on(a, revocations, reach, now).map(|h| (uid_of(a), h)))
        .collect()
}

/// Builds snapshots, keeping compiled policies between builds so an agent status change does not recompile
/// a thousand rules.
#[derive(Debug, Default)]
pub struct Builder {
    compiled: HashMap<String, (Option<i64>, Arc<CompiledPolicy>)>,
    reach: Reach,
}

impl Builder {
    /// A builder for an operator whose Revocations reach as `reach` says (the default reaches no further
    /// than each Revocation's own namespace).
    pub fn with_reach(reach: Reach) -> Self {
        Self { reach, ..Self::default() }
    }

    /// Builds a snapshot from the objects in scope, as they stand now. Objects without a UID (not read
    /// from the API server) are still indexed under their namespace/name.
    pub fn build(
        &mut self,
        agents: &[Arc<Agent>],
        policies: &[Arc<AgentPolicy>],
        revocations: &[Arc<Revocation>],
    ) -> Snapshot {
        let now = jiff::Timestamp::now();
        let mut policies: Vec<&Arc<AgentPolicy>> = policies.iter().collect();
        policies.sort_by_key(|p| (p.namespace(), p.name_any()));
        let mut keep = HashMap::with_capacity(policies.len());
        let compiled: Vec<Arc<CompiledPolicy>> = policies
            .iter()
            .map(|p| {
                let key = p
                    .metadata
                    .uid
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()));
                let generation = p.metadata.generation;
                let c = match self.compiled.get(&key) {
                    Some((g, c)) if generation.is_some() && *g == generation => Arc::clone(c),
                    _ => Arc::new(compile(p)),
                };
                keep.insert(key, (generation, Arc::clone(&c)));
                c
            })
            .collect();
        self.compiled = keep;

        let mut matched = vec![0u32; compiled.len()];
        let mut sets: HashMap<Vec<usize>, Arc<RuleSet>> = HashMap::new();
        let mut by_uid = HashMap::with_capacity(agents.len());
        let mut by_name = HashMap::with_capacity(agents.len());
        for agent in agents {
            let governing: Vec<usize> =
                policies.iter().enumerate().filter(|(_, p)| governs(p, agent)).map(|(i, _)| i).collect();
            for &i in &governing {
                if let Some(m) = matched.get_mut(i) {
                    *m += 1;
                }
            }
            let rules = Arc::clone(sets.entry(governing.clone()).or_insert_with(|| {
                let chosen: Vec<&CompiledPolicy> =
                    governing.iter().filter_map(|&i| compiled.get(i)).map(|c| &**c).collect();
                Arc::new(RuleSet::build(&chosen))
            }));
            let namespace: Arc<str> = agent.namespace().unwrap_or_default().into();
            let name: Arc<str> = agent.name_any().into();
            let uid = uid_of(agent);
            let status = agent.status.as_ref();
            let creds = agent.spec.credentials.as_ref();
            let governing_policies = governing.iter().filter_map(|&i| policies.get(i)).map(|p| &***p);
            let facts = AgentFacts {
                namespace: Arc::clone(&namespace),
                name: Arc::clone(&name),
                uid: Arc::clone(&uid),
                reported: Standing {
                    phase: status.and_then(|s| s.phase),
                    trust_score: status.and_then(|s| s.trust_score).unwrap_or(0),
                },
                desired: agent.spec.lifecycle.as_ref().map(|l| l.desired_state).unwrap_or_default(),
                deleting: agent.metadata.deletion_timestamp.is_some(),
                audiences: creds.map(|c| c.audiences.clone()).unwrap_or_default().into(),
                requested_ttl: creds.and_then(|c| c.ttl.as_deref()).and_then(|t| parse_duration(t).ok()),
                ttl_cap: credential_ttl_cap(governing_policies, agent),
                revoked_by: revocation::hold_on(agent, revocations, &self.reach, now),
                rules,
                limiter_key: agent_key(&uid),
            };
            by_name.insert((namespace, name), Arc::clone(&uid));
            by_uid.insert(uid, facts);
        }
        let summaries = compiled
            .iter()
            .zip(matched)
            .map(|(c, matched_agents)| PolicySummary {
                namespace: c.namespace.clone(),
                name: c.name.to_string(),
                generation: c.generation,
                matched_agents,
                errors: c.errors.clone(),
                rules: c.rules.len(),
            })
            .collect();
        Snapshot { by_uid, by_name: Arc::new(by_name), policies: summaries }
    }
}
