//! Authorization: the privileged group `system:masters`, the Node authorizer for node agents
//! (`crate::node_authz`), then RBAC (Roles, ClusterRoles with
//! aggregation, RoleBindings, ClusterRoleBindings) evaluated as upstream's RBAC authorizer does,
//! and the 403 messages upstream words.

use serde_json::Value;

use api::registry;
use api::selector::LabelSelector;

use crate::authn::UserInfo;
use crate::status::{ApiError, Result};
use crate::storage::Storage;

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

    /// The attributes of a request: from its parsed resource request, or its method and path.
    pub fn of(
        info: Option<&crate::request::RequestInfo>,
        method: &http::Method,
        path: &str,
    ) -> Self {
        match info {
            Some(i) => Self {
                verb: i.verb.to_string(),
                group: i.group.clone(),
                resource: i.resource.clone(),
                subresource: i.subresource.clone(),
                // a namespace's own requests are in that namespace, as upstream reads them
                namespace: if i.group.is_empty() && i.resource == "namespaces" {
                    i.name.clone()
                } else {
                    i.namespace.clone()
                },
                name: i.name.clone(),
                path: String::new(),
            },
            None => Self {
                verb: method.as_str().to_ascii_lowercase(),
                path: path.to_string(),
                ..Default::default()
            },
        }
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
    storage.list_in(rt, ns).await
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

/// The rules that apply to the user in a namespace ("" for cluster-wide rules only): those of
/// every ClusterRoleBinding and, in the namespace, every RoleBinding naming the user. Worked
/// out once per user and namespace until an RBAC object changes.
pub async fn rules_for(
    storage: &Storage,
    user: &UserInfo,
    namespace: &str,
) -> Result<std::sync::Arc<Vec<Value>>> {
    let key = format!("{}\0{}\0{namespace}", user.name, user.groups.join(","));
    if let Some(rules) = storage.rbac.get(&key) {
        return Ok(rules);
    }
    let generation = storage.rbac.generation();
    let rules = std::sync::Arc::new(work_out_rules(storage, user, namespace).await?);
    storage.rbac.put(key, generation, rules.clone());
    Ok(rules)
}

async fn work_out_rules(storage: &Storage, user: &UserInfo, namespace: &str) -> Result<Vec<Value>> {
    let cluster_roles = objects(storage, RBAC, "clusterroles", "").await?;
    let role_named = |name: &str| cluster_roles.iter().find(|r| api::meta::name(r) == name);
    let mut rules = Vec::new();
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
        if let Some(role) = role_named(role) {
            rules.extend(cluster_role_rules(role, &cluster_roles));
        }
    }
    if namespace.is_empty() {
        return Ok(rules);
    }
    let roles = objects(storage, RBAC, "roles", namespace).await?;
    for binding in objects(storage, RBAC, "rolebindings", namespace).await? {
        let subjects = binding
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, user, namespace)) {
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
        match kind {
            "ClusterRole" => {
                if let Some(r) = role_named(name) {
                    rules.extend(cluster_role_rules(r, &cluster_roles));
                }
            }
            _ => {
                let found = roles
                    .iter()
                    .find(|r| api::meta::name(r) == name)
                    .and_then(|r| r.get("rules"))
                    .and_then(Value::as_array);
                rules.extend(found.cloned().unwrap_or_default());
            }
        }
    }
    Ok(rules)
}

/// Whether the user may do what the attributes describe.
pub async fn allowed(storage: &Storage, user: &UserInfo, a: &Attributes) -> Result<bool> {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(true);
    }
    if let Some(node) = crate::node_authz::node_name(user)
        && crate::node_authz::allows(storage, node, a).await?
    {
        return Ok(true);
    }
    Ok(rules_for(storage, user, &a.namespace)
        .await?
        .iter()
        .any(|r| rule_allows(r, a)))
}

