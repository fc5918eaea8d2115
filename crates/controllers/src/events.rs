//! Events as the controller manager records them (source component = the controller's name),
//! passed through client-go's event correlator before they are written, off the reconcile
//! path, by a task of their own:
//!
//! - similar events (same object, type and reason) with 10 different messages within ten
//!   minutes are combined into one event, "(combined from similar events): <message>";
//! - a repeated event (same message, or the combined one) is counted on the first one (a patch
//!   of count and lastTimestamp) instead of piling up;
//! - each controller may write 25 events about one object at once, then one every five
//!   minutes (a token bucket); the rest are dropped.
//!
//! So a ReplicaSet that creates 10,000 pods writes a few dozen SuccessfulCreate events, not
//! 10,000, as upstream's.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use lru::LruCache;

/// How many objects and keys each of the correlator's caches remembers (upstream's
/// maxLruCacheEntries).
const CACHE_ENTRIES: usize = 4096;
/// Similar events with this many different messages...
const AGGREGATE_MAX_EVENTS: usize = 10;
/// ...within this many seconds are combined.
const AGGREGATE_INTERVAL_SECONDS: i64 = 600;
/// A source may write this many events about an object at once...
const SPAM_BURST: f64 = 25.0;
/// ...and then one per this many seconds.
const SPAM_REFILL_SECONDS: f64 = 300.0;

/// Writes the events of the controllers.
#[derive(Clone)]
pub struct Recorder {
    queue: tokio::sync::mpsc::UnboundedSender<Pending>,
}

/// An event as a controller reports it.
#[derive(Debug, Clone)]
pub struct Pending {
    component: &'static str,
    regarding: ObjectReference,
    warning: bool,
    reason: String,
    message: String,
}

impl Pending {
    fn type_(&self) -> &'static str {
        if self.warning { "Warning" } else { "Normal" }
    }

    /// What makes events about one object from one source (upstream's getSpamKey).
    fn object_key(&self) -> String {
        let r = &self.regarding;
        [
            self.component,
            r.kind.as_deref().unwrap_or(""),
            r.namespace.as_deref().unwrap_or(""),
            r.name.as_deref().unwrap_or(""),
            r.uid.as_deref().unwrap_or(""),
            r.api_version.as_deref().unwrap_or(""),
        ]
        .join("\u{0}")
    }

    /// What makes events similar: the same object, type and reason (upstream's
    /// EventAggregatorByReasonFunc).
    fn aggregate_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.object_key(),
            self.type_(),
            self.reason
        )
    }

    /// What makes events the same: similar, with the same message and field path (upstream's
    /// getEventKey).
    fn event_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.aggregate_key(),
            self.regarding.field_path.as_deref().unwrap_or(""),
            self.message
        )
    }
}

/// What the correlator makes of an event.
#[derive(Debug, PartialEq)]
pub enum Write {
    /// Create a new event with this message.
    Create {
        /// The key its later repeats are counted under.
        key: String,
        /// The message (the reported one, or the combined form).
        message: String,
    },
    /// Count a repeat on the event written before.
    Repeat {
        /// The key it is counted under.
        key: String,
        /// The earlier event's name.
        name: String,
        /// The new count.
        count: i32,
        /// The message (the combined form changes with each repeat).
        message: String,
    },
    /// Drop it: too many events about this object lately.
    Skip,
}

struct Aggregate {
    messages: std::collections::HashSet<String>,
    last: Timestamp,
}

struct Logged {
    name: String,
    count: i32,
}

struct Bucket {
    tokens: f64,
    at: Timestamp,
}

/// Upstream's EventCorrelator: aggregation of similar events, counting of repeats, and a spam
/// filter per source and object. Pure: the caller passes the time.
pub struct Correlator {
    aggregates: LruCache<String, Aggregate>,
    logged: LruCache<String, Logged>,
    buckets: LruCache<String, Bucket>,
}

