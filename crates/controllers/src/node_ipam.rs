//! Node IPAM, as kube-controller-manager's range allocator (`--allocate-node-cidrs`): a node
//! without a pod CIDR gets the first /24 of the cluster CIDR that no other node has (the
//! cluster CIDR's own prefix when it is longer), in `spec.podCIDR` and `spec.podCIDRs`; a node
//! agent joining without `--pod-cidr` waits for it. A node that already has one keeps it.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::Context;

/// The prefix of a node's range (kube-controller-manager's `--node-cidr-mask-size`).
const NODE_PREFIX: u8 = 24;

/// The pod CIDRs a node has.
fn cidrs_of(node: &Node) -> Vec<Ipv4Net> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The first range of `cluster` that overlaps none of `used`.
pub fn next_free(cluster: Ipv4Net, used: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
    let prefix = NODE_PREFIX.max(cluster.prefix_len());
    cluster
        .subnets(prefix)
        .ok()?
        .find(|range| !used.iter().any(|u| u.contains(range) || range.contains(u)))
}

/// Gives every node that has no pod CIDR one from `cluster`.
pub async fn run(ctx: Arc<Context>, cluster: Ipv4Net) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // given out but not in the cache yet
    let mut assigned: HashSet<Ipv4Net> = HashSet::new();
    let mut changes = std::pin::pin!(ctx.informers.nodes.subscribe());
    while let Some(node) = changes.next().await {
        if node.metadata.deletion_timestamp.is_some() || !cidrs_of(&node).is_empty() {
            continue;
        }
        let mut used: HashSet<Ipv4Net> = ctx
            .informers
            .nodes
            .objects()
            .iter()
            .flat_map(|n| cidrs_of(n))
            .collect();
        // once the cache shows a range, it is the cache's to keep (and to free with its node)
        assigned.retain(|r| !used.contains(r));
        used.extend(assigned.iter().copied());
        let Some(range) = next_free(cluster, &used) else {
            ctx.events.warning(
                "cidrAllocator",
                node.as_ref(),
                "CIDRNotAvailable",
                format!("Node {} status is now: CIDRNotAvailable", node.name_any()),
            );
            continue;
        };
        let patch = serde_json::json!({
            "spec": {"podCIDR": range.to_string(), "podCIDRs": [range.to_string()]}
        });
        match nodes
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                assigned.insert(range);
            }
            Err(e) => {
                tracing::warn!(node = %node.name_any(), error = %e, "cannot assign a pod CIDR")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn ranges_go_in_order_skipping_those_in_use() {
        let cluster = net("10.42.0.0/16");
        let mut used = HashSet::new();
        assert_eq!(next_free(cluster, &used), Some(net("10.42.0.0/24")));
        used.insert(net("10.42.0.0/24"));
        used.insert(net("10.42.2.0/24"));
        assert_eq!(next_free(cluster, &used), Some(net("10.42.1.0/24")));
        used.insert(net("10.42.1.0/24"));
        assert_eq!(next_free(cluster, &used), Some(net("10.42.3.0/24")));
    }

    #[test]
    fn a_range_overlapping_one_in_use_is_not_given() {
        let cluster = net("10.42.0.0/16");
        // a node set by hand with a wider range covers several /24s
        let used = HashSet::from([net("10.42.0.0/23")]);
        assert_eq!(next_free(cluster, &used), Some(net("10.42.2.0/24")));
    }

    #[test]
    fn a_full_cluster_cidr_gives_nothing() {
        let cluster = net("10.42.0.0/24");
        assert_eq!(next_free(cluster, &HashSet::new()), Some(cluster));
        assert_eq!(next_free(cluster, &HashSet::from([cluster])), None);
    }
}
