//! The scheduler (`default-scheduler`): it reads nodes and pods from caches that watches of
//! the API keep ([`Caches`], in `bosun server` the controllers' shared informers), and puts
//! each pod that has no node (and names this scheduler) on the node that fits it best, by the
//! filter and score [`plugins`], with the pod's `binding` subresource, recording a `Scheduled`
//! event. A pod that fits nowhere may make room by evicting pods of lower priority
//! ([`preemption`]); otherwise it gets the PodScheduled=False condition (reason Unschedulable)
//! and a FailedScheduling event with upstream's message, and is tried again when the cluster
//! changes.

pub mod plugins;
pub mod preemption;

use foldhash::{HashMap, HashMapExt, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, Event, EventSource, Namespace, Node, ObjectReference, Pod,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// The scheduler's name, as pods name it in `spec.schedulerName`.
pub const NAME: &str = "default-scheduler";

fn now() -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_microsecond(Utc::now().timestamp_micros())
            .unwrap_or_default(),
    )
}

fn pending(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    let terminal = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n.is_empty() || n == NAME)
        && p.metadata.deletion_timestamp.is_none()
        && !terminal
}

/// What the scheduler reads the cluster through: caches of nodes, pods and disruption budgets,
/// each kept by a watch (in `bosun server`, the controllers' shared informers), and a stream
/// that yields whenever a node or a pod changes.
pub struct Caches {
    /// Every node.
    pub nodes: Store<Node>,
    /// Every pod.
    pub pods: Store<Pod>,
    /// Every PodDisruptionBudget.
    pub budgets: Store<PodDisruptionBudget>,
    /// One item per change of a node or a pod.
    pub changes: futures::stream::BoxStream<'static, ()>,
}

/// Runs the scheduler until its watches end.
pub async fn run(client: kube::Client, caches: Caches) -> anyhow::Result<()> {
    let changed = Arc::new(Notify::new());
    // Nodes and pods wake the scheduler; namespaces only matter to the namespace selectors of
    // pod affinity terms, and disruption budgets only steer preemption.
    let wake = {
        let changed = changed.clone();
        caches.changes.for_each(move |()| {
            changed.notify_one();
            futures::future::ready(())
        })
    };
    let (namespaces, namespace_stream) = cache::<Namespace>(&client);
    let scheduler = Scheduler {
        events: Recorder::new(client.clone()),
        client,
        nodes: caches.nodes,
        pods: caches.pods,
        namespaces,
        budgets: caches.budgets,
        reported: HashMap::new(),
        next_start: 0,
        assumed: HashMap::new(),
        footprints: Default::default(),
    };
    tokio::select! {
        _ = wake => anyhow::bail!("the node and pod watches ended"),
        _ = namespace_stream => anyhow::bail!("the namespace watch ended"),
        r = scheduler.run(changed) => r,
    }
}

/// A cache of every object of a kind, kept by the returned future.
fn cache<K>(client: &kube::Client) -> (Store<K>, impl std::future::Future<Output = ()> + use<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let feed = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        // as kube-scheduler's informers, keep no managedFields: the scheduler never reads them
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    (store, feed)
}

struct Scheduler {
    client: kube::Client,
    events: Recorder,
    nodes: Store<Node>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    budgets: Store<PodDisruptionBudget>,
    /// The last unschedulable message reported per pod uid.
    reported: HashMap<String, String>,
    /// Where the next pod's search over the nodes starts.
    next_start: usize,
    /// The node of each pod bound (or being bound) that the cache does not show bound yet, by
    /// uid: upstream's assumed pods.
    assumed: HashMap<String, String>,
    /// What each pod takes of its node, kept from one pass to the next.
    footprints: plugins::Footprints,
}

/// How many bindings are written at once.
const BINDS_IN_FLIGHT: usize = 64;

impl Scheduler {
    async fn run(mut self, changed: Arc<Notify>) -> anyhow::Result<()> {
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.budgets.wait_until_ready().await;
        loop {
            self.pass().await;
            // Unschedulable pods are retried when something changes, and at least every 5 s.
            let _ = tokio::time::timeout(Duration::from_secs(5), changed.notified()).await;
        }
    }

