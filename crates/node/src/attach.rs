//! `kubectl attach` on the node: the container's output from now on, by stream (stdout on
//! channel 1, stderr on channel 2, read from its log as the supervisor writes it), and, for a
//! container with `stdin: true`, what the user types, written to the container's standard input
//! (a FIFO its supervisor copies to the container). The same WebSocket protocol as `exec`; the
//! session ends with a Success status when the container stops. A container with `tty: true`
//! (`kubectl run -it`) runs on a terminal its supervisor holds: what the user types goes to it,
//! its output comes on stdout, and sizes on channel 4 go to its `resize` FIFO.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::Agent;

/// What the client asked to attach.
pub struct Streams {
    /// Its input.
    pub stdin: bool,
    /// Its standard output.
    pub stdout: bool,
    /// Its standard error.
    pub stderr: bool,
}

/// Accepts the WebSocket and attaches it to the running container `id`.
pub fn upgrade(agent: Arc<Agent>, ws: WebSocketUpgrade, id: String, streams: Streams) -> Response {
    ws.protocols(crate::exec::PROTOCOLS)
        .on_upgrade(move |socket| async move {
            if let Err(e) = session(agent, socket, id, streams).await {
                tracing::debug!(error = %e, "attach session ended with an error");
            }
        })
}

async fn session(
    agent: Arc<Agent>,
    socket: WebSocket,
    id: String,
    streams: Streams,
) -> anyhow::Result<()> {
    let container = agent.runtime.get(&id)?;
    let log = container.config.log_path.clone();
    let offset = tokio::fs::metadata(&log)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let (mut sink, mut source) = socket.split();
    sink.send(Message::Binary(vec![crate::exec::STDOUT].into()))
        .await?;
    // Opened without waiting: a container whose input has ended (stdinOnce) reads no more.
    let open = |path: std::path::PathBuf, wanted: bool| {
        wanted
            .then(|| tokio::net::unix::pipe::OpenOptions::new().open_sender(path))
            .and_then(Result::ok)
    };
    let mut stdin = open(
        agent.runtime.stdin_path(&id),
        streams.stdin && container.config.stdin,
    );
    let mut resize = open(agent.runtime.resize_path(&id), container.config.tty);
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(data) if data.first() == Some(&crate::exec::RESIZE) => {
                    let mut line = data[1..].to_vec();
                    line.push(b'\n');
                    if let Some(w) = resize.as_mut()
                        && w.write_all(&line).await.is_err()
                    {
                        resize = None;
                    }
                }
                Message::Binary(data) if data.first() == Some(&crate::exec::STDIN) => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&data[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Message::Binary(data) if data.first() == Some(&crate::exec::CLOSE) => stdin = None,
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    // a terminal's echo should come back as typed
    let every = Duration::from_millis(if container.config.tty { 20 } else { 100 });
    let mut records = crate::logs::follow(agent.clone(), id, log, offset, every);
    while let Some(chunk) = records.recv().await {
        for record in chunk
            .split(|&b| b == b'\n')
            .filter_map(runtime::cri_log::parse)
        {
            let channel = match record.stream {
                "stdout" if streams.stdout => crate::exec::STDOUT,
                "stderr" if streams.stderr => crate::exec::STDERR,
                _ => continue,
            };
            let mut frame = Vec::with_capacity(record.content.len() + 2);
            frame.push(channel);
            frame.extend_from_slice(record.content);
            if !record.partial {
                frame.push(b'\n');
            }
            if sink.send(Message::Binary(frame.into())).await.is_err() || input.is_finished() {
                input.abort();
                return Ok(());
            }
        }
    }
    input.abort();
    crate::exec::finish(&mut sink, &crate::exec::exit_status(&[], 0)).await
}
