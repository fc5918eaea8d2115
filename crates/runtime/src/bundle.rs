//! The OCI runtime spec (`config.json` of a bundle) for a [`ContainerConfig`]: the defaults of
//! runc and containerd (namespaces, /proc, /dev, /sys, masked paths, the capabilities containerd
//! grants, only the standard devices), the pod's shared namespaces joined by path, bind mounts,
//! the cgroup path and limits, and the security settings as containerd applies a CRI security
//! context (capabilities added and dropped, privileged, read-only root, no_new_privs, groups,
//! sysctls, host namespaces, seccomp: the runtime default profile refuses what containerd's
//! default profile leaves out, with EPERM).

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxResourcesBuilder, LinuxSeccomp,
    LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Mount as OciMount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::container::{ContainerConfig, Seccomp, Security};

/// What the runtime's default seccomp profile refuses (EPERM), as containerd's and Docker's
/// default profiles do for a container without the capabilities that would allow them: kernel
/// modules and keyrings, mounting and namespaces, clocks, reboot and swap, tracing other
/// processes' memory, BPF and perf, io_uring. Syscalls this kernel does not know are skipped.
const REFUSED_BY_DEFAULT: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The seccomp filter of `seccomp`; an error, worded as containerd's, for a local profile that
/// cannot be read or is not one.
pub fn seccomp_filter(seccomp: &Seccomp) -> Result<Option<LinuxSeccomp>, String> {
    match seccomp {
        Seccomp::Unconfined => Ok(None),
        Seccomp::RuntimeDefault => {
            let refused = LinuxSyscallBuilder::default()
                .names(
                    REFUSED_BY_DEFAULT
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc_eperm())
                .build()
                .map_err(|e| e.to_string())?;
            LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .architectures(vec![Arch::ScmpArchNative])
                .syscalls(vec![refused])
                .build()
                .map(Some)
                .map_err(|e| e.to_string())
        }
        Seccomp::Localhost(path) => {
            let shown = path.display();
            let json = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot load seccomp profile \"{shown}\": open {shown}: {}",
                    os_error(&e)
                )
            })?;
            serde_json::from_slice::<LinuxSeccomp>(&json)
                .map(Some)
                .map_err(|e| format!("decoding seccomp profile \"{shown}\" failed: {e}"))
        }
    }
}

/// An OS error as Go prints it ("no such file or directory"), for messages worded as upstream's.
fn os_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// EPERM.
const fn libc_eperm() -> u32 {
    1
}

/// Every capability the kernels bosun runs on know, by name without the `CAP_` prefix.
const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability by its Kubernetes name (`NET_ADMIN`, or `CAP_NET_ADMIN`).
fn capability(name: &str) -> Option<Capability> {
    let name = name.to_uppercase();
    let name = name.strip_prefix("CAP_").unwrap_or(&name);
    serde_json::from_value(serde_json::Value::String(format!("CAP_{name}"))).ok()
}

/// The capabilities this process holds (its permitted set): every one a container can get.
fn held_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let held = status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let names = ALL_CAPABILITIES.iter().enumerate();
    names
        .filter(|(bit, _)| held & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The capabilities of a container: containerd's default set, less those dropped (all of them
/// for `ALL`), plus those added (for `ALL` or a privileged container every one the runtime
/// holds, as containerd grants them).
pub fn capabilities(security: &Security) -> HashSet<Capability> {
    let all = || held_capabilities().into_iter().filter_map(capability);
    let has_all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    if security.privileged || has_all(&security.add_capabilities) {
        return all().collect();
    }
    let mut caps: HashSet<Capability> = if has_all(&security.drop_capabilities) {
        HashSet::new()
    } else {
        let dropped: HashSet<Capability> = security
            .drop_capabilities
            .iter()
            .filter_map(|c| capability(c))
            .collect();
        DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !dropped.contains(c))
            .collect()
    };
    caps.extend(
        security
            .add_capabilities
            .iter()
            .filter_map(|c| capability(c)),
    );
    caps
}

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

