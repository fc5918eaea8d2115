//! Terminals for containers and exec'd processes (`kubectl exec -t`, `kubectl run -it`), made
//! as runc makes them: libcontainer opens a pseudo-terminal inside the container (on its own
//! devpts, so the process sees `/dev/pts/0`), makes it the process's controlling terminal and
//! standard streams, and sends the master end over a console socket (a Unix socket named by
//! path) to whoever listens there: the container's supervisor, or the agent for an exec. That
//! one relays the master to the user and sets its window size.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde::Deserialize;

/// A terminal's size, as kubectl sends it on the resize channel: `{"Width":80,"Height":24}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Size {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// Sets the window size of the terminal whose master end is `master`; the process on it gets
/// SIGWINCH.
pub fn resize(master: impl AsFd, size: Size) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Takes the terminal master that libcontainer sends over the accepted console socket
/// connection `stream`. On a non-blocking socket this is `WouldBlock` until it has arrived; it
/// fails if the connection closes without one (the process could not be started).
pub fn receive_master(stream: impl AsFd) -> io::Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 64];
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(io::Error::other(if received.bytes == 0 {
        "the process ended before its terminal was set up"
    } else {
        "the console socket carried no terminal"
    }))
}

/// A fresh path for a console socket in `dir` (kept short: a socket's path has at most 107
/// bytes).
pub fn socket_path(dir: &std::path::Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        "tty-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The environment a process on a terminal gets, as containerd gives it: `TERM=xterm` unless
/// the container sets its own.
pub fn with_term(mut env: Vec<String>) -> Vec<String> {
    if !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_read_as_kubectl_writes_them() {
        let size: Size = serde_json::from_str(r#"{"Width":132,"Height":43}"#).expect("parse");
        assert_eq!(
            size,
            Size {
                width: 132,
                height: 43
            }
        );
    }

    #[test]
    fn a_terminal_gets_term_unless_the_container_sets_it() {
        assert_eq!(with_term(vec!["A=1".into()]), ["A=1", "TERM=xterm"]);
        assert_eq!(with_term(vec!["TERM=vt100".into()]), ["TERM=vt100"]);
    }

    #[test]
    fn a_master_end_passes_over_a_socket_and_takes_a_size() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let pty = rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR).expect("openpt");
        let fds = [pty.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &theirs,
            &[io::IoSlice::new(b"/dev/ptmx")],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .expect("send");
        let master = receive_master(&ours).expect("receive");
        resize(
            &master,
            Size {
                width: 100,
                height: 30,
            },
        )
        .expect("resize");
        let size = rustix::termios::tcgetwinsize(&master).expect("size");
        assert_eq!((size.ws_col, size.ws_row), (100, 30));
        drop(theirs);
        assert!(
            receive_master(&ours).is_err(),
            "a closed socket carries nothing"
        );
    }
}
