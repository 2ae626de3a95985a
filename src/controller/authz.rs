//! Keeps the authorization index current: reads the shared watches of Agents, AgentPolicies and Revocations
//! ([`crate::controller::shared`]), and after every change builds a new [`Snapshot`] and swaps it in.
//! Decisions read the current snapshot without locks or API calls; a change reaches them within one watch
//! event plus one rebuild (milliseconds; the e2e tests measure it against the one-second goal).
//!
//! A new Revocation does not wait for that rebuild, which takes a hundred milliseconds or more at ten
//! thousand agents and may itself be waiting behind one already under way. A second task applies it to the
//! current snapshot at once ([`Snapshot::with_holds`]: the agents it stops, nothing else), and every rebuild
//! published before one that read the Revocation carries those holds over, so a rebuild from an older view
//! never lifts them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jiff::Timestamp;
use kube::runtime::reflector::Store;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::{Agent, AgentPolicy, Revocation};
use crate::authz::index::holds_from;
use crate::authz::{Builder, Snapshot};
use crate::controller::shared::{Progress, Watched};
use crate::controller::watches::WatchHealth;
use crate::registry::revocation::{self, Hold, Reach};
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
    /// Serialises the two writers (the rebuild loop and the Revocation fast path), and keeps what the fast
    /// path applied that no published rebuild has read yet.
    ahead: Mutex<Ahead>,
    ready: AtomicBool,
    rebuilds: AtomicU64,
    version: watch::Sender<u64>,
}

/// Revocations applied to the snapshot ahead of a rebuild.
#[derive(Debug, Default)]
struct Ahead {
    /// By Revocation UID: every agent it stops, with its hold.
    holds: HashMap<String, Vec<(Arc<str>, Hold)>>,
}

