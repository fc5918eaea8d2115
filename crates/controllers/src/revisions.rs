//! ControllerRevisions: the template history of DaemonSets and StatefulSets, as upstream's
//! `history` package keeps it. Each distinct template is one revision, named
//! `OWNER-HASH`, holding the patch `kubectl rollout undo` applies
//! (`{"spec":{"template":{..., "$patch":"replace"}}}`); going back to an earlier template gives
//! its revision the next number. Pods carry the hash in the `controller-revision-hash` label.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::pods::{controller_of, controller_ref};
use crate::{Context, Result};

/// The label with the revision hash of a pod's template.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// The current revision of an owner's template.
pub struct Current {
    /// Its hash (the pods' label).
    pub hash: String,
    /// Its name.
    pub name: String,
}

/// The revisions `owner` controls, oldest first.
pub fn owned<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
) -> Vec<Arc<ControllerRevision>> {
    let ns = owner.meta().namespace.clone();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut revisions: Vec<_> = ctx
        .informers
        .revisions
        .objects()
        .into_iter()
        .filter(|r| r.metadata.namespace == ns)
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    revisions.sort_by_key(|r| r.revision);
    revisions
}

fn hash_label(r: &ControllerRevision) -> String {
    r.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .cloned()
        .unwrap_or_default()
}

fn data(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    t["$patch"] = json!("replace");
    json!({"spec": {"template": t}})
}

fn hash(data: &serde_json::Value, collisions: i32) -> String {
    let mut template = PodTemplateSpec::default();
    if let Some(t) = data.pointer("/spec/template") {
        template = serde_json::from_value(t.clone()).unwrap_or_default();
    }
    crate::deployment::template_hash(&template, (collisions > 0).then_some(collisions))
}

/// Finds or makes the revision of `template`, giving it the highest number, and deletes the
/// oldest revisions no pod uses beyond `limit`.
pub async fn sync<K>(
    ctx: &Context,
    owner: &K,
    template: &PodTemplateSpec,
    in_use: &[String],
    limit: i32,
) -> Result<Current>
where
    K: Resource<DynamicType = ()>,
{
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let revisions = owned(ctx, owner);
    let want = data(template);
    let max = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let existing = revisions
        .iter()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&want));
    let current = match existing {
        Some(r) => {
            if r.revision < max {
                let patch = json!({"revision": max + 1});
                api.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            Current {
                hash: hash_label(r),
                name: r.name_any(),
            }
        }
        None => {
            let mut collisions = 0;
            loop {
                let hash = hash(&want, collisions);
                let name = format!("{}-{hash}", owner.meta().name.as_deref().unwrap_or(""));
                let mut labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                labels.insert(HASH_LABEL.into(), hash.clone());
                let revision = ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(labels),
                        owner_references: Some(vec![controller_ref(owner)]),
                        ..Default::default()
                    },
                    data: Some(RawExtension(want.clone())),
                    revision: max + 1,
                };
                match api.create(&PostParams::default(), &revision).await {
                    Ok(_) => break Current { hash, name },
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let other = api.get(&name).await?;
                        if other.data.as_ref().map(|d| &d.0) == Some(&want)
                            && controller_of(&other.metadata).map(|o| &o.uid)
                                == owner.meta().uid.as_ref()
                        {
                            break Current { hash, name };
                        }
                        collisions += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    let excess = revisions
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    for r in revisions.iter().take(excess) {
        if r.name_any() == current.name || in_use.contains(&hash_label(r)) {
            continue;
        }
        match api.delete(&r.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(current)
}