/// The requests a rule grants, one per group, resource, verb and name (or URL and verb).
fn expand(rule: &Value, namespace: &str) -> Vec<Attributes> {
    let mut out = Vec::new();
    let verbs = strings(rule.get("verbs"));
    for url in strings(rule.get("nonResourceURLs")) {
        for v in &verbs {
            out.push(Attributes {
                verb: v.to_string(),
                path: url.to_string(),
                ..Default::default()
            });
        }
    }
    let names = strings(rule.get("resourceNames"));
    let names = if names.is_empty() { vec![""] } else { names };
    for g in strings(rule.get("apiGroups")) {
        for r in strings(rule.get("resources")) {
            let (resource, sub) = r.split_once('/').unwrap_or((r, ""));
            for v in &verbs {
                for n in &names {
                    out.push(Attributes {
                        verb: v.to_string(),
                        group: g.into(),
                        resource: resource.into(),
                        subresource: sub.into(),
                        namespace: namespace.into(),
                        name: n.to_string(),
                        path: String::new(),
                    });
                }
            }
        }
    }
    out
}

/// The escalation guard of RBAC writes: a user may create or change a role only with rules it
/// holds itself (or the `escalate` verb on it), and bind a role only if it holds the role's
/// rules (or the `bind` verb on it), as upstream prevents privilege escalation.
pub async fn check_grant(
    storage: &Storage,
    user: &UserInfo,
    kind: &str,
    obj: &Value,
) -> Result<()> {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let namespace = api::meta::namespace(obj).to_string();
    let name = api::meta::name(obj).to_string();
    let (resource, verb, rules) = match kind {
        "Role" | "ClusterRole" => (
            if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            },
            "escalate",
            obj.get("rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        ),
        "RoleBinding" | "ClusterRoleBinding" => {
            let role_kind = obj
                .get("roleRef")
                .and_then(|r| r.get("kind"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let role_name = obj
                .get("roleRef")
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let bind = Attributes {
                verb: "bind".into(),
                group: RBAC.into(),
                resource: if role_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                }
                .into(),
                namespace: namespace.clone(),
                name: role_name.clone(),
                ..Default::default()
            };
            if allowed(storage, user, &bind).await? {
                return Ok(());
            }
            let rules = if role_kind == "Role" {
                objects(storage, RBAC, "roles", &namespace)
                    .await?
                    .into_iter()
                    .find(|r| api::meta::name(r) == role_name)
                    .and_then(|r| r.get("rules").and_then(Value::as_array).cloned())
            } else {
                let all = objects(storage, RBAC, "clusterroles", "").await?;
                all.iter()
                    .find(|r| api::meta::name(r) == role_name)
                    .map(|r| cluster_role_rules(r, &all))
            };
            (
                if kind == "RoleBinding" {
                    "rolebindings"
                } else {
                    "clusterrolebindings"
                },
                "",
                rules.unwrap_or_default(),
            )
        }
        _ => return Ok(()),
    };
    if !verb.is_empty() {
        let escalate = Attributes {
            verb: verb.into(),
            group: RBAC.into(),
            resource: resource.into(),
            namespace: namespace.clone(),
            name: name.clone(),
            ..Default::default()
        };
        if allowed(storage, user, &escalate).await? {
            return Ok(());
        }
    }
    let held = rules_for(storage, user, &namespace).await?;
    let missing: Vec<&Value> = rules
        .iter()
        .filter(|rule| {
            !expand(rule, &namespace)
                .iter()
                .all(|a| held.iter().any(|h| rule_allows(h, a)))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|r| r.to_string()).collect();
    let qualified = format!("{resource}.{RBAC}");
    Err(ApiError::forbidden(format!(
        "{qualified} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        user.groups,
        list.join("\n")
    )))
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
    let mut reason = denial(user, a);
    if let Some(why) = crate::node_authz::denial_reason(user, a) {
        reason = format!("{reason}: {why}");
    }
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
    tracing::debug!(%message, "RBAC: denied");
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
