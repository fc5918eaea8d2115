//! Containers on a node: created from an image and a [`ContainerConfig`], started under a
//! supervisor process ([`crate::shim`]) that outlives whoever started it, observed through files
//! the supervisor writes, signalled, and removed.
//!
//! ```text
//! <root>/<id>/meta.json      the ContainerConfig the agent asked for
//! <root>/<id>/config.json    the OCI runtime spec (the bundle), rootfs/ its overlayfs root
//! <root>/<id>/upper, work/   the overlayfs upper and work directories
//! <root>/<id>/started.json   written by the supervisor once the process runs
//! <root>/<id>/exit.json      written by the supervisor once it has exited
//! ```
//!
//! Everything the agent knows about a container can be read back from these files, so an agent
//! that restarts re-adopts its containers instead of restarting them.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::bundle;
use crate::images::ImageStore;

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the container's files failed.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// The image is not in the store.
    #[error("image {0:?} is not present on this node")]
    ImageMissing(String),
    /// The container could not be created (bundle, rootfs, spec).
    #[error("create container: {0}")]
    Create(String),
    /// The container's process could not be started.
    #[error("start container: {0}")]
    Start(String),
    /// No container has this id.
    #[error("container {0} not found")]
    NotFound(String),
}

/// The result type of container operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::Io(what.to_string(), e)
}

/// A bind mount into the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// The path on the node.
    pub source: PathBuf,
    /// The path inside the container.
    pub destination: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// The namespaces a container joins instead of creating its own: its pod's sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SharedNamespaces {
    /// The pod's network namespace (a pinned namespace file).
    pub network: Option<PathBuf>,
    /// The pod's IPC namespace.
    pub ipc: Option<PathBuf>,
    /// The pod's UTS namespace (its hostname).
    pub uts: Option<PathBuf>,
    /// The pod's process namespace, when its containers share one (`shareProcessNamespace`).
    #[serde(default)]
    pub pid: Option<PathBuf>,
}

/// Resource limits applied to the container's cgroup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CPU shares (cgroup v1 `cpu.shares`; converted to a weight on v2).
    pub cpu_shares: Option<u64>,
    /// CPU quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// CPU period in microseconds.
    pub cpu_period: Option<u64>,
    /// The process's OOM score adjustment (-1000 to 1000).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

/// What a container is: everything needed to create and start it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    /// The image reference, as the pod spec names it.
    pub image: String,
    /// The process: argv, environment (`NAME=value`), working directory.
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// The working directory; `/` when empty.
    pub cwd: String,
    /// The user id the process runs as.
    pub uid: u32,
    /// The group id the process runs as.
    pub gid: u32,
    /// Extra bind mounts (volumes, /etc/hosts, /etc/resolv.conf...).
    pub mounts: Vec<Mount>,
    /// The pod's namespaces to join.
    pub namespaces: SharedNamespaces,
    /// The cgroup path, relative to each hierarchy's root (e.g. `/bosun/pod<uid>/<id>`).
    pub cgroup_path: String,
    /// Resource limits.
    #[serde(default)]
    pub resources: Resources,
    /// The file the container's stdout and stderr are written to, in the CRI log format.
    pub log_path: PathBuf,
    /// Free-form labels the agent uses to find its containers again (pod uid, container name,
    /// attempt...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether the process gets a standard input that `kubectl attach -i` can write to (a FIFO
    /// in the container's directory); otherwise it reads /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Whether that standard input ends when the first writer to it goes (`stdinOnce`).
    #[serde(default)]
    pub stdin_once: bool,
    /// Whether the process runs on a terminal ([`crate::terminal`]), which its supervisor
    /// holds: its output goes to the log as stdout, its input is the standard input above, and
    /// sizes written to the `resize` FIFO resize it.
    #[serde(default)]
    pub tty: bool,
    /// The security settings.
    #[serde(default)]
    pub security: Security,
}

/// A container's security settings, as the CRI's LinuxContainerSecurityContext says them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Security {
    /// Further groups of the process (supplementalGroups, fsGroup).
    pub additional_gids: Vec<u32>,
    /// The root filesystem is mounted read-only.
    pub read_only_rootfs: bool,
    /// The process and its children cannot gain privileges (no_new_privs).
    pub no_new_privileges: bool,
    /// Every capability, every device, no masked paths, /sys writable.
    pub privileged: bool,
    /// Capabilities added to the default set (`NET_ADMIN`, or `ALL`).
    pub add_capabilities: Vec<String>,
    /// Capabilities dropped from it (`ALL` drops every one not added).
    pub drop_capabilities: Vec<String>,
    /// Namespaced kernel parameters to set.
    pub sysctls: BTreeMap<String, String>,
    /// Share the node's IPC namespace instead of the pod's.
    pub host_ipc: bool,
    /// Share the node's PID namespace.
    pub host_pid: bool,
    /// `/proc` is not masked (procMount Unmasked).
    pub unmasked_proc: bool,
    /// The seccomp filter.
    pub seccomp: Seccomp,
}

