//! PodTopologySpread: pods of one kind kept evenly spread over topology domains (nodes, zones),
//! by the pod's `topologySpreadConstraints` (DoNotSchedule ones filter, ScheduleAnyway ones
//! score), or, for a pod without any, by upstream's system defaults: its controller's pods
//! spread over nodes (maxSkew 3) and zones (maxSkew 5), as a preference.

use foldhash::{HashMap, HashMapExt, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod};

use super::node_affinity::{node_affinity_matches, taints, tolerates, tolerations};
use super::{Failure, MAX_NODE_SCORE, NodeInfo, Snapshot};
use api::selector::{LabelSelector, Requirement};

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Which pods a constraint counts.
#[derive(Debug)]
enum Selects {
    /// Pods of the namespace matching the selector.
    Labels(String, LabelSelector),
    /// The pods of one controller (by uid): the system defaults.
    Controller(String),
}

impl Selects {
    fn matches(&self, pod: &Pod) -> bool {
        match self {
            Selects::Labels(ns, sel) => {
                pod.metadata.namespace.as_deref() == Some(ns.as_str())
                    && sel
                        .matches_with(|k| pod.metadata.labels.as_ref()?.get(k).map(String::as_str))
            }
            Selects::Controller(uid) => super::controller_uid(pod) == Some(uid.as_str()),
        }
    }

    /// How many of the pods on a node it counts (terminating pods are not counted).
    fn count_on(&self, info: &NodeInfo) -> i64 {
        match self {
            Selects::Controller(uid) => info.by_controller.get(uid).copied().unwrap_or(0),
            Selects::Labels(..) => info
                .pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && self.matches(p))
                .count() as i64,
        }
    }
}

#[derive(Debug)]
struct Constraint {
    key: String,
    max_skew: i64,
    min_domains: i64,
    selects: Selects,
    honor_affinity: bool,
    honor_taints: bool,
    /// Pods per domain (value of the key), over the nodes the pod could go to; not kept for
    /// soft hostname constraints, whose domain is the node itself.
    counts: HashMap<String, i64>,
}

/// What one pod's spreading needs, worked out once for all nodes.
#[derive(Debug, Default)]
pub struct State {
    hard: Vec<Constraint>,
    soft: Vec<Constraint>,
    /// Whether the soft constraints are the system defaults (which do not require nodes to
    /// carry their keys).
    system_default: bool,
}

impl Constraint {
    /// Whether the node counts for the constraint at all.
    fn eligible(&self, pod: &Pod, node: &Node) -> bool {
        (!self.honor_affinity || node_affinity_matches(pod, node))
            && (!self.honor_taints
                || taints(node)
                    .iter()
                    .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                    .all(|t| tolerates(tolerations(pod), t)))
    }
}

