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
        let mut obj = obj;
        meta::set_meta(&mut obj, "resourceVersion", Value::from(rev.to_string()));
        Ok(obj)
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
        let mut obj = to_object(&last)?;
        meta::set_meta(&mut obj, "resourceVersion", Value::from(rev.to_string()));
        Ok(obj)
    }
}
