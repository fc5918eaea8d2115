//! The filter and score plugins of upstream's default scheduler profile that bosun runs, over a
//! [`Snapshot`] of the nodes and the pods on them taken once per scheduling pass.
//!
//! - Filters, in upstream's order (a node is rejected by the first that fails): NodeUnschedulable,
//!   TaintToleration (NoSchedule and NoExecute, including the not-ready taint of a node that is
//!   not Ready), NodeAffinity (nodeSelector and required node affinity), NodePorts,
//!   NodeResourcesFit (cpu, memory, ephemeral-storage, pods, extended resources),
//!   PodTopologySpread and InterPodAffinity.
//! - Scores, 0-100 each, normalised over the feasible nodes and weighted as upstream:
//!   NodeResourcesFit's LeastAllocated (1), NodeResourcesBalancedAllocation (1),
//!   InterPodAffinity (2), NodeAffinity's preferences (2), PodTopologySpread (2, which spreads a
//!   controller's pods by default) and TaintToleration's PreferNoSchedule (3).
//!
//! A pod no node fits gets upstream's message, e.g. `0/3 nodes are available: 1 Insufficient
//! cpu, 2 node(s) didn't match Pod's node affinity/selector.`
//!
//! Not run: ImageLocality (nodes do not report their images yet) and the volume plugins (no
//! persistent volumes yet).

mod inter_pod;
mod node_affinity;
mod resources;
mod spread;

use std::collections::BTreeMap;
use std::sync::Arc;

// The maps of uids, node names and label values are hashed on every pod of every pass:
// foldhash, not the standard library's DoS-resistant SipHash (the keys come from the API's
// own objects).
use foldhash::{HashMap, HashMapExt};

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

pub use node_affinity::{node_affinity_matches, tolerates};
pub use resources::{Resources, allocatable, pod_requests};

/// The highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// The uid of the pod's controller (its ReplicaSet, StatefulSet, Job...), if any.
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The pod's priority (0 when unset).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn host_ports(pod: &Pod) -> Vec<(String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port
                .filter(|h| *h > 0)
                .map(|h| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), h))
        })
        .collect()
}

/// What a pod takes of its node, worked out once per version of the pod.
#[derive(Debug)]
pub struct Footprint {
    requests: Resources,
    non_zero: (i64, i64),
    ports: Vec<(String, i32)>,
    /// Its controller's uid, unless it is terminating (terminating pods are not spread).
    controller: Option<String>,
}

impl Footprint {
    /// The footprint of `pod`.
    pub fn of(pod: &Pod) -> Self {
        Self {
            requests: pod_requests(pod),
            non_zero: resources::non_zero_requests(pod),
            ports: host_ports(pod),
            controller: pod
                .metadata
                .deletion_timestamp
                .is_none()
                .then(|| controller_uid(pod).map(str::to_string))
                .flatten(),
        }
    }
}

/// The footprints of pods by uid, with the resourceVersion they were worked out for: kept
/// from one scheduling pass to the next, so that a snapshot of many pods parses none of their
/// requests again.
#[derive(Debug, Default)]
pub struct Footprints(HashMap<String, (String, Arc<Footprint>)>);

impl Footprints {
    /// The footprint of the pod as it is now.
    pub fn of(&mut self, pod: &Pod) -> Arc<Footprint> {
        let (Some(uid), Some(version)) = (
            pod.metadata.uid.as_deref(),
            pod.metadata.resource_version.as_deref(),
        ) else {
            return Arc::new(Footprint::of(pod));
        };
        if let Some((v, f)) = self.0.get(uid)
            && v == version
        {
            return f.clone();
        }
        let f = Arc::new(Footprint::of(pod));
        self.0
            .insert(uid.to_string(), (version.to_string(), f.clone()));
        f
    }

    /// Forgets the pods that are gone.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.0.retain(|uid, _| live(uid));
    }
}

