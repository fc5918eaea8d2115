//! Pods really run: a `bosun server` with its node agent runs pods bound to its node from the
//! busybox image, reports their lifecycle as upstream does (phase, conditions, container states,
//! restart back-off, events, kubectl's STATUS column), gives them addresses pods and the node
//! reach, deletes them gracefully, and keeps their containers running across a restart of the
//! server.

mod common;

use common::{Cluster, NODE};

fn pod(name: &str, policy: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  nodeName: {NODE}
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox:1.36
    command: ["sh", "-c", {command:?}]
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn row(c: &Cluster, name: &str) -> String {
    c.ok(&["get", "pod", name, "--no-headers"])
}

fn wait_row(c: &Cluster, name: &str, needle: &str, seconds: u64) {
    let ok = c.wait_for(seconds, || row(c, name).contains(needle));
    assert!(
        ok,
        "pod {name} never showed {needle:?}; last: {}",
        row(c, name)
    );
}

#[test]
fn the_node_registers_with_capacity_info_and_a_lease() {
    let c = Cluster::start_node();
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains(NODE) && wide.contains("Ready"), "{wide}");
    assert!(
        wide.contains("bosun://"),
        "container runtime column: {wide}"
    );
    let node = format!("node/{NODE}");
    assert_eq!(c.jp(&node, "{.status.capacity.pods}"), "110");
    assert!(!c.jp(&node, "{.status.capacity.cpu}").is_empty());
    assert!(c.jp(&node, "{.status.capacity.memory}").ends_with("Ki"));
    assert_eq!(c.jp(&node, "{.spec.podCIDR}"), "10.42.0.0/24");
    assert!(!c.jp(&node, "{.status.nodeInfo.kernelVersion}").is_empty());
    let describe = c.ok(&["describe", "node", NODE]);
    for part in [
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "KubeletReady",
        "Capacity:",
        "Allocatable:",
        "System Info:",
    ] {
        assert!(
            describe.contains(part),
            "describe node lacks {part}: {describe}"
        );
    }
    let holder = c.ok(&[
        "-n",
        "kube-node-lease",
        "get",
        "lease",
        NODE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, NODE);
}

#[test]
fn a_pod_runs_isolated_with_an_address_and_is_deleted_gracefully() {
    let c = Cluster::start_node();
    c.apply(&pod("web", "Always", "exec httpd -f -p 8080 -h /var/www"));
    c.ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"]);
    assert_eq!(c.jp("pod/web", "{.status.phase}"), "Running");
    let r = row(&c, "web");
    assert!(
        r.starts_with("web") && r.contains("1/1") && r.contains("Running"),
        "{r}"
    );
    assert!(
        c.jp("pod/web", "{.status.containerStatuses[0].containerID}")
            .starts_with("bosun://")
    );
    let ip = c.jp("pod/web", "{.status.podIP}");
    assert!(ip.starts_with("10.42.0."), "pod IP {ip}");

    // The node reaches the pod at its address.
    let body = std::process::Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://{ip}:8080/")])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&body.stdout).trim(),
        "hello from busybox"
    );

    // Another pod reaches it by IP; it has its own hostname, PID namespace and root.
    let probe = format!(
        "wget -qO- http://{ip}:8080/ > /tmp/out; hostname >> /tmp/out; echo /proc/[0-9]* >> /tmp/out; \
         test -e /work && echo host-root >> /tmp/out; cat /tmp/out; sleep 3600"
    );
    c.apply(&pod("client", "Always", &probe));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=60s",
    ]);
    assert_ne!(
        c.jp("pod/client", "{.status.podIP}"),
        ip,
        "two pods, two addresses"
    );
    let log = c.dir.path().join("agent/logs");
    let seen = c.wait_for(10, || {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat {}/default_client_*/main/0.log", log.display()))
            .output()
            .expect("cat");
        String::from_utf8_lossy(&out.stdout).contains("/proc/1")
    });
    assert!(seen, "the client pod's log never showed its processes");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat {}/default_client_*/main/0.log", log.display()))
        .output()
        .expect("cat");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stdout F hello from busybox"), "{text}");
    assert!(
        text.contains("stdout F client"),
        "hostname is the pod name: {text}"
    );
    assert!(
        text.contains("stdout F /proc/1\n"),
        "only its own PID 1: {text}"
    );
    assert!(!text.contains("host-root"), "{text}");

    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    for reason in ["Pulled", "Created", "Started"] {
        assert!(events.contains(reason), "events {events}");
    }

    // kubectl port-forward: WebSocket-tunnelled SPDY to the pod's loopback, twice in a row.
    let port = free_port();
    let mut forward = std::process::Command::new(common::kubectl_path())
        .args(["port-forward", "pod/web", &format!("{port}:8080")])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let url = format!("http://127.0.0.1:{port}/");
    let fetch = || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "5", &url])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let forwarded = c.wait_for(10, || fetch() == "hello from busybox");
    assert!(forwarded, "port-forward never answered");
    assert_eq!(fetch(), "hello from busybox", "a second connection");
    let _ = forward.kill();
    let _ = forward.wait();

    // httpd as PID 1 ignores SIGTERM: it is killed when the 2 s grace period ends.
    let t = std::time::Instant::now();
    c.ok(&["delete", "pod", "web", "--timeout=30s"]);
    assert!(
        t.elapsed().as_secs() < 15,
        "deletion took {:?}",
        t.elapsed()
    );
    assert!(c.fails(&["get", "pod", "web"]).contains("NotFound"));
}

