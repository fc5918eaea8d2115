//! Per-resource policy, as upstream's `strategy.go` files hold it: what a create sets, what an
//! update keeps, what is valid and what is immutable. Stateless functions keyed by the resource;
//! the generic store in `apiserver` calls them in upstream's order (default, prepare, validate).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::selector::LabelSelector;
use crate::validation::{self, ErrorList, FieldError};
use crate::{meta, quantity};

pub mod csr;

/// Whether writes to the object itself ignore `status` (the resource has a status subresource).
pub fn has_status_subresource(rt: &ResourceType) -> bool {
    rt.has_subresource("status")
}

/// The parts of an object that count as its spec: everything but metadata and status.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

/// Prepares a new object: resets status where a status subresource owns it, and starts
/// generation at 1.
pub fn prepare_for_create(rt: &ResourceType, obj: &mut Value) {
    if has_status_subresource(rt) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        match rt.kind {
            "Pod" => obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(obj)}),
            "Namespace" => obj["status"] = json!({"phase": "Active"}),
            _ => {}
        }
    }
    if rt.group == "batch" && rt.kind == "Job" {
        generate_job_selector(obj);
    }
    meta::set_meta(obj, "generation", json!(1));
}

/// Labels a Job's pods with its UID and name and selects them by the UID, unless the Job asks
/// for its own selector (`manualSelector: true`), as upstream's Job strategy does.
fn generate_job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let uid = meta::meta_str(job, "uid").unwrap_or("").to_string();
    let name = meta::name(job).to_string();
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    let metadata = &mut template["metadata"];
    if !metadata.get("labels").is_some_and(Value::is_object) {
        metadata["labels"] = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        metadata["labels"][k] = json!(v);
    }
    if !spec.contains_key("selector") {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
    }
}

/// Prepares an update of the object (not of its status): keeps the stored status where a status
/// subresource owns it, and bumps generation when the spec changed.
pub fn prepare_for_update(rt: &ResourceType, old: &Value, new: &mut Value) {
    if has_status_subresource(rt) {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    let generation = old
        .get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if rt.group.is_empty() && rt.kind == "Service" {
        carry_service_allocations(old, new);
    }
    let bump = spec_of(old) != spec_of(new);
    meta::set_meta(
        new,
        "generation",
        json!(if bump { generation + 1 } else { generation }),
    );
}

/// Prepares an update through the status subresource: only status changes.
pub fn prepare_for_status_update(rt: &ResourceType, old: &Value, new: &mut Value) {
    let status = new.get("status").cloned();
    let mut merged = old.clone();
    match status {
        Some(s) => merged["status"] = s,
        None => {
            if let Some(m) = merged.as_object_mut() {
                m.remove("status");
            }
        }
    }
    // metadata written through status is ignored, except what the server tracks
    if let Some(rv) = new
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .cloned()
    {
        meta::set_meta(&mut merged, "resourceVersion", rv);
    }
    *new = merged;
    if rt.group == "certificates.k8s.io" && rt.kind == "CertificateSigningRequest" {
        csr::prepare_for_status_update(old, new);
    }
}

/// The QoS class upstream computes from the containers' requests and limits.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.get("spec")?.get(*k)?.as_array())
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let res = c.get("resources");
        let limits = res.and_then(|r| r.get("limits")).and_then(Value::as_object);
        let requests = res
            .and_then(|r| r.get("requests"))
            .and_then(Value::as_object);
        for name in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(name));
            let r = requests.and_then(|r| r.get(name));
            if l.is_some() || r.is_some() {
                any = true;
            }
            if l.is_none() || r.is_some_and(|r| Some(r) != l) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Validates a new or updated object.