/// A node and what it carries: the pods bound to it and their summed requests.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node.
    pub node: Arc<Node>,
    /// What it can hold.
    pub allocatable: Resources,
    /// What its pods request; `pods` counts them.
    pub requested: Resources,
    /// Their cpu and memory as scoring counts them (see [`resources::non_zero_requests`]).
    pub non_zero: (i64, i64),
    /// The host ports in use, with their protocol.
    pub ports: Vec<(String, i32)>,
    /// The pods (not finished) bound to it.
    pub pods: Vec<Arc<Pod>>,
    /// Their footprints, in the same order.
    footprints: Vec<Arc<Footprint>>,
    /// How many of them (not terminating) each controller uid has here.
    pub by_controller: HashMap<String, i64>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl NodeInfo {
    /// The node, carrying nothing yet.
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            allocatable: allocatable(&node),
            node,
            requested: Resources::default(),
            non_zero: (0, 0),
            ports: Vec::new(),
            pods: Vec::new(),
            footprints: Vec::new(),
            by_controller: HashMap::new(),
        }
    }

    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// Counts one more pod on the node.
    pub fn add(&mut self, pod: Arc<Pod>) {
        let footprint = Arc::new(Footprint::of(&pod));
        self.add_with(pod, footprint);
    }

    /// Counts one more pod on the node, whose footprint is known.
    fn add_with(&mut self, pod: Arc<Pod>, footprint: Arc<Footprint>) {
        self.count(&footprint, 1);
        self.pods.push(pod);
        self.footprints.push(footprint);
    }

    /// Takes a pod off the node (by uid), as if it had gone.
    pub fn remove(&mut self, pod: &Pod) {
        if let Some(i) = self
            .pods
            .iter()
            .position(|p| p.metadata.uid == pod.metadata.uid)
        {
            self.pods.swap_remove(i);
            let footprint = self.footprints.swap_remove(i);
            self.count(&footprint, -1);
        }
    }

    fn count(&mut self, f: &Footprint, sign: i64) {
        if sign > 0 {
            self.requested.add(&f.requests);
            self.ports.extend(f.ports.iter().cloned());
        } else {
            self.requested.sub(&f.requests);
            for p in &f.ports {
                if let Some(i) = self.ports.iter().position(|q| q == p) {
                    self.ports.swap_remove(i);
                }
            }
        }
        self.non_zero.0 += sign * f.non_zero.0;
        self.non_zero.1 += sign * f.non_zero.1;
        if let Some(uid) = &f.controller {
            match self.by_controller.get_mut(uid) {
                Some(n) => *n += sign,
                None => {
                    self.by_controller.insert(uid.clone(), sign);
                }
            }
        }
    }
}

/// The cluster as one scheduling pass sees it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every node with its pods.
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// The labels of each namespace (for affinity terms' namespace selectors).
    pub namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// The bound pods that have pod affinity terms of their own, and their node.
    with_affinity: Vec<(inter_pod::Terms, usize)>,
    /// The nodes carrying each label key.
    labelled: HashMap<String, Vec<usize>>,
    /// The disruption budgets, for preemption to respect where it can.
    pub budgets: Vec<Budget>,
}

/// A PodDisruptionBudget as preemption weighs it.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Its namespace.
    pub namespace: String,
    /// The pods it covers.
    pub selector: api::selector::LabelSelector,
    /// How many of them may still be disrupted (status.disruptionsAllowed).
    pub allowed: i32,
}

impl Budget {
    /// The budget of a PodDisruptionBudget; `None` without a usable selector.
    pub fn of(pdb: &k8s_openapi::api::policy::v1::PodDisruptionBudget) -> Option<Self> {
        let selector = pdb.spec.as_ref()?.selector.as_ref()?;
        let selector =
            api::selector::LabelSelector::from_json(&serde_json::to_value(selector).ok()?).ok()?;
        Some(Self {
            namespace: pdb.metadata.namespace.clone().unwrap_or_default(),
            selector,
            allowed: pdb
                .status
                .as_ref()
                .map(|s| s.disruptions_allowed)
                .unwrap_or(0),
        })
    }

