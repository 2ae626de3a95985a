//! Asks running pods for their A2A agent card ([`crate::discovery::card`]) and, when one answers, records
//! the card for the pod's workload and classifies that workload again, so the card becomes evidence in
//! its record.
//!
//! The Pod watch hands over every pod that may be asked; each pod (by UID) is asked once when it is Ready,
//! and once more [`RETRY`] later when nothing answered (a server that was not listening yet). At most
//! [`CONCURRENCY`] pods are asked at a time, and each request is bounded by [`REQUEST_TIMEOUT`] and
//! [`crate::discovery::card::MAX_BYTES`]; the queue is bounded too, and a pod that does not fit is asked
//! at its next change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Resource};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use super::{Context, Discovery, Msg, observe};
use crate::discovery::card::{self, MAX_BYTES, PATHS, ServedCard, Target};
use crate::discovery::workload::{HasTemplate, Role, controller_of, role};

/// Pods asked at once.
pub const CONCURRENCY: usize = 4;
/// One request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// When a pod that answered nothing is asked again (once).
pub const RETRY: Duration = Duration::from_secs(15);
/// Pods waiting to be asked.
pub const QUEUE: usize = 1024;
/// Pods remembered as asked; beyond this the memory is cleared (and long-running pods are asked again).
const REMEMBERED: usize = 100_000;
/// How many owners up a pod's workload may be (Pod -> ReplicaSet -> Deployment is two).
const MAX_OWNERS: usize = 3;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A pod to ask: from the Pod watch, or the one retry of a pod that answered nothing.
#[derive(Debug)]
pub struct Ask {
    /// The pod.
    pub target: Target,
    /// This is the retry.
    pub retry: bool,
}

/// Starts the prober; returns where the Pod watch hands over pods to ask.
pub fn start(
    ctx: Arc<Context>,
    discovery: Arc<Discovery>,
    inventory: mpsc::Sender<Msg>,
    tasks: &mut crate::supervisor::Supervisor,
) -> mpsc::Sender<Ask> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let retry = tx.clone();
    tasks.spawn_infallible("discovery: agent cards", run(ctx, discovery, inventory, rx, retry));
    tx
}

async fn run(
    ctx: Arc<Context>,
    discovery: Arc<Discovery>,
    inventory: mpsc::Sender<Msg>,
    mut rx: mpsc::Receiver<Ask>,
    retry: mpsc::Sender<Ask>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
    // Only http: URLs are ever built here, from an IP and a port; never a name to resolve.
    connector.enforce_http(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    // Pod UID -> times asked. The watch hands a pod over at each of its changes: only its first counts.
    let mut asked: HashMap<String, u8> = HashMap::new();
    while let Some(Ask { target, retry: is_retry }) = rx.recv().await {
        let times = asked.entry(target.uid.clone()).or_default();
        if *times != u8::from(is_retry) {
            continue;
        }
        *times += 1;
        let second = is_retry;
        if asked.len() > REMEMBERED {
            asked.clear();
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let (ctx, discovery, inventory, client, retry) =
            (Arc::clone(&ctx), Arc::clone(&discovery), inventory.clone(), client.clone(), retry.clone());
        tokio::spawn(async move {
            let served = ask(&client, &target).await;
            drop(slot);
            match served {
                Some(found) => {
                    info!(namespace = %target.namespace, pod = %target.name, port = found.port, card = %found.name,
                        "discovery: a pod serves an A2A agent card");
                    if let Err(e) = record(&ctx, &discovery, &inventory, &target, found).await {
                        warn!(namespace = %target.namespace, pod = %target.name, error = %e,
                            "discovery could not classify the workload of a pod that serves an A2A agent card");
                    }
                }
                None if !second => {
                    tokio::time::sleep(RETRY).await;
                    let _ = retry.try_send(Ask { target, retry: true });
                }
                None => {}
            }
        });
    }
}

/// The first card one of the pod's ports serves.
async fn ask(client: &HttpClient, target: &Target) -> Option<ServedCard> {
    for &port in &target.ports {
        for path in PATHS {
            match get(client, target.ip, port, path).await {
                Answer::Card(name) => return Some(ServedCard { port, name }),
                // It speaks HTTP but has no card there: the other path may.
                Answer::NoCard => {}
                // Nothing listens, or not HTTP: the other path will not help.
                Answer::Unreachable => break,
            }
        }
    }
    None
}

enum Answer {
    Card(String),
    NoCard,
    Unreachable,
}

/// `GET http://<ip>:<port><path>`: a card only from a 200 answer (a redirect is not followed) whose body
/// parses as one within the size limit.
async fn get(client: &HttpClient, ip: IpAddr, port: u16, path: &str) -> Answer {
    let authority = SocketAddr::new(ip, port);
    let Ok(request) = http::Request::get(format!("http://{authority}{path}"))
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "agentiam-discovery")
        .body(Empty::<Bytes>::new())
    else {
        return Answer::Unreachable;
    };
    let exchange = async {
        let response = client.request(request).await.map_err(|_| ())?;
        if response.status() != http::StatusCode::OK {
            return Ok(None);
        }
        let body = Limited::new(response.into_body(), MAX_BYTES).collect().await.map_err(|_| ())?;
        Ok::<_, ()>(Some(body.to_bytes()))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(Some(body))) => card::parse(&body).map_or(Answer::NoCard, Answer::Card),
        Ok(Ok(None)) => Answer::NoCard,
        Ok(Err(())) | Err(_) => {
            debug!(%authority, path, "discovery: no HTTP answer from a pod's port");
            Answer::Unreachable
        }
    }
}

