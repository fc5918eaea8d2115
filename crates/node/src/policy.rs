//! NetworkPolicies on this node's pods: watches policies, namespaces and pods, works out for
//! each of the node's pods whether a policy isolates it (for ingress, for egress, as the
//! policies' `policyTypes` say) and which peers and ports are then allowed, as upstream defines
//! them (podSelector and namespaceSelector peers by their labels, ipBlocks with exceptions, ports
//! by number, range or name), and hands that to [`network::policy`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::runtime::reflector;
use network::policy::{Peer, PodPolicy, Port, Rule};
use network::proxy::Protocol;
use tokio::sync::Notify;

use crate::cache::watch;

/// Runs the policy enforcement of node `node` until a watch ends.
pub async fn run(client: kube::Client, node: String) -> anyhow::Result<()> {
    let changed = Arc::new(Notify::new());
    let (policies, p_task) = watch::<NetworkPolicy>(&client, reflector::store(), changed.clone());
    let (namespaces, n_task) = watch::<Namespace>(&client, reflector::store(), changed.clone());
    let (pods, pod_task) = watch::<Pod>(&client, reflector::store(), changed.clone());
    let mut last: Option<Vec<PodPolicy>> = None;
    let sync = async {
        let _ = policies.wait_until_ready().await;
        let _ = namespaces.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let wanted = pod_policies(&policies.state(), &namespaces.state(), &pods.state(), &node);
            if last.as_ref() != Some(&wanted) {
                match network::policy::apply(&wanted) {
                    Ok(()) => last = Some(wanted),
                    Err(e) => {
                        tracing::warn!(error = %e, "programming the network policies failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            changed.notified().await;
        }
    };
    tokio::select! {
        () = sync => Ok(()),
        () = p_task => anyhow::bail!("the network policy watch ended"),
        () = n_task => anyhow::bail!("the namespace watch ended"),
        () = pod_task => anyhow::bail!("the pod watch ended"),
    }
}

fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    // an absent selector selects everything here (an empty podSelector), as upstream's peers
    let Some(sel) = sel else { return true };
    let Ok(value) = serde_json::to_value(sel) else {
        return false;
    };
    api::selector::LabelSelector::from_json(&value)
        .is_ok_and(|s| s.matches_with(|k| labels.get(k).map(String::as_str)))
}

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// What the policies say of each of `node`'s pods that some policy isolates.
pub fn pod_policies(
    policies: &[Arc<NetworkPolicy>],
    namespaces: &[Arc<Namespace>],
    pods: &[Arc<Pod>],
    node: &str,
) -> Vec<PodPolicy> {
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let mut out = Vec::new();
    for pod in pods {
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.node_name.as_deref()) != Some(node)
            || spec.and_then(|s| s.host_network) == Some(true)
        {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let ns = pod.namespace().unwrap_or_default();
        let mut ingress: Option<Vec<Rule>> = None;
        let mut egress: Option<Vec<Rule>> = None;
        for policy in policies
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        {
            let Some(pspec) = &policy.spec else { continue };
            if !selects(pspec.pod_selector.as_ref(), pod.labels()) {
                continue;
            }
            let has_egress = pspec.egress.is_some();
            let types: Vec<String> = pspec.policy_types.clone().unwrap_or_else(|| {
                let mut t = vec!["Ingress".to_string()];
                if has_egress {
                    t.push("Egress".into());
                }
                t
            });
            let ingress_rules = pspec.ingress.iter().flatten();
            let ingress_rules = ingress_rules.map(|r| (r.from.as_deref(), r.ports.as_deref()));
            let egress_rules = pspec.egress.iter().flatten();
            let egress_rules = egress_rules.map(|r| (r.to.as_deref(), r.ports.as_deref()));
            let directions: [(&str, &mut Option<Vec<_>>, Vec<_>); 2] = [
                ("Ingress", &mut ingress, ingress_rules.collect()),
                ("Egress", &mut egress, egress_rules.collect()),
            ];
            for (kind, slot, rules) in directions {
                if types.iter().any(|t| t == kind) {
                    let out = slot.get_or_insert_with(Vec::new);
                    for (peers, ports) in rules {
                        out.push(rule(peers, ports, &ns, pod, &ns_labels, pods));
                    }
                }
            }
        }
        if ingress.is_some() || egress.is_some() {
            out.push(PodPolicy {
                pod: format!("{ns}/{}", pod.name_any()),
                ip,
                ingress,
                egress,
            });
        }
    }
    out
}

/// One ingress or egress rule of a policy in `ns`, for the selected `pod`.
fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    ns: &str,
    pod: &Pod,
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
    pods: &[Arc<Pod>],
) -> Rule {
    let peers = peers.filter(|p| !p.is_empty()).map(|peers| {
        let mut out = Vec::new();
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                out.push(Peer::Block {
                    cidr: block.cidr.clone(),
                    except: block.except.clone().unwrap_or_default(),
                });
                continue;
            }
            for other in pods {
                let other_ns = other.namespace().unwrap_or_default();
                let ns_ok = match &peer.namespace_selector {
                    None => other_ns == ns,
                    Some(sel) => ns_labels
                        .get(&other_ns)
                        .is_some_and(|labels| selects(Some(sel), labels)),
                };
                if ns_ok
                    && selects(peer.pod_selector.as_ref(), other.labels())
                    && let Some(ip) = pod_ip(other)
                {
                    out.push(Peer::Ip(ip));
                }
            }
        }
        out.sort_by_key(|p| format!("{p:?}"));
        out.dedup();
        out
    });
    let ports = ports
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let protocol = Protocol::from_name(p.protocol.as_deref().unwrap_or("TCP"));
            let range = match &p.port {
                None => None,
                Some(IntOrString::Int(n)) => {
                    let end = p.end_port.unwrap_or(*n);
                    Some((*n as u16, end as u16))
                }
                // a named port is the selected pod's container port of that name
                Some(IntOrString::String(name)) => {
                    let n = pod
                        .spec
                        .as_ref()?
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|cp| cp.name.as_deref() == Some(name.as_str()))?
                        .container_port;
                    Some((n as u16, n as u16))
                }
            };
            Some(Port { protocol, range })
        })
        .collect();
    Rule { peers, ports }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, ip: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                         "ports": [{"name": "pg", "containerPort": 5432}]}]},
                "status": {"podIP": ip},
            }))
            .expect("pod"),
        )
    }

    fn ns(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("ns"),
        )
    }

    fn policy(ns: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}),
            )
            .expect("policy"),
        )
    }

    #[test]
    fn selected_pods_allow_only_their_peers_and_others_stay_open() {
        let pods = [
            pod("db", "shop", "10.42.0.5", json!({"app": "db"})),
            pod("web", "shop", "10.42.0.6", json!({"app": "web"})),
            pod("spy", "other", "10.42.0.7", json!({"app": "web"})),
            pod("mon", "ops", "10.42.0.8", json!({"app": "mon"})),
        ];
        let namespaces = [
            ns("shop", json!({})),
            ns("other", json!({})),
            ns("ops", json!({"team": "ops"})),
        ];
        let policies = [policy(
            "shop",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                         {"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                                "ports": [{"port": "pg"}]}]}),
        )];
        let out = pod_policies(&policies, &namespaces, &pods, "n1");
        assert_eq!(out.len(), 1, "only db is isolated");
        let db = &out[0];
        assert!(db.egress.is_none());
        let rules = db.ingress.as_ref().expect("ingress isolated");
        let peers = rules[0].peers.as_ref().expect("peers");
        assert!(
            peers.contains(&Peer::Ip("10.42.0.6".parse().expect("ip"))),
            "web of shop"
        );
        assert!(
            peers.contains(&Peer::Ip("10.42.0.8".parse().expect("ip"))),
            "pods of ops"
        );
        assert!(
            !peers.contains(&Peer::Ip("10.42.0.7".parse().expect("ip"))),
            "web of another namespace"
        );
        assert_eq!(
            rules[0].ports[0].range,
            Some((5432, 5432)),
            "named port resolved"
        );
    }

    #[test]
    fn a_deny_all_policy_isolates_without_rules() {
        let pods = [pod("db", "shop", "10.42.0.5", json!({}))];
        let policies = [policy(
            "shop",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )];
        let out = pod_policies(&policies, &[ns("shop", json!({}))], &pods, "n1");
        assert_eq!(out[0].ingress, Some(vec![]));
        assert_eq!(out[0].egress, Some(vec![]));
    }
}