#[test]
fn restart_policies_and_container_states_are_reported_as_upstream() {
    let c = Cluster::start_node();
    c.apply(&pod("crasher", "Always", "echo boom; exit 1"));
    c.apply(&pod("once", "Never", "echo done"));
    c.apply(&pod("failer", "Never", "exit 2"));
    c.apply(&pod("ok-on-failure", "OnFailure", "exit 0"));
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: nocmd}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: main\n    image: busybox:1.36\n    command: [/no/such/binary]\n"
    ));
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: nopull}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: main\n    image: registry.invalid/nothing/here:1\n"
    ));

    wait_row(&c, "once", "Completed", 30);
    assert_eq!(c.jp("pod/once", "{.status.phase}"), "Succeeded");
    assert_eq!(
        c.jp(
            "pod/once",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "Completed"
    );
    wait_row(&c, "failer", "Error", 30);
    assert_eq!(c.jp("pod/failer", "{.status.phase}"), "Failed");
    assert_eq!(
        c.jp(
            "pod/failer",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "2"
    );
    let ok = c.wait_for(30, || {
        c.jp("pod/ok-on-failure", "{.status.phase}") == "Succeeded"
    });
    assert!(ok, "OnFailure + exit 0 -> Succeeded");
    assert_eq!(
        c.jp(
            "pod/ok-on-failure",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );

    // Always + exit 1: restarted at once, then backing off 10 s.
    let looping = c.wait_for(40, || {
        c.jp("pod/crasher", "{.status.containerStatuses[0].restartCount}")
            .parse::<i32>()
            .unwrap_or(0)
            >= 2
            && c.jp(
                "pod/crasher",
                "{.status.containerStatuses[0].state.waiting.reason}",
            ) == "CrashLoopBackOff"
    });
    assert!(
        looping,
        "crasher never reached CrashLoopBackOff after 2 restarts: {}",
        row(&c, "crasher")
    );
    assert!(row(&c, "crasher").contains("CrashLoopBackOff"));
    assert_eq!(
        c.jp(
            "pod/crasher",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "1"
    );
    assert_eq!(
        c.jp(
            "pod/crasher",
            "{.status.containerStatuses[0].lastState.terminated.reason}"
        ),
        "Error"
    );
    assert_eq!(c.jp("pod/crasher", "{.status.phase}"), "Running");
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crasher",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("BackOff"), "{events}");

    let start_failed = c.wait_for(30, || {
        let s = c.jp("pod/nocmd", "{.status.containerStatuses[0].state.waiting.reason}{.status.containerStatuses[0].lastState.terminated.reason}");
        s.contains("StartError") || s.contains("CrashLoopBackOff")
    });
    assert!(start_failed, "nocmd: {}", row(&c, "nocmd"));
    assert!(c.jp("pod/nocmd", "{.status.containerStatuses[0].lastState.terminated.message}{.status.containerStatuses[0].state.terminated.message}").contains("/no/such/binary"));

    let pull_failed = c.wait_for(30, || {
        let r = c.jp(
            "pod/nopull",
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        r == "ErrImagePull" || r == "ImagePullBackOff"
    });
    assert!(pull_failed, "nopull: {}", row(&c, "nopull"));
    assert_eq!(c.jp("pod/nopull", "{.status.phase}"), "Pending");
}

#[test]
fn init_containers_volumes_and_env_shape_the_pod() {
    let c = Cluster::start_node();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: shaped, labels: {{tier: web}}}}
spec:
  nodeName: {NODE}
  volumes: [{{name: shared, emptyDir: {{}}}}]
  initContainers:
  - name: first
    image: busybox:1.36
    command: ["sh", "-c", "echo from-init > /data/seed"]
    volumeMounts: [{{name: shared, mountPath: /data}}]
  containers:
  - name: main
    image: busybox:1.36
    workingDir: /data
    env:
    - {{name: WHO, value: world}}
    - {{name: GREETING, value: "hello $(WHO)"}}
    - {{name: TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
    command: ["sh", "-c", "echo $GREETING $TIER $(pwd) $(cat seed); sleep 3600"]
    volumeMounts: [{{name: shared, mountPath: /data}}]
"#
    ));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/shaped",
        "--timeout=60s",
    ]);
    assert_eq!(
        c.jp(
            "pod/shaped",
            "{.status.initContainerStatuses[0].state.terminated.reason}"
        ),
        "Completed"
    );
    let conditions = c.jp(
        "pod/shaped",
        "{range .status.conditions[*]}{.type}={.status} {end}",
    );
    for cond in [
        "Initialized=True",
        "ContainersReady=True",
        "Ready=True",
        "PodScheduled=True",
    ] {
        assert!(conditions.contains(cond), "{conditions}");
    }
    let log = c.dir.path().join("agent/logs");
    let seen = c.wait_for(10, || {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat {}/default_shaped_*/main/0.log", log.display()))
            .output()
            .expect("cat");
        String::from_utf8_lossy(&out.stdout).contains("hello world web /data from-init")
    });
    assert!(
        seen,
        "the main container did not see its env, workingDir and the init's file"
    );
}

