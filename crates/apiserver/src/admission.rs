//! Admission: the checks and changes between decoding and storing that depend on other objects.
//! Today: NamespaceLifecycle (no new content in missing or terminating namespaces; the default
//! namespaces cannot be deleted), ServiceAccount (pods run as an existing account, `default`
//! unless told, and mount its token unless automounting is off),
//! DefaultTolerationSeconds (pods stay 300 s on a not-ready or unreachable node before
//! eviction), Priority (a pod's priority and preemption policy come from its PriorityClass, or
//! the global default one), LimitRanger (`crate::limit_range`, pods and claims), PodSecurity
//! (`crate::pod_security`, on create and update), DefaultIngressClass (an Ingress without a
//! class gets the default IngressClass), and the certificates plugins
//! (`crate::certificates`). ResourceQuota (`crate::resource_quota`) runs last, after
//! validation, as upstream's validating plugin.

use serde_json::{Value, json};

use api::{ResourceType, meta, registry};

use crate::State;
use crate::status::{ApiError, Result};

/// Namespaces that always exist.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Admits the creation of `obj`, possibly changing it; returns warnings for the client.
pub async fn admit_create(
    state: &State,
    rt: &ResourceType,
    user: &crate::authn::UserInfo,
    obj: &mut Value,
) -> Result<Vec<String>> {
    crate::node_restriction::admit_object(user, rt, None, obj)?;
    if crate::certificates::is_csr(rt) {
        crate::certificates::admit_create(rt, user, obj)?;
    }
    if rt.group.is_empty() && rt.kind == "Namespace" {
        pod_security_labels(obj)?;
    }
    let namespace = if rt.namespaced {
        Some(namespace_accepts_content(state, meta::namespace(obj)).await?)
    } else {
        None
    };
    if rt.group.is_empty() && rt.kind == "Pod" {
        let root = meta::ensure_object(obj);
        let spec = meta::ensure_object(root.entry("spec").or_insert_with(|| json!({})));
        spec.entry("enableServiceLinks").or_insert(json!(true));
        default_toleration_seconds(spec);
        service_account(state, obj).await?;
        priority(state, obj).await?;
        crate::limit_range::admit_pod(state, obj).await?;
    }
    if rt.group.is_empty() && rt.kind == "PersistentVolumeClaim" {
        crate::limit_range::admit_claim(state, obj).await?;
    }
    if rt.group == "networking.k8s.io" && rt.kind == "Ingress" {
        default_ingress_class(state, obj).await?;
    }
    Ok(match &namespace {
        Some(ns) => pod_security(rt, ns, obj)?,
        None => Vec::new(),
    })
}

/// Admits an update of `current` to `new`; returns warnings for the client.
pub async fn admit_update(
    state: &State,
    rt: &ResourceType,
    current: &Value,
    new: &Value,
) -> Result<Vec<String>> {
    if rt.group.is_empty()
        && rt.kind == "PersistentVolumeClaim"
        && current.pointer("/spec/resources") != new.pointer("/spec/resources")
    {
        crate::limit_range::admit_claim(state, new).await?;
    }
    if !(rt.group.is_empty() && rt.kind == "Namespace") {
        // a workload's pod template is checked again when it changes (a pod's spec changes
        // only where it is mutable, its images, which are not checked)
        let template = crate::pod_security::template_spec(rt.kind, new);
        if template.is_none() || template == crate::pod_security::template_spec(rt.kind, current) {
            return Ok(Vec::new());
        }
        let nsrt = registry()
            .find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
        let Ok((namespace, _)) = state.storage.get(nsrt, "", meta::namespace(new)).await else {
            return Ok(Vec::new());
        };
        return pod_security(rt, &namespace, new);
    }
    pod_security_labels(new)?;
    let (old, now) = (
        crate::pod_security::policy(current["metadata"].get("labels")),
        crate::pod_security::policy(new["metadata"].get("labels")),
    );
    if old.enforce == now.enforce {
        return Ok(Vec::new());
    }
    let rt = registry()
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not registered"))?;
    let name = meta::name(new);
    let pods: Vec<(String, Value)> = state
        .storage
        .list_in(rt, name)
        .await?
        .into_iter()
        .map(|p| (meta::name(&p).to_string(), p["spec"].clone()))
        .collect();
    Ok(crate::pod_security::existing_pod_warnings(
        name,
        &now.enforce,
        &pods,
    ))
}

