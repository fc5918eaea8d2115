//! Service networking figures, on this machine's kernel (root needed):
//!
//! - cluster DNS queries per second (the node's DNS server over UDP, 1,000 Services known);
//! - time from an endpoint change to the rules changing, with 1,000 Services programmed (one
//!   `Proxy::sync` after one endpoint moved; the watch that delivers the change adds
//!   milliseconds in the cluster);
//! - TCP connections per second to a server in a pod-like network namespace, directly at its
//!   address and through a ClusterIP (DNAT by the proxy's rules).
//!
//! Usage: `sudo net-bench [SECONDS]` (default 5 per throughput figure).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use network::dns::{Dns, ServiceEntry, Zone};
use network::proxy::{Endpoint, Protocol, Proxy, ServicePort};

const BRIDGE: &str = "bosunbench0";
const CIDR: &str = "10.97.0.0/24";
const POD_IP: &str = "10.97.0.2";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 250, 1);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    dns_queries(Duration::from_secs(seconds)).await?;
    let mut proxy = Proxy::new(CIDR.parse().map_err(anyhow::Error::msg)?, BRIDGE);
    Proxy::prepare_node()?;
    rule_latency(&mut proxy)?;
    let result = connections(&mut proxy, Duration::from_secs(seconds)).await;
    teardown();
    network::proxy::cleanup()?;
    result
}

fn services(n: usize, moved: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 100, 0)) + i as u32);
            let shift = if i == 0 { moved as u32 } else { 0 };
            ServicePort {
                name: format!("bench/svc-{i}/http"),
                cluster_ips: vec![ip],
                external_ips: vec![],
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: (0..2)
                    .map(|k| Endpoint {
                        ip: Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 96, 0, 0)) + (i * 2 + k) as u32 + shift,
                        ),
                        port: 8080,
                        local: true,
                    })
                    .collect(),
                affinity_seconds: None,
                external_local: false,
                internal_local: false,
            }
        })
        .collect()
}

fn rule_latency(proxy: &mut Proxy) -> anyhow::Result<()> {
    let first = Instant::now();
    proxy.sync(&services(1000, 0))?;
    println!(
        "proxy: first sync of 1000 services (2 endpoints each): {} ms",
        first.elapsed().as_millis()
    );
    let mut times = Vec::new();
    for round in 1..=100 {
        let t = Instant::now();
        proxy.sync(&services(1000, round % 7 + 1))?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "proxy: endpoint change to rules changed, 1000 services: p50 {:.1} ms, p99 {:.1} ms (target p99 <= 200 ms)",
        times[49].as_secs_f64() * 1000.0,
        times[98].as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn dns_queries(duration: Duration) -> anyhow::Result<()> {
    let dns = Arc::new(Dns::new("cluster.local", vec![]));
    let mut zone = Zone::default();
    for i in 0..1000u32 {
        zone.services.insert(
            ("bench".into(), format!("svc-{i}")),
            ServiceEntry {
                cluster_ip: Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 100, 0)) + i)),
                ports: vec![("http".into(), "tcp".into(), 80)],
                ..Default::default()
            },
        );
    }
    dns.set_zone(zone);
    let port = {
        let l = std::net::UdpSocket::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    tokio::spawn(dns.clone().serve(addr));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut clients = Vec::new();
    for c in 0..8u32 {
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(addr).await?;
            let mut buf = [0u8; 512];
            let mut i = c;
            while Instant::now() < deadline {
                let query = query(
                    &format!("svc-{}.bench.svc.cluster.local.", i % 1000),
                    i as u16,
                );
                sock.send(&query).await?;
                if tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf))
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i = i.wrapping_add(8);
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    println!(
        "dns: {:.0} queries/s over UDP, 8 clients, 1000 services (target >= 20000/s)",
        done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
    );
    Ok(())
}

/// A DNS query for an A record, in wire format.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn sh(cmd: &str) -> anyhow::Result<()> {
    let status = Command::new("sh").arg("-c").arg(cmd).status()?;
    anyhow::ensure!(status.success(), "{cmd} failed");
    Ok(())
}

fn teardown() {
    let _ = Command::new("sh")
        .stderr(std::process::Stdio::null())
        .arg("-c")
        .arg(format!(
            "ip netns pids bosunbench | xargs -r kill; ip netns del bosunbench; ip link del {BRIDGE}"
        ))
        .status();
}

/// Connections per second from the node to a TCP server in a network namespace on a bridge,
/// straight to its address and through a ClusterIP.
async fn connections(proxy: &mut Proxy, duration: Duration) -> anyhow::Result<()> {
    teardown();
    sh(&format!(
        "ip link add {BRIDGE} type bridge && ip addr add 10.97.0.1/24 dev {BRIDGE} && ip link set {BRIDGE} up && \
         ip netns add bosunbench && ip link add vethbench type veth peer name eth0 netns bosunbench && \
         ip link set vethbench master {BRIDGE} up && \
         ip -n bosunbench addr add {POD_IP}/24 dev eth0 && ip -n bosunbench link set eth0 up && \
         ip -n bosunbench link set lo up && ip -n bosunbench route add default via 10.97.0.1"
    ))?;
    // the server: accepts and closes, as fast as it can, inside the namespace
    let server = std::thread::spawn(|| -> anyhow::Result<()> {
        let ns = std::fs::File::open("/run/netns/bosunbench")?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let listener = std::net::TcpListener::bind(format!("{POD_IP}:8080"))?;
        for conn in listener.incoming() {
            drop(conn);
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(200));
    anyhow::ensure!(
        !server.is_finished(),
        "the server in the namespace did not start"
    );
    let mut svc = services(1, 0);
    svc[0].cluster_ips = vec![CLUSTER_IP];
    svc[0].endpoints = vec![Endpoint {
        ip: POD_IP.parse()?,
        port: 8080,
        local: true,
    }];
    proxy.sync(&svc)?;
    // alternating one-second rounds, so that the machine's noise falls on both alike
    let (mut direct, mut cluster) = (0.0, 0.0);
    let rounds = duration.as_secs().max(1);
    for _ in 0..rounds {
        direct += connect_rate(format!("{POD_IP}:8080").parse()?, Duration::from_secs(1)).await;
        cluster += connect_rate(
            SocketAddr::new(CLUSTER_IP.into(), 80),
            Duration::from_secs(1),
        )
        .await;
    }
    let (direct, cluster) = (direct / rounds as f64, cluster / rounds as f64);
    println!(
        "connections/s: direct to the pod {direct:.0}, through the ClusterIP {cluster:.0} ({:.0}% of direct; target >= 90%)",
        cluster / direct * 100.0
    );
    Ok(())
}

async fn connect_rate(addr: SocketAddr, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    let _ = s.set_zero_linger();
                    drop(s);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
}
