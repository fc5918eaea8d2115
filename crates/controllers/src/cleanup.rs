//! Housekeeping, as upstream does it: events expire an hour after they last happened (upstream
//! stores them with a one-hour TTL), and when more than 12,500 finished pods pile up the oldest
//! are deleted (the pod GC controller's terminated-pod threshold).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use crate::Context;

/// How long an event is kept after it last happened.
pub const EVENT_TTL_SECONDS: i64 = 3600;
/// How many finished pods are kept.
pub const TERMINATED_POD_THRESHOLD: usize = 12_500;
const PERIOD: Duration = Duration::from_secs(60);

/// When an event last happened.
pub fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Deletes events an hour after they last happened, every minute, with the manager's client.
pub async fn expire_events(client: &kube::Client) {
    loop {
        tokio::time::sleep(PERIOD).await;
        if let Err(e) = expire_events_once(client).await {
            tracing::debug!(error = %e, "expiring events failed");
        }
    }
}

/// Deletes the oldest finished pods beyond the threshold, every minute (the pod garbage
/// collector).
pub async fn collect_terminated_pods(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(PERIOD).await;
        if let Err(e) = collect_terminated_pods_once(&ctx).await {
            tracing::debug!(error = %e, "collecting finished pods failed");
        }
    }
}

async fn expire_events_once(client: &kube::Client) -> kube::Result<()> {
    let all: Api<Event> = Api::all(client.clone());
    let now = Timestamp::now();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = all.list(&params).await?;
        for e in &page.items {
            let expired =
                last_seen(e).is_some_and(|t| now.as_second() - t.as_second() > EVENT_TTL_SECONDS);
            if !expired {
                continue;
            }
            let api: Api<Event> =
                Api::namespaced(client.clone(), &e.namespace().unwrap_or_default());
            match api.delete(&e.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

async fn collect_terminated_pods_once(ctx: &Context) -> kube::Result<()> {
    let mut finished: Vec<Arc<Pod>> = ctx
        .informers
        .pods
        .objects()
        .into_iter()
        .filter(|p| crate::pods::is_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    if finished.len() <= TERMINATED_POD_THRESHOLD {
        return Ok(());
    }
    finished.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let excess = finished.len() - TERMINATED_POD_THRESHOLD;
    for pod in finished.into_iter().take(excess) {
        crate::pods::force_delete(&ctx.client, &pod).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn an_event_is_as_old_as_its_last_occurrence() {
        let at = |s: i64| Time(Timestamp::from_second(s).expect("time"));
        let mut e = Event::default();
        assert_eq!(last_seen(&e), None);
        e.metadata.creation_timestamp = Some(at(10));
        assert_eq!(last_seen(&e), Some(at(10).0));
        e.last_timestamp = Some(at(20));
        assert_eq!(last_seen(&e), Some(at(20).0));
    }
}
