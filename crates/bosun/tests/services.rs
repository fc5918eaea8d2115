//! End-to-end tests of Service networking: addresses and node ports, endpoints, the node's
//! proxy rules and the cluster DNS, driven with the real kubectl against a real `bosun server`.

mod common;

use common::Cluster;

#[test]
fn scenario_08_services() {
    Cluster::start_node().scenario("08-services");
}

#[test]
fn services_get_cluster_ips_and_node_ports_as_upstream() {
    let c = Cluster::start();
    assert_eq!(c.jp("service/kubernetes", "{.spec.clusterIP}"), "10.43.0.1");
    assert_eq!(
        c.jp("endpoints/kubernetes", "{.subsets[0].ports[0].name}"),
        "https"
    );

    c.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = c.jp("service/web", "{.spec.clusterIP}");
    assert!(ip.starts_with("10.43."), "clusterIP {ip}");
    assert_eq!(c.jp("service/web", "{.spec.clusterIPs[0]}"), ip);
    let row = c.ok(&["get", "service", "web", "--no-headers"]);
    assert!(
        row.split_whitespace().collect::<Vec<_>>()[..5]
            == ["web", "ClusterIP", &ip, "<none>", "80/TCP"],
        "{row}"
    );

    let taken = c.kubectl_stdin(
        &["create", "-f", "-"],
        &format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"twin\"}},\"spec\":{{\"clusterIP\":\"{ip}\",\"ports\":[{{\"port\":80}}]}}}}"
        ),
    );
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(
        err.contains(&format!(
            "spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"
        )) || err.contains("provided IP is already allocated"),
        "{err}"
    );
    let outside = c.kubectl_stdin(
        &["create", "-f", "-"],
        "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"far\"},\"spec\":{\"clusterIP\":\"10.96.0.5\",\"ports\":[{\"port\":80}]}}",
    );
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains(
            "the provided IP (10.96.0.5) is not in the valid range. The range of valid IPs is 10.43.0.0/16"
        ),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );

    c.ok(&[
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert_eq!(c.jp("service/np", "{.spec.ports[0].nodePort}"), "30080");
    assert_eq!(
        c.jp("service/np", "{.spec.externalTrafficPolicy}"),
        "Cluster"
    );
    let again = c.fails(&[
        "create",
        "service",
        "nodeport",
        "np2",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert!(
        again.contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{again}"
    );
    let low = c.fails(&[
        "create",
        "service",
        "nodeport",
        "np3",
        "--tcp=80:8080",
        "--node-port=80",
    ]);
    assert!(
        low.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{low}"
    );
    c.ok(&["create", "service", "nodeport", "auto", "--tcp=80:8080"]);
    let auto: u32 = c
        .jp("service/auto", "{.spec.ports[0].nodePort}")
        .parse()
        .expect("a node port");
    assert!((30000..=32767).contains(&auto), "nodePort {auto}");

    // a change of type drops the node port; a replace that leaves the address out keeps it
    let np_ip = c.jp("service/np", "{.spec.clusterIP}");
    c.ok(&[
        "patch",
        "service",
        "np",
        "-p",
        "{\"spec\":{\"type\":\"ClusterIP\"}}",
    ]);
    assert_eq!(c.jp("service/np", "{.spec.ports[0].nodePort}"), "");
    assert_eq!(c.jp("service/np", "{.spec.clusterIP}"), np_ip);
    let replaced = c.kubectl_stdin(
        &["replace", "-f", "-"],
        "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"web\"},\"spec\":{\"ports\":[{\"port\":81}]}}",
    );
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert_eq!(c.jp("service/web", "{.spec.clusterIP}"), ip);
    let moved = c.fails(&[
        "patch",
        "service",
        "web",
        "-p",
        "{\"spec\":{\"clusterIP\":\"10.43.9.9\"}}",
    ]);
    assert!(moved.contains("field is immutable"), "{moved}");

    c.ok(&[
        "create",
        "service",
        "externalname",
        "db",
        "--external-name=db.example.com",
    ]);
    assert_eq!(c.jp("service/db", "{.spec.clusterIP}"), "");
    let row = c.ok(&["get", "service", "db", "--no-headers"]);
    assert!(
        row.contains("ExternalName") && row.contains("db.example.com"),
        "{row}"
    );
    c.ok(&["create", "service", "clusterip", "hl", "--clusterip=None"]);
    assert_eq!(c.jp("service/hl", "{.spec.clusterIP}"), "None");

    // deleting a Service frees its address for another
    c.ok(&["delete", "service", "web"]);
    let reuse = c.kubectl_stdin(
        &["create", "-f", "-"],
        &format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"twin\"}},\"spec\":{{\"clusterIP\":\"{ip}\",\"ports\":[{{\"port\":80}}]}}}}"
        ),
    );
    assert!(
        reuse.status.success(),
        "{}",
        String::from_utf8_lossy(&reuse.stderr)
    );
}

#[test]
fn a_pod_failing_readiness_leaves_the_endpoints_and_gets_no_traffic() {
    let c = Cluster::start_node();
    for name in ["r1", "r2"] {
        c.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: r}}}}
