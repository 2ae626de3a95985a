//! Shadow-agent discovery, continuous: watches of every kind that carries a pod template (Deployments,
//! StatefulSets, DaemonSets, CronJobs, Jobs, ReplicaSets, Pods), each object classified by the signatures
//! in force ([`crate::discovery`]), and the findings kept in an [`Inventory`]. A workload that looks like an
//! agent and that no registered Agent covers gets a shadow Agent (no owner, phase `Discovered`, never any
//! credentials); when the workload goes, stops looking like an agent, or a registered Agent comes to cover
//! it, the shadow record is deleted. Adopted records (an owner named) are never deleted here.
//!
//! The watches are streams without stores: an object is classified as it arrives and only what was found
//! is kept (the workloads that look like agents, a few hundred bytes each), so watching every Pod of a
//! large cluster costs the operator little memory. The Secrets and ConfigMaps a template names are read
//! for their key names only, when the template is classified; an update that changes nothing discovery
//! judges by (a status write: [`fingerprint`]) is not classified again.
//!
//! One task owns the inventory and makes every write, in arrival order; the watch tasks only classify and
//! send. After a restart nothing is deleted until every kind has been listed once, so a record whose
//! workload is merely not listed yet survives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{ACTOR, Context, FIELD_MANAGER, report, scoped_api, watches};

mod cards;
use crate::api::{Agent, DiscoveryStatus};
use crate::audit::{Entry, Outcome};
use crate::discovery::card::ServedCard;
use crate::discovery::classify::{Detection, SourceKeys, Sources, Template, classify};
use crate::discovery::signatures::Signatures;
use crate::discovery::workload::{
    HasTemplate, Merged, PodIdentity, Role, WORKLOAD_ANNOTATION, WORKLOAD_UID_ANNOTATION, WorkloadRef,
    fingerprint, is_unadopted_shadow, merged, registered_by, role, shadow_agent,
};
use crate::supervisor::Supervisor;

/// How often every shadow record is checked against the inventory, for a workload whose deletion a watch
/// missed while it was down.
const SWEEP: Duration = Duration::from_secs(30);
/// Objects per page of the watches' lists. Each object is classified and dropped, so a page is the largest
/// thing a list holds; small pages keep the operator's resident size down on clusters with many Pods (the
/// discovery benchmark measures it) at the cost of more list requests.
const PAGE_SIZE: u32 = 100;
/// How long what a ServiceAccount may do is kept before it is asked again.
pub const REACH_TTL: Duration = Duration::from_secs(300);
/// Namespaces discovery never records agents in: the cluster's own.
pub const ALWAYS_EXCLUDED: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// One workload that looks like an agent.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its namespace.
    pub namespace: String,
    /// The workload.
    pub workload: WorkloadRef,
    /// What its template matched.
    pub detection: Detection,
    /// The ServiceAccount its pods run as.
    pub service_account: String,
    /// Its pod template's labels.
    pub template_labels: BTreeMap<String, String>,
    /// Its selector's `matchLabels`, where it has one.
    pub selector_labels: Option<BTreeMap<String, String>>,
    /// What its ServiceAccount may do.
    pub reach: crate::discovery::risk::Reach,
    /// Secrets its pods mount or read that agentiam did not issue.
    pub foreign_secrets: usize,
}

impl Found {
    fn pods(&self) -> PodIdentity<'_> {
        PodIdentity { service_account: &self.service_account, labels: &self.template_labels }
    }

    /// The report in an Agent's status; `sharing` is how many other workloads and Agents share its
    /// ServiceAccount.
    pub fn report(&self, sharing: usize) -> DiscoveryStatus {
        let risk = crate::discovery::risk::assess(crate::discovery::risk::Inputs {
            reach: self.reach,
            static_keys: &self.detection.static_keys,
            foreign_secrets: self.foreign_secrets,
            sharing,
        });
        DiscoveryStatus {
            workload: Some(self.workload.clone()),
            confidence: self.detection.confidence,
            evidence: self.detection.evidence.clone(),
            static_keys: self.detection.static_keys.clone(),
            service_account: Some(self.service_account.clone()),
            borrowed_service_account: None,
            risk: Some(risk),
        }
    }
}

/// Which ServiceAccount one workload's pods run as, for every workload (an agent or not): what a borrowed
/// identity is found from. A few hundred bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Its namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: String,
    /// `<Kind>/<name>` of the workload.
    pub workload: String,
    /// Its pod template's labels.
    pub labels: BTreeMap<String, String>,
}

