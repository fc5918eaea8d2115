//! create, update, patch (JSON, merge, strategic, apply) and the binding subresource.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use api::{defaults, managed_fields, meta, patch as smp, schema, strategy};

use super::{Ctx, respond};
use crate::State;
use crate::admission;
use crate::codec;
use crate::status::{ApiError, Result};
use crate::storage::revision_of;

/// How many times a patch is re-applied when the object changes underneath it.
pub(super) const PATCH_RETRIES: usize = 8;

/// Checks that a decoded object is of the resource's kind and fields, as upstream's strict
/// decoding does. Returns warnings for unknown fields when the client asked for `Warn`.
fn check_object(ctx: &Ctx, obj: &mut Value) -> Result<Vec<String>> {
    let rt = ctx.req_rt;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = Value::from(rt.kind),
        Some(k) if k != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => {}
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = Value::from(rt.api_version()),
        Some(v) if v != rt.api_version() => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        _ => {}
    }
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            rt.kind, rt.version, rt.kind
        ))
    };
    let unknown = schema::unknown_fields(obj, &rt.schema_name);
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match ctx.query.get("fieldValidation").map(String::as_str) {
            Some("Strict") => {
                return Err(cannot(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            Some("Ignore") => {}
            _ => warnings = list,
        }
    }
    (rt.decode)(obj).map_err(cannot)?;
    Ok(warnings)
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

/// Five random characters, as upstream's generateName appends.
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Checks an object in the client's version and converts it to the stored version.
fn to_storage(ctx: &Ctx, mut obj: Value) -> Result<(Value, Vec<String>)> {
    let warnings = check_object(ctx, &mut obj)?;
    Ok((api::convert::convert(&obj, ctx.req_rt, ctx.rt), warnings))
}

/// Decodes a request body into an object of the resource, in the stored version.
fn decode(ctx: &Ctx, body: &[u8]) -> Result<(Value, Vec<String>)> {
    let obj = codec::decode_as(&codec::content_type(&ctx.headers), body, Some(ctx.req_rt))?;
    to_storage(ctx, obj)
}

pub async fn create(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let (obj, mut warnings) = decode(ctx, body)?;
    let (stored, admitted) = create_object(state, ctx, obj, "Update").await?;
    warnings.extend(admitted);
    Ok(with_warnings(
        respond(ctx, StatusCode::CREATED, &stored),
        &warnings,
    ))
}

/// The create pipeline, shared by POST and by apply of a new object; returns the object stored
/// and admission's warnings.
async fn create_object(
    state: &State,
    ctx: &Ctx,
    mut obj: Value,
    operation: &str,
) -> Result<(Value, Vec<String>)> {
    let rt = ctx.rt;
    if rt.namespaced {
        let body_ns = meta::namespace(&obj);
        if !body_ns.is_empty() && body_ns != ctx.info.namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta::set_meta(
            &mut obj,
            "namespace",
            Value::from(ctx.info.namespace.clone()),
        );
    } else {
        meta::remove_meta(&mut obj, "namespace");
    }
    if meta::name(&obj).is_empty()
        && let Some(prefix) = meta::meta_str(&obj, "generateName").map(str::to_string)
    {
        meta::set_meta(
            &mut obj,
            "name",
            Value::from(format!("{prefix}{}", random_suffix())),
        );
    }
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta::remove_meta(&mut obj, k);
    }
    meta::set_meta(
        &mut obj,
        "uid",
        Value::from(uuid::Uuid::new_v4().to_string()),
    );
    meta::set_meta(
        &mut obj,
        "creationTimestamp",
        Value::from(meta::now_timestamp()),
    );
    // The writer owns what it sent: an applier exactly its configuration, an updater also what
    // defaulting filled in; nobody owns what admission adds (upstream's field manager runs
    // between defaulting and admission).
    let applied = (operation == "Apply").then(|| managed_fields::fields_of(&obj, &rt.schema_name));
    defaults::apply(rt, &mut obj);
    let fields = applied.unwrap_or_else(|| managed_fields::fields_of(&obj, &rt.schema_name));
    // Mutating admission comes before the strategy, as upstream's: what it fills in (a
    // LimitRange's requests and limits) counts for the pod's QoS class.
    let warnings = admission::admit_create(state, rt, &ctx.user, &mut obj).await?;
    strategy::prepare_for_create(rt, &mut obj);
    let errs = strategy::validate(rt, &obj);
    if !errs.is_empty() {
        return Err(ApiError::invalid(rt, meta::name(&obj), &errs));
    }
    if rt.group == "rbac.authorization.k8s.io" {
        crate::authz::check_grant(&state.storage, &ctx.user, rt.kind, &obj).await?;
    }
    managed_fields::record(
        &mut obj,
        &ctx.field_manager(),
        operation,
        &rt.api_version(),
        fields,
        None,
    );
    let _allocating = if crate::services::is_service(rt) {
        let guard = state.services.lock().await;
        crate::services::allocate(state, rt, None, &mut obj).await?;
        Some(guard)
    } else {
        None
    };
    crate::resource_quota::admit_create(state, rt, &obj, ctx.dry_run()).await?;
    crate::audit::creating(meta::name(&obj));
    if ctx.dry_run() {
        return Ok((obj, warnings));
    }
    Ok((state.storage.create(rt, obj).await?, warnings))
}

/// The update pipeline on a current object: carries over what the server owns, applies the
/// strategy of the subresource, validates, and records field ownership.
pub(super) fn prepare_update(
    ctx: &Ctx,
    current: &Value,
    mut new: Value,
    operation: &str,
) -> Result<Value> {
    let rt = ctx.rt;
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
        "generateName",
    ] {
        match current.get("metadata").and_then(|m| m.get(k)) {
            Some(v) => meta::set_meta(&mut new, k, v.clone()),
            None => {
                meta::remove_meta(&mut new, k);
            }
        }
    }
    // as upstream, a write without managedFields, or with an empty list, keeps the stored ones,
    // so that clients unaware of the field (or caches that drop it) never strip it
    let sent = new.get("metadata").and_then(|m| m.get("managedFields"));
    if sent.is_none_or(|mf| mf.as_array().is_some_and(Vec::is_empty))
        && let Some(mf) = current.get("metadata").and_then(|m| m.get("managedFields"))
    {
        meta::set_meta(&mut new, "managedFields", mf.clone());
    }
    let sub = ctx.info.subresource.as_str();
    match sub {
        "status" => strategy::prepare_for_status_update(rt, current, &mut new),
        "approval" => strategy::csr::prepare_for_approval_update(current, &mut new),
        "finalize" => {
            let finalizers = new
                .get("spec")
                .and_then(|s| s.get("finalizers"))
                .cloned()
                .unwrap_or(json!([]));
            new = current.clone();
            new["spec"]["finalizers"] = finalizers;
        }
        _ => {
            defaults::apply(rt, &mut new);
            strategy::prepare_for_update(rt, current, &mut new);
        }
    }
    let mut errs = strategy::validate(rt, &new);
    errs.extend(strategy::validate_update(rt, current, &new));
    if !errs.is_empty() {
        return Err(ApiError::invalid(rt, meta::name(&new), &errs));
    }
    if sub.is_empty() && operation == "Update" {
        let changed = managed_fields::changed_fields(Some(current), &new, &rt.schema_name);
        managed_fields::record(
            &mut new,
            &ctx.field_manager(),
            operation,
            &rt.api_version(),
            changed,
            None,
        );
    }
    Ok(new)
}

