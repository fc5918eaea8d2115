//! The Node object of this machine: registered at start with its capacity, addresses, system
//! info, conditions and pod CIDR, kept current by periodic status updates, and kept alive by a
//! Lease in `kube-node-lease` renewed every 10 seconds, as kubelet does.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::Agent;

/// How long a Lease is held without renewal.
const LEASE_SECONDS: i32 = 40;
/// How often the Lease is renewed.
const RENEW: Duration = Duration::from_secs(10);
/// How often the node status is reported when nothing changed.
const REPORT: Duration = Duration::from_secs(60);

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn os_image() -> String {
    read("/etc/os-release")
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Allocatable memory: capacity less the default hard eviction threshold (100Mi).
fn allocatable_memory(capacity: u64) -> u64 {
    capacity.saturating_sub(100 << 20)
}

/// The node's allocatable cpu (millicores) and memory (bytes), read once.
pub(crate) fn allocatable_cpu_memory() -> (i64, i64) {
    static ALLOCATABLE: std::sync::OnceLock<(i64, i64)> = std::sync::OnceLock::new();
    *ALLOCATABLE.get_or_init(|| {
        let memory = allocatable_memory(memory_bytes());
        (cpus() as i64 * 1000, memory as i64)
    })
}

pub(crate) fn memory_bytes() -> u64 {
    read("/proc/meminfo")
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0)
        * 1024
}

/// What the node has left, against kubelet's hard eviction thresholds (memory's from
/// `--eviction-hard`, `nodefs.available<10%`, `pid.available<10%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// Memory available, in bytes: as kubelet's signal, the capacity less the working set of
    /// the whole machine's cgroup.
    pub memory_available: u64,
    /// The share of the data dir's filesystem still free, 0 to 1.
    pub disk_free: f64,
    /// The share of process ids still free, 0 to 1.
    pub pids_free: f64,
}

