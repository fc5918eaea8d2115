//! A pod's status as kubelet reports it, computed from what the node knows of its containers:
//! the phase (upstream's `getPhase`), the conditions (PodReadyToStartContainers, Initialized,
//! ContainersReady, Ready, PodScheduled) with their reasons and messages, and each container's
//! state, last state, readiness and restart count.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How a container attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    /// Its exit code.
    pub exit_code: i32,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Completed, Error, OOMKilled, StartError...
    pub reason: String,
    /// Why, in words, when there is more to say.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Its container id (`bosun://...`).
    pub container_id: String,
}

/// Where a container is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Now {
    /// Not running: ContainerCreating, PodInitializing, ErrImagePull, CrashLoopBackOff...
    Waiting {
        /// The reason.
        reason: String,
        /// The message.
        message: Option<String>,
    },
    /// Running since.
    Running(DateTime<Utc>),
    /// Ended and not restarting.
    Terminated(Terminated),
}

/// What the node knows of one container of the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// The container's name.
    pub name: String,
    /// The image as the spec names it.
    pub image: String,
    /// The image's id, once the container was created from it.
    pub image_id: Option<String>,
    /// The current attempt's id.
    pub container_id: Option<String>,
    /// How many times it was restarted.
    pub restart_count: i32,
    /// Its state.
    pub now: Now,
    /// How the previous attempt ended.
    pub last: Option<Terminated>,
    /// Whether it is ready (running, started, and passing its readiness probe if any).
    pub ready: bool,
    /// Whether it has started (running, and passed its startup probe if any).
    pub started: bool,
}

/// A Kubernetes `Time` of a chrono time.
pub fn time(t: DateTime<Utc>) -> Time {
    Time(timestamp(t))
}

/// A jiff timestamp (the time type of k8s-openapi) of a chrono time.
pub fn timestamp(t: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or_default()
}

fn terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(time),
        finished_at: Some(time(t.finished_at)),
        container_id: Some(t.container_id.clone()),
    }
}

fn container_status(v: &ContainerView) -> ContainerStatus {
    let state = match &v.now {
        Now::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        Now::Running(at) => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*at)),
            }),
            ..Default::default()
        },
        Now::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: v.image_id.clone().unwrap_or_default(),
        container_id: v.container_id.clone(),
        restart_count: v.restart_count,
        ready: v.ready,
        started: Some(v.started),
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: v.last.as_ref().map(terminated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod phase, as upstream's `getPhase` computes it (without sidecar containers).
pub fn phase(restart_policy: &str, init: &[ContainerView], containers: &[ContainerView]) -> String {
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in init {
        match &c.now {
            Now::Running(_) => pending_init += 1,
            Now::Terminated(t) if t.exit_code != 0 => failed_init += 1,
            Now::Terminated(_) => {}
            Now::Waiting { .. } => match &c.last {
                Some(l) if l.exit_code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            },
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.now {
            Now::Running(_) => running += 1,
            Now::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            Now::Waiting { .. } if c.last.is_some() => stopped += 1,
            Now::Waiting { .. } => waiting += 1,
        }
    }
    let phase = if failed_init > 0 && restart_policy == "Never" {
        "Failed"
    } else if pending_init > 0 || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if restart_policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if restart_policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    };
    phase.to_string()
}

/// Whether every init container has completed.
pub fn initialized(init: &[ContainerView]) -> bool {
    init.iter()
        .all(|c| matches!(&c.now, Now::Terminated(t) if t.exit_code == 0))
}

/// What the node reports of a pod.
pub struct Report<'a> {
    /// The pod as last seen.
    pub pod: &'a Pod,
    /// Its init containers.
    pub init: &'a [ContainerView],
    /// Its containers.
    pub containers: &'a [ContainerView],
    /// Whether its sandbox (namespaces and network) is ready.
    pub sandbox_ready: bool,
    /// Its address.
    pub pod_ip: Option<String>,
    /// The node's address.
    pub host_ip: Option<String>,
    /// When the node took it on.
    pub start_time: DateTime<Utc>,
    /// Now.
    pub now: DateTime<Utc>,
}

fn condition(
    previous: Option<&PodStatus>,
    kind: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
    now: DateTime<Utc>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(time(now));
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason,
        message,
        last_transition_time: Some(since),
        last_probe_time: None,
        observed_generation: None,
    }
}

fn names(views: &[&ContainerView]) -> String {
    let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
    format!("[{}]", names.join(" "))
}