/// Whether two versions of an object differ in anything but their resourceVersion.
fn same(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        meta::remove_meta(&mut v, "resourceVersion");
        v
    };
    strip(a) == strip(b)
}

/// Stores an updated object, or returns the current one when nothing changed; removes an object
/// whose deletion was waiting only for finalizers that are now gone.
/// Stores `new` over `current` (at revision `rev`); returns what was stored and admission's
/// warnings.
pub(super) async fn store_update(
    state: &State,
    ctx: &Ctx,
    current: &Value,
    rev: u64,
    new: Value,
) -> Result<(Value, Vec<String>)> {
    // an unchanged object is not written again, unless its stored form is out of date (written
    // with an encryption key that is no longer the first), as upstream re-encrypts on update
    if same(current, &new)
        && !state
            .storage
            .backend
            .stale(&ctx.rt.key(ctx.namespace(), meta::name(current)))
            .await
    {
        return Ok((current.clone(), Vec::new()));
    }
    if ctx.rt.group == "rbac.authorization.k8s.io" {
        crate::authz::check_grant(&state.storage, &ctx.user, ctx.rt.kind, &new).await?;
    }
    crate::node_restriction::admit_object(&ctx.user, ctx.rt, Some(current), &new)?;
    if crate::certificates::is_csr(ctx.rt) {
        let sub = ctx.info.subresource.as_str();
        crate::certificates::admit_update(&state.storage, ctx.rt, &ctx.user, sub, current, &new)
            .await?;
    }
    let warnings = if ctx.info.subresource.is_empty() {
        admission::admit_update(state, ctx.rt, current, &new).await?
    } else {
        Vec::new()
    };
    let mut new = new;
    let _allocating = if crate::services::is_service(ctx.rt) && ctx.info.subresource.is_empty() {
        let guard = state.services.lock().await;
        crate::services::allocate(state, ctx.rt, Some(current), &mut new).await?;
        Some(guard)
    } else {
        None
    };
    if ctx.dry_run() {
        return Ok((new, warnings));
    }
    let stored = state.storage.update(ctx.rt, new, rev).await?;
    Ok((delete_if_finalized(state, ctx, stored).await?, warnings))
}

