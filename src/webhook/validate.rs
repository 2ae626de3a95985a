//! The validating webhooks of the agentiam kinds, pure: one verdict per kind and operation, and the
//! who-did-what audit record of every admitted (or refused) change.
//!
//! Rules here are the ones only admission can enforce, because they depend on who is asking (CEL on the CRDs
//! checks single objects; the reconcilers re-check everything else):
//! - **An agent never changes IAM objects.** A request made as the ServiceAccount of a registered agent's
//!   workload may not create, update or delete Agents, AgentPolicies, Revocations or ApprovalRequests,
//!   anywhere: an agent that could edit its own registration, the policies that govern it, the revocation
//!   that stops it or the approval it waits for would govern itself. Delegations are the exception: agents
//!   pass on subsets of what they hold.
//!
//! - **Only the operator asks for approval, and only an approver answers** ([`super::approval`]).
//!
//! - **A Delegation never widens.** At CREATE ([`decide_delegation`]): its scopes parse; a root is made by a
//!   person (never a ServiceAccount or a `system:` user) who holds the RBAC verb `delegate` on the grantee
//!   Agent; a child names an Active parent, is made by the parent's grantee (from its workload's
//!   ServiceAccount) or by a person with `delegate` on the child's grantee, and fits the parent: every scope
//!   covered, no later end, depth left. The grantee exists and is Active. The Delegation controller checks
//!   all of it again, from fresh API state, before the delegation is in force.
//!
//! Specs that will not validate or compile are admitted with a warning: the reconciler reports them in
//! status (Valid=False, a broken policy denies everything), and refusing them here would make an object
//! stored before a rule existed impossible to fix by editing.

use std::collections::BTreeMap;

use kube::core::admission::Operation;
use serde_json::Value;

use super::admission::Verdict;
use jiff::Timestamp;

use crate::api::{Agent, AgentPolicy, Delegation};
use crate::audit::{Action, Entry, ObjectRef, Outcome};
use crate::identity::TrustDomain;
use crate::registry::actions as a;
use crate::registry::delegation::{self, Bounds};
use crate::registry::validate::validate_agent;

/// The longest spec diff an audit record carries; longer ones are cut and say so.
pub const MAX_CHANGE_BYTES: usize = 2048;

/// The kinds the validating webhooks see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `agents`
    Agent,
    /// `agentpolicies`
    AgentPolicy,
    /// `delegations`
    Delegation,
    /// `revocations`
    Revocation,
    /// `approvalrequests`
    ApprovalRequest,
}

impl Kind {
    /// Every kind, in the order of the webhook configuration.
    pub const ALL: [Self; 5] =
        [Self::Agent, Self::AgentPolicy, Self::Delegation, Self::Revocation, Self::ApprovalRequest];

    /// The resource plural.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Agent => "agents",
            Self::AgentPolicy => "agentpolicies",
            Self::Delegation => "delegations",
            Self::Revocation => "revocations",
            Self::ApprovalRequest => "approvalrequests",
        }
    }

    /// The kind name.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Agent => "Agent",
            Self::AgentPolicy => "AgentPolicy",
            Self::Delegation => "Delegation",
            Self::Revocation => "Revocation",
            Self::ApprovalRequest => "ApprovalRequest",
        }
    }

    /// The path the webhook of this kind is served at.
    pub fn path(self) -> &'static str {
        match self {
            Self::Agent => "/validate/agents",
            Self::AgentPolicy => "/validate/agentpolicies",
            Self::Delegation => "/validate/delegations",
            Self::Revocation => "/validate/revocations",
            Self::ApprovalRequest => "/validate/approvalrequests",
        }
    }

    /// The kind of an AdmissionReview `request.kind.kind`, when it is one of ours.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

/// Who is asking: the authenticated requester of the AdmissionReview.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    /// `userInfo.username`.
    pub username: String,
    /// `userInfo.uid`.
    pub uid: Option<String>,
    /// `userInfo.groups`.
    pub groups: Vec<String>,
}

impl Requester {
    /// The requester of an admission request.
    pub fn of(user: &k8s_openapi::api::authentication::v1::UserInfo) -> Self {
        Self {
            username: user.username.clone().unwrap_or_default(),
            uid: user.uid.clone(),
            groups: user.groups.clone().unwrap_or_default(),
        }
    }