impl Default for PolicyIndex {
    fn default() -> Self {
        Self {
            enforcement: Enforcement::default(),
            staleness_bound: None,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            ahead: Mutex::default(),
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

    /// Publishes a rebuilt snapshot, made from the Revocations `built_from` after a change delivered at
    /// `woke`. Holds the fast path applied for Revocations the build did not read are carried over, unless
    /// the Revocation has gone meanwhile (`present` says whether it is still in the store).
    fn publish_built(
        &self,
        snapshot: Snapshot,
        built_from: &[Arc<Revocation>],
        present: impl Fn(&str) -> bool,
        woke: Timestamp,
    ) {
        let mut ahead = self.ahead.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let built: HashSet<&str> = built_from.iter().filter_map(|r| r.metadata.uid.as_deref()).collect();
        ahead.holds.retain(|uid, _| !built.contains(uid.as_str()) && present(uid));
        let snapshot = if ahead.holds.is_empty() {
            snapshot
        } else {
            let carried: Vec<(Arc<str>, Hold)> = ahead.holds.values().flatten().cloned().collect();
            snapshot.with_holds(&carried)
        };
        self.publish(snapshot);
        self.enforcement.record(&built, |uid| ahead.holds.contains_key(uid), woke);
    }

    /// Stops, in the current snapshot, the agents of every Revocation in `revocations` that no published
    /// snapshot holds yet (`agents`: the Agents in scope, read only when there is such a Revocation).
    /// `seen`: when the change was delivered. Returns how many Revocations it applied.
    pub fn enforce_ahead(
        &self,
        revocations: &[Arc<Revocation>],
        agents: impl FnOnce() -> Vec<Arc<Agent>>,
        reach: &Reach,
        seen: Timestamp,
    ) -> usize {
        // Before the first snapshot there is nothing to stop ahead of: that build reads every Revocation.
        if !self.is_ready() {
            return 0;
        }
        let mut ahead = self.ahead.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh: Vec<(&str, &Arc<Revocation>)> = revocations
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref().map(|uid| (uid, r)))
            .filter(|(uid, _)| !self.enforcement.knows(uid) && !ahead.holds.contains_key(*uid))
            .collect();
        if fresh.is_empty() {
            return 0;
        }
        let agents = agents();
        let now = Timestamp::now();
        let mut all = Vec::new();
        for (uid, r) in &fresh {
            // One Revocation at a time, so each keeps every agent it stops even where another outranks it
            // (that one may go before a rebuild reads this one).
            let holds = holds_from(std::slice::from_ref(*r), &agents, reach, now);
            all.extend(holds.iter().cloned());
            ahead.holds.insert((*uid).to_owned(), holds);
        }
        if !all.is_empty() {
            self.publish(self.load().with_holds(&all));
        }
        let uids: HashSet<&str> = fresh.iter().map(|(uid, _)| *uid).collect();
        self.enforcement.record(&uids, |_| true, seen);
        debug!(revocations = fresh.len(), agents = all.len(), "revocations applied ahead of the rebuild");
        fresh.len()
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
        reach.clone(),
        progress,
    );
    tasks.spawn_infallible("policy index: rebuild", rebuild);
    let ahead = enforce_loop(
        Arc::clone(&index),
        watched.agents.store(),
        watched.revocations.store(),
        reach,
        watched.revocations.progress(),
    );
    tasks.spawn_infallible("policy index: revocations ahead of rebuilds", ahead);
    index
}

/// The fast path for new Revocations: after every change of the Revocations watch, applies the ones no
/// snapshot holds yet to the current snapshot ([`PolicyIndex::enforce_ahead`]).
async fn enforce_loop(
    index: Arc<PolicyIndex>,
    agents: Store<Agent>,
    revocations: Store<Revocation>,
    reach: Reach,
    mut progress: watch::Receiver<Progress>,
) {
    index.wait_ready().await;
    // A change while waiting is still unseen by `progress`, so the first wait returns at once for it.
    while progress.changed().await.is_ok() {
        let seen = Timestamp::now();
        index.enforce_ahead(&revocations.state(), || agents.state(), &reach, seen);
    }
    warn!("the watch of Revocations stopped; new Revocations wait for the next rebuild");
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
        let snapshot = builder.build(&agents.state(), &policies.state(), &revoking);
        let (agents_n, policies_n) = (snapshot.agents(), snapshot.policies().len());
        let first = !index.is_ready();
        let present = |uid: &str| revocations.state().iter().any(|r| r.metadata.uid.as_deref() == Some(uid));
        index.publish_built(snapshot, &revoking, present, woke);
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

/// When each Revocation first reached the index: the time the change that brought it was delivered (the
/// operator has seen it) and the time the first snapshot holding it was published (decisions refuse its
/// targets from then on), by the fast path or a rebuild. The Revocation controller reports both in the
/// status.
#[derive(Debug, Default)]
pub struct Enforcement {
    seen: Mutex<HashMap<String, Enforced>>,
}

/// The two instants of one Revocation, see [`Enforcement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    /// First found in the store.
    pub observed_at: Timestamp,
    /// First in a published snapshot.
    pub enforced_at: Timestamp,
}

impl Enforcement {
    /// The instants of the Revocation with `uid`, once the index has published it.
    pub fn get(&self, uid: &str) -> Option<Enforced> {
        self.seen.lock().ok().and_then(|m| m.get(uid).copied())
    }

    fn knows(&self, uid: &str) -> bool {
        self.seen.lock().is_ok_and(|m| m.contains_key(uid))
    }