    /// Whether the budget covers the pod.
    pub fn covers(&self, pod: &Pod) -> bool {
        pod.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && self
                .selector
                .matches_with(|k| pod.metadata.labels.as_ref()?.get(k).map(String::as_str))
    }
}

impl Snapshot {
    /// The nodes with the pods bound to them (finished pods take no room).
    pub fn new(
        nodes: &[Arc<Node>],
        pods: &[Arc<Pod>],
        namespace_labels: HashMap<String, BTreeMap<String, String>>,
    ) -> Self {
        Self::with_footprints(nodes, pods, namespace_labels, &mut Footprints::default())
    }

    /// [`Snapshot::new`], reading the pods' footprints from (and adding them to) `footprints`.
    pub fn with_footprints(
        nodes: &[Arc<Node>],
        pods: &[Arc<Pod>],
        namespace_labels: HashMap<String, BTreeMap<String, String>>,
        footprints: &mut Footprints,
    ) -> Self {
        let mut snap = Snapshot {
            nodes: nodes.iter().map(|n| NodeInfo::new(n.clone())).collect(),
            namespace_labels,
            ..Default::default()
        };
        for (i, n) in snap.nodes.iter().enumerate() {
            snap.index.insert(n.name().to_string(), i);
            for key in n.labels().keys() {
                snap.labelled.entry(key.clone()).or_default().push(i);
            }
        }
        for p in pods {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            if let Some(i) = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|n| snap.index.get(n).copied())
            {
                let footprint = footprints.of(p);
                snap.assume_with(p.clone(), footprint, i);
            }
        }
        snap
    }

    /// Counts a pod on a node (bound, or about to be).
    pub fn assume(&mut self, pod: Arc<Pod>, node: usize) {
        let footprint = Arc::new(Footprint::of(&pod));
        self.assume_with(pod, footprint, node);
    }

    fn assume_with(&mut self, pod: Arc<Pod>, footprint: Arc<Footprint>, node: usize) {
        if let Some(terms) = inter_pod::Terms::of(&pod) {
            self.with_affinity.push((terms, node));
        }
        self.nodes[node].add_with(pod, footprint);
    }

    /// The nodes that carry a label key (in any value).
    pub fn labelled(&self, key: &str) -> &[usize] {
        self.labelled.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The index of a node by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

/// Why a node cannot run a pod, in upstream's words, and whether removing pods from the node
/// (preemption) could change that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The reasons, as counted in the unschedulable message.
    pub reasons: Vec<String>,
    /// Unschedulable (true) rather than UnschedulableAndUnresolvable.
    pub resolvable: bool,
}

impl Failure {
    fn resolvable(reason: &str) -> Self {
        Self {
            reasons: vec![reason.to_string()],
            resolvable: true,
        }
    }

    fn unresolvable(reason: &str) -> Self {
        Self {
            reasons: vec![reason.to_string()],
            resolvable: false,
        }
    }
}

/// One pod being scheduled, with what its filters and scores need worked out once (upstream's
/// PreFilter and PreScore).
#[derive(Debug)]
pub struct Candidate<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// What it requests.
    pub want: Resources,
    non_zero: (i64, i64),
    ports: Vec<(String, i32)>,
    inter_pod: inter_pod::State,
    spread: spread::State,
    prefers_nodes: bool,
    prefer_tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
}

impl<'a> Candidate<'a> {
    /// Prepares `pod` for filtering and scoring against `snap`.
    pub fn new(pod: &'a Pod, snap: &Snapshot) -> Self {
        Self {
            pod,
            want: pod_requests(pod),
            non_zero: resources::non_zero_requests(pod),
            ports: host_ports(pod),
            inter_pod: inter_pod::State::new(pod, snap),
            spread: spread::State::new(pod, snap),
            prefers_nodes: node_affinity::has_preferences(pod),
            prefer_tolerations: node_affinity::preference_tolerations(pod),
        }
    }