impl State {
    /// Reads the pod's constraints and counts the pods they spread.
    pub fn new(pod: &Pod, snap: &Snapshot) -> Self {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let listed = pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or(&[]);
        let mut state = State::default();
        for c in listed {
            let Some(mut selector) = c
                .label_selector
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| LabelSelector::from_json(&v).ok())
            else {
                // Without a selector a constraint counts no pods, and spreads nothing.
                continue;
            };
            for k in c.match_label_keys.iter().flatten() {
                if let Some(v) = pod.metadata.labels.as_ref().and_then(|l| l.get(k)) {
                    selector.0.push(Requirement::In(k.clone(), vec![v.clone()]));
                }
            }
            let constraint = Constraint {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew.max(1)),
                min_domains: i64::from(c.min_domains.unwrap_or(1)),
                selects: Selects::Labels(ns.clone(), selector),
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                counts: HashMap::new(),
            };
            if c.when_unsatisfiable == "DoNotSchedule" {
                state.hard.push(constraint);
            } else {
                state.soft.push(constraint);
            }
        }
        if listed.is_empty()
            && let Some(uid) = super::controller_uid(pod)
        {
            state.system_default = true;
            for (key, max_skew) in [(HOSTNAME, 3), (ZONE, 5)] {
                state.soft.push(Constraint {
                    key: key.into(),
                    max_skew,
                    min_domains: 1,
                    selects: Selects::Controller(uid.to_string()),
                    honor_affinity: true,
                    honor_taints: false,
                    counts: HashMap::new(),
                });
            }
            // A default over a key no node carries spreads nothing.
            state.soft.retain(|c| !snap.labelled(&c.key).is_empty());
        }
        // Hard constraints count over the nodes that carry every hard key.
        let hard_keys: Vec<String> = state.hard.iter().map(|c| c.key.clone()).collect();
        for c in &mut state.hard {
            for info in snap.labelled(&c.key).iter().map(|i| &snap.nodes[*i]) {
                let labels = info.labels();
                if !hard_keys.iter().all(|k| labels.contains_key(k)) || !c.eligible(pod, &info.node)
                {
                    continue;
                }
                *c.counts.entry(labels[&c.key].clone()).or_default() += c.selects.count_on(info);
            }
        }
        let soft_keys: Vec<String> = state.soft.iter().map(|c| c.key.clone()).collect();
        let require_all = !state.system_default;
        for c in state.soft.iter_mut().filter(|c| c.key != HOSTNAME) {
            for info in snap.labelled(&c.key).iter().map(|i| &snap.nodes[*i]) {
                let labels = info.labels();
                let Some(value) = labels.get(&c.key) else {
                    continue;
                };
                if (require_all && !soft_keys.iter().all(|k| labels.contains_key(k)))
                    || !c.eligible(pod, &info.node)
                {
                    continue;
                }
                *c.counts.entry(value.clone()).or_default() += c.selects.count_on(info);
            }
        }
        state
    }

    /// The filter: the pod may go where no hard constraint's skew would exceed its maximum.
    pub fn filter(&self, pod: &Pod, snap: &Snapshot, node: usize) -> Result<(), Failure> {
        let labels = snap.nodes[node].labels();
        if self.hard.iter().any(|c| !labels.contains_key(&c.key)) {
            return Err(Failure::unresolvable(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ));
        }
        for c in &self.hard {
            let min = if (c.counts.len() as i64) < c.min_domains {
                0
            } else {
                c.counts.values().copied().min().unwrap_or(0)
            };
            let here = c.counts.get(&labels[&c.key]).copied().unwrap_or(0);
            let own = i64::from(c.selects.matches(pod));
            if here + own - min > c.max_skew {
                return Err(Failure::resolvable(
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }

    /// The scores (0-100) of the feasible nodes, the least crowded domains highest; `None`
    /// without soft constraints.
    pub fn scores(&self, snap: &Snapshot, feasible: &[usize]) -> Option<Vec<i64>> {
        if self.soft.is_empty() {
            return None;
        }
        // Each constraint weighs by how many domains the feasible nodes span.
        let weights: Vec<f64> = self
            .soft
            .iter()
            .map(|c| {
                let domains = if c.key == HOSTNAME {
                    feasible.len()
                } else {
                    feasible
                        .iter()
                        .filter_map(|i| snap.nodes[*i].labels().get(&c.key))
                        .collect::<HashSet<_>>()
                        .len()
                };
                ((domains + 2) as f64).ln()
            })
            .collect();
        let raw: Vec<Option<i64>> = feasible
            .iter()
            .map(|i| {
                let info = &snap.nodes[*i];
                let labels = info.labels();
                if !self.system_default && self.soft.iter().any(|c| !labels.contains_key(&c.key)) {
                    return None;
                }
                let mut score = 0.0;
                for (c, w) in self.soft.iter().zip(&weights) {
                    let Some(value) = labels.get(&c.key) else {
                        continue;
                    };
                    let count = if c.key == HOSTNAME {
                        c.selects.count_on(info)
                    } else {
                        c.counts.get(value).copied().unwrap_or(0)
                    };
                    score += count as f64 * w + (c.max_skew - 1) as f64;
                }
                Some(score.round() as i64)
            })
            .collect();
        let present = raw.iter().flatten();
        let min = present.clone().copied().min().unwrap_or(0);
        let max = present.copied().max().unwrap_or(0);
        Some(
            raw.iter()
                .map(|s| match s {
                    None => 0,
                    Some(_) if max == 0 => MAX_NODE_SCORE,
                    Some(s) => MAX_NODE_SCORE * (max + min - s) / max,
                })
                .collect(),
        )
    }
}