spec:
  containers:
  - name: web
    image: busybox:1.36
    command: [sh, -c, 'mkdir -p /www; hostname > /www/index.html; touch /tmp/ready; exec httpd -f -p 8080 -h /www']
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
"#
        ));
    }
    c.ok(&["create", "service", "clusterip", "r", "--tcp=80:8080"]);
    c.ok(&["set", "selector", "service", "r", "app=r"]);
    let ready_ips = || {
        c.jp("endpoints/r", "{.subsets[*].addresses[*].ip}")
            .split_whitespace()
            .count()
    };
    assert!(c.wait_for(90, || ready_ips() == 2), "two ready endpoints");
    let ip = c.jp("service/r", "{.spec.clusterIP}");
    let get = || {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "3", &format!("http://{ip}/")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let seen: std::collections::BTreeSet<String> = (0..30).map(|_| get()).collect();
    assert_eq!(
        seen,
        ["r1", "r2"].iter().map(|s| s.to_string()).collect(),
        "load spread over both pods"
    );

    c.ok(&["exec", "r1", "--", "rm", "/tmp/ready"]);
    let r1_ip = c.jp("pod/r1", "{.status.podIP}");
    assert!(
        c.wait_for(30, || c
            .jp("endpoints/r", "{.subsets[*].notReadyAddresses[*].ip}")
            == r1_ip),
        "r1 moves to notReadyAddresses"
    );
    assert_eq!(
        c.jp(
            "endpointslices",
            "{.items[?(@.metadata.labels.kubernetes\\.io/service-name==\"r\")].endpoints[?(@.targetRef.name==\"r1\")].conditions.ready}"
        ),
        "false"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..20 {
        assert_eq!(get(), "r2", "traffic only to the ready pod");
    }
    c.ok(&["exec", "r1", "--", "touch", "/tmp/ready"]);
    assert!(
        c.wait_for(30, || ready_ips() == 2),
        "r1 back in the endpoints"
    );
}

#[test]
fn load_balancers_and_node_ports_answer_on_the_node_and_localhost() {
    let c = Cluster::start_node();
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www",
    ]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    c.ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web-lb",
        "--type=LoadBalancer",
        "--port=8088",
        "--target-port=8080",
    ]);
    let node_ip = c.jp(
        "nodes",
        "{.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
    );
    assert!(
        c.wait_for(30, || c
            .jp("service/web-lb", "{.status.loadBalancer.ingress[0].ip}")
            == node_ip),
        "the load balancer gets the node's address"
    );
    let row = c.ok(&["get", "service", "web-lb", "--no-headers"]);
    assert!(row.contains(&node_ip), "EXTERNAL-IP column: {row}");
    let np = c.jp("service/web-lb", "{.spec.ports[0].nodePort}");
    let answers = |url: String| {
        c.wait_for(20, || {
            let out = std::process::Command::new("curl")
                .args(["-s", "--max-time", "2", &url])
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).starts_with("web-")
        })
    };
    for url in [
        "http://127.0.0.1:8088/".to_string(),
        format!("http://{node_ip}:8088/"),
        format!("http://127.0.0.1:{np}/"),
        format!("http://{node_ip}:{np}/"),
    ] {
        assert!(answers(url.clone()), "{url} answers");
    }
    // a type change takes the addresses away
    c.ok(&[
        "patch",
        "service",
        "web-lb",
        "-p",
        "{\"spec\":{\"type\":\"ClusterIP\"}}",
    ]);
    assert!(
        c.wait_for(30, || c
            .jp("service/web-lb", "{.status.loadBalancer.ingress}")
            .is_empty()),
        "addresses gone with the type"
    );

    // ClientIP affinity keeps a client on one pod
    c.ok(&[
        "patch",
        "service",
        "web-lb",
        "-p",
        "{\"spec\":{\"sessionAffinity\":\"ClientIP\"}}",
    ]);
    assert_eq!(
        c.jp(
            "service/web-lb",
            "{.spec.sessionAffinityConfig.clientIP.timeoutSeconds}"
        ),
        "10800"
    );
    let ip = c.jp("service/web-lb", "{.spec.clusterIP}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let seen: std::collections::BTreeSet<String> = (0..15)
        .map(|_| {
            let out = std::process::Command::new("curl")
                .args(["-s", "--max-time", "2", &format!("http://{ip}:8088/")])
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert_eq!(seen.len(), 1, "one pod for one client: {seen:?}");
}

#[test]
fn network_policies_deny_and_allow() {
    let c = Cluster::start_node();
    let pod = |name: &str, command: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  containers:\n  - {{name: c, image: busybox:1.36, command: [sh, -c, '{command}']}}\n"
        )
    };
    c.apply(&pod(
        "db",
        "mkdir -p /www; echo db > /www/index.html; exec httpd -f -p 8080 -h /www",
    ));
    c.apply(&pod("web", "exec sleep 3600"));
    c.apply(&pod("other", "exec sleep 3600"));
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/db",
        "pod/web",
        "pod/other",
        "--timeout=90s",
    ]);
    let db = c.jp("pod/db", "{.status.podIP}");
    let reaches = |from: &str| {
        c.kubectl(&[
            "exec",
            from,
            "--",
            "timeout",
            "3",
            "wget",
            "-qO-",
            &format!("http://{db}:8080/"),
        ])
        .stdout
        .starts_with(b"db")
    };
    assert!(reaches("web") && reaches("other"), "open before any policy");

    c.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-deny}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n",
    );
    assert!(c.wait_for(10, || !reaches("web")), "deny-all shuts web out");
    assert!(!reaches("other"), "deny-all shuts other out");
    // the node itself still reaches the pod (as kubelet's probes must)
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "3", &format!("http://{db}:8080/")])
        .output()
        .expect("curl");
    assert!(out.stdout.starts_with(b"db"), "the node reaches the pod");

    c.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-web}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    );
    assert!(c.wait_for(10, || reaches("web")), "web allowed");
    assert!(!reaches("other"), "other still denied");
    // egress: web may only talk to an unrelated block now
    c.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-out}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  egress:\n  - to: [{ipBlock: {cidr: 10.255.0.0/16}}]\n",
    );
    assert!(
        c.wait_for(10, || !reaches("web")),
        "egress isolation stops web"
    );
    c.ok(&[
        "delete",
        "networkpolicy",
        "db-deny",
        "db-from-web",
        "web-out",
    ]);
    assert!(
        c.wait_for(10, || reaches("other")),
        "open again without policies"
    );
    assert!(reaches("web"), "web open again");
}

