//! The StatefulSet controller: pods with stable names `NAME-0` .. `NAME-(N-1)`, each with its
//! hostname and the governing service as subdomain, as upstream's. OrderedReady starts one pod
//! at a time, each once the one before is Running and Ready, and removes them from the highest
//! ordinal down, one at a time; Parallel does both at once. RollingUpdate replaces pods of an
//! older revision from the highest ordinal down to `partition`, one at a time, once all are
//! ready; OnDelete waits for the user. The template history is kept as ControllerRevisions and
//! the status names the current and update revisions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};

use crate::pods;
use crate::revisions::{self, HASH_LABEL};
use crate::{Context, Result, drive, retry};

const COMPONENT: &str = "statefulset-controller";
/// The label with a StatefulSet pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Runs the StatefulSet controller.
pub async fn run(ctx: Arc<Context>) {
    let sets = ctx.informers.statefulsets.clone();
    let stream = Controller::for_shared_stream(sets.subscribe(), sets.store())
        .owns_shared_stream(ctx.informers.pods.subscribe_owned_by::<StatefulSet>())
        .run(reconcile, retry, ctx);
    drive("statefulset", stream).await;
}

/// The ordinal in a pod's name `SET-N`.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && pods::is_ready(pod)
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

fn set_pod(sts: &StatefulSet, ord: i32, hash: &str) -> Pod {
    let spec = sts.spec.clone().unwrap_or_default();
    let mut pod = crate::replicaset::pod_from_template(sts, &spec.template);
    let name = format!("{}-{ord}", sts.name_any());
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(HASH_LABEL.into(), hash.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    if let Some(p) = pod.spec.as_mut() {
        p.hostname = Some(name);
        if let Some(service) = spec.service_name.filter(|s| !s.is_empty()) {
            p.subdomain = Some(service);
        }
    }
    pod
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action> {
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_default();
    let name = sts.name_any();
    let uid = sts.uid().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    let mut in_use = Vec::new();
    for pod in ctx.informers.pods.indexed(&pods::controlled_by(&uid)) {
        in_use.extend(hash_of(&pod).map(String::from));
        if let Some(ord) = ordinal(&name, &pod.name_any()) {
            by_ordinal.insert(ord, pod);
        }
    }
    let limit = spec.revision_history_limit.unwrap_or(10);
    let update = revisions::sync(&ctx, sts.as_ref(), &spec.template, &in_use, limit).await?;
    let old = sts.status.clone().unwrap_or_default();
    let current_revision = old
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update.name.clone());
    let current_hash = current_revision
        .strip_prefix(&format!("{name}-"))
        .unwrap_or("")
        .to_string();

    let mut create = Vec::new();
    let mut delete: Vec<Arc<Pod>> = Vec::new();
    let mut all_healthy = true;
    for ord in 0..replicas {
        match by_ordinal.get(&ord) {
            None => {
                create.push(ord);
                all_healthy = false;
                if !parallel {
                    break;
                }
            }
            Some(p) if pods::is_terminal(p) && p.metadata.deletion_timestamp.is_none() => {
                delete.push(p.clone());
                all_healthy = false;
                if !parallel {
                    break;
                }
            }
            Some(p) if !running_and_ready(p) || p.metadata.deletion_timestamp.is_some() => {
                all_healthy = false;
                if !parallel {
                    break;
                }
            }
            Some(_) => {}
        }
    }
    // Scale down, from the highest ordinal.
    let condemned: Vec<Arc<Pod>> = by_ordinal
        .range(replicas..)
        .rev()
        .map(|(_, p)| p.clone())
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let terminating = by_ordinal
        .values()
        .any(|p| p.metadata.deletion_timestamp.is_some());
    if parallel {
        delete.extend(condemned);
    } else if let Some(highest) = condemned.first()
        && all_healthy
        && !terminating
    {
        delete.push(highest.clone());
    }
    // Rolling update, from the highest ordinal down to the partition.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if strategy.type_.as_deref() != Some("OnDelete")
        && all_healthy
        && !terminating
        && delete.is_empty()
        && by_ordinal.range(replicas..).next().is_none()
        && let Some((_, stale)) = by_ordinal
            .range(partition.max(0)..replicas)
            .rev()
            .find(|(_, p)| hash_of(p) != Some(update.hash.as_str()))
    {
        delete.push(stale.clone());
    }

    for ord in create {
        let pod = set_pod(&sts, ord, &update.hash);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => ctx.events.normal(
                COMPONENT,
                sts.as_ref(),
                "SuccessfulCreate",
                format!("create Pod {pod_name} in StatefulSet {name} successful"),
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                ctx.events.warning(
                    COMPONENT,
                    sts.as_ref(),
                    "FailedCreate",
                    format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                );
                return Err(e.into());
            }
        }
    }
    for pod in delete {
        if pods::delete_exactly(&api, pod.as_ref(), DeleteParams::default()).await? {
            ctx.events.normal(
                COMPONENT,
                sts.as_ref(),
                "SuccessfulDelete",
                format!(
                    "delete Pod {} in StatefulSet {name} successful",
                    pod.name_any()
                ),
            );
        }
    }

    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let live: Vec<&Arc<Pod>> = by_ordinal
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !pods::is_terminal(p))
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let updated = count(&|p| hash_of(p) == Some(update.hash.as_str()));
    let ready = count(&pods::is_ready);
    let rolled = updated == replicas && ready >= replicas;
    let status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        replicas: count(&|_| true),
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, now))),
        current_replicas: Some(if rolled {
            updated
        } else {
            count(&|p| hash_of(p) == Some(current_hash.as_str()))
        }),
        updated_replicas: Some(updated),
        current_revision: Some(if rolled {
            update.name.clone()
        } else {
            current_revision
        }),
        update_revision: Some(update.name.clone()),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    if status != old {
        let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        crate::write_status(&sets, &name, &status, &[]).await?;
    }
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1),
        )));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_the_name() {
        assert_eq!(ordinal("db", "db-0"), Some(0));
        assert_eq!(ordinal("db", "db-12"), Some(12));
        assert_eq!(ordinal("db", "dbx-1"), None);
        assert_eq!(ordinal("db", "db-a"), None);
    }
}
