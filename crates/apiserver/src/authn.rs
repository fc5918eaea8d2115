//! Authentication: who sent a request. A client certificate signed by the cluster CA names the
//! user (CN) and groups (O), as upstream's x509 authenticator reads it. A request with no
//! credentials is anonymous; one with credentials that do not check out is refused (401).

use x509_parser::prelude::{FromDer, X509Certificate};

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name, e.g. `admin`, `system:node:n1`.
    pub name: String,
    /// Groups, e.g. `system:masters`, always including `system:authenticated` for real users.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The anonymous user.
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// Whether this is the anonymous user.
    pub fn is_anonymous(&self) -> bool {
        self.name == "system:anonymous"
    }

    /// The user of a verified client certificate (DER).
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let mut groups: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        groups.push("system:authenticated".into());
        Some(Self { name, groups })
    }
}
