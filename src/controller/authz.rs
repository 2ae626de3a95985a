//! Keeps the authorization index current: reads the shared watches of Agents, AgentPolicies and Revocations
//! ([`crate::controller::shared`]), and after every change builds a new [`Snapshot`] and swaps it in.
//! Decisions read the current snapshot without locks or API calls; a change reaches them within one watch
//! event plus one rebuild (milliseconds; the e2e tests measure it against the one-second goal).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jiff::Timestamp;
use kube::runtime::reflector::Store;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::{Agent, AgentPolicy, Revocation};
use crate::authz::{Builder, Snapshot};
use crate::controller::shared::{Progress, Watched};
use crate::controller::watches::WatchHealth;
use crate::registry::revocation::{self, Reach};
use crate::supervisor::Supervisor;

/// Shortest time between two rebuilds, so a burst of changes (a thousand agents created at once) costs a
/// rebuild every few tens of milliseconds rather than one per event. Well inside the one-second goal.
const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(25);

/// The current snapshot, swapped atomically on every rebuild.
#[derive(Debug)]
pub struct PolicyIndex {
    /// When each Revocation reached the decisions.
    pub enforcement: Enforcement,
    /// The health of the watch of Revocations and how old the view may get while it fails.
    staleness_bound: Option<(Arc<WatchHealth>, Duration)>,
    snapshot: ArcSwap<Snapshot>,
    ready: AtomicBool,
    rebuilds: AtomicU64,
    version: watch::Sender<u64>,
}

