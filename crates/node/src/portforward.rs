//! `kubectl port-forward` on the node: the `portforward.k8s.io` protocol over SPDY/3.1, carried
//! in a WebSocket (subprotocol `SPDY/3.1+portforward.k8s.io`, each binary message a piece of
//! the SPDY byte stream), as kubectl 1.30+ speaks it. For every local connection kubectl opens
//! an error stream and a data stream with the same `requestID` and the target `port`; the node
//! connects to that port on the pod's loopback, inside the pod's network namespace, and copies
//! bytes both ways. A failure is written on the error stream, as upstream does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::Agent;
use crate::spdy::{self, Frame};

/// The WebSocket subprotocol of tunnelled port forwarding.
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Accepts the WebSocket and forwards ports of the pod whose network namespace is `netns`.
pub fn upgrade(ws: WebSocketUpgrade, pod: String, netns: PathBuf) -> Response {
    ws.protocols([PROTOCOL])
        .on_upgrade(move |socket| async move {
            if let Err(e) = session(socket, pod, netns).await {
                tracing::debug!(error = %e, "port-forward session ended with an error");
            }
        })
}

#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
    /// Bytes from the client for the pod, once the connection is up.
    to_pod: Option<mpsc::UnboundedSender<Option<Vec<u8>>>>,
}

async fn session(socket: WebSocket, pod: String, netns: PathBuf) -> anyhow::Result<()> {
    let (mut sink, mut source) = socket.split();
    // The WebSocket's binary messages, as one byte stream for the SPDY reader.
    let (mut feed, spdy_in) = tokio::io::duplex(256 * 1024);
    let feeder = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if feed.write_all(&b).await.is_err() => {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let mut reader = spdy::Reader::new(spdy_in);
    let mut replies = spdy::Writer::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut by_stream: HashMap<u32, String> = HashMap::new();
    while let Some(frame) = reader.next().await? {
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                let get = |k: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let request = get("requestid");
                let port: u16 = get("port").parse().unwrap_or(0);
                out_tx.send(replies.syn_reply(stream_id, &[])?)?;
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = port;
                match get("streamtype").as_str() {
                    "error" => pair.error = Some(stream_id),
                    "data" => pair.data = Some(stream_id),
                    _ => {
                        out_tx.send(spdy::rst_stream(stream_id))?;
                        continue;
                    }
                }
                by_stream.insert(stream_id, request.clone());
                if let (Some(error), Some(data), None) = (pair.error, pair.data, &pair.to_pod) {
                    let (tx, rx) = mpsc::unbounded_channel();
                    pair.to_pod = Some(tx);
                    tokio::spawn(forward(
                        netns.clone(),
                        pod.clone(),
                        port,
                        error,
                        data,
                        rx,
                        out_tx.clone(),
                    ));
                }
            }
            Frame::Data {
                stream_id,
                data,
                fin,
            } => {
                if !data.is_empty() {
                    out_tx.send(spdy::window_update(stream_id, data.len() as u32))?;
                    out_tx.send(spdy::window_update(0, data.len() as u32))?;
                }
                let Some(pair) = by_stream.get(&stream_id).and_then(|r| pairs.get(r)) else {
                    continue;
                };
                if pair.data == Some(stream_id)
                    && let Some(tx) = &pair.to_pod
                {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data));
                    }
                    if fin {
                        let _ = tx.send(None);
                    }
                }
            }
            Frame::RstStream { stream_id } => {
                if let Some(request) = by_stream.remove(&stream_id)
                    && let Some(pair) = pairs.get_mut(&request)
                    && pair.data == Some(stream_id)
                {
                    pair.to_pod = None;
                }
            }
            Frame::Ping(id) => out_tx.send(spdy::ping(id))?,
            Frame::GoAway => break,
            Frame::Other => {}
        }
    }
    feeder.abort();
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

/// Connects to `port` on the pod's loopback and copies bytes both ways for one local
/// connection of kubectl.
async fn forward(
    netns: PathBuf,
    pod: String,
    port: u16,
    error_stream: u32,
    data_stream: u32,
    mut from_client: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
) {
    let connected = tokio::task::spawn_blocking(move || {
        network::pod::connect_in(&netns, port, Duration::from_secs(5))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {pod}: failed to connect to localhost:{port} inside the pod: {e}"
            );
            let _ = out.send(spdy::data(error_stream, msg.as_bytes(), true));
            let _ = out.send(spdy::data(data_stream, &[], true));
            return;
        }
    };
    let _ = stream.set_nonblocking(true);
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let (mut rd, mut wr) = stream.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(chunk) = from_client.recv().await {
            match chunk {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(spdy::data(data_stream, &buf[..n], false)).is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.send(spdy::data(data_stream, &[], true));
    let _ = out.send(spdy::data(error_stream, &[], true));
    to_pod.abort();
}

impl Agent {
    /// The pinned network namespace of the pod `namespace/name` on this node.
    pub fn pod_netns(&self, namespace: &str, name: &str) -> Result<PathBuf, String> {
        let uid = self
            .pod_uid(namespace, name)
            .ok_or_else(|| format!("pod {name:?} is not running on this node"))?;
        let sandbox = runtime::sandbox::Sandbox::at(&self.root().join("sandboxes"), &uid);
        if !sandbox.exists() {
            return Err(format!("pod {name:?} has no network yet"));
        }
        Ok(sandbox.net())
    }
}

/// Starts port forwarding for a pod of this node.
pub fn start(
    agent: &Arc<Agent>,
    ws: WebSocketUpgrade,
    namespace: &str,
    pod: &str,
) -> Result<Response, String> {
    let netns = agent.pod_netns(namespace, pod)?;
    Ok(upgrade(ws, format!("{namespace}/{pod}"), netns))
}
