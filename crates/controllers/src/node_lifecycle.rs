//! Node lifecycle, as upstream's node lifecycle, taint eviction and pod GC controllers do it.
//! Every 5 s each node's last sign of life (its Lease renewal or Ready heartbeat) is checked:
//! silent for 40 s, its conditions turn Unknown ("Kubelet stopped posting node status.") and
//! its pods stop being Ready. Ready False or Unknown bring the `not-ready` or `unreachable`
//! taints (NoSchedule and NoExecute), removed once Ready again. Pods on a node with a
//! NoExecute taint they do not tolerate are deleted at once, those that tolerate it for
//! tolerationSeconds when that time has passed. Pods bound to a node that does not exist are
//! deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::Context;

const COMPONENT: &str = "node-controller";
/// How often nodes are looked at.
const MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// How long a node may be silent before it is Unknown.
const GRACE_SECONDS: i64 = 40;
/// The taint of a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a node whose Ready condition is Unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// How long a pod may stay bound to a node that does not exist.
const ORPHAN_SECONDS: i64 = 20;

fn ready(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The taints a node's Ready status calls for (a node that never reported gets them once the
/// grace period has made it Unknown).
pub fn wanted_taints(ready: Option<&str>) -> Vec<(&'static str, &'static str)> {
    let key = match ready {
        None | Some("True") => return Vec::new(),
        Some("False") => NOT_READY,
        _ => UNREACHABLE,
    };
    vec![(key, "NoSchedule"), (key, "NoExecute")]
}

/// Whether a pod tolerates a NoExecute taint, and for how long (`None` = for ever).
pub fn tolerance(pod: &Pod, taint: &Taint) -> Option<Option<i64>> {
    let tolerations = pod.spec.as_ref()?.tolerations.clone().unwrap_or_default();
    let matching: Vec<_> = tolerations
        .iter()
        .filter(|t| scheduler::plugins::tolerates(std::slice::from_ref(t), taint))
        .collect();
    if matching.is_empty() {
        return None;
    }
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return Some(None);
    }
    Some(matching.iter().filter_map(|t| t.toleration_seconds).min())
}

/// Runs the node lifecycle loop.
pub async fn run(ctx: Arc<Context>) {
    let leases = crate::informer::Informer::start(Api::<Lease>::namespaced(
        ctx.client.clone(),
        "kube-node-lease",
    ));
    leases.ready().await;
    let mut missing_since: HashMap<String, Timestamp> = HashMap::new();
    loop {
        tokio::time::sleep(MONITOR_PERIOD).await;
        let lease_times: HashMap<String, Timestamp> = leases
            .objects()
            .iter()
            .filter_map(|l| {
                let t = l.spec.as_ref()?.renew_time.as_ref()?.0;
                Some((l.name_any(), t))
            })
            .collect();
        let nodes = ctx.informers.nodes.objects();
        for node in &nodes {
            if let Err(e) = monitor(&ctx, node, lease_times.get(&node.name_any())).await {
                tracing::debug!(error = %e, node = %node.name_any(), "node monitoring failed");
            }
        }
        if let Err(e) = collect_orphans(&ctx, &nodes, &mut missing_since).await {
            tracing::debug!(error = %e, "deleting pods of missing nodes failed");
        }
    }
}

async fn monitor(ctx: &Context, node: &Node, lease: Option<&Timestamp>) -> kube::Result<()> {
    let now = Timestamp::now();
    let name = node.name_any();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let heartbeat = ready(node).and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let last_seen = [lease.copied(), heartbeat, created]
        .into_iter()
        .flatten()
        .max();
    let silent = last_seen.is_none_or(|t| now.as_second() - t.as_second() > GRACE_SECONDS);
    let mut ready_status = ready(node).map(|c| c.status.clone());
    if silent && ready_status.as_deref() != Some("Unknown") {
        let mut conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let message = "Kubelet stopped posting node status.";
            match conditions.iter_mut().find(|c| c.type_ == kind) {
                Some(c) => {
                    if c.status != "Unknown" {
                        c.last_transition_time = Some(Time(now));
                    }
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some(message.into());
                }
                None => conditions.push(NodeCondition {
                    type_: kind.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_transition_time: Some(Time(now)),
                    last_heartbeat_time: None,
                }),
            }
        }
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await?;
        ctx.events.normal(
            COMPONENT,
            node,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        ready_status = Some("Unknown".into());
        mark_pods_not_ready(ctx, &name).await?;
    }

    // Taints follow the Ready condition.
    let wanted = wanted_taints(ready_status.as_deref());
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ours = |t: &Taint| t.key == NOT_READY || t.key == UNREACHABLE;
    let mut next: Vec<Taint> = taints.iter().filter(|t| !ours(t)).cloned().collect();
    for (key, effect) in &wanted {
        let kept = taints
            .iter()
            .find(|t| t.key == *key && t.effect == *effect)
            .cloned();
        next.push(kept.unwrap_or_else(|| Taint {
            key: (*key).into(),
            effect: (*effect).into(),
            time_added: (*effect == "NoExecute").then_some(Time(now)),
            value: None,
        }));
    }
    if next != taints {
        let taints = if next.is_empty() {
            json!(null)
        } else {
            json!(next)
        };
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": taints}})),
            )
            .await?;
    }
    evict(ctx, node, &next, now).await
}

