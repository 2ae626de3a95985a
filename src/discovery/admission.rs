//! Workload admission, pure: what the validating webhook on Pods and the workload kinds
//! ([`crate::webhook::workloads`]) decides for a namespace that asks for it, from the object's
//! classification by the discovery signatures and the Agent it names.
//!
//! - The mode is a namespace label ([`MODE_LABEL`]): `off` (or no label: the webhook is not even called),
//!   `audit` (record only), `warn` (admission warnings) and `enforce` (deny). The API server picks the
//!   webhook by the label, one webhook per mode, so the operator never looks the namespace up. A value this
//!   version does not know is enforced (fail closed); the chart's admission policy refuses such values,
//!   and lets only those allowed to set the label change it.
//! - Only a workload that looks like an agent (the discovery threshold) is judged. It must name a
//!   registered, Active Agent (label `agentiam.dev/agent` on its pods), and hold no static LLM provider
//!   key: not as a literal value, not from a ConfigMap, not from a Secret agentiam did not issue.
//! - Existing workloads are reported, never broken: an update is refused only for what it adds, and
//!   objects the built-in workload controllers create (a Deployment's ReplicaSets, their Pods) are judged
//!   at the object they come from, so a rollout or a rescheduled pod of a workload admitted before
//!   enforcement still runs. What remains is a warning and an audit record.

use std::collections::BTreeSet;

use crate::api::{AgentPhase, KeySource, StaticKey};

use super::classify::Detection;

/// The namespace label that sets the mode.
pub const MODE_LABEL: &str = "agentiam.dev/workload-admission";

/// How a namespace's workloads are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Not judged (no label, or `off`).
    Off,
    /// Judged and recorded, always admitted.
    Audit,
    /// Judged, recorded, admitted with warnings.
    Warn,
    /// Judged, recorded, refused when a problem is new.
    Enforce,
}

impl Mode {
    /// Every mode the webhook serves, in the order of the webhooks.
    pub const JUDGED: [Mode; 3] = [Mode::Audit, Mode::Warn, Mode::Enforce];

    /// The mode a label value sets: none or `off` is Off; a value this version does not know is Enforce.
    pub fn of(value: Option<&str>) -> Mode {
        match value {
            None | Some("off") => Mode::Off,
            Some("audit") => Mode::Audit,
            Some("warn") => Mode::Warn,
            Some(_) => Mode::Enforce,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Audit => "audit",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }

    /// The mode a webhook path segment names (the segment is [`Mode::as_str`]).
    pub fn from_path(segment: &str) -> Option<Mode> {
        Mode::JUDGED.into_iter().find(|m| m.as_str() == segment)
    }
}

/// The Agent a workload's pods name with `agentiam.dev/agent`, as the operator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The pods name no Agent.
    None,
    /// They name one that is not registered in the namespace.
    Unknown(String),
    /// They name a registered Agent, in this phase (None: the operator has not decided one yet).
    Registered {
        /// Its name.
        name: String,
        /// Its recorded phase.
        phase: Option<AgentPhase>,
    },
}

/// One thing wrong with a workload that looks like an agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// Its pods name no Agent.
    NoAgent,
    /// They name an Agent that is not registered.
    UnknownAgent(String),
    /// They name an Agent that is not Active.
    AgentNotActive {
        /// The Agent.
        name: String,
        /// Its phase, as shown.
        phase: String,
    },
    /// It holds a static provider key.
    StaticKey(StaticKey),
}

