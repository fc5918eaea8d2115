//! The namespace controller: when a namespace is being deleted, deletes everything in it, then
//! removes the `kubernetes` finalizer through the `finalize` subresource so that the API server
//! removes the namespace, as upstream's namespace controller does.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use crate::{Context, Error, Result, drive, retry};

/// The finalizer the API server puts on every namespace.
pub const FINALIZER: &str = "kubernetes";

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut remaining = 0;
    for rt in api::registry()
        .resources
        .iter()
        .filter(|r| r.namespaced && r.is_stored() && r.stored_as.is_none())
    {
        let ar = crate::api_resource(rt);
        let objects: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
        let list = objects.list_metadata(&ListParams::default()).await?;
        if list.items.is_empty() {
            continue;
        }
        remaining += list.items.len();
        objects
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await?;
    }
    if remaining > 0 {
        return Err(Error::ContentRemaining(name));
    }
    let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.as_ref());
    if finalizers.is_some_and(|f| f.iter().any(|x| x == FINALIZER)) {
        let mut finalized = (*ns).clone();
        if let Some(spec) = finalized.spec.as_mut() {
            spec.finalizers = Some(
                finalizers
                    .into_iter()
                    .flatten()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect(),
            );
        }
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        match namespaces
            .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

/// Runs the namespace controller.
pub async fn run(ctx: Arc<Context>) {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let stream = Controller::new(namespaces, watcher::Config::default()).run(reconcile, retry, ctx);
    drive("namespace", stream).await;
}
