//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets, as
//! upstream's. The ReplicaSet whose template equals the Deployment's (ignoring the
//! `pod-template-hash` label) is the new one; it is made, named `NAME-HASH`, when missing. A
//! RollingUpdate grows it within maxSurge and shrinks the old ones within maxUnavailable; a
//! Recreate removes every old pod first. Revisions are annotations on the ReplicaSets (a reused
//! one takes the next revision, which is what `kubectl rollout undo` relies on), a scale
//! change mid-rollout is shared out in proportion, a paused Deployment only scales, old
//! ReplicaSets beyond revisionHistoryLimit are deleted, and the status carries the counts and
//! the Available and Progressing conditions with upstream's reasons and messages.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::pods::{self, controller_of, controller_ref};
use crate::rollout::{self, Share};
use crate::{Context, Error, Result, drive, retry};

const COMPONENT: &str = "deployment-controller";
/// The revision of a ReplicaSet, and of the Deployment (its newest ReplicaSet's).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the pods of one template from another's.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotations of the Deployment not copied onto its ReplicaSets.
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

const PROGRESSING: &str = "Progressing";
const AVAILABLE: &str = "Available";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";

/// Runs the Deployment controller.
pub async fn run(ctx: Arc<Context>) {
    let deployments = ctx.informers.deployments.clone();
    let sets = ctx.informers.replicasets.clone();
    let pod_informer = ctx.informers.pods.clone();
    let deployment_store = deployments.store();
    let set_store = sets.store();
    let orphan_sets = sets.subscribe();
    let stream = Controller::for_shared_stream(deployments.subscribe(), deployments.store())
        .owns_shared_stream(sets.subscribe_owned_by::<Deployment>())
        .watches_shared_stream(orphan_sets, move |rs: Arc<ReplicaSet>| {
            if controller_of(&rs.metadata).is_some() {
                return Vec::new();
            }
            deployment_store
                .state()
                .into_iter()
                .filter(|d| d.namespace() == rs.namespace())
                .filter(|d| {
                    d.spec
                        .as_ref()
                        .and_then(|s| pods::selector(&s.selector))
                        .is_some_and(|sel| !sel.is_empty() && pods::selects(&sel, &rs.metadata))
                })
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect()
        })
        // A Recreate rollout waits for the old pods to be gone.
        .watches_shared_stream(pod_informer.deletions(), move |pod: Arc<Pod>| {
            let owner = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
            let ns = pod.namespace().unwrap_or_default();
            let rs = set_store.get(&ObjectRef::new(&owner.name).within(&ns))?;
            let d = controller_of(&rs.metadata).filter(|r| r.kind == "Deployment")?;
            Some(ObjectRef::<Deployment>::new(&d.name).within(&ns))
        })
        .run(reconcile, retry, ctx);
    drive("deployment", stream).await;
}

/// One reconcile's view: the Deployment as last written and its ReplicaSets.
struct Sync<'a> {
    ctx: &'a Context,
    d: Deployment,
    sets: Vec<ReplicaSet>,
    /// Which of `sets` is the new one.
    new: Option<usize>,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action> {
    let sets = claim_replica_sets(&ctx, &d).await?;
    let mut s = Sync {
        ctx: &ctx,
        d: (*d).clone(),
        sets,
        new: None,
    };
    if d.metadata.deletion_timestamp.is_some() {
        s.new = s.find_new();
        return s.sync_status().await;
    }
    s.check_paused_conditions().await?;
    if s.spec_paused() || s.is_scaling_event() {
        return s.sync().await;
    }
    if s.recreate() {
        s.rollout_recreate().await
    } else {
        s.rollout_rolling().await
    }
}

