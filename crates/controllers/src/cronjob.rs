//! The CronJob controller: makes a Job from the template at each scheduled time, as upstream's.
//! The Job is named after the scheduled minute (`NAME-<minutes since the epoch>`), so a time
//! is never run twice; a time missed by more than startingDeadlineSeconds is skipped;
//! concurrencyPolicy Forbid skips a time while a Job is active and Replace deletes the active
//! ones first; suspend stops new Jobs; finished Jobs beyond the history limits are deleted;
//! the status lists the active Jobs and the last schedule and success times.

use std::sync::Arc;
use std::time::Duration;

use jiff::{Timestamp, ToSpan};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Resource, ResourceExt};

use crate::cron::{self, Schedule};
use crate::pods::{controller_of, controller_ref};
use crate::{Context, Result, drive, retry};

const COMPONENT: &str = "cronjob-controller";
/// The annotation with the time a Job was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed times beyond this many are not counted one by one.
const MISSED_CAP: usize = 100;

/// Runs the CronJob controller.
pub async fn run(ctx: Arc<Context>) {
    let cronjobs = ctx.informers.cronjobs.clone();
    let jobs = ctx.informers.jobs.clone();
    let stream = Controller::for_shared_stream(cronjobs.subscribe(), cronjobs.store())
        .owns_shared_stream(jobs.subscribe_owned_by::<CronJob>())
        .run(reconcile, retry, ctx);
    drive("cronjob", stream).await;
}

fn finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        resource_version: job.metadata.resource_version.clone(),
        ..job.object_ref(&())
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut jobs: Vec<Arc<Job>> = ctx
        .informers
        .jobs
        .objects()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));

    let old = cj.status.clone().unwrap_or_default();
    let mut status = CronJobStatus {
        active: None,
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: old.last_successful_time.clone(),
    };
    let completed_at = |j: &Job| j.status.as_ref().and_then(|s| s.completion_time.clone());
    for j in &jobs {
        if let Some(t) = completed_at(j)
            && status
                .last_successful_time
                .as_ref()
                .is_none_or(|l| l.0 < t.0)
        {
            status.last_successful_time = Some(t);
        }
    }
    let mut active: Vec<ObjectReference> = jobs
        .iter()
        .filter(|j| finished(j).is_none())
        .map(|j| reference(j))
        .collect();

    // History limits: the oldest finished Jobs beyond them go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Job>> = jobs.iter().filter(|j| finished(j) == Some(kind)).collect();
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for j in done.into_iter().take(excess) {
            match job_api
                .delete(&j.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => ctx.events.normal(
                    COMPONENT,
                    cj.as_ref(),
                    "SuccessfulDelete",
                    format!("Deleted job {}", j.name_any()),
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    let mut requeue = None;
    let schedule = Schedule::parse(&spec.schedule);
    let zone = cron::zone(spec.time_zone.as_deref());
    match (schedule, zone) {
        (Err(e), _) | (_, Err(e)) => {
            ctx.events.warning(
                COMPONENT,
                cj.as_ref(),
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            );
        }
        (Ok(_), Ok(_)) if spec.suspend.unwrap_or(false) => {}
        (Ok(schedule), Ok(tz)) => {
            let now = Timestamp::now();
            let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
            let mut earliest = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
            if let Some(deadline) = spec.starting_deadline_seconds {
                let bound = now.checked_sub(deadline.seconds()).unwrap_or(now);
                earliest = earliest.max(bound);
            }
            let (missed, count) = schedule.last_missed(earliest, now, &tz, MISSED_CAP);
            if count >= MISSED_CAP {
                ctx.events.warning(
                    COMPONENT,
                    cj.as_ref(),
                    "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
                );
            }
            if let Some(at) = missed {
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                if policy == "Forbid" && !active.is_empty() {
                    ctx.events.normal(
                        COMPONENT,
                        cj.as_ref(),
                        "JobAlreadyActive",
                        "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                    );
                } else {
                    if policy == "Replace" {
                        for r in active.drain(..) {
                            let name = r.name.unwrap_or_default();
                            match job_api.delete(&name, &DeleteParams::background()).await {
                                Ok(_) => ctx.events.normal(
                                    COMPONENT,
                                    cj.as_ref(),
                                    "SuccessfulDelete",
                                    format!("Deleted job {name}"),
                                ),
                                Err(kube::Error::Api(e)) if e.code == 404 => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    let job = job_for(&cj, at);
                    match job_api.create(&PostParams::default(), &job).await {
                        Ok(made) => {
                            ctx.events.normal(
                                COMPONENT,
                                cj.as_ref(),
                                "SuccessfulCreate",
                                format!("Created job {}", made.name_any()),
                            );
                            active.push(reference(&made));
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => {
                            ctx.events.warning(
                                COMPONENT,
                                cj.as_ref(),
                                "FailedCreate",
                                format!("Error creating job: {e}"),
                            );
                            return Err(e.into());
                        }
                    }
                    status.last_schedule_time = Some(Time(at));
                }
            }
            if let Some(next) = schedule.next(now, &tz) {
                let wait = next.as_second() - now.as_second();
                requeue = Some(Duration::from_secs(
                    u64::try_from(wait.max(0)).unwrap_or(0) + 1,
                ));
            }
        }
    }
    status.active = (!active.is_empty()).then_some(active);
    if status != old {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        crate::write_status(&api, &cj.name_any(), &status, &["active"]).await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The Job of one scheduled time.
fn job_for(cj: &CronJob, at: Timestamp) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), cron::rfc3339(at));
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", cj.name_any(), at.as_second() / 60)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}
