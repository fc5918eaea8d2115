//! The node's image store, content-addressed as containerd's:
//!
//! ```text
//! <root>/blobs/sha256/<hex>     configs, manifests and layers as received, named by digest
//! <root>/layers/sha256/<hex>/   each layer unpacked, named by its diff id (the digest of the
//!                               uncompressed tar), with whiteouts turned into overlayfs ones
//! <root>/images.json            references -> image records
//! ```
//!
//! `import` reads OCI image layouts (`skopeo copy ... oci-archive:`) and docker archives
//! (`docker save`), verifies every digest, and unpacks each layer once, whatever the number of
//! images sharing it. `remove` drops a reference and collects what no image uses any more.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reference;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the store failed.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// The archive is not an image archive bosun understands.
    #[error("not an image archive: {0}")]
    Format(String),
    /// Content did not match its digest.
    #[error("digest mismatch for {path}: expected {expected}, got {actual}")]
    Digest {
        /// What was read.
        path: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// No image has this reference.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// A registry refused or failed the pull.
    #[error("{0}")]
    Pull(String),
    /// The reference is malformed.
    #[error(transparent)]
    Reference(#[from] reference::InvalidReference),
}

/// The result type of image operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::Io(what.to_string(), e)
}

/// One image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The normalized reference, e.g. `docker.io/library/busybox:1.36`.
    pub reference: String,
    /// The image id: the digest of its config.
    pub id: String,
    /// The digest of its manifest, when it came with one (the repo digest).
    pub manifest_digest: Option<String>,
    /// The diff ids of its layers, lowest first.
    pub layers: Vec<String>,
    /// The unpacked size of its layers, in bytes.
    pub size: u64,
}

impl Image {
    /// `repo@sha256:<manifest>`, when the image came with a manifest digest.
    pub fn repo_digest(&self) -> Option<String> {
        let digest = self.manifest_digest.as_ref()?;
        let repo = self
            .reference
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map(|(r, _)| r)
            .unwrap_or(&self.reference);
        Some(format!("{repo}@{digest}"))
    }

    /// The image's OCI config (`config.Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`...).
    pub fn config(&self, store: &ImageStore) -> Result<Value> {
        let raw = fs::read(store.blob_path(&self.id))
            .map_err(io_err(format!("read config {}", self.id)))?;
        serde_json::from_slice(&raw).map_err(|e| Error::Format(format!("config {}: {e}", self.id)))
    }
}

/// Reports progress of long work: bytes done of a total.
pub trait Progress {
    /// Sets the total number of bytes.
    fn total(&self, bytes: u64);
    /// Adds bytes done.
    fn advance(&self, bytes: u64);
}

/// Progress that is not shown.
pub struct Quiet;