/// The pod's status.
pub fn pod_status(r: &Report) -> PodStatus {
    let previous = r.pod.status.as_ref();
    let policy = r
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let phase = phase(&policy, r.init, r.containers);
    let done = phase == "Succeeded" || phase == "Failed";
    let mut conditions = vec![condition(
        previous,
        "PodReadyToStartContainers",
        r.sandbox_ready,
        None,
        None,
        r.now,
    )];
    let incomplete: Vec<&ContainerView> = r
        .init
        .iter()
        .filter(|c| !matches!(&c.now, Now::Terminated(t) if t.exit_code == 0))
        .collect();
    conditions.push(if incomplete.is_empty() {
        condition(previous, "Initialized", true, None, None, r.now)
    } else {
        condition(
            previous,
            "Initialized",
            false,
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: {}",
                names(&incomplete)
            )),
            r.now,
        )
    });
    let unready: Vec<&ContainerView> = r.containers.iter().filter(|c| !c.ready).collect();
    for kind in ["Ready", "ContainersReady"] {
        conditions.push(if done {
            condition(
                previous,
                kind,
                false,
                Some("PodCompleted".into()),
                None,
                r.now,
            )
        } else if unready.is_empty() {
            condition(previous, kind, true, None, None, r.now)
        } else {
            condition(
                previous,
                kind,
                false,
                Some("ContainersNotReady".into()),
                Some(format!(
                    "containers with unready status: {}",
                    names(&unready)
                )),
                r.now,
            )
        });
    }
    conditions.push(
        previous
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
            .unwrap_or_else(|| condition(previous, "PodScheduled", true, None, None, r.now)),
    );
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: r.host_ip.clone(),
        host_ips: r.host_ip.clone().map(|ip| vec![HostIP { ip }]),
        pod_ip: r.pod_ip.clone(),
        pod_ips: r.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: Some(
            previous
                .and_then(|s| s.start_time.clone())
                .unwrap_or(time(r.start_time)),
        ),
        qos_class: previous.and_then(|s| s.qos_class.clone()),
        init_container_statuses: (!r.init.is_empty())
            .then(|| r.init.iter().map(container_status).collect()),
        container_statuses: Some(r.containers.iter().map(container_status).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(now: Now, last: Option<Terminated>) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "busybox".into(),
            image_id: None,
            container_id: None,
            restart_count: 0,
            ready: matches!(now, Now::Running(_)),
            started: matches!(now, Now::Running(_)),
            now,
            last,
        }
    }

    fn ended(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: Utc::now(),
            container_id: "bosun://x".into(),
        }
    }

    fn waiting(reason: &str) -> Now {
        Now::Waiting {
            reason: reason.into(),
            message: None,
        }
    }

    #[test]
    fn phases_follow_upstream() {
        let running = view(Now::Running(Utc::now()), None);
        let creating = view(waiting("ContainerCreating"), None);
        let ok = view(Now::Terminated(ended(0)), None);
        let failed = view(Now::Terminated(ended(2)), None);
        let crashloop = view(waiting("CrashLoopBackOff"), Some(ended(1)));
        assert_eq!(
            phase("Always", &[], std::slice::from_ref(&creating)),
            "Pending"
        );
        assert_eq!(
            phase("Always", &[], std::slice::from_ref(&running)),
            "Running"
        );
        assert_eq!(
            phase("Always", &[], std::slice::from_ref(&crashloop)),
            "Running"
        );
        assert_eq!(phase("Never", &[], std::slice::from_ref(&ok)), "Succeeded");
        assert_eq!(phase("Never", &[], std::slice::from_ref(&failed)), "Failed");
        assert_eq!(
            phase("OnFailure", &[], std::slice::from_ref(&ok)),
            "Succeeded"
        );
        assert_eq!(
            phase("OnFailure", &[], std::slice::from_ref(&crashloop)),
            "Running"
        );
        assert_eq!(phase("Never", &[], &[ok.clone(), failed.clone()]), "Failed");
        assert_eq!(
            phase("Never", &[], &[ok.clone(), running.clone()]),
            "Running"
        );
        // init containers
        assert_eq!(
            phase(
                "Always",
                std::slice::from_ref(&running),
                std::slice::from_ref(&creating)
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                "Never",
                std::slice::from_ref(&failed),
                std::slice::from_ref(&creating)
            ),
            "Failed"
        );
        assert_eq!(
            phase("Always", &[crashloop], std::slice::from_ref(&creating)),
            "Pending"
        );
        assert_eq!(phase("Always", &[ok], &[running]), "Running");
    }

    #[test]
    fn conditions_name_what_is_not_ready_and_keep_their_transition_times() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}
        }))
        .expect("pod");
        let mut a = view(Now::Running(Utc::now()), None);
        a.name = "a".into();
        let mut b = view(waiting("ContainerCreating"), None);
        b.name = "b".into();
        let t0 = Utc::now();
        let containers = [a, b];
        let report = Report {
            pod: &pod,
            init: &[],
            containers: &containers,
            sandbox_ready: true,
            pod_ip: Some("10.42.0.2".into()),
            host_ip: Some("192.168.1.2".into()),
            start_time: t0,
            now: t0,
        };
        let status = pod_status(&report);
        let conds = status.conditions.clone().expect("conditions");
        let ready = conds.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.pod_ips.clone().expect("ips")[0].ip, "10.42.0.2");

        let mut pod2 = pod.clone();
        pod2.status = Some(status);
        let later = t0 + chrono::Duration::seconds(5);
        let report = Report {
            pod: &pod2,
            now: later,
            ..report
        };
        let conds = pod_status(&report).conditions.expect("conditions");
        let init = conds
            .iter()
            .find(|c| c.type_ == "Initialized")
            .expect("init");
        assert_eq!(
            init.last_transition_time,
            Some(time(t0)),
            "unchanged since t0"
        );
    }
}
