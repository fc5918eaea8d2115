//! Admission of certificate signing requests, as upstream's certificates plugins do: the
//! requester is recorded by the server (never taken from the request); CertificateApproval lets
//! only users with `approve` on the request's signer (`certificates.k8s.io` `signers`, by name
//! or `domain/*`) approve or deny it; CertificateSigning lets only users with `sign` on it issue
//! the certificate; CertificateSubjectRestriction refuses `kubernetes.io/kube-apiserver-client`
//! requests for the `system:masters` group, which no RBAC rule could then take away.

use serde_json::{Value, json};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use api::{ResourceType, meta};

use crate::authn::UserInfo;
use crate::authz::Attributes;
use crate::status::{ApiError, Result};
use crate::storage::Storage;

/// The signer of client certificates for the API server.
const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

/// Whether `rt` is the CertificateSigningRequest resource.
pub fn is_csr(rt: &ResourceType) -> bool {
    rt.group == "certificates.k8s.io" && rt.kind == "CertificateSigningRequest"
}

/// Admits a new request from `user`: records who asks, refuses a cluster-admin client
/// certificate.
pub fn admit_create(rt: &ResourceType, user: &UserInfo, csr: &mut Value) -> Result<()> {
    csr["spec"]["username"] = json!(user.name);
    csr["spec"]["groups"] = json!(user.groups);
    if signer(csr) != KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    let forbidden = |why: &str| ApiError::admission_forbidden(rt, meta::name(csr), why);
    let organizations =
        organizations(request(csr)).map_err(|e| forbidden(&format!("unable to parse csr: {e}")))?;
    if organizations.iter().any(|o| o == "system:masters") {
        return Err(forbidden(&format!(
            "use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed"
        )));
    }
    Ok(())
}

/// Admits `user`'s write of the request `current` as `new` through `subresource`: approving or
/// denying needs `approve` on its signer, issuing a certificate needs `sign`.
pub async fn admit_update(
    storage: &Storage,
    rt: &ResourceType,
    user: &UserInfo,
    subresource: &str,
    current: &Value,
    new: &Value,
) -> Result<()> {
    let verb = match subresource {
        "approval" => "approve",
        "status" if certificate(current) != certificate(new) => "sign",
        _ => return Ok(()),
    };
    let signer = signer(new);
    if may(storage, user, verb, signer).await? {
        return Ok(());
    }
    Err(ApiError::admission_forbidden(
        rt,
        meta::name(new),
        &format!("user not permitted to {verb} requests with signerName \"{signer}\""),
    ))
}

/// Whether `user` may `verb` the signer `name`, by its name or its domain's wildcard
/// (`example.com/*`), as upstream's `IsAuthorizedForSignerName` asks.
async fn may(storage: &Storage, user: &UserInfo, verb: &str, name: &str) -> Result<bool> {
    let on = |name: String| Attributes {
        verb: verb.into(),
        group: "certificates.k8s.io".into(),
        resource: "signers".into(),
        name,
        ..Default::default()
    };
    if crate::authz::allowed(storage, user, &on(name.to_string())).await? {
        return Ok(true);
    }
    match name.split_once('/') {
        Some((domain, _)) => crate::authz::allowed(storage, user, &on(format!("{domain}/*"))).await,
        None => Ok(false),
    }
}

fn signer(csr: &Value) -> &str {
    spec_str(csr, "signerName")
}

fn request(csr: &Value) -> &str {
    spec_str(csr, "request")
}

fn spec_str<'a>(csr: &'a Value, key: &str) -> &'a str {
    csr.get("spec")
        .and_then(|s| s.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn certificate(csr: &Value) -> Option<&Value> {
    csr.get("status").and_then(|s| s.get("certificate"))
}

/// The subject organizations of a request, given as base64 of its PEM (as `spec.request` is).
fn organizations(request: &str) -> std::result::Result<Vec<String>, String> {
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(request)
        .map_err(|e| e.to_string())?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| e.to_string())?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents).map_err(|e| e.to_string())?;
    Ok(csr
        .certification_request_info
        .subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base64 PEM request for CN `name` in the organizations `groups` (rcgen keeps one of each
    /// attribute type, so the last).
    fn request_for(name: &str, groups: &[&str]) -> String {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        for g in groups {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *g);
        }
        let pem = params
            .serialize_request(&key)
            .expect("request")
            .pem()
            .expect("pem");
        base64::engine::general_purpose::STANDARD.encode(pem)
    }

    fn csr(signer: &str, request: String) -> Value {
        json!({"metadata": {"name": "r"}, "spec": {"signerName": signer, "request": request}})
    }

    fn rt() -> &'static ResourceType {
        api::registry()
            .find("certificates.k8s.io", "v1", "certificatesigningrequests")
            .expect("registered")
    }

    #[test]
    fn organizations_of_a_request() {
        assert_eq!(
            organizations(&request_for("jane", &["dev"])).expect("parsed"),
            ["dev"]
        );
        assert!(organizations("bm90IGEgcGVt").is_err());
        assert!(organizations("%%%").is_err());
    }

    #[test]
    fn a_client_certificate_for_system_masters_is_refused() {
        let user = UserInfo {
            name: "jane".into(),
            groups: vec!["system:authenticated".into()],
        };
        let mut masters = csr(
            KUBE_APISERVER_CLIENT,
            request_for("eve", &["system:masters"]),
        );
        let err = admit_create(rt(), &user, &mut masters).expect_err("refused");
        assert_eq!(err.code, 403);
        assert!(
            err.message
                .ends_with("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"),
            "{}",
            err.message
        );
        let mut dev = csr(KUBE_APISERVER_CLIENT, request_for("jane", &["dev"]));
        admit_create(rt(), &user, &mut dev).expect("admitted");
        assert_eq!(dev["spec"]["username"], "jane");
        // other signers are not this plugin's business
        let mut other = csr("example.com/x", request_for("eve", &["system:masters"]));
        admit_create(rt(), &user, &mut other).expect("admitted");
        // an unreadable request is refused
        let mut garbage = csr(KUBE_APISERVER_CLIENT, "%%%".into());
        assert!(
            admit_create(rt(), &user, &mut garbage)
                .expect_err("refused")
                .message
                .contains("unable to parse csr")
        );
    }
}
