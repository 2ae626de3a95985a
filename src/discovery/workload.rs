//! Workloads as discovery sees them: which object a pod template belongs to, whether a registered Agent
//! already covers it, and the shadow Agent that records it when none does. Pure.
//!
//! The unit is the top-level workload: a Deployment, StatefulSet, DaemonSet, CronJob, a Job or ReplicaSet
//! nothing controls, a bare Pod, or any other controller (an operator's custom resource) whose objects carry
//! the template. Objects a watched kind controls (a Deployment's ReplicaSets and their Pods, a CronJob's
//! Jobs) are covered by that kind and skipped, so a rollout or a job run never creates a second record.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::ObjectMeta as KubeMeta;

pub use crate::api::WorkloadRef;
use crate::api::{Agent, AgentSpec, Workload as AgentWorkload};
use crate::registry::selector;

/// The label on every shadow Agent the operator recorded (`true`), which its cleanup selects.
pub const SHADOW_LABEL: &str = "agentiam.dev/shadow";
/// The annotation of a shadow Agent naming the UID of the workload it records. An adopted agent keeps it.
pub const WORKLOAD_UID_ANNOTATION: &str = "agentiam.dev/discovered-workload-uid";
/// The annotation of a shadow Agent naming its workload as `<kind>/<name>`, for people and the CLI.
pub const WORKLOAD_ANNOTATION: &str = "agentiam.dev/discovered-workload";

/// What an object carrying a pod template is, for discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It is a top-level workload itself.
    Workload(WorkloadRef),
    /// A kind discovery watches controls it; that kind's record covers it.
    Covered,
    /// A kind discovery does not watch controls it: its template stands for that controller.
    SourceFor(WorkloadRef),
}

/// The kinds that, as controllers, cover the objects of `kind`.
fn covering(kind: &str) -> &'static [&'static str] {
    match kind {
        "ReplicaSet" => &["Deployment"],
        "Job" => &["CronJob"],
        "Pod" => &["ReplicaSet", "StatefulSet", "DaemonSet", "Job"],
        _ => &[],
    }
}

/// The controlling owner reference, if any (at most one may say `controller: true`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true))
}

/// What an object of `kind` (with `api_version`) is. None when it has no name or UID (not read from the
/// API server).
pub fn role(api_version: &str, kind: &str, meta: &ObjectMeta) -> Option<Role> {
    let (name, uid) = (meta.name.clone()?, meta.uid.clone()?);
    Some(match controller_of(meta) {
        None => Role::Workload(WorkloadRef {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name,
            uid,
        }),
        Some(o) if covering(kind).contains(&o.kind.as_str()) => Role::Covered,
        Some(o) => Role::SourceFor(WorkloadRef {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
        }),
    })
}

/// A kind that carries a pod template: the seven kinds discovery watches and admission judges.
pub trait HasTemplate {
    /// Its pod template's metadata (None for a Pod, whose own metadata is the template's, or a template
    /// without any), its pod spec, and its selector's labels. None: no pod spec.
    fn template(&self) -> Option<TemplateParts<'_>>;
}

/// What [`HasTemplate::template`] returns.
pub type TemplateParts<'a> = (Option<&'a ObjectMeta>, &'a PodSpec, Option<BTreeMap<String, String>>);

macro_rules! templated {
    ($($k:ty => |$o:ident| $body:expr;)*) => {$(
        impl HasTemplate for $k {
            fn template(&self) -> Option<TemplateParts<'_>> {
                let $o = self;
                $body
            }
        }
    )*};
}

templated! {
    Deployment => |o| {
        let s = &o.spec;
        Some((s.template.metadata.as_ref(), s.template.spec.as_ref()?, s.selector.match_labels.clone()))
    };
    StatefulSet => |o| {
        let s = &o.spec;
        Some((s.template.metadata.as_ref(), s.template.spec.as_ref()?, s.selector.match_labels.clone()))
    };
    DaemonSet => |o| {
        let s = &o.spec;
        Some((s.template.metadata.as_ref(), s.template.spec.as_ref()?, s.selector.match_labels.clone()))
    };
    ReplicaSet => |o| {
        let s = &o.spec;
        let t = s.template.as_ref()?;
        Some((t.metadata.as_ref(), t.spec.as_ref()?, s.selector.match_labels.clone()))
    };
    Job => |o| {
        let t = &o.spec.as_ref()?.template;
        Some((t.metadata.as_ref(), t.spec.as_ref()?, None))
    };
    CronJob => |o| {
        let t = &o.spec.job_template.spec.as_ref()?.template;
        Some((t.metadata.as_ref(), t.spec.as_ref()?, None))
    };
    Pod => |o| Some((None, o.spec.as_ref()?, None));
}

