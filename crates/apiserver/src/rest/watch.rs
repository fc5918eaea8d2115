//! watch: a stream of JSON lines (`{"type": "ADDED", "object": {...}}`), from now (after a
//! synthetic ADDED per existing object) or from a resourceVersion, filtered by selectors (an
//! object that stops matching is DELETED for the watcher), with bookmarks when asked, ending
//! after `timeoutSeconds`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use api::selector::{FieldSelector, LabelSelector};

use super::Ctx;
use super::read::{passes, selectors};
use crate::State;
use crate::codec;
use crate::request::flag;
use crate::status::{ApiError, Result};
use crate::storage::to_object;

/// How often a bookmark is sent to watchers that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn passes(&self, kv: &store::KeyValue) -> Result<bool> {
        passes(kv, &self.labels, &self.fields)
    }
}

/// The event line of a change as stored, when nothing about it needs the decoded object (no
/// selector, no conversion, no table): the common case of informers, served without parsing.
fn raw_event(kind: &str, kv: &store::KeyValue) -> Option<Bytes> {
    let object = crate::storage::with_resource_version(kv)?;
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(&object);
    line.extend_from_slice(b"}\n");
    Some(Bytes::from(line))
}

struct Encoder {
    stored: &'static api::ResourceType,
    rt: &'static api::ResourceType,
    table: bool,
    include: String,
}

impl Encoder {
    fn event(&self, kind: &str, obj: &Value) -> Bytes {
        let converted;
        let obj = if kind == "ERROR" || kind == "BOOKMARK" || std::ptr::eq(self.stored, self.rt) {
            obj
        } else {
            converted = api::convert::convert(obj, self.stored, self.rt);
            &converted
        };
        let object = if self.table && kind != "ERROR" && kind != "BOOKMARK" {
            let rv = api::meta::meta_str(obj, "resourceVersion").unwrap_or("");
            codec::table(
                self.rt,
                std::slice::from_ref(obj),
                &self.include,
                json!({"resourceVersion": rv}),
            )
        } else {
            obj.clone()
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rev: u64) -> Bytes {
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": {"resourceVersion": rev.to_string()}});
        self.event("BOOKMARK", &obj)
    }
}

/// The type of the watch event for a store change, as seen through the filter (an object that
/// stops passing is DELETED for the watcher), or `None` when the watcher does not see it.
fn seen_as(ev: &store::Event, filter: &Filter) -> Result<Option<&'static str>> {
    // a deletion carries the object's last state
    let now = filter.passes(&ev.kv)?;
    if ev.kind == store::EventType::Delete {
        return Ok(now.then_some("DELETED"));
    }
    let before = match &ev.prev {
        Some(p) => filter.passes(p)?,
        None => false,
    };
    Ok(match (before, now) {
        (false, true) => Some("ADDED"),
        (true, true) => Some("MODIFIED"),
        (true, false) => Some("DELETED"),
        (false, false) => None,
    })
}

/// The watch event for a store change, as seen through the filter, with the object decoded.
fn translate(ev: &store::Event, filter: &Filter) -> Result<Option<(&'static str, Value)>> {
    let Some(kind) = seen_as(ev, filter)? else {
        return Ok(None);
    };
    Ok(Some((kind, to_object(&ev.kv)?)))
}

