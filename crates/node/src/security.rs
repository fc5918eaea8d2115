//! A container's security settings from the pod's and the container's security contexts, as
//! kubelet combines them (the container's setting wins over the pod's): groups (runAsGroup,
//! supplementalGroups, fsGroup), capabilities, privileged, read-only root, no_new_privs
//! (allowPrivilegeEscalation false), procMount, sysctls (only the safe set kubelet allows by
//! default), host IPC and PID namespaces, the seccomp profile (`Localhost` profiles are files
//! under the agent's `seccomp/` directory, as kubelet's root has them); and the runAsNonRoot
//! check.

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};
use runtime::container::{Seccomp, Security};

fn contexts(pod: &Pod, c: &Container) -> (Option<PodSecurityContext>, Option<SecurityContext>) {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.clone());
    (pod_sc, c.security_context.clone())
}

/// The sysctls of the pod that kubelet refuses; the pod is rejected with `SysctlForbidden`.
pub fn forbidden_sysctls(pod: &Pod) -> Vec<String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sysctls = pod_sc.and_then(|s| s.sysctls.as_ref());
    let names = sysctls
        .iter()
        .flat_map(|s| s.iter())
        .map(|s| s.name.clone());
    names
        .filter(|n| !api::validation::SAFE_SYSCTLS.contains(&n.replace('/', ".").as_str()))
        .collect()
}

/// The security settings of container `c` of `pod`, but for the seccomp profile ([`seccomp`]).
pub fn of(pod: &Pod, c: &Container) -> Security {
    let (pod_sc, sc) = contexts(pod, c);
    let spec = pod.spec.as_ref();
    let mut gids: Vec<u32> = Vec::new();
    if let Some(p) = &pod_sc {
        let supplemental = p.supplemental_groups.iter().flatten().copied();
        for g in supplemental.chain(p.fs_group) {
            if let Ok(g) = u32::try_from(g)
                && !gids.contains(&g)
            {
                gids.push(g);
            }
        }
    }
    let sc = sc.unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let sysctls = pod_sc.as_ref().and_then(|p| p.sysctls.clone());
    Security {
        additional_gids: gids,
        read_only_rootfs: sc.read_only_root_filesystem == Some(true),
        no_new_privileges: sc.allow_privilege_escalation == Some(false),
        privileged: sc.privileged == Some(true),
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
        sysctls: sysctls
            .into_iter()
            .flatten()
            .map(|s| (s.name.replace('/', "."), s.value))
            .collect(),
        host_ipc: spec.and_then(|s| s.host_ipc) == Some(true),
        host_pid: spec.and_then(|s| s.host_pid) == Some(true),
        unmasked_proc: sc.proc_mount.as_deref() == Some("Unmasked"),
        seccomp: Seccomp::Unconfined,
    }
}

/// The seccomp profile of container `c` (its own, else the pod's); `Localhost` profiles are
/// files under `profiles` (the agent's `seccomp/` directory), read by the runtime when it
/// creates the container, so a missing one is a CreateContainerError as upstream.
pub fn seccomp(pod: &Pod, c: &Container, profiles: &std::path::Path) -> Result<Seccomp, String> {
    let (pod_sc, sc) = contexts(pod, c);
    let profile = sc
        .and_then(|s| s.seccomp_profile)
        .or_else(|| pod_sc.and_then(|s| s.seccomp_profile));
    let Some(profile) = profile else {
        return Ok(Seccomp::Unconfined);
    };
    match profile.type_.as_str() {
        "RuntimeDefault" => Ok(Seccomp::RuntimeDefault),
        "Localhost" => {
            let name = profile.localhost_profile.unwrap_or_default();
            if name.is_empty() || name.split('/').any(|p| p == "..") {
                return Err(format!("invalid localhost seccomp profile {name:?}"));
            }
            Ok(Seccomp::Localhost(profiles.join(name)))
        }
        _ => Ok(Seccomp::Unconfined),
    }
}