/// The labels and annotations signatures look at (the workload's and its template's), and the labels its
/// pods get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// The workload's labels, then its template's.
    pub labels: BTreeMap<String, String>,
    /// The workload's annotations, then its template's.
    pub annotations: BTreeMap<String, String>,
    /// The labels its pods carry.
    pub template_labels: BTreeMap<String, String>,
}

/// [`Merged`] for an object of `kind` with metadata `meta` and pod template metadata `template`.
pub fn merged(kind: &str, meta: &ObjectMeta, template: Option<&ObjectMeta>) -> Merged {
    let mut labels = meta.labels.clone().unwrap_or_default();
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    // A Pod's own labels are its template's.
    let template_labels = match template {
        Some(t) => t.labels.clone().unwrap_or_default(),
        None if kind == "Pod" => labels.clone(),
        None => BTreeMap::new(),
    };
    if let Some(t) = template {
        labels.extend(t.labels.clone().unwrap_or_default());
        annotations.extend(t.annotations.clone().unwrap_or_default());
    }
    Merged { labels, annotations, template_labels }
}

/// A digest of everything discovery judges an object by: its namespace, owner references, labels and
/// annotations, and its pod template (metadata and spec). An update that leaves it unchanged (a Pod's or a
/// workload's status, its `resourceVersion`, managed fields) cannot change what discovery makes of the
/// object, so it is not classified again: on a cluster whose Pods run, status updates are most of the watch
/// traffic, and each classification reads the Secrets and ConfigMaps the template names.
///
/// Not a security boundary (an in-process cache key): `DefaultHasher` is enough.
pub fn fingerprint(meta: &ObjectMeta, template: Option<TemplateParts<'_>>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.namespace.hash(&mut h);
    let owners = serde_json::to_string(&meta.owner_references).unwrap_or_default();
    owners.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    match template {
        Some((template_meta, spec, selector)) => {
            template_meta.map(|t| (&t.labels, &t.annotations)).hash(&mut h);
            serde_json::to_string(spec).unwrap_or_default().hash(&mut h);
            selector.hash(&mut h);
        }
        None => 0u8.hash(&mut h),
    }
    h.finish()
}

/// The name of the shadow Agent of a workload: `<kind>-<name>`, lowercased; names too long for a DNS
/// label keep their start and end in a stable digest, so the same workload always gets the same name.
pub fn shadow_name(kind: &str, name: &str) -> String {
    let full = format!("{}-{}", kind.to_ascii_lowercase(), name.to_ascii_lowercase());
    if full.len() <= 63 {
        return full;
    }
    let digest = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, full.as_bytes()));
    let head: String = full.chars().take(54).collect();
    format!("{}-{}", head.trim_end_matches('-'), digest.get(..8).unwrap_or_default())
}

/// The facts of a workload's pods that an Agent's `spec.workload` is matched against.
#[derive(Debug, Clone, Copy)]
pub struct PodIdentity<'a> {
    /// The ServiceAccount its pods run as (`default` when unset).
    pub service_account: &'a str,
    /// Its pod template's labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The registered (owned) Agent among `agents` (all in the workload's namespace) that covers a workload:
