//! NetworkPolicy enforcement for a node's pods, in the kernel: one nftables table
//! `ip bosun-policy` with a forward hook (bridged traffic between pods passes it too, through
//! br_netfilter). Replies of allowed flows pass; a pod isolated for ingress accepts new flows
//! only from the peers and ports its policies allow, and a pod isolated for egress starts them
//! only towards those. Traffic from the node itself (probes) is never filtered, as upstream.
//! The table is small and stateless, so each sync replaces it whole, in one transaction.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;

use crate::proxy::Protocol;

/// The nftables table of the policies.
pub const TABLE: &str = "bosun-policy";

/// Where traffic may come from or go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A pod's address.
    Ip(Ipv4Addr),
    /// A CIDR less some others (an ipBlock).
    Block {
        /// The block, e.g. `10.0.0.0/8`.
        cidr: String,
        /// Blocks inside it that are not allowed.
        except: Vec<String>,
    },
}

/// A port (or range) of a protocol; no range means every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The protocol.
    pub protocol: Protocol,
    /// First and last port, if limited.
    pub range: Option<(u16, u16)>,
}

/// One allowing rule: from (or to) any of `peers` (every peer when `None`), on any of `ports`
/// (every port when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The peers.
    pub peers: Option<Vec<Peer>>,
    /// The ports.
    pub ports: Vec<Port>,
}

/// What the policies say of one pod of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPolicy {
    /// `namespace/name`, for chain names.
    pub pod: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The rules allowing traffic in; `None` when no policy isolates it for ingress.
    pub ingress: Option<Vec<Rule>>,
    /// The rules allowing traffic out; `None` when no policy isolates it for egress.
    pub egress: Option<Vec<Rule>>,
}

/// The `nft -f` script programming `pods`.
pub fn render(pods: &[PodPolicy]) -> String {
    let table = format!("ip {TABLE}");
    let mut s = format!("add table {table}\ndelete table {table}\nadd table {table}\n");
    let mut chains = String::new();
    let mut ingress_map = Vec::new();
    let mut egress_map = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        for (dir, rules, map, peer_field) in [
            ("ingress", &p.ingress, &mut ingress_map, "saddr"),
            ("egress", &p.egress, &mut egress_map, "daddr"),
        ] {
            let Some(rules) = rules else { continue };
            let chain = format!("{dir}-{i}-{}", sanitize(&p.pod));
            let _ = writeln!(chains, "add chain {table} {chain}");
            for rule in rules {
                for m in matches(rule, peer_field) {
                    let verdict = if m.is_empty() {
                        "return".to_string()
                    } else {
                        format!("{m} return")
                    };
                    let _ = writeln!(chains, "add rule {table} {chain} {verdict}");
                }
            }
            let _ = writeln!(chains, "add rule {table} {chain} drop");
            map.push(format!("{} : jump {chain}", p.ip));
        }
    }
    let _ = writeln!(
        s,
        "add chain {table} forward {{ type filter hook forward priority 10; policy accept; }}"
    );
    s.push_str(&chains);
    let _ = writeln!(
        s,
        "add rule {table} forward ct state established,related accept"
    );
    if !ingress_map.is_empty() {
        let _ = writeln!(
            s,
            "add rule {table} forward ip daddr vmap {{ {} }}",
            ingress_map.join(", ")
        );
    }
    if !egress_map.is_empty() {
        let _ = writeln!(
            s,
            "add rule {table} forward ip saddr vmap {{ {} }}",
            egress_map.join(", ")
        );
    }
    s
}

/// The match expressions of a rule, one line each (peers times ports).
fn matches(rule: &Rule, field: &str) -> Vec<String> {
    let peers: Vec<String> = match &rule.peers {
        None => vec![String::new()],
        Some(peers) => peers
            .iter()
            .map(|p| match p {
                Peer::Ip(ip) => format!("ip {field} {ip} "),
                Peer::Block { cidr, except } if except.is_empty() => {
                    format!("ip {field} {cidr} ")
                }
                Peer::Block { cidr, except } => {
                    format!(
                        "ip {field} {cidr} ip {field} != {{ {} }} ",
                        except.join(", ")
                    )
                }
            })
            .collect(),
    };
    let ports: Vec<String> = if rule.ports.is_empty() {
        vec![String::new()]
    } else {
        rule.ports
            .iter()
            .map(|p| {
                let proto = match p.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                    Protocol::Sctp => "sctp",
                };
                match p.range {
                    None => format!("meta l4proto {proto} "),
                    Some((a, b)) if a == b => format!("{proto} dport {a} "),
                    Some((a, b)) => format!("{proto} dport {a}-{b} "),
                }
            })
            .collect()
    };
    let mut out = Vec::new();
    for peer in &peers {
        for port in &ports {
            out.push(format!("{peer}{port}").trim_end().to_string());
        }
    }
    out
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '/' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Programs the kernel for `pods`.
pub fn apply(pods: &[PodPolicy]) -> io::Result<()> {
    crate::proxy::nft(&render(pods))
}

/// Removes the policy table, if there is one.
pub fn cleanup() -> io::Result<()> {
    crate::proxy::nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_pods_accept_only_allowed_peers_and_ports() {
        let text = render(&[PodPolicy {
            pod: "shop/db".into(),
            ip: Ipv4Addr::new(10, 42, 0, 5),
            ingress: Some(vec![Rule {
                peers: Some(vec![
                    Peer::Ip(Ipv4Addr::new(10, 42, 0, 7)),
                    Peer::Block {
                        cidr: "192.168.0.0/16".into(),
                        except: vec!["192.168.1.0/24".into()],
                    },
                ]),
                ports: vec![Port {
                    protocol: Protocol::Tcp,
                    range: Some((5432, 5432)),
                }],
            }]),
            egress: None,
        }]);
        assert!(
            text.contains("ingress-0-shop/db ip saddr 10.42.0.7 tcp dport 5432 return"),
            "{text}"
        );
        assert!(
            text.contains(
                "ip saddr 192.168.0.0/16 ip saddr != { 192.168.1.0/24 } tcp dport 5432 return"
            ),
            "{text}"
        );
        assert!(
            text.contains("add rule ip bosun-policy ingress-0-shop/db drop"),
            "{text}"
        );
        assert!(
            text.contains("ip daddr vmap { 10.42.0.5 : jump ingress-0-shop/db }"),
            "{text}"
        );
        assert!(!text.contains("saddr vmap"), "no egress isolation: {text}");
    }

    #[test]
    fn an_empty_rule_list_denies_and_an_empty_rule_allows_all() {
        let deny = render(&[PodPolicy {
            pod: "a/b".into(),
            ip: Ipv4Addr::new(10, 42, 0, 9),
            ingress: None,
            egress: Some(vec![]),
        }]);
        assert!(
            deny.contains("add rule ip bosun-policy egress-0-a/b drop"),
            "{deny}"
        );
        assert!(!deny.contains("return"), "{deny}");
        let allow = render(&[PodPolicy {
            pod: "a/b".into(),
            ip: Ipv4Addr::new(10, 42, 0, 9),
            ingress: Some(vec![Rule {
                peers: None,
                ports: vec![],
            }]),
            egress: None,
        }]);
        assert!(
            allow.contains("add rule ip bosun-policy ingress-0-a/b return"),
            "{allow}"
        );
    }
}
