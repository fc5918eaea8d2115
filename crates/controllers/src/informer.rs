//! Shared informers: one watch and one cache per kind, shared by every controller that reads
//! that kind, as client-go's shared informer factory does. Each change (an object added,
//! modified or deleted, or the whole cache after a relist) is queued for every subscriber,
//! which turns it into reconcile requests. As client-go's listeners, the queues have no bound:
//! a slow subscriber delays only itself and misses nothing. A queued change names what changed
//! and the subscriber reads it from the cache, so that the queues hold no superseded copies of
//! objects. An informer may keep an index (as client-go's indexers), so that a controller
//! finds, say, its own pods without reading every pod.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// A watched kind's cache and its change feed.
pub struct Informer<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    /// Each subscriber's queue of changes.
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
    index: Option<Index<K>>,
}

/// A change as the feed carries it.
#[derive(Clone)]
enum Change<K: Resource<DynamicType = ()> + 'static> {
    /// The object was added or modified: its current state is in the cache.
    Applied(Arc<ObjectRef<K>>),
    /// The object is gone; this was its last state.
    Deleted(Arc<K>),
}

/// The index keys of an object.
pub type IndexKeys<K> = fn(&K) -> Vec<String>;

/// What an informer drops from each object before caching it (besides managedFields, which
/// every informer drops).
pub type Trim<K> = fn(&mut K);

/// Objects by index key, kept up to date with the cache.
struct Index<K: Resource<DynamicType = ()> + 'static> {
    keys_of: IndexKeys<K>,
    entries: RwLock<Entries<K>>,
}