pub fn validate(rt: &ResourceType, obj: &Value) -> ErrorList {
    let mut errs = ErrorList::new();
    let name = meta::name(obj);
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let label_named = matches!(rt.kind, "Namespace" | "Service");
        let why = if label_named {
            validation::dns1123_label(name)
        } else if rt.kind == "Role"
            || rt.kind == "ClusterRole"
            || rt.kind == "RoleBinding"
            || rt.kind == "ClusterRoleBinding"
        {
            // RBAC names are path segments: anything but "." "..", and no "/" or "%"
            (name == "." || name == ".." || name.contains(['/', '%']))
                .then(|| "may not contain '/' or '%'".to_string())
        } else {
            validation::dns1123_subdomain(name)
        };
        if let Some(why) = why {
            errs.push(FieldError::invalid("metadata.name", Value::from(name), why));
        }
    }
    validation::labels_and_annotations(obj, &mut errs);
    match (rt.group, rt.kind) {
        ("", "Pod") => pod_spec(obj.get("spec"), "spec", &mut errs),
        ("", "ConfigMap") | ("", "Secret") => data_keys(obj, &mut errs),
        ("", "Service") => service(obj, &mut errs),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") | ("batch", "Job") => {
            workload(obj, rt.kind == "Job", &mut errs)
        }
        ("", "ReplicationController") => pod_spec(
            obj.get("spec")
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("spec")),
            "spec.template.spec",
            &mut errs,
        ),
        ("certificates.k8s.io", "CertificateSigningRequest") => csr::validate(obj, &mut errs),
        ("scheduling.k8s.io", "PriorityClass") => priority_class(obj, &mut errs),
        ("", "LimitRange") => limit_range(obj, &mut errs),
        ("batch", "CronJob") => {
            let schedule = obj
                .get("spec")
                .and_then(|s| s.get("schedule"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if schedule.is_empty() {
                errs.push(FieldError::required("spec.schedule", ""));
            }
            let tmpl = obj
                .get("spec")
                .and_then(|s| s.get("jobTemplate"))
                .and_then(|t| t.get("spec"))
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("spec"));
            pod_spec(tmpl, "spec.jobTemplate.spec.template.spec", &mut errs);
        }
        _ => {}
    }
    errs
}

/// The highest priority a user-defined PriorityClass may have.
pub const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;

/// A PriorityClass: user classes stay at or below one billion, and `system-` names belong to
/// the two system classes.
fn priority_class(obj: &Value, errs: &mut ErrorList) {
    let name = meta::name(obj);
    let system = matches!(name, "system-node-critical" | "system-cluster-critical");
    if name.starts_with("system-") && !system {
        errs.push(FieldError::invalid(
            "metadata.name",
            json!(name),
            "priority class names with 'system-' prefix are reserved",
        ));
    }
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    if !system && value > HIGHEST_USER_DEFINABLE_PRIORITY {
        errs.push(FieldError::invalid(
            "value",
            json!(value),
            format!(
                "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"
            ),
        ));
    }
    if let Some(p) = obj.get("preemptionPolicy").and_then(Value::as_str)
        && !matches!(p, "PreemptLowerPriority" | "Never")
    {
        errs.push(FieldError::not_supported(
            "preemptionPolicy",
            json!(p),
            &["Never", "PreemptLowerPriority"],
        ));
    }
}

