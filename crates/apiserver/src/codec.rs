//! Request and response bodies: JSON and YAML in, JSON out (a client that prefers protobuf gets
//! JSON, as it accepts), and server-side printing into `meta.k8s.io/v1` Tables when the client
//! asks for `as=Table`.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use api::ResourceType;

use crate::status::{ApiError, Result};

/// The largest request body accepted, as upstream (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    bytes_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// A response with a JSON body already encoded.
pub fn bytes_response(code: StatusCode, body: Vec<u8>) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// The media type of a request (without parameters).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Parses a JSON or YAML body into a value.
pub fn decode(media_type: &str, body: &[u8]) -> Result<Value> {
    decode_as(media_type, body, None)
}

/// Parses a JSON, YAML or (for an object of the given resource) protobuf body into a value.
pub fn decode_as(media_type: &str, body: &[u8], rt: Option<&ResourceType>) -> Result<Value> {
    if body.len() > MAX_BODY {
        return Err(ApiError::too_large());
    }
    if media_type == "application/vnd.kubernetes.protobuf" {
        return match rt {
            Some(rt) => crate::protobuf::decode(body, &rt.schema_name).map_err(|e| {
                ApiError::bad_request(format!("unable to decode the protobuf body: {e}"))
            }),
            None => Err(ApiError::unsupported_media_type(media_type)),
        };
    }
    let yaml = media_type.contains("yaml");

    if yaml {
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
        serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

/// Whether the client asked for a Table (`Accept: application/json;as=Table;...`).
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

fn row_object(obj: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
        }),
    }
}

/// A Table of `objects` with the columns of their kind.
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    include_object: &str,
    list_meta: Value,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": api::table::cells(rt.kind, o), "object": row_object(o, include_object)}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": api::table::column_definitions(api::table::columns(rt.kind)),
        "rows": rows,
    })
}
