//! The pod network of one node, as the `bridge` CNI plugin builds it: a Linux bridge holding the
//! gateway address of the node's pod CIDR, and for each pod a veth pair whose inside end is
//! `eth0` in the pod's network namespace, with the pod's address and a default route through the
//! gateway. Pods on the node reach each other across the bridge; the node reaches them directly.
//!
//! Links and addresses are set with iproute2's `ip` (batch mode, one process per side); the
//! inside of a pod is configured from a thread that has entered its network namespace.

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use crate::ipam::{Cidr, Ipam};

/// Why the pod network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command or file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// `ip` refused a change.
    #[error("ip {0}")]
    Ip(String),
}

/// The result type of pod network operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pod network of this node.
pub struct PodNetwork {
    bridge: String,
    cidr: Cidr,
    ipam: Ipam,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::Io(what.to_string(), e)
}

/// Runs `ip -batch -` with `commands`; with `force`, a failing command does not stop the rest.
pub(crate) fn ip_batch(commands: &str, force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("run ip (install iproute2)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.as_bytes())
            .map_err(io_err("write to ip"))?;
    }
    let out = child.wait_with_output().map_err(io_err("wait for ip"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Ip(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Whether the agent's network namespace has a link named `name`. It is read from the
/// namespace's own list (`/proc/self/net/dev`), not from /sys, which shows the links of
/// whichever namespace mounted it: an agent started in another network namespace (as the
/// tests' second nodes are) sees its own.
fn link_exists(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/net/dev").is_ok_and(|dev| {
        dev.lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(link, _)| link.trim() == name)
    })
}

/// The host end of a pod's veth pair: `veth` and a short, stable digest of the pod's uid
/// (interface names have at most 15 bytes).
pub fn host_veth(pod_uid: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in pod_uid.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

impl PodNetwork {
    /// The network on `bridge` for `cidr`, with allocations kept in `state_dir`.
    pub fn open(bridge: &str, cidr: Cidr, state_dir: &Path) -> Result<Self> {
        let ipam = Ipam::open(state_dir, cidr).map_err(io_err("open the address allocations"))?;
        Ok(Self {
            bridge: bridge.to_string(),
            cidr,
            ipam,
        })
    }

    /// The node's pod CIDR.
    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// Makes sure the bridge exists with the gateway address and that the node forwards packets.
    pub fn setup_node(&self) -> Result<()> {
        let b = &self.bridge;
        if !link_exists(b) {
            // Two agents racing to create it is fine: the second one's add fails, the rest holds.
            let _ = ip_batch(&format!("link add {b} type bridge\n"), false);
        }
        // A bridge takes the lowest address of its ports unless given one: it would change as
        // pods come and go, and pods' ARP caches would point at a MAC that is no longer the
        // gateway's. A fixed, locally administered address made from the gateway's IP stays.
        let [a, b2, c, d] = self.cidr.gateway().octets();
        ip_batch(
            &format!(
                "link set {b} address 0a:58:{a:02x}:{b2:02x}:{c:02x}:{d:02x}\naddr replace {}/{} dev {b}\nlink set {b} up\n",
                self.cidr.gateway(),
                self.cidr.prefix
            ),
            false,
        )?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(io_err("enable IPv4 forwarding"))?;
        Ok(())
    }

    /// Gives the pod whose network namespace is pinned at `netns` its address; returns it. Doing
    /// it again for a pod that has one returns the same address.
    pub fn attach(&self, pod_uid: &str, netns: &Path) -> Result<Ipv4Addr> {
        let ip = self
            .ipam
            .allocate(pod_uid)
            .map_err(io_err("allocate a pod address"))?;
        let veth = host_veth(pod_uid);
        if link_exists(&veth) {
            return Ok(ip);
        }
        let inside = format!(
            "link add eth0 type veth peer name {veth} netns {host}\n\
             addr add {ip}/{prefix} dev eth0\n\
             link set eth0 up\n\
             route add default via {gw}\n",
            host = std::process::id(),
            prefix = self.cidr.prefix,
            gw = self.cidr.gateway(),
        );
        in_netns(netns, move || ip_batch(&inside, false))?;
        // hairpin: a pod reaching itself through a Service address is DNATed back to itself,
        // and bridge netfilter sends that packet out of the port it came in on
        ip_batch(
            &format!(
                "link set {veth} master {} up\nlink set dev {veth} type bridge_slave hairpin on\n",
                self.bridge
            ),
            false,
        )?;
        Ok(ip)
    }

    /// The address the pod holds, if any.
    pub fn address(&self, pod_uid: &str) -> Option<Ipv4Addr> {
        self.ipam.lookup(pod_uid).ok().flatten()
    }

    /// Removes the pod's link and gives its address back.
    pub fn detach(&self, pod_uid: &str) -> Result<()> {
        let veth = host_veth(pod_uid);
        if link_exists(&veth) {
            // The link also goes away by itself with the pod's network namespace, possibly
            // while this runs: a link that is already gone is no error.
            let _ = ip_batch(&format!("link del {veth}\n"), true);
        }
        self.ipam
            .release(pod_uid)
            .map_err(io_err("release the pod address"))
    }
}

/// Connects to `port` on the loopback of the network namespace pinned at `netns`: the socket
/// is made inside the namespace and stays there, whichever thread uses it afterwards.
pub fn connect_in(
    netns: &Path,
    port: u16,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    let ns = File::open(netns)?;
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET)?;
        std::net::TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), timeout)
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Runs `work` on a fresh thread that has entered the network namespace pinned at `netns`; the
/// processes it starts are in that namespace too.
fn in_netns(netns: &Path, work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    let ns = File::open(netns).map_err(io_err(format!("open {}", netns.display())))?;
    let path: PathBuf = netns.to_path_buf();
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Io(format!("enter {}", path.display()), e.into()))?;
        work()
    })
    .join()
    .map_err(|_| Error::Ip("the namespace thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_differ() {
        let a = host_veth("0b5c1f6e-1c4b-4a55-9d6c-2d2f7a1f0a11");
        let b = host_veth("0b5c1f6e-1c4b-4a55-9d6c-2d2f7a1f0a12");
        assert!(a.len() <= 15);
        assert_ne!(a, b);
        assert_eq!(a, host_veth("0b5c1f6e-1c4b-4a55-9d6c-2d2f7a1f0a11"));
    }
}
