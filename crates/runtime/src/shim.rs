//! The supervisor of one container, as containerd-shim or conmon: a small process of its own
//! session that creates and starts the container with youki's libcontainer, owns its stdio
//! (copied into the container's log file in the CRI format), reaps it, and writes down how it
//! ended. Because the supervisor is the container's parent and not the agent, the agent can stop,
//! restart and re-adopt running containers.
//!
//! It answers whoever started it with one JSON line on stdout ([`Answer`]) once the container's
//! process runs or could not be started, and then needs nobody.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::container::{self, Exited, Started};
use crate::cri_log;

/// The supervisor's answer to whoever started it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Answer {
    /// The container's process runs.
    Started(Started),
    /// It could not be started, and why.
    Failed(String),
}

/// What the supervisor is told.
pub struct Args {
    /// The container's id.
    pub id: String,
    /// Its bundle directory (config.json, rootfs, meta.json).
    pub bundle: PathBuf,
    /// Where libcontainer keeps its state of running containers.
    pub state_root: PathBuf,
}

fn log_line(bundle: &Path, msg: &str) {
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle.join("shim.log"))
    {
        let _ = writeln!(f, "{} {msg}", container::now());
    }
}

fn answer(a: &Answer) {
    if let Ok(line) = serde_json::to_string(a) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Runs the supervisor; returns the process's exit code.
pub fn main(args: Args) -> i32 {
    // Its own session, so that signals meant for the agent's terminal or process group never
    // reach the container; and a subreaper, so that the container's processes are its children.
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_child_subreaper(true);
    match supervise(&args) {
        Ok(()) => 0,
        Err(e) => {
            log_line(&args.bundle, &e);
            1
        }
    }
}

fn supervise(args: &Args) -> Result<(), String> {
    let bundle = &args.bundle;
    let meta = std::fs::read(bundle.join("meta.json")).map_err(|e| format!("read meta: {e}"))?;
    let meta: container::Meta =
        serde_json::from_slice(&meta).map_err(|e| format!("parse meta: {e}"))?;
    let config = meta.config;
    let log = Arc::new(Mutex::new(
        LogFile::open(config.log_path.clone())
            .map_err(|e| format!("open log {}: {e}", config.log_path.display()))?,
    ));
    let input = if config.stdin {
        // A FIFO `kubectl attach -i` writes to; what comes through it is copied to the
        // container, whose input ends with the first writer's if stdinOnce says so.
        let fifo = bundle.join("stdin");
        make_fifo(&fifo)?;
        Some(fifo)
    } else {
        None
    };

    let builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.state_root);
    let mut copiers = Vec::new();
    let mut console = None;
    let built = if config.tty {
        // The container's terminal: libcontainer sends its master end to this socket.
        let path = crate::terminal::socket_path(&args.state_root);
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| format!("bind the console socket {}: {e}", path.display()))?;
        let built = builder
            .map(|b| b.with_console_socket(Some(&path)))
            .and_then(|b| {
                b.as_init(bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    .build()
            });
        if built.is_ok() {
            let master = listener
                .accept()
                .and_then(|(stream, _)| crate::terminal::receive_master(&stream))
                .map_err(|e| format!("receive the container's terminal: {e}"))?;
            copiers.push(spawn_copier(clone(&master)?, "stdout", log.clone(), true));
            if let Some(fifo) = input {
                spawn_input(fifo, clone(&master)?, config.stdin_once, true);
            }
            let resize = bundle.join("resize");
            make_fifo(&resize)?;
            spawn_resizer(resize, clone(&master)?);
            console = Some(master);
        }
        let _ = std::fs::remove_file(&path);
        built
    } else {
        let (out_r, out_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let stdin: OwnedFd = match input {
            Some(fifo) => {
                let (in_r, in_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
                spawn_input(fifo, in_w, config.stdin_once, false);
                in_r
            }
            None => File::open("/dev/null")
                .map_err(|e| format!("open /dev/null: {e}"))?
                .into(),
        };
        copiers.push(spawn_copier(out_r, "stdout", log.clone(), false));
        copiers.push(spawn_copier(err_r, "stderr", log.clone(), false));
        builder
            .map(|b| b.with_stdin(stdin).with_stdout(out_w).with_stderr(err_w))
            .and_then(|b| {
                b.as_init(bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    .build()
            })
    };
    let mut ctr = match built.and_then(|mut c| c.start().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            // Everything is written before the answer: once answered, the agent may remove the
            // bundle at once, and a late write would leave it half removed.
            let msg = e.to_string();
            log_line(bundle, &msg);
            let _ = container::record_start_failure(bundle, &msg);
            cleanup_failed(&args.id, &args.state_root);
            answer(&Answer::Failed(msg));
            return Ok(());
        }
    };
    let pid = Pid::from_raw(ctr.pid().ok_or("the container has no pid")?.as_raw());
    let started = Started {
        pid: pid.as_raw(),
        shim_pid: std::process::id() as i32,
        started_at: container::now(),
    };
    container::record_started(bundle, &started).map_err(|e| e.to_string())?;
    answer(&Answer::Started(started));

    let status = wait_for(pid);
    // the terminal's output ends once every process on it has gone
    drop(console);
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let oom_killed = signal == Some(9) && oom_kills(&config.cgroup_path) > 0;
    // Whatever is left of the container's output is read until every writer has gone (the
    // kernel ends the container's other processes with its PID 1), within reason.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in copiers {
            let _ = c.join();
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    if let Err(e) = ctr.delete(true) {
        log_line(bundle, &format!("delete: {e}"));
    }
    // The exit is recorded last: from then on the agent may remove the bundle.
    container::record_exit(
        bundle,
        &Exited {
            exit_code,
            signal,
            oom_killed,
            finished_at: container::now(),
            start_error: None,
        },
    )
    .map_err(|e| e.to_string())
}

fn cleanup_failed(id: &str, state_root: &Path) {
    if let Ok(mut c) = libcontainer::container::Container::load(state_root.join(id)) {
        let _ = c.delete(true);
    }
}

/// Waits for the container's PID 1, reaping every other child on the way (the supervisor is a
/// subreaper).
fn wait_for(pid: Pid) -> WaitStatus {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status @ (WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _))) if p == pid => {
                return status;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return WaitStatus::Exited(pid, 255),
        }
    }
}

