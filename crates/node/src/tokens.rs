//! Service account tokens for pods' projected volumes, as kubelet's token manager gets them:
//! through the TokenRequest API, bound to the pod (so the API server stops accepting a token
//! once its pod is gone), and renewed once 80% of their life has passed, or after 24 hours.

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest as ApiTokenRequest, TokenRequestSpec,
};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};

use crate::projection::TokenRequest;

/// When a token issued at `issued` and expiring at `expires` is renewed.
pub fn renew_at(issued: DateTime<Utc>, expires: DateTime<Utc>) -> DateTime<Utc> {
    let life = (expires - issued).num_seconds();
    issued + std::cmp::min(Duration::seconds(life * 4 / 5), Duration::hours(24))
}

/// A token of `pod`'s service account as `request` asks, bound to the pod; returns it with when
/// to renew it.
pub async fn request(
    client: &kube::Client,
    pod: &Pod,
    request: &TokenRequest,
) -> Result<(String, DateTime<Utc>), String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.as_ref();
    let account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let body = ApiTokenRequest {
        spec: TokenRequestSpec {
            audiences: if request.audience.is_empty() {
                Vec::new()
            } else {
                vec![request.audience.clone()]
            },
            expiration_seconds: Some(request.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued = Utc::now();
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(account, &PostParams::default(), &body)
        .await
        .map_err(|e| e.to_string())?;
    let status = answer
        .status
        .ok_or_else(|| "the token request was answered without a token".to_string())?;
    let expires = status.expiration_timestamp.0;
    let expires = DateTime::<Utc>::from_timestamp(expires.as_second(), 0).unwrap_or(issued);
    Ok((status.token, renew_at(issued, expires)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_at_four_fifths_of_their_life_or_a_day() {
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        assert_eq!(
            renew_at(t0, t0 + Duration::seconds(3607)),
            t0 + Duration::seconds(2885)
        );
        assert_eq!(
            renew_at(t0, t0 + Duration::days(7)),
            t0 + Duration::hours(24)
        );
    }
}
