//! Pulling images from registries (the OCI distribution / Docker Registry HTTP API v2) with the
//! `oci-client` crate: the manifest (an index or manifest list resolves to linux/amd64), the
//! config and the layers (gzip, zstd or plain tar) are downloaded and checked against their
//! digests, then stored and unpacked as an import does. Registries speak HTTPS unless named as
//! insecure; credentials are sent as basic auth or exchanged for a bearer token, as the registry
//! asks.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::images::{Error, Image, ImageStore, Progress, Result};
use crate::reference;

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

/// How a pull reaches registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Credentials, when the registry needs them.
    pub credentials: Option<Credentials>,
}

/// The registry host of an image reference (`docker.io` for Docker Hub names).
pub fn registry_of(image: &str) -> Result<String> {
    let normalized = reference::normalize(image)?;
    Ok(normalized
        .split('/')
        .next()
        .unwrap_or("docker.io")
        .to_string())
}

fn pull_error(image: &str, e: impl std::fmt::Display) -> Error {
    Error::Pull(format!("failed to pull and unpack image \"{image}\": {e}"))
}

impl ImageStore {
    /// Pulls `image` into the store and returns it.
    pub async fn pull(
        &self,
        image: &str,
        opts: &PullOptions,
        progress: &(dyn Progress + Sync),
    ) -> Result<Image> {
        // reqwest (under oci-client) needs a process-wide TLS provider; bosun uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let normalized = reference::normalize(image)?;
        let oci_ref: Reference = normalized
            .parse()
            .map_err(|e| pull_error(image, format!("invalid reference: {e}")))?;
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        });
        let auth = match &opts.credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let (manifest, manifest_digest) = client
            .pull_image_manifest(&oci_ref, &auth)
            .await
            .map_err(|e| pull_error(image, e))?;
        let total: i64 = manifest.layers.iter().map(|l| l.size).sum::<i64>() + manifest.config.size;
        progress.total(total.max(0) as u64 * 2);
        let staging = self.staging()?;
        let fetch = |digest: String| {
            let path = staging.0.join(digest.trim_start_matches("sha256:"));
            (path, digest)
        };
        let (config_path, config_digest) = fetch(manifest.config.digest.clone());
        let mut config = Vec::new();
        client
            .pull_blob(&oci_ref, &manifest.config, &mut config)
            .await
            .map_err(|e| pull_error(image, e))?;
        std::fs::write(&config_path, &config).map_err(|e| Error::Io("write config".into(), e))?;
        progress.advance(manifest.config.size.max(0) as u64);
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            let (path, digest) = fetch(layer.digest.clone());
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Error::Io(format!("write {}", path.display()), e))?;
            client
                .pull_blob(&oci_ref, layer, file)
                .await
                .map_err(|e| pull_error(image, e))?;
            progress.advance(layer.size.max(0) as u64);
            layers.push((path, digest));
        }
        self.store_pulled(
            &staging.0,
            normalized,
            &config_path,
            &config_digest,
            &manifest_digest,
            &layers,
            progress,
        )
    }
}
