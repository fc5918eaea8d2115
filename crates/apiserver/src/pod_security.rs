//! Pod Security admission, as upstream's: a namespace's labels
//! `pod-security.kubernetes.io/{enforce,warn,audit}` (with `-version`) name a level of the Pod
//! Security Standards — `privileged`, `baseline` or `restricted` — and pods are checked against
//! it: `enforce` refuses a pod that violates it, `warn` answers with a warning, `audit` notes it
//! in the audit log. Workload resources (their pod templates) get warnings only. The checks and
//! their messages are upstream's (`k8s.io/pod-security-admission/policy`), evaluated at the
//! latest version whatever version label is given.

use std::collections::BTreeSet;

use serde_json::Value;

/// The label prefix.
const PREFIX: &str = "pod-security.kubernetes.io/";

/// A level of the Pod Security Standards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No restriction.
    Privileged,
    /// Known privilege escalations prevented.
    Baseline,
    /// Hardening best practices.
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// A level at a version, as a namespace's labels name it (`restricted:latest`).
#[derive(Debug, Clone, PartialEq)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// The version label (`latest` unless given).
    pub version: String,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.name(), self.version)
    }
}

/// What a namespace's labels ask for, by mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Pods violating it are refused.
    pub enforce: LevelVersion,
    /// Requests get a warning.
    pub warn: LevelVersion,
    /// Requests are annotated in the audit log.
    pub audit: LevelVersion,
}

/// The policy of a namespace with these labels; an invalid level counts as `restricted`, as
/// upstream fails closed.
pub fn policy(labels: Option<&Value>) -> Policy {
    let mode = |m: &str| {
        let label = |k: String| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let level = label(format!("{PREFIX}{m}"))
            .map(|v| Level::parse(v).unwrap_or(Level::Restricted))
            .unwrap_or(Level::Privileged);
        let version = label(format!("{PREFIX}{m}-version")).unwrap_or("latest");
        LevelVersion {
            level,
            version: version.to_string(),
        }
    };
    Policy {
        enforce: mode("enforce"),
        warn: mode("warn"),
        audit: mode("audit"),
    }
}

/// Upstream's messages for invalid Pod Security labels on a namespace: (label, value, detail).
pub fn invalid_labels(labels: Option<&Value>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let Some(map) = labels.and_then(Value::as_object) else {
        return out;
    };
    for (k, v) in map {
        let Some(mode) = k.strip_prefix(PREFIX) else {
            continue;
        };
        let v = v.as_str().unwrap_or_default();
        match mode {
            "enforce" | "warn" | "audit" if Level::parse(v).is_none() => out.push((
                k.clone(),
                v.to_string(),
                "must be one of privileged, baseline, restricted".into(),
            )),
            "enforce-version" | "warn-version" | "audit-version"
                if v != "latest" && !is_version(v) =>
            {
                out.push((
                    k.clone(),
                    v.to_string(),
                    "must be \"latest\" or \"v1.x\"".into(),
                ))
            }
            _ => {}
        }
    }
    out
}

fn is_version(v: &str) -> bool {
    v.strip_prefix("v1.")
        .is_some_and(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
}

/// A failed check: the reason and its detail.
type Violation = (&'static str, String);

fn plural(one: &str, many: &str, n: usize) -> String {
    if n == 1 { one.into() } else { many.into() }
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{:?}", s.as_ref())).collect();
    quoted.join(", ")
}

/// `container "a"` / `containers "a", "b"`.
fn containers(names: &[String]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Every container of the pod spec (init, regular, ephemeral), as upstream's visitor.
fn all_containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| spec[k].as_array().into_iter().flatten())
}

/// The names of the containers `pred` holds for.
fn containers_where(spec: &Value, pred: impl Fn(&Value) -> bool) -> Vec<String> {
    all_containers(spec).filter(|c| pred(c)).map(name).collect()
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

fn sc<'a>(c: &'a Value, field: &str) -> &'a Value {
    &c["securityContext"][field]
}

