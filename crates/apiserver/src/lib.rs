//! The Kubernetes API server: HTTPS with client-certificate authentication, discovery, OpenAPI,
//! and the generic REST handlers over the revisioned store.
//!
//! A request flows: TLS accept (a client certificate names the user) -> [`serve`] (health and
//! version are public; otherwise [`authn`]: certificate or service account token, then
//! impersonation) -> [`authz`] (RBAC) -> discovery and OpenAPI, or [`rest`] (verb dispatch,
//! strategy, [`admission`], validation) -> [`storage`] -> the `store` backend. Only this crate
//! knows HTTP.

pub mod admission;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod certificates;
pub mod codec;
pub mod discovery;
pub mod encryption;
pub mod limit_range;
pub mod metrics;
pub mod node_authz;
pub mod node_proxy;
pub mod node_restriction;
pub mod pki;
pub mod pod_security;
pub mod protobuf;
pub mod request;
pub mod resource_quota;
pub mod rest;
pub mod services;
pub mod status;
pub mod storage;
pub mod tls;
pub mod tokens;

/// The user of the certificate the API server calls node APIs with.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

mod bootstrap;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

pub use serve::{Loopback, Running};

/// How to run the API server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store, the CA and the kubeconfig live.
    pub data_dir: PathBuf,
    /// Address to listen on (HTTPS).
    pub bind: SocketAddr,
    /// Extra names and addresses for the serving certificate.
    pub extra_sans: Vec<String>,
    /// Whether requests without credentials run as `system:anonymous` (else they get 401).
    pub anonymous_auth: bool,
    /// A static token file (`token,user,uid,"groups"` lines).
    pub token_auth_file: Option<PathBuf>,
    /// An `audit.k8s.io/v1` Policy; with `audit_log_path`, requests are audited.
    pub audit_policy_file: Option<PathBuf>,
    /// Where audit events are appended, one JSON line each.
    pub audit_log_path: Option<PathBuf>,
    /// An `apiserver.config.k8s.io/v1` EncryptionConfiguration for encryption at rest.
    pub encryption_provider_config: Option<PathBuf>,
    /// How long a serving certificate is valid; it is renewed when a fifth remains.
    pub serving_cert_lifetime: std::time::Duration,
    /// The range Service ClusterIPs come from.
    pub service_cidr: ipnet::Ipv4Net,
    /// The range node ports come from.
    pub node_port_range: std::ops::RangeInclusive<u16>,
    /// The address pods reach this API server at (the `kubernetes` Service's endpoint).
    pub advertise_address: std::net::Ipv4Addr,
}

/// What every request handler shares.
pub struct State {
    /// The objects.
    pub storage: storage::Storage,
    /// The URL clients reach the server at.
    pub server_url: String,
    /// Signs and verifies service account tokens.
    pub tokens: tokens::TokenIssuer,
    /// Users of the static token file, by token.
    pub static_tokens: std::collections::HashMap<String, authn::UserInfo>,
    /// Whether requests without credentials run as `system:anonymous`.
    pub anonymous_auth: bool,
    /// The audit policy and log, when auditing is on.
    pub auditor: Option<audit::Auditor>,
    /// How the server calls nodes (its kubelet client certificate, the cluster CA).
    pub kubelet_client: std::sync::Arc<rustls::ClientConfig>,
    /// Where Service addresses and node ports come from.
    pub services: services::ServiceRanges,
    /// Held while a create is checked against its namespace's ResourceQuotas and charged to
    /// them, so that two creates cannot both take the last place.
    pub quota_charges: tokio::sync::Mutex<()>,
}

/// Opens the store in the data dir, makes or loads the CA, writes the admin kubeconfig, creates
/// the default namespaces, and starts serving.
pub async fn start(config: Config) -> Result<Running> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let db_path = config.data_dir.join("state.redb");
    let backend = store::embedded::Embedded::open(&db_path).with_context(|| {
        format!(
            "cannot open the store at {} (is another bosun server using this data dir?)",
            db_path.display()
        )
    })?;
    let backend: Arc<dyn store::Backend> = match &config.encryption_provider_config {
        Some(path) => Arc::new(encryption::EncryptedBackend::new(
            Arc::new(backend),
            encryption::Encryption::load(path)?,
        )),
        None => Arc::new(backend),
    };
    let storage = storage::Storage {
        backend,
        rbac: Default::default(),
    };
    bootstrap::system_namespaces(&storage).await?;
    bootstrap::system_priority_classes(&storage).await?;
    bootstrap::rbac(&storage).await?;
    let ranges = services::ServiceRanges::new(config.service_cidr, config.node_port_range.clone());
    serve::serve(config, storage, ranges).await
}
