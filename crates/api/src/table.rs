//! Server-side printing: the columns `kubectl get` shows for each kind, computed as upstream's
//! printers (`pkg/printers/internalversion/printers.go`) compute them. Columns with priority 1
//! appear with `-o wide`.

use serde_json::{Value, json};

use crate::meta;

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header, e.g. `NAME`.
    pub name: &'static str,
    /// OpenAPI type: string, integer, date...
    pub kind: &'static str,
    /// 0 = always shown, 1 = shown with `-o wide`.
    pub priority: u8,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        priority,
    }
}

/// The column definitions in metav1.Table form.
pub fn column_definitions(cols: &[Column]) -> Value {
    Value::Array(
        cols.iter()
            .map(|c| {
                json!({"name": c.name, "type": c.kind,
                       "format": if c.name == "Name" { "name" } else { "" },
                       "description": "", "priority": c.priority})
            })
            .collect(),
    )
}

/// Human-readable age, as upstream's `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let d = h / 24;
        return if d % 365 == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{}d", d / 365, d % 365)
        };
    }
    format!("{}y", h / 24 / 365)
}

/// Seconds since a timestamp, if it parses.
fn since(ts: Option<&str>) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(ts?).ok()?;
    Some((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
}

/// The age of a timestamp as `kubectl get` shows it (`<unknown>` when missing).
pub fn age(ts: Option<&str>) -> String {
    since(ts)
        .map(human_duration)
        .unwrap_or_else(|| "<unknown>".into())
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    meta::lookup(v, path).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, path: &str) -> i64 {
    meta::lookup(v, path).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    meta::lookup(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = meta::string_map(sel.get("matchLabels"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in arr(sel, "matchExpressions") {
        let key = s(e, "key");
        let values: Vec<&str> = arr(e, "values").iter().filter_map(Value::as_str).collect();
        parts.push(match s(e, "operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    none_if_empty(parts.join(","))
}

fn map_selector(sel: Option<&Value>) -> String {
    let parts: Vec<String> = meta::string_map(sel)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    none_if_empty(parts.join(","))
}

fn containers_images(tmpl_spec: Option<&Value>) -> (String, String) {
    let cs = tmpl_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let names: Vec<&str> = cs.into_iter().flatten().map(|c| s(c, "name")).collect();
    let images: Vec<&str> = cs.into_iter().flatten().map(|c| s(c, "image")).collect();
    (names.join(","), images.join(","))
}

macro_rules! cols {
    ($($c:expr),* $(,)?) => {{
        const COLS: &[Column] = &[$($c),*];
        COLS
    }};
}

/// The columns of a kind.
pub fn columns(kind: &str) -> &'static [Column] {
    match kind {
        "Pod" => cols!(
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1)
        ),
        "ConfigMap" => cols!(
            col("Name", "string", 0),
            col("Data", "integer", 0),
            col("Age", "string", 0)
        ),
        "Secret" => cols!(
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Data", "integer", 0),
            col("Age", "string", 0)
        ),
        "Namespace" => cols!(
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Age", "string", 0)
        ),
        "Service" => cols!(
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1)
        ),
        "Deployment" => cols!(
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1)
        ),
        "ReplicaSet" | "ReplicationController" => cols!(
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1)
        ),
        "DaemonSet" => cols!(
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1)
        ),
        "StatefulSet" => cols!(
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1)
        ),
        "Job" => cols!(
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1)
        ),
        "CronJob" => cols!(
            col("Name", "string", 0),
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1)
        ),
        "Node" => cols!(
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1)
        ),
        "ServiceAccount" => cols!(
            col("Name", "string", 0),
            col("Secrets", "string", 0),
            col("Age", "string", 0)
        ),
        "Endpoints" => cols!(
            col("Name", "string", 0),
            col("Endpoints", "string", 0),
            col("Age", "string", 0)
        ),
        "Event" => cols!(
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Subobject", "string", 1),
            col("Source", "string", 1),
            col("Message", "string", 0),
            col("First Seen", "string", 1),
            col("Count", "string", 1),
            col("Name", "string", 1)
        ),
        "HorizontalPodAutoscaler" => cols!(
            col("Name", "string", 0),
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "string", 0),
            col("Replicas", "string", 0),
            col("Age", "string", 0)
        ),
        "Role" | "ClusterRole" | "LimitRange" => {
            cols!(col("Name", "string", 0), col("Created At", "date", 0))
        }
        "RoleBinding" | "ClusterRoleBinding" => cols!(
            col("Name", "string", 0),
            col("Role", "string", 0),
            col("Age", "string", 0),
            col("Users", "string", 1),
            col("Groups", "string", 1),
            col("ServiceAccounts", "string", 1)
        ),
        "Lease" => cols!(
            col("Name", "string", 0),
            col("Holder", "string", 0),
            col("Age", "string", 0)
        ),
        "ResourceQuota" => cols!(
            col("Name", "string", 0),
            col("Age", "string", 0),
            col("Request", "string", 0),
            col("Limit", "string", 0)
        ),
        "ControllerRevision" => cols!(
            col("Name", "string", 0),
            col("Controller", "string", 0),
            col("Revision", "integer", 0),
            col("Age", "string", 0)
        ),
        "PersistentVolumeClaim" => cols!(
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            col("Age", "string", 0)
        ),
        "Ingress" => cols!(
            col("Name", "string", 0),
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            col("Age", "string", 0)
        ),
        "IngressClass" => cols!(
            col("Name", "string", 0),
            col("Controller", "string", 0),
            col("Parameters", "string", 0),
            col("Age", "string", 0)
        ),
        "EndpointSlice" => cols!(
            col("Name", "string", 0),
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            col("Age", "string", 0)
        ),
        "CertificateSigningRequest" => cols!(
            col("Name", "string", 0),
            col("Age", "string", 0),
            col("SignerName", "string", 0),
            col("Requestor", "string", 0),
            col("RequestedDuration", "string", 0),
            col("Condition", "string", 0)
        ),
        "PriorityClass" => cols!(
            col("Name", "string", 0),
            col("Value", "integer", 0),
            col("Global-Default", "boolean", 0),
            col("Age", "string", 0),
            col("PreemptionPolicy", "string", 0)
        ),
        "StorageClass" => cols!(
            col("Name", "string", 0),
            col("Provisioner", "string", 0),
            col("ReclaimPolicy", "string", 0),
            col("VolumeBindingMode", "string", 0),
            col("AllowVolumeExpansion", "string", 0),
            col("Age", "string", 0)
        ),
        _ => cols!(col("Name", "string", 0), col("Age", "string", 0)),
    }
}

