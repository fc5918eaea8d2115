//! The certificate approver: approves the CertificateSigningRequests of node agents, as
//! upstream's csrapproving controller does for `kubernetes.io/kube-apiserver-client-kubelet`:
//! a request for a node client certificate (CN `system:node:NAME`, O `system:nodes`, client
//! auth) is approved when its requester may create `certificatesigningrequests/nodeclient`
//! (a joining node's bootstrap token) or, for the node itself, `.../selfnodeclient`, which a
//! SubjectAccessReview decides. bosun also approves a node's request for its own serving
//! certificate (`kubernetes.io/kubelet-serving`, asked by that very node, for DNS names and
//! addresses only), which upstream leaves to an administrator: the API server verifies the
//! node agent's certificate, so a joined node needs one signed by the cluster CA.

use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::{Context, Result, drive, retry};

/// The signer of node agents' client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node agents' serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// What a certificate request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The subject's common name.
    pub common_name: String,
    /// The subject's organizations.
    pub organizations: Vec<String>,
    /// Whether every subject alternative name is a DNS name or an IP address.
    pub only_dns_and_ip_names: bool,
}

/// Reads a PEM certificate request.
pub fn parse(pem: &[u8]) -> Option<Request> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents).ok()?;
    let subject = &csr.certification_request_info.subject;
    let common_name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let organizations = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    let only_dns_and_ip_names = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .all(|e| match e {
            ParsedExtension::SubjectAlternativeName(san) => san
                .general_names
                .iter()
                .all(|n| matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_))),
            _ => true,
        });
    Some(Request {
        common_name,
        organizations,
        only_dns_and_ip_names,
    })
}

/// Whether the usages are among `allowed` and include `required`.
fn usages_fit(usages: &[String], allowed: &[&str], required: &str) -> bool {
    usages.iter().all(|u| allowed.contains(&u.as_str())) && usages.iter().any(|u| u == required)
}

/// Whether a request is for a node's certificate: CN `system:node:NAME`, O only `system:nodes`.
fn for_a_node(request: &Request) -> bool {
    request
        .common_name
        .strip_prefix("system:node:")
        .is_some_and(|n| !n.is_empty())
        && request.organizations == ["system:nodes"]
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind))
}

/// Whether the requester may create `certificatesigningrequests/<subresource>`.
async fn requester_may(
    ctx: &Context,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            groups: csr.spec.groups.clone(),
            uid: csr.spec.uid.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Why a request is approved, if it is.
async fn approval(ctx: &Context, csr: &CertificateSigningRequest) -> Result<Option<&'static str>> {
    let Some(request) = parse(&csr.spec.request.0) else {
        return Ok(None);
    };
    if !for_a_node(&request) {
        return Ok(None);
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let by_itself = csr.spec.username.as_deref() == Some(request.common_name.as_str());
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER => {
            if !usages_fit(
                &usages,
                &["digital signature", "key encipherment", "client auth"],
                "client auth",
            ) {
                return Ok(None);
            }
            let subresource = if by_itself {
                "selfnodeclient"
            } else {
                "nodeclient"
            };
            Ok(requester_may(ctx, csr, subresource)
                .await?
                .then_some("Auto approving kubelet client certificate after SubjectAccessReview."))
        }
        KUBELET_SERVING_SIGNER => {
            let fits = usages_fit(
                &usages,
                &["digital signature", "key encipherment", "server auth"],
                "server auth",
            );
            Ok(
                (fits && by_itself && request.only_dns_and_ip_names).then_some(
                    "Auto approving kubelet serving certificate asked for by the node itself.",
                ),
            )
        }
        _ => Ok(None),
    }
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Context>) -> Result<Action> {
    if condition(&csr, "Approved") || condition(&csr, "Denied") || condition(&csr, "Failed") {
        return Ok(Action::await_change());
    }
    let Some(message) = approval(&ctx, &csr).await? else {
        return Ok(Action::await_change());
    };
    let mut approved = (*csr).clone();
    approved
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("AutoApproved".into()),
            message: Some(message.into()),
            last_update_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            )),
            ..Default::default()
        });
    let name = csr.metadata.name.clone().unwrap_or_default();
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    api.replace_subresource("approval", &name, &PostParams::default(), &approved)
        .await?;
    Ok(Action::await_change())
}

/// Runs the approver.
pub async fn run(ctx: Arc<Context>) {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let stream = Controller::new(api, watcher::Config::default()).run(reconcile, retry, ctx);
    drive("csr-approver", stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_requests_are_told_from_others() {
        let node = |cn: &str, orgs: &[&str]| Request {
            common_name: cn.into(),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
            only_dns_and_ip_names: true,
        };
        assert!(for_a_node(&node("system:node:n1", &["system:nodes"])));
        assert!(!for_a_node(&node("system:node:", &["system:nodes"])));
        assert!(!for_a_node(&node("jane", &["system:nodes"])));
        assert!(!for_a_node(&node("system:node:n1", &["system:masters"])));
        assert!(!for_a_node(&node(
            "system:node:n1",
            &["system:nodes", "system:masters"]
        )));
        let client = ["digital signature", "key encipherment", "client auth"];
        let u = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(usages_fit(&u(&["client auth"]), &client, "client auth"));
        assert!(usages_fit(
            &u(&["digital signature", "client auth"]),
            &client,
            "client auth"
        ));
        assert!(!usages_fit(
            &u(&["client auth", "server auth"]),
            &client,
            "client auth"
        ));
        assert!(!usages_fit(
            &u(&["digital signature"]),
            &client,
            "client auth"
        ));
    }
}
