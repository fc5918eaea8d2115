//! Service proxying in the kernel, as kube-proxy's nftables mode does it: one `ip bosun` table
//! whose verdict maps send a Service's address and port (or a node port on any local address,
//! 127.0.0.1 included) to a chain per Service port, which picks an endpoint at random (or the
//! client's previous one, with ClientIP affinity) and DNATs to it. Traffic to a Service with no
//! endpoint is rejected at once. Traffic from outside the node's pods, node ports, and a pod
//! reaching itself through its Service are masqueraded, as is pods' traffic leaving the node.
//!
//! Each sync rewrites only the chains that changed, in one `nft -f` transaction, so that rules
//! change within milliseconds of an endpoint change and affinity state survives; the first sync
//! after a start replaces whatever an earlier agent left. [`cleanup`] removes the table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::ipam::Cidr;

/// The nftables table bosun owns.
pub const TABLE: &str = "bosun";
/// The packet mark asking for masquerade (kube-proxy's).
const MASQ_MARK: &str = "0x4000";

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// From a Kubernetes protocol name (TCP when unknown).
    pub fn from_name(name: &str) -> Self {
        match name {
            "UDP" => Self::Udp,
            "SCTP" => Self::Sctp,
            _ => Self::Tcp,
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Whether it runs on this node.
    pub local: bool,
}

/// One port of one Service, with where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name/port-name`, for chain names and messages.
    pub name: String,
    /// The Service's cluster addresses.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// Addresses the port is also served on from outside (load balancer ingress, external IPs).
    pub external_ips: Vec<Ipv4Addr>,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// The endpoints traffic may go to (ready ones, or serving terminating ones when none is).
    pub endpoints: Vec<Endpoint>,
    /// ClientIP session affinity, with its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// externalTrafficPolicy Local: outside traffic only to this node's endpoints, unmasqueraded.
    pub external_local: bool,
    /// internalTrafficPolicy Local: cluster traffic only to this node's endpoints.
    pub internal_local: bool,
}

/// The proxy of one node.
pub struct Proxy {
    pod_cidr: Cidr,
    bridge: String,
    /// Every node's pod CIDR: traffic between pods keeps its addresses across nodes.
    pod_networks: Vec<Cidr>,
    /// The chains (and affinity sets) of the last sync, with their rules.
    chains: BTreeMap<String, String>,
    sets: BTreeSet<String>,
    synced: bool,
    /// The UDP Service ports of the last sync: their addresses, port and endpoints.
    udp: BTreeMap<String, (Vec<Ipv4Addr>, u16, Vec<Endpoint>)>,
}

impl Proxy {
    /// A proxy for a node whose pods are in `pod_cidr` on `bridge`. Nothing is programmed until
    /// the first [`Proxy::sync`].
    pub fn new(pod_cidr: Cidr, bridge: &str) -> Self {
        Self {
            pod_cidr,
            bridge: bridge.to_string(),
            pod_networks: Vec::new(),
            chains: BTreeMap::new(),
            sets: BTreeSet::new(),
            synced: false,
            udp: BTreeMap::new(),
        }
    }

    /// Tells the proxy the pod CIDRs of the other nodes, for the next [`Proxy::sync`]: pods'
    /// traffic to them is routed, not masqueraded.
    pub fn set_pod_networks(&mut self, others: Vec<Cidr>) {
        self.pod_networks = others;
    }

    /// Sets the kernel switches Service proxying needs: forwarding, bridged traffic through
    /// nftables (so that replies between pods on the bridge are un-NATed), and DNAT of
    /// 127.0.0.1 (node ports on localhost).
    pub fn prepare_node() -> io::Result<()> {
        let bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        if !std::path::Path::new(bridge_nf).exists() {
            // the switch comes with the br_netfilter module; load it when it is not
            let _ = Command::new("modprobe")
                .arg("br_netfilter")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for (path, what) in [
            ("/proc/sys/net/ipv4/ip_forward", "IPv4 forwarding"),
            (
                bridge_nf,
                "bridged traffic through netfilter (modprobe br_netfilter)",
            ),
            (
                "/proc/sys/net/ipv4/conf/all/route_localnet",
                "route_localnet",
            ),
        ] {
            std::fs::write(path, "1")
                .map_err(|e| io::Error::new(e.kind(), format!("cannot enable {what}: {e}")))?;
        }
        Ok(())
    }

    /// Programs the kernel for `ports`, changing only what differs from the last sync.
    pub fn sync(&mut self, ports: &[ServicePort]) -> io::Result<()> {
        let (text, chains, sets) = self.render(ports);
        nft(&text)?;
        self.chains = chains;
        self.sets = sets;
        self.synced = true;
        let udp: BTreeMap<String, (Vec<Ipv4Addr>, u16, Vec<Endpoint>)> = ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| {
                let mut addrs = p.cluster_ips.clone();
                addrs.extend(&p.external_ips);
                (p.name.clone(), (addrs, p.port, p.endpoints.clone()))
            })
            .collect();
        for args in stale_udp_flows(&self.udp, &udp) {
            forget_flows(&args);
        }
        self.udp = udp;
        Ok(())
    }

