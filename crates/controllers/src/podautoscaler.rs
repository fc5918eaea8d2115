//! The horizontal pod autoscaler controller: every 15 s (upstream's sync period) each
//! HorizontalPodAutoscaler reads its target's scale subresource, the usage of the target's
//! pods from the resource metrics API (`metrics.k8s.io`, as upstream reads metrics-server),
//! works out the replicas each Resource metric asks for ([`crate::scaling`]), takes the
//! largest, stabilizes and limits it by the HPA's behavior, and writes the new count to the
//! scale subresource, with upstream's status (current and desired replicas, current metrics,
//! AbleToScale, ScalingActive and ScalingLimited conditions) and events (SuccessfulRescale,
//! FailedGetResourceMetric, ...).
//!
//! Only Resource metrics (cpu, memory; Utilization and AverageValue) are served: Pods, Object,
//! External and ContainerResource metrics need custom metrics APIs bosun does not have, and
//! make ScalingActive false. An HPA without `behavior` gets upstream's default behaviors
//! (upstream's older fixed rule, at most double or 4 on the way up, differs only for one
//! replica: 5 here, 4 there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use serde_json::{Value, json};

use crate::scaling::{self, History, PodView, Proposal, Rules, Sample, Target};
use crate::{Context, Result, drive, write_status};

/// How often each autoscaler looks again (`--horizontal-pod-autoscaler-sync-period`).
const SYNC: Duration = Duration::from_secs(15);
/// The component its events come from.
const COMPONENT: &str = "horizontal-pod-autoscaler";

/// The controller's memory of each autoscaler.
#[derive(Default)]
struct Memory {
    history: HashMap<String, History>,
    /// When each was last synced, and at which generation.
    synced: HashMap<String, (Instant, Option<i64>)>,
}

struct Autoscaler {
    ctx: Arc<Context>,
    memory: Mutex<Memory>,
}

/// Runs the horizontal pod autoscaler controller.
pub async fn run(ctx: Arc<Context>) {
    let hpas = ctx.informers.autoscalers.clone();
    let autoscaler = Arc::new(Autoscaler {
        ctx,
        memory: Mutex::new(Memory::default()),
    });
    let stream = Controller::for_shared_stream(hpas.subscribe(), hpas.store()).run(
        reconcile,
        |_, e: &crate::Error, _| {
            tracing::debug!(error = %e, "autoscaler sync failed");
            Action::requeue(SYNC)
        },
        autoscaler,
    );
    drive("horizontal-pod-autoscaler", stream).await;
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, a: Arc<Autoscaler>) -> Result<Action> {
    let ns = hpa.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", hpa.name_any());
    {
        // changes to the HPA (its own status among them) wait for the next period, unless
        // its spec changed
        let memory = a.memory.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, generation)) = memory.synced.get(&key)
            && *generation == hpa.metadata.generation
            && at.elapsed() < SYNC
        {
            return Ok(Action::requeue(SYNC - at.elapsed()));
        }
    }
    let outcome = sync(&hpa, &a, &key, &ns).await;
    let mut memory = a.memory.lock().unwrap_or_else(|p| p.into_inner());
    memory
        .synced
        .insert(key, (Instant::now(), hpa.metadata.generation));
    // what is kept of deleted autoscalers goes
    let exists = |key: &String| {
        key.split_once('/')
            .is_some_and(|(ns, name)| a.ctx.informers.autoscalers.get(Some(ns), name).is_some())
    };
    memory.synced.retain(|k, _| exists(k));
    memory.history.retain(|k, _| exists(k));
    outcome.map(|()| Action::requeue(SYNC))
}

/// The conditions being written, each replacing the one of its type.
struct Conditions {
    old: Vec<HorizontalPodAutoscalerCondition>,
    new: Vec<HorizontalPodAutoscalerCondition>,
}

impl Conditions {
    fn set(&mut self, kind: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" };
        let since = self
            .old
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(Timestamp::now()));
        self.new.retain(|c| c.type_ != kind);
        self.new.push(HorizontalPodAutoscalerCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(since),
        });
    }

    /// The conditions: the set ones, then the old ones not set again.
    fn all(self) -> Vec<HorizontalPodAutoscalerCondition> {
        let mut all = self.new;
        for c in self.old {
            if !all.iter().any(|n| n.type_ == c.type_) {
                all.push(c);
            }
        }
        let order = ["AbleToScale", "ScalingActive", "ScalingLimited"];
        all.sort_by_key(|c| order.iter().position(|o| *o == c.type_));
        all
    }
}