/// A container's seccomp filter, as a pod's `seccompProfile` names it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Seccomp {
    /// No filter (Kubernetes' default).
    #[default]
    Unconfined,
    /// The runtime's default profile ([`crate::bundle`]).
    RuntimeDefault,
    /// A profile file of the node's, in the OCI seccomp format (JSON), read when the container
    /// is created (as a CRI runtime reads the file kubelet names).
    Localhost(PathBuf),
}

/// Written by the supervisor once the container's process runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// The container's PID 1, as the node sees it.
    pub pid: i32,
    /// The supervisor's pid.
    pub shim_pid: i32,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// Written by the supervisor once the container's process has exited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exited {
    /// The exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer ended it.
    #[serde(default)]
    pub oom_killed: bool,
    /// When it exited (RFC 3339).
    pub finished_at: String,
    /// Why it never ran, when it could not be started.
    #[serde(default)]
    pub start_error: Option<String>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running(Started),
    /// It ran (or failed to start) and has exited.
    Exited(Option<Started>, Exited),
}

/// A container as read back from the node.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// What it was created from.
    pub config: ContainerConfig,
    /// The id of the image it was created from (`sha256:...`).
    pub image_id: String,
    /// Where it is in its life.
    pub state: State,
}

/// The containers of one node.
pub struct Runtime {
    root: PathBuf,
    state_root: PathBuf,
    shim: PathBuf,
}

/// What the agent keeps of a container's image beside its config.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta {
    pub(crate) config: ContainerConfig,
    image_id: String,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Create(e.to_string()))?;
    fs::write(&tmp, bytes).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("rename {}", path.display())))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| Error::Io(path.display().to_string(), io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(path.display().to_string(), e)),
    }
}

impl Runtime {
    /// A runtime keeping containers under `root`, the supervisors' runtime state under
    /// `state_root`, and starting supervisors with the program `shim` (which must run
    /// [`crate::shim::main`] when given the `shim` argument).
    pub fn open(root: &Path, state_root: &Path, shim: &Path) -> Result<Self> {
        for dir in [root, state_root] {
            fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            state_root: state_root.to_path_buf(),
            shim: shim.to_path_buf(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The program that runs supervisors, exec helpers and pause processes.
    pub fn program(&self) -> &Path {
        &self.shim
    }

    /// Creates a container: its overlayfs root from the image's layers and its OCI bundle.
    pub fn create(&self, id: &str, images: &ImageStore, config: &ContainerConfig) -> Result<()> {
        let image = images
            .get(&config.image)
            .map_err(|e| Error::Create(e.to_string()))?
            .ok_or_else(|| Error::ImageMissing(config.image.clone()))?;
        let dir = self.dir(id);
        for sub in ["rootfs", "upper", "work"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(io_err(format!("create {}", dir.display())))?;
        }
        write_json(
            &dir.join("meta.json"),
            &Meta {
                config: config.clone(),
                image_id: image.id.clone(),
            },
        )?;
        let lower: Vec<PathBuf> = image
            .layers
            .iter()
            .rev()
            .map(|l| images.layer_dir(l))
            .collect();
        crate::rootfs::mount_overlay(
            &lower,
            &dir.join("upper"),
            &dir.join("work"),
            &dir.join("rootfs"),
        )
        .map_err(|e| Error::Create(format!("mount the image's layers: {e}")))?;
        let spec = bundle::spec(config).map_err(Error::Create)?;
        let text = serde_json::to_vec_pretty(&spec).map_err(|e| Error::Create(e.to_string()))?;
        fs::write(dir.join("config.json"), text).map_err(io_err("write config.json"))?;
        if let Some(parent) = config.log_path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        }
        Ok(())
    }

    /// Starts a created container under its own supervisor and returns once its process runs
    /// (or failed to start: the error says why, and the container is then exited).
    pub fn start(&self, id: &str) -> Result<Started> {
        let dir = self.dir(id);
        if !dir.join("config.json").exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        let mut child = Command::new(&self.shim)
            .arg("shim")
            .arg("--id")
            .arg(id)
            .arg("--bundle")
            .arg(&dir)
            .arg("--state-root")
            .arg(&self.state_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Start(format!("run the supervisor {}: {e}", self.shim.display()))
            })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(io_err("read the supervisor's answer"))?;
        }
        // The supervisor lives on in its own session; a thread reaps it when it ends so that it
        // leaves no zombie behind while this process lives.
        std::thread::spawn(move || child.wait());
        match serde_json::from_str::<crate::shim::Answer>(line.trim()) {
            Ok(crate::shim::Answer::Started(s)) => Ok(s),
            Ok(crate::shim::Answer::Failed(e)) => Err(Error::Start(e)),
            Err(_) => Err(Error::Start(format!(
                "the supervisor ended without an answer (see {})",
                dir.join("shim.log").display()
            ))),
        }
    }