impl Default for Correlator {
    fn default() -> Self {
        // grown as needed and trimmed to CACHE_ENTRIES (a bounded LruCache allocates its whole
        // size at once, and every controller has a correlator)
        Self {
            aggregates: LruCache::unbounded(),
            logged: LruCache::unbounded(),
            buckets: LruCache::unbounded(),
        }
    }
}

/// Forgets the least recently used entries beyond [`CACHE_ENTRIES`].
fn trim<V>(cache: &mut LruCache<String, V>) {
    while cache.len() > CACHE_ENTRIES {
        cache.pop_lru();
    }
}

impl Correlator {
    /// Decides how `event`, reported at `now`, is written.
    pub fn correlate(&mut self, event: &Pending, now: Timestamp) -> Write {
        let aggregate_key = event.aggregate_key();
        let aggregate = self
            .aggregates
            .get_or_insert_mut(aggregate_key.clone(), || Aggregate {
                messages: Default::default(),
                last: now,
            });
        if now.as_second() - aggregate.last.as_second() > AGGREGATE_INTERVAL_SECONDS {
            aggregate.messages.clear();
        }
        aggregate.messages.insert(event.message.clone());
        aggregate.last = now;
        let combine = aggregate.messages.len() >= AGGREGATE_MAX_EVENTS;
        if combine {
            // as upstream, forget one message so that the set stays at its bound
            if let Some(any) = aggregate.messages.iter().next().cloned() {
                aggregate.messages.remove(&any);
            }
        }
        trim(&mut self.aggregates);
        let (key, message) = if combine {
            (
                aggregate_key,
                format!("(combined from similar events): {}", event.message),
            )
        } else {
            (event.event_key(), event.message.clone())
        };
        // the repeat is counted before the spam filter looks, as upstream's logger does
        let repeat = self.logged.get_mut(&key).map(|l| {
            l.count += 1;
            (l.name.clone(), l.count)
        });
        if !self.take_token(&event.object_key(), now) {
            return Write::Skip;
        }
        match repeat {
            Some((name, count)) => Write::Repeat {
                key,
                name,
                count,
                message,
            },
            None => Write::Create { key, message },
        }
    }

    /// Remembers the event written under `key`, so that its repeats are counted on it.
    pub fn written(&mut self, key: String, name: String, count: i32) {
        self.logged.put(key, Logged { name, count });
        trim(&mut self.logged);
    }

    fn take_token(&mut self, object_key: &str, now: Timestamp) -> bool {
        let bucket = self
            .buckets
            .get_or_insert_mut(object_key.to_string(), || Bucket {
                tokens: SPAM_BURST,
                at: now,
            });
        let elapsed = now.duration_since(bucket.at).as_secs_f64().max(0.0);
        bucket.tokens = (bucket.tokens + elapsed / SPAM_REFILL_SECONDS).min(SPAM_BURST);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        trim(&mut self.buckets);
        allowed
    }
}

