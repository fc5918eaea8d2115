//! The filter and score plugins of the default scheduler profile that bosun runs, as pure
//! functions of a pod, a node and the pods already on it:
//!
//! - filters: NodeUnschedulable, NodeReady (upstream's not-ready taint), TaintToleration
//!   (NoSchedule and NoExecute), NodeName, NodeAffinity (nodeSelector and required node
//!   affinity), NodeResourcesFit (cpu, memory, pods) and NodePorts;
//! - score: NodeResourcesFit's LeastAllocated (the node left with the most free cpu and memory
//!   wins).
//!
//! A pod no node fits gets upstream's message, e.g. `0/1 nodes are available: 1 Insufficient
//! cpu.`

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Taint, Toleration};

/// What a pod asks for, or what a node has.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Pods.
    pub pods: i64,
}

fn quantity_map(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Resources {
    let get = |k: &str| map.and_then(|m| m.get(k)).map(|q| q.0.as_str());
    Resources {
        milli_cpu: get("cpu")
            .and_then(|q| api::quantity::milli(q).ok())
            .unwrap_or(0),
        memory: get("memory")
            .and_then(|q| api::quantity::units(q).ok())
            .unwrap_or(0),
        pods: get("pods")
            .and_then(|q| api::quantity::units(q).ok())
            .unwrap_or(0),
    }
}

/// What a pod requests: the sum of its containers, or its largest init container if that is
/// more (they run one at a time, before the others), as upstream computes it.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        let requests = r.and_then(|r| r.requests.as_ref());
        let limits = r.and_then(|r| r.limits.as_ref());
        let req = quantity_map(requests);
        let lim = quantity_map(limits);
        // A limit without a request is the request, as defaulting makes it.
        Resources {
            milli_cpu: if requests.is_some_and(|m| m.contains_key("cpu")) {
                req.milli_cpu
            } else {
                lim.milli_cpu
            },
            memory: if requests.is_some_and(|m| m.contains_key("memory")) {
                req.memory
            } else {
                lim.memory
            },
            pods: 0,
        }
    };
    let mut sum = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in &spec.containers {
        let r = of(c);
        sum.milli_cpu += r.milli_cpu;
        sum.memory += r.memory;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = of(c);
        sum.milli_cpu = sum.milli_cpu.max(r.milli_cpu);
        sum.memory = sum.memory.max(r.memory);
    }
    sum
}

/// What a node can hold.
pub fn allocatable(node: &Node) -> Resources {
    quantity_map(node.status.as_ref().and_then(|s| s.allocatable.as_ref()))
}

/// Why a node does not fit a pod, in upstream's words.
pub type Reason = String;

/// Whether a toleration tolerates a taint (upstream's `ToleratesTaint`).
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        if t.effect
            .as_deref()
            .is_some_and(|e| !e.is_empty() && e != taint.effect)
        {
            return false;
        }
        if t.key
            .as_deref()
            .is_some_and(|k| !k.is_empty() && k != taint.key)
        {
            return false;
        }
        match t.operator.as_deref().unwrap_or("Equal") {
            "Exists" => true,
            "Equal" | "" => {
                t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
            _ => false,
        }
    })
}

fn matches_requirement(labels: &BTreeMap<String, String>, r: &NodeSelectorRequirement) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether the pod's nodeSelector and required node affinity accept the node.
pub fn node_affinity_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let no_labels = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        // Terms are ORed; the expressions of a term are ANDed.
        Some(sel) => sel.node_selector_terms.iter().any(|term| {
            let exprs = term.match_expressions.clone().unwrap_or_default();
            let fields = term.match_fields.clone().unwrap_or_default();
            (!exprs.is_empty() || !fields.is_empty())
                && exprs.iter().all(|r| matches_requirement(labels, r))
                && fields.iter().all(|r| {
                    r.key == "metadata.name"
                        && matches_requirement(
                            &BTreeMap::from([(
                                "metadata.name".to_string(),
                                node.metadata.name.clone().unwrap_or_default(),
                            )]),
                            r,
                        )
                })
        }),
    }
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

/// What a node already carries: the requests and host ports of the pods bound to it, summed
/// once per scheduling pass rather than for every pod and node.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The summed requests; `pods` counts the pods.
    pub requested: Resources,
    /// The host ports in use, with their protocol.
    pub ports: Vec<(String, i32)>,
    /// The node's allocatable resources, when worked out already.
    pub allocatable: Option<Resources>,
}

impl NodeInfo {
    /// The node carrying `pods`.
    pub fn of(pods: &[&Pod]) -> Self {
        let mut info = Self::default();
        for p in pods {
            info.add(p);
        }
        info
    }

    /// Counts one more pod on the node.
    pub fn add(&mut self, pod: &Pod) {
        let r = pod_requests(pod);
        self.requested.milli_cpu += r.milli_cpu;
        self.requested.memory += r.memory;
        self.requested.pods += 1;
        self.ports.extend(host_ports(pod));
    }
}

/// Why `node` cannot run `pod` besides what it carries (`info`), or `Ok` when it can.
pub fn filter(pod: &Pod, node: &Node, info: &NodeInfo) -> Result<(), Vec<Reason>> {
    filter_with(pod, &pod_requests(pod), node, info)
}