    /// Reads a container back.
    pub fn get(&self, id: &str) -> Result<Container> {
        let dir = self.dir(id);
        let meta: Meta =
            read_json(&dir.join("meta.json"))?.ok_or_else(|| Error::NotFound(id.to_string()))?;
        let started: Option<Started> = read_json(&dir.join("started.json"))?;
        let exited: Option<Exited> = read_json(&dir.join("exit.json"))?;
        let state = match (started, exited) {
            (started, Some(exited)) => State::Exited(started, exited),
            (Some(started), None) if !supervisor_alive(&started) => {
                // The supervisor vanished without writing an exit (the node rebooted, or it was
                // killed): the container is gone with it.
                State::Exited(
                    Some(started),
                    Exited {
                        exit_code: 255,
                        signal: None,
                        oom_killed: false,
                        finished_at: now_rfc3339(),
                        start_error: None,
                    },
                )
            }
            (Some(started), None) => State::Running(started),
            (None, None) => State::Created,
        };
        Ok(Container {
            id: id.to_string(),
            config: meta.config,
            image_id: meta.image_id,
            state,
        })
    }

    /// Every container on the node.
    pub fn list(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.root).map_err(io_err(format!("read {}", self.root.display())))?;
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            match self.get(&id) {
                Ok(c) => out.push(c),
                Err(e) => tracing::warn!(%id, error = %e, "skipping an unreadable container"),
            }
        }
        Ok(out)
    }

    /// The ids of the images the node's containers were created from (running or not: their
    /// roots stay mounted until they are removed).
    pub fn images_in_use(&self) -> Result<std::collections::BTreeSet<String>> {
        Ok(self.list()?.into_iter().map(|c| c.image_id).collect())
    }

    /// Sends a signal to a running container's process.
    pub fn signal(&self, id: &str, signal: Signal) -> Result<()> {
        if let State::Running(started) = self.get(id)?.state {
            match kill(Pid::from_raw(started.pid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(Error::Io(format!("signal {id}"), e.into())),
            }
        }
        Ok(())
    }

    /// Stops a container: SIGTERM, then SIGKILL once `grace` has passed. Returns once it has
    /// exited.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        self.signal(id, Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        let mut killed = false;
        loop {
            match self.get(id)?.state {
                State::Exited(..) | State::Created => return Ok(()),
                State::Running(_) => {}
            }
            if !killed && Instant::now() >= deadline {
                self.signal(id, Signal::SIGKILL)?;
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The FIFO that is the standard input of container `id`, when it was created with one.
    pub fn stdin_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("stdin")
    }

    /// The FIFO that takes terminal sizes for container `id` (if it has a terminal), one JSON
    /// [`crate::terminal::Size`] a line.
    pub fn resize_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("resize")
    }

    /// The helper command that runs `command` inside running container `id` (see
    /// [`crate::exec`]); the caller sets its stdio. With `console_socket`, the command runs on
    /// a terminal whose master end is sent there.
    pub fn exec_command(
        &self,
        id: &str,
        command: &[String],
        console_socket: Option<&Path>,
    ) -> Command {
        crate::exec::helper(&self.shim, &self.state_root, id, command, console_socket)
    }

    /// A fresh path for a console socket ([`crate::terminal`]).
    pub fn console_socket_path(&self) -> PathBuf {
        crate::terminal::socket_path(&self.state_root)
    }

    /// Removes a container that is not running: its root, bundle and state (its log stays).
    pub fn remove(&self, id: &str) -> Result<()> {
        if let State::Running(_) = self.get(id)?.state {
            self.stop(id, Duration::ZERO)?;
        }
        let dir = self.dir(id);
        crate::rootfs::unmount(&dir.join("rootfs"));
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))
    }
}

fn supervisor_alive(started: &Started) -> bool {
    match kill(Pid::from_raw(started.shim_pid), None) {
        Ok(()) => {
            // The pid is alive; make sure it is still our supervisor and not a reused pid.
            fs::read_to_string(format!("/proc/{}/cmdline", started.shim_pid))
                .map(|c| c.split('\0').any(|a| a == "shim"))
                .unwrap_or(false)
        }
        Err(_) => false,
    }
}

/// Records that a container never ran, when its supervisor could not start it.
pub(crate) fn record_start_failure(bundle: &Path, error: &str) -> Result<()> {
    write_json(
        &bundle.join("exit.json"),
        &Exited {
            exit_code: 128,
            signal: None,
            oom_killed: false,
            finished_at: now_rfc3339(),
            start_error: Some(error.to_string()),
        },
    )
}

pub(crate) fn record_started(bundle: &Path, started: &Started) -> Result<()> {
    write_json(&bundle.join("started.json"), started)
}

pub(crate) fn record_exit(bundle: &Path, exited: &Exited) -> Result<()> {
    write_json(&bundle.join("exit.json"), exited)
}

pub(crate) fn now() -> String {
    now_rfc3339()
}
