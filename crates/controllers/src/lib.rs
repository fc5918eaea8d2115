//! The controllers of the control plane. Each is a watch-and-reconcile loop built on
//! kube-runtime's `Controller` (informer cache, work queue, retries with back-off), reads and
//! writes the cluster only through the Kubernetes API, and lives in its own module:
//!
//! - [`namespace`]: empties a namespace that is being deleted, then finalizes it.
//! - [`serviceaccount`]: every namespace has a `default` service account.
//! - [`root_ca`]: every namespace has the `kube-root-ca.crt` ConfigMap with the cluster CA.
//! - [`csr_signer`]: approved client certificate requests are signed by the cluster CA.

pub mod csr_signer;
pub mod namespace;
pub mod root_ca;
pub mod serviceaccount;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::Action;

/// Why a reconcile failed; every error is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused or failed a request.
    #[error("api request failed: {0}")]
    Api(#[from] kube::Error),
    /// The namespace still has content; it is looked at again shortly.
    #[error("namespace {0} still has content")]
    ContentRemaining(String),
}

/// The result of a reconcile.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every reconciler shares.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// The cluster CA certificate, PEM, published into every namespace.
    pub ca_pem: String,
    /// Signs a client certificate request (PEM) for a number of seconds; the CA's key stays with
    /// whoever provides this.
    pub sign_client_csr: Option<Signer>,
}

/// Signs a certificate signing request (PEM) valid for some seconds, returning the certificate.
pub type Signer = Arc<dyn Fn(&str, i64) -> anyhow::Result<String> + Send + Sync>;

/// Retries a failed reconcile after a short pause (the work queue adds its own back-off).
pub fn retry<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::ContentRemaining(_) => Action::requeue(Duration::from_millis(500)),
        Error::Api(e) => {
            tracing::warn!(error = %e, "reconcile failed");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

/// Runs every controller until one of them stops.
pub fn start(
    client: kube::Client,
    ca_pem: String,
    sign_client_csr: Option<Signer>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let ctx = Arc::new(Context {
        client,
        ca_pem,
        sign_client_csr,
    });
    tokio::spawn(async move {
        let stopped = tokio::select! {
            _ = namespace::run(ctx.clone()) => "namespace",
            _ = serviceaccount::run(ctx.clone()) => "serviceaccount",
            _ = root_ca::run(ctx.clone()) => "root-ca",
            _ = csr_signer::run(ctx.clone()) => "csr-signer",
        };
        anyhow::bail!("the {stopped} controller stopped")
    })
}

/// Creates an object in a namespace, accepting that it already exists or that the namespace
/// has begun terminating meanwhile (the next reconcile sees the new state).
pub(crate) async fn create_in_namespace<K>(api: &kube::Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&kube::api::PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Drives a controller's result stream, logging failures.
pub(crate) async fn drive<S, T, E>(name: &'static str, stream: S)
where
    S: futures::Stream<Item = std::result::Result<T, E>>,
    E: std::fmt::Debug,
{
    stream
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = name, error = ?e, "reconcile error");
            }
        })
        .await;
}
