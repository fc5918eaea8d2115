//! Audit logging as upstream's log backend writes it: an `audit.k8s.io/v1` Policy decides a level
//! per request (None, Metadata, Request, RequestResponse) by its first matching rule, and each
//! audited request becomes one JSON line (an `audit.k8s.io/v1` Event at stage
//! ResponseComplete) in the log file. Lines are written by a thread of their own so that requests
//! never wait on the file. What serves a request can [`annotate`] its event, as Pod Security
//! admission does with the violations its `audit` level finds.

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::authn::UserInfo;
use crate::authz::Attributes;

tokio::task_local! {
    /// What the request being served noted for its event.
    static NOTED: RefCell<Noted>;
}

/// What serving a request adds to its audit event.
#[derive(Debug, Default)]
pub struct Noted {
    /// The event's annotations.
    pub annotations: serde_json::Map<String, Value>,
    /// The name of the object a create made (the request's path has none).
    pub created: Option<String>,
}

/// Adds an annotation to the audit event of the request being served (upstream's
/// `AddAuditAnnotation`); nothing when the request is not audited.
pub fn annotate(key: &str, value: impl Into<String>) {
    let _ = NOTED.try_with(|n| {
        n.borrow_mut()
            .annotations
            .insert(key.to_string(), Value::String(value.into()))
    });
}

/// Names the object the request being served creates, for its event's `objectRef`.
pub fn creating(name: &str) {
    let _ = NOTED.try_with(|n| n.borrow_mut().created = Some(name.to_string()));
}

/// Serves a request with `serve`, gathering what it notes.
pub async fn noting<T>(serve: impl Future<Output = T>) -> (T, Noted) {
    NOTED
        .scope(RefCell::new(Noted::default()), async {
            let out = serve.await;
            (out, NOTED.with(RefCell::take))
        })
        .await
}

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Not logged.
    None,
    /// Who did what to which object, and the response code.
    Metadata,
    /// Also the request body.
    Request,
    /// Also the response body.
    RequestResponse,
}

impl Level {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "None" => Self::None,
            "Metadata" => Self::Metadata,
            "Request" => Self::Request,
            "RequestResponse" => Self::RequestResponse,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Metadata => "Metadata",
            Self::Request => "Request",
            Self::RequestResponse => "RequestResponse",
        }
    }
}

/// The audit policy and the log it writes to.
pub struct Auditor {
    rules: Vec<Value>,
    lines: mpsc::Sender<String>,
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn listed(list: &[&str], value: &str) -> bool {
    list.is_empty() || list.contains(&value)
}

/// Whether a policy rule applies to a request.
fn rule_matches(rule: &Value, user: &UserInfo, a: &Attributes) -> bool {
    if !listed(&strings(rule.get("users")), &user.name) {
        return false;
    }
    let groups = strings(rule.get("userGroups"));
    if !groups.is_empty() && !user.groups.iter().any(|g| groups.contains(&g.as_str())) {
        return false;
    }
    if !listed(&strings(rule.get("verbs")), &a.verb) {
        return false;
    }
    if a.resource.is_empty() {
        let urls = strings(rule.get("nonResourceURLs"));
        return rule.get("resources").is_none()
            && rule.get("namespaces").is_none()
            && (urls.is_empty()
                || urls.iter().any(|u| {
                    *u == a.path || (u.ends_with('*') && a.path.starts_with(&u[..u.len() - 1]))
                }));
    }
    if rule.get("nonResourceURLs").is_some() {
        return false;
    }
    if !listed(&strings(rule.get("namespaces")), &a.namespace) {
        return false;
    }
    let Some(kinds) = rule.get("resources").and_then(Value::as_array) else {
        return true;
    };
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    kinds.iter().any(|k| {
        let group_ok = k.get("group").and_then(Value::as_str).unwrap_or("") == a.group;
        let resources = strings(k.get("resources"));
        let resource_ok = resources.is_empty()
            || resources.iter().any(|r| {
                *r == combined
                    || *r == a.resource && a.subresource.is_empty()
                    || *r == "*"
                    || (r.starts_with("*/") && r[2..] == a.subresource)
            });
        let names = strings(k.get("resourceNames"));
        group_ok && resource_ok && listed(&names, &a.name)
    })
}

/// What one finished request was.
pub struct Record<'a> {
    /// Who.
    pub user: &'a UserInfo,
    /// What.
    pub attrs: &'a Attributes,
    /// The request URI.
    pub uri: &'a str,
    /// The user agent.
    pub user_agent: &'a str,
    /// The response code.
    pub code: u16,
    /// The request body, when it was JSON.
    pub request: Option<Value>,
    /// The response body, when it was JSON and not a stream.
    pub response: Option<Value>,
    /// When the request arrived (RFC 3339 with microseconds).
    pub received: String,
    /// What serving it noted.
    pub noted: Noted,
}

