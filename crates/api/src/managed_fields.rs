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

/// The fields of a server-side apply that other managers own with other values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflicts(pub Vec<Conflict>);

/// One conflicting field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager that owns the field.
    pub manager: String,
    /// The API version it wrote with.
    pub api_version: String,
    /// The field, as upstream prints it (`.data.mode`).
    pub field: String,
}

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        if n == 1 {
            let c = &self.0[0];
            return write!(
                f,
                "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
                c.manager, c.api_version, c.field
            );
        }
        write!(f, "Apply failed with {n} conflicts:")?;
        for c in &self.0 {
            write!(
                f,
                " conflict with \"{}\" using {}: {};",
                c.manager, c.api_version, c.field
            )?;
        }
        Ok(())
    }
}

impl Conflicts {
    /// The Status causes, one per field.
    pub fn causes(&self) -> Vec<Value> {
        self.0
            .iter()
            .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": c.field}))
            .collect()
    }
}

/// The leaf paths of a field set.
fn leaves(set: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let children: Vec<(&String, &Value)> = set
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != ".")
        .collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    for (k, v) in children {
        prefix.push(k.clone());
        leaves(v, prefix, out);
        prefix.pop();
    }
}

fn contains_path(set: &Value, path: &[String]) -> bool {
    match path.split_first() {
        None => true,
        Some((first, rest)) => set.get(first).is_some_and(|s| contains_path(s, rest)),
    }
}

fn item_matches(item: &Value, key: &str) -> bool {
    match serde_json::from_str::<Value>(key) {
        Ok(Value::Object(k)) => k.iter().all(|(f, v)| item.get(f) == Some(v)),
        _ => false,
    }
}

/// The value at a field-set path in an object.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(obj);
    };
    let next = if let Some(f) = first.strip_prefix("f:") {
        obj.get(f)?
    } else if let Some(k) = first.strip_prefix("k:") {
        obj.as_array()?.iter().find(|i| item_matches(i, k))?
    } else if let Some(v) = first.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        obj.as_array()?.iter().find(|i| **i == want)?
    } else {
        return None;
    };
    value_at(next, rest)
}

/// Removes the value at a field-set path from an object.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        if let Some(f) = first.strip_prefix("f:") {
            if let Some(m) = obj.as_object_mut() {
                m.remove(f);
            }
        } else if let Some(Value::Array(items)) = Some(obj) {
            if let Some(k) = first.strip_prefix("k:") {
                items.retain(|i| !item_matches(i, k));
            } else if let Some(v) = first.strip_prefix("v:")
                && let Ok(want) = serde_json::from_str::<Value>(v)
            {
                items.retain(|i| *i != want);
            }
        }
        return;
    }
    let next = if let Some(f) = first.strip_prefix("f:") {
        obj.get_mut(f)
    } else if let Some(k) = first.strip_prefix("k:") {
        obj.as_array_mut()
            .and_then(|a| a.iter_mut().find(|i| item_matches(i, k)))
    } else {
        None
    };
    if let Some(n) = next {
        remove_at(n, rest);
    }
}

fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if let Some(f) = p.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = p.strip_prefix("k:") {
            let pairs: Vec<String> = match serde_json::from_str::<Value>(k) {
                Ok(Value::Object(m)) => m.iter().map(|(a, b)| format!("{a}={b}")).collect(),
                _ => vec![k.to_string()],
            };
            out.push_str(&format!("[{}]", pairs.join(",")));
        } else if let Some(v) = p.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// Removes from `obj` what `old` (the manager's previous apply) set and `new` no longer does,
/// unless another manager owns it.
fn prune(obj: &mut Value, old: &Value, new: &Value, others: &[&Value], path: &mut Vec<String>) {
    for (k, sub) in old.as_object().into_iter().flatten() {
        if k == "." {
            continue;
        }
        path.push(k.clone());
        match new.get(k) {
            Some(n) => prune(obj, sub, n, others, path),
            None => {
                if !others.iter().any(|o| contains_path(o, path)) {
                    remove_at(obj, path);
                }
            }
        }
        path.pop();
    }
}