/// The ReplicaSets `d` controls: its own that its selector still matches, plus orphans it
/// matches (adopted); its own that stopped matching are released.
async fn claim_replica_sets(ctx: &Context, d: &Deployment) -> Result<Vec<ReplicaSet>> {
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let selector = d
        .spec
        .as_ref()
        .and_then(|s| pods::selector(&s.selector))
        .filter(|s| !s.is_empty());
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = d.metadata.deletion_timestamp.is_some();
    let mut claimed = Vec::new();
    for rs in ctx.informers.replicasets.objects() {
        if rs.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let matches = selector
            .as_ref()
            .is_some_and(|s| pods::selects(s, &rs.metadata));
        match controller_of(&rs.metadata) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    claimed.push((*rs).clone());
                } else {
                    pods::release(&api, rs.as_ref(), &uid).await?;
                }
            }
            None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                if let Some(adopted) = pods::adopt(&api, rs.as_ref(), d).await? {
                    claimed.push(adopted);
                }
            }
            _ => {}
        }
    }
    Ok(claimed)
}

fn size(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn annotated_i32(meta: &ObjectMeta, key: &str) -> Option<i32> {
    annotation(meta, key)?.parse().ok()
}

fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> (Option<Timestamp>, String) {
    (
        rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        rs.name_any(),
    )
}

/// A template without the pod-template-hash label, for comparison.
fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(meta) = t.metadata.as_mut()
        && let Some(labels) = meta.labels.as_mut()
    {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            meta.labels = None;
        }
    }
    if t.metadata == Some(ObjectMeta::default()) {
        t.metadata = None;
    }
    serde_json::to_value(t).unwrap_or_default()
}

/// The pod-template-hash of a template: FNV-1a (32 bit) of its serialization and the
/// collision count, spelled with upstream's safe alphabet (no vowels, no look-alikes).
pub fn template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u32 = 0x811c_9dc5;
    let mut write = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    write(serde_json::to_string(t).unwrap_or_default().as_bytes());
    if let Some(c) = collision_count {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&c.to_le_bytes());
        write(&bytes);
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Sets a condition as upstream's `SetDeploymentCondition`: the same status and reason change
/// nothing, the same status keeps its transition time.
fn set_condition(
    status: &mut DeploymentStatus,
    type_: &str,
    state: &str,
    reason: &str,
    message: String,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let current = conditions.iter().find(|c| c.type_ == type_);
    if current.is_some_and(|c| c.status == state && c.reason.as_deref() == Some(reason)) {
        return;
    }
    let transition = current
        .filter(|c| c.status == state)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    conditions.retain(|c| c.type_ != type_);
    conditions.push(DeploymentCondition {
        type_: type_.into(),
        status: state.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now()),
        last_transition_time: Some(transition),
    });
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

