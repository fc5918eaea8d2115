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

/// A second machine made of a network namespace: a veth pair joins it to this one on
/// 192.168.251.0/24 (this side .1, the namespace .2, its default route through .1). Removed,
/// with whatever the agent in it ran, when dropped.
struct PeerMachine {
    agent: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

const PEER_NETNS: &str = "bosun-test-peer";

impl PeerMachine {
    fn new() -> Self {
        Self::remove_links();
        let n = PEER_NETNS;
        for args in [
            format!("netns add {n}"),
            format!("link add bsn-peer0 type veth peer name bsn-peer1 netns {n}"),
            "addr add 192.168.251.1/24 dev bsn-peer0".into(),
            "link set bsn-peer0 up".into(),
            format!("-n {n} addr add 192.168.251.2/24 dev bsn-peer1"),
            format!("-n {n} link set bsn-peer1 up"),
            format!("-n {n} link set lo up"),
            format!("-n {n} route add default via 192.168.251.1"),
        ] {
            let made = Command::new("ip")
                .args(args.split(' '))
                .status()
                .expect("ip");
            assert!(made.success(), "making the peer machine: ip {args}");
        }
        Self {
            agent: None,
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    /// Starts `bosun agent` inside the namespace (its network only: it shares this machine's
    /// mounts and cgroups, as a second agent on one machine would).
    fn join(&mut self, c: &Cluster, token: &str) {
        let imported = Command::new(env!("CARGO_BIN_EXE_bosun"))
            .args(["images", "--data-dir"])
            .arg(self.dir.path())
            .arg("import")
            .arg(busybox_archives(&self.dir.path().join("archives")))
            .output()
            .expect("import");
        assert!(imported.status.success());
        let port = c.url().rsplit(':').next().expect("port").to_string();
        let agent = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{PEER_NETNS}"))
            .arg(env!("CARGO_BIN_EXE_bosun"))
            .args([
                "agent",
                "--server",
                &format!("https://192.168.251.1:{port}"),
            ])
            .args(["--token", token, "--node-name", "peer", "--data-dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bosun agent");
        self.agent = Some(agent);
    }
}

impl PeerMachine {
    /// Removes the namespace and the veth pair (with the routes through it), if there.
    fn remove_links() {
        let _ = Command::new("ip")
            .args(["netns", "del", PEER_NETNS])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", "bsn-peer0"])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PeerMachine {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        force_clean_node(self.dir.path());
        Self::remove_links();
    }
}

#[test]
fn pods_on_different_nodes_reach_each_other_by_pod_ip_and_through_services() {
    let c = Cluster::start_node_with(&["--node-ip", "192.168.251.1", "--tls-san", "192.168.251.1"]);
    let mut peer = PeerMachine::new();
    peer.join(&c, &create_token(&c, "1h"));
    assert!(
        c.wait_for(60, || c
            .kubectl(&[
                "get",
                "node",
                "peer",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdout
            == b"True"),
        "the peer node did not become Ready"
    );
    assert_eq!(
        c.jp(
            "node/peer",
            "{.status.addresses[?(@.type==\"InternalIP\")].address}"
        ),
        "192.168.251.2"
    );
    // each web server answers with its node's name, and with the client's address at
    // /cgi-bin/ip
    let serve = |name: &str| {
        format!(
            "mkdir -p /www/cgi-bin; echo {name} > /www/index.html; \
             printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip; \
             chmod +x /www/cgi-bin/ip; exec httpd -f -p 8080 -h /www"
        )
    };
    for (pod, node) in [("web-here", common::NODE), ("web-peer", "peer")] {
        c.ok(&[
            "run",
            pod,
            "--image=busybox:1.36",
            &format!("--labels=app=web,pod={pod}"),
            &format!("--overrides={{\"spec\":{{\"nodeName\":\"{node}\"}}}}"),
            "--",
            "sh",
            "-c",
            &serve(node),
        ]);
    }
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/web-here",
        "pod/web-peer",
        "--timeout=90s",
    ]);
    let here = c.jp("pod/web-here", "{.status.podIP}");
    let there = c.jp("pod/web-peer", "{.status.podIP}");
    assert!(there.starts_with("10.42.1."), "{there}");
    let fetch = |pod: &str, url: &str| c.ok(&["exec", pod, "--", "wget", "-qO-", url]);
    // by pod IP, both ways, and the server sees the client's own address (no masquerade)
    assert_eq!(
        fetch("web-peer", &format!("http://{here}:8080/")).trim(),
        common::NODE
    );
    assert_eq!(
        fetch("web-here", &format!("http://{there}:8080/")).trim(),
        "peer"
    );
    let seen = fetch("web-here", &format!("http://{there}:8080/cgi-bin/ip"));
    assert!(
        seen.contains(&here),
        "the peer's server saw {seen}, not {here}"
    );

    // a Service spreads over both nodes, from either node
    c.ok(&[
        "expose",
        "pod",
        "web-here",
        "--name=web",
        "--port=80",
        "--target-port=8080",
        "--selector=app=web",
    ]);
    assert!(
        c.wait_for(20, || c
            .jp("endpoints/web", "{.subsets[0].addresses[*].ip}")
            .split(' ')
            .count()
            == 2),
        "both pods in the endpoints"
    );
    for client in ["web-here", "web-peer"] {
        let answers = c.ok(&[
            "exec",
            client,
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do wget -qO- http://web.default.svc.cluster.local/; done",
        ]);
        let nodes: std::collections::BTreeSet<&str> = answers.lines().collect();
        assert_eq!(
            nodes.len(),
            2,
            "{client} reached both nodes' pods: {answers}"
        );
    }
    // a pod reaches itself through its Service (hairpin)
    c.ok(&[
        "expose",
        "pod",
        "web-peer",
        "--name=peer-only",
        "--port=80",
        "--target-port=8080",
        "--selector=pod=web-peer",
    ]);
    assert_eq!(fetch("web-peer", "http://peer-only/").trim(), "peer");

    // the Ingress is served on the peer's address too
    c.ok(&[
        "create",
        "ingress",
        "web",
        "--rule=web.example.com/*=web:80",
    ]);
    assert!(
        c.wait_for(30, || {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "--max-time",
                    "3",
                    "-H",
                    "Host: web.example.com",
                    "http://192.168.251.2/",
                ])
                .output()
                .expect("curl");
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            body == "peer" || body == common::NODE
        }),
        "the ingress answers on the peer node's address"
    );

    c.ok(&[
        "delete",
        "pod",
        "web-peer",
        "--grace-period=1",
        "--timeout=30s",
    ]);
}
