//! The root CA publisher: every active namespace has the `kube-root-ca.crt` ConfigMap holding
//! the cluster CA, so that pods can verify the API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::{Context, Result, drive, retry};

/// The name of the published ConfigMap.
pub const NAME: &str = "kube-root-ca.crt";

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let want = BTreeMap::from([("ca.crt".to_string(), ctx.ca_pem.clone())]);
    match maps.get_opt(NAME).await? {
        Some(cm) if cm.data.as_ref() == Some(&want) => {}
        Some(mut cm) => {
            cm.data = Some(want);
            maps.replace(NAME, &PostParams::default(), &cm).await?;
        }
        None => {
            let mut annotations = BTreeMap::new();
            annotations.insert("kubernetes.io/description".to_string(), "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string());
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            crate::create_in_namespace(&maps, &cm).await?;
        }
    }
    Ok(Action::await_change())
}

/// Runs the root CA publisher.
pub async fn run(ctx: Arc<Context>) {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let maps: Api<ConfigMap> = Api::all(ctx.client.clone());
    let stream = Controller::new(namespaces, watcher::Config::default())
        .watches(
            maps,
            watcher::Config::default().fields(&format!("metadata.name={NAME}")),
            |cm: ConfigMap| cm.metadata.namespace.map(|ns| ObjectRef::new(&ns)),
        )
        .run(reconcile, retry, ctx);
    drive("root-ca", stream).await;
}