/// Upstream's checks of `level`, in the order of their ids, on a pod spec.
fn check(level: Level, spec: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let restricted = level == Level::Restricted;
    let mut out: Vec<(&'static str, Violation)> = Vec::new();
    let mut add = |id: &'static str, reason: &'static str, detail: String| {
        out.push((id, (reason, detail)));
    };
    let pod_sc = &spec["securityContext"];

    // baseline
    let mut host = Vec::new();
    for (field, label) in [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ] {
        if spec[field] == Value::Bool(true) {
            host.push(label);
        }
    }
    if !host.is_empty() {
        add("hostNamespaces", "host namespaces", host.join(", "));
    }
    let privileged = containers_where(spec, |c| sc(c, "privileged") == &Value::Bool(true));
    if !privileged.is_empty() {
        let detail = format!(
            "{} must not set securityContext.privileged=true",
            containers(&privileged)
        );
        add("privileged", "privileged", detail);
    }
    const BASELINE_CAPS: &[&str] = &[
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let added = |c: &Value| -> Vec<String> {
        let add = sc(c, "capabilities")["add"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        add.iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (mut bad, mut caps) = (Vec::new(), BTreeSet::new());
    for c in all_containers(spec) {
        let extra: Vec<String> = added(c)
            .into_iter()
            .filter(|a| !BASELINE_CAPS.contains(&a.as_str()))
            .collect();
        if !extra.is_empty() {
            bad.push(name(c));
            caps.extend(extra);
        }
    }
    if !bad.is_empty() {
        let caps: Vec<String> = caps.into_iter().collect();
        let detail = format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers(&bad),
            join_quote(&caps)
        );
        add("capabilities_baseline", "non-default capabilities", detail);
    }
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let host_paths: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(|v| name(v))
        .collect();
    if !host_paths.is_empty() && !restricted {
        let detail = format!(
            "{} {}",
            plural("volume", "volumes", host_paths.len()),
            join_quote(&host_paths)
        );
        add("hostPathVolumes", "hostPath volumes", detail);
    }
    let (mut bad, mut ports) = (Vec::new(), Vec::new());
    for c in all_containers(spec) {
        let used: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64().filter(|h| *h != 0))
            .map(|h| h.to_string())
            .collect();
        if !used.is_empty() {
            bad.push(name(c));
            ports.extend(used);
        }
    }
    if !bad.is_empty() {
        let detail = format!(
            "{} {} {} {}",
            containers(&bad),
            plural("uses", "use", bad.len()),
            plural("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        );
        add("hostPorts", "hostPort", detail);
    }
    let unmasked = containers_where(spec, |c| {
        sc(c, "procMount").as_str().is_some_and(|m| m != "Default")
    });
    if !unmasked.is_empty() {
        let detail = format!(
            "{} must not set securityContext.procMount to \"Unmasked\"",
            containers(&unmasked)
        );
        add("procMount", "procMount", detail);
    }
    let seccomp_type = |v: &Value| v["seccompProfile"]["type"].as_str().map(str::to_string);
    if !restricted {
        let mut setters = Vec::new();
        if seccomp_type(pod_sc).as_deref() == Some("Unconfined") {
            setters.push("pod".to_string());
        }
        let bad = containers_where(spec, |c| {
            seccomp_type(&c["securityContext"]).as_deref() == Some("Unconfined")
        });
        if !bad.is_empty() {
            setters.push(containers(&bad));
        }
        if !setters.is_empty() {
            let detail = format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                setters.join(" and ")
            );
            add("seccompProfile_baseline", "seccompProfile", detail);
        }
    }
    let sysctls: Vec<String> = pod_sc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !api::validation::SAFE_SYSCTLS.contains(n))
        .map(str::to_string)
        .collect();
    if !sysctls.is_empty() {
        add("sysctls", "forbidden sysctls", sysctls.join(", "));
    }

    if restricted {
        let escalating = containers_where(spec, |c| {
            sc(c, "allowPrivilegeEscalation") != &Value::Bool(false)
        });
        if !escalating.is_empty() {
            let detail = format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers(&escalating)
            );
            add(
                "allowPrivilegeEscalation",
                "allowPrivilegeEscalation != false",
                detail,
            );
        }
        let (mut no_drop, mut adding, mut caps) = (Vec::new(), Vec::new(), BTreeSet::new());
        for c in all_containers(spec) {
            let drop = sc(c, "capabilities")["drop"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !drop.iter().any(|d| d == "ALL") {
                no_drop.push(name(c));
            }
            let extra: Vec<String> = added(c)
                .into_iter()
                .filter(|a| a != "NET_BIND_SERVICE")
                .collect();
            if !extra.is_empty() {
                adding.push(name(c));
                caps.extend(extra);
            }
        }
        let mut details = Vec::new();
        if !no_drop.is_empty() {
            details.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers(&no_drop)
            ));
        }
        if !adding.is_empty() {
            let caps: Vec<String> = caps.into_iter().collect();
            details.push(format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers(&adding),
                join_quote(&caps)
            ));
        }
        if !details.is_empty() {
            add(
                "capabilities_restricted",
                "unrestricted capabilities",
                details.join("; "),
            );
        }
        const ALLOWED: &[&str] = &[
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        let (mut bad, mut kinds) = (Vec::new(), BTreeSet::new());
        for v in &volumes {
            let source = v.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, val)| *k != "name" && !val.is_null())
                    .map(|(k, _)| k.clone())
            });
            let kind = source.unwrap_or_else(|| "unknown".into());
            if !ALLOWED.contains(&kind.as_str()) {
                bad.push(name(v));
                kinds.insert(kind);
            }
        }
        if !bad.is_empty() {
            let kinds: Vec<String> = kinds.into_iter().collect();
            let detail = format!(
                "{} {} {} {} {}",
                plural("volume", "volumes", bad.len()),
                join_quote(&bad),
                plural("uses", "use", bad.len()),
                plural(
                    "restricted volume type",
                    "restricted volume types",
                    kinds.len()
                ),
                join_quote(&kinds)
            );
            add("restrictedVolumes", "restricted volume types", detail);
        }
        // runAsNonRoot and the seccomp profile: set on the pod, or on every container
        let opted =
            |field: &str, ok: &dyn Fn(&Value) -> bool, bad_value: &dyn Fn(&Value) -> bool| {
                let mut setters = Vec::new();
                let pod_ok = ok(&pod_sc[field]);
                if bad_value(&pod_sc[field]) {
                    setters.push("pod".to_string());
                }
                let (mut explicit, mut implicit) = (Vec::new(), Vec::new());
                for c in all_containers(spec) {
                    let v = sc(c, field);
                    if !v.is_null() {
                        if bad_value(v) {
                            explicit.push(name(c));
                        }
                    } else if !pod_ok {
                        implicit.push(name(c));
                    }
                }
                if !explicit.is_empty() {
                    setters.push(containers(&explicit));
                }
                (setters, implicit)
            };
        let (setters, implicit) = opted("runAsNonRoot", &|v| v == &Value::Bool(true), &|v| {
            v == &Value::Bool(false)
        });
        if !setters.is_empty() {
            let detail = format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            );
            add("runAsNonRoot", "runAsNonRoot != true", detail);
        } else if !implicit.is_empty() {
            let detail = format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers(&implicit)
            );
            add("runAsNonRoot", "runAsNonRoot != true", detail);
        }
        let mut root = Vec::new();
        if pod_sc["runAsUser"] == 0 {
            root.push("pod".to_string());
        }
        let bad = containers_where(spec, |c| *sc(c, "runAsUser") == 0);
        if !bad.is_empty() {
            root.push(containers(&bad));
        }
        if !root.is_empty() {
            let detail = format!("{} must not set runAsUser=0", root.join(" and "));
            add("runAsUser", "runAsUser=0", detail);
        }
        let valid = |t: &str| t == "RuntimeDefault" || t == "Localhost";
        let mut bad_values = BTreeSet::new();
        let mut setters = Vec::new();
        let pod_type = seccomp_type(pod_sc);
        let pod_ok = pod_type.as_deref().is_some_and(valid);
        if let Some(t) = pod_type.filter(|t| !valid(t)) {
            setters.push("pod".to_string());
            bad_values.insert(t);
        }
        let (mut explicit, mut implicit) = (Vec::new(), Vec::new());
        for c in all_containers(spec) {
            match seccomp_type(&c["securityContext"]) {
                Some(t) if !valid(&t) => {
                    explicit.push(name(c));
                    bad_values.insert(t);
                }
                Some(_) => {}
                None if !pod_ok => implicit.push(name(c)),
                None => {}
            }
        }
        if !explicit.is_empty() {
            setters.push(containers(&explicit));
        }
        if !setters.is_empty() {
            let values: Vec<String> = bad_values.into_iter().collect();
            let detail = format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&values)
            );
            add("seccompProfile_restricted", "seccompProfile", detail);
        } else if !implicit.is_empty() {
            let detail = format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers(&implicit)
            );
            add("seccompProfile_restricted", "seccompProfile", detail);
        }
    }
    out.sort_by_key(|(id, _)| *id);
    out.into_iter().map(|(_, v)| v).collect()
}

