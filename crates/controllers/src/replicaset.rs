//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector, as
//! upstream's. It adopts orphan pods the selector matches, releases pods whose labels stop
//! matching, creates missing pods from the template in slow-start batches (1, 2, 4, ... at most
//! 500 per pass), deletes the least valuable pods first on scale down, and reports replicas,
//! fullyLabeledReplicas, readyReplicas, availableReplicas and the ReplicaFailure condition.
//!
//! The same loop runs ReplicationControllers, seen as ReplicaSets (their equality selector as
//! `matchLabels`), as upstream's replication manager does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;

use crate::pods::{self, controller_of, controller_ref};
use crate::{Context, Result, drive, retry};

/// The most pods created or deleted in one pass (upstream's burstReplicas).
const BURST: usize = 500;

/// What this controller runs for: a ReplicaSet, or a ReplicationController seen as one.
pub trait Replicated:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The name events are recorded under.
    const COMPONENT: &'static str;
    /// The objects' shared informer.
    fn informer(ctx: &Context) -> &Arc<crate::informer::Informer<Self>>;
    /// The object with its spec and status in ReplicaSet form.
    fn as_replica_set(&self) -> ReplicaSet;
    /// Its pod selector, as a matcher (cheaper than [`Replicated::as_replica_set`]).
    fn selector(&self) -> Option<api::selector::LabelSelector>;
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn informer(ctx: &Context) -> &Arc<crate::informer::Informer<Self>> {
        &ctx.informers.replicasets
    }
    fn as_replica_set(&self) -> ReplicaSet {
        self.clone()
    }
    fn selector(&self) -> Option<api::selector::LabelSelector> {
        pods::selector(&self.spec.as_ref()?.selector)
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn informer(ctx: &Context) -> &Arc<crate::informer::Informer<Self>> {
        &ctx.informers.replicationcontrollers
    }
    fn as_replica_set(&self) -> ReplicaSet {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["apiVersion"] = "apps/v1".into();
        value["kind"] = "ReplicaSet".into();
        if let Some(spec) = value.get_mut("spec") {
            let labels = spec.get("selector").cloned().unwrap_or_default();
            spec["selector"] = serde_json::json!({"matchLabels": labels});
        }
        serde_json::from_value(value).unwrap_or_default()
    }
    fn selector(&self) -> Option<api::selector::LabelSelector> {
        let labels = self.spec.as_ref()?.selector.as_ref()?;
        Some(api::selector::LabelSelector(
            labels
                .iter()
                .map(|(k, v)| api::selector::Requirement::In(k.clone(), vec![v.clone()]))
                .collect(),
        ))
    }
}

/// Runs the controller for ReplicaSets or ReplicationControllers.
pub async fn run<K: Replicated>(ctx: Arc<Context>) {
    let sets = K::informer(&ctx).clone();
    let all_pods = ctx.informers.pods.clone();
    let store = sets.store();
    let orphans = all_pods
        .subscribe()
        .filter(|p| futures::future::ready(controller_of(&p.metadata).is_none()));
    let stream = Controller::for_shared_stream(sets.subscribe(), sets.store())
        .owns_shared_stream(all_pods.subscribe_owned_by::<K>())
        .watches_shared_stream(orphans, move |pod: Arc<Pod>| {
            let ns = pod.namespace();
            store
                .state()
                .into_iter()
                .filter(|rs| rs.namespace() == ns)
                .filter(|rs| {
                    rs.selector()
                        .is_some_and(|sel| !sel.is_empty() && pods::selects(&sel, &pod.metadata))
                })
                .map(|rs| ObjectRef::from_obj(rs.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, retry, ctx);
    drive(K::COMPONENT, stream).await;
}

async fn reconcile<K: Replicated>(owner: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let rs = owner.as_replica_set();
    let ns = rs.namespace().unwrap_or_default();
    let key = format!("{}/{ns}/{}", K::kind(&()), rs.name_any());
    let uid = rs.uid().unwrap_or_default();
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let selector = pods::selector(&spec.selector).filter(|s| !s.is_empty());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let mut owned = Vec::new();
    let informer = &ctx.informers.pods;
    let mut candidates = informer.indexed(&pods::controlled_by(&uid));
    candidates.extend(informer.indexed(&pods::orphans_in(&ns)));
    for pod in candidates {
        if !pods::is_active(&pod) {
            continue;
        }
        let matches = selector
            .as_ref()
            .is_some_and(|s| pods::selects(s, &pod.metadata));
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push(pod);
                } else {
                    pods::release(&api, pod.as_ref(), &uid).await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting => {
                pods::adopt(&api, pod.as_ref(), owner.as_ref()).await?;
                owned.push(pod);
            }
            None => {}
        }
    }

    let outstanding = ctx.expectations.outstanding(
        &key,
        |name| informer.get(Some(&ns), name).is_some(),
        |pod_uid| owned.iter().any(|p| p.uid().as_deref() == Some(pod_uid)),
    );
    owned.retain(|p| {
        !outstanding
            .deletes
            .iter()
            .any(|u| Some(u) == p.uid().as_ref())
    });

    let mut failure = None;
    if !deleting {
        let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let have = owned.len() + outstanding.creates.len();
        if have < want {
            let template = spec.template.clone().unwrap_or_default();
            failure = create_pods(
                &ctx,
                &api,
                owner.as_ref(),
                &key,
                &template,
                (want - have).min(BURST),
            )
            .await;
        } else if have > want {
            let mut victims: Vec<&Arc<Pod>> = owned.iter().collect();
            victims.sort_by(|a, b| pods::deletion_order(a, b));
            victims.truncate((have - want).min(BURST));
            delete_pods(&ctx, &api, owner.as_ref(), &key, &victims).await?;
            let gone: HashSet<_> = victims.iter().filter_map(|p| p.uid()).collect();
            owned.retain(|p| p.uid().is_none_or(|u| !gone.contains(&u)));
        }
    }

    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let status = status(&rs, &owned, failure, Timestamp::now());
    if !same_status(rs.status.as_ref(), &status) {
        let sets: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        crate::write_status(&sets, &rs.name_any(), &status, &["conditions"]).await?;
    }
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1),
        )));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The pod a controller makes from its template.
