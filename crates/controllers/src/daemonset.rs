//! The DaemonSet controller: one pod on every node the template may run on (nodeSelector,
//! required node affinity, taints against the tolerations plus those upstream gives every
//! daemon pod), as upstream's. Pods are made with a required affinity for their node's name
//! and placed by the scheduler; a node that stops qualifying loses its pod; a failed pod is
//! replaced. RollingUpdate replaces pods of older revisions within maxUnavailable; OnDelete
//! waits for the user to delete them. The template history is kept as ControllerRevisions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Taint, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;

use crate::pods;
use crate::revisions::{self, HASH_LABEL};
use crate::{Context, Result, drive, retry};

const COMPONENT: &str = "daemonset-controller";

/// Runs the DaemonSet controller.
pub async fn run(ctx: Arc<Context>) {
    let sets = ctx.informers.daemonsets.clone();
    let store = sets.store();
    let stream = Controller::for_shared_stream(sets.subscribe(), sets.store())
        .owns_shared_stream(ctx.informers.pods.subscribe_owned_by::<DaemonSet>())
        .watches_shared_stream(
            // Nodes come, go and change labels and taints: every DaemonSet looks again.
            ctx.informers.nodes.subscribe(),
            move |_node: Arc<Node>| {
                store
                    .state()
                    .iter()
                    .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, retry, ctx);
    drive("daemonset", stream).await;
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// The tolerations every daemon pod gets, as upstream's `AddOrUpdateDaemonPodTolerations`.
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut t = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        t.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    t
}

/// The pod a DaemonSet would put on `node`.
fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut pod = crate::replicaset::pod_from_template(ds, &template);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.into());
    if let Some(spec) = pod.spec.as_mut() {
        let host_network = spec.host_network.unwrap_or(false);
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations(host_network) {
            if !tolerations
                .iter()
                .any(|x| x.key == t.key && x.effect == t.effect)
            {
                tolerations.push(t);
            }
        }
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        let node_affinity = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.into()]),
                }]),
                match_expressions: None,
            }],
        });
    }
    pod
}

/// Whether the DaemonSet's pods belong on `node`.
fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let pod = Pod {
        metadata: Default::default(),
        spec: template.spec.clone(),
        status: None,
    };
    if !scheduler::plugins::node_affinity_matches(&pod, node) {
        return false;
    }
    let spec = template.spec.unwrap_or_default();
    let mut tolerations = spec.tolerations.unwrap_or_default();
    tolerations.extend(daemon_tolerations(spec.host_network.unwrap_or(false)));
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| scheduler::plugins::tolerates(&tolerations, t))
}

