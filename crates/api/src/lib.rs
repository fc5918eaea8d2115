//! The Kubernetes object model, without I/O.
//!
//! Objects travel as JSON values (`serde_json::Value`); their shape is the one of the
//! `k8s-openapi` types, which this crate uses to check and describe them. What lives here:
//!
//! - [`registry`]: every served resource (group, version, kind, plural, scope, short names,
//!   verbs, subresources) in one table, each with its [`strategy`].
//! - [`convert`]: conversion between versions that share storage.
//! - [`strategy`]: per-resource policy: defaulting, validation, what a create and an update may
//!   change.
//! - [`selector`]: label and field selectors.
//! - [`patch`] and [`patch_meta`]: strategic merge patch, with the merge keys of the types.
//! - [`managed_fields`]: field ownership for server-side apply.
//! - [`table`]: server-side printing (the columns of `kubectl get`).
//! - [`openapi`] and [`schema`]: OpenAPI documents from the types' schemas, and strict checking of
//!   objects against them.
//! - [`meta`]: reading and writing object metadata on JSON values.
//! - [`validation`]: field errors and the name rules.
//! - [`quantity`]: resource quantities (`100m`, `64Mi`) as numbers.
//! - [`quota`]: what objects use of a ResourceQuota's resources, and its scopes.
//! - [`CONTROLLER_ACCOUNTS`] and [`JOIN_GROUP`]: identities that the API server's default
//!   policy shares with the controller manager and the node agent.

pub mod convert;
pub mod defaults;
pub mod managed_fields;
pub mod meta;
pub mod openapi;
pub mod openapi_pb;
pub mod patch;
pub mod patch_meta;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod strategy;
pub mod table;
pub mod validation;

pub use registry::{ResourceType, registry};

/// The group bosun's join tokens authenticate in, besides `system:bootstrappers` (their
/// `auth-extra-groups`, written by `node::join`; the API server's default policy binds it).
pub const JOIN_GROUP: &str = "system:bootstrappers:bosun:default-node-token";

/// The service accounts in kube-system that the controllers act as, one per controller as
/// upstream names them; the API server binds each to its `system:controller:<name>` role.
/// The endpoint controller also keeps EndpointSlices (upstream's endpointslice and
/// endpointslicemirroring controllers), and the node controller also allocates pod CIDRs
/// (upstream's node-ipam-controller runs as the node controller too).
pub const CONTROLLER_ACCOUNTS: &[&str] = &[
    "namespace-controller",
    "service-account-controller",
    "root-ca-cert-publisher",
    "certificate-controller",
    "replicaset-controller",
    "replication-controller",
    "deployment-controller",
    "job-controller",
    "cronjob-controller",
    "daemon-set-controller",
    "statefulset-controller",
    "node-controller",
    "disruption-controller",
    "resourcequota-controller",
    "horizontal-pod-autoscaler",
    "endpoint-controller",
    "service-controller",
    "pod-garbage-collector",
    "generic-garbage-collector",
];
