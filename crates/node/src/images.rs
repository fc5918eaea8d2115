//! Getting a container's image onto the node, as kubelet's image manager does: the pull policy
//! (`Always`, `IfNotPresent`, `Never`, defaulting to `Always` for `:latest` or untagged
//! images), credentials from the pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson`),
//! pulls through the runtime, and the events upstream records.

use std::time::Instant;

use base64::Engine;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use runtime::images::{Image, Quiet};
use runtime::pull::{Credentials, PullOptions};

use crate::Agent;
use crate::events::Kind;

/// Why a container has no image yet: the waiting reason and its message.
pub type Waiting = (String, String);

/// The pull policy of a container, defaulted as the API server does.
pub fn pull_policy(c: &Container) -> String {
    if let Some(p) = c.image_pull_policy.clone().filter(|p| !p.is_empty()) {
        return p;
    }
    let image = c.image.clone().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    let tag = if last.contains('@') {
        None
    } else {
        last.split_once(':').map(|(_, t)| t.to_string())
    };
    match tag.as_deref() {
        None | Some("latest") if !last.contains('@') => "Always".into(),
        _ => "IfNotPresent".into(),
    }
}

/// The registry a `.dockerconfigjson` key names: scheme and path dropped, Docker Hub's aliases
/// made one.
fn registry_key(server: &str) -> String {
    let s = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s).to_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// The credentials a `.dockerconfigjson` document holds for `registry`.
pub fn credentials_for(dockerconfig: &serde_json::Value, registry: &str) -> Option<Credentials> {
    let want = registry_key(registry);
    let auths = dockerconfig.get("auths")?.as_object()?;
    for (server, entry) in auths {
        if registry_key(server) != want {
            continue;
        }
        if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
            return Some(Credentials {
                username: u.into(),
                password: p.into(),
            });
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(entry["auth"].as_str()?)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (u, p) = text.split_once(':')?;
        return Some(Credentials {
            username: u.into(),
            password: p.into(),
        });
    }
    None
}

/// Image garbage collection starts above this share of the disk used...
const GC_HIGH: f64 = 0.85;
/// ...and stops below this one (kubelet's imageGCHigh/LowThresholdPercent).
const GC_LOW: f64 = 0.80;

impl Agent {
    /// Removes images no container uses while the disk is fuller than 85%, until it is below
    /// 80%, as kubelet's image garbage collection does.
    pub fn collect_images(&self) -> anyhow::Result<()> {
        let used = || 1.0 - crate::registration::Pressure::now(&self.config.data_dir).disk_free;
        if used() <= GC_HIGH {
            return Ok(());
        }
        let in_use = self.runtime.images_in_use()?;
        for image in self.images.list()? {
            if in_use.contains(&image.id) {
                continue;
            }
            tracing::info!(image = %image.reference, "removing an unused image: the disk is full");
            self.images.remove(&image.reference)?;
            if used() < GC_LOW {
                break;
            }
        }
        Ok(())
    }

    async fn pull_credentials(&self, pod: &Pod, registry: &str) -> Option<Credentials> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        for r in pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            let Ok(secret) = secrets.get(&r.name).await else {
                continue;
            };
            let Some(raw) = secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
            else {
                continue;
            };
            if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&raw.0)
                && let Some(c) = credentials_for(&doc, registry)
            {
                return Some(c);
            }
        }
        None
    }

    /// The image of container `c`, pulled if its policy says so; or why it is not there.
    pub async fn ensure_image(&self, pod: &Pod, c: &Container) -> Result<Image, Waiting> {
        let image = c.image.clone().unwrap_or_default();
        let policy = pull_policy(c);
        let present = {
            let store = &self.images;
            store.get(&image).ok().flatten()
        };
        let record = |kind, reason: &'static str, msg: String| {
            self.events.record(pod, Some(&c.name), kind, reason, &msg);
        };
        match (policy.as_str(), present) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => {
                record(
                    Kind::Normal,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                return Ok(img);
            }
            ("Never", None) => {
                let msg =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                record(Kind::Warning, "ErrImageNeverPull", msg.clone());
                return Err(("ErrImageNeverPull".into(), msg));
            }
            _ => {}
        }
        // by image, as kubelet's: a pod given another image pulls it at once
        let key = format!(
            "{}/pull/{image}",
            pod.metadata.uid.as_deref().unwrap_or_default(),
        );
        let now = chrono::Utc::now();
        let backing_off = self
            .backoff
            .lock()
            .ok()
            .and_then(|b| b.in_backoff_since_update(&key, now))
            .is_some();
        if backing_off {
            let msg = format!("Back-off pulling image \"{image}\"");
            record(Kind::Normal, "BackOff", msg.clone());
            return Err(("ImagePullBackOff".into(), msg));
        }
        record(
            Kind::Normal,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
        let registry = runtime::pull::registry_of(&image).unwrap_or_default();
        let opts = PullOptions {
            insecure_registries: self.config.insecure_registries.clone(),
            credentials: self.pull_credentials(pod, &registry).await,
        };
        let waited = Instant::now();
        let _one_at_a_time = self.pulls.lock().await;
        let started = Instant::now();
        match self.images.pull(&image, &opts, &Quiet).await {
            Ok(img) => {
                let msg = format!(
                    "Successfully pulled image \"{image}\" in {:.3}s ({:.3}s including waiting). Image size: {} bytes.",
                    started.elapsed().as_secs_f64(),
                    waited.elapsed().as_secs_f64(),
                    img.size
                );
                record(Kind::Normal, "Pulled", msg);
                Ok(img)
            }
            Err(e) => {
                if let Ok(mut b) = self.backoff.lock() {
                    b.next(&key, now);
                }
                let msg = format!("Failed to pull image \"{image}\": {e}");
                record(Kind::Warning, "Failed", msg.clone());
                record(Kind::Warning, "Failed", "Error: ErrImagePull".into());
                Err(("ErrImagePull".into(), msg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(image: &str, policy: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn latest_and_untagged_images_are_always_pulled() {
        assert_eq!(pull_policy(&container("busybox", None)), "Always");
        assert_eq!(pull_policy(&container("busybox:latest", None)), "Always");
        assert_eq!(
            pull_policy(&container("busybox:1.36", None)),
            "IfNotPresent"
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/app", None)),
            "Always"
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/app:v1", None)),
            "IfNotPresent"
        );
        assert_eq!(
            pull_policy(&container("busybox@sha256:abc", None)),
            "IfNotPresent"
        );
        assert_eq!(pull_policy(&container("busybox", Some("Never"))), "Never");
    }

    #[test]
    fn docker_config_credentials_match_their_registry() {
        let doc = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": base64::engine::general_purpose::STANDARD.encode("hub:pw")},
            "127.0.0.1:5000": {"username": "alice", "password": "secret"}
        }});
        assert_eq!(
            credentials_for(&doc, "docker.io"),
            Some(Credentials {
                username: "hub".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            credentials_for(&doc, "127.0.0.1:5000").map(|c| c.username),
            Some("alice".into())
        );
        assert_eq!(credentials_for(&doc, "quay.io"), None);
    }
}
