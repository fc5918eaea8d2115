//! ResourceQuota's arithmetic, pure, as upstream's quota evaluators: what an object uses of the
//! resources a quota can limit (a pod's compute resources and its place in `pods`; a Service,
//! its node ports and load balancer; a claim and its storage; one of any kind under
//! `count/<resource>.<group>`), whether a quota's scopes take an object in, which resources a
//! pod's containers must state under a quota, and usage written as upstream writes it
//! (`pods=2,requests.cpu=200m`). The API server charges quotas with this at admission and the
//! resource quota controller adds it up into each quota's `status.used`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::quantity;

/// Amounts by resource name, in thousandths (millicores, milli-bytes, milli-items).
pub type Usage = BTreeMap<String, i64>;

/// The compute resources that a pod's every container must state when a quota limits them
/// (upstream keeps this for backward compatibility, for cpu and memory only).
const MUST_STATE: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The kind (group, plural) whose objects use a quota resource, or None for a name no
/// evaluator knows.
pub fn kind_of(resource: &str) -> Option<(String, String)> {
    let core = |plural: &str| Some((String::new(), plural.to_string()));
    if let Some(counted) = resource.strip_prefix("count/") {
        return match counted.split_once('.') {
            Some((plural, group)) => Some((group.to_string(), plural.to_string())),
            None => core(counted),
        };
    }
    match resource {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => core(resource),
        r if r.ends_with(".storageclass.storage.k8s.io/requests.storage")
            || r.ends_with(".storageclass.storage.k8s.io/persistentvolumeclaims") =>
        {
            core("persistentvolumeclaims")
        }
        r if r.starts_with("requests.")
            || r.starts_with("limits.")
            || r.starts_with("hugepages-") =>
        {
            core("pods")
        }
        _ => None,
    }
}

/// What one object of `group`/`plural` uses.
pub fn usage(group: &str, plural: &str, obj: &Value) -> Usage {
    let mut used = Usage::new();
    let count_name = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    used.insert(count_name, 1000);
    if !group.is_empty() {
        return used;
    }
    match plural {
        // a finished pod counts only as an object in storage
        "pods"
            if !matches!(
                obj.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            ) =>
        {
            used.extend(compute_usage(
                &pod_totals(obj, "requests"),
                &pod_totals(obj, "limits"),
            ));
        }
        "services" => {
            used.insert("services".into(), 1000);
            let kind = obj.pointer("/spec/type").and_then(Value::as_str);
            if kind == Some("LoadBalancer") {
                used.insert("services.loadbalancers".into(), 1000);
            }
            if matches!(kind, Some("NodePort" | "LoadBalancer")) {
                let ports = obj
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                used.insert("services.nodeports".into(), ports as i64 * 1000);
            }
        }
        "persistentvolumeclaims" => {
            used.insert("persistentvolumeclaims".into(), 1000);
            let class = obj
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str);
            if let Some(class) = class {
                used.insert(
                    format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                    1000,
                );
            }
            if let Some(storage) = obj
                .pointer("/spec/resources/requests/storage")
                .and_then(milli)
            {
                used.insert("requests.storage".into(), storage);
                if let Some(class) = class {
                    used.insert(
                        format!("{class}.storageclass.storage.k8s.io/requests.storage"),
                        storage,
                    );
                }
            }
        }
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            used.insert(plural.into(), 1000);
        }
        _ => {}
    }
    used
}

/// Whether a quota resource limits extended resources of this name (`example.com/dongle`).
fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/") && !name.starts_with("requests.")
}

/// The quota resources that requests and limits amount to, as upstream's
/// podComputeUsageHelper: `pods`, a request under both its bare name and `requests.`, a limit
/// under `limits.`, hugepages and extended resources under `requests.`.
fn compute_usage(requests: &Usage, limits: &Usage) -> Usage {
    let mut used = Usage::from([("pods".to_string(), 1000)]);
    for (name, &v) in requests {
        if matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage")
            || name.starts_with("hugepages-")
        {
            used.insert(name.clone(), v);
            used.insert(format!("requests.{name}"), v);
        } else if is_extended(name) {
            used.insert(format!("requests.{name}"), v);
        }
    }
    for (name, &v) in limits {
        if matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            used.insert(format!("limits.{name}"), v);
        }
    }
    used
}