    /// Whether the node can run the pod, or why not.
    pub fn filter(&self, snap: &Snapshot, node: usize) -> Result<(), Failure> {
        let info = &snap.nodes[node];
        self.filter_node(&info.node)?;
        self.fits(info)?;
        self.spread.filter(self.pod, snap, node)?;
        self.inter_pod.filter(self.pod, snap, node)
    }

    /// NodeUnschedulable, TaintToleration and NodeAffinity: what no preemption changes.
    fn filter_node(&self, node: &Node) -> Result<(), Failure> {
        let tolerations = node_affinity::tolerations(self.pod);
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            let t = Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !tolerates(tolerations, &t) {
                return Err(Failure::unresolvable("node(s) were unschedulable"));
            }
        }
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !ready {
            let t = Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !tolerates(tolerations, &t) {
                return Err(Failure::unresolvable(
                    "node(s) had untolerated taint {node.kubernetes.io/not-ready: }",
                ));
            }
        }
        for taint in node_affinity::taints(node) {
            if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
                && !tolerates(tolerations, taint)
            {
                return Err(Failure::unresolvable(&format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.clone().unwrap_or_default()
                )));
            }
        }
        if !node_affinity_matches(self.pod, node) {
            return Err(Failure::unresolvable(
                "node(s) didn't match Pod's node affinity/selector",
            ));
        }
        Ok(())
    }

    /// NodePorts and NodeResourcesFit against what the node carries.
    pub fn fits(&self, info: &NodeInfo) -> Result<(), Failure> {
        if self.ports.iter().any(|p| info.ports.contains(p)) {
            return Err(Failure::resolvable(
                "node(s) didn't have free ports for the requested pod ports",
            ));
        }
        let reasons = resources::insufficient(&self.want, &info.requested, &info.allocatable);
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Failure {
                reasons,
                resolvable: true,
            })
        }
    }

    /// Whether the pod would fit on the node if it carried only `info`'s pods: the filters
    /// that depend on other pods are judged against the snapshot, which counts more pods, so
    /// the answer errs on the side of "no".
    pub fn fits_without(&self, snap: &Snapshot, node: usize, info: &NodeInfo) -> bool {
        self.fits(info).is_ok()
            && self.spread.filter(self.pod, snap, node).is_ok()
            && self.inter_pod.filter(self.pod, snap, node).is_ok()
    }

    /// The weighted total score of each feasible node.
    pub fn scores(&self, snap: &Snapshot, feasible: &[usize]) -> Vec<i64> {
        let mut total = vec![0; feasible.len()];
        let mut add = |weight: i64, scores: &[i64]| {
            for (t, s) in total.iter_mut().zip(scores) {
                *t += weight * s;
            }
        };
        let fit: Vec<(i64, i64)> = feasible
            .iter()
            .map(|i| {
                let info = &snap.nodes[*i];
                let requested = (
                    info.non_zero.0 + self.non_zero.0,
                    info.non_zero.1 + self.non_zero.1,
                );
                (
                    resources::least_allocated(requested, &info.allocatable),
                    resources::balanced_allocation(requested, &info.allocatable),
                )
            })
            .collect();
        add(1, &fit.iter().map(|f| f.0).collect::<Vec<_>>());
        add(1, &fit.iter().map(|f| f.1).collect::<Vec<_>>());
        if self.prefers_nodes {
            let raw: Vec<i64> = feasible
                .iter()
                .map(|i| node_affinity::preferred_score(self.pod, &snap.nodes[*i].node))
                .collect();
            let max = raw.iter().copied().max().unwrap_or(0);
            if max > 0 {
                add(
                    2,
                    &raw.iter()
                        .map(|s| s * MAX_NODE_SCORE / max)
                        .collect::<Vec<_>>(),
                );
            }
        }
        let taints: Vec<i64> = feasible
            .iter()
            .map(|i| {
                node_affinity::intolerable_preferences(
                    &self.prefer_tolerations,
                    &snap.nodes[*i].node,
                )
            })
            .collect();
        let max = taints.iter().copied().max().unwrap_or(0);
        add(
            3,
            &taints
                .iter()
                .map(|s| {
                    if max == 0 {
                        MAX_NODE_SCORE
                    } else {
                        MAX_NODE_SCORE - s * MAX_NODE_SCORE / max
                    }
                })
                .collect::<Vec<_>>(),
        );
        let affinity: Vec<i64> = feasible
            .iter()
            .filter_map(|i| self.inter_pod.score(snap, *i))
            .collect();
        if affinity.len() == feasible.len() {
            let min = affinity.iter().copied().min().unwrap_or(0);
            let max = affinity.iter().copied().max().unwrap_or(0);
            if max > min {
                add(
                    2,
                    &affinity
                        .iter()
                        .map(|s| MAX_NODE_SCORE * (s - min) / (max - min))
                        .collect::<Vec<_>>(),
                );
            }
        }
        if let Some(spread) = self.spread.scores(snap, feasible) {
            add(2, &spread);
        }
        total
    }
}

