//! Volumes that project API data into files: `configMap`, `secret`, `downwardAPI` and
//! `projected` (whose sources are those three and `serviceAccountToken`). A volume's files
//! ([`Payload`]) are computed from the objects, with upstream's errors for what is missing, and
//! [`write`]n as kubelet's AtomicWriter does: into a fresh timestamped directory, made current
//! by renaming a `..data` symlink over the old one, with each top-level file a symlink through
//! `..data`. A reader inside the container therefore sees either the old files or the new ones,
//! never a mix; a `subPath` mount resolves the symlinks once, so it is never updated (as
//! upstream).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

/// The mode of a file no mode is given for.
const DEFAULT_MODE: i32 = 0o644;

/// A file of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct File {
    /// Its contents.
    pub data: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// A volume's files, by path relative to the volume.
pub type Payload = BTreeMap<String, File>;

/// A service account token a volume asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenRequest {
    /// Its audience (empty: the API server's).
    pub audience: String,
    /// How long it is valid, in seconds.
    pub expiration_seconds: i64,
}

/// The API data a pod's volumes are made from.
#[derive(Debug, Default)]
pub struct Sources {
    /// The referred ConfigMaps that exist, by name.
    pub config_maps: BTreeMap<String, Arc<ConfigMap>>,
    /// The referred Secrets that exist, by name.
    pub secrets: BTreeMap<String, Arc<Secret>>,
    /// The tokens asked for.
    pub tokens: BTreeMap<TokenRequest, String>,
    /// The node's allocatable cpu (millicores) and memory (bytes), for `resourceFieldRef`.
    pub node_allocatable: (i64, i64),
}

/// What the pod's volumes refer to.
#[derive(Debug, Default, PartialEq)]
pub struct References {
    /// ConfigMap names.
    pub config_maps: BTreeSet<String>,
    /// Secret names.
    pub secrets: BTreeSet<String>,
    /// Service account tokens.
    pub tokens: BTreeSet<TokenRequest>,
}

/// Whether `volume` is one this module writes.
pub fn is_projection(volume: &Volume) -> bool {
    volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.downward_api.is_some()
        || volume.projected.is_some()
}

/// Whether `volume`'s files are kept in memory only (secrets and projected tokens, as upstream).
pub fn in_memory(volume: &Volume) -> bool {
    volume.secret.is_some() || volume.projected.is_some()
}

/// What the volumes of `pod` refer to.
pub fn references(pod: &Pod) -> References {
    let mut r = References::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &v.config_map {
            r.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            r.secrets.extend(s.secret_name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                r.config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                r.secrets.insert(s.name.clone());
            }
            if let Some(t) = &source.service_account_token {
                r.tokens.insert(TokenRequest {
                    audience: t.audience.clone().unwrap_or_default(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                });
            }
        }
    }
    r
}

/// The files of keyed data (a ConfigMap's or a Secret's): every key, or only `items`.
fn keyed(
    kind: &str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: i32,
    out: &mut Payload,
) -> Result<(), String> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(format!("{kind} {name:?} not found"));
    };
    let mode = |m: Option<i32>| (m.unwrap_or(default_mode) & 0o7777) as u32;
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                let mode = mode(None);
                out.insert(k, File { data: v, mode });
            }
        }
        Some(items) => {
            for item in items {
                let Some(v) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(if kind == "configmap" {
                        format!("configmap references non-existent config key: {}", item.key)
                    } else {
                        format!("references non-existent secret key: {}", item.key)
                    });
                };
                let file = File {
                    data: v.clone(),
                    mode: mode(item.mode),
                };
                out.insert(item.path.clone(), file);
            }
        }
    }
    Ok(())
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let text = cm.data.iter().flatten();
    let binary = cm.binary_data.iter().flatten();
    text.map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .chain(binary.map(|(k, v)| (k.clone(), v.0.clone())))
        .collect()
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let data = s.data.iter().flatten();
    data.map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

/// The downward API files of `items`.
fn downward(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    node_allocatable: (i64, i64),
    out: &mut Payload,
) -> Result<(), String> {
    for item in items {
        let data = if let Some(f) = &item.field_ref {
            crate::process::field_ref(pod, &f.field_path).unwrap_or_default()
        } else if let Some(r) = &item.resource_field_ref {
            let spec = pod.spec.as_ref();
            let containers = spec.iter().flat_map(|s| {
                let init = s.init_containers.iter().flatten();
                s.containers.iter().chain(init)
            });
            let wanted = r.container_name.as_deref().unwrap_or_default();
            let c = containers
                .into_iter()
                .find(|c| c.name == wanted)
                .ok_or_else(|| format!("container {wanted:?} not found in the pod"))?;
            let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
            crate::process::resource_field(c, &r.resource, divisor, node_allocatable)?
        } else {
            continue;
        };
        let mode = (item.mode.unwrap_or(default_mode) & 0o7777) as u32;
        out.insert(
            item.path.clone(),
            File {
                data: data.into_bytes(),
                mode,
            },
        );
    }
    Ok(())
}

