//! The generic REST handlers: one set of handlers serves every resource of the registry, calling
//! the resource's strategy in upstream's order (decode, default, prepare, admit, validate,
//! store). Each verb lives in its own module.

mod delete;
mod eviction;
mod read;
mod review;
mod scale;
mod watch;
pub(crate) mod write;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use api::{ResourceType, meta, registry};

use crate::State;
use crate::authn::UserInfo;
use crate::codec;
use crate::request::{self, RequestInfo};
use crate::status::{ApiError, Result};

pub use delete::delete_object;

/// Everything a handler knows about one request.
pub struct Ctx {
    /// The resource as stored: the row strategies, validation and storage work with.
    pub rt: &'static ResourceType,
    /// The resource as the client speaks it (another version of `rt` when versions share
    /// storage); bodies are checked against it and converted on the way in and out.
    pub req_rt: &'static ResourceType,
    /// The parsed request.
    pub info: RequestInfo,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// Who is asking.
    pub user: UserInfo,
}

impl Ctx {
    /// Whether the request asks for a dry run.
    pub fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    /// The field manager: the query parameter, else the user agent's product name, as upstream.
    pub fn field_manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.clone();
        }
        let ua = self
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }

    /// The namespace the object must live in ("" for cluster-scoped resources).
    pub fn namespace(&self) -> &str {
        if self.rt.namespaced {
            &self.info.namespace
        } else {
            ""
        }
    }
}

/// Serves a request under `/api` or `/apis` that names a resource.
pub async fn handle(
    state: Arc<State>,
    user: UserInfo,
    method: Method,
    path: &str,
    query: Option<&str>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let q = request::query_map(query);
    let Some(info) = request::parse(&method, path, &q) else {
        return ApiError::no_route(path).into_response();
    };
    let Some(req_rt) = registry().find(&info.group, &info.version, &info.resource) else {
        return ApiError::no_route(path).into_response();
    };
    let rt = registry().storage_row(req_rt);
    if !info.subresource.is_empty() && !rt.has_subresource(&info.subresource) {
        return ApiError::no_route(path).into_response();
    }
    let ctx = Ctx {
        rt,
        req_rt,
        info,
        query: q,
        headers,
        user,
    };
    let mut attrs = crate::authz::Attributes::of(Some(&ctx.info), &method, path);
    if matches!(ctx.info.verb, "list" | "watch")
        && let Some(name) = crate::request::selected_name(&ctx.query)
    {
        attrs.name = name;
    }
    if let Err(e) = crate::authz::authorize(&state.storage, &ctx.user, &attrs).await {
        return e.into_response();
    }
    if let Err(e) =
        crate::node_restriction::admit_request(&state, &ctx.user, ctx.rt, &ctx.info).await
    {
        return e.into_response();
    }
    match dispatch(&state, &ctx, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(state: &Arc<State>, ctx: &Ctx, body: Bytes) -> Result<Response> {
    let sub = ctx.info.subresource.as_str();
    if ctx.rt.namespaced
        && ctx.info.namespace.is_empty()
        && !matches!(ctx.info.verb, "list" | "watch")
    {
        return Err(ApiError::no_route(&format!(
            "{} requires a namespace",
            ctx.rt.plural
        )));
    }
    if !ctx.rt.is_stored() {
        return match ctx.info.verb {
            "create" => review::create(state, ctx, &body).await,
            verb => Err(ApiError::method_not_supported(ctx.rt, verb)),
        };
    }
    match (ctx.info.verb, sub) {
        ("create", "token") => review::token(state, ctx, &body).await,
        ("get", "" | "status") => read::get(state, ctx).await,
        ("list", _) => read::list(state, ctx).await,
        ("watch", _) => watch::watch(state, ctx).await,
        ("create", "") => write::create(state, ctx, &body).await,
        ("update", "" | "status" | "finalize" | "approval") => {
            write::update(state, ctx, &body).await
        }
        ("patch", "" | "status") => write::patch(state, ctx, &body).await,
        ("delete", "") => delete::delete(state, ctx, &body).await,
        ("deletecollection", "") => delete::delete_collection(state, ctx, &body).await,
        ("get" | "update" | "patch", "scale") => scale::scale(state, ctx, &body).await,
        ("create", "binding") => write::bind(state, ctx, &body).await,
        ("create", "eviction") => eviction::evict(state, ctx, &body).await,
        _ => Err(ApiError::method_not_supported(ctx.rt, ctx.info.verb)),
    }
}

impl Ctx {
    /// A stored object as the client's version of the resource.
    pub fn to_client(&self, obj: &Value) -> Value {
        api::convert::convert(obj, self.rt, self.req_rt)
    }

    /// What table rows carry (`includeObject`: None, Metadata or Object).
    pub fn include_object(&self) -> &str {
        self.query
            .get("includeObject")
            .map(String::as_str)
            .unwrap_or("Metadata")
    }

    /// Whether the client's version is the stored one.
    pub fn same_version(&self) -> bool {
        std::ptr::eq(self.rt, self.req_rt)
    }
}

/// Serializes a stored object for a response, in the client's version, as a Table when the
/// client asked for one.
pub fn respond(ctx: &Ctx, code: StatusCode, obj: &Value) -> Response {
    let converted;
    let obj = if ctx.same_version() {
        obj
    } else {
        converted = ctx.to_client(obj);
        &converted
    };
    if codec::wants_table(&ctx.headers) {
        let include = ctx.include_object();
        let list_meta = serde_json::json!({"resourceVersion": meta::meta_str(obj, "resourceVersion").unwrap_or("")});
        return codec::json_response(
            code,
            &codec::table(ctx.rt, std::slice::from_ref(obj), include, list_meta),
        );
    }
    codec::json_response(code, obj)
}

/// A response with an empty body, for HEAD.
pub fn empty(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap_or_default()
}