/// What discovery knows now: the workloads that look like agents, by workload UID, and which watched
/// objects stand for each.
#[derive(Debug, Default)]
pub struct Inventory {
    found: BTreeMap<String, Found>,
    /// (kind, object UID) -> the ServiceAccount use of every object that stands for a workload.
    usage: HashMap<(&'static str, String), Usage>,
    /// (namespace, ServiceAccount) whose users changed since the inventory's task last looked: the Agents
    /// that name them report who borrows them.
    changed_accounts: Vec<(String, String)>,
    /// (kind, object UID) -> workload UID, for every object whose template looks like an agent.
    sources: HashMap<(&'static str, String), String>,
    /// The kinds whose first list is complete.
    listed: BTreeSet<&'static str>,
    /// Workload UID -> pod UID -> the A2A agent card that pod served (controller::discovery::cards).
    cards: HashMap<String, BTreeMap<String, ServedCard>>,
    /// The objects seen in a list in progress, by kind.
    listing: HashMap<&'static str, BTreeSet<String>>,
}

impl Inventory {
    /// Records what one object's template looks like; returns the workload UIDs whose record may change.
    fn seen(
        &mut self,
        kind: &'static str,
        uid: String,
        found: Option<Found>,
        usage: Option<Usage>,
    ) -> Vec<String> {
        if let Some(l) = self.listing.get_mut(kind) {
            l.insert(uid.clone());
        }
        let before = match &usage {
            Some(u) => self.usage.insert((kind, uid.clone()), u.clone()),
            None => self.usage.remove(&(kind, uid.clone())),
        };
        if before != usage {
            let accounts = before.iter().chain(usage.iter());
            self.changed_accounts.extend(accounts.map(|u| (u.namespace.clone(), u.service_account.clone())));
        }
        let key = (kind, uid);
        let before = self.sources.get(&key).cloned();
        let mut dirty: Vec<String> = before.iter().cloned().collect();
        match found {
            Some(f) => {
                let w = f.workload.uid.clone();
                self.sources.insert(key, w.clone());
                self.found.insert(w.clone(), f);
                dirty.push(w);
            }
            None => {
                self.sources.remove(&key);
            }
        }
        dirty.retain(|w| self.prune(w));
        dirty.sort();
        dirty.dedup();
        dirty
    }

    /// Forgets a deleted object (and the card it served, if it is a pod that served one).
    fn gone(&mut self, kind: &'static str, uid: &str) -> Vec<String> {
        if kind == "Pod" {
            self.cards.retain(|_, pods| {
                pods.remove(uid);
                !pods.is_empty()
            });
        }
        self.cards.remove(uid);
        if let Some(u) = self.usage.remove(&(kind, uid.to_owned())) {
            self.changed_accounts.push((u.namespace, u.service_account));
        }
        let w = self.sources.remove(&(kind, uid.to_owned()));
        w.into_iter().filter(|w| self.prune(w)).collect()
    }

    /// Drops the record of workload `w` if no object stands for it any more; true (dirty) either way, so
    /// the caller re-checks it.
    fn prune(&mut self, w: &str) -> bool {
        if !self.sources.values().any(|v| v == w) {
            self.found.remove(w);
        }
        true
    }

    fn list_started(&mut self, kind: &'static str) {
        self.listing.insert(kind, BTreeSet::new());
    }

    /// A list of `kind` ended: objects of that kind it did not contain were deleted meanwhile.
    fn list_done(&mut self, kind: &'static str) -> Vec<String> {
        let seen = self.listing.remove(kind).unwrap_or_default();
        self.listed.insert(kind);
        let mut stale: Vec<String> = self
            .sources
            .keys()
            .chain(self.usage.keys())
            .filter(|(k, u)| *k == kind && !seen.contains(u))
            .map(|(_, u)| u.clone())
            .collect();
        stale.sort();
        stale.dedup();
        stale.iter().flat_map(|u| self.gone(kind, u)).collect()
    }

    /// Whether every watched kind has been listed once: until then, absence proves nothing.
    fn complete(&self) -> bool {
        self.listed.len() == KINDS.len()
    }

    /// The record of workload `uid`.
    pub fn get(&self, uid: &str) -> Option<&Found> {
        self.found.get(uid)
    }

    /// The workloads of `namespace` whose pods run as `service_account`.
    pub fn users_of<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
    ) -> impl Iterator<Item = &'a Usage> {
        self.usage.values().filter(move |u| u.namespace == namespace && u.service_account == service_account)
    }

    /// Every workload that looks like an agent.
    pub fn all(&self) -> Vec<Found> {
        self.found.values().cloned().collect()
    }
}

const KINDS: [&str; 7] = ["Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job", "ReplicaSet", "Pod"];

/// Whether `a` is in `namespace` and its `spec.workload` names `service_account`.
fn names_account(a: &Agent, namespace: &str, service_account: &str) -> bool {
    a.namespace().as_deref() == Some(namespace)
        && a.spec.workload.as_ref().and_then(|w| w.service_account_name.as_deref()) == Some(service_account)
}

