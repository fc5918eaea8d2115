//! The pod subresources served by the pod's node: `log` (streamed), `exec`, `attach` and
//! `portforward` (connection upgrades, tunnelled byte for byte once the node accepts them). The
//! API server authorizes the request (`get` on `pods/log`, `create` on the others, as upstream
//! requires for WebSocket upgrades too), finds the pod's node and its node API endpoint, and
//! calls it over TLS with its kubelet client certificate, verifying the node's certificate
//! against the cluster CA ([`connect`], which the metrics API also calls nodes through).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use api::{meta, registry};

use crate::State;
use crate::authn::UserInfo;
use crate::status::{ApiError, Result};

/// A request for a node-served pod subresource.
pub struct Target {
    namespace: String,
    pod: String,
    subresource: String,
}

/// Whether the request is for a subresource the pod's node serves.
pub fn target(method: &Method, path: &str) -> Option<Target> {
    let info = crate::request::parse(method, path, &HashMap::new())?;
    (info.group.is_empty()
        && info.resource == "pods"
        && matches!(
            info.subresource.as_str(),
            "log" | "exec" | "attach" | "portforward"
        ))
    .then_some(Target {
        namespace: info.namespace,
        pod: info.name,
        subresource: info.subresource,
    })
}

/// The TLS client the API server calls nodes with.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("the kubelet client key is missing"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The container a request names, or the pod's only container; upstream's errors otherwise.
fn container_of(pod: &Value, asked: Option<&str>) -> Result<String> {
    let names: Vec<String> = ["spec.initContainers", "spec.containers"]
        .iter()
        .filter_map(|p| meta::lookup(pod, p).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let regular: Vec<String> = meta::lookup(pod, "spec.containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let pod_name = meta::meta_str(pod, "name").unwrap_or_default();
    match asked.filter(|a| !a.is_empty()) {
        Some(a) if names.iter().any(|n| n == a) => Ok(a.to_string()),
        Some(a) => Err(ApiError::bad_request(format!(
            "container {a} is not valid for pod {pod_name}"
        ))),
        None if regular.len() == 1 => Ok(regular[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            regular.join(" ")
        ))),
    }
}

/// Serves the request by calling the pod's node.
pub async fn proxy(
    state: &Arc<State>,
    user: &UserInfo,
    parts: http::request::Parts,
    target: Target,
) -> Response {
    match try_proxy(state, user, parts, target).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn try_proxy(
    state: &Arc<State>,
    user: &UserInfo,
    parts: http::request::Parts,
    target: Target,
) -> Result<Response> {
    let path = parts.uri.path().to_string();
    let verb_method = if target.subresource == "log" {
        Method::GET
    } else {
        Method::POST
    };
    let info = crate::request::parse(&verb_method, &path, &HashMap::new());
    let attrs = crate::authz::Attributes::of(info.as_ref(), &verb_method, &path);
    crate::authz::authorize(&state.storage, user, &attrs).await?;

    let pods = registry()
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not registered"))?;
    let (pod, _) = state
        .storage
        .get(pods, &target.namespace, &target.pod)
        .await?;
    let node_name = meta::lookup(&pod, "spec.nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {} does not have a host assigned", target.pod))
        })?
        .to_string();
    let mut pairs = query_pairs(parts.uri.query());
    let asked = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    let kubelet_path = match target.subresource.as_str() {
        "portforward" => format!("/portForward/{}/{}", target.namespace, target.pod),
        sub => {
            let container = container_of(&pod, asked.as_deref())?;
            let base = if sub == "log" { "containerLogs" } else { sub };
            format!("/{base}/{}/{}/{container}", target.namespace, target.pod)
        }
    };
    pairs.retain(|(k, _)| k != "container");
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();

    let (mut sender, host) = connect(state, &node_name).await?;
    let uri = if query.is_empty() {
        kubelet_path
    } else {
        format!("{kubelet_path}?{query}")
    };
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .header(header::HOST, host);
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let req = req
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::internal(format!("error reading from the node: {e}")))?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let node_side = hyper::upgrade::on(&mut resp);
        let client_side = hyper::upgrade::on(Request::from_parts(parts, ()));
        tokio::spawn(async move {
            if let (Ok(node), Ok(client)) = (node_side.await, client_side.await) {
                let mut node = TokioIo::new(node);
                let mut client = TokioIo::new(client);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
            }
        });
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in resp.headers() {
            out = out.header(name, value);
        }
        return Ok(out.body(Body::empty()).unwrap_or_default());
    }
    let status = resp.status();
    if !status.is_success() {
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&bytes).trim().to_string();
        return Err(ApiError::bad_request(&msg));
    }
    let (head, body) = resp.into_parts();
    let mut out = Response::builder().status(head.status);
    if let Some(ct) = head.headers.get(header::CONTENT_TYPE) {
        out = out.header(header::CONTENT_TYPE, ct);
    }
    Ok(out.body(Body::new(body)).unwrap_or_default())
}

/// A connection to a node's API, over TLS with the API server's kubelet client certificate,
/// and the Host header to send on it.
pub async fn connect(
    state: &State,
    node_name: &str,
) -> Result<(hyper::client::conn::http1::SendRequest<Body>, String)> {
    let nodes = registry()
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not registered"))?;
    let (node, _) = state.storage.get(nodes, "", node_name).await?;
    let address = meta::lookup(&node, "status.addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x["type"] == "InternalIP")
                .or_else(|| a.first())
        })
        .and_then(|x| x["address"].as_str())
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no address")))?
        .to_string();
    let port = meta::lookup(&node, "status.daemonEndpoints.kubeletEndpoint.Port")
        .and_then(Value::as_i64)
        .unwrap_or(10250);

    let tcp = tokio::net::TcpStream::connect((address.as_str(), port as u16))
        .await
        .map_err(|e| {
            ApiError::internal(format!(
                "error dialing backend: dial tcp {address}:{port}: {e}"
            ))
        })?;
    let _ = tcp.set_nodelay(true);
    let server_name = rustls::pki_types::ServerName::try_from(address.clone())
        .map_err(|e| ApiError::internal(format!("node address {address}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(state.kubelet_client.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });

    Ok((sender, format!("{address}:{port}")))
}
