//! Preemption (upstream's DefaultPreemption): when a pod fits no node, lower-priority pods may
//! make room for it. On each node where removing pods could help, the scheduler takes away all
//! pods of lower priority, checks that the pod then fits, and gives back as many of them as
//! still leaves room (those a PodDisruptionBudget protects first, then the most important);
//! the node whose victims matter least (fewest budget violations, then lowest highest
//! priority, then lowest summed priority, then fewest) is nominated.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::plugins::{Budget, Candidate, Failure, Snapshot, priority};

/// A node where the pod fits once the victims are gone.
#[derive(Debug)]
pub struct Nomination {
    /// The node's index in the snapshot.
    pub node: usize,
    /// The pods to evict.
    pub victims: Vec<Arc<Pod>>,
}

const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// Finds where the pod could run by evicting lower-priority pods, given why each node was
/// rejected (`failures`, by node index); or upstream's explanation of why there is none.
pub fn preempt(
    candidate: &Candidate,
    snap: &Snapshot,
    failures: &[(usize, Failure)],
) -> Result<Nomination, String> {
    let pod = candidate.pod;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    let own = priority(pod);
    // Victims chosen before are still terminating: wait for them rather than choose more.
    let nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .and_then(|n| snap.index_of(n));
    if let Some(n) = nominated
        && snap.nodes[n]
            .pods
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some() && priority(p) < own)
    {
        return Err("not eligible due to a terminating pod on the nominated node.".into());
    }
    let mut outcomes = Vec::new();
    let mut best: Option<(Key, Nomination)> = None;
    for (node, failure) in failures {
        if !failure.resolvable {
            outcomes.push(NOT_HELPFUL);
            continue;
        }
        match victims_on(candidate, snap, *node, own) {
            Some((victims, violations)) => {
                let key = Key::of(&victims, violations);
                if best.as_ref().is_none_or(|(b, _)| key < *b) {
                    best = Some((
                        key,
                        Nomination {
                            node: *node,
                            victims,
                        },
                    ));
                }
            }
            None => outcomes.push(NO_VICTIMS),
        }
    }
    best.map(|(_, n)| n)
        .ok_or_else(|| crate::plugins::preemption_message(snap.nodes.len(), outcomes.into_iter()))
}

/// The fewest, least important pods of lower priority whose eviction lets the pod fit, and
/// how many of them break a disruption budget.
fn victims_on(
    candidate: &Candidate,
    snap: &Snapshot,
    node: usize,
    own: i32,
) -> Option<(Vec<Arc<Pod>>, usize)> {
    let mut info = snap.nodes[node].clone();
    let mut potential: Vec<Arc<Pod>> = info
        .pods
        .iter()
        .filter(|p| priority(p) < own && p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    if potential.is_empty() {
        return None;
    }
    for p in &potential {
        info.remove(p);
    }
    if !candidate.fits_without(snap, node, &info) {
        return None;
    }
    // The most important pods are given back first: higher priority, then started earlier;
    // and before them, those whose eviction a disruption budget does not allow.
    potential.sort_by_key(|p| {
        (
            std::cmp::Reverse(priority(p)),
            p.status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .map(|t| t.0),
        )
    });
    let (protected, free) = split_by_budgets(potential, &snap.budgets);
    let mut victims = Vec::new();
    let mut violations = 0;
    for (group, violating) in [(protected, true), (free, false)] {
        for p in group {
            info.add(p.clone());
            if !candidate.fits_without(snap, node, &info) {
                info.remove(&p);
                victims.push(p);
                violations += usize::from(violating);
            }
        }
    }
    Some((victims, violations))
}

/// Splits pods (in order) into those whose eviction would break a disruption budget and
/// those it would not, counting each eviction against the budgets as upstream does.
fn split_by_budgets(pods: Vec<Arc<Pod>>, budgets: &[Budget]) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let mut allowed: Vec<i32> = budgets.iter().map(|b| b.allowed).collect();
    let mut protected = Vec::new();
    let mut free = Vec::new();
    for p in pods {
        let mut violates = false;
        for (i, b) in budgets.iter().enumerate() {
            if b.covers(&p) {
                allowed[i] -= 1;
                violates |= allowed[i] < 0;
            }
        }
        if violates {
            protected.push(p);
        } else {
            free.push(p);
        }
    }
    (protected, free)
}

/// How much a set of victims matters, smallest first: how many budgets it breaks, the highest
/// priority among them, the sum of their priorities, how many they are.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key(usize, i32, i64, usize);

