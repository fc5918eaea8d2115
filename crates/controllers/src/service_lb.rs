//! Load balancers on bare metal, the way k3s's servicelb gives them: a Service of type
//! LoadBalancer (without a `loadBalancerClass` of someone else's) gets the addresses of the
//! Ready nodes as its `status.loadBalancer.ingress`, and every node's proxy serves the Service's
//! ports there. A Service that stops being a LoadBalancer loses them, and one asking for a
//! protocol and port an older LoadBalancer already holds stays pending, as servicelb's host
//! ports leave it, until the port is free.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Node, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::{Context, Result, drive, retry};

/// Runs the controller.
pub async fn run(ctx: Arc<Context>) {
    let inf = &ctx.informers;
    let (services, again) = (inf.services.store(), inf.services.store());
    let stream = Controller::for_shared_stream(inf.services.subscribe(), inf.services.store())
        // a node coming or going changes every load balancer's addresses
        .watches_shared_stream(inf.nodes.subscribe(), move |_: Arc<Node>| {
            all_ours(&services)
        })
        // a LoadBalancer going away frees its ports for the pending ones
        .watches_shared_stream(inf.services.subscribe(), move |_: Arc<Service>| {
            all_ours(&again)
        })
        .run(reconcile, retry, ctx);
    drive("service-lb", stream).await;
}

/// Every LoadBalancer this controller serves.
fn all_ours(services: &kube::runtime::reflector::Store<Service>) -> Vec<ObjectRef<Service>> {
    services
        .state()
        .into_iter()
        .filter(|s| is_ours(s))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// Whether the Service is a LoadBalancer this controller serves.
fn is_ours(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none()
}

/// The addresses load balancers get: the InternalIPs of the Ready nodes, sorted.
pub fn node_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .flat_map(|n| {
            n.status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The LoadBalancers of `services` that are served, by (namespace, name): the oldest first,
/// each unless it asks for a protocol and port that one served before it holds.
pub fn served(services: &[Arc<Service>]) -> BTreeSet<(String, String)> {
    let mut ours: Vec<&Arc<Service>> = services.iter().filter(|s| is_ours(s)).collect();
    ours.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.namespace(),
            s.name_any(),
        )
    });
    let mut held = BTreeSet::new();
    let mut out = BTreeSet::new();
    for svc in ours {
        let ports: Vec<(String, i32)> = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
            .collect();
        if ports.iter().all(|p| !held.contains(p)) {
            held.extend(ports);
            out.insert((svc.namespace().unwrap_or_default(), svc.name_any()));
        }
    }
    out
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.clone())
        .unwrap_or_default();
    let key = (svc.namespace().unwrap_or_default(), svc.name_any());
    let wanted = if is_ours(&svc) && !served(&ctx.informers.services.objects()).contains(&key) {
        LoadBalancerStatus::default()
    } else if is_ours(&svc) {
        let ingress: Vec<LoadBalancerIngress> = node_addresses(&ctx.informers.nodes.objects())
            .into_iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            })
            .collect();
        LoadBalancerStatus {
            ingress: (!ingress.is_empty()).then_some(ingress),
        }
    } else if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        LoadBalancerStatus::default()
    } else {
        return Ok(Action::await_change()); // someone else's class
    };
    let same =
        current.ingress.clone().unwrap_or_default() == wanted.ingress.clone().unwrap_or_default();
    if !same {
        let api: Api<Service> =
            Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
        let patch = json!({"status": {"loadBalancer": {"ingress": wanted.ingress}}});
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(ip: &str, ready: bool) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": ip},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "h"}],
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                }
            }))
            .expect("node"),
        )
    }

    #[test]
    fn load_balancers_get_the_ready_nodes_addresses() {
        let nodes = [
            node("10.0.0.2", true),
            node("10.0.0.1", true),
            node("10.0.0.3", false),
        ];
        assert_eq!(node_addresses(&nodes), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn an_older_load_balancer_keeps_its_ports() {
        let svc = |name: &str, created: &str, ports: serde_json::Value| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                    "spec": {"type": "LoadBalancer", "ports": ports},
                }))
                .expect("svc"),
            )
        };
        let all = [
            svc(
                "late",
                "2026-01-03T00:00:00Z",
                json!([{"port": 80}, {"port": 8443}]),
            ),
            svc(
                "first",
                "2026-01-01T00:00:00Z",
                json!([{"port": 80}, {"port": 443}]),
            ),
            svc(
                "dns",
                "2026-01-02T00:00:00Z",
                json!([{"port": 443, "protocol": "UDP"}]),
            ),
            svc("other", "2026-01-04T00:00:00Z", json!([{"port": 8443}])),
        ];
        let names: Vec<String> = served(&all).into_iter().map(|(_, n)| n).collect();
        // "late" wants 80, which "first" holds, so it waits and 8443 stays free for "other"
        assert_eq!(names, ["dns", "first", "other"]);
    }

    #[test]
    fn only_classless_load_balancers_are_ours() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec})).expect("svc")
        };
        assert!(is_ours(&svc(json!({"type": "LoadBalancer"}))));
        assert!(!is_ours(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"})
        )));
        assert!(!is_ours(&svc(json!({"type": "NodePort"}))));
    }
}