/// Records `found` for the workload the pod belongs to, and classifies that workload again (read fresh
/// from the API server, walking up the pod's controlling owners, one list by name each).
async fn record(
    ctx: &Context,
    discovery: &Discovery,
    inventory: &mpsc::Sender<Msg>,
    pod: &Target,
    found: ServedCard,
) -> Result<(), kube::Error> {
    let (mut kind, mut name) = ("Pod".to_owned(), pod.name.clone());
    for _ in 0..MAX_OWNERS {
        let step = match kind.as_str() {
            "Pod" => judge::<Pod>(ctx, discovery, pod, &name, &found).await?,
            "ReplicaSet" => judge::<ReplicaSet>(ctx, discovery, pod, &name, &found).await?,
            "Deployment" => judge::<Deployment>(ctx, discovery, pod, &name, &found).await?,
            "StatefulSet" => judge::<StatefulSet>(ctx, discovery, pod, &name, &found).await?,
            "DaemonSet" => judge::<DaemonSet>(ctx, discovery, pod, &name, &found).await?,
            "Job" => judge::<Job>(ctx, discovery, pod, &name, &found).await?,
            "CronJob" => judge::<CronJob>(ctx, discovery, pod, &name, &found).await?,
            _ => return Ok(()),
        };
        match step {
            Step::Gone => return Ok(()),
            Step::Owner(k, n) => (kind, name) = (k, n),
            Step::Judged(msg) => {
                let _ = inventory.send(msg).await;
                return Ok(());
            }
        }
    }
    Ok(())
}

enum Step {
    /// The object is gone (nothing to record).
    Gone,
    /// Its controlling owner stands for it: go there.
    Owner(String, String),
    /// Classified, with the card recorded for its workload.
    Judged(Msg),
}

async fn judge<K>(
    ctx: &Context,
    discovery: &Discovery,
    pod: &Target,
    name: &str,
    found: &ServedCard,
) -> Result<Step, kube::Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + HasTemplate
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &pod.namespace);
    // A list by name, not a get: discovery holds list and watch on these kinds, and a get would add a verb
    // to the chart's RBAC for nothing a list does not already give.
    let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
    let Some(object) = api.list(&by_name).await?.items.into_iter().next() else { return Ok(Step::Gone) };
    let kind = K::kind(&()).into_owned();
    let api_version = K::api_version(&()).into_owned();
    let meta = object.meta();
    let workload = match role(&api_version, &kind, meta) {
        None => return Ok(Step::Gone),
        Some(Role::Covered) => {
            return Ok(match controller_of(meta) {
                Some(owner) => Step::Owner(owner.kind.clone(), owner.name.clone()),
                None => Step::Gone,
            });
        }
        Some(Role::Workload(w) | Role::SourceFor(w)) => w,
    };
    discovery.record_card(&workload.uid, &pod.uid, found.clone());
    let Some(uid) = meta.uid.clone() else { return Ok(Step::Gone) };
    let kind: &'static str = super::KINDS.iter().find(|k| **k == kind).copied().unwrap_or("Pod");
    let (found, usage) = observe(ctx, discovery, kind, &object).await;
    Ok(Step::Judged(Msg::Seen { kind, uid, found: found.map(Box::new), usage: usage.map(Box::new) }))
}