impl Problem {
    /// What is wrong, and what to do instead. Never a value: keys are named, not shown.
    pub fn describe(&self) -> String {
        match self {
            Problem::NoAgent => format!(
                "it names no registered Agent: register one (an Agent with an owner, or `kubectl agentiam adopt` \
                 of its shadow record) and label its pods {}=<agent name>",
                crate::names::AGENT_LABEL
            ),
            Problem::UnknownAgent(name) => format!(
                "its pods name Agent {name}, which is not registered in this namespace: create it (with an owner) first"
            ),
            Problem::AgentNotActive { name, phase } => format!(
                "its pods name Agent {name}, which is {phase}, not Active: fix or resume the Agent first"
            ),
            Problem::StaticKey(k) => {
                let place = if k.container.starts_with("volume:") {
                    format!("{} mounts key {}", k.container.replacen("volume:", "volume ", 1), k.name)
                } else {
                    format!("container {} gets {}", k.container, k.name)
                };
                let source = match (&k.source, &k.from) {
                    (KeySource::Literal, _) => " as a literal value".to_owned(),
                    (KeySource::Secret, Some(s)) => format!(" from Secret {s}, which agentiam did not issue"),
                    (KeySource::ConfigMap, Some(m)) => format!(" from ConfigMap {m}"),
                    (_, None) => String::new(),
                };
                format!(
                    "{place}{source}: a static LLM provider key; remove it, keep provider keys out of agent \
                     workloads (with a broker or gateway that holds them) and let the agent authenticate with \
                     the credentials agentiam issues its Agent"
                )
            }
        }
    }
}

/// What admission makes of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// It looks like an agent (the discovery threshold).
    pub agentic: bool,
    /// The signatures that matched, by name.
    pub signatures: Vec<String>,
    /// What is wrong with it (empty for an agent that is in order, and for anything else).
    pub problems: BTreeSet<Problem>,
}

/// Judges an object that `detection` describes, whose pods name `claim`.
pub fn judge(detection: &Detection, threshold: u8, claim: &Claim) -> Judgement {
    if !detection.is_agent(threshold) {
        return Judgement::default();
    }
    let mut problems: BTreeSet<Problem> = match claim {
        Claim::None => [Problem::NoAgent].into(),
        Claim::Unknown(name) => [Problem::UnknownAgent(name.clone())].into(),
        Claim::Registered { phase: Some(AgentPhase::Active), .. } => BTreeSet::new(),
        Claim::Registered { name, phase } => [Problem::AgentNotActive {
            name: name.clone(),
            phase: phase.map_or("not yet decided", |p| p.as_str()).to_owned(),
        }]
        .into(),
    };
    problems.extend(detection.static_keys.iter().cloned().map(Problem::StaticKey));
    Judgement {
        agentic: true,
        signatures: detection.evidence.iter().map(|e| e.signature.clone()).collect(),
        problems,
    }
}

/// What the webhook answers and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not an agent, or nothing to decide: admitted, not recorded.
    Ignored,
    /// Admitted; `warnings` go back to the client (warn and enforce modes). Recorded.
    Admitted {
        /// Admission warnings.
        warnings: Vec<String>,
    },
    /// Refused with this message. Recorded.
    Refused(String),
}

/// What the request is.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The kind (`Deployment`, `Pod`, ...).
    pub kind: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// A built-in workload controller made the request (it acts for an object admission judged).
    pub by_workload_controller: bool,
}

/// Decides in `mode` for an object judged `now` (and `before`, for an update: the object it replaces).
pub fn decide(mode: Mode, ctx: Context<'_>, now: &Judgement, before: Option<&Judgement>) -> Outcome {
    if mode == Mode::Off || !now.agentic {
        return Outcome::Ignored;
    }
    let what = format!("{} {}/{}", ctx.kind, ctx.namespace, ctx.name);
    let looks = format!("it looks like an AI agent ({})", now.signatures.join(", "));
    if now.problems.is_empty() {
        return Outcome::Admitted { warnings: Vec::new() };
    }
    // Existing problems are reported, never enforced: the old object had them, or the object comes from
    // one that admission judged (or that predates enforcement).
    let known = |p: &Problem| ctx.by_workload_controller || before.is_some_and(|b| b.problems.contains(p));
    let (old, new): (Vec<&Problem>, Vec<&Problem>) = now.problems.iter().partition(|p| known(p));
    let lines = |ps: &[&Problem]| ps.iter().map(|p| p.describe()).collect::<Vec<_>>();
    match mode {
        Mode::Audit => Outcome::Admitted { warnings: Vec::new() },
        Mode::Warn => Outcome::Admitted {
            warnings: lines(&now.problems.iter().collect::<Vec<_>>())
                .into_iter()
                .map(|l| format!("agentiam: {what}: {l}"))
                .collect(),
        },
        Mode::Enforce if new.is_empty() => Outcome::Admitted {
            warnings: lines(&old)
                .into_iter()
                .map(|l| format!("agentiam: {what} (admitted, as it was before): {l}"))
                .collect(),
        },
        Mode::Enforce => {
            let numbered: Vec<String> =
                lines(&new).iter().enumerate().map(|(i, l)| format!("({}) {l}", i + 1)).collect();
            Outcome::Refused(format!(
                "agentiam refused {what}: namespace {} enforces agent workload admission ({}={}), and {looks}, but {}",
                ctx.namespace,
                MODE_LABEL,
                Mode::Enforce.as_str(),
                numbered.join("; ")
            ))
        }
        Mode::Off => Outcome::Ignored,
    }
}

