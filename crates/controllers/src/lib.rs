//! The controllers of the control plane. Each is a watch-and-reconcile loop built on
//! kube-runtime's `Controller` (informer cache, work queue, retries with back-off), reads and
//! writes the cluster only through the Kubernetes API, and lives in its own module:
//!
//! - [`namespace`]: empties a namespace that is being deleted, then finalizes it.
//! - [`serviceaccount`]: every namespace has a `default` service account.
//! - [`root_ca`]: every namespace has the `kube-root-ca.crt` ConfigMap with the cluster CA.
//! - [`csr_signer`]: approved client certificate requests are signed by the cluster CA.
//! - [`csr_approver`]: node agents' certificate requests are approved.
//! - [`replicaset`]: a ReplicaSet keeps its number of pods.
//! - [`deployment`]: a Deployment rolls its template out through ReplicaSets.
//! - [`job`]: a Job runs pods to completion; [`cronjob`] makes Jobs on a [`cron`] schedule.
//! - [`daemonset`]: a pod on every eligible node; [`statefulset`]: pods with stable names,
//!   both keeping their template history as ControllerRevisions ([`revisions`]).
//! - [`node_lifecycle`]: silent nodes turn Unknown and are tainted; their pods are evicted.
//! - [`node_ipam`]: nodes without a pod CIDR get one from the cluster CIDR.
//! - [`endpoints`]: Services' Endpoints and EndpointSlices from the pods they select, and
//!   user-written Endpoints mirrored into slices.
//! - [`service_lb`]: LoadBalancer Services get the nodes' addresses, as k3s's servicelb.
//! - [`disruption`]: PodDisruptionBudgets' status, which evictions (`kubectl drain`) obey.
//! - [`cleanup`]: events expire after an hour; finished pods beyond 12,500 go.
//! - [`garbage_collector`]: dependents follow their owners out (background, foreground, orphan).
//!
//! They run only while this server holds the `kube-controller-manager` Lease ([`leader`]).
//! The workload controllers share one watch and cache per kind ([`informer`]), remember their
//! own writes until the cache shows them ([`expectations`]) and record events through one
//! [`events::Recorder`].

pub mod cleanup;
pub mod cron;
pub mod cronjob;
pub mod csr_approver;
pub mod csr_signer;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod expectations;
pub mod garbage_collector;
pub mod informer;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod pods;
pub mod replicaset;
pub mod revisions;
pub mod rollout;
pub mod root_ca;
pub mod service_lb;
pub mod serviceaccount;
pub mod statefulset;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::runtime::controller::Action;

use crate::informer::Informer;

/// Why a reconcile failed; every error is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused or failed a request.
    #[error("api request failed: {0}")]
    Api(#[from] kube::Error),
    /// The namespace still has content; it is looked at again shortly.
    #[error("namespace {0} still has content")]
    ContentRemaining(String),
    /// Another object already has the name a Deployment's new ReplicaSet would get.
    #[error("replica set name {0} is taken; trying the next collision count")]
    HashCollision(String),
}

/// The result of a reconcile.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every reconciler shares.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// The cluster CA certificate, PEM, published into every namespace.
    pub ca_pem: String,
    /// Signs a certificate request (PEM) for a number of seconds, for client or server use; the
    /// CA's key stays with whoever provides this.
    pub sign_csr: Option<Signer>,
    /// The shared caches of the kinds the workload controllers read.
    pub informers: Informers,
    /// Writes the workload controllers made that their caches do not show yet.
    pub expectations: expectations::Expectations,
    /// Where events go.
    pub events: events::Recorder,
}

/// One shared informer per kind.
pub struct Informers {
    /// Every pod.
    pub pods: Arc<Informer<Pod>>,
    /// Every ReplicaSet.
    pub replicasets: Arc<Informer<ReplicaSet>>,
    /// Every ReplicationController.
    pub replicationcontrollers: Arc<Informer<ReplicationController>>,
    /// Every Deployment.
    pub deployments: Arc<Informer<Deployment>>,
    /// Every Job.
    pub jobs: Arc<Informer<Job>>,
    /// Every CronJob.
    pub cronjobs: Arc<Informer<CronJob>>,
    /// Every DaemonSet.
    pub daemonsets: Arc<Informer<DaemonSet>>,
    /// Every StatefulSet.
    pub statefulsets: Arc<Informer<StatefulSet>>,
    /// Every ControllerRevision.
    pub revisions: Arc<Informer<ControllerRevision>>,
    /// Every node.
    pub nodes: Arc<Informer<Node>>,
    /// Every PodDisruptionBudget.
    pub budgets: Arc<Informer<PodDisruptionBudget>>,
    /// Every Service.
    pub services: Arc<Informer<Service>>,
    /// Every Endpoints.
    pub endpoints: Arc<Informer<Endpoints>>,
    /// Every EndpointSlice.
    pub endpointslices: Arc<Informer<EndpointSlice>>,
}