#[test]
fn cleanup_removes_the_rules_a_crashed_agent_left() {
    let mut c = Cluster::start_node();
    let table = || {
        std::process::Command::new("nft")
            .args(["list", "table", "ip", "bosun"])
            .output()
            .expect("nft")
            .status
            .success()
    };
    assert!(c.wait_for(30, table), "the node programs its Service rules");
    let _ = c.child.kill();
    let _ = c.child.wait();
    assert!(table(), "a killed agent cannot remove its rules");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["agent", "--cleanup"])
        .output()
        .expect("bosun agent --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!table(), "the leftovers are gone");
    // the node comes back for the test's own cleanup
    c.restart_after_kill();
}

#[test]
fn ingress_routes_by_host_and_path_with_tls() {
    let c = Cluster::start_node();
    assert_eq!(
        c.jp(
            "ingressclass/bosun",
            "{.metadata.annotations.ingressclass\\.kubernetes\\.io/is-default-class}"
        ),
        "true"
    );
    for (name, replicas) in [("alpaca", "2"), ("bandicoot", "1")] {
        c.ok(&[
            "create",
            "deployment",
            name,
            "--image=busybox:1.36",
            &format!("--replicas={replicas}"),
            "--port=8080",
            "--",
            "sh",
            "-c",
            &format!(
                "mkdir -p /www/a; echo {name} $(hostname) | tee /www/index.html > /www/a/index.html; exec httpd -f -p 8080 -h /www"
            ),
        ]);
        c.ok(&["expose", "deployment", name, "--port=8080"]);
    }
    for name in ["alpaca", "bandicoot"] {
        c.ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=90s",
        ]);
    }
    // the class is the default one: these Ingresses name none (seed 002, chapter 8)
    c.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: host-ingress}
