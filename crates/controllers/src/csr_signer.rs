//! The certificate signer: approved CertificateSigningRequests for the signers
//! `kubernetes.io/kube-apiserver-client` and `kubernetes.io/kube-apiserver-client-kubelet` get
//! a client certificate, those for `kubernetes.io/kubelet-serving` a serving certificate, from
//! the cluster CA in `status.certificate`, as upstream's csrsigning controller issues them.
//! Requests for other signers are left to their own signers.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use crate::{Context, Result, drive, retry};

/// The signer of API clients' certificates.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// What a signer's certificates are for, if this controller serves it.
fn usage(signer: &str) -> Option<crate::Usage> {
    match signer {
        SIGNER | crate::csr_approver::KUBELET_CLIENT_SIGNER => Some(crate::Usage::Client),
        crate::csr_approver::KUBELET_SERVING_SIGNER => Some(crate::Usage::Server),
        _ => None,
    }
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Context>) -> Result<Action> {
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    let Some(usage) = usage(&csr.spec.signer_name) else {
        return Ok(Action::await_change());
    };
    if issued
        || !condition(&csr, "Approved")
        || condition(&csr, "Denied")
        || condition(&csr, "Failed")
    {
        return Ok(Action::await_change());
    }
    let Some(sign) = &ctx.sign_csr else {
        return Ok(Action::await_change());
    };
    let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
    let seconds = csr
        .spec
        .expiration_seconds
        .map(i64::from)
        .unwrap_or(365 * 24 * 3600);
    let mut updated = (*csr).clone();
    let status = updated.status.get_or_insert_with(Default::default);
    match sign(&pem, seconds, usage) {
        Ok(cert) => status.certificate = Some(ByteString(cert.into_bytes())),
        Err(e) => {
            status.conditions.get_or_insert_with(Vec::new).push(
                k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("SigningError".into()),
                    message: Some(format!("{e:#}")),
                    ..Default::default()
                },
            );
        }
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    api.replace_status(&name, &PostParams::default(), &updated)
        .await?;
    Ok(Action::await_change())
}

/// Runs the signer.
pub async fn run(ctx: Arc<Context>) {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let stream = Controller::new(api, watcher::Config::default()).run(reconcile, retry, ctx);
    drive("csr-signer", stream).await;
}
