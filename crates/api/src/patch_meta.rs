//! The patch strategies of the built-in types: which lists merge by a key, and which primitive lists
//! merge as sets. Upstream keeps these in struct tags
//! (`patchStrategy:"merge" patchMergeKey:"name"`); the `k8s-openapi` schemas do not carry them,
//! so they are listed here, keyed by the schema name of the owning type and the field.

/// How a list field is patched and how its items are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The list is replaced whole (the default).
    Atomic,
    /// Items are objects merged by the value of this key.
    MergeByKey(&'static str),
    /// Items are primitives merged as a set.
    Set,
}

/// `(owning type, field, strategy)`.
const LISTS: &[(&str, &str, ListStrategy)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        ListStrategy::Set,
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        ListStrategy::MergeByKey("uid"),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "managedFields",
        ListStrategy::Atomic,
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        ListStrategy::MergeByKey("ip"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        ListStrategy::MergeByKey("topologyKey"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "env",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        ListStrategy::MergeByKey("containerPort"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        ListStrategy::MergeByKey("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        ListStrategy::MergeByKey("devicePath"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        ListStrategy::MergeByKey("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "podIPs",
        ListStrategy::MergeByKey("ip"),
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        ListStrategy::MergeByKey("port"),
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        ListStrategy::MergeByKey("name"),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        ListStrategy::MergeByKey("type"),
    ),
];

/// The strategy of a list field of the named type.
pub fn list_strategy(type_name: &str, field: &str) -> ListStrategy {
    LISTS
        .iter()
        .find(|(t, f, _)| *t == type_name && *f == field)
        .map(|(_, _, s)| *s)
        .unwrap_or(ListStrategy::Atomic)
}
