//! The agent's caches of the API objects its pods consume: Services (for the proxy, the cluster
//! DNS and containers' service variables), filled by a watch of every Service; ConfigMaps and
//! Secrets (for environment variables and volumes), each object its pods use kept by a watch of
//! its own, as kubelet's watch-based managers do; an object its watch has not listed yet is
//! read from the API.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::Writer};
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

/// What fills the Service cache; taken once, by whoever runs its watch.
pub struct Writers {
    /// Fills [`Caches::services`].
    pub services: Writer<Service>,
}

/// The caches.
pub struct Caches {
    /// Every Service.
    pub services: Store<Service>,
    /// The ConfigMaps pods of this node use.
    pub config_maps: Objects<ConfigMap>,
    /// The Secrets pods of this node use.
    pub secrets: Objects<Secret>,
    writers: Mutex<Option<Writers>>,
}

impl Default for Caches {
    fn default() -> Self {
        let (services, services_w) = reflector::store();
        Self {
            services,
            config_maps: Objects::default(),
            secrets: Objects::default(),
            writers: Mutex::new(Some(Writers {
                services: services_w,
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

/// How long an object nobody asked for stays watched.
const IDLE: Duration = Duration::from_secs(300);

/// An object as its watch last saw it: `None` until the watch has listed it, then whether it
/// exists.
type Seen<K> = Arc<Mutex<Option<Option<Arc<K>>>>>;

/// One watched object.
struct Entry<K> {
    seen: Seen<K>,
    used: Instant,
    watch: tokio::task::AbortHandle,
}

/// Single objects of kind `K`, each kept by a watch of its own (a list and watch selecting it
/// by `metadata.name`), as kubelet's watch-based managers keep the ConfigMaps and Secrets its
/// pods use: a node may read only those (the Node authorizer), never all of a kind. An object
/// not asked for in five minutes is forgotten and its watch stopped.
pub struct Objects<K> {
    entries: Mutex<HashMap<(String, String), Entry<K>>>,
    swept: Mutex<Instant>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
        }
    }
}

impl<K> Objects<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// What the watch of `namespace/name` has seen, starting the watch if there is none.
    fn seen(&self, client: &kube::Client, namespace: &str, name: &str) -> Seen<K> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(*swept) > IDLE / 5 {
                *swept = now;
                entries.retain(|_, e| {
                    let keep = now.duration_since(e.used) < IDLE;
                    if !keep {
                        e.watch.abort();
                    }
                    keep
                });
            }
        }
        let key = (namespace.to_string(), name.to_string());
        let entry = entries.entry(key).or_insert_with(|| {
            let seen: Seen<K> = Arc::new(Mutex::new(None));
            let api = Api::<K>::namespaced(client.clone(), namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let task = tokio::spawn(keep(watcher(api, config).default_backoff(), seen.clone()));
            Entry {
                seen,
                used: now,
                watch: task.abort_handle(),
            }
        });
        entry.used = now;
        entry.seen.clone()
    }

    /// `namespace/name` as its watch has seen it, or else from the API (`None` if it does not
    /// exist). Errors are the API's, as kubelet reports them (`configmap "x" not found` is not
    /// an error here).
    async fn get(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<K>>, String> {
        let seen = self.seen(client, namespace, name);
        let known = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(obj) = known {
            return Ok(obj);
        }
        Api::<K>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map(|o| o.map(Arc::new))
            .map_err(|e| e.to_string())
    }

    /// The objects named `names` in `namespace` that exist (see [`Objects::get`]), by name, and
    /// the errors met reading the others.
    pub async fn get_all(
        &self,
        client: &kube::Client,
        namespace: &str,
        names: impl IntoIterator<Item = String>,
    ) -> (BTreeMap<String, Arc<K>>, Vec<String>) {
        let (mut found, mut errors) = (BTreeMap::new(), Vec::new());
        for name in names {
            match self.get(client, namespace, &name).await {
                Ok(Some(obj)) => drop(found.insert(name, obj)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        (found, errors)
    }
}

/// Keeps `seen` up to date from the events of one object's watch.
async fn keep<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    seen: Seen<K>,
) {
    let mut events = std::pin::pin!(events);
    let mut listed = None;
    while let Some(event) = events.next().await {
        let now = match event {
            Ok(watcher::Event::Init) => {
                listed = None;
                continue;
            }
            Ok(watcher::Event::InitApply(obj)) => {
                listed = Some(Arc::new(obj));
                continue;
            }
            Ok(watcher::Event::InitDone) => listed.take(),
            Ok(watcher::Event::Apply(obj)) => Some(Arc::new(obj)),
            Ok(watcher::Event::Delete(_)) => None,
            // the watch starts again after a back-off; until then the last state stands
            Err(_) => continue,
        };
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }
}
