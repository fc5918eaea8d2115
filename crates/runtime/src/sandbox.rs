//! A pod's sandbox: the network, IPC and UTS namespaces its containers share, pinned by bind
//! mounts of their namespace files so that they live without any process (upstream holds them
//! with a pause container; a pinned file does the same without one). The UTS namespace carries
//! the pod's hostname. A pod in the node's network (`hostNetwork`) pins the node's own network
//! and UTS namespaces instead, so its containers join those the same way.
//!
//! ```text
//! <root>/<pod uid>/net   ipc   uts
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// The pinned namespaces of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// The directory holding the pins.
    pub dir: PathBuf,
}

const KINDS: [&str; 3] = ["net", "ipc", "uts"];

impl Sandbox {
    /// The sandbox of a pod under `root` (it may or may not exist).
    pub fn at(root: &Path, pod_uid: &str) -> Self {
        Self {
            dir: root.join(pod_uid),
        }
    }

    /// The pinned network namespace.
    pub fn net(&self) -> PathBuf {
        self.dir.join("net")
    }

    /// The pinned IPC namespace.
    pub fn ipc(&self) -> PathBuf {
        self.dir.join("ipc")
    }

    /// The pinned UTS namespace.
    pub fn uts(&self) -> PathBuf {
        self.dir.join("uts")
    }

    /// Whether its namespaces are pinned (they survive agent restarts, not node reboots).
    pub fn exists(&self) -> bool {
        KINDS.iter().all(|k| is_namespace(&self.dir.join(k)))
    }

    /// Creates the namespaces, with `hostname` in the UTS one, or with the node's network and
    /// UTS namespaces if `host_network`. A sandbox that exists is kept.
    pub fn create(&self, hostname: &str, host_network: bool) -> io::Result<()> {
        if self.exists() {
            return Ok(());
        }
        self.remove();
        fs::create_dir_all(&self.dir)?;
        for kind in KINDS {
            fs::File::create(self.dir.join(kind))?;
        }
        let dir = self.dir.clone();
        let hostname = hostname.to_string();
        // Namespaces belong to threads: a fresh thread enters new ones, pins them and ends,
        // leaving every other thread of the agent where it was.
        std::thread::spawn(move || -> io::Result<()> {
            if host_network {
                unshare(CloneFlags::CLONE_NEWIPC)?;
            } else {
                unshare(
                    CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
                )?;
                nix::unistd::sethostname(&hostname)?;
                // A child forked from this thread is in its namespaces: loopback comes up there.
                let lo = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()?;
                if !lo.success() {
                    return Err(io::Error::other(
                        "ip link set lo up failed in the pod's network",
                    ));
                }
            }
            for kind in KINDS {
                let own = format!("/proc/thread-self/ns/{kind}");
                mount(
                    Some(own.as_str()),
                    &dir.join(kind),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    /// Unpins the namespaces (they end with their last process) and removes the directory.
    pub fn remove(&self) {
        for kind in KINDS {
            let _ = umount2(&self.dir.join(kind), MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether a namespace is mounted at `path` (an nsfs bind mount, not the empty file under it).
fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_unpins_namespaces_with_the_hostname() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test needs root (it creates namespaces)");
        }
        let root = tempfile::tempdir().expect("test");
        let sandbox = Sandbox::at(root.path(), "uid-1");
        assert!(!sandbox.exists());
        sandbox.create("my-pod", false).expect("test");
        assert!(sandbox.exists());
        let out = std::process::Command::new("nsenter")
            .arg(format!("--uts={}", sandbox.uts().display()))
            .arg("hostname")
            .output()
            .expect("test");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "my-pod");
        sandbox.create("other", false).expect("test"); // kept as it is
        sandbox.remove();
        assert!(!sandbox.exists());
        assert!(!sandbox.dir.exists());
    }

    #[test]
    fn a_host_network_sandbox_pins_the_nodes_network_and_hostname() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test needs root (it creates namespaces)");
        }
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("test");
        let sandbox = Sandbox::at(root.path(), "uid-2");
        let before = nix::unistd::gethostname().expect("hostname");
        sandbox.create("ignored", true).expect("test");
        assert_eq!(nix::unistd::gethostname().expect("hostname"), before);
        let ino = |p: &Path| fs::metadata(p).expect("ns").ino();
        assert_eq!(ino(&sandbox.net()), ino(Path::new("/proc/self/ns/net")));
        assert_eq!(ino(&sandbox.uts()), ino(Path::new("/proc/self/ns/uts")));
        assert_ne!(ino(&sandbox.ipc()), ino(Path::new("/proc/self/ns/ipc")));
        sandbox.remove();
    }
}
