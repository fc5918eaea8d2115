//! Defaulting: the values upstream fills in when a field is left out (`SetDefaults_*` in
//! `pkg/apis/*/v1/defaults.go`), so that stored objects, `kubectl get -o yaml` and `kubectl diff`
//! look as they do upstream.

use serde_json::{Map, Value, json};

use crate::meta::ensure_object;
use crate::registry::ResourceType;

fn default(m: &mut Map<String, Value>, key: &str, value: Value) {
    m.entry(key.to_string()).or_insert(value);
}

fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    ensure_object(m.entry(key.to_string()).or_insert_with(|| json!({})))
}

fn each_item(m: &mut Map<String, Value>, key: &str, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(Value::Array(items)) = m.get_mut(key) {
        for item in items {
            if let Value::Object(o) = item {
                f(o);
            }
        }
    }
}

/// Merges a Secret's write-only `stringData` into `data` (base64, over keys of the same name),
/// as upstream's conversion of a v1 Secret does; it is never stored.
fn string_data(secret: &mut serde_json::Map<String, Value>) {
    use base64::Engine;
    let Some(Value::Object(strings)) = secret.remove("stringData") else {
        return;
    };
    let data = child(secret, "data");
    for (key, value) in strings {
        if let Some(text) = value.as_str() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::from(encoded));
        }
    }
}

/// Fills in the defaults of an object of the given resource.
pub fn apply(rt: &ResourceType, obj: &mut Value) {
    let root = ensure_object(obj);
    match (rt.group, rt.kind) {
        ("", "Pod") => pod_spec(child(root, "spec")),
        ("", "Namespace") => {
            // the API server labels every namespace with its name, so selectors can pick it
            let name = root
                .get("metadata")
                .and_then(|m| m.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            if name.is_string() {
                let labels = child(child(root, "metadata"), "labels");
                labels.insert("kubernetes.io/metadata.name".into(), name);
            }
            let spec = child(root, "spec");
            default(spec, "finalizers", json!(["kubernetes"]));
        }
        ("", "Secret") => {
            default(root, "type", json!("Opaque"));
            string_data(root);
        }
        ("", "LimitRange") => {
            if let Some(items) = child(root, "spec")
                .get_mut("limits")
                .and_then(Value::as_array_mut)
            {
                items.iter_mut().for_each(limit_range_item);
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            default(root, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        ("", "Service") => service_spec(child(root, "spec")),
        ("", "ReplicationController") => {
            // Without a selector or labels of its own, a controller takes its template's labels.
            let labels = root
                .get("spec")
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("metadata"))
                .and_then(|m| m.get("labels"))
                .filter(|l| l.as_object().is_some_and(|l| !l.is_empty()))
                .cloned();
            if let Some(labels) = labels {
                let meta = child(root, "metadata");
                if meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|l| l.is_empty())
                {
                    meta.insert("labels".into(), labels.clone());
                }
                let spec = child(root, "spec");
                if spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .is_none_or(|s| s.is_empty())
                {
                    spec.insert("selector".into(), labels);
                }
            }
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            pod_template(spec);
        }
        ("apps", "Deployment") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = child(strategy, "rollingUpdate");
                default(ru, "maxSurge", json!("25%"));
                default(ru, "maxUnavailable", json!("25%"));
            }
            pod_template(spec);
        }
        ("apps", "ReplicaSet") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            pod_template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = child(root, "spec");
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = child(strategy, "rollingUpdate");
                default(ru, "maxUnavailable", json!(1));
                default(ru, "maxSurge", json!(0));
            }
            pod_template(spec);
        }
        ("apps", "StatefulSet") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            let strategy = child(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                default(child(strategy, "rollingUpdate"), "partition", json!(0));
            }
            pod_template(spec);
        }
        ("batch", "Job") => job_spec(child(root, "spec")),
        ("batch", "CronJob") => {
            let spec = child(root, "spec");
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            job_spec(child(child(spec, "jobTemplate"), "spec"));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let spec = child(root, "spec");
            default(spec, "minReplicas", json!(1));
            if !spec.contains_key("metrics") {
                spec.insert("metrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]));
            }
            // a behavior that is given gets upstream's defaults for what it leaves out (the
            // scale-down stabilization window stays unset: the controller's 300 s)
            if let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) {
                let up = child(behavior, "scaleUp");
                default(up, "stabilizationWindowSeconds", json!(0));
                default(up, "selectPolicy", json!("Max"));
                default(
                    up,
                    "policies",
                    json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                           {"type": "Percent", "value": 100, "periodSeconds": 15}]),
                );
                let down = child(behavior, "scaleDown");
                default(down, "selectPolicy", json!("Max"));
                default(
                    down,
                    "policies",
                    json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
                );
            }
        }
        _ => {}
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    let indexed = spec.get("completionMode") == Some(&json!("Indexed"));
    default(spec, "parallelism", json!(1));
    if !indexed {
        default(spec, "completions", json!(1));
    }
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "manualSelector", Value::Null);
    if spec.get("manualSelector") == Some(&Value::Null) {
        spec.remove("manualSelector");
    }
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    pod_template(spec);
}