impl Recorder {
    /// A recorder writing through `client` (it must be made inside the async runtime).
    pub fn new(client: kube::Client) -> Self {
        let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            let mut correlator = Correlator::default();
            while let Some(p) = pending.recv().await {
                if let Err(e) = write(&client, &mut correlator, &p).await {
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
    correlator: &mut Correlator,
    p: &Pending,
) -> kube::Result<()> {
    let ns = p
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let now = Timestamp::now();
    let (key, message) = match correlator.correlate(p, now) {
        Write::Skip => return Ok(()),
        Write::Repeat {
            key,
            name,
            count,
            message,
        } => {
            let patch = serde_json::json!({
                "count": count,
                "lastTimestamp": Time(now),
                "message": message,
            });
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    correlator.written(key, name, count);
                    return Ok(());
                }
                // expired meanwhile: written anew, as upstream's recordEvent does
                Err(kube::Error::Api(e)) if e.code == 404 => (key, message),
                Err(e) => return Err(e),
            }
        }
        Write::Create { key, message } => (key, message),
    };
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
        message: Some(message),
        type_: Some(p.type_().into()),
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
    correlator.written(key, name, 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(object: &str, reason: &str, message: &str) -> Pending {
        Pending {
            component: "replicaset-controller",
            regarding: ObjectReference {
                kind: Some("ReplicaSet".into()),
                namespace: Some("default".into()),
                name: Some(object.into()),
                uid: Some(format!("uid-{object}")),
                ..Default::default()
            },
            warning: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("a valid time")
    }

    /// Writes what the correlator decides, as the recorder does, naming events after the key.
    fn record(c: &mut Correlator, p: &Pending, now: Timestamp) -> Write {
        let w = c.correlate(p, now);
        match &w {
            Write::Create { key, .. } => c.written(key.clone(), key.clone(), 1),
            Write::Repeat {
                key, name, count, ..
            } => c.written(key.clone(), name.clone(), *count),
            Write::Skip => {}
        }
        w
    }

    #[test]
    fn a_repeated_event_is_counted_on_the_first() {
        let mut c = Correlator::default();
        let p = pending("web", "FailedCreate", "quota exceeded");
        let Write::Create { key, .. } = record(&mut c, &p, at(0)) else {
            panic!("the first is created");
        };
        let w = record(&mut c, &p, at(1));
        assert_eq!(
            w,
            Write::Repeat {
                key: key.clone(),
                name: key.clone(),
                count: 2,
                message: "quota exceeded".into()
            }
        );
        assert!(matches!(
            record(&mut c, &p, at(2)),
            Write::Repeat { count: 3, .. }
        ));
    }

    #[test]
    fn ten_messages_of_one_reason_are_combined() {
        let mut c = Correlator::default();
        for i in 0..9 {
            let w = record(
                &mut c,
                &pending("web", "SuccessfulCreate", &format!("Created pod: {i}")),
                at(i),
            );
            assert!(
                matches!(w, Write::Create { ref message, .. } if message == &format!("Created pod: {i}"))
            );
        }
        let w = record(
            &mut c,
            &pending("web", "SuccessfulCreate", "Created pod: 9"),
            at(9),
        );
        assert!(
            matches!(w, Write::Create { ref message, .. } if message == "(combined from similar events): Created pod: 9"),
            "{w:?}"
        );
        let w = record(
            &mut c,
            &pending("web", "SuccessfulCreate", "Created pod: 10"),
            at(10),
        );
        assert!(
            matches!(w, Write::Repeat { count: 2, ref message, .. } if message == "(combined from similar events): Created pod: 10"),
            "{w:?}"
        );
        // another object, or another reason, is counted apart
        assert!(matches!(
            record(
                &mut c,
                &pending("api", "SuccessfulCreate", "Created pod: 0"),
                at(11)
            ),
            Write::Create { .. }
        ));
        assert!(matches!(
            record(
                &mut c,
                &pending("web", "SuccessfulDelete", "Deleted pod: 0"),
                at(11)
            ),
            Write::Create { .. }
        ));
        // after ten quiet minutes, messages count afresh
        assert!(matches!(
            record(&mut c, &pending("web", "SuccessfulCreate", "Created pod: 11"), at(700)),
            Write::Create { ref message, .. } if message == "Created pod: 11"
        ));
    }

    #[test]
    fn an_object_gets_25_events_at_once_then_one_per_five_minutes() {
        let mut c = Correlator::default();
        let p = pending("web", "BackOff", "restarting");
        let written = (0..100)
            .filter(|_| record(&mut c, &p, at(0)) != Write::Skip)
            .count();
        assert_eq!(written, 25);
        assert_eq!(record(&mut c, &p, at(100)), Write::Skip);
        assert_ne!(record(&mut c, &p, at(301)), Write::Skip);
        assert_eq!(record(&mut c, &p, at(302)), Write::Skip);
        // other objects have buckets of their own
        assert_ne!(
            record(&mut c, &pending("api", "BackOff", "restarting"), at(302)),
            Write::Skip
        );
    }
}
