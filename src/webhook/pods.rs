//! The pod mutation: a pod labelled `agentiam.dev/agent: <name>` gets its Agent's credentials and the trust
//! bundle mounted, and its SPIFFE ID in the environment. Pure: the caller looks the Agent up (from the
//! controller's in-memory store, never an API call per pod) and turns the decision into an AdmissionResponse.
//!
//! Refusals are deliberate: a pod that claims an identity it cannot have must not start at all, rather than
//! start without credentials and fail later in a way nobody connects to the label.

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::api::{Agent, AgentPhase};
use crate::registry::selector;

/// The label that names a pod's Agent (one home for it: the credentials Secret carries it too).
pub use crate::registry::secret::AGENT_LABEL;
/// Where credentials and the trust bundle appear in every container.
pub const MOUNT_PATH: &str = "/var/run/secrets/agentiam.dev";
/// The projected volume's name; reserved, a pod may not bring its own.
pub const VOLUME_NAME: &str = "agentiam-credentials";
/// The environment variable carrying the agent's SPIFFE ID.
pub const SPIFFE_ID_ENV: &str = "AGENTIAM_SPIFFE_ID";
/// The trust bundle ConfigMap in every namespace with Agents.
pub const TRUST_BUNDLE_CONFIGMAP: &str = crate::names::TRUST_BUNDLE_CONFIGMAP;

/// The credentials Secret of an agent.
pub use crate::registry::secret::secret_name as credentials_secret_name;

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodDecision {
    /// The pod names no agent: let it through unchanged.
    NotAnAgent,
    /// Admit with this JSON patch.
    Mutate(Patch),
    /// Refuse, with a message for the person who created the pod.
    Deny(String),
}

/// The agent name a pod claims, if any.
pub fn claimed_agent(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(AGENT_LABEL).map(String::as_str)
}

/// The Agent a pod claims, with what the operator itself recorded and derived about it: never the status,
/// which anyone with `agents/status` can write.
#[derive(Debug, Clone, Copy)]
pub struct Claimed<'a> {
    /// The Agent of the claimed name in the pod's own namespace.
    pub agent: &'a Agent,
    /// The phase the operator recorded for that Agent's UID (None: nothing recorded).
    pub phase: Option<AgentPhase>,
    /// Its SPIFFE ID (from the trust domain, namespace and name).
    pub spiffe_id: Option<&'a str>,
}

