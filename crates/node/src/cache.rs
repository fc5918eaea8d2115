//! The agent's caches of the API objects its pods consume: Services (for the proxy, the cluster
//! DNS and containers' service variables), ConfigMaps and Secrets (for environment variables and
//! volumes). Each is filled by a watch of every object of its kind, as kubelet's watch-based
//! managers do; an object the cache has not seen yet is read from the API.

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// A cache and the task that keeps it.
pub(crate) type Watch<K> = (Store<K>, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>);

/// A cache of every `K` (filled through `writer`), and the task keeping it, which wakes
/// `changed` on each change.
pub(crate) fn watch<K>(
    client: &kube::Client,
    (reader, writer): (Store<K>, Writer<K>),
    changed: Arc<Notify>,
) -> Watch<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    let task = Box::pin(async move {
        let mut stream = std::pin::pin!(stream);
        // every event (deletions too) has changed the cache by the time it comes out
        while stream.next().await.is_some() {
            changed.notify_one();
        }
    });
    (reader, task)
}

/// What fills the caches; taken once, by whoever runs the watches.
pub struct Writers {
    /// Fills [`Caches::services`].
    pub services: Writer<Service>,
    /// Fills [`Caches::config_maps`].
    pub config_maps: Writer<ConfigMap>,
    /// Fills [`Caches::secrets`].
    pub secrets: Writer<Secret>,
}

/// The caches.
pub struct Caches {
    /// Every Service.
    pub services: Store<Service>,
    /// Every ConfigMap.
    pub config_maps: Store<ConfigMap>,
    /// Every Secret.
    pub secrets: Store<Secret>,
    writers: Mutex<Option<Writers>>,
}

impl Default for Caches {
    fn default() -> Self {
        let (services, services_w) = reflector::store();
        let (config_maps, config_maps_w) = reflector::store();
        let (secrets, secrets_w) = reflector::store();
        Self {
            services,
            config_maps,
            secrets,
            writers: Mutex::new(Some(Writers {
                services: services_w,
                config_maps: config_maps_w,
                secrets: secrets_w,
            })),
        }
    }
}

impl Caches {
    /// The writers, the first time they are asked for.
    pub fn take_writers(&self) -> Option<Writers> {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// `namespace/name` from `store`, or else from the API (`None` if it does not exist). Errors
/// are the API's, as kubelet reports them (`configmap "x" not found` is not an error here).
async fn get<K>(
    store: &Store<K>,
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<K>>, String>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    if let Some(obj) = store.get(&ObjectRef::new(name).within(namespace)) {
        return Ok(Some(obj));
    }
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map(|o| o.map(Arc::new))
        .map_err(|e| e.to_string())
}

/// The objects named `names` in `namespace` that exist (see [`get`]), by name, and the errors
/// met reading the others.
pub async fn get_all<K>(
    store: &Store<K>,
    client: &kube::Client,
    namespace: &str,
    names: impl IntoIterator<Item = String>,
) -> (std::collections::BTreeMap<String, Arc<K>>, Vec<String>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let (mut found, mut errors) = (std::collections::BTreeMap::new(), Vec::new());
    for name in names {
        match get(store, client, namespace, &name).await {
            Ok(Some(obj)) => drop(found.insert(name, obj)),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (found, errors)
}