async fn sync(hpa: &HorizontalPodAutoscaler, a: &Autoscaler, key: &str, ns: &str) -> Result<()> {
    let ctx = &a.ctx;
    let spec = hpa.spec.clone().unwrap_or_default();
    let status = hpa.status.clone().unwrap_or_default();
    let mut conditions = Conditions {
        old: status.conditions.clone().unwrap_or_default(),
        new: Vec::new(),
    };
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    let reference = &spec.scale_target_ref;
    let target = scale_target(ctx, ns, reference.api_version.as_deref(), &reference.kind);
    let scale = match &target {
        Some(t) => t
            .get_scale(&reference.name)
            .await
            .map_err(|e| e.to_string()),
        None => Err(format!(
            "no matches for kind \"{}\" in group \"{}\"",
            reference.kind,
            reference
                .api_version
                .as_deref()
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("")
        )),
    };
    let scale = match scale {
        Ok(s) => s,
        Err(e) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {e}");
            ctx.events.warning(COMPONENT, hpa, "FailedGetScale", e);
            conditions.set("AbleToScale", false, "FailedGetScale", message);
            let status = HorizontalPodAutoscalerStatus {
                conditions: Some(conditions.all()),
                ..status
            };
            write_status(&api, &hpa.name_any(), &status, &[]).await?;
            return Ok(());
        }
    };
    let current = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
    let selector = scale.status.and_then(|s| s.selector).unwrap_or_default();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let now = Timestamp::now();
    let mut current_metrics = status.current_metrics.clone();
    let (desired, reason) = if current == 0 && min != 0 {
        conditions.set(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        );
        (0, String::new())
    } else if current > max {
        (
            max,
            "Current number of replicas above Spec.MaxReplicas".into(),
        )
    } else if current < min {
        (
            min,
            "Current number of replicas below Spec.MinReplicas".into(),
        )
    } else {
        let pods = pods_of(ctx, ns, &selector);
        let mut best: Option<(i32, String)> = None;
        let mut statuses = Vec::new();
        let mut errors = Vec::new();
        for metric in spec.metrics.iter().flatten() {
            match propose(ctx, ns, &selector, metric, &pods, current, now).await {
                Ok((proposal, name, status)) => {
                    statuses.push(status);
                    if best.as_ref().is_none_or(|(r, _)| proposal.replicas > *r) {
                        best = Some((proposal.replicas, name));
                    }
                }
                Err((reason, e)) => {
                    ctx.events.warning(COMPONENT, hpa, reason, e.clone());
                    conditions.set(
                        "ScalingActive",
                        false,
                        reason,
                        format!("the HPA was unable to compute the replica count: {e}"),
                    );
                    errors.push(e);
                }
            }
        }
        // as upstream: with some metrics invalid, only a scale up goes ahead
        let total = spec.metrics.iter().flatten().count();
        let Some((proposed, metric_name)) = best.filter(|(r, _)| errors.is_empty() || *r > current)
        else {
            let first = errors.first().cloned().unwrap_or_default();
            ctx.events.warning(
                COMPONENT,
                hpa,
                "FailedComputeMetricsReplicas",
                format!(
                    "invalid metrics ({} invalid out of {total}), first error is: {first}",
                    errors.len()
                ),
            );
            let status = HorizontalPodAutoscalerStatus {
                conditions: Some(conditions.all()),
                current_replicas: Some(current),
                current_metrics: None,
                ..status
            };
            write_status(&api, &hpa.name_any(), &status, &["currentMetrics"]).await?;
            return Ok(());
        };
        current_metrics = Some(statuses);
        if errors.is_empty() {
            conditions.set(
                "ScalingActive",
                true,
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {metric_name}"
                ),
            );
        }
        let behavior = spec.behavior.clone().unwrap_or_default();
        let up = rules(behavior.scale_up.as_ref(), Rules::default_up());
        let down = rules(behavior.scale_down.as_ref(), Rules::default_down());
        let normalized = {
            let mut memory = a.memory.lock().unwrap_or_else(|p| p.into_inner());
            let history = memory.history.entry(key.to_string()).or_default();
            scaling::normalize(history, &up, &down, (min, max), current, proposed, now)
        };
        conditions.set(
            "AbleToScale",
            true,
            normalized.stabilized.0,
            normalized.stabilized.1.into(),
        );
        conditions.set(
            "ScalingLimited",
            normalized.limited.0,
            normalized.limited.1,
            normalized.limited.2.into(),
        );
        let reason = if normalized.replicas < current {
            "All metrics below target".to_string()
        } else {
            format!("{metric_name} above target")
        };
        (normalized.replicas, reason)
    };
    let mut last_scale_time = status.last_scale_time.clone();
    if desired != current
        && let Some(target) = &target
    {
        let patch = Patch::Merge(json!({"spec": {"replicas": desired}}));
        match target
            .patch_scale(&reference.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                ctx.events.normal(
                    COMPONENT,
                    hpa,
                    "SuccessfulRescale",
                    format!("New size: {desired}; reason: {reason}"),
                );
                conditions.set(
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                );
                let mut memory = a.memory.lock().unwrap_or_else(|p| p.into_inner());
                let history = memory.history.entry(key.to_string()).or_default();
                scaling::record_change(history, current, desired, now);
                last_scale_time = Some(Time(now));
            }
            Err(e) => {
                ctx.events.warning(
                    COMPONENT,
                    hpa,
                    "FailedRescale",
                    format!("New size: {desired}; reason: {reason}; error: {e}"),
                );
                conditions.set(
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {e}"),
                );
            }
        }
    }
    let status = HorizontalPodAutoscalerStatus {
        observed_generation: hpa.metadata.generation,
        current_replicas: Some(current),
        desired_replicas: desired,
        current_metrics,
        conditions: Some(conditions.all()),
        last_scale_time,
    };
    if hpa.status.as_ref() != Some(&status) {
        write_status(&api, &hpa.name_any(), &status, &[]).await?;
    }
    Ok(())
}