    /// The `nft -f` script of a sync, and the chains and sets it leaves.
    fn render(
        &self,
        ports: &[ServicePort],
    ) -> (String, BTreeMap<String, String>, BTreeSet<String>) {
        let mut chains: BTreeMap<String, String> = BTreeMap::new();
        let mut sets = BTreeSet::new();
        // verdict map elements: (address . protocol . port) and (protocol . node port)
        let mut service_ips = Vec::new();
        let mut node_ports = Vec::new();
        let mut no_endpoints = Vec::new();
        let mut no_endpoint_node_ports = Vec::new();
        // an address, protocol and port leads to one Service: two external IPs or load
        // balancers asking for the same one would fail the whole transaction, so the first
        // keeps it
        let mut claimed = BTreeSet::new();
        let cidr = format!("{}/{}", self.pod_cidr.network, self.pod_cidr.prefix);
        for sp in ports {
            let id = chain_id(sp);
            let proto = sp.protocol.nft();
            let internal: Vec<&Endpoint> = sp
                .endpoints
                .iter()
                .filter(|e| e.local || !sp.internal_local)
                .collect();
            let external: Vec<&Endpoint> = sp
                .endpoints
                .iter()
                .filter(|e| e.local || !sp.external_local)
                .collect();
            for ep in &sp.endpoints {
                let sep = format!("sep-{id}__{}/{}", ep.ip, ep.port);
                let mut rules = format!("ip saddr {} jump mark-for-masquerade\n", ep.ip);
                if let Some(timeout) = sp.affinity_seconds {
                    let set = affinity_set(&sep, timeout);
                    let _ = writeln!(rules, "update @{set} {{ ip saddr timeout {timeout}s }}");
                    sets.insert(set);
                }
                let _ = writeln!(rules, "meta l4proto {proto} dnat to {}:{}", ep.ip, ep.port);
                chains.insert(sep, rules);
            }
            let pick = |eps: &[&Endpoint]| -> String {
                let mut rules = String::new();
                if let Some(timeout) = sp.affinity_seconds {
                    for ep in eps {
                        let sep = format!("sep-{id}__{}/{}", ep.ip, ep.port);
                        let set = affinity_set(&sep, timeout);
                        let _ = writeln!(rules, "ip saddr @{set} goto {sep}");
                    }
                }
                let arms: Vec<String> = eps
                    .iter()
                    .enumerate()
                    .map(|(i, ep)| format!("{i} : goto sep-{id}__{}/{}", ep.ip, ep.port))
                    .collect();
                let _ = writeln!(
                    rules,
                    "numgen random mod {} vmap {{ {} }}",
                    eps.len(),
                    arms.join(", ")
                );
                rules
            };
            let svc = format!("svc-{id}");
            if internal.is_empty() {
                for ip in &sp.cluster_ips {
                    no_endpoints.push(format!("{ip} . {proto} . {} : goto reject-chain", sp.port));
                }
            } else {
                let rules = format!(
                    "ip saddr != {cidr} jump mark-for-masquerade\n{}",
                    pick(&internal)
                );
                chains.insert(svc.clone(), rules);
                for ip in &sp.cluster_ips {
                    let key = format!("{ip} . {proto} . {}", sp.port);
                    if claimed.insert(key.clone()) {
                        service_ips.push(format!("{key} : goto {svc}"));
                    }
                }
            }
            let exposed = sp.node_port.is_some() || !sp.external_ips.is_empty();
            if exposed {
                let ext = format!("ext-{id}");
                if external.is_empty() {
                    for ip in &sp.external_ips {
                        let key = format!("{ip} . {proto} . {}", sp.port);
                        if claimed.insert(key.clone()) {
                            no_endpoints.push(format!("{key} : goto reject-chain"));
                        }
                    }
                    if let Some(np) = sp.node_port {
                        no_endpoint_node_ports.push(format!("{proto} . {np} : goto reject-chain"));
                    }
                } else {
                    let masq = if sp.external_local {
                        // the client's address is kept; 127.0.0.1 still has to be rewritten
                        "ip saddr 127.0.0.0/8 jump mark-for-masquerade\n"
                    } else {
                        "jump mark-for-masquerade\n"
                    };
                    chains.insert(ext.clone(), format!("{masq}{}", pick(&external)));
                    for ip in &sp.external_ips {
                        let key = format!("{ip} . {proto} . {}", sp.port);
                        if claimed.insert(key.clone()) {
                            service_ips.push(format!("{key} : goto {ext}"));
                        }
                    }
                    if let Some(np) = sp.node_port {
                        node_ports.push(format!("{proto} . {np} : goto {ext}"));
                    }
                }
            }
        }

        let mut s = String::new();
        let table = format!("ip {TABLE}");
        if !self.synced {
            // whatever an earlier agent left goes, in the same transaction
            let _ = writeln!(s, "add table {table}\ndelete table {table}");
        }
        let _ = writeln!(s, "add table {table}");
        let base = [
            (
                "nat-prerouting",
                "type nat hook prerouting priority dstnat;",
                "jump services",
            ),
            (
                "nat-output",
                "type nat hook output priority -100;",
                "jump services",
            ),
            (
                "nat-postrouting",
                "type nat hook postrouting priority srcnat;",
                "jump masquerading",
            ),
            (
                "filter-input",
                "type filter hook input priority -110;",
                "ct state new jump nodeport-endpoints-check\nct state new jump service-endpoints-check",
            ),
            (
                "filter-forward",
                "type filter hook forward priority -110;",
                "ct state new jump service-endpoints-check",
            ),
            (
                "filter-output",
                "type filter hook output priority -110;",
                "ct state new jump service-endpoints-check\nct state new jump nodeport-endpoints-check",
            ),
        ];
        // first everything is declared (rules may only name what exists), then filled in
        for (name, hook, _) in &base {
            let _ = writeln!(s, "add chain {table} {name} {{ {hook} }}");
        }
        for (name, ty) in [
            (
                "service-ips",
                "ipv4_addr . inet_proto . inet_service : verdict",
            ),
            ("service-nodeports", "inet_proto . inet_service : verdict"),
            (
                "no-endpoint-services",
                "ipv4_addr . inet_proto . inet_service : verdict",
            ),
            (
                "no-endpoint-nodeports",
                "inet_proto . inet_service : verdict",
            ),
        ] {
            let _ = writeln!(s, "add map {table} {name} {{ type {ty}; }}");
            let _ = writeln!(s, "flush map {table} {name}");
        }
        let fixed = [
            (
                "services",
                "ip daddr . meta l4proto . th dport vmap @service-ips\nfib daddr type local meta l4proto . th dport vmap @service-nodeports".to_string(),
            ),
            (
                "service-endpoints-check",
                "ip daddr . meta l4proto . th dport vmap @no-endpoint-services".to_string(),
            ),
            (
                "nodeport-endpoints-check",
                "fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports"
                    .to_string(),
            ),
            ("reject-chain", "reject".to_string()),
            (
                "mark-for-masquerade",
                format!("meta mark set meta mark | {MASQ_MARK}"),
            ),
            (
                "masquerading",
                format!(
                    "meta mark & {MASQ_MARK} == 0 goto pod-egress\nmeta mark set meta mark ^ {MASQ_MARK}\nmasquerade fully-random"
                ),
            ),
            (
                // pods' own traffic leaving the node's pod network is masqueraded too
                "pod-egress",
                format!(
                    "ip saddr {cidr} ip daddr != @pod-networks oifname != \"{}\" masquerade",
                    self.bridge
                ),
            ),
        ];
        let mut networks: Vec<String> = std::iter::once(&self.pod_cidr)
            .chain(&self.pod_networks)
            .map(ToString::to_string)
            .collect();
        networks.sort();
        networks.dedup();
        let _ = writeln!(
            s,
            "add set {table} pod-networks {{ type ipv4_addr; flags interval; auto-merge; }}\nflush set {table} pod-networks\nadd element {table} pod-networks {{ {} }}",
            networks.join(", ")
        );
        for (name, _) in &fixed {
            let _ = writeln!(s, "add chain {table} {name}");
        }
        for name in &sets {
            let _ = writeln!(
                s,
                "add set {table} {name} {{ type ipv4_addr; flags dynamic,timeout; }}"
            );
        }
        // the chains of Services and endpoints are rewritten only when they changed
        let changed: Vec<(&String, &String)> = chains
            .iter()
            .filter(|(name, rules)| !self.synced || self.chains.get(*name) != Some(*rules))
            .collect();
        for (name, _) in &changed {
            let _ = writeln!(s, "add chain {table} {name}");
        }
        let fill = |s: &mut String, name: &str, rules: &str| {
            let _ = writeln!(s, "flush chain {table} {name}");
            for r in rules.lines() {
                let _ = writeln!(s, "add rule {table} {name} {r}");
            }
        };
        for (name, _, rules) in &base {
            fill(&mut s, name, rules);
        }
        for (name, rules) in &fixed {
            fill(&mut s, name, rules);
        }
        for (name, rules) in &changed {
            fill(&mut s, name, rules);
        }
        for (map, elements) in [
            ("service-ips", &service_ips),
            ("service-nodeports", &node_ports),
            ("no-endpoint-services", &no_endpoints),
            ("no-endpoint-nodeports", &no_endpoint_node_ports),
        ] {
            if !elements.is_empty() {
                let _ = writeln!(s, "add element {table} {map} {{ {} }}", elements.join(", "));
            }
        }
        // what is no longer wanted goes, after the maps stopped pointing at it; service chains
        // jump to endpoint chains, so they go first
        if self.synced {
            let gone: Vec<&String> = self
                .chains
                .keys()
                .filter(|c| !chains.contains_key(*c))
                .collect();
            for name in gone.iter().filter(|c| !c.starts_with("sep-")) {
                let _ = writeln!(s, "flush chain {table} {name}\ndelete chain {table} {name}");
            }
            for name in gone.iter().filter(|c| c.starts_with("sep-")) {
                let _ = writeln!(s, "flush chain {table} {name}\ndelete chain {table} {name}");
            }
            for name in self.sets.iter().filter(|x| !sets.contains(*x)) {
                let _ = writeln!(s, "delete set {table} {name}");
            }
        }
        (s, chains, sets)
    }
}

