//! `kubectl exec` on the node: the remote command protocol over a WebSocket
//! (`v5.channel.k8s.io`, or `v4.channel.k8s.io`). Every binary message starts with its channel:
//! 0 stdin, 1 stdout, 2 stderr, 3 the final status (a metav1.Status: Success, or Failure with
//! the exit code as an `ExitCode` cause, which kubectl turns into its own exit code), 4 terminal
//! resizes; in v5, a message `[255, channel]` closes a channel (kubectl closes stdin that way at
//! its end of input).
//!
//! The command runs through the runtime's exec helper, inside the container's namespaces and
//! cgroup. With `tty=true` (`kubectl exec -t`) it runs on a terminal of its own
//! ([`runtime::terminal`]): what the user types goes to the terminal, which echoes it and turns
//! Ctrl-C into SIGINT; its output (standard error included, as upstream) comes on stdout; sizes
//! on channel 4 resize it.

use std::process::Stdio;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::Agent;

/// The channel of standard input.
pub const STDIN: u8 = 0;
/// The channel of standard output.
pub const STDOUT: u8 = 1;
/// The channel of standard error.
pub const STDERR: u8 = 2;
/// The channel of the final status.
pub const ERROR: u8 = 3;
/// The channel of terminal sizes.
pub const RESIZE: u8 = 4;
/// v5's signal that closes a channel.
pub const CLOSE: u8 = 255;

/// The protocols offered, best first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The final status of a command that exited with `code`.
pub fn exit_status(command: &[String], code: i32) -> serde_json::Value {
    if code == 0 {
        return serde_json::json!({"metadata": {}, "status": "Success"});
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// Accepts the WebSocket and runs `command` in container `id` over it.
pub fn upgrade(
    agent: Arc<Agent>,
    ws: WebSocketUpgrade,
    id: String,
    command: Vec<String>,
    tty: bool,
) -> Response {
    let ws = ws.protocols(PROTOCOLS);
    ws.on_upgrade(move |socket| async move {
        let ran = if tty {
            run_on_terminal(agent, socket, id, command).await
        } else {
            run(agent, socket, id, command).await
        };
        if let Err(e) = ran {
            tracing::debug!(error = %e, "exec session ended with an error");
        }
    })
}

async fn run(
    agent: Arc<Agent>,
    socket: WebSocket,
    id: String,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let (mut sink, mut source) = socket.split();
    let mut cmd = tokio::process::Command::from(agent.runtime.exec_command(&id, &command, None));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(32);
    // kubectl learns the stream is up from a first, empty message on stdout.
    out_tx.send(vec![STDOUT]).await?;
    let out_task = tokio::spawn(pump(stdout, STDOUT, out_tx.clone()));
    let err_task = tokio::spawn(pump(stderr, STDERR, out_tx.clone()));
    drop(out_tx);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        sink
    });
    // Input from the client until it closes stdin or the socket.
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(data) if !data.is_empty() => match data[0] {
                    STDIN => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&data[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    CLOSE if data.get(1) == Some(&STDIN) => stdin = None,
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let status = child.wait().await?;
    let _ = out_task.await;
    let _ = err_task.await;
    let mut sink = writer.await?;
    reader.abort();
    let code = status.code().unwrap_or(255);
    finish(&mut sink, &exit_status(&command, code)).await
}

/// Runs `command` on a terminal of its own: the helper makes it, libcontainer sends its master
/// end to a console socket this session listens on, and the session relays it.
async fn run_on_terminal(
    agent: Arc<Agent>,
    socket: WebSocket,
    id: String,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let (mut sink, mut source) = socket.split();
    let path = agent.runtime.console_socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    let _socket_file = RemoveOnDrop(path.clone());
    let mut child =
        tokio::process::Command::from(agent.runtime.exec_command(&id, &command, Some(&path)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
    let received = tokio::select! {
        accepted = listener.accept() => match accepted {
            Ok((stream, _)) => receive_master(stream).await,
            Err(e) => Err(e),
        },
        _ = child.wait() => Err(std::io::Error::other("the process could not be started")),
    };
    drop(listener);
    let (output, mut input) = match received.and_then(master_ends) {
        Ok(ends) => ends,
        Err(e) => {
            // the helper says why on its standard error
            let mut why = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut why).await;
            }
            let code = child.wait().await?.code().unwrap_or(126);
            let mut frame = vec![STDOUT];
            frame.extend_from_slice(
                if why.is_empty() {
                    e.to_string().into_bytes()
                } else {
                    why.into_bytes()
                }
                .as_slice(),
            );
            sink.send(Message::Binary(frame.into())).await?;
            return finish(&mut sink, &exit_status(&command, code)).await;
        }
    };

    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(32);
    out_tx.send(vec![STDOUT]).await?;
    // the terminal ends (EIO) once every process on it has gone
    let output = tokio::spawn(pump(Some(output), STDOUT, out_tx));
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        sink
    });
    let mut input = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                Message::Binary(data) if !data.is_empty() => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let written = match data[0] {
                STDIN => input.write_all(&data[1..]).await,
                RESIZE => match serde_json::from_slice(&data[1..]) {
                    Ok(size) => runtime::terminal::resize(&input, size),
                    Err(_) => Ok(()),
                },
                _ => Ok(()),
            };
            if written.is_err() {
                break;
            }
        }
    });
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = &mut input => {
            // The user went away: closing the terminal hangs its processes up.
            output.abort();
            return Ok(());
        }
    };
    input.abort();
    // What the process wrote last, unless something it left behind keeps the terminal open.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), output).await;
    let mut sink = writer.await?;
    finish(
        &mut sink,
        &exit_status(&command, status.code().unwrap_or(255)),
    )
    .await
}

/// Takes the terminal master libcontainer sends over an accepted console socket connection.
async fn receive_master(stream: tokio::net::UnixStream) -> std::io::Result<std::os::fd::OwnedFd> {
    loop {
        stream.readable().await?;
        match runtime::terminal::receive_master(&stream) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            received => return received,
        }
    }
}

/// The master end of a terminal as two async ends: what the terminal shows, and where what the
/// user types goes (which also takes resizes).
fn master_ends(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    let input = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd.try_clone()?)?;
    let output = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)?;
    Ok((output, input))
}

/// Removes a file when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ends a session: the final status on the error channel, then a normal closure (1000), which
/// kubectl reads as the end of every stream.
pub async fn finish<S>(sink: &mut S, status: &serde_json::Value) -> anyhow::Result<()>
where
    S: futures::Sink<Message, Error = axum::Error> + Unpin,
{
    let mut frame = vec![ERROR];
    frame.extend_from_slice(&serde_json::to_vec(status)?);
    sink.send(Message::Binary(frame.into())).await?;
    let _ = sink
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    Ok(())
}

/// Copies a process's output into frames of `channel`.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: Option<R>,
    channel: u8,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let Some(mut r) = reader else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf[0] = channel;
                if tx.send(buf[..=n].to_vec()).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_zero_exits_carry_the_code_as_kubectl_reads_it() {
        let s = exit_status(&["sh".into()], 3);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&[], 0)["status"], "Success");
    }
}
