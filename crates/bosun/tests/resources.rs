//! Health and resources end to end: the shared scenarios of probes, requests and limits (OOM
//! kills, QoS, LimitRange, ResourceQuota) and autoscaling (`kubectl top`, HPAs), grpc probes
//! against a health server of the test's own, and the resource metrics API as kubectl reads it.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::Cluster;
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[test]
fn scenario_04_probes() {
    Cluster::start_node().scenario("04-probes");
}

#[test]
fn scenario_06_resources() {
    Cluster::start_node().scenario("06-resources");
}

#[test]
fn scenario_12_hpa() {
    Cluster::start_node().scenario("12-hpa");
}

#[test]
fn the_resource_metrics_api_reports_what_containers_use() {
    let c = Cluster::start_node();
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: pair, labels: {app: pair}}
spec:
  containers:
  - {name: burn, image: busybox:1.36, command: ["md5sum", "/dev/urandom"], resources: {limits: {cpu: 100m}}}
  - {name: hold, image: busybox:1.36, command: ["sh", "-c", "head -c 20m /dev/zero > /dev/shm/x; sleep 3600"]}
"#,
    );
    let groups = c.ok(&[
        "api-resources",
        "--api-group=metrics.k8s.io",
        "--no-headers",
    ]);
    assert!(
        groups.contains("PodMetrics") && groups.contains("NodeMetrics"),
        "{groups}"
    );
    let top = || {
        let out = c.kubectl(&[
            "top",
            "pod",
            "-l",
            "app=pair",
            "--containers",
            "--no-headers",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        c.wait_for(60, || top().lines().count() == 2),
        "no metrics for the pod's two containers: {}",
        top()
    );
    let rows: Vec<Vec<String>> = top()
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let row = |name: &str| rows.iter().find(|r| r[1] == name).cloned().expect(name);
    let millicores = |r: &[String]| r[2].trim_end_matches('m').parse::<u32>().expect("cpu");
    let mebibytes = |r: &[String]| r[3].trim_end_matches("Mi").parse::<u32>().expect("memory");
    // the CFS quota holds the burner to its limit; the shared memory file counts as its owner's
    assert!((70..=130).contains(&millicores(&row("burn"))), "{rows:?}");
    assert!(millicores(&row("hold")) < 20, "{rows:?}");
    assert!(mebibytes(&row("hold")) >= 20, "{rows:?}");
    let node = c.ok(&["top", "node", "--no-headers"]);
    assert!(
        node.split_whitespace()
            .nth(2)
            .is_some_and(|p| p.ends_with('%')),
        "{node}"
    );
    // one pod by name, and a missing one as metrics-server words it
    let one = c.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/pair",
    ]);
    assert!(one.contains(r#""window":"10s""#), "{one}");
    let missing = c.fails(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/none",
    ]);
    assert!(
        missing.contains(r#"podmetrics.metrics.k8s.io "default/none" not found"#),
        "{missing}"
    );
}

/// A gRPC health server (`grpc.health.v1.Health/Check`) on every address of this machine,
/// answering SERVING while `serving` holds and NOT_SERVING after; returns its port.
fn grpc_health_server(serving: Arc<AtomicBool>) -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let serving = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        // HealthCheckResponse { status }, framed; then grpc-status 0
                        let status = if serving.load(Ordering::SeqCst) { 1 } else { 2 };
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = vec![
                            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![
                                0, 0, 0, 0, 2, 0x08, status,
                            ]))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body = StreamBody::new(futures::stream::iter(frames));
                        async move {
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    port
}

#[test]
fn grpc_probes_check_health_and_restart_unhealthy_containers() {
    let serving = Arc::new(AtomicBool::new(true));
    let port = grpc_health_server(serving.clone());
    let c = Cluster::start_node();
    // on the node's network, so that the probe reaches the health server of this test
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: rpc}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox:1.36
    command: ["sleep", "3600"]
    readinessProbe: {{grpc: {{port: {port}}}, periodSeconds: 1}}
    livenessProbe: {{grpc: {{port: {port}}}, periodSeconds: 1, failureThreshold: 2}}
"#
    ));
    assert!(
        c.wait_for(60, || c.jp(
            "pod/rpc",
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ) == "True"),
        "the pod never became Ready on a SERVING health check"
    );
    serving.store(false, Ordering::SeqCst);
    assert!(
        c.wait_for(60, || c
            .jp("pod/rpc", "{.status.containerStatuses[0].restartCount}")
            .parse::<u32>()
            .is_ok_and(|n| n >= 1)),
        "a NOT_SERVING container was not restarted"
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=rpc",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains(
            r#"Unhealthy: Liveness probe failed: service unhealthy (responded with "NOT_SERVING")"#
        ),
        "{events}"
    );
    assert!(
        events.contains("Killing: Container app failed liveness probe, will be restarted"),
        "{events}"
    );
}

/// The node's available memory as kubelet's eviction signal reads it: capacity less the
/// working set of the root memory cgroup, in MiB.
fn memory_available_mib() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let total = field(&read("/proc/meminfo"), "MemTotal:") * 1024;
    let usage: u64 = read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
        .trim()
        .parse()
        .unwrap_or(0);
    let inactive = field(
        &read("/sys/fs/cgroup/memory/memory.stat"),
        "total_inactive_file ",
    );
    (total - usage.saturating_sub(inactive)) >> 20
}

#[test]
fn a_node_low_on_memory_evicts_the_pod_over_its_request() {
    // a threshold 700 MiB below what is available now: a pod holding 1400 MiB crosses it
    let threshold = memory_available_mib().saturating_sub(700);
    let c = Cluster::start_node_with(&[
        "--eviction-hard",
        &format!("memory.available<{threshold}Mi"),
    ]);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: calm}
spec:
  containers:
  - {name: c, image: busybox:1.36, command: ["sleep", "3600"], resources: {requests: {memory: 64Mi}}}
"#,
    );
    c.ok(&["wait", "--for=condition=Ready", "pod/calm", "--timeout=60s"]);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - {name: hog, image: busybox:1.36, command: ["sh", "-c", "dd if=/dev/zero bs=1400M count=1 | sleep 3600"]}
"#,
    );
    assert!(
        c.wait_for(90, || c.jp("pod/hog", "{.status.reason}") == "Evicted"),
        "the hog was not evicted: {}",
        c.ok(&["get", "pod", "hog", "-o", "yaml"])
    );
    assert_eq!(c.jp("pod/hog", "{.status.phase}"), "Failed");
    let message = c.jp("pod/hog", "{.status.message}");
    assert!(
        message.starts_with(&format!(
            "The node was low on resource: memory. Threshold quantity: {threshold}Mi, available: "
        )) && message.contains("Container hog was using ")
            && message.ends_with("request is 0, has larger consumption of memory."),
        "{message}"
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=hog,reason=Evicted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("The node was low on resource: memory."),
        "{events}"
    );
    // the pod within its request stays
    assert_eq!(c.jp("pod/calm", "{.status.phase}"), "Running");
    assert_eq!(
        c.jp(
            "pod/hog",
            "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"
        ),
        "TerminationByKubelet"
    );
}
