//! The node's Service proxy (kube-proxy's job): watches Services and EndpointSlices and, on
//! every change, turns them into [`network::proxy::ServicePort`]s for the kernel rules. Changes
//! arriving together are synced together; a failed sync is tried again. It also watches the
//! Nodes and routes each other node's pod CIDR through that node's address
//! ([`network::routes`], flannel's host-gw), so that pods reach pods on other nodes by their
//! own addresses.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store};
use network::proxy::{Endpoint, Protocol, Proxy, ServicePort};
use tokio::sync::Notify;

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long changes are gathered before a sync.
const GATHER: Duration = Duration::from_millis(10);

/// How often the routes to other nodes are made again even without a change, so that one
/// removed by hand or with its link comes back.
const ROUTES_AGAIN: Duration = Duration::from_secs(60);

/// The node's cluster DNS: where it listens (the pod network's gateway, port 53), and the
/// server. Traffic to the `kube-dns` Service goes there, so each node answers its own pods.
pub struct NodeDns {
    /// The address pods reach it at.
    pub addr: std::net::SocketAddr,
    /// The server.
    pub server: Arc<network::dns::Dns>,
}

/// Runs the proxy and cluster DNS of node `node_name` until the watches end.
pub async fn run(
    client: kube::Client,
    services: (Store<Service>, reflector::store::Writer<Service>),
    node_name: String,
    mut proxy: Proxy,
    dns: NodeDns,
) -> anyhow::Result<()> {
    Proxy::prepare_node()?;
    let serve_dns = dns.server.clone().serve(dns.addr);
    let changed = Arc::new(Notify::new());
    let (services, services_task) = crate::cache::watch(&client, services, changed.clone());
    let (slices, slices_task) =
        crate::cache::watch::<EndpointSlice>(&client, reflector::store(), changed.clone());
    let nodes_changed = Arc::new(Notify::new());
    let (nodes, nodes_task) =
        crate::cache::watch::<Node>(&client, reflector::store(), nodes_changed.clone());
    let pod_networks = std::sync::Mutex::new(Vec::new());
    let routes = async {
        nodes.wait_until_ready().await.ok();
        // Node status changes often; the routes are made again only when they would differ,
        // and every ROUTES_AGAIN
        let mut applied = None;
        loop {
            let wanted = peer_routes(&nodes.state(), &node_name);
            if applied.as_ref() != Some(&wanted) {
                if let Err(e) = network::routes::sync(&wanted) {
                    tracing::warn!(error = %e, "routing to other nodes' pods failed for some");
                }
                let networks: Vec<_> = wanted.iter().map(|r| r.cidr).collect();
                let mut known = pod_networks.lock().unwrap_or_else(|e| e.into_inner());
                if *known != networks {
                    *known = networks;
                    changed.notify_one();
                }
                applied = Some(wanted);
            }
            tokio::select! {
                () = nodes_changed.notified() => {}
                () = tokio::time::sleep(ROUTES_AGAIN) => applied = None,
            }
        }
    };
    let sync = async {
        services.wait_until_ready().await.ok();
        slices.wait_until_ready().await.ok();
        loop {
            tokio::time::sleep(GATHER).await;
            proxy.set_pod_networks(
                pod_networks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            );
            let (services, slices) = (services.state(), slices.state());
            let slices = by_service(&slices);
            dns.server.set_zone(zone(&services, &slices));
            let mut ports = service_ports(&services, &slices, &node_name);
            for p in ports
                .iter_mut()
                .filter(|p| p.name.starts_with("kube-system/kube-dns/"))
            {
                p.endpoints = vec![Endpoint {
                    ip: match dns.addr.ip() {
                        std::net::IpAddr::V4(ip) => ip,
                        std::net::IpAddr::V6(_) => continue,
                    },
                    port: dns.addr.port(),
                    local: true,
                }];
            }
            if let Err(e) = proxy.sync(&ports) {
                tracing::warn!(error = %e, "programming the service rules failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            changed.notified().await;
        }
    };
    tokio::select! {
        () = sync => Ok(()),
        () = routes => Ok(()),
        () = nodes_task => anyhow::bail!("the node watch ended"),
        r = serve_dns => r.map_err(|e| anyhow::anyhow!("cluster DNS on {}: {e}", dns.addr)),
        () = services_task => anyhow::bail!("the service watch ended"),
        () = slices_task => anyhow::bail!("the endpoint slice watch ended"),
    }
}

/// The routes to the pods of the nodes other than `own`: each one's pod CIDR through its
/// InternalIP, sorted.
pub fn peer_routes(nodes: &[Arc<Node>], own: &str) -> Vec<network::routes::PeerRoute> {
    let mut out: Vec<network::routes::PeerRoute> = nodes
        .iter()
        .filter(|n| n.name_any() != own)
        .filter_map(|n| {
            let cidr = n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
            let via = n
                .status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some(network::routes::PeerRoute { cidr, via })
        })
        .collect();
    out.sort();
    out
}

/// EndpointSlices grouped by their Service's (namespace, name).
pub type SlicesByService<'a> = BTreeMap<(String, String), Vec<&'a EndpointSlice>>;

/// The slices of each Service, by (namespace, name).
pub fn by_service(slices: &[Arc<EndpointSlice>]) -> SlicesByService<'_> {
    let mut out: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let Some(svc) = s.labels().get(SERVICE_NAME_LABEL) {
            out.entry((s.namespace().unwrap_or_default(), svc.clone()))
                .or_default()
                .push(s);
        }
    }
    out
}