impl Default for PolicyIndex {
    fn default() -> Self {
        Self {
            enforcement: Enforcement::default(),
            staleness_bound: None,
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

    /// Why decisions must be refused now, whatever the snapshot says: it has not loaded yet, or the
    /// watch of Revocations has been failing for longer than the bound (a Revocation made meanwhile would
    /// not be seen). None: decide.
    pub fn refusal(&self) -> Option<String> {
        if !self.is_ready() {
            return Some("the policy index is still loading".into());
        }
        let (health, bound) = self.staleness_bound.as_ref()?;
        let since = health.failing_since()?;
        let age = jiff::Timestamp::now().duration_since(since).unsigned_abs();
        (age > *bound).then(|| {
            format!(
                "the operator has not been able to watch Revocations for {}s (bound {}s): refusing everything until it can",
                age.as_secs(),
                bound.as_secs()
            )
        })
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

/// Starts the rebuild loop under `tasks`, fed by the shared watches of Agents, AgentPolicies and Revocations
/// (and Namespaces, for cluster-wide Revocations). One malformed object is skipped by its watch; watch
/// errors back off and retry, each watch on its own ([`Backoff`](crate::controller::watches::Backoff)).
/// While a watch fails its store keeps what it had, so decisions go on from the last snapshot.
pub fn start(
    watched: &Watched,
    reach: Reach,
    staleness_bound: Option<(Arc<WatchHealth>, Duration)>,
    tasks: &mut Supervisor,
) -> Arc<PolicyIndex> {
    let index = Arc::new(PolicyIndex { staleness_bound, ..PolicyIndex::default() });
    let mut progress =
        vec![watched.agents.progress(), watched.policies.progress(), watched.revocations.progress()];
    progress.extend(watched.namespaces.as_ref().map(|n| n.progress()));
    let rebuild = rebuild_loop(
        Arc::clone(&index),
        watched.agents.store(),
        watched.policies.store(),
        watched.revocations.store(),
        reach,
        progress,
    );
    tasks.spawn_infallible("policy index: rebuild", rebuild);
    index
}

/// Waits until any of the watches moves, or until `deadline` (the next Revocation expiry). False when a
/// watch has stopped (its task ended; the supervisor is stopping the operator).
async fn any_changed(progress: &mut [watch::Receiver<Progress>], deadline: Option<Duration>) -> bool {
    let changes = futures::future::select_all(progress.iter_mut().map(|p| Box::pin(p.changed())));
    match deadline {
        Some(d) => tokio::select! {
            (r, _, _) = changes => r.is_ok(),
            () = tokio::time::sleep(d) => true,
        },
        None => changes.await.0.is_ok(),
    }
}

async fn rebuild_loop(
    index: Arc<PolicyIndex>,
    agents: Store<Agent>,
    policies: Store<AgentPolicy>,
    revocations: Store<Revocation>,
    reach: Reach,
    mut progress: Vec<watch::Receiver<Progress>>,
) {
    // Decisions before the first complete list of each kind would be made on partial state. Not
    // `Store::wait_until_ready`: its future wakes only the task that polled it last, and other consumers
    // wait on the same stores, so this loop could sleep forever with every decision refused as "still
    // loading".
    for watch in &mut progress {
        if watch.wait_for(|p| p.listed).await.is_err() {
            warn!("a watch stopped before its first list; the policy index stays unready");
            return;
        }
    }
    let mut builder = Builder::with_reach(reach);
    // When the change being built was delivered (the loop may then wait out MIN_REBUILD_INTERVAL, which
    // counts in a Revocation's latency).
    let mut woke = Timestamp::now();
    loop {
        let started = Instant::now();
        let revoking = revocations.state();
        index.enforcement.observe(&revoking, woke);
        let snapshot = builder.build(&agents.state(), &policies.state(), &revoking);
        let (agents_n, policies_n) = (snapshot.agents(), snapshot.policies().len());
        let first = !index.is_ready();
        index.publish(snapshot);
        index.enforcement.enforced(&revoking);
        if first {
            info!(agents = agents_n, policies = policies_n, "policy index ready");
        }
        debug!(
            agents = agents_n,
            policies = policies_n,
            took_us = started.elapsed().as_micros(),
            "policy index rebuilt"
        );
        // A Suspend that expires lifts at its expiry, not at the next change of anything.
        let now = Timestamp::now();
        let next_expiry = revoking
            .iter()
            .filter_map(|r| revocation::expires_at(r))
            .filter(|end| *end > now)
            .min()
            .map(|end| end.duration_since(now).unsigned_abs().saturating_add(Duration::from_millis(5)));
        if !any_changed(&mut progress, next_expiry).await {
            warn!("a watch stopped; the policy index keeps its last snapshot");
            return;
        }
        woke = Timestamp::now();
        let since = started.elapsed();
        if since < MIN_REBUILD_INTERVAL {
            tokio::time::sleep(MIN_REBUILD_INTERVAL.saturating_sub(since)).await;
        }
    }
}

/// When each Revocation first reached the index: the time the rebuild loop first found it in the store
/// (the operator has seen it) and the time the first snapshot holding it was published (decisions refuse
/// its targets from then on). The Revocation controller reports both in the status.
#[derive(Debug, Default)]
pub struct Enforcement {
    seen: Mutex<HashMap<String, Enforced>>,
}

/// The two instants of one Revocation, see [`Enforcement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    /// First found in the store.
    pub observed_at: Timestamp,
    /// First in a published snapshot (None until then).
    pub enforced_at: Option<Timestamp>,
}

impl Enforcement {
    /// The instants of the Revocation with `uid`, once the index has published it.
    pub fn get(&self, uid: &str) -> Option<Enforced> {
        self.seen.lock().ok().and_then(|m| m.get(uid).copied()).filter(|e| e.enforced_at.is_some())
    }

    fn observe(&self, revocations: &[Arc<Revocation>], now: Timestamp) {
        if let Ok(mut m) = self.seen.lock() {
            // Forget the ones gone, so the map is as large as the Revocations in scope.
            let present: std::collections::HashSet<&str> =
                revocations.iter().filter_map(|r| r.metadata.uid.as_deref()).collect();
            m.retain(|uid, _| present.contains(uid.as_str()));
            for uid in present {
                m.entry(uid.to_owned()).or_insert(Enforced { observed_at: now, enforced_at: None });
            }
        }
    }

    fn enforced(&self, revocations: &[Arc<Revocation>]) {
        let now = Timestamp::now();
        if let Ok(mut m) = self.seen.lock() {
            for uid in revocations.iter().filter_map(|r| r.metadata.uid.as_deref()) {
                if let Some(e) = m.get_mut(uid) {
                    e.enforced_at.get_or_insert(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_refused_while_loading_and_once_the_view_of_revocations_is_too_old() {
        let bound = Duration::from_secs(30);
        let at = |secs_ago: i64| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs_ago);
        let index = |health: WatchHealth| PolicyIndex {
            staleness_bound: Some((Arc::new(health), bound)),
            ..PolicyIndex::default()
        };
        let loading = index(WatchHealth::default());
        assert_eq!(loading.refusal().as_deref(), Some("the policy index is still loading"));
        loading.publish(Snapshot::default());
        assert_eq!(loading.refusal(), None, "healthy");
        let young = index(WatchHealth::failing_since_for_tests(at(5)));
        young.publish(Snapshot::default());
        assert_eq!(young.refusal(), None, "failing, but within the bound: the snapshot still decides");
        let old = index(WatchHealth::failing_since_for_tests(at(31)));
        old.publish(Snapshot::default());
        assert!(old.refusal().is_some_and(|r| r.contains("for 31s (bound 30s)")), "{:?}", old.refusal());
        let unbounded = PolicyIndex::default();
        unbounded.publish(Snapshot::default());
        assert_eq!(unbounded.refusal(), None);
    }
}