impl Auditor {
    /// Reads the policy file and opens the log (appending).
    pub fn open(policy: &Path, log: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(policy)
            .with_context(|| format!("cannot read the audit policy {}", policy.display()))?;
        let doc: Value = serde_saphyr::from_str(&text)
            .with_context(|| format!("the audit policy {} is not YAML", policy.display()))?;
        if doc.get("kind").and_then(Value::as_str) != Some("Policy") {
            anyhow::bail!("{} is not an audit.k8s.io/v1 Policy", policy.display());
        }
        let rules: Vec<Value> = doc
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, r) in rules.iter().enumerate() {
            let level = r.get("level").and_then(Value::as_str).unwrap_or("");
            if Level::parse(level).is_none() {
                anyhow::bail!(
                    "{}: rules[{i}].level {level:?} is not None, Metadata, Request or RequestResponse",
                    policy.display()
                );
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the audit log {}", log.display()))?;
        let (lines, queue) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Ok(line) = queue.recv() {
                    let _ = file.write_all(line.as_bytes());
                    while let Ok(more) = queue.try_recv() {
                        let _ = file.write_all(more.as_bytes());
                    }
                    let _ = file.flush();
                }
            })?;
        Ok(Self { rules, lines })
    }

    /// The level of a request under the policy.
    pub fn level(&self, user: &UserInfo, a: &Attributes) -> Level {
        self.rules
            .iter()
            .find(|r| rule_matches(r, user, a))
            .and_then(|r| {
                r.get("level")
                    .and_then(Value::as_str)
                    .and_then(Level::parse)
            })
            .unwrap_or(Level::None)
    }

    /// Writes the event of a finished request at its level.
    pub fn log(&self, level: Level, r: Record<'_>) {
        if level == Level::None {
            return;
        }
        let a = r.attrs;
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level.name(),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete",
            "requestURI": r.uri,
            "verb": a.verb,
            "user": {"username": r.user.name, "groups": r.user.groups},
            "userAgent": r.user_agent,
            "responseStatus": {"metadata": {}, "code": r.code},
            "requestReceivedTimestamp": r.received,
            "stageTimestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        });
        if !a.resource.is_empty() {
            let mut object = json!({"resource": a.resource, "apiGroup": a.group});
            let name = match &r.noted.created {
                Some(n) if a.name.is_empty() => n,
                _ => &a.name,
            };
            for (k, v) in [
                ("namespace", a.namespace.as_str()),
                ("name", name),
                ("subresource", a.subresource.as_str()),
            ] {
                if !v.is_empty() {
                    object[k] = json!(v);
                }
            }
            event["objectRef"] = object;
        }
        if !r.noted.annotations.is_empty() {
            event["annotations"] = Value::Object(r.noted.annotations);
        }
        if level >= Level::Request
            && let Some(body) = r.request
        {
            event["requestObject"] = body;
        }
        if level == Level::RequestResponse
            && let Some(body) = r.response
        {
            event["responseObject"] = body;
        }
        let _ = self.lines.send(format!("{event}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_sets_the_level() {
        let dir = tempfile::tempdir().expect("dir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  users: [\"system:kube-controller-manager\"]\n- level: RequestResponse\n  resources:\n  - group: \"\"\n    resources: [secrets]\n- level: Metadata\n  verbs: [create, delete]\n- level: None\n",
        )
        .expect("write");
        let auditor = Auditor::open(&policy, &dir.path().join("audit.log")).expect("open");
        let admin = UserInfo {
            name: "admin".into(),
            groups: vec![],
        };
        let ctrl = UserInfo {
            name: "system:kube-controller-manager".into(),
            groups: vec![],
        };
        let a = |verb: &str, resource: &str| Attributes {
            verb: verb.into(),
            resource: resource.into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        assert_eq!(
            auditor.level(&admin, &a("get", "secrets")),
            Level::RequestResponse
        );
        assert_eq!(auditor.level(&ctrl, &a("get", "secrets")), Level::None);
        assert_eq!(
            auditor.level(&admin, &a("create", "configmaps")),
            Level::Metadata
        );
        assert_eq!(auditor.level(&admin, &a("list", "configmaps")), Level::None);
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n",
        )
        .expect("write");
        assert!(Auditor::open(&bad, &dir.path().join("x.log")).is_err());
    }
}
