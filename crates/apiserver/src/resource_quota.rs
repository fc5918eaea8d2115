//! The ResourceQuota admission plugin: an object created in a namespace with quotas is refused
//! when it would take a quota's usage past its hard limits ("exceeded quota: q, requested:
//! pods=1, used: pods=2, limited: pods=2"), or when it is a pod whose containers leave out a
//! cpu or memory request or limit that a quota limits ("failed quota: q: must specify
//! limits.cpu for: c"). Otherwise its usage is charged to the quotas at once, as upstream's
//! plugin does, so that concurrent creates cannot both take the last place; the resource quota
//! controller recounts usage from what is stored, which also gives back what is deleted or
//! what failed to be created after admission. Charges are made one at a time.
//!
//! Upstream also charges updates that change usage (a Service's type, a claim's size); here
//! only creates are charged, and the controller's recount catches the rest.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use api::quota::{self, Usage};
use api::{ResourceType, meta, registry};

use crate::State;
use crate::status::{ApiError, Result};

/// How long a create waits for the controller to count a new quota's usage before it is
/// refused as unknown.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// How often a charge is tried again when the controller wrote a quota meanwhile.
const ATTEMPTS: usize = 5;

/// Checks the creation of `obj` against its namespace's quotas and charges it to them (unless
/// `dry_run`).
pub async fn admit_create(
    state: &State,
    rt: &ResourceType,
    obj: &Value,
    dry_run: bool,
) -> Result<()> {
    let qrt = registry()
        .find("", "v1", "resourcequotas")
        .ok_or_else(|| ApiError::internal("resourcequotas are not registered"))?;
    if !rt.namespaced
        || state
            .storage
            .list_in(qrt, meta::namespace(obj))
            .await?
            .is_empty()
    {
        return Ok(());
    }
    let _charging = state.quota_charges.lock().await;
    let mut attempt = 1;
    loop {
        match charge(state, qrt, rt, obj, dry_run).await {
            Err(e) if e.code == 409 && attempt < ATTEMPTS => attempt += 1,
            done => return done,
        }
    }
}

/// One attempt at checking and charging.
async fn charge(
    state: &State,
    qrt: &ResourceType,
    rt: &ResourceType,
    obj: &Value,
    dry_run: bool,
) -> Result<()> {
    let ns = meta::namespace(obj);
    let requested = quota::usage(rt.group, rt.plural, obj);
    let refuse = |why: String| ApiError::admission_forbidden(rt, meta::name(obj), &why);
    let waited = tokio::time::Instant::now() + STATUS_WAIT;
    let mut charges = Vec::new();
    'quotas: for q in state.storage.list_in(qrt, ns).await? {
        if !quota::in_scope(&q, rt.group, rt.plural, obj) {
            continue;
        }
        let name = meta::name(&q).to_string();
        let hard = quota::parse_list(q.pointer("/spec/hard"));
        let limited: BTreeSet<String> = hard
            .keys()
            .filter(|r| quota::kind_of(r).is_some_and(|(g, p)| g == rt.group && p == rt.plural))
            .cloned()
            .collect();
        if limited.is_empty() {
            continue;
        }
        if rt.group.is_empty()
            && rt.plural == "pods"
            && let Some(why) = quota::unstated(&limited, obj)
        {
            return Err(refuse(format!("failed quota: {name}: {why}")));
        }
        // the controller counts a new or changed quota's usage within moments
        let mut q = q;
        loop {
            let used = quota::parse_list(q.pointer("/status/used"));
            let unknown: Vec<&str> = limited
                .iter()
                .filter(|r| !used.contains_key(*r))
                .map(String::as_str)
                .collect();
            if unknown.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= waited {
                return Err(refuse(format!(
                    "status unknown for quota: {name}, resources: {}",
                    unknown.join(",")
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            match state.storage.get(qrt, ns, &name).await {
                Ok((fresh, _)) => q = fresh,
                Err(_) => continue 'quotas,
            }
        }
        let used = quota::parse_list(q.pointer("/status/used"));
        let asked: Usage = requested
            .iter()
            .filter(|(r, _)| limited.contains(*r))
            .map(|(r, v)| (r.clone(), *v))
            .collect();
        let over: BTreeSet<&String> = asked
            .iter()
            .filter(|(r, v)| used.get(*r).copied().unwrap_or(0) + **v > hard[*r])
            .map(|(r, _)| r)
            .collect();
        if !over.is_empty() {
            let only = |u: &Usage| -> Usage {
                u.iter()
                    .filter(|(r, _)| over.contains(r))
                    .map(|(r, v)| (r.clone(), *v))
                    .collect()
            };
            return Err(refuse(format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                quota::pretty(&only(&asked)),
                quota::pretty(&only(&used)),
                quota::pretty(&only(&hard))
            )));
        }
        if !asked.is_empty() {
            charges.push((q, asked));
        }
    }
    if dry_run {
        return Ok(());
    }
    for (mut q, asked) in charges {
        let rev = storage_revision(&q)?;
        let mut used = quota::parse_list(q.pointer("/status/used"));
        for (r, v) in asked {
            *used.entry(r).or_default() += v;
        }
        let used: serde_json::Map<String, Value> = used
            .iter()
            .map(|(r, v)| (r.clone(), json!(quota::format(r, *v))))
            .collect();
        q["status"]["used"] = Value::Object(used);
        state.storage.update(qrt, q, rev).await?;
    }
    Ok(())
}

fn storage_revision(obj: &Value) -> Result<u64> {
    crate::storage::revision_of(obj)?
        .ok_or_else(|| ApiError::internal("a stored quota has no resourceVersion"))
}