pub fn pod_from_template<K>(owner: &K, template: &PodTemplateSpec) -> Pod
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.meta().name.as_deref().unwrap_or(""))),
            namespace: owner.meta().namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(owner)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates `count` pods in slow-start batches, stopping at the first batch with a failure;
/// returns the failure's message.
async fn create_pods<K: Replicated>(
    ctx: &Context,
    api: &Api<Pod>,
    rs: &K,
    key: &str,
    template: &PodTemplateSpec,
    count: usize,
) -> Option<String> {
    let pod = pod_from_template(rs, template);
    let mut done = 0;
    let mut batch = 1;
    while done < count {
        let n = batch.min(count - done);
        let params = PostParams::default();
        let results = futures::future::join_all((0..n).map(|_| api.create(&params, &pod))).await;
        let mut failure = None;
        for r in results {
            match r {
                Ok(created) => {
                    let name = created.name_any();
                    ctx.expectations.created(key, &name);
                    ctx.events.normal(
                        K::COMPONENT,
                        rs,
                        "SuccessfulCreate",
                        format!("Created pod: {name}"),
                    );
                }
                Err(e) => {
                    let message = match &e {
                        kube::Error::Api(s) => s.message.clone(),
                        other => other.to_string(),
                    };
                    // A terminating namespace refuses new pods; that is no failure of the set.
                    if !matches!(&e, kube::Error::Api(s) if s.code == 403 && message.contains("terminat"))
                    {
                        ctx.events.warning(
                            K::COMPONENT,
                            rs,
                            "FailedCreate",
                            format!("Error creating: {message}"),
                        );
                    }
                    failure = Some(message);
                }
            }
        }
        if failure.is_some() {
            return failure;
        }
        done += n;
        batch *= 2;
    }
    None
}

async fn delete_pods<K: Replicated>(
    ctx: &Context,
    api: &Api<Pod>,
    rs: &K,
    key: &str,
    victims: &[&Arc<Pod>],
) -> Result<()> {
    let results = futures::future::join_all(
        victims
            .iter()
            .map(|pod| pods::delete_exactly(api, pod.as_ref(), DeleteParams::default())),
    )
    .await;
    for (result, pod) in results.into_iter().zip(victims) {
        if result? {
            ctx.expectations
                .deleted(key, &pod.uid().unwrap_or_default());
            ctx.events.normal(
                K::COMPONENT,
                rs,
                "SuccessfulDelete",
                format!("Deleted pod: {}", pod.name_any()),
            );
        }
    }
    Ok(())
}

/// The status of a set with these active pods, as upstream calculates it.
fn status(
    rs: &ReplicaSet,
    pods: &[Arc<Pod>],
    failure: Option<String>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(pods.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let mut conditions: Vec<ReplicaSetCondition> = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(message) = failure {
        let previous = rs
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"));
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(message),
            last_transition_time: previous
                .and_then(|c| c.last_transition_time.clone())
                .or(Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    now,
                ))),
        });
    }
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })),
        ready_replicas: Some(count(&pods::is_ready)),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: rs.status.as_ref().and_then(|s| s.terminating_replicas),
    }
}

/// Whether two statuses say the same, reading an absent count as zero.
fn same_status(current: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let Some(c) = current else { return false };
    let n = |v: Option<i32>| v.unwrap_or(0);
    c.replicas == new.replicas
        && n(c.fully_labeled_replicas) == n(new.fully_labeled_replicas)
        && n(c.ready_replicas) == n(new.ready_replicas)
        && n(c.available_replicas) == n(new.available_replicas)
        && c.observed_generation == new.observed_generation
        && c.conditions.clone().unwrap_or_default() == new.conditions.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replication_controller_reads_as_a_replica_set() {
        let rc: ReplicationController = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "legacy", "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"app": "legacy"},
                     "template": {"metadata": {"labels": {"app": "legacy"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .expect("rc");
        let rs = rc.as_replica_set();
        let spec = rs.spec.expect("spec");
        assert_eq!(spec.replicas, Some(2));
        let sel = pods::selector(&spec.selector).expect("selector");
        assert!(pods::selects(
            &sel,
            spec.template
                .expect("template")
                .metadata
                .as_ref()
                .expect("meta")
        ));
    }
}
