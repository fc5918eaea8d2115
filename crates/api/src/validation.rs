//! Field errors, as upstream's `field.ErrorList`, and the name rules (RFC 1123 labels and
//! subdomains, qualified names for label keys, label values).

use std::fmt;

use serde_json::Value;

/// What is wrong with a field; the reasons are upstream's `field.ErrorType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// "Required value".
    Required,
    /// "Invalid value" with the offending value.
    Invalid(Value),
    /// "Unsupported value" with the offending value and the allowed ones.
    NotSupported(Value, Vec<String>),
    /// "Duplicate value".
    Duplicate(Value),
    /// "Forbidden".
    Forbidden,
}

/// One invalid field: its path, what is wrong, and a detail message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The path, e.g. `spec.containers[0].image`.
    pub field: String,
    /// What kind of problem.
    pub reason: Reason,
    /// Why.
    pub detail: String,
}

impl FieldError {
    /// A required field is missing.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: Reason::Required,
            detail: detail.into(),
        }
    }
    /// A field has a value that is not allowed.
    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: Reason::Invalid(value),
            detail: detail.into(),
        }
    }
    /// A field may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: Reason::Forbidden,
            detail: detail.into(),
        }
    }
    /// A value appears twice.
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        Self {
            field: field.into(),
            reason: Reason::Duplicate(value),
            detail: String::new(),
        }
    }
    /// A value outside an enumeration.
    pub fn not_supported(field: impl Into<String>, value: Value, allowed: &[&str]) -> Self {
        Self {
            field: field.into(),
            reason: Reason::NotSupported(value, allowed.iter().map(|s| s.to_string()).collect()),
            detail: String::new(),
        }
    }

    /// The cause type upstream reports (`FieldValueRequired`, ...).
    pub fn cause_type(&self) -> &'static str {
        match self.reason {
            Reason::Required => "FieldValueRequired",
            Reason::Invalid(_) => "FieldValueInvalid",
            Reason::NotSupported(..) => "FieldValueNotSupported",
            Reason::Duplicate(_) => "FieldValueDuplicate",
            Reason::Forbidden => "FieldValueForbidden",
        }
    }

    /// The message without the field path, as in a Status cause.
    pub fn cause_message(&self) -> String {
        let text = match &self.reason {
            Reason::Required => "Required value".to_string(),
            Reason::Invalid(v) => format!("Invalid value: {}", show(v)),
            Reason::NotSupported(v, allowed) => {
                let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
                format!(
                    "Unsupported value: {}: supported values: {}",
                    show(v),
                    list.join(", ")
                )
            }
            Reason::Duplicate(v) => format!("Duplicate value: {}", show(v)),
            Reason::Forbidden => "Forbidden".to_string(),
        };
        if self.detail.is_empty() {
            text
        } else {
            format!("{text}: {}", self.detail)
        }
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.cause_message())
    }
}

/// A list of field errors; empty means valid.
pub type ErrorList = Vec<FieldError>;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Why `s` is not an RFC 1123 label (as namespace and service names must be), if it is not.
pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if is_label(s) {
        return None;
    }
    Some(format!(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"
    ))
}

/// Why `s` is not a port name (an IANA service name, as container and target ports use), if
/// it is not.
pub fn port_name(s: &str) -> Option<String> {
    let why = if s.len() > 15 {
        "must be no more than 15 characters"
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    } else if s.contains("--") {
        "must not contain consecutive hyphens"
    } else if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        "must contain at least one letter (a-z)"
    } else if s.starts_with('-') || s.ends_with('-') {
        "must not begin or end with a hyphen"
    } else {
        return None;
    };
    Some(why.into())
}

/// Why `s` is not an RFC 1123 subdomain (as most object names must be), if it is not.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if !s.is_empty() && s.split('.').all(is_label) {
        return None;
    }
    Some(format!(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_LABEL_FMT}(\\.{DNS1123_LABEL_FMT})*')"
    ))
}

fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Why `key` is not a valid label or annotation key (`[prefix/]name`), if it is not.
pub fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || dns1123_subdomain(p).is_some())
    {
        return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    if !is_qualified_part(name) {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    None
}

/// Why `v` is not a valid label value, if it is not.
pub fn label_value(v: &str) -> Option<String> {
    if v.is_empty() || is_qualified_part(v) {
        return None;
    }
    Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
}

/// Validates `metadata.labels` and `metadata.annotations` keys and values.
pub fn labels_and_annotations(obj: &Value, errs: &mut ErrorList) {
    for (k, v) in crate::meta::labels(obj) {
        if let Some(why) = qualified_name(k) {
            errs.push(FieldError::invalid("metadata.labels", Value::from(k), why));
        }
        if let Some(why) = label_value(v) {
            errs.push(FieldError::invalid("metadata.labels", Value::from(v), why));
        }
    }
    let annotations = obj.get("metadata").and_then(|m| m.get("annotations"));
    let mut total = 0;
    for (k, v) in crate::meta::string_map(annotations) {
        total += k.len() + v.len();
        if let Some(why) = qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid(
                "metadata.annotations",
                Value::from(k),
                why,
            ));
        }
    }
    if total > 256 * 1024 {
        errs.push(FieldError {
            field: "metadata.annotations".into(),
            reason: Reason::Invalid(Value::from("")),
            detail: "may not have more than 262144 bytes".into(),
        });
    }
}

/// The sysctls Kubernetes counts as safe: kubelet allows them without
/// `--allowed-unsafe-sysctls`, and the baseline Pod Security Standard admits them.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("my-config").is_none());
        assert!(dns1123_subdomain("a.b-c.d").is_none());
        assert!(dns1123_subdomain("Bad_Name").is_some());
        assert!(dns1123_subdomain("-a").is_some());
        assert!(dns1123_subdomain("").is_some());
        assert!(dns1123_label("a.b").is_some());
        assert!(dns1123_label("web-1").is_none());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
        assert!(qualified_name("app").is_none());
        assert!(qualified_name("-app").is_some());
        assert!(qualified_name("a/b/c").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("v1.2_x").is_none());
        assert!(label_value("bad value").is_some());
    }

    #[test]
    fn messages_read_as_upstream() {
        let e = FieldError::required("spec.containers[0].image", "");
        assert_eq!(e.to_string(), "spec.containers[0].image: Required value");
        let e = FieldError::invalid("metadata.name", Value::from("Bad_Name"), "x");
        assert_eq!(
            e.to_string(),
            "metadata.name: Invalid value: \"Bad_Name\": x"
        );
    }
}
