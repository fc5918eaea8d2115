//! OpenAPI documents of the served API, built from the types' schemas: v3 per group version (what
//! `kubectl explain` reads, and where kubectl looks for the `fieldValidation` parameter before it
//! trusts the server to validate), and v2 as one document.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::registry::{ResourceType, registry};
use crate::schema::{REF_PREFIX, definitions};

/// The path key of a group version in the v3 index (`api/v1`, `apis/apps/v1`).
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvk(r: &ResourceType) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_parameters() -> Vec<Value> {
    vec![
        query(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ),
        query(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
    ]
}

fn operation(r: &ResourceType, action: &str, v3: bool, extra: Vec<Value>) -> Value {
    let reference = if v3 {
        format!("{REF_PREFIX}{}", r.schema_name)
    } else {
        format!("#/definitions/{}", r.schema_name)
    };
    let response = if v3 {
        json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": reference}}}}})
    } else {
        json!({"200": {"description": "OK", "schema": {"$ref": reference}}})
    };
    json!({
        "operationId": format!("{action}{}", r.kind),
        "parameters": extra,
        "responses": response,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
    })
}

fn paths_for(resources: &[&ResourceType], v3: bool) -> Map<String, Value> {
    let mut paths = Map::new();
    for r in resources {
        let base = format!("/{}", group_version_path(r.group, r.version));
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let mut patch_params = write_parameters();
        patch_params.push(query(
            "force",
            "Force is going to \"force\" Apply requests.",
        ));
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(r, "list", v3, vec![query("labelSelector", ""), query("fieldSelector", ""), query("limit", ""), query("continue", ""), query("watch", "")]),
                "post": operation(r, "post", v3, write_parameters()),
                "delete": operation(r, "deletecollection", v3, vec![]),
            }),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(r, "get", v3, vec![]),
                "put": operation(r, "put", v3, write_parameters()),
                "patch": operation(r, "patch", v3, patch_params),
                "delete": operation(r, "delete", v3, vec![query("dryRun", ""), query("gracePeriodSeconds", ""), query("propagationPolicy", "")]),
            }),
        );
    }
    paths
}

/// The names of the schemas reachable from `roots`.
fn closure(roots: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let defs = definitions();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = defs.get(&name) {
            collect_refs(schema, &mut todo);
        }
    }
    seen
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
            {
                out.push(r.to_string());
            }
            m.values().for_each(|c| collect_refs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

/// The component schemas for `resources`, with each kind's schema tagged with its
/// group-version-kind as upstream does.
fn schemas_for(resources: &[&ResourceType]) -> Map<String, Value> {
    let defs = definitions();
    let names = closure(resources.iter().map(|r| r.schema_name.clone()));
    let mut out = Map::new();
    for name in names {
        let Some(schema) = defs.get(&name) else {
            continue;
        };
        let mut schema = schema.clone();
        let kinds: Vec<Value> = registry()
            .resources
            .iter()
            .filter(|r| r.schema_name == name)
            .map(gvk)
            .collect();
        if !kinds.is_empty()
            && let Some(m) = schema.as_object_mut()
        {
            m.insert(
                "x-kubernetes-group-version-kind".into(),
                Value::Array(kinds),
            );
        }
        out.insert(name, schema);
    }
    out
}

/// The v3 index: one entry per group version.
pub fn v3_index() -> Value {
    let mut paths = Map::new();
    for (g, v) in registry().group_versions() {
        let p = group_version_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
        );
    }
    json!({"paths": paths})
}

/// The v3 document of one group version (`api/v1`, `apis/apps/v1`), if served.
pub fn v3_group_version(path: &str) -> Option<Value> {
    let resources: Vec<&ResourceType> = registry()
        .resources
        .iter()
        .filter(|r| group_version_path(r.group, r.version) == path)
        .collect();
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths_for(&resources, true),
        "components": {"schemas": schemas_for(&resources)},
    }))
}

/// Turns `{"allOf": [{"$ref": ...}], "description": ...}` (how v3 describes a reference) into
/// `{"$ref": ..., "description": ...}`, as v2 writes it.
fn flatten_ref_wrappers(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let single_ref = m
                .get("allOf")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].get("$ref"))
                .cloned();
            if let Some(r) = single_ref {
                m.remove("allOf");
                m.insert("$ref".into(), r);
            }
            m.values_mut().for_each(flatten_ref_wrappers);
        }
        Value::Array(a) => a.iter_mut().for_each(flatten_ref_wrappers),
        _ => {}
    }
}

/// The v2 (Swagger) document of the whole API.
pub fn v2() -> Value {
    let resources: Vec<&ResourceType> = registry().resources.iter().collect();
    let mut defs = Value::Object(schemas_for(&resources));
    flatten_ref_wrappers(&mut defs);
    let text = defs.to_string().replace(REF_PREFIX, "#/definitions/");
    let defs: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths_for(&resources, false),
        "definitions": defs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_documents_advertise_field_validation_on_patch() {
        let doc = v3_group_version("apis/apps/v1").expect("apps/v1");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let schema = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(doc["components"]["schemas"]["io.k8s.api.core.v1.Probe"].is_object());
        assert!(v3_index()["paths"]["api/v1"].is_object());
    }
}