/// A LimitRange, as upstream validates one: one item per type; a Pod item has no defaults; a
/// PersistentVolumeClaim item bounds storage; and per resource min ≤ defaultRequest ≤ default ≤
/// max, with a limit-to-request ratio of at least 1 that max/min can reach.
fn limit_range(obj: &Value, errs: &mut ErrorList) {
    let items = obj.pointer("/spec/limits").and_then(Value::as_array);
    let mut types = std::collections::HashSet::new();
    for (i, item) in items.into_iter().flatten().enumerate() {
        let at = format!("spec.limits[{i}]");
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        if kind.is_empty() {
            errs.push(FieldError::required(format!("{at}.type"), ""));
        } else if !types.insert(kind) {
            errs.push(FieldError::duplicate(format!("{at}.type"), json!(kind)));
        }
        let bound = |key: &str| -> std::collections::BTreeMap<&str, (f64, &Value)> {
            item.get(key)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let q = quantity::parse(v.as_str()?).ok().or_else(|| v.as_f64())?;
                    Some((k.as_str(), (q, v)))
                })
                .collect()
        };
        let (min, max, limit, request, ratio) = (
            bound("min"),
            bound("max"),
            bound("default"),
            bound("defaultRequest"),
            bound("maxLimitRequestRatio"),
        );
        if kind == "Pod" {
            for key in ["default", "defaultRequest"] {
                if item
                    .get(key)
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty())
                {
                    errs.push(FieldError::forbidden(
                        format!("{at}.{key}"),
                        "may not be specified when `type` is 'Pod'",
                    ));
                }
            }
        }
        if kind == "PersistentVolumeClaim"
            && !min.contains_key("storage")
            && !max.contains_key("storage")
        {
            errs.push(FieldError::required(
                format!("{at}.limits"),
                "either minimum or maximum storage value is required, but neither was provided",
            ));
        }
        let text = |v: &Value| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        };
        // (the lower bound and its words, the higher and its words, the field blamed)
        let pairs = [
            (&min, "min value", &max, "max value", "min"),
            (
                &min,
                "min value",
                &request,
                "default request value",
                "defaultRequest",
            ),
            (
                &request,
                "default request value",
                &max,
                "max value",
                "defaultRequest",
            ),
            (
                &request,
                "default request value",
                &limit,
                "default limit value",
                "defaultRequest",
            ),
            (&min, "min value", &limit, "default value", "default"),
            (&limit, "default value", &max, "max value", "default"),
        ];
        for (low, low_word, high, high_word, blamed) in pairs {
            for (k, (lq, lv)) in low {
                let Some((hq, hv)) = high.get(k) else {
                    continue;
                };
                if lq > hq {
                    // upstream shows the blamed field's own value
                    let shown = if std::ptr::eq(low, &min) && blamed != "min" {
                        hv
                    } else {
                        lv
                    };
                    errs.push(FieldError::invalid(
                        format!("{at}.{blamed}[{k}]"),
                        (*shown).clone(),
                        format!(
                            "{low_word} {} is greater than {high_word} {}",
                            text(lv),
                            text(hv)
                        ),
                    ));
                }
            }
        }
        for (k, (rq, rv)) in &ratio {
            if *rq < 1.0 {
                errs.push(FieldError::invalid(
                    format!("{at}.maxLimitRequestRatio[{k}]"),
                    (*rv).clone(),
                    format!("ratio {} is less than 1", text(rv)),
                ));
            } else if let (Some((lo, _)), Some((hi, _))) = (min.get(k), max.get(k))
                && *lo > 0.0
                && *rq > hi / lo
            {
                errs.push(FieldError::invalid(
                    format!("{at}.maxLimitRequestRatio[{k}]"),
                    (*rv).clone(),
                    format!(
                        "ratio {} is greater than max/min = {:.6}",
                        text(rv),
                        hi / lo
                    ),
                ));
            }
        }
    }
}

