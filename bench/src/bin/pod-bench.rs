//! The pod benchmark of issue 3: pod start latency with the image present (create call to the
//! Ready condition, no probes), 20 pods one at a time and 30 at once, and the memory the node
//! agent costs: idle, and with 30 running containers (supervisors included).
//! Run as root: `cargo build --release -p bosun -p bench && ./target/release/pod-bench`
//! (needs ../shared/images/busybox_image.py and busybox-static).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bench::{Server, percentile_ms, pss_mib, rss_mib};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};

const NODE: &str = "bench-node";

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"]}]
        }
    }))?)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates pods and returns, for each, the time from its create call to Ready.
async fn start_pods(api: &Api<Pod>, names: &[String]) -> Result<Vec<Duration>> {
    let mut watch = api
        .watch(&WatchParams::default().labels("bench=pods"), "0")
        .await?
        .boxed();
    let mut created = std::collections::HashMap::new();
    for name in names {
        created.insert(name.clone(), Instant::now());
        api.create(&PostParams::default(), &pod(name)?).await?;
    }
    let mut out = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < names.len() {
        let ev = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .context("pods did not become Ready within 60 s")?;
        match ev {
            Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) if is_ready(&p) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some(t) = created.get(&name) {
                    out.entry(name).or_insert_with(|| t.elapsed());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("watch failed: {e}"),
            None => bail!("watch ended"),
        }
    }
    Ok(out.into_values().collect())
}

/// Deletes the benchmark's pods and waits until the agent has torn them down (so that one phase
/// does not pay for the last, and nothing is left running at the end).
async fn delete_all(api: &Api<Pod>, data_dir: &std::path::Path) -> Result<()> {
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=pods"),
    )
    .await?;
    let containers = data_dir.join("agent/containers");
    for _ in 0..600 {
        let listed = api
            .list(&ListParams::default().labels("bench=pods"))
            .await?;
        let left = std::fs::read_dir(&containers)
            .map(|d| d.count())
            .unwrap_or(0);
        if listed.items.is_empty() && left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("pods were not deleted and torn down within 60 s")
}

fn shim_pids(dir: &std::path::Path) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("agent/containers")) {
        for e in entries.flatten() {
            let started =
                std::fs::read_to_string(e.path().join("started.json")).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&started)
                && let Some(pid) = v["shimPid"].as_u64()
            {
                out.push(pid as u32);
            }
        }
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    bench::import_busybox(dir.path())?;

    let control_plane = Server::start().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = rss_mib(control_plane.child.id());
    drop(control_plane);

    let server = Server::start_in(dir, &["--node-name", NODE]).await?;
    let api: Api<Pod> = Api::namespaced(server.client().await?, "default");
    for _ in 0..100 {
        if server
            .client()
            .await?
            .request_text(http::Request::get(format!("/api/v1/nodes/{NODE}")).body(Vec::new())?)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = server.rss_mib();
    println!("server RSS, control plane only:     {base:>8.1} MiB");
    println!(
        "server RSS with the agent, idle:    {idle:>8.1} MiB  (agent overhead {:.1} MiB)",
        idle - base
    );

    // Warm-up: the first pod pays for the bridge and the page cache.
    start_pods(&api, &["warmup".to_string()]).await?;
    delete_all(&api, server.path()).await?;

    let mut one_by_one = Vec::new();
    for i in 0..20 {
        one_by_one.extend(start_pods(&api, &[format!("seq-{i}")]).await?);
    }
    let order: Vec<String> = one_by_one
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    println!("  in order (ms): {}", order.join(" "));
    println!(
        "start latency, 20 one at a time:    p50 {:>6.0} ms   p99 {:>6.0} ms",
        percentile_ms(&mut one_by_one, 50.0),
        percentile_ms(&mut one_by_one, 99.0)
    );
    delete_all(&api, server.path()).await?;

    let names: Vec<String> = (0..30).map(|i| format!("par-{i}")).collect();
    let t = Instant::now();
    let mut together = start_pods(&api, &names).await?;
    let all = t.elapsed();
    println!(
        "30 at once: all Ready in            {:>8.0} ms   (p50 {:.0} ms, p99 {:.0} ms)",
        all.as_secs_f64() * 1000.0,
        percentile_ms(&mut together, 50.0),
        percentile_ms(&mut together, 99.0)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = server.rss_mib();
    let shims = shim_pids(server.path());
    let shim_rss: f64 = shims.iter().map(|p| rss_mib(*p)).sum();
    let shim_pss: f64 = shims.iter().map(|p| pss_mib(*p)).sum();
    println!(
        "server RSS with 30 pods:            {loaded:>8.1} MiB  (+{:.2} MiB per pod)",
        (loaded - idle) / 30.0
    );
    println!(
        "supervisors ({}): RSS {shim_rss:.1} MiB, PSS {shim_pss:.1} MiB  ({:.2} MiB PSS each)",
        shims.len(),
        shim_pss / shims.len().max(1) as f64
    );
    println!(
        "per running container (agent growth + supervisor PSS): {:.2} MiB",
        (loaded - idle + shim_pss) / 30.0
    );
    delete_all(&api, server.path()).await?;
    Ok(())
}