/// What the watch tasks tell the inventory's task.
#[derive(Debug)]
enum Msg {
    ListStart(&'static str),
    Seen { kind: &'static str, uid: String, found: Option<Box<Found>>, usage: Option<Box<Usage>> },
    Gone { kind: &'static str, uid: String },
    ListDone(&'static str),
}

/// The running discovery: its inventory, read by the Agent controller for `status.discovery`.
#[derive(Debug)]
pub struct Discovery {
    inventory: Mutex<Inventory>,
    agents: Store<Agent>,
    reach_cache: Mutex<HashMap<(String, String), (std::time::Instant, crate::discovery::risk::Reach)>>,
    signatures: arc_swap::ArcSwap<Signatures>,
    excluded: BTreeSet<String>,
    /// Agents to reconcile when what discovery knows about them changes (the Agent controller's nudges).
    nudge: mpsc::UnboundedSender<ObjectRef<Agent>>,
    /// Where running pods are handed over to be asked for an A2A agent card (unset: not asked).
    card_asks: std::sync::OnceLock<mpsc::Sender<cards::Ask>>,
}

impl Discovery {
    /// The report for `agent`'s status: the workload its annotation names (a shadow or adopted agent), or
    /// else the first workload in its namespace it covers (a registered agent), when discovery sees one.
    ///
    /// A registered agent whose `spec.workload` names a ServiceAccount is also told who else uses it: the
    /// workloads it does not cover that run as it, and the other Agents of the namespace that name it.
    pub fn report_for(&self, agent: &Agent) -> Option<DiscoveryStatus> {
        let ns = agent.namespace()?;
        let inv = self.inventory.lock().ok()?;
        let me = [agent];
        let sharing = |f: &Found| {
            let mine = format!("{}/{}", f.workload.kind, f.workload.name);
            let workloads: BTreeSet<&str> = inv
                .users_of(&ns, &f.service_account)
                .map(|u| u.workload.as_str())
                .filter(|w| *w != mine)
                .collect();
            workloads.len()
        };
        let mut report = match agent.annotations().get(WORKLOAD_UID_ANNOTATION).and_then(|uid| inv.get(uid)) {
            Some(found) if found.namespace == ns => Some(found.report(sharing(found))),
            Some(_) => None,
            None => inv
                .found
                .values()
                .filter(|f| f.namespace == ns)
                .find(|f| registered_by(&me, f.pods()).is_some())
                .map(|f| f.report(sharing(f))),
        };
        if agent.spec.owner.is_some()
            && let Some(sa) = agent.spec.workload.as_ref().and_then(|w| w.service_account_name.clone())
        {
            let others: Vec<String> = self
                .agents
                .state()
                .iter()
                .filter(|a| names_account(a, &ns, &sa) && a.name_any() != agent.name_any())
                .map(|a| a.name_any())
                .collect();
            let users: Vec<(&str, PodIdentity<'_>)> = inv
                .users_of(&ns, &sa)
                .map(|u| {
                    (
                        u.workload.as_str(),
                        PodIdentity { service_account: &u.service_account, labels: &u.labels },
                    )
                })
                .collect();
            if let Some(b) = crate::discovery::workload::borrowed(agent, &sa, &users, others) {
                report.get_or_insert_with(DiscoveryStatus::default).borrowed_service_account = Some(b);
            }
        }
        report
    }

    /// What `service_account` in `namespace` may do, asked by SubjectAccessReview and kept for
    /// [`REACH_TTL`] (RBAC changes are not watched; they show within that time, or at the workload's next
    /// change).
    async fn reach(
        &self,
        ctx: &Context,
        namespace: &str,
        service_account: &str,
    ) -> crate::discovery::risk::Reach {
        use k8s_openapi::api::authorization::v1::ResourceAttributes;
        let key = (namespace.to_owned(), service_account.to_owned());
        if let Ok(cache) = self.reach_cache.lock()
            && let Some((at, r)) = cache.get(&key)
            && at.elapsed() < REACH_TTL
        {
            return *r;
        }
        let who = crate::webhook::validate::Requester {
            username: format!("system:serviceaccount:{namespace}:{service_account}"),
            uid: None,
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        };
        let ask = |group: &str, resource: &str, verb: &str, ns: Option<&str>| ResourceAttributes {
            group: Some(group.to_owned()),
            resource: Some(resource.to_owned()),
            verb: Some(verb.to_owned()),
            namespace: ns.map(str::to_owned),
            ..ResourceAttributes::default()
        };
        let client = Some(&ctx.client);
        let answer = |r: Result<bool, String>| match r {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(%namespace, service_account, error = %e, "discovery could not check a ServiceAccount's RBAC");
                None
            }
        };
        let reach = crate::discovery::risk::Reach {
            everything: answer(crate::webhook::server::review(client, &who, ask("*", "*", "*", None)).await),
            secrets_cluster_wide: answer(
                crate::webhook::server::review(client, &who, ask("", "secrets", "list", None)).await,
            ),
            secrets_here: answer(
                crate::webhook::server::review(client, &who, ask("", "secrets", "get", Some(namespace)))
                    .await,
            ),
            create_pods: answer(
                crate::webhook::server::review(client, &who, ask("", "pods", "create", Some(namespace)))
                    .await,
            ),
        };
        if let Ok(mut cache) = self.reach_cache.lock() {
            cache.retain(|_, (at, _)| at.elapsed() < REACH_TTL);
            cache.insert(key, (std::time::Instant::now(), reach));
        }
        reach
    }

    /// Records that pod `pod` of workload `workload` serves `card`.
    fn record_card(&self, workload: &str, pod: &str, card: ServedCard) {
        if let Ok(mut inv) = self.inventory.lock() {
            inv.cards.entry(workload.to_owned()).or_default().insert(pod.to_owned(), card);
        }
    }

    /// The cards the pods of `workload` serve, as far as discovery asked them.
    fn cards_of(&self, workload: &str) -> Vec<ServedCard> {
        let inv = self.inventory.lock();
        let mut cards: Vec<ServedCard> = inv
            .ok()
            .and_then(|i| i.cards.get(workload).map(|p| p.values().cloned().collect()))
            .unwrap_or_default();
        cards.sort();
        cards.dedup();
        cards
    }

    /// Every workload that looks like an agent, now.
    pub fn found(&self) -> Vec<Found> {
        self.inventory.lock().map(|i| i.all()).unwrap_or_default()
    }

    /// The signatures in force.
    pub fn signatures(&self) -> Arc<Signatures> {
        self.signatures.load_full()
    }
}

/// Starts discovery under `tasks`: one watch per kind and the inventory's task. Returns the discovery, for
/// status reports; Agents whose report changed are nudged through the context.
pub fn start(
    ctx: Arc<Context>,
    agents: &super::shared::Shared<Agent>,
    signatures: Arc<Signatures>,
    agent_cards: bool,
    tasks: &mut Supervisor,
) -> Arc<Discovery> {
    let nudge = ctx.nudges.clone();
    let mut excluded: BTreeSet<String> = ALWAYS_EXCLUDED.iter().map(|s| (*s).to_owned()).collect();
    // The operator's own namespace serves no Agents when it watches the whole cluster (the webhooks skip it
    // too); with --watch-namespace it is usually the one namespace it serves.
    if ctx.config.watch_namespace.is_none() {
        excluded.insert(ctx.config.operator_namespace.clone());
    }
    let discovery = Arc::new(Discovery {
        inventory: Mutex::default(),
        agents: agents.store(),
        reach_cache: Mutex::default(),
        signatures: arc_swap::ArcSwap::new(signatures),
        excluded,
        nudge,
        card_asks: std::sync::OnceLock::new(),
    });
    let (tx, rx) = mpsc::channel(1024);
    if agent_cards {
        let asks = cards::start(Arc::clone(&ctx), Arc::clone(&discovery), tx.clone(), tasks);
        let _ = discovery.card_asks.set(asks);
    }
    let ns = ctx.config.watch_namespace.clone();
    let client = ctx.client.clone();
    macro_rules! watch_kind {
        ($k:ty, $name:literal) => {{
            let api: Api<$k> = scoped_api(&client, ns.as_deref());
            let (ctx, d, tx) = (Arc::clone(&ctx), Arc::clone(&discovery), tx.clone());
            tasks.spawn_infallible(concat!("discovery: watch ", $name), watch(ctx, d, api, $name, tx));
        }};
    }
    watch_kind!(Deployment, "Deployment");
    watch_kind!(StatefulSet, "StatefulSet");
    watch_kind!(DaemonSet, "DaemonSet");
    watch_kind!(ReplicaSet, "ReplicaSet");
    watch_kind!(Job, "Job");
    watch_kind!(CronJob, "CronJob");
    watch_kind!(Pod, "Pod");
    let changes = agents.touched("discovery").boxed();
    tasks.spawn_infallible(
        "discovery: inventory",
        run(ctx, Arc::clone(&discovery), agents.store(), changes, rx),
    );
    discovery
}

async fn watch<K>(
    ctx: Arc<Context>,
    discovery: Arc<Discovery>,
    api: Api<K>,
    kind: &'static str,
    tx: mpsc::Sender<Msg>,
) where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + HasTemplate
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let mut events = Box::pin(watches::events_paged(api, format!("discovery: {kind}"), PAGE_SIZE));
    // What each object looked like when it was last classified: an update that changes none of it (a status
    // write) is not classified again. A list always is, so a relist brings everything up to date.
    let mut judged: HashMap<String, u64> = HashMap::new();
    while let Some(event) = events.next().await {
        let in_list = matches!(event, watcher::Event::InitApply(_));
        let msg = match event {
            watcher::Event::Init => {
                // The list that follows brings back every object still there.
                judged.clear();
                Msg::ListStart(kind)
            }
            watcher::Event::InitDone => Msg::ListDone(kind),
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) if o.uid().is_some() => {
                let uid = o.uid().unwrap_or_default();
                // A running pod may serve an A2A agent card; status changes (Ready) matter here, so this
                // comes before the fingerprint check. A full queue drops it: the pod's next change retries.
                if let Some(asks) = discovery.card_asks.get()
                    && let Some(pod) = (&o as &dyn std::any::Any).downcast_ref::<Pod>()
                    && let Some(target) = crate::discovery::card::target(pod)
                    && !discovery.excluded.contains(&target.namespace)
                {
                    let _ = asks.try_send(cards::Ask { target, retry: false });
                }
                let print = fingerprint(o.meta(), o.template());
                if judged.insert(uid.clone(), print) == Some(print) && !in_list {
                    continue;
                }
                let (found, usage) = observe(&ctx, &discovery, kind, &o).await;
                Msg::Seen { kind, uid, found: found.map(Box::new), usage: usage.map(Box::new) }
            }
            watcher::Event::Apply(_) | watcher::Event::InitApply(_) => continue,
            watcher::Event::Delete(o) => {
                let Some(uid) = o.uid() else { continue };
                judged.remove(&uid);
                Msg::Gone { kind, uid }
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Classifies one object: the workload it stands for if that looks like an agent, and (for any workload)
/// the ServiceAccount its pods run as.
async fn observe<K>(
    ctx: &Context,
    discovery: &Discovery,
    kind: &'static str,
    object: &K,
) -> (Option<Found>, Option<Usage>)
where
    K: Resource<DynamicType = ()> + HasTemplate,
{
    let meta = object.meta();
    let Some(namespace) = meta.namespace.clone() else { return (None, None) };
    if discovery.excluded.contains(&namespace) {
        return (None, None);
    }
    let api_version = K::api_version(&()).into_owned();
    let workload = match role(&api_version, kind, meta) {
        None | Some(Role::Covered) => return (None, None),
        Some(Role::Workload(w) | Role::SourceFor(w)) => w,
    };
    let Some((template_meta, spec, selector)) = object.template() else { return (None, None) };
    let Merged { labels, annotations, template_labels } = merged(kind, meta, template_meta);
    let mut sources = read_sources(&ctx.client, &namespace, &[spec]).await;
    sources.agent_cards = discovery.cards_of(&workload.uid);
    let signatures = discovery.signatures.load();
    let detection =
        classify(&signatures, Template { labels: &labels, annotations: &annotations, spec }, &sources);
    let service_account = spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned());
    let usage = Usage {
        namespace: namespace.clone(),
        service_account: service_account.clone(),
        workload: format!("{}/{}", workload.kind, workload.name),
        labels: template_labels.clone(),
    };
    let found = if detection.is_agent(signatures.threshold) {
        let reach = discovery.reach(ctx, &namespace, &service_account).await;
        let foreign_secrets = sources.secrets.values().filter(|s| !s.issued_by_agentiam).count();
        Some(Found {
            namespace,
            workload,
            detection,
            service_account,
            template_labels,
            selector_labels: selector,
            reach,
            foreign_secrets,
        })
    } else {
        None
    };
    (found, Some(usage))
}

/// The key names (never the values) of the Secrets and ConfigMaps the pod specs name, as far as they exist
/// and can be read.
pub(crate) async fn read_sources(client: &kube::Client, namespace: &str, specs: &[&PodSpec]) -> Sources {
    let (mut secrets, mut maps) = (BTreeSet::new(), BTreeSet::new());
    let containers = specs.iter().flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()));
    for c in containers {
        for from in c.env_from.iter().flatten() {
            secrets.extend(from.secret_ref.as_ref().map(|s| s.name.clone()));
            maps.extend(from.config_map_ref.as_ref().map(|m| m.name.clone()));
        }
        for e in c.env.iter().flatten() {
            secrets.extend(
                e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).map(|s| s.name.clone()),
            );
        }
    }
    for v in specs.iter().flat_map(|s| s.volumes.iter().flatten()) {
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            secrets.extend(p.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    let mut out = Sources::default();
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in secrets {
        match secret_api.get_opt(&name).await {
            Ok(Some(s)) => {
                let issued = crate::discovery::classify::issued_by_agentiam(&name, s.labels());
                let mut keys: Vec<String> = s.data.iter().flat_map(|d| d.keys().cloned()).collect();
                keys.extend(s.string_data.iter().flat_map(|d| d.keys().cloned()));
                out.secrets.insert(name, SourceKeys { keys, issued_by_agentiam: issued });
            }
            Ok(None) => {}
            Err(e) => {
                warn!(%namespace, secret = %name, error = %e, "discovery could not read a Secret's key names")
            }
        }
    }
    let map_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for name in maps {
        match map_api.get_opt(&name).await {
            Ok(Some(m)) => {
                let mut keys: Vec<String> = m.data.iter().flat_map(|d| d.keys().cloned()).collect();
                keys.extend(m.binary_data.iter().flat_map(|d| d.keys().cloned()));
                out.config_maps.insert(name, SourceKeys { keys, issued_by_agentiam: false });
            }
            Ok(None) => {}
            Err(e) => {
                warn!(%namespace, configmap = %name, error = %e, "discovery could not read a ConfigMap's key names")
            }
        }
    }
    out
}

/// How many shadow records the inventory's task brings in line at once (each is a few API calls and an
/// audit record; one at a time, a burst of new agents waits on the API server's round trips in series).
const SYNC_CONCURRENCY: usize = 8;
/// At most this many queued watch messages are taken in one round.
const BATCH: usize = 512;

impl Inventory {
    /// Applies one watch message; returns the workload UIDs to bring in line ("" for every record).
    fn apply(&mut self, msg: Msg) -> Vec<String> {
        match msg {
            Msg::ListStart(kind) => {
                self.list_started(kind);
                Vec::new()
            }
            Msg::Seen { kind, uid, found, usage } => {
                self.seen(kind, uid, found.map(|f| *f), usage.map(|u| *u))
            }
            Msg::Gone { kind, uid } => self.gone(kind, &uid),
            Msg::ListDone(kind) => {
                let mut d = self.list_done(kind);
                if self.complete() {
                    info!(looking_like_agents = self.found.len(), "discovery has listed every kind");
                    // Everything is listed: every record can be checked now.
                    d.extend(self.found.keys().cloned());
                    d.push(String::new());
                }
                d
            }
        }
    }
}

/// The workloads whose record an Agent's change may affect: a shadow record's own workload (it covers no
/// other), or, for a registered Agent (which may cover any), every one of its namespace.
fn affected_by(agent: &Agent, inv: &Inventory) -> Vec<String> {
    if is_unadopted_shadow(agent) {
        return annotated(agent).map(str::to_owned).into_iter().collect();
    }
    let ns = agent.namespace();
    inv.found.values().filter(|f| Some(&f.namespace) == ns.as_ref()).map(|f| f.workload.uid.clone()).collect()
}

/// The inventory's task: applies what the watches send, then brings the shadow records in line.
///
/// Each round takes every message already queued (up to [`BATCH`]), so a burst of workloads is one round,
/// and brings the records it touched in line [`SYNC_CONCURRENCY`] at a time: different workloads have
/// different records, and one workload appears once per round.
async fn run(
    ctx: Arc<Context>,
    discovery: Arc<Discovery>,
    agents: Store<Agent>,
    mut agent_changes: futures::stream::BoxStream<'static, Arc<Agent>>,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generations: HashMap<String, i64> = HashMap::new();
    loop {
        let mut dirty: Vec<String> = tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                let Ok(mut inv) = discovery.inventory.lock() else { return };
                let mut d = inv.apply(msg);
                for _ in 1..BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    d.extend(inv.apply(msg));
                }
                d
            }
            // Every record is checked again now and then: a create that failed, a record someone deleted,
            // a deletion a watch missed.
            _ = sweep.tick() => {
                let Ok(inv) = discovery.inventory.lock() else { return };
                inv.found.keys().cloned().chain(std::iter::once(String::new())).collect()
            }
            // An Agent created, changed or deleted may cover a workload now, or no longer, or be a shadow
            // record someone deleted (recorded anew by this). Only a new spec (or a new or deleted Agent)
            // can change what it covers: the status writes that follow every reconcile are skipped, or each
            // would set off another round.
            Some(agent) = agent_changes.next() => {
                let uid = agent.uid().unwrap_or_default();
                let exists = agents.get(&ObjectRef::from_obj(agent.as_ref())).is_some_and(|a| a.uid() == agent.uid());
                let generation = agent.metadata.generation.unwrap_or_default();
                let changed = if exists {
                    generations.insert(uid, generation) != Some(generation)
                } else {
                    generations.remove(&uid);
                    true
                };
                let Ok(inv) = discovery.inventory.lock() else { return };
                if changed { affected_by(&agent, &inv) } else { Vec::new() }
            }
        };
        dirty.sort();
        dirty.dedup();
        let everything = dirty.first().is_some_and(String::is_empty);
        dirty.retain(|uid| !uid.is_empty());
        futures::stream::iter(dirty)
            .for_each_concurrent(SYNC_CONCURRENCY, |uid| {
                let (ctx, discovery, agents) = (&ctx, &discovery, &agents);
                async move { sync(ctx, discovery, agents, &uid).await }
            })
            .await;
        if everything {
            sweep_records(&ctx, &discovery, &agents).await;
        }
        let accounts = discovery.inventory.lock().map(|mut i| std::mem::take(&mut i.changed_accounts));
        let mut accounts = accounts.unwrap_or_default();
        accounts.sort();
        accounts.dedup();
        for (ns, sa) in accounts {
            for a in agents.state().iter().filter(|a| names_account(a, &ns, &sa)) {
                let _ = discovery.nudge.send(ObjectRef::from_obj(a.as_ref()));
            }
        }
        let n = discovery.inventory.lock().map(|i| i.found.len()).unwrap_or_default();
        crate::metrics::global().discovered_workloads(n);
    }
}

/// Brings the shadow record of workload `uid` in line with the inventory.
async fn sync(ctx: &Context, discovery: &Discovery, agents: &Store<Agent>, uid: &str) {
    let (found, complete) = {
        let Ok(inv) = discovery.inventory.lock() else { return };
        (inv.get(uid).cloned(), inv.complete())
    };
    let existing = agents.state().into_iter().find(|a| is_unadopted_shadow(a) && annotated(a) == Some(uid));
    if let Some(a) = &existing {
        let _ = discovery.nudge.send(ObjectRef::from_obj(a.as_ref()));
    }
    match found {
        Some(f) => {
            let in_ns: Vec<Arc<Agent>> = agents
                .state()
                .into_iter()
                .filter(|a| a.namespace().as_deref() == Some(f.namespace.as_str()))
                .collect();
            let refs: Vec<&Agent> = in_ns.iter().map(AsRef::as_ref).collect();
            let covering = registered_by(&refs, f.pods());
            if let Some(by) = covering {
                // Its status reports the workload too.
                let _ = discovery.nudge.send(ObjectRef::from_obj(by));
            }
            match (covering, existing) {
                (None, None) => create(ctx, &f, &refs).await,
                (Some(by), Some(shadow)) => {
                    let why = format!("a registered Agent covers the workload now: {}", by.name_any());
                    remove(ctx, &shadow, &why).await;
                }
                _ => {}
            }
        }
        None if complete => {
            if let Some(shadow) = existing {
                remove(ctx, &shadow, "the workload is gone or no longer looks like an agent").await;
            }
        }
        None => {}
    }
}

/// After every kind is listed, and every [`SWEEP`]: a shadow record whose workload discovery does not know
/// of is deleted.
async fn sweep_records(ctx: &Context, discovery: &Discovery, agents: &Store<Agent>) {
    let known: BTreeSet<String> = {
        let Ok(inv) = discovery.inventory.lock() else { return };
        if !inv.complete() {
            return;
        }
        inv.found.keys().cloned().collect()
    };
    for a in agents.state() {
        if is_unadopted_shadow(&a) && annotated(&a).is_some_and(|u| !known.contains(u)) {
            remove(ctx, &a, "the workload is gone or no longer looks like an agent").await;
        }
    }
}

fn annotated(a: &Agent) -> Option<&str> {
    a.metadata.annotations.as_ref()?.get(WORKLOAD_UID_ANNOTATION).map(String::as_str)
}

async fn create(ctx: &Context, f: &Found, in_ns: &[&Agent]) {
    let reasons: Vec<String> = f.detection.evidence.iter().map(|e| e.signature.clone()).collect();
    let agent = shadow_agent(&f.namespace, &f.workload, f.pods(), f.selector_labels.as_ref(), &reasons);
    let name = agent.name_any();
    if let Some(taken) = in_ns.iter().find(|a| a.name_any() == name) {
        if is_unadopted_shadow(taken) {
            // The record of an earlier workload of the same name (deleted and created again): it goes
            // first, and the next pass records the new one.
            remove(ctx, taken, "a new workload of the same name replaced the one it recorded").await;
        } else {
            warn!(namespace = %f.namespace, agent = %name, "a shadow agent's name is taken by a registered Agent; not recorded");
        }
        return;
    }
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &f.namespace);
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    let created = match api.create(&pp, &agent).await {
        Ok(a) => a,
        Err(kube::Error::Api(e)) if e.code == 409 => return,
        Err(e) => {
            warn!(namespace = %f.namespace, agent = %name, error = %e, "failed to record a shadow agent");
            return;
        }
    };
    crate::metrics::global().shadow_agent("detected", &f.workload.kind);
    let keys = f.detection.static_keys.len();
    let summary = format!(
        "{} {} looks like an AI agent (confidence {}: {}) and no registered Agent covers it{}",
        f.workload.kind,
        f.workload.name,
        f.detection.confidence,
        reasons.join(", "),
        if keys > 0 { format!("; it holds {keys} static LLM key(s)") } else { String::new() }
    );
    info!(namespace = %f.namespace, agent = %name, workload = %f.workload.name, "shadow agent recorded");
    let entry = Entry::new(
        ACTOR,
        crate::audit::Action::DiscoveryDetect,
        super::object_ref(&created),
        Outcome::Success,
        summary.clone(),
    )
    .with_detail("workloadKind", f.workload.kind.clone())
    .with_detail("workloadName", f.workload.name.clone())
    .with_detail("workloadUID", f.workload.uid.clone())
    .with_detail("confidence", f.detection.confidence.to_string())
    .with_detail("signatures", reasons.join(","))
    .with_detail("staticKeys", keys.to_string());
    if let Err(e) = ctx.audit.append(entry).await {
        warn!(error = %e, "failed to record a shadow agent in the audit log");
    }
    report::event(ctx, &created, EventType::Warning, "ShadowAgentDetected", summary).await;
}

