//! Running a further process inside a running container (`kubectl exec`), as `runc exec` does:
//! a helper process, started with the stdio the caller wants the process to have, joins the
//! container's namespaces and cgroup with libcontainer's tenant builder, waits for the process
//! and exits with its exit code (128 + the signal when a signal ended it).

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
}

/// The helper command that runs `command` in container `id`; the caller sets its stdio. Its
/// exit code is the process's; 126 means the process could not be started (the reason is on
/// its standard error).
pub fn helper(program: &Path, state_root: &Path, id: &str, command: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("exec-in")
        .arg("--id")
        .arg(id)
        .arg("--state-root")
        .arg(state_root)
        .arg("--")
        .args(command);
    cmd
}

/// Runs the helper; returns the exit code to exit with.
pub fn main(args: Args) -> i32 {
    let built = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.state_root)
        .map(|b| {
            b.as_tenant()
                .with_container_args(args.command.clone())
                .with_detach(false)
        })
        .and_then(|b| b.build());
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
