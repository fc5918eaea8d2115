//! API errors as upstream reports them: a `metav1.Status` with the HTTP code, a reason, a
//! message worded as upstream's, and details naming the object and the invalid fields.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use api::ResourceType;
use api::validation::FieldError;

/// The result type of request handling.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details` of the Status, if any.
    pub details: Option<Value>,
}

fn details(rt: &ResourceType, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": rt.plural});
    if !rt.group.is_empty() {
        d["group"] = Value::from(rt.group);
    }
    d
}

impl ApiError {
    /// An error with any code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 for a named object.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self {
            details: Some(details(rt, name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", rt.group_resource()),
            )
        }
    }
    /// 404 for a path that serves nothing.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }
    /// 409 for a create of an existing name.
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self {
            details: Some(details(rt, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rt.group_resource()),
            )
        }
    }
    /// 409 for a stale resourceVersion.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::conflict_because(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    /// 409 with a specific cause.
    pub fn conflict_because(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self {
            details: Some(details(rt, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {why}",
                    rt.group_resource()
                ),
            )
        }
    }
    /// 422 with the invalid fields.
    pub fn invalid(rt: &ResourceType, name: &str, errs: &[FieldError]) -> Self {
        let list: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.cause_type(), "message": e.cause_message(), "field": e.field}))
            .collect();
        let mut d = json!({"name": name, "kind": rt.kind, "causes": causes});
        if !rt.group.is_empty() {
            d["group"] = Value::from(rt.group);
        }
        Self {
            details: Some(d),
            ..Self::new(
                422,
                "Invalid",
                format!("{} \"{name}\" is invalid: {joined}", rt.kind),
            )
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    /// 403 from admission for the object `name` (empty for none yet) of `rt`, worded as
    /// upstream's `admission.NewForbidden`.
    pub fn admission_forbidden(rt: &ResourceType, name: &str, why: &str) -> Self {
        let resource = rt.group_resource();
        if name.is_empty() {
            Self::forbidden(format!("{resource} is forbidden: {why}"))
        } else {
            Self::forbidden(format!("{resource} \"{name}\" is forbidden: {why}"))
        }
    }
    /// 405.
    pub fn method_not_supported(rt: &ResourceType, verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind \"{}\"",
                rt.group_resource()
            ),
        )
    }
    /// 410 for a watch or continue token that is too old.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    /// 413.
    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }
    /// 415.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }
    /// 429, e.g. an eviction a disruption budget does not allow.
    pub fn too_many_requests(message: impl Into<String>, details: Option<Value>) -> Self {
        Self {
            details,
            ..Self::new(429, "TooManyRequests", message)
        }
    }
    /// 500.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }
    /// 503 for a store that cannot be written.
    pub fn unavailable(message: impl std::fmt::Display) -> Self {
        Self::new(503, "ServiceUnavailable", format!("{message}"))
    }

    /// The error as a Status object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        crate::codec::json_response(code, &self.status())
    }
}

/// A successful Status, as a delete of a whole collection or some subresources return.
pub fn success(details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

/// Maps a store failure on one object to an API error.
pub fn from_store(e: store::Error, rt: &ResourceType, name: &str) -> ApiError {
    match e {
        store::Error::NotFound => ApiError::not_found(rt, name),
        store::Error::AlreadyExists => ApiError::already_exists(rt, name),
        store::Error::Conflict { .. } => ApiError::conflict(rt, name),
        store::Error::Compacted { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
        }
        store::Error::Storage(m) => ApiError::unavailable(m),
    }
}
