//! Decoding of Kubernetes protobuf bodies (`application/vnd.kubernetes.protobuf`), which kubectl
//! sends for built-in objects (`kubectl create configmap|deployment|secret...`).
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` holding the type meta and the object's
//! message. No crate turns these messages into JSON, so this module walks the wire format with
//! the field table in `fields.txt` (message, field number, field name, kind; generated from the
//! `k8s-pb` crate by `tools/proto-fields.py`) and names fields after the JSON schema of the
//! `k8s-openapi` types. Go writes every non-pointer field, so zero values are dropped as Go's
//! `omitempty` would, except for fields where zero is a meaningful setting.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

/// The magic prefix of a protobuf-encoded object.
pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
    Message,
    MapString,
    MapBytes,
    MapMessage,
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
    repeated: bool,
    target: String,
}

type Table = HashMap<String, HashMap<u32, Field>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: Table = HashMap::new();
        let mut current = String::new();
        for line in include_str!("fields.txt").lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["M", name] => {
                    current = name.to_ascii_lowercase();
                    t.entry(current.clone()).or_default();
                }
                ["F", tag, name, kind, repeated, target] => {
                    let kind = match *kind {
                        "string" => Kind::String,
                        "bytes" => Kind::Bytes,
                        "bool" => Kind::Bool,
                        "int32" => Kind::Int32,
                        "int64" => Kind::Int64,
                        "double" => Kind::Double,
                        "message" => Kind::Message,
                        "map_string" => Kind::MapString,
                        "map_bytes" => Kind::MapBytes,
                        "map_message" => Kind::MapMessage,
                        _ => continue,
                    };
                    let Ok(tag) = tag.parse() else { continue };
                    let field = Field {
                        name: name.to_string(),
                        kind,
                        repeated: *repeated == "1",
                        target: target.to_ascii_lowercase(),
                    };
                    t.entry(current.clone())
                        .or_default()
                        .entry(tag)
                        .or_insert(field);
                }
                _ => {}
            }
        }
        t
    })
}

/// Pointer fields whose zero value is a setting, kept although Go would omit a zero scalar.
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "value",
    "terminationGracePeriodSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "ttlSecondsAfterFinished",
    "minReplicas",
    "startingDeadlineSeconds",
    "activeDeadlineSeconds",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "expirationSeconds",
    "automountServiceAccountToken",
    "immutable",
    "suspend",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "privileged",
    "optional",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
];

/// The JSON property names of a schema, looked up case-insensitively by type name.
/// The OpenAPI definition's name of a protobuf message type (given lowercased), if it has one:
/// types without one are Go structs embedded in others, their fields inlined in JSON.
fn definition(type_name: &str) -> Option<&'static str> {
    static INDEX: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        api::schema::definitions()
            .keys()
            .map(|k| (k.to_ascii_lowercase(), k.as_str()))
            .collect()
    });
    index.get(&type_name.to_ascii_lowercase()).copied()
}

fn json_names(type_name: &str) -> Vec<&'static str> {
    let Some(real) = definition(type_name) else {
        return Vec::new();
    };
    api::schema::definitions()
        .get(real)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
        self.fixed(n)
    }

    fn fixed(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next field: number, wire type, and its raw value (varint as u64 or bytes).
    fn field(&mut self) -> Result<Option<(u32, Raw<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "bad field number")?;
        let raw = match key & 7 {
            0 => Raw::Varint(self.varint()?),
            1 => Raw::Fixed(self.fixed(8)?),
            2 => Raw::Bytes(self.bytes()?),
            5 => Raw::Fixed(self.fixed(4)?),
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((tag, raw)))
    }
}

enum Raw<'a> {
    Varint(u64),
    Fixed(&'a [u8]),
    Bytes(&'a [u8]),
}

fn messages(buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while let Some(f) = r.field()? {
        out.push(f);
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "string field is not UTF-8".to_string())
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes one message of the named type (lower-case schema name) into JSON.
fn message(buf: &[u8], type_name: &str) -> Result<Value, String> {
    let fields = messages(buf)?;
    match type_name {
        "io.k8s.apimachinery.pkg.apis.meta.v1.time"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.microtime" => {
            let mut secs = 0i64;
            let mut nanos = 0i64;
            for (tag, raw) in &fields {
                if let Raw::Varint(v) = raw {
                    match tag {
                        1 => secs = *v as i64,
                        2 => nanos = *v as i64,
                        _ => {}
                    }
                }
            }
            if secs == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            let t =
                chrono::DateTime::from_timestamp(secs, nanos as u32).ok_or("time out of range")?;
            let micro = type_name.ends_with("microtime");
            return Ok(json!(if micro {
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            } else {
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            }));
        }
        "io.k8s.apimachinery.pkg.api.resource.quantity" => {
            for (tag, raw) in &fields {
                if let (1, Raw::Bytes(b)) = (tag, raw) {
                    return Ok(json!(text(b)?));
                }
            }
            return Ok(json!("0"));
        }
        "io.k8s.apimachinery.pkg.util.intstr.intorstring" => {
            let (mut kind, mut int, mut string) = (0u64, 0i64, String::new());
            for (tag, raw) in &fields {
                match (tag, raw) {
                    (1, Raw::Varint(v)) => kind = *v,
                    (2, Raw::Varint(v)) => int = *v as i32 as i64,
                    (3, Raw::Bytes(b)) => string = text(b)?,
                    _ => {}
                }
            }
            return Ok(if kind == 1 { json!(string) } else { json!(int) });
        }
        "io.k8s.apimachinery.pkg.runtime.rawextension"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.fieldsv1" => {
            for (tag, raw) in &fields {
                if let (1, Raw::Bytes(b)) = (tag, raw) {
                    return serde_json::from_slice(b).map_err(|e| format!("embedded JSON: {e}"));
                }
            }
            return Ok(Value::Null);
        }
        _ => {}
    }
    let Some(schema) = table().get(type_name) else {
        return Err(format!("no protobuf schema for {type_name}"));
    };
    let names = json_names(type_name);
    let mut out = Map::new();
    for (tag, raw) in fields {
        let Some(f) = schema.get(&tag) else { continue };
        let flat = f.name.replace('_', "");
        let key = names
            .iter()
            .find(|n| n.to_ascii_lowercase() == flat)
            .map(|s| s.to_string());
        let value = match (f.kind, &raw) {
            (Kind::String, Raw::Bytes(b)) => json!(text(b)?),
            (Kind::Bytes, Raw::Bytes(b)) => json!(base64(b)),
            (Kind::Bool, Raw::Varint(v)) => json!(*v != 0),
            (Kind::Int32, Raw::Varint(v)) => json!(*v as i32),
            (Kind::Int64, Raw::Varint(v)) => json!(*v as i64),
            (Kind::Double, Raw::Fixed(b)) if b.len() == 8 => {
                json!(f64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])))
            }
            (Kind::Message, Raw::Bytes(b)) => message(b, &f.target)?,
            (Kind::MapString | Kind::MapBytes | Kind::MapMessage, Raw::Bytes(b)) => {
                let (mut k, mut v) = (String::new(), Value::Null);
                for (t, r) in messages(b)? {
                    match (t, r, f.kind) {
                        (1, Raw::Bytes(x), _) => k = text(x)?,
                        (2, Raw::Bytes(x), Kind::MapString) => v = json!(text(x)?),
                        (2, Raw::Bytes(x), Kind::MapBytes) => v = json!(base64(x)),
                        (2, Raw::Bytes(x), _) => v = message(x, &f.target)?,
                        _ => {}
                    }
                }
                if v.is_null() && f.kind == Kind::MapString {
                    v = json!("");
                }
                let key = key.unwrap_or_else(|| camel(&f.name));
                let entry = out.entry(key).or_insert_with(|| json!({}));
                if let Some(m) = entry.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
            _ => {
                return Err(format!(
                    "field {} of {type_name} has an unexpected wire type",
                    f.name
                ));
            }
        };
        match key {
            None if f.kind == Kind::Message && !f.repeated && definition(&f.target).is_none() => {
                // an embedded Go struct: its fields are inlined in JSON
                if let Value::Object(m) = value {
                    out.extend(m);
                }
            }
            key => {
                let key = key.unwrap_or_else(|| camel(&f.name));
                if f.repeated {
                    let entry = out.entry(key).or_insert_with(|| json!([]));
                    if let Some(a) = entry.as_array_mut() {
                        a.push(value);
                    }
                } else {
                    out.insert(key, value);
                }
            }
        }
    }
    out.retain(|k, v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Bool(b) => *b || KEEP_ZERO.contains(&k.as_str()),
        Value::Number(n) => n.as_f64() != Some(0.0) || KEEP_ZERO.contains(&k.as_str()),
        _ => true,
    });
    Ok(Value::Object(out))
}

/// Decodes a protobuf-encoded object of the resource whose schema is `schema_name`.
pub fn decode(body: &[u8], schema_name: &str) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the Kubernetes protobuf prefix")?;
    let mut type_meta = (String::new(), String::new());
    let mut raw: &[u8] = &[];
    for (tag, field) in messages(rest)? {
        match (tag, field) {
            (1, Raw::Bytes(b)) => {
                for (t, f) in messages(b)? {
                    match (t, f) {
                        (1, Raw::Bytes(x)) => type_meta.0 = text(x)?,
                        (2, Raw::Bytes(x)) => type_meta.1 = text(x)?,
                        _ => {}
                    }
                }
            }
            (2, Raw::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut obj = message(raw, &schema_name.to_ascii_lowercase())?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(type_meta.0));
        m.insert("kind".into(), json!(type_meta.1));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(tag << 3 | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_configmap_as_kubectl_sends_it() {
        let meta = [field(1, b"my-config"), field(3, b"")].concat();
        let entry = [field(1, b"a"), field(2, b"b")].concat();
        let cm = [field(1, &meta), field(2, &entry), vec![4 << 3, 0]].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        let obj = decode(&body, "io.k8s.api.core.v1.ConfigMap").expect("decodes");
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "my-config"}, "data": {"a": "b"}, "immutable": false})
        );
    }

    #[test]
    fn decodes_a_token_request_bound_to_a_pod() {
        let bound = [
            field(1, b"Pod"),
            field(2, b"v1"),
            field(3, b"p1"),
            field(4, b"u1"),
        ]
        .concat();
        let spec = [field(1, b"aud"), field(3, &bound)].concat();
        let type_meta = [
            field(1, b"authentication.k8s.io/v1"),
            field(2, b"TokenRequest"),
        ]
        .concat();
        let request = [field(1, b""), field(2, &spec)].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &request)].concat();
        let obj = decode(&body, "io.k8s.api.authentication.v1.TokenRequest").expect("decodes");
        assert_eq!(
            obj["spec"],
            json!({"audiences": ["aud"], "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p1", "uid": "u1"}})
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"k8s\0\x0a\xff", "io.k8s.api.core.v1.ConfigMap").is_err());
        assert!(decode(b"nope", "io.k8s.api.core.v1.ConfigMap").is_err());
    }
}