    /// Adds who this is to an audit record's details: username, UID and groups (a JSON array).
    pub fn record_in(&self, details: &mut BTreeMap<String, String>) {
        details.insert(a::DETAIL_REQUESTER_USERNAME.to_owned(), self.username.clone());
        if let Some(u) = &self.uid {
            details.insert(a::DETAIL_REQUESTER_UID.to_owned(), u.clone());
        }
        if !self.groups.is_empty() {
            let groups = serde_json::to_string(&self.groups).unwrap_or_default();
            details.insert(a::DETAIL_REQUESTER_GROUPS.to_owned(), groups);
        }
    }
    /// `(namespace, name)` when the requester is a ServiceAccount.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
    }
}

/// One request, as the pure rules see it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The kind.
    pub kind: Kind,
    /// CREATE, UPDATE or DELETE (CONNECT never reaches these webhooks).
    pub operation: Operation,
    /// Who asks.
    pub requester: &'a Requester,
    /// The registered agents (`namespace/name`) whose workload runs as the requester's ServiceAccount.
    pub requester_is_agent: &'a [String],
    /// The object after the change (None for DELETE).
    pub object: Option<&'a Value>,
    /// The object before the change (None for CREATE).
    pub old_object: Option<&'a Value>,
}

/// The verdict on one request.
pub fn decide(trust_domain: &TrustDomain, req: &Request<'_>) -> Verdict {
    if let Some(agent) = req.requester_is_agent.first()
        && req.kind != Kind::Delegation
    {
        return Verdict::Deny(format!(
            "{} runs agent {agent}: an agent may not {} {} (agents never change their own registration, \
             the policies that govern them or their revocations; a human or a pipeline must)",
            req.requester.username,
            verb(&req.operation),
            req.kind.plural()
        ));
    }
    let warnings = match (&req.operation, req.object) {
        (Operation::Create | Operation::Update, Some(object)) if spec_changed(req) => {
            warnings(trust_domain, req.kind, object)
        }
        _ => Vec::new(),
    };
    Verdict::Allow { warnings }
}

fn verb(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Connect => "connect to",
    }
}

fn spec_changed(req: &Request<'_>) -> bool {
    req.old_object.and_then(|o| o.get("spec")) != req.object.and_then(|o| o.get("spec"))
}

/// What the reconciler will report about this spec, told at once.
fn warnings(trust_domain: &TrustDomain, kind: Kind, object: &Value) -> Vec<String> {
    match kind {
        Kind::Agent => match serde_json::from_value::<Agent>(object.clone()) {
            Ok(agent) => {
                let ns = agent.metadata.namespace.clone().unwrap_or_default();
                let name = agent.metadata.name.clone().unwrap_or_default();
                match validate_agent(trust_domain, &ns, &name, &agent.spec) {
                    Ok(_) => Vec::new(),
                    Err(errors) => vec![format!(
                        "the agent stays Pending without credentials until its spec is fixed: {errors}"
                    )],
                }
            }
            Err(e) => vec![format!("the agent does not read as an Agent: {e}")],
        },
        Kind::AgentPolicy => match serde_json::from_value::<AgentPolicy>(object.clone()) {
            Ok(policy) => {
                let compiled = crate::authz::compile::compile(&policy);
                if compiled.is_broken() {
                    vec![format!(
                        "the policy does not compile, so it denies everything its agents do: {}",
                        compiled.errors.join("; ")
                    )]
                } else {
                    Vec::new()
                }
            }
            Err(e) => vec![format!("the policy does not read as an AgentPolicy: {e}")],
        },
        Kind::Delegation | Kind::Revocation | Kind::ApprovalRequest => Vec::new(),
    }
}

/// Why an Agent CREATE without `spec.owner` is refused: only the operator's discovery records an agent
/// nobody owns yet (a shadow agent). None when it may be admitted. Without the webhook such an agent would
/// still only ever be `Discovered`, with no credentials.
pub fn agent_owner(object: &Value, by_operator: bool) -> Option<String> {
    let owned = object.pointer("/spec/owner").is_some_and(|o| !o.is_null());
    (!owned && !by_operator).then(|| {
        "spec.owner is required: name the accountable human, group or team (only agentiam's discovery \
         records an agent without an owner, as a shadow agent for its owner to adopt)"
            .to_owned()
    })
}