/// The files of `volume` of `pod`, or why they cannot be made (as the FailedMount event says).
pub fn payload(pod: &Pod, volume: &Volume, sources: &Sources) -> Result<Payload, String> {
    let mut out = Payload::new();
    let cm = |name: &str| sources.config_maps.get(name).map(|c| config_map_data(c));
    let secret = |name: &str| sources.secrets.get(name).map(|s| secret_data(s));
    if let Some(v) = &volume.config_map {
        let mode = v.default_mode.unwrap_or(DEFAULT_MODE);
        let optional = v.optional == Some(true);
        keyed(
            "configmap",
            &v.name,
            cm(&v.name),
            v.items.as_ref(),
            optional,
            mode,
            &mut out,
        )?;
    } else if let Some(v) = &volume.secret {
        let name = v.secret_name.clone().unwrap_or_default();
        let mode = v.default_mode.unwrap_or(DEFAULT_MODE);
        let optional = v.optional == Some(true);
        keyed(
            "secret",
            &name,
            secret(&name),
            v.items.as_ref(),
            optional,
            mode,
            &mut out,
        )?;
    } else if let Some(v) = &volume.downward_api {
        let mode = v.default_mode.unwrap_or(DEFAULT_MODE);
        let items = v.items.as_deref().unwrap_or_default();
        downward(pod, items, mode, sources.node_allocatable, &mut out)?;
    } else if let Some(v) = &volume.projected {
        let mode = v.default_mode.unwrap_or(DEFAULT_MODE);
        for source in v.sources.iter().flatten() {
            if let Some(s) = &source.config_map {
                let optional = s.optional == Some(true);
                keyed(
                    "configmap",
                    &s.name,
                    cm(&s.name),
                    s.items.as_ref(),
                    optional,
                    mode,
                    &mut out,
                )?;
            }
            if let Some(s) = &source.secret {
                let optional = s.optional == Some(true);
                keyed(
                    "secret",
                    &s.name,
                    secret(&s.name),
                    s.items.as_ref(),
                    optional,
                    mode,
                    &mut out,
                )?;
            }
            if let Some(s) = &source.downward_api {
                let items = s.items.as_deref().unwrap_or_default();
                downward(pod, items, mode, sources.node_allocatable, &mut out)?;
            }
            if let Some(t) = &source.service_account_token {
                let request = TokenRequest {
                    audience: t.audience.clone().unwrap_or_default(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                };
                let token = sources
                    .tokens
                    .get(&request)
                    .ok_or_else(|| "the service account token is not issued yet".to_string())?;
                let file = File {
                    data: token.clone().into_bytes(),
                    mode: (mode & 0o7777) as u32,
                };
                out.insert(t.path.clone(), file);
            }
        }
    }
    Ok(out)
}

/// A fingerprint of what [`write`] would write.
pub fn fingerprint(payload: &Payload, fs_group: Option<u32>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    fs_group.hash(&mut h);
    h.finish()
}

/// Checks a payload path as upstream does: relative, no `..` element, not starting with `..`.
fn valid_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') {
        return Err(format!("invalid path {path:?}: must be relative"));
    }
    if path.starts_with("..") || path.split('/').any(|p| p == "..") {
        return Err(format!("invalid path {path:?}: must not contain '..'"));
    }
    Ok(())
}

/// Makes `path` group-owned by `gid` and group-readable (directories setgid), as upstream's
/// SetVolumeOwnership does for read-only volumes.
fn own(path: &Path, gid: u32) -> io::Result<()> {
    nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))?;
    let meta = fs::symlink_metadata(path)?;
    let mut mask = 0o440;
    if meta.is_dir() {
        mask |= 0o2000 | 0o110;
    }
    let mode = meta.permissions().mode() & 0o7777 | mask;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Writes `payload` into `dir` atomically (see the module documentation); files owned by group
/// `fs_group` if given. Paths are checked before anything is written.
pub fn write(dir: &Path, payload: &Payload, fs_group: Option<u32>) -> Result<(), String> {
    for path in payload.keys() {
        valid_path(path)?;
    }
    let err = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| format!("{what}: {e}")
    };
    let data_link = dir.join("..data");
    let old = fs::read_link(&data_link).ok();
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let fresh = dir.join(&stamp);
    fs::create_dir_all(&fresh).map_err(err("create the data directory"))?;
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755))
        .map_err(err("set the data directory's mode"))?;
    for (path, file) in payload {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(err(path))?;
        }
        fs::write(&target, &file.data).map_err(err(path))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(file.mode)).map_err(err(path))?;
    }
    if let Some(gid) = fs_group {
        let mut stack = vec![fresh.clone()];
        while let Some(p) = stack.pop() {
            own(&p, gid).map_err(err("set the volume's group"))?;
            if p.is_dir() {
                for e in fs::read_dir(&p)
                    .map_err(err("read the data directory"))?
                    .flatten()
                {
                    stack.push(e.path());
                }
            }
        }
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    symlink(&stamp, &tmp_link).map_err(err("link the new data"))?;
    fs::rename(&tmp_link, &data_link).map_err(err("switch to the new data"))?;
    let visible: BTreeSet<&str> = payload.keys().filter_map(|p| p.split('/').next()).collect();
    for name in &visible {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).map_err(err(name))?;
        }
    }
    for e in fs::read_dir(dir).map_err(err("read the volume"))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !visible.contains(name.as_str()) {
            let _ = fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}