impl Key {
    fn of(victims: &[Arc<Pod>], violations: usize) -> Self {
        let highest = victims
            .iter()
            .map(|p| priority(p))
            .max()
            .unwrap_or(i32::MIN);
        // Offset so that negative priorities still add up to more with more victims.
        let sum = victims
            .iter()
            .map(|p| i64::from(priority(p)) + i64::from(i32::MAX) + 1)
            .sum();
        Key(violations, highest, sum, victims.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::Snapshot;
    use foldhash::{HashMap, HashMapExt};
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> Arc<k8s_openapi::api::core::v1::Node> {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        if let Some(spec) = extra.get("spec") {
            n["spec"] = spec.clone();
        }
        Arc::new(serde_json::from_value(n).expect("node"))
    }

    fn pod(name: &str, node: Option<&str>, cpu: &str, priority: i32) -> Arc<Pod> {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        Arc::new(serde_json::from_value(p).expect("pod"))
    }

    fn try_preempt(pod: &Pod, snap: &Snapshot) -> Result<(String, Vec<String>), String> {
        let c = Candidate::new(pod, snap);
        let failures: Vec<(usize, Failure)> = (0..snap.nodes.len())
            .filter_map(|i| c.filter(snap, i).err().map(|f| (i, f)))
            .collect();
        preempt(&c, snap, &failures).map(|n| {
            let mut names: Vec<String> = n
                .victims
                .iter()
                .map(|v| v.metadata.name.clone().unwrap_or_default())
                .collect();
            names.sort();
            (snap.nodes[n.node].name().to_string(), names)
        })
    }

    #[test]
    fn the_least_important_pods_make_room() {
        let nodes = [node("n1", json!({})), node("n2", json!({}))];
        let pods = [
            pod("low-a", Some("n1"), "1", 10),
            pod("low-b", Some("n1"), "1", 10),
            pod("mid", Some("n2"), "1", 500),
            pod("lowest", Some("n2"), "1", 1),
        ];
        let snap = Snapshot::new(&nodes, &pods, HashMap::new());
        // one cpu is needed: evicting the priority-1 pod on n2 costs least
        let urgent = pod("urgent", None, "1", 1000);
        assert_eq!(
            try_preempt(&urgent, &snap),
            Ok(("n2".into(), vec!["lowest".into()]))
        );
        // two cpus: only n1 can give both without touching priority 500
        let big = pod("big", None, "2", 1000);
        assert_eq!(
            try_preempt(&big, &snap),
            Ok(("n1".into(), vec!["low-a".into(), "low-b".into()]))
        );
        // nothing of lower priority: no victims
        let meek = pod("meek", None, "1", 0);
        assert_eq!(
            try_preempt(&meek, &snap),
            Err("0/2 nodes are available: 2 No preemption victims found for incoming pod.".into())
        );
        // a pod that never preempts says so
        let mut never = (*urgent).clone();
        never.spec.as_mut().expect("spec").preemption_policy = Some("Never".into());
        assert_eq!(
            try_preempt(&never, &snap),
            Err("not eligible due to preemptionPolicy=Never.".into())
        );
    }

    #[test]
    fn disruption_budgets_steer_preemption_elsewhere() {
        let nodes = [node("n1", json!({})), node("n2", json!({}))];
        let labelled = |name: &str, node: &str, app: &str| {
            let mut p = (*pod(name, Some(node), "2", 0)).clone();
            p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
            Arc::new(p)
        };
        let pods = [
            labelled("guarded", "n1", "db"),
            labelled("spare", "n2", "batch"),
        ];
        let mut snap = Snapshot::new(&nodes, &pods, HashMap::new());
        let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget =
            serde_json::from_value(json!({
                "metadata": {"name": "db", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"app": "db"}}},
                "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
            }))
            .expect("pdb");
        snap.budgets = Budget::of(&pdb).into_iter().collect();
        assert_eq!(
            try_preempt(&pod("urgent", None, "1", 1000), &snap),
            Ok(("n2".into(), vec!["spare".into()]))
        );
    }

    #[test]
    fn evicting_does_not_help_on_a_node_the_pod_cannot_use() {
        let nodes = [
            node("n1", json!({"spec": {"unschedulable": true}})),
            node("n2", json!({})),
        ];
        let pods = [
            pod("low", Some("n1"), "2", 0),
            pod("high", Some("n2"), "2", 2000),
        ];
        let snap = Snapshot::new(&nodes, &pods, HashMap::new());
        assert_eq!(
            try_preempt(&pod("p", None, "1", 1000), &snap),
            Err("0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling.".into())
        );
    }
}