    /// Records that the snapshot just published holds the Revocations `published` (delivered at `seen`),
    /// keeping the first instants of each. Forgets those neither published nor kept (deleted), so the map
    /// is as large as the Revocations in scope.
    fn record(&self, published: &HashSet<&str>, keep: impl Fn(&str) -> bool, seen: Timestamp) {
        let now = Timestamp::now();
        if let Ok(mut m) = self.seen.lock() {
            m.retain(|uid, _| published.contains(uid.as_str()) || keep(uid));
            for uid in published {
                m.entry((*uid).to_owned()).or_insert(Enforced { observed_at: seen, enforced_at: now });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RevocationMode;
    use crate::registry::revocation::tests::{by_name, revocation};

    fn agent(name: &str) -> Arc<Agent> {
        let owner = crate::api::Owner { kind: crate::api::PrincipalKind::Team, name: "t".into() };
        let mut a = Agent::new(name, crate::api::AgentSpec::new(owner, "p"));
        a.metadata.namespace = Some("ns".into());
        a.metadata.uid = Some(format!("uid-{name}"));
        Arc::new(a)
    }

    fn stop(name: &str, agent: &str, mode: RevocationMode) -> Arc<Revocation> {
        revocation("ns", name, mode, by_name(agent))
    }

    fn held_by(index: &PolicyIndex, agent: &str) -> Option<(String, RevocationMode)> {
        let snapshot = index.load();
        let facts = snapshot.agent(&format!("uid-{agent}"))?;
        facts.revoked_by.as_ref().map(|h| (h.name.to_string(), h.mode))
    }

    #[test]
    fn a_new_revocation_stops_its_agents_before_the_rebuild_and_a_stale_rebuild_keeps_them_stopped() {
        let agents = vec![agent("a"), agent("b")];
        let reach = Reach::default();
        let index = PolicyIndex::default();
        let suspend = stop("suspend-a", "a", RevocationMode::Suspend);
        let now = Timestamp::now();
        assert_eq!(
            index.enforce_ahead(&[Arc::clone(&suspend)], || agents.clone(), &reach, now),
            0,
            "not ready"
        );

        let mut builder = Builder::default();
        index.publish_built(builder.build(&agents, &[], &[]), &[], |_| true, now);
        assert_eq!(index.enforce_ahead(&[Arc::clone(&suspend)], || agents.clone(), &reach, now), 1);
        assert_eq!(held_by(&index, "a"), Some(("suspend-a".into(), RevocationMode::Suspend)));
        assert_eq!(held_by(&index, "b"), None, "only its target");
        let e = index.enforcement.get("uid-suspend-a").expect("recorded");
        assert_eq!(e.observed_at, now);
        assert!(e.enforced_at >= now);
        let read = || -> Vec<Arc<Agent>> { panic!("nothing new: the agents are not read") };
        assert_eq!(index.enforce_ahead(&[Arc::clone(&suspend)], read, &reach, now), 0, "applied once");

        // A rebuild that read the Revocations before this one arrived must not lift it.
        index.publish_built(builder.build(&agents, &[], &[]), &[], |_| true, now);
        assert_eq!(held_by(&index, "a"), Some(("suspend-a".into(), RevocationMode::Suspend)));
        assert!(index.enforcement.get("uid-suspend-a").is_some(), "still known");

        // A Revoke outranks the Suspend; a later Suspend does not displace the Revoke.
        let revoke = stop("revoke-a", "a", RevocationMode::Revoke);
        let both = [Arc::clone(&suspend), Arc::clone(&revoke)];
        assert_eq!(index.enforce_ahead(&both, || agents.clone(), &reach, now), 1);
        assert_eq!(held_by(&index, "a"), Some(("revoke-a".into(), RevocationMode::Revoke)));
        let late = stop("a-late", "a", RevocationMode::Suspend);
        let three = [Arc::clone(&suspend), Arc::clone(&revoke), Arc::clone(&late)];
        assert_eq!(index.enforce_ahead(&three, || agents.clone(), &reach, now), 1);
        assert_eq!(held_by(&index, "a"), Some(("revoke-a".into(), RevocationMode::Revoke)));

        // Once a rebuild has read them, they are its own; deleted ones are forgotten and lift.
        index.publish_built(builder.build(&agents, &[], &three), &three, |_| true, now);
        assert_eq!(held_by(&index, "a"), Some(("revoke-a".into(), RevocationMode::Revoke)));
        index.publish_built(builder.build(&agents, &[], &[]), &[], |_| false, now);
        assert_eq!(held_by(&index, "a"), None, "all three deleted");
        assert!(index.enforcement.get("uid-revoke-a").is_none());

        // One that goes before any rebuild reads it lifts at the next rebuild too.
        assert_eq!(index.enforce_ahead(&[Arc::clone(&revoke)], || agents.clone(), &reach, now), 1);
        assert!(held_by(&index, "a").is_some());
        index.publish_built(builder.build(&agents, &[], &[]), &[], |_| false, now);
        assert_eq!(held_by(&index, "a"), None);
    }

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
