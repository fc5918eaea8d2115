//! Sequential and concurrent durable creates straight on the embedded store, to separate the
//! store's cost from the API server's.

use std::sync::Arc;
use std::time::Instant;

use store::Backend;

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("store-bench-{}.redb", std::process::id()));
    let store = Arc::new(store::embedded::Embedded::open(&path).expect("open"));
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        store
            .create(&format!("/seq/{i}"), vec![b'x'; 300])
            .await
            .expect("create");
    }
    println!(
        "sequential: {:.0} creates/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut handles = Vec::new();
    for c in 0..32 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..n / 8 {
                s.create(&format!("/par/{c}/{i}"), vec![b'x'; 300])
                    .await
                    .expect("create");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    println!(
        "32 concurrent: {:.0} creates/s",
        (32 * (n / 8)) as f64 / t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&path);
}