fn pod_template(spec: &mut Map<String, Value>) {
    let template = child(spec, "template");
    pod_spec(child(template, "spec"));
}

/// Upstream's defaults of a Container LimitRange item: the default limit is the max, the
/// default request the default limit, else the min.
fn limit_range_item(item: &mut Value) {
    let item = ensure_object(item);
    if item.get("type").and_then(Value::as_str) != Some("Container") {
        return;
    }
    let get = |item: &Map<String, Value>, k: &str| {
        item.get(k)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (max, min) = (get(item, "max"), get(item, "min"));
    let mut limits = get(item, "default");
    for (k, v) in max {
        limits.entry(k).or_insert(v);
    }
    let mut requests = get(item, "defaultRequest");
    for (k, v) in limits.iter().chain(min.iter()) {
        requests.entry(k.clone()).or_insert(v.clone());
    }
    if !limits.is_empty() {
        item.insert("default".into(), Value::Object(limits));
    }
    if !requests.is_empty() {
        item.insert("defaultRequest".into(), Value::Object(requests));
    }
}

/// Defaults of a pod spec, also inside templates.
pub fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers"] {
        each_item(spec, key, container);
    }
    each_item(spec, "volumes", |v| {
        for (source, mode) in [
            ("secret", "defaultMode"),
            ("configMap", "defaultMode"),
            ("downwardAPI", "defaultMode"),
            ("projected", "defaultMode"),
        ] {
            if let Some(Value::Object(s)) = v.get_mut(source) {
                default(s, mode, json!(420));
            }
        }
        if let Some(Value::Object(h)) = v.get_mut("hostPath") {
            default(h, "type", json!(""));
        }
    });
}

fn container(c: &mut Map<String, Value>) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    if !c.contains_key("imagePullPolicy") {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let last = image.rsplit('/').next().unwrap_or("");
        let tag = if last.contains('@') {
            Some("digest")
        } else {
            last.split_once(':').map(|(_, t)| t)
        };
        let policy = match tag {
            None | Some("latest") => "Always",
            Some(_) => "IfNotPresent",
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    each_item(c, "ports", |p| default(p, "protocol", json!("TCP")));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(Value::Object(p)) = c.get_mut(probe) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(Value::Object(h)) = p.get_mut("httpGet") {
                default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
        default(
            spec,
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    each_item(spec, "ports", |p| {
        default(p, "protocol", json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            default(p, "targetPort", port);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn deployment_defaults_as_upstream() {
        let rt = registry()
            .by_kind("apps/v1", "Deployment")
            .expect("deployment");
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}, {"name": "l", "image": "nginx"}]}}}});
        apply(rt, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[1]["imagePullPolicy"], "Always");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let again = d.clone();
        apply(rt, &mut d);
        assert_eq!(d, again, "defaulting is idempotent");
    }

    #[test]
    fn string_data_is_merged_into_data() {
        let rt = registry().by_kind("v1", "Secret").expect("secret");
        let mut s =
            json!({"data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "two"}});
        apply(rt, &mut s);
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"a": "bmV3", "keep": "eA==", "b": "dHdv"}})
        );
    }
}
