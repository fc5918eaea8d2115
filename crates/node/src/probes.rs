//! Probes, as kubelet's prober runs them: each running container's startup, readiness and
//! liveness probes (httpGet over HTTP or HTTPS following same-host redirects, tcpSocket, exec, grpc via [`crate::grpc`]) run
//! on their own schedule (initialDelaySeconds,
//! periodSeconds, timeoutSeconds) and turn into an outcome once successThreshold successes or
//! failureThreshold failures are seen in a row. Every failed attempt is an `Unhealthy` event
//! worded as upstream ("Liveness probe failed: HTTP probe failed with statuscode: 503").
//!
//! Readiness and liveness wait for the startup probe to succeed. The pod's worker reads the
//! outcomes at each sync: readiness makes the container ready, a failed liveness or startup
//! probe gets the container killed and restarted under the pod's restart policy.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::task::JoinHandle;

use crate::events::Kind as EventKind;
use crate::{Agent, handler};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// startupProbe.
    Startup,
    /// readinessProbe.
    Readiness,
    /// livenessProbe.
    Liveness,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }

    /// The probe's name in events ("liveness").
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "startup",
            Kind::Readiness => "readiness",
            Kind::Liveness => "liveness",
        }
    }

    /// The container's probe of this kind.
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => c.startup_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Liveness => c.liveness_probe.as_ref(),
        }
    }
}

/// What a probe has concluded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet decided (no probe run, or not enough in a row).
    Unknown,
    /// successThreshold successes in a row.
    Success,
    /// failureThreshold failures in a row.
    Failure,
}

struct Task {
    outcome: Arc<Mutex<Outcome>>,
    handle: JoinHandle<()>,
}

/// The probes of one pod's running containers.
#[derive(Default)]
pub struct Probes {
    tasks: HashMap<(String, Kind), Task>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.handle.abort();
        }
    }
}

impl Probes {
    /// Starts the probes of a running container (by runtime id) that are not running yet:
    /// readiness and liveness only once its startup probe, if any, has succeeded.
    pub fn ensure(&mut self, agent: &Arc<Agent>, pod: &Pod, c: &Container, id: &str, ip: &str) {
        for kind in [Kind::Startup, Kind::Readiness, Kind::Liveness] {
            let Some(probe) = kind.of(c) else { continue };
            if kind != Kind::Startup && !self.started(c, id) {
                continue;
            }
            let key = (id.to_string(), kind);
            if self.tasks.contains_key(&key) {
                continue;
            }
            let outcome = Arc::new(Mutex::new(Outcome::Unknown));
            let handle = tokio::spawn(run(
                agent.clone(),
                pod.clone(),
                c.clone(),
                id.to_string(),
                ip.to_string(),
                kind,
                probe.clone(),
                outcome.clone(),
            ));
            self.tasks.insert(key, Task { outcome, handle });
        }
    }

    /// The outcome of a container's probe; `None` when the container has no such probe.
    pub fn outcome(&self, c: &Container, id: &str, kind: Kind) -> Option<Outcome> {
        kind.of(c)?;
        Some(
            self.tasks
                .get(&(id.to_string(), kind))
                .and_then(|t| t.outcome.lock().ok().map(|o| *o))
                .unwrap_or(Outcome::Unknown),
        )
    }

    /// Whether the container has started: its startup probe succeeded, or it has none.
    pub fn started(&self, c: &Container, id: &str) -> bool {
        self.outcome(c, id, Kind::Startup)
            .is_none_or(|o| o == Outcome::Success)
    }

    /// Whether the running container is ready: started, and its readiness probe succeeded (or
    /// it has none).
    pub fn ready(&self, c: &Container, id: &str) -> bool {
        self.started(c, id)
            && self
                .outcome(c, id, Kind::Readiness)
                .is_none_or(|o| o == Outcome::Success)
    }

    /// The probe (liveness or startup) whose failure means the container must be restarted.
    pub fn failed(&self, c: &Container, id: &str) -> Option<Kind> {
        [Kind::Startup, Kind::Liveness]
            .into_iter()
            .find(|k| self.outcome(c, id, *k) == Some(Outcome::Failure))
    }

    /// Stops the probes of every container but those running now.
    pub fn retain(&mut self, running: &HashSet<String>) {
        self.tasks.retain(|(id, _), t| {
            let keep = running.contains(id);
            if !keep {
                t.handle.abort();
            }
            keep
        });
    }
}

fn seconds(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    agent: Arc<Agent>,
    pod: Pod,
    c: Container,
    id: String,
    ip: String,
    kind: Kind,
    probe: Probe,
    outcome: Arc<Mutex<Outcome>>,
) {
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let successes_needed = probe.success_threshold.unwrap_or(1).max(1);
    let failures_needed = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(seconds(probe.initial_delay_seconds, 0)).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        match attempt(&agent, &c, &id, &ip, &probe, timeout).await {
            Ok(warning) => {
                if let Some(warning) = warning {
                    agent.events.record(
                        &pod,
                        Some(&c.name),
                        EventKind::Warning,
                        "ProbeWarning",
                        &format!("{} probe warning: {warning}", kind.title()),
                    );
                }
                failures = 0;
                successes += 1;
                if successes >= successes_needed {
                    set(&outcome, Outcome::Success);
                    // A startup probe is done once it succeeds.
                    if kind == Kind::Startup {
                        return;
                    }
                }
            }
            Err(why) => {
                successes = 0;
                failures += 1;
                agent.events.record(
                    &pod,
                    Some(&c.name),
                    EventKind::Warning,
                    "Unhealthy",
                    &format!("{} probe failed: {why}", kind.title()),
                );
                if failures >= failures_needed {
                    set(&outcome, Outcome::Failure);
                    // The container is killed; a new attempt gets new probes.
                    if kind != Kind::Readiness {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

fn set(outcome: &Mutex<Outcome>, o: Outcome) {
    if let Ok(mut cur) = outcome.lock() {
        *cur = o;
    }
}

/// Runs one probe attempt through the handlers lifecycle hooks use; `Err` says why it failed,
/// as upstream words it, and `Ok(Some(..))` is a success with a warning.
async fn attempt(
    agent: &Agent,
    c: &Container,
    id: &str,
    ip: &str,
    probe: &Probe,
    timeout: Duration,
) -> Result<Option<String>, String> {
    if let Some(h) = &probe.http_get {
        return handler::http_get(h, c, ip, timeout)
            .await
            .map(|r| r.warning);
    }
    if let Some(t) = &probe.tcp_socket {
        handler::tcp_socket(t, c, ip, timeout).await?;
    } else if let Some(e) = &probe.exec {
        handler::exec(agent, id, e, timeout).await?;
    } else if let Some(g) = &probe.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        let service = g.service.as_deref().unwrap_or("");
        crate::grpc::check(ip, port, service, timeout).await?;
    }
    Ok(None)
}
