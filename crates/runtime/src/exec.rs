//! Running a further process inside a running container (`kubectl exec`), as `runc exec` does:
//! a helper process, started with the stdio the caller wants the process to have, joins the
//! container's namespaces and cgroup with libcontainer's tenant builder, waits for the process
//! and exits with its exit code (128 + the signal when a signal ended it). The process is the
//! container's own with other arguments, as the CRI's exec makes it: the same user and groups,
//! capabilities, environment, working directory and no_new_privs. Given a console socket, the
//! process runs on a terminal of its own ([`crate::terminal`]), whose master end goes there.

use std::path::{Path, PathBuf};
use std::process::Command;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// What the helper is told.
pub struct Args {
    /// The container's id.
    pub id: String,
    /// Where libcontainer keeps the state of running containers.
    pub state_root: PathBuf,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Where to send the master end of the process's terminal; none: no terminal.
    pub console_socket: Option<PathBuf>,
}

/// The helper command that runs `command` in container `id`; the caller sets its stdio. Its
/// exit code is the process's; 126 means the process could not be started (the reason is on
/// its standard error). With `console_socket`, the process gets a terminal.
pub fn helper(
    program: &Path,
    state_root: &Path,
    id: &str,
    command: &[String],
    console_socket: Option<&Path>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("exec-in")
        .arg("--id")
        .arg(id)
        .arg("--state-root")
        .arg(state_root);
    if let Some(socket) = console_socket {
        cmd.arg("--console-socket").arg(socket);
    }
    cmd.arg("--").args(command);
    cmd
}

/// Writes the process to exec (the container's, running `command`) next to the container's
/// state; returns its path.
fn process_file(args: &Args) -> Result<PathBuf, String> {
    let dir = args.state_root.join(&args.id);
    let container = libcontainer::container::Container::load(dir.clone())
        .map_err(|e| format!("load container {}: {e}", args.id))?;
    let spec = oci_spec::runtime::Spec::load(container.bundle().join("config.json"))
        .map_err(|e| format!("load the spec of container {}: {e}", args.id))?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    let terminal = args.console_socket.is_some();
    process.set_terminal(Some(terminal));
    if terminal {
        process.set_env(Some(crate::terminal::with_term(
            process.env().clone().unwrap_or_default(),
        )));
    }
    let path = dir.join(format!("exec-{}.json", std::process::id()));
    let json = serde_json::to_vec(&process).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Removes the sockets libcontainer leaves in the container's state directory for each exec
/// (`tenant-notify-*`, `tenant-tty-*`) once they are a minute old: they serve only while an exec
/// starts, and exec probes would otherwise pile them up.
fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stale = |e: &std::fs::DirEntry| {
        e.file_name().to_string_lossy().starts_with("tenant-")
            && e.path()
                .symlink_metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() >= 60))
    };
    for entry in entries.flatten().filter(stale) {
        let _ = std::fs::remove_file(entry.path());
    }
}

/// Runs the helper; returns the exit code to exit with.
pub fn main(args: Args) -> i32 {
    let process = match process_file(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("exec {:?} in container {}: {e}", args.command, args.id);
            return 126;
        }
    };
    let built = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.state_root)
        .map(|b| {
            b.with_console_socket(args.console_socket.as_ref())
                .as_tenant()
                .with_process(Some(&process))
                // libcontainer takes a console socket only for a "detached" process; it is
                // still this helper's child, waited for below
                .with_detach(args.console_socket.is_some())
        })
        .and_then(|b| b.build());
    let _ = std::fs::remove_file(&process);
    remove_stale_sockets(&args.state_root.join(&args.id));
    let pid = match built {
        Ok(pid) => Pid::from_raw(pid.as_raw()),
        Err(e) => {
            eprintln!("exec {:?} in container {}: {e}", args.command, args.id);
            return 126;
        }
    };
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}
