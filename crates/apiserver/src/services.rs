//! Service address allocation, as upstream's service storage does it: a ClusterIP from the
//! service CIDR for every Service but headless and ExternalName ones (random in the upper part
//! of the range, the lower part left for requested addresses), a node port from the node port
//! range for every port of NodePort and LoadBalancer Services, requested values checked for range
//! and conflicts with upstream's messages. What is allocated is what the stored Services hold;
//! one lock serialises allocations with their writes, so no two Services get the same address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use rand::Rng;
use serde_json::{Value, json};

use api::validation::FieldError;
use api::{ResourceType, meta, registry};

use crate::State;
use crate::status::{ApiError, Result};

/// Where Service addresses come from.
pub struct ServiceRanges {
    /// The ClusterIP range.
    pub cidr: Ipv4Net,
    /// The node port range.
    pub node_ports: RangeInclusive<u16>,
    lock: tokio::sync::Mutex<()>,
}

impl ServiceRanges {
    /// Ranges with nothing allocated yet.
    pub fn new(cidr: Ipv4Net, node_ports: RangeInclusive<u16>) -> Self {
        Self {
            cidr,
            node_ports,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The `kubernetes` Service's address: the first of the range.
    pub fn api_server_ip(&self) -> Ipv4Addr {
        nth(&self.cidr, 1)
    }

    /// The cluster DNS Service's address: the tenth of the range.
    pub fn dns_ip(&self) -> Ipv4Addr {
        nth(&self.cidr, 10)
    }

    /// Holds allocations still until the returned guard is dropped, after the write.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }
}

fn nth(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// Whether `rt` is the core Service type.
pub fn is_service(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.kind == "Service"
}

/// What the stored Services hold, but `except` (the one being updated).
struct InUse {
    ips: BTreeSet<Ipv4Addr>,
    node_ports: BTreeSet<(i64, String)>,
}

async fn in_use(state: &State, except: Option<&str>) -> Result<InUse> {
    let rt = registry()
        .find("", "v1", "services")
        .ok_or_else(|| ApiError::internal("services are not registered"))?;
    let mut used = InUse {
        ips: BTreeSet::new(),
        node_ports: BTreeSet::new(),
    };
    for svc in state.storage.list_in(rt, "").await? {
        if except.is_some_and(|uid| meta::uid(&svc) == uid) {
            continue;
        }
        used.ips.extend(
            svc.pointer("/spec/clusterIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok()),
        );
        for p in ports(&svc) {
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                used.node_ports.insert((np, protocol(p)));
            }
        }
    }
    Ok(used)
}

fn ports(svc: &Value) -> impl Iterator<Item = &Value> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn protocol(port: &Value) -> String {
    port.get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP")
        .to_string()
}

fn service_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

/// Whether the Service's type gives its ports node ports.
fn wants_node_ports(svc: &Value) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)),
        _ => false,
    }
}

/// Allocates what a Service being created or updated (`old` is its stored version) lacks, and
/// checks what it requests. Call with the lock held, and keep it until the write is done.
pub async fn allocate(
    state: &State,
    rt: &ResourceType,
    old: Option<&Value>,
    svc: &mut Value,
) -> Result<()> {
    let ranges = &state.services;
    let used = in_use(state, old.map(meta::uid)).await?;
    let mut errs = Vec::new();
    let external = service_type(svc) == "ExternalName";
    let ip = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !external {
        let spec = &mut svc["spec"];
        if ip.is_empty() {
            match random_free_ip(&ranges.cidr, &used.ips) {
                Some(free) => set_cluster_ip(spec, &free.to_string()),
                None => {
                    return Err(ApiError::internal(format!(
                        "failed to allocate a serviceIP: range is full ({})",
                        ranges.cidr
                    )));
                }
            }
        } else if ip == "None" {
            set_cluster_ip(spec, "None");
        } else {
            if ip != old_ip {
                let problem = match ip.parse::<Ipv4Addr>() {
                    Ok(addr) if !in_range(&ranges.cidr, addr) => Some(format!(
                        "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                        ranges.cidr
                    )),
                    Ok(addr) if used.ips.contains(&addr) => {
                        Some("provided IP is already allocated".to_string())
                    }
                    Ok(_) => None,
                    // validation reports addresses that do not parse
                    Err(_) => None,
                };
                if let Some(problem) = problem {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        json!([ip]),
                        format!("failed to allocate IP {ip}: {problem}"),
                    ));
                }
            }
            set_cluster_ip(spec, &ip);
        }
    }
    if wants_node_ports(svc) {
        let old_ports: BTreeSet<(i64, String)> = old
            .into_iter()
            .flat_map(ports)
            .filter_map(|p| Some((p.get("nodePort")?.as_i64()?, protocol(p))))
            .collect();
        let mut taken = used.node_ports;
        let range = &ranges.node_ports;
        let count = ports(svc).count();
        for i in 0..count {
            let port = &mut svc["spec"]["ports"][i];
            let proto = protocol(port);
            match port.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => {
                    let key = (np, proto);
                    if old_ports.contains(&key) {
                        taken.insert(key);
                        continue;
                    }
                    let problem = if !(i64::from(*range.start())..=i64::from(*range.end()))
                        .contains(&np)
                    {
                        Some(format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            range.start(),
                            range.end()
                        ))
                    } else if taken.contains(&key) {
                        Some("provided port is already allocated".to_string())
                    } else {
                        None
                    };
                    match problem {
                        Some(p) => errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            json!(np),
                            p,
                        )),
                        None => {
                            taken.insert(key);
                        }
                    }
                }
                _ => match random_free_port(range, &taken, &proto) {
                    Some(np) => {
                        port["nodePort"] = json!(np);
                        taken.insert((np, proto));
                    }
                    None => {
                        return Err(ApiError::internal(format!(
                            "failed to allocate a nodePort: range is full ({}-{})",
                            range.start(),
                            range.end()
                        )));
                    }
                },
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, meta::name(svc), &errs))
    }
}