/// Counts reasons as upstream's FitError does: "N reason" strings, sorted.
fn histogram<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

/// Upstream's message for a pod no node fits: the filters' reasons counted over the nodes,
/// then what preemption found (`preemption`, when it was tried and did not help).
pub fn unschedulable_message(
    nodes: usize,
    failures: &[Failure],
    preemption: Option<&str>,
) -> String {
    let mut msg = format!("0/{nodes} nodes are available");
    let reasons = histogram(
        failures
            .iter()
            .flat_map(|f| f.reasons.iter().map(String::as_str)),
    );
    if !reasons.is_empty() {
        msg.push_str(": ");
        msg.push_str(&reasons);
    }
    msg.push('.');
    if let Some(p) = preemption {
        msg.push_str(" preemption: ");
        msg.push_str(p);
    }
    msg
}

/// What preemption says when it finds no node, upstream's way: "0/3 nodes are available:
/// 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
pub fn preemption_message<'a>(nodes: usize, outcomes: impl Iterator<Item = &'a str>) -> String {
    let reasons = histogram(outcomes);
    if reasons.is_empty() {
        format!("0/{nodes} nodes are available.")
    } else {
        format!("0/{nodes} nodes are available: {reasons}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }

    /// A ready node with 2 cpu, 4Gi and 110 pods, and labels for its name and zone.
    pub(crate) fn node(name: &str, zone: &str, extra: serde_json::Value) -> Arc<Node> {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone, "disk": "ssd"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110", "ephemeral-storage": "10Gi"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut n, extra);
        Arc::new(serde_json::from_value(n).expect("node"))
    }

    /// A pod in namespace `default`, on `node` when one is given.
    pub(crate) fn pod(name: &str, node: Option<&str>, extra: serde_json::Value) -> Arc<Pod> {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "uid": name},
                           "spec": {"containers": [{"name": "c"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        merge(&mut p, extra);
        Arc::new(serde_json::from_value(p).expect("pod"))
    }

    fn wants(name: &str, node: Option<&str>, requests: serde_json::Value) -> Arc<Pod> {
        pod(
            name,
            node,
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": requests}}]}}),
        )
    }

    pub(crate) fn snapshot(nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> Snapshot {
        Snapshot::new(nodes, pods, HashMap::new())
    }

    #[test]
    fn footprints_are_reused_until_the_pod_changes_and_count_as_fresh_ones() {
        let n = node("n1", "a", json!({}));
        let v1 = wants("web", Some("n1"), json!({"cpu": "250m", "memory": "64Mi"}));
        let mut memo = Footprints::default();
        let at = |p: &Arc<Pod>, rv: &str| {
            let mut p = (**p).clone();
            p.metadata.resource_version = Some(rv.into());
            Arc::new(p)
        };
        let first = memo.of(&at(&v1, "1"));
        assert!(Arc::ptr_eq(&first, &memo.of(&at(&v1, "1"))));
        let v2 = wants("web", Some("n1"), json!({"cpu": "500m"}));
        let second = memo.of(&at(&v2, "2"));
        assert!(!Arc::ptr_eq(&first, &second));
        // a snapshot from the memo counts what a fresh one counts
        let pods = [at(&v2, "2")];
        let fresh = snapshot(std::slice::from_ref(&n), &pods);
        let memoized =
            Snapshot::with_footprints(std::slice::from_ref(&n), &pods, HashMap::new(), &mut memo);
        assert_eq!(fresh.nodes[0].requested, memoized.nodes[0].requested);
        assert_eq!(memoized.nodes[0].requested.milli_cpu, 500);
        assert_eq!(memoized.nodes[0].non_zero, fresh.nodes[0].non_zero);
        memo.retain(|_| false);
        assert!(!Arc::ptr_eq(&second, &memo.of(&at(&v2, "2"))));
    }

    /// Filters every node and picks the best scoring, as a pass does; or the message.
    fn schedule(pod: &Pod, snap: &Snapshot) -> Result<String, String> {
        let c = Candidate::new(pod, snap);
        let mut feasible = Vec::new();
        let mut failures = Vec::new();
        for i in 0..snap.nodes.len() {
            match c.filter(snap, i) {
                Ok(()) => feasible.push(i),
                Err(f) => failures.push(f),
            }
        }
        if feasible.is_empty() {
            return Err(unschedulable_message(snap.nodes.len(), &failures, None));
        }
        let scores = c.scores(snap, &feasible);
        let best = (0..feasible.len())
            .rev()
            .max_by_key(|k| scores[*k])
            .expect("a node");
        Ok(snap.nodes[feasible[best]].name().to_string())
    }

    #[test]
    fn resources_fit_until_the_node_is_full() {
        let nodes = [node(
            "n1",
            "a",
            json!({"status": {"allocatable": {"nvidia.com/gpu": "1"}}}),
        )];
        let big = wants("big", None, json!({"cpu": "1500m", "memory": "1Gi"}));
        assert!(schedule(&big, &snapshot(&nodes, &[])).is_ok());
        let placed = wants(
            "placed",
            Some("n1"),
            json!({"cpu": "1500m", "memory": "1Gi"}),
        );
        assert_eq!(
            schedule(&big, &snapshot(&nodes, &[placed])),
            Err("0/1 nodes are available: 1 Insufficient cpu.".into())
        );
        let huge = wants(
            "huge",
            None,
            json!({"memory": "5Gi", "ephemeral-storage": "20Gi"}),
        );
        assert_eq!(
            schedule(&huge, &snapshot(&nodes, &[])),
            Err(
                "0/1 nodes are available: 1 Insufficient ephemeral-storage, 1 Insufficient memory."
                    .into()
            )
        );
        // extended resources: one GPU, asked for through a limit
        let gpu = |name: &str, node: Option<&str>| {
            pod(
                name,
                node,
                json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}),
            )
        };
        assert!(schedule(&gpu("g", None), &snapshot(&nodes, &[])).is_ok());
        assert_eq!(
            schedule(&gpu("g", None), &snapshot(&nodes, &[gpu("h", Some("n1"))])),
            Err("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into())
        );
        let other = pod(
            "o",
            None,
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"example.com/foo": "1"}}}]}}),
        );
        assert!(schedule(&other, &snapshot(&nodes, &[])).is_err());
        // limits stand for missing requests; init containers count by their largest; overhead adds
        let limited = pod(
            "l",
            None,
            json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "3"}}}]}}),
        );
        assert_eq!(pod_requests(&limited).milli_cpu, 3000);
        let init = pod(
            "i",
            None,
            json!({"spec": {"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
                            "containers": [{"name": "c", "resources": {"requests": {"cpu": "200m"}}}],
                            "overhead": {"cpu": "50m"}}}),
        );
        assert_eq!(pod_requests(&init).milli_cpu, 1050);
        // host ports
        let port = |name: &str, node: Option<&str>| {
            pod(
                name,
                node,
                json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
            )
        };
        assert_eq!(
            schedule(&port("p", None), &snapshot(&nodes, &[port("q", Some("n1"))])),
            Err(
                "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
                    .into()
            )
        );
    }

    #[test]
    fn selectors_affinity_taints_and_readiness() {
        let nodes = [
            node("n1", "a", json!({})),
            node(
                "n2",
                "a",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
            ),
            node("n3", "a", json!({"spec": {"unschedulable": true}})),
            node(
                "n4",
                "a",
                json!({"metadata": {"labels": {"disk": "hdd"}}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        ];
        let snap = snapshot(&nodes, &[]);
        let p = pod(
            "p",
            None,
            json!({"spec": {"nodeSelector": {"disk": "hdd"}}}),
        );
        assert_eq!(
            schedule(&p, &snap),
            Err("0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable.".into())
        );
        let affinity = |op: &str, values: serde_json::Value| {
            pod(
                "a",
                None,
                json!({"spec": {"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": op, "values": values}]}]}}}}}),
            )
        };
        assert_eq!(
            schedule(&affinity("In", json!(["ssd"])), &snap),
            Ok("n1".into())
        );
        assert!(schedule(&affinity("NotIn", json!(["ssd", "hdd"])), &snap).is_err());
        let tolerant = pod(
            "t",
            None,
            json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "n2"},
                            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(schedule(&tolerant, &snap), Ok("n2".into()));
    }

    #[test]
    fn scores_prefer_room_balance_preferences_and_spread() {
        let nodes = [node("n1", "a", json!({})), node("n2", "b", json!({}))];
        // the emptier node wins
        let busy = wants("busy", Some("n1"), json!({"cpu": "1", "memory": "1Gi"}));
        let p = wants("p", None, json!({"cpu": "100m", "memory": "128Mi"}));
        assert_eq!(schedule(&p, &snapshot(&nodes, &[busy])), Ok("n2".into()));
        // a preferred node affinity outweighs a little room
        let busyish = wants("b", Some("n2"), json!({"cpu": "200m"}));
        let prefers = pod(
            "pr",
            None,
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "preference": {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]}]}}]}}}}),
        );
        assert_eq!(
            schedule(&prefers, &snapshot(&nodes, &[busyish])),
            Ok("n2".into())
        );
        // a PreferNoSchedule taint is avoided
        let soft = [
            node(
                "n1",
                "a",
                json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
            ),
            node("n2", "b", json!({})),
        ];
        let filler = wants("f", Some("n2"), json!({"cpu": "300m"}));
        assert_eq!(
            schedule(&pod("x", None, json!({})), &snapshot(&soft, &[filler])),
            Ok("n2".into())
        );
        // a controller's pods spread over the nodes
        let owned = |name: &str, node: Option<&str>| {
            pod(
                name,
                node,
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]}}),
            )
        };
        let mut placed = Vec::new();
        let mut snap = snapshot(&nodes, &placed);
        for i in 0..4 {
            let p = owned(&format!("r{i}"), None);
            let node = schedule(&p, &snap).expect("fits");
            placed.push(owned(&format!("r{i}"), Some(&node)));
            snap = snapshot(&nodes, &placed);
        }
        let on_n1 = placed
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n1"))
            .count();
        assert_eq!(on_n1, 2, "replicas spread evenly");
        // the message counts reasons as upstream sorts them
        let msg = unschedulable_message(
            3,
            &[
                Failure::resolvable("Insufficient cpu"),
                Failure::resolvable("Insufficient cpu"),
                Failure::resolvable("Insufficient memory"),
            ],
            Some("0/3 nodes are available: 3 No preemption victims found for incoming pod."),
        );
        assert_eq!(
            msg,
            "0/3 nodes are available: 1 Insufficient memory, 2 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        );
    }

    fn labelled(name: &str, node: Option<&str>, app: &str, extra: serde_json::Value) -> Arc<Pod> {
        let mut e = json!({"metadata": {"labels": {"app": app}}});
        merge(&mut e, extra);
        pod(name, node, e)
    }

    fn term(app: &str, key: &str) -> serde_json::Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    #[test]
    fn pod_affinity_and_anti_affinity() {
        let nodes = [
            node("n1", "a", json!({})),
            node("n2", "a", json!({})),
            node("n3", "b", json!({})),
        ];
        let db = labelled("db", Some("n3"), "db", json!({}));
        // required affinity: the same zone as the database
        let near = labelled(
            "web",
            None,
            "web",
            json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "topology.kubernetes.io/zone")]}}}}),
        );
        assert_eq!(
            schedule(&near, &snapshot(&nodes, std::slice::from_ref(&db))),
            Ok("n3".into())
        );
        // with no database anywhere, and not one itself, it cannot run
        assert_eq!(
            schedule(&near, &snapshot(&nodes, &[])),
            Err("0/3 nodes are available: 3 node(s) didn't match pod affinity rules.".into())
        );
        // the first of a group that selects itself may go anywhere
        let first = labelled(
            "c0",
            None,
            "cache",
            json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "kubernetes.io/hostname")]}}}}),
        );
        assert!(schedule(&first, &snapshot(&nodes, &[])).is_ok());
        // required anti-affinity: one per node
        let anti = |name: &str, node: Option<&str>| {
            labelled(
                name,
                node,
                "one",
                json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("one", "kubernetes.io/hostname")]}}}}),
            )
        };
        let running = [anti("o1", Some("n1")), anti("o2", Some("n2"))];
        assert_eq!(
            schedule(&anti("o3", None), &snapshot(&nodes, &running)),
            Ok("n3".into())
        );
        let full = [
            anti("o1", Some("n1")),
            anti("o2", Some("n2")),
            anti("o3", Some("n3")),
        ];
        assert_eq!(
            schedule(&anti("o4", None), &snapshot(&nodes, &full)),
            Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
        );
        // a running pod's anti-affinity keeps matching pods out of its zone
        let loner = labelled(
            "loner",
            Some("n1"),
            "loner",
            json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("noisy", "topology.kubernetes.io/zone")]}}}}),
        );
        let noisy = labelled("noisy", None, "noisy", json!({}));
        assert_eq!(
            schedule(&noisy, &snapshot(&nodes, &[loner])),
            Ok("n3".into())
        );
        // preferred affinity attracts
        let likes = labelled(
            "likes",
            None,
            "x",
            json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term("db", "kubernetes.io/hostname")}]}}}}),
        );
        assert_eq!(schedule(&likes, &snapshot(&nodes, &[db])), Ok("n3".into()));
    }

    #[test]
    fn topology_spread_constraints() {
        let nodes = [
            node("n1", "a", json!({})),
            node("n2", "a", json!({})),
            node("n3", "b", json!({})),
            node(
                "n4",
                "b",
                json!({"metadata": {"labels": {"topology.kubernetes.io/zone": null}}}),
            ),
        ];
        let spread = |name: &str, node: Option<&str>| {
            labelled(
                name,
                node,
                "s",
                json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "s"}}}]}}),
            )
        };
        let running = [spread("s1", Some("n1")), spread("s2", Some("n2"))];
        // zone a has 2, zone b none: only zone b is within the skew
        assert_eq!(
            schedule(&spread("s3", None), &snapshot(&nodes, &running)),
            Ok("n3".into())
        );
        let msg = Candidate::new(&spread("s3", None), &snapshot(&nodes, &running))
            .filter(&snapshot(&nodes, &running), 0)
            .expect_err("skew");
        assert_eq!(
            msg.reasons,
            ["node(s) didn't match pod topology spread constraints"]
        );
        let missing = Candidate::new(&spread("s3", None), &snapshot(&nodes, &running))
            .filter(&snapshot(&nodes, &running), 3)
            .expect_err("no zone");
        assert!(!missing.resolvable);
    }
}