#[test]
fn running_containers_survive_a_server_restart() {
    let mut c = Cluster::start_node();
    c.apply(&pod("steady", "Always", "exec sleep 3600"));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/steady",
        "--timeout=60s",
    ]);
    let id = c.jp("pod/steady", "{.status.containerStatuses[0].containerID}");
    let started = c.jp(
        "pod/steady",
        "{.status.containerStatuses[0].state.running.startedAt}",
    );
    c.restart_after_kill();
    c.wait_node_ready();
    // The agent re-adopts the container: same id, same start, no restart.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        c.jp("pod/steady", "{.status.containerStatuses[0].containerID}"),
        id
    );
    assert_eq!(
        c.jp(
            "pod/steady",
            "{.status.containerStatuses[0].state.running.startedAt}"
        ),
        started
    );
    assert_eq!(
        c.jp("pod/steady", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    assert_eq!(c.jp("pod/steady", "{.status.phase}"), "Running");
}

#[test]
fn logs_exec_and_cp_go_through_the_api_server_to_the_node() {
    let c = Cluster::start_node();
    c.apply(&pod(
        "logger",
        "Always",
        "for i in 1 2 3; do echo line-$i; done; sleep 1; echo to-stderr >&2; exec sleep 3600",
    ));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/logger",
        "--timeout=60s",
    ]);
    let all = c.wait_for(10, || c.ok(&["logs", "logger"]).contains("to-stderr"));
    assert!(all, "logs: {}", c.ok(&["logs", "logger"]));
    assert_eq!(
        c.ok(&["logs", "logger"]),
        "line-1\nline-2\nline-3\nto-stderr\n"
    );
    assert_eq!(c.ok(&["logs", "logger", "--tail=1"]), "to-stderr\n");
    let stamped = c.ok(&["logs", "logger", "--tail=1", "--timestamps"]);
    assert!(
        stamped.starts_with("20") && stamped.ends_with("Z to-stderr\n"),
        "{stamped}"
    );
    assert!(
        c.fails(&["logs", "logger", "--previous"])
            .contains("previous terminated container")
    );

    // exec: output, exit codes, stdin, the pod's hostname, its own PID namespace
    assert_eq!(c.ok(&["exec", "logger", "--", "hostname"]), "logger\n");
    let out = c.kubectl(&["exec", "logger", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let echoed = c.kubectl_stdin(&["exec", "-i", "logger", "--", "cat"], "hello-stdin\n");
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "hello-stdin\n");
    assert_eq!(
        c.ok(&["exec", "logger", "--", "cat", "/proc/1/cmdline"])
            .replace('\0', " ")
            .trim(),
        "sleep 3600"
    );
    assert!(
        !c.kubectl(&["exec", "logger", "--", "ls", "/work"])
            .status
            .success()
    );

    // What a process writes to PID 1's stdout lands in the log, and `logs -f` streams it.
    let mut follow = std::process::Command::new(common::kubectl_path())
        .args(["logs", "-f", "logger"])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    std::thread::sleep(std::time::Duration::from_secs(1));
    c.ok(&[
        "exec",
        "logger",
        "--",
        "sh",
        "-c",
        "echo appended >/proc/1/fd/1",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let _ = follow.kill();
    let out = follow.wait_with_output().expect("output");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("appended"),
        "logs -f missed the new line"
    );

    // cp both ways (tar through exec)
    let tmp = tempfile::tempdir().expect("dir");
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "copied in\n").expect("write");
    c.ok(&["cp", input.to_str().expect("path"), "logger:/tmp/in.txt"]);
    assert_eq!(
        c.ok(&["exec", "logger", "--", "cat", "/tmp/in.txt"]),
        "copied in\n"
    );
    let output = tmp.path().join("out.txt");
    c.ok(&["cp", "logger:/tmp/in.txt", output.to_str().expect("path")]);
    assert_eq!(
        std::fs::read_to_string(&output).expect("read"),
        "copied in\n"
    );

    // Crashing containers keep the previous attempt's log.
    c.apply(&pod("crasher", "Always", "echo boom; exit 1"));
    let restarted = c.wait_for(30, || {
        c.jp("pod/crasher", "{.status.containerStatuses[0].restartCount}") != "0"
    });
    assert!(restarted);
    assert_eq!(c.ok(&["logs", "crasher", "--previous"]), "boom\n");
}

