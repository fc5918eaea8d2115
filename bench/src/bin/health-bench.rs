//! The health and resources benchmark of issue 5: what probing costs the node agent (the
//! server's CPU with 100 running pods, first unprobed, then each with an httpGet readiness probe
//! every second; target ≤ 5% of one core for the probes), and how long the resource metrics
//! take to read (`kubectl top pod` and the metrics API's list over those 100 pods; target
//! ≤ 200 ms). Run as root: `cargo build --release -p bosun -p bench &&
//! ./target/release/health-bench` (needs ../shared/images/busybox_image.py and busybox-static).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bench::{Server, percentile_ms};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

const NODE: &str = "bench-node";
const PODS: usize = 100;
/// How long CPU use is measured over.
const MEASURE: Duration = Duration::from_secs(30);

fn pod(name: &str, probed: bool) -> Result<Pod> {
    let mut container = serde_json::json!({
        "name": "web", "image": "busybox:1.36",
        "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"],
    });
    if probed {
        container["readinessProbe"] = serde_json::json!({
            "httpGet": {"path": "/hostname", "port": 8080}, "periodSeconds": 1
        });
    }
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "health"}},
        "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 0, "containers": [container]}
    }))?)
}

/// The CPU time a process has used, user and system.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The server's CPU use, in percent of one core, over [`MEASURE`].
async fn cpu_percent(server: &Server) -> f64 {
    let (t0, c0) = (Instant::now(), cpu_time(server.child.id()));
    tokio::time::sleep(MEASURE).await;
    let used = cpu_time(server.child.id()) - c0;
    used.as_secs_f64() * 100.0 / t0.elapsed().as_secs_f64()
}

async fn run_pods(api: &Api<Pod>, probed: bool) -> Result<()> {
    for i in 0..PODS {
        api.create(&PostParams::default(), &pod(&format!("web-{i}"), probed)?)
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let pods = api
            .list(&ListParams::default().labels("bench=health"))
            .await?;
        let ready = pods
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == PODS {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {PODS} pods became Ready");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn delete_all(api: &Api<Pod>, data_dir: &std::path::Path) -> Result<()> {
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=health"),
    )
    .await?;
    for _ in 0..1200 {
        let left = std::fs::read_dir(data_dir.join("agent/containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("pods were not torn down within 120 s")
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    bench::import_busybox(dir.path())?;
    let server = Server::start_in(dir, &["--node-name", NODE]).await?;
    let client = server.client().await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    tokio::time::sleep(Duration::from_secs(3)).await;

    run_pods(&api, false).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let unprobed = cpu_percent(&server).await;
    println!("server CPU, {PODS} pods, no probes:            {unprobed:>6.2} % of a core");

    // the metrics API over 100 pods, read as kubectl top and as a client
    let kubeconfig = server.path().join("admin.kubeconfig");
    let top = || {
        Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["top", "pod", "--no-headers"])
            .output()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while String::from_utf8_lossy(&top()?.stdout).lines().count() < PODS {
        if Instant::now() > deadline {
            bail!("kubectl top never showed all {PODS} pods");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut with_kubectl = Vec::new();
    let mut with_client = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        top()?;
        with_kubectl.push(t.elapsed());
        let t = Instant::now();
        client
            .request_text(
                http::Request::get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods")
                    .body(Vec::new())?,
            )
            .await?;
        with_client.push(t.elapsed());
    }
    println!(
        "kubectl top pod over {PODS} pods:               p50 {:>5.0} ms   p99 {:>5.0} ms",
        percentile_ms(&mut with_kubectl, 50.0),
        percentile_ms(&mut with_kubectl, 99.0)
    );
    println!(
        "metrics API list of {PODS} pods (one client):   p50 {:>5.0} ms   p99 {:>5.0} ms",
        percentile_ms(&mut with_client, 50.0),
        percentile_ms(&mut with_client, 99.0)
    );
    delete_all(&api, server.path()).await?;

    run_pods(&api, true).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let probed = cpu_percent(&server).await;
    println!("server CPU, {PODS} pods probed every second:   {probed:>6.2} % of a core");
    println!(
        "probing {PODS} pods every second costs:         {:>6.2} % of a core",
        probed - unprobed
    );
    delete_all(&api, server.path()).await?;
    Ok(())
}
