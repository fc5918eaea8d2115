//! What the API server creates for itself at start, as upstream's apiserver does: the system
//! namespaces, the system PriorityClasses and the default RBAC policy (roles, aggregated roles,
//! bindings, and the controllers' roles in [`controller_policy`]).

mod controller_policy;

use anyhow::Result;
use serde_json::{Value, json};

use api::{meta, registry};

use crate::admission::SYSTEM_NAMESPACES;
use crate::storage::Storage;

/// Creates `default`, `kube-system`, `kube-public` and `kube-node-lease` when missing.
pub async fn system_namespaces(storage: &Storage) -> Result<()> {
    let rt = registry()
        .find("", "v1", "namespaces")
        .ok_or_else(|| anyhow::anyhow!("namespaces are not registered"))?;
    for name in SYSTEM_NAMESPACES {
        let ns = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        });
        create_missing(storage, rt, ns).await?;
    }
    Ok(())
}

/// Creates an object unless one of its name exists, as a create request would.
pub(crate) async fn create_missing(
    storage: &Storage,
    rt: &api::ResourceType,
    mut obj: Value,
) -> Result<()> {
    let name = meta::name(&obj).to_string();
    if storage.get(rt, meta::namespace(&obj), &name).await.is_ok() {
        return Ok(());
    }
    meta::set_meta(&mut obj, "uid", json!(uuid::Uuid::new_v4().to_string()));
    meta::set_meta(&mut obj, "creationTimestamp", json!(meta::now_timestamp()));
    api::defaults::apply(rt, &mut obj);
    api::strategy::prepare_for_create(rt, &mut obj);
    match storage.create(rt, obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => anyhow::bail!("cannot create {} {name}: {e}", rt.plural),
    }
}

/// Publishes the cluster's CA and address in `kube-public/cluster-info` (a kubeconfig without
/// credentials, as kubeadm does), readable without credentials, so that a joining node can
/// fetch the CA and check it against the hash its join token carries.
pub async fn cluster_info(storage: &Storage, server: &str, ca_pem: &str) -> Result<()> {
    use base64::Engine;
    let find = |plural: &str, group: &str| {
        registry()
            .find(group, "v1", plural)
            .ok_or_else(|| anyhow::anyhow!("{plural} are not registered"))
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server}\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n"
    );
    let rt = find("configmaps", "")?;
    let want = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    });
    match storage.get(rt, "kube-public", "cluster-info").await {
        Ok((mut current, rev)) if current["data"] != want["data"] => {
            current["data"] = want["data"].clone();
            storage
                .update(rt, current, rev)
                .await
                .map_err(|e| anyhow::anyhow!("cannot update kube-public/cluster-info: {e}"))?;
        }
        Ok(_) => {}
        Err(_) => create_missing(storage, rt, want).await?,
    }
    let rbac = "rbac.authorization.k8s.io";
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "bosun:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}],
    });
    create_missing(storage, find("roles", rbac)?, role).await?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "bosun:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
        "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "bosun:bootstrap-signer-clusterinfo"},
        "subjects": [{"apiGroup": rbac, "kind": "User", "name": "system:anonymous"}],
    });
    create_missing(storage, find("rolebindings", rbac)?, binding).await
}