/// `reason (detail), reason (detail)`, as upstream's ForbiddenDetail.
fn details(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|(r, d)| format!("{r} ({d})"))
        .collect();
    parts.join(", ")
}

/// The outcome of checking a pod spec against a namespace's policy.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Why the pod is refused (`violates PodSecurity "…": …`), when enforce forbids it.
    pub denied: Option<String>,
    /// Warnings to answer with.
    pub warnings: Vec<String>,
    /// The audit annotation, if audit would forbid it.
    pub audit: Option<String>,
}

/// Checks a pod spec against `policy`; `enforce` is false for pod templates (warn and audit
/// only, as upstream).
pub fn evaluate(policy: &Policy, spec: &Value, enforce: bool) -> Decision {
    let mut d = Decision::default();
    if enforce {
        let v = check(policy.enforce.level, spec);
        if !v.is_empty() {
            d.denied = Some(format!(
                "violates PodSecurity {:?}: {}",
                policy.enforce.to_string(),
                details(&v)
            ));
            return d;
        }
    }
    let v = check(policy.warn.level, spec);
    if !v.is_empty() {
        d.warnings.push(format!(
            "would violate PodSecurity {:?}: {}",
            policy.warn.to_string(),
            details(&v)
        ));
    }
    let v = check(policy.audit.level, spec);
    if !v.is_empty() {
        d.audit = Some(format!(
            "would violate PodSecurity {:?}: {}",
            policy.audit.to_string(),
            details(&v)
        ));
    }
    d
}