/// The set of clients an endpoint chain remembers for ClientIP affinity (the timeout is in
/// the name: a changed timeout makes a new set).
fn affinity_set(sep: &str, timeout: u32) -> String {
    format!("affinity{timeout}-{sep}")
}

/// A chain name part for a Service port: a short digest (names stay unique whatever the
/// characters) and the readable `namespace/name/port`.
fn chain_id(sp: &ServicePort) -> String {
    let key = format!("{}/{}", sp.name, sp.protocol.nft());
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let readable: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{h:08x}-{readable}")
}

/// The conntrack deletions a change of UDP endpoints needs, as kube-proxy makes them: UDP has
/// no connection to end, so a flow keeps the NAT (or the lack of it) of its first packet. Flows
/// to a port that had no endpoint were never translated, and flows to an endpoint that went
/// would go nowhere; both are forgotten so that their next packet is translated anew.
fn stale_udp_flows(
    before: &BTreeMap<String, (Vec<Ipv4Addr>, u16, Vec<Endpoint>)>,
    after: &BTreeMap<String, (Vec<Ipv4Addr>, u16, Vec<Endpoint>)>,
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (name, (addrs, port, endpoints)) in after {
        let old = before
            .get(name)
            .map(|(_, _, e)| e.as_slice())
            .unwrap_or(&[]);
        if old.is_empty() && !endpoints.is_empty() {
            for a in addrs {
                out.push(udp_flow(a, "--orig-port-dst", port.to_string()));
            }
        }
    }
    for (name, (addrs, _, endpoints)) in before {
        let now = after.get(name).map(|(_, _, e)| e.as_slice()).unwrap_or(&[]);
        for gone in endpoints
            .iter()
            .filter(|e| !now.iter().any(|n| n.ip == e.ip))
        {
            for a in addrs {
                out.push(udp_flow(a, "--dst-nat", gone.ip.to_string()));
            }
        }
    }
    out
}

