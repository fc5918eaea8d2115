//! get and list, with label and field selectors and limit/continue pagination.

use std::sync::Arc;

use axum::response::Response;
use base64::Engine;
use http::StatusCode;
use serde_json::{Value, json};

use api::selector::{FieldSelector, LabelSelector};

use super::{Ctx, respond};
use crate::State;
use crate::codec;
use crate::status::{ApiError, Result};
use crate::storage::{to_object, with_resource_version};

pub async fn get(state: &Arc<State>, ctx: &Ctx) -> Result<Response> {
    let (obj, _) = state
        .storage
        .get(ctx.rt, ctx.namespace(), &ctx.info.name)
        .await?;
    Ok(respond(ctx, StatusCode::OK, &obj))
}

/// The label and field selectors of a request.
pub fn selectors(ctx: &Ctx) -> Result<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(
        ctx.query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(
        ctx.query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}

/// Whether an object passes both selectors.
pub fn selected(obj: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.matches(obj) && fields.matches(obj)
}

fn continue_token(rv: u64, key: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": key}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_continue(token: &str) -> Result<String> {
    let bad = || ApiError::bad_request("continue key is not valid: illegal base64 data");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    v.get("start")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(bad)
}

/// What selectors most often read of an object (its labels, name and namespace, a pod's node
/// and phase), decoded without the rest of it.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Selectable {
    metadata: SelectableMeta,
    spec: SelectableSpec,
    status: SelectableStatus,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SelectableMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: std::collections::HashMap<String, String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SelectableSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SelectableStatus {
    phase: Option<String>,
}

impl Selectable {
    /// The fields it holds.
    const FIELDS: [&str; 4] = [
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "status.phase",
    ];

    fn field(&self, path: &str) -> Option<&str> {
        match path {
            "metadata.name" => self.metadata.name.as_deref(),
            "metadata.namespace" => self.metadata.namespace.as_deref(),
            "spec.nodeName" => self.spec.node_name.as_deref(),
            "status.phase" => self.status.phase.as_deref(),
            _ => None,
        }
    }
}

/// Whether a stored object passes both selectors, decoding only what they read when they read
/// only what [`Selectable`] holds (lists and watches with selectors are served this way).
pub fn passes(
    kv: &store::KeyValue,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Result<bool> {
    if labels.is_empty() && fields.0.is_empty() {
        return Ok(true);
    }
    if fields
        .0
        .iter()
        .all(|t| Selectable::FIELDS.contains(&t.field.as_str()))
        // a kind whose spec or status is no object is decoded whole
        && let Ok(s) = serde_json::from_slice::<Selectable>(&kv.value)
    {
        return Ok(
            labels.matches_with(|k| s.metadata.labels.get(k).map(String::as_str))
                && fields.matches_with(|f| s.field(f)),
        );
    }
    Ok(selected(&to_object(kv)?, labels, fields))
}

/// The stored objects under the request's prefix that pass its selectors, at most `limit`
/// (0 = all), starting after `start_after`; with the store revision, the last key if more
/// remain, and how many remain when that is known.
pub async fn select_raw(
    state: &State,
    ctx: &Ctx,
    start_after: Option<&str>,
    limit: usize,
) -> Result<(Vec<store::KeyValue>, u64, Option<String>, usize)> {
    let (labels, fields) = selectors(ctx)?;
    let ns = match fields.required("metadata.namespace") {
        Some(ns) if ctx.rt.namespaced && ctx.info.namespace.is_empty() => ns.to_string(),
        _ => ctx.info.namespace.clone(),
    };
    let prefix = ctx.rt.namespace_prefix(&ns);
    let range = state
        .storage
        .backend
        .range(&prefix, start_after, 0)
        .await
        .map_err(ApiError::unavailable)?;
    let unfiltered = labels.is_empty() && fields.0.is_empty();
    let pass = |kv: &store::KeyValue| passes(kv, &labels, &fields);
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining = 0;
    for (i, kv) in range.kvs.iter().enumerate() {
        if !pass(kv)? {
            continue;
        }
        if limit != 0 && items.len() == limit {
            last_key = Some(range.kvs[i - 1].key.clone());
            if unfiltered {
                remaining = range.kvs.len() - i;
            }
            break;
        }
        items.push(kv.clone());
    }
    Ok((items, range.revision, last_key, remaining))
}

/// Like [`select_raw`], decoded.
pub async fn select(
    state: &State,
    ctx: &Ctx,
    start_after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Value>, u64, Option<String>, usize)> {
    let (kvs, rev, last, remaining) = select_raw(state, ctx, start_after, limit).await?;
    let items = kvs.iter().map(to_object).collect::<Result<Vec<_>>>()?;
    Ok((items, rev, last, remaining))
}

pub async fn list(state: &Arc<State>, ctx: &Ctx) -> Result<Response> {
    let limit: usize = ctx
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let start = match ctx.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(parse_continue(token)?),
        None => None,
    };
    let (kvs, rev, last_key, remaining) = select_raw(state, ctx, start.as_deref(), limit).await?;
    let mut list_meta = json!({"resourceVersion": rev.to_string()});
    if let Some(k) = last_key {
        list_meta["continue"] = Value::from(continue_token(rev, &k));
        if remaining > 0 {
            list_meta["remainingItemCount"] = Value::from(remaining);
        }
    }
    if codec::wants_table(&ctx.headers) || !ctx.same_version() {
        let items = kvs
            .iter()
            .map(|kv| Ok(ctx.to_client(&to_object(kv)?)))
            .collect::<Result<Vec<_>>>()?;
        if codec::wants_table(&ctx.headers) {
            let include = ctx.include_object();
            return Ok(codec::json_response(
                StatusCode::OK,
                &codec::table(ctx.req_rt, &items, include, list_meta),
            ));
        }
        let list = json!({"kind": ctx.req_rt.list_kind, "apiVersion": ctx.req_rt.api_version(), "metadata": list_meta, "items": items});
        return Ok(codec::json_response(StatusCode::OK, &list));
    }
    // the list is assembled from the stored bytes: objects are not decoded and encoded again
    let head = json!({"kind": ctx.rt.list_kind, "apiVersion": ctx.rt.api_version(), "metadata": list_meta});
    let head = serde_json::to_vec(&head).map_err(ApiError::internal)?;
    let mut body =
        Vec::with_capacity(head.len() + kvs.iter().map(|kv| kv.value.len() + 32).sum::<usize>());
    body.extend_from_slice(&head[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, kv) in kvs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match with_resource_version(kv) {
            Some(bytes) => body.extend_from_slice(&bytes),
            None => body.extend_from_slice(
                &serde_json::to_vec(&to_object(kv)?).map_err(ApiError::internal)?,
            ),
        }
    }
    body.extend_from_slice(b"]}");
    Ok(codec::bytes_response(StatusCode::OK, body))
}
