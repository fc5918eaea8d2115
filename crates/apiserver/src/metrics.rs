//! The resource metrics API, `metrics.k8s.io/v1beta1`, served by the API server itself as
//! metrics-server serves it: NodeMetrics (`nodes`) and PodMetrics (`pods`), `get` and `list`
//! with label selectors. Usage is read on request from the Summary API (`/stats/summary`) of
//! the nodes concerned, called concurrently through the node connection of `node_proxy`:
//! CPU as the rate over the node's last measuring interval, memory as the working set. A pod
//! appears once every one of its running containers has a CPU rate; a node that does not
//! answer is left out, as metrics-server leaves out what it could not scrape. `kubectl top`
//! and the HorizontalPodAutoscaler controller read it.

use std::collections::HashMap;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use api::{meta, registry};

use crate::State;
use crate::authn::UserInfo;
use crate::request::RequestInfo;
use crate::status::{ApiError, Result};

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// Its one version.
pub const VERSION: &str = "v1beta1";
/// Its resources: plural, kind and whether namespaced.
pub const RESOURCES: [(&str, &str, bool); 2] = [
    ("nodes", "NodeMetrics", false),
    ("pods", "PodMetrics", true),
];

/// The interval the nodes measure CPU rates over (`node::stats::INTERVAL`).
const WINDOW: &str = "10s";

/// How long a node has to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a path is under the metrics API (looked at before a request is parsed, so that
/// other requests pay nothing for it).
pub fn is_metrics_path(path: &str) -> bool {
    path.strip_prefix("/apis/")
        .and_then(|rest| rest.strip_prefix(GROUP))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Serves a request for the metrics API.
pub async fn serve(
    state: &State,
    user: &UserInfo,
    method: &Method,
    path: &str,
    info: RequestInfo,
    query: &HashMap<String, String>,
) -> Response {
    match try_serve(state, user, method, path, info, query).await {
        Ok(v) => crate::codec::json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

async fn try_serve(
    state: &State,
    user: &UserInfo,
    method: &Method,
    path: &str,
    info: RequestInfo,
    query: &HashMap<String, String>,
) -> Result<Value> {
    let Some((_, kind, _)) = RESOURCES.iter().find(|(plural, _, namespaced)| {
        *plural == info.resource && (*namespaced || info.namespace.is_empty())
    }) else {
        return Err(ApiError::no_route(path));
    };
    if info.version != VERSION || !info.subresource.is_empty() {
        return Err(ApiError::no_route(path));
    }
    if !matches!(info.verb, "get" | "list") {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({} {}.{GROUP})",
                method, info.resource
            ),
        ));
    }
    let attrs = crate::authz::Attributes::of(Some(&info), method, path);
    crate::authz::authorize(&state.storage, user, &attrs).await?;
    let selector = match query.get("labelSelector") {
        Some(s) => api::selector::LabelSelector::parse(s)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Default::default(),
    };
    let selected = |obj: &Value| {
        selector.matches(obj) && (info.name.is_empty() || meta::name(obj) == info.name)
    };
    let nodes_rt = registry()
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not registered"))?;
    let items = if info.resource == "nodes" {
        let nodes: Vec<Value> = state
            .storage
            .list_in(nodes_rt, "")
            .await?
            .into_iter()
            .filter(selected)
            .collect();
        let names: Vec<String> = nodes.iter().map(|n| meta::name(n).to_string()).collect();
        let summaries = summaries(state, &names).await;
        nodes
            .iter()
            .filter_map(|n| node_metrics(n, summaries.get(meta::name(n))?))
            .collect::<Vec<_>>()
    } else {
        let pods_rt = registry()
            .find("", "v1", "pods")
            .ok_or_else(|| ApiError::internal("pods are not registered"))?;
        let pods: Vec<Value> = state
            .storage
            .list_in(pods_rt, &info.namespace)
            .await?
            .into_iter()
            .filter(selected)
            .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
            .collect();
        let mut names: Vec<String> = pods
            .iter()
            .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        let summaries = summaries(state, &names).await;
        pods.iter()
            .filter_map(|p| {
                let node = p.pointer("/spec/nodeName").and_then(Value::as_str)?;
                pod_metrics(p, summaries.get(node)?)
            })
            .collect()
    };
    if !info.name.is_empty() {
        let shown = if info.namespace.is_empty() {
            info.name.clone()
        } else {
            format!("{}/{}", info.namespace, info.name)
        };
        return items.into_iter().next().ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "{}.{GROUP} \"{shown}\" not found",
                    kind.to_ascii_lowercase()
                ),
            )
        });
    }
    Ok(json!({
        "kind": format!("{kind}List"),
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    }))
}

/// The Summary of each named node that answered in time.
async fn summaries(state: &State, nodes: &[String]) -> HashMap<String, Value> {
    let calls = nodes.iter().map(|name| async move {
        let summary = tokio::time::timeout(NODE_TIMEOUT, summary(state, name)).await;
        match summary {
            Ok(Ok(s)) => Some((name.clone(), s)),
            Ok(Err(e)) => {
                tracing::debug!(node = %name, error = %e.message, "cannot read the node's usage");
                None
            }
            Err(_) => None,
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn summary(state: &State, node: &str) -> Result<Value> {
    let (mut sender, host) = crate::node_proxy::connect(state, node).await?;
    let req = Request::get("/stats/summary")
        .header(http::header::HOST, host)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::internal(format!("error reading from the node: {e}")))?;
    if !resp.status().is_success() {
        return Err(ApiError::internal(format!(
            "the node answered {}",
            resp.status()
        )));
    }
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(e.to_string()))
}

/// Usage as metrics-server writes it: CPU in nanocores, memory in bytes (binary suffixes when
/// whole).
fn usage(cpu: &Value, memory: &Value) -> Option<Value> {
    let nano_cores = cpu.get("usageNanoCores")?.as_u64()?;
    let working_set = memory.get("workingSetBytes")?.as_u64()?;
    Some(json!({
        "cpu": format!("{nano_cores}n"),
        "memory": api::quantity::format_milli(working_set as i64 * 1000, true),
    }))
}

fn metadata(obj: &Value) -> Value {
    let mut m = json!({"name": meta::name(obj), "creationTimestamp": meta::now_timestamp()});
    if let Some(ns) = obj.pointer("/metadata/namespace") {
        m["namespace"] = ns.clone();
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        m["labels"] = labels.clone();
    }
    m
}

fn node_metrics(node: &Value, summary: &Value) -> Option<Value> {
    let n = &summary["node"];
    Some(json!({
        "metadata": metadata(node),
        "timestamp": n.pointer("/cpu/time")?,
        "window": WINDOW,
        "usage": usage(&n["cpu"], &n["memory"])?,
    }))
}

fn pod_metrics(pod: &Value, summary: &Value) -> Option<Value> {
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
    let stats = summary["pods"]
        .as_array()?
        .iter()
        .find(|p| p.pointer("/podRef/uid").and_then(Value::as_str) == Some(uid))?;
    let containers = stats["containers"]
        .as_array()?
        .iter()
        .map(|c| Some(json!({"name": c["name"], "usage": usage(&c["cpu"], &c["memory"])?})))
        .collect::<Option<Vec<Value>>>()?;
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "metadata": metadata(pod),
        "timestamp": stats.pointer("/cpu/time")?,
        "window": WINDOW,
        "containers": containers,
    }))
}
