//! Health and resources end to end: the shared scenarios of probes, requests and limits (OOM
//! kills, QoS, LimitRange, ResourceQuota) and autoscaling (`kubectl top`, HPAs), and the
//! resource metrics API as kubectl reads it.

mod common;

use common::Cluster;

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