#[test]
fn the_node_api_refuses_callers_other_than_the_api_server() {
    let c = Cluster::start_node();
    // No client certificate: the TLS handshake itself fails.
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://127.0.0.1:10250/healthz",
        ])
        .output()
        .expect("curl");
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
    // A user of the cluster cannot read logs without RBAC permission on pods/log.
    c.apply(&pod("quiet", "Always", "exec sleep 3600"));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/quiet",
        "--timeout=60s",
    ]);
    let denied = c.fails(&["logs", "quiet", "--as=nobody"]);
    assert!(denied.contains("forbidden"), "{denied}");
    let denied = c.fails(&["exec", "quiet", "--as=nobody", "--", "true"]);
    assert!(denied.contains("forbidden"), "{denied}");
}

#[test]
fn scenario_02_pod_basics() {
    Cluster::start_node().scenario("02-pod-basics");
}

#[test]
fn scenario_03_restart_policy() {
    Cluster::start_node().scenario("03-restart-policy");
}

#[test]
fn the_scheduler_places_pods_and_explains_those_that_fit_nowhere() {
    let c = Cluster::start_node();
    c.ok(&[
        "run",
        "placed",
        "--image=busybox:1.36",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/placed",
        "--timeout=60s",
    ]);
    assert_eq!(c.jp("pod/placed", "{.spec.nodeName}"), NODE);
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=placed",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains(&format!("Successfully assigned default/placed to {NODE}")),
        "{events}"
    );

    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: greedy}\nspec:\n  containers:\n  - name: main\n    image: busybox:1.36\n    resources: {requests: {cpu: '500'}}\n",
    );
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: picky}\nspec:\n  nodeSelector: {disk: nvme}\n  containers:\n  - name: main\n    image: busybox:1.36\n    command: [sleep, '3600']\n",
    );
    let reported = c.wait_for(20, || {
        c.jp(
            "pod/greedy",
            "{.status.conditions[?(@.type==\"PodScheduled\")].reason}",
        ) == "Unschedulable"
            && c.jp(
                "pod/picky",
                "{.status.conditions[?(@.type==\"PodScheduled\")].reason}",
            ) == "Unschedulable"
    });
    assert!(reported, "unschedulable pods were not reported");
    let msg = c.jp(
        "pod/greedy",
        "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
    );
    assert!(
        msg.starts_with("0/1 nodes are available: 1 Insufficient cpu."),
        "{msg}"
    );
    let msg = c.jp(
        "pod/picky",
        "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
    );
    assert!(
        msg.contains("didn't match Pod's node affinity/selector"),
        "{msg}"
    );
    assert!(
        c.ok(&["describe", "pod", "picky"])
            .contains("FailedScheduling")
    );
    // Once the node has the label, the pod is placed.
    c.ok(&["label", "node", NODE, "disk=nvme"]);
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/picky",
        "--timeout=60s",
    ]);
}

