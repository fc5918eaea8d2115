//! The API benchmark of issue 2: durable creates per second (1 and 32 clients), list latency for
//! 10,000 ConfigMaps, watch fan-out latency to 1,000 watchers, server memory idle and loaded.
//! Run: `cargo run --release -p bench --bin api-bench` (after `cargo build --release -p bosun`).

use std::time::{Duration, Instant};

use anyhow::Result;
use bench::{Server, percentile_ms};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

fn configmap(name: String) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name);
    cm.data = Some([("key".to_string(), "a small value".to_string())].into());
    cm
}

async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

async fn creates(server: &Server, ns: &str, clients: usize, total: usize) -> Result<f64> {
    let mut handles = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let api: Api<ConfigMap> = Api::namespaced(server.client().await?, ns);
        handles.push(tokio::spawn(async move {
            for i in 0..total / clients {
                api.create(&PostParams::default(), &configmap(format!("c{c}-{i}")))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok((total / clients * clients) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let server = Server::start().await?;
    println!(
        "startup (spawn to ready):        {:>8.0} ms",
        server.startup.as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "RSS idle:                        {:>8.1} MiB",
        server.rss_mib()
    );
    let client = server.client().await?;

    namespace(&client, "one").await?;
    println!(
        "creates/s, 1 client:             {:>8.0}",
        creates(&server, "one", 1, 2000).await?
    );
    namespace(&client, "many").await?;
    println!(
        "creates/s, 32 clients:           {:>8.0}",
        creates(&server, "many", 32, 10_016).await?
    );

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "many");
    let mut samples = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let list = api.list(&ListParams::default()).await?;
        samples.push(t.elapsed());
        assert!(list.items.len() >= 10_000);
    }
    println!(
        "list of 10,000 ConfigMaps:  p50 {:>8.1} ms  max {:>6.1} ms",
        percentile_ms(&mut samples, 50.0),
        percentile_ms(&mut samples, 100.0)
    );
    println!(
        "RSS with 12,000 objects:         {:>8.1} MiB",
        server.rss_mib()
    );

    // fan-out: 1,000 watchers on one namespace, 20 changes; latency from the create call to
    // each watcher's event
    namespace(&client, "fan").await?;
    let watchers = 1000;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut ready = Vec::new();
    let clients: Vec<kube::Client> =
        futures::future::try_join_all((0..8).map(|_| server.client())).await?;
    for w in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(clients[w % clients.len()].clone(), "fan");
        let tx = tx.clone();
        let (ok_tx, ok_rx) = tokio::sync::oneshot::channel();
        ready.push(ok_rx);
        tokio::spawn(async move {
            let Ok(stream) = api.watch(&WatchParams::default().timeout(290), "0").await else {
                return;
            };
            let _ = ok_tx.send(());
            let mut stream = Box::pin(stream);
            while let Some(Ok(ev)) = stream.next().await {
                if let WatchEvent::Added(cm) = ev {
                    let _ = tx.send((cm.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        });
    }
    for r in ready {
        let _ = r.await;
    }
    let fan: Api<ConfigMap> = Api::namespaced(client.clone(), "fan");
    let mut lat = Vec::new();
    for i in 0..20 {
        let name = format!("fan-{i}");
        let sent = Instant::now();
        fan.create(&PostParams::default(), &configmap(name.clone()))
            .await?;
        let mut got = 0;
        while got < watchers {
            let Ok(Some((n, at))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await
            else {
                break;
            };
            if n == name {
                lat.push(at - sent);
                got += 1;
            }
        }
    }
    let delivered = lat.len();
    println!(
        "watch fan-out to {watchers} watchers: p50 {:>6.1} ms  p99 {:>6.1} ms  ({delivered} of {} events delivered)",
        percentile_ms(&mut lat, 50.0),
        percentile_ms(&mut lat, 99.0),
        20 * watchers
    );
    Ok(())
}
