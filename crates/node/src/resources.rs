//! What a container's requests and limits become on the node, as kubelet computes them: a cpu
//! limit is a CFS quota (per 100 ms period), a cpu request a share of the cpu (`cpu.shares`,
//! 1024 per core), a memory limit the cgroup's hard limit, and the pod's QoS class the
//! container's `oom_score_adj` (Guaranteed -997, BestEffort 1000, Burstable by how much of the
//! node's memory it requests). Lowering a score below the agent's own takes CAP_SYS_RESOURCE;
//! without it (some sandboxes drop it) scores stop at the agent's.

use k8s_openapi::api::core::v1::Container;
use runtime::container::Resources;

/// The CFS period kubelet uses, in microseconds.
const CPU_PERIOD: u64 = 100_000;
/// The smallest quota the kernel accepts, in microseconds.
const MIN_QUOTA: i64 = 1_000;
/// The fewest shares a container gets.
const MIN_SHARES: u64 = 2;

fn quantity(c: &Container, which: &str, name: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let map = if which == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    map.get(name).map(|q| q.0.clone())
}

/// The cgroup settings and OOM score of a container of a pod of class `qos`, on a node with
/// `node_memory` bytes.
pub fn of(c: &Container, qos: &str, node_memory: u64) -> Resources {
    let milli = |which| quantity(c, which, "cpu").and_then(|q| api::quantity::milli(&q).ok());
    let bytes = |which| quantity(c, which, "memory").and_then(|q| api::quantity::units(&q).ok());
    let cpu_limit = milli("limits");
    // A request left out is the limit, as the API defaults it.
    let cpu_request = milli("requests").or(cpu_limit);
    let memory_request = bytes("requests").or_else(|| bytes("limits"));
    let cpu_quota = cpu_limit.map(|m| (m * CPU_PERIOD as i64 / 1000).max(MIN_QUOTA));
    Resources {
        memory_limit: bytes("limits"),
        cpu_shares: Some(
            cpu_request
                .map(|m| (u64::try_from(m).unwrap_or(0) * 1024 / 1000).max(MIN_SHARES))
                .unwrap_or(MIN_SHARES),
        ),
        cpu_quota,
        cpu_period: cpu_quota.map(|_| CPU_PERIOD),
        oom_score_adj: Some(
            oom_score_adj(qos, memory_request.unwrap_or(0), node_memory)
                .max(lowest_oom_score_adj()),
        ),
    }
}

/// The lowest OOM score adjustment this process may give: any with CAP_SYS_RESOURCE, else no
/// lower than its own.
fn lowest_oom_score_adj() -> i32 {
    static LOWEST: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *LOWEST.get_or_init(|| {
        const CAP_SYS_RESOURCE: u32 = 24;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if effective & (1 << CAP_SYS_RESOURCE) != 0 {
            return -1000;
        }
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Upstream's OOM score adjustment by QoS class.
pub fn oom_score_adj(qos: &str, memory_request: i64, node_memory: u64) -> i32 {
    match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let capacity = i64::try_from(node_memory.max(1)).unwrap_or(i64::MAX);
            let adj = 1000 - (1000 * memory_request) / capacity;
            // Burstable containers stay above Guaranteed ones and below BestEffort ones.
            i32::try_from(adj.clamp(2, 999)).unwrap_or(999)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(resources: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "resources": resources}))
            .expect("container")
    }

    #[test]
    fn limits_become_quota_shares_and_memory_limits() {
        let c = container(serde_json::json!({
            "limits": {"cpu": "200m", "memory": "64Mi"},
            "requests": {"cpu": "100m", "memory": "32Mi"},
        }));
        let r = of(&c, "Burstable", 4 << 30);
        assert_eq!(r.cpu_quota, Some(20_000));
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.cpu_shares, Some(102));
        assert_eq!(r.memory_limit, Some(64 << 20));
        // 32Mi of 4Gi: 1000 - 1000 * 32 / 4096, rounded down
        assert_eq!(r.oom_score_adj, Some(993));
        // limits alone: requests follow them
        let g = of(
            &container(serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
            "Guaranteed",
            4 << 30,
        );
        assert_eq!(g.cpu_shares, Some(1024));
        assert_eq!(g.oom_score_adj, Some((-997).max(lowest_oom_score_adj())));
        // nothing at all
        let b = of(&container(serde_json::json!({})), "BestEffort", 4 << 30);
        assert_eq!(b.cpu_shares, Some(2));
        assert_eq!(b.cpu_quota, None);
        assert_eq!(b.memory_limit, None);
        assert_eq!(b.oom_score_adj, Some(1000));
        // a burstable container that asks for (nearly) everything still ranks above guaranteed
        assert_eq!(oom_score_adj("Burstable", 4 << 30, 4 << 30), 2);
        assert_eq!(oom_score_adj("Burstable", 0, 4 << 30), 999);
    }
}