/// Marks the pods of a node that went silent as not Ready.
async fn mark_pods_not_ready(ctx: &Context, node: &str) -> kube::Result<()> {
    let now = Timestamp::now();
    for pod in ctx.informers.pods.objects() {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
            continue;
        }
        let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
            continue;
        };
        if !conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            continue;
        }
        let conditions: Vec<_> = conditions
            .into_iter()
            .map(|mut c| {
                if c.type_ == "Ready" {
                    c.status = "False".into();
                    c.reason = None;
                    c.message = None;
                    c.last_transition_time = Some(Time(now));
                }
                c
            })
            .collect();
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Deletes the pods of a node with NoExecute taints they do not tolerate (or no longer).
async fn evict(ctx: &Context, node: &Node, taints: &[Taint], now: Timestamp) -> kube::Result<()> {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Ok(());
    }
    let name = node.name_any();
    for pod in ctx.informers.pods.objects() {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str())
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let due = no_execute.iter().any(|taint| match tolerance(&pod, taint) {
            None => true,
            Some(None) => false,
            Some(Some(seconds)) => {
                let added = taint.time_added.as_ref().map_or(now, |t| t.0);
                now.as_second() >= added.as_second() + seconds
            }
        });
        if !due {
            continue;
        }
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        if crate::pods::delete_exactly(&api, pod.as_ref(), DeleteParams::default()).await? {
            ctx.events.normal(
                "taint-eviction-controller",
                pod.as_ref(),
                "TaintManagerEviction",
                format!(
                    "Marking for deletion Pod {}/{}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                ),
            );
        }
    }
    Ok(())
}

/// Deletes, without grace, pods bound to a node that has not existed for a while.
async fn collect_orphans(
    ctx: &Context,
    nodes: &[Arc<Node>],
    missing_since: &mut HashMap<String, Timestamp>,
) -> kube::Result<()> {
    let now = Timestamp::now();
    let known: std::collections::HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let mut still_missing = HashMap::new();
    for pod in ctx.informers.pods.objects() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if node.is_empty() || known.contains(&node) {
            continue;
        }
        let since = *missing_since.get(&node).unwrap_or(&now);
        still_missing.insert(node.clone(), since);
        if now.as_second() - since.as_second() < ORPHAN_SECONDS {
            continue;
        }
        crate::pods::force_delete(&ctx.client, &pod).await?;
    }
    *missing_since = still_missing;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn taints_follow_readiness() {
        assert!(wanted_taints(Some("True")).is_empty());
        assert_eq!(
            wanted_taints(Some("False")),
            vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]
        );
        assert_eq!(
            wanted_taints(Some("Unknown"))[1],
            (UNREACHABLE, "NoExecute")
        );
        assert!(wanted_taints(None).is_empty());
    }

    #[test]
    fn tolerations_decide_how_long_a_pod_stays() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        assert_eq!(tolerance(&pod(vec![]), &taint), None);
        let for_300 = Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(300),
            value: None,
        };
        assert_eq!(
            tolerance(&pod(vec![for_300.clone()]), &taint),
            Some(Some(300))
        );
        let for_ever = Toleration {
            toleration_seconds: None,
            ..for_300.clone()
        };
        assert_eq!(tolerance(&pod(vec![for_300, for_ever]), &taint), Some(None));
    }
}
