//! The cgroups of pods, beside the per-container ones libcontainer manages: a pod's own cgroup
//! directory is removed, in every hierarchy (v1 controllers and the v2 mount), once its
//! containers are gone.

use std::path::Path;

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
