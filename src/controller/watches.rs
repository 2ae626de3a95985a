//! How the operator watches the API server. Every watch is built here, with one [`config`] and one
//! [`Backoff`]: the shared watches of Agents, AgentPolicies and Revocations ([`crate::controller::shared`],
//! one per kind for every consumer) and the Agent controller's watch of credentials Secrets. So all of
//! them ride out an API server outage the same way, and are back within seconds once it answers again.
//!
//! What this replaces, measured with the local kube-apiserver killed for about 20 s (tests/e2e/outage.rs):
//! kube-runtime's default backoff (800 ms doubling to 30 s, plus up to 100% jitter) had grown to 7-18 s
//! per watch when the API server answered again. Each watch then resumed from its last resourceVersion,
//! which a restarted API server no longer has (its watch cache starts afresh): the answer, 410 Gone, counted
//! as one more failure and grew the wait to 13-37 s before the relist. And a kube-runtime controller
//! applies one backoff to all its watches together, pausing all of them while any one waits, so the Agent
//! controller's two 410s came one after the other, the second followed by a 26-49 s wait. A new Agent
//! became Active 50-98 s after the API server answered.
//!
//! Here each watch has its own [`Backoff`], the waits stay short, and a 410 relists after the shortest.

use std::fmt::Debug;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::core::{DeserializeGuard, NamespaceScope};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

/// The wait after the first failure of a watch.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts. It bounds how far a watch can lag behind an API server that is
/// back: the wait in progress when it returns.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// The watcher configuration of every watch.
///
/// - Lists are consistent reads (kube's default, not `any_semantic`): after a 410 the watcher relists, and
///   a list served from some API server's cache at "any" resourceVersion can be older than what the store
///   already held. An Agent suspended a moment ago would then look Active again, to the reconciler (which
///   issues credentials to Active agents) and to the webhook (which admits their pods). Since Kubernetes
///   1.31 consistent lists are served from the watch cache as well, so they cost little more.
/// - No streaming lists (`sendInitialEvents`): they save a request per relist, but an API server without
///   the WatchList feature ignores the parameter and never ends the initial events, so the watch would wait
///   for good.
/// - The default page size (500), and bookmarks: they keep the resourceVersion fresh, so a watch that only
///   lost its connection (no API server restart) resumes without a relist.
pub fn config() -> watcher::Config {
    watcher::Config::default()
}

/// The events of `api`, with [`config`] and a [`Backoff`] of its own, and every object that does not read
/// as `K` left out. The stream never ends and never yields an error: failures are logged and retried here.
pub fn events<K>(api: Api<K>, name: String) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    K::Scope: NamespaceScope,
{
    events_with(api, config(), name, None)
}

/// [`events`] with lists of `page_size` objects a page (the default is 500). For the kinds whose every
/// object is only looked at and dropped (discovery's): a page is the largest transient the list makes, and
/// what the allocator keeps of it after it is freed shows in the resident size.
pub fn events_paged<K>(
    api: Api<K>,
    name: String,
    page_size: u32,
) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    K::Scope: NamespaceScope,
{
    events_with(api, config().page_size(page_size), name, None)
}

/// [`events`], reporting failures to `health`.
pub fn events_reporting<K>(
    api: Api<K>,
    name: String,
    health: Arc<WatchHealth>,
) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    K::Scope: NamespaceScope,
{
    events_with(api, config(), name, Some(health))
}

/// [`events`] for a cluster-scoped kind (Namespaces), watched everywhere.
pub fn cluster_events<K>(client: kube::Client, name: String) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Resource<Scope = kube::core::ClusterResourceScope> + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let api: Api<DeserializeGuard<K>> = Api::all_with(client, &K::DynamicType::default());
    let guarded = sound(watcher(api, config()), name.clone());
    with_backoff(guarded, Backoff::new(name))
}

fn events_with<K>(
    api: Api<K>,
    config: watcher::Config,
    name: String,
    health: Option<Arc<WatchHealth>>,
) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    K::Scope: NamespaceScope,
{
    let guarded = sound(watcher(guarded(api), config), name.clone());
    let backoff = Backoff::new(name);
    with_backoff(
        guarded,
        match health {
            Some(h) => backoff.reporting(h),
            None => backoff,
        },
    )
}

