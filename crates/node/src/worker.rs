//! The worker of one pod: each sync brings the node in line with the pod as the API last showed
//! it, as kubelet's `SyncPod` does. It builds the sandbox (namespaces, address, /etc files,
//! volumes), runs init containers one by one to completion, then starts the containers in
//! order, restarts those that ended as the restart policy says (with back-off), reports the
//! pod's status when it changed, and, once the pod is being deleted, stops its containers within
//! the grace period, tears everything down and removes the pod from the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use runtime::container::{Container, ContainerConfig, Exited, SharedNamespaces, State};
use runtime::sandbox::Sandbox;
use tokio::sync::watch;

use crate::Agent;
use crate::events::Kind;
use crate::status::{ContainerView, Now, Report, Terminated};

/// Labels the agent puts on its containers to find them again.
pub mod label {
    /// The pod's uid.
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// The pod's name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// The pod's namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// The container's name in the pod spec.
    pub const CONTAINER: &str = "io.kubernetes.container.name";
    /// `init` or `regular`.
    pub const KIND: &str = "io.bosun.container.kind";
    /// The attempt: 0 for the first run, then one more for each restart.
    pub const ATTEMPT: &str = "io.kubernetes.container.restartCount";
    /// The image as the status reports it: `repo@sha256:<manifest>` when the image came with
    /// a manifest digest, else its id.
    pub const IMAGE_REF: &str = "io.bosun.image.ref";
}

/// Whether a container is an init container or a regular one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    /// Runs to completion before the others start.
    Init,
    /// Runs for the life of the pod.
    Regular,
}

impl ContainerKind {
    fn label(self) -> &'static str {
        match self {
            ContainerKind::Init => "init",
            ContainerKind::Regular => "regular",
        }
    }
}

/// The worker's memory of one pod.
pub struct Worker {
    agent: Arc<Agent>,
    uid: String,
    /// The pod's containers on the node, oldest first.
    ids: Vec<String>,
    /// Why a container that has no attempt yet is waiting (ErrImagePull,
    /// CreateContainerConfigError...), by kind and name.
    waiting: HashMap<(ContainerKind, String), (String, Option<String>)>,
    /// Attempts whose back-off has been announced with a BackOff event.
    announced: HashSet<String>,
    last_status: Option<serde_json::Value>,
    start_time: DateTime<Utc>,
    pod_ip: Option<String>,
    /// The pod's volumes, once set up.
    volumes: Option<crate::volumes::Volumes>,
    /// What was last written into each volume of API data, by volume name.
    projected: HashMap<String, u64>,
    /// The service account tokens its volumes hold, and when each is to be renewed.
    tokens: BTreeMap<crate::projection::TokenRequest, (String, DateTime<Utc>)>,
    /// The probes of its running containers.
    probes: crate::probes::Probes,
    /// Containers being killed for a failed probe.
    killing: HashSet<String>,
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

fn attempt_of(c: &Container) -> i32 {
    c.config
        .labels
        .get(label::ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

fn kind_of(c: &Container) -> ContainerKind {
    match c.config.labels.get(label::KIND).map(String::as_str) {
        Some("init") => ContainerKind::Init,
        _ => ContainerKind::Regular,
    }
}

fn name_of(c: &Container) -> &str {
    c.config
        .labels
        .get(label::CONTAINER)
        .map(String::as_str)
        .unwrap_or_default()
}

/// How an exited attempt is reported.
fn terminated(
    c: &Container,
    started: Option<&runtime::container::Started>,
    e: &Exited,
) -> Terminated {
    let reason = if e.start_error.is_some() {
        "StartError"
    } else if e.oom_killed {
        "OOMKilled"
    } else if e.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Terminated {
        exit_code: e.exit_code,
        signal: e.signal,
        reason: reason.to_string(),
        message: e.start_error.clone(),
        started_at: started.map(|s| parse_time(&s.started_at)),
        finished_at: parse_time(&e.finished_at),
        container_id: format!("bosun://{}", c.id),
    }
}

fn should_restart(policy: &str, e: &Exited) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => e.exit_code != 0 || e.start_error.is_some(),
        _ => true,
    }
}

fn succeeded(e: &Exited) -> bool {
    e.exit_code == 0 && e.start_error.is_none()
}

fn grace_of(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0)
}