/// Decides about a pod being created in `namespace`. `claimed` is the Agent of the claimed name in the pod's
/// own namespace, if one exists there (agents are namespaced; a pod can never claim another namespace's).
pub fn decide(pod: &Pod, namespace: &str, claimed: Option<Claimed<'_>>) -> PodDecision {
    let Some(name) = claimed_agent(pod) else { return PodDecision::NotAnAgent };
    let Some(Claimed { agent, phase, spiffe_id }) = claimed else {
        return PodDecision::Deny(format!(
            "pod claims agent {name:?} ({AGENT_LABEL}), but namespace {namespace:?} has no Agent of that name"
        ));
    };
    if phase != Some(AgentPhase::Active) {
        let phase = phase.map_or_else(|| "not yet activated".to_owned(), |p| p.to_string());
        return PodDecision::Deny(format!("agent {name:?} is {phase}, not Active: it may not run"));
    }
    let Some(spiffe_id) = spiffe_id else {
        return PodDecision::Deny(format!("agent {name:?} has no valid SPIFFE ID"));
    };
    let spec = pod.spec.clone().unwrap_or_default();
    if let Some(w) = &agent.spec.workload {
        let pod_sa = spec.service_account_name.as_deref().unwrap_or("default");
        if let Some(sa) = &w.service_account_name
            && sa != pod_sa
        {
            return PodDecision::Deny(format!(
                "agent {name:?} runs as service account {sa:?}, but the pod uses {pod_sa:?}"
            ));
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if let Some(sel) = &w.pod_selector
            && !selector::matches(sel, &labels)
        {
            return PodDecision::Deny(format!(
                "the pod's labels do not match agent {name:?}'s spec.workload.podSelector"
            ));
        }
    }
    if spec.volumes.iter().flatten().any(|v| v.name == VOLUME_NAME) {
        return PodDecision::Deny(format!("volume name {VOLUME_NAME:?} is reserved for agentiam"));
    }
    let mut ops = Vec::new();
    let volume = json!({
        "name": VOLUME_NAME,
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                // Optional, so that withdrawn credentials leave running pods: when the operator deletes the
                // Secret (the agent suspended or archived), the kubelet projects the volume without it and
                // the token files disappear. With `false` the kubelet keeps the last files and logs "secret
                // not found" (measured on the local node). The cost: a pod admitted in the moment between the
                // Agent turning Active and its Secret being written starts without them, and gets them at the
                // kubelet's next sync.
                {"secret": {"name": credentials_secret_name(name), "optional": true}},
                {"configMap": {"name": TRUST_BUNDLE_CONFIGMAP, "optional": false}},
                // Optional: the pod starts before any Delegation to its agent exists, and the kubelet brings
                // each delegated token (`delegation-<name>`) into the running pod when it appears.
                {"secret": {"name": crate::names::delegations_secret(name), "optional": true}},
            ],
        },
    });
    let result = add(&mut ops, "/spec/volumes", spec.volumes.is_none(), volume).and_then(|()| {
        let groups = [
            ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
            ("containers", &spec.containers),
        ];
        for (field, containers) in groups {
            for (i, c) in containers.iter().enumerate() {
                container_ops(&mut ops, field, i, c, spiffe_id)?;
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => PodDecision::Mutate(Patch(ops)),
        Err(deny) => deny,
    }
}

/// Appends `value` to the array at `path`, creating the array when it does not exist. Fails closed: a path
/// that does not parse (it cannot, they are built from fixed strings) denies the pod rather than patch the
/// document root.
fn add(ops: &mut Vec<PatchOperation>, path: &str, create: bool, value: Value) -> Result<(), PodDecision> {
    let (path, value) =
        if create { (path.to_owned(), Value::Array(vec![value])) } else { (format!("{path}/-"), value) };
    let path = PointerBuf::parse(&path)
        .map_err(|e| PodDecision::Deny(format!("internal error building the patch: {e}")))?;
    ops.push(PatchOperation::Add(AddOperation { path, value }));
    Ok(())
}

fn container_ops(
    ops: &mut Vec<PatchOperation>,
    field: &str,
    i: usize,
    c: &Container,
    spiffe_id: &str,
) -> Result<(), PodDecision> {
    let base = format!("/spec/{field}/{i}");
    if c.volume_mounts.iter().flatten().any(|m| m.mount_path == MOUNT_PATH || m.name == VOLUME_NAME) {
        return Err(PodDecision::Deny(format!("container {:?} already mounts {MOUNT_PATH}", c.name)));
    }
    if c.env.iter().flatten().any(|e| e.name == SPIFFE_ID_ENV) {
        return Err(PodDecision::Deny(format!("container {:?} sets {SPIFFE_ID_ENV} itself", c.name)));
    }
    let mount = json!({"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": true});
    add(ops, &format!("{base}/volumeMounts"), c.volume_mounts.is_none(), mount)?;
    add(ops, &format!("{base}/env"), c.env.is_none(), json!({"name": SPIFFE_ID_ENV, "value": spiffe_id}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentSpec, AgentStatus, Owner, PrincipalKind, Workload};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    const ID: &str = "spiffe://cluster.local/ns/ns/agent/bot";

    /// An agent whose status claims `phase`; what counts is the phase the tests pass as recorded.
    fn agent(phase: AgentPhase) -> Agent {
        let mut a =
            Agent::new("bot", AgentSpec::new(Owner { kind: PrincipalKind::Team, name: "t".into() }, "p"));
        a.status = Some(AgentStatus { phase: Some(phase), spiffe_id: Some(ID.into()), ..Default::default() });
        a
    }

    fn claimed(a: &Agent) -> Option<Claimed<'_>> {
        Some(Claimed { agent: a, phase: a.status.as_ref().and_then(|s| s.phase), spiffe_id: Some(ID) })
    }

    #[test]
    fn the_recorded_phase_decides_not_the_status() {
        let p = pod(json!({AGENT_LABEL: "bot"}), json!({"containers": [{"name": "c"}]}));
        // A forged Active status on an agent the operator recorded as Suspended (or never activated).
        let forged = agent(AgentPhase::Active);
        for recorded in [Some(AgentPhase::Suspended), None] {
            let c = Claimed { agent: &forged, phase: recorded, spiffe_id: Some(ID) };
            assert!(denied(decide(&p, "ns", Some(c))).contains("not Active"), "{recorded:?}");
        }
        let genuine = Claimed {
            agent: &agent(AgentPhase::Suspended),
            phase: Some(AgentPhase::Active),
            spiffe_id: Some(ID),
        };
        assert!(matches!(decide(&p, "ns", Some(genuine)), PodDecision::Mutate(_)));
    }

    fn pod(labels: Value, spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "labels": labels}, "spec": spec})).unwrap()
    }

    fn apply(p: &Pod, patch: &Patch) -> Value {
        let mut v = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut v, patch).unwrap();
        v
    }

    fn denied(d: PodDecision) -> String {
        match d {
            PodDecision::Deny(m) => m,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn pods_without_the_label_are_left_alone() {
        let p = pod(json!({"app": "x"}), json!({"containers": [{"name": "c"}]}));
        assert_eq!(decide(&p, "ns", None), PodDecision::NotAnAgent);
    }

    #[test]
    fn an_active_agents_pod_gets_volume_mounts_and_env_in_every_container() {
        let p = pod(
            json!({AGENT_LABEL: "bot"}),
            json!({"initContainers": [{"name": "i"}], "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}], "volumes": [{"name": "data", "emptyDir": {}}]}),
        );
        let PodDecision::Mutate(patch) = decide(&p, "ns", claimed(&agent(AgentPhase::Active))) else {
            panic!()
        };
        let out = apply(&p, &patch);
        let vols = out["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let creds = &vols[1]["projected"]["sources"][0]["secret"];
        assert_eq!((&creds["name"], &creds["optional"]), (&json!("bot-credentials"), &json!(true)));
        let delegated = &vols[1]["projected"]["sources"][2]["secret"];
        assert_eq!((&delegated["name"], &delegated["optional"]), (&json!("bot-delegations"), &json!(true)));
        assert_eq!(vols[1]["projected"]["sources"][1]["configMap"]["name"], TRUST_BUNDLE_CONFIGMAP);
        for c in out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(out["spec"]["initContainers"].as_array().unwrap())
        {
            let mounts = c["volumeMounts"].as_array().unwrap();
            assert!(mounts.iter().any(|m| m["mountPath"] == MOUNT_PATH && m["readOnly"] == true), "{c}");
            let env = c["env"].as_array().unwrap();
            assert!(env.iter().any(
                |e| e["name"] == SPIFFE_ID_ENV && e["value"] == "spiffe://cluster.local/ns/ns/agent/bot"
            ));
        }
        assert_eq!(out["spec"]["containers"][0]["env"][0]["name"], "X", "existing env kept first");
    }

    #[test]
    fn missing_inactive_or_foreign_agents_are_refused() {
        let p = pod(json!({AGENT_LABEL: "bot"}), json!({"containers": [{"name": "c"}]}));
        assert!(denied(decide(&p, "ns", None)).contains("has no Agent of that name"));
        for phase in [AgentPhase::Pending, AgentPhase::Suspended, AgentPhase::Revoked, AgentPhase::Retired] {
            assert!(denied(decide(&p, "ns", claimed(&agent(phase)))).contains("not Active"), "{phase}");
        }
    }

    #[test]
    fn the_workload_binding_is_enforced() {
        let mut a = agent(AgentPhase::Active);
        a.spec.workload = Some(Workload {
            service_account_name: Some("bot-sa".into()),
            pod_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), "bot".to_string())].into()),
                match_expressions: None,
            }),
        });
        let wrong_sa = pod(json!({AGENT_LABEL: "bot", "app": "bot"}), json!({"containers": [{"name": "c"}]}));
        assert!(denied(decide(&wrong_sa, "ns", claimed(&a))).contains("service account"));
        let wrong_labels = pod(
            json!({AGENT_LABEL: "bot"}),
            json!({"serviceAccountName": "bot-sa", "containers": [{"name": "c"}]}),
        );
        assert!(denied(decide(&wrong_labels, "ns", claimed(&a))).contains("podSelector"));
        let ok = pod(
            json!({AGENT_LABEL: "bot", "app": "bot"}),
            json!({"serviceAccountName": "bot-sa", "containers": [{"name": "c"}]}),
        );
        assert!(matches!(decide(&ok, "ns", claimed(&a)), PodDecision::Mutate(_)));
    }

    #[test]
    fn reserved_names_cannot_be_preempted() {
        let a = agent(AgentPhase::Active);
        let vol = pod(
            json!({AGENT_LABEL: "bot"}),
            json!({"containers": [{"name": "c"}], "volumes": [{"name": VOLUME_NAME, "emptyDir": {}}]}),
        );
        assert!(denied(decide(&vol, "ns", claimed(&a))).contains("reserved"));
        let env = pod(
            json!({AGENT_LABEL: "bot"}),
            json!({"containers": [{"name": "c", "env": [{"name": SPIFFE_ID_ENV, "value": "spiffe://evil/x"}]}]}),
        );
        assert!(denied(decide(&env, "ns", claimed(&a))).contains(SPIFFE_ID_ENV));
        let mount = pod(
            json!({AGENT_LABEL: "bot"}),
            json!({"containers": [{"name": "c", "volumeMounts": [{"name": "x", "mountPath": MOUNT_PATH}]}]}),
        );
        assert!(denied(decide(&mount, "ns", claimed(&a))).contains("already mounts"));
    }
}
