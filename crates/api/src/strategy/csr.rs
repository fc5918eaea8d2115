//! The strategy of CertificateSigningRequests, as upstream's: the spec is set at creation; the
//! approval subresource adds `Approved` or `Denied` (mutually exclusive, never removed); the
//! status subresource sets the certificate once and may add `Failed`, but leaves the approval
//! conditions alone.

use serde_json::{Value, json};

use crate::validation::{ErrorList, FieldError};

const APPROVED: &str = "Approved";
const DENIED: &str = "Denied";
const FAILED: &str = "Failed";

/// Validates a request, new or changed.
pub(super) fn validate(csr: &Value, errs: &mut ErrorList) {
    let spec = csr.get("spec");
    let spec_str = |key: &str| spec.and_then(|s| s.get(key)).and_then(Value::as_str);
    if spec_str("request").is_none_or(str::is_empty) {
        errs.push(FieldError::required("spec.request", ""));
    }
    if spec_str("signerName").is_none_or(str::is_empty) {
        errs.push(FieldError::required("spec.signerName", ""));
    }
    if let Some(secs) = spec
        .and_then(|s| s.get("expirationSeconds"))
        .and_then(Value::as_i64)
        && secs < 600
    {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            json!(secs),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    let mut seen = Vec::new();
    for (i, c) in conditions(csr).iter().enumerate() {
        let at = format!("status.conditions[{i}]");
        let kind = c.get("type").and_then(Value::as_str).unwrap_or("");
        if kind.is_empty() {
            errs.push(FieldError::required(format!("{at}.type"), ""));
        }
        let allowed: &[&str] = if [APPROVED, DENIED, FAILED].contains(&kind) {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        match c.get("status").and_then(Value::as_str).unwrap_or("") {
            "" => errs.push(FieldError::required(format!("{at}.status"), "")),
            s if !allowed.contains(&s) => errs.push(FieldError::not_supported(
                format!("{at}.status"),
                json!(s),
                allowed,
            )),
            _ => {}
        }
        let other = match kind {
            APPROVED => DENIED,
            DENIED => APPROVED,
            _ => "",
        };
        if !other.is_empty() && seen.contains(&other) {
            errs.push(FieldError::invalid(
                format!("{at}.type"),
                json!(kind),
                "Approved and Denied conditions are mutually exclusive",
            ));
        }
        if seen.contains(&kind) {
            errs.push(FieldError::duplicate(format!("{at}.type"), json!(kind)));
        }
        seen.push(kind);
    }
}

/// Validates a change: the approval and failure conditions stay once added, and an issued
/// certificate stays as issued.
pub(super) fn validate_update(old: &Value, new: &Value, errs: &mut ErrorList) {
    for kind in [APPROVED, DENIED, FAILED] {
        if of_type(new, kind).count() < of_type(old, kind).count() {
            errs.push(FieldError::forbidden(
                "status.conditions",
                format!("updates may not remove a condition of type \"{kind}\""),
            ));
        }
    }
    let certificate = |o: &Value| o.get("status").and_then(|s| s.get("certificate")).cloned();
    if certificate(old).is_some() && certificate(old) != certificate(new) {
        errs.push(FieldError::forbidden(
            "status.certificate",
            "updates may not modify existing certificate content",
        ));
    }
}

/// Prepares a write through the status subresource: the approval conditions are the stored
/// ones, whatever the request says.
pub(super) fn prepare_for_status_update(old: &Value, new: &mut Value) {
    let approval = |c: &&Value| {
        let kind = c.get("type").and_then(Value::as_str);
        kind == Some(APPROVED) || kind == Some(DENIED)
    };
    let mut kept: Vec<Value> = conditions(old).iter().filter(approval).cloned().collect();
    kept.extend(conditions(new).iter().filter(|c| !approval(c)).cloned());
    if let Some(status) = new.get_mut("status").and_then(Value::as_object_mut) {
        if kept.is_empty() {
            status.remove("conditions");
        } else {
            status.insert("conditions".into(), Value::Array(kept));
        }
    }
}

/// Prepares a write through the approval subresource: only the approval conditions change.
pub fn prepare_for_approval_update(old: &Value, new: &mut Value) {
    let failed = |c: &&Value| c.get("type").and_then(Value::as_str) == Some(FAILED);
    let mut kept: Vec<Value> = conditions(new)
        .iter()
        .filter(|c| !failed(c))
        .cloned()
        .collect();
    kept.extend(conditions(old).iter().filter(failed).cloned());
    let mut merged = old.clone();
    merged["status"]["conditions"] = Value::Array(kept);
    if let Some(rv) = new
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .cloned()
    {
        crate::meta::set_meta(&mut merged, "resourceVersion", rv);
    }
    *new = merged;
}

fn conditions(csr: &Value) -> &[Value] {
    csr.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn of_type<'a>(csr: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> {
    conditions(csr)
        .iter()
        .filter(move |c| c.get("type").and_then(Value::as_str) == Some(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(conditions: Value) -> Value {
        json!({"spec": {"request": "cmVx", "signerName": "example.com/x"},
            "status": {"conditions": conditions}})
    }

    fn messages(errs: &ErrorList) -> Vec<String> {
        errs.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn approval_conditions_are_exclusive_true_and_single() {
        let mut errs = ErrorList::new();
        validate(
            &csr(json!([{"type": "Approved", "status": "True"},
                {"type": "Denied", "status": "True"}])),
            &mut errs,
        );
        assert_eq!(
            messages(&errs),
            [
                "status.conditions[1].type: Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive"
            ]
        );
        let mut errs = ErrorList::new();
        validate(
            &csr(json!([{"type": "Approved", "status": "False"},
                {"type": "Approved", "status": "True"}, {"type": "Ready", "status": "False"}])),
            &mut errs,
        );
        assert_eq!(
            messages(&errs),
            [
                "status.conditions[0].status: Unsupported value: \"False\": supported values: \"True\"",
                "status.conditions[1].type: Duplicate value: \"Approved\"",
            ]
        );
    }

    #[test]
    fn conditions_and_certificates_stay() {
        let old = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}],
            "certificate": "Y2VydA=="}});
        let mut errs = ErrorList::new();
        validate_update(
            &old,
            &json!({"status": {"certificate": "b3RoZXI="}}),
            &mut errs,
        );
        assert_eq!(
            messages(&errs),
            [
                "status.conditions: Forbidden: updates may not remove a condition of type \"Approved\"",
                "status.certificate: Forbidden: updates may not modify existing certificate content",
            ]
        );
        let mut errs = ErrorList::new();
        validate_update(&json!({}), &old, &mut errs);
        assert!(errs.is_empty());
    }

    #[test]
    fn each_subresource_changes_only_its_conditions() {
        let old = json!({"metadata": {"resourceVersion": "1"}, "spec": {"signerName": "s"},
            "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        // approval cannot drop Failed nor touch the spec or certificate
        let mut approving = json!({"metadata": {"resourceVersion": "1"}, "spec": {"signerName": "t"},
            "status": {"certificate": "Y2VydA==", "conditions": [{"type": "Approved", "status": "True"}]}});
        prepare_for_approval_update(&old, &mut approving);
        assert_eq!(
            approving,
            json!({"metadata": {"resourceVersion": "1"}, "spec": {"signerName": "s"},
                "status": {"conditions": [{"type": "Approved", "status": "True"},
                    {"type": "Failed", "status": "True"}]}})
        );
        // status cannot approve, and keeps an existing approval
        let mut status = json!({"status": {"certificate": "Y2VydA==",
            "conditions": [{"type": "Approved", "status": "True"}]}});
        prepare_for_status_update(&old, &mut status);
        assert_eq!(status, json!({"status": {"certificate": "Y2VydA=="}}));
        let mut status = json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        prepare_for_status_update(&approving, &mut status);
        assert_eq!(
            status["status"]["conditions"],
            json!([{"type": "Approved", "status": "True"}, {"type": "Failed", "status": "True"}])
        );
    }
}
