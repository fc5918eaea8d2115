//! Objects in the store: each object is kept as JSON under its key (`/registry/<group>/<plural>/
//! [<namespace>/]<name>`), without its resourceVersion, which is the key's modification revision
//! and is set on every read, as upstream's etcd3 storage does.

use std::sync::Arc;

use api::ResourceType;
use api::meta;
use serde_json::Value;
use store::{Backend, KeyValue};

use crate::status::{ApiError, Result, from_store};

/// Typed access to the store for the generic REST handlers.
#[derive(Clone)]
pub struct Storage {
    /// The store backend.
    pub backend: Arc<dyn Backend>,
    /// Authorization rules already worked out, valid until RBAC objects change.
    pub rbac: Arc<RbacCache>,
}

/// The rules each user has in each namespace, as worked out from the RBAC objects, kept until
/// any RBAC object is written through this server (every request of a component would
/// otherwise read and parse every role and binding).
#[derive(Default)]
pub struct RbacCache {
    generation: std::sync::atomic::AtomicU64,
    rules: std::sync::Mutex<std::collections::HashMap<String, (u64, Rules)>>,
}

/// A user's rules in a namespace.
pub type Rules = Arc<Vec<Value>>;

/// Cached rule sets beyond this many are all forgotten.
const RBAC_CACHE_ENTRIES: usize = 10_000;

impl RbacCache {
    /// The current generation of the RBAC objects.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self, rt: &ResourceType) {
        if rt.group == "rbac.authorization.k8s.io" {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// The rules cached under `key`, if worked out at the current generation.
    pub fn get(&self, key: &str) -> Option<Arc<Vec<Value>>> {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules
            .get(key)
            .filter(|(g, _)| *g == self.generation())
            .map(|(_, r)| r.clone())
    }

    /// Keeps rules worked out at `generation`.
    pub fn put(&self, key: String, generation: u64, value: Arc<Vec<Value>>) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if rules.len() >= RBAC_CACHE_ENTRIES {
            rules.clear();
        }
        rules.insert(key, (generation, value));
    }
}

/// The object in a key-value, with its resourceVersion set.
pub fn to_object(kv: &KeyValue) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    meta::set_meta(
        &mut v,
        "resourceVersion",
        Value::from(kv.mod_revision.to_string()),
    );
    Ok(v)
}

/// The stored bytes of an object with its resourceVersion put into its top-level metadata,
/// without decoding the object (lists of many objects are served this way).
pub fn with_resource_version(kv: &KeyValue) -> Option<Vec<u8>> {
    let raw: &[u8] = &kv.value;
    let at = metadata_body(raw)?;
    let rv = format!("\"resourceVersion\":\"{}\"", kv.mod_revision);
    let mut out = Vec::with_capacity(raw.len() + rv.len() + 1);
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(rv.as_bytes());
    if raw.get(at) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(&raw[at..]);
    Some(out)
}

/// The offset just inside the `{` of the top-level `"metadata"` object of a JSON object.
fn metadata_body(raw: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut depth = 0usize;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < raw.len() && raw[i] != b'"' {
                    i += if raw[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && &raw[start..=i.min(raw.len() - 1)] == b"\"metadata\"" {
                    let mut j = i + 1;
                    while j < raw.len() && (raw[j] == b':' || raw[j].is_ascii_whitespace()) {
                        j += 1;
                    }
                    return (raw.get(j) == Some(&b'{')).then_some(j + 1);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

fn encode(obj: &Value) -> Vec<u8> {
    let mut v = obj.clone();
    meta::remove_meta(&mut v, "resourceVersion");
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The resourceVersion of an object as a revision, if it has one.
pub fn revision_of(obj: &Value) -> Result<Option<u64>> {
    match meta::meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}"))),
    }
}

impl Storage {
    /// One object and its revision.
    pub async fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<(Value, u64)> {
        let kv = self
            .backend
            .get(&rt.key(ns, name))
            .await
            .map_err(|e| from_store(e, rt, name))?;
        let kv = kv.ok_or_else(|| ApiError::not_found(rt, name))?;
        Ok((to_object(&kv)?, kv.mod_revision))
    }

    /// Stores a new object; returns it with its resourceVersion.
    pub async fn create(&self, rt: &ResourceType, obj: Value) -> Result<Value> {
        let name = meta::name(&obj).to_string();
        let key = rt.key(meta::namespace(&obj), &name);
        let rev = self
            .backend
            .create(&key, encode(&obj))
            .await
            .map_err(|e| from_store(e, rt, &name))?;
        self.rbac.changed(rt);
        let mut obj = obj;
        meta::set_meta(&mut obj, "resourceVersion", Value::from(rev.to_string()));
        Ok(obj)
    }

    /// Replaces an object that must still be at revision `expected`.
    pub async fn update(&self, rt: &ResourceType, obj: Value, expected: u64) -> Result<Value> {
        let name = meta::name(&obj).to_string();
        let key = rt.key(meta::namespace(&obj), &name);
        let rev = self
            .backend
            .update(&key, encode(&obj), expected)
            .await
            .map_err(|e| from_store(e, rt, &name))?;
        self.rbac.changed(rt);
        let mut obj = obj;
        meta::set_meta(&mut obj, "resourceVersion", Value::from(rev.to_string()));
        Ok(obj)
    }

    /// Every object of a kind in a namespace ("" for all or cluster-scoped), each with its
    /// resourceVersion.
    pub async fn list_in(&self, rt: &ResourceType, ns: &str) -> Result<Vec<Value>> {
        let range = self
            .backend
            .range(&rt.namespace_prefix(ns), None, 0)
            .await
            .map_err(ApiError::unavailable)?;
        range.kvs.iter().map(to_object).collect()
    }

    /// Removes an object that must still be at revision `expected`; returns its last state.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<Value> {
        let (rev, last) = self
            .backend
            .delete(&rt.key(ns, name), expected)
            .await
            .map_err(|e| from_store(e, rt, name))?;
        self.rbac.changed(rt);
        let mut obj = to_object(&last)?;
        meta::set_meta(&mut obj, "resourceVersion", Value::from(rev.to_string()));
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_version_goes_into_the_top_level_metadata() {
        let kv = |v: &str| KeyValue {
            key: "k".into(),
            value: v.as_bytes().into(),
            create_revision: 1,
            mod_revision: 42,
        };
        let out = with_resource_version(&kv(
            r#"{"data":{"metadata":"{\"x"},"kind":"ConfigMap","metadata":{"name":"a"}}"#,
        ))
        .expect("found");
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "a");
        assert_eq!(v["data"]["metadata"], "{\"x");
        let out = with_resource_version(&kv(r#"{"metadata":{}}"#)).expect("found");
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"metadata":{"resourceVersion":"42"}}"#
        );
        assert!(with_resource_version(&kv(r#"{"spec":{"metadata":{}}}"#)).is_none());
    }
}