    /// Schedules every pending pod once, highest priority and oldest first: placements are
    /// decided one after the other against a snapshot of the nodes (counting the pods placed
    /// before), and the bindings are then written concurrently, as upstream's binding cycle.
    async fn pass(&mut self) {
        let nodes = self.nodes.state();
        let pods: Vec<Arc<Pod>> = self.pods.state();
        let namespace_labels = self
            .namespaces
            .state()
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    n.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        let mut snap = plugins::Snapshot::with_footprints(
            &nodes,
            &pods,
            namespace_labels,
            &mut self.footprints,
        );
        snap.budgets = self
            .budgets
            .state()
            .iter()
            .filter_map(|b| plugins::Budget::of(b))
            .collect();
        // A pod bound by an earlier pass stays assumed on its node until the cache shows it
        // bound (or gone), so that it is neither placed again nor left out of its node's count.
        let mut assumed = HashMap::new();
        let mut queue: Vec<&Arc<Pod>> = Vec::new();
        for pod in pods.iter().filter(|p| pending(p)) {
            let uid = pod.metadata.uid.as_deref().unwrap_or("");
            match self.assumed.remove_entry(uid) {
                Some((uid, node)) => {
                    if let Some(i) = snap.index_of(&node) {
                        snap.assume(pod.clone(), i);
                    }
                    assumed.insert(uid, node);
                }
                None => queue.push(pod),
            }
        }
        self.assumed = assumed;
        queue.sort_by_key(|p| {
            (
                std::cmp::Reverse(plugins::priority(p)),
                p.metadata.creation_timestamp.clone().map(|t| t.0),
            )
        });
        let wanted = feasible_nodes_to_find(nodes.len());
        let mut binds = Vec::new();
        for pod in queue {
            match self.place(pod, &snap, wanted) {
                Placement::Node(i) => {
                    let node_name = snap.nodes[i].name().to_string();
                    snap.assume((*pod).clone(), i);
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    self.assumed.insert(uid.clone(), node_name.clone());
                    let binding = bind(
                        self.client.clone(),
                        self.events.clone(),
                        (*pod).clone(),
                        node_name,
                    );
                    binds.push(async move { (uid, binding.await) });
                }
                Placement::Nominated(msg, nomination) => {
                    let node = snap.nodes[nomination.node].name().to_string();
                    self.unschedulable(pod, &msg, Some(&node)).await;
                    for victim in &nomination.victims {
                        evict(&self.client, &self.events, victim, pod, &node).await;
                    }
                }
                Placement::Nowhere(msg) => self.unschedulable(pod, &msg, None).await,
            }
        }
        let failed: Vec<String> = futures::stream::iter(binds)
            .buffer_unordered(BINDS_IN_FLIGHT)
            .filter_map(|(uid, r)| {
                futures::future::ready(match r {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "binding failed");
                        Some(uid)
                    }
                })
            })
            .collect()
            .await;
        // a pod whose binding failed is placed again in the next pass
        for uid in failed {
            self.assumed.remove(&uid);
        }
        let live: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.reported.retain(|uid, _| live.contains(uid.as_str()));
        self.footprints.retain(|uid| live.contains(uid));
    }

    /// Finds the pod's node: its nominated node if it fits there, or else the best scoring of
    /// enough feasible nodes (upstream's percentageOfNodesToScore, starting where the last pod
    /// stopped so that all nodes get their turn); failing that, room made by preemption.
    fn place(&mut self, pod: &Pod, snap: &plugins::Snapshot, wanted: usize) -> Placement {
        let candidate = plugins::Candidate::new(pod, snap);
        let nominated = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .and_then(|n| snap.index_of(n));
        if let Some(i) = nominated
            && candidate.filter(snap, i).is_ok()
        {
            return Placement::Node(i);
        }
        let n = snap.nodes.len();
        let mut feasible = Vec::new();
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (self.next_start + k) % n;
            match candidate.filter(snap, i) {
                Ok(()) => {
                    feasible.push(i);
                    if feasible.len() >= wanted {
                        self.next_start = (i + 1) % n;
                        break;
                    }
                }
                Err(f) => failures.push((i, f)),
            }
        }
        if !feasible.is_empty() {
            let scores = candidate.scores(snap, &feasible);
            let mut best = 0;
            for (k, s) in scores.iter().enumerate() {
                if *s > scores[best] {
                    best = k;
                }
            }
            return Placement::Node(feasible[best]);
        }
        let reasons: Vec<plugins::Failure> = failures.iter().map(|(_, f)| f.clone()).collect();
        match preemption::preempt(&candidate, snap, &failures) {
            Ok(nomination) => Placement::Nominated(
                plugins::unschedulable_message(n, &reasons, None),
                nomination,
            ),
            Err(why) => Placement::Nowhere(plugins::unschedulable_message(n, &reasons, Some(&why))),
        }
    }

    async fn unschedulable(&mut self, pod: &Pod, msg: &str, nominated: Option<&str>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = format!("{msg}{}", nominated.unwrap_or(""));
        if self.reported.get(&uid) == Some(&key) {
            return;
        }
        self.reported.insert(uid, key);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": msg,
            "lastTransitionTime": now(),
        }]}});
        if let Some(node) = nominated {
            patch["status"]["nominatedNodeName"] = node.into();
        }
        // A strategic merge patch keeps the other conditions (merge key: type).
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::debug!(error = %e, "reporting an unschedulable pod failed");
        }
        self.events.record(pod, "Warning", "FailedScheduling", msg);
    }
}