/// Validates what an update may not change.
pub fn validate_update(rt: &ResourceType, old: &Value, new: &Value) -> ErrorList {
    let mut errs = ErrorList::new();
    let immutable = |errs: &mut ErrorList, path: &str| {
        let get = |o: &Value| meta::lookup(o, path).cloned();
        if get(old) != get(new) {
            errs.push(FieldError::invalid(
                path,
                get(new).unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
    };
    match (rt.group, rt.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => {
            immutable(&mut errs, "spec.selector")
        }
        ("", "ConfigMap" | "Secret") if old.get("immutable") == Some(&Value::Bool(true)) => {
            if old.get("data") != new.get("data") || old.get("binaryData") != new.get("binaryData")
            {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
            if new.get("immutable") != Some(&Value::Bool(true)) {
                errs.push(FieldError::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        ("", "Secret") => immutable(&mut errs, "type"),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            csr::validate_update(old, new, &mut errs)
        }
        ("", "Service") => {
            // the address may go or come only with a change to or from ExternalName
            let external =
                |o: &Value| o.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
            let had = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|ip| !ip.is_empty());
            if had && !external(old) && !external(new) {
                immutable(&mut errs, "spec.clusterIP");
            }
        }
        ("", "Pod") => {
            // only images, activeDeadlineSeconds, tolerations (additions) and
            // terminationGracePeriodSeconds may change; compare the rest
            let strip = |o: &Value| {
                let mut s = o.get("spec").cloned().unwrap_or(Value::Null);
                for key in ["containers", "initContainers"] {
                    if let Some(Value::Array(cs)) = s.get_mut(key) {
                        for c in cs {
                            if let Some(m) = c.as_object_mut() {
                                m.remove("image");
                            }
                        }
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    for key in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                        "nodeName",
                    ] {
                        m.remove(key);
                    }
                }
                s
            };
            if strip(old) != strip(new) {
                errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
        }
        _ => {}
    }
    errs
}

fn data_keys(obj: &Value, errs: &mut ErrorList) {
    let mut total = 0usize;
    for field in ["data", "binaryData", "stringData"] {
        for (k, v) in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            total += k.len() + v.as_str().map_or(0, str::len);
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
            if !ok {
                errs.push(FieldError::invalid(format!("{field}[{k}]"), Value::from(k.as_str()), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
        }
    }
    if total > 1024 * 1024 {
        errs.push(FieldError::forbidden(
            "data",
            "Too long: may not be more than 1048576 bytes",
        ));
    }
}

fn service(obj: &Value, errs: &mut ErrorList) {
    let spec = obj.get("spec");
    let str_at = |key: &str| spec.and_then(|s| s.get(key)).and_then(Value::as_str);
    let kind = str_at("type").unwrap_or("ClusterIP");
    let cluster_ip = str_at("clusterIP").unwrap_or("");
    let headless = cluster_ip == "None";
    let ports = spec.and_then(|s| s.get("ports")).and_then(Value::as_array);
    if kind != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind) {
        errs.push(FieldError::not_supported(
            "spec.type",
            Value::from(kind),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    if kind == "ExternalName" {
        match str_at("externalName") {
            None | Some("") => errs.push(FieldError::required("spec.externalName", "")),
            Some(name) => {
                if let Some(why) = validation::dns1123_subdomain(name.trim_end_matches('.')) {
                    errs.push(FieldError::invalid("spec.externalName", json!(name), why));
                }
            }
        }
        if !cluster_ip.is_empty() {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                json!([cluster_ip]),
                "may not be set for ExternalName services",
            ));
        }
    } else if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<Ipv4Addr>().is_err() {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            json!(cluster_ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    if headless && matches!(kind, "NodePort" | "LoadBalancer") {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            json!("None"),
            format!("may not be set to 'None' for {kind} services"),
        ));
    }
    if let Some(affinity) = str_at("sessionAffinity")
        && !["None", "ClientIP"].contains(&affinity)
    {
        errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            json!(affinity),
            &["ClientIP", "None"],
        ));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                at("port"),
                Value::from(port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        match p.get("name").and_then(Value::as_str).unwrap_or("") {
            "" if many => errs.push(FieldError::required(at("name"), "")),
            "" => {}
            name => {
                if let Some(why) = validation::dns1123_label(name) {
                    errs.push(FieldError::invalid(at("name"), json!(name), why));
                }
                if !names.insert(name) {
                    errs.push(FieldError::duplicate(at("name"), json!(name)));
                }
            }
        }
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            errs.push(FieldError::not_supported(
                at("protocol"),
                json!(protocol),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let node_port = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        if node_port != 0 && !matches!(kind, "NodePort" | "LoadBalancer") {
            errs.push(FieldError::forbidden(
                at("nodePort"),
                format!("may not be used when `type` is '{kind}'"),
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                errs.push(FieldError::invalid(
                    at("targetPort"),
                    Value::Number(n.clone()),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(Value::String(name)) => {
                if let Some(why) = validation::port_name(name) {
                    errs.push(FieldError::invalid(at("targetPort"), json!(name), why));
                }
            }
            _ => {}
        }
    }
}

/// As upstream's service storage on update: a client that leaves out the allocated ClusterIP or
/// node ports keeps them, and a change of type drops the allocations the new type has no use
/// for, unless the client changed them itself.
fn carry_service_allocations(old: &Value, new: &mut Value) {
    let new_type = new
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let ip_fields = ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"];
    let new_ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
    if new_type == "ExternalName" {
        if new_ip.is_empty() || spec.get("clusterIP") == old_spec.get("clusterIP") {
            for f in ip_fields {
                spec.remove(f);
            }
        }
    } else if new_ip.is_empty() {
        for f in ip_fields {
            if let Some(v) = old_spec.get(f) {
                spec.entry(f).or_insert_with(|| v.clone());
            }
        }
        if let Some(v) = old_spec.get("clusterIP") {
            spec.insert("clusterIP".into(), v.clone());
        }
    }
    let wants_node_ports = matches!(new_type.as_str(), "NodePort" | "LoadBalancer");
    let old_ports = old_spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let key = |p: &Value| {
        (
            p.get("port").and_then(Value::as_i64),
            p.get("protocol")
                .and_then(Value::as_str)
                .map(str::to_string),
        )
    };
    for p in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let old_node_port = old_ports
            .iter()
            .find(|o| key(o) == key(p))
            .and_then(|o| o.get("nodePort"))
            .cloned();
        let Some(port) = p.as_object_mut() else {
            continue;
        };
        let given = port.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0;
        if wants_node_ports {
            if let (false, Some(np)) = (given, old_node_port) {
                port.insert("nodePort".into(), np);
            }
        } else if !given || port.get("nodePort") == old_node_port.as_ref() {
            port.remove("nodePort");
        }
    }
}

fn workload(obj: &Value, job: bool, errs: &mut ErrorList) {
    let spec = obj.get("spec");
    let template = spec.and_then(|s| s.get("template"));
    let selector = spec.and_then(|s| s.get("selector"));
    match selector {
        None if !job => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => match LabelSelector::from_json(sel) {
            Ok(s) if s.is_empty() && !job => errs.push(FieldError::invalid(
                "spec.selector",
                sel.clone(),
                "empty selector is invalid for deployment",
            )),
            Ok(s) => {
                let t = template.cloned().unwrap_or(Value::Null);
                if !s.is_empty() && !s.matches(&t) {
                    let labels = t
                        .get("metadata")
                        .and_then(|m| m.get("labels"))
                        .cloned()
                        .unwrap_or(json!({}));
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        labels,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(e) => errs.push(FieldError::invalid(
                "spec.selector",
                sel.clone(),
                e.to_string(),
            )),
        },
        None => {}
    }
    pod_spec(
        template.and_then(|t| t.get("spec")),
        "spec.template.spec",
        errs,
    );
}

fn pod_spec(spec: Option<&Value>, path: &str, errs: &mut ErrorList) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
        return;
    };
    let mut seen = Vec::new();
    let inits = spec
        .and_then(|s| s.get("initContainers"))
        .and_then(Value::as_array);
    let lists = [("containers", Some(containers)), ("initContainers", inits)];
    for (list, items) in lists {
        for (i, c) in items.into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => errs.push(FieldError::required(format!("{at}.name"), "")),
                Some(n) => {
                    if let Some(why) = validation::dns1123_label(n) {
                        errs.push(FieldError::invalid(
                            format!("{at}.name"),
                            Value::from(n),
                            why,
                        ));
                    }
                    if seen.contains(&n) {
                        errs.push(FieldError::duplicate(format!("{at}.name"), Value::from(n)));
                    }
                    seen.push(n);
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                errs.push(FieldError::required(format!("{at}.image"), ""));
            }
        }
    }
    if let Some(policy) = spec
        .and_then(|s| s.get("restartPolicy"))
        .and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            Value::from(policy),
            &["Always", "OnFailure", "Never"],
        ));
    }
    let on = |key: &str| spec.and_then(|s| s.get(key)) == Some(&Value::Bool(true));
    if on("shareProcessNamespace") && on("hostPID") {
        errs.push(FieldError::invalid(
            format!("{path}.securityContext.shareProcessNamespace"),
            Value::Bool(true),
            "ShareProcessNamespace and HostPID cannot both be enabled",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn pod_without_image_names_the_field() {
        let rt = registry().by_kind("v1", "Pod").expect("pod");
        let errs = validate(
            rt,
            &json!({"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "c"}]}}),
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "spec.containers[0].image: Required value"
        );
    }

    #[test]
    fn generation_counts_spec_changes_only() {
        let rt = registry()
            .by_kind("apps/v1", "Deployment")
            .expect("deployment");
        let old = json!({"metadata": {"name": "d", "generation": 1}, "spec": {"replicas": 1}});
        let mut labels_only = old.clone();
        labels_only["metadata"]["labels"] = json!({"a": "b"});
        prepare_for_update(rt, &old, &mut labels_only);
        assert_eq!(labels_only["metadata"]["generation"], 1);
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        prepare_for_update(rt, &old, &mut scaled);
        assert_eq!(scaled["metadata"]["generation"], 2);
    }

    #[test]
    fn qos() {
        let pod = |res: Value| json!({"spec": {"containers": [{"name": "c", "resources": res}]}});
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
    }

    #[test]
    fn selector_must_match_template() {
        let rt = registry()
            .by_kind("apps/v1", "Deployment")
            .expect("deployment");
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let errs = validate(rt, &d);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .contains("`selector` does not match template `labels`")
        );
    }

    #[test]
    fn limit_ranges_keep_their_bounds_in_order() {
        let rt = registry().by_kind("v1", "LimitRange").expect("limitrange");
        let lr = |limits: Value| json!({"metadata": {"name": "l"}, "spec": {"limits": limits}});
        let messages = |limits: Value| -> Vec<String> {
            validate(rt, &lr(limits))
                .iter()
                .map(|e| e.to_string())
                .collect()
        };
        assert!(
            messages(json!([
                {"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "2"},
                 "default": {"cpu": "1"}, "defaultRequest": {"cpu": "500m"},
                 "maxLimitRequestRatio": {"cpu": "4"}},
                {"type": "PersistentVolumeClaim", "max": {"storage": "2Gi"}}
            ]))
            .is_empty()
        );
        let errs = messages(json!([
            {"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}},
            {"type": "Container", "default": {"memory": "1Gi"}, "max": {"memory": "512Mi"}},
            {"type": "Pod", "default": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "0.5"}},
            {"type": "PersistentVolumeClaim", "min": {"cpu": "1"}}
        ]));
        assert_eq!(errs.len(), 6, "{errs:?}");
        let has = |part: &str| errs.iter().any(|e| e.contains(part));
        assert!(
            has(
                "spec.limits[0].min[cpu]: Invalid value: \"2\": min value 2 is greater than max value 1"
            ),
            "{errs:?}"
        );
        assert!(has("spec.limits[1].type: Duplicate value"), "{errs:?}");
        assert!(
            has("default value 1Gi is greater than max value 512Mi"),
            "{errs:?}"
        );
        assert!(
            has("spec.limits[2].default: Forbidden: may not be specified when `type` is 'Pod'"),
            "{errs:?}"
        );
        assert!(has("ratio 0.5 is less than 1"), "{errs:?}");
        assert!(
            has("either minimum or maximum storage value is required"),
            "{errs:?}"
        );
    }
}
