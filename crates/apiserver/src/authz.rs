//! Authorization: the privileged group `system:masters`, then RBAC (Roles, ClusterRoles with
//! aggregation, RoleBindings, ClusterRoleBindings) evaluated as upstream's RBAC authorizer does,
//! and the 403 messages upstream words.

use serde_json::Value;

use api::registry;
use api::selector::LabelSelector;

use crate::authn::UserInfo;
use crate::status::{ApiError, Result};
use crate::storage::{Storage, to_object};

/// What a request wants to do.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// The verb (get, list, watch, create, update, patch, delete, deletecollection, impersonate...).
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    /// Plural resource; empty for a non-resource request.
    pub resource: String,
    /// Subresource, e.g. `log`.
    pub subresource: String,
    /// Namespace ("" for cluster scope).
    pub namespace: String,
    /// Object name, if one.
    pub name: String,
    /// The path of a non-resource request (`/version`).
    pub path: String,
}

impl Attributes {
    fn is_resource(&self) -> bool {
        !self.resource.is_empty()
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether one policy rule allows the request (upstream's `RuleAllows`).
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strings(rule.get("verbs"));
    if !verbs.iter().any(|v| *v == "*" || *v == a.verb) {
        return false;
    }
    if !a.is_resource() {
        return strings(rule.get("nonResourceURLs")).iter().any(|u| {
            *u == "*" || *u == a.path || (u.ends_with('*') && a.path.starts_with(&u[..u.len() - 1]))
        });
    }
    let groups = strings(rule.get("apiGroups"));
    if !groups.iter().any(|g| *g == "*" || *g == a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resources = strings(rule.get("resources"));
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
            || (r.ends_with("/*") && combined.starts_with(&r[..r.len() - 1]))
    });
    if !resource_ok {
        return false;
    }
    let names = strings(rule.get("resourceNames"));
    names.is_empty() || names.contains(&a.name.as_str())
}

fn subject_matches(subject: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => name == user.name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

async fn objects(storage: &Storage, group: &str, plural: &str, ns: &str) -> Result<Vec<Value>> {
    let rt = registry()
        .find(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let range = storage
        .backend
        .range(&rt.namespace_prefix(ns), None, 0)
        .await
        .map_err(ApiError::unavailable)?;
    range.kvs.iter().map(to_object).collect()
}

/// The rules of a ClusterRole, with the rules of the roles it aggregates.
fn cluster_role_rules(role: &Value, all: &[Value]) -> Vec<Value> {
    let mut rules: Vec<Value> = role
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let selectors = role
        .get("aggregationRule")
        .and_then(|a| a.get("clusterRoleSelectors"))
        .and_then(Value::as_array);
    for sel in selectors.into_iter().flatten() {
        let Ok(sel) = LabelSelector::from_json(sel) else {
            continue;
        };
        for other in all.iter().filter(|o| sel.matches(o)) {
            rules.extend(
                other
                    .get("rules")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
        }
    }
    rules
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// Whether the user may do what the attributes describe.
pub async fn allowed(storage: &Storage, user: &UserInfo, a: &Attributes) -> Result<bool> {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(true);
    }
    let cluster_roles = objects(storage, RBAC, "clusterroles", "").await?;
    let role_named = |name: &str| cluster_roles.iter().find(|r| api::meta::name(r) == name);
    let allows = |rules: &[Value]| rules.iter().any(|r| rule_allows(r, a));
    for binding in objects(storage, RBAC, "clusterrolebindings", "").await? {
        let subjects = binding
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, user, "")) {
            continue;
        }
        let role = binding
            .get("roleRef")
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(role) = role_named(role)
            && allows(&cluster_role_rules(role, &cluster_roles))
        {
            return Ok(true);
        }
    }
    if a.namespace.is_empty() {
        return Ok(false);
    }
    let roles = objects(storage, RBAC, "roles", &a.namespace).await?;
    for binding in objects(storage, RBAC, "rolebindings", &a.namespace).await? {
        let subjects = binding
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !subjects
            .iter()
            .any(|s| subject_matches(s, user, &a.namespace))
        {
            continue;
        }
        let role_ref = binding.get("roleRef");
        let kind = role_ref
            .and_then(|r| r.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = role_ref
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let rules = match kind {
            "ClusterRole" => role_named(name).map(|r| cluster_role_rules(r, &cluster_roles)),
            _ => roles
                .iter()
                .find(|r| api::meta::name(r) == name)
                .and_then(|r| r.get("rules"))
                .and_then(Value::as_array)
                .cloned(),
        };
        if rules.is_some_and(|r| allows(&r)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The reason upstream gives when a request is denied.
pub fn denial(user: &UserInfo, a: &Attributes) -> String {
    let prefix = format!("User \"{}\" cannot {}", user.name, a.verb);
    if !a.is_resource() {
        return format!("{prefix} path \"{}\"", a.path);
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    if a.namespace.is_empty() {
        format!(
            "{prefix} resource \"{resource}\" in API group \"{}\" at the cluster scope",
            a.group
        )
    } else {
        format!(
            "{prefix} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\"",
            a.group, a.namespace
        )
    }
}

/// Checks the request, returning 403 Forbidden worded as upstream when it is denied.
pub async fn authorize(storage: &Storage, user: &UserInfo, a: &Attributes) -> Result<()> {
    if allowed(storage, user, a).await? {
        return Ok(());
    }
    let reason = denial(user, a);
    let message = if !a.is_resource() {
        format!("forbidden: {reason}")
    } else {
        let qualified = if a.group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.group)
        };
        if a.name.is_empty() {
            format!("{qualified} is forbidden: {reason}")
        } else {
            format!("{qualified} \"{}\" is forbidden: {reason}", a.name)
        }
    };
    let mut details = serde_json::json!({"kind": a.resource});
    if !a.name.is_empty() {
        details["name"] = Value::from(a.name.clone());
    }
    if !a.group.is_empty() {
        details["group"] = Value::from(a.group.clone());
    }
    Err(ApiError {
        details: Some(details),
        ..ApiError::forbidden(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "ns".into(),
            name: name.into(),
            path: String::new(),
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let rule = json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]});
        assert!(rule_allows(&rule, &attrs("list", "", "pods", "", "")));
        assert!(rule_allows(&rule, &attrs("get", "", "pods", "log", "p")));
        assert!(!rule_allows(&rule, &attrs("get", "", "pods", "exec", "p")));
        assert!(!rule_allows(&rule, &attrs("delete", "", "pods", "", "p")));
        assert!(!rule_allows(&rule, &attrs("list", "apps", "pods", "", "")));
        let star = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(&star, &attrs("*", "*", "*", "", "")));
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get"]});
        assert!(rule_allows(
            &named,
            &attrs("get", "", "configmaps", "", "a")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("get", "", "configmaps", "", "b")
        ));
        let sub = json!({"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"]});
        assert!(rule_allows(
            &sub,
            &attrs("update", "apps", "deployments", "scale", "d")
        ));
        let urls = json!({"nonResourceURLs": ["/healthz", "/api/*"], "verbs": ["get"]});
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(rule_allows(&urls, &path("/healthz")));
        assert!(rule_allows(&urls, &path("/api/v1")));
        assert!(!rule_allows(&urls, &path("/apis")));
    }

    #[test]
    fn denial_reads_as_upstream() {
        let user = UserInfo {
            name: "system:serviceaccount:ns:reader".into(),
            groups: vec![],
        };
        assert_eq!(
            denial(&user, &attrs("list", "", "secrets", "", "")),
            "User \"system:serviceaccount:ns:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"ns\""
        );
    }

    #[test]
    fn subjects() {
        let user = UserInfo {
            name: "system:serviceaccount:ns:reader".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "reader"}),
            &user,
            "ns"
        ));
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "reader", "namespace": "ns"}),
            &user,
            ""
        ));
        assert!(!subject_matches(
            &json!({"kind": "ServiceAccount", "name": "reader"}),
            &user,
            "other"
        ));
        assert!(subject_matches(
            &json!({"kind": "Group", "name": "system:serviceaccounts"}),
            &user,
            ""
        ));
    }
}
