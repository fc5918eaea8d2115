//! A pod's volumes on the node: `emptyDir` (a directory of the pod's, gone with the pod) and
//! `hostPath` (a path of the node, checked or created by its `type`), and the bind mounts a
//! container's `volumeMounts` make of them. Other volume types come with their issues; a mount
//! of one is refused with a clear message.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use runtime::container::Mount;

/// The volumes of a pod, set up: name to path on the node.
pub type Volumes = BTreeMap<String, PathBuf>;

/// Sets up the pod's volumes under `pod_dir`. Errors say which volume and why, as the
/// FailedMount event does.
pub fn setup(pod: &Pod, pod_dir: &Path) -> Result<Volumes, String> {
    let mut out = Volumes::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if v.empty_dir.is_some() {
            let dir = pod_dir
                .join("volumes/kubernetes.io~empty-dir")
                .join(&v.name);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("volume {:?}: create {}: {e}", v.name, dir.display()))?;
            out.insert(v.name.clone(), dir);
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
            out.insert(v.name.clone(), path);
        }
    }
    Ok(out)
}

/// The bind mounts of `container`'s volumeMounts.
pub fn mounts(container: &Container, volumes: &Volumes) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let base = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "volume {:?} is of a type this node does not support yet",
                m.name
            )
        })?;
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
            read_only: m.read_only.unwrap_or(false),
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
                    {"name": "cfg", "configMap": {"name": "x"}}
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