/// Creates upstream's two system PriorityClasses when missing: `system-node-critical`
/// (2000001000) and `system-cluster-critical` (2000000000).
pub async fn system_priority_classes(storage: &Storage) -> Result<()> {
    let rt = registry()
        .find("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| anyhow::anyhow!("priorityclasses are not registered"))?;
    for (name, value, description) in [
        (
            "system-node-critical",
            2_000_001_000,
            "Used for system critical pods that must not be moved from their current node.",
        ),
        (
            "system-cluster-critical",
            2_000_000_000,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
    ] {
        let pc = json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "description": description,
        });
        create_missing(storage, rt, pc).await?;
    }
    Ok(())
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// The rules of upstream's `system:node` role: what a node agent needs. The Node authorizer
/// (`crate::node_authz`) grants them to every node, narrowed to what concerns the node itself.
pub fn node_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &["nodes"],
            &[
                "create", "get", "list", "watch", "update", "patch", "delete",
            ],
        ),
        rule(
            &[""],
            &["nodes/status", "pods/status"],
            &["patch", "update"],
        ),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch", "update"],
        ),
        rule(
            &[""],
            &["pods"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(&[""], &["services", "endpoints"], &["get", "list", "watch"]),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["get", "list", "watch"],
        ),
        // NetworkPolicy enforcement reads the policies and the namespaces' labels
        rule(
            &["networking.k8s.io"],
            &["networkpolicies"],
            &["get", "list", "watch"],
        ),
        rule(&[""], &["namespaces"], &["get", "list", "watch"]),
        rule(
            &[""],
            &[
                "secrets",
                "configmaps",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
            &["get", "list", "watch"],
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update", "patch", "delete"],
        ),
        rule(
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
            &["create", "get", "list", "watch"],
        ),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
        rule(
            &["node.k8s.io"],
            &["runtimeclasses"],
            &["get", "list", "watch"],
        ),
    ]
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn aggregate_to_view() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "pods/log",
                "pods/status",
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
                "bindings",
                "events",
                "limitranges",
                "namespaces",
                "namespaces/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["events.k8s.io"], &["events"], READ),
        rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
    ]
}

fn aggregate_to_edit() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
    ]
}

fn aggregate_to_admin() -> Vec<Value> {
    vec![
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
            api::registry::ALL_VERBS,
        ),
    ]
}

fn cluster_role(
    name: &str,
    labels: Value,
    rules: Vec<Value>,
    aggregate_from: Option<&str>,
) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    });
    if let Some(label) = aggregate_from {
        role["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
    }
    role
}

fn cluster_binding(name: &str, role: &str, subjects: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

/// The default roles and bindings of upstream's bootstrap policy (those bosun serves).
fn default_policy() -> (Vec<Value>, Vec<Value>) {
    const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";
    let view_rules = aggregate_to_view();
    let mut edit_rules = aggregate_to_edit();
    edit_rules.extend(view_rules.clone());
    let mut admin_rules = aggregate_to_admin();
    admin_rules.extend(edit_rules.clone());
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
            None,
        ),
        cluster_role(
            "admin",
            json!({}),
            admin_rules,
            Some(&format!("{AGG}admin")),
        ),
        cluster_role(
            "edit",
            json!({format!("{AGG}admin"): "true"}),
            edit_rules,
            Some(&format!("{AGG}edit")),
        ),
        cluster_role(
            "view",
            json!({format!("{AGG}edit"): "true"}),
            view_rules.clone(),
            Some(&format!("{AGG}view")),
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({format!("{AGG}admin"): "true"}),
            aggregate_to_admin(),
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({format!("{AGG}edit"): "true"}),
            aggregate_to_edit(),
            None,
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({format!("{AGG}view"): "true"}),
            view_rules,
            None,
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/readyz",
                    "/openapi",
                    "/openapi/*",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
            None,
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
            None,
        ),
        // the controller manager's own identity; each controller has its own role
        cluster_role(
            "system:kube-controller-manager",
            json!({}),
            controller_policy::manager_rules(),
            None,
        ),
        // the built-in Ingress controller (controllers::ingress): it reads Ingresses and what
        // they lead to, TLS Secrets included, as traefik's role in k3s does, installs its class
        // and Service, and publishes where Ingresses are served
        cluster_role(
            "system:bosun-ingress-controller",
            json!({}),
            vec![
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingressclasses"],
                    READ,
                ),
                rule(&["networking.k8s.io"], &["ingressclasses"], &["create"]),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                    &["patch", "update"],
                ),
                rule(&[""], &["services", "secrets"], READ),
                rule(&[""], &["services"], &["create"]),
                rule(&[""], &["endpoints"], &["get", "create", "patch", "update"]),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
            ],
            None,
        ),
        // the scheduler: it reads pods and nodes, binds pods and reports those it cannot place
        cluster_role(
            "system:kube-scheduler",
            json!({}),
            vec![
                rule(
                    &[""],
                    &[
                        "pods",
                        "nodes",
                        "namespaces",
                        "services",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                    ],
                    &["get", "list", "watch"],
                ),
                rule(&[""], &["pods/binding", "bindings"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                // preemption deletes the pods it evicts
                rule(&[""], &["pods"], &["delete"]),
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "update"],
                ),
                rule(
                    &["apps"],
                    &["replicasets", "statefulsets"],
                    &["get", "list", "watch"],
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets"],
                    &["get", "list", "watch"],
                ),
                rule(
                    &["storage.k8s.io"],
                    &[
                        "storageclasses",
                        "csinodes",
                        "csidrivers",
                        "csistoragecapacities",
                    ],
                    &["get", "list", "watch"],
                ),
            ],
            None,
        ),
        // what a node agent (kubelet) needs, as upstream's `system:node` role grants it
        cluster_role("system:node", json!({}), node_rules(), None),
        // joining nodes: ask for a client certificate, and have it approved
        cluster_role(
            "system:node-bootstrapper",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
            None,
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
                &["create"],
            )],
            None,
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
                &["create"],
            )],
            None,
        ),
    ];
    let mut bindings = vec![
        // left without subjects, as upstream: the Node authorizer grants nodes what they need
        cluster_binding("system:node", "system:node", json!([])),
        cluster_binding(
            "cluster-admin",
            "cluster-admin",
            json!([group("system:masters")]),
        ),
        // what kubeadm binds for its join tokens, for bosun's (`bosun token create`)
        cluster_binding(
            "bosun:node-bootstrapper",
            "system:node-bootstrapper",
            json!([group(api::JOIN_GROUP)]),
        ),
        cluster_binding(
            "bosun:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!([group(api::JOIN_GROUP)]),
        ),
        cluster_binding(
            "bosun:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!([group("system:nodes")]),
        ),
        cluster_binding(
            "system:discovery",
            "system:discovery",
            json!([group("system:authenticated")]),
        ),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            json!([group("system:authenticated")]),
        ),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            json!([
                group("system:authenticated"),
                group("system:unauthenticated")
            ]),
        ),
        cluster_binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            json!([user("system:kube-controller-manager")]),
        ),
        cluster_binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            json!([user("system:kube-scheduler")]),
        ),
        cluster_binding(
            "system:bosun-ingress-controller",
            "system:bosun-ingress-controller",
            json!([user("system:bosun-ingress-controller")]),
        ),
    ];
    let (controller_roles, controller_bindings) = controller_policy::roles_and_bindings();
    roles.extend(controller_roles);
    bindings.extend(controller_bindings);
    (roles, bindings)
}