/// Adds a watch of the objects of `api` that match `label_selector` to `controller`: every one changed
/// there (created, modified or deleted; one that stops matching arrives as deleted) is mapped by `mapper`
/// to the objects of `K` to reconcile. The counterpart of `Controller::watches`, for a kind only one
/// controller reads (shared kinds come from [`crate::controller::shared`]).
///
/// Built from streams (`Controller::watches_stream`, kube-runtime's `unstable-runtime-stream-control`)
/// because a controller applies one backoff to the merged stream of all its watches and cannot tell a 410
/// from an outage. These streams never yield errors, so that shared backoff never runs.
pub fn watches_labelled<K, Other, I>(
    controller: Controller<K>,
    api: Api<Other>,
    label_selector: &str,
    name: &str,
    mapper: impl Fn(Other) -> I + Sync + Send + 'static,
) -> Controller<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
    Other: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    Other::DynamicType: Default + Debug + Clone,
    Other::Scope: NamespaceScope,
    I: 'static + IntoIterator<Item = ObjectRef<K>>,
    I::IntoIter: Send,
{
    watches_selected(controller, api, config().labels(label_selector), name, mapper)
}

fn watches_selected<K, Other, I>(
    controller: Controller<K>,
    api: Api<Other>,
    config: watcher::Config,
    name: &str,
    mapper: impl Fn(Other) -> I + Sync + Send + 'static,
) -> Controller<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
    Other: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    Other::DynamicType: Default + Debug + Clone,
    Other::Scope: NamespaceScope,
    I: 'static + IntoIterator<Item = ObjectRef<K>>,
    I::IntoIter: Send,
{
    let objects =
        events_with(api, config, name.to_owned(), None).map(Ok::<_, watcher::Error>).touched_objects();
    controller.watches_stream(objects, mapper)
}

/// The same API for [`DeserializeGuard`]s of `K`: each object of a list or watch is read on its own, so one
/// that does not read as `K` (stored under an older schema, say) cannot fail the list of all the others.
fn guarded<K>(api: Api<K>) -> Api<DeserializeGuard<K>>
where
    K: Resource,
    K::DynamicType: Default,
    K::Scope: NamespaceScope,
{
    let namespace = api.namespace().map(str::to_owned);
    let all = Api::all_with(api.into_client(), &K::DynamicType::default());
    match namespace {
        Some(ns) => all.constrain(&ns),
        None => all,
    }
}

/// The events of a guarded watch with every object that does not read as `K` left out, each reported (a
/// warning and the `agentiam_malformed_objects_total` metric) instead of stalling the watch. Such an object
/// is invisible to the operator until it is fixed or deleted: never reconciled, never admitted by a
/// webhook, never in the policy index (so it grants nothing).
fn sound<K, S>(
    stream: S,
    watch: String,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<DeserializeGuard<K>>, watcher::Error>> + Send + 'static,
{
    use watcher::Event as E;
    stream.filter_map(move |item| {
        let keep = |guard: DeserializeGuard<K>| match guard.0 {
            Ok(object) => Some(object),
            Err(bad) => {
                crate::metrics::global().malformed_object(&watch);
                warn!(
                    watch = %watch,
                    namespace = ?bad.metadata.namespace,
                    name = ?bad.metadata.name,
                    uid = ?bad.metadata.uid,
                    error = %bad.error,
                    "skipping an object that does not read as its kind; fix or delete it"
                );
                None
            }
        };
        let event = match item {
            Err(e) => Some(Err(e)),
            Ok(E::Init) => Some(Ok(E::Init)),
            Ok(E::InitDone) => Some(Ok(E::InitDone)),
            Ok(E::InitApply(g)) => keep(g).map(|k| Ok(E::InitApply(k))),
            Ok(E::Apply(g)) => keep(g).map(|k| Ok(E::Apply(k))),
            Ok(E::Delete(g)) => keep(g).map(|k| Ok(E::Delete(k))),
        };
        std::future::ready(event)
    })
}

/// Passes on the events of `stream` and waits, after each error, for as long as `backoff` says before
/// polling it again (a watcher makes its next request only when polled).
fn with_backoff<K, S>(stream: S, backoff: Backoff) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    futures::stream::unfold((Box::pin(stream), backoff), |(mut stream, mut backoff)| async move {
        loop {
            match stream.next().await? {
                Ok(event) => {
                    // `Init` is emitted before the list request is even sent: no proof the API server is
                    // back. Every other event comes from an answer.
                    if !matches!(event, watcher::Event::Init) {
                        backoff.succeeded();
                    }
                    return Some((event, (stream, backoff)));
                }
                Err(e) => tokio::time::sleep(backoff.failed(&e)).await,
            }
        }
    })
}

