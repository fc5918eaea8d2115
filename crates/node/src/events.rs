//! Events about pods, as kubelet records them (source `kubelet` on this node): a repeated event
//! (same object, reason and message) is counted on the first one instead of piling up. Events
//! are written in order by a task of their own, off the path that starts containers.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Records events for one node.
pub struct Recorder {
    queue: tokio::sync::mpsc::UnboundedSender<Pending>,
    writer: std::sync::Arc<Writer>,
}

/// An event waiting to be written.
struct Pending {
    pod: Pod,
    container: Option<String>,
    kind: Kind,
    reason: String,
    message: String,
}

struct Writer {
    client: kube::Client,
    node: String,
    seen: Mutex<HashMap<String, (String, i32)>>,
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Something that went as it should.
    Normal,
    /// Something a user may need to act on.
    Warning,
}

impl Recorder {
    /// A recorder writing as the kubelet of `node` (it must be made inside the async runtime).
    pub fn new(client: kube::Client, node: &str) -> Self {
        let writer = std::sync::Arc::new(Writer {
            client,
            node: node.to_string(),
            seen: Mutex::new(HashMap::new()),
        });
        let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<Pending>();
        let w = writer.clone();
        tokio::spawn(async move {
            while let Some(p) = pending.recv().await {
                let result = w.write(&p).await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, reason = %p.reason, "recording an event failed");
                }
            }
        });
        Self { queue, writer }
    }

    /// Records an event about `pod` (about one of its containers when `container` is given).
    pub fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        let _ = self.queue.send(Pending {
            pod: pod.clone(),
            container: container.map(String::from),
            kind,
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }

    /// Forgets the events of a pod that is gone.
    pub fn forget(&self, pod_uid: &str) {
        if let Ok(mut seen) = self.writer.seen.lock() {
            seen.retain(|k, _| !k.starts_with(pod_uid));
        }
    }
}

impl Writer {
    async fn write(&self, p: &Pending) -> Result<(), kube::Error> {
        let (pod, container, kind) = (&p.pod, p.container.as_deref(), p.kind);
        let (reason, message) = (p.reason.as_str(), p.message.as_str());
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Utc::now();
        let key = format!("{uid}/{container:?}/{reason}/{message}");
        let repeat = self
            .seen
            .lock()
            .ok()
            .and_then(|seen| seen.get(&key).cloned());
        if let Some((name, count)) = repeat {
            let patch =
                serde_json::json!({"count": count + 1, "lastTimestamp": crate::status::time(now)});
            if events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                if let Ok(mut seen) = self.seen.lock() {
                    seen.insert(key, (name, count + 1));
                }
                return Ok(());
            }
        }
        let name = format!(
            "{pod_name}.{:x}",
            now.timestamp_nanos_opt().unwrap_or_default()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name),
                namespace: Some(ns),
                uid: Some(uid.clone()),
                resource_version: pod.metadata.resource_version.clone(),
                field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(
                match kind {
                    Kind::Normal => "Normal",
                    Kind::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(crate::status::time(now)),
            last_timestamp: Some(crate::status::time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            ..Default::default()
        };
        events.create(&PostParams::default(), &event).await?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key, (name, 1));
        }
        Ok(())
    }
}
