//! The node API (kubelet's port 10250), over HTTPS with client certificates of the cluster CA.
//! Only the API server talks to it (it proxies `kubectl logs` and `kubectl exec` here), so a
//! caller must present a certificate of the API server's kubelet client or of `system:masters`.
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}`: the container's log ([`crate::logs`]).
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=...&stdin=&stdout=&stderr=`: a
//!   WebSocket in the `v5.channel.k8s.io` (or v4) protocol; see [`crate::exec`].
//! - `GET|POST /attach/{namespace}/{pod}/{container}`: the same WebSocket protocol, attached to
//!   the container's output and input; see [`crate::attach`].
//! - `GET|POST /portForward/{namespace}/{pod}`: a WebSocket tunnelling SPDY/3.1
//!   (`SPDY/3.1+portforward.k8s.io`); see [`crate::portforward`].
//! - `GET /stats/summary` and `GET /metrics/resource`: what the node, its pods and containers
//!   use; see [`crate::stats`].
//! - `GET /healthz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Agent;

/// The node API's TLS material, PEM.
pub struct Tls {
    /// The serving certificate (names: the node's name and addresses).
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
    /// The cluster CA, which client certificates must chain to.
    pub ca_pem: String,
    /// The user the API server's certificate for calling nodes names; it and `system:masters`
    /// may use the node API.
    pub api_server_user: String,
}

fn server_config(tls: &Tls) -> anyhow::Result<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut tls.ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let certs =
        rustls_pemfile::certs(&mut tls.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut tls.key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("the node API key is missing"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether a verified client certificate may use the node API.
fn allowed(der: &[u8], api_server_user: &str) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default();
    cn == api_server_user
        || subject
            .iter_organization()
            .any(|o| o.as_str().ok() == Some("system:masters"))
}

/// Serves the node API on `addr` until the task is dropped.
pub async fn serve(agent: Arc<Agent>, addr: SocketAddr, tls: Tls) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&tls)?));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("the node API cannot listen on {addr}: {e}"))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/stats/summary",
            get(|State(agent): State<Arc<Agent>>| async move {
                axum::Json(agent.stats.summary(&agent.config.node_name))
            }),
        )
        .route(
            "/metrics/resource",
            get(|State(agent): State<Arc<Agent>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    agent.stats.prometheus(),
                )
            }),
        )
        .route("/containerLogs/{namespace}/{pod}/{container}", get(logs))
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach).post(attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
        )
        .with_state(agent);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "node API accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let user = tls.api_server_user.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let ok = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| allowed(c.as_ref(), &user));
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    if !ok {
                        return Ok::<_, std::convert::Infallible>(
                            (
                                StatusCode::FORBIDDEN,
                                "forbidden: only the API server may use the node API\n",
                            )
                                .into_response(),
                        );
                    }
                    Ok(tower::ServiceExt::oneshot(app, req.map(Body::new))
                        .await
                        .into_response())
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

async fn logs(
    State(agent): State<Arc<Agent>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match crate::logs::stream(agent, &namespace, &pod, &container, &q).await {
        Ok(body) => Response::builder()
            .header("content-type", "text/plain")
            .body(body)
            .unwrap_or_default(),
        Err(msg) => bad_request(msg),
    }
}

async fn exec(
    State(agent): State<Arc<Agent>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    ws: Result<
        axum::extract::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let pairs = url_pairs(query.as_deref().unwrap_or_default());
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return bad_request("you must specify at least one command for the container".into());
    }
    let Ok(ws) = ws else {
        return bad_request("exec needs a WebSocket upgrade (v5.channel.k8s.io)".into());
    };
    let id = match agent.running_container(&namespace, &pod, &container) {
        Ok(id) => id,
        Err(msg) => return bad_request(msg),
    };
    let tty = pairs
        .iter()
        .any(|(k, v)| k == "tty" && (v == "true" || v == "1"));
    crate::exec::upgrade(agent, ws, id, command, tty)
}

async fn attach(
    State(agent): State<Arc<Agent>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    ws: Result<
        axum::extract::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(ws) = ws else {
        return bad_request("attach needs a WebSocket upgrade (v5.channel.k8s.io)".into());
    };
    let id = match agent.running_container(&namespace, &pod, &container) {
        Ok(id) => id,
        Err(msg) => return bad_request(msg),
    };
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let streams = crate::attach::Streams {
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
    };
    crate::attach::upgrade(agent, ws, id, streams)
}

async fn port_forward(
    State(agent): State<Arc<Agent>>,
    Path((namespace, pod)): Path<(String, String)>,
    ws: Result<
        axum::extract::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    let Ok(ws) = ws else {
        return bad_request(format!(
            "port-forward needs a WebSocket upgrade ({})",
            crate::portforward::PROTOCOL
        ));
    };
    match crate::portforward::start(&agent, ws, &namespace, &pod) {
        Ok(r) => r,
        Err(msg) => bad_request(msg),
    }
}

/// Query pairs in order, repeated keys kept (`command=sh&command=-c`).
pub fn url_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_keep_order_and_repeats() {
        let pairs = url_pairs("command=sh&command=-c&command=echo+%24HOME%20x&stdin=true");
        let cmd: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cmd, ["sh", "-c", "echo $HOME x"]);
    }
}
