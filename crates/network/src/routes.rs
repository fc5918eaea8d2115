//! Routes to the pods of other nodes, as flannel's host-gw backend keeps them: each other
//! node's pod CIDR through that node's address, which must be on a link this node shares
//! (machines of one network). The routes carry a protocol number of their own, so that those
//! of nodes that are gone are found and removed, and no one else's route is touched.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::ipam::Cidr;
use crate::pod::{Error, Result, ip_batch};

/// The routing protocol number bosun's routes are marked with (`ip route show proto 211`).
pub const PROTO: u8 = 211;

/// A route to another node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    /// The node's pod CIDR.
    pub cidr: Cidr,
    /// The node's address.
    pub via: Ipv4Addr,
}

/// The destinations of the routes bosun has now.
fn current() -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "show", "proto", &PROTO.to_string()])
        .output()
        .map_err(|e| Error::Io("run ip (install iproute2)".into(), e))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// The `ip -batch` commands that turn routes to `current` destinations into `wanted`.
fn commands(current: &[String], wanted: &[PeerRoute]) -> String {
    let mut out = String::new();
    for dst in current {
        if !wanted.iter().any(|r| r.cidr.to_string() == *dst) {
            out.push_str(&format!("route del {dst} proto {PROTO}\n"));
        }
    }
    for r in wanted {
        out.push_str(&format!(
            "route replace {} via {} proto {PROTO}\n",
            r.cidr, r.via
        ));
    }
    out
}

/// Makes the node's routes to other nodes' pods exactly `wanted`. A route that cannot be made
/// (its node's address is not on a shared link) does not stop the others; the error names it.
pub fn sync(wanted: &[PeerRoute]) -> Result<()> {
    let script = commands(&current()?, wanted);
    if script.is_empty() {
        return Ok(());
    }
    ip_batch(&script, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_gone_nodes_go_and_the_others_are_replaced() {
        let route = |cidr: &str, via: [u8; 4]| PeerRoute {
            cidr: cidr.parse().expect("cidr"),
            via: via.into(),
        };
        let script = commands(
            &["10.42.1.0/24".into(), "10.42.2.0/24".into()],
            &[
                route("10.42.2.0/24", [192, 168, 1, 3]),
                route("10.42.3.0/24", [192, 168, 1, 4]),
            ],
        );
        assert_eq!(
            script,
            "route del 10.42.1.0/24 proto 211\n\
             route replace 10.42.2.0/24 via 192.168.1.3 proto 211\n\
             route replace 10.42.3.0/24 via 192.168.1.4 proto 211\n"
        );
        assert_eq!(commands(&[], &[]), "");
    }
}
