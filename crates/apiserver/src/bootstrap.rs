//! What the API server creates for itself at start: the system namespaces, as upstream's
//! apiserver does.

use anyhow::Result;
use serde_json::json;

use api::{meta, registry};

use crate::admission::SYSTEM_NAMESPACES;
use crate::storage::Storage;

/// Creates `default`, `kube-system`, `kube-public` and `kube-node-lease` when missing.
pub async fn system_namespaces(storage: &Storage) -> Result<()> {
    let rt = registry()
        .find("", "v1", "namespaces")
        .ok_or_else(|| anyhow::anyhow!("namespaces are not registered"))?;
    for name in SYSTEM_NAMESPACES {
        if storage.get(rt, "", name).await.is_ok() {
            continue;
        }
        let mut ns = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        });
        meta::set_meta(&mut ns, "uid", json!(uuid::Uuid::new_v4().to_string()));
        meta::set_meta(&mut ns, "creationTimestamp", json!(meta::now_timestamp()));
        api::defaults::apply(rt, &mut ns);
        api::strategy::prepare_for_create(rt, &mut ns);
        match storage.create(rt, ns).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => anyhow::bail!("cannot create namespace {name}: {e}"),
        }
    }
    Ok(())
}