fn milli(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| quantity::milli(s).ok())
        .or_else(|| v.as_f64().map(|f| (f * 1000.0).ceil() as i64))
}

/// One container's requests or limits.
fn container_resources(c: &Value, which: &str) -> Usage {
    c.pointer(&format!("/resources/{which}"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), milli(v)?)))
        .collect()
}

/// A pod's requests or limits: its containers summed, an init container's if it alone is
/// more, plus the pod's overhead.
fn pod_totals(pod: &Value, which: &str) -> Usage {
    let mut sum = Usage::new();
    let list = |name: &str| {
        pod.pointer(&format!("/spec/{name}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for c in list("containers") {
        for (k, v) in container_resources(&c, which) {
            *sum.entry(k).or_default() += v;
        }
    }
    for c in list("initContainers") {
        for (k, v) in container_resources(&c, which) {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    if let Some(overhead) = pod.pointer("/spec/overhead").and_then(Value::as_object) {
        for (k, v) in overhead {
            if let Some(v) = milli(v) {
                *sum.entry(k.clone()).or_default() += v;
            }
        }
    }
    sum
}

/// Whether a pod is of the BestEffort QoS class: no container requests or limits cpu or
/// memory.
pub fn is_best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|list| {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .all(|c| {
                ["requests", "limits"].iter().all(|which| {
                    let r = container_resources(c, which);
                    !r.contains_key("cpu") && !r.contains_key("memory")
                })
            })
    })
}

/// Whether a quota's scopes (`spec.scopes` and `spec.scopeSelector`) take in an object of
/// `group`/`plural`. Scopes are about pods; a scoped quota takes in nothing else.
pub fn in_scope(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let mut requirements: Vec<(String, String, Vec<String>)> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        requirements.push((text("scopeName"), text("operator"), values));
    }
    if requirements.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    requirements
        .iter()
        .all(|(scope, op, values)| scope_holds(scope, op, values, obj))
}

fn scope_holds(scope: &str, op: &str, values: &[String], pod: &Value) -> bool {
    let terminating = pod
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s >= 0);
    match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let class = pod
                .pointer("/spec/priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or("");
            match op {
                "In" => values.iter().any(|v| v == class),
                "NotIn" => !values.iter().any(|v| v == class),
                "Exists" => !class.is_empty(),
                "DoesNotExist" => class.is_empty(),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => ["podAffinity", "podAntiAffinity"].iter().any(|a| {
            ["requiredDuringSchedulingIgnoredDuringExecution"]
                .iter()
                .chain(&["preferredDuringSchedulingIgnoredDuringExecution"])
                .filter_map(|k| pod.pointer(&format!("/spec/affinity/{a}/{k}")))
                .filter_map(Value::as_array)
                .flatten()
                .map(|t| t.get("podAffinityTerm").unwrap_or(t))
                .any(|t| {
                    t.get("namespaceSelector").is_some()
                        || t.get("namespaces")
                            .and_then(Value::as_array)
                            .is_some_and(|n| !n.is_empty())
                })
        }),
        _ => false,
    }
}

/// Which of the limited resources each container of a pod leaves unstated, as upstream's
/// message: `must specify limits.cpu for: c; requests.cpu for: a,b`. None when all are stated.
pub fn unstated(limited: &BTreeSet<String>, pod: &Value) -> Option<String> {
    let required: BTreeSet<&str> = MUST_STATE
        .iter()
        .copied()
        .filter(|r| limited.contains(*r))
        .collect();
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for list in ["containers", "initContainers"] {
        for c in pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let stated = compute_usage(
                &container_resources(c, "requests"),
                &container_resources(c, "limits"),
            );
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            for r in &required {
                if !stated.contains_key(*r) {
                    missing.entry(r).or_default().insert(name.to_string());
                }
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let segments: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Some(format!("must specify {}", segments.join("; ")))
}

/// Whether a resource is measured in bytes, and so written with binary suffixes.
fn in_bytes(resource: &str) -> bool {
    resource.contains("memory") || resource.contains("storage") || resource.contains("hugepages-")
}

/// One amount written as a quantity, as upstream writes quota usage.
pub fn format(resource: &str, milli: i64) -> String {
    quantity::format_milli(milli, in_bytes(resource))
}

/// Amounts from a quota's `hard` or `used` list; unreadable entries are left out.
pub fn parse_list(list: Option<&Value>) -> Usage {
    list.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), milli(v)?)))
        .collect()
}