#[test]
fn lifecycle_hooks_run_after_start_and_before_stop() {
    let c = Cluster::start_node();
    let host = tempfile::tempdir().expect("dir");
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 5
  volumes: [{{name: out, hostPath: {{path: {host}, type: Directory}}}}]
  containers:
  - name: main
    image: busybox:1.36
    command: ["sh", "-c", "while [ ! -e /tmp/post-start ]; do sleep 0.1; done; echo saw-post-start; exec sleep 3600"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      postStart: {{exec: {{command: ["sh", "-c", "touch /tmp/post-start"]}}}}
      preStop: {{exec: {{command: ["sh", "-c", "echo pre-stop > /out/pre-stop"]}}}}
"#,
        host = host.path().display()
    ));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/hooked",
        "--timeout=60s",
    ]);
    let saw = c.wait_for(10, || c.ok(&["logs", "hooked"]).contains("saw-post-start"));
    assert!(saw, "the postStart hook did not run");
    c.ok(&["delete", "pod", "hooked", "--timeout=30s"]);
    let written = std::fs::read_to_string(host.path().join("pre-stop")).unwrap_or_default();
    assert_eq!(
        written, "pre-stop\n",
        "the preStop hook did not run before the container stopped"
    );
}

/// A Docker registry (Debian's `docker-registry`) on loopback with a user, holding busybox
/// pushed by `skopeo`, gzip-compressed as `tools/busybox:1.36` and zstd-compressed as
/// `tools/busybox:zstd`.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        for tool in ["docker-registry", "skopeo", "htpasswd"] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} is missing: apt-get install docker-registry skopeo apache2-utils"
            );
        }
        let dir = tempfile::tempdir().expect("dir");
        let port = free_port();
        let htpasswd = std::process::Command::new("htpasswd")
            .args(["-Bbn", "alice", "secret"])
            .output()
            .expect("htpasswd");
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("write");
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: bosun-test\n    path: {root}/htpasswd\n",
                root = dir.path().display()
            ),
        )
        .expect("write");
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry");
        let registry = Self {
            child,
            port,
            _dir: dir,
        };
        let archive = common::busybox_archives(&registry._dir.path().join("archives"));
        for (tag, compression) in [("1.36", "gzip"), ("zstd", "zstd")] {
            let mut pushed = false;
            for _ in 0..50 {
                let out = std::process::Command::new("skopeo")
                    .args([
                        "copy",
                        "--dest-tls-verify=false",
                        "--dest-creds",
                        "alice:secret",
                    ])
                    .args(["--dest-compress-format", compression])
                    .arg(format!("docker-archive:{}", archive.display()))
                    .arg(format!("docker://127.0.0.1:{port}/tools/busybox:{tag}"))
                    .output()
                    .expect("skopeo");
                if out.status.success() {
                    pushed = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert!(
                pushed,
                "skopeo could not push busybox:{tag} to the registry"
            );
        }
        registry
    }

    fn image(&self, tag: &str) -> String {
        format!("127.0.0.1:{}/tools/busybox:{tag}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn images_are_pulled_from_a_registry_with_the_pods_pull_secret() {
    let registry = Registry::start();
    let insecure = format!("127.0.0.1:{}", registry.port);
    let c = Cluster::start_node_with(&["--insecure-registry", &insecure]);
    let pod_with = |name: &str, image: &str, secret: Option<&str>| {
        let secrets = secret
            .map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{secrets}  containers:\n  - name: main\n    image: {image}\n    command: [sleep, '3600']\n"
        )
    };
    // Without credentials the registry says no.
    c.apply(&pod_with("anonymous", &registry.image("1.36"), None));
    let refused = c.wait_for(30, || {
        let r = c.jp(
            "pod/anonymous",
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        r == "ErrImagePull" || r == "ImagePullBackOff"
    });
    assert!(
        refused,
        "an unauthenticated pull was not refused: {}",
        row(&c, "anonymous")
    );
    let msg = c.jp(
        "pod/anonymous",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        msg.contains("authorized") || msg.contains("Back-off"),
        "{msg}"
    );

    // With a kubernetes.io/dockerconfigjson secret it pulls (gzip and zstd layers).
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={insecure}"),
        "--docker-username=alice",
        "--docker-password=secret",
    ]);
    c.apply(&pod_with(
        "pulled",
        &registry.image("1.36"),
        Some("regcred"),
    ));
    c.apply(&pod_with("zstd", &registry.image("zstd"), Some("regcred")));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/pulled",
        "pod/zstd",
        "--timeout=90s",
    ]);
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=pulled",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("Successfully pulled image"), "{events}");
    // imageID names the repo digest, as containerd reports it.
    let image_id = c.jp("pod/pulled", "{.status.containerStatuses[0].imageID}");
    assert!(
        image_id.starts_with(&format!("{insecure}/tools/busybox@sha256:")),
        "{image_id}"
    );

    // imagePullPolicy Never refuses what is not on the node.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: never}}\nspec:\n  containers:\n  - name: main\n    image: {}\n    imagePullPolicy: Never\n",
        registry.image("absent")
    ));
    let never = c.wait_for(30, || {
        c.jp(
            "pod/never",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "ErrImageNeverPull"
    });
    assert!(never, "{}", row(&c, "never"));
}

