//! A container's process as Kubernetes defines it from the pod spec and the image config:
//! `command` replaces the image's Entrypoint and `args` its Cmd; environment variables are the
//! image's, then the container's (with `$(VAR)` references to earlier ones expanded, and the
//! downward API's `fieldRef`); the working directory and user fall back to the image's.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use serde_json::Value;

/// The process to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// argv.
    pub args: Vec<String>,
    /// `NAME=value` pairs, in order.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The user as the image or the security context names it (`uid`, `uid:gid`, `name`...).
    pub user: Option<String>,
    /// The numeric group from the security context, if set.
    pub group: Option<i64>,
    /// What was left out, as the events kubelet records say it.
    pub warnings: Vec<String>,
}

/// Expands `$(NAME)` references from `vars`; `$$` escapes a `$`; unknown references stay as
/// written, as upstream's `expansion.Expand` does.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match vars(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The Services' variables kubelet gives a pod's containers (docker links style): for the
/// `kubernetes` Service in `default`, and, unless `enableServiceLinks` is false, for every
/// Service with a ClusterIP in the pod's namespace.
pub fn service_env(pod: &Pod, services: &[std::sync::Arc<Service>]) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let (svc_ns, name) = (
            svc.metadata.namespace.as_deref().unwrap_or(""),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let master = svc_ns == "default" && name == "kubernetes";
        if master || (links && svc_ns == ns) {
            // the pod's own namespace wins over the master service's
            if !master || !chosen.contains_key(&name) {
                chosen.insert(name, svc);
            }
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let prefix = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        if let Some(first) = ports.first() {
            out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        }
        for p in &ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let n = n.to_uppercase().replace('-', "_");
                out.push((format!("{prefix}_SERVICE_PORT_{n}"), p.port.to_string()));
            }
        }
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{ip}:{}", proto.to_lowercase(), p.port);
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((base.clone(), url));
            out.push((format!("{base}_PROTO"), proto.to_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// A map as the downward API writes one: `key="value"` lines, sorted by key.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let lines = map.iter().flat_map(|m| m.iter());
    let lines: Vec<String> = lines.map(|(k, v)| format!("{k}={v:?}")).collect();
    lines.join("\n")
}

/// The value of a downward API field path of the pod.
pub fn field_ref(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let label_or_annotation = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
        "status.podIP" => pod.status.as_ref()?.pod_ip.clone(),
        "status.hostIP" => pod.status.as_ref()?.host_ip.clone(),
        "metadata.labels" => Some(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Some(format_map(meta.annotations.as_ref())),
        _ if path.starts_with("metadata.labels['") => {
            label_or_annotation("metadata.labels['", &meta.labels)
        }
        _ if path.starts_with("metadata.annotations['") => {
            label_or_annotation("metadata.annotations['", &meta.annotations)
        }
        _ => None,
    }
}

/// What a container's environment may refer to besides the pod itself.
#[derive(Debug, Default, Clone)]
pub struct EnvSources {
    /// The Services' variables ([`service_env`]).
    pub services: Vec<(String, String)>,
    /// The data of the referred ConfigMaps that exist, by name.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// The data of the referred Secrets that exist, by name, decoded.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// The node's allocatable cpu (millicores) and memory (bytes): the limits of a container
    /// that sets none, as the downward API reports them.
    pub node_allocatable: (i64, i64),
}

/// The names of the ConfigMaps and of the Secrets `container`'s environment refers to.
pub fn env_references(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut config_maps, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for source in container
        .env
        .iter()
        .flatten()
        .filter_map(|v| v.value_from.as_ref())
    {
        if let Some(r) = &source.config_map_key_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &source.secret_key_ref {
            secrets.insert(r.name.clone());
        }
    }
    (config_maps, secrets)
}

/// Whether `name` may be an environment variable's name, as upstream's `IsEnvVarName`.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The value of a downward API resource field (`limits.cpu`, `requests.memory`...) of
/// `container`, in units of `divisor`, rounded up as upstream does; an unset limit is the
/// node's allocatable amount.
pub fn resource_field(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_allocatable: (i64, i64),
) -> Result<String, String> {
    let (which, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {resource:?}"))?;
    let r = container.resources.as_ref();
    let map = match which {
        "limits" => r.and_then(|r| r.limits.as_ref()),
        "requests" => r.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported container resource : {resource:?}")),
    };
    let quantity = map.and_then(|m| m.get(name)).map(|q| q.0.as_str());
    let bad = |e: api::quantity::ParseError| format!("{resource}: {e}");
    let value = match name {
        "cpu" => {
            let milli = match quantity {
                Some(q) => api::quantity::milli(q).map_err(bad)?,
                None if which == "limits" => node_allocatable.0,
                None => 0,
            };
            let divisor = api::quantity::milli(divisor.unwrap_or("1")).map_err(bad)?;
            (milli as f64 / divisor.max(1) as f64).ceil() as i64
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match quantity {
                Some(q) => api::quantity::units(q).map_err(bad)?,
                None if which == "limits" && name == "memory" => node_allocatable.1,
                None => 0,
            };
            let divisor = api::quantity::units(divisor.unwrap_or("1")).map_err(bad)?;
            (bytes as f64 / divisor.max(1) as f64).ceil() as i64
        }
        _ => return Err(format!("unsupported container resource : {resource:?}")),
    };
    Ok(value.to_string())
}

/// The process of `container` in `pod`, from the image config (the `config` object of an OCI
/// image config). Errors name what is missing, as CreateContainerConfigError/CreateContainerError
/// messages do; `Process::warnings` says what was left out.
pub fn process(
    pod: &Pod,
    container: &Container,
    image_config: &Value,
    sources: &EnvSources,
) -> Result<Process, String> {
    let cfg = &image_config["config"];
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut warnings = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    };
    for pair in strings(&cfg["Env"]) {
        let (n, v) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
        set(&mut env, n.to_string(), v.to_string());
    }
    if let Some(hostname) = pod.metadata.name.clone() {
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or(hostname);
        set(&mut env, "HOSTNAME".into(), hostname);
    }
    for (n, v) in &sources.services {
        set(&mut env, n.clone(), v.clone());
    }
    // Only the services' and the container's own variables are visible to `$(VAR)` references.
    let mut own: Vec<(String, String)> = sources.services.clone();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (kind, name, optional, data) = if let Some(r) = &from.config_map_ref {
            let data = sources.config_maps.get(&r.name);
            ("configMap", &r.name, r.optional, data)
        } else if let Some(r) = &from.secret_ref {
            ("secret", &r.name, r.optional, sources.secrets.get(&r.name))
        } else {
            continue;
        };
        let Some(data) = data else {
            if optional == Some(true) {
                continue;
            }
            return Err(format!("{} {name:?} not found", kind.to_lowercase()));
        };
        let mut invalid = Vec::new();
        for (k, v) in data {
            let k = format!("{prefix}{k}");
            if !is_env_var_name(&k) {
                invalid.push(k);
                continue;
            }
            own.push((k.clone(), v.clone()));
            set(&mut env, k, v.clone());
        }
        if !invalid.is_empty() {
            warnings.push(format!(
                "Keys [{}] from the EnvFrom {kind} {ns}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", ")
            ));
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            if let Some(f) = &source.field_ref {
                field_ref(pod, &f.field_path).ok_or_else(|| {
                    format!("env {}: field {} has no value", var.name, f.field_path)
                })?
            } else if let Some(r) = &source.resource_field_ref {
                let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
                resource_field(container, &r.resource, divisor, sources.node_allocatable)?
            } else {
                let (kind, name, key, optional, data) = if let Some(r) = &source.config_map_key_ref
                {
                    let data = sources.config_maps.get(&r.name);
                    ("ConfigMap", &r.name, &r.key, r.optional, data)
                } else if let Some(r) = &source.secret_key_ref {
                    let data = sources.secrets.get(&r.name);
                    ("Secret", &r.name, &r.key, r.optional, data)
                } else {
                    return Err(format!("env {}: valueFrom names no source", var.name));
                };
                let optional = optional == Some(true);
                match data.map(|d| d.get(key)) {
                    Some(Some(v)) => v.clone(),
                    _ if optional => continue,
                    None => return Err(format!("{} {name:?} not found", kind.to_lowercase())),
                    Some(None) => {
                        return Err(format!("couldn't find key {key} in {kind} {ns}/{name}"));
                    }
                }
            }
        } else {
            let lookup = |n: &str| {
                own.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            expand(var.value.as_deref().unwrap_or_default(), &lookup)
        };
        own.push((var.name.clone(), value.clone()));
        set(&mut env, var.name.clone(), value);
    }
    let lookup = |n: &str| {
        own.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let expand_all = |items: &Option<Vec<String>>| -> Vec<String> {
        items.iter().flatten().map(|s| expand(s, &lookup)).collect()
    };
    let command = expand_all(&container.command);
    let container_args = expand_all(&container.args);
    let args: Vec<String> = if !command.is_empty() {
        command.into_iter().chain(container_args).collect()
    } else if !container_args.is_empty() {
        strings(&cfg["Entrypoint"])
            .into_iter()
            .chain(container_args)
            .collect()
    } else {
        strings(&cfg["Entrypoint"])
            .into_iter()
            .chain(strings(&cfg["Cmd"]))
            .collect()
    };
    if args.is_empty() {
        return Err("no command specified".into());
    }
    let cwd = container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| cfg["WorkingDir"].as_str().map(String::from))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    let user = run_as_user
        .map(|u| u.to_string())
        .or_else(|| cfg["User"].as_str().map(String::from))
        .filter(|u| !u.is_empty());
    Ok(Process {
        args,
        env: env.into_iter().map(|(n, v)| format!("{n}={v}")).collect(),
        cwd,
        user,
        group,
        warnings,
    })
}

/// Resolves a user as an image names it (`uid`, `uid:gid`, `name`, `name:group`) with the
/// image's `/etc/passwd` and `/etc/group`, as runc does; returns (uid, gid).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = |file: &str, name: &str| -> Option<Vec<String>> {
        file.lines()
            .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(name))
    };
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(uid))
                .and_then(|f| f.get(3).and_then(|x| x.parse().ok()))
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => {
            let f = entry(passwd, u).ok_or_else(|| {
                format!("unable to find user {u}: no matching entries in passwd file")
            })?;
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<u32>().ok());
            (num(2).ok_or("malformed passwd entry")?, num(3).unwrap_or(0))
        }
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => entry(group, g)
                .and_then(|f| f.get(2).and_then(|x| x.parse().ok()))
                .ok_or_else(|| format!("unable to find group {g}"))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [container]}
        }))
        .expect("pod");
        let c = pod.spec.as_ref().expect("spec").containers[0].clone();
        (pod, c)
    }

    fn image() -> Value {
        json!({"config": {"Entrypoint": ["/entry"], "Cmd": ["serve"], "Env": ["PATH=/bin", "A=image"], "WorkingDir": "/app", "User": "daemon"}})
    }

    #[test]
    fn command_and_args_combine_with_the_image_as_kubernetes_defines() {
        let (p, c) = pod(json!({"name": "c", "image": "i"}));
        assert_eq!(
            process(&p, &c, &image(), &EnvSources::default())
                .expect("p")
                .args,
            ["/entry", "serve"]
        );
        let (p, c) = pod(json!({"name": "c", "image": "i", "args": ["x"]}));
        assert_eq!(
            process(&p, &c, &image(), &EnvSources::default())
                .expect("p")
                .args,
            ["/entry", "x"]
        );
        let (p, c) = pod(json!({"name": "c", "image": "i", "command": ["sh"]}));
        assert_eq!(
            process(&p, &c, &image(), &EnvSources::default())
                .expect("p")
                .args,
            ["sh"]
        );
        let (p, c) =
            pod(json!({"name": "c", "image": "i", "command": ["sh"], "args": ["-c", "x"]}));
        assert_eq!(
            process(&p, &c, &image(), &EnvSources::default())
                .expect("p")
                .args,
            ["sh", "-c", "x"]
        );
        let (p, c) = pod(json!({"name": "c", "image": "i"}));
        assert!(process(&p, &c, &json!({"config": {}}), &EnvSources::default()).is_err());
    }

    #[test]
    fn env_overrides_the_image_and_expands_references() {
        let (p, c) = pod(json!({"name": "c", "image": "i",
        "command": ["echo", "$(GREETING)", "$$(GREETING)", "$(MISSING)"],
        "env": [
            {"name": "A", "value": "pod"},
            {"name": "NAME", "value": "world"},
            {"name": "GREETING", "value": "hello $(NAME)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
        ]}));
        let proc = process(&p, &c, &image(), &EnvSources::default()).expect("process");
        assert_eq!(
            proc.args,
            ["echo", "hello world", "$(GREETING)", "$(MISSING)"]
        );
        assert!(proc.env.contains(&"A=pod".to_string()));
        assert!(!proc.env.contains(&"A=image".to_string()));
        assert!(proc.env.contains(&"PATH=/bin".to_string()));
        assert!(proc.env.contains(&"HOSTNAME=p".to_string()));
        assert!(proc.env.contains(&"POD=p".to_string()));
        assert!(proc.env.contains(&"APP=web".to_string()));
    }

    #[test]
    fn working_dir_and_user_fall_back_to_the_image() {
        let (p, c) = pod(json!({"name": "c", "image": "i"}));
        let proc = process(&p, &c, &image(), &EnvSources::default()).expect("process");
        assert_eq!(proc.cwd, "/app");
        assert_eq!(proc.user.as_deref(), Some("daemon"));
        let (p, c) = pod(json!({"name": "c", "image": "i", "workingDir": "/w",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}));
        let proc = process(&p, &c, &image(), &EnvSources::default()).expect("process");
        assert_eq!(proc.cwd, "/w");
        assert_eq!(proc.user.as_deref(), Some("1000"));
        assert_eq!(proc.group, Some(3000));
    }

    #[test]
    fn users_resolve_through_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\nweb:x:1000:1001::/:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("web", passwd, group), Ok((1000, 1001)));
        assert_eq!(resolve_user("1000", passwd, group), Ok((1000, 1001)));
        assert_eq!(resolve_user("2000", passwd, group), Ok((2000, 0)));
        assert_eq!(resolve_user("web:staff", passwd, group), Ok((1000, 50)));
        assert_eq!(resolve_user("5:7", passwd, group), Ok((5, 7)));
        assert!(resolve_user("nobody-here", passwd, group).is_err());
    }

    #[test]
    fn services_give_docker_link_variables_visible_to_references() {
        let svc = |ns: &str, name: &str, ip: &str| {
            std::sync::Arc::new(
                serde_json::from_value::<Service>(json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
                }))
                .expect("service"),
            )
        };
        let services = [
            svc("default", "kubernetes", "10.43.0.1"),
            svc("shop", "web-front", "10.43.0.7"),
            svc("shop", "headless", "None"),
            svc("other", "db", "10.43.0.9"),
        ];
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["$(WEB_FRONT_SERVICE_HOST)"]}]}}))
            .expect("pod");
        let env = service_env(&p, &services);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("WEB_FRONT_SERVICE_HOST"), Some("10.43.0.7"));
        assert_eq!(get("WEB_FRONT_SERVICE_PORT"), Some("80"));
        assert_eq!(get("WEB_FRONT_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(get("WEB_FRONT_PORT"), Some("tcp://10.43.0.7:80"));
        assert_eq!(get("WEB_FRONT_PORT_80_TCP_ADDR"), Some("10.43.0.7"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("DB_SERVICE_HOST"), None, "another namespace");
        assert_eq!(get("HEADLESS_SERVICE_HOST"), None, "no cluster IP");
        let c = p.spec.as_ref().expect("spec").containers[0].clone();
        let sources = EnvSources {
            services: env,
            ..Default::default()
        };
        let proc = process(&p, &c, &image(), &sources).expect("process");
        assert_eq!(proc.args.last().map(String::as_str), Some("10.43.0.7"));
        let mut no_links = p.clone();
        no_links.spec.as_mut().expect("spec").enable_service_links = Some(false);
        let env = service_env(&no_links, &services);
        assert!(
            env.iter().all(|(n, _)| n.starts_with("KUBERNETES_")),
            "{env:?}"
        );
    }

    #[test]
    fn config_maps_and_secrets_fill_env_and_env_from() {
        let (p, c) = pod(json!({"name": "c", "image": "i",
        "command": ["echo", "$(CM_special.how)", "$(LEVEL)"],
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CM_"},
            {"secretRef": {"name": "gone", "optional": true}},
            {"configMapRef": {"name": "odd"}}
        ],
        "env": [
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "special.how"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nope", "optional": true}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}
        ]}));
        let mut sources = EnvSources {
            node_allocatable: (2000, 64 << 20),
            ..Default::default()
        };
        sources.config_maps.insert(
            "cfg".into(),
            BTreeMap::from([("special.how".into(), "very".into())]),
        );
        sources.config_maps.insert(
            "odd".into(),
            BTreeMap::from([("1bad".into(), "x".into()), ("good".into(), "y".into())]),
        );
        sources.secrets.insert(
            "sec".into(),
            BTreeMap::from([("password".into(), "s3cret".into())]),
        );
        let proc = process(&p, &c, &image(), &sources).expect("process");
        for var in [
            "CM_special.how=very",
            "LEVEL=very",
            "PASS=s3cret",
            "good=y",
            "MEM=64",
        ] {
            assert!(
                proc.env.contains(&var.to_string()),
                "{var} in {:?}",
                proc.env
            );
        }
        assert!(!proc.env.iter().any(|v| v.starts_with("MAYBE=")));
        assert_eq!(proc.args, ["echo", "very", "very"]);
        assert_eq!(
            proc.warnings,
            [
                "Keys [1bad] from the EnvFrom configMap ns/odd were skipped since they are considered invalid environment variable names."
            ]
        );

        let (p, c) = pod(json!({"name": "c", "image": "i", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "another-param"}}}]}));
        let err = process(&p, &c, &image(), &sources).expect_err("missing key");
        assert_eq!(err, "couldn't find key another-param in ConfigMap ns/cfg");
        let (p, c) =
            pod(json!({"name": "c", "image": "i", "envFrom": [{"secretRef": {"name": "absent"}}]}));
        let err = process(&p, &c, &image(), &sources).expect_err("missing secret");
        assert_eq!(err, "secret \"absent\" not found");
    }

    #[test]
    fn resource_fields_round_up_in_their_divisor() {
        let c: Container = serde_json::from_value(json!({"name": "c", "resources": {
            "requests": {"cpu": "250m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}}))
        .expect("container");
        let field = |r: &str, d: Option<&str>| resource_field(&c, r, d, (4000, 1 << 30));
        assert_eq!(field("requests.cpu", None), Ok("1".into()));
        assert_eq!(field("requests.cpu", Some("1m")), Ok("250".into()));
        assert_eq!(
            field("limits.cpu", None),
            Ok("4".into()),
            "node allocatable"
        );
        assert_eq!(field("requests.memory", Some("1Mi")), Ok("32".into()));
        assert_eq!(field("limits.memory", None), Ok((64 << 20).to_string()));
        assert!(field("limits.gpu", None).is_err());
    }
}
