//! InterPodAffinity: where a pod may go, and prefers to go, given the pods already running, by
//! its pod affinity and anti-affinity terms and theirs (a term names pods by label selector and
//! namespaces, and a topology key such as `kubernetes.io/hostname` or
//! `topology.kubernetes.io/zone` that says how close "together" is).
//!
//! As upstream, the work is done once per pod ([`State::new`], upstream's PreFilter): the pods
//! that matter are counted per topology domain (a key and one of its values), so that each node
//! is then judged by a few lookups of its labels.

use std::collections::BTreeMap;

use foldhash::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};

use super::{Failure, Snapshot};
use api::selector::{LabelSelector, Requirement};

/// Counts per topology key, then value.
type Domains = HashMap<String, HashMap<String, i64>>;

fn bump(domains: &mut Domains, key: &str, value: &str, by: i64) {
    *domains
        .entry(key.to_string())
        .or_default()
        .entry(value.to_string())
        .or_default() += by;
}

fn count(domains: &Domains, key: &str, value: &str) -> i64 {
    domains
        .get(key)
        .and_then(|v| v.get(value))
        .copied()
        .unwrap_or(0)
}

/// One pod affinity term, ready to match pods.
#[derive(Debug, Clone)]
pub struct Term {
    /// `None` (no labelSelector) matches no pod.
    selector: Option<LabelSelector>,
    /// The namespaces it looks at by name...
    namespaces: Vec<String>,
    /// ...and by their labels.
    namespace_selector: Option<LabelSelector>,
    topology_key: String,
    weight: i64,
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

impl Term {
    fn new(term: &PodAffinityTerm, owner: &Pod, weight: i64) -> Self {
        let selector = term.label_selector.as_ref().and_then(|s| {
            let mut sel = LabelSelector::from_json(&serde_json::to_value(s).ok()?).ok()?;
            // matchLabelKeys and mismatchLabelKeys narrow the selector by the owner's labels.
            let value = |k: &String| label(owner, k).map(str::to_string);
            for k in term.match_label_keys.iter().flatten() {
                if let Some(v) = value(k) {
                    sel.0.push(Requirement::In(k.clone(), vec![v]));
                }
            }
            for k in term.mismatch_label_keys.iter().flatten() {
                if let Some(v) = value(k) {
                    sel.0.push(Requirement::NotIn(k.clone(), vec![v]));
                }
            }
            Some(sel)
        });
        let mut listed = term.namespaces.clone().unwrap_or_default();
        let ns_selector = term
            .namespace_selector
            .as_ref()
            .and_then(|s| LabelSelector::from_json(&serde_json::to_value(s).ok()?).ok());
        if listed.is_empty() && ns_selector.is_none() {
            listed.push(owner.metadata.namespace.clone().unwrap_or_default());
        }
        Self {
            selector,
            namespaces: listed,
            namespace_selector: ns_selector,
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    /// Whether the term selects `pod`.
    fn matches(
        &self,
        pod: &Pod,
        namespace_labels: &HashMap<String, BTreeMap<String, String>>,
    ) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let in_namespace = self.namespaces.iter().any(|n| n == ns)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                let labels = namespace_labels.get(ns);
                s.matches_with(|k| labels?.get(k).map(String::as_str))
            });
        in_namespace && selector.matches_with(|k| label(pod, k))
    }
}

/// A pod's affinity terms, compiled.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    preferred_affinity: Vec<Term>,
    preferred_anti: Vec<Term>,
}