/// How many times the kernel's OOM killer struck in the container's cgroup (v1 or v2).
fn oom_kills(cgroup_path: &str) -> u64 {
    let rel = cgroup_path.trim_start_matches('/');
    for (file, key) in [
        (
            format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"),
            "oom_kill",
        ),
        (format!("/sys/fs/cgroup/{rel}/memory.events"), "oom_kill"),
    ] {
        if let Ok(text) = std::fs::read_to_string(&file) {
            // e.g. "oom_kill_disable 0\nunder_oom 0\noom_kill 1": the key must match whole.
            for line in text.lines() {
                if let Some((k, v)) = line.split_once(' ')
                    && k == key
                {
                    return v.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

/// The largest a log file grows before it is rotated (kubelet's `containerLogMaxSize`).
const LOG_MAX_SIZE: u64 = 10 << 20;
/// How many files a container's log keeps, the current one included (`containerLogMaxFiles`).
const LOG_MAX_FILES: usize = 5;

/// A container's log file, rotated by size: `N.log` is current, `N.log.1` the one before...
struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl LogFile {
    fn open(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, file, size })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > LOG_MAX_SIZE {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..LOG_MAX_FILES - 1).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        *self = Self::open(self.path.clone())?;
        Ok(())
    }
}

/// Copies what the container writes to `fd` into its log. From a terminal, what has come is
/// written at once, a line's pieces as partial records, so that `kubectl attach` shows a
/// prompt before its line ends.
fn spawn_copier(
    fd: OwnedFd,
    stream: &'static str,
    log: Arc<Mutex<LogFile>>,
    terminal: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = File::from(fd);
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending = Vec::new();
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut lines = Vec::new();
            cri_log::drain_lines(&mut pending, stream, &container::now(), &mut lines);
            if terminal && !pending.is_empty() {
                cri_log::push_line(&mut lines, &container::now(), stream, true, &pending);
                pending.clear();
            }
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&lines);
            }
        }
        if !pending.is_empty() {
            let mut lines = Vec::new();
            cri_log::push_line(&mut lines, &container::now(), stream, false, &pending);
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&lines);
            }
        }
    })
}

/// Creates a FIFO unless it is there.
fn make_fifo(path: &Path) -> Result<(), String> {
    if !path.exists() {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("create the FIFO {}: {e}", path.display()))?;
    }
    Ok(())
}

fn clone(fd: &OwnedFd) -> Result<OwnedFd, String> {
    fd.try_clone().map_err(|e| format!("dup: {e}"))
}

/// Copies what writers put into the FIFO at `fifo` to the container's input `to`, writer after
/// writer, or only the first one's with `once`. Then the input ends: the pipe closes, or a
/// terminal gets its end-of-file character (Ctrl-D).
fn spawn_input(fifo: PathBuf, to: OwnedFd, once: bool, terminal: bool) {
    std::thread::spawn(move || {
        let mut to = File::from(to);
        loop {
            // blocks until a writer comes
            let Ok(mut from) = File::open(&fifo) else {
                return;
            };
            if io::copy(&mut from, &mut to).is_err() || once {
                break;
            }
        }
        if terminal {
            let _ = to.write_all(&[4]);
        }
    });
}

/// Applies the sizes written to the FIFO at `fifo` to the terminal whose master end is `master`.
fn spawn_resizer(fifo: PathBuf, master: OwnedFd) {
    std::thread::spawn(move || {
        // opened for writing too, so that it never ends between writers
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&fifo) else {
            return;
        };
        for line in io::BufRead::lines(io::BufReader::new(file)).map_while(Result::ok) {
            if let Ok(size) = serde_json::from_str(&line) {
                let _ = crate::terminal::resize(&master, size);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_by_size_and_keep_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(path.clone()).expect("open");
        let chunk = vec![b'x'; (LOG_MAX_SIZE / 2 + 1) as usize];
        for _ in 0..20 {
            log.write_all(&chunk).expect("write");
        }
        assert!(std::fs::metadata(&path).expect("current").len() <= LOG_MAX_SIZE);
        for n in 1..LOG_MAX_FILES {
            assert!(dir.path().join(format!("0.log.{n}")).exists(), "0.log.{n}");
        }
        assert!(!dir.path().join(format!("0.log.{LOG_MAX_FILES}")).exists());
    }
}