impl Informers {
    fn start(client: &kube::Client) -> Self {
        Self {
            pods: Informer::start_indexed(Api::all(client.clone()), Some(pods::index_keys)),
            replicasets: Informer::start(Api::all(client.clone())),
            replicationcontrollers: Informer::start(Api::all(client.clone())),
            deployments: Informer::start(Api::all(client.clone())),
            jobs: Informer::start(Api::all(client.clone())),
            cronjobs: Informer::start(Api::all(client.clone())),
            daemonsets: Informer::start(Api::all(client.clone())),
            statefulsets: Informer::start(Api::all(client.clone())),
            revisions: Informer::start(Api::all(client.clone())),
            nodes: Informer::start(Api::all(client.clone())),
            budgets: Informer::start(Api::all(client.clone())),
            services: Informer::start(Api::all(client.clone())),
            endpoints: Informer::start(Api::all(client.clone())),
            endpointslices: Informer::start(Api::all(client.clone())),
        }
    }

    async fn ready(&self) {
        self.pods.ready().await;
        self.replicasets.ready().await;
        self.replicationcontrollers.ready().await;
        self.deployments.ready().await;
        self.jobs.ready().await;
        self.cronjobs.ready().await;
        self.daemonsets.ready().await;
        self.statefulsets.ready().await;
        self.revisions.ready().await;
        self.nodes.ready().await;
        self.budgets.ready().await;
        self.services.ready().await;
        self.endpoints.ready().await;
        self.endpointslices.ready().await;
    }
}

/// Signs a certificate signing request (PEM) valid for some seconds, returning the certificate.
pub type Signer = Arc<dyn Fn(&str, i64, Usage) -> anyhow::Result<String> + Send + Sync>;

/// What a signed certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A client of the API server (client auth).
    Client,
    /// A server, such as a node agent's API (server auth).
    Server,
}

/// Retries a failed reconcile after a short pause (the work queue adds its own back-off).
pub fn retry<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::ContentRemaining(_) => Action::requeue(Duration::from_millis(500)),
        Error::Api(kube::Error::Api(e)) if e.code == 409 => {
            // Written meanwhile: look again as soon as the cache has caught up.
            Action::requeue(Duration::from_millis(200))
        }
        Error::HashCollision(_) => Action::requeue(Duration::from_millis(200)),
        Error::Api(e) => {
            tracing::warn!(error = %e, "reconcile failed");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

/// Runs every controller until one of them stops. Nodes get pod CIDRs from `cluster_cidr`
/// when given.
pub fn start(
    client: kube::Client,
    ca_pem: String,
    sign_csr: Option<Signer>,
    cluster_cidr: Option<ipnet::Ipv4Net>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        // One identity per machine: a server restarted on the same machine takes its Lease
        // back at once instead of waiting for it to expire.
        let identity = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "bosun".into());
        let elector = leader::Elector::new(client.clone(), "kube-controller-manager", identity);
        elector.acquire().await;
        let ctx = Arc::new(Context {
            informers: Informers::start(&client),
            events: events::Recorder::new(client.clone()),
            expectations: Default::default(),
            client,
            ca_pem,
            sign_csr,
        });
        let workloads = async {
            ctx.informers.ready().await;
            tokio::select! {
                _ = replicaset::run::<ReplicaSet>(ctx.clone()) => "replicaset",
                _ = replicaset::run::<ReplicationController>(ctx.clone()) => "replicationcontroller",
                _ = deployment::run(ctx.clone()) => "deployment",
                _ = job::run(ctx.clone()) => "job",
                _ = cronjob::run(ctx.clone()) => "cronjob",
                _ = daemonset::run(ctx.clone()) => "daemonset",
                _ = statefulset::run(ctx.clone()) => "statefulset",
                _ = node_lifecycle::run(ctx.clone()) => "node-lifecycle",
                _ = async {
                    match cluster_cidr {
                        Some(cidr) => node_ipam::run(ctx.clone(), cidr).await,
                        None => std::future::pending().await,
                    }
                } => "node-ipam",
                _ = disruption::run(ctx.clone()) => "disruption",
                _ = endpoints::run(ctx.clone()) => "endpoints",
                _ = service_lb::run(ctx.clone()) => "service-lb",
                _ = cleanup::run(ctx.clone()) => "cleanup",
                _ = garbage_collector::run(ctx.clone()) => "garbage-collector",
            }
        };
        let stopped = tokio::select! {
            () = elector.hold() => "leader-election",
            stopped = workloads => stopped,
            _ = namespace::run(ctx.clone()) => "namespace",
            _ = serviceaccount::run(ctx.clone()) => "serviceaccount",
            _ = root_ca::run(ctx.clone()) => "root-ca",
            _ = csr_signer::run(ctx.clone()) => "csr-signer",
            _ = csr_approver::run(ctx.clone()) => "csr-approver",
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

/// Writes an object's status with a merge patch. `cleared` names the optional fields that
/// `status` leaves out because they are now empty: they are removed, which a merge patch
/// would otherwise not do.
pub(crate) async fn write_status<K>(
    api: &kube::Api<K>,
    name: &str,
    status: &impl serde::Serialize,
    cleared: &[&str],
) -> kube::Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut status = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    for field in cleared {
        if status.get(*field).is_none() {
            status[*field] = serde_json::Value::Null;
        }
    }
    let patch = kube::api::Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(name, &kube::api::PatchParams::default(), &patch)
        .await
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
