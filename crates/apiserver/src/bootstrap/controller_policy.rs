//! The roles of the controllers, as upstream's controller policy: each controller acts as its
//! service account in kube-system (`api::CONTROLLER_ACCOUNTS`) and its
//! `system:controller:<name>` ClusterRole grants what that controller reads and writes, no more.
//! The rules follow upstream's, with `patch` added where bosun's controllers write status by a
//! merge patch rather than a replace.

use serde_json::{Value, json};

use super::{READ, cluster_binding, cluster_role, rule};

/// Writes events, as every controller does.
fn events() -> Value {
    rule(
        &["", "events.k8s.io"],
        &["events"],
        &["create", "update", "patch"],
    )
}

/// The rules of a ReplicaSet-like controller for `group`/`plural`.
fn replicas(group: &str, plural: &str) -> Vec<Value> {
    vec![
        rule(&[group], &[plural], &["get", "list", "watch", "update"]),
        rule(
            &[group],
            &[&format!("{plural}/status")],
            &["update", "patch"],
        ),
        rule(&[group], &[&format!("{plural}/finalizers")], &["update"]),
        rule(
            &[""],
            &["pods"],
            &["list", "watch", "patch", "create", "delete"],
        ),
        events(),
    ]
}

/// Every controller's role, by service account name.
fn roles() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "namespace-controller",
            vec![
                rule(&[""], &["namespaces"], &["get", "list", "watch", "delete"]),
                rule(
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                    &["update"],
                ),
                rule(
                    &["*"],
                    &["*"],
                    &["get", "list", "watch", "delete", "deletecollection"],
                ),
            ],
        ),
        (
            "service-account-controller",
            vec![
                rule(&[""], &["namespaces", "serviceaccounts"], READ),
                rule(&[""], &["serviceaccounts"], &["create"]),
                events(),
            ],
        ),
        (
            "root-ca-cert-publisher",
            vec![
                rule(&[""], &["namespaces", "configmaps"], READ),
                rule(&[""], &["configmaps"], &["create", "update"]),
                events(),
            ],
        ),
        (
            "certificate-controller",
            vec![
                rule(
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                    &["get", "list", "watch", "delete"],
                ),
                rule(
                    &["certificates.k8s.io"],
                    &[
                        "certificatesigningrequests/status",
                        "certificatesigningrequests/approval",
                    ],
                    &["update"],
                ),
                // bosun's approver also approves nodes' serving certificates (upstream
                // leaves those to an administrator)
                json!({"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
                    "resourceNames": ["kubernetes.io/kube-apiserver-client-kubelet",
                        "kubernetes.io/kubelet-serving"],
                    "verbs": ["approve"]}),
                json!({"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
                    "resourceNames": ["kubernetes.io/legacy-unknown",
                        "kubernetes.io/kube-apiserver-client",
                        "kubernetes.io/kube-apiserver-client-kubelet",
                        "kubernetes.io/kubelet-serving"],
                    "verbs": ["sign"]}),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
                events(),
            ],
        ),
        ("replicaset-controller", replicas("apps", "replicasets")),
        (
            "replication-controller",
            replicas("", "replicationcontrollers"),
        ),
        (
            "deployment-controller",
            vec![
                rule(
                    &["apps"],
                    &["deployments"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                rule(&["apps"], &["deployments/status"], &["update", "patch"]),
                rule(&["apps"], &["deployments/finalizers"], &["update"]),
                rule(
                    &["apps"],
                    &["replicasets"],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ),
                rule(&[""], &["pods"], &["get", "list", "watch", "update"]),
                events(),
            ],
        ),
        (
            // also upstream's ttl-after-finished controller: finished Jobs go after their TTL
            "job-controller",
            vec![
                rule(
                    &["batch"],
                    &["jobs"],
                    &["get", "list", "watch", "update", "patch", "delete"],
                ),
                rule(&["batch"], &["jobs/status"], &["update", "patch"]),
                rule(&["batch"], &["jobs/finalizers"], &["update"]),
                rule(
                    &[""],
                    &["pods"],
                    &["list", "watch", "create", "delete", "patch"],
                ),
                events(),
            ],
        ),
        (
            "cronjob-controller",
            vec![
                rule(
                    &["batch"],
                    &["cronjobs"],
                    &["get", "list", "watch", "update"],
                ),
                rule(&["batch"], &["cronjobs/status"], &["update", "patch"]),
                rule(&["batch"], &["cronjobs/finalizers"], &["update"]),
                rule(
                    &["batch"],
                    &["jobs"],
                    &[
                        "get", "list", "watch", "create", "update", "delete", "patch",
                    ],
                ),
                rule(&[""], &["pods"], &["list", "watch", "delete"]),
                events(),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(&["apps"], &["daemonsets"], READ),
                rule(&["apps"], &["daemonsets/status"], &["update", "patch"]),
                rule(&["apps"], &["daemonsets/finalizers"], &["update"]),
                rule(&[""], &["nodes"], &["list", "watch"]),
                rule(
                    &[""],
                    &["pods"],
                    &["list", "watch", "create", "delete", "patch"],
                ),
                rule(&[""], &["pods/binding"], &["create"]),
                rule(
                    &["apps"],
                    &["controllerrevisions"],
                    &[
                        "get", "list", "watch", "create", "delete", "update", "patch",
                    ],
                ),
                events(),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                rule(&[""], &["pods"], &["list", "watch"]),
                rule(&["apps"], &["statefulsets"], READ),
                rule(&["apps"], &["statefulsets/status"], &["update", "patch"]),
                rule(&["apps"], &["statefulsets/finalizers"], &["update"]),
                rule(
                    &[""],
                    &["pods"],
                    &["get", "create", "delete", "update", "patch"],
                ),
                rule(
                    &["apps"],
                    &["controllerrevisions"],
                    &[
                        "get", "create", "delete", "update", "patch", "list", "watch",
                    ],
                ),
                rule(
                    &[""],
                    &["persistentvolumeclaims"],
                    &["get", "create", "list", "watch", "update", "delete"],
                ),
                rule(&[""], &["pods/finalizers"], &["update"]),
                events(),
            ],
        ),
        (
            // also upstream's node-ipam-controller, which runs as the node controller
            "node-controller",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &["get", "list", "watch", "update", "delete", "patch"],
                ),
                rule(&[""], &["nodes/status"], &["patch", "update"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &["list", "watch", "get", "delete"]),
                // node heartbeats
                rule(&["coordination.k8s.io"], &["leases"], READ),
                events(),
            ],
        ),
        (
            "disruption-controller",
            vec![
                rule(&["apps"], &["deployments"], READ),
                rule(&["apps"], &["replicasets"], READ),
                rule(&[""], &["replicationcontrollers"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&["apps"], &["statefulsets"], READ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets/status"],
                    &["update", "patch"],
                ),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&["*"], &["*/scale"], &["get"]),
                events(),
            ],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers"],
                    &["get", "list", "watch"],
                ),
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                    &["update", "patch"],
                ),
                rule(&["*"], &["*/scale"], &["get", "update", "patch"]),
                rule(&[""], &["pods"], &["list"]),
                rule(&["metrics.k8s.io"], &["pods"], &["list"]),
                events(),
            ],
        ),
        (
            "resourcequota-controller",
            vec![
                rule(&["*"], &["*"], &["list", "watch"]),
                rule(&[""], &["resourcequotas/status"], &["update", "patch"]),
                events(),
            ],
        ),
        (
            // also upstream's endpointslice and endpointslicemirroring controllers
            "endpoint-controller",
            vec![
                rule(&[""], &["services", "pods", "nodes"], READ),
                rule(
                    &[""],
                    &["endpoints"],
                    &["get", "list", "watch", "create", "update", "delete"],
                ),
                rule(&[""], &["endpoints/restricted"], &["create"]),
                rule(
                    &[""],
                    &["services/finalizers", "endpoints/finalizers"],
                    &["update"],
                ),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["get", "list", "watch", "create", "update", "delete"],
                ),
                events(),
            ],
        ),
        (
            "service-controller",
            vec![
                rule(&[""], &["services"], READ),
                rule(&[""], &["services/status"], &["patch", "update"]),
                rule(&[""], &["nodes"], &["list", "watch"]),
                events(),
            ],
        ),
        (
            "pod-garbage-collector",
            vec![
                rule(&[""], &["pods"], &["list", "watch", "delete"]),
                rule(&[""], &["nodes"], READ),
                rule(&[""], &["pods/status"], &["patch"]),
            ],
        ),
        (
            "generic-garbage-collector",
            vec![
                rule(
                    &["*"],
                    &["*"],
                    &["get", "list", "watch", "patch", "update", "delete"],
                ),
                events(),
            ],
        ),
    ]
}