impl Progress for Quiet {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// The store.
pub struct ImageStore {
    root: PathBuf,
}

fn sha256_hex(ctx: Context) -> String {
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex_of(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::Format(format!("unsupported digest {digest:?}")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Format(format!("malformed digest {digest:?}")));
    }
    Ok(hex)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    ctx: Context,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl ImageStore {
    /// Opens (creating) a store under `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "layers/sha256", "tmp"] {
            fs::create_dir_all(root.join(dir))
                .map_err(io_err(format!("create {}", root.join(dir).display())))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where a blob lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Where an unpacked layer lives (an overlayfs lower directory).
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("layers/sha256")
            .join(diff_id.trim_start_matches("sha256:"))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn load_index(&self) -> Result<BTreeMap<String, Image>> {
        match fs::read(self.index_path()) {
            Ok(raw) => {
                serde_json::from_slice(&raw).map_err(|e| Error::Format(format!("images.json: {e}")))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::Io("read images.json".into(), e)),
        }
    }

    fn save_index(&self, index: &BTreeMap<String, Image>) -> Result<()> {
        let tmp = self.root.join("images.json.tmp");
        let raw = serde_json::to_vec_pretty(index).map_err(|e| Error::Format(e.to_string()))?;
        let mut f = File::create(&tmp).map_err(io_err("write images.json"))?;
        f.write_all(&raw)
            .and_then(|_| f.sync_all())
            .map_err(io_err("write images.json"))?;
        fs::rename(&tmp, self.index_path()).map_err(io_err("write images.json"))
    }

    /// Every image, by reference.
    pub fn list(&self) -> Result<Vec<Image>> {
        Ok(self.load_index()?.into_values().collect())
    }

    /// The image a reference names (normalized as docker does), if present.
    pub fn get(&self, reference: &str) -> Result<Option<Image>> {
        let name = reference::normalize(reference)?;
        let index = self.load_index()?;
        if let Some(img) = index.get(&name) {
            return Ok(Some(img.clone()));
        }
        // a digest reference matches the image pulled or imported with that manifest
        Ok(name.split_once('@').and_then(|(_, digest)| {
            index
                .values()
                .find(|i| i.manifest_digest.as_deref() == Some(digest))
                .cloned()
        }))
    }

    /// Removes a reference, then the blobs and layers no image uses any more.
    pub fn remove(&self, reference: &str) -> Result<Image> {
        let name = reference::normalize(reference)?;
        let mut index = self.load_index()?;
        let removed = index
            .remove(&name)
            .ok_or_else(|| Error::NotFound(reference.to_string()))?;
        self.save_index(&index)?;
        self.collect_garbage(&index)?;
        Ok(removed)
    }

    fn collect_garbage(&self, index: &BTreeMap<String, Image>) -> Result<()> {
        let layers: BTreeSet<String> = index
            .values()
            .flat_map(|i| {
                i.layers
                    .iter()
                    .map(|l| l.trim_start_matches("sha256:").to_string())
            })
            .collect();
        let mut blobs: BTreeSet<String> = index
            .values()
            .map(|i| i.id.trim_start_matches("sha256:").to_string())
            .collect();
        blobs.extend(
            index
                .values()
                .filter_map(|i| i.manifest_digest.as_ref())
                .map(|d| d.trim_start_matches("sha256:").to_string()),
        );
        for (dir, keep) in [("layers/sha256", &layers), ("blobs/sha256", &blobs)] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))? {
                let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let path = entry.path();
                let result = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                result.map_err(io_err(format!("remove {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Imports every image of an OCI or docker archive; returns them.
    pub fn import(&self, archive: &Path, progress: &dyn Progress) -> Result<Vec<Image>> {
        let staging = tempdir_in(&self.root.join("tmp"))?;
        let total = fs::metadata(archive)
            .map_err(io_err(format!("read {}", archive.display())))?
            .len();
        progress.total(total * 2);
        let file = File::open(archive).map_err(io_err(format!("open {}", archive.display())))?;
        let mut tar = tar::Archive::new(BufReader::new(file));
        for entry in tar
            .entries()
            .map_err(io_err(format!("read {}", archive.display())))?
        {
            let mut entry = entry.map_err(io_err(format!("read {}", archive.display())))?;
            if entry.header().entry_type().is_dir() {
                continue;
            }
            let path = entry
                .path()
                .map_err(io_err("archive entry name"))?
                .into_owned();
            if path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(Error::Format(format!(
                    "entry {} escapes the archive",
                    path.display()
                )));
            }
            let size = entry.size();
            entry
                .unpack_in(&staging.0)
                .map_err(io_err(format!("extract {}", path.display())))?;
            progress.advance(size);
        }
        let images = if staging.0.join("index.json").exists() {
            self.import_oci(&staging.0, progress)?
        } else if staging.0.join("manifest.json").exists() {
            self.import_docker(&staging.0, progress)?
        } else {
            return Err(Error::Format(format!(
                "{} has neither index.json (OCI) nor manifest.json (docker)",
                archive.display()
            )));
        };
        let mut index = self.load_index()?;
        for img in &images {
            index.insert(img.reference.clone(), img.clone());
        }
        self.save_index(&index)?;
        Ok(images)
    }

    /// Copies a file into the blob store, checking it against its digest when one is expected;
    /// returns the digest.
    fn store_blob(&self, src: &Path, expected: Option<&str>) -> Result<String> {
        let mut reader = Hashing {
            inner: File::open(src).map_err(io_err(format!("open {}", src.display())))?,
            ctx: Context::new(&SHA256),
            count: 0,
        };
        let scratch = tempdir_in(&self.root.join("tmp"))?;
        let tmp = scratch.0.join("blob");
        let mut out = File::create(&tmp).map_err(io_err("write blob"))?;
        io::copy(&mut reader, &mut out).map_err(io_err(format!("copy {}", src.display())))?;
        out.sync_all().map_err(io_err("write blob"))?;
        let digest = format!("sha256:{}", sha256_hex(reader.ctx));
        if let Some(want) = expected
            && want != digest
        {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Digest {
                path: src.display().to_string(),
                expected: want.to_string(),
                actual: digest,
            });
        }
        fs::rename(&tmp, self.blob_path(&digest)).map_err(io_err("store blob"))?;
        Ok(digest)
    }

    /// A fresh scratch directory in the store.
    pub(crate) fn staging(&self) -> Result<TempDir> {
        tempdir_in(&self.root.join("tmp"))
    }

    /// Stores a pulled image: its config and layer blobs (checked against their digests), the
    /// layers unpacked, the reference recorded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store_pulled(
        &self,
        dir: &Path,
        reference: String,
        config: &Path,
        config_digest: &str,
        manifest_digest: &str,
        layers: &[(PathBuf, String)],
        progress: &dyn Progress,
    ) -> Result<Image> {
        self.store_blob(config, Some(config_digest))?;
        let mut blobs = Vec::new();
        for (path, digest) in layers {
            self.store_blob(path, Some(digest))?;
            blobs.push(self.blob_path(digest));
        }
        let image = self.finish_image(
            dir,
            reference,
            config_digest,
            Some(manifest_digest.to_string()),
            &blobs,
            progress,
        )?;
        let mut index = self.load_index()?;
        index.insert(image.reference.clone(), image.clone());
        self.save_index(&index)?;
        Ok(image)
    }

    /// Unpacks a layer blob (tar, maybe gzip or zstd) into its layer directory unless already there;
    /// checks the uncompressed content against the diff id.
    fn unpack_layer(&self, blob: &Path, diff_id: &str, progress: &dyn Progress) -> Result<u64> {
        hex_of(diff_id)?;
        let dest = self.layer_dir(diff_id);
        if dest.exists() {
            return Ok(dir_size(&dest));
        }
        let staging = tempdir_in(&self.root.join("tmp"))?;
        let mut file = File::open(blob).map_err(io_err(format!("open {}", blob.display())))?;
        let mut magic = [0u8; 4];
        let read_magic = file.read_exact(&mut magic).is_ok();
        let file = File::open(blob).map_err(io_err(format!("open {}", blob.display())))?;
        let raw: Box<dyn Read> = if read_magic && magic[..2] == [0x1f, 0x8b] {
            Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
        } else if read_magic && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            Box::new(
                ruzstd::decoding::StreamingDecoder::new(BufReader::new(file))
                    .map_err(|e| Error::Format(format!("zstd layer {}: {e}", blob.display())))?,
            )
        } else {
            Box::new(BufReader::new(file))
        };
        let mut hashing = Hashing {
            inner: raw,
            ctx: Context::new(&SHA256),
            count: 0,
        };
        {
            let mut tar = tar::Archive::new(&mut hashing);
            tar.set_preserve_permissions(true);
            tar.set_preserve_ownerships(true);
            tar.set_unpack_xattrs(true);
            tar.set_overwrite(true);
            for entry in tar.entries().map_err(io_err("read layer"))? {
                let mut entry = entry.map_err(io_err("read layer"))?;
                let path = entry
                    .path()
                    .map_err(io_err("layer entry name"))?
                    .into_owned();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let parent = staging.0.join(path.parent().unwrap_or(Path::new("")));
                if name == ".wh..wh..opq" {
                    fs::create_dir_all(&parent).map_err(io_err("opaque whiteout"))?;
                    xattr::set(&parent, "trusted.overlay.opaque", b"y")
                        .map_err(io_err(format!("mark {} opaque", parent.display())))?;
                } else if let Some(hidden) = name.strip_prefix(".wh.") {
                    fs::create_dir_all(&parent).map_err(io_err("whiteout"))?;
                    whiteout(&parent.join(hidden))?;
                } else {
                    entry
                        .unpack_in(&staging.0)
                        .map_err(io_err(format!("unpack {}", path.display())))?;
                }
            }
            // read to the end so the digest covers the whole stream
            io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(io_err("read layer"))?;
        }
        let actual = format!("sha256:{}", sha256_hex(hashing.ctx));
        if actual != diff_id {
            return Err(Error::Digest {
                path: blob.display().to_string(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        progress.advance(hashing.count);
        let size = dir_size(&staging.0);
        fs::rename(staging.keep(), &dest).map_err(io_err(format!("store layer {diff_id}")))?;
        Ok(size)
    }

    fn finish_image(
        &self,
        dir: &Path,
        reference: String,
        config_digest: &str,
        manifest_digest: Option<String>,
        layer_blobs: &[PathBuf],
        progress: &dyn Progress,
    ) -> Result<Image> {
        let config: Value = serde_json::from_slice(
            &fs::read(self.blob_path(config_digest)).map_err(io_err("read config"))?,
        )
        .map_err(|e| Error::Format(format!("config: {e}")))?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != layer_blobs.len() {
            return Err(Error::Format(format!(
                "{reference}: {} layers but {} diff ids in the config",
                layer_blobs.len(),
                diff_ids.len()
            )));
        }
        let mut size = 0;
        for (blob, diff_id) in layer_blobs.iter().zip(&diff_ids) {
            size += self.unpack_layer(&dir.join(blob), diff_id, progress)?;
        }
        Ok(Image {
            reference,
            id: config_digest.to_string(),
            manifest_digest,
            layers: diff_ids,
            size,
        })
    }

    fn import_oci(&self, dir: &Path, progress: &dyn Progress) -> Result<Vec<Image>> {
        let read_json = |p: PathBuf| -> Result<Value> {
            serde_json::from_slice(&fs::read(&p).map_err(io_err(format!("read {}", p.display())))?)
                .map_err(|e| Error::Format(format!("{}: {e}", p.display())))
        };
        let index = read_json(dir.join("index.json"))?;
        let mut images = Vec::new();
        let mut todo: Vec<(Value, Option<String>)> = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m, None))
            .collect();
        while let Some((desc, inherited_name)) = todo.pop() {
            let digest = desc
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Format("manifest without digest".into()))?
                .to_string();
            let blob = dir.join("blobs/sha256").join(hex_of(&digest)?);
            let annotations = desc.get("annotations");
            let name = annotations
                .and_then(|a| a.get("io.containerd.image.name"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    annotations
                        .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                        .and_then(Value::as_str)
                        .filter(|n| n.contains('/') || n.contains(':'))
                        .map(str::to_string)
                })
                .or(inherited_name);
            let doc = read_json(blob.clone())?;
            if doc.get("manifests").is_some() {
                // an index: follow the linux/amd64 manifest
                let chosen = doc
                    .get("manifests")
                    .and_then(Value::as_array)
                    .and_then(|ms| {
                        ms.iter()
                            .find(|m| {
                                m.pointer("/platform/os").and_then(Value::as_str) == Some("linux")
                                    && m.pointer("/platform/architecture").and_then(Value::as_str)
                                        == Some("amd64")
                            })
                            .or_else(|| ms.first())
                    });
                self.store_blob(&blob, Some(&digest))?;
                if let Some(m) = chosen {
                    todo.push((m.clone(), name));
                }
                continue;
            }
            let Some(name) = name else {
                return Err(Error::Format(format!(
                    "manifest {digest} has no image name annotation"
                )));
            };
            let reference = reference::normalize(&name)?;
            self.store_blob(&blob, Some(&digest))?;
            let config = doc
                .pointer("/config/digest")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Format("manifest without config".into()))?
                .to_string();
            self.store_blob(
                &dir.join("blobs/sha256").join(hex_of(&config)?),
                Some(&config),
            )?;
            let mut layers = Vec::new();
            for l in doc
                .get("layers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let d = l
                    .get("digest")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::Format("layer without digest".into()))?;
                let media = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
                if media.contains("zstd") {
                    return Err(Error::Format(format!(
                        "layer {d} is zstd-compressed, which import does not read yet"
                    )));
                }
                let path = PathBuf::from("blobs/sha256").join(hex_of(d)?);
                check_digest(&dir.join(&path), d)?;
                layers.push(path);
            }
            images.push(self.finish_image(
                dir,
                reference,
                &config,
                Some(digest),
                &layers,
                progress,
            )?);
        }
        Ok(images)
    }