#[test]
fn the_demo_app_image_builds_offline_and_serves_its_endpoints() {
    let c = Cluster::start_node();
    let out = tempfile::tempdir().expect("dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = std::process::Command::new("bash")
        .arg(root.join("examples/images/build.sh"))
        .arg(out.path())
        .env("IMPORT", "0")
        // Its own target dir: the outer cargo may still hold the workspace's.
        .env("CARGO_TARGET_DIR", out.path().join("target"))
        .env("BOSUN_SHARED", common::shared_dir())
        .output()
        .expect("build.sh");
    assert!(
        built.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let imported = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["images", "--data-dir"])
        .arg(c.dir.path())
        .arg("import")
        .arg(out.path().join("demo-docker.tar"))
        .output()
        .expect("import");
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    c.ok(&["run", "demo", "--image=bosun/demo:2.0", "--port=8080"]);
    c.ok(&["wait", "--for=condition=Ready", "pod/demo", "--timeout=60s"]);
    let ip = c.jp("pod/demo", "{.status.podIP}");
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "10", "-w", " %{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let base = format!("http://{ip}:8080");
    let answered = c.wait_for(10, || curl(&[&format!("{base}/")]).ends_with("200"));
    assert!(answered, "the demo app did not answer");
    assert_eq!(
        curl(&[&format!("{base}/")]),
        "Hello from demo (version v2)\n 200"
    );
    assert_eq!(curl(&[&format!("{base}/pi?dp=10")]), "3.1415926535\n 200");
    assert!(curl(&["--data", "503", &format!("{base}/health")]).ends_with("200"));
    assert!(curl(&[&format!("{base}/health")]).ends_with("503"));
    assert!(curl(&[&format!("http://{ip}:81/readiness/status")]).contains("failing"));
    assert!(curl(&[&format!("http://{ip}:81/readiness")]).ends_with("503"));
    assert!(curl(&[&format!("http://{ip}:81/healthz")]).ends_with("200"));
}

#[test]
fn attach_streams_output_and_passes_stdin() {
    let c = Cluster::start_node();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: talker}}
spec:
  nodeName: {NODE}
  containers:
  - name: main
    image: busybox:1.36
    stdin: true
    command: ["sh", "-c", "while read line; do echo got-$line; echo err-$line >&2; done"]
"#
    ));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/talker",
        "--timeout=60s",
    ]);
    let mut attach = std::process::Command::new(common::kubectl_path())
        .args(["attach", "-i", "talker"])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl attach");
    {
        use std::io::Write;
        let mut stdin = attach.stdin.take().expect("stdin");
        std::thread::sleep(std::time::Duration::from_secs(1));
        stdin.write_all(b"one\ntwo\n").expect("write");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let _ = attach.kill();
    let out = attach.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("got-one") && text.contains("got-two"),
        "attach output: {text}"
    );
    assert!(c.ok(&["logs", "talker"]).contains("err-two"));
}

