//! The resource quota controller: keeps each ResourceQuota's status as upstream's does.
//! `status.hard` is the spec's; `status.used` is, for every resource the quota limits, the sum
//! over the objects stored in its namespace that its scopes take in (`api::quota`). The API
//! server's admission charges creates to `used` at once; this recount gives back what was
//! deleted or finished. A quota is recounted when it changes, when a pod or Service of its
//! namespace changes, and every ten seconds for the other kinds it counts (upstream watches
//! every kind; this controller lists those it needs).
//!
//! Status is written with the resourceVersion the recount started from, so a count that
//! raced with an admission charge is refused and made again rather than undoing the charge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;

use api::quota::{self, Usage};

use crate::{Context, Result, drive, retry};

/// How often quotas are recounted for the kinds this controller does not watch.
const RESYNC: Duration = Duration::from_secs(10);

/// Runs the resource quota controller.
pub async fn run(ctx: Arc<Context>) {
    let quotas = ctx.informers.quotas.clone();
    let in_namespace = |store: kube::runtime::reflector::Store<ResourceQuota>| {
        move |ns: Option<String>| {
            store
                .state()
                .into_iter()
                .filter(|q| q.namespace() == ns)
                .map(|q| ObjectRef::from_obj(q.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let for_pod = in_namespace(quotas.store());
    let for_service = in_namespace(quotas.store());
    let stream = Controller::for_shared_stream(quotas.subscribe(), quotas.store())
        .watches_shared_stream(ctx.informers.pods.subscribe(), move |p: Arc<Pod>| {
            for_pod(p.namespace())
        })
        .watches_shared_stream(
            ctx.informers.services.subscribe(),
            move |s: Arc<Service>| for_service(s.namespace()),
        )
        .run(reconcile, retry, ctx);
    drive("resourcequota", stream).await;
}

async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Context>) -> Result<Action> {
    let ns = q.namespace().unwrap_or_default();
    let hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let quota_json = serde_json::to_value(q.as_ref()).unwrap_or_default();
    // the limited resources, by the kind whose objects use them
    let mut by_kind: BTreeMap<(String, String), Vec<&String>> = BTreeMap::new();
    for r in hard.keys() {
        if let Some(kind) = quota::kind_of(r) {
            by_kind.entry(kind).or_default().push(r);
        }
    }
    let mut used = Usage::new();
    for r in hard.keys() {
        used.insert(r.clone(), 0);
    }
    for ((group, plural), resources) in &by_kind {
        for obj in objects(&ctx, &ns, group, plural).await? {
            if !quota::in_scope(&quota_json, group, plural, &obj) {
                continue;
            }
            let usage = quota::usage(group, plural, &obj);
            for r in resources {
                *used.entry((*r).clone()).or_default() += usage.get(*r).copied().unwrap_or(0);
            }
        }
    }
    let status = ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(
            used.iter()
                .map(|(r, v)| (r.clone(), Quantity(quota::format(r, *v))))
                .collect(),
        ),
    };
    if q.status.as_ref() != Some(&status) {
        let mut updated = q.as_ref().clone();
        updated.status = Some(status);
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        api.replace_status(&q.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// The stored objects of a kind in a namespace, as JSON: pods and Services from the shared
/// caches, other kinds listed.
async fn objects(ctx: &Context, ns: &str, group: &str, plural: &str) -> Result<Vec<Value>> {
    let in_ns = |o: &Option<String>| o.as_deref() == Some(ns);
    if group.is_empty() && plural == "pods" {
        return Ok(ctx
            .informers
            .pods
            .objects()
            .iter()
            .filter(|p| in_ns(&p.metadata.namespace))
            .filter_map(|p| serde_json::to_value(p.as_ref()).ok())
            .collect());
    }
    if group.is_empty() && plural == "services" {
        return Ok(ctx
            .informers
            .services
            .objects()
            .iter()
            .filter(|s| in_ns(&s.metadata.namespace))
            .filter_map(|s| serde_json::to_value(s.as_ref()).ok())
            .collect());
    }
    let Some(rt) = api::registry().resources.iter().find(|r| {
        r.group == group
            && r.plural == plural
            && r.namespaced
            && r.is_stored()
            && r.stored_as.is_none()
    }) else {
        // a kind this server does not serve has no objects
        return Ok(Vec::new());
    };
    let resource = crate::api_resource(rt);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}
