//! The Job controller: runs a Job's pods to completion, as upstream's. It keeps up to
//! `parallelism` pods active until `completions` pods succeeded (a Job without completions is
//! done when one pod succeeded and none is left running; an Indexed Job needs one success per
//! index, each pod carrying its index), waits the upstream back-off (10 s doubling, at most
//! 6 min) before replacing a failed pod, fails the Job with BackoffLimitExceeded past
//! `backoffLimit` failures (container restarts count under OnFailure) or with DeadlineExceeded
//! past `activeDeadlineSeconds`, honours `suspend`, and deletes a finished Job once its
//! `ttlSecondsAfterFinished` has passed.
//!
//! Succeeded and failed counts are those of the Job's pods, never lower than the last status
//! (a finished pod deleted meanwhile is not forgotten; upstream tracks them with a finalizer).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};

use crate::pods;
use crate::{Context, Result, drive, retry};

const COMPONENT: &str = "job-controller";
/// The annotation (and label) with an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The most pods created in one pass.
const BURST: usize = 500;
/// The back-off before replacing the first failed pod; it doubles per failure.
const BACKOFF_BASE_SECONDS: i64 = 10;
const BACKOFF_MAX_SECONDS: i64 = 360;

/// Runs the Job controller.
pub async fn run(ctx: Arc<Context>) {
    let jobs = ctx.informers.jobs.clone();
    let all_pods = ctx.informers.pods.clone();
    let stream = Controller::for_shared_stream(jobs.subscribe(), jobs.store())
        .owns_shared_stream(all_pods.subscribe_owned_by::<Job>())
        .run(reconcile, retry, ctx);
    drive("job", stream).await;
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// When the Job finished, if it did.
fn finished_at(job: &Job) -> Option<Timestamp> {
    ["Complete", "Failed"].iter().find_map(|t| {
        let c = condition(job, t)?;
        Some(
            c.last_transition_time
                .as_ref()
                .map_or_else(Timestamp::now, |t| t.0),
        )
    })
}

fn new_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
}

/// Parses `completedIndexes` ("1,3-5") into a set.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Writes a set of indexes as `completedIndexes` does: ranges of consecutive ones.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The back-off before the next pod after `failures` failures.
pub fn backoff_seconds(failures: i32) -> i64 {
    if failures <= 0 {
        return 0;
    }
    let exp = u32::try_from(failures - 1).unwrap_or(0).min(16);
    (BACKOFF_BASE_SECONDS << exp).min(BACKOFF_MAX_SECONDS)
}

