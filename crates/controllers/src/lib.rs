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
//! - [`resourcequota`]: ResourceQuotas' usage, counted from what their namespaces hold.
//! - [`podautoscaler`]: HorizontalPodAutoscalers scale their targets by the pods' usage, with
//!   the pure arithmetic in [`scaling`].
//! - [`cleanup`]: events expire after an hour; finished pods beyond 12,500 go.
//! - [`garbage_collector`]: dependents follow their owners out (background, foreground, orphan).
//!
//! They run only while this server holds the `kube-controller-manager` Lease ([`leader`]).
//! The workload controllers share one watch and cache per kind ([`informer`]), remember their
//! own writes until the cache shows them ([`expectations`]) and record events through an
//! [`events::Recorder`].
//!
//! As kube-controller-manager with `--use-service-account-credentials`, the shared caches and
//! the Lease use the manager's own identity, and each controller writes as its own service
//! account in kube-system ([`api::CONTROLLER_ACCOUNTS`]), holding only the rights of its
//! `system:controller:<name>` role.

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
pub mod ingress;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod podautoscaler;
pub mod pods;
pub mod replicaset;
pub mod resourcequota;
pub mod revisions;
pub mod rollout;
pub mod root_ca;
pub mod scaling;
pub mod service_lb;
pub mod serviceaccount;
pub mod statefulset;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Endpoints, Node, Pod, ReplicationController, ResourceQuota, Service,
};
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

/// The clients the controllers speak to the API with.
pub struct Credentials {
    /// The controller manager's own (`system:kube-controller-manager`): it watches every
    /// kind for the shared caches, holds the Lease and creates the controllers' accounts.
    pub manager: kube::Client,
    /// One client per entry of [`api::CONTROLLER_ACCOUNTS`], acting as that service account.
    pub controllers: HashMap<&'static str, kube::Client>,
}

/// What a reconciler has: its own client and recorder, and the shared caches.
pub struct Context {
    /// The API client, acting as this controller's service account.
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
#[derive(Clone)]
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
    /// Every ResourceQuota.
    pub quotas: Arc<Informer<ResourceQuota>>,
    /// Every HorizontalPodAutoscaler.
    pub autoscalers: Arc<Informer<HorizontalPodAutoscaler>>,
}

impl Informers {
    /// Starts every informer, watching as `client`. In `bosun server` they are started before
    /// the controllers win the election, for the scheduler reads pods and nodes from them too.
    pub fn start(client: &kube::Client) -> Self {
        Self {
            pods: Informer::start_with(
                Api::all(client.clone()),
                Some(pods::index_keys),
                Some(pods::trim),
            ),
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
            quotas: Informer::start(Api::all(client.clone())),
            autoscalers: Informer::start(Api::all(client.clone())),
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
        self.quotas.ready().await;
        self.autoscalers.ready().await;
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

/// Runs every controller, on the shared `informers`, until one of them stops. Nodes get pod
/// CIDRs from `cluster_cidr` when given.
pub fn start(
    credentials: Credentials,
    informers: Informers,
    ca_pem: String,
    sign_csr: Option<Signer>,
    cluster_cidr: Option<ipnet::Ipv4Net>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let client = credentials.manager;
        // One identity per machine: a server restarted on the same machine takes its Lease
        // back at once instead of waiting for it to expire.
        let identity = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "bosun".into());
        let elector = leader::Elector::new(client.clone(), "kube-controller-manager", identity);
        elector.acquire().await;
        create_service_accounts(&client).await?;
        let ctx = |account: &str| -> anyhow::Result<Arc<Context>> {
            let own = credentials
                .controllers
                .get(account)
                .ok_or_else(|| anyhow::anyhow!("no credentials for the {account}"))?;
            Ok(Arc::new(Context {
                client: own.clone(),
                ca_pem: ca_pem.clone(),
                sign_csr: sign_csr.clone(),
                informers: informers.clone(),
                expectations: Default::default(),
                events: events::Recorder::new(own.clone()),
            }))
        };
        let node = ctx("node-controller")?;
        let workloads = {
            let rs = ctx("replicaset-controller")?;
            let rc = ctx("replication-controller")?;
            let deploy = ctx("deployment-controller")?;
            let job = ctx("job-controller")?;
            let cronjob = ctx("cronjob-controller")?;
            let ds = ctx("daemon-set-controller")?;
            let sts = ctx("statefulset-controller")?;
            let disruption = ctx("disruption-controller")?;
            let quota = ctx("resourcequota-controller")?;
            let hpa = ctx("horizontal-pod-autoscaler")?;
            let endpoints = ctx("endpoint-controller")?;
            let service = ctx("service-controller")?;
            let gc = ctx("generic-garbage-collector")?;
            let podgc = ctx("pod-garbage-collector")?;
            let informers = informers.clone();
            let manager = client.clone();
            async move {
                informers.ready().await;
                tokio::select! {
                    _ = replicaset::run::<ReplicaSet>(rs) => "replicaset",
                    _ = replicaset::run::<ReplicationController>(rc) => "replicationcontroller",
                    _ = deployment::run(deploy) => "deployment",
                    _ = job::run(job) => "job",
                    _ = cronjob::run(cronjob) => "cronjob",
                    _ = daemonset::run(ds) => "daemonset",
                    _ = statefulset::run(sts) => "statefulset",
                    _ = node_lifecycle::run(node.clone()) => "node-lifecycle",
                    _ = async {
                        match cluster_cidr {
                            Some(cidr) => node_ipam::run(node.clone(), cidr).await,
                            None => std::future::pending().await,
                        }
                    } => "node-ipam",
                    _ = disruption::run(disruption) => "disruption",
                    _ = resourcequota::run(quota) => "resourcequota",
                    _ = podautoscaler::run(hpa) => "horizontal-pod-autoscaler",
                    _ = endpoints::run(endpoints) => "endpoints",
                    _ = service_lb::run(service) => "service-lb",
                    _ = cleanup::collect_terminated_pods(podgc) => "pod-gc",
                    _ = cleanup::expire_events(&manager) => "event-expiry",
                    _ = garbage_collector::run(gc) => "garbage-collector",
                }
            }
        };
        let certificates = ctx("certificate-controller")?;
        let stopped = tokio::select! {
            () = elector.hold() => "leader-election",
            stopped = workloads => stopped,
            _ = namespace::run(ctx("namespace-controller")?) => "namespace",
            _ = serviceaccount::run(ctx("service-account-controller")?) => "serviceaccount",
            _ = root_ca::run(ctx("root-ca-cert-publisher")?) => "root-ca",
            _ = csr_signer::run(certificates.clone()) => "csr-signer",
            _ = csr_approver::run(certificates) => "csr-approver",
        };
        anyhow::bail!("the {stopped} controller stopped")
    })
}

/// Creates the controllers' service accounts in kube-system, as kube-controller-manager does
/// before it starts a controller with its account's credentials.
async fn create_service_accounts(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "kube-system");
    for name in api::CONTROLLER_ACCOUNTS {
        let account = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        create_in_namespace(&api, &account).await?;
    }
    Ok(())
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

/// How kube's dynamic clients name a resource of the registry.
pub(crate) fn api_resource(rt: &api::ResourceType) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: rt.group.into(),
        version: rt.version.into(),
        api_version: rt.api_version(),
        kind: rt.kind.into(),
        plural: rt.plural.into(),
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
