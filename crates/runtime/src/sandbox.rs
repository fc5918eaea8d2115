//! A pod's sandbox: the network, IPC and UTS namespaces its containers share, pinned by bind
//! mounts of their namespace files so that they live without any process (upstream holds them
//! with a pause container; a pinned file does the same without one). The UTS namespace carries
//! the pod's hostname. A pod in the node's network (`hostNetwork`) pins the node's own network
//! and UTS namespaces instead, so its containers join those the same way.
//!
//! A pod that shares its process namespace (`shareProcessNamespace`) needs more than a pin: a
//! PID namespace takes no new process once its first one, PID 1, has ended. There a small pause
//! process, as upstream's, is PID 1 of a namespace of its own: it reaps the orphans the pod's
//! containers leave, and its end (when the sandbox goes) ends every process of the pod. It runs
//! in its own session, chrooted to an empty directory and not dumpable, so that the containers,
//! which see it as their PID 1, cannot reach the node through `/proc/1/root`.
//!
//! ```text
//! <root>/<pod uid>/net   ipc   uts   [pid   pause.pid   pause-root/]
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

    /// The pod's shared process namespace, when it has one.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn pause_pid_file(&self) -> PathBuf {
        self.dir.join("pause.pid")
    }

    /// The pause process holding the shared process namespace, if it lives: the recorded pid
    /// must still be in the pinned namespace (a pid is reused once its process has gone).
    pub fn pause(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pause_pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let id = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let pinned = id(&self.pid()).filter(|_| is_namespace(&self.pid()))?;
        (id(Path::new(&format!("/proc/{pid}/ns/pid"))) == Some(pinned)).then_some(pid)
    }

    /// Gives the pod's containers one process namespace, held by a pause process started from
    /// `program` (which must run [`pause_main`] given the `pause` argument). One that lives is
    /// kept.
    pub fn share_processes(&self, program: &Path) -> io::Result<()> {
        if self.pause().is_some() {
            return Ok(());
        }
        let _ = umount2(&self.pid(), MntFlags::MNT_DETACH);
        let root = self.dir.join("pause-root");
        fs::create_dir_all(&root)?;
        let program = program.to_path_buf();
        // as with the other namespaces, a fresh thread unshares: its next child, the pause
        // process, is PID 1 of a new namespace
        let pid = std::thread::spawn(move || -> io::Result<u32> {
            unshare(CloneFlags::CLONE_NEWPID)?;
            let child = Command::new(program)
                .arg0("/pause")
                .arg("pause")
                .current_dir(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            Ok(child.id())
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        fs::File::create(self.pid())?;
        mount(
            Some(format!("/proc/{pid}/ns/pid").as_str()),
            &self.pid(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        fs::write(self.pause_pid_file(), pid.to_string())
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
        if let Some(pid) = self.pause() {
            // the end of a namespace's PID 1 ends all of its processes
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            // reaped here if this agent started it (else its reaper is init)
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let _ = umount2(&self.pid(), MntFlags::MNT_DETACH);
        for kind in KINDS {
            let _ = umount2(&self.dir.join(kind), MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The pause process, run as `bosun pause` by [`Sandbox::share_processes`] in the empty
/// directory it chroots to: PID 1 of a pod's process namespace, it reaps whatever ends there,
/// until killed.
pub fn pause_main() -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let _ = nix::unistd::setsid();
    if nix::unistd::chroot(".").is_err() || nix::unistd::chdir("/").is_err() {
        return 1;
    }
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::sys::prctl::set_name(c"pause");
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    if children.thread_block().is_err() {
        return 1;
    }
    loop {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let _ = children.wait();
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