/// Removes `paths` from a field set.
fn subtract(set: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(m) = set.as_object_mut() else { return };
    if rest.is_empty() {
        m.remove(first);
        return;
    }
    if let Some(child) = m.get_mut(first) {
        subtract(child, rest);
        if child
            .as_object()
            .is_some_and(|c| c.keys().all(|k| k == "."))
        {
            m.remove(first);
        }
    }
}

/// Server-side apply of `config` by `manager` to `live`: the merged object, with managedFields
/// updated, or the conflicts with other managers (ignored, and taken over, when `force`).
pub fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    type_name: &str,
    api_version: &str,
) -> Result<Value, Conflicts> {
    let new_set = fields_of(config, type_name);
    let entries: Vec<Value> = live
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
    };
    let old_set = entries
        .iter()
        .find(|e| is_mine(e))
        .and_then(|e| e.get("fieldsV1"))
        .cloned()
        .unwrap_or(json!({}));
    let mut new_leaves = Vec::new();
    leaves(&new_set, &mut Vec::new(), &mut new_leaves);
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if is_mine(e) || e.get("subresource").is_some() {
            continue;
        }
        let Some(set) = e.get("fieldsV1") else {
            continue;
        };
        for leaf in &new_leaves {
            if contains_path(set, leaf) {
                if value_at(live, leaf) != value_at(config, leaf) {
                    conflicts.push(Conflict {
                        manager: e
                            .get("manager")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        api_version: e
                            .get("apiVersion")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        field: display_path(leaf),
                    });
                }
                taken.push((i, leaf.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Conflicts(conflicts));
    }
    let mut body = config.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("status");
    }
    let mut merged =
        crate::patch::strategic_merge(live, &body, type_name).unwrap_or_else(|_| live.clone());
    let others: Vec<&Value> = entries
        .iter()
        .filter(|e| !is_mine(e))
        .filter_map(|e| e.get("fieldsV1"))
        .collect();
    prune(&mut merged, &old_set, &new_set, &others, &mut Vec::new());
    // a forced apply takes the conflicting fields over; a field set to the same value is shared
    let mut entries = entries;
    if force {
        for (i, leaf) in taken {
            if let Some(set) = entries[i].get_mut("fieldsV1") {
                subtract(set, &leaf);
            }
        }
        entries.retain(|e| {
            e.get("fieldsV1")
                .is_none_or(|s| s.as_object().is_none_or(|m| !m.is_empty()))
        });
    }
    crate::meta::set_meta(&mut merged, "managedFields", Value::Array(entries));
    record(&mut merged, manager, "Apply", api_version, new_set, None);
    Ok(merged)
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
    fn apply_conflicts_prunes_and_forces() {
        let cm = "io.k8s.api.core.v1.ConfigMap";
        let live = json!({"metadata": {"name": "x", "managedFields": [
            {"manager": "other", "operation": "Update", "apiVersion": "v1", "fieldsV1": {"f:data": {"f:a": {}}}}]},
            "data": {"a": "1"}});
        let cfg = json!({"metadata": {"name": "x"}, "data": {"a": "2", "b": "3"}});
        let err = apply(&live, &cfg, "me", false, cm, "v1").expect_err("conflict");
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"other\" using v1: .data.a"
        );
        let forced = apply(&live, &cfg, "me", true, cm, "v1").expect("forced");
        assert_eq!(forced["data"], json!({"a": "2", "b": "3"}));
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .expect("mf")
            .iter()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(
            managers,
            vec!["me"],
            "the other manager lost its only field"
        );
        // applying again without b removes b, which only "me" owned
        let again = apply(
            &forced,
            &json!({"metadata": {"name": "x"}, "data": {"a": "2"}}),
            "me",
            false,
            cm,
            "v1",
        )
        .expect("apply");
        assert_eq!(again["data"], json!({"a": "2"}));
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