    fn import_docker(&self, dir: &Path, progress: &dyn Progress) -> Result<Vec<Image>> {
        let raw = fs::read(dir.join("manifest.json")).map_err(io_err("read manifest.json"))?;
        let manifest: Value = serde_json::from_slice(&raw)
            .map_err(|e| Error::Format(format!("manifest.json: {e}")))?;
        let mut images = Vec::new();
        for item in manifest.as_array().into_iter().flatten() {
            let config = item
                .get("Config")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Format("manifest.json entry without Config".into()))?;
            let config_digest = self.store_blob(&dir.join(safe(config)?), None)?;
            let layers: Vec<PathBuf> = item
                .get("Layers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(safe)
                .collect::<Result<_>>()?;
            let tags: Vec<&str> = item
                .get("RepoTags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if tags.is_empty() {
                return Err(Error::Format(format!(
                    "image {config_digest} has no RepoTags to name it by"
                )));
            }
            for tag in tags {
                images.push(self.finish_image(
                    dir,
                    reference::normalize(tag)?,
                    &config_digest,
                    None,
                    &layers,
                    progress,
                )?);
            }
        }
        Ok(images)
    }
}

fn safe(p: &str) -> Result<PathBuf> {
    let path = PathBuf::from(p);
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(path)
    } else {
        Err(Error::Format(format!("path {p:?} escapes the archive")))
    }
}

