//! One watch and one store per kind, shared by every consumer: the policy index, the admission webhooks and
//! the controllers all read the same Agents, AgentPolicies, Revocations and Delegations, from one watch
//! each. Before
//! this, Agents were watched twice and AgentPolicies three times: more load on the API server, more memory,
//! and consumers that could disagree for a moment about the same object.
//!
//! kube-runtime's own shared streams (`store_shared`, `Writer::subscribe`) are not used: their broadcast
//! waits for the slowest subscriber, so the watch, and the policy index with it, would stall until every
//! controller polls its stream. Here the controllers start only after the index is loaded (see
//! `operator::run`), so that wait would never end. This hub never waits for a consumer. A consumer that falls
//! more than [`BUFFER`] changes behind is handed every object in the store instead of the changes it
//! missed. That is what a relist gives too, so a controller reconciles everything once and nothing is lost.
//! The one thing a resync cannot replay is a deletion: consumers that act on deletions (the Agent
//! controller's policy mapping) get a warning in the log, and their periodic resync covers the rest.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::api::{Agent, AgentPolicy, ApprovalRequest, Delegation, Revocation};
use crate::controller::{scoped_api, watches};
use crate::registry::revocation::{NamespaceLookup, Reach};
use crate::supervisor::Supervisor;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;

/// How many changes a consumer may fall behind before it is resynced from the store.
pub const BUFFER: usize = 4096;

/// How far a shared watch has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The first complete list is in the store.
    pub listed: bool,
    /// Events applied to the store so far (changes every time the store may have changed).
    pub events: u64,
}

/// What the hub passes on to its consumers.
#[derive(Debug, Clone)]
enum Change<K> {
    Applied(Arc<K>),
    Deleted(Arc<K>),
    /// A list (the first, or a relist after a 410) replaced the store: every object may be new.
    Resync,
}

/// The one watch of `K`: its store, its progress, and streams of its changes for any number of consumers.
#[derive(Clone)]
pub struct Shared<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    name: String,
    store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
    progress: watch::Receiver<Progress>,
    health: Arc<watches::WatchHealth>,
}

impl<K: Resource + 'static> Debug for Shared<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let progress = *self.progress.borrow();
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("progress", &progress)
            .finish_non_exhaustive()
    }
}