/// Creates the default roles and bindings, and brings those marked for auto-update back to the
/// default, as upstream reconciles its bootstrap policy at start.
pub async fn rbac(storage: &Storage) -> Result<()> {
    let (roles, bindings) = default_policy();
    for (plural, objects) in [("clusterroles", roles), ("clusterrolebindings", bindings)] {
        let rt = registry()
            .find("rbac.authorization.k8s.io", "v1", plural)
            .ok_or_else(|| anyhow::anyhow!("{plural} are not registered"))?;
        for mut obj in objects {
            let name = meta::name(&obj).to_string();
            match storage.get(rt, "", &name).await {
                Ok((current, rev)) => {
                    let auto = meta::lookup(&current, "metadata.annotations")
                        .and_then(|a| a.get("rbac.authorization.kubernetes.io/autoupdate"))
                        == Some(&json!("true"));
                    let drifted = ["rules", "subjects", "roleRef", "aggregationRule"]
                        .iter()
                        .any(|k| current.get(*k) != obj.get(*k));
                    if auto && drifted {
                        let mut updated = current.clone();
                        for k in ["rules", "subjects", "roleRef", "aggregationRule"] {
                            if let Some(v) = obj.get(k) {
                                updated[k] = v.clone();
                            }
                        }
                        storage.update(rt, updated, rev).await.map_err(|e| {
                            anyhow::anyhow!("cannot reconcile {plural}/{name}: {e}")
                        })?;
                    }
                }
                Err(_) => {
                    meta::set_meta(&mut obj, "uid", json!(uuid::Uuid::new_v4().to_string()));
                    meta::set_meta(&mut obj, "creationTimestamp", json!(meta::now_timestamp()));
                    api::strategy::prepare_for_create(rt, &mut obj);
                    match storage.create(rt, obj).await {
                        Ok(_) => {}
                        Err(e) if e.reason == "AlreadyExists" => {}
                        Err(e) => anyhow::bail!("cannot create {plural}/{name}: {e}"),
                    }
                }
            }
        }
    }
    Ok(())
}
