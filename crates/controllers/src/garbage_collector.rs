//! The garbage collector: objects whose owners are all gone are deleted, as upstream's. It
//! keeps a graph of every stored object's ownerReferences (from metadata watches of every
//! stored kind) and acts on three cases:
//!
//! - background: a dependent whose owners have all disappeared is deleted (a live read of
//!   each owner confirms it is gone, so a stale cache never deletes anything); references to
//!   owners that are gone are dropped from dependents that keep another owner;
//! - orphan: an owner deleted with the `orphan` finalizer has its reference removed from
//!   every dependent, then the finalizer;
//! - foreground: an owner deleted with the `foregroundDeletion` finalizer has its dependents
//!   deleted (in the foreground too), and loses the finalizer once no dependent that blocks
//!   owner deletion is left.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::Context;

/// The finalizer of an owner whose dependents are to be orphaned.
pub const ORPHAN: &str = "orphan";
/// The finalizer of an owner that waits for its dependents to be deleted.
pub const FOREGROUND: &str = "foregroundDeletion";

/// How many objects are worked on at once.
const WORKERS: usize = 16;

/// One object in the graph.
#[derive(Debug, Clone)]
struct Node {
    kind: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner UID to the UIDs of its dependents (the owner need not be in `nodes`).
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Records an object as it is now; returns the UIDs to look at.
    fn upsert(&mut self, uid: String, node: Node) -> Vec<String> {
        let mut check = vec![uid.clone()];
        let previous = self.nodes.insert(uid.clone(), node.clone());
        let old_owners: Vec<String> = previous
            .as_ref()
            .map(|p| p.owners.iter().map(|o| o.uid.clone()).collect())
            .unwrap_or_default();
        for o in &old_owners {
            if !node.owners.iter().any(|n| &n.uid == o) {
                self.unlink(o, &uid);
                check.push(o.clone());
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        if node.deleting || previous.is_none() {
            check.extend(self.dependents_of(&uid));
        }
        check
    }

    /// Forgets a deleted object; returns the UIDs to look at (its dependents and owners).
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut check = self.dependents_of(uid);
        if let Some(node) = self.nodes.remove(uid) {
            for o in node.owners {
                self.unlink(&o.uid, uid);
                check.push(o.uid);
            }
        }
        check
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

struct Collector {
    client: kube::Client,
    kinds: Vec<ApiResource>,
    graph: Mutex<Graph>,
}

/// Every stored kind, as the dynamic API names it.
fn stored_kinds() -> Vec<ApiResource> {
    api::registry()
        .resources
        .iter()
        .filter(|r| r.is_stored() && r.stored_as.is_none())
        .filter(|r| r.kind != "Event")
        .map(crate::api_resource)
        .collect()
}

fn node_of(kind: usize, obj: &PartialObjectMeta<DynamicObject>) -> Option<(String, Node)> {
    let m = &obj.metadata;
    Some((
        m.uid.clone()?,
        Node {
            kind,
            namespace: m.namespace.clone(),
            name: m.name.clone()?,
            owners: m.owner_references.clone().unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
        },
    ))
}

/// Runs the garbage collector.
pub async fn run(ctx: Arc<Context>) {
    let collector = Arc::new(Collector {
        client: ctx.client.clone(),
        kinds: stored_kinds(),
        graph: Mutex::default(),
    });
    let (queue, pending) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watches = collector.kinds.iter().enumerate().map(|(kind, ar)| {
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(collector.client.clone(), ar);
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| (kind, e))
            .boxed()
    });
    let feed = {
        let collector = collector.clone();
        futures::stream::select_all(watches).for_each(move |(kind, event)| {
            let check = match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                    let mut graph = collector.graph.lock().unwrap_or_else(|e| e.into_inner());
                    node_of(kind, &obj).map_or_else(Vec::new, |(uid, n)| graph.upsert(uid, n))
                }
                Ok(watcher::Event::Delete(obj)) => {
                    let mut graph = collector.graph.lock().unwrap_or_else(|e| e.into_inner());
                    obj.metadata
                        .uid
                        .as_deref()
                        .map_or_else(Vec::new, |uid| graph.remove(uid))
                }
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::debug!(error = %e, "garbage collector watch failed; retrying");
                    Vec::new()
                }
            };
            for uid in check {
                let _ = queue.send(uid);
            }
            futures::future::ready(())
        })
    };
    let work = tokio_stream_of(pending).for_each_concurrent(WORKERS, |uid| {
        let collector = collector.clone();
        async move {
            if let Err(e) = collector.process(&uid).await {
                tracing::debug!(error = %e, uid, "garbage collection failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let again = collector.graph.lock().map(|g| g.nodes.contains_key(&uid));
                if again.unwrap_or(false)
                    && let Err(e) = collector.process(&uid).await
                {
                    tracing::warn!(error = %e, uid, "garbage collection failed");
                }
            }
        }
    });
    tokio::join!(feed, work);
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> impl futures::Stream<Item = String> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Collector {
    fn api(&self, node: &Node) -> Api<DynamicObject> {
        let ar = &self.kinds[node.kind];
        match &node.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    fn node(&self, uid: &str) -> Option<Node> {
        let graph = self.graph.lock().unwrap_or_else(|e| e.into_inner());
        graph.nodes.get(uid).cloned()
    }

    fn dependents(&self, uid: &str) -> Vec<(String, Node)> {
        let graph = self.graph.lock().unwrap_or_else(|e| e.into_inner());
        graph
            .dependents_of(uid)
            .into_iter()
            .filter_map(|d| graph.nodes.get(&d).cloned().map(|n| (d, n)))
            .collect()
    }

    /// Looks at one object: as an owner being deleted, then as a dependent.
    async fn process(&self, uid: &str) -> kube::Result<()> {
        let Some(node) = self.node(uid) else {
            return Ok(());
        };
        if node.deleting && node.finalizers.iter().any(|f| f == ORPHAN) {
            self.orphan(uid, &node).await?;
        }
        if node.deleting && node.finalizers.iter().any(|f| f == FOREGROUND) {
            self.delete_dependents(uid, &node).await?;
        }
        if !node.owners.is_empty() && !node.deleting {
            self.check_owners(uid, &node).await?;
        }
        Ok(())
    }

    /// Removes the owner's reference from its dependents, then the `orphan` finalizer.
    async fn orphan(&self, uid: &str, node: &Node) -> kube::Result<()> {
        for (dep_uid, dep) in self.dependents(uid) {
            let owners: Vec<_> = dep.owners.iter().filter(|o| o.uid != uid).collect();
            self.set_owners(&dep_uid, &dep, &owners).await?;
        }
        self.remove_finalizer(uid, node, ORPHAN).await
    }

    /// Deletes an owner's dependents in the foreground; once none that blocks it is left,
    /// removes the `foregroundDeletion` finalizer.
    async fn delete_dependents(&self, uid: &str, node: &Node) -> kube::Result<()> {
        let dependents = self.dependents(uid);
        for (dep_uid, dep) in &dependents {
            if !dep.deleting {
                self.delete(dep_uid, dep, "Foreground").await?;
            }
        }
        let blocking = dependents.iter().any(|(_, d)| {
            d.owners
                .iter()
                .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
        });
        if !blocking {
            self.remove_finalizer(uid, node, FOREGROUND).await?;
        }
        Ok(())
    }

    /// Deletes a dependent whose owners are all gone or deleted in the foreground (then in the
    /// foreground too); one that keeps an owner only loses its references to the others.
    async fn check_owners(&self, uid: &str, node: &Node) -> kube::Result<()> {
        let mut solid = Vec::new();
        let mut waiting = false;
        for owner in &node.owners {
            match self.owner_state(owner, node.namespace.as_deref()).await? {
                OwnerState::Present => solid.push(owner),
                OwnerState::DeletingForeground => waiting = true,
                OwnerState::Gone => {}
            }
        }
        if solid.len() == node.owners.len() {
            return Ok(());
        }
        if !solid.is_empty() {
            return self.set_owners(uid, node, &solid).await;
        }
        self.delete(uid, node, if waiting { "Foreground" } else { "Background" })
            .await
    }

    /// Whether an owner exists, from the graph or, when the graph lacks it, a live read.
    async fn owner_state(
        &self,
        owner: &OwnerReference,
        ns: Option<&str>,
    ) -> kube::Result<OwnerState> {
        let state = |n: &Node| {
            if n.deleting && n.finalizers.iter().any(|f| f == FOREGROUND) {
                OwnerState::DeletingForeground
            } else {
                OwnerState::Present
            }
        };
        if let Some(n) = self.node(&owner.uid) {
            return Ok(state(&n));
        }
        let Some(kind) = self
            .kinds
            .iter()
            .position(|k| k.kind == owner.kind && k.api_version == owner.api_version)
        else {
            // A kind this server does not serve cannot be looked up; keep the dependent.
            return Ok(OwnerState::Present);
        };
        let namespaced = api::registry()
            .by_kind(&owner.api_version, &owner.kind)
            .is_some_and(|r| r.namespaced);
        let probe = Node {
            kind,
            namespace: if namespaced {
                ns.map(String::from)
            } else {
                None
            },
            name: owner.name.clone(),
            owners: Vec::new(),
            deleting: false,
            finalizers: Vec::new(),
        };
        match self.api(&probe).get_metadata_opt(&owner.name).await? {
            Some(o) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
                Ok(node_of(kind, &o).map_or(OwnerState::Present, |(_, n)| state(&n)))
            }
            _ => Ok(OwnerState::Gone),
        }
    }

    async fn delete(&self, uid: &str, node: &Node, propagation: &str) -> kube::Result<()> {
        let mut params = match propagation {
            "Foreground" => DeleteParams::foreground(),
            _ => DeleteParams::background(),
        };
        params.preconditions = Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        });
        match self.api(node).delete(&node.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn set_owners(
        &self,
        uid: &str,
        node: &Node,
        owners: &[&OwnerReference],
    ) -> kube::Result<()> {
        let owners = if owners.is_empty() {
            json!(null)
        } else {
            json!(owners)
        };
        let patch = json!({"metadata": {"ownerReferences": owners, "uid": uid}});
        self.patch(node, patch).await
    }

    async fn remove_finalizer(&self, uid: &str, node: &Node, finalizer: &str) -> kube::Result<()> {
        let finalizers: Vec<_> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let finalizers = if finalizers.is_empty() {
            json!(null)
        } else {
            json!(finalizers)
        };
        let patch = json!({"metadata": {"finalizers": finalizers, "uid": uid}});
        self.patch(node, patch).await
    }

    async fn patch(&self, node: &Node, patch: serde_json::Value) -> kube::Result<()> {
        match self
            .api(node)
            .patch_metadata(&node.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

enum OwnerState {
    Present,
    DeletingForeground,
    Gone,
}
