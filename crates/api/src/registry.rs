//! The resource registry: one row per served resource. Group, version, kind, plural and scope
//! come from the `k8s-openapi` type itself; the row adds what the type does not know (short
//! names, categories, subresources). Adding a resource is adding a row.

use std::collections::HashMap;
use std::sync::OnceLock;

use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The verbs of a resource that supports everything.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Whether a `k8s-openapi` scope marker is namespaced.
pub trait Scope {
    /// True for namespaced resources.
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A served resource.
#[derive(Clone)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// The list kind, e.g. `PodList`.
    pub list_kind: &'static str,
    /// Plural resource name, e.g. `pods`.
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names for kubectl, e.g. `po`.
    pub short_names: &'static [&'static str],
    /// Categories, e.g. `all`.
    pub categories: &'static [&'static str],
    /// Subresources served besides the object itself, e.g. `status`, `scale`.
    pub subresources: &'static [&'static str],
    /// The name of the type's schema (`io.k8s.api.core.v1.Pod`).
    pub schema_name: String,
    /// Adds the type's schema (and those it refers to) to a generator.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Decodes a JSON object into the typed struct, to catch values of the wrong type.
    pub decode: fn(&Value) -> Result<(), String>,
    /// The verbs the resource serves.
    pub verbs: &'static [&'static str],
    /// The `apiVersion` whose row stores this resource, when another version does (objects are
    /// converted on the way in and out, see [`crate::convert`]).
    pub stored_as: Option<&'static str>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.gvr())
    }
}

impl ResourceType {
    fn of<K>(
        short_names: &'static [&'static str],
        categories: &'static [&'static str],
        subresources: &'static [&'static str],
    ) -> Self
    where
        K: Resource + ListableResource + JsonSchema + DeserializeOwned,
        K::Scope: Scope,
    {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            list_kind: K::LIST_KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: <K::Scope as Scope>::NAMESPACED,
            short_names,
            categories,
            subresources,
            schema_name: K::schema_name().into_owned(),
            schema: |generator| generator.subschema_for::<K>(),
            decode: |v| K::deserialize(v).map(|_| ()).map_err(|e| e.to_string()),
            verbs: ALL_VERBS,
            stored_as: None,
        }
    }

    /// A resource that is only ever created and answered, never stored (reviews).
    fn create_only<K>(namespaced: bool) -> Self
    where
        K: Resource + JsonSchema + DeserializeOwned,
    {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            list_kind: "",
            plural: K::URL_PATH_SEGMENT,
            namespaced,
            short_names: &[],
            categories: &[],
            subresources: &[],
            schema_name: K::schema_name().into_owned(),
            schema: |generator| generator.subschema_for::<K>(),
            decode: |v| K::deserialize(v).map(|_| ()).map_err(|e| e.to_string()),
            verbs: &["create"],
            stored_as: None,
        }
    }

    /// Whether objects of this resource are stored (reviews are not).
    pub fn is_stored(&self) -> bool {
        self.verbs.len() > 1
    }

    fn stored_as(mut self, api_version: &'static str) -> Self {
        self.stored_as = Some(api_version);
        self
    }

    /// `apiVersion` as written in objects (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The singular name, lower-case kind.
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    /// `plural.group` (`deployments.apps`), or the plural for the core group.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `group/version, Resource=plural`, for logs.
    pub fn gvr(&self) -> String {
        format!("{}, Resource={}", self.api_version(), self.plural)
    }

    /// Whether the resource serves the named subresource.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// The store key prefix of all objects of this resource (ends with `/`): the prefix of the
    /// version it is stored as.
    pub fn key_prefix(&self) -> String {
        let group = match self.stored_as {
            Some(v) => v.split_once('/').map_or("", |(g, _)| g),
            None => self.group,
        };
        let group = if group.is_empty() { "core" } else { group };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key prefix of the objects in one namespace (ends with `/`); all objects when
    /// `namespace` is empty.
    pub fn namespace_prefix(&self, namespace: &str) -> String {
        if self.namespaced && !namespace.is_empty() {
            format!("{}{namespace}/", self.key_prefix())
        } else {
            self.key_prefix()
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        format!("{}{name}", self.namespace_prefix(namespace))
    }
}

/// Every served resource.
#[derive(Debug)]
pub struct Registry {
    /// The rows, in discovery order.
    pub resources: Vec<ResourceType>,
    /// The row of each group, version and plural: every request looks its resource up.
    index: HashMap<(&'static str, &'static str, &'static str), usize>,
}

impl Registry {
    /// The resource with this group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        let i = self.index.get(&(group, version, plural))?;
        Some(&self.resources[*i])
    }

    /// The row that stores a resource: its own, or the version it is stored as.
    pub fn storage_row<'a>(&'a self, rt: &'a ResourceType) -> &'a ResourceType {
        rt.stored_as
            .and_then(|v| self.by_kind(v, rt.kind))
            .unwrap_or(rt)
    }

    /// The resource for an `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
    }

    /// The served group versions, core first, in the order of first appearance.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for r in &self.resources {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }
}

/// The registry of built-in resources.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(build)
}

