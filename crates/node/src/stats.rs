//! What the node, its pods and their containers use, measured from their cgroups every ten
//! seconds (as kubelet's cadvisor does), with CPU as a rate over the last interval. The node
//! API serves it as kubelet's Summary API (`/stats/summary`, which the API server's resource
//! metrics read for `kubectl top` and autoscaling) and as the resource metrics endpoint
//! (`/metrics/resource`, Prometheus text).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use runtime::cgroups::{self, Usage};
use runtime::container::{Container, State};
use serde_json::{Value, json};

use crate::Agent;
use crate::worker::label as labels;

/// How often usage is measured.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One measurement of a cgroup, with the CPU rate since the one before.
#[derive(Debug, Clone)]
struct Measured {
    at: Instant,
    time: String,
    usage: Usage,
    nano_cores: Option<u64>,
}

impl Measured {
    /// Measures `cgroup`, working out the CPU rate from `before`.
    fn take(cgroup: &str, before: Option<&Measured>) -> Option<Self> {
        let usage = cgroups::usage(cgroup)?;
        let at = Instant::now();
        let nano_cores = before.and_then(|b| {
            let spent = usage.cpu_nanoseconds.checked_sub(b.usage.cpu_nanoseconds)?;
            let elapsed = at.duration_since(b.at).as_nanos();
            (elapsed > 0).then(|| (spent as u128 * 1_000_000_000 / elapsed) as u64)
        });
        Some(Self {
            at,
            time: now(),
            usage,
            nano_cores,
        })
    }

    fn cpu(&self) -> Value {
        let mut cpu =
            json!({"time": self.time, "usageCoreNanoSeconds": self.usage.cpu_nanoseconds});
        if let Some(n) = self.nano_cores {
            cpu["usageNanoCores"] = json!(n);
        }
        cpu
    }

    fn memory(&self) -> Value {
        json!({
            "time": self.time,
            "usageBytes": self.usage.memory_bytes,
            "workingSetBytes": self.usage.working_set_bytes,
        })
    }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One pod's measurements.
#[derive(Debug, Clone)]
struct PodStats {
    name: String,
    namespace: String,
    uid: String,
    pod: Measured,
    containers: BTreeMap<String, (String, Measured)>,
}

/// The latest measurements.
#[derive(Default)]
pub struct Stats {
    latest: Mutex<Latest>,
}

#[derive(Default)]
struct Latest {
    node: Option<Measured>,
    pods: BTreeMap<String, PodStats>,
}

impl Stats {
    /// Measures the node and every running container of `containers`, and their pods.
    fn measure(&self, containers: &[Container]) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let node = Measured::take("/", latest.node.as_ref());
        let mut pods: BTreeMap<String, PodStats> = BTreeMap::new();
        for c in containers {
            let State::Running(started) = &c.state else {
                continue;
            };
            let label = |k: &str| c.config.labels.get(k).cloned().unwrap_or_default();
            let uid = label(labels::POD_UID);
            let name = label(labels::CONTAINER);
            let Some((pod_cgroup, _)) = c.config.cgroup_path.rsplit_once('/') else {
                continue;
            };
            let before = latest.pods.get(&uid);
            if !pods.contains_key(&uid) {
                let Some(pod) = Measured::take(pod_cgroup, before.map(|p| &p.pod)) else {
                    continue;
                };
                pods.insert(
                    uid.clone(),
                    PodStats {
                        name: label(labels::POD_NAME),
                        namespace: label(labels::POD_NAMESPACE),
                        uid: uid.clone(),
                        pod,
                        containers: BTreeMap::new(),
                    },
                );
            }
            // a restarted container starts a new count; its rate waits for the next round
            let previous = before
                .and_then(|p| p.containers.get(&name))
                .filter(|(start, _)| *start == started.started_at)
                .map(|(_, m)| m);
            if let Some(m) = Measured::take(&c.config.cgroup_path, previous)
                && let Some(pod) = pods.get_mut(&uid)
            {
                pod.containers.insert(name, (started.started_at.clone(), m));
            }
        }
        latest.node = node;
        latest.pods = pods;
    }