/// Why a Revocation CREATE in `namespace` asks for more than a Revocation there may: a namespaceSelector
/// or an emergency key rotation, which only the operator's namespace may ask for (the controller ignores
/// or refuses them elsewhere too, and says so in the status). None when it may be admitted.
pub fn revocation_reach(
    namespace: &str,
    object: &serde_json::Value,
    reach: &crate::registry::revocation::Reach,
) -> Option<String> {
    let target = object.pointer("/spec/target");
    let selector = target.and_then(|t| t.get("namespaceSelector")).is_some_and(|v| !v.is_null());
    let emergency = object.pointer("/spec/emergency").and_then(serde_json::Value::as_bool) == Some(true);
    if (!selector && !emergency) || reach.operator_namespace.as_deref() == Some(namespace) {
        return None;
    }
    let home = reach.operator_namespace.as_deref().unwrap_or("the operator's namespace");
    let asked = match (selector, emergency) {
        (true, true) => "spec.target.namespaceSelector and spec.emergency",
        (true, false) => "spec.target.namespaceSelector",
        _ => "spec.emergency",
    };
    Some(format!(
        "{asked}: only a Revocation in {home:?} may reach other namespaces or rotate the signing keys; \
         a Revocation in {namespace:?} stops agents in {namespace:?} only"
    ))
}

/// What the admission server looked up for a Delegation CREATE: the facts [`decide_delegation`] judges.
#[derive(Debug, Clone)]
pub struct DelegationFacts {
    /// The Delegation, or why it does not read as one.
    pub delegation: Result<Delegation, String>,
    /// The grantee Agent: None when it does not exist, else whether the operator recorded it Active.
    pub grantee_active: Option<bool>,
    /// The parent (children only).
    pub parent: Option<ParentFacts>,
    /// Whether the requester holds `delegate` on the grantee (asked only for persons); Err when the
    /// SubjectAccessReview could not be made (refused: fail closed).
    pub may_delegate: Option<Result<bool, String>>,
    /// Now, for a Delegation whose creation time is not set yet.
    pub now: Timestamp,
    /// The requester is the operator itself (its token service creates the children of exchanges).
    pub by_operator: bool,
}

/// The parent a child names, as admission found it.
#[derive(Debug, Clone)]
pub enum ParentFacts {
    /// No Delegation of that name.
    Missing(String),
    /// It exists but is not in force.
    NotActive {
        /// Its name.
        name: String,
        /// Why (its decision's message).
        why: String,
    },
    /// In force: its grantee and what a child must fit in.
    Active {
        /// Its name.
        name: String,
        /// Its grantee Agent's name.
        grantee: String,
        /// Its scopes, end and remaining depth.
        bounds: Bounds,
    },
}