/// Runs the worker of the pod with `uid` until the pod is gone from the node. `pods` carries the
/// pod as the API shows it, or `None` once it has been removed from the API.
pub async fn run(
    agent: Arc<Agent>,
    uid: String,
    adopted: Vec<String>,
    mut pods: watch::Receiver<Option<Pod>>,
) {
    let mut w = Worker {
        agent,
        uid,
        ids: adopted,
        waiting: HashMap::new(),
        announced: HashSet::new(),
        last_status: None,
        start_time: Utc::now(),
        pod_ip: None,
        volumes: None,
        projected: HashMap::new(),
        tokens: BTreeMap::new(),
        probes: crate::probes::Probes::default(),
        killing: HashSet::new(),
    };
    loop {
        let pod = pods.borrow_and_update().clone();
        let next = match pod {
            None => {
                w.teardown(Duration::ZERO).await;
                w.agent
                    .evictions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&w.uid);
                return;
            }
            Some(pod) => match w.sync(&pod).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(pod = ?pod.metadata.name, error = %e, "pod sync failed");
                    Duration::from_secs(2)
                }
            },
        };
        tokio::select! {
            changed = pods.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(next) => {}
        }
    }
}

impl Worker {
    fn pod_dir(&self) -> PathBuf {
        self.agent.root().join("pods").join(&self.uid)
    }

    fn sandbox(&self) -> Sandbox {
        Sandbox::at(&self.agent.root().join("sandboxes"), &self.uid)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Agent) -> T + Send + 'static) -> T {
        let agent = self.agent.clone();
        match tokio::task::spawn_blocking(move || f(&agent)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The pod's containers as they are now.
    async fn observe(&self) -> Vec<Container> {
        let ids = self.ids.clone();
        self.blocking(move |a| ids.iter().filter_map(|id| a.runtime.get(id).ok()).collect())
            .await
    }

    fn latest<'a>(
        observed: &'a [Container],
        kind: ContainerKind,
        name: &str,
    ) -> (Option<&'a Container>, Option<&'a Container>) {
        let mut attempts: Vec<&Container> = observed
            .iter()
            .filter(|c| kind_of(c) == kind && name_of(c) == name)
            .collect();
        attempts.sort_by_key(|c| attempt_of(c));
        let cur = attempts.pop();
        (cur, attempts.pop())
    }

    /// Brings the node in line with `pod`; returns when to look again (the pod changing wakes
    /// the worker sooner).
    async fn sync(&mut self, pod: &Pod) -> anyhow::Result<Duration> {
        if pod.metadata.deletion_timestamp.is_some() {
            self.stop_all(pod, Duration::from_secs(grace_of(pod) as u64))
                .await;
            let observed = self.observe().await;
            self.report(pod, &observed, false).await;
            self.teardown(Duration::ZERO).await;
            let api: Api<Pod> = Api::namespaced(
                self.agent.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            tracing::debug!(pod = %self.uid, "removing the pod from the API");
            // Once removed from the API, the watch delivers the deletion and the worker ends.
            return match api
                .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
                .await
            {
                Ok(_) => Ok(Duration::from_secs(1)),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                    Ok(Duration::from_secs(1))
                }
                Err(e) => Err(e.into()),
            };
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        let evicted = self
            .agent
            .evictions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.uid)
            .cloned();
        if let Some(message) = evicted
            && phase.as_deref() != Some("Failed")
        {
            self.evict(pod, &message).await?;
            return Ok(Duration::from_secs(60));
        }
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            // A pod that has ended stays as it is until it is deleted.
            return Ok(Duration::from_secs(60));
        }
        if phase.is_none() || phase.as_deref() == Some("Pending") {
            let forbidden = crate::security::forbidden_sysctls(pod);
            if let Some(sysctl) = forbidden.first() {
                let message = format!("forbidden sysctl: {sysctl:?} not allowlisted");
                self.reject(pod, "SysctlForbidden", &message).await?;
                return Ok(Duration::from_secs(60));
            }
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let sandbox_ready = match self.ensure_sandbox(pod).await {
            Ok(()) => true,
            Err(e) => {
                self.agent.events.record(
                    pod,
                    None,
                    Kind::Warning,
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {e}"),
                );
                false
            }
        };
        if sandbox_ready && self.volumes.is_none() {
            match crate::volumes::setup(pod, &self.pod_dir()) {
                Ok(v) => self.volumes = Some(v),
                Err(e) => {
                    self.agent
                        .events
                        .record(pod, None, Kind::Warning, "FailedMount", &e);
                }
            }
        }
        for e in self.project(pod).await {
            self.agent
                .events
                .record(pod, None, Kind::Warning, "FailedMount", &e);
        }
        // containers start once every volume has its files
        let written =
            spec.volumes.iter().flatten().all(|v| {
                !crate::projection::is_projection(v) || self.projected.contains_key(&v.name)
            });
        let volumes = self.volumes.clone().filter(|_| written);
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut busy = false;
        if let Some(volumes) = volumes {
            let observed = self.observe().await;
            let mut init_done = true;
            for c in spec.init_containers.iter().flatten() {
                let (cur, _) = Self::latest(&observed, ContainerKind::Init, &c.name);
                match cur.map(|k| (k, &k.state)) {
                    None => {
                        busy |= self.start(pod, c, ContainerKind::Init, 0, &volumes).await;
                    }
                    Some((_, State::Exited(_, e))) if succeeded(e) => continue,
                    Some((k, State::Exited(_, e))) => {
                        if policy != "Never" {
                            busy |= self
                                .restart(pod, c, ContainerKind::Init, k, e, &volumes)
                                .await;
                        }
                    }
                    Some(_) => {}
                }
                init_done = false;
                break;
            }
            if init_done {
                for c in &spec.containers {
                    let (cur, _) = Self::latest(&observed, ContainerKind::Regular, &c.name);
                    match cur.map(|k| (k, &k.state)) {
                        None => {
                            busy |= self
                                .start(pod, c, ContainerKind::Regular, 0, &volumes)
                                .await;
                        }
                        Some((k, State::Exited(_, e))) if should_restart(&policy, e) => {
                            busy |= self
                                .restart(pod, c, ContainerKind::Regular, k, e, &volumes)
                                .await;
                        }
                        Some(_) => {}
                    }
                }
                self.probe(pod, &spec.containers, &observed);
            }
        }
        let observed = self.observe().await;
        self.collect_garbage(&observed).await;
        self.report(pod, &observed, sandbox_ready).await;
        Ok(if busy {
            Duration::from_millis(200)
        } else if !self.waiting.is_empty() {
            // a container that cannot be created yet (its image backing off, its config
            // missing) is tried again every few seconds, not at the pace of a starting pod
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        })
    }