fn set_cluster_ip(spec: &mut Value, ip: &str) {
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if spec.get("ipFamilies").is_none() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec.get("ipFamilyPolicy").is_none() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
}

fn in_range(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

/// A free address, at random in the upper part of the range (upstream leaves the lower
/// sixteenth, at least 16 and at most 256 addresses, to requested ones), else anywhere.
fn random_free_ip(net: &Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(net.network()) + 1;
    let last = u32::from(net.broadcast()) - 1;
    let size = last - first + 1;
    let static_band = (size / 16).clamp(16, 256).min(size / 2);
    let free = |a: u32| !used.contains(&Ipv4Addr::from(a));
    let mut rng = rand::rng();
    for band in [(first + static_band)..=last, first..=last] {
        for _ in 0..64 {
            let a = rng.random_range(band.clone());
            if free(a) {
                return Some(Ipv4Addr::from(a));
            }
        }
        if let Some(a) = band.clone().find(|a| free(*a)) {
            return Some(Ipv4Addr::from(a));
        }
    }
    None
}

fn random_free_port(
    range: &RangeInclusive<u16>,
    taken: &BTreeSet<(i64, String)>,
    proto: &str,
) -> Option<i64> {
    let free = |p: i64| !taken.contains(&(p, proto.to_string()));
    let (lo, hi) = (i64::from(*range.start()), i64::from(*range.end()));
    let mut rng = rand::rng();
    (0..64)
        .map(|_| rng.random_range(lo..=hi))
        .find(|p| free(*p))
        .or_else(|| (lo..=hi).find(|p| free(*p)))
}

/// Creates the `kubernetes` Service in `default` and the cluster DNS Service `kube-dns` in
/// `kube-system` when missing, and points the first's Endpoints and EndpointSlice at the API
/// server, as upstream's endpoint reconciler does.
pub async fn reconcile_api_service(
    storage: &crate::storage::Storage,
    ranges: &ServiceRanges,
    address: Ipv4Addr,
    port: u16,
) -> anyhow::Result<()> {
    let find = |plural| {
        let group = if plural == "endpointslices" {
            "discovery.k8s.io"
        } else {
            ""
        };
        let version = "v1";
        registry()
            .find(group, version, plural)
            .ok_or_else(|| anyhow::anyhow!("{plural} are not registered"))
    };
    let service = |ns: &str, name: &str, labels: Value, ip: Ipv4Addr, ports: Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "clusterIP": ip.to_string(),
                "clusterIPs": [ip.to_string()],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": ports,
                "sessionAffinity": "None",
                "type": "ClusterIP",
            },
        })
    };
    let api = service(
        "default",
        "kubernetes",
        json!({"component": "apiserver", "provider": "kubernetes"}),
        ranges.api_server_ip(),
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]),
    );
    // the cluster DNS: every node answers its own pods at this address (see node::proxy)
    let mut dns = service(
        "kube-system",
        "kube-dns",
        json!({"k8s-app": "kube-dns", "kubernetes.io/name": "bosun-dns"}),
        ranges.dns_ip(),
        json!([
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ]),
    );
    dns["spec"]["internalTrafficPolicy"] = json!("Local");
    for svc in [api, dns] {
        crate::bootstrap::create_missing(storage, find("services")?, svc).await?;
    }
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{
            "addresses": [{"ip": address.to_string()}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }],
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    for (rt, mut want) in [
        (find("endpoints")?, endpoints),
        (find("endpointslices")?, slice),
    ] {
        match storage.get(rt, "default", "kubernetes").await {
            Ok((current, rev)) => {
                let same = ["subsets", "endpoints", "ports"]
                    .iter()
                    .all(|k| current.get(*k) == want.get(*k));
                if !same {
                    if let Some(m) = current.get("metadata") {
                        want["metadata"] = m.clone();
                    }
                    storage
                        .update(rt, want, rev)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot update {}: {e}", rt.plural))?;
                }
            }
            Err(_) => crate::bootstrap::create_missing(storage, rt, want).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_addresses_stay_in_range_and_avoid_used_ones() {
        let net: Ipv4Net = "10.43.0.0/28".parse().expect("cidr");
        let mut used = BTreeSet::new();
        for _ in 0..14 {
            let ip = random_free_ip(&net, &used).expect("a free address");
            assert!(in_range(&net, ip), "{ip}");
            assert!(used.insert(ip), "{ip} given twice");
        }
        assert_eq!(random_free_ip(&net, &used), None, "the range is full");
    }

    #[test]
    fn node_ports_are_free_per_protocol() {
        let range = 30000..=30001;
        let mut taken = BTreeSet::new();
        taken.insert((30000, "TCP".to_string()));
        assert_eq!(random_free_port(&range, &taken, "TCP"), Some(30001));
        taken.insert((30001, "TCP".to_string()));
        assert_eq!(random_free_port(&range, &taken, "TCP"), None);
        assert!(random_free_port(&range, &taken, "UDP").is_some());
    }
}
