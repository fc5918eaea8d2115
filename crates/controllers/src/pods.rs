//! What workload controllers ask of pods and owners: is a pod active, ready, available; which
//! object controls it; which pods to delete first; the controller reference they set; and the
//! writes that adopt, release and delete exactly the object seen.

use std::cmp::Ordering;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Whether a pod counts toward its controller's replicas: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod)
}

/// Whether the pod has finished (Succeeded or Failed).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// When the pod last turned Ready, if it is ready.
fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => now.as_second() - since.as_second() >= i64::from(min_ready_seconds),
    }
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The reference an object's controller sets on what it makes (controller and
/// blockOwnerDeletion true).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The index key of the pods a controller (by uid) controls.
pub fn controlled_by(uid: &str) -> String {
    format!("controller/{uid}")
}

/// The index key of the pods of a namespace that no controller controls.
pub fn orphans_in(namespace: &str) -> String {
    format!("orphans/{namespace}")
}

/// How the pod informer files pods: by controller, or as orphans of their namespace.
pub fn index_keys(pod: &Pod) -> Vec<String> {
    vec![match controller_of(&pod.metadata) {
        Some(r) => controlled_by(&r.uid),
        None => orphans_in(pod.metadata.namespace.as_deref().unwrap_or("")),
    }]
}

/// What the pod informer drops: the volumes that name no claim. No controller and no
/// scheduler plugin reads another kind of volume (claims are what storage controllers and
/// volume scheduling read), and volumes are most of a cached pod: k8s-openapi's `Volume` has
/// room for every volume type, 3 KB, and every pod has its service account's token volume.
pub fn trim(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some());
        volumes.shrink_to_fit();
    }
}

/// A `metav1.LabelSelector` as a matcher; an absent or invalid selector matches nothing.
pub fn selector(sel: &LabelSelector) -> Option<api::selector::LabelSelector> {
    let json = serde_json::to_value(sel).ok()?;
    api::selector::LabelSelector::from_json(&json).ok()
}

/// Whether the labels in `meta` satisfy `sel`.
pub fn selects(sel: &api::selector::LabelSelector, meta: &ObjectMeta) -> bool {
    sel.matches_with(|k| meta.labels.as_ref()?.get(k).map(String::as_str))
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

/// Orders pods from the one to delete first to the one to keep longest, as upstream's
/// `ActivePods` ranking: unscheduled before scheduled, Pending before Unknown before Running,
/// not ready before ready, ready for less time before ready for longer, more restarts before
/// fewer, newer before older.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let phase_rank = |p: &Pod| match phase(p) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let since = |p: &Pod| ready_since(p).flatten();
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then_with(|| match (since(a), since(b)) {
            (Some(x), Some(y)) if is_ready(a) && is_ready(b) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
}

/// Makes `owner` the controller of an orphan object (`None` if the object is gone).
pub async fn adopt<K, O>(api: &Api<K>, obj: &K, owner: &O) -> kube::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    O: Resource<DynamicType = ()>,
{
    let mut refs = obj.meta().owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(owner));
    set_owner_references(api, obj, &refs).await
}

/// Removes the reference to the owner `uid` from an object it no longer selects.
pub async fn release<K>(api: &Api<K>, obj: &K, uid: &str) -> kube::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let refs: Vec<OwnerReference> = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != uid)
        .cloned()
        .collect();
    set_owner_references(api, obj, &refs).await
}

async fn set_owner_references<K>(
    api: &Api<K>,
    obj: &K,
    refs: &[OwnerReference],
) -> kube::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let refs = if refs.is_empty() {
        json!(null)
    } else {
        json!(refs)
    };
    // The UID makes sure the very object seen is the one changed.
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": obj.meta().uid}});
    let name = obj.meta().name.clone().unwrap_or_default();
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a pod at once (grace period 0), exactly the one seen: for pods no node will stop
/// (finished ones, those of a node that is gone).
pub async fn force_delete(client: &kube::Client, pod: &Pod) -> kube::Result<bool> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    delete_exactly(&api, pod, DeleteParams::default().grace_period(0)).await
}

/// Deletes exactly the object seen (a UID precondition); whether it was deleted now (an
/// object already gone or replaced is left alone).
pub async fn delete_exactly<K>(api: &Api<K>, obj: &K, params: DeleteParams) -> kube::Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..params
    };
    let name = obj.meta().name.clone().unwrap_or_default();
    match api.delete(&name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn the_informer_keeps_only_volumes_that_name_a_claim() {
        use k8s_openapi::api::core::v1::{
            PersistentVolumeClaimVolumeSource, ProjectedVolumeSource, Volume,
        };
        let mut p = pod("p", true, "Running", None);
        p.spec.as_mut().expect("spec").volumes = Some(vec![
            Volume {
                name: "kube-api-access".into(),
                projected: Some(ProjectedVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "data".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        trim(&mut p);
        let kept: Vec<_> = p.spec.expect("spec").volumes.expect("volumes");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, "data");
    }

    fn pod(name: &str, node: bool, phase: &str, ready_at: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.then(|| "n".to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|s| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(Timestamp::from_second(s).expect("time"))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_least_valuable_pods_go_first() {
        let mut pods = [
            pod("old-ready", true, "Running", Some(100)),
            pod("new-ready", true, "Running", Some(200)),
            pod("running", true, "Running", None),
            pod("pending", true, "Pending", None),
            pod("unscheduled", false, "Pending", None),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "running",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("p", true, "Running", Some(100));
        let at = |s| Timestamp::from_second(s).expect("time");
        assert!(is_available(&p, 0, at(100)));
        assert!(!is_available(&p, 10, at(105)));
        assert!(is_available(&p, 10, at(110)));
        assert!(!is_available(&pod("q", true, "Running", None), 0, at(1)));
    }
}
