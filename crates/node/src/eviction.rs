//! Node-pressure eviction, as kubelet's eviction manager does it for memory: every ten seconds
//! the node's available memory (its capacity less the working set of the root cgroup) is
//! compared with the hard threshold (`--eviction-hard memory.available<100Mi`). Below it, the
//! node reports MemoryPressure and evicts one pod per round, the first by upstream's ranking:
//! pods using more memory than they request before those within their requests, then lower
//! priority first, then the largest use beyond the request. An evicted pod's containers are
//! killed at once and the pod fails with reason `Evicted` and upstream's message ("The node was
//! low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. Container hog was
//! using 1200Mi, request is 0, has larger consumption of memory.").
//!
//! Soft thresholds, disk and pid signals, and reclaiming node-level resources (image garbage
//! collection) before evicting are not done here.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::Agent;
use crate::stats::INTERVAL;

/// Pods at or above this priority (system-node-critical, system-cluster-critical) are never
/// evicted, as kubelet spares critical pods.
const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Reads kubelet's `--eviction-hard` value for memory (`memory.available<100Mi`) into bytes.
pub fn parse_hard(s: &str) -> Result<u64, String> {
    let quantity = s
        .trim()
        .strip_prefix("memory.available<")
        .ok_or_else(|| format!("{s:?}: only memory.available<QUANTITY is supported"))?;
    api::quantity::units(quantity)
        .ok()
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("{quantity:?} is not a quantity"))
}

/// What the ranking knows of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The pod's uid.
    pub uid: String,
    /// Its priority.
    pub priority: i32,
    /// Its working set, in bytes.
    pub usage: u64,
    /// Its memory request, in bytes.
    pub request: u64,
}

/// Upstream's memory ranking: over their requests first, then lower priority, then the most
/// beyond the request.
pub fn rank(a: &Candidate, b: &Candidate) -> Ordering {
    let over = |c: &Candidate| c.usage > c.request;
    over(b)
        .cmp(&over(a))
        .then(a.priority.cmp(&b.priority))
        .then_with(|| {
            let beyond = |c: &Candidate| c.usage as i64 - c.request as i64;
            beyond(b).cmp(&beyond(a))
        })
}

/// A container's memory request, in bytes.
fn memory_request(c: &k8s_openapi::api::core::v1::Container) -> u64 {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .and_then(|q| api::quantity::units(&q.0).ok())
        .map_or(0, |b| b.max(0) as u64)
}

/// Quantities as kubelet prints them in eviction messages.
fn show(bytes: u64) -> String {
    api::quantity::format_milli(bytes as i64 * 1000, true)
}

/// Watches memory and evicts as the threshold says, until the agent stops.
pub async fn run(agent: Arc<Agent>) {
    let threshold = agent.config.eviction_memory_available;
    loop {
        tokio::time::sleep(INTERVAL).await;
        let available = crate::registration::Pressure::now(&agent.config.data_dir).memory_available;
        if available >= threshold {
            continue;
        }
        if let Err(e) = evict_one(&agent, threshold, available).await {
            tracing::warn!(error = %e, "eviction failed");
        }
    }
}

async fn evict_one(agent: &Agent, threshold: u64, available: u64) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let pods = api
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", agent.config.node_name)))
        .await?;
    let usage = agent.stats.memory_by_pod();
    let evicted = agent
        .evictions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut candidates: Vec<(Candidate, &Pod)> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let uid = p.metadata.uid.clone()?;
            let spec = p.spec.as_ref()?;
            let priority = spec.priority.unwrap_or(0);
            if evicted.contains_key(&uid) || priority >= CRITICAL_PRIORITY {
                return None;
            }
            let (pod_usage, _) = usage.get(&uid)?;
            let request = spec.containers.iter().map(memory_request).sum();
            Some((
                Candidate {
                    uid,
                    priority,
                    usage: *pod_usage,
                    request,
                },
                p,
            ))
        })
        .collect();
    candidates.sort_by(|a, b| rank(&a.0, &b.0));
    let Some((victim, pod)) = candidates.into_iter().next() else {
        return Ok(());
    };
    let mut message = format!(
        "The node was low on resource: memory. Threshold quantity: {}, available: {}Ki. ",
        show(threshold),
        available / 1024
    );
    let containers = usage
        .get(&victim.uid)
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let used = containers.get(&c.name).copied().unwrap_or(0);
        let request = memory_request(c);
        if used > request {
            message += &format!(
                "Container {} was using {}Ki, request is {}, has larger consumption of memory. ",
                c.name,
                used / 1024,
                show(request)
            );
        }
    }
    tracing::info!(pod = ?pod.metadata.name, "evicting a pod: the node is low on memory");
    agent
        .evictions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(victim.uid, message.trim_end().to_string());
    Ok(())
}

/// What each pod uses, by uid: its working set and its containers', in bytes.
pub type PodMemory = BTreeMap<String, (u64, BTreeMap<String, u64>)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, priority: i32, usage: u64, request: u64) -> Candidate {
        Candidate {
            uid: uid.into(),
            priority,
            usage,
            request,
        }
    }

    #[test]
    fn pods_over_their_requests_go_first_then_low_priority_then_the_largest() {
        let mut pods = [
            pod("within", 0, 100, 200),
            pod("small-over", 0, 50, 0),
            pod("big-over", 0, 500, 0),
            pod("important-over", 1000, 900, 0),
        ];
        pods.sort_by(rank);
        let order: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(
            order,
            ["big-over", "small-over", "important-over", "within"]
        );
        assert_eq!(parse_hard("memory.available<100Mi"), Ok(100 << 20));
        assert!(parse_hard("nodefs.available<10%").is_err());
    }
}