/// DefaultIngressClass: an Ingress that names no class (neither `spec.ingressClassName` nor
/// the older `kubernetes.io/ingress.class` annotation) gets the default IngressClass, the
/// newest if several are marked.
async fn default_ingress_class(state: &State, obj: &mut Value) -> Result<()> {
    let named = obj
        .pointer("/spec/ingressClassName")
        .is_some_and(|v| !v.is_null())
        || obj
            .pointer("/metadata/annotations/kubernetes.io~1ingress.class")
            .is_some();
    if named {
        return Ok(());
    }
    let rt = registry()
        .find("networking.k8s.io", "v1", "ingressclasses")
        .ok_or_else(|| ApiError::internal("ingressclasses are not registered"))?;
    let default = state
        .storage
        .list_in(rt, "")
        .await?
        .into_iter()
        .filter(|c| {
            c.pointer("/metadata/annotations/ingressclass.kubernetes.io~1is-default-class")
                == Some(&json!("true"))
        })
        .max_by_key(|c| {
            c.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    if let Some(class) = default {
        let root = meta::ensure_object(obj);
        let spec = meta::ensure_object(root.entry("spec").or_insert_with(|| json!({})));
        spec.insert("ingressClassName".into(), json!(meta::name(&class)));
    }
    Ok(())
}

/// Upstream's validation of a namespace's Pod Security labels.
fn pod_security_labels(ns: &Value) -> Result<()> {
    let invalid = crate::pod_security::invalid_labels(ns["metadata"].get("labels"));
    if invalid.is_empty() {
        return Ok(());
    }
    let errs: Vec<api::validation::FieldError> = invalid
        .into_iter()
        .map(|(label, value, detail)| {
            api::validation::FieldError::invalid(
                format!("metadata.labels[{label}]"),
                json!(value),
                &detail,
            )
        })
        .collect();
    let rt = registry()
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
    Err(ApiError::invalid(rt, meta::name(ns), &errs))
}

/// Pod Security admission of a pod (enforced) or a workload's pod template (warned about) in
/// `namespace`.
fn pod_security(rt: &ResourceType, namespace: &Value, obj: &Value) -> Result<Vec<String>> {
    let pod = rt.group.is_empty() && rt.kind == "Pod";
    let spec = if pod {
        Some(&obj["spec"])
    } else {
        crate::pod_security::template_spec(rt.kind, obj)
    };
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let policy = crate::pod_security::policy(namespace["metadata"].get("labels"));
    let decision = crate::pod_security::evaluate(&policy, spec, pod);
    if let Some(denied) = decision.denied {
        return Err(ApiError::forbidden(format!(
            "pods {:?} is forbidden: {denied}",
            meta::name(obj)
        )));
    }
    if let Some(audit) = decision.audit {
        crate::audit::annotate("pod-security.kubernetes.io/audit-violations", audit);
    }
    Ok(decision.warnings)
}

/// Where the service account token volume is mounted.
const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Upstream's ServiceAccount admission: the pod runs as its service account (`default` unless
/// named), which must exist, and, unless the pod or the account turn automounting off, every
/// container mounts a `kube-api-access-*` projected volume with a bound token, the cluster CA
/// and the namespace.
async fn service_account(state: &State, pod: &mut Value) -> Result<()> {
    let spec = &mut pod["spec"];
    let name = spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["serviceAccount"].as_str().filter(|s| !s.is_empty()))
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(name);
    spec["serviceAccount"] = json!(name);
    let ns = meta::namespace(pod).to_string();
    let rt = registry()
        .find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not registered"))?;
    // The `default` account of a new namespace may be a moment away.
    let mut tries = 0;
    let account = loop {
        match state.storage.get(rt, &ns, &name).await {
            Ok((sa, _)) => break sa,
            Err(e) if e.code == 404 && tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                let why = if e.code == 404 {
                    format!("serviceaccount {name:?} not found")
                } else {
                    e.message
                };
                return Err(ApiError::forbidden(format!(
                    "pods {:?} is forbidden: error looking up service account {ns}/{name}: {why}",
                    meta::name(pod),
                )));
            }
        }
    };
    let spec = &mut pod["spec"];
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| account["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let existing = spec["volumes"].as_array().and_then(|vs| {
        vs.iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with("kube-api-access-"))
            .map(str::to_string)
    });
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("kube-api-access-{}", crate::rest::write::random_suffix()));
    let mut needed = false;
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        // get_mut: indexing would add the absent lists as nulls
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let mounts = meta::ensure_object(c)
                .entry("volumeMounts")
                .or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            if !mounts.iter().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH) {
                mounts
                    .push(json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}));
                needed = true;
            }
        }
    }
    if needed && existing.is_none() {
        let volumes = meta::ensure_object(spec)
            .entry("volumes")
            .or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(json!({"name": volume, "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]
            }}));
        }
    }
    Ok(())
}

