//! The cgroups of pods, beside the per-container ones libcontainer manages: a pod's own cgroup
//! directory is removed, in every hierarchy (v1 controllers and the v2 mount), once its
//! containers are gone; and what a cgroup has used ([`usage`]), as cadvisor reads it.

use std::path::Path;

/// What a cgroup (and the cgroups below it) has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, in nanoseconds, since the cgroup was made.
    pub cpu_nanoseconds: u64,
    /// Memory charged to the cgroup, in bytes, page cache included.
    pub memory_bytes: u64,
    /// The working set: memory less the inactive page cache, which the kernel can take back
    /// (what kubelet reports, and what eviction and `kubectl top` go by).
    pub working_set_bytes: u64,
}

/// What the cgroup at `path` (as in an OCI spec, `/kubepods/pod<uid>/<name>`; `/` for the
/// whole machine) has used, from the v1 `cpuacct` and `memory` controllers or else the v2
/// mount; None when it is gone.
pub fn usage(path: &str) -> Option<Usage> {
    let rel = path.trim_matches('/');
    let under = |root: &str, file: &str| {
        let dir = Path::new(root).join(rel);
        std::fs::read_to_string(dir.join(file)).ok()
    };
    let stat = |text: &str, key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let number = |text: String| text.trim().parse::<u64>().ok();
    let v1 = || {
        let cpu = under("/sys/fs/cgroup/cpuacct", "cpuacct.usage")
            .or_else(|| under("/sys/fs/cgroup/cpu,cpuacct", "cpuacct.usage"))
            .and_then(number)?;
        let memory = under("/sys/fs/cgroup/memory", "memory.usage_in_bytes").and_then(number)?;
        let inactive = under("/sys/fs/cgroup/memory", "memory.stat")
            .and_then(|t| stat(&t, "total_inactive_file"))
            .unwrap_or(0);
        Some((cpu, memory, inactive))
    };
    let v2 = || {
        let cpu = under("/sys/fs/cgroup", "cpu.stat").and_then(|t| stat(&t, "usage_usec"))? * 1000;
        let memory = under("/sys/fs/cgroup", "memory.current").and_then(number)?;
        let inactive = under("/sys/fs/cgroup", "memory.stat")
            .and_then(|t| stat(&t, "inactive_file"))
            .unwrap_or(0);
        Some((cpu, memory, inactive))
    };
    let (cpu, memory, inactive) = v1().or_else(v2)?;
    Some(Usage {
        cpu_nanoseconds: cpu,
        memory_bytes: memory,
        working_set_bytes: memory.saturating_sub(inactive),
    })
}

/// Removes the cgroup directories of the pod with `uid` (`.../pod<uid>` under any QoS tier).
pub fn remove_pod(uid: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<std::path::PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    roots.push("/sys/fs/cgroup".into());
    for root in roots {
        for tier in ["kubepods", "kubepods/burstable", "kubepods/besteffort"] {
            let dir = root.join(tier).join(format!("pod{uid}"));
            remove_tree(&dir);
        }
    }
}

/// Removes an empty cgroup and its empty children (a cgroup is removed with rmdir, innermost
/// first).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}
