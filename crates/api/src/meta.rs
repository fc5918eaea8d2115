//! Reading and writing the common parts of an object (`apiVersion`, `kind`, `metadata`) on JSON
//! values, so that generic code never needs the typed structs.

use serde_json::{Map, Value};

/// The string at `/metadata/<field>`, if any.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The object's name ("" when missing).
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// The object's namespace ("" when missing).
pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or("")
}

/// The object's uid, or "".
pub fn uid(obj: &Value) -> &str {
    meta_str(obj, "uid").unwrap_or("")
}

/// The metadata map, created when missing or not an object.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = ensure_object(obj);
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    ensure_object(meta)
}

/// Turns `v` into an empty object unless it is one, and returns its map.
pub fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Sets `/metadata/<field>`.
pub fn set_meta(obj: &mut Value, field: &str, value: Value) {
    metadata_mut(obj).insert(field.to_string(), value);
}

/// Removes `/metadata/<field>`.
pub fn remove_meta(obj: &mut Value, field: &str) -> Option<Value> {
    metadata_mut(obj).remove(field)
}

/// The labels as string pairs.
pub fn labels(obj: &Value) -> impl Iterator<Item = (&str, &str)> {
    string_map(obj.get("metadata").and_then(|m| m.get("labels")))
}

/// The pairs of a JSON object whose values are strings.
pub fn string_map(v: Option<&Value>) -> impl Iterator<Item = (&str, &str)> {
    v.and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

/// The value at a dotted path such as `spec.nodeName` or `metadata.labels.app`.
pub fn lookup<'a>(obj: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(obj, |v, part| v.get(part))
}

/// The object's finalizers.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the object is being deleted (has a deletionTimestamp).
pub fn is_deleting(obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
}

/// The current time as a Kubernetes timestamp (RFC 3339, seconds, UTC).
pub fn now_timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