/// Upstream's Priority admission: the pod's PriorityClass (named, or else the one marked
/// globalDefault) gives its priority and preemption policy; a pod may not state others.
async fn priority(state: &State, pod: &mut Value) -> Result<()> {
    let rt = registry()
        .find("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| ApiError::internal("priorityclasses are not registered"))?;
    let name = meta::name(pod).to_string();
    let spec = &pod["spec"];
    let class = match spec.get("priorityClassName").and_then(Value::as_str) {
        Some(class) if !class.is_empty() => match state.storage.get(rt, "", class).await {
            Ok((pc, _)) => Some(pc),
            Err(e) if e.code == 404 => {
                return Err(ApiError::forbidden(format!(
                    "pods \"{name}\" is forbidden: no PriorityClass with name {class} was found"
                )));
            }
            Err(e) => return Err(e),
        },
        _ => state
            .storage
            .list_in(rt, "")
            .await?
            .into_iter()
            .filter(|pc| pc.get("globalDefault") == Some(&json!(true)))
            // upstream picks the lowest when several claim to be the default
            .min_by_key(|pc| pc.get("value").and_then(Value::as_i64).unwrap_or(0)),
    };
    let (value, policy) = match &class {
        Some(pc) => (
            pc.get("value").and_then(Value::as_i64).unwrap_or(0),
            pc.get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        ),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    if let Some(given) = spec.get("priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
        && given != policy
    {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        )));
    }
    let spec = meta::ensure_object(
        meta::ensure_object(pod)
            .entry("spec")
            .or_insert_with(|| json!({})),
    );
    if let Some(pc) = &class {
        spec.insert("priorityClassName".into(), json!(meta::name(pc)));
    }
    spec.insert("priority".into(), json!(value));
    spec.insert("preemptionPolicy".into(), json!(policy));
    Ok(())
}

/// Upstream's DefaultTolerationSeconds: a pod that does not say how long it tolerates a
/// not-ready or unreachable node (NoExecute) tolerates it for 300 seconds.
fn default_toleration_seconds(spec: &mut serde_json::Map<String, Value>) {
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute") && (k == key || (k.is_empty() && exists))
        });
        if !covered {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }));
        }
    }
}

/// Admits the deletion of an object.
pub fn admit_delete(rt: &ResourceType, name: &str) -> Result<()> {
    if rt.group.is_empty() && rt.kind == "Namespace" && SYSTEM_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    Ok(())
}

/// The namespace `ns`, if it accepts new content.
async fn namespace_accepts_content(state: &State, ns: &str) -> Result<Value> {
    let nsrt = registry()
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
    let (namespace, _) = state.storage.get(nsrt, "", ns).await?;
    if meta::is_deleting(&namespace) {
        return Err(ApiError {
            details: Some(
                json!({"causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}),
            ),
            ..ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ))
        });
    }
    Ok(namespace)
}