impl Pressure {
    /// Reads the node's figures now.
    pub fn now(data_dir: &std::path::Path) -> Self {
        // a pure cgroup v2 machine has no usage at its root: the kernel's estimate stands in
        let memory_available = runtime::cgroups::usage("/")
            .map(|u| memory_bytes().saturating_sub(u.working_set_bytes))
            .or_else(|| {
                read("/proc/meminfo")?.lines().find_map(|l| {
                    l.strip_prefix("MemAvailable:")?
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .map(|kb| kb * 1024)
                })
            })
            .unwrap_or(u64::MAX);
        let disk_free = nix::sys::statvfs::statvfs(data_dir)
            .ok()
            .filter(|s| s.blocks() > 0)
            .map(|s| s.blocks_available() as f64 / s.blocks() as f64)
            .unwrap_or(1.0);
        let pid_max: f64 = read("/proc/sys/kernel/pid_max")
            .and_then(|v| v.parse().ok())
            .unwrap_or(32768.0);
        let tasks: f64 = read("/proc/loadavg")
            .and_then(|l| l.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
            .unwrap_or(0.0);
        Self {
            memory_available,
            disk_free,
            pids_free: 1.0 - tasks / pid_max,
        }
    }
}

/// Carries over the lastTransitionTime of each condition whose status is the same as before.
pub fn keep_transition_times(now: Option<&mut Vec<NodeCondition>>, before: &[NodeCondition]) {
    for c in now.into_iter().flatten() {
        if let Some(old) = before
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// The node's pressure conditions and Ready, as kubelet words them; memory is short below
/// `memory_threshold` bytes.
pub fn pressure_conditions(p: &Pressure, memory_threshold: u64) -> Vec<NodeCondition> {
    let memory = p.memory_available < memory_threshold;
    let disk = p.disk_free < 0.10;
    let pids = p.pids_free < 0.10;
    vec![
        if memory {
            node_condition(
                "MemoryPressure",
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            node_condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if disk {
            node_condition(
                "DiskPressure",
                "True",
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            node_condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if pids {
            node_condition(
                "PIDPressure",
                "True",
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            node_condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
        node_condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
}

fn disk_bytes(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0)
}

/// The machine's address for the cluster: the IPv4 address of its default route's interface,
/// else its first global IPv4 address, else loopback (a machine alone, without a network).
pub fn internal_ip() -> String {
    let first_inet = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("ip").args(args).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .map(String::from)
    };
    let default_iface = read("/proc/net/route").and_then(|route| {
        route.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
        })
    });
    default_iface
        .and_then(|iface| first_inet(&["-4", "-o", "addr", "show", "dev", &iface]))
        .or_else(|| first_inet(&["-4", "-o", "addr", "show", "scope", "global"]))
        .unwrap_or_else(|| "127.0.0.1".into())
}

fn quantity(s: impl ToString) -> Quantity {
    Quantity(s.to_string())
}

fn node_condition(kind: &str, status: &str, reason: &str, message: &str) -> NodeCondition {
    let now = crate::status::time(Utc::now());
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

impl Agent {
    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (
                "kubernetes.io/hostname".to_string(),
                self.config.node_name.clone(),
            ),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "kubernetes.io/arch".to_string(),
                std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
            ),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "beta.kubernetes.io/arch".to_string(),
                std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
            ),
        ]);
        if self.config.control_plane {
            labels.insert(
                "node-role.kubernetes.io/control-plane".into(),
                "true".into(),
            );
        }
        labels
    }

    /// The node's status as this machine is now.
    pub fn node_status(&self) -> NodeStatus {
        let cpus = cpus();
        let mem = memory_bytes();
        let disk = disk_bytes(&self.config.data_dir);
        let capacity = BTreeMap::from([
            ("cpu".to_string(), quantity(cpus)),
            ("memory".to_string(), quantity(format!("{}Ki", mem / 1024))),
            ("pods".to_string(), quantity(110)),
            (
                "ephemeral-storage".to_string(),
                quantity(format!("{}Ki", disk / 1024)),
            ),
            ("hugepages-2Mi".to_string(), quantity(0)),
            ("hugepages-1Gi".to_string(), quantity(0)),
        ]);
        // Allocatable is capacity less the default hard eviction thresholds.
        let mut allocatable = capacity.clone();
        allocatable.insert(
            "memory".into(),
            quantity(format!("{}Ki", allocatable_memory(mem) / 1024)),
        );
        allocatable.insert("ephemeral-storage".into(), quantity(disk / 10 * 9));
        let mut addresses = vec![NodeAddress {
            type_: "InternalIP".into(),
            address: self.host_ip.clone(),
        }];
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: self.config.node_name.clone(),
        });
        let machine_id = read("/etc/machine-id").unwrap_or_default();
        let images = self
            .images
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|i| {
                let mut names: Vec<String> = i.repo_digest().into_iter().collect();
                names.push(i.reference.clone());
                ContainerImage {
                    names: Some(names),
                    size_bytes: Some(i.size as i64),
                }
            })
            .collect();
        NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            addresses: Some(addresses),
            conditions: Some(pressure_conditions(
                &Pressure::now(&self.config.data_dir),
                self.config.eviction_memory_available,
            )),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.config.api_addr.port()),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
                boot_id: read("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
                container_runtime_version: format!("bosun://{}", env!("CARGO_PKG_VERSION")),
                kernel_version: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
                kube_proxy_version: String::new(),
                kubelet_version: crate::KUBELET_VERSION.into(),
                machine_id: machine_id.clone(),
                operating_system: "linux".into(),
                os_image: os_image(),
                system_uuid: read("/sys/class/dmi/id/product_uuid").unwrap_or(machine_id),
                swap: None,
            }),
            images: Some(images),
            ..Default::default()
        }
    }

    /// Creates the Node, or brings an existing one up to date.
    pub async fn register(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = &self.config.node_name;
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(self.labels()),
                annotations: Some(BTreeMap::from([(
                    "node.alpha.kubernetes.io/ttl".to_string(),
                    "0".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(self.network.cidr().to_string()),
                pod_cidrs: Some(vec![self.network.cidr().to_string()]),
                ..Default::default()
            }),
            status: None,
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let patch = serde_json::json!({
                    "metadata": {"labels": self.labels()},
                    "spec": {"podCIDR": self.network.cidr().to_string(), "podCIDRs": [self.network.cidr().to_string()]},
                });
                nodes
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.report_status().await
    }

    /// Writes the node's status.
    pub async fn report_status(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut status = self.node_status();
        // A condition whose status did not change keeps the time it last changed. (The Node
        // is read whole: a node may get `nodes`, not `nodes/status`, as upstream's rules say.)
        if let Ok(current) = nodes.get(&self.config.node_name).await {
            let before = current
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default();
            keep_transition_times(status.conditions.as_mut(), &before);
        }
        let patch = serde_json::json!({ "status": status });
        nodes
            .patch_status(
                &self.config.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    async fn renew_lease(&self, node_uid: &str) -> anyhow::Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let name = &self.config.node_name;
        let spec = LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(crate::status::timestamp(Utc::now()))),
            ..Default::default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("kube-node-lease".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.clone(),
                    uid: node_uid.to_string(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(spec.clone()),
        };
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let patch = serde_json::json!({"spec": spec});
                leases
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Renews the Lease every 10 s and reports the status every minute, for as long as the
    /// agent runs; a failed round is retried at the next.
    pub async fn heartbeat(self: std::sync::Arc<Self>) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut since_report = Duration::ZERO;
        loop {
            match nodes.get(&self.config.node_name).await {
                Ok(node) => {
                    // The node lifecycle controller marked the node Unknown while this agent
                    // was silent: say how it is now rather than at the next report.
                    let written_off = node
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                        .is_some_and(|c| c.status == "Unknown");
                    if written_off {
                        since_report = REPORT;
                    }
                    let uid = node.metadata.uid.unwrap_or_default();
                    if let Err(e) = self.renew_lease(&uid).await {
                        tracing::warn!(error = %e, "renewing the node lease failed");
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    // Someone deleted the Node: register it again, as kubelet does.
                    if let Err(e) = self.register().await {
                        tracing::warn!(error = %e, "registering the node again failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the node failed"),
            }
            if since_report >= REPORT {
                since_report = Duration::ZERO;
                let agent = self.clone();
                let freed = tokio::task::spawn_blocking(move || agent.collect_images()).await;
                if let Ok(Err(e)) = freed {
                    tracing::warn!(error = %e, "image garbage collection failed");
                }
                if let Err(e) = self.report_status().await {
                    tracing::warn!(error = %e, "reporting the node status failed");
                }
            }
            tokio::time::sleep(RENEW).await;
            since_report += RENEW;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_kubelets_hard_eviction_thresholds() {
        let fine = Pressure {
            memory_available: 1 << 30,
            disk_free: 0.5,
            pids_free: 0.9,
        };
        let status = |p: &Pressure, kind: &str| {
            pressure_conditions(p, 100 << 20)
                .into_iter()
                .find(|c| c.type_ == kind)
                .map(|c| c.status)
                .unwrap_or_default()
        };
        assert_eq!(status(&fine, "MemoryPressure"), "False");
        assert_eq!(status(&fine, "DiskPressure"), "False");
        let low = Pressure {
            memory_available: 50 << 20,
            disk_free: 0.05,
            pids_free: 0.05,
        };
        assert_eq!(status(&low, "MemoryPressure"), "True");
        assert_eq!(status(&low, "DiskPressure"), "True");
        assert_eq!(status(&low, "PIDPressure"), "True");
        assert_eq!(status(&low, "Ready"), "True");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let fine = Pressure {
            memory_available: 1 << 30,
            disk_free: 0.5,
            pids_free: 0.9,
        };
        let mut before = pressure_conditions(&fine, 100 << 20);
        let long_ago = crate::status::time(Utc::now() - chrono::Duration::hours(1));
        for c in &mut before {
            c.last_transition_time = Some(long_ago.clone());
        }
        let mut now = pressure_conditions(
            &Pressure {
                disk_free: 0.01,
                ..fine
            },
            100 << 20,
        );
        keep_transition_times(Some(&mut now), &before);
        let time_of = |kind: &str| {
            now.iter()
                .find(|c| c.type_ == kind)
                .and_then(|c| c.last_transition_time.clone())
        };
        assert_eq!(time_of("Ready"), Some(long_ago.clone()));
        assert_ne!(
            time_of("DiskPressure"),
            Some(long_ago),
            "it changed to True just now"
        );
    }
}