/// The verdict on a Delegation CREATE (see the module docs).
pub fn decide_delegation(namespace: &str, req: &Request<'_>, facts: &DelegationFacts) -> Verdict {
    let d = match &facts.delegation {
        Ok(d) => d,
        Err(e) => return Verdict::Deny(format!("the object does not read as a Delegation: {e}")),
    };
    let scopes = match delegation::scopes_of(d) {
        Ok(s) => s,
        Err(e) => return Verdict::Deny(format!("spec.scopes: {e}")),
    };
    let who = &req.requester.username;
    let agent = &d.spec.agent_ref.name;
    // A token exchange's child: the token service authenticated the parent's grantee (its client) and the
    // agent taking over (its actor token) before creating it. Nobody else may claim to be one.
    let exchange =
        d.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(crate::names::EXCHANGE_ANNOTATION));
    if exchange && !facts.by_operator {
        return Verdict::Deny(format!(
            "only the operator's token service creates Delegations annotated {}",
            crate::names::EXCHANGE_ANNOTATION
        ));
    }
    if exchange && d.spec.parent_ref.is_none() {
        return Verdict::Deny("a token exchange passes on a delegation: it needs spec.parentRef".to_owned());
    }
    // Its creation time is set by the API server before validating admission; now stands in for it if not.
    let Some(expiry) = delegation::own_expiry(d).or_else(|| {
        let ttl = delegation::parse_ttl(d.spec.ttl.as_deref()?)?;
        facts.now.checked_add(ttl).ok()
    }) else {
        return Verdict::Deny("the Delegation has no readable expiry".to_owned());
    };
    if expiry <= facts.now {
        return Verdict::Deny(format!("spec.expiresAt {expiry} has already passed"));
    }
    let may_delegate = || match &facts.may_delegate {
        Some(Ok(true)) => Ok(()),
        Some(Ok(false)) | None => Err(format!(
            "{who} may not delegate on behalf of others to Agent {agent:?}: that needs the RBAC verb \
             \"delegate\" on agents.agentiam.dev/{agent} in {namespace}"
        )),
        Some(Err(e)) => Err(format!("agentiam could not check whether {who} may delegate ({e}); retry")),
    };
    match (&d.spec.parent_ref, &facts.parent) {
        (None, _) => {
            if let Some(running) = req.requester_is_agent.first() {
                return Verdict::Deny(format!(
                    "{who} runs agent {running}: a root Delegation is a human's decision; an agent passes on a \
                     subset of what it holds with spec.parentRef"
                ));
            }
            if let Err(e) = delegation::check_root(who).and_then(|()| may_delegate()) {
                return Verdict::Deny(e);
            }
            if delegation::audience_of(d).is_none() {
                return Verdict::Deny(format!("spec.audience: {}", delegation::NO_AUDIENCE));
            }
            if let Some(n) = d.spec.max_depth
                && n > 10
            {
                return Verdict::Deny(format!("spec.maxDepth {n} is more than 10"));
            }
        }
        (Some(p), None) => {
            return Verdict::Deny(format!("the parent Delegation {:?} was not looked up; retry", p.name));
        }
        (Some(_), Some(ParentFacts::Missing(name))) => {
            return Verdict::Deny(format!("the parent Delegation {name:?} does not exist in {namespace}"));
        }
        (Some(_), Some(ParentFacts::NotActive { name, why })) => {
            return Verdict::Deny(format!("the parent Delegation {name:?} is not in force: {why}"));
        }
        (Some(_), Some(ParentFacts::Active { name, grantee, bounds })) => {
            if exchange {
                // The handoff was authenticated by the token service; the bounds below still apply.
            } else if !req.requester_is_agent.is_empty() {
                let holder = format!("{namespace}/{grantee}");
                if !req.requester_is_agent.contains(&holder) {
                    return Verdict::Deny(format!(
                        "{who} runs {}, not {holder}, the grantee of {name:?}: only the agent that holds a \
                         delegation may pass it on",
                        req.requester_is_agent.join(", ")
                    ));
                }
            } else if !delegation::is_person(who) {
                return Verdict::Deny(format!(
                    "{who} is neither a person nor the agent that holds {name:?}: it may not pass it on"
                ));
            } else if let Err(e) = may_delegate() {
                return Verdict::Deny(e);
            }
            let audience = d.spec.audience.as_deref();
            if let Err(e) = delegation::check_child(bounds, &scopes, expiry, d.spec.max_depth, audience) {
                return Verdict::Deny(format!("it would hold more than its parent {name:?}: {e}"));
            }
        }
    }
    match facts.grantee_active {
        None => Verdict::Deny(format!("the grantee Agent {agent:?} does not exist in {namespace}")),
        Some(false) => Verdict::Deny(format!("the grantee Agent {agent:?} is not Active")),
        Some(true) => Verdict::allow(),
    }
}

/// What a change changed: a JSON patch from the old spec to the new one (bounded), and which metadata
/// fields differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// RFC 6902 patch from the old `spec` to the new one, as JSON; cut to [`MAX_CHANGE_BYTES`].
    pub spec: String,
    /// The metadata fields that differ (labels, annotations, finalizers, ownerReferences).
    pub metadata: Vec<&'static str>,
}