impl Sync<'_> {
    fn ns(&self) -> String {
        self.d.namespace().unwrap_or_default()
    }

    fn replicas(&self) -> i32 {
        self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn spec_paused(&self) -> bool {
        self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }

    fn recreate(&self) -> bool {
        self.d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate")
    }

    fn fenceposts(&self) -> (i32, i32) {
        let rolling = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.rolling_update.as_ref());
        rollout::fenceposts(
            rolling.and_then(|r| r.max_surge.as_ref()),
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            self.replicas(),
        )
    }

    fn max_surge(&self) -> i32 {
        if self.recreate() {
            0
        } else {
            self.fenceposts().0
        }
    }

    fn max_unavailable(&self) -> i32 {
        if self.recreate() || self.replicas() == 0 {
            return 0;
        }
        self.fenceposts().1.min(self.replicas())
    }

    fn progress_deadline(&self) -> Option<i32> {
        let secs = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600);
        (secs != i32::MAX).then_some(secs)
    }

    fn status(&self) -> DeploymentStatus {
        self.d.status.clone().unwrap_or_default()
    }

    fn template(&self) -> PodTemplateSpec {
        self.d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    fn old(&self) -> Vec<usize> {
        (0..self.sets.len())
            .filter(|i| Some(*i) != self.new)
            .collect()
    }

    fn active(&self, indices: &[usize]) -> Vec<usize> {
        indices
            .iter()
            .copied()
            .filter(|i| size(&self.sets[*i]) > 0)
            .collect()
    }

    fn total_size(&self, indices: &[usize]) -> i32 {
        indices.iter().map(|i| size(&self.sets[*i])).sum()
    }

    fn sorted_by_creation(&self, mut indices: Vec<usize>) -> Vec<usize> {
        indices.sort_by_key(|i| created(&self.sets[*i]));
        indices
    }

    /// The oldest ReplicaSet whose template is the Deployment's.
    fn find_new(&self) -> Option<usize> {
        let want = without_hash(&self.template());
        let all: Vec<usize> = (0..self.sets.len()).collect();
        self.sorted_by_creation(all).into_iter().find(|i| {
            self.sets[*i]
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| without_hash(t) == want)
        })
    }

    /// Whether an active ReplicaSet was sized for another replica count.
    fn is_scaling_event(&self) -> bool {
        let all: Vec<usize> = (0..self.sets.len()).collect();
        self.active(&all).into_iter().any(|i| {
            annotated_i32(&self.sets[i].metadata, DESIRED_REPLICAS)
                .is_some_and(|desired| desired != self.replicas())
        })
    }

    /// Copies the Deployment's annotations onto `rs` and gives it `new_revision` if it has an
    /// older one; a new set also gets its replica annotations. Whether anything changed.
    fn set_new_annotations(&self, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
        let mut changed = false;
        let annotations = rs.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if NOT_COPIED.contains(&k.as_str()) || annotations.get(k) == Some(v) {
                continue;
            }
            annotations.insert(k.clone(), v.clone());
            changed = true;
        }
        let old = annotations.get(REVISION).cloned().unwrap_or_default();
        if old.parse::<i64>().unwrap_or(0) < new_revision {
            annotations.insert(REVISION.into(), new_revision.to_string());
            changed = true;
            if !old.is_empty() {
                let history = match annotations.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old,
                };
                annotations.insert(REVISION_HISTORY.into(), history);
            }
        }
        if !exists {
            annotations.insert(DESIRED_REPLICAS.into(), self.replicas().to_string());
            annotations.insert(
                MAX_REPLICAS.into(),
                (self.replicas() + self.max_surge()).to_string(),
            );
            changed = true;
        }
        changed
    }

    async fn write_status(&mut self, status: DeploymentStatus) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        self.d = crate::write_status(&api, &self.d.name_any(), &status, &["conditions"]).await?;
        Ok(())
    }

    async fn set_revision(&mut self, revision: &str) -> Result<()> {
        if annotation(&self.d.metadata, REVISION) == Some(revision) {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        self.d = api
            .patch(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        Ok(())
    }

    /// Finds (and brings up to date) or, with `create`, makes the new ReplicaSet; sets
    /// `self.new` and the Deployment's revision.
    async fn sync_new_replica_set(&mut self, create: bool) -> Result<()> {
        self.new = self.find_new();
        let max_old = self
            .old()
            .iter()
            .map(|i| revision(&self.sets[*i]))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        if let Some(i) = self.new {
            let mut rs = self.sets[i].clone();
            let mut changed = self.set_new_annotations(&mut rs, new_revision, true);
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if let Some(spec) = rs.spec.as_mut()
                && spec.min_ready_seconds != min_ready
            {
                spec.min_ready_seconds = min_ready;
                changed = true;
            }
            if changed {
                self.sets[i] = api
                    .replace(&rs.name_any(), &PostParams::default(), &rs)
                    .await?;
            }
            let rev = revision(&self.sets[i]).to_string();
            self.set_revision(&rev).await?;
            let mut status = self.status();
            if self.progress_deadline().is_some() && condition(&status, PROGRESSING).is_none() {
                let message = format!("Found new replica set \"{}\"", self.sets[i].name_any());
                set_condition(
                    &mut status,
                    PROGRESSING,
                    "True",
                    "FoundNewReplicaSet",
                    message,
                );
                self.write_status(status).await?;
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let mut template = self.template();
        let hash = template_hash(&template, collisions);
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector: LabelSelector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let all = (0..self.sets.len()).collect::<Vec<_>>();
        let size = if self.recreate() {
            self.replicas()
        } else {
            rollout::new_replicas(self.replicas(), self.max_surge(), self.total_size(&all), 0)
        };
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", self.d.name_any())),
                namespace: Some(self.ns()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![controller_ref(&self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: self.d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        self.set_new_annotations(&mut rs, new_revision, false);
        let made = match api.create(&PostParams::default(), &rs).await {
            Ok(made) => made,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Ours from an earlier pass the cache has not shown yet, or a hash collision.
                let existing = api.get(&rs.name_any()).await?;
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| without_hash(t) == without_hash(&self.template()));
                if ours && same {
                    self.sets.push(existing);
                    self.new = Some(self.sets.len() - 1);
                    return Ok(());
                }
                let mut status = self.status();
                status.collision_count = Some(collisions.unwrap_or(0) + 1);
                self.write_status(status).await?;
                return Err(Error::HashCollision(rs.name_any()));
            }
            Err(e) => return Err(e.into()),
        };
        if size > 0 {
            self.ctx.events.normal(
                COMPONENT,
                &self.d,
                "ScalingReplicaSet",
                format!("Scaled up replica set {} from 0 to {size}", made.name_any()),
            );
        }
        let name = made.name_any();
        self.sets.push(made);
        self.new = Some(self.sets.len() - 1);
        if self.progress_deadline().is_some() {
            let mut status = self.status();
            let message = format!("Created new replica set \"{name}\"");
            set_condition(
                &mut status,
                PROGRESSING,
                "True",
                "NewReplicaSetCreated",
                message,
            );
            self.write_status(status).await?;
        }
        self.set_revision(&new_revision.to_string()).await
    }

    /// Sets a ReplicaSet's size and replica annotations; whether its size changed.
    async fn scale(&mut self, i: usize, to: i32) -> Result<bool> {
        let rs = &self.sets[i];
        let from = size(rs);
        let (desired, max) = (self.replicas(), self.replicas() + self.max_surge());
        let annotations_stale = annotated_i32(&rs.metadata, DESIRED_REPLICAS) != Some(desired)
            || annotated_i32(&rs.metadata, MAX_REPLICAS) != Some(max);
        if from == to && !annotations_stale {
            return Ok(false);
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let patch = json!({
            "metadata": {
                "annotations": {DESIRED_REPLICAS: desired.to_string(), MAX_REPLICAS: max.to_string()},
                "resourceVersion": rs.metadata.resource_version,
            },
            "spec": {"replicas": to},
        });
        self.sets[i] = api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        if from != to {
            let direction = if to > from { "up" } else { "down" };
            let name = self.sets[i].name_any();
            self.ctx.events.normal(
                COMPONENT,
                &self.d,
                "ScalingReplicaSet",
                format!("Scaled {direction} replica set {name} from {from} to {to}"),
            );
        }
        Ok(from != to)
    }

    /// A scale change or a paused Deployment: resize without rolling out.
    async fn sync(&mut self) -> Result<Action> {
        self.sync_new_replica_set(false).await?;
        self.scale_all().await?;
        if self.spec_paused() {
            self.cleanup().await?;
        }
        self.sync_status().await
    }

    /// Upstream's `scale`: the only active ReplicaSet takes the new size; a saturated new one
    /// makes the old ones go; otherwise the change is shared out in proportion.
    async fn scale_all(&mut self) -> Result<()> {
        let all: Vec<usize> = (0..self.sets.len()).collect();
        let active = self.active(&all);
        let only = match active.len() {
            0 => self.new.or_else(|| {
                let mut old = self.sorted_by_creation(self.old());
                old.reverse();
                old.first().copied()
            }),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = only {
            self.scale(i, self.replicas()).await?;
            return Ok(());
        }
        if self.saturated() {
            for i in self.active(&self.old()) {
                self.scale(i, 0).await?;
            }
            return Ok(());
        }
        if self.recreate() {
            return Ok(());
        }
        let allowed = if self.replicas() > 0 {
            self.replicas() + self.max_surge()
        } else {
            0
        };
        let to_add = allowed - self.total_size(&active);
        let mut order = active;
        order.sort_by(|a, b| {
            let (x, y) = (&self.sets[*a], &self.sets[*b]);
            let by_age = if to_add > 0 {
                created(y).cmp(&created(x))
            } else {
                created(x).cmp(&created(y))
            };
            size(y).cmp(&size(x)).then(by_age)
        });
        let shares: Vec<Share> = order
            .iter()
            .map(|i| Share {
                size: size(&self.sets[*i]),
                max_replicas: annotated_i32(&self.sets[*i].metadata, MAX_REPLICAS),
            })
            .collect();
        let status_replicas = self.status().replicas.unwrap_or(0);
        let sizes = rollout::proportional(&shares, to_add, allowed, status_replicas);
        for (i, to) in order.into_iter().zip(sizes) {
            self.scale(i, to).await?;
        }
        Ok(())
    }

    fn saturated(&self) -> bool {
        self.new.is_some_and(|i| {
            let rs = &self.sets[i];
            size(rs) == self.replicas()
                && annotated_i32(&rs.metadata, DESIRED_REPLICAS) == Some(self.replicas())
                && available(rs) == self.replicas()
        })
    }

    async fn rollout_rolling(&mut self) -> Result<Action> {
        self.sync_new_replica_set(true).await?;
        if self.reconcile_new().await? {
            return self.sync_rollout_status().await;
        }
        if self.reconcile_old().await? {
            return self.sync_rollout_status().await;
        }
        if complete(&self.d, &self.status()) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    async fn reconcile_new(&mut self) -> Result<bool> {
        let Some(n) = self.new else { return Ok(false) };
        let (have, want) = (size(&self.sets[n]), self.replicas());
        if have == want {
            return Ok(false);
        }
        if have > want {
            return self.scale(n, want).await;
        }
        let all: Vec<usize> = (0..self.sets.len()).collect();
        let to = rollout::new_replicas(want, self.max_surge(), self.total_size(&all), have);
        self.scale(n, to).await
    }

    async fn reconcile_old(&mut self) -> Result<bool> {
        let old = self.active(&self.old());
        if self.total_size(&old) == 0 {
            return Ok(false);
        }
        let all: Vec<usize> = (0..self.sets.len()).collect();
        let (new_size, new_available) = self
            .new
            .map(|n| (size(&self.sets[n]), available(&self.sets[n])))
            .unwrap_or((0, 0));
        let max_down = rollout::max_scaled_down(
            self.total_size(&all),
            self.replicas(),
            self.max_unavailable(),
            new_size,
            new_available,
        );
        if max_down <= 0 {
            return Ok(false);
        }
        // First the old pods that are not available anyway.
        let old = self.sorted_by_creation(old);
        let mut cleaned = 0;
        for i in &old {
            if cleaned >= max_down {
                break;
            }
            let (s, a) = (size(&self.sets[*i]), available(&self.sets[*i]));
            if s == 0 || a >= s {
                continue;
            }
            let down = (max_down - cleaned).min(s - a);
            self.scale(*i, s - down).await?;
            cleaned += down;
        }
        // Then available ones, as far as the minimum availability allows.
        let min_available = self.replicas() - self.max_unavailable();
        let available_now: i32 = (0..self.sets.len()).map(|i| available(&self.sets[i])).sum();
        let mut scaled = 0;
        if available_now > min_available {
            let budget = available_now - min_available;
            for i in &old {
                if scaled >= budget {
                    break;
                }
                let s = size(&self.sets[*i]);
                if s == 0 {
                    continue;
                }
                let down = s.min(budget - scaled);
                self.scale(*i, s - down).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    async fn rollout_recreate(&mut self) -> Result<Action> {
        self.sync_new_replica_set(false).await?;
        let mut scaled = false;
        for i in self.active(&self.old()) {
            scaled |= self.scale(i, 0).await?;
        }
        if scaled || self.old_pods_running() {
            return self.sync_rollout_status().await;
        }
        if self.new.is_none() {
            self.sync_new_replica_set(true).await?;
        }
        if let Some(n) = self.new {
            self.scale(n, self.replicas()).await?;
        }
        if complete(&self.d, &self.status()) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    /// Whether a pod of an old ReplicaSet still exists and has not finished.
    fn old_pods_running(&self) -> bool {
        let old: Vec<String> = self
            .old()
            .iter()
            .filter_map(|i| self.sets[*i].uid())
            .collect();
        if self.old().iter().any(|i| {
            self.sets[*i]
                .status
                .as_ref()
                .is_some_and(|s| s.replicas > 0)
        }) {
            return true;
        }
        let ns = self.ns();
        self.ctx.informers.pods.objects().iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && controller_of(&p.metadata).is_some_and(|r| old.contains(&r.uid))
                && !pods::is_terminal(p)
        })
    }

    /// Deletes the oldest unused ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&mut self) -> Result<()> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let mut cleanable: Vec<usize> = self
            .old()
            .into_iter()
            .filter(|i| self.sets[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let excess = i32::try_from(cleanable.len()).unwrap_or(i32::MAX) - limit.max(0);
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|i| (revision(&self.sets[*i]), created(&self.sets[*i])));
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let mut deleted = 0;
        for i in cleanable {
            if deleted >= excess {
                break;
            }
            let rs = &self.sets[i];
            let status = rs.status.clone().unwrap_or_default();
            if status.replicas != 0
                || size(rs) != 0
                || rs.metadata.generation > status.observed_generation
            {
                continue;
            }
            pods::delete_exactly(&api, rs, DeleteParams::default()).await?;
            deleted += 1;
        }
        Ok(())
    }

    /// The status the ReplicaSets add up to, with the Available condition.
    fn calculate_status(&self) -> DeploymentStatus {
        let all = 0..self.sets.len();
        let sum =
            |f: &dyn Fn(&ReplicaSet) -> i32| all.clone().map(|i| f(&self.sets[i])).sum::<i32>();
        let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
        let available_now = sum(&available);
        let total = sum(&size);
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(sum(&|rs| status_of(rs).replicas)),
            updated_replicas: Some(self.new.map_or(0, |n| status_of(&self.sets[n]).replicas)),
            ready_replicas: Some(sum(&|rs| status_of(rs).ready_replicas.unwrap_or(0))),
            available_replicas: Some(available_now),
            unavailable_replicas: Some((total - available_now).max(0)),
            collision_count: self.d.status.as_ref().and_then(|s| s.collision_count),
            conditions: self.d.status.as_ref().and_then(|s| s.conditions.clone()),
            terminating_replicas: None,
        };
        if available_now >= self.replicas() - self.max_unavailable() {
            set_condition(
                &mut status,
                AVAILABLE,
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            );
        } else {
            set_condition(
                &mut status,
                AVAILABLE,
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            );
        }
        status
    }

    async fn sync_status(&mut self) -> Result<Action> {
        let status = self.calculate_status();
        if !same_status(self.d.status.as_ref(), &status) {
            self.write_status(status).await?;
        }
        Ok(Action::requeue(Duration::from_secs(300)))
    }

    /// Upstream's `syncRolloutStatus`: the status plus the Progressing condition (progressing,
    /// complete, or past its deadline); requeued for when the deadline passes.
    async fn sync_rollout_status(&mut self) -> Result<Action> {
        let mut status = self.calculate_status();
        let deadline = self.progress_deadline();
        if deadline.is_none() {
            remove_condition(&mut status, PROGRESSING);
        }
        let current = condition(&status, PROGRESSING).cloned();
        let new_name = self.new.map(|n| self.sets[n].name_any());
        let done = status.replicas == status.updated_replicas
            && current
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        if let Some(secs) = deadline
            && !done
        {
            let old = self.status();
            if complete(&self.d, &status) {
                let message = match &new_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has successfully progressed."),
                    None => "Deployment has successfully progressed.".into(),
                };
                set_condition(&mut status, PROGRESSING, "True", NEW_RS_AVAILABLE, message);
            } else if progressing(&old, &status) {
                let message = match &new_name {
                    Some(n) => format!("ReplicaSet \"{n}\" is progressing."),
                    None => "Deployment is progressing.".into(),
                };
                let keep = current
                    .as_ref()
                    .filter(|c| c.status == "True")
                    .and_then(|c| c.last_transition_time.clone());
                remove_condition(&mut status, PROGRESSING);
                set_condition(
                    &mut status,
                    PROGRESSING,
                    "True",
                    "ReplicaSetUpdated",
                    message,
                );
                if let Some(c) = status
                    .conditions
                    .as_mut()
                    .and_then(|cs| cs.iter_mut().find(|c| c.type_ == PROGRESSING))
                    && keep.is_some()
                {
                    c.last_transition_time = keep;
                }
            } else if timed_out(current.as_ref(), secs) {
                let message = match &new_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has timed out progressing."),
                    None => "Deployment has timed out progressing.".into(),
                };
                set_condition(&mut status, PROGRESSING, "False", TIMED_OUT, message);
                self.ctx.events.warning(
                    COMPONENT,
                    &self.d,
                    TIMED_OUT,
                    format!(
                        "Deployment \"{}\" has timed out progressing.",
                        self.d.name_any()
                    ),
                );
            }
        }
        if !same_status(self.d.status.as_ref(), &status) {
            self.write_status(status.clone()).await?;
        }
        // Look again when the deadline would pass.
        let current = condition(&status, PROGRESSING);
        if let (Some(secs), Some(c)) = (deadline, current)
            && !complete(&self.d, &status)
            && c.reason.as_deref() != Some(TIMED_OUT)
            && c.reason.as_deref() != Some(PAUSED)
        {
            let since = c.last_update_time.as_ref().map_or(0, |t| t.0.as_second());
            let left = since + i64::from(secs) - Timestamp::now().as_second();
            let left = u64::try_from(left.max(0)).unwrap_or(0) + 1;
            return Ok(Action::requeue(Duration::from_secs(left)));
        }
        Ok(Action::requeue(Duration::from_secs(300)))
    }

    async fn check_paused_conditions(&mut self) -> Result<()> {
        if self.progress_deadline().is_none() {
            return Ok(());
        }
        let mut status = self.status();
        let paused_now =
            condition(&status, PROGRESSING).is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
        if self.spec_paused() && !paused_now {
            set_condition(
                &mut status,
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
            );
        } else if !self.spec_paused() && paused_now {
            set_condition(
                &mut status,
                PROGRESSING,
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            );
        } else {
            return Ok(());
        }
        self.write_status(status).await
    }
}

/// Whether every wanted replica is updated and available and the spec has been seen.
fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.observed_generation >= d.metadata.generation
}

/// Whether the rollout moved since the last status.
fn progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// Whether the Progressing condition has not moved for longer than the deadline.
fn timed_out(current: Option<&DeploymentCondition>, secs: i32) -> bool {
    let Some(c) = current else { return false };
    match c.reason.as_deref() {
        Some(TIMED_OUT) => true,
        Some(NEW_RS_AVAILABLE) => false,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + i64::from(secs) < Timestamp::now().as_second()),
    }
}

/// Whether two statuses say the same, reading an absent count as zero and ignoring when
/// conditions were last updated.
fn same_status(current: Option<&DeploymentStatus>, new: &DeploymentStatus) -> bool {
    let Some(c) = current else { return false };
    let n = |v: Option<i32>| v.unwrap_or(0);
    let conds = |s: &DeploymentStatus| {
        s.conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    c.observed_generation == new.observed_generation
        && n(c.replicas) == n(new.replicas)
        && n(c.updated_replicas) == n(new.updated_replicas)
        && n(c.ready_replicas) == n(new.ready_replicas)
        && n(c.available_replicas) == n(new.available_replicas)
        && n(c.unavailable_replicas) == n(new.unavailable_replicas)
        && c.collision_count == new.collision_count
        && conds(c) == conds(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_hash_is_stable_and_safe() {
        let t = PodTemplateSpec::default();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let mut a = PodTemplateSpec::default();
        let b = a.clone();
        a.metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), "abc".into());
        assert_eq!(without_hash(&a), without_hash(&b));
    }
}
