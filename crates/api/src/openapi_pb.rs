//! The OpenAPI v2 document in protobuf (gnostic's `openapi.v2.Document`), the only form in which
//! kubectl reads v2: it validates on the client with it whenever the server cannot (for example
//! the items of a `kind: List`). Only what validation reads is encoded: the definitions, each
//! schema's type, format, description, reference, properties, items, additional properties,
//! required fields and vendor extensions (`x-kubernetes-group-version-kind`). Protobuf is written
//! by hand here: a dozen fields of one message family do not warrant a code generator.

use serde_json::Value;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, tag: u32, data: &[u8]) {
    varint(out, u64::from(tag << 3 | 2));
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn bool_field(out: &mut Vec<u8>, tag: u32, v: bool) {
    varint(out, u64::from(tag << 3));
    varint(out, u64::from(v));
}

/// Encodes one schema (`openapi.v2.Schema`).
fn schema(s: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(m) = s.as_object() else { return out };
    let text = |k: &str| m.get(k).and_then(Value::as_str);
    if let Some(r) = text("$ref") {
        bytes_field(&mut out, 1, r.as_bytes());
    }
    if let Some(f) = text("format") {
        bytes_field(&mut out, 2, f.as_bytes());
    }
    if let Some(d) = text("description") {
        bytes_field(&mut out, 4, d.as_bytes());
    }
    for r in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        bytes_field(&mut out, 19, r.as_bytes());
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Vec::new();
            bool_field(&mut item, 2, *b);
            bytes_field(&mut out, 21, &item);
        }
        Some(v @ Value::Object(_)) => {
            let mut item = Vec::new();
            bytes_field(&mut item, 1, &schema(v));
            bytes_field(&mut out, 21, &item);
        }
        _ => {}
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut item = Vec::new();
        for t in types {
            bytes_field(&mut item, 1, t.as_bytes());
        }
        bytes_field(&mut out, 22, &item);
    }
    if let Some(items) = m.get("items") {
        let mut item = Vec::new();
        bytes_field(&mut item, 1, &schema(items));
        bytes_field(&mut out, 23, &item);
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        let mut list = Vec::new();
        for (name, p) in props {
            let mut named = Vec::new();
            bytes_field(&mut named, 1, name.as_bytes());
            bytes_field(&mut named, 2, &schema(p));
            bytes_field(&mut list, 1, &named);
        }
        bytes_field(&mut out, 25, &list);
    }
    for (name, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        // gnostic's Any carries the value as YAML text; JSON is YAML
        let mut any = Vec::new();
        bytes_field(&mut any, 2, v.to_string().as_bytes());
        let mut named = Vec::new();
        bytes_field(&mut named, 1, name.as_bytes());
        bytes_field(&mut named, 2, &any);
        bytes_field(&mut out, 31, &named);
    }
    out
}

/// The protobuf form of a v2 document's definitions (`openapi.v2.Document`).
pub fn encode(doc: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, 1, b"2.0");
    let mut info = Vec::new();
    bytes_field(&mut info, 1, b"Kubernetes");
    bytes_field(&mut info, 2, b"v1.33.0");
    bytes_field(&mut out, 2, &info);
    bytes_field(&mut out, 8, &[]);
    let mut defs = Vec::new();
    for (name, s) in doc
        .get("definitions")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut named = Vec::new();
        bytes_field(&mut named, 1, name.as_bytes());
        bytes_field(&mut named, 2, &schema(s));
        bytes_field(&mut defs, 1, &named);
    }
    bytes_field(&mut out, 9, &defs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_fields_with_gnostic_numbers() {
        let doc = json!({"definitions": {"A": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}});
        let bytes = encode(&doc);
        assert_eq!(&bytes[..5], b"\x0a\x032.0");
        // definitions (9) -> NamedSchema (1) -> name "A"
        let at = bytes
            .iter()
            .position(|b| *b == 0x4a)
            .expect("definitions field");
        assert_eq!(bytes[at + 2], 0x0a);
        assert!(bytes.windows(2).any(|w| w == [0x0a, 0x01]) && bytes.contains(&b'A'));
        // a full document encodes without failing and is of reasonable size
        let full = encode(&crate::openapi::v2());
        assert!(full.len() > 10_000);
    }
}
