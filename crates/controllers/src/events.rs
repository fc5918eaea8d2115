//! Events as the controller manager records them (source component = the controller's name): a
//! repeated event (same object, reason and message) is counted on the first one instead of
//! piling up, and every event is written by a task of its own, off the reconcile path.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Repeats older than this start a new event.
const REPEAT_WINDOW_SECONDS: i64 = 600;

/// Writes the events of the controllers.
#[derive(Clone)]
pub struct Recorder {
    queue: tokio::sync::mpsc::UnboundedSender<Pending>,
}

struct Pending {
    component: &'static str,
    regarding: ObjectReference,
    warning: bool,
    reason: String,
    message: String,
}

struct Seen {
    name: String,
    count: i32,
    at: Timestamp,
}

impl Recorder {
    /// A recorder writing through `client` (it must be made inside the async runtime).
    pub fn new(client: kube::Client) -> Self {
        let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            let seen = Mutex::new(HashMap::<String, Seen>::new());
            while let Some(p) = pending.recv().await {
                if let Err(e) = write(&client, &seen, &p).await {
                    tracing::debug!(error = %e, reason = %p.reason, "recording an event failed");
                }
            }
        });
        Self { queue }
    }

    /// Records a Normal event about `obj` from `component`.
    pub fn normal<K: Resource<DynamicType = ()>>(
        &self,
        component: &'static str,
        obj: &K,
        reason: &str,
        message: String,
    ) {
        self.send(component, obj.object_ref(&()), false, reason, message);
    }

    /// Records a Warning event about `obj` from `component`.
    pub fn warning<K: Resource<DynamicType = ()>>(
        &self,
        component: &'static str,
        obj: &K,
        reason: &str,
        message: String,
    ) {
        self.send(component, obj.object_ref(&()), true, reason, message);
    }

    fn send(
        &self,
        component: &'static str,
        regarding: ObjectReference,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let _ = self.queue.send(Pending {
            component,
            regarding,
            warning,
            reason: reason.to_string(),
            message,
        });
    }
}

async fn write(
    client: &kube::Client,
    seen: &Mutex<HashMap<String, Seen>>,
    p: &Pending,
) -> kube::Result<()> {
    let ns = p
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let now = Timestamp::now();
    let key = format!(
        "{}/{}/{}/{}",
        p.regarding.uid.as_deref().unwrap_or(""),
        p.component,
        p.reason,
        p.message
    );
    let repeat = {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, s| now.as_second() - s.at.as_second() < REPEAT_WINDOW_SECONDS);
        seen.get(&key).map(|s| (s.name.clone(), s.count))
    };
    if let Some((name, count)) = repeat {
        let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
        if events
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.insert(
                key,
                Seen {
                    name,
                    count: count + 1,
                    at: now,
                },
            );
            return Ok(());
        }
    }
    let name = format!(
        "{}.{:x}",
        p.regarding.name.as_deref().unwrap_or(p.component),
        now.as_nanosecond()
    );
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            ..Default::default()
        },
        involved_object: p.regarding.clone(),
        reason: Some(p.reason.clone()),
        message: Some(p.message.clone()),
        type_: Some(if p.warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some(p.component.into()),
            host: None,
        }),
        reporting_component: Some(p.component.into()),
        reporting_instance: Some(p.component.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    };
    events.create(&PostParams::default(), &event).await?;
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.insert(
        key,
        Seen {
            name,
            count: 1,
            at: now,
        },
    );
    Ok(())
}