/// The warnings upstream gives when a namespace's enforce level changes: the existing pods
/// (name, spec) that would violate it, grouped by their reasons.
pub fn existing_pod_warnings(
    namespace: &str,
    enforce: &LevelVersion,
    pods: &[(String, Value)],
) -> Vec<String> {
    let mut by_reason: std::collections::BTreeMap<String, (String, usize)> = Default::default();
    for (name, spec) in pods {
        let v = check(enforce.level, spec);
        if v.is_empty() {
            continue;
        }
        let reasons: Vec<&str> = v.iter().map(|(r, _)| *r).collect();
        let entry = by_reason
            .entry(reasons.join(", "))
            .or_insert_with(|| (name.clone(), 0));
        if *name < entry.0 {
            entry.0 = name.clone();
        }
        entry.1 += 1;
    }
    if by_reason.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "existing pods in namespace {namespace:?} violate the new PodSecurity enforce level {:?}",
        enforce.to_string()
    )];
    let mut pods: Vec<String> = by_reason
        .into_iter()
        .map(|(reasons, (first, count))| match count {
            1 => format!("{first}: {reasons}"),
            2 => format!("{first} (and 1 other pod): {reasons}"),
            n => format!("{first} (and {} other pods): {reasons}", n - 1),
        })
        .collect();
    pods.sort();
    out.extend(pods);
    out
}

