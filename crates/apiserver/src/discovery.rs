//! Discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) and `/version`, derived from
//! the registry, plus the metrics API (`crate::metrics`), which is served outside it. `/api` and `/apis` also serve aggregated discovery (`apidiscovery.k8s.io/v2`),
//! which kubectl asks for first: every group, version and resource in one response.

use serde_json::{Value, json};

use api::registry::{ResourceType, registry};

/// The Kubernetes version bosun serves, as `/version` reports it.
pub const GIT_VERSION: &str = "v1.33.0+bosun";

/// The Kubernetes version bosun serves.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0]})
}

/// The served group versions: the registry's, then the metrics API's.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut all = registry().group_versions();
    all.push((crate::metrics::GROUP, crate::metrics::VERSION));
    all
}

/// `/apis`.
pub fn groups() -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (g, v) in group_versions() {
        if g.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((g, vec![v])),
        }
    }
    let list: Vec<Value> = groups.iter().map(|(g, vs)| group_entry(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

/// `/apis/<group>`.
pub fn group(name: &str) -> Option<Value> {
    let versions: Vec<&str> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == name)
        .map(|(_, v)| v)
        .collect();
    if versions.is_empty() {
        return None;
    }
    let mut g = group_entry(name, &versions);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// The media type of aggregated discovery responses.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// What a subresource returns and which verbs it serves: (kind, group, version, verbs); empty
/// group and version mean those of the resource.
fn subresource_shape(
    r: &ResourceType,
    sub: &str,
) -> (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
) {
    match sub {
        "status" => (r.kind, "", "", &["get", "patch", "update"]),
        "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
        "binding" => ("Binding", "", "", &["create"]),
        "eviction" => ("Eviction", "policy", "v1", &["create"]),
        "log" => ("Pod", "", "", &["get"]),
        "exec" => ("PodExecOptions", "", "", &["create", "get"]),
        "attach" => ("PodAttachOptions", "", "", &["create", "get"]),
        "portforward" => ("PodPortForwardOptions", "", "", &["create", "get"]),
        "proxy" => (
            if r.kind == "Node" {
                "NodeProxyOptions"
            } else {
                "ServiceProxyOptions"
            },
            "",
            "",
            &["create", "delete", "get", "patch", "update"],
        ),
        "token" => ("TokenRequest", "authentication.k8s.io", "v1", &["create"]),
        "finalize" => ("Namespace", "", "", &["update"]),
        _ => (r.kind, "", "", &["get"]),
    }
}

fn subresource_entry(r: &ResourceType, sub: &str) -> Value {
    let (kind, group, version, verbs) = subresource_shape(r, sub);
    let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
    if !group.is_empty() {
        e["group"] = json!(group);
        e["version"] = json!(version);
    }
    e
}

/// `/api/v1` and `/apis/<group>/<version>`.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (crate::metrics::GROUP, crate::metrics::VERSION) {
        let list: Vec<Value> = crate::metrics::RESOURCES
            .iter()
            .map(|(plural, kind, namespaced)| {
                json!({"name": plural, "singularName": "", "namespaced": namespaced,
                       "kind": kind, "verbs": ["get", "list"]})
            })
            .collect();
        return Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": format!("{group}/{version}"), "resources": list}));
    }
    let rows: Vec<&ResourceType> = registry()
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in rows {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        for sub in r.subresources {
            list.push(subresource_entry(r, sub));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

fn aggregated_resource(r: &ResourceType) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let (kind, group, version, verbs) = subresource_shape(r, sub);
            let (group, version) = if kind == "Scale" || kind == "Eviction" || kind == "TokenRequest" { (group, version) } else { (r.group, r.version) };
            json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs})
        })
        .collect();
    let mut e = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular(),
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        e["subresources"] = json!(subresources);
    }
    e
}

/// Aggregated discovery of the core group (`/api`) or of the named groups (`/apis`).
pub fn aggregated(core: bool) -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (g, v) in group_versions() {
        if g.is_empty() != core {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((g, vec![v])),
        }
    }
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let mut resources: Vec<Value> = registry()
                        .resources
                        .iter()
                        .filter(|r| r.group == *g && r.version == *v)
                        .map(aggregated_resource)
                        .collect();
                    if (*g, *v) == (crate::metrics::GROUP, crate::metrics::VERSION) {
                        resources.extend(crate::metrics::RESOURCES.iter().map(
                            |(plural, kind, namespaced)| {
                                json!({"resource": plural,
                                    "responseKind": {"group": g, "version": v, "kind": kind},
                                    "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                                    "singularResource": "", "verbs": ["get", "list"]})
                            },
                        ));
                    }
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