/// The node a daemon pod is on, or is meant for.
fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let key = format!("DaemonSet/{ns}/{}", ds.name_any());
    let uid = ds.uid().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let informer = &ctx.informers.pods;
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    let mut in_use = Vec::new();
    // Nodes whose daemon pod is still terminating: as upstream's, without surge the
    // replacement waits until it is gone.
    let mut terminating = std::collections::BTreeSet::new();
    for pod in informer.indexed(&pods::controlled_by(&uid)) {
        if pod.metadata.deletion_timestamp.is_some() {
            terminating.extend(node_of(&pod));
            continue;
        }
        in_use.extend(hash_of(&pod).map(String::from));
        if let Some(node) = node_of(&pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    let limit = spec.revision_history_limit.unwrap_or(10);
    let current = revisions::sync(&ctx, ds.as_ref(), &spec.template, &in_use, limit).await?;
    let outstanding = ctx.expectations.outstanding(
        &key,
        |n| informer.get(Some(&ns), n).is_some(),
        |u| {
            by_node
                .values()
                .flatten()
                .any(|p| p.uid().as_deref() == Some(u))
        },
    );

    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let nodes = ctx.informers.nodes.objects();
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        number_available: Some(0),
        updated_number_scheduled: Some(0),
        ..Default::default()
    };
    let mut create = Vec::new();
    let mut delete: Vec<Arc<Pod>> = Vec::new();
    let mut old_on: Vec<Arc<Pod>> = Vec::new();
    let mut unavailable = 0;
    for node in &nodes {
        let name = node.name_any();
        let mut here = by_node.remove(&name).unwrap_or_default();
        // Failed pods are replaced.
        let (failed, live): (Vec<_>, Vec<_>) = here.drain(..).partition(|p| pods::is_terminal(p));
        delete.extend(failed);
        let mut live = live;
        if should_run(&ds, node) {
            status.desired_number_scheduled += 1;
            if live.is_empty() {
                // While a creation is not yet in the cache, its node is not known: wait.
                if outstanding.creates.is_empty() && !terminating.contains(&name) {
                    create.push(name.clone());
                }
                unavailable += 1;
                continue;
            }
            live.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            delete.extend(live.drain(1..));
            let pod = &live[0];
            status.current_number_scheduled += 1;
            if pods::is_ready(pod) {
                status.number_ready += 1;
            }
            let available = pods::is_available(pod, min_ready, now);
            if available {
                status.number_available = Some(status.number_available.unwrap_or(0) + 1);
            } else {
                unavailable += 1;
            }
            if hash_of(pod) == Some(current.hash.as_str()) {
                status.updated_number_scheduled =
                    Some(status.updated_number_scheduled.unwrap_or(0) + 1);
            } else {
                old_on.push(pod.clone());
            }
        } else if !live.is_empty() {
            status.number_misscheduled += 1;
            delete.extend(live);
        }
    }
    // Pods meant for nodes that no longer exist.
    delete.extend(by_node.into_values().flatten());
    status.number_unavailable =
        Some(status.desired_number_scheduled - status.number_available.unwrap_or(0));

    // RollingUpdate: old pods that are unavailable go at once; available ones within
    // maxUnavailable.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") {
        let max_unavailable = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.as_ref())
            .map_or(1, |v| {
                crate::rollout::scaled(v, status.desired_number_scheduled, true)
            })
            .max(1);
        let mut budget = max_unavailable - unavailable;
        for pod in old_on {
            if !pods::is_available(&pod, min_ready, now) {
                delete.push(pod);
            } else if budget > 0 {
                budget -= 1;
                delete.push(pod);
            }
        }
    }

    for node in create {
        let pod = daemon_pod(&ds, &node, &current.hash);
        match api.create(&PostParams::default(), &pod).await {
            Ok(made) => {
                ctx.expectations.created(&key, &made.name_any());
                ctx.events.normal(
                    COMPONENT,
                    ds.as_ref(),
                    "SuccessfulCreate",
                    format!("Created pod: {}", made.name_any()),
                );
            }
            Err(e) => {
                ctx.events.warning(
                    COMPONENT,
                    ds.as_ref(),
                    "FailedCreate",
                    format!("Error creating: {e}"),
                );
                return Err(e.into());
            }
        }
    }
    for pod in delete {
        if pods::delete_exactly(&api, pod.as_ref(), DeleteParams::default()).await? {
            ctx.expectations
                .deleted(&key, &pod.uid().unwrap_or_default());
            ctx.events.normal(
                COMPONENT,
                ds.as_ref(),
                "SuccessfulDelete",
                format!("Deleted pod: {}", pod.name_any()),
            );
        }
    }

    let same = ds.status.as_ref().is_some_and(|s| {
        let n = |v: Option<i32>| v.unwrap_or(0);
        s.desired_number_scheduled == status.desired_number_scheduled
            && s.current_number_scheduled == status.current_number_scheduled
            && s.number_misscheduled == status.number_misscheduled
            && s.number_ready == status.number_ready
            && n(s.number_available) == n(status.number_available)
            && n(s.number_unavailable) == n(status.number_unavailable)
            && n(s.updated_number_scheduled) == n(status.updated_number_scheduled)
            && s.observed_generation == status.observed_generation
    });
    if !same {
        let sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        crate::write_status(&sets, &ds.name_any(), &status, &[]).await?;
    }
    if min_ready > 0 && status.number_ready != status.number_available.unwrap_or(0) {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1),
        )));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