impl Terms {
    /// The pod's terms, or `None` when it has none.
    pub fn of(pod: &Pod) -> Option<Self> {
        let affinity = pod.spec.as_ref()?.affinity.as_ref()?;
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            terms
                .into_iter()
                .flatten()
                .map(|t| Term::new(t, pod, 1))
                .collect()
        };
        let preferred =
            |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
                terms
                    .into_iter()
                    .flatten()
                    .map(|t| Term::new(&t.pod_affinity_term, pod, i64::from(t.weight)))
                    .collect::<Vec<_>>()
            };
        let a = affinity.pod_affinity.as_ref();
        let anti = affinity.pod_anti_affinity.as_ref();
        let terms = Self {
            required_affinity: required(a.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti: required(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: preferred(a.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: preferred(anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        };
        (!terms.is_empty()).then_some(terms)
    }

    fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// What one pod's filtering and scoring need, worked out once for all nodes.
#[derive(Debug, Default)]
pub struct State {
    terms: Terms,
    /// Domains where a running pod's required anti-affinity rejects this pod.
    existing_anti: Domains,
    /// Domains holding pods that match all of this pod's required affinity terms.
    affinity: Domains,
    /// Whether any pod anywhere matches all of them.
    affinity_matched: bool,
    /// Domains holding pods that a required anti-affinity term of this pod rejects.
    anti: Domains,
    /// The preferences (both ways) summed per domain.
    scores: Domains,
    /// Whether any preference applies at all.
    scored: bool,
}

impl State {
    /// Counts the running pods that matter to `pod` per topology domain.
    pub fn new(pod: &Pod, snap: &Snapshot) -> Self {
        let mut s = State {
            terms: Terms::of(pod).unwrap_or_default(),
            ..Default::default()
        };
        let ns_labels = &snap.namespace_labels;
        let t = &s.terms;
        if !t.is_empty() {
            for info in &snap.nodes {
                let labels = info.labels();
                for other in &info.pods {
                    if !t.required_affinity.is_empty()
                        && t.required_affinity
                            .iter()
                            .all(|t| t.matches(other, ns_labels))
                    {
                        s.affinity_matched = true;
                        for term in &t.required_affinity {
                            if let Some(v) = labels.get(&term.topology_key) {
                                bump(&mut s.affinity, &term.topology_key, v, 1);
                            }
                        }
                    }
                    for term in &t.required_anti {
                        if let Some(v) = labels.get(&term.topology_key)
                            && term.matches(other, ns_labels)
                        {
                            bump(&mut s.anti, &term.topology_key, v, 1);
                        }
                    }
                    for (terms, sign) in [(&t.preferred_affinity, 1), (&t.preferred_anti, -1)] {
                        for term in terms {
                            if let Some(v) = labels.get(&term.topology_key)
                                && term.matches(other, ns_labels)
                            {
                                bump(&mut s.scores, &term.topology_key, v, sign * term.weight);
                                s.scored = true;
                            }
                        }
                    }
                }
            }
        }
        // The running pods' own terms, as they concern this pod.
        for (other, node) in &snap.with_affinity {
            let labels = snap.nodes[*node].labels();
            let pairs = [
                (&other.required_anti, 0),
                // upstream's hardPodAffinityWeight: a required affinity also attracts, weight 1
                (&other.required_affinity, 1),
                (&other.preferred_affinity, 1),
                (&other.preferred_anti, -1),
            ];
            for (terms, sign) in pairs {
                for term in terms {
                    let Some(v) = labels.get(&term.topology_key) else {
                        continue;
                    };
                    if !term.matches(pod, ns_labels) {
                        continue;
                    }
                    if sign == 0 {
                        bump(&mut s.existing_anti, &term.topology_key, v, 1);
                    } else {
                        bump(&mut s.scores, &term.topology_key, v, sign * term.weight);
                        s.scored = true;
                    }
                }
            }
        }
        s
    }

    /// The filter: upstream's three checks, in its order (the pod's affinity, its anti-affinity,
    /// the running pods' anti-affinity).
    pub fn filter(&self, pod: &Pod, snap: &Snapshot, node: usize) -> Result<(), Failure> {
        let labels = snap.nodes[node].labels();
        let affinity_ok = self.terms.required_affinity.iter().all(|t| {
            labels
                .get(&t.topology_key)
                .is_some_and(|v| count(&self.affinity, &t.topology_key, v) > 0)
        });
        // The first pod of a group that is to run together may go anywhere, if it matches its
        // own terms.
        let first_of_group = !self.affinity_matched
            && self
                .terms
                .required_affinity
                .iter()
                .all(|t| t.matches(pod, &snap.namespace_labels));
        if !affinity_ok && !first_of_group {
            return Err(Failure::unresolvable(
                "node(s) didn't match pod affinity rules",
            ));
        }
        if self.terms.required_anti.iter().any(|t| {
            labels
                .get(&t.topology_key)
                .is_some_and(|v| count(&self.anti, &t.topology_key, v) > 0)
        }) {
            return Err(Failure::resolvable(
                "node(s) didn't match pod anti-affinity rules",
            ));
        }
        if labels
            .iter()
            .any(|(k, v)| count(&self.existing_anti, k, v) > 0)
        {
            return Err(Failure::resolvable(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        Ok(())
    }

    /// The score before normalising: the preferences summed over the node's domains; `None`
    /// when no preference applies anywhere.
    pub fn score(&self, snap: &Snapshot, node: usize) -> Option<i64> {
        self.scored.then(|| {
            snap.nodes[node]
                .labels()
                .iter()
                .map(|(k, v)| count(&self.scores, k, v))
                .sum()
        })
    }
}