/// conntrack's selection of the UDP flows to `addr` with `filter` `value`.
fn udp_flow(addr: &Ipv4Addr, filter: &str, value: String) -> Vec<String> {
    let head = ["-p", "udp", "--orig-dst"].map(String::from);
    head.into_iter()
        .chain([addr.to_string(), filter.to_string(), value])
        .collect()
}

/// Deletes conntrack entries (`conntrack -D ARGS`); without the conntrack tool, says so once.
fn forget_flows(args: &[String]) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let run = Command::new("conntrack")
        .arg("-D")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = run {
        WARNED.call_once(|| {
            tracing::warn!(error = %e, "cannot run conntrack (install conntrack): stale UDP flows to Services stay until they time out");
        });
    }
}

/// Runs `nft -f -` with `script`.
pub(crate) fn nft(script: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run nft (install nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Removes bosun's table, if there is one.
pub fn cleanup() -> io::Result<()> {
    nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            name: "default/web/http".into(),
            cluster_ips: vec![Ipv4Addr::new(10, 43, 0, 7)],
            external_ips: vec![],
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30080),
            endpoints,
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
        }
    }

    fn ep(last: u8, local: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 42, 0, last),
            port: 8080,
            local,
        }
    }

    fn proxy() -> Proxy {
        Proxy::new("10.42.0.0/24".parse().expect("cidr"), "bosun0")
    }

    #[test]
    fn endpoints_are_picked_at_random_and_dnatted() {
        let (text, chains, _) = proxy().render(&[web(vec![ep(2, true), ep(3, true)])]);
        assert!(
            text.starts_with("add table ip bosun\ndelete table ip bosun\n"),
            "{text}"
        );
        let svc = chains
            .iter()
            .find(|(k, _)| k.starts_with("svc-"))
            .expect("a service chain");
        assert!(svc.1.contains("numgen random mod 2 vmap"), "{}", svc.1);
        assert!(text.contains("meta l4proto tcp dnat to 10.42.0.2:8080"));
        assert!(text.contains("10.43.0.7 . tcp . 80 : goto svc-"));
        assert!(text.contains("tcp . 30080 : goto ext-"));
        assert!(!text.contains("reject-chain }"), "{text}");
    }

    #[test]
    fn a_service_without_endpoints_is_rejected() {
        let (text, chains, _) = proxy().render(&[web(vec![])]);
        assert!(
            text.contains("10.43.0.7 . tcp . 80 : goto reject-chain"),
            "{text}"
        );
        assert!(text.contains("tcp . 30080 : goto reject-chain"), "{text}");
        assert!(chains.is_empty());
    }

    #[test]
    fn local_policies_keep_to_local_endpoints() {
        let mut sp = web(vec![ep(2, true), ep(3, false)]);
        sp.external_local = true;
        let (_, chains, _) = proxy().render(&[sp.clone()]);
        let ext = chains
            .iter()
            .find(|(k, _)| k.starts_with("ext-"))
            .expect("ext chain")
            .1;
        assert!(ext.contains("mod 1 vmap"), "{ext}");
        assert!(!ext.starts_with("jump mark-for-masquerade"), "{ext}");
        sp.endpoints = vec![ep(3, false)];
        let (text, _, _) = proxy().render(&[sp]);
        assert!(text.contains("tcp . 30080 : goto reject-chain"), "{text}");
    }

    #[test]
    fn a_second_sync_rewrites_only_what_changed_and_removes_what_went() {
        let mut p = proxy();
        let (_, chains, sets) = p.render(&[web(vec![ep(2, true), ep(3, true)])]);
        p.chains = chains;
        p.sets = sets;
        p.synced = true;
        let (text, chains, _) = p.render(&[web(vec![ep(2, true)])]);
        assert!(!text.contains("delete table"), "{text}");
        assert!(text.contains("delete chain ip bosun sep-"), "{text}");
        assert!(
            !text.contains("add chain ip bosun sep-"),
            "unchanged endpoint chain rewritten: {text}"
        );
        assert_eq!(chains.keys().filter(|k| k.starts_with("sep-")).count(), 1);
    }

    #[test]
    fn client_ip_affinity_remembers_clients_per_endpoint() {
        let mut sp = web(vec![ep(2, true)]);
        sp.affinity_seconds = Some(10800);
        let (text, _, sets) = proxy().render(&[sp]);
        assert_eq!(sets.len(), 1);
        assert!(text.contains("flags dynamic,timeout; }"), "{text}");
        assert!(text.contains("update @affinity10800-sep-"), "{text}");
        assert!(text.contains("timeout 10800s }"), "{text}");
        assert!(text.contains("ip saddr @affinity10800-sep-"), "{text}");
    }

    #[test]
    fn udp_flows_are_forgotten_when_endpoints_come_or_go() {
        let entry = |eps: Vec<Endpoint>| {
            let mut m = BTreeMap::new();
            m.insert(
                "kube-system/dns/dns".to_string(),
                (vec![Ipv4Addr::new(10, 43, 0, 10)], 53, eps),
            );
            m
        };
        let none = entry(vec![]);
        let one = entry(vec![ep(2, true)]);
        let other = entry(vec![ep(3, true)]);
        assert!(stale_udp_flows(&one, &one).is_empty());
        let came = stale_udp_flows(&none, &one);
        assert_eq!(came.len(), 1);
        assert!(came[0].contains(&"--orig-port-dst".to_string()), "{came:?}");
        let moved = stale_udp_flows(&one, &other);
        assert_eq!(moved.len(), 1);
        assert!(moved[0].contains(&"10.42.0.2".to_string()), "{moved:?}");
    }
}
