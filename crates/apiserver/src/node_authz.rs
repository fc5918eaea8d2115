//! The Node authorizer: what a node agent (user `system:node:NAME` in group `system:nodes`) may
//! do, as upstream's Node authorizer decides it. Secrets, ConfigMaps and PersistentVolumeClaims
//! only when a pod bound to the node uses them, and only one by one (a get, or a list or watch
//! selecting the object by `metadata.name`); service account tokens only for the accounts such
//! pods run as; only the node's own Lease; everything else as the rules of upstream's
//! `system:node` role. What it does not allow goes on to RBAC, as upstream chains
//! `Node,RBAC`. What a node may change of the objects it may write is NodeRestriction's
//! concern (`crate::node_restriction`).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::Value;

use crate::authn::UserInfo;
use crate::authz::{Attributes, rule_allows};
use crate::status::Result;
use crate::storage::Storage;

/// The namespace of the nodes' heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is, if the user is a node agent.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == "system:nodes")).then_some(name)
}

/// Objects a pod uses: kind (`secrets`, `configmaps`, `persistentvolumeclaims`,
/// `serviceaccounts`) and name.
pub fn pod_references(pod: &Value) -> BTreeSet<(&'static str, String)> {
    let mut out = BTreeSet::new();
    let spec = &pod["spec"];
    let mut add = |kind: &'static str, name: &Value| {
        if let Some(n) = name.as_str().filter(|n| !n.is_empty()) {
            out.insert((kind, n.to_string()));
        }
    };
    add(
        "serviceaccounts",
        spec.get("serviceAccountName").unwrap_or(&Value::Null),
    );
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add("secrets", &s["name"]);
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add("secrets", &v["secret"]["secretName"]);
        add("configmaps", &v["configMap"]["name"]);
        add(
            "persistentvolumeclaims",
            &v["persistentVolumeClaim"]["claimName"],
        );
        for source in v["projected"]["sources"].as_array().into_iter().flatten() {
            add("secrets", &source["secret"]["name"]);
            add("configmaps", &source["configMap"]["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add("secrets", &e["valueFrom"]["secretKeyRef"]["name"]);
                add("configmaps", &e["valueFrom"]["configMapKeyRef"]["name"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add("secrets", &e["secretRef"]["name"]);
                add("configmaps", &e["configMapRef"]["name"]);
            }
        }
    }
    out
}

/// Whether a pod bound to `node` in `namespace` uses the object `kind`/`name`.
async fn used_by_node(
    storage: &Storage,
    node: &str,
    namespace: &str,
    kind: &'static str,
    name: &str,
) -> Result<bool> {
    let Some(rt) = api::registry().find("", "v1", "pods") else {
        return Ok(false);
    };
    let wanted = (kind, name.to_string());
    Ok(storage.list_in(rt, namespace).await?.iter().any(|pod| {
        pod["spec"]["nodeName"].as_str() == Some(node) && pod_references(pod).contains(&wanted)
    }))
}

/// The rules every node gets, those of upstream's `system:node` role.
fn node_rules() -> &'static [Value] {
    static RULES: OnceLock<Vec<Value>> = OnceLock::new();
    RULES.get_or_init(crate::bootstrap::node_rules)
}

/// Resources a node reads only as far as its pods use them.
fn used_resource(a: &Attributes) -> Option<&'static str> {
    if !a.group.is_empty() {
        return None;
    }
    match (a.resource.as_str(), a.subresource.as_str()) {
        ("secrets", "") => Some("secrets"),
        ("configmaps", "") => Some("configmaps"),
        ("persistentvolumeclaims", "") => Some("persistentvolumeclaims"),
        ("serviceaccounts", "token") => Some("serviceaccounts"),
        _ => None,
    }
}

/// Whether the Node authorizer allows `node` the request.
pub async fn allows(storage: &Storage, node: &str, a: &Attributes) -> Result<bool> {
    if let Some(kind) = used_resource(a) {
        let verb_ok = if kind == "serviceaccounts" {
            a.verb == "create"
        } else {
            matches!(a.verb.as_str(), "get" | "list" | "watch")
        };
        if !verb_ok || a.name.is_empty() || a.namespace.is_empty() {
            return Ok(false);
        }
        return used_by_node(storage, node, &a.namespace, kind, &a.name).await;
    }
    if a.group.is_empty() && a.resource == "persistentvolumes" {
        // reachable only through a claim; bosun has no persistent volumes of its own yet
        return Ok(false);
    }
    if a.group == "coordination.k8s.io" && a.resource == "leases" {
        let verb_ok = matches!(
            a.verb.as_str(),
            "get" | "create" | "update" | "patch" | "delete"
        );
        let name_ok = a.name == node || (a.verb == "create" && a.name.is_empty());
        return Ok(verb_ok && name_ok && a.namespace == LEASE_NAMESPACE);
    }
    Ok(node_rules().iter().any(|r| rule_allows(r, a)))
}

/// Why upstream says a node was refused an object it reads through its pods.
pub fn denial_reason(user: &UserInfo, a: &Attributes) -> Option<String> {
    let node = node_name(user)?;
    used_resource(a)?;
    Some(if a.name.is_empty() {
        format!("can only {} a single named {} object", a.verb, a.resource)
    } else {
        format!("no relationship found between node '{node}' and this object")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_is_a_system_node_user_in_the_nodes_group() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(
            node_name(&user("system:node:n1", &["system:nodes"])),
            Some("n1")
        );
        assert_eq!(
            node_name(&user("system:node:n1", &["system:masters"])),
            None
        );
        assert_eq!(node_name(&user("alice", &["system:nodes"])), None);
        assert_eq!(node_name(&user("system:node:", &["system:nodes"])), None);
    }

    #[test]
    fn references_of_a_pod() {
        let pod = json!({"spec": {
            "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "d", "projected": {"sources": [
                    {"configMap": {"name": "kube-root-ca.crt"}},
                    {"secret": {"name": "proj-secret"}},
                    {"serviceAccountToken": {"path": "token"}}
                ]}},
                {"name": "e", "emptyDir": {}}
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "init-cm"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                {"name": "C", "value": "plain"}
            ], "envFrom": [{"secretRef": {"name": "from-secret"}}]}]
        }});
        let refs = pod_references(&pod);
        let refs: Vec<(&str, &str)> = refs.iter().map(|(k, n)| (*k, n.as_str())).collect();
        assert_eq!(
            refs,
            vec![
                ("configmaps", "env-cm"),
                ("configmaps", "init-cm"),
                ("configmaps", "kube-root-ca.crt"),
                ("configmaps", "vol-cm"),
                ("persistentvolumeclaims", "claim"),
                ("secrets", "env-secret"),
                ("secrets", "from-secret"),
                ("secrets", "proj-secret"),
                ("secrets", "pull"),
                ("secrets", "vol-secret"),
                ("serviceaccounts", "sa"),
            ]
        );
    }
}
