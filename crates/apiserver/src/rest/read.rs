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
use crate::storage::to_object;

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

/// The objects under the request's prefix that pass its selectors, at most `limit` (0 = all),
/// starting after `start_after`; with the store revision and the last key if more remain.
pub async fn select(
    state: &State,
    ctx: &Ctx,
    start_after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Value>, u64, Option<String>, usize)> {
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
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining = 0;
    for (i, kv) in range.kvs.iter().enumerate() {
        let obj = to_object(kv)?;
        if !selected(&obj, &labels, &fields) {
            continue;
        }
        if limit != 0 && items.len() == limit {
            last_key = Some(range.kvs[i - 1].key.clone());
            if unfiltered {
                remaining = range.kvs.len() - i;
            }
            break;
        }
        items.push(obj);
    }
    Ok((items, range.revision, last_key, remaining))
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
    let (items, rev, last_key, remaining) = select(state, ctx, start.as_deref(), limit).await?;
    let mut list_meta = json!({"resourceVersion": rev.to_string()});
    if let Some(k) = last_key {
        list_meta["continue"] = Value::from(continue_token(rev, &k));
        if remaining > 0 {
            list_meta["remainingItemCount"] = Value::from(remaining);
        }
    }
    if codec::wants_table(&ctx.headers) {
        let include = ctx
            .query
            .get("includeObject")
            .map(String::as_str)
            .unwrap_or("Metadata");
        return Ok(codec::json_response(
            StatusCode::OK,
            &codec::table(ctx.rt, &items, include, list_meta),
        ));
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            // list items carry kind and apiVersion as stored; make sure they are set
            o["kind"] = Value::from(ctx.rt.kind);
            o["apiVersion"] = Value::from(ctx.rt.api_version());
            o
        })
        .collect();
    let list = json!({"kind": ctx.rt.list_kind, "apiVersion": ctx.rt.api_version(), "metadata": list_meta, "items": items});
    Ok(codec::json_response(StatusCode::OK, &list))
}