/// The runtime spec for a container whose root is `rootfs` in its bundle; an error if its
/// seccomp profile cannot be loaded.
pub fn spec(config: &ContainerConfig) -> Result<Spec, String> {
    let mut spec = Spec::default();
    let security = &config.security;
    let caps = capabilities(security);
    // inheritable and ambient stay empty, as containerd leaves them (CVE-2022-24769)
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .ok();
    let cwd = if config.cwd.is_empty() {
        "/".to_string()
    } else {
        config.cwd.clone()
    };
    let process = ProcessBuilder::default()
        .terminal(config.tty)
        .args(config.args.clone())
        .env(if config.tty {
            crate::terminal::with_term(config.env.clone())
        } else {
            config.env.clone()
        })
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(config.uid)
                .gid(config.gid)
                .additional_gids(security.additional_gids.clone())
                .build()
                .unwrap_or_default(),
        )
        .capabilities(capabilities.unwrap_or_default())
        .build()
        .unwrap_or_default();
    let mut process = process;
    process.set_oom_score_adj(config.resources.oom_score_adj);
    // unset rather than false: libcontainer loads a seccomp filter while it still holds the
    // capabilities to only when no_new_privileges is unset
    process.set_no_new_privileges(security.no_new_privileges.then_some(true));
    spec.set_process(Some(process));
    spec.set_hostname(None);
    spec.set_root(
        RootBuilder::default()
            .path("rootfs")
            .readonly(security.read_only_rootfs)
            .build()
            .ok(),
    );

    let mut mounts: Vec<OciMount> = spec.mounts().clone().unwrap_or_default();
    if security.privileged {
        // /sys as the node has it, writable
        for m in mounts
            .iter_mut()
            .filter(|m| m.destination().to_str() == Some("/sys"))
        {
            let options = m.options().clone().unwrap_or_default();
            m.set_options(Some(options.into_iter().filter(|o| o != "ro").collect()));
        }
    }
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
            .filter(|ns| match ns.typ() {
                LinuxNamespaceType::Ipc => !security.host_ipc,
                LinuxNamespaceType::Pid => !security.host_pid,
                _ => true,
            })
            .map(|mut ns| {
                let path = match ns.typ() {
                    LinuxNamespaceType::Network => shared.network.clone(),
                    LinuxNamespaceType::Ipc => shared.ipc.clone(),
                    LinuxNamespaceType::Uts => shared.uts.clone(),
                    LinuxNamespaceType::Pid => shared.pid.clone(),
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
        // only the standard devices (which the runtime always allows), unless privileged
        let devices = LinuxDeviceCgroupBuilder::default()
            .allow(security.privileged)
            .access("rwm")
            .build();
        if let Ok(devices) = devices {
            resources = resources.devices(vec![devices]);
        }
        linux.set_resources(resources.build().ok());
        if security.privileged || security.unmasked_proc {
            linux.set_masked_paths(None);
            linux.set_readonly_paths(None);
        }
        linux.set_seccomp(if security.privileged {
            None
        } else {
            seccomp_filter(&security.seccomp)?
        });
        if !security.sysctls.is_empty() {
            let sysctls = security.sysctls.iter().map(|(k, v)| (k.clone(), v.clone()));
            linux.set_sysctl(Some(sysctls.collect()));
        }
        spec.set_linux(Some(linux));
    }
    Ok(spec)
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
                pid: None,
            },
            cgroup_path: "/bosun/podX/c1".into(),
            resources: Default::default(),
            log_path: "/logs/0.log".into(),
            labels: Default::default(),
            stdin: false,
            stdin_once: false,
            tty: false,
            security: Default::default(),
        }
    }

    #[test]
    fn joins_the_pods_namespaces_and_makes_its_own_mount_and_pid() {
        let spec = spec(&config()).expect("spec");
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
        let spec = spec(&config()).expect("spec");
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

    #[test]
    fn capabilities_are_the_default_set_less_dropped_plus_added() {
        let default = capabilities(&Security::default());
        assert!(default.contains(&Capability::NetBindService));
        assert!(!default.contains(&Capability::SysAdmin));
        let s = Security {
            drop_capabilities: vec!["ALL".into()],
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            ..Default::default()
        };
        assert_eq!(
            capabilities(&s),
            HashSet::from([Capability::NetBindService])
        );
        let s = Security {
            drop_capabilities: vec!["NET_RAW".into(), "CAP_CHOWN".into()],
            add_capabilities: vec!["SYS_TIME".into()],
            ..Default::default()
        };
        let caps = capabilities(&s);
        assert!(!caps.contains(&Capability::NetRaw) && !caps.contains(&Capability::Chown));
        assert!(caps.contains(&Capability::SysTime) && caps.contains(&Capability::Kill));
        let privileged = Security {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(capabilities(&privileged).len(), held_capabilities().len());
        assert!(capabilities(&privileged).contains(&Capability::SysAdmin));
    }

    #[test]
    fn security_settings_reach_the_spec() {
        let mut c = config();
        c.security = Security {
            read_only_rootfs: true,
            no_new_privileges: true,
            additional_gids: vec![2000],
            host_pid: true,
            sysctls: [("net.ipv4.tcp_syncookies".to_string(), "0".to_string())].into(),
            ..Default::default()
        };
        let spec = spec(&c).expect("spec");
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let p = spec.process().as_ref().expect("process");
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().expect("capabilities");
        assert_eq!(caps.ambient().as_ref().map(|a| a.len()), Some(0));
        assert_eq!(caps.inheritable().as_ref().map(|a| a.len()), Some(0));
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[2000][..]));
        let linux = spec.linux().as_ref().expect("linux");
        let ns = linux.namespaces().as_ref().expect("namespaces");
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        assert!(linux.masked_paths().is_some());
        let devices = linux.resources().as_ref().and_then(|r| r.devices().clone());
        assert_eq!(
            devices.map(|d| d[0].allow()),
            Some(false),
            "deny all but the standard ones"
        );
        assert_eq!(
            linux
                .sysctl()
                .as_ref()
                .and_then(|s| s.get("net.ipv4.tcp_syncookies"))
                .map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn seccomp_profiles() {
        assert_eq!(seccomp_filter(&Seccomp::Unconfined), Ok(None));
        let default = seccomp_filter(&Seccomp::RuntimeDefault)
            .expect("default")
            .expect("filter");
        assert_eq!(default.default_action(), LinuxSeccompAction::ScmpActAllow);
        let refused = &default.syscalls().as_ref().expect("syscalls")[0];
        assert!(refused.names().contains(&"unshare".to_string()));
        assert_eq!(refused.errno_ret(), Some(1));
        let dir = tempfile::tempdir().expect("dir");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            Seccomp::Localhost(path)
        };
        let local = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}"#;
        let local = seccomp_filter(&file("local.json", local))
            .expect("local")
            .expect("filter");
        assert_eq!(local.default_action(), LinuxSeccompAction::ScmpActErrno);
        let broken = seccomp_filter(&file("broken.json", "{")).expect_err("broken");
        assert!(broken.starts_with("decoding seccomp profile"), "{broken}");
        let missing = dir.path().join("missing.json");
        let missing = missing.display();
        assert_eq!(
            seccomp_filter(&Seccomp::Localhost(dir.path().join("missing.json"))),
            Err(format!(
                "cannot load seccomp profile \"{missing}\": open {missing}: no such file or directory"
            ))
        );
    }
}
