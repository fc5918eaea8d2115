//! The scheduling benchmark of issue 4: hollow nodes (registered Nodes that report Ready and
//! renew their Leases, like kwok, but run nothing) and one large Deployment; it prints the time
//! from creating the Deployment until every pod exists and until every pod is bound, through
//! the Deployment and ReplicaSet controllers and the scheduler, and the server's memory.
//! Run: `cargo build --release -p bosun -p bench && ./target/release/sched-bench [NODES] [REPLICAS]`
//! (defaults 1000 and 10000; the issue also asks for 5000 and 50000).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bench::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// How many API calls the node registration keeps in flight.
const IN_FLIGHT: usize = 64;

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

async fn register(client: &kube::Client, name: String) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "type": "hollow"}},
        "spec": {"podCIDR": "10.200.0.0/24"},
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let capacity =
        json!({"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "hollow node", "lastHeartbeatTime": now(),
                        "lastTransitionTime": now()}],
        "nodeInfo": {"kubeletVersion": "v1.33.0-hollow", "containerRuntimeVersion": "hollow://0",
                     "kernelVersion": "", "osImage": "hollow", "operatingSystem": "linux",
                     "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": "",
                     "kubeProxyVersion": ""},
    }});
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    renew(client, &name).await
}

async fn renew(client: &kube::Client, name: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()},
    });
    leases
        .patch(
            name,
            &PatchParams::apply("hollow-node").force(),
            &Patch::Apply(lease),
        )
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let replicas: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let server = Server::start().await?;
    let client = server.client().await?;
    println!(
        "server up in {} ms; idle RSS {:.1} MiB",
        server.startup.as_millis(),
        server.rss_mib()
    );

    let started = Instant::now();
    futures::stream::iter((0..nodes).map(|i| register(&client, format!("hollow-{i:05}"))))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "{nodes} hollow nodes registered in {:.1} s; RSS {:.1} MiB",
        started.elapsed().as_secs_f64(),
        server.rss_mib()
    );
    // Keep the Leases fresh, as kubelets do every 10 s.
    let renewer = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let _ = futures::stream::iter((0..nodes).map(|i| {
                    let client = client.clone();
                    async move { renew(&client, &format!("hollow-{i:05}")).await }
                }))
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await;
            }
        })
    };

    // a watcher re-watches (and re-lists if need be) when the server ends a watch that fell
    // behind, as it does for slow watchers
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut watch = watcher(pods, watcher::Config::default().labels("app=sched-bench"))
        .default_backoff()
        .boxed();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "sched-bench"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "sched-bench"}},
            "template": {
                "metadata": {"labels": {"app": "sched-bench"}},
                "spec": {"containers": [{
                    "name": "main", "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }]},
            },
        },
    }))?;
    let started = Instant::now();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await?;
    let mut seen = HashSet::new();
    let mut bound = HashSet::new();
    let mut all_created = None;
    let deadline = started + Duration::from_secs(1800);
    while bound.len() < replicas {
        let ev = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .context("pods were not all bound within 30 minutes")?;
        match ev {
            Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                seen.insert(name.clone());
                if all_created.is_none() && seen.len() >= replicas {
                    all_created = Some(started.elapsed());
                }
                if p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty())
                {
                    bound.insert(name);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => eprintln!("watch failed, retrying: {e}"),
            None => bail!("watch ended"),
        }
    }
    let took = started.elapsed();
    renewer.abort();
    let created = all_created.unwrap_or(took);
    println!(
        "{replicas} pods created in {:.1} s ({:.0} pods/s), all bound in {:.1} s ({:.0} pods/s end to end)",
        created.as_secs_f64(),
        replicas as f64 / created.as_secs_f64(),
        took.as_secs_f64(),
        replicas as f64 / took.as_secs_f64()
    );
    println!(
        "server RSS with {nodes} nodes and {replicas} pods: {:.1} MiB",
        server.rss_mib()
    );
    let events = Api::<Event>::namespaced(client.clone(), "default")
        .list_metadata(&ListParams::default().limit(1))
        .await?;
    println!(
        "events in the namespace: {}",
        events.items.len() as i64 + events.metadata.remaining_item_count.unwrap_or(0)
    );
    // what stays once the controllers' and the scheduler's work has drained
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!("server RSS 15 s later: {:.1} MiB", server.rss_mib());
    Ok(())
}