/// The changes from `old` to `new` (either may be absent).
pub fn changes(old: Option<&Value>, new: Option<&Value>) -> Changes {
    let field = |o: Option<&Value>, p: &str| o.and_then(|v| v.pointer(p)).cloned().unwrap_or(Value::Null);
    let patch = json_patch::diff(&field(old, "/spec"), &field(new, "/spec"));
    let mut spec = serde_json::to_string(&patch).unwrap_or_default();
    if spec.len() > MAX_CHANGE_BYTES {
        let total = spec.len();
        let mut cut = MAX_CHANGE_BYTES;
        while !spec.is_char_boundary(cut) {
            cut -= 1;
        }
        spec.truncate(cut);
        spec.push_str(&format!("... (cut; {total} bytes in all)"));
    }
    let metadata = ["labels", "annotations", "finalizers", "ownerReferences"]
        .into_iter()
        .filter(|m| {
            let p = format!("/metadata/{m}");
            field(old, &p) != field(new, &p)
        })
        .collect();
    Changes { spec, metadata }
}

/// The audit action of a change, `admission.<operation>`, apart from the operator's own actions on the same
/// objects. None for CONNECT, which no webhook configuration of ours asks for.
pub fn action(op: &Operation) -> Option<Action> {
    match op {
        Operation::Create => Some(Action::AdmissionCreate),
        Operation::Update => Some(Action::AdmissionUpdate),
        Operation::Delete => Some(Action::AdmissionDelete),
        Operation::Connect => None,
    }
}

