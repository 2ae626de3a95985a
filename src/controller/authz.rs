//! Keeps the authorization index current: watches Agents, AgentPolicies and Revocations, and after every
//! change builds a new [`Snapshot`] and swaps it in. Decisions read the current snapshot without locks or
//! API calls; a change reaches them within one watch event plus one rebuild (milliseconds; the e2e tests
//! measure it against the one-second goal).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::api::{Agent, AgentPolicy, Revocation};
use crate::authz::{Builder, Snapshot};
use crate::controller::{scoped_api, watches};
use crate::supervisor::Supervisor;

/// Shortest time between two rebuilds, so a burst of changes (a thousand agents created at once) costs a
/// rebuild every few tens of milliseconds rather than one per event. Well inside the one-second goal.
const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(25);

/// The current snapshot, swapped atomically on every rebuild.
#[derive(Debug)]
pub struct PolicyIndex {
    snapshot: ArcSwap<Snapshot>,
    ready: AtomicBool,
    rebuilds: AtomicU64,
    version: watch::Sender<u64>,
}

impl Default for PolicyIndex {
    fn default() -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            ready: AtomicBool::new(false),
            rebuilds: AtomicU64::new(0),
            version: watch::Sender::new(0),
        }
    }
}

impl PolicyIndex {
    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether every watch has delivered its initial list, so the snapshot reflects the cluster. Until then
    /// decisions are refused (an empty index would only deny, but say why).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until the index is ready. Every waiter is woken (unlike kube-runtime's
    /// `Store::wait_until_ready`, which wakes only the task that polled it last).
    pub async fn wait_ready(&self) {
        let mut rx = self.version.subscribe();
        // The sender lives as long as `self`, so this cannot end with an error while we borrow it.
        let _ = rx.wait_for(|_| self.is_ready()).await;
    }

    /// Replaces the snapshot (and marks the index ready). Used by the watch loop, and by tests and
    /// in-process embedders that build snapshots themselves.
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
        let n = self.rebuilds.fetch_add(1, Ordering::AcqRel) + 1;
        self.version.send_replace(n);
    }

    /// Changes whenever a new snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// What [`start`] returns.
#[derive(Debug)]
pub struct Started {
    /// The index decisions read.
    pub index: Arc<PolicyIndex>,
    /// Every AgentPolicy in scope (also read for credential lifetime caps).
    pub policies: Store<AgentPolicy>,
    /// Every Agent in scope (also read by the admission webhooks).
    pub agents: Store<Agent>,
}

/// A reflector whose every event wakes the rebuilder, and a flag that turns true once its first complete
/// list is in the store. One malformed object is logged by the watcher and skipped; watch errors back off
/// ([`watches::Backoff`], each reflector its own) and retry, never stalling the others. While a watch fails,
/// the store keeps what it had, so decisions go on from the last snapshot.
fn reflect<K>(
    api: Api<K>,
    changed: Arc<Notify>,
) -> (Store<K>, watch::Receiver<bool>, impl std::future::Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    K::Scope: kube::core::NamespaceScope,
{
    let (store, writer) = reflector::store::<K>();
    let (listed_tx, listed) = watch::channel(false);
    let name = format!("policy index: {}", K::kind(&K::DynamicType::default()));
    let task = watches::reflector(api, writer, name).for_each(move |event| {
        // The reflector applies an event to the store before passing it on.
        if matches!(event, watcher::Event::InitDone) {
            listed_tx.send_replace(true);
        }
        changed.notify_one();
        std::future::ready(())
    });
    (store, listed, task)
}

/// Starts the watches and the rebuild loop under `tasks`.
pub fn start(client: &Client, namespace: Option<&str>, tasks: &mut Supervisor) -> Started {
    let changed = Arc::new(Notify::new());
    let (agents, agents_listed, agents_task) =
        reflect::<Agent>(scoped_api(client, namespace), Arc::clone(&changed));
    let (policies, policies_listed, policies_task) =
        reflect::<AgentPolicy>(scoped_api(client, namespace), Arc::clone(&changed));
    let (revocations, revocations_listed, revocations_task) =
        reflect::<Revocation>(scoped_api(client, namespace), Arc::clone(&changed));
    let index = Arc::new(PolicyIndex::default());
    let listed = [agents_listed, policies_listed, revocations_listed];
    let rebuild =
        rebuild_loop(Arc::clone(&index), agents.clone(), policies.clone(), revocations, listed, changed);
    tasks.spawn_infallible("policy index: Agents", agents_task);
    tasks.spawn_infallible("policy index: AgentPolicies", policies_task);
    tasks.spawn_infallible("policy index: Revocations", revocations_task);
    tasks.spawn_infallible("policy index: rebuild", rebuild);
    Started { index, policies, agents }
}

async fn rebuild_loop(
    index: Arc<PolicyIndex>,
    agents: Store<Agent>,
    policies: Store<AgentPolicy>,
    revocations: Store<Revocation>,
    listed: [watch::Receiver<bool>; 3],
    changed: Arc<Notify>,
) {
    // Decisions before the first complete list of each kind would be made on partial state. Not
    // `Store::wait_until_ready`: its future wakes only the task that polled it last, and the credentials
    // controller waits on the same AgentPolicy store, so this loop could sleep forever with every decision
    // refused as "still loading".
    for mut done in listed {
        if done.wait_for(|listed| *listed).await.is_err() {
            warn!("a watch stopped before its first list; the policy index stays unready");
            return;
        }
    }
    let mut builder = Builder::default();
    loop {
        let started = Instant::now();
        let snapshot = builder.build(&agents.state(), &policies.state(), &revocations.state());
        let (agents_n, policies_n) = (snapshot.agents(), snapshot.policies().len());
        let first = !index.is_ready();
        index.publish(snapshot);
        if first {
            info!(agents = agents_n, policies = policies_n, "policy index ready");
        }
        debug!(
            agents = agents_n,
            policies = policies_n,
            took_us = started.elapsed().as_micros(),
            "policy index rebuilt"
        );
        changed.notified().await;
        let since = started.elapsed();
        if since < MIN_REBUILD_INTERVAL {
            tokio::time::sleep(MIN_REBUILD_INTERVAL.saturating_sub(since)).await;
        }
    }
}