struct Entries<K: Resource<DynamicType = ()> + 'static> {
    by_key: HashMap<String, HashMap<ObjectRef<K>, Arc<K>>>,
    keys: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Index<K> {
    /// Files `obj` under its keys, or takes it out of the index when it is gone.
    fn update(&self, obj: &Arc<K>, present: bool) {
        let r = ObjectRef::from_obj(obj.as_ref());
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for key in e.keys.remove(&r).unwrap_or_default() {
            if let Some(refs) = e.by_key.get_mut(&key) {
                refs.remove(&r);
                if refs.is_empty() {
                    e.by_key.remove(&key);
                }
            }
        }
        if present {
            let keys = (self.keys_of)(obj);
            for key in &keys {
                e.by_key
                    .entry(key.clone())
                    .or_default()
                    .insert(r.clone(), obj.clone());
            }
            e.keys.insert(r, keys);
        }
    }

    fn rebuild(&self, objects: &[Arc<K>]) {
        {
            let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
            e.by_key.clear();
            e.keys.clear();
        }
        for obj in objects {
            self.update(obj, true);
        }
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching every object of the kind the API serves; runs until the runtime stops.
    pub fn start(api: Api<K>) -> Arc<Self> {
        Self::start_with(api, None, None)
    }

    /// [`Informer::start`], also keeping objects indexed by the keys `keys_of` gives them, and
    /// trimming each object with `trim`.
    pub fn start_with(
        api: Api<K>,
        keys_of: Option<IndexKeys<K>>,
        trim: Option<Trim<K>>,
    ) -> Arc<Self> {
        let (store, writer) = reflector::store();
        let index = keys_of.map(|keys_of| Index {
            keys_of,
            entries: RwLock::new(Entries {
                by_key: HashMap::new(),
                keys: HashMap::new(),
            }),
        });
        let informer = Arc::new(Self {
            store,
            subscribers: Mutex::new(Vec::new()),
            index,
        });
        let feed = informer.clone();
        tokio::spawn(async move {
            watcher(api, watcher::Config::default())
                .default_backoff()
                // as kube-controller-manager's informers, keep no managedFields: no controller
                // reads them, and they are often the largest part of an object (an update
                // without them keeps the stored ones)
                .modify(move |obj| {
                    obj.meta_mut().managed_fields = None;
                    if let Some(trim) = trim {
                        trim(obj);
                    }
                })
                .reflect(writer)
                .for_each(|event| {
                    match event {
                        Ok(watcher::Event::Apply(obj)) => {
                            let r = ObjectRef::from_obj(&obj);
                            if let Some(index) = &feed.index
                                && let Some(cached) = feed.store.get(&r)
                            {
                                index.update(&cached, true);
                            }
                            feed.publish(Change::Applied(Arc::new(r)));
                        }
                        Ok(watcher::Event::Delete(obj)) => {
                            let obj = Arc::new(obj);
                            if let Some(index) = &feed.index {
                                index.update(&obj, false);
                            }
                            feed.publish(Change::Deleted(obj));
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(index) = &feed.index {
                                index.rebuild(&feed.store.state());
                            }
                            feed.resync()
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "watch failed; retrying"),
                    }
                    futures::future::ready(())
                })
                .await;
        });
        informer
    }

    /// The cache, as complete as the watch has made it.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits until the first list has filled the cache.
    pub async fn ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }

    /// Every object in the cache.
    pub fn objects(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The cached objects filed under an index key (none without an index).
    pub fn indexed(&self, key: &str) -> Vec<Arc<K>> {
        let Some(index) = &self.index else {
            return Vec::new();
        };
        let e = index.entries.read().unwrap_or_else(|p| p.into_inner());
        e.by_key
            .get(key)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The cached object of a name, in a namespace (`None` for cluster-scoped kinds).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let mut r = ObjectRef::new(name);
        if let Some(ns) = namespace {
            r = r.within(ns);
        }
        self.store.get(&r)
    }

    fn resync(&self) {
        for obj in self.store.state() {
            self.publish(Change::Applied(Arc::new(ObjectRef::from_obj(obj.as_ref()))));
        }
    }

    /// Queues a change for every subscriber, forgetting those that are gone.
    fn publish(&self, change: Change<K>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|queue| queue.send(change.clone()).is_ok());
    }

    /// A new subscriber's queue.
    fn queue(&self) -> mpsc::UnboundedReceiver<Change<K>> {
        let (queue, changes) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(queue);
        changes
    }

    /// As [`Informer::subscribe`], but only the objects that name an owner of kind `O`: what
    /// `Controller::owns_shared_stream` turns into reconciles of `O`, without waking a
    /// controller for every other controller's objects.
    pub fn subscribe_owned_by<O>(self: &Arc<Self>) -> impl Stream<Item = Arc<K>> + Send + 'static
    where
        O: Resource<DynamicType = ()>,
    {
        let (kind, api_version) = (O::kind(&()), O::api_version(&()));
        self.subscribe().filter(move |obj| {
            let owned = obj
                .meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == kind && r.api_version == api_version);
            futures::future::ready(owned)
        })
    }

    /// One item per change from now on, without reading the cache: for a subscriber that only
    /// needs to know that something changed.
    pub fn changed(self: &Arc<Self>) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.queue(), |mut changes| async move {
            changes.recv().await?;
            Some(((), changes))
        })
    }

    /// Each object as it was when deleted, from now on.
    pub fn deletions(self: &Arc<Self>) -> impl Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::unfold(self.queue(), |mut changes| async move {
            loop {
                match changes.recv().await? {
                    Change::Deleted(obj) => return Some((obj, changes)),
                    Change::Applied(_) => {}
                }
            }
        })
    }

    /// Every cached object, then every change: each object as it is after a change, or as it
    /// was when deleted.
    pub fn subscribe(self: &Arc<Self>) -> impl Stream<Item = Arc<K>> + Send + 'static {
        // queued before the cache is read, so that nothing falls between the two
        let changes = self.queue();
        let store = self.store.clone();
        let cached = self.store.state();
        futures::stream::unfold((changes, cached), move |(mut changes, mut cached)| {
            let store = store.clone();
            async move {
                if let Some(obj) = cached.pop() {
                    return Some((obj, (changes, cached)));
                }
                loop {
                    match changes.recv().await? {
                        Change::Applied(r) => {
                            // gone meanwhile: its deletion follows
                            if let Some(obj) = store.get(&r) {
                                return Some((obj, (changes, cached)));
                            }
                        }
                        Change::Deleted(obj) => return Some((obj, (changes, cached))),
                    }
                }
            }
        })
    }
}
