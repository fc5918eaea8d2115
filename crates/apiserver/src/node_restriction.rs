//! NodeRestriction admission: a node agent (`crate::node_authz::node_name`) changes only itself
//! and what is bound to it, as upstream's NodeRestriction plugin allows. Its own Node (no
//! taints, no `node-restriction.kubernetes.io/` labels, no other kubernetes.io labels than
//! kubelet's own on update), its own Lease, the status, eviction and deletion of pods bound to
//! it, mirror pods only, and tokens only for pods bound to it. Messages are upstream's.

use serde_json::Value;

use api::{ResourceType, meta, registry};

use crate::State;
use crate::authn::UserInfo;
use crate::node_authz::node_name;
use crate::request::RequestInfo;
use crate::status::{ApiError, Result};

/// The annotation that marks a mirror pod (the API copy of a node's static pod).
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The pod `name` in `namespace`, as stored.
async fn pod(state: &State, namespace: &str, name: &str) -> Result<Value> {
    let rt = registry()
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not registered"))?;
    Ok(state.storage.get(rt, namespace, name).await?.0)
}

/// Checks what a node asks for by the request's path alone: which pods it deletes, evicts or
/// writes the status of, which Node or Lease it changes. Objects in the body are checked by
/// [`admit_object`].
pub async fn admit_request(
    state: &State,
    user: &UserInfo,
    rt: &ResourceType,
    info: &RequestInfo,
) -> Result<()> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let write = !matches!(info.verb, "get" | "list" | "watch");
    if !write || (!rt.group.is_empty() && rt.kind != "Lease") {
        return Ok(());
    }
    let (sub, name) = (info.subresource.as_str(), info.name.as_str());
    // what a node may do only to the pods bound to it
    let own_pods_only = match (rt.kind, sub, info.verb) {
        ("Pod", "", "delete") => Some("can only delete pods"),
        ("Pod", "status", _) => Some("can only update pod status for pods"),
        ("Pod", "eviction", _) => Some("can only evict pods"),
        ("Pod", "", verb @ ("deletecollection" | "update" | "patch")) => {
            return Err(ApiError::admission_forbidden(
                rt,
                name,
                &format!("unexpected operation \"{verb}\""),
            ));
        }
        ("Node", _, _) if !name.is_empty() && name != node => {
            let why = format!("node \"{node}\" is not allowed to modify node \"{name}\"");
            return Err(ApiError::admission_forbidden(rt, name, &why));
        }
        ("Lease", _, _) if !name.is_empty() && name != node => {
            let why = "can only access node lease with the same name as the requesting node";
            return Err(ApiError::admission_forbidden(rt, name, why));
        }
        _ => None,
    };
    if let Some(what) = own_pods_only
        && pod(state, &info.namespace, name).await?["spec"]["nodeName"] != node
    {
        let why = format!("node \"{node}\" {what} with spec.nodeName set to itself");
        return Err(ApiError::admission_forbidden(rt, name, &why));
    }
    Ok(())
}

/// Label keys that differ between two label maps.
fn modified_labels(new: &Value, old: Option<&Value>) -> Vec<String> {
    let labels = |o: Option<&Value>| {
        o.and_then(|o| o["metadata"]["labels"].as_object().cloned())
            .unwrap_or_default()
    };
    let (new, old) = (labels(Some(new)), labels(old));
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .chain(old.iter().filter(|(k, v)| new.get(*k) != Some(v)))
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Whether a label's prefix is `domain` or one of its subdomains.
fn in_domain(label: &str, domain: &str) -> bool {
    label
        .split_once('/')
        .is_some_and(|(prefix, _)| prefix == domain || prefix.ends_with(&format!(".{domain}")))
}

/// Whether kubelet may set a label on its Node (upstream's `IsKubeletLabel`).
fn kubelet_label(label: &str) -> bool {
    const KUBELET_LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    ];
    KUBELET_LABELS.contains(&label)
        || in_domain(label, "kubelet.kubernetes.io")
        || in_domain(label, "node.kubernetes.io")
}

