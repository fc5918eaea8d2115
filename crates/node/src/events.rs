//! Events about pods, as kubelet records them (source `kubelet` on this node): a repeated event
//! (same object, reason and message) is counted on the first one instead of piling up.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Records events for one node.
pub struct Recorder {
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
    /// A recorder writing as the kubelet of `node`.
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            client,
            node: node.to_string(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `pod` (about one of its containers when `container` is given).
    pub async fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_record(pod, container, kind, reason, message).await {
            tracing::debug!(error = %e, reason, "recording an event failed");
        }
    }

    async fn try_record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
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

    /// Forgets the events of a pod that is gone.
    pub fn forget(&self, pod_uid: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|k, _| !k.starts_with(pod_uid));
        }
    }
}