    /// Evicts the pod for node pressure, as kubelet's eviction manager does: its containers
    /// are killed at once and it fails with reason `Evicted`.
    async fn evict(&mut self, pod: &Pod, message: &str) -> anyhow::Result<()> {
        self.agent
            .events
            .record(pod, None, Kind::Warning, "Evicted", message);
        self.stop_all(pod, Duration::ZERO).await;
        let observed = self.observe().await;
        self.report(pod, &observed, false).await;
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let status = serde_json::json!({"status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": message,
            "conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "TerminationByKubelet",
                "message": message,
                "lastTransitionTime": crate::status::time(Utc::now()),
            }],
        }});
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(&status),
        )
        .await?;
        Ok(())
    }

    /// Refuses to run the pod, as kubelet's admission does: the pod fails with `reason`.
    async fn reject(&self, pod: &Pod, reason: &str, message: &str) -> anyhow::Result<()> {
        self.agent
            .events
            .record(pod, None, Kind::Warning, reason, message);
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let status = serde_json::json!({"status": {
            "phase": "Failed",
            "reason": reason,
            "message": format!("Pod was rejected: {message}"),
        }});
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
        Ok(())
    }

    /// Keeps the probes of the running containers going, and kills a container whose liveness
    /// or startup probe failed (it is then restarted as the restart policy says).
    fn probe(&mut self, pod: &Pod, containers: &[ContainerSpec], observed: &[Container]) {
        let ip = self.pod_ip.clone().unwrap_or_default();
        let mut running = HashSet::new();
        for c in containers {
            let (cur, _) = Self::latest(observed, ContainerKind::Regular, &c.name);
            let Some(k) = cur.filter(|k| matches!(k.state, State::Running(_))) else {
                continue;
            };
            running.insert(k.id.clone());
            self.probes.ensure(&self.agent, pod, c, &k.id, &ip);
            let Some(failed) = self.probes.failed(c, &k.id) else {
                continue;
            };
            if !self.killing.insert(k.id.clone()) {
                continue;
            }
            self.agent.events.record(
                pod,
                Some(&c.name),
                Kind::Normal,
                "Killing",
                &format!(
                    "Container {} failed {} probe, will be restarted",
                    c.name,
                    failed.name()
                ),
            );
            let grace = failed
                .of(c)
                .and_then(|p| p.termination_grace_period_seconds)
                .unwrap_or_else(|| grace_of(pod));
            let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
            let (agent, id) = (self.agent.clone(), k.id.clone());
            tokio::task::spawn_blocking(move || agent.runtime.stop(&id, grace));
        }
        self.probes.retain(&running);
        self.killing.retain(|id| running.contains(id));
    }

    /// Restarts an attempt that ended, unless it is backing off; returns whether it restarted.
    async fn restart(
        &mut self,
        pod: &Pod,
        c: &ContainerSpec,
        kind: ContainerKind,
        ended: &Container,
        e: &Exited,
        volumes: &crate::volumes::Volumes,
    ) -> bool {
        let key = format!("{}/{}/{}", self.uid, kind.label(), c.name);
        let now = Utc::now();
        let finished = parse_time(&e.finished_at);
        let wait = self
            .agent
            .backoff
            .lock()
            .ok()
            .and_then(|b| b.in_backoff(&key, finished, now));
        if wait.is_some() {
            if self.announced.insert(ended.id.clone()) {
                let msg = format!(
                    "Back-off restarting failed container {} in pod {}",
                    c.name,
                    pod_ref(pod)
                );
                self.agent
                    .events
                    .record(pod, Some(&c.name), Kind::Warning, "BackOff", &msg);
            }
            return false;
        }
        if let Ok(mut b) = self.agent.backoff.lock() {
            b.next(&key, now);
        }
        self.start(pod, c, kind, attempt_of(ended) + 1, volumes)
            .await
    }

    /// Builds the pod's sandbox, address and /etc files, once per worker (a worker of an agent
    /// that restarted finds them there and keeps them).
    async fn ensure_sandbox(&mut self, pod: &Pod) -> anyhow::Result<()> {
        if self.pod_ip.is_some() {
            return Ok(());
        }
        let sandbox = self.sandbox();
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        // a pod in the node's network has the node's name and address
        let hostname = if host_network {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            pod.spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .or_else(|| pod.metadata.name.clone())
                .unwrap_or_default()
        };
        let uid = self.uid.clone();
        let pod_dir = self.pod_dir();
        let pod = pod.clone();
        let ip = self
            .blocking(move |a| -> anyhow::Result<std::net::Ipv4Addr> {
                sandbox.create(&hostname, host_network)?;
                if shares_processes(&pod) {
                    sandbox.share_processes(a.runtime.program())?;
                }
                let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let cfg = &a.config;
                let resolv = crate::resolv::resolv_conf(
                    &pod,
                    &host_resolv,
                    cfg.cluster_dns,
                    &cfg.cluster_domain,
                );
                let (ip, hosts) = if host_network {
                    let node_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
                    (a.host_ip.parse()?, Some(node_hosts))
                } else {
                    (a.network.attach(&uid, &sandbox.net())?, None)
                };
                let etc = EtcFiles {
                    hostname: &hostname,
                    ip: &ip.to_string(),
                    node_hosts: hosts.as_deref(),
                    aliases: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.host_aliases.as_deref())
                        .unwrap_or_default(),
                    resolv: &resolv,
                };
                etc.write(&pod_dir)?;
                Ok(ip)
            })
            .await?;
        self.pod_ip = Some(ip.to_string());
        Ok(())
    }

    /// Creates and starts attempt `attempt` of a container; returns whether it was created
    /// (false while it waits for its image or its configuration).
    async fn start(
        &mut self,
        pod: &Pod,
        c: &ContainerSpec,
        kind: ContainerKind,
        attempt: i32,
        volumes: &crate::volumes::Volumes,
    ) -> bool {
        let key = (kind, c.name.clone());
        let image = match self.agent.ensure_image(pod, c).await {
            Ok(image) => image,
            Err((reason, message)) => {
                self.waiting.insert(key, (reason, Some(message)));
                return false;
            }
        };
        let config = match self
            .container_config(pod, c, kind, attempt, &image, volumes)
            .await
        {
            Ok(config) => config,
            Err(msg) => {
                self.agent.events.record(
                    pod,
                    Some(&c.name),
                    Kind::Warning,
                    "Failed",
                    &format!("Error: {msg}"),
                );
                self.waiting
                    .insert(key, ("CreateContainerConfigError".into(), Some(msg)));
                return false;
            }
        };
        let id = new_id();
        let started = {
            let id = id.clone();
            self.blocking(move |a| -> Result<(), (bool, String)> {
                a.runtime
                    .create(&id, &a.images, &config)
                    .map_err(|e| (false, e.to_string()))?;
                a.runtime
                    .start(&id)
                    .map(|_| ())
                    .map_err(|e| (true, e.to_string()))
            })
            .await
        };
        let event = |kind, reason: &str, msg: &str| {
            self.agent
                .events
                .record(pod, Some(&c.name), kind, reason, msg);
        };
        if let Err((false, msg)) = started {
            let _ = {
                let id = id.clone();
                self.blocking(move |a| a.runtime.remove(&id)).await
            };
            event(Kind::Warning, "Failed", &format!("Error: {msg}"));
            self.waiting
                .insert(key, ("CreateContainerError".into(), Some(msg)));
            return false;
        }
        self.waiting.remove(&key);
        self.ids.push(id.clone());
        event(
            Kind::Normal,
            "Created",
            &format!("Created container: {}", c.name),
        );
        if let Err((_, msg)) = started {
            let msg = format!("Error: failed to start container \"{}\": {msg}", c.name);
            event(Kind::Warning, "Failed", &msg);
            return true;
        }
        event(
            Kind::Normal,
            "Started",
            &format!("Started container {}", c.name),
        );
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let ip = self.pod_ip.clone().unwrap_or_default();
            let timeout = Duration::from_secs(grace_of(pod) as u64);
            if let Err(e) = crate::handler::run_hook(&self.agent, hook, c, &id, &ip, timeout).await
            {
                // A failed postStart hook kills the container; the restart policy decides.
                event(
                    Kind::Warning,
                    "FailedPostStartHook",
                    &format!("PostStartHook failed: {e}"),
                );
                let _ = self
                    .blocking(move |a| a.runtime.stop(&id, Duration::ZERO))
                    .await;
            }
        }
        true
    }

    /// Writes the files of the pod's volumes of API data whose contents changed (renewing the
    /// service account tokens due); returns why any could not be written.
    async fn project(&mut self, pod: &Pod) -> Vec<String> {
        let Some(volumes) = self.volumes.clone() else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        let refs = crate::projection::references(pod);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (caches, client) = (&self.agent.caches, &self.agent.client);
        let (config_maps, failed) = caches
            .config_maps
            .get_all(client, &ns, refs.config_maps)
            .await;
        errors.extend(failed);
        let (secrets, failed) = caches.secrets.get_all(client, &ns, refs.secrets).await;
        errors.extend(failed);
        let mut sources = crate::projection::Sources {
            config_maps,
            secrets,
            tokens: Default::default(),
            node_allocatable: crate::registration::allocatable_cpu_memory(),
        };
        let now = Utc::now();
        self.tokens.retain(|r, _| refs.tokens.contains(r));
        for request in refs.tokens {
            let due = self.tokens.get(&request).is_none_or(|(_, at)| *at <= now);
            if due {
                match crate::tokens::request(&self.agent.client, pod, &request).await {
                    Ok(issued) => drop(self.tokens.insert(request.clone(), issued)),
                    Err(e) => errors.push(format!("failed to fetch token: {e}")),
                }
            }
            if let Some((token, _)) = self.tokens.get(&request) {
                sources.tokens.insert(request, token.clone());
            }
        }
        let fs_group = crate::volumes::fs_group(pod);
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(dir) = volumes.get(&v.name).map(|d| d.path.clone()) else {
                continue;
            };
            if !crate::projection::is_projection(v) {
                continue;
            }
            let failed =
                |e: String| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name);
            let payload = match crate::projection::payload(pod, v, &sources) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(failed(e));
                    continue;
                }
            };
            let fingerprint = crate::projection::fingerprint(&payload, fs_group);
            if self.projected.get(&v.name) == Some(&fingerprint) {
                continue;
            }
            let written = self
                .blocking(move |_| crate::projection::write(&dir, &payload, fs_group))
                .await;
            match written {
                Ok(()) => drop(self.projected.insert(v.name.clone(), fingerprint)),
                Err(e) => errors.push(failed(e)),
            }
        }
        errors
    }

    /// What `c`'s environment refers to: the Services' variables, and the ConfigMaps and
    /// Secrets it names that exist.
    async fn env_sources(
        &self,
        pod: &Pod,
        c: &ContainerSpec,
    ) -> Result<crate::process::EnvSources, String> {
        let caches = &self.agent.caches;
        // as kubelet, containers start only once the Services are known, for their variables
        let _ =
            tokio::time::timeout(Duration::from_secs(10), caches.services.wait_until_ready()).await;
        let (config_maps, secrets) = crate::process::env_references(c);
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let client = &self.agent.client;
        let mut sources = crate::process::EnvSources {
            services: crate::process::service_env(pod, &caches.services.state()),
            node_allocatable: crate::registration::allocatable_cpu_memory(),
            ..Default::default()
        };
        let (config_maps, failed) = caches.config_maps.get_all(client, ns, config_maps).await;
        if let Some(e) = failed.into_iter().next() {
            return Err(e);
        }
        let (secrets, failed) = caches.secrets.get_all(client, ns, secrets).await;
        if let Some(e) = failed.into_iter().next() {
            return Err(e);
        }
        sources.config_maps = config_maps
            .into_iter()
            .map(|(name, cm)| (name, cm.data.clone().unwrap_or_default()))
            .collect();
        sources.secrets = secrets
            .into_iter()
            .map(|(name, secret)| {
                let data = secret.data.iter().flatten();
                let data = data.map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into()));
                (name, data.collect())
            })
            .collect();
        Ok(sources)
    }

    async fn container_config(
        &self,
        pod: &Pod,
        c: &ContainerSpec,
        kind: ContainerKind,
        attempt: i32,
        image: &runtime::images::Image,
        volumes: &crate::volumes::Volumes,
    ) -> Result<ContainerConfig, String> {
        let image_config = {
            let image = image.clone();
            self.blocking(move |a| image.config(&a.images)).await
        }
        .map_err(|e| e.to_string())?;
        // as kubelet, containers start only once the Services are known, for their variables
        let sources = self.env_sources(pod, c).await?;
        let process = crate::process::process(pod, c, &image_config, &sources)?;
        crate::security::verify_non_root(pod, c, process.user.as_deref().unwrap_or_default())?;
        let security = runtime::container::Security {
            seccomp: crate::security::seccomp(pod, c, &self.agent.root().join("seccomp"))?,
            ..crate::security::of(pod, c)
        };
        for warning in &process.warnings {
            self.agent.events.record(
                pod,
                Some(&c.name),
                Kind::Warning,
                "InvalidEnvironmentVariableNames",
                warning,
            );
        }
        let (uid, mut gid) = match &process.user {
            None => (0, 0),
            Some(user) => {
                let image = image.clone();
                let (passwd, group) = self
                    .blocking(move |a| {
                        (
                            image_file(a, &image, "etc/passwd"),
                            image_file(a, &image, "etc/group"),
                        )
                    })
                    .await;
                crate::process::resolve_user(user, &passwd, &group)?
            }
        };
        if let Some(g) = process.group {
            gid = u32::try_from(g).map_err(|_| format!("runAsGroup {g} is out of range"))?;
        }
        let mut mounts = crate::volumes::mounts(c, volumes)?;
        let pod_dir = self.pod_dir();
        for (file, dest) in [
            ("etc-hosts", "/etc/hosts"),
            ("etc-hostname", "/etc/hostname"),
            ("resolv.conf", "/etc/resolv.conf"),
        ] {
            if !mounts.iter().any(|m| m.destination == dest) {
                mounts.push(runtime::container::Mount {
                    source: pod_dir.join(file),
                    destination: dest.into(),
                    read_only: false,
                });
            }
        }
        let sandbox = self.sandbox();
        let meta = &pod.metadata;
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let qos_class = pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.clone())
            .unwrap_or_else(|| "BestEffort".into());
        let qos = qos_class.to_lowercase();
        let qos_dir = if qos == "guaranteed" {
            String::new()
        } else {
            format!("/{qos}")
        };
        let labels = BTreeMap::from([
            (label::POD_UID.to_string(), self.uid.clone()),
            (label::POD_NAME.to_string(), name.clone()),
            (label::POD_NAMESPACE.to_string(), ns.clone()),
            (label::CONTAINER.to_string(), c.name.clone()),
            (label::KIND.to_string(), kind.label().to_string()),
            (label::ATTEMPT.to_string(), attempt.to_string()),
            (
                label::IMAGE_REF.to_string(),
                image.repo_digest().unwrap_or_else(|| image.id.clone()),
            ),
        ]);
        Ok(ContainerConfig {
            image: c.image.clone().unwrap_or_default(),
            args: process.args,
            env: process.env,
            cwd: process.cwd,
            uid,
            gid,
            mounts,
            namespaces: SharedNamespaces {
                network: Some(sandbox.net()),
                ipc: Some(sandbox.ipc()),
                uts: Some(sandbox.uts()),
                pid: shares_processes(pod).then(|| sandbox.pid()),
            },
            cgroup_path: format!("/kubepods{qos_dir}/pod{}/{}", self.uid, c.name),
            resources: crate::resources::of(c, &qos_class, crate::registration::memory_bytes()),
            log_path: self
                .agent
                .root()
                .join("logs")
                .join(format!("{ns}_{name}_{}", self.uid))
                .join(&c.name)
                .join(format!("{attempt}.log")),
            labels,
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
            security,
        })
    }

    /// Keeps the current and the previous attempt of each container; older ones go.
    async fn collect_garbage(&mut self, observed: &[Container]) {
        let mut by_name: HashMap<(ContainerKind, String), Vec<&Container>> = HashMap::new();
        for c in observed {
            by_name
                .entry((kind_of(c), name_of(c).to_string()))
                .or_default()
                .push(c);
        }
        let mut old = Vec::new();
        for attempts in by_name.values_mut() {
            attempts.sort_by_key(|c| std::cmp::Reverse(attempt_of(c)));
            for c in attempts.iter().skip(2) {
                if let State::Exited(..) = c.state {
                    old.push((c.id.clone(), c.config.log_path.clone()));
                }
            }
        }
        if old.is_empty() {
            return;
        }
        let gone: Vec<String> = old.iter().map(|(id, _)| id.clone()).collect();
        self.ids.retain(|id| !gone.contains(id));
        self.blocking(move |a| {
            for (id, log) in old {
                let _ = a.runtime.remove(&id);
                remove_log(&log);
            }
        })
        .await;
    }

    /// Stops every running container of the pod within `grace`, in parallel: its preStop hook
    /// first, then SIGTERM, then SIGKILL when the grace period is over.
    async fn stop_all(&mut self, pod: &Pod, grace: Duration) {
        let observed = self.observe().await;
        let started = std::time::Instant::now();
        let specs: Vec<ContainerSpec> = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .cloned()
            .collect();
        let ip = self.pod_ip.clone().unwrap_or_default();
        let mut hooks = Vec::new();
        for c in observed
            .iter()
            .filter(|c| matches!(c.state, State::Running(_)))
        {
            let Some(spec) = specs.iter().find(|s| s.name == name_of(c)) else {
                continue;
            };
            if let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) {
                let (agent, spec, id, ip) =
                    (self.agent.clone(), spec.clone(), c.id.clone(), ip.clone());
                hooks.push(tokio::spawn(async move {
                    let r = crate::handler::run_hook(&agent, &hook, &spec, &id, &ip, grace).await;
                    (spec.name.clone(), r)
                }));
            }
        }
        for h in hooks {
            if let Ok((name, Err(e))) = h.await {
                let msg = format!("PreStopHook failed: {e}");
                self.agent.events.record(
                    pod,
                    Some(&name),
                    Kind::Warning,
                    "FailedPreStopHook",
                    &msg,
                );
            }
        }
        let grace = grace.saturating_sub(started.elapsed());
        let mut stops = Vec::new();
        for c in observed
            .iter()
            .filter(|c| matches!(c.state, State::Running(_)))
        {
            self.agent.events.record(
                pod,
                Some(name_of(c)),
                Kind::Normal,
                "Killing",
                &format!("Stopping container {}", name_of(c)),
            );
            let id = c.id.clone();
            let agent = self.agent.clone();
            stops.push(tokio::task::spawn_blocking(move || {
                agent.runtime.stop(&id, grace)
            }));
        }
        for s in stops {
            let _ = s.await;
        }
    }

    /// Removes everything of the pod from the node: containers, sandbox, address, files.
    async fn teardown(&mut self, grace: Duration) {
        let ids = std::mem::take(&mut self.ids);
        tracing::debug!(pod = %self.uid, containers = ?ids, "tearing down");
        let uid = self.uid.clone();
        let sandbox = self.sandbox();
        let pod_dir = self.pod_dir();
        self.blocking(move |a| {
            for id in &ids {
                let _ = a.runtime.stop(id, grace);
                if let Err(e) = a.runtime.remove(id) {
                    tracing::warn!(error = %e, container = %id, "removing a container failed");
                }
            }
            sandbox.remove();
            if let Err(e) = a.network.detach(&uid) {
                tracing::warn!(error = %e, pod = %uid, "releasing the pod network failed");
            }
            crate::volumes::unmount_all(&pod_dir);
            let _ = std::fs::remove_dir_all(&pod_dir);
            runtime::cgroups::remove_pod(&uid);
            if let Ok(entries) = std::fs::read_dir(a.root().join("logs")) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().ends_with(&uid) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        })
        .await;
        if let Ok(mut b) = self.agent.backoff.lock() {
            b.forget_prefix(&self.uid);
        }
        self.agent.events.forget(&self.uid);
    }

    fn view(
        &self,
        pod: &Pod,
        observed: &[Container],
        kind: ContainerKind,
        c: &ContainerSpec,
        init_done: bool,
    ) -> ContainerView {
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let (cur, prev) = Self::latest(observed, kind, &c.name);
        let prev_term = prev.and_then(|p| match &p.state {
            State::Exited(s, e) => Some(terminated(p, s.as_ref(), e)),
            _ => None,
        });
        let mut view = ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: cur.map(|k| {
                k.config
                    .labels
                    .get(label::IMAGE_REF)
                    .cloned()
                    .unwrap_or_else(|| k.image_id.clone())
            }),
            container_id: cur.map(|k| format!("bosun://{}", k.id)),
            restart_count: cur.map(attempt_of).unwrap_or(0),
            now: Now::Waiting {
                reason: if kind == ContainerKind::Regular && !init_done {
                    "PodInitializing".into()
                } else {
                    "ContainerCreating".into()
                },
                message: None,
            },
            last: prev_term.clone(),
            ready: false,
            started: false,
        };
        let waiting = self.waiting.get(&(kind, c.name.clone()));
        match cur {
            None => {
                if let Some((reason, message)) = waiting {
                    view.now = Now::Waiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    };
                }
            }
            Some(k) => match &k.state {
                State::Created => {}
                State::Running(s) => {
                    view.now = Now::Running(parse_time(&s.started_at));
                    view.ready = kind == ContainerKind::Regular && self.probes.ready(c, &k.id);
                    view.started = self.probes.started(c, &k.id);
                }
                State::Exited(s, e) => {
                    let term = terminated(k, s.as_ref(), e);
                    let restarting = match kind {
                        ContainerKind::Init => !succeeded(e) && policy != "Never",
                        ContainerKind::Regular => should_restart(&policy, e),
                    };
                    if restarting {
                        let key = format!("{}/{}/{}", self.uid, kind.label(), c.name);
                        let wait = self
                            .agent
                            .backoff
                            .lock()
                            .ok()
                            .and_then(|b| b.in_backoff(&key, term.finished_at, Utc::now()));
                        if let Some((reason, message)) = waiting {
                            view.now = Now::Waiting {
                                reason: reason.clone(),
                                message: message.clone(),
                            };
                            view.last = Some(term);
                        } else if let Some(wait) = wait {
                            view.now = Now::Waiting {
                                reason: "CrashLoopBackOff".into(),
                                message: Some(format!(
                                    "back-off {}s restarting failed container={} pod={}",
                                    wait.num_seconds(),
                                    c.name,
                                    pod_ref(pod)
                                )),
                            };
                            view.last = Some(term);
                        } else {
                            view.now = Now::Terminated(term);
                        }
                    } else {
                        view.now = Now::Terminated(term);
                    }
                }
            },
        }
        view
    }

    /// Writes the pod's status when it changed.
    async fn report(&mut self, pod: &Pod, observed: &[Container], sandbox_ready: bool) {
        let spec = pod.spec.clone().unwrap_or_default();
        let init: Vec<ContainerView> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| self.view(pod, observed, ContainerKind::Init, c, false))
            .collect();
        let init_done = crate::status::initialized(&init);
        let containers: Vec<ContainerView> = spec
            .containers
            .iter()
            .map(|c| self.view(pod, observed, ContainerKind::Regular, c, init_done))
            .collect();
        let status = crate::status::pod_status(&Report {
            pod,
            init: &init,
            containers: &containers,
            sandbox_ready,
            pod_ip: self.pod_ip.clone(),
            host_ip: Some(self.agent.host_ip.clone()),
            start_time: self.start_time,
            now: Utc::now(),
        });
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        if self.last_status.as_ref() == Some(&value) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let patch = serde_json::json!({ "status": value });
        match api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.last_status = Some(value),
            Err(e) => tracing::debug!(error = %e, "pod status update failed"),
        }
    }
}

fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// A file of the image, read from its topmost layer that has it.
fn image_file(agent: &Agent, image: &runtime::images::Image, path: &str) -> String {
    image
        .layers
        .iter()
        .rev()
        .map(|l| agent.images.layer_dir(l).join(path))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// The pod's /etc/hosts, /etc/hostname and /etc/resolv.conf, as kubelet manages them.
/// The files a pod's containers get in /etc.
struct EtcFiles<'a> {
    hostname: &'a str,
    ip: &'a str,
    /// The node's /etc/hosts, which a pod in the node's network starts from.
    node_hosts: Option<&'a str>,
    aliases: &'a [k8s_openapi::api::core::v1::HostAlias],
    resolv: &'a str,
}

impl EtcFiles<'_> {
    fn write(&self, pod_dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(pod_dir)?;
        let (ip, hostname) = (self.ip, self.hostname);
        let mut hosts = match self.node_hosts {
            Some(node) => node.to_string(),
            None => format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{ip}\t{hostname}\n"
            ),
        };
        if !self.aliases.is_empty() {
            hosts.push_str("\n# Entries added by HostAliases.\n");
            for a in self.aliases {
                hosts.push_str(&format!(
                    "{}\t{}\n",
                    a.ip,
                    a.hostnames.clone().unwrap_or_default().join("\t")
                ));
            }
        }
        std::fs::write(pod_dir.join("etc-hosts"), hosts)?;
        std::fs::write(pod_dir.join("etc-hostname"), format!("{hostname}\n"))?;
        std::fs::write(pod_dir.join("resolv.conf"), self.resolv)
    }
}

