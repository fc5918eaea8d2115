//! The OCI runtime spec (`config.json` of a bundle) for a [`ContainerConfig`]: the defaults of
//! runc and containerd (namespaces, /proc, /dev, /sys, masked paths, the capabilities containerd
//! grants), the pod's shared namespaces joined by path, bind mounts, the cgroup path and limits.

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxResourcesBuilder, Mount as OciMount, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};

use crate::container::ContainerConfig;

/// The capabilities containerd grants a container by default.
const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The runtime spec for a container whose root is `rootfs` in its bundle.
pub fn spec(config: &ContainerConfig) -> Spec {
    let mut spec = Spec::default();
    let caps: std::collections::HashSet<Capability> =
        DEFAULT_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .ok();
    let cwd = if config.cwd.is_empty() {
        "/".to_string()
    } else {
        config.cwd.clone()
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(config.args.clone())
        .env(config.env.clone())
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(config.uid)
                .gid(config.gid)
                .build()
                .unwrap_or_default(),
        )
        .capabilities(capabilities.unwrap_or_default())
        .no_new_privileges(false)
        .build()
        .unwrap_or_default();
    let mut process = process;
    process.set_oom_score_adj(config.resources.oom_score_adj);
    spec.set_process(Some(process));
    spec.set_hostname(None);
    spec.set_root(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .ok(),
    );

    let mut mounts: Vec<OciMount> = spec.mounts().clone().unwrap_or_default();
    for m in &config.mounts {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if m.read_only {
            options.push("ro".to_string());
        }
        if let Ok(mount) = MountBuilder::default()
            .destination(&m.destination)
            .typ("bind")
            .source(&m.source)
            .options(options)
            .build()
        {
            mounts.push(mount);
        }
    }
    spec.set_mounts(Some(mounts));

    if let Some(mut linux) = spec.linux().clone() {
        let shared = &config.namespaces;
        let namespaces: Vec<LinuxNamespace> = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut ns| {
                let path = match ns.typ() {
                    LinuxNamespaceType::Network => shared.network.clone(),
                    LinuxNamespaceType::Ipc => shared.ipc.clone(),
                    LinuxNamespaceType::Uts => shared.uts.clone(),
                    _ => None,
                };
                if path.is_some() {
                    ns.set_path(path);
                }
                ns
            })
            .collect();
        linux.set_namespaces(Some(namespaces));
        linux.set_cgroups_path(Some(config.cgroup_path.clone().into()));
        let r = &config.resources;
        let mut resources = LinuxResourcesBuilder::default();
        if let Some(Ok(memory)) = r
            .memory_limit
            .map(|limit| LinuxMemoryBuilder::default().limit(limit).build())
        {
            resources = resources.memory(memory);
        }
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = r.cpu_shares {
            cpu = cpu.shares(shares);
        }
        if let Some(quota) = r.cpu_quota {
            cpu = cpu.quota(quota);
        }
        if let Some(period) = r.cpu_period {
            cpu = cpu.period(period);
        }
        if let Ok(cpu) = cpu.build() {
            resources = resources.cpu(cpu);
        }
        linux.set_resources(resources.build().ok());
        spec.set_linux(Some(linux));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{Mount, SharedNamespaces};

    fn config() -> ContainerConfig {
        ContainerConfig {
            image: "busybox".into(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: String::new(),
            uid: 1000,
            gid: 1000,
            mounts: vec![Mount {
                source: "/node/hosts".into(),
                destination: "/etc/hosts".into(),
                read_only: true,
            }],
            namespaces: SharedNamespaces {
                network: Some("/run/pod/net".into()),
                ipc: None,
                uts: Some("/run/pod/uts".into()),
            },
            cgroup_path: "/bosun/podX/c1".into(),
            resources: Default::default(),
            log_path: "/logs/0.log".into(),
            labels: Default::default(),
            stdin: false,
        }
    }

    #[test]
    fn joins_the_pods_namespaces_and_makes_its_own_mount_and_pid() {
        let spec = spec(&config());
        let linux = spec.linux().as_ref().expect("test");
        let ns = linux.namespaces().as_ref().expect("test");
        let path_of = |t| ns.iter().find(|n| n.typ() == t).map(|n| n.path().clone());
        assert_eq!(
            path_of(LinuxNamespaceType::Network),
            Some(Some("/run/pod/net".into()))
        );
        assert_eq!(
            path_of(LinuxNamespaceType::Uts),
            Some(Some("/run/pod/uts".into()))
        );
        assert_eq!(path_of(LinuxNamespaceType::Ipc), Some(None));
        assert_eq!(path_of(LinuxNamespaceType::Pid), Some(None));
        assert_eq!(path_of(LinuxNamespaceType::Mount), Some(None));
        assert_eq!(
            linux.cgroups_path().as_ref().expect("test").to_str(),
            Some("/bosun/podX/c1")
        );
    }

    #[test]
    fn process_and_mounts() {
        let spec = spec(&config());
        let p = spec.process().as_ref().expect("test");
        assert_eq!(p.cwd().to_str(), Some("/"));
        assert_eq!(p.user().uid(), 1000);
        let hosts = spec
            .mounts()
            .as_ref()
            .expect("test")
            .iter()
            .find(|m| m.destination().to_str() == Some("/etc/hosts"))
            .expect("test");
        assert!(
            hosts
                .options()
                .as_ref()
                .expect("test")
                .contains(&"ro".to_string())
        );
        assert!(
            spec.mounts()
                .as_ref()
                .expect("test")
                .iter()
                .any(|m| m.destination().to_str() == Some("/proc"))
        );
    }
}