/// The cells of one object's row, matching [`columns`] of its kind.
pub fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = Value::from(meta::name(o));
    let created = meta::meta_str(o, "creationTimestamp");
    let age_cell = Value::from(age(created));
    match kind {
        "Pod" => pod_cells(o, name, age_cell),
        "ConfigMap" => {
            let count = ["data", "binaryData"]
                .iter()
                .map(|k| o.get(*k).and_then(Value::as_object).map_or(0, |m| m.len()))
                .sum::<usize>();
            vec![name, json!(count), age_cell]
        }
        "Secret" => {
            let count = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(o, "type")), json!(count), age_cell]
        }
        "Namespace" => vec![name, json!(s(o, "status.phase")), age_cell],
        "Service" => service_cells(o, name, age_cell),
        "Deployment" => {
            let (c, i) = containers_images(meta::lookup(o, "spec.template.spec"));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(o, "status.readyReplicas"),
                    n(o, "spec.replicas")
                )),
                json!(n(o, "status.updatedReplicas")),
                json!(n(o, "status.availableReplicas")),
                age_cell,
                json!(c),
                json!(i),
                json!(selector_string(meta::lookup(o, "spec.selector"))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, i) = containers_images(meta::lookup(o, "spec.template.spec"));
            let sel = if kind == "ReplicaSet" {
                selector_string(meta::lookup(o, "spec.selector"))
            } else {
                map_selector(meta::lookup(o, "spec.selector"))
            };
            vec![
                name,
                json!(n(o, "spec.replicas")),
                json!(n(o, "status.replicas")),
                json!(n(o, "status.readyReplicas")),
                age_cell,
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_images(meta::lookup(o, "spec.template.spec"));
            vec![
                name,
                json!(n(o, "status.desiredNumberScheduled")),
                json!(n(o, "status.currentNumberScheduled")),
                json!(n(o, "status.numberReady")),
                json!(n(o, "status.updatedNumberScheduled")),
                json!(n(o, "status.numberAvailable")),
                json!(map_selector(meta::lookup(
                    o,
                    "spec.template.spec.nodeSelector"
                ))),
                age_cell,
                json!(c),
                json!(i),
                json!(selector_string(meta::lookup(o, "spec.selector"))),
            ]
        }
        "StatefulSet" => {
            let (c, i) = containers_images(meta::lookup(o, "spec.template.spec"));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(o, "status.readyReplicas"),
                    n(o, "spec.replicas")
                )),
                age_cell,
                json!(c),
                json!(i),
            ]
        }
        "Job" => job_cells(o, name, age_cell),
        "CronJob" => {
            let (c, i) = containers_images(meta::lookup(o, "spec.jobTemplate.spec.template.spec"));
            let last = meta::lookup(o, "status.lastScheduleTime")
                .and_then(Value::as_str)
                .map(|t| age(Some(t)))
                .unwrap_or_else(|| "<none>".into());
            let tz = meta::lookup(o, "spec.timeZone")
                .and_then(Value::as_str)
                .unwrap_or("<none>");
            vec![
                name,
                json!(s(o, "spec.schedule")),
                json!(tz),
                json!(
                    meta::lookup(o, "spec.suspend")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                ),
                json!(arr(o, "status.active").len()),
                json!(last),
                age_cell,
                json!(c),
                json!(i),
                json!(selector_string(meta::lookup(
                    o,
                    "spec.jobTemplate.spec.selector"
                ))),
            ]
        }
        "Node" => node_cells(o, name, age_cell),
        "ServiceAccount" => vec![name, json!(arr(o, "secrets").len()), age_cell],
        "Endpoints" => vec![name, json!(endpoints_string(o)), age_cell],
        "Event" => event_cells(o),
        "HorizontalPodAutoscaler" => hpa_cells(o, name, age_cell),
        "Role" | "ClusterRole" | "LimitRange" => vec![name, json!(created.unwrap_or(""))],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = arr(o, "subjects");
            let pick = |k: &str| -> String {
                subjects
                    .iter()
                    .filter(|x| s(x, "kind") == k)
                    .map(|x| {
                        if k == "ServiceAccount" {
                            format!("{}/{}", s(x, "namespace"), s(x, "name"))
                        } else {
                            s(x, "name").to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!("{}/{}", s(o, "roleRef.kind"), s(o, "roleRef.name"))),
                age_cell,
                json!(pick("User")),
                json!(pick("Group")),
                json!(pick("ServiceAccount")),
            ]
        }
        "Lease" => vec![name, json!(s(o, "spec.holderIdentity")), age_cell],
        "ResourceQuota" => {
            let (mut req, mut lim) = (Vec::new(), Vec::new());
            for (k, hard) in meta::string_map(meta::lookup(o, "status.hard")) {
                let used = meta::lookup(o, "status.used")
                    .and_then(|u| u.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("0");
                let entry = format!("{k}: {used}/{hard}");
                if k.starts_with("limits.") {
                    lim.push(entry)
                } else {
                    req.push(entry)
                }
            }
            vec![name, age_cell, json!(req.join(", ")), json!(lim.join(", "))]
        }
        "ControllerRevision" => {
            let owner = arr(o, "metadata.ownerReferences")
                .iter()
                .find(|r| r.get("controller") == Some(&Value::Bool(true)));
            let controller = owner
                .map(|r| {
                    format!(
                        "{}.{}/{}",
                        s(r, "kind").to_lowercase(),
                        s(r, "apiVersion").split('/').next().unwrap_or(""),
                        s(r, "name")
                    )
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(controller), json!(n(o, "revision")), age_cell]
        }
        "PersistentVolumeClaim" => {
            let modes: Vec<&str> = arr(o, "status.accessModes")
                .iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    o => o,
                })
                .collect();
            vec![
                name,
                json!(s(o, "status.phase")),
                json!(s(o, "spec.volumeName")),
                json!(s(o, "status.capacity.storage")),
                json!(modes.join(",")),
                json!(s(o, "spec.storageClassName")),
                json!("<unset>"),
                age_cell,
            ]
        }
        "IngressClass" => {
            // upstream prints the parameters as Kind/name, with the group when there is one
            let parameters = meta::lookup(o, "spec.parameters").map_or("<none>".to_string(), |p| {
                let group = s(p, "apiGroup");
                let kind = if group.is_empty() {
                    s(p, "kind").to_string()
                } else {
                    format!("{}.{group}", s(p, "kind"))
                };
                format!("{kind}/{}", s(p, "name"))
            });
            vec![
                name,
                json!(s(o, "spec.controller")),
                json!(parameters),
                age_cell,
            ]
        }
        "Ingress" => {
            let hosts: Vec<&str> = arr(o, "spec.rules")
                .iter()
                .map(|r| {
                    let h = s(r, "host");
                    if h.is_empty() { "*" } else { h }
                })
                .collect();
            let addrs: Vec<&str> = arr(o, "status.loadBalancer.ingress")
                .iter()
                .map(|i| {
                    let ip = s(i, "ip");
                    if ip.is_empty() { s(i, "hostname") } else { ip }
                })
                .collect();
            let ports = if arr(o, "spec.tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            let class = meta::lookup(o, "spec.ingressClassName")
                .and_then(Value::as_str)
                .unwrap_or("<none>");
            vec![
                name,
                json!(class),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                json!(addrs.join(",")),
                json!(ports),
                age_cell,
            ]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = arr(o, "ports")
                .iter()
                .map(|p| n(p, "port").to_string())
                .collect();
            let addrs: Vec<&str> = arr(o, "endpoints")
                .iter()
                .flat_map(|e| arr(e, "addresses"))
                .filter_map(Value::as_str)
                .collect();
            vec![
                name,
                json!(s(o, "addressType")),
                json!(none_if_empty(ports.join(","))),
                json!(none_if_empty(addrs.join(","))),
                age_cell,
            ]
        }
        "CertificateSigningRequest" => {
            let conds: Vec<&str> = arr(o, "status.conditions")
                .iter()
                .filter(|c| s(c, "status") == "True")
                .map(|c| s(c, "type"))
                .collect();
            let mut condition = if conds.is_empty() {
                "Pending".to_string()
            } else {
                conds.join(",")
            };
            if !s(o, "status.certificate").is_empty() {
                condition.push_str(",Issued");
            }
            let duration = meta::lookup(o, "spec.expirationSeconds")
                .and_then(Value::as_i64)
                .map(human_duration)
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                age_cell,
                json!(s(o, "spec.signerName")),
                json!(s(o, "spec.username")),
                json!(duration),
                json!(condition),
            ]
        }
        "PriorityClass" => vec![
            name,
            json!(n(o, "value")),
            json!(
                o.get("globalDefault")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            age_cell,
            json!(s(o, "preemptionPolicy")),
        ],
        "StorageClass" => vec![
            name,
            json!(s(o, "provisioner")),
            json!(s(o, "reclaimPolicy")),
            json!(s(o, "volumeBindingMode")),
            json!(
                o.get("allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
            ),
            age_cell,
        ],
        _ => vec![name, age_cell],
    }
}

fn pod_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let statuses = arr(o, "status.containerStatuses");
    let total = arr(o, "spec.containers").len();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
        .count();
    let mut restarts = 0;
    let mut last_restart: Option<i64> = None;
    let mut reason = meta::lookup(o, "status.reason")
        .and_then(Value::as_str)
        .unwrap_or_else(|| s(o, "status.phase"))
        .to_string();
    let mut initializing = false;
    for (i, c) in arr(o, "status.initContainerStatuses").iter().enumerate() {
        restarts += n(c, "restartCount");
        if let Some(t) = c.get("state").and_then(|s| s.get("terminated")) {
            if n(t, "exitCode") == 0 {
                continue;
            }
            reason = if !s(t, "reason").is_empty() {
                format!("Init:{}", s(t, "reason"))
            } else if n(t, "signal") != 0 {
                format!("Init:Signal:{}", n(t, "signal"))
            } else {
                format!("Init:ExitCode:{}", n(t, "exitCode"))
            };
        } else if let Some(w) = c
            .get("state")
            .and_then(|s| s.get("waiting"))
            .filter(|w| !s(w, "reason").is_empty() && s(w, "reason") != "PodInitializing")
        {
            reason = format!("Init:{}", s(w, "reason"));
        } else {
            reason = format!("Init:{}/{}", i, arr(o, "spec.initContainers").len());
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in statuses.iter().rev() {
            restarts += n(c, "restartCount");
            if let Some(t) = meta::lookup(c, "lastState.terminated") {
                last_restart = since(meta::lookup(t, "finishedAt").and_then(Value::as_str))
                    .min(last_restart.or(Some(i64::MAX)));
            }
            let state = c.get("state");
            if let Some(w) = state
                .and_then(|s| s.get("waiting"))
                .filter(|w| !s(w, "reason").is_empty())
            {
                reason = s(w, "reason").to_string();
            } else if let Some(t) = state.and_then(|s| s.get("terminated")) {
                reason = if !s(t, "reason").is_empty() {
                    s(t, "reason").to_string()
                } else if n(t, "signal") != 0 {
                    format!("Signal:{}", n(t, "signal"))
                } else {
                    format!("ExitCode:{}", n(t, "exitCode"))
                };
            } else if c.get("ready") == Some(&Value::Bool(true))
                && state.and_then(|s| s.get("running")).is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = if meta::lookup(o, "status.conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| s(c, "type") == "Ready" && s(c, "status") == "True")
                }) {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if meta::is_deleting(o) {
        reason = if s(o, "status.reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts = match last_restart {
        Some(secs) if restarts > 0 && secs != i64::MAX => {
            format!("{restarts} ({} ago)", human_duration(secs))
        }
        _ => restarts.to_string(),
    };
    let ip = meta::lookup(o, "status.podIP")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let node = meta::lookup(o, "spec.nodeName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let nominated = meta::lookup(o, "status.nominatedNodeName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let gates = arr(o, "spec.readinessGates");
    let gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(o, "status.conditions");
        let met = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| s(c, "type") == s(g, "conditionType") && s(c, "status") == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name,
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        age,
        json!(ip),
        json!(node),
        json!(nominated),
        json!(gates),
    ]
}

fn service_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let kind = s(o, "spec.type");
    let cluster_ip = meta::lookup(o, "spec.clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let mut external: Vec<String> = arr(o, "spec.externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let external = match kind {
        "ExternalName" => s(o, "spec.externalName").to_string(),
        "LoadBalancer" => {
            for i in arr(o, "status.loadBalancer.ingress") {
                let ip = s(i, "ip");
                external.push(if ip.is_empty() {
                    s(i, "hostname").to_string()
                } else {
                    ip.to_string()
                });
            }
            if external.is_empty() {
                "<pending>".into()
            } else {
                external.join(",")
            }
        }
        _ => {
            if external.is_empty() {
                "<none>".into()
            } else {
                external.join(",")
            }
        }
    };
    let ports: Vec<String> = arr(o, "spec.ports")
        .iter()
        .map(|p| {
            let node_port = n(p, "nodePort");
            let proto = meta::lookup(p, "protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            if node_port > 0 {
                format!("{}:{}/{proto}", n(p, "port"), node_port)
            } else {
                format!("{}/{proto}", n(p, "port"))
            }
        })
        .collect();
    let cluster_ip = if kind == "ExternalName" {
        "<none>"
    } else {
        cluster_ip
    };
    vec![
        name,
        json!(kind),
        json!(cluster_ip),
        json!(external),
        json!(none_if_empty(ports.join(","))),
        age,
        json!(map_selector(meta::lookup(o, "spec.selector"))),
    ]
}

fn job_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let (c, i) = containers_images(meta::lookup(o, "spec.template.spec"));
    let completions = match meta::lookup(o, "spec.completions").and_then(Value::as_i64) {
        Some(total) => format!("{}/{total}", n(o, "status.succeeded")),
        None => {
            let p = n(o, "spec.parallelism");
            if p > 1 {
                format!("{}/1 of {p}", n(o, "status.succeeded"))
            } else {
                format!("{}/1", n(o, "status.succeeded"))
            }
        }
    };
    let start = meta::lookup(o, "status.startTime").and_then(Value::as_str);
    let end = meta::lookup(o, "status.completionTime").and_then(Value::as_str);
    let duration = match (since(start), end.and_then(|e| since(Some(e)))) {
        (Some(st), Some(en)) => human_duration(st - en),
        (Some(st), None) => human_duration(st),
        _ => String::new(),
    };
    let conds = arr(o, "status.conditions");
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| s(c, "type") == t && s(c, "status") == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if meta::is_deleting(o) {
        "Terminating"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    vec![
        name,
        json!(status),
        json!(completions),
        json!(duration),
        age,
        json!(c),
        json!(i),
        json!(selector_string(meta::lookup(o, "spec.selector"))),
    ]
}

fn node_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let ready = arr(o, "status.conditions")
        .iter()
        .find(|c| s(c, "type") == "Ready");
    let mut status = match ready.map(|c| s(c, "status")) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if meta::lookup(o, "spec.unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = meta::labels(o)
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
                .or_else(|| (k == "kubernetes.io/role").then(|| v.to_string()))
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let addr = |t: &str| {
        arr(o, "status.addresses")
            .iter()
            .find(|a| s(a, "type") == t)
            .map(|a| s(a, "address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name,
        json!(status),
        json!(none_if_empty(roles.join(","))),
        age,
        json!(s(o, "status.nodeInfo.kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(o, "status.nodeInfo.osImage")),
        json!(s(o, "status.nodeInfo.kernelVersion")),
        json!(s(o, "status.nodeInfo.containerRuntimeVersion")),
    ]
}

fn endpoints_string(o: &Value) -> String {
    let mut out = Vec::new();
    for subset in arr(o, "subsets") {
        for a in arr(subset, "addresses") {
            let ports = arr(subset, "ports");
            if ports.is_empty() {
                out.push(s(a, "ip").to_string());
            }
            for p in ports {
                out.push(format!("{}:{}", s(a, "ip"), n(p, "port")));
            }
        }
    }
    let total = out.len();
    if total > 3 {
        out.truncate(3);
        return format!("{} + {} more...", out.join(","), total - 3);
    }
    none_if_empty(out.join(","))
}

fn event_cells(o: &Value) -> Vec<Value> {
    let last = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str))
        .or(meta::meta_str(o, "creationTimestamp"));
    let first = ["firstTimestamp", "eventTime"]
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str))
        .or(meta::meta_str(o, "creationTimestamp"));
    let object = format!(
        "{}/{}",
        s(o, "involvedObject.kind").to_lowercase(),
        s(o, "involvedObject.name")
    );
    let source = {
        let comp = meta::lookup(o, "source.component")
            .and_then(Value::as_str)
            .or(o.get("reportingComponent").and_then(Value::as_str))
            .unwrap_or("");
        let host = s(o, "source.host");
        if host.is_empty() {
            comp.to_string()
        } else {
            format!("{comp}, {host}")
        }
    };
    let count = o.get("count").and_then(Value::as_i64).unwrap_or(1);
    vec![
        json!(age(last)),
        json!(s(o, "type")),
        json!(s(o, "reason")),
        json!(object),
        json!(s(o, "involvedObject.fieldPath")),
        json!(source),
        json!(s(o, "message")),
        json!(age(first)),
        json!(count.to_string()),
        json!(meta::name(o)),
    ]
}

fn hpa_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        s(o, "spec.scaleTargetRef.kind"),
        s(o, "spec.scaleTargetRef.name")
    );
    let current = arr(o, "status.currentMetrics");
    let targets: Vec<String> = arr(o, "spec.metrics")
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if s(m, "type") != "Resource" {
                return "<unknown>".to_string();
            }
            let res = s(m, "resource.name");
            let cur = current.get(i);
            if let Some(target) =
                meta::lookup(m, "resource.target.averageUtilization").and_then(Value::as_i64)
            {
                let now = cur
                    .and_then(|c| meta::lookup(c, "resource.current.averageUtilization"))
                    .and_then(Value::as_i64)
                    .map(|u| format!("{u}%"))
                    .unwrap_or_else(|| "<unknown>".into());
                format!("{res}: {now}/{target}%")
            } else {
                let target = s(m, "resource.target.averageValue");
                let now = cur
                    .map(|c| s(c, "resource.current.averageValue"))
                    .filter(|v| !v.is_empty())
                    .unwrap_or("<unknown>");
                format!("{res}: {now}/{target}")
            }
        })
        .collect();
    let min = meta::lookup(o, "spec.minReplicas")
        .and_then(Value::as_i64)
        .map(|m| m.to_string())
        .unwrap_or_else(|| "<unset>".into());
    vec![
        name,
        json!(reference),
        json!(if targets.is_empty() {
            "<none>".into()
        } else {
            targets.join(", ")
        }),
        json!(min),
        json!(n(o, "spec.maxReplicas").to_string()),
        json!(n(o, "status.currentReplicas").to_string()),
        age,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(40 * 86400), "40d");
    }

    #[test]
    fn pod_status_column() {
        let crash = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let cells = cells("Pod", &crash);
        assert_eq!(cells[1], "0/1");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        let done = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0,
                "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}});
        assert_eq!(super::cells("Pod", &done)[2], "Completed");
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        for r in &crate::registry().resources {
            let o = json!({"metadata": {"name": "x"}});
            assert_eq!(cells(r.kind, &o).len(), columns(r.kind).len(), "{}", r.kind);
        }
    }
}