#[test]
fn exec_and_run_give_terminals_and_stdin_once_ends_input() {
    let c = Cluster::start_node();
    c.ok(&[
        "run",
        "box",
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ]);
    c.ok(&["wait", "--for=condition=Ready", "pod/box", "--timeout=60s"]);

    // kubectl exec -it: a terminal of the user's size; Ctrl-C interrupts; the exit code passes
    let (shown, code) = c.kubectl_on_terminal(
        "exec -it box -- sh",
        (90, 20),
        &[
            (1500, "tty; stty size\n"),
            (500, "sleep 30\n"),
            (1000, "\x03"),
            (500, "echo interrupted $?\n"),
            (500, "exit 3\n"),
        ],
    );
    assert!(shown.contains("/dev/pts/0"), "{shown}");
    assert!(shown.contains("20 90"), "{shown}");
    assert!(shown.contains("interrupted 130"), "{shown}");
    assert_eq!(code, Some(3), "{shown}");

    // kubectl run -it --rm: a container on a terminal, attached, removed after
    let (shown, code) = c.kubectl_on_terminal(
        "run shell -it --rm --restart=Never --image=busybox:1.36 -- sh",
        (100, 30),
        &[
            (4000, "\n"),
            (500, "echo $TERM $(stty size) $((6*7))\n"),
            (500, "exit 4\n"),
        ],
    );
    assert!(shown.contains("xterm 30 100 42"), "{shown}");
    assert!(shown.contains("pod \"shell\" deleted"), "{shown}");
    assert_eq!(code, Some(4), "{shown}");

    // kubectl run -i: stdinOnce, so the container's input ends with the user's
    let out = c.kubectl_stdin(
        &[
            "run",
            "once",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=busybox:1.36",
            "--",
            "sh",
            "-c",
            "cat; echo input-ended",
        ],
        "one\ntwo\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("one\ntwo\ninput-ended"), "{text}");
}

#[test]
fn probes_gate_readiness_and_restart_unhealthy_containers() {
    let c = Cluster::start_node();
    let status = |pod: &str, path: &str| c.jp(&format!("pod/{pod}"), path);
    let ready =
        |pod: &str| status(pod, "{.status.conditions[?(@.type==\"Ready\")].status}") == "True";
    let running = |pod: &str| {
        !status(
            pod,
            "{.status.containerStatuses[0].state.running.startedAt}",
        )
        .is_empty()
    };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ready}
spec:
  containers:
  - name: web
    image: busybox:1.36
    command: ["httpd", "-f", "-p", "8080", "-h", "/var/www"]
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  containers:
  - name: web
    image: busybox:1.36
    command: ["httpd", "-f", "-p", "8080", "-h", "/var/www"]
    ports: [{name: http, containerPort: 8080}]
    livenessProbe:
      httpGet: {path: /index.html, port: http, httpHeaders: [{name: X-Custom-Header, value: Awesome}]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: slowstart}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: ["sleep", "3600"]
    startupProbe:
      exec: {command: ["cat", "/tmp/started"]}
      periodSeconds: 1
      failureThreshold: 3
    livenessProbe:
      exec: {command: ["cat", "/tmp/started"]}
      periodSeconds: 1
      failureThreshold: 1
"#,
    );
    // Readiness: running but not ready until the probe passes, and never restarted by it.
    assert!(c.wait_for(60, || running("ready")), "ready never ran");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!ready("ready"), "Ready before its readiness probe passed");
    let line = c.ok(&["get", "pod", "ready", "--no-headers"]);
    assert!(line.split_whitespace().nth(1) == Some("0/1"), "{line}");
    c.ok(&["exec", "ready", "--", "touch", "/tmp/ready"]);
    assert!(
        c.wait_for(20, || ready("ready")),
        "not Ready after the probe passed"
    );
    c.ok(&["exec", "ready", "--", "rm", "/tmp/ready"]);
    assert!(
        c.wait_for(20, || !ready("ready")),
        "still Ready after the probe failed"
    );
    assert_eq!(
        status("ready", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    let unready = status(
        "ready",
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    assert_eq!(unready, "containers with unready status: [web]");

    // Liveness: a failing httpGet (named port, custom header) restarts the container.
    c.ok(&["wait", "--for=condition=Ready", "pod/live", "--timeout=60s"]);
    assert!(
        c.ok(&["describe", "pod", "live"])
            .contains("http-get http://:http/index.html")
    );
    c.ok(&["exec", "live", "--", "rm", "/var/www/index.html"]);
    let restarted = c.wait_for(60, || {
        status("live", "{.status.containerStatuses[0].restartCount}")
            .parse::<i32>()
            .is_ok_and(|n| n >= 1)
    });
    assert!(restarted, "{}", c.ok(&["describe", "pod", "live"]));
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=live",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("Unhealthy: Liveness probe failed: HTTP probe failed with statuscode: 404"),
        "{events}"
    );
    assert!(
        events.contains("Killing: Container web failed liveness probe, will be restarted"),
        "{events}"
    );
    c.ok(&["wait", "--for=condition=Ready", "pod/live", "--timeout=60s"]);

    // tcpSocket readiness waits for initialDelaySeconds.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: tcp}
spec:
  containers:
  - name: web
    image: busybox:1.36
    command: ["httpd", "-f", "-p", "8080", "-h", "/var/www"]
    readinessProbe:
      tcpSocket: {port: 8080}
      initialDelaySeconds: 6
      periodSeconds: 1
"#,
    );
    assert!(c.wait_for(60, || running("tcp")), "tcp never ran");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!ready("tcp"), "Ready before initialDelaySeconds");
    assert!(c.wait_for(30, || ready("tcp")), "tcp never Ready");

    // A failing startup probe restarts the container, and liveness waits for it.
    let restarted = c.wait_for(60, || {
        status("slowstart", "{.status.containerStatuses[0].restartCount}")
            .parse::<i32>()
            .is_ok_and(|n| n >= 1)
    });
    assert!(restarted, "{}", c.ok(&["describe", "pod", "slowstart"]));
    assert_eq!(
        status("slowstart", "{.status.containerStatuses[0].started}"),
        "false"
    );
    let events = c.ok(&["describe", "pod", "slowstart"]);
    assert!(
        events.contains("failed startup probe, will be restarted"),
        "{events}"
    );
    assert!(!events.contains("Liveness probe failed"), "{events}");
}

