//! Shared informers: one watch and one cache per kind, shared by every controller that reads
//! that kind, as client-go's shared informer factory does. Each change (an object added,
//! modified or deleted, or the whole cache after a relist) is broadcast to the subscribers,
//! which turn it into reconcile requests; a subscriber that falls behind is handed the whole
//! cache again instead of the changes it missed.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// How many changes a slow subscriber may fall behind before it is resynced.
const BACKLOG: usize = 16 * 1024;

/// A watched kind's cache and its change feed.
pub struct Informer<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching every object of the kind the API serves; runs until the runtime stops.
    pub fn start(api: Api<K>) -> Arc<Self> {
        let (store, writer) = reflector::store();
        let (changes, _) = broadcast::channel(BACKLOG);
        let informer = Arc::new(Self { store, changes });
        let feed = informer.clone();
        tokio::spawn(async move {
            watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .for_each(|event| {
                    match event {
                        Ok(watcher::Event::Apply(obj)) => {
                            if let Some(cached) = feed.store.get(&ObjectRef::from_obj(&obj)) {
                                let _ = feed.changes.send(cached);
                            }
                        }
                        Ok(watcher::Event::Delete(obj)) => {
                            let _ = feed.changes.send(Arc::new(obj));
                        }
                        Ok(watcher::Event::InitDone) => feed.resync(),
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

    fn resync(&self) {
        for obj in self.store.state() {
            let _ = self.changes.send(obj);
        }
    }

    /// Every cached object, then every change: each object as it is after a change, or as it
    /// was when deleted.
    pub fn subscribe(self: &Arc<Self>) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let rx = self.changes.subscribe();
        let store = self.store.clone();
        futures::stream::unfold((rx, self.store.state()), move |(mut rx, mut pending)| {
            let store = store.clone();
            async move {
                loop {
                    if let Some(obj) = pending.pop() {
                        return Some((obj, (rx, pending)));
                    }
                    match rx.recv().await {
                        Ok(obj) => return Some((obj, (rx, pending))),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "subscriber fell behind; resyncing");
                            pending = store.state();
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
    }
}
