//! The LimitRanger admission plugin: the LimitRanges of a pod's namespace fill in the requests
//! and limits its containers leave out (`default`, `defaultRequest`), and refuse a pod whose
//! containers, or whole, go below `min`, above `max`, or past `maxLimitRequestRatio`, with
//! upstream's messages ("maximum cpu usage per Container is 2, but limit is 3"). Items of type
//! PersistentVolumeClaim bound the storage a claim requests, on create and on resize.

use serde_json::{Map, Value, json};

use api::{meta, quantity, registry};

use crate::State;
use crate::status::{ApiError, Result};

const CONTAINER_LISTS: [&str; 2] = ["initContainers", "containers"];

/// The items of the LimitRanges in a namespace.
async fn items_in(state: &State, ns: &str) -> Result<Vec<Value>> {
    let rt = registry()
        .find("", "v1", "limitranges")
        .ok_or_else(|| ApiError::internal("limitranges are not registered"))?;
    Ok(state
        .storage
        .list_in(rt, ns)
        .await?
        .into_iter()
        .flat_map(
            |mut r| match r.pointer_mut("/spec/limits").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
        )
        .collect())
}

/// Checks a PersistentVolumeClaim being created or resized against the namespace's
/// PersistentVolumeClaim items: its storage request must lie within their min and max.
pub async fn admit_claim(state: &State, claim: &Value) -> Result<()> {
    let items = items_in(state, meta::namespace(claim)).await?;
    let requests = claim
        .pointer("/spec/resources/requests")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut errors = Vec::new();
    for item in items.iter().filter(|i| kind(i) == CLAIM) {
        check_claim(item, &requests, &mut errors);
    }
    refuse("persistentvolumeclaims", claim, errors)
}

const CLAIM: &str = "PersistentVolumeClaim";

/// Upstream bounds a claim's requests both ways: a claim's limits are not its user's input.
fn check_claim(item: &Value, requests: &Map<String, Value>, errors: &mut Vec<String>) {
    for (bound, word) in [("min", "minimum"), ("max", "maximum")] {
        for (r, b) in item
            .get(bound)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            match requests.get(r) {
                None => errors.push(format!(
                    "{word} {r} usage per {CLAIM} is {}.  No request is specified",
                    text(b)
                )),
                Some(req)
                    if (bound == "min" && number(req) < number(b))
                        || (bound == "max" && number(req) > number(b)) =>
                {
                    errors.push(format!(
                        "{word} {r} usage per {CLAIM} is {}, but request is {}",
                        text(b),
                        text(req)
                    ))
                }
                Some(_) => {}
            }
        }
    }
}

/// Applies the namespace's LimitRanges to a pod being created.
pub async fn admit_pod(state: &State, pod: &mut Value) -> Result<()> {
    let items = items_in(state, meta::namespace(pod)).await?;
    if items.is_empty() {
        return Ok(());
    }
    let mut set = Vec::new();
    for item in items.iter().filter(|i| kind(i) == "Container") {
        set.extend(apply_defaults(pod, item));
    }
    if !set.is_empty() {
        let note = format!("LimitRanger plugin set: {}", set.join("; "));
        let root = meta::ensure_object(pod);
        let metadata = meta::ensure_object(root.entry("metadata").or_insert_with(|| json!({})));
        let annotations =
            meta::ensure_object(metadata.entry("annotations").or_insert_with(|| json!({})));
        annotations.insert("kubernetes.io/limit-ranger".into(), json!(note));
    }
    let mut errors = Vec::new();
    for item in &items {
        match kind(item) {
            "Container" => {
                for c in containers(pod) {
                    check(
                        item,
                        "Container",
                        &resources(c, "requests"),
                        &resources(c, "limits"),
                        &mut errors,
                    );
                }
            }
            "Pod" => {
                let (requests, limits) = pod_totals(pod);
                check(item, "Pod", &requests, &limits, &mut errors);
            }
            _ => {}
        }
    }
    refuse("pods", pod, errors)
}

