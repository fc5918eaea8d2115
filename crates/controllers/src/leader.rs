//! Leader election through a Lease, as client-go's leaderelection does it for
//! kube-controller-manager: one Lease in `kube-system`, held for 15 s, renewed every 2 s; a
//! candidate takes it once the holder has not renewed it for the lease duration; a leader that
//! cannot renew it for 10 s steps down (and its controllers stop), so that two servers never
//! run the controllers at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

const LEASE_SECONDS: i32 = 15;
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);

/// A candidate for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Elector {
    /// A candidate named `identity` for the Lease `kube-system/name`.
    pub fn new(client: kube::Client, name: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, "kube-system"),
            name: name.to_string(),
            identity,
        }
    }

    /// Tries once to take or renew the Lease; whether this candidate holds it now.
    async fn try_hold(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = current.renew_time.as_ref().is_none_or(|t| {
            let duration = i64::from(current.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            t.0.as_second() + duration < now.as_second()
        });
        if !ours && !expired && current.holder_identity.is_some() {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { current.acquire_time } else { None };
        lease.spec = Some(spec(transitions, acquired));
        // The resourceVersion read makes a concurrent taker lose with a conflict.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_hold().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the Lease; returns when it could not be renewed for the renew deadline.
    pub async fn hold(&self) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match self.try_hold().await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!(lease = %self.name, "leadership taken by another");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "renewing the leader lease failed"),
            }
            if last.elapsed() > RENEW_DEADLINE {
                tracing::warn!(lease = %self.name, "leader lease not renewed in time");
                return;
            }
        }
    }
}
