//! The scale subresource (`autoscaling/v1` Scale) of deployments, replicasets, statefulsets and
//! replicationcontrollers: what `kubectl scale` and autoscalers read and write.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use api::meta;
use api::selector::LabelSelector;

use super::Ctx;
use super::write::{PATCH_RETRIES, apply_patch, prepare_update, store_update};
use crate::State;
use crate::codec;
use crate::status::{ApiError, Result};
use crate::storage::revision_of;

fn selector_string(obj: &Value) -> String {
    let sel = obj.get("spec").and_then(|s| s.get("selector"));
    let Some(sel) = sel else { return String::new() };
    // replicationcontrollers have a plain map selector
    let as_label_selector =
        if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() {
            sel.clone()
        } else {
            json!({"matchLabels": sel})
        };
    match LabelSelector::from_json(&as_label_selector) {
        Ok(s) => s
            .0
            .iter()
            .map(|r| match r {
                api::selector::Requirement::In(k, v) if v.len() == 1 => format!("{k}={}", v[0]),
                api::selector::Requirement::In(k, v) => format!("{k} in ({})", v.join(",")),
                api::selector::Requirement::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
                api::selector::Requirement::Exists(k) => k.clone(),
                api::selector::Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => String::new(),
    }
}

fn to_scale(obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(Value::Null);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.get("spec").and_then(|s| s.get("replicas")).cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.get("status").and_then(|s| s.get("replicas")).cloned().unwrap_or(json!(0)),
            "selector": selector_string(obj),
        },
    })
}

pub async fn scale(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let media = codec::content_type(&ctx.headers);
    for _ in 0..PATCH_RETRIES {
        let (current, rev) = state
            .storage
            .get(ctx.rt, ctx.namespace(), &ctx.info.name)
            .await?;
        let scale = to_scale(&current);
        let wanted = match ctx.info.verb {
            "get" => return Ok(codec::json_response(StatusCode::OK, &scale)),
            "update" => codec::decode(&media, body)?,
            _ => apply_patch(&media, &scale, body, "io.k8s.api.autoscaling.v1.Scale")?,
        };
        if let Some(r) = revision_of(&wanted)?
            && r != rev
        {
            return Err(ApiError::conflict(ctx.rt, &ctx.info.name));
        }
        let replicas = wanted
            .get("spec")
            .and_then(|s| s.get("replicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            let err = api::validation::FieldError::invalid(
                "spec.replicas",
                json!(replicas),
                "must be greater than or equal to 0",
            );
            return Err(ApiError::invalid(ctx.rt, &ctx.info.name, &[err]));
        }
        let mut new = current.clone();
        new["spec"]["replicas"] = json!(replicas);
        meta::remove_meta(&mut new, "resourceVersion");
        let new = prepare_update(ctx, &current, new, "Update")?;
        match store_update(state, ctx, &current, rev, new).await {
            Ok((stored, _)) => return Ok(codec::json_response(StatusCode::OK, &to_scale(&stored))),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(ctx.rt, &ctx.info.name))
}