/// A client of the scale subresource of the kind an HPA targets.
fn scale_target(
    ctx: &Context,
    ns: &str,
    api_version: Option<&str>,
    kind: &str,
) -> Option<Api<DynamicObject>> {
    let rt = api::registry().by_kind(api_version?, kind)?;
    if !rt.has_subresource("scale") {
        return None;
    }
    let resource = crate::api_resource(rt);
    Some(Api::namespaced_with(ctx.client.clone(), ns, &resource))
}

/// The pods a scale selector selects.
fn pods_of(ctx: &Context, ns: &str, selector: &str) -> Vec<Arc<Pod>> {
    let Ok(selector) = api::selector::LabelSelector::parse(selector) else {
        return Vec::new();
    };
    if selector.is_empty() {
        return Vec::new();
    }
    ctx.informers
        .pods
        .objects()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| crate::pods::selects(&selector, &p.metadata))
        .collect()
}

/// A behavior direction with upstream's defaults for what it leaves out.
fn rules(given: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(given) = given else {
        return default;
    };
    Rules {
        stabilization_seconds: given
            .stabilization_window_seconds
            .map_or(default.stabilization_seconds, i64::from),
        select: given.select_policy.clone().unwrap_or(default.select),
        policies: match &given.policies {
            Some(p) => p
                .iter()
                .map(|p| scaling::Policy {
                    pods: p.type_ == "Pods",
                    value: p.value,
                    period_seconds: p.period_seconds,
                })
                .collect(),
            None => default.policies,
        },
    }
}