impl<K> Shared<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    /// Starts the watch of `api` under `tasks`, as the task `name` (also the watch's name in logs and
    /// metrics). The watch rides out API server outages with [`watches::Backoff`] and skips malformed
    /// objects ([`watches::events`]).
    pub fn start(api: Api<K>, name: &'static str, tasks: &mut Supervisor) -> Self
    where
        K::Scope: kube::core::NamespaceScope,
    {
        let health = Arc::new(watches::WatchHealth::default());
        let events = watches::events_reporting(api, name.to_owned(), Arc::clone(&health));
        let mut shared = Self::fed_by(events, name, tasks);
        shared.health = health;
        shared
    }

    /// [`Self::start`] for a cluster-scoped kind, watched everywhere.
    pub fn start_cluster(client: &Client, name: &'static str, tasks: &mut Supervisor) -> Self
    where
        K: Resource<Scope = kube::core::ClusterResourceScope>,
    {
        Self::fed_by(watches::cluster_events(client.clone(), name.to_owned()), name, tasks)
    }

    fn fed_by(
        events: impl Stream<Item = watcher::Event<K>> + Send + 'static,
        name: &'static str,
        tasks: &mut Supervisor,
    ) -> Self {
        let (shared, mut feed) = Self::new(name);
        let task = events.for_each(move |event| {
            feed.apply(event);
            std::future::ready(())
        });
        tasks.spawn_infallible(name, task);
        shared
    }

    /// A hub with nothing feeding it yet, and what feeds it.
    fn new(name: &str) -> (Self, Feed<K>) {
        let (store, writer) = reflector::store::<K>();
        let (changes, _) = broadcast::channel(BUFFER);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let feed = Feed { writer, changes: changes.clone(), progress: progress_tx };
        let health = Arc::default();
        (Self { name: name.to_owned(), store, changes, progress, health }, feed)
    }

    /// The store every consumer reads.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Since when the watch has been failing, if it is (see [`watches::WatchHealth`]).
    pub fn health(&self) -> Arc<watches::WatchHealth> {
        Arc::clone(&self.health)
    }

    /// The watch's progress; changes whenever the store may have.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Objects created or modified, for a controller of `K`: every object in the store first (when the first
    /// list is already in), then each change, and every object again after a relist or a lag.
    pub fn applied(&self, consumer: &str) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe(consumer, false)
    }

    /// Like [`Self::applied`], with deleted objects as well: for mappers from `K` to another kind.
    pub fn touched(&self, consumer: &str) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe(consumer, true)
    }

    fn subscribe(&self, consumer: &str, deletions: bool) -> impl Stream<Item = Arc<K>> + Send + 'static {
        // Subscribe before looking at the store, so no change falls between the two (one seen twice is
        // harmless: consumers are idempotent).
        let rx = self.changes.subscribe();
        let pending: VecDeque<Arc<K>> =
            if self.progress.borrow().listed { self.store.state().into() } else { VecDeque::new() };
        let who = format!("{} -> {consumer}", self.name);
        let store = self.store.clone();
        futures::stream::unfold((rx, pending), move |(mut rx, mut pending)| {
            let (store, who) = (store.clone(), who.clone());
            async move {
                loop {
                    if let Some(object) = pending.pop_front() {
                        return Some((object, (rx, pending)));
                    }
                    match rx.recv().await {
                        Ok(Change::Applied(object)) => return Some((object, (rx, pending))),
                        Ok(Change::Deleted(object)) if deletions => return Some((object, (rx, pending))),
                        Ok(Change::Deleted(_)) => {}
                        Ok(Change::Resync) => pending = store.state().into(),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            crate::metrics::global().watch_restart(&who);
                            if deletions {
                                warn!(consumer = %who, missed, "a consumer fell behind its shared watch; resyncing from the store (deletions it missed are not replayed)");
                            } else {
                                warn!(consumer = %who, missed, "a consumer fell behind its shared watch; resyncing from the store");
                            }
                            pending = store.state().into();
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
    }
}

/// The writing side of a [`Shared`]: the one place its store changes.
struct Feed<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    changes: broadcast::Sender<Change<K>>,
    progress: watch::Sender<Progress>,
}

impl<K> Feed<K>
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    /// Applies one watch event to the store, then tells the consumers. In that order, so a consumer woken by
    /// a change reads the store as of that change or later.
    fn apply(&mut self, event: watcher::Event<K>) {
        self.writer.apply_watcher_event(&event);
        let change = match event {
            watcher::Event::Apply(k) => Some(Change::Applied(Arc::new(k))),
            watcher::Event::Delete(k) => Some(Change::Deleted(Arc::new(k))),
            // The objects of a list reach the store only at its end; consumers get them all then.
            watcher::Event::Init | watcher::Event::InitApply(_) => None,
            watcher::Event::InitDone => Some(Change::Resync),
        };
        self.progress.send_modify(|p| {
            p.events = p.events.wrapping_add(1);
            p.listed |= matches!(change, Some(Change::Resync));
        });
        if let Some(change) = change {
            // No consumer yet is not an error: whoever subscribes later starts from the store.
            let _ = self.changes.send(change);
        }
    }
}

/// The kinds more than one component reads, each watched once (in `--watch-namespace`, or everywhere).
#[derive(Debug, Clone)]
pub struct Watched {
    /// Read by the policy index, the webhooks and the Agent controller.
    pub agents: Shared<Agent>,
    /// Read by the policy index, the Agent controller, the credentials step and the policy status controller.
    pub policies: Shared<AgentPolicy>,
    /// Read by the policy index and the Delegation controller.
    pub revocations: Shared<Revocation>,
    /// Read by the webhooks (a child is checked against its parent) and the Delegation controller.
    pub delegations: Shared<Delegation>,
    /// Read by the ApprovalRequest controller.
    pub approvals: Shared<ApprovalRequest>,
    /// Namespaces and their labels, which a cluster-wide Revocation's namespaceSelector is matched
    /// against. Only watched in cluster-wide mode (None with `--watch-namespace`).
    pub namespaces: Option<Shared<Namespace>>,
}

impl Watched {
    /// Starts the watches under `tasks`.
    pub fn start(client: &Client, namespace: Option<&str>, tasks: &mut Supervisor) -> Self {
        let namespaces =
            namespace.is_none().then(|| Shared::start_cluster(client, "watch: Namespaces", tasks));
        Self {
            namespaces,
            agents: Shared::start(scoped_api(client, namespace), "watch: Agents", tasks),
            policies: Shared::start(scoped_api(client, namespace), "watch: AgentPolicies", tasks),
            revocations: Shared::start(scoped_api(client, namespace), "watch: Revocations", tasks),
            delegations: Shared::start(scoped_api(client, namespace), "watch: Delegations", tasks),
            approvals: Shared::start(scoped_api(client, namespace), "watch: ApprovalRequests", tasks),
        }
    }

    /// Where Revocations reach, read live from the Namespace watch's store.
    pub fn reach(&self, operator_namespace: &str) -> Reach {
        let namespaces = self.namespaces.as_ref().map(|n| {
            let store = n.store();
            let lookup: NamespaceLookup = Arc::new(move |name: &str| {
                store.get(&reflector::ObjectRef::new(name)).map(|ns| ns.labels().clone())
            });
            lookup
        });
        Reach { operator_namespace: Some(operator_namespace.to_owned()), namespaces }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn list(feed: &mut Feed<ConfigMap>, names: &[&str]) {
        feed.apply(watcher::Event::Init);
        for n in names {
            feed.apply(watcher::Event::InitApply(cm(n)));
        }
        feed.apply(watcher::Event::InitDone);
    }

    /// The names the stream yields until it has nothing more for a moment, sorted.
    async fn drain(stream: &mut (impl Stream<Item = Arc<ConfigMap>> + Unpin)) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(Some(k)) = tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
            names.push(k.metadata.name.clone().unwrap_or_default());
        }
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_consumer_gets_the_first_list_whole_then_each_change() {
        let (shared, mut feed) = Shared::<ConfigMap>::new("test");
        let mut early = Box::pin(shared.applied("early"));
        list(&mut feed, &["a", "b"]);
        assert_eq!(drain(&mut early).await, ["a", "b"], "the objects of a list come at its end");
        assert!(shared.progress().borrow().listed);
        feed.apply(watcher::Event::Apply(cm("c")));
        assert_eq!(drain(&mut early).await, ["c"]);
        assert!(shared.store().get(&reflector::ObjectRef::new("c").within("ns")).is_some());
    }

    #[tokio::test]
    async fn a_consumer_that_arrives_later_starts_from_the_store() {
        let (shared, mut feed) = Shared::<ConfigMap>::new("test");
        list(&mut feed, &["a", "b"]);
        feed.apply(watcher::Event::Apply(cm("c")));
        let mut late = Box::pin(shared.applied("late"));
        assert_eq!(drain(&mut late).await, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn deletions_reach_only_the_consumers_that_asked_for_them() {
        let (shared, mut feed) = Shared::<ConfigMap>::new("test");
        list(&mut feed, &["a"]);
        let (mut applied, mut touched) = (Box::pin(shared.applied("c")), Box::pin(shared.touched("m")));
        assert_eq!(drain(&mut applied).await, ["a"]);
        assert_eq!(drain(&mut touched).await, ["a"]);
        feed.apply(watcher::Event::Delete(cm("a")));
        assert!(drain(&mut applied).await.is_empty());
        assert_eq!(drain(&mut touched).await, ["a"]);
        assert!(shared.store().state().is_empty());
    }

    #[tokio::test]
    async fn a_relist_hands_every_consumer_the_new_store() {
        let (shared, mut feed) = Shared::<ConfigMap>::new("test");
        list(&mut feed, &["a", "b"]);
        let mut consumer = Box::pin(shared.applied("c"));
        assert_eq!(drain(&mut consumer).await, ["a", "b"]);
        list(&mut feed, &["b", "c"]);
        assert_eq!(drain(&mut consumer).await, ["b", "c"]);
    }

    #[tokio::test]
    async fn a_consumer_that_falls_behind_never_stalls_the_watch_and_is_resynced() {
        let (shared, mut feed) = Shared::<ConfigMap>::new("test");
        list(&mut feed, &[]);
        let mut slow = Box::pin(shared.applied("slow"));
        let before = shared.progress().borrow().events;
        // Far more changes than the buffer holds, with nobody reading: the feed never waits.
        for i in 0..BUFFER + 100 {
            feed.apply(watcher::Event::Apply(cm(&format!("cm-{}", i % 10))));
        }
        assert_eq!(shared.progress().borrow().events - before, (BUFFER + 100) as u64);
        // What the slow consumer gets is the store (each object once) and then the newest changes still
        // buffered: every object arrives, at its latest version or later.
        let names = drain(&mut slow).await;
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), 10, "{distinct:?}");
        assert!(names.len() < BUFFER + 100, "it was resynced, not replayed: {} items", names.len());
    }
}
