//! The container runtime on its own: containers from the busybox image under their supervisor
//! (the real `bosun shim`), isolated in their own namespaces, joined to a pod sandbox, logging
//! in the CRI format, and reporting how they ended.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use runtime::container::{ContainerConfig, Runtime, SharedNamespaces, State};
use runtime::images::{ImageStore, Quiet};
use runtime::sandbox::Sandbox;

struct Node {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    images: ImageStore,
    runtime: Runtime,
}

fn node() -> Node {
    common::require_root("the runtime test");
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().to_path_buf();
    let archive = common::busybox_archives(&root);
    let images = ImageStore::open(&root.join("images")).expect("image store");
    images.import(&archive, &Quiet).expect("import busybox");
    let runtime = Runtime::open(
        &root.join("containers"),
        &root.join("run"),
        Path::new(env!("CARGO_BIN_EXE_bosun")),
    )
    .expect("runtime");
    Node {
        _dir: dir,
        root,
        images,
        runtime,
    }
}

fn config(node: &Node, name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        image: "busybox:1.36".into(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin:/usr/bin".into(), "GREETING=hello".into()],
        cwd: "/tmp".into(),
        uid: 0,
        gid: 0,
        mounts: vec![],
        namespaces: SharedNamespaces::default(),
        cgroup_path: format!("/bosun-test/{}/{name}", std::process::id()),
        resources: Default::default(),
        log_path: node.root.join(format!("logs/{name}.log")),
        labels: Default::default(),
        stdin: false,
        stdin_once: false,
        tty: false,
        security: Default::default(),
    }
}

fn wait_exit(runtime: &Runtime, id: &str) -> runtime::container::Exited {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let State::Exited(_, exited) = runtime.get(id).expect("get").state {
            return exited;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_contents(path: &Path) -> Vec<String> {
    let raw = std::fs::read(path).expect("log");
    raw.split(|&b| b == b'\n')
        .filter_map(runtime::cri_log::parse)
        .map(|r| format!("{} {}", r.stream, String::from_utf8_lossy(r.content)))
        .collect()
}

#[test]
fn a_container_is_isolated_and_its_supervisor_reports_its_end() {
    let node = node();
    let script = "echo $GREETING from $(pwd); echo /proc/[0-9]*; \
                  test -e /work && echo host-visible; echo oops >&2; exit 3";
    let cfg = config(&node, "c1", script);
    node.runtime
        .create("c1", &node.images, &cfg)
        .expect("create");
    let started = node.runtime.start("c1").expect("start");
    assert!(started.pid > 0);
    let exited = wait_exit(&node.runtime, "c1");
    assert_eq!(exited.exit_code, 3);
    assert_eq!(exited.signal, None);
    let lines = log_contents(&cfg.log_path);
    assert!(
        lines.contains(&"stdout hello from /tmp".to_string()),
        "{lines:?}"
    );
    // Its PID namespace holds its PID 1 only.
    assert!(lines.contains(&"stdout /proc/1".to_string()), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("host-visible")),
        "{lines:?}"
    );
    assert!(lines.contains(&"stderr oops".to_string()), "{lines:?}");
    node.runtime.remove("c1").expect("remove");
    assert!(node.runtime.get("c1").is_err());
}

#[test]
fn containers_of_a_sandbox_share_its_hostname_and_network_and_stop_on_signal() {
    let node = node();
    let sandbox = Sandbox::at(&node.root.join("sandboxes"), "pod-uid");
    sandbox.create("my-pod", false).expect("sandbox");
    let shared = SharedNamespaces {
        network: Some(sandbox.net()),
        ipc: Some(sandbox.ipc()),
        uts: Some(sandbox.uts()),
        pid: None,
    };
    let mut server = config(&node, "server", "nc -l -p 7000 -e echo served");
    server.namespaces = shared.clone();
    let mut client = config(
        &node,
        "client",
        "hostname; for i in 1 2 3 4 5 6 7 8 9 10; do nc 127.0.0.1 7000 && break; sleep 0.2; done",
    );
    client.namespaces = shared;
    node.runtime
        .create("server", &node.images, &server)
        .expect("create");
    node.runtime.start("server").expect("start");
    node.runtime
        .create("client", &node.images, &client)
        .expect("create");
    node.runtime.start("client").expect("start");
    assert_eq!(wait_exit(&node.runtime, "client").exit_code, 0);
    let lines = log_contents(&client.log_path);
    assert!(lines.contains(&"stdout my-pod".to_string()), "{lines:?}");
    assert!(lines.contains(&"stdout served".to_string()), "{lines:?}");

    let mut sleeper = config(&node, "sleeper", "exec sleep 600");
    sleeper.namespaces.uts = Some(sandbox.uts());
    node.runtime
        .create("sleeper", &node.images, &sleeper)
        .expect("create");
    node.runtime.start("sleeper").expect("start");
    let t = Instant::now();
    node.runtime
        .stop("sleeper", Duration::from_millis(300))
        .expect("stop");
    let exited = wait_exit(&node.runtime, "sleeper");
    // PID 1 ignores SIGTERM without a handler, so SIGKILL after the grace period ends it.
    assert_eq!(exited.signal, Some(9));
    assert_eq!(exited.exit_code, 137);
    assert!(t.elapsed() >= Duration::from_millis(300));
    for id in ["server", "client", "sleeper"] {
        node.runtime.remove(id).expect("remove");
    }
    sandbox.remove();
}

#[test]
fn a_missing_executable_is_a_start_error() {
    let node = node();
    let mut cfg = config(&node, "bad", "");
    cfg.args = vec!["/no/such/binary".into()];
    node.runtime
        .create("bad", &node.images, &cfg)
        .expect("create");
    let err = node.runtime.start("bad").expect_err("must not start");
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    match node.runtime.get("bad").expect("get").state {
        State::Exited(None, exited) => assert!(exited.start_error.is_some()),
        other => panic!("unexpected state {other:?}"),
    }
    node.runtime.remove("bad").expect("remove");
}
