//! The pods bound to this node: a watch on pods with `spec.nodeName` set to the node feeds one
//! worker per pod ([`crate::worker`]); containers left on the node from before a restart are
//! handed to their pod's worker, or removed when their pod is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};

use crate::Agent;
use crate::worker;

/// Runs the pods of this node until the watch ends.
pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    let mut adoptable = {
        let a = agent.clone();
        tokio::task::spawn_blocking(move || worker::adoptable(&a)).await?
    };
    let api: Api<Pod> = Api::all(agent.client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", agent.config.node_name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut listed: HashSet<String> = HashSet::new();
    let mut first_list = true;
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                if workers.get(&uid).is_some_and(|tx| tx.borrow().is_none()) {
                    workers.remove(&uid);
                    if let Ok(mut pods) = agent.pods.lock() {
                        pods.retain(|_, u| *u != uid);
                    }
                }
            }
            event = events.next() => {
                let Some(event) = event else { anyhow::bail!("the pod watch ended") };
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch failed; retrying");
                        continue;
                    }
                };
                match event {
                    Event::Init => listed.clear(),
                    Event::InitApply(pod) | Event::Apply(pod) => {
                        let Some(uid) = pod.metadata.uid.clone() else { continue };
                        listed.insert(uid.clone());
                        if let Ok(mut pods) = agent.pods.lock() {
                            let key = (
                                pod.metadata.namespace.clone().unwrap_or_default(),
                                pod.metadata.name.clone().unwrap_or_default(),
                            );
                            pods.insert(key, uid.clone());
                        }
                        match workers.get(&uid) {
                            Some(tx) => {
                                tx.send_replace(Some(pod));
                            }
                            None => {
                                let (tx, rx) = watch::channel(Some(pod));
                                workers.insert(uid.clone(), tx);
                                let ids = adoptable.remove(&uid).unwrap_or_default();
                                let (agent, done) = (agent.clone(), done_tx.clone());
                                tokio::spawn(async move {
                                    worker::run(agent, uid.clone(), ids, rx).await;
                                    let _ = done.send(uid);
                                });
                            }
                        }
                    }
                    Event::Delete(pod) => {
                        if let Some(tx) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                            tx.send_replace(None);
                        }
                    }
                    Event::InitDone => {
                        for (uid, tx) in &workers {
                            if !listed.contains(uid) {
                                tx.send_replace(None);
                            }
                        }
                        if first_list {
                            first_list = false;
                            // What is left of pods the API no longer has goes.
                            for (uid, ids) in std::mem::take(&mut adoptable) {
                                tokio::spawn(worker::remove_orphan(agent.clone(), uid, ids));
                            }
                        }
                    }
                }
            }
        }
    }
}
