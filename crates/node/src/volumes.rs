//! A pod's volumes on the node: `emptyDir` (a directory of the pod's, gone with the pod),
//! `hostPath` (a path of the node, checked or created by its `type`), and the directories of the
//! volumes [`crate::projection`] fills (on tmpfs for secrets and projected volumes, never on
//! disk), owned by the pod's `fsGroup` as upstream's SetVolumeOwnership makes them; and the bind
//! mounts a container's `volumeMounts` make of them. Other volume types come with their issues;
//! a mount of one is refused with a clear message.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use runtime::container::Mount;

/// A volume set up on the node.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Its path on the node.
    pub path: PathBuf,
    /// Whether it is always mounted read-only (API data, as upstream).
    pub read_only: bool,
}

/// The volumes of a pod, set up: by name.
pub type Volumes = BTreeMap<String, Volume>;

/// The pod's `fsGroup`.
pub fn fs_group(pod: &Pod) -> Option<u32> {
    let sc = pod.spec.as_ref()?.security_context.as_ref()?;
    sc.fs_group.and_then(|g| u32::try_from(g).ok())
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    match dir.parent() {
        Some(parent) => dev(dir).is_some() && dev(dir) != dev(parent),
        None => false,
    }
}

/// Creates the directory of a volume; on tmpfs if `in_memory`.
fn volume_dir(dir: &Path, in_memory: bool) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if in_memory && !is_mount_point(dir) {
        use nix::mount::{MsFlags, mount};
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some("mode=0755"))
            .map_err(|e| format!("mount a tmpfs on {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Makes an emptyDir writable by all (0777, as upstream) and, with an `fsGroup`, group-owned by
/// it with the setgid bit, so files made in it belong to the group.
fn empty_dir_permissions(dir: &Path, fs_group: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut mode = 0o777;
    if let Some(gid) = fs_group {
        nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)))?;
        mode |= 0o2000;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Unmounts what the pod's volumes mounted under `pod_dir` (deepest first), so the pod's
/// directory can be removed.
pub fn unmount_all(pod_dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(pod_dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = p, error = %e, "unmounting a volume failed");
        }
    }
}

/// Sets up the pod's volumes under `pod_dir`. Errors say which volume and why, as the
/// FailedMount event does.
pub fn setup(pod: &Pod, pod_dir: &Path) -> Result<Volumes, String> {
    let mut out = Volumes::new();
    let fs_group = fs_group(pod);
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let failed = |e: String| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name);
        if v.empty_dir.is_some() {
            let dir = pod_dir
                .join("volumes/kubernetes.io~empty-dir")
                .join(&v.name);
            let in_memory =
                v.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("Memory");
            volume_dir(&dir, in_memory).map_err(failed)?;
            empty_dir_permissions(&dir, fs_group).map_err(|e| failed(e.to_string()))?;
            let read_only = false;
            out.insert(
                v.name.clone(),
                Volume {
                    path: dir,
                    read_only,
                },
            );
        } else if crate::projection::is_projection(v) {
            let kind = if v.config_map.is_some() {
                "configmap"
            } else if v.secret.is_some() {
                "secret"
            } else if v.downward_api.is_some() {
                "downward-api"
            } else {
                "projected"
            };
            let dir = pod_dir
                .join(format!("volumes/kubernetes.io~{kind}"))
                .join(&v.name);
            volume_dir(&dir, crate::projection::in_memory(v)).map_err(failed)?;
            out.insert(
                v.name.clone(),
                Volume {
                    path: dir,
                    read_only: true,
                },
            );
        } else if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            let kind = hp.type_.as_deref().unwrap_or("");
            let check = |ok: bool, what: &str| {
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "MountVolume.SetUp failed for volume {:?} : hostPath type check failed: {} is not a {what}",
                        v.name, hp.path
                    ))
                }
            };
            match kind {
                "DirectoryOrCreate" => fs::create_dir_all(&path)
                    .map_err(|e| format!("volume {:?}: create {}: {e}", v.name, hp.path))?,
                "FileOrCreate" => {
                    if let Some(parent) = path.parent() {
                        let _ = fs::create_dir_all(parent);
                    }
                    fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| format!("volume {:?}: create {}: {e}", v.name, hp.path))?;
                }
                "Directory" => check(path.is_dir(), "directory")?,
                "File" => check(path.is_file(), "file")?,
                "Socket" | "CharDevice" | "BlockDevice" => check(path.exists(), kind)?,
                _ => {}
            }
            out.insert(
                v.name.clone(),
                Volume {
                    path,
                    read_only: false,
                },
            );
        }
    }
    Ok(out)
}

/// The bind mounts of `container`'s volumeMounts.
pub fn mounts(container: &Container, volumes: &Volumes) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "volume {:?} is of a type this node does not support yet",
                m.name
            )
        })?;
        let base = &volume.path;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if Path::new(sub).is_absolute() || sub.split('/').any(|p| p == "..") {
                    return Err(format!(
                        "subPath {sub:?} must be a relative path within the volume"
                    ));
                }
                let p = base.join(sub);
                if !p.exists() {
                    fs::create_dir_all(&p).map_err(|e| format!("subPath {sub:?}: {e}"))?;
                }
                p
            }
            None => base.clone(),
        };
        out.push(Mount {
            source,
            destination: m.mount_path.clone(),
            read_only: volume.read_only || m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_dirs_and_host_paths_become_bind_mounts() {
        let dir = tempfile::tempdir().expect("dir");
        let host = dir.path().join("host/data");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "data", "hostPath": {"path": host, "type": "DirectoryOrCreate"}},
                    {"name": "cfg", "persistentVolumeClaim": {"claimName": "x"}}
                ],
                "containers": [{"name": "c", "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "data", "mountPath": "/data", "readOnly": true, "subPath": "sub"}
                ]}, {"name": "d", "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]
            }
        }))
        .expect("pod");
        let volumes = setup(&pod, &dir.path().join("pod")).expect("setup");
        assert!(host.is_dir());
        let spec = pod.spec.as_ref().expect("spec");
        let m = mounts(&spec.containers[0], &volumes).expect("mounts");
        assert_eq!(m[0].destination, "/scratch");
        assert!(
            m[0].source
                .ends_with("volumes/kubernetes.io~empty-dir/scratch")
        );
        assert_eq!(m[1].source, host.join("sub"));
        assert!(m[1].read_only);
        assert!(mounts(&spec.containers[1], &volumes).is_err());
    }

    #[test]
    fn host_path_types_are_checked() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"volumes": [{"name": "x", "hostPath": {"path": "/no/such/dir", "type": "Directory"}}],
                     "containers": []}
        }))
        .expect("pod");
        let dir = tempfile::tempdir().expect("dir");
        let err = setup(&pod, dir.path()).expect_err("must fail");
        assert!(err.contains("is not a directory"), "{err}");
    }
}