/// As upstream's ShouldDeleteDuringUpdate: an object being deleted that has no finalizer left
/// and no grace period still running (a pod's node deletes it at the end) is deleted by the
/// update that finds it so. A write that slips in between is followed by another try, so the
/// deletion is never lost.
async fn delete_if_finalized(state: &State, ctx: &Ctx, mut stored: Value) -> Result<Value> {
    for _ in 0..PATCH_RETRIES {
        let grace_running = meta::lookup(&stored, "metadata.deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0);
        if !meta::is_deleting(&stored) || !super::delete::finalized(&stored) || grace_running {
            return Ok(stored);
        }
        let rev = revision_of(&stored)?;
        match state
            .storage
            .delete(ctx.rt, ctx.namespace(), meta::name(&stored), rev)
            .await
        {
            Ok(last) => return Ok(last),
            Err(e) if e.code == 404 => return Ok(stored),
            Err(e) if e.code == 409 => {
                match state
                    .storage
                    .get(ctx.rt, ctx.namespace(), meta::name(&stored))
                    .await
                {
                    Ok((now, _)) => stored = now,
                    Err(e) if e.code == 404 => return Ok(stored),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stored)
}

/// Stores the result of a patch or apply computed on `current`; `None` when the object changed
/// meanwhile and the patch must be computed again.
async fn commit(
    state: &State,
    ctx: &Ctx,
    current: &Value,
    rev: u64,
    new: Value,
    warnings: &[String],
) -> Result<Option<Response>> {
    match store_update(state, ctx, current, rev, new).await {
        Ok((stored, admitted)) => Ok(Some(with_warnings(
            respond(ctx, StatusCode::OK, &stored),
            &[warnings, &admitted[..]].concat(),
        ))),
        Err(e) if e.code == 409 && e.reason == "Conflict" => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn update(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let (new, warnings) = decode(ctx, body)?;
    let name = meta::name(&new);
    if name != ctx.info.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            ctx.info.name
        )));
    }
    if ctx.rt.namespaced {
        let ns = meta::namespace(&new);
        if !ns.is_empty() && ns != ctx.info.namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let (current, rev) = state
        .storage
        .get(ctx.rt, ctx.namespace(), &ctx.info.name)
        .await?;
    if let Some(wanted) = revision_of(&new)?
        && wanted != rev
    {
        return Err(ApiError::conflict(ctx.rt, &ctx.info.name));
    }
    let new = prepare_update(ctx, &current, new, "Update")?;
    let (stored, admitted) = store_update(state, ctx, &current, rev, new).await?;
    Ok(with_warnings(
        respond(ctx, StatusCode::OK, &stored),
        &[warnings, admitted].concat(),
    ))
}

fn patch_error(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("the server rejected our request due to an error in our request: {e}"),
        details: None,
    }
}

/// Applies a patch document of the given media type to `current`, an object of the named type.
pub(super) fn apply_patch(
    media: &str,
    current: &Value,
    body: &[u8],
    type_name: &str,
) -> Result<Value> {
    match media {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops).map_err(patch_error)?;
            Ok(doc)
        }
        "application/merge-patch+json" => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        "application/strategic-merge-patch+json" => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            smp::strategic_merge(current, &p, type_name).map_err(patch_error)
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub async fn patch(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let media = codec::content_type(&ctx.headers);
    if media == "application/apply-patch+yaml" {
        return apply(state, ctx, body).await;
    }
    if body.len() > codec::MAX_BODY {
        return Err(ApiError::too_large());
    }
    for _ in 0..PATCH_RETRIES {
        let (current, rev) = state
            .storage
            .get(ctx.rt, ctx.namespace(), &ctx.info.name)
            .await?;
        let patched = apply_patch(
            &media,
            &ctx.to_client(&current),
            body,
            &ctx.req_rt.schema_name,
        )?;
        let (patched, warnings) = to_storage(ctx, patched)?;
        if let Some(wanted) = revision_of(&patched)?
            && wanted != rev
        {
            return Err(ApiError::conflict(ctx.rt, &ctx.info.name));
        }
        if meta::name(&patched) != ctx.info.name {
            return Err(ApiError::bad_request(
                "metadata.name: the name of the object does not match the name on the URL",
            ));
        }
        let new = prepare_update(ctx, &current, patched, "Update")?;
        if let Some(resp) = commit(state, ctx, &current, rev, new, &warnings).await? {
            return Ok(resp);
        }
    }
    Err(ApiError::conflict(ctx.rt, &ctx.info.name))
}

/// Server-side apply: creates the object from the configuration, or merges the configuration
/// into it; the manager then owns exactly the configuration's fields.
async fn apply(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let manager = ctx
        .query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .cloned();
    let Some(manager) = manager else {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    let config = codec::decode("application/yaml", body)?;
    let (config, warnings) = to_storage(ctx, config)?;
    if meta::name(&config) != ctx.info.name {
        return Err(ApiError::bad_request(
            "metadata.name: the name of the object does not match the name on the URL",
        ));
    }
    let force = crate::request::flag(&ctx.query, "force");
    for _ in 0..PATCH_RETRIES {
        let current = match state
            .storage
            .get(ctx.rt, ctx.namespace(), &ctx.info.name)
            .await
        {
            Ok(c) => Some(c),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let Some((current, rev)) = current else {
            let stored = create_object(state, ctx, config.clone(), "Apply").await;
            match stored {
                Ok((s, admitted)) => {
                    let warnings = [&warnings[..], &admitted[..]].concat();
                    return Ok(with_warnings(
                        respond(ctx, StatusCode::CREATED, &s),
                        &warnings,
                    ));
                }
                Err(e) if e.reason == "AlreadyExists" => continue,
                Err(e) => return Err(e),
            }
        };
        let merged = managed_fields::apply(
            &current,
            &config,
            &manager,
            force,
            &ctx.rt.schema_name,
            &ctx.rt.api_version(),
        )
        .map_err(|conflicts| ApiError {
            code: 409,
            reason: "Conflict",
            message: conflicts.to_string(),
            details: Some(json!({"causes": conflicts.causes()})),
        })?;
        let new = prepare_update(ctx, &current, merged, "Apply")?;
        if let Some(resp) = commit(state, ctx, &current, rev, new, &warnings).await? {
            return Ok(resp);
        }
    }
    Err(ApiError::conflict(ctx.rt, &ctx.info.name))
}

/// POST pods/NAME/binding: assigns the pod to a node, as the scheduler does.
pub async fn bind(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let binding = codec::decode(&codec::content_type(&ctx.headers), body)?;
    let node = binding
        .get("target")
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request("Binding target.name is required"));
    }
    let (mut pod, rev) = state
        .storage
        .get(ctx.rt, ctx.namespace(), &ctx.info.name)
        .await?;
    if meta::is_deleting(&pod) {
        return Err(ApiError::conflict_because(
            ctx.rt,
            &ctx.info.name,
            "pod is being deleted, cannot be assigned to a host",
        ));
    }
    if let Some(existing) = pod
        .get("spec")
        .and_then(|s| s.get("nodeName"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError::conflict_because(
            ctx.rt,
            &ctx.info.name,
            &format!(
                "pod {} is already assigned to node \"{existing}\"",
                ctx.info.name
            ),
        ));
    }
    pod["spec"]["nodeName"] = Value::from(node);
    let conditions = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = conditions
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now_timestamp()}));
    pod["status"]["conditions"] = Value::Array(conditions);
    if !ctx.dry_run() {
        state.storage.update(ctx.rt, pod, rev).await?;
    }
    Ok(codec::json_response(StatusCode::CREATED, &crate::status::success(None)).into_response())
}