/// Whether the watcher was told its resourceVersion is gone (410 Gone, or `Expired`): it relists next,
/// which is the protocol working, not the API server failing. Only the 410s after which kube's watcher
/// starts over from a list; a watch request refused with 410 would be retried with the same version.
fn expired(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// The waits of one watch between its attempts: [`FIRST_DELAY`], doubling up to [`MAX_DELAY`], each up to
/// a fifth shorter at random so that the operator's watches do not retry in lockstep; back to the first
/// delay after any answer. A 410 is retried after [`FIRST_DELAY`] and grows nothing.
///
/// Against an API server that is down, a watch tries once every two seconds at most: one connection attempt,
/// refused at once. Against one that answers with errors (403, 500), it lists at most every two seconds.
/// (The API client itself also retries 429, 503 and 504 answers, honouring `Retry-After`.)
#[derive(Debug)]
pub struct Backoff {
    watch: String,
    delay: Duration,
    failures: u32,
    failing_since: Option<Instant>,
    jitter: RandomState,
    health: Option<Arc<WatchHealth>>,
}

/// Since when a watch has been failing, for readers that must know how old its view may be (the policy
/// index bounds the age of its view of Revocations). Healthy until the first failure; healthy again at
/// the first answer after it.
#[derive(Debug, Default)]
pub struct WatchHealth(AtomicI64);

impl WatchHealth {
    /// When the current run of failures began (None: the watch is healthy).
    pub fn failing_since(&self) -> Option<jiff::Timestamp> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            ms => jiff::Timestamp::from_millisecond(ms).ok(),
        }
    }

    fn failing(&self) {
        let now = jiff::Timestamp::now().as_millisecond().max(1);
        let _ = self.0.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    fn healthy(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// Tests: a watch failing since `since`.
    #[cfg(test)]
    pub(crate) fn failing_since_for_tests(since: jiff::Timestamp) -> Self {
        Self(AtomicI64::new(since.as_millisecond()))
    }
}

impl Backoff {
    /// The backoff of the watch named `watch` (in logs).
    pub fn new(watch: impl Into<String>) -> Self {
        Self {
            watch: watch.into(),
            delay: FIRST_DELAY,
            failures: 0,
            failing_since: None,
            jitter: RandomState::new(),
            health: None,
        }
    }

    /// The same backoff, also reporting to `health`.
    #[must_use]
    pub fn reporting(mut self, health: Arc<WatchHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// Records a failure and returns how long to wait before the next attempt. Logs a warning when a watch
    /// starts failing; the failures after it at debug level.
    pub fn failed(&mut self, error: &watcher::Error) -> Duration {
        crate::metrics::global().watch_restart(&self.watch);
        if expired(error) {
            debug!(watch = %self.watch, %error, "resourceVersion expired; relisting");
            return FIRST_DELAY;
        }
        if let Some(h) = &self.health {
            h.failing();
        }
        let wait = self.jittered(self.delay);
        self.delay = self.delay.saturating_mul(2).min(MAX_DELAY);
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let retry_in_ms = wait.as_millis();
        if self.failures == 1 {
            warn!(watch = %self.watch, %error, retry_in_ms, "a watch of the API server failed; retrying");
        } else {
            let (failures, failing_for_ms) = (self.failures, since.elapsed().as_millis());
            debug!(watch = %self.watch, %error, failures, failing_for_ms, retry_in_ms, "watch still failing");
        }
        wait
    }

    /// Records an answer from the API server: the next failure waits [`FIRST_DELAY`] again.
    pub fn succeeded(&mut self) {
        if let Some(h) = &self.health {
            h.healthy();
        }
        if let Some(since) = self.failing_since.take() {
            let (failures, down_ms) = (self.failures, since.elapsed().as_millis());
            info!(watch = %self.watch, failures, down_ms, "the watch of the API server is back");
        }
        self.delay = FIRST_DELAY;
        self.failures = 0;
    }

    /// `delay` shortened by up to a fifth, differently for each failure.
    fn jittered(&self, delay: Duration) -> Duration {
        let permille = self.jitter.hash_one(self.failures) % 200;
        delay.saturating_sub(delay.mul_f64(permille as f64 / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn refused() -> watcher::Error {
        watcher::Error::NoResourceVersion
    }

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(
            Status::failure("too old resource version: 1 (2)", "Expired").with_code(410).boxed(),
        )
    }

    #[test]
    fn the_health_a_backoff_reports_follows_failures_and_answers_but_not_relists() {
        let health = Arc::new(WatchHealth::default());
        let mut b = Backoff::new("w").reporting(Arc::clone(&health));
        b.failed(&gone());
        assert_eq!(health.failing_since(), None, "a 410 is the protocol, not an outage");
        b.failed(&refused());
        let since = health.failing_since().expect("failing");
        b.failed(&refused());
        assert_eq!(health.failing_since(), Some(since), "the run of failures keeps its start");
        b.succeeded();
        assert_eq!(health.failing_since(), None);
    }

    /// Asserts that `wait` is `nominal` shortened by at most a fifth.
    fn assert_jittered(wait: Duration, nominal: Duration) {
        assert!(
            wait <= nominal && wait >= nominal.mul_f64(0.8),
            "{wait:?} is not within 80-100% of {nominal:?}"
        );
    }

    #[test]
    fn waits_double_from_the_first_delay_up_to_the_cap() {
        let mut b = Backoff::new("test");
        for ms in [250, 500, 1000, 2000, 2000, 2000] {
            assert_jittered(b.failed(&refused()), Duration::from_millis(ms));
        }
    }

    #[test]
    fn an_answer_starts_again_from_the_first_delay() {
        let mut b = Backoff::new("test");
        for _ in 0..10 {
            b.failed(&refused());
        }
        b.succeeded();
        assert_jittered(b.failed(&refused()), FIRST_DELAY);
        assert_jittered(b.failed(&refused()), FIRST_DELAY * 2);
    }

    #[test]
    fn a_410_relists_soon_and_grows_nothing() {
        let mut b = Backoff::new("test");
        for _ in 0..10 {
            b.failed(&refused());
        }
        assert_eq!(
            b.failed(&gone()),
            FIRST_DELAY,
            "a 410 after an outage waits no longer than the first delay"
        );
        assert_jittered(b.failed(&refused()), MAX_DELAY);
        b.succeeded();
        assert_eq!(b.failed(&gone()), FIRST_DELAY);
        assert_jittered(b.failed(&refused()), FIRST_DELAY);
    }

    #[test]
    fn only_410s_that_lead_to_a_relist_count_as_expired() {
        let list_gone = watcher::Error::InitialListFailed(kube::Error::Api(
            Status::failure("the continue token expired", "Expired").with_code(410).boxed(),
        ));
        let start_gone = watcher::Error::WatchStartFailed(kube::Error::Api(
            Status::failure("gone", "Expired").with_code(410).boxed(),
        ));
        let other =
            watcher::Error::WatchError(Status::failure("internal", "InternalError").with_code(500).boxed());
        assert!(expired(&gone()) && expired(&list_gone));
        assert!(!expired(&start_gone) && !expired(&other) && !expired(&refused()));
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut b = Backoff::new("test");
        let waits: std::collections::BTreeSet<Duration> = (0..24).map(|_| b.failed(&refused())).collect();
        assert!(waits.len() > 4, "24 waits took only the values {waits:?}");
    }
}
