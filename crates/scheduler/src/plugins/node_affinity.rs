//! NodeAffinity and TaintToleration: what a pod says about the labels and taints of the nodes it
//! may run on (nodeSelector, required and preferred node affinity, tolerations).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PreferredSchedulingTerm, Taint,
    Toleration,
};

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

/// The pod's tolerations.
pub fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// The node's taints.
pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

fn matches_requirement(labels: &BTreeMap<String, String>, r: &NodeSelectorRequirement) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or(&[]);
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

/// Whether a node selector term accepts the node: its expressions (on labels) and fields (only
/// `metadata.name`) all hold; an empty term accepts nothing.
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let no_labels = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    let name = || {
        BTreeMap::from([(
            "metadata.name".to_string(),
            node.metadata.name.clone().unwrap_or_default(),
        )])
    };
    (!exprs.is_empty() || !fields.is_empty())
        && exprs.iter().all(|r| matches_requirement(labels, r))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && matches_requirement(&name(), r))
}

/// Whether the pod's nodeSelector and required node affinity accept the node.
pub fn node_affinity_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let labels = node.metadata.labels.as_ref();
    if let Some(selector) = &spec.node_selector
        && !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
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
    // Terms are ORed; the expressions of a term are ANDed.
    required.is_none_or(|sel| {
        sel.node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
    })
}

/// The pod's preferred node affinity terms.
fn preferences(pod: &Pod) -> &[PreferredSchedulingTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[])
}

/// NodeAffinity's score before normalising: the summed weights of the pod's preferred node
/// affinity terms that the node matches.
pub fn preferred_score(pod: &Pod, node: &Node) -> i64 {
    preferences(pod)
        .iter()
        .filter(|t| t.weight != 0 && term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// Whether the pod has preferred node affinity terms at all.
pub fn has_preferences(pod: &Pod) -> bool {
    !preferences(pod).is_empty()
}

/// The tolerations that count against PreferNoSchedule taints (those for that effect, or any).
pub fn preference_tolerations(pod: &Pod) -> Vec<Toleration> {
    tolerations(pod)
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .cloned()
        .collect()
}

/// TaintToleration's score before normalising: how many PreferNoSchedule taints of the node
/// are not tolerated by `tolerations` (from [`preference_tolerations`]); fewer is better.
pub fn intolerable_preferences(tolerations: &[Toleration], node: &Node) -> i64 {
    taints(node)
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(tolerations, t))
        .count() as i64
}
