//! End-to-end tests of configuration and pod security: ConfigMaps, Secrets and the downward API
//! in environment variables and volumes, service account tokens projected into pods, and
//! security contexts observed from inside the container, driven with the real kubectl against
//! a real `bosun server`.

mod common;

use common::Cluster;

#[test]
fn scenario_07_config() {
    Cluster::start_node().scenario("07-config");
}

/// A pod that sleeps, with `spec` fields (JSON, without braces) added to its spec and
/// `security` as its container's security context.
fn sleeper(name: &str, spec: &str, security: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
        "spec": {{{spec} "containers": [{{"name": "c", "image": "busybox:1.36",
        "command": ["sleep", "3600"], "securityContext": {security}}}]}}}}"#
    )
}

fn wait_ready(c: &Cluster, pod: &str) {
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{pod}"),
        "--timeout=120s",
    ]);
}

#[test]
fn service_accounts_are_checked_and_their_token_volume_added_at_admission() {
    let c = Cluster::start();
    c.ok(&["create", "serviceaccount", "robot"]);
    c.wait_for(30, || {
        c.kubectl(&["get", "serviceaccount", "default"])
            .status
            .success()
    });
    c.apply(&sleeper("p", r#""serviceAccountName": "robot","#, "{}"));
    let volume = c.jp("pod/p", "{.spec.volumes[0].name}");
    assert!(volume.starts_with("kube-api-access-"), "{volume}");
    assert_eq!(
        c.jp("pod/p", "{.spec.containers[0].volumeMounts[0].mountPath}"),
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(
        c.jp(
            "pod/p",
            "{.spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds}"
        ),
        "3607"
    );
    // the lists the pod does not have stay absent (not null)
    let spec = c.ok(&["get", "pod/p", "-o", "json"]);
    assert!(!spec.contains("\"initContainers\""), "{spec}");
    assert!(!spec.contains("\"ephemeralContainers\""), "{spec}");
    c.apply(&sleeper(
        "quiet",
        r#""automountServiceAccountToken": false,"#,
        "{}",
    ));
    assert_eq!(c.jp("pod/quiet", "{.spec.volumes}"), "");
    assert_eq!(c.jp("pod/quiet", "{.spec.serviceAccountName}"), "default");
    let err = c.kubectl_stdin(
        &["create", "-f", "-"],
        &sleeper("lost", r#""serviceAccountName": "nobody","#, "{}"),
    );
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(
        err.contains(
            "error looking up service account default/nobody: serviceaccount \"nobody\" not found"
        ),
        "{err}"
    );
}

#[test]
fn pods_get_a_bound_token_that_dies_with_the_pod() {
    let c = Cluster::start_node();
    c.wait_for(30, || {
        c.kubectl(&["get", "serviceaccount", "default"])
            .status
            .success()
    });
    c.apply(&sleeper("holder", "", "{}"));
    wait_ready(&c, "holder");
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let files = c.ok(&["exec", "holder", "--", "ls", dir]);
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>(),
        ["ca.crt", "namespace", "token"]
    );
    assert_eq!(
        c.ok(&["exec", "holder", "--", "cat", &format!("{dir}/namespace")]),
        "default"
    );
    let ca = c.ok(&["exec", "holder", "--", "cat", &format!("{dir}/ca.crt")]);
    let node_ca = std::fs::read_to_string(c.dir.path().join("tls/ca.crt")).expect("ca");
    assert_eq!(ca.trim(), node_ca.trim());
    let mounts = c.ok(&["exec", "holder", "--", "cat", "/proc/mounts"]);
    let line = mounts
        .lines()
        .find(|l| l.contains(dir))
        .expect("token mount");
    assert!(line.contains("tmpfs") && line.contains(" ro,"), "{line}");

    let token = c.ok(&["exec", "holder", "--", "cat", &format!("{dir}/token")]);
    let who = c.kubectl_as_token(
        &token,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "system:serviceaccount:default:default",
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    c.ok(&["delete", "pod", "holder", "--grace-period=1"]);
    let refused = c.kubectl_as_token(&token, &["auth", "whoami"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let pods_dir = c.dir.path().join("agent/pods");
    assert!(
        !host_mounts.contains(pods_dir.to_str().expect("utf-8 path")),
        "the pod's tmpfs volumes are unmounted with it"
    );
}

#[test]
fn security_contexts_hold_inside_the_container() {
    let c = Cluster::start_node();
    c.wait_for(30, || {
        c.kubectl(&["get", "serviceaccount", "default"])
            .status
            .success()
    });
    c.apply(&sleeper(
        "users",
        r#""securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4000]},
           "volumes": [{"name": "data", "emptyDir": {}}],"#,
        "{}",
    ).replace(r#""command": ["sleep", "3600"],"#, r#""command": ["sleep", "3600"], "volumeMounts": [{"name": "data", "mountPath": "/data"}],"#));
    c.apply(&sleeper(
        "locked",
        "",
        r#"{"runAsUser": 1000, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}"#,
    ));
    c.apply(&sleeper("plain", "", "{}"));
    c.apply(&sleeper("all-powers", "", r#"{"privileged": true}"#));
    c.apply(&sleeper("nonroot", "", r#"{"runAsNonRoot": true}"#));
    c.apply(&sleeper("hostnet", r#""hostNetwork": true,"#, "{}"));
    c.apply(
        &sleeper(
            "filtered",
            r#""securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},"#,
            "{}",
        )
        .replace(
            r#"["sleep", "3600"]"#,
            r#"["sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?; sleep 3600"]"#,
        ),
    );
    // a node's own profile, as kubelet finds them under <root>/seccomp
    let profiles = c.dir.path().join("agent/seccomp/profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("profile");
    let localhost = |name: &str, profile: &str| {
        sleeper(
            name,
            &format!(
                r#""securityContext": {{"seccompProfile": {{"type": "Localhost", "localhostProfile": "{profile}"}}}},"#
            ),
            "{}",
        )
        .replace(
            r#"["sleep", "3600"]"#,
            r#"["sh", "-c", "mkdir /tmp/x; echo mkdir=$?; sleep 3600"]"#,
        )
    };
    c.apply(&localhost("local-profile", "profiles/no-mkdir.json"));
    c.apply(&localhost("missing-profile", "profiles/missing.json"));
    c.apply(&sleeper(
        "sysctl",
        r#""securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},"#,
        "{}",
    ));
    for pod in [
        "users",
        "locked",
        "plain",
        "all-powers",
        "filtered",
        "hostnet",
        "local-profile",
    ] {
        wait_ready(&c, pod);
    }
    let exec = |pod: &str, cmd: &str| c.kubectl(&["exec", pod, "--", "sh", "-c", cmd]);
    let out = |pod: &str, cmd: &str| {
        let o = exec(pod, cmd);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };

    assert_eq!(out("users", "id -u; id -g"), "1000\n3000");
    let groups = out("users", "id -G");
    assert!(
        groups.contains("2000") && groups.contains("4000"),
        "{groups}"
    );
    assert_eq!(out("users", "stat -c %g /data"), "2000");
    assert!(
        exec("users", "touch /data/ok").status.success(),
        "fsGroup volume writable"
    );
    assert_eq!(
        out("users", "stat -c %g /data/ok"),
        "2000",
        "setgid directory"
    );

    let write = exec("locked", "touch /x");
    assert!(!write.status.success());
    assert!(String::from_utf8_lossy(&write.stderr).contains("Read-only file system"));
    assert_eq!(
        out("locked", "grep NoNewPrivs /proc/self/status | cut -f2"),
        "1"
    );
    assert_eq!(
        out("locked", "grep CapEff /proc/self/status | cut -f2"),
        "0000000000000000"
    );
    let bind = exec(
        "locked",
        "nc -l -p 80 & sleep 1; kill $! 2>/dev/null; wait $!",
    );
    assert!(String::from_utf8_lossy(&bind.stderr).contains("ermission denied"));

    let default_caps = out("plain", "grep CapEff /proc/self/status | cut -f2");
    assert_eq!(default_caps, "00000000a80425fb", "containerd's default set");
    assert_eq!(
        out("plain", "grep CapAmb /proc/self/status | cut -f2"),
        "0000000000000000"
    );
    let privileged = out("all-powers", "grep CapEff /proc/self/status | cut -f2");
    let privileged = u64::from_str_radix(&privileged, 16).expect("hex");
    let (sys_admin, net_admin) = (1 << 21, 1 << 12);
    assert_eq!(
        privileged & (sys_admin | net_admin),
        sys_admin | net_admin,
        "{privileged:x}"
    );
    assert!(
        exec("plain", "unshare -U true").status.success(),
        "unconfined"
    );
    let filtered = c.ok(&["logs", "filtered"]);
    assert!(filtered.contains("Seccomp:\t2"), "filter mode: {filtered}");
    assert!(
        filtered.contains("Operation not permitted") && filtered.contains("unshare=1"),
        "the runtime's default seccomp profile refuses unshare: {filtered}"
    );
    // processes started by `kubectl exec` are held to the same filter, as runc holds them
    assert_eq!(
        out("filtered", "grep Seccomp: /proc/self/status | cut -f2"),
        "2"
    );
    assert!(!exec("filtered", "unshare -U true").status.success());
    assert_eq!(out("local-profile", "mkdir /tmp/y; echo $?"), "1");
    let local = c.ok(&["logs", "local-profile"]);
    assert!(
        local.contains("mkdir=1"),
        "the node's profile refuses mkdir: {local}"
    );
    assert!(c.wait_for(60, || {
        c.jp(
            "pod/missing-profile",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "CreateContainerError"
    }));
    let missing = c.jp(
        "pod/missing-profile",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        missing.contains("cannot load seccomp profile \"")
            && missing.ends_with("/agent/seccomp/profiles/missing.json: no such file or directory"),
        "as containerd words it: {missing}"
    );
    assert_eq!(
        c.jp("pod/hostnet", "{.status.podIP}"),
        c.jp("pod/hostnet", "{.status.hostIP}"),
        "a pod in the node's network has the node's address"
    );
    let node_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(out("hostnet", "hostname"), node_hostname.trim());
    let node_links = std::fs::read_to_string("/proc/net/dev").expect("links");
    let pod_links = out("hostnet", "cat /proc/net/dev");
    assert_eq!(
        pod_links.lines().count(),
        node_links.lines().count(),
        "{pod_links}"
    );
    let mknod = exec("plain", "mknod /tmp/disk b 7 0 && head -c1 /tmp/disk");
    assert!(
        !mknod.status.success(),
        "devices other than the standard ones are refused"
    );

    assert!(c.wait_for(60, || {
        c.jp(
            "pod/nonroot",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "CreateContainerConfigError"
    }));
    assert!(
        c.jp(
            "pod/nonroot",
            "{.status.containerStatuses[0].state.waiting.message}"
        )
        .starts_with(
            "container has runAsNonRoot and image will run as root (pod: \"nonroot_default("
        )
    );
    assert!(c.wait_for(60, || c.jp("pod/sysctl", "{.status.phase}") == "Failed"));
    assert_eq!(c.jp("pod/sysctl", "{.status.reason}"), "SysctlForbidden");
    assert_eq!(
        c.jp("pod/sysctl", "{.status.message}"),
        "Pod was rejected: forbidden sysctl: \"kernel.msgmax\" not allowlisted"
    );
}

#[test]
fn containers_share_process_namespaces_with_each_other_or_the_node_as_asked() {
    let c = Cluster::start_node();
    c.wait_for(30, || {
        c.kubectl(&["get", "serviceaccount", "default"])
            .status
            .success()
    });
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  shareProcessNamespace: true
  containers:
  - {name: app, image: busybox:1.36, command: [sleep, "3600"]}
  - {name: debug, image: busybox:1.36, command: [sh, -c, "sleep 7200"]}
"#,
    );
    wait_ready(&c, "shared");
    // as upstream: the pause process is PID 1, and each container sees the other's processes
    let ps = c.ok(&[
        "exec", "shared", "-c", "debug", "--", "ps", "-o", "pid,args",
    ]);
    let pid_of = |args: &str| {
        ps.lines()
            .find(|l| l.trim_end().ends_with(args))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {args} in {ps}"))
    };
    assert_eq!(pid_of("/pause pause"), "1", "{ps}");
    let app = pid_of("sleep 3600");
    // the pause process does not open the node to the containers
    let root = c.kubectl(&["exec", "shared", "-c", "debug", "--", "ls", "/proc/1/root/"]);
    assert!(!root.status.success(), "/proc/1/root is readable");
    // a signal from one container ends the other's process, which restarts
    c.ok(&["exec", "shared", "-c", "debug", "--", "kill", &app]);
    assert!(c.wait_for(30, || {
        c.jp(
            "pod/shared",
            "{.status.containerStatuses[?(@.name==\"app\")].restartCount}",
        ) == "1"
    }));
    // without sharing, each container's process is PID 1 of its own namespace
    c.apply(&sleeper("alone", "", "{}"));
    // hostPID and hostIPC put the containers in the node's namespaces
    c.apply(&sleeper(
        "host",
        r#""hostPID": true, "hostIPC": true,"#,
        "{}",
    ));
    wait_ready(&c, "alone");
    wait_ready(&c, "host");
    let alone = c.ok(&["exec", "alone", "--", "ps", "-o", "pid,args"]);
    assert!(alone.contains("1 sleep 3600"), "{alone}");
    for ns in ["pid", "ipc"] {
        let link = format!("/proc/self/ns/{ns}");
        let node = std::fs::read_link(&link).expect("namespace link");
        let host = c.ok(&["exec", "host", "--", "readlink", &link]);
        assert_eq!(host.trim(), node.to_string_lossy(), "{ns}");
        let own = c.ok(&["exec", "alone", "--", "readlink", &link]);
        assert_ne!(own.trim(), node.to_string_lossy(), "{ns}");
    }
    let out = c.fails(&[
        "run",
        "both",
        "--image=busybox:1.36",
        "--overrides",
        r#"{"spec":{"hostPID":true,"shareProcessNamespace":true}}"#,
    ]);
    assert!(
        out.contains("ShareProcessNamespace and HostPID cannot both be enabled"),
        "{out}"
    );
    c.ok(&["delete", "pod", "shared", "--wait=true"]);
    let sandboxes = c.dir.path().join("agent/sandboxes");
    let left = std::fs::read_dir(&sandboxes).expect("sandboxes").count();
    assert_eq!(left, 2, "the shared pod's sandbox is gone, the others stay");
}

#[test]
fn scenario_13_security() {
    Cluster::start_node().scenario("13-security");
}

#[test]
fn pod_security_admission_enforces_warns_and_checks_its_labels() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "psa"]);
    c.wait_for(30, || {
        c.kubectl(&["-n", "psa", "get", "serviceaccount", "default"])
            .status
            .success()
    });
    c.ok(&["-n", "psa", "run", "before", "--image=busybox:1.36"]);
    let labelled = c.kubectl(&[
        "label",
        "namespace",
        "psa",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let warned = String::from_utf8_lossy(&labelled.stderr);
    assert!(
        warned.contains("existing pods in namespace \"psa\" violate the new PodSecurity enforce level \"restricted:latest\"")
            && warned.contains("before: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"),
        "{warned}"
    );
    let refused = c.fails(&["-n", "psa", "run", "web", "--image=busybox:1.36"]);
    assert!(
        refused.contains("pods \"web\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"web\" must set securityContext.allowPrivilegeEscalation=false)"),
        "{refused}"
    );
    let hardened = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hardened", "namespace": "psa"},
        "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}"#;
    c.apply(hardened);

    c.ok(&[
        "label",
        "namespace",
        "psa",
        "--overwrite",
        "pod-security.kubernetes.io/enforce=baseline",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let host = c.fails(&[
        "-n",
        "psa",
        "run",
        "host",
        "--image=busybox:1.36",
        r#"--overrides={"spec": {"hostNetwork": true}}"#,
    ]);
    assert!(
        host.contains(
            "violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"
        ),
        "{host}"
    );
    let deployed = c.kubectl(&[
        "-n",
        "psa",
        "create",
        "deployment",
        "d",
        "--image=busybox:1.36",
    ]);
    assert!(deployed.status.success());
    assert!(
        String::from_utf8_lossy(&deployed.stderr)
            .contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let invalid = c.fails(&[
        "label",
        "namespace",
        "psa",
        "pod-security.kubernetes.io/audit=strict",
    ]);
    assert!(
        invalid.contains("metadata.labels[pod-security.kubernetes.io/audit]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"),
        "{invalid}"
    );
}