/// The usernames of the built-in controllers that create workload objects from others: the
/// kube-controller-manager itself (without `--use-service-account-credentials`) and its controllers'
/// ServiceAccounts (with it). Nobody else can authenticate as them without impersonation rights.
pub fn is_workload_controller(username: &str) -> bool {
    const CONTROLLERS: [&str; 7] = [
        "replicaset-controller",
        "deployment-controller",
        "statefulset-controller",
        "daemon-set-controller",
        "job-controller",
        "cronjob-controller",
        "replication-controller",
    ];
    username == "system:kube-controller-manager"
        || username
            .strip_prefix("system:serviceaccount:kube-system:")
            .is_some_and(|sa| CONTROLLERS.contains(&sa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Evidence, SignatureKind};

    fn detection(confidence: u8, keys: &[(&str, KeySource, Option<&str>)]) -> Detection {
        Detection {
            confidence,
            evidence: vec![Evidence {
                signature: "openai-api-key".into(),
                kind: SignatureKind::Env,
                confidence,
                matches: vec!["container app: env OPENAI_API_KEY".into()],
            }],
            static_keys: keys
                .iter()
                .map(|(name, source, from)| StaticKey {
                    container: "app".into(),
                    name: (*name).into(),
                    source: source.clone(),
                    from: from.map(str::to_owned),
                })
                .collect(),
        }
    }

    fn ctx(by_workload_controller: bool) -> Context<'static> {
        Context { kind: "Deployment", name: "bot", namespace: "team-a", by_workload_controller }
    }

    fn active() -> Claim {
        Claim::Registered { name: "bot".into(), phase: Some(AgentPhase::Active) }
    }

    #[test]
    fn the_label_sets_the_mode_and_an_unknown_value_enforces() {
        assert_eq!(Mode::of(None), Mode::Off);
        assert_eq!(Mode::of(Some("off")), Mode::Off);
        assert_eq!(Mode::of(Some("audit")), Mode::Audit);
        assert_eq!(Mode::of(Some("warn")), Mode::Warn);
        assert_eq!(Mode::of(Some("enforce")), Mode::Enforce);
        assert_eq!(Mode::of(Some("Off")), Mode::Enforce, "case matters: fail closed");
        assert_eq!(Mode::of(Some("")), Mode::Enforce);
        for m in Mode::JUDGED {
            assert_eq!(Mode::from_path(m.as_str()), Some(m));
        }
        assert_eq!(Mode::from_path("off"), None);
    }

    #[test]
    fn ordinary_workloads_and_agents_in_order_pass_in_every_mode() {
        let plain = judge(&detection(10, &[]), 50, &Claim::None);
        assert!(!plain.agentic);
        let fine = judge(&detection(90, &[]), 50, &active());
        assert!(fine.agentic && fine.problems.is_empty());
        for m in [Mode::Off, Mode::Audit, Mode::Warn, Mode::Enforce] {
            assert_eq!(decide(m, ctx(false), &plain, None), Outcome::Ignored);
            let expected =
                if m == Mode::Off { Outcome::Ignored } else { Outcome::Admitted { warnings: vec![] } };
            assert_eq!(decide(m, ctx(false), &fine, None), expected, "{m:?}");
        }
    }

    #[test]
    fn each_mode_answers_a_literal_key_in_an_unregistered_agent_its_own_way() {
        let bad = judge(&detection(95, &[("OPENAI_API_KEY", KeySource::Literal, None)]), 50, &Claim::None);
        assert_eq!(bad.problems.len(), 2);
        assert_eq!(decide(Mode::Audit, ctx(false), &bad, None), Outcome::Admitted { warnings: vec![] });
        let Outcome::Admitted { warnings } = decide(Mode::Warn, ctx(false), &bad, None) else { panic!() };
        assert_eq!(warnings.len(), 2);
        assert!(warnings.iter().all(|w| w.starts_with("agentiam: Deployment team-a/bot: ")), "{warnings:?}");
        let Outcome::Refused(m) = decide(Mode::Enforce, ctx(false), &bad, None) else { panic!() };
        assert!(m.contains("namespace team-a enforces agent workload admission"), "{m}");
        assert!(m.contains("(openai-api-key)"), "{m}");
        assert!(m.contains("(1) it names no registered Agent"), "{m}");
        assert!(m.contains("container app gets OPENAI_API_KEY as a literal value"), "{m}");
        assert!(m.contains("let the agent authenticate with the credentials agentiam issues"), "{m}");
    }

    #[test]
    fn an_update_is_refused_only_for_what_it_adds_and_controllers_are_never_refused() {
        let claim = active();
        let before = judge(&detection(95, &[("OPENAI_API_KEY", KeySource::Secret, Some("llm"))]), 50, &claim);
        let same = before.clone();
        let Outcome::Admitted { warnings } = decide(Mode::Enforce, ctx(false), &same, Some(&before)) else {
            panic!()
        };
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("(admitted, as it was before)"), "{warnings:?}");
        assert!(warnings[0].contains("from Secret llm, which agentiam did not issue"), "{warnings:?}");
        let worse = judge(
            &detection(
                95,
                &[
                    ("OPENAI_API_KEY", KeySource::Secret, Some("llm")),
                    ("ANTHROPIC_API_KEY", KeySource::Literal, None),
                ],
            ),
            50,
            &claim,
        );
        let Outcome::Refused(m) = decide(Mode::Enforce, ctx(false), &worse, Some(&before)) else { panic!() };
        assert!(m.contains("ANTHROPIC_API_KEY") && !m.contains("OPENAI_API_KEY"), "only the new one: {m}");
        assert!(matches!(decide(Mode::Enforce, ctx(true), &worse, None), Outcome::Admitted { .. }));
    }

    #[test]
    fn an_agent_that_is_not_active_or_not_registered_is_a_problem() {
        let d = detection(95, &[]);
        let suspended = Claim::Registered { name: "bot".into(), phase: Some(AgentPhase::Suspended) };
        let j = judge(&d, 50, &suspended);
        assert_eq!(
            j.problems.iter().map(Problem::describe).collect::<Vec<_>>(),
            ["its pods name Agent bot, which is Suspended, not Active: fix or resume the Agent first"]
        );
        let j = judge(&d, 50, &Claim::Registered { name: "bot".into(), phase: None });
        assert!(j.problems.iter().any(|p| p.describe().contains("not yet decided")));
        let j = judge(&d, 50, &Claim::Unknown("ghost".into()));
        assert!(j.problems.iter().any(|p| p.describe().contains("Agent ghost, which is not registered")));
    }

    #[test]
    fn only_the_built_in_workload_controllers_count_as_such() {
        assert!(is_workload_controller("system:kube-controller-manager"));
        assert!(is_workload_controller("system:serviceaccount:kube-system:replicaset-controller"));
        assert!(is_workload_controller("system:serviceaccount:kube-system:cronjob-controller"));
        assert!(!is_workload_controller("system:serviceaccount:team-a:replicaset-controller"));
        assert!(!is_workload_controller("system:serviceaccount:kube-system:default"));
        assert!(!is_workload_controller("alice"));
    }
}