/// The controllers' ClusterRoles and the ClusterRoleBindings that give each to its service
/// account.
pub(super) fn roles_and_bindings() -> (Vec<Value>, Vec<Value>) {
    roles()
        .into_iter()
        .map(|(account, rules)| {
            let name = format!("system:controller:{account}");
            let subject =
                json!([{"kind": "ServiceAccount", "name": account, "namespace": "kube-system"}]);
            (
                cluster_role(&name, json!({}), rules, None),
                cluster_binding(&name, &name, subject),
            )
        })
        .unzip()
}

/// The controller manager's own role: its shared caches watch everything; it holds its Lease,
/// creates the controllers' accounts and expires events (upstream's store does that by TTL).
pub(super) fn manager_rules() -> Vec<Value> {
    vec![
        events(),
        rule(&["", "events.k8s.io"], &["events"], &["delete"]),
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": ["kube-controller-manager"], "verbs": ["get", "update"]}),
        rule(&[""], &["secrets", "serviceaccounts"], &["create"]),
        rule(&[""], &["secrets"], &["delete"]),
        rule(
            &[""],
            &["configmaps", "namespaces", "secrets", "serviceaccounts"],
            &["get"],
        ),
        rule(&[""], &["secrets", "serviceaccounts"], &["update"]),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
        rule(&["*"], &["*"], &["list", "watch"]),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_controller_account_has_a_role_and_only_those() {
        let mut roles: Vec<&str> = super::roles().into_iter().map(|(name, _)| name).collect();
        let mut accounts = api::CONTROLLER_ACCOUNTS.to_vec();
        roles.sort_unstable();
        accounts.sort_unstable();
        assert_eq!(roles, accounts);
    }
}