fn build() -> Registry {
    use k8s_openapi::api::{
        apps::v1 as apps, authentication::v1 as authentication, authorization::v1 as authorization,
        autoscaling::v1 as autoscaling_v1, autoscaling::v2 as autoscaling, batch::v1 as batch,
        certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
        policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling,
        storage::v1 as storage,
    };
    const ALL: &[&str] = &["all"];
    const NONE: &[&str] = &[];
    const STATUS: &[&str] = &["status"];
    const SCALE: &[&str] = &["status", "scale"];
    let resources = vec![
        ResourceType::of::<core::Namespace>(&["ns"], NONE, &["status", "finalize"]),
        ResourceType::of::<core::Pod>(
            &["po"],
            ALL,
            &[
                "status",
                "binding",
                "log",
                "exec",
                "attach",
                "portforward",
                "eviction",
            ],
        ),
        ResourceType::of::<core::Service>(&["svc"], ALL, &["status", "proxy"]),
        ResourceType::of::<core::Endpoints>(&["ep"], NONE, NONE),
        ResourceType::of::<core::ConfigMap>(&["cm"], NONE, NONE),
        ResourceType::of::<core::Secret>(NONE, NONE, NONE),
        ResourceType::of::<core::ServiceAccount>(&["sa"], NONE, &["token"]),
        ResourceType::of::<core::Event>(&["ev"], NONE, NONE),
        ResourceType::of::<core::Node>(&["no"], NONE, &["status", "proxy"]),
        ResourceType::of::<core::LimitRange>(&["limits"], NONE, NONE),
        ResourceType::of::<core::ResourceQuota>(&["quota"], NONE, STATUS),
        ResourceType::of::<core::PersistentVolume>(&["pv"], NONE, STATUS),
        ResourceType::of::<core::PersistentVolumeClaim>(&["pvc"], NONE, STATUS),
        ResourceType::of::<core::ReplicationController>(&["rc"], ALL, SCALE),
        ResourceType::of::<apps::Deployment>(&["deploy"], ALL, SCALE),
        ResourceType::of::<apps::ReplicaSet>(&["rs"], ALL, SCALE),
        ResourceType::of::<apps::DaemonSet>(&["ds"], ALL, STATUS),
        ResourceType::of::<apps::StatefulSet>(&["sts"], ALL, SCALE),
        ResourceType::of::<apps::ControllerRevision>(NONE, NONE, NONE),
        ResourceType::of::<batch::Job>(NONE, ALL, STATUS),
        ResourceType::of::<batch::CronJob>(&["cj"], ALL, STATUS),
        ResourceType::of::<autoscaling::HorizontalPodAutoscaler>(&["hpa"], ALL, STATUS),
        ResourceType::of::<autoscaling_v1::HorizontalPodAutoscaler>(&["hpa"], ALL, STATUS)
            .stored_as("autoscaling/v2"),
        ResourceType::of::<rbac::Role>(NONE, NONE, NONE),
        ResourceType::of::<rbac::RoleBinding>(NONE, NONE, NONE),
        ResourceType::of::<rbac::ClusterRole>(NONE, NONE, NONE),
        ResourceType::of::<rbac::ClusterRoleBinding>(NONE, NONE, NONE),
        ResourceType::of::<networking::Ingress>(&["ing"], NONE, STATUS),
        ResourceType::of::<networking::IngressClass>(NONE, NONE, NONE),
        ResourceType::of::<networking::NetworkPolicy>(&["netpol"], NONE, NONE),
        ResourceType::of::<policy::PodDisruptionBudget>(&["pdb"], NONE, STATUS),
        ResourceType::of::<coordination::Lease>(NONE, NONE, NONE),
        ResourceType::of::<discovery::EndpointSlice>(NONE, NONE, NONE),
        ResourceType::of::<storage::StorageClass>(&["sc"], NONE, NONE),
        ResourceType::of::<scheduling::PriorityClass>(&["pc"], NONE, NONE),
        ResourceType::of::<events::Event>(&["ev"], NONE, NONE).stored_as("v1"),
        ResourceType::of::<certificates::CertificateSigningRequest>(
            &["csr"],
            NONE,
            &["status", "approval"],
        ),
        ResourceType::create_only::<authentication::SelfSubjectReview>(false),
        ResourceType::create_only::<authentication::TokenReview>(false),
        ResourceType::create_only::<authorization::SelfSubjectAccessReview>(false),
        ResourceType::create_only::<authorization::SelfSubjectRulesReview>(false),
        ResourceType::create_only::<authorization::SubjectAccessReview>(false),
        ResourceType::create_only::<authorization::LocalSubjectAccessReview>(true),
    ];
    let index = resources
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.group, r.version, r.plural), i))
        .collect();
    Registry { resources, index }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_the_types() {
        let r = registry();
        let deploy = r.find("apps", "v1", "deployments").expect("deployments");
        assert_eq!(deploy.kind, "Deployment");
        assert_eq!(deploy.list_kind, "DeploymentList");
        assert!(deploy.namespaced);
        assert!(deploy.has_subresource("scale"));
        assert_eq!(deploy.key("ns", "web"), "/registry/apps/deployments/ns/web");
        let ns = r.find("", "v1", "namespaces").expect("namespaces");
        assert!(!ns.namespaced);
        assert_eq!(ns.key("", "default"), "/registry/core/namespaces/default");
        assert_eq!(ns.schema_name, "io.k8s.api.core.v1.Namespace");
        assert!(r.by_kind("v1", "ConfigMap").is_some());
        let ev = r
            .by_kind("events.k8s.io/v1", "Event")
            .expect("events.k8s.io");
        assert_eq!(ev.key_prefix(), "/registry/core/events/");
        assert_eq!(r.storage_row(ev).api_version(), "v1");
    }

    #[test]
    fn decode_catches_wrong_types() {
        let cm = registry().by_kind("v1", "ConfigMap").expect("cm");
        assert!((cm.decode)(&serde_json::json!({"data": {"a": "b"}})).is_ok());
        assert!((cm.decode)(&serde_json::json!({"data": {"a": 1}})).is_err());
    }
}