/// When the pod's last container finished, or its deletion began.
fn finished(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max()
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    if let Some(at) = finished_at(&job) {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let left = at.as_second() + i64::from(ttl) - now.as_second();
        if left > 0 {
            return Ok(Action::requeue(Duration::from_secs(
                u64::try_from(left).unwrap_or(1),
            )));
        }
        pods::delete_exactly(&jobs, job.as_ref(), DeleteParams::foreground()).await?;
        return Ok(Action::await_change());
    }

    let key = format!("Job/{ns}/{}", job.name_any());
    let uid = job.uid().unwrap_or_default();
    let informer = &ctx.informers.pods;
    let owned: Vec<Arc<Pod>> = informer.indexed(&pods::controlled_by(&uid));
    let outstanding = ctx.expectations.outstanding(
        &key,
        |n| informer.get(Some(&ns), n).is_some(),
        |u| {
            owned
                .iter()
                .any(|p| p.uid().as_deref() == Some(u) && p.metadata.deletion_timestamp.is_none())
        },
    );
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let active: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::is_active(p))
        .filter(|p| {
            !outstanding
                .deletes
                .iter()
                .any(|u| Some(u) == p.uid().as_ref())
        })
        .collect();
    let succeeded_pods: Vec<&Arc<Pod>> = owned.iter().filter(|p| phase(p) == "Succeeded").collect();
    let failed_pods: Vec<&Arc<Pod>> = owned.iter().filter(|p| phase(p) == "Failed").collect();
    let old = job.status.clone().unwrap_or_default();
    let count = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut completed_indexes = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""));
    if indexed {
        completed_indexes.extend(succeeded_pods.iter().filter_map(|p| index_of(p)));
    }
    let succeeded = if indexed {
        count(completed_indexes.len())
    } else {
        old.succeeded.unwrap_or(0).max(count(succeeded_pods.len()))
    };
    let failed = old.failed.unwrap_or(0).max(count(failed_pods.len()));
    let restarts: i32 = active
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let start_time = old.start_time.as_ref().map_or(now, |t| t.0);
    let suspended = spec.suspend.unwrap_or(false);

    let mut status = JobStatus {
        active: Some(count(active.len())),
        ready: Some(count(active.iter().filter(|p| pods::is_ready(p)).count())),
        succeeded: Some(succeeded),
        failed: Some(failed),
        start_time: if suspended {
            old.start_time.clone()
        } else {
            Some(Time(start_time))
        },
        completed_indexes: indexed.then(|| format_indexes(&completed_indexes)),
        conditions: old.conditions.clone(),
        ..old.clone()
    };
    let mut finish: Option<(JobCondition, bool)> = None;
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let completions = spec.completions;
    if failed + if on_failure { restarts } else { 0 } > backoff_limit {
        finish = Some((
            new_condition(
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ),
            false,
        ));
    } else if let Some(deadline) = spec.active_deadline_seconds
        && !suspended
        && now.as_second() - start_time.as_second() >= deadline
    {
        finish = Some((
            new_condition(
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                now,
            ),
            false,
        ));
    } else if match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    } {
        finish = Some((
            new_condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ),
            true,
        ));
    }

    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut requeue = None;
    if let Some((cond, complete)) = finish {
        // A finished Job leaves nothing running.
        delete_pods(&ctx, &api, &job, &key, &active).await?;
        status.active = Some(0);
        status.ready = Some(0);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if complete {
            conditions.push(JobCondition {
                type_: "SuccessCriteriaMet".into(),
                ..cond.clone()
            });
            conditions.push(cond);
            status.completion_time = Some(Time(now));
            ctx.events
                .normal(COMPONENT, job.as_ref(), "Completed", "Job completed".into());
        } else {
            let reason = cond.reason.clone().unwrap_or_default();
            let message = cond.message.clone().unwrap_or_default();
            conditions.push(JobCondition {
                type_: "FailureTarget".into(),
                ..cond.clone()
            });
            conditions.push(cond);
            ctx.events
                .warning(COMPONENT, job.as_ref(), &reason, message);
        }
    } else if suspended {
        delete_pods(&ctx, &api, &job, &key, &active).await?;
        status.active = Some(0);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if !conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(new_condition(
                "Suspended",
                "JobSuspended",
                "Job suspended",
                now,
            ));
            ctx.events
                .normal(COMPONENT, job.as_ref(), "Suspended", "Job suspended".into());
        }
    } else {
        if let Some(conditions) = status.conditions.as_mut()
            && conditions
                .iter()
                .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            conditions.retain(|c| c.type_ != "Suspended");
            ctx.events
                .normal(COMPONENT, job.as_ref(), "Resumed", "Job resumed".into());
        }
        let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0);
        let have = active.len() + outstanding.creates.len();
        let want = match completions {
            Some(c) if indexed => {
                let left = usize::try_from(c)
                    .unwrap_or(0)
                    .saturating_sub(completed_indexes.len());
                parallelism.min(left)
            }
            Some(c) => parallelism.min(usize::try_from(c - succeeded).unwrap_or(0)),
            None if succeeded > 0 => have.min(parallelism),
            None => parallelism,
        };
        if have < want {
            let last_failure = failed_pods.iter().filter_map(|p| finished(p)).max();
            let wait = last_failure.map_or(0, |at| {
                at.as_second() + backoff_seconds(failed) - now.as_second()
            });
            if failed > 0 && wait > 0 {
                requeue = Some(Duration::from_secs(u64::try_from(wait).unwrap_or(1)));
            } else {
                let busy: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                let mut free = (0..completions.unwrap_or(0))
                    .filter(|i| !completed_indexes.contains(i) && !busy.contains(i));
                for _ in 0..(want - have).min(BURST) {
                    let index = if indexed {
                        match free.next() {
                            Some(i) => Some(i),
                            None => break,
                        }
                    } else {
                        None
                    };
                    let pod = job_pod(&job, &spec.template, index);
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(made) => {
                            ctx.expectations.created(&key, &made.name_any());
                            ctx.events.normal(
                                COMPONENT,
                                job.as_ref(),
                                "SuccessfulCreate",
                                format!("Created pod: {}", made.name_any()),
                            );
                        }
                        Err(e) => {
                            let message = match &e {
                                kube::Error::Api(s) => s.message.clone(),
                                other => other.to_string(),
                            };
                            ctx.events.warning(
                                COMPONENT,
                                job.as_ref(),
                                "FailedCreate",
                                format!("Error creating: {message}"),
                            );
                            return Err(e.into());
                        }
                    }
                }
            }
        } else if have > want {
            let mut extra: Vec<&Arc<Pod>> = active.clone();
            extra.sort_by(|a, b| pods::deletion_order(a, b));
            extra.truncate(have - want);
            delete_pods(&ctx, &api, &job, &key, &extra).await?;
        }
        if let Some(deadline) = spec.active_deadline_seconds {
            let left = start_time.as_second() + deadline - now.as_second();
            let left = Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1));
            requeue = Some(requeue.map_or(left, |r: Duration| r.min(left)));
        }
    }
    if status != old {
        crate::write_status(&jobs, &job.name_any(), &status, &["conditions"]).await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The pod of a Job (of one index for an Indexed Job).
fn job_pod(job: &Job, template: &PodTemplateSpec, index: Option<i32>) -> Pod {
    let mut pod = crate::replicaset::pod_from_template(job, template);
    if let Some(i) = index {
        let name = job.name_any();
        pod.metadata.generate_name = Some(format!("{name}-{i}-"));
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        if let Some(spec) = pod.spec.as_mut() {
            spec.hostname = Some(format!("{name}-{i}"));
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                c.env.get_or_insert_with(Vec::new).push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                        field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                            field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                            api_version: None,
                        }),
                        ..Default::default()
                    }),
                    value: None,
                });
            }
        }
    }
    pod
}

async fn delete_pods(
    ctx: &Context,
    api: &Api<Pod>,
    job: &Job,
    key: &str,
    victims: &[&Arc<Pod>],
) -> Result<()> {
    for pod in victims {
        if pods::delete_exactly(api, pod.as_ref(), DeleteParams::default()).await? {
            ctx.expectations
                .deleted(key, &pod.uid().unwrap_or_default());
            ctx.events.normal(
                COMPONENT,
                job,
                "SuccessfulDelete",
                format!("Deleted pod: {}", pod.name_any()),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set = parse_indexes("0,2-4,7");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![0, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&set), "0,2-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn back_off_doubles_from_ten_seconds_to_six_minutes() {
        assert_eq!(backoff_seconds(0), 0);
        assert_eq!(backoff_seconds(1), 10);
        assert_eq!(backoff_seconds(2), 20);
        assert_eq!(backoff_seconds(6), 320);
        assert_eq!(backoff_seconds(7), 360);
        assert_eq!(backoff_seconds(40), 360);
    }
}