/// The pod spec of a workload resource's template, by kind.
pub fn template_spec<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    let spec = match kind {
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => &obj["spec"]["template"]["spec"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "PodTemplate" => &obj["template"]["spec"],
        _ => return None,
    };
    (!spec.is_null()).then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(labels: Value) -> Policy {
        policy(Some(&labels))
    }

    #[test]
    fn a_plain_pod_is_refused_by_restricted_with_upstreams_message() {
        let p = ns(json!({"pod-security.kubernetes.io/enforce": "restricted"}));
        let spec = json!({"containers": [{"name": "nginx", "image": "nginx"}]});
        let d = evaluate(&p, &spec, true);
        assert_eq!(
            d.denied.as_deref(),
            Some(concat!(
                "violates PodSecurity \"restricted:latest\": ",
                "allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), ",
                "unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), ",
                "runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), ",
                "seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            ))
        );
        let hardened = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "nginx", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "data", "emptyDir": {}}]
        });
        assert_eq!(evaluate(&p, &hardened, true), Decision::default());
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let p = ns(json!({"pod-security.kubernetes.io/enforce": "baseline",
                          "pod-security.kubernetes.io/enforce-version": "v1.32"}));
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"privileged": true}}
            ]
        });
        let d = evaluate(&p, &spec, true);
        assert_eq!(
            d.denied.as_deref(),
            Some(concat!(
                "violates PodSecurity \"baseline:v1.32\": ",
                "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add), ",
                "host namespaces (hostNetwork=true, hostPID=true), ",
                "hostPath volumes (volume \"root\"), ",
                "hostPort (container \"a\" uses hostPort 8080), ",
                "privileged (containers \"a\", \"b\" must not set securityContext.privileged=true), ",
                "forbidden sysctls (kernel.msgmax)"
            ))
        );
        let plain = json!({"containers": [{"name": "c"}]});
        assert_eq!(evaluate(&p, &plain, true), Decision::default());
    }

    #[test]
    fn warn_and_audit_do_not_refuse_and_templates_are_never_refused() {
        let p = ns(json!({"pod-security.kubernetes.io/warn": "restricted",
                          "pod-security.kubernetes.io/audit": "baseline",
                          "pod-security.kubernetes.io/enforce": "baseline"}));
        let spec = json!({"containers": [{"name": "c", "securityContext": {"runAsUser": 0}}]});
        let d = evaluate(&p, &spec, true);
        assert_eq!(d.denied, None);
        assert_eq!(d.audit, None);
        assert!(d.warnings[0].starts_with(
            "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ));
        assert!(d.warnings[0].contains("runAsUser=0 (container \"c\" must not set runAsUser=0)"));
        let strict = ns(json!({"pod-security.kubernetes.io/enforce": "restricted"}));
        assert_eq!(
            evaluate(&strict, &spec, false).denied,
            None,
            "templates only warn"
        );
        assert_eq!(policy(None).enforce.level, Level::Privileged);
        assert_eq!(
            ns(json!({"pod-security.kubernetes.io/enforce": "bogus"}))
                .enforce
                .level,
            Level::Restricted,
            "an invalid level fails closed"
        );
    }

    #[test]
    fn restricted_volume_types_and_existing_pod_warnings() {
        let p = ns(json!({"pod-security.kubernetes.io/enforce": "restricted"}));
        let spec = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "n", "nfs": {"server": "x", "path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
        assert_eq!(
            evaluate(&p, &spec, true).denied.as_deref(),
            Some(
                "violates PodSecurity \"restricted:latest\": restricted volume types (volumes \"h\", \"n\" use restricted volume types \"hostPath\", \"nfs\")"
            )
        );
        let plain = json!({"containers": [{"name": "c"}]});
        let pods = vec![
            ("web-2".to_string(), plain.clone()),
            ("web-1".to_string(), plain),
        ];
        let w = existing_pod_warnings("shop", &p.enforce, &pods);
        assert_eq!(
            w[0],
            "existing pods in namespace \"shop\" violate the new PodSecurity enforce level \"restricted:latest\""
        );
        assert_eq!(
            w[1],
            "web-1 (and 1 other pod): allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
        );
        let bad = invalid_labels(Some(
            &json!({"pod-security.kubernetes.io/enforce": "strict"}),
        ));
        assert_eq!(bad[0].2, "must be one of privileged, baseline, restricted");
    }
}
