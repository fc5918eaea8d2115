//! End-to-end tests of joining a machine to a cluster: `bosun agent` with a join token gets a
//! node identity through certificate requests, runs pods, and a revoked token joins no more.

mod common;

use std::process::{Command, Stdio};

use common::{Cluster, busybox_archives, force_clean_node, node_lock};

/// `bosun agent` for the cluster `c` with `token`, on the data dir `dir`, as node `name`.
fn agent(c: &Cluster, token: &str, dir: &std::path::Path, name: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bosun"));
    cmd.args([
        "agent",
        "--server",
        &c.url(),
        "--token",
        token,
        "--data-dir",
    ])
    .arg(dir)
    .args(["--node-name", name]);
    cmd
}

/// `bosun token create --ttl TTL` on the server of `c`: the token it prints.
fn create_token(c: &Cluster, ttl: &str) -> String {
    let created = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["token", "create", "--ttl", ttl, "--data-dir"])
        .arg(c.dir.path())
        .output()
        .expect("bosun token create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(token.starts_with("B10"), "{token}");
    token
}

#[test]
fn a_machine_joins_with_a_token_until_it_is_revoked() {
    let lock = node_lock();
    let c = Cluster::start();
    // the server keeps no join token on disk; an admin makes one when a machine joins
    assert!(!c.dir.path().join("join-token").exists());
    let token = create_token(&c, "24h");
    let token = token.as_str();
    let node_dir = tempfile::tempdir().expect("dir");
    let imported = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["images", "--data-dir"])
        .arg(node_dir.path())
        .arg("import")
        .arg(busybox_archives(&node_dir.path().join("archives")))
        .output()
        .expect("import");
    assert!(imported.status.success());
    // another node holds the cluster CIDR's first range
    c.apply(
        "apiVersion: v1\nkind: Node\nmetadata: {name: elsewhere}\nspec: {podCIDR: 10.42.0.0/24}\n",
    );
    let mut joined = agent(&c, token, node_dir.path(), "joined")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bosun agent");

    let ready = c.wait_for(60, || {
        c.kubectl(&[
            "get",
            "node",
            "joined",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .stdout
            == b"True"
    });
    assert!(ready, "the joined node did not become Ready");
    // the cluster gave it the next free range
    assert_eq!(
        c.jp("node/joined", "{.spec.podCIDRs}"),
        "[\"10.42.1.0/24\"]"
    );
    c.ok(&["delete", "node", "elsewhere"]);
    // its identity came from certificate requests: the client one asked with the token
    let id = token.rsplit("::").next().and_then(|t| t.split('.').next());
    let csrs = c.ok(&["get", "csr", "-o", "jsonpath={range .items[*]}{.spec.signerName} {.spec.username} {.status.conditions[0].type}{\"\\n\"}{end}"]);
    assert!(
        csrs.contains(&format!(
            "kubernetes.io/kube-apiserver-client-kubelet system:bootstrap:{} Approved",
            id.expect("token id")
        )),
        "{csrs}"
    );
    assert!(
        csrs.contains("kubernetes.io/kubelet-serving system:node:joined Approved"),
        "{csrs}"
    );
    let kubeconfig = node_dir.path().join("agent/pki");
    let whoami = Command::new(common::kubectl_path())
        .args(["--kubeconfig=/dev/null", &format!("--server={}", c.url())])
        .arg(format!(
            "--certificate-authority={}",
            kubeconfig.join("ca.crt").display()
        ))
        .arg(format!(
            "--client-certificate={}",
            kubeconfig.join("client.crt").display()
        ))
        .arg(format!(
            "--client-key={}",
            kubeconfig.join("client.key").display()
        ))
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout),
        "system:node:joined"
    );

    // pods run there, and the API server reaches its node API for logs
    c.ok(&[
        "run",
        "hello",
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hello from the joined node; sleep 3600",
    ]);
    let running = c.wait_for(60, || {
        c.jp("pod/hello", "{.status.phase}") == "Running"
            && c.kubectl(&["logs", "hello"]).stdout == b"hello from the joined node\n"
    });
    assert!(running, "the pod did not run on the joined node");
    assert_eq!(c.jp("pod/hello", "{.spec.nodeName}"), "joined");
    assert!(c.jp("pod/hello", "{.status.podIP}").starts_with("10.42.1."));

    // a revoked token joins no more
    let id = id.expect("token id").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["token", "delete", &id, "--data-dir"])
        .arg(c.dir.path())
        .output()
        .expect("bosun token delete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = tempfile::tempdir().expect("dir");
    let refused = agent(&c, token, other.path(), "latecomer")
        .output()
        .expect("bosun agent");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // and a new one can be made
    let fresh = create_token(&c, "1h");
    assert!(fresh != token, "{fresh}");

    let _ = c.kubectl(&[
        "delete",
        "pod",
        "hello",
        "--grace-period=1",
        "--timeout=30s",
    ]);
    let _ = Command::new("kill").arg(joined.id().to_string()).status();
    let _ = joined.wait();
    force_clean_node(node_dir.path());
    drop(lock);
}