/// The who-did-what record of one request: the requester (username, UID, groups; never a token or
/// `userInfo.extra`, which can carry credentials), the operation, the object's UID and what changed. None
/// for an operation that is not a change (CONNECT).
pub fn entry(
    req: &Request<'_>,
    namespace: Option<&str>,
    name: &str,
    uid: Option<&str>,
    admission_uid: &str,
    verdict: &Verdict,
) -> Option<Entry> {
    let action = action(&req.operation)?;
    let object = ObjectRef {
        api_version: "agentiam.dev/v1alpha1".to_owned(),
        kind: req.kind.kind().to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
        uid: uid.map(str::to_owned),
    };
    let (outcome, reason) = match verdict {
        Verdict::Deny(message) => (Outcome::Denied, message.clone()),
        _ => (Outcome::Success, format!("{} {} admitted", verb(&req.operation), req.kind.kind())),
    };
    let c = changes(req.old_object, req.object);
    let mut details = BTreeMap::new();
    req.requester.record_in(&mut details);
    details.insert("operation".to_owned(), format!("{:?}", req.operation).to_uppercase());
    details.insert("admissionUID".to_owned(), admission_uid.to_owned());
    if c.spec != "[]" {
        details.insert("specChanges".to_owned(), c.spec);
    }
    if !c.metadata.is_empty() {
        details.insert("metadataChanged".to_owned(), c.metadata.join(","));
    }
    if let Some(generation) = req.object.or(req.old_object).and_then(|o| o.pointer("/metadata/generation")) {
        details.insert("generation".to_owned(), generation.to_string());
    }
    Some(Entry {
        actor: format!("user:{}", req.requester.username),
        action: action.into(),
        object,
        outcome,
        reason,
        details,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_operator_creates_an_agent_without_an_owner() {
        let owned = agent("reads tickets");
        assert_eq!(agent_owner(&owned, false), None);
        let mut shadow = owned.clone();
        shadow["spec"].as_object_mut().unwrap().remove("owner");
        assert!(agent_owner(&shadow, false).unwrap().contains("spec.owner is required"));
        assert_eq!(agent_owner(&shadow, true), None);
        shadow["spec"]["owner"] = Value::Null;
        assert!(agent_owner(&shadow, false).is_some());
    }

    #[test]
    fn only_the_operator_namespace_may_ask_for_a_cluster_wide_stop_or_a_key_rotation() {
        let reach = crate::registry::revocation::Reach::with_labels("agentiam-system", Default::default());
        let r = |target: serde_json::Value, emergency: bool| serde_json::json!({"spec": {"target": target, "mode": "Suspend", "reason": "x", "emergency": emergency}});
        let plain = r(serde_json::json!({"all": true}), false);
        let wide = r(serde_json::json!({"all": true, "namespaceSelector": {}}), false);
        let rotate = r(serde_json::json!({"all": true}), true);
        assert_eq!(revocation_reach("team-a", &plain, &reach), None);
        for (obj, what) in [(&wide, "namespaceSelector"), (&rotate, "spec.emergency")] {
            let why = revocation_reach("team-a", obj, &reach).unwrap();
            assert!(why.contains(what) && why.contains("agentiam-system"), "{why}");
            assert_eq!(revocation_reach("agentiam-system", obj, &reach), None);
        }
    }

    use serde_json::json;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("cluster.local").unwrap()
    }

    fn alice() -> Requester {
        Requester {
            username: "alice@example.com".into(),
            uid: Some("u-1".into()),
            groups: vec!["devs".into()],
        }
    }

    fn agent(purpose: &str) -> Value {
        json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "Agent",
               "metadata": {"name": "bot", "namespace": "a", "uid": "uid-1", "generation": 2},
               "spec": {"owner": {"kind": "User", "name": "alice"}, "purpose": purpose}})
    }

    fn request<'a>(
        kind: Kind,
        op: Operation,
        who: &'a Requester,
        agents: &'a [String],
        new: Option<&'a Value>,
        old: Option<&'a Value>,
    ) -> Request<'a> {
        Request {
            kind,
            operation: op,
            requester: who,
            requester_is_agent: agents,
            object: new,
            old_object: old,
        }
    }

    #[test]
    fn an_agents_service_account_may_not_change_iam_objects_and_a_human_may() {
        let sa = Requester { username: "system:serviceaccount:a:bot-sa".into(), ..Requester::default() };
        let acting = vec!["a/bot".to_owned()];
        let (new, old) = (agent("new"), agent("old"));
        for kind in [Kind::Agent, Kind::AgentPolicy, Kind::Revocation] {
            for op in [Operation::Create, Operation::Update, Operation::Delete] {
                let v = decide(&td(), &request(kind, op.clone(), &sa, &acting, Some(&new), Some(&old)));
                let Verdict::Deny(m) = v else { panic!("{kind:?} {op:?} admitted") };
                assert!(m.contains("agent a/bot") && m.contains(kind.plural()), "{m}");
            }
        }
        // The same ServiceAccount running no agent, and a human, are admitted.
        let v = decide(&td(), &request(Kind::Agent, Operation::Update, &sa, &[], Some(&new), Some(&old)));
        assert!(v.allowed());
        let v =
            decide(&td(), &request(Kind::Agent, Operation::Update, &alice(), &[], Some(&new), Some(&old)));
        assert_eq!(v, Verdict::allow());
        // Delegations are the next issue's: agents will pass on subsets of theirs.
        let v = decide(&td(), &request(Kind::Delegation, Operation::Create, &sa, &acting, Some(&new), None));
        assert!(v.allowed());
    }

    #[test]
    fn invalid_specs_are_admitted_with_the_reason_they_will_not_work() {
        let bad = agent(" ");
        let v = decide(&td(), &request(Kind::Agent, Operation::Create, &alice(), &[], Some(&bad), None));
        let Verdict::Allow { warnings } = v else { panic!("refused") };
        assert!(warnings[0].contains("spec.purpose"), "{warnings:?}");
        let policy = json!({"apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": "p", "namespace": "a"}, "spec": {"agents": {"names": ["bot"]}, "rules": []}});
        let v =
            decide(&td(), &request(Kind::AgentPolicy, Operation::Create, &alice(), &[], Some(&policy), None));
        let Verdict::Allow { warnings } = v else { panic!("refused") };
        assert!(warnings[0].contains("denies everything"), "{warnings:?}");
        // A metadata-only update of an invalid object (the operator removing its finalizer) warns nobody.
        let v =
            decide(&td(), &request(Kind::Agent, Operation::Update, &alice(), &[], Some(&bad), Some(&bad)));
        assert_eq!(v, Verdict::allow());
    }

    #[test]
    fn the_record_names_the_requester_and_what_changed_but_no_extra() {
        let (new, old) = (agent("new"), agent("old"));
        let who = alice();
        let req = request(Kind::Agent, Operation::Update, &who, &[], Some(&new), Some(&old));
        let e = entry(&req, Some("a"), "bot", Some("uid-1"), "adm-1", &Verdict::allow()).unwrap();
        assert_eq!(e.actor, "user:alice@example.com");
        assert_eq!(e.action, "admission.update");
        assert_eq!(e.outcome, Outcome::Success);
        assert_eq!(e.object.uid.as_deref(), Some("uid-1"));
        assert_eq!(e.details["requester.uid"], "u-1");
        assert_eq!(
            e.details["requester.groups"], r#"["devs"]"#,
            "a JSON array: a group name may hold a comma"
        );
        assert_eq!(e.details["operation"], "UPDATE");
        assert_eq!(e.details["generation"], "2");
        assert_eq!(e.details["specChanges"], r#"[{"op":"replace","path":"/purpose","value":"new"}]"#);
        assert!(!e.details.contains_key("metadataChanged"));
        let denied = entry(&req, Some("a"), "bot", None, "adm-1", &Verdict::Deny("no".into())).unwrap();
        assert_eq!((denied.outcome, denied.reason.as_str()), (Outcome::Denied, "no"));
    }

    #[test]
    fn changes_are_bounded_and_metadata_is_named() {
        let old = json!({"metadata": {"finalizers": ["x"]}, "spec": {"purpose": "a"}});
        let new = json!({"metadata": {}, "spec": {"purpose": "é".repeat(3000)}});
        let c = changes(Some(&old), Some(&new));
        assert!(c.spec.len() < MAX_CHANGE_BYTES + 64 && c.spec.contains("cut;"), "{}", c.spec.len());
        assert_eq!(c.metadata, vec!["finalizers"]);
        assert_eq!(changes(None, Some(&old)).metadata, vec!["finalizers"]);
    }

    #[test]
    fn service_accounts_are_parsed_strictly() {
        let r = |u: &str| Requester { username: u.into(), ..Requester::default() };
        assert_eq!(r("system:serviceaccount:a:b").service_account(), Some(("a", "b")));
        assert_eq!(r("system:serviceaccount:a:").service_account(), None);
        assert_eq!(r("system:serviceaccount:a:b:c").service_account(), None);
        assert_eq!(r("alice").service_account(), None);
    }

    fn delegation(parent: Option<&str>, scopes: &[&str]) -> Delegation {
        let spec = crate::api::DelegationSpec {
            agent_ref: crate::api::LocalRef { name: "refunds".into() },
            parent_ref: parent.map(|p| crate::api::LocalRef { name: p.into() }),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            task: "t".into(),
            ttl: Some("1h".into()),
            expires_at: None,
            max_depth: None,
            audience: None,
            may_act: None,
        };
        Delegation::new("d", spec)
    }

    fn parent_active() -> Option<ParentFacts> {
        Some(ParentFacts::Active {
            name: "root".into(),
            grantee: "triage".into(),
            bounds: Bounds {
                scopes: crate::authz::scope::parse_all(&["refund@pay:orders/**"]).unwrap(),
                expires_at: "2026-12-01T12:00:00Z".parse().unwrap(),
                remaining_depth: 2,
                audience: "pay".into(),
            },
        })
    }

    fn judge(
        who: &Requester,
        acting: &[String],
        d: Delegation,
        parent: Option<ParentFacts>,
        sar: Option<bool>,
    ) -> Verdict {
        let req = request(Kind::Delegation, Operation::Create, who, acting, None, None);
        let facts = DelegationFacts {
            delegation: Ok(d),
            grantee_active: Some(true),
            parent,
            may_delegate: sar.map(Ok),
            now: "2026-12-01T10:00:00Z".parse().unwrap(),
            by_operator: who.username == "system:serviceaccount:agentiam-system:agentiam",
        };
        decide_delegation("a", &req, &facts)
    }

    #[test]
    fn only_the_operator_creates_the_children_of_token_exchanges_and_never_wider_than_their_parent() {
        let operator = Requester {
            username: "system:serviceaccount:agentiam-system:agentiam".into(),
            uid: None,
            groups: vec![],
        };
        let mark = |mut d: Delegation| {
            d.metadata.annotations =
                Some([(crate::names::EXCHANGE_ANNOTATION.to_owned(), "token.exchange:x".to_owned())].into());
            d
        };
        let parent = || {
            Some(ParentFacts::Active {
                name: "p".into(),
                grantee: "bot".into(),
                bounds: Bounds {
                    scopes: crate::authz::scope::parse_all(&["read@crm:contacts/*"]).unwrap(),
                    expires_at: "2026-12-02T10:00:00Z".parse().unwrap(),
                    remaining_depth: 2,
                    audience: "crm".into(),
                },
            })
        };
        let child = mark(delegation(Some("p"), &["read@crm:contacts/1"]));
        // The operator (not a person, not the parent's grantee) may, for an exchange.
        assert!(judge(&operator, &[], child.clone(), parent(), None).allowed());
        // Not without the mark, and nobody else with it.
        let plain = delegation(Some("p"), &["read@crm:contacts/1"]);
        assert!(!judge(&operator, &[], plain, parent(), None).allowed());
        let Verdict::Deny(why) = judge(&alice(), &[], child.clone(), parent(), Some(true)) else { panic!() };
        assert!(why.contains("only the operator's token service"), "{why}");
        // The bounds still hold, and an exchange is never a root.
        let wider = mark(delegation(Some("p"), &["read@crm:**"]));
        assert!(!judge(&operator, &[], wider, parent(), None).allowed());
        let root = mark(delegation(None, &["read@crm:contacts/1"]));
        assert!(!judge(&operator, &[], root, None, None).allowed());
    }

    #[test]
    fn delegations_are_admitted_only_from_who_may_grant_and_never_wider_than_their_parent() {
        let root = delegation(None, &["refund@pay:orders/**"]);
        assert!(judge(&alice(), &[], root.clone(), None, Some(true)).allowed());
        let Verdict::Deny(why) = judge(&alice(), &[], root.clone(), None, Some(false)) else { panic!() };
        assert!(why.contains(r#"the RBAC verb "delegate""#), "{why}");
        let pipeline = Requester { username: "system:serviceaccount:a:ci".into(), ..Requester::default() };
        assert!(
            !judge(&pipeline, &[], root.clone(), None, Some(true)).allowed(),
            "a pipeline grants no root"
        );
        let triage_sa =
            Requester { username: "system:serviceaccount:a:triage-sa".into(), ..Requester::default() };
        let triage = vec!["a/triage".to_owned()];
        assert!(!judge(&triage_sa, &triage, root, None, None).allowed(), "an agent grants no root");

        let narrower = delegation(Some("root"), &["refund@pay:orders/eu/*"]);
        assert!(judge(&triage_sa, &triage, narrower.clone(), parent_active(), None).allowed());
        let other = vec!["a/other".to_owned()];
        assert!(
            !judge(&triage_sa, &other, narrower.clone(), parent_active(), None).allowed(),
            "not the holder"
        );
        assert!(
            judge(&alice(), &[], narrower.clone(), parent_active(), Some(true)).allowed(),
            "a person may"
        );
        assert!(!judge(&alice(), &[], narrower.clone(), parent_active(), Some(false)).allowed());
        let missing = Some(ParentFacts::Missing("root".into()));
        assert!(!judge(&triage_sa, &triage, narrower, missing, None).allowed());
        for wider in [&["refund@pay:**"][..], &["*@pay:orders/1"], &["refund@PAY:orders/1"], &["read@crm:x"]]
        {
            let child = delegation(Some("root"), wider);
            let Verdict::Deny(why) = judge(&triage_sa, &triage, child, parent_active(), None) else {
                panic!("{wider:?} was admitted")
            };
            assert!(why.contains("more than its parent"), "{why}");
        }
        let mut later = delegation(Some("root"), &["refund@pay:orders/1"]);
        later.spec.ttl = Some("3h".into());
        assert!(!judge(&triage_sa, &triage, later, parent_active(), None).allowed(), "a later end");
        let mut ended = delegation(None, &["refund@pay:orders/**"]);
        (ended.spec.ttl, ended.spec.expires_at) = (None, Some("2026-12-01T09:00:00Z".into()));
        let Verdict::Deny(why) = judge(&alice(), &[], ended, None, Some(true)) else { panic!() };
        assert!(why.contains("already passed"), "{why}");
        let bad = delegation(None, &["refund@pay:orders/%2e%2e"]);
        let Verdict::Deny(why) = judge(&alice(), &[], bad, None, Some(true)) else { panic!() };
        assert!(why.starts_with("spec.scopes"), "{why}");
    }
}