/// The cpu time (user and system, in seconds) of a container's PID 1, as its /proc shows it.
fn cpu_seconds(c: &Cluster, pod: &str) -> f64 {
    let stat = c.ok(&["exec", pod, "--", "cat", "/proc/1/stat"]);
    // the fields after the command name, which is in parentheses
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[test]
fn limits_hold_and_qos_sets_the_oom_score() {
    let c = Cluster::start_node();
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: capped}
spec:
  containers:
  - name: spin
    image: busybox:1.36
    command: ["md5sum", "/dev/urandom"]
    resources:
      limits: {cpu: 200m, memory: 64Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox:1.36
    command: ["sh", "-c", "a=$(head -c 200000000 /dev/zero | tr '\\000' x); sleep 3600"]
    resources:
      limits: {memory: 32Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: burst}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: ["sleep", "3600"]
    resources:
      requests: {memory: 64Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: loose}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: ["sleep", "3600"]
"#,
    );
    for pod in ["capped", "burst", "loose"] {
        let ready = c.wait_for(60, || {
            c.jp(
                &format!("pod/{pod}"),
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "True"
        });
        assert!(ready, "{}", c.ok(&["describe", "pod", pod]));
    }
    // QoS classes and their OOM scores.
    let adj = |pod: &str| {
        c.ok(&["exec", pod, "--", "cat", "/proc/1/oom_score_adj"])
            .trim()
            .to_string()
    };
    assert_eq!(c.jp("pod/capped", "{.status.qosClass}"), "Guaranteed");
    // -997, or as low as the agent may go without CAP_SYS_RESOURCE
    let guaranteed: i32 = adj("capped").parse().expect("number");
    assert!(guaranteed == -997 || guaranteed == 0, "{guaranteed}");
    assert_eq!(c.jp("pod/loose", "{.status.qosClass}"), "BestEffort");
    assert_eq!(adj("loose"), "1000");
    assert_eq!(c.jp("pod/burst", "{.status.qosClass}"), "Burstable");
    let burst: i32 = adj("burst").parse().expect("number");
    assert!((2..=999).contains(&burst), "{burst}");

    // A 200m limit holds a spinning process to about a fifth of a core.
    let before = cpu_seconds(&c, "capped");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let used = (cpu_seconds(&c, "capped") - before) / 4.0;
    assert!(
        (0.1..0.3).contains(&used),
        "used {used:.2} cores under a 200m limit"
    );

    // Going over the memory limit ends the container with OOMKilled and 137.
    let killed = c.wait_for(60, || {
        c.jp(
            "pod/hog",
            "{.status.containerStatuses[0].state.terminated.reason}",
        ) == "OOMKilled"
    });
    assert!(killed, "{}", c.ok(&["describe", "pod", "hog"]));
    assert_eq!(
        c.jp(
            "pod/hog",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "137"
    );
    assert!(c.wait_for(20, || c.jp("pod/hog", "{.status.phase}") == "Failed"));
}
