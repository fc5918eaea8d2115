//! What a request asks for, read from its method, path and query, as upstream's
//! `RequestInfoFactory` reads it: verb, group, version, namespace, resource, name, subresource.

use std::collections::HashMap;

use http::Method;

/// A resource request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// API group ("" for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace from the path ("" when none).
    pub namespace: String,
    /// Plural resource name.
    pub resource: String,
    /// Object name ("" for collections).
    pub name: String,
    /// Subresource ("" when none).
    pub subresource: String,
}

/// Parses the query string into a map (last value wins).
pub fn query_map(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a query flag is set (`true` or `1`).
pub fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("true" | "1"))
}

/// The one object a list or watch selects by `fieldSelector=metadata.name=NAME`, which
/// authorization sees as that object's name, as upstream's `RequestInfoFactory` reads it.
pub fn selected_name(query: &HashMap<String, String>) -> Option<String> {
    let selector = api::selector::FieldSelector::parse(query.get("fieldSelector")?).ok()?;
    selector.required("metadata.name").map(str::to_string)
}

/// Reads a resource request from a path under `/api` or `/apis`; `None` for other paths.
pub fn parse(method: &Method, path: &str, query: &HashMap<String, String>) -> Option<RequestInfo> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (String::new(), version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (group.to_string(), version.to_string(), rest),
        _ => return None,
    };
    if rest.is_empty() {
        return None;
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (ns.to_string(), more),
        _ => (String::new(), rest),
    };
    // `namespaces/NAME/status` and `namespaces/NAME/finalize` are subresources of the namespace
    let (namespace, rest): (String, Vec<&str>) =
        if !namespace.is_empty() && matches!(rest, ["status" | "finalize"]) {
            (
                String::new(),
                vec!["namespaces", namespace.as_str(), rest[0]],
            )
        } else {
            (namespace.clone(), rest.to_vec())
        };
    let resource = rest.first()?.to_string();
    let name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
    let subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    let verb = match (method.as_str(), name.is_empty()) {
        ("GET" | "HEAD", true) if flag(query, "watch") => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => return None,
    };
    Some(RequestInfo {
        verb,
        group,
        version,
        namespace,
        resource,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: Method, path: &str, q: &str) -> RequestInfo {
        parse(&method, path, &query_map(Some(q))).expect(path)
    }

    #[test]
    fn paths() {
        let r = p(Method::GET, "/api/v1/namespaces/default/pods", "");
        assert_eq!(
            (r.verb, r.namespace.as_str(), r.resource.as_str()),
            ("list", "default", "pods")
        );
        let r = p(
            Method::GET,
            "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            "",
        );
        assert_eq!(
            (
                r.verb,
                r.group.as_str(),
                r.name.as_str(),
                r.subresource.as_str()
            ),
            ("get", "apps", "web", "scale")
        );
        let r = p(Method::GET, "/api/v1/namespaces/kube-system", "");
        assert_eq!(
            (r.resource.as_str(), r.name.as_str(), r.namespace.as_str()),
            ("namespaces", "kube-system", "")
        );
        let r = p(Method::PUT, "/api/v1/namespaces/x/finalize", "");
        assert_eq!(
            (r.resource.as_str(), r.name.as_str(), r.subresource.as_str()),
            ("namespaces", "x", "finalize")
        );
        let r = p(Method::GET, "/api/v1/pods", "watch=1");
        assert_eq!(r.verb, "watch");
        let r = p(
            Method::DELETE,
            "/api/v1/namespaces/a/configmaps",
            "labelSelector=a%3Db",
        );
        assert_eq!(r.verb, "deletecollection");
        assert!(parse(&Method::GET, "/api", &HashMap::new()).is_none());
    }

    #[test]
    fn query_decoding() {
        let q = query_map(Some("labelSelector=batch%3Dyes&limit=7&x=a+b"));
        assert_eq!(q["labelSelector"], "batch=yes");
        assert_eq!(q["x"], "a b");
    }
}
