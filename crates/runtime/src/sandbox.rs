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
use std::os::unix::fs::MetadataExt;
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

    /// The pinned PID namespace, when the pod's containers share one.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("pid")
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

    /// Gives the pod one PID namespace for all its containers, whose PID 1 is `program` run as
    /// `program pause` (the bosun binary). One that is already held is kept.
    pub fn share_processes(&self, program: &Path) -> io::Result<()> {
        if is_namespace(&self.pid()) && self.pause_pid().is_some() {
            return Ok(());
        }
        self.stop_pause();
        fs::File::create(self.pid())?;
        let program = program.to_path_buf();
        let dir = self.dir.clone();
        // As for the other namespaces, a fresh thread enters the new one: its next child is
        // that namespace's first process.
        std::thread::spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWPID)?;
            let pause = Command::new(&program)
                .arg("pause")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let own = format!("/proc/{}/ns/pid", pause.id());
            mount(
                Some(own.as_str()),
                &dir.join("pid"),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            fs::write(dir.join("pause.pid"), pause.id().to_string())
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    /// The pause process holding the shared PID namespace, if it still does.
    fn pause_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.dir.join("pause.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let held = fs::metadata(self.pid()).ok()?.ino();
        let its = fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?.ino();
        (held == its).then_some(pid)
    }

    /// Ends the pause process, and with it every process left in the shared PID namespace.
    fn stop_pause(&self) {
        if let Some(pid) = self.pause_pid() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            // reaped here when this process started it; otherwise by whoever inherited it
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let _ = umount2(&self.pid(), MntFlags::MNT_DETACH);
    }

    /// Unpins the namespaces (they end with their last process) and removes the directory.
    pub fn remove(&self) {
        self.stop_pause();
        for kind in KINDS {
            let _ = umount2(&self.dir.join(kind), MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// PID 1 of a pod's shared PID namespace (`bosun pause`): reaps the processes orphaned there
/// and waits; SIGTERM or SIGINT end it, as they end upstream's pause.
pub fn pause() -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    if signals.thread_block().is_err() {
        return 1;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(_) => return 0,
            Err(_) => {}
        }
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
    fn a_shared_pid_namespace_is_held_by_a_pause_process_until_removed() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test needs root (it creates namespaces)");
        }
        let root = tempfile::tempdir().expect("test");
        let sandbox = Sandbox::at(root.path(), "uid-3");
        sandbox.create("shared", false).expect("test");
        // any program stands in for `bosun pause`: sleep becomes PID 1 of the new namespace
        let program = root.path().join("pause");
        fs::write(&program, "#!/bin/sh\nexec sleep 60\n").expect("test");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).expect("test");
        sandbox.share_processes(&program).expect("test");
        let pid = sandbox.pause_pid().expect("held");
        let out = Command::new("nsenter")
            .arg(format!("--pid={}", sandbox.pid().display()))
            .args(["sh", "-c", "echo $$"])
            .output()
            .expect("test");
        let inside: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a pid");
        assert!(inside > 1, "a process that joins is not PID 1: {inside}");
        sandbox.share_processes(&program).expect("test");
        assert_eq!(sandbox.pause_pid(), Some(pid), "kept as it is");
        sandbox.remove();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pause ended");
    }

    #[test]
    fn a_host_network_sandbox_pins_the_nodes_network_and_hostname() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test needs root (it creates namespaces)");
        }
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
