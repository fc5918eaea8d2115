//! Field ownership (`metadata.managedFields`), in upstream's `FieldsV1` notation: `f:<field>`
//! for struct and map fields, `k:<key json>` for items of lists merged by key, `v:<value>` for
//! items of set lists, `.` for an owned container itself.
//!
//! Each write records which fields its manager set: an Update owns the fields it changed, an
//! Apply owns exactly the fields of its configuration.

use serde_json::{Map, Value, json};

use crate::patch_meta::{ListStrategy, list_strategy};
use crate::schema::Node;

/// Metadata fields that are never owned (the server sets them).
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// The fields set in `obj`, as a `FieldsV1` tree. Status is left out (it has its own manager
/// through the status subresource); so are apiVersion and kind.
pub fn fields_of(obj: &Value, type_name: &str) -> Value {
    changed_fields(None, obj, type_name)
}

/// The fields of `new` that differ from `old` (all of them when `old` is `None`).
pub fn changed_fields(old: Option<&Value>, new: &Value, type_name: &str) -> Value {
    let node = Node::named(type_name);
    let mut out = Map::new();
    if let Value::Object(m) = new {
        for (k, v) in m {
            if matches!(k.as_str(), "apiVersion" | "kind" | "status") {
                continue;
            }
            let child = node.and_then(|n| n.field(k));
            let before = old.and_then(|o| o.get(k));
            if k == "metadata" {
                let mut meta = Map::new();
                for (mk, mv) in v.as_object().into_iter().flatten() {
                    if SERVER_METADATA.contains(&mk.as_str()) {
                        continue;
                    }
                    let mchild = child.and_then(|c| c.field(mk));
                    let owner = child.and_then(|c| c.type_name).unwrap_or("");
                    if let Some(f) = diff(before.and_then(|b| b.get(mk)), mv, mchild, owner, mk) {
                        meta.insert(format!("f:{mk}"), f);
                    }
                }
                if !meta.is_empty() {
                    out.insert("f:metadata".into(), Value::Object(meta));
                }
                continue;
            }
            let owner = node.and_then(|n| n.type_name).unwrap_or("");
            if let Some(f) = diff(before, v, child, owner, k) {
                out.insert(format!("f:{k}"), f);
            }
        }
    }
    Value::Object(out)
}

/// The field set of `new` under one field where it differs from `old`; `None` when equal.
fn diff(
    old: Option<&Value>,
    new: &Value,
    node: Option<Node<'_>>,
    owner: &str,
    field: &str,
) -> Option<Value> {
    if old == Some(new) {
        return None;
    }
    match new {
        Value::Object(m) if !m.is_empty() => {
            let mut out = Map::new();
            for (k, v) in m {
                let child = node.and_then(|n| n.field(k));
                let type_name = node.and_then(|n| n.type_name).unwrap_or("");
                if let Some(f) = diff(old.and_then(|o| o.get(k)), v, child, type_name, k) {
                    out.insert(format!("f:{k}"), f);
                }
            }
            if old.is_none() {
                out.insert(".".into(), json!({}));
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => match list_strategy(owner, field) {
            ListStrategy::MergeByKey(key) => {
                let item_node = node.and_then(|n| n.items());
                let mut out = Map::new();
                for item in items {
                    let Some(id) = item.get(key) else { continue };
                    let before = old
                        .and_then(Value::as_array)
                        .and_then(|o| o.iter().find(|b| b.get(key) == Some(id)));
                    let name = format!("k:{}", json!({ key: id }));
                    let type_name = item_node.and_then(|n| n.type_name).unwrap_or("");
                    if let Some(mut f) = diff_item(before, item, item_node, type_name) {
                        if let Some(o) = f.as_object_mut() {
                            o.insert(".".into(), json!({}));
                        }
                        out.insert(name, f);
                    }
                }
                Some(Value::Object(out))
            }
            ListStrategy::Set => {
                let mut out = Map::new();
                for item in items {
                    out.insert(format!("v:{item}"), json!({}));
                }
                Some(Value::Object(out))
            }
            ListStrategy::Atomic => Some(json!({})),
        },
        _ => Some(json!({})),
    }
}

fn diff_item(
    old: Option<&Value>,
    new: &Value,
    node: Option<Node<'_>>,
    type_name: &str,
) -> Option<Value> {
    if old == Some(new) {
        return None;
    }
    let mut out = Map::new();
    for (k, v) in new.as_object().into_iter().flatten() {
        let child = node.and_then(|n| n.field(k));
        if let Some(f) = diff(old.and_then(|o| o.get(k)), v, child, type_name, k) {
            out.insert(format!("f:{k}"), f);
        }
    }
    Some(Value::Object(out))
}

/// Deep-merges two field sets.
pub fn union(a: &mut Value, b: &Value) {
    if let (Value::Object(am), Value::Object(bm)) = (a, b) {
        for (k, v) in bm {
            match am.get_mut(k) {
                Some(existing) => union(existing, v),
                None => {
                    am.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// Records in `obj.metadata.managedFields` that `manager` set `fields` with `operation`
/// (`Update` or `Apply`). An Apply replaces the manager's earlier Apply set; an Update adds to
/// its earlier Update set. Empty sets are not recorded.
pub fn record(
    obj: &mut Value,
    manager: &str,
    operation: &str,
    api_version: &str,
    fields: Value,
    subresource: Option<&str>,
) {
    let empty = fields.as_object().is_none_or(Map::is_empty);
    let meta = crate::meta::metadata_mut(obj);
    let mut entries: Vec<Value> = meta
        .get("managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let same = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some(operation)
            && e.get("subresource").and_then(Value::as_str) == subresource
    };
    let pos = entries.iter().position(same);
    if empty && pos.is_none() {
        return;
    }
    let mut set = fields;
    if operation == "Update"
        && let Some(i) = pos
        && let Some(prev) = entries[i].get("fieldsV1")
    {
        let mut merged = prev.clone();
        union(&mut merged, &set);
        set = merged;
    }
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": crate::meta::now_timestamp(),
        "fieldsType": "FieldsV1",
        "fieldsV1": set,
    });
    if let Some(s) = subresource {
        entry["subresource"] = Value::from(s);
    }
    match pos {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    meta.insert("managedFields".into(), Value::Array(entries));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_upstream_notation() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"a": "b"}}, "data": {"k": "v"}});
        assert_eq!(
            fields_of(&cm, "io.k8s.api.core.v1.ConfigMap"),
            json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:a": {}}}})
        );
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert_eq!(
            fields_of(&pod, "io.k8s.api.core.v1.Pod"),
            json!({"f:spec": {".": {}, "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
    }

    #[test]
    fn updates_own_what_they_change() {
        let old = json!({"data": {"a": "1", "b": "2"}});
        let new = json!({"data": {"a": "1", "b": "3"}});
        assert_eq!(
            changed_fields(Some(&old), &new, "io.k8s.api.core.v1.ConfigMap"),
            json!({"f:data": {"f:b": {}}})
        );
        let mut obj = new.clone();
        record(
            &mut obj,
            "kubectl-patch",
            "Update",
            "v1",
            json!({"f:data": {"f:b": {}}}),
            None,
        );
        assert_eq!(
            obj["metadata"]["managedFields"][0]["manager"],
            "kubectl-patch"
        );
    }
}
