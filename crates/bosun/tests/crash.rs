//! An acknowledged write survives `kill -9`: a writer creates ConfigMaps while the server is
//! killed and restarted, repeatedly; every create that was acknowledged is there afterwards.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Cluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9() {
    let mut cluster = Cluster::start();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..5 {
        let client = cluster.client().await;
        let maps: Api<ConfigMap> = Api::namespaced(client, "default");
        let writer_acked = acked.clone();
        let writer = tokio::spawn(async move {
            for i in 0.. {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(format!("crash-{round}-{i}"));
                match maps.create(&PostParams::default(), &cm).await {
                    Ok(_) => writer_acked
                        .lock()
                        .expect("lock")
                        .push(format!("crash-{round}-{i}")),
                    Err(_) => break,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300 + 100 * round)).await;
        tokio::task::block_in_place(|| cluster.restart_after_kill());
        let _ = writer.await;
        let maps: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
        let present: Vec<String> = maps
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .collect();
        let acked = acked.lock().expect("lock");
        let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(n)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged creates lost, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        assert!(!acked.is_empty(), "the writer got no create through");
    }
}