/// the one its pod template names with `agentiam.dev/agent`, else one whose `spec.workload` matches it.
/// A ServiceAccount alone counts unless it is `default`, which every workload without one shares.
pub fn registered_by<'a>(agents: &'a [&'a Agent], pods: PodIdentity<'_>) -> Option<&'a Agent> {
    let owned = agents.iter().copied().filter(|a| a.spec.owner.is_some());
    if let Some(name) = pods.labels.get(crate::names::AGENT_LABEL) {
        let named = owned.clone().find(|a| a.metadata.name.as_deref() == Some(name.as_str()));
        if named.is_some() {
            return named;
        }
    }
    owned.into_iter().find(|a| {
        let Some(w) = &a.spec.workload else { return false };
        let sa_ok = w.service_account_name.as_deref().is_none_or(|sa| sa == pods.service_account);
        let selector_ok = w.pod_selector.as_ref().is_none_or(|s| selector::matches(s, pods.labels));
        let specific =
            w.pod_selector.is_some() || w.service_account_name.as_deref().is_some_and(|sa| sa != "default");
        sa_ok && selector_ok && specific
    })
}

/// Who else uses the ServiceAccount `service_account` that the registered `agent` names: `users` are the
/// workloads of its namespace that run as it (`<Kind>/<name>` and their pods), `other_agents` the other
/// Agents there that name it too. None when nobody borrows it: every workload running as it is the agent's
/// own (covered by its `spec.workload`) and no other Agent names it.
pub fn borrowed(
    agent: &Agent,
    service_account: &str,
    users: &[(&str, PodIdentity<'_>)],
    mut other_agents: Vec<String>,
) -> Option<crate::api::BorrowedServiceAccount> {
    let me = [agent];
    let mut shared_with: Vec<String> = users
        .iter()
        .filter(|(_, pods)| registered_by(&me, *pods).is_none())
        .map(|(w, _)| (*w).to_owned())
        .collect();
    if shared_with.is_empty() && other_agents.is_empty() {
        return None;
    }
    shared_with.sort();
    shared_with.dedup();
    other_agents.sort();
    let workloads = shared_with.len();
    shared_with.truncate(MAX_LISTED);
    other_agents.truncate(MAX_LISTED);
    Some(crate::api::BorrowedServiceAccount {
        service_account: service_account.to_owned(),
        workloads: u32::try_from(workloads).unwrap_or(u32::MAX),
        shared_with,
        other_agents,
    })
}

/// At most this many workloads or agents are named in a report.
pub const MAX_LISTED: usize = 10;

/// The shadow Agent recording `workload` in `namespace`: no owner (so it is `Discovered` and never holds a
/// credential), a purpose that says what was found, and a `spec.workload` that binds it to the workload's
/// pods once an owner adopts it.
pub fn shadow_agent(
    namespace: &str,
    workload: &WorkloadRef,
    pods: PodIdentity<'_>,
    selector_labels: Option<&BTreeMap<String, String>>,
    reasons: &[String],
) -> Agent {
    let purpose = format!(
        "Discovered by agentiam: {} {} looks like an AI agent ({}). Its owner registers it by naming \
         spec.owner and describing its purpose here (kubectl agentiam adopt).",
        workload.kind,
        workload.name,
        reasons.join(", ")
    );
    let mut spec = AgentSpec::new_discovered(purpose);
    let labels = selector_labels.or((!pods.labels.is_empty()).then_some(pods.labels));
    spec.workload = Some(AgentWorkload {
        service_account_name: Some(pods.service_account.to_owned()),
        pod_selector: labels.map(|l| k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(l.clone()),
            match_expressions: None,
        }),
    });
    Agent {
        metadata: KubeMeta {
            name: Some(shadow_name(&workload.kind, &workload.name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(SHADOW_LABEL.to_owned(), "true".to_owned())])),
            annotations: Some(BTreeMap::from([
                (WORKLOAD_UID_ANNOTATION.to_owned(), workload.uid.clone()),
                (WORKLOAD_ANNOTATION.to_owned(), format!("{}/{}", workload.kind, workload.name)),
            ])),
            ..KubeMeta::default()
        },
        spec,
        status: None,
    }
}

