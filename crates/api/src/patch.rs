//! Strategic merge patch, as upstream's `strategicpatch` applies it: maps merge recursively,
//! `null` deletes, lists replace unless the type merges them by a key or as a set, and the
//! directives `$patch` (replace, delete, merge), `$retainKeys`, `$deleteFromPrimitiveList/<f>` and
//! `$setElementOrder/<f>` are honoured.

use serde_json::{Map, Value};

use crate::patch_meta::{ListStrategy, list_strategy};
use crate::schema::Node;

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

/// Applies a strategic merge patch to `original`, an object of the named type.
pub fn strategic_merge(
    original: &Value,
    patch: &Value,
    type_name: &str,
) -> Result<Value, PatchError> {
    let node = Node::named(type_name);
    let patch = patch
        .as_object()
        .ok_or_else(|| PatchError("a strategic merge patch must be a JSON object".into()))?;
    let base = original.as_object().cloned().unwrap_or_default();
    Ok(Value::Object(merge_map(base, patch, node)?))
}

fn merge_map(
    mut base: Map<String, Value>,
    patch: &Map<String, Value>,
    node: Option<Node<'_>>,
) -> Result<Map<String, Value>, PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut out = patch.clone();
            out.remove("$patch");
            return Ok(out);
        }
        Some("delete") => return Ok(Map::new()),
        Some("merge") | None => {}
        Some(other) => return Err(PatchError(format!("unknown patch type: {other}"))),
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        base.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, pv) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (base.get_mut(field), pv.as_array()) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if pv.is_null() {
            base.remove(key);
            continue;
        }
        let child = node.and_then(|n| n.field(key));
        let owner = node.and_then(|n| n.type_name).unwrap_or("");
        let merged = match (base.remove(key), pv) {
            (Some(Value::Object(b)), Value::Object(p)) => Value::Object(merge_map(b, p, child)?),
            (Some(Value::Array(b)), Value::Array(p)) => Value::Array(merge_list(
                b,
                p,
                list_strategy(owner, key),
                child.and_then(|c| c.items()),
            )?),
            (_, Value::Object(p)) => Value::Object(merge_map(Map::new(), p, child)?),
            (_, Value::Array(p)) => Value::Array(merge_list(
                Vec::new(),
                p,
                list_strategy(owner, key),
                child.and_then(|c| c.items()),
            )?),
            (_, other) => other.clone(),
        };
        base.insert(key.clone(), merged);
    }
    Ok(base)
}

fn merge_list(
    mut base: Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    items: Option<Node<'_>>,
) -> Result<Vec<Value>, PatchError> {
    // a `{"$patch": "replace"}` item replaces the whole list with the other items
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .collect());
    }
    match strategy {
        ListStrategy::Atomic => Ok(patch.iter().map(strip_directives).collect()),
        ListStrategy::Set => {
            for p in patch {
                if !base.contains(p) {
                    base.push(p.clone());
                }
            }
            Ok(base)
        }
        ListStrategy::MergeByKey(key) => {
            for p in patch {
                let Some(pm) = p.as_object() else {
                    return Err(PatchError(format!(
                        "list items must be objects with the merge key {key:?}"
                    )));
                };
                let id = pm.get(key).ok_or_else(|| {
                    PatchError(format!(
                        "map: {p} does not contain declared merge key: {key}"
                    ))
                })?;
                let pos = base.iter().position(|b| b.get(key) == Some(id));
                let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        base.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let b = base[i].as_object().cloned().unwrap_or_default();
                        base[i] = Value::Object(merge_map(b, pm, items)?);
                    }
                    (None, false) => base.push(Value::Object(merge_map(Map::new(), pm, items)?)),
                }
            }
            Ok(base)
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEPLOY: &str = "io.k8s.api.apps.v1.Deployment";

    fn deploy() -> Value {
        json!({"metadata": {"name": "sm", "labels": {"a": "1"}, "finalizers": ["x"]},
               "spec": {"template": {"spec": {"containers": [
                   {"name": "busybox", "image": "busybox:1.36", "env": [{"name": "B", "value": "2"}]},
                   {"name": "side", "image": "side"}]}}}})
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "busybox", "env": [{"name": "A", "value": "1"}]}]}}}});
        let out = strategic_merge(&deploy(), &patch, DEPLOY).expect("patch");
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().map(Vec::len), Some(2));
        assert_eq!(cs[0]["image"], "busybox:1.36");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "B", "value": "2"}, {"name": "A", "value": "1"}])
        );
    }

    #[test]
    fn directives() {
        let patch = json!({"metadata": {"labels": {"a": null, "b": "2"}, "finalizers": ["y"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "busybox"}],
                "containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = strategic_merge(&deploy(), &patch, DEPLOY).expect("patch");
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );

        let replace = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"}, {"name": "only", "image": "i"}]}}}});
        let out = strategic_merge(&deploy(), &replace, DEPLOY).expect("patch");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "i"}])
        );
    }

    #[test]
    fn atomic_lists_replace() {
        let cm = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "a"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "b"}]}}}});
        let out = strategic_merge(&cm, &patch, DEPLOY).expect("patch");
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "b"}])
        );
    }

    #[test]
    fn retain_keys_prunes() {
        let d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = strategic_merge(&d, &patch, DEPLOY).expect("patch");
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn missing_merge_key_is_an_error() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        assert!(strategic_merge(&deploy(), &patch, DEPLOY).is_err());
    }
}
