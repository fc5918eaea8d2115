//! Conversion between the versions of a resource that share storage: `autoscaling/v1` and
//! `autoscaling/v2` HorizontalPodAutoscalers (stored as v2), core `v1` and `events.k8s.io/v1`
//! Events (stored as core v1), as upstream's conversion functions map their fields.

use serde_json::{Map, Value, json};

use crate::registry::ResourceType;

/// Converts an object from one version of a resource to another (a copy when they are the same).
pub fn convert(obj: &Value, from: &ResourceType, to: &ResourceType) -> Value {
    if from.group == to.group && from.version == to.version {
        return obj.clone();
    }
    let mut out = match (
        from.api_version().as_str(),
        to.api_version().as_str(),
        to.kind,
    ) {
        ("autoscaling/v1", "autoscaling/v2", _) => hpa_v1_to_v2(obj),
        ("autoscaling/v2", "autoscaling/v1", _) => hpa_v2_to_v1(obj),
        ("events.k8s.io/v1", "v1", "Event") => event_to_core(obj),
        ("v1", "events.k8s.io/v1", "Event") => event_from_core(obj),
        _ => obj.clone(),
    };
    out["apiVersion"] = json!(to.api_version());
    out["kind"] = json!(to.kind);
    out
}

fn copy(from: &Value, to: &mut Map<String, Value>, src: &str, dst: &str) {
    if let Some(v) = from.get(src).filter(|v| !v.is_null()) {
        to.insert(dst.to_string(), v.clone());
    }
}

/// The spec and status fields both HPA versions carry alike.
const HPA_SPEC: &[&str] = &["scaleTargetRef", "minReplicas", "maxReplicas"];
const HPA_STATUS: &[&str] = &[
    "observedGeneration",
    "lastScaleTime",
    "currentReplicas",
    "desiredReplicas",
];

/// The HPA fields both versions share: metadata, and the common spec and status fields.
fn hpa_common(o: &Value) -> (Map<String, Value>, Map<String, Value>, Map<String, Value>) {
    let mut out = Map::new();
    copy(o, &mut out, "metadata", "metadata");
    let (mut spec, mut status) = (Map::new(), Map::new());
    for k in HPA_SPEC {
        copy(o.get("spec").unwrap_or(&Value::Null), &mut spec, k, k);
    }
    for k in HPA_STATUS {
        copy(o.get("status").unwrap_or(&Value::Null), &mut status, k, k);
    }
    (out, spec, status)
}

fn hpa_v1_to_v2(o: &Value) -> Value {
    let (mut out, mut s, mut st) = hpa_common(o);
    if let Some(cpu) = o.pointer("/spec/targetCPUUtilizationPercentage") {
        s.insert("metrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}]));
    }
    out.insert("spec".into(), Value::Object(s));
    if o.get("status").is_some() {
        if let Some(cpu) = o.pointer("/status/currentCPUUtilizationPercentage") {
            st.insert("currentMetrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]));
        }
        out.insert("status".into(), Value::Object(st));
    }
    Value::Object(out)
}

fn cpu_utilization<'a>(metrics: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    metrics?.as_array()?.iter().find_map(|m| {
        let r = m.get("resource")?;
        (m.get("type")? == "Resource" && r.get("name")? == "cpu")
            .then(|| r.get(field)?.get("averageUtilization"))?
    })
}

fn hpa_v2_to_v1(o: &Value) -> Value {
    let (mut out, mut s, mut st) = hpa_common(o);
    if let Some(cpu) = cpu_utilization(o.pointer("/spec/metrics"), "target") {
        s.insert("targetCPUUtilizationPercentage".into(), cpu.clone());
    }
    out.insert("spec".into(), Value::Object(s));
    st.entry("currentReplicas").or_insert(json!(0));
    st.entry("desiredReplicas").or_insert(json!(0));
    if let Some(cpu) = cpu_utilization(o.pointer("/status/currentMetrics"), "current") {
        st.insert("currentCPUUtilizationPercentage".into(), cpu.clone());
    }
    out.insert("status".into(), Value::Object(st));
    Value::Object(out)
}

/// events.k8s.io field -> core field.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("metadata", "metadata"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("action", "action"),
    ("reason", "reason"),
    ("regarding", "involvedObject"),
    ("related", "related"),
    ("note", "message"),
    ("type", "type"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedSource", "source"),
];

fn event_to_core(o: &Value) -> Value {
    let mut out = Map::new();
    for (new, old) in EVENT_FIELDS {
        copy(o, &mut out, new, old);
    }
    Value::Object(out)
}

fn event_from_core(o: &Value) -> Value {
    let mut out = Map::new();
    for (new, old) in EVENT_FIELDS {
        copy(o, &mut out, old, new);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn hpa_round_trip() {
        let v1 = registry()
            .by_kind("autoscaling/v1", "HorizontalPodAutoscaler")
            .expect("v1");
        let v2 = registry()
            .by_kind("autoscaling/v2", "HorizontalPodAutoscaler")
            .expect("v2");
        let obj = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}});
        let stored = convert(&obj, v1, v2);
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        let back = convert(&stored, v2, v1);
        assert_eq!(back["spec"], obj["spec"]);
        assert_eq!(back["apiVersion"], "autoscaling/v1");
    }

    #[test]
    fn events_map_fields() {
        let core = registry().by_kind("v1", "Event").expect("core");
        let new = registry()
            .by_kind("events.k8s.io/v1", "Event")
            .expect("events.k8s.io");
        let e = json!({"metadata": {"name": "e"}, "message": "hi", "involvedObject": {"kind": "Pod", "name": "p"}, "count": 2});
        let converted = convert(&e, core, new);
        assert_eq!(converted["note"], "hi");
        assert_eq!(converted["regarding"]["name"], "p");
        assert_eq!(converted["deprecatedCount"], 2);
        assert_eq!(convert(&converted, new, core)["message"], "hi");
    }
}