/// [`filter`] with the pod's requests worked out once by the caller.
pub fn filter_with(
    pod: &Pod,
    want: &Resources,
    node: &Node,
    info: &NodeInfo,
) -> Result<(), Vec<Reason>> {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(tolerations, &t) {
            return Err(vec!["node(s) were unschedulable".into()]);
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
            return Err(vec![
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into(),
            ]);
        }
    }
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
    {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerates(tolerations, taint)
        {
            return Err(vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.clone().unwrap_or_default()
            )]);
        }
    }
    if !node_affinity_matches(pod, node) {
        return Err(vec![
            "node(s) didn't match Pod's node affinity/selector".into(),
        ]);
    }
    let have = info.allocatable.unwrap_or_else(|| allocatable(node));
    let used = info.requested;
    let mut reasons = Vec::new();
    if used.pods + 1 > have.pods {
        reasons.push("Too many pods".to_string());
    }
    if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > have.milli_cpu {
        reasons.push("Insufficient cpu".to_string());
    }
    if want.memory > 0 && used.memory + want.memory > have.memory {
        reasons.push("Insufficient memory".to_string());
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    if host_ports(pod).iter().any(|p| info.ports.contains(p)) {
        return Err(vec![
            "node(s) didn't have free ports for the requested pod ports".into(),
        ]);
    }
    Ok(())
}

/// LeastAllocated: 0-100, higher for the node with more cpu and memory left after the pod.
pub fn score(pod: &Pod, node: &Node, info: &NodeInfo) -> i64 {
    score_with(&pod_requests(pod), node, info)
}

/// [`score`] with the pod's requests worked out once by the caller.
pub fn score_with(want: &Resources, node: &Node, info: &NodeInfo) -> i64 {
    let have = info.allocatable.unwrap_or_else(|| allocatable(node));
    let mut used = *want;
    used.milli_cpu += info.requested.milli_cpu;
    used.memory += info.requested.memory;
    let free = |cap: i64, u: i64| {
        if cap <= 0 {
            0
        } else {
            ((cap - u).max(0) * 100) / cap
        }
    };
    (free(have.milli_cpu, used.milli_cpu) + free(have.memory, used.memory)) / 2
}

/// Upstream's message for a pod no node fits: reasons counted over nodes, sorted.
pub fn unschedulable_message(nodes: usize, reasons: &[Vec<Reason>]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons.iter().flatten() {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let mut msg = format!("0/{nodes} nodes are available");
    if !parts.is_empty() {
        msg.push_str(": ");
        msg.push_str(&parts.join(", "));
    }
    msg.push('.');
    msg.push_str(&format!(
        " preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling."
    ));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(extra: serde_json::Value) -> Node {
        let mut n = json!({
            "metadata": {"name": "n1", "labels": {"disk": "ssd", "kubernetes.io/hostname": "n1"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut n, extra);
        serde_json::from_value(n).expect("node")
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        merge(&mut p, extra);
        serde_json::from_value(p).expect("pod")
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn wants(cpu: &str, mem: &str) -> Pod {
        pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}),
        )
    }

    #[test]
    fn resources_fit_until_the_node_is_full() {
        let n = node(json!({}));
        let big = wants("1500m", "1Gi");
        assert!(filter(&big, &n, &NodeInfo::default()).is_ok());
        assert_eq!(
            filter(&big, &n, &NodeInfo::of(&[&big])),
            Err(vec!["Insufficient cpu".to_string()])
        );
        let huge = wants("100m", "5Gi");
        assert_eq!(
            filter(&huge, &n, &NodeInfo::default()),
            Err(vec!["Insufficient memory".to_string()])
        );
        // limits stand for missing requests; init containers count by their largest
        let limited = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "3"}}}]}}),
        );
        assert_eq!(pod_requests(&limited).milli_cpu, 3000);
        let init = pod(
            json!({"spec": {"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
                                      "containers": [{"name": "c", "resources": {"requests": {"cpu": "200m"}}}]}}),
        );
        assert_eq!(pod_requests(&init).milli_cpu, 1000);
    }

    #[test]
    fn selectors_affinity_taints_and_readiness() {
        let n = node(json!({}));
        assert!(
            filter(
                &pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                &n,
                &NodeInfo::default()
            )
            .is_ok()
        );
        let reason = filter(
            &pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}})),
            &n,
            &NodeInfo::default(),
        )
        .expect_err("no");
        assert_eq!(
            reason,
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        let affinity = |op: &str, values: serde_json::Value| {
            pod(json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": op, "values": values}]}]}}}}}))
        };
        assert!(
            filter(
                &affinity("In", json!(["ssd", "nvme"])),
                &n,
                &NodeInfo::default()
            )
            .is_ok()
        );
        assert!(filter(&affinity("NotIn", json!(["ssd"])), &n, &NodeInfo::default()).is_err());
        let tainted = node(
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        let reason = filter(&pod(json!({})), &tainted, &NodeInfo::default()).expect_err("tainted");
        assert_eq!(reason, ["node(s) had untolerated taint {dedicated: gpu}"]);
        let tolerant = pod(
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert!(filter(&tolerant, &tainted, &NodeInfo::default()).is_ok());
        let everything = pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        assert!(filter(&everything, &tainted, &NodeInfo::default()).is_ok());
        let cordoned = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            filter(&pod(json!({})), &cordoned, &NodeInfo::default()).expect_err("cordoned"),
            ["node(s) were unschedulable"]
        );
        let not_ready =
            node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert!(filter(&pod(json!({})), &not_ready, &NodeInfo::default()).is_err());
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node_and_messages_count_reasons() {
        let n = node(json!({}));
        let busy = wants("1", "2Gi");
        let p = wants("100m", "128Mi");
        assert!(score(&p, &n, &NodeInfo::default()) > score(&p, &n, &NodeInfo::of(&[&busy])));
        let msg = unschedulable_message(
            2,
            &[
                vec!["Insufficient cpu".into()],
                vec!["Insufficient cpu".into(), "Insufficient memory".into()],
            ],
        );
        assert!(
            msg.starts_with("0/2 nodes are available: 2 Insufficient cpu, 1 Insufficient memory."),
            "{msg}"
        );
    }
}