/// The replicas one metric asks for, the words naming it, and its status; or the failure's
/// reason and message.
async fn propose(
    ctx: &Context,
    ns: &str,
    selector: &str,
    metric: &k8s_openapi::api::autoscaling::v2::MetricSpec,
    pods: &[Arc<Pod>],
    current: i32,
    now: Timestamp,
) -> std::result::Result<(Proposal, String, MetricStatus), (&'static str, String)> {
    let Some(resource) = metric
        .resource
        .as_ref()
        .filter(|_| metric.type_ == "Resource")
    else {
        let reason = match metric.type_.as_str() {
            "Pods" => "FailedGetPodsMetric",
            "Object" => "FailedGetObjectMetric",
            "External" => "FailedGetExternalMetric",
            "ContainerResource" => "FailedGetContainerResourceMetric",
            _ => "InvalidMetricSourceType",
        };
        return Err((
            reason,
            format!(
                "unable to get metric {}: metrics of this type are not served",
                metric.type_
            ),
        ));
    };
    let name = resource.name.as_str();
    let target = match (
        resource.target.average_utilization,
        resource.target.average_value.as_ref(),
    ) {
        (Some(u), _) => Target::Utilization(i64::from(u)),
        (None, Some(v)) => Target::AverageValue(api::quantity::milli(&v.0).unwrap_or(0)),
        (None, None) => {
            return Err((
                "FailedGetResourceMetric",
                format!("invalid resource metric target for {name}"),
            ));
        }
    };
    let failed = |e: String| match target {
        Target::Utilization(_) => (
            "FailedGetResourceMetric",
            format!("failed to get {name} utilization: {e}"),
        ),
        Target::AverageValue(_) => (
            "FailedGetResourceMetric",
            format!("failed to get {name} usage: {e}"),
        ),
    };
    let samples = usage(ctx, ns, selector, name).await.map_err(failed)?;
    let views: Vec<PodView> = pods.iter().map(|p| view(p, name)).collect();
    let proposal =
        scaling::replicas(current, target, name, &views, &samples, now).map_err(failed)?;
    let words = match target {
        Target::Utilization(_) => format!("{name} resource utilization (percentage of request)"),
        Target::AverageValue(_) => format!("{name} resource"),
    };
    let status = MetricStatus {
        type_: "Resource".into(),
        resource: Some(ResourceMetricStatus {
            name: name.into(),
            current: MetricValueStatus {
                average_utilization: proposal.utilization.map(|u| u as i32),
                average_value: Some(Quantity(api::quantity::format_milli(
                    proposal.average,
                    name == "memory",
                ))),
                value: None,
            },
        }),
        ..Default::default()
    };
    Ok((proposal, words, status))
}

/// A pod as the replica calculation sees it.
fn view(pod: &Pod, resource: &str) -> PodView {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            )
        });
    let request = pod.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .map(|c| {
                let q = c.resources.as_ref()?.requests.as_ref()?.get(resource)?;
                api::quantity::milli(&q.0).ok()
            })
            .sum::<Option<i64>>()
    });
    PodView {
        name: pod.name_any(),
        ignored: pod.metadata.deletion_timestamp.is_some() || phase == "Failed",
        pending: phase == "Pending",
        started: status.start_time.map(|t| t.0),
        ready,
        request,
    }
}

/// The usage of `resource` by each pod the selector selects, from the resource metrics API.
async fn usage(
    ctx: &Context,
    ns: &str,
    selector: &str,
    resource: &str,
) -> std::result::Result<HashMap<String, Sample>, String> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("labelSelector", selector)
        .finish();
    let request = http::Request::get(format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?{query}"
    ))
    .body(Vec::new())
    .map_err(|e| e.to_string())?;
    let list: Value = ctx
        .client
        .request(request)
        .await
        .map_err(|e| format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}"))?;
    let mut samples = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let Some(containers) = item["containers"].as_array() else {
            continue;
        };
        let total: Option<i64> = containers
            .iter()
            .map(|c| {
                c.pointer(&format!("/usage/{resource}"))
                    .and_then(Value::as_str)
                    .and_then(|q| api::quantity::milli(q).ok())
            })
            .sum();
        let timestamp = item["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok());
        let window = item["window"]
            .as_str()
            .and_then(|w| w.strip_suffix('s')?.parse::<f64>().ok())
            .map_or(SignedDuration::ZERO, SignedDuration::from_secs_f64);
        if let (Some(value), Some(timestamp), Some(name)) = (
            total,
            timestamp,
            item.pointer("/metadata/name").and_then(Value::as_str),
        ) {
            samples.insert(
                name.to_string(),
                Sample {
                    value,
                    timestamp,
                    window,
                },
            );
        }
    }
    if samples.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    Ok(samples)
}
