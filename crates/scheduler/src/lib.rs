//! The scheduler (`default-scheduler`): it watches nodes and pods through the API, and puts
//! each pod that has no node (and names this scheduler) on the node that fits it best, by the
//! filter and score [`plugins`], with the pod's `binding` subresource, recording a `Scheduled`
//! event. A pod that fits nowhere may make room by evicting pods of lower priority
//! ([`preemption`]); otherwise it gets the PodScheduled=False condition (reason Unschedulable)
//! and a FailedScheduling event with upstream's message, and is tried again when the cluster
//! changes.

pub mod plugins;
pub mod preemption;

use std::collections::HashMap;
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

/// Runs the scheduler until its watches end.
pub async fn run(client: kube::Client) -> anyhow::Result<()> {
    let changed = Arc::new(Notify::new());
    // Nodes and pods wake the scheduler; namespaces only matter to the namespace selectors of
    // pod affinity terms, and disruption budgets only steer preemption.
    let (nodes, node_stream) = cache::<Node>(&client, Some(changed.clone()));
    let (pods, pod_stream) = cache::<Pod>(&client, Some(changed.clone()));
    let (namespaces, namespace_stream) = cache::<Namespace>(&client, None);
    let (budgets, budget_stream) = cache::<PodDisruptionBudget>(&client, None);
    let scheduler = Scheduler {
        client,
        nodes,
        pods,
        namespaces,
        budgets,
        reported: HashMap::new(),
        next_start: 0,
    };
    tokio::select! {
        _ = node_stream => anyhow::bail!("the node watch ended"),
        _ = pod_stream => anyhow::bail!("the pod watch ended"),
        _ = namespace_stream => anyhow::bail!("the namespace watch ended"),
        _ = budget_stream => anyhow::bail!("the disruption budget watch ended"),
        r = scheduler.run(changed) => r,
    }
}

/// A cache of every object of a kind, kept by the returned future; each change (an object
/// applied or deleted) pokes `changed`, when given.
fn cache<K>(
    client: &kube::Client,
    changed: Option<Arc<Notify>>,
) -> (Store<K>, impl std::future::Future<Output = ()> + use<K>)
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
        .touched_objects()
        .for_each(move |_| {
            if let Some(changed) = &changed {
                changed.notify_one();
            }
            futures::future::ready(())
        });
    (store, feed)
}

struct Scheduler {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    budgets: Store<PodDisruptionBudget>,
    /// The last unschedulable message reported per pod uid.
    reported: HashMap<String, String>,
    /// Where the next pod's search over the nodes starts.
    next_start: usize,
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
        let mut snap = plugins::Snapshot::new(&nodes, &pods, namespace_labels);
        snap.budgets = self
            .budgets
            .state()
            .iter()
            .filter_map(|b| plugins::Budget::of(b))
            .collect();
        let mut queue: Vec<&Arc<Pod>> = pods.iter().filter(|p| pending(p)).collect();
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
                    binds.push(bind(self.client.clone(), (*pod).clone(), node_name));
                }
                Placement::Nominated(msg, nomination) => {
                    let node = snap.nodes[nomination.node].name().to_string();
                    self.unschedulable(pod, &msg, Some(&node)).await;
                    for victim in &nomination.victims {
                        evict(&self.client, victim, pod, &node).await;
                    }
                }
                Placement::Nowhere(msg) => self.unschedulable(pod, &msg, None).await,
            }
        }
        futures::stream::iter(binds)
            .buffer_unordered(BINDS_IN_FLIGHT)
            .for_each(|r| {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "binding failed");
                }
                futures::future::ready(())
            })
            .await;
        let live: std::collections::HashSet<String> =
            pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        self.reported.retain(|uid, _| live.contains(uid));
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
        record(self.client.clone(), pod, "Warning", "FailedScheduling", msg).await;
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
async fn evict(client: &kube::Client, victim: &Pod, preemptor: &Pod, node: &str) {
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
    record(client.clone(), victim, "Normal", "Preempted", &message).await;
    if let Err(e) = api.delete(&name, &Default::default()).await {
        tracing::debug!(error = %e, "deleting a preempted pod failed");
    }
}

/// Binds a pod to a node and records the Scheduled event.
async fn bind(client: kube::Client, pod: Arc<Pod>, node: String) -> anyhow::Result<()> {
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
    record(
        client,
        &pod,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
    )
    .await;
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

/// Records an event about a pod.
async fn record(client: kube::Client, pod: &Pod, kind: &str, reason: &str, message: &str) {
    {
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
                namespace: Some(ns.clone()),
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
        let api: Api<Event> = Api::namespaced(client, &ns);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %e, "recording an event failed");
        }
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