pub async fn watch(state: &Arc<State>, ctx: &Ctx) -> Result<Response> {
    let (labels, fields) = selectors(ctx)?;
    let ns = match fields.required("metadata.namespace") {
        Some(ns) if ctx.rt.namespaced && ctx.info.namespace.is_empty() => ns.to_string(),
        _ => ctx.info.namespace.clone(),
    };
    let prefix = match fields.required("metadata.name") {
        Some(name) => ctx.rt.key(&ns, name),
        None => ctx.rt.namespace_prefix(&ns),
    };
    let filter = Filter { labels, fields };
    let encoder = Encoder {
        stored: ctx.rt,
        rt: ctx.req_rt,
        table: codec::wants_table(&ctx.headers),
        include: ctx.include_object().to_string(),
    };
    // served as stored, without decoding, unless converted to another version or to a table
    let raw = !encoder.table && std::ptr::eq(encoder.stored, encoder.rt);
    let timeout = ctx
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = flag(&ctx.query, "allowWatchBookmarks");
    let rv = ctx
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let backend = &state.storage.backend;
    let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, Infallible>>(256);
    let (initial, mut watch, mut last_rev) = if rv.is_empty() || rv == "0" {
        let lw = backend
            .list_watch(&prefix)
            .await
            .map_err(ApiError::unavailable)?;
        let mut initial = Vec::new();
        for kv in &lw.kvs {
            if !filter.passes(kv)? {
                continue;
            }
            match raw.then(|| raw_event("ADDED", kv)).flatten() {
                Some(line) => initial.push(line),
                None => initial.push(encoder.event("ADDED", &to_object(kv)?)),
            }
        }
        (initial, lw.watch, lw.revision)
    } else {
        let from: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
        match backend.watch(&prefix, from).await {
            Ok(w) => (Vec::new(), w, from),
            Err(store::Error::Compacted { requested, oldest }) => {
                let status =
                    ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
                        .status();
                let body = Body::from(encoder.event("ERROR", &status));
                return Ok(stream_response(body));
            }
            Err(e) => return Err(ApiError::unavailable(e)),
        }
    };
    tokio::spawn(async move {
        for line in initial {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            let line = tokio::select! {
                ev = watch.events.recv() => match ev {
                    Some(ev) => {
                        last_rev = ev.revision();
                        let raw_line = if raw {
                            match seen_as(&ev, &filter) {
                                Ok(Some(kind)) => raw_event(kind, &ev.kv),
                                Ok(None) => continue,
                                Err(e) => Some(encoder.event("ERROR", &e.status())),
                            }
                        } else {
                            None
                        };
                        match raw_line {
                            Some(line) => line,
                            None => match translate(&ev, &filter) {
                                Ok(Some((kind, obj))) => encoder.event(kind, &obj),
                                Ok(None) => continue,
                                Err(e) => encoder.event("ERROR", &e.status()),
                            },
                        }
                    }
                    None => return,
                },
                _ = tick.tick(), if bookmarks => encoder.bookmark(last_rev),
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(Body::from_stream(ReceiverStream::new(rx))))
}

fn stream_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(labels: &str, rev: u64) -> store::KeyValue {
        let obj = json!({"metadata": {"name": "p", "labels": {"app": labels}},
                         "spec": {"nodeName": "n1"}});
        store::KeyValue {
            key: "/registry/core/pods/default/p".into(),
            value: serde_json::to_vec(&obj).expect("json").into(),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    fn event(kind: store::EventType, now: &str, before: Option<&str>) -> store::Event {
        store::Event {
            kind,
            kv: kv(now, 3),
            prev: before.map(|b| kv(b, 2)),
        }
    }

    #[test]
    fn a_watcher_sees_objects_enter_and_leave_its_selector() {
        let filter = Filter {
            labels: LabelSelector::parse("app=web").expect("labels"),
            fields: FieldSelector::parse("spec.nodeName=n1").expect("fields"),
        };
        let put = store::EventType::Put;
        let seen = |ev: store::Event| seen_as(&ev, &filter).expect("decodes");
        assert_eq!(seen(event(put, "web", None)), Some("ADDED"));
        assert_eq!(seen(event(put, "web", Some("db"))), Some("ADDED"));
        assert_eq!(seen(event(put, "web", Some("web"))), Some("MODIFIED"));
        assert_eq!(seen(event(put, "db", Some("web"))), Some("DELETED"));
        assert_eq!(seen(event(put, "db", Some("db"))), None);
        let delete = store::EventType::Delete;
        assert_eq!(seen(event(delete, "web", Some("web"))), Some("DELETED"));
        assert_eq!(seen(event(delete, "db", Some("db"))), None);
        let (kind, obj) = translate(&event(put, "web", Some("web")), &filter)
            .expect("decodes")
            .expect("seen");
        assert_eq!(
            (kind, obj["metadata"]["labels"]["app"].as_str()),
            ("MODIFIED", Some("web"))
        );
    }
}