/// Removes a container's log file and its rotated predecessors (`N.log.1`...).
fn remove_log(log: &std::path::Path) {
    let _ = std::fs::remove_file(log);
    for n in 1.. {
        if std::fs::remove_file(format!("{}.{n}", log.display())).is_err() {
            break;
        }
    }
}

/// Ids of the containers on the node, by pod uid: what an agent that restarts adopts.
pub fn adoptable(agent: &Agent) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<(i32, String)>> = HashMap::new();
    for c in agent.runtime.list().unwrap_or_default() {
        if let Some(uid) = c.config.labels.get(label::POD_UID)
            && is_id(&c.id)
        {
            out.entry(uid.clone())
                .or_default()
                .push((attempt_of(&c), c.id.clone()));
        }
    }
    out.into_iter()
        .map(|(uid, mut ids)| {
            ids.sort();
            (uid, ids.into_iter().map(|(_, id)| id).collect())
        })
        .collect()
}

/// Removes what is left on the node of a pod the API no longer has.
pub async fn remove_orphan(agent: Arc<Agent>, uid: String, ids: Vec<String>) {
    let (_tx, rx) = watch::channel(None);
    run(agent, uid, ids, rx).await;
}

/// Whether the pod's containers share one process namespace (`shareProcessNamespace`; the
/// node's, with `hostPID`, is shared anyway).
fn shares_processes(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.share_process_namespace == Some(true) && s.host_pid != Some(true))
}