    /// kubelet's Summary (`stats/v1alpha1`) of the node called `node_name`.
    pub fn summary(&self, node_name: &str) -> Value {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let mut node = json!({"nodeName": node_name});
        if let Some(m) = &latest.node {
            node["cpu"] = m.cpu();
            node["memory"] = m.memory();
        }
        let pods: Vec<Value> = latest
            .pods
            .values()
            .map(|p| {
                let containers: Vec<Value> = p
                    .containers
                    .iter()
                    .map(|(name, (start, m))| {
                        json!({"name": name, "startTime": start, "cpu": m.cpu(), "memory": m.memory()})
                    })
                    .collect();
                json!({
                    "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                    "containers": containers,
                    "cpu": p.pod.cpu(),
                    "memory": p.pod.memory(),
                })
            })
            .collect();
        json!({"node": node, "pods": pods})
    }

    /// The resource metrics in Prometheus' text format, as kubelet's `/metrics/resource`.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let ms = |m: &Measured| {
            chrono::Utc::now().timestamp_millis() - m.at.elapsed().as_millis() as i64
        };
        let seconds = |ns: u64| ns as f64 / 1e9;
        let _ = writeln!(
            out,
            "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter"
        );
        if let Some(m) = &latest.node {
            let _ = writeln!(
                out,
                "node_cpu_usage_seconds_total {} {}",
                seconds(m.usage.cpu_nanoseconds),
                ms(m)
            );
        }
        let _ = writeln!(
            out,
            "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge"
        );
        if let Some(m) = &latest.node {
            let _ = writeln!(
                out,
                "node_memory_working_set_bytes {} {}",
                m.usage.working_set_bytes,
                ms(m)
            );
        }
        for (metric, help, kind) in [
            (
                "container_cpu_usage_seconds_total",
                "Cumulative cpu time consumed by the container in core-seconds",
                "counter",
            ),
            (
                "container_memory_working_set_bytes",
                "Current working set of the container in bytes",
                "gauge",
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} [STABLE] {help}\n# TYPE {metric} {kind}"
            );
            for p in latest.pods.values() {
                for (name, (_, m)) in &p.containers {
                    let value = if kind == "counter" {
                        seconds(m.usage.cpu_nanoseconds).to_string()
                    } else {
                        m.usage.working_set_bytes.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "{metric}{{container=\"{name}\",namespace=\"{}\",pod=\"{}\"}} {value} {}",
                        p.namespace,
                        p.name,
                        ms(m)
                    );
                }
            }
        }
        for (metric, help, kind) in [
            (
                "pod_cpu_usage_seconds_total",
                "Cumulative cpu time consumed by the pod in core-seconds",
                "counter",
            ),
            (
                "pod_memory_working_set_bytes",
                "Current working set of the pod in bytes",
                "gauge",
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} [STABLE] {help}\n# TYPE {metric} {kind}"
            );
            for p in latest.pods.values() {
                let value = if kind == "counter" {
                    seconds(p.pod.usage.cpu_nanoseconds).to_string()
                } else {
                    p.pod.usage.working_set_bytes.to_string()
                };
                let _ = writeln!(
                    out,
                    "{metric}{{namespace=\"{}\",pod=\"{}\"}} {value} {}",
                    p.namespace,
                    p.name,
                    ms(&p.pod)
                );
            }
        }
        out
    }
}

impl Stats {
    /// The working set of each pod last measured and of its containers, by pod uid.
    pub fn memory_by_pod(&self) -> crate::eviction::PodMemory {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .pods
            .iter()
            .map(|(uid, p)| {
                let containers = p
                    .containers
                    .iter()
                    .map(|(name, (_, m))| (name.clone(), m.usage.working_set_bytes))
                    .collect();
                (uid.clone(), (p.pod.usage.working_set_bytes, containers))
            })
            .collect()
    }
}

/// Measures every [`INTERVAL`] until the agent stops.
pub async fn run(agent: std::sync::Arc<Agent>) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        let agent = agent.clone();
        let _ = tokio::task::spawn_blocking(move || match agent.runtime.list() {
            Ok(containers) => agent.stats.measure(&containers),
            Err(e) => tracing::warn!(error = %e, "cannot list containers to measure them"),
        })
        .await;
    }
}