fn check_digest(path: &Path, digest: &str) -> Result<()> {
    let mut reader = Hashing {
        inner: File::open(path).map_err(io_err(format!("open {}", path.display())))?,
        ctx: Context::new(&SHA256),
        count: 0,
    };
    io::copy(&mut reader, &mut io::sink()).map_err(io_err(format!("read {}", path.display())))?;
    let actual = format!("sha256:{}", sha256_hex(reader.ctx));
    if actual != digest {
        return Err(Error::Digest {
            path: path.display().to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// An overlayfs whiteout: a character device 0:0 that hides the name in lower layers.
fn whiteout(path: &Path) -> Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let _ = fs::remove_file(path);
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .map_err(|e| Error::Io(format!("whiteout {}", path.display()), io::Error::from(e)))
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => todo.push(entry.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// A temporary directory under the store, removed when dropped unless kept.
/// A scratch directory of the store, removed when dropped unless kept.
pub(crate) struct TempDir(pub(crate) PathBuf, bool);

impl TempDir {
    fn keep(mut self) -> PathBuf {
        self.1 = false;
        self.0.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn tempdir_in(parent: &Path) -> Result<TempDir> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = parent.join(format!("{}-{n}", std::process::id()));
    fs::create_dir_all(&path).map_err(io_err(format!("create {}", path.display())))?;
    Ok(TempDir(path, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_digests_name_the_repository_without_its_tag() {
        let image = |reference: &str, digest: Option<&str>| Image {
            reference: reference.into(),
            id: "sha256:c".into(),
            manifest_digest: digest.map(String::from),
            layers: vec![],
            size: 0,
        };
        assert_eq!(
            image("docker.io/library/busybox:1.36", Some("sha256:m"))
                .repo_digest()
                .as_deref(),
            Some("docker.io/library/busybox@sha256:m")
        );
        assert_eq!(
            image("127.0.0.1:5000/tools/busybox:1.36", Some("sha256:m"))
                .repo_digest()
                .as_deref(),
            Some("127.0.0.1:5000/tools/busybox@sha256:m")
        );
        assert_eq!(
            image("docker.io/library/busybox:1.36", None).repo_digest(),
            None
        );
    }
    use std::os::unix::fs::FileTypeExt;

    /// Builds the busybox archives with the shared image script (needs busybox-static).
    fn busybox_archives() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let shared = std::env::var("BOSUN_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
        let script = shared.join("images/busybox_image.py");
        assert!(
            script.exists(),
            "the image builder is not at {} (set BOSUN_SHARED=...)",
            script.display()
        );
        assert!(
            Path::new("/bin/busybox").exists(),
            "building the busybox image needs /bin/busybox (apt-get install busybox-static)"
        );
        let out = tempfile::tempdir().expect("dir");
        let status = std::process::Command::new("python3")
            .arg(&script)
            .arg(out.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("python3");
        assert!(status.success(), "busybox_image.py failed");
        let oci = out.path().join("busybox-oci.tar");
        let docker = out.path().join("busybox-docker.tar");
        (out, oci, docker)
    }

    #[test]
    fn imports_both_archive_formats_and_collects_garbage() {
        let (_archives, oci, docker) = busybox_archives();
        let root = tempfile::tempdir().expect("dir");
        let store = ImageStore::open(root.path()).expect("open");

        let imported = store.import(&oci, &Quiet).expect("import OCI");
        assert_eq!(imported.len(), 1);
        let img = &imported[0];
        assert_eq!(img.reference, "docker.io/library/busybox:1.36");
        assert!(img.manifest_digest.is_some());
        let layer = store.layer_dir(&img.layers[0]);
        assert!(layer.join("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(layer.join("bin/sh")).expect("sh is a link"),
            Path::new("busybox")
        );
        assert_eq!(
            img.config(&store).expect("config")["config"]["Cmd"],
            serde_json::json!(["sh"])
        );
        assert_eq!(store.get("busybox:1.36").expect("get").as_ref(), Some(img));

        let again = store
            .import(&docker, &Quiet)
            .expect("import docker archive");
        assert_eq!(again[0].reference, img.reference);
        assert_eq!(
            again[0].id, img.id,
            "the same config makes the same image id"
        );
        assert_eq!(again[0].layers, img.layers);
        assert_eq!(store.list().expect("list").len(), 1);

        store.remove("busybox:1.36").expect("remove");
        assert!(store.get("busybox:1.36").expect("get").is_none());
        assert!(!layer.exists(), "an unused layer is collected");
        assert_eq!(
            fs::read_dir(root.path().join("blobs/sha256"))
                .expect("blobs")
                .count(),
            0
        );
        assert!(matches!(
            store.remove("busybox:1.36"),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn a_corrupt_archive_changes_nothing() {
        let (_archives, oci, _) = busybox_archives();
        let bytes = fs::read(&oci).expect("read");
        // flip a byte inside busybox's binary in the layer blob
        let pos = bytes
            .windows(4)
            .position(|w| w == b"\x7fELF")
            .expect("an ELF header")
            + 200;
        let mut bad = bytes.clone();
        bad[pos] ^= 0xff;
        let dir = tempfile::tempdir().expect("dir");
        let bad_path = dir.path().join("bad.tar");
        fs::write(&bad_path, bad).expect("write");
        let root = tempfile::tempdir().expect("dir");
        let store = ImageStore::open(root.path()).expect("open");
        let err = store
            .import(&bad_path, &Quiet)
            .expect_err("digest mismatch");
        assert!(matches!(err, Error::Digest { .. }), "{err}");
        assert!(store.list().expect("list").is_empty());
        assert!(store.import(Path::new("/etc/hostname"), &Quiet).is_err());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            for (name, data) in [
                ("etc/keep", &b"k"[..]),
                ("etc/.wh.gone", b""),
                ("opt/.wh..wh..opq", b""),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_700_000_000);
                h.set_cksum();
                b.append_data(&mut h, name, data).expect("append");
            }
            b.finish().expect("finish");
        }
        let mut ctx = Context::new(&SHA256);
        ctx.update(&buf);
        let diff_id = format!("sha256:{}", sha256_hex(ctx));
        let root = tempfile::tempdir().expect("dir");
        let store = ImageStore::open(root.path()).expect("open");
        let blob = root.path().join("layer.tar");
        fs::write(&blob, &buf).expect("write");
        store.unpack_layer(&blob, &diff_id, &Quiet).expect("unpack");
        let layer = store.layer_dir(&diff_id);
        assert_eq!(fs::read(layer.join("etc/keep")).expect("keep"), b"k");
        let gone = fs::symlink_metadata(layer.join("etc/gone")).expect("whiteout");
        assert!(gone.file_type().is_char_device());
        assert_eq!(
            xattr::get(layer.join("opt"), "trusted.overlay.opaque").expect("xattr"),
            Some(b"y".to_vec())
        );
    }
}