/// Upstream's Forbidden for what broke a limit: one message, or several in brackets.
fn refuse(plural: &str, obj: &Value, errors: Vec<String>) -> Result<()> {
    let why = match errors.len() {
        0 => return Ok(()),
        1 => errors[0].clone(),
        _ => format!("[{}]", errors.join(", ")),
    };
    Err(ApiError::forbidden(format!(
        "{plural} \"{}\" is forbidden: {why}",
        meta::name(obj)
    )))
}

fn kind(item: &Value) -> &str {
    item.get("type").and_then(Value::as_str).unwrap_or("")
}

fn containers(pod: &Value) -> Vec<&Value> {
    CONTAINER_LISTS
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}"))?.as_array())
        .flatten()
        .collect()
}

/// A container's requests or limits, as the strings it gave.
fn resources(c: &Value, which: &str) -> Map<String, Value> {
    c.pointer(&format!("/resources/{which}"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Fills in what a container leaves out from a Container item's defaults; returns what was set,
/// as upstream's annotation words it.
fn apply_defaults(pod: &mut Value, item: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    for list in CONTAINER_LISTS {
        let Some(cs) = pod
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in cs {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            for (from, which, word) in [
                ("defaultRequest", "requests", "request"),
                ("default", "limits", "limit"),
            ] {
                let Some(defaults) = item.get(from).and_then(Value::as_object) else {
                    continue;
                };
                let obj = meta::ensure_object(c);
                let res = meta::ensure_object(obj.entry("resources").or_insert_with(|| json!({})));
                let target = meta::ensure_object(res.entry(which).or_insert_with(|| json!({})));
                let mut added: Vec<&str> = Vec::new();
                for (k, v) in defaults {
                    if !target.contains_key(k) {
                        target.insert(k.clone(), v.clone());
                        added.push(k);
                    }
                }
                if target.is_empty() {
                    res.remove(which);
                }
                if !added.is_empty() {
                    notes.push(format!(
                        "{} {word} for {} {name}",
                        added.join(", "),
                        container_word(list)
                    ));
                }
            }
        }
    }
    notes
}

fn container_word(list: &str) -> &'static str {
    if list == "initContainers" {
        "init container"
    } else {
        "container"
    }
}

/// What a pod as a whole requests and limits: its containers summed, or its largest init
/// container if that is more. Values are kept as numbers, with the text to show them by.
fn pod_totals(pod: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let total = |which: &str| {
        let mut sum: std::collections::BTreeMap<String, f64> = Default::default();
        // containers are summed first; an init container counts if it alone is more
        for list in ["containers", "initContainers"] {
            let init = list == "initContainers";
            for c in pod
                .pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for (k, v) in resources(c, which) {
                    let v = number(&v).unwrap_or(0.0);
                    let e = sum.entry(k).or_default();
                    *e = if init { e.max(v) } else { *e + v };
                }
            }
        }
        sum.into_iter()
            .map(|(k, v)| {
                let text = show(&k, v);
                (k, json!(text))
            })
            .collect()
    };
    (total("requests"), total("limits"))
}

/// A summed quantity written back: cpu in millicores when not whole, others in units.
fn show(resource: &str, v: f64) -> String {
    if resource == "cpu" && v.fract() != 0.0 {
        format!("{}m", (v * 1000.0).round() as i64)
    } else {
        format!("{}", v.round() as i64)
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_str()
        .and_then(|s| quantity::parse(s).ok())
        .or_else(|| v.as_f64())
}

fn text(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// Checks requests and limits against an item's min, max and ratio, pushing upstream's
/// messages.
fn check(
    item: &Value,
    scope: &str,
    requests: &Map<String, Value>,
    limits: &Map<String, Value>,
    errors: &mut Vec<String>,
) {
    let bound = |key: &str| {
        item.get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    for (r, min) in bound("min") {
        match requests.get(&r) {
            None => errors.push(format!(
                "minimum {r} usage per {scope} is {}.  No request is specified",
                text(&min)
            )),
            Some(req) if number(req) < number(&min) => errors.push(format!(
                "minimum {r} usage per {scope} is {}, but request is {}",
                text(&min),
                text(req)
            )),
            Some(_) => {}
        }
    }
    for (r, max) in bound("max") {
        match limits.get(&r) {
            None => errors.push(format!(
                "maximum {r} usage per {scope} is {}.  No limit is specified",
                text(&max)
            )),
            Some(lim) if number(lim) > number(&max) => errors.push(format!(
                "maximum {r} usage per {scope} is {}, but limit is {}",
                text(&max),
                text(lim)
            )),
            Some(_) => {}
        }
    }
    for (r, ratio) in bound("maxLimitRequestRatio") {
        let (Some(lim), Some(req)) = (
            limits.get(&r).and_then(number),
            requests.get(&r).and_then(number),
        ) else {
            continue;
        };
        let max = number(&ratio).unwrap_or(f64::MAX);
        if req > 0.0 && lim / req > max {
            errors.push(format!(
                "{r} max limit to request ratio per {scope} is {}, but provided ratio is {:.6}",
                text(&ratio),
                lim / req
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_with_upstream_messages() {
        let item = json!({"type": "Container", "max": {"cpu": "2", "memory": "1Gi"},
                          "min": {"cpu": "100m"}, "maxLimitRequestRatio": {"cpu": "4"}});
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let mut errors = Vec::new();
        check(
            &item,
            "Container",
            &obj(json!({"cpu": "1"})),
            &obj(json!({"cpu": "3", "memory": "100Mi"})),
            &mut errors,
        );
        assert_eq!(
            errors,
            ["maximum cpu usage per Container is 2, but limit is 3"]
        );
        errors.clear();
        check(
            &item,
            "Container",
            &obj(json!({"cpu": "50m"})),
            &obj(json!({"cpu": "1"})),
            &mut errors,
        );
        assert_eq!(
            errors,
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum memory usage per Container is 1Gi.  No limit is specified",
                "cpu max limit to request ratio per Container is 4, but provided ratio is 20.000000",
            ]
        );
    }

    #[test]
    fn claims_are_bounded_by_their_storage_request() {
        let item = json!({"type": "PersistentVolumeClaim",
                          "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}});
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let mut errors = Vec::new();
        check_claim(&item, &obj(json!({"storage": "1500Mi"})), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        check_claim(&item, &obj(json!({"storage": "10Gi"})), &mut errors);
        check_claim(&item, &obj(json!({"storage": "500Mi"})), &mut errors);
        check_claim(&item, &obj(json!({})), &mut errors);
        assert_eq!(
            errors,
            [
                "maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 10Gi",
                "minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi",
                "minimum storage usage per PersistentVolumeClaim is 1Gi.  No request is specified",
                "maximum storage usage per PersistentVolumeClaim is 2Gi.  No request is specified",
            ]
        );
    }

    #[test]
    fn defaults_fill_in_what_containers_leave_out() {
        let item = json!({"type": "Container", "default": {"cpu": "300m", "memory": "200Mi"},
                          "defaultRequest": {"cpu": "200m", "memory": "100Mi"}});
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "1"}}}
        ]}});
        let notes = apply_defaults(&mut pod, &item);
        assert_eq!(
            pod.pointer("/spec/containers/0/resources/limits/cpu"),
            Some(&json!("300m"))
        );
        assert_eq!(
            pod.pointer("/spec/containers/0/resources/requests/memory"),
            Some(&json!("100Mi"))
        );
        assert_eq!(
            pod.pointer("/spec/containers/1/resources/limits/cpu"),
            Some(&json!("1"))
        );
        assert_eq!(
            notes,
            [
                "cpu, memory request for container a",
                "cpu, memory limit for container a",
                "cpu, memory request for container b",
                "memory limit for container b",
            ]
        );
        let (requests, limits) = pod_totals(&pod);
        assert_eq!(requests.get("cpu"), Some(&json!("400m")));
        assert_eq!(limits.get("cpu"), Some(&json!("1300m")));
    }
}
