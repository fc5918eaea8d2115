//! The node agent (kubelet) of bosun. It registers this machine as a Node and keeps its Lease
//! alive ([`registration`]), watches the pods bound to it, and runs each through a pod worker
//! ([`worker`]) that builds the pod's sandbox, network and volumes, starts its init containers
//! and containers in order with the runtime, restarts them by the pod's restart policy with
//! kubelet's back-off ([`backoff`]), stops them gracefully when the pod is deleted, and reports
//! the pod's status ([`status`]) and events ([`events`]). Containers are created from the pod
//! spec as Kubernetes defines it ([`process`]) from images pulled as their policy says
//! ([`images`]); [`handler`] runs their lifecycle hooks. The node API ([`server`]) serves their logs
//! ([`logs`]), runs commands in them ([`exec`]), attaches to them ([`attach`]) and forwards ports to them ([`portforward`],
//! over [`spdy`]) for the API server, and what they use ([`stats`]); under memory pressure
//! it evicts pods ([`eviction`]). [`proxy`] keeps the node's Service rules in step with
//! Services and their endpoints, [`policy`] its pods' NetworkPolicy rules with the policies.
//!
//! On a machine other than the server's, [`join`] gets the agent its credentials from a join
//! token.
//!
//! Containers outlive the agent: at start it reads back the containers the runtime has and
//! carries on with them, without restarting any.

pub mod attach;
pub mod backoff;
pub mod cache;
pub mod events;
pub mod eviction;
pub mod exec;
pub mod grpc;
pub mod handler;
pub mod images;
pub mod join;
pub mod logs;
pub mod pods;
pub mod policy;
pub mod portforward;
pub mod probes;
pub mod process;
pub mod projection;
pub mod proxy;
pub mod registration;
pub mod resolv;
pub mod resources;
pub mod security;
pub mod server;
pub mod spdy;
pub mod stats;
pub mod status;
pub mod tokens;
pub mod volumes;
pub mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use network::ipam::Cidr;
use network::pod::PodNetwork;
use runtime::container::Runtime;
use runtime::images::ImageStore;

/// The kubelet version the node reports.
pub const KUBELET_VERSION: &str = "v1.33.0+bosun";

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Node's name.
    pub node_name: String,
    /// The node's data dir: images in `images/`, everything else of the agent in `agent/`.
    pub data_dir: PathBuf,
    /// The pod CIDR of this node.
    pub pod_cidr: Cidr,
    /// The name of the node's pod bridge.
    pub bridge: String,
    /// The program that supervises containers (`bosun`, run as `bosun shim`).
    pub shim: PathBuf,
    /// Whether this node runs the control plane (labelled as such).
    pub control_plane: bool,
    /// Where the node API listens.
    pub api_addr: SocketAddr,
    /// Registries (`host[:port]`) pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The cluster DNS Service's address, which pods resolve names through.
    pub cluster_dns: std::net::Ipv4Addr,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// The hard eviction threshold of available memory, in bytes (`--eviction-hard`).
    pub eviction_memory_available: u64,
    /// The node's address, when not the one of the default route's interface.
    pub node_ip: Option<std::net::Ipv4Addr>,
}

/// The agent: what every part of it shares.
pub struct Agent {
    /// Its configuration.
    pub config: Config,
    /// The API client, authenticated as `system:node:<name>`.
    pub client: kube::Client,
    /// The node's images.
    pub images: ImageStore,
    /// The node's containers.
    pub runtime: Runtime,
    /// The node's pod network.
    pub network: PodNetwork,
    /// The event recorder.
    pub events: events::Recorder,
    /// The node's address.
    pub host_ip: String,
    /// Restart back-off of crashing containers, by pod uid and container name.
    pub backoff: Mutex<backoff::Backoff>,
    /// The uids of the pods on this node, by namespace and name.
    pub pods: Mutex<HashMap<(String, String), String>>,
    /// Held while an image is pulled: pulls run one at a time.
    pub pulls: tokio::sync::Mutex<()>,
    /// The Services, ConfigMaps and Secrets its pods consume.
    pub caches: cache::Caches,
    /// What the node, its pods and containers use.
    pub stats: stats::Stats,
    /// The pods evicted for node pressure, by uid, with why.
    pub evictions: Mutex<HashMap<String, String>>,
}

impl Agent {
    /// Opens the node's stores and network.
    pub fn new(config: Config, client: kube::Client) -> anyhow::Result<Arc<Self>> {
        let root = config.data_dir.join("agent");
        let images = ImageStore::open(&config.data_dir.join("images"))?;
        let runtime = Runtime::open(&root.join("containers"), &root.join("run"), &config.shim)?;
        let network = PodNetwork::open(&config.bridge, config.pod_cidr, &root.join("ipam"))?;
        network.setup_node()?;
        let events = events::Recorder::new(client.clone(), &config.node_name);
        Ok(Arc::new(Self {
            caches: cache::Caches::default(),
            host_ip: config
                .node_ip
                .map_or_else(registration::internal_ip, |ip| ip.to_string()),
            config,
            client,
            images,
            runtime,
            network,
            events,
            backoff: Mutex::new(backoff::Backoff::default()),
            pods: Mutex::new(HashMap::new()),
            pulls: tokio::sync::Mutex::new(()),
            stats: stats::Stats::default(),
            evictions: Mutex::new(HashMap::new()),
        }))
    }

    /// Where the agent keeps its files.
    pub fn root(&self) -> PathBuf {
        self.config.data_dir.join("agent")
    }

    /// Registers the node and runs it, serving the node API with `tls`, until an unrecoverable
    /// error.
    pub async fn run(self: Arc<Self>, tls: server::Tls) -> anyhow::Result<()> {
        let mut attempt = 0;
        while let Err(e) = self.register().await {
            attempt += 1;
            if attempt >= 50 {
                return Err(e.context("registering the node"));
            }
            tracing::warn!(error = %e, "registering the node failed; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let beat = self.clone();
        let api = server::serve(self.clone(), self.config.api_addr, tls);
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let dns = proxy::NodeDns {
            addr: std::net::SocketAddr::new(self.config.pod_cidr.gateway().into(), 53),
            server: Arc::new(network::dns::Dns::new(
                &self.config.cluster_domain,
                network::dns::Dns::upstreams_from(&host_resolv),
            )),
        };
        let writers = self
            .caches
            .take_writers()
            .ok_or_else(|| anyhow::anyhow!("the agent runs once"))?;
        let proxy = proxy::run(
            self.client.clone(),
            (self.caches.services.clone(), writers.services),
            self.config.node_name.clone(),
            network::proxy::Proxy::new(self.config.pod_cidr, &self.config.bridge),
            dns,
        );
        tokio::select! {
            _ = beat.heartbeat() => anyhow::bail!("the node heartbeat stopped"),
            r = pods::run(self.clone()) => r,
            r = proxy => r.map_err(|e| e.context("the service proxy stopped")),
            r = policy::run(self.client.clone(), self.config.node_name.clone()) => {
                r.map_err(|e| e.context("the network policy enforcement stopped"))
            }
            r = api => r,
            () = stats::run(self.clone()) => anyhow::bail!("the measuring of usage stopped"),
            () = eviction::run(self.clone()) => anyhow::bail!("the eviction manager stopped"),
        }
    }
}