/// A usage list as `a=1,b=200m`, sorted by name, as upstream prints it in admission errors.
pub fn pretty(usage: &Usage) -> String {
    usage
        .iter()
        .map(|(k, &v)| format!("{k}={}", format(k, v)))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn a_pod_uses_its_requests_limits_and_a_place() {
        let p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                        "limits": {"cpu": "200m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m", "example.com/dongle": "1"}}}
        ]));
        let used = usage("", "pods", &p);
        assert_eq!(
            pretty(&used),
            "count/pods=1,cpu=350m,limits.cpu=200m,memory=64Mi,pods=1,\
             requests.cpu=350m,requests.example.com/dongle=1,requests.memory=64Mi"
        );
        let mut done = p.clone();
        done["status"] = json!({"phase": "Succeeded"});
        assert_eq!(pretty(&usage("", "pods", &done)), "count/pods=1");
    }

    #[test]
    fn services_count_their_node_ports_and_other_kinds_their_objects() {
        let svc = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(
            pretty(&usage("", "services", &svc)),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=2"
        );
        assert_eq!(
            pretty(&usage("apps", "deployments", &json!({}))),
            "count/deployments.apps=1"
        );
        assert_eq!(
            kind_of("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            kind_of("requests.cpu"),
            Some((String::new(), "pods".into()))
        );
        assert_eq!(kind_of("secrets"), Some((String::new(), "secrets".into())));
    }

    #[test]
    fn containers_must_state_what_a_quota_limits() {
        let limited: BTreeSet<String> = ["pods", "requests.cpu", "limits.cpu"]
            .map(String::from)
            .into();
        let p = pod(json!([
            {"name": "c", "resources": {"requests": {"cpu": "1"}}},
            {"name": "a"}
        ]));
        assert_eq!(
            unstated(&limited, &p).as_deref(),
            Some("must specify limits.cpu for: a,c; requests.cpu for: a")
        );
        let stated = pod(json!([{"name": "c", "resources": {"limits": {"cpu": "1"}}}]));
        assert_eq!(
            unstated(&limited, &stated).as_deref(),
            Some("must specify requests.cpu for: c")
        );
    }

    #[test]
    fn scopes_take_in_pods_only() {
        let quota = json!({"spec": {"scopes": ["BestEffort"]}});
        let idle = pod(json!([{"name": "c"}]));
        let sized = pod(json!([{"name": "c", "resources": {"requests": {"memory": "1Mi"}}}]));
        assert!(in_scope(&quota, "", "pods", &idle));
        assert!(!in_scope(&quota, "", "pods", &sized));
        assert!(!in_scope(&quota, "", "services", &json!({})));
        let by_class = json!({"spec": {"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        let mut high = idle.clone();
        high["spec"]["priorityClassName"] = json!("high");
        assert!(in_scope(&by_class, "", "pods", &high));
        assert!(!in_scope(&by_class, "", "pods", &idle));
        assert!(in_scope(&json!({"spec": {}}), "", "services", &json!({})));
    }
}