async fn remove(ctx: &Context, shadow: &Agent, why: &str) {
    let (Some(ns), Some(uid)) = (shadow.namespace(), shadow.uid()) else { return };
    let name = shadow.name_any();
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
        Err(e) => {
            warn!(namespace = %ns, agent = %name, error = %e, "failed to delete a shadow agent");
            return;
        }
    }
    let kind =
        shadow.annotations().get(WORKLOAD_ANNOTATION).and_then(|w| w.split('/').next()).unwrap_or("unknown");
    crate::metrics::global().shadow_agent("removed", kind);
    info!(namespace = %ns, agent = %name, why, "shadow agent removed");
    let mut entry = Entry::new(
        ACTOR,
        crate::audit::Action::DiscoveryCleanup,
        super::object_ref(shadow),
        Outcome::Success,
        why,
    );
    if let Some(w) = annotated(shadow) {
        entry = entry.with_detail("workloadUID", w);
    }
    if let Err(e) = ctx.audit.append(entry).await {
        warn!(error = %e, "failed to record a shadow agent's cleanup in the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(uid: &str) -> Found {
        Found {
            namespace: "ns".into(),
            workload: WorkloadRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "w".into(),
                uid: uid.into(),
            },
            detection: Detection::default(),
            service_account: "default".into(),
            template_labels: BTreeMap::new(),
            selector_labels: None,
            reach: crate::discovery::risk::Reach::default(),
            foreign_secrets: 0,
        }
    }

    #[test]
    fn a_workload_stays_while_any_object_stands_for_it() {
        let mut inv = Inventory::default();
        assert_eq!(inv.seen("ReplicaSet", "rs1".into(), Some(found("w1")), None), ["w1"]);
        inv.seen("ReplicaSet", "rs2".into(), Some(found("w1")), None);
        inv.gone("ReplicaSet", "rs1");
        assert!(inv.get("w1").is_some(), "rs2 still stands for it");
        assert_eq!(inv.gone("ReplicaSet", "rs2"), ["w1"]);
        assert!(inv.get("w1").is_none());
        // A template that no longer looks like an agent ends the record too.
        inv.seen("Deployment", "d".into(), Some(found("d")), None);
        assert_eq!(inv.seen("Deployment", "d".into(), None, None), ["d"]);
        assert!(inv.get("d").is_none());
    }

    #[test]
    fn a_relist_forgets_what_it_no_longer_contains_and_completes_the_inventory() {
        let mut inv = Inventory::default();
        for k in KINDS {
            inv.list_started(k);
        }
        inv.seen("Deployment", "a".into(), Some(found("a")), None);
        inv.seen("Deployment", "b".into(), Some(found("b")), None);
        for k in KINDS {
            assert!(!inv.complete());
            inv.list_done(k);
        }
        assert!(inv.complete());
        // A relist after a watch gap that no longer contains b.
        inv.list_started("Deployment");
        inv.seen("Deployment", "a".into(), Some(found("a")), None);
        assert_eq!(inv.list_done("Deployment"), ["b"]);
        assert!(inv.get("a").is_some() && inv.get("b").is_none());
    }
}