/// Whether an Agent is a shadow record the operator may clean up: still without an owner, labelled and
/// linked to a workload. An adopted agent (one with an owner) is never deleted by discovery.
pub fn is_unadopted_shadow(agent: &Agent) -> bool {
    agent.spec.owner.is_none()
        && agent.metadata.labels.as_ref().and_then(|l| l.get(SHADOW_LABEL)).is_some_and(|v| v == "true")
        && agent.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(WORKLOAD_UID_ANNOTATION))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Owner, PrincipalKind};

    fn meta(owner: Option<(&str, bool)>) -> ObjectMeta {
        ObjectMeta {
            name: Some("x".into()),
            uid: Some("u".into()),
            owner_references: owner.map(|(kind, controller)| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: kind.into(),
                    name: "o".into(),
                    uid: "ou".into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_what_discovery_judges_changes_the_fingerprint() {
        let pod = |f: &dyn Fn(&mut Pod)| {
            let mut p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "namespace": "ns", "labels": {"app": "x"}, "resourceVersion": "1"},
                "spec": {"containers": [{"name": "main", "image": "python:3.12",
                    "env": [{"name": "OPENAI_API_KEY", "value": "k"}]}]},
                "status": {"phase": "Pending"}
            }))
            .unwrap();
            f(&mut p);
            fingerprint(&p.metadata, p.template())
        };
        let base = pod(&|_| {});
        assert_eq!(base, pod(&|_| {}), "stable");
        let status = pod(&|p| {
            p.metadata.resource_version = Some("2".into());
            p.status.as_mut().unwrap().phase = Some("Running".into());
        });
        assert_eq!(base, status, "status and resourceVersion do not count");
        for changed in [
            pod(&|p| {
                p.metadata.labels.as_mut().unwrap().insert("agentiam.dev/agent".into(), "bot".into());
            }),
            pod(&|p| p.metadata.annotations = Some([("a2a.agent-card".into(), "/card".into())].into())),
            pod(&|p| p.spec.as_mut().unwrap().containers[0].env = None),
            pod(&|p| p.spec.as_mut().unwrap().containers[0].image = Some("mcp/github".into())),
            pod(&|p| p.metadata.owner_references = meta(Some(("ReplicaSet", true))).owner_references),
            pod(&|p| p.metadata.namespace = Some("other".into())),
        ] {
            assert_ne!(base, changed);
        }
    }

    #[test]
    fn objects_a_watched_kind_controls_are_covered_and_others_stand_for_their_controller() {
        assert!(matches!(role("v1", "Pod", &meta(None)), Some(Role::Workload(w)) if w.kind == "Pod"));
        assert_eq!(role("v1", "Pod", &meta(Some(("ReplicaSet", true)))), Some(Role::Covered));
        assert_eq!(role("v1", "Pod", &meta(Some(("Job", true)))), Some(Role::Covered));
        assert_eq!(role("apps/v1", "ReplicaSet", &meta(Some(("Deployment", true)))), Some(Role::Covered));
        assert_eq!(role("batch/v1", "Job", &meta(Some(("CronJob", true)))), Some(Role::Covered));
        // An owner that is not the controller does not cover it.
        assert!(matches!(role("v1", "Pod", &meta(Some(("ReplicaSet", false)))), Some(Role::Workload(_))));
        // A custom controller (say an Argo Rollout owning a ReplicaSet): the template stands for it.
        assert!(matches!(role("apps/v1", "ReplicaSet", &meta(Some(("Rollout", true)))),
            Some(Role::SourceFor(w)) if w.kind == "Rollout" && w.uid == "ou"));
        assert_eq!(role("v1", "Pod", &ObjectMeta::default()), None);
    }

    #[test]
    fn shadow_names_are_dns_labels_and_stable() {
        assert_eq!(shadow_name("Deployment", "support-bot"), "deployment-support-bot");
        let long = "a".repeat(80);
        let n = shadow_name("StatefulSet", &long);
        assert!(n.len() <= 63 && crate::registry::validate::is_dns_label(&n), "{n}");
        assert_eq!(n, shadow_name("StatefulSet", &long));
        assert_ne!(n, shadow_name("StatefulSet", &"a".repeat(81)));
    }

    fn agent(name: &str, owned: bool, sa: Option<&str>, selector: Option<(&str, &str)>) -> Agent {
        let mut spec = AgentSpec::new(Owner { kind: PrincipalKind::Team, name: "t".into() }, "p");
        if !owned {
            spec.owner = None;
        }
        spec.workload = Some(AgentWorkload {
            service_account_name: sa.map(str::to_owned),
            pod_selector: selector.map(|(k, v)| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(BTreeMap::from([(k.to_owned(), v.to_owned())])),
                    match_expressions: None,
                }
            }),
        });
        let mut a = Agent::new(name, spec);
        a.metadata.namespace = Some("ns".into());
        a
    }

    #[test]
    fn a_workload_is_registered_by_its_label_or_a_specific_workload_binding() {
        let labels = BTreeMap::from([("app".to_owned(), "bot".to_owned())]);
        let by_label = BTreeMap::from([(crate::names::AGENT_LABEL.to_owned(), "named".to_owned())]);
        let agents = [
            agent("named", true, None, None),
            agent("by-selector", true, None, Some(("app", "bot"))),
            agent("by-sa", true, Some("bot-sa"), None),
            agent("by-default-sa", true, Some("default"), None),
            agent("shadow", false, Some("lonely"), None),
        ];
        let refs: Vec<&Agent> = agents.iter().collect();
        let find = |sa: &str, l: &BTreeMap<String, String>| {
            registered_by(&refs, PodIdentity { service_account: sa, labels: l })
                .and_then(|a| a.metadata.name.clone())
        };
        assert_eq!(find("default", &by_label).as_deref(), Some("named"));
        assert_eq!(find("default", &labels).as_deref(), Some("by-selector"));
        assert_eq!(find("bot-sa", &BTreeMap::new()).as_deref(), Some("by-sa"));
        assert_eq!(find("default", &BTreeMap::new()), None, "the default ServiceAccount alone names nobody");
        assert_eq!(find("lonely", &BTreeMap::new()), None, "a shadow record registers nothing");
    }

    #[test]
    fn a_service_account_is_borrowed_when_a_workload_the_agent_does_not_cover_or_another_agent_uses_it() {
        let a = agent("bot", true, Some("shared"), Some(("app", "bot")));
        let mine = BTreeMap::from([("app".to_owned(), "bot".to_owned())]);
        let theirs = BTreeMap::from([("app".to_owned(), "etl".to_owned())]);
        let pods = |labels| PodIdentity { service_account: "shared", labels };
        assert_eq!(borrowed(&a, "shared", &[("Deployment/bot", pods(&mine))], Vec::new()), None);
        let users = [("Deployment/bot", pods(&mine)), ("CronJob/etl", pods(&theirs))];
        let b = borrowed(&a, "shared", &users, Vec::new()).unwrap();
        assert_eq!((b.service_account.as_str(), b.workloads), ("shared", 1));
        assert_eq!(b.shared_with, ["CronJob/etl"]);
        let b = borrowed(&a, "shared", &[], vec!["other-bot".into()]).unwrap();
        assert_eq!(b.other_agents, ["other-bot"]);
        let many: Vec<String> = (0..25).map(|i| format!("Pod/p{i}")).collect();
        let users: Vec<(&str, PodIdentity<'_>)> = many.iter().map(|w| (w.as_str(), pods(&theirs))).collect();
        let b = borrowed(&a, "shared", &users, Vec::new()).unwrap();
        assert_eq!((b.workloads, b.shared_with.len()), (25, MAX_LISTED));
    }

    #[test]
    fn a_shadow_agent_has_no_owner_and_is_bound_to_its_workload() {
        let w = WorkloadRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "bot".into(),
            uid: "u1".into(),
        };
        let labels = BTreeMap::from([("app".to_owned(), "bot".to_owned())]);
        let a = shadow_agent(
            "ns",
            &w,
            PodIdentity { service_account: "default", labels: &labels },
            None,
            &["llm-provider-key".into()],
        );
        assert!(a.spec.owner.is_none());
        assert!(is_unadopted_shadow(&a));
        assert_eq!(a.metadata.name.as_deref(), Some("deployment-bot"));
        assert!(a.spec.purpose.contains("Deployment bot") && a.spec.purpose.contains("llm-provider-key"));
        let wl = a.spec.workload.clone().unwrap();
        assert_eq!(wl.service_account_name.as_deref(), Some("default"));
        assert_eq!(wl.pod_selector.unwrap().match_labels, Some(labels));
        let mut adopted = a.clone();
        adopted.spec.owner = Some(Owner { kind: PrincipalKind::User, name: "alice".into() });
        assert!(!is_unadopted_shadow(&adopted), "an adopted agent is never cleaned up");
    }
}
