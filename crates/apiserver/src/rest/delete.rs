//! delete and deletecollection: preconditions, finalizers, propagation policies, graceful pod
//! deletion, and namespaces that stay Terminating until their content is gone.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use api::{ResourceType, meta};

use super::{Ctx, respond};
use crate::State;
use crate::admission;
use crate::codec;
use crate::status::{ApiError, Result};

/// What a delete request asks for (metav1.DeleteOptions, from the body or the query).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// gracePeriodSeconds.
    pub grace: Option<i64>,
    /// propagationPolicy: Orphan, Background, Foreground.
    pub propagation: Option<String>,
    /// preconditions.uid.
    pub uid: Option<String>,
    /// preconditions.resourceVersion.
    pub resource_version: Option<String>,
    /// dryRun=All.
    pub dry_run: bool,
}

fn options(ctx: &Ctx, body: &[u8]) -> Result<DeleteOptions> {
    let b = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        codec::decode(&codec::content_type(&ctx.headers), body)?
    };
    options_from(ctx, &b)
}

/// DeleteOptions from a decoded body (or `null`) and the query.
pub fn options_from(ctx: &Ctx, b: &Value) -> Result<DeleteOptions> {
    let q = &ctx.query;
    let grace = b
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let propagation = b
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").cloned())
        .or_else(
            || match b.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                _ => None,
            },
        );
    if let Some(p) = &propagation
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    let pre = b.get("preconditions");
    let dry = b
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|v| v == "All"))
        || ctx.dry_run();
    Ok(DeleteOptions {
        grace,
        propagation,
        uid: pre
            .and_then(|p| p.get("uid"))
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: pre
            .and_then(|p| p.get("resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: dry,
    })
}

/// Whether nothing holds the object back from removal any more.
pub fn finalized(obj: &Value) -> bool {
    let spec_finalizers = obj
        .get("spec")
        .and_then(|s| s.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    meta::finalizers(obj).is_empty()
        && !(obj.get("kind") == Some(&json!("Namespace")) && spec_finalizers)
}

/// Deletes one object, or marks it for deletion when finalizers or a grace period hold it back.
/// Returns the object's last state.
pub async fn delete_object(
    state: &State,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value> {
    admission::admit_delete(rt, name)?;
    for _ in 0..super::write::PATCH_RETRIES {
        let (current, rev) = state.storage.get(rt, ns, name).await?;
        if let Some(uid) = &opts.uid
            && meta::meta_str(&current, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict_because(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::meta_str(&current, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(want) = &opts.resource_version
            && meta::meta_str(&current, "resourceVersion") != Some(want.as_str())
        {
            return Err(ApiError::conflict_because(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
                ),
            ));
        }
        let mut finalizers = meta::finalizers(&current);
        let extra = match opts.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(f.to_string());
        }
        let is_pod = rt.group.is_empty() && rt.kind == "Pod";
        let on_node = current
            .get("spec")
            .and_then(|s| s.get("nodeName"))
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let default_grace = current
            .get("spec")
            .and_then(|s| s.get("terminationGracePeriodSeconds"))
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let grace = opts.grace.unwrap_or(default_grace).max(0);
        let graceful = is_pod
            && on_node
            && grace > 0
            && current
                .get("status")
                .and_then(|s| s.get("phase"))
                .and_then(Value::as_str)
                .is_none_or(|p| p != "Succeeded" && p != "Failed");
        let mut marked = current.clone();
        marked["metadata"]["finalizers"] = json!(finalizers);
        if finalizers.is_empty() {
            meta::remove_meta(&mut marked, "finalizers");
        }
        if !graceful && finalized(&marked) {
            if opts.dry_run {
                return Ok(current);
            }
            match state.storage.delete(rt, ns, name, Some(rev)).await {
                Ok(last) => return Ok(last),
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        if meta::is_deleting(&current) && marked == current {
            return Ok(current);
        }
        if !meta::is_deleting(&current) {
            let at =
                chrono::Utc::now() + chrono::Duration::seconds(if graceful { grace } else { 0 });
            meta::set_meta(
                &mut marked,
                "deletionTimestamp",
                json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            );
            meta::set_meta(
                &mut marked,
                "deletionGracePeriodSeconds",
                json!(if graceful { grace } else { 0 }),
            );
            if rt.group.is_empty() && rt.kind == "Namespace" {
                marked["status"]["phase"] = json!("Terminating");
            }
        }
        if opts.dry_run {
            return Ok(marked);
        }
        match state.storage.update(rt, marked, rev).await {
            Ok(stored) => return Ok(stored),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(rt, name))
}

pub async fn delete(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let opts = options(ctx, body)?;
    let obj = delete_object(state, ctx.rt, ctx.namespace(), &ctx.info.name, &opts).await?;
    Ok(respond(ctx, StatusCode::OK, &obj))
}

pub async fn delete_collection(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let opts = options(ctx, body)?;
    let (items, rev, _, _) = super::read::select(state, ctx, None, 0).await?;
    let mut deleted = Vec::new();
    for item in items {
        match delete_object(
            state,
            ctx.rt,
            meta::namespace(&item),
            meta::name(&item),
            &opts,
        )
        .await
        {
            Ok(last) => deleted.push(ctx.to_client(&last)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": ctx.req_rt.list_kind, "apiVersion": ctx.req_rt.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": deleted});
    Ok(codec::json_response(StatusCode::OK, &list))
}