/// Checks runAsNonRoot as kubelet does, given the user the process runs as (`uid` from
/// runAsUser or the image's user; the image's user by name if not numeric).
pub fn verify_non_root(pod: &Pod, c: &Container, image_user: &str) -> Result<(), String> {
    let (pod_sc, sc) = contexts(pod, c);
    let non_root = sc
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.as_ref().and_then(|s| s.run_as_non_root));
    if non_root != Some(true) {
        return Ok(());
    }
    let meta = &pod.metadata;
    let pod_name = format!(
        "{}_{}({})",
        meta.name.as_deref().unwrap_or_default(),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    );
    let run_as_user = sc
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.as_ref().and_then(|s| s.run_as_user));
    if run_as_user == Some(0) {
        return Err(format!(
            "container's runAsUser breaks non-root policy (pod: {pod_name:?}, container: {})",
            c.name
        ));
    }
    if run_as_user.is_some() {
        return Ok(());
    }
    let user = image_user.split(':').next().unwrap_or_default();
    match user.parse::<u32>() {
        Ok(0) => {}
        Ok(_) => return Ok(()),
        Err(_) if user.is_empty() => {}
        Err(_) => {
            return Err(format!(
                "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod_name:?}, container: {})",
                c.name
            ));
        }
    }
    Err(format!(
        "container has runAsNonRoot and image will run as root (pod: {pod_name:?}, container: {})",
        c.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(pod_sc: serde_json::Value, sc: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"securityContext": pod_sc, "containers": [{"name": "c", "securityContext": sc}]}
        }))
        .expect("pod");
        let c = pod.spec.as_ref().expect("spec").containers[0].clone();
        (pod, c)
    }

    #[test]
    fn contexts_become_runtime_settings() {
        let (p, c) = pod(
            json!({"supplementalGroups": [4000, 2000], "fsGroup": 2000,
                   "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "0"}]}),
            json!({"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                   "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
        );
        let s = of(&p, &c);
        assert_eq!(s.additional_gids, [4000, 2000]);
        assert!(s.read_only_rootfs && s.no_new_privileges && !s.privileged);
        assert_eq!(s.drop_capabilities, ["ALL"]);
        assert_eq!(s.add_capabilities, ["NET_BIND_SERVICE"]);
        assert_eq!(
            s.sysctls.get("net.ipv4.tcp_syncookies").map(String::as_str),
            Some("0")
        );
        assert!(forbidden_sysctls(&p).is_empty());
        let (p, _) = pod(
            json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}),
            json!({}),
        );
        assert_eq!(forbidden_sysctls(&p), ["kernel.msgmax"]);
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_user() {
        let (p, c) = pod(json!({}), json!({"runAsNonRoot": true}));
        let err = verify_non_root(&p, &c, "").expect_err("root image");
        assert_eq!(
            err,
            "container has runAsNonRoot and image will run as root (pod: \"p_ns(u1)\", container: c)"
        );
        assert!(verify_non_root(&p, &c, "1000").is_ok());
        assert!(
            verify_non_root(&p, &c, "nobody")
                .expect_err("name")
                .contains("non-numeric user (nobody)")
        );
        let (p, c) = pod(json!({"runAsUser": 1000, "runAsNonRoot": true}), json!({}));
        assert!(verify_non_root(&p, &c, "").is_ok());
        let (p, c) = pod(json!({"runAsNonRoot": true}), json!({"runAsUser": 0}));
        assert!(
            verify_non_root(&p, &c, "")
                .expect_err("uid 0")
                .contains("breaks non-root policy")
        );
        let (p, c) = pod(json!({}), json!({}));
        assert!(verify_non_root(&p, &c, "").is_ok());
    }

    #[test]
    fn seccomp_profiles_come_from_the_container_or_the_pod() {
        let dir = tempfile::tempdir().expect("dir");
        let (p, c) = pod(
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
            json!({}),
        );
        assert_eq!(seccomp(&p, &c, dir.path()), Ok(Seccomp::RuntimeDefault));
        let (p, c) = pod(
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
            json!({"seccompProfile": {"type": "Unconfined"}}),
        );
        assert_eq!(seccomp(&p, &c, dir.path()), Ok(Seccomp::Unconfined));
        let local = |name: &str| {
            let (p, c) = pod(
                json!({}),
                json!({"seccompProfile": {"type": "Localhost", "localhostProfile": name}}),
            );
            seccomp(&p, &c, dir.path())
        };
        assert_eq!(
            local("profiles/allow.json"),
            Ok(Seccomp::Localhost(dir.path().join("profiles/allow.json")))
        );
        assert!(local("../etc/passwd").is_err());
    }
}