/// What the kernel rules should say for `services` and their slices ([`by_service`]), seen
/// from `node`.
pub fn service_ports(
    services: &[Arc<Service>],
    by_service: &SlicesByService,
    node: &str,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ips: Vec<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if cluster_ips.is_empty() {
            continue; // headless: DNS answers with the endpoints themselves
        }
        let mut external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let balanced: Vec<Ipv4Addr> = svc
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_ref()?.parse::<Ipv4Addr>().ok())
            .collect();
        if !balanced.is_empty() {
            // a load balancer of the node's own serves on localhost too, as servicelb's host
            // ports do
            external_ips.push(Ipv4Addr::LOCALHOST);
        }
        external_ips.extend(balanced);
        external_ips.sort();
        external_ips.dedup();
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let slices = by_service
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(10800, |t| t.max(1) as u32)
        });
        for p in spec.ports.iter().flatten() {
            let port_name = p.name.clone().unwrap_or_default();
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            out.push(ServicePort {
                name: format!("{ns}/{name}/{port_name}"),
                cluster_ips: cluster_ips.clone(),
                external_ips: external_ips.clone(),
                protocol: Protocol::from_name(&protocol),
                port: p.port as u16,
                node_port: p.node_port.filter(|n| *n > 0).map(|n| n as u16),
                endpoints: endpoints(&slices, &port_name, &protocol, node),
                affinity_seconds,
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            });
        }
    }
    out
}

/// What the cluster DNS knows of `services`: addresses, ports, and the ready endpoints of
/// headless ones.
pub fn zone(services: &[Arc<Service>], by_service: &SlicesByService) -> network::dns::Zone {
    let mut zone = network::dns::Zone::default();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
        let mut endpoints: Vec<(Option<String>, Ipv4Addr)> = by_service
            .get(&key)
            .into_iter()
            .flatten()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| {
                publish_not_ready || e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
            })
            .filter_map(|e| Some((e.hostname.clone(), e.addresses.first()?.parse().ok()?)))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let entry = network::dns::ServiceEntry {
            cluster_ip: spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
            external_name: spec
                .external_name
                .clone()
                .filter(|_| spec.type_.as_deref() == Some("ExternalName")),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone().unwrap_or_default(),
                        p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                        p.port as u16,
                    )
                })
                .collect(),
            endpoints,
        };
        zone.services.insert(key, entry);
    }
    zone
}

/// The endpoints of one Service port: the ready ones, or, when none is, those still serving
/// while they terminate (as kube-proxy falls back to them).
fn endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: &str,
    node: &str,
) -> Vec<Endpoint> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let c = e.conditions.clone().unwrap_or_default();
            let endpoint = Endpoint {
                ip,
                port: port as u16,
                local: e.node_name.as_deref() == Some(node),
            };
            if c.ready != Some(false) {
                ready.push(endpoint);
            } else if c.serving == Some(true) && c.terminating == Some(true) {
                terminating.push(endpoint);
            }
        }
    }
    let mut chosen = if ready.is_empty() { terminating } else { ready };
    chosen.sort();
    chosen.dedup();
    chosen
}