spec:
  rules:
  - host: alpaca.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: alpaca, port: {number: 8080}}}}
  - host: "*.bandicoot.example.com"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: bandicoot, port: {number: 8080}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: path-ingress}
spec:
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: bandicoot, port: {number: 8080}}}}
      - {path: /a, pathType: Prefix, backend: {service: {name: alpaca, port: {number: 8080}}}}
"#,
    );
    assert_eq!(
        c.jp("ingress/host-ingress", "{.spec.ingressClassName}"),
        "bosun"
    );
    let node_ip = c.jp(
        "nodes",
        "{.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
    );
    assert!(
        c.wait_for(30, || c.jp(
            "ingress/path-ingress",
            "{.status.loadBalancer.ingress[0].ip}"
        ) == node_ip),
        "the ingress shows where it is served"
    );
    let row = c.ok(&["get", "ingress", "host-ingress", "--no-headers"]);
    assert!(
        row.split_whitespace().collect::<Vec<_>>()[..5]
            == [
                "host-ingress",
                "bosun",
                "alpaca.example.com,*.bandicoot.example.com",
                &node_ip,
                "80"
            ],
        "{row}"
    );
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "3"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let get = |host: &str, url: &str| curl(&["-H", &format!("Host: {host}"), url]);
    assert!(
        c.wait_for(20, || get("alpaca.example.com", "http://127.0.0.1/")
            .starts_with("alpaca ")),
        "by host, on localhost"
    );
    // every node address serves, and requests spread over the ready endpoints
    let pods: std::collections::BTreeSet<String> = (0..12)
        .map(|_| get("alpaca.example.com", &format!("http://{node_ip}/")))
        .collect();
    assert_eq!(pods.len(), 2, "both alpaca pods answer: {pods:?}");
    assert!(get("x.bandicoot.example.com", "http://127.0.0.1/").starts_with("bandicoot "));
    // without a matching host, the host-less rules: the longest prefix wins
    assert!(get("other.example.com", "http://127.0.0.1/a/").starts_with("alpaca "));
    assert!(get("other.example.com", "http://127.0.0.1/").starts_with("bandicoot "));
    assert!(get("other.example.com", "http://127.0.0.1/ab").contains("404"));

    // TLS from a kubernetes.io/tls Secret, chosen by SNI
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=secure.example.com"])
        .args(["-addext", "subjectAltName=DNS:secure.example.com"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    c.ok(&[
        "create",
        "secret",
        "tls",
        "secure-tls",
        &format!("--cert={}", crt.display()),
        &format!("--key={}", key.display()),
    ]);
    c.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure}
spec:
  tls:
  - {hosts: [secure.example.com], secretName: secure-tls}
  rules:
  - host: secure.example.com
    http:
      paths:
      - {path: /, pathType: Exact, backend: {service: {name: alpaca, port: {number: 8080}}}}
"#,
    );
    let resolve = format!("secure.example.com:443:{node_ip}");
    let https = || {
        curl(&[
            "--cacert",
            &crt.display().to_string(),
            "--resolve",
            &resolve,
            "https://secure.example.com/",
        ])
    };
    assert!(
        c.wait_for(20, || https().starts_with("alpaca ")),
        "HTTPS with the Secret's certificate"
    );
    let row = c.ok(&["get", "ingress", "secure", "--no-headers"]);
    assert!(row.contains("80, 443"), "{row}");

    // a backend with no ready endpoint answers 503 at once
    c.ok(&["scale", "deployment", "bandicoot", "--replicas=0"]);
    assert!(
        c.wait_for(30, || curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1/"
        ]) == "503"),
        "no endpoints, 503"
    );
    // a LoadBalancer Service asking for port 80 waits: the ingress holds it, as in k3s
    c.ok(&[
        "expose",
        "deployment",
        "alpaca",
        "--name=alpaca-lb",
        "--type=LoadBalancer",
        "--port=80",
        "--target-port=8080",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        c.jp("service/alpaca-lb", "{.status.loadBalancer.ingress}"),
        "",
        "port 80 stays the ingress's"
    );
    assert!(get("alpaca.example.com", "http://127.0.0.1/").starts_with("alpaca "));
}