/// Labels a node may not set: `node-restriction.kubernetes.io/` ones always, and on update
/// other kubernetes.io and k8s.io ones that are not kubelet's.
fn forbidden_labels(modified: &[String], update: bool) -> Vec<String> {
    modified
        .iter()
        .filter(|l| {
            in_domain(l, "node-restriction.kubernetes.io")
                || update
                    && (in_domain(l, "kubernetes.io") || in_domain(l, "k8s.io"))
                    && !kubelet_label(l)
        })
        .cloned()
        .collect()
}

/// Checks an object a node creates (`old` is `None`) or the result of its update.
pub fn admit_object(
    user: &UserInfo,
    rt: &ResourceType,
    old: Option<&Value>,
    new: &Value,
) -> Result<()> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let name = meta::name(new);
    match (rt.group, rt.kind) {
        ("", "Pod") if old.is_none() => {
            if meta::lookup(new, "metadata.annotations")
                .and_then(|a| a.get(MIRROR_ANNOTATION))
                .is_none()
            {
                let why = format!(
                    "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
                );
                return Err(ApiError::admission_forbidden(rt, name, &why));
            }
            if new["spec"]["nodeName"] != node {
                let why = format!(
                    "node \"{node}\" can only create pods with spec.nodeName set to itself"
                );
                return Err(ApiError::admission_forbidden(rt, name, &why));
            }
            let refs = crate::node_authz::pod_references(new);
            if let Some((kind, _)) = refs.iter().next() {
                let kind = match *kind {
                    "serviceaccounts" => "a service account",
                    other => other,
                };
                let why = format!("node \"{node}\" can not create pods that reference {kind}");
                return Err(ApiError::admission_forbidden(rt, name, &why));
            }
        }
        ("", "Pod") if !modified_labels(new, old).is_empty() => {
            let why = format!("node \"{node}\" cannot update labels through pod status");
            return Err(ApiError::admission_forbidden(rt, name, &why));
        }
        ("", "Node") => {
            if name != node {
                let why = format!("node \"{node}\" is not allowed to modify node \"{name}\"");
                return Err(ApiError::admission_forbidden(rt, name, &why));
            }
            if let Some(old) = old
                && old["spec"]["taints"] != new["spec"]["taints"]
            {
                let why = format!("node \"{node}\" is not allowed to modify taints");
                return Err(ApiError::admission_forbidden(rt, name, &why));
            }
            let labels = forbidden_labels(&modified_labels(new, old), old.is_some());
            if !labels.is_empty() {
                let why = if old.is_some() {
                    format!("is not allowed to modify labels: {}", labels.join(", "))
                } else {
                    format!(
                        "node \"{node}\" is not allowed to set the following labels: {}",
                        labels.join(", ")
                    )
                };
                return Err(ApiError::admission_forbidden(rt, name, &why));
            }
        }
        ("coordination.k8s.io", "Lease") => {
            if meta::namespace(new) != "kube-node-lease" {
                let why = "can only access leases in the \"kube-node-lease\" system namespace";
                return Err(ApiError::admission_forbidden(rt, name, why));
            }
            if name != node {
                let why = "can only access node lease with the same name as the requesting node";
                return Err(ApiError::admission_forbidden(rt, name, why));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks a token a node requests: it must be bound, by uid, to a pod bound to the node.
/// `pod` is the pod the TokenRequest's `boundObjectRef` names (checked to exist and to match
/// the uid given, if one is).
pub fn admit_token(
    user: &UserInfo,
    rt: &ResourceType,
    name: &str,
    bound: Option<&Value>,
    pod: Option<&Value>,
) -> Result<()> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let (Some(bound), Some(pod)) = (bound, pod) else {
        return Err(ApiError::admission_forbidden(
            rt,
            name,
            "node requested token not bound to a pod",
        ));
    };
    if bound["uid"].as_str().unwrap_or("").is_empty() {
        let why = "node requested token with a pod binding without a uid";
        return Err(ApiError::admission_forbidden(rt, name, why));
    }
    if pod["spec"]["nodeName"] != node {
        let why = "node requested token bound to a pod scheduled on a different node";
        return Err(ApiError::admission_forbidden(rt, name, why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> UserInfo {
        UserInfo {
            name: format!("system:node:{name}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    fn rt(group: &str, plural: &str) -> &'static ResourceType {
        registry().find(group, "v1", plural).expect(plural)
    }

    fn message(r: Result<()>) -> String {
        r.expect_err("must be refused").message
    }

    #[test]
    fn a_node_registers_itself_with_kubelet_labels_only() {
        let nodes = rt("", "nodes");
        let me = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "node-role.kubernetes.io/control-plane": "true"}}});
        // on create only node-restriction labels are refused, as upstream
        assert!(admit_object(&node("n1"), nodes, None, &me).is_ok());
        let restricted = json!({"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/zone": "a"}}});
        assert_eq!(
            message(admit_object(&node("n1"), nodes, None, &restricted)),
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: node-restriction.kubernetes.io/zone"
        );
        let other = json!({"metadata": {"name": "n2"}});
        assert_eq!(
            message(admit_object(&node("n1"), nodes, None, &other)),
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        // unchanged labels pass on update; new kubernetes.io ones that are not kubelet's do not
        assert!(admit_object(&node("n1"), nodes, Some(&me), &me).is_ok());
        let mut relabelled = me.clone();
        relabelled["metadata"]["labels"]["node-role.kubernetes.io/worker"] = json!("true");
        relabelled["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("z");
        relabelled["metadata"]["labels"]["example.com/team"] = json!("a");
        assert_eq!(
            message(admit_object(&node("n1"), nodes, Some(&me), &relabelled)),
            "nodes \"n1\" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/worker"
        );
        let mut tainted = me.clone();
        tainted["spec"] = json!({"taints": [{"key": "k", "effect": "NoSchedule"}]});
        assert_eq!(
            message(admit_object(&node("n1"), nodes, Some(&me), &tainted)),
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints"
        );
        // other users are not this plugin's concern
        let admin = UserInfo {
            name: "admin".into(),
            groups: vec!["system:masters".into()],
        };
        assert!(admit_object(&admin, nodes, Some(&me), &tainted).is_ok());
    }

    #[test]
    fn a_node_creates_only_mirror_pods_bound_to_itself() {
        let pods = rt("", "pods");
        let plain = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        assert_eq!(
            message(admit_object(&node("n1"), pods, None, &plain)),
            "pods \"p\" is forbidden: pod does not have \"kubernetes.io/config.mirror\" annotation, node \"n1\" can only create mirror pods"
        );
        let mirror = json!({"metadata": {"name": "p", "annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"nodeName": "n1"}});
        assert!(admit_object(&node("n1"), pods, None, &mirror).is_ok());
        assert!(
            message(admit_object(&node("n2"), pods, None, &mirror))
                .ends_with("node \"n2\" can only create pods with spec.nodeName set to itself")
        );
        let mut with_secret = mirror.clone();
        with_secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "x"}}]);
        assert!(
            message(admit_object(&node("n1"), pods, None, &with_secret))
                .ends_with("can not create pods that reference secrets")
        );
    }

    #[test]
    fn leases_and_tokens() {
        let leases = rt("coordination.k8s.io", "leases");
        let own = json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"}});
        assert!(admit_object(&node("n1"), leases, None, &own).is_ok());
        assert!(
            message(admit_object(&node("n2"), leases, None, &own))
                .ends_with("can only access node lease with the same name as the requesting node")
        );
        let tokens = rt("", "serviceaccounts");
        let pod = json!({"spec": {"nodeName": "n1"}});
        let bound = json!({"kind": "Pod", "name": "p", "uid": "u"});
        assert!(admit_token(&node("n1"), tokens, "sa", Some(&bound), Some(&pod)).is_ok());
        assert!(
            message(admit_token(
                &node("n2"),
                tokens,
                "sa",
                Some(&bound),
                Some(&pod)
            ))
            .ends_with("node requested token bound to a pod scheduled on a different node")
        );
        assert!(
            message(admit_token(&node("n1"), tokens, "sa", None, None))
                .ends_with("node requested token not bound to a pod")
        );
    }
}
