//! A container's root filesystem: the image's unpacked layers stacked read-only under a
//! writable upper directory with overlayfs, as containerd's overlay snapshotter does.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Mounts `lower` (topmost layer first) under `upper` at `target`.
pub fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    if lower.is_empty() {
        return Err(io::Error::other("the image has no layers"));
    }
    let lowerdir = lower
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(io::Error::from)
}

/// Unmounts whatever is mounted at `target`; nothing mounted there is not an error.
pub fn unmount(target: &Path) {
    let _ = umount2(target, MntFlags::MNT_DETACH);
}