/// Where a pod goes.
enum Placement {
    /// To this node.
    Node(usize),
    /// Nowhere yet: once these pods are gone, to the nominated node.
    Nominated(String, preemption::Nomination),
    /// Nowhere, and why.
    Nowhere(String),
}

/// Evicts a pod for a more important one, as upstream: the DisruptionTarget condition says
/// why, an event names the preemptor, and the pod is deleted with its grace period.
async fn evict(
    client: &kube::Client,
    events: &Recorder,
    victim: &Pod,
    preemptor: &Pod,
    node: &str,
) {
    let ns = victim.metadata.namespace.clone().unwrap_or_default();
    let name = victim.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": format!("{NAME}: preempting to accommodate a higher priority pod"),
        "lastTransitionTime": now(),
    }]}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::debug!(error = %e, "marking a preempted pod failed");
    }
    let message = format!(
        "Preempted by pod {} on node {node}",
        preemptor.metadata.uid.as_deref().unwrap_or("")
    );
    events.record(victim, "Normal", "Preempted", &message);
    if let Err(e) = api.delete(&name, &Default::default()).await {
        tracing::debug!(error = %e, "deleting a preempted pod failed");
    }
}

/// Binds a pod to a node and records the Scheduled event.
async fn bind(
    client: kube::Client,
    events: Recorder,
    pod: Arc<Pod>,
    node: String,
) -> kube::Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await?;
    events.record(
        &pod,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
    );
    Ok(())
}

/// How many feasible nodes are enough to pick from, as upstream's adaptive
/// percentageOfNodesToScore: all of up to 100 nodes, then a share falling from 50 % with the
/// cluster's size, never below 5 % or 100 nodes.
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes <= MIN {
        return nodes.max(1);
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(MIN)
}

/// Writes the scheduler's events, as upstream's event broadcaster does: off the scheduling and
/// binding path, a few at a time.
#[derive(Clone)]
struct Recorder {
    queue: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// How many events are written at once.
const EVENTS_IN_FLIGHT: usize = 16;

impl Recorder {
    fn new(client: kube::Client) -> Self {
        let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<Event>();
        tokio::spawn(
            futures::stream::poll_fn(move |cx| pending.poll_recv(cx)).for_each_concurrent(
                EVENTS_IN_FLIGHT,
                move |event| {
                    let client = client.clone();
                    async move {
                        let ns = event.metadata.namespace.clone().unwrap_or_default();
                        let api: Api<Event> = Api::namespaced(client, &ns);
                        if let Err(e) = api.create(&PostParams::default(), &event).await {
                            tracing::debug!(error = %e, "recording an event failed");
                        }
                    }
                },
            ),
        );
        Self { queue }
    }

    /// Records an event about a pod.
    fn record(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{name}.{:x}",
                    Utc::now().timestamp_nanos_opt().unwrap_or_default()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            source: Some(EventSource {
                component: Some(NAME.into()),
                host: None,
            }),
            reporting_component: Some(NAME.into()),
            first_timestamp: Some(now()),
            last_timestamp: Some(now()),
            count: Some(1),
            ..Default::default()
        };
        let _ = self.queue.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_clusters_score_a_share_of_their_nodes() {
        assert_eq!(feasible_nodes_to_find(3), 3);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(200), 100);
    }
}
