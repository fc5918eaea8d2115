//! The schemas of every registered type, gathered once, and what can be learned from them: where
//! a field leads (for patches and field ownership) and which fields of an object are unknown
//! (strict field validation).

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

/// Where schema references point in the OpenAPI v3 layout.
pub const REF_PREFIX: &str = "#/components/schemas/";

/// All component schemas, by name (`io.k8s.api.core.v1.Pod`).
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut generator = SchemaSettings::openapi3().into_generator();
        for r in &crate::registry().resources {
            (r.schema)(&mut generator);
        }
        // the bodies of subresources, which are no resources of their own
        generator.subschema_for::<k8s_openapi::api::authentication::v1::TokenRequest>();
        generator.subschema_for::<k8s_openapi::api::policy::v1::Eviction>();
        generator.subschema_for::<k8s_openapi::api::core::v1::Binding>();
        generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
        generator.take_definitions(true)
    })
}

/// A position in a type's schema: the (resolved) schema and, when it is a named type, its name.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The schema at this position, with references followed.
    pub schema: &'a Value,
    /// The name of the type, when the position holds a named type.
    pub type_name: Option<&'a str>,
}

fn ref_of(schema: &Value) -> Option<&str> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return Some(r);
    }
    // `RemoveRefSiblings` wraps a reference with a description in `allOf`
    schema
        .get("allOf")?
        .as_array()?
        .iter()
        .find_map(|s| s.get("$ref").and_then(Value::as_str))
}

impl<'a> Node<'a> {
    /// The node of a named type.
    pub fn named(type_name: &str) -> Option<Node<'static>> {
        let (name, schema) = definitions().get_key_value(type_name)?;
        Some(Node {
            schema,
            type_name: Some(name.as_str()),
        })
    }

    fn resolve(schema: &'a Value) -> Node<'a> {
        match ref_of(schema).and_then(|r| r.strip_prefix(REF_PREFIX)) {
            Some(name) => match definitions().get_key_value(name) {
                Some((n, s)) => Node {
                    schema: s,
                    type_name: Some(n.as_str()),
                },
                None => Node {
                    schema,
                    type_name: None,
                },
            },
            None => Node {
                schema,
                type_name: None,
            },
        }
    }

    /// The node of a field of this object type (or of a value of this map type).
    pub fn field(&self, name: &str) -> Option<Node<'a>> {
        if let Some(p) = self.schema.get("properties").and_then(|p| p.get(name)) {
            return Some(Self::resolve(p));
        }
        match self.schema.get("additionalProperties") {
            Some(ap) if ap.is_object() => Some(Self::resolve(ap)),
            _ => None,
        }
    }

    /// The node of the items of this array type.
    pub fn items(&self) -> Option<Node<'a>> {
        self.schema.get("items").map(Self::resolve)
    }

    /// Whether the schema lists the properties of an object (a struct, not a map).
    pub fn is_struct(&self) -> bool {
        self.schema.get("properties").is_some()
    }

    /// Whether this is a map with typed values.
    pub fn is_map(&self) -> bool {
        !self.is_struct()
            && self
                .schema
                .get("additionalProperties")
                .is_some_and(Value::is_object)
    }
}

/// The paths of fields that the type does not declare, as upstream's strict decoding names them
/// (`spec.containers[0].foo`).
pub fn unknown_fields(obj: &Value, type_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(node) = Node::named(type_name) {
        walk(obj, node, "", &mut out);
    }
    out
}

fn walk(v: &Value, node: Node<'_>, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if node.is_struct() || node.is_map() => {
            for (k, child) in m {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match node.field(k) {
                    Some(n) => walk(child, n, &child_path, out),
                    None if node.is_struct() => out.push(child_path),
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(n) = node.items() {
                for (i, item) in items.iter().enumerate() {
                    walk(item, n, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_by_path() {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dta": {}});
        assert_eq!(
            unknown_fields(&cm, "io.k8s.api.core.v1.ConfigMap"),
            vec!["dta"]
        );
        let pod = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "imagee": "x"}]}});
        assert_eq!(
            unknown_fields(&pod, "io.k8s.api.core.v1.Pod"),
            vec!["spec.containers[0].imagee"]
        );
        let ok =
            json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}});
        assert!(unknown_fields(&ok, "io.k8s.api.core.v1.Pod").is_empty());
    }

    #[test]
    fn fields_lead_to_named_types() {
        let pod = Node::named("io.k8s.api.core.v1.Pod").expect("pod");
        let spec = pod.field("spec").expect("spec");
        assert_eq!(spec.type_name, Some("io.k8s.api.core.v1.PodSpec"));
        let c = spec
            .field("containers")
            .and_then(|n| n.items())
            .expect("containers");
        assert_eq!(c.type_name, Some("io.k8s.api.core.v1.Container"));
    }
}
