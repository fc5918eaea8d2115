//! Authentication: who sent a request, as upstream's authenticators decide it. A client
//! certificate signed by the cluster CA names the user (CN) and groups (O); a bearer token is
//! looked up in the static token file, else as a bootstrap token (for joining nodes), else
//! verified as a service account token. A request with
//! no credentials is anonymous (`system:anonymous`, unless anonymous auth is off); one with
//! credentials that do not check out is refused (401).

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
        // upstream's anonymous user is in system:unauthenticated only
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

/// Reads a static token file (`--token-auth-file`): CSV lines `token,user,uid[,"group1,group2"]`.
pub fn read_token_file(
    path: &std::path::Path,
) -> anyhow::Result<std::collections::HashMap<String, UserInfo>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
    let mut out = std::collections::HashMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    {
        let mut parts = line.splitn(4, ',');
        let (Some(token), Some(user), Some(_uid)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!(
                "{}:{}: expected token,user,uid[,groups]",
                path.display(),
                n + 1
            );
        };
        let mut groups: Vec<String> = parts
            .next()
            .map(|g| {
                g.trim()
                    .trim_matches('"')
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        groups.push("system:authenticated".into());
        out.insert(
            token.trim().to_string(),
            UserInfo {
                name: user.trim().to_string(),
                groups,
            },
        );
    }
    Ok(out)
}

/// The user of a bearer token: from the static token file, else a bootstrap token, else a
/// service account token.
pub async fn from_bearer(state: &crate::State, token: &str) -> Option<UserInfo> {
    if let Some(user) = state.static_tokens.get(token) {
        return Some(user.clone());
    }
    if let Some((id, secret)) = bootstrap_token_parts(token) {
        return from_bootstrap_token(state, id, secret).await;
    }
    from_token(state, token).await
}

/// The id and secret of a bootstrap token (`abcdef.0123456789abcdef`: six and sixteen
/// characters of `[a-z0-9]`).
pub fn bootstrap_token_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The user of a bootstrap token, as upstream's bootstrap token authenticator reads its Secret
/// `kube-system/bootstrap-token-<id>` (type `bootstrap.kubernetes.io/token`): the secret must
/// match, `usage-bootstrap-authentication` be true and `expiration` not passed. The user is
/// `system:bootstrap:<id>` in `system:bootstrappers` and the token's `auth-extra-groups`.
/// Deleting the Secret revokes the token.
async fn from_bootstrap_token(state: &crate::State, id: &str, secret: &str) -> Option<UserInfo> {
    let rt = api::registry().find("", "v1", "secrets")?;
    let name = format!("bootstrap-token-{id}");
    let (obj, _) = state.storage.get(rt, "kube-system", &name).await.ok()?;
    if obj["type"] != "bootstrap.kubernetes.io/token"
        || obj["metadata"]["deletionTimestamp"].is_string()
    {
        return None;
    }
    let field = |key: &str| {
        use base64::Engine;
        let encoded = obj["data"][key].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    let stored = field("token-secret")?;
    // compared as digests, so that the time taken says nothing of the secret
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    if digest(&stored).as_ref() != digest(secret).as_ref()
        || field("token-id").as_deref() != Some(id)
    {
        return None;
    }
    if field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    if let Some(expiration) = field("expiration") {
        let at = chrono::DateTime::parse_from_rfc3339(&expiration).ok()?;
        if at <= chrono::Utc::now() {
            return None;
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in field("auth-extra-groups").unwrap_or_default().split(',') {
        let g = g.trim();
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Some(UserInfo {
        name: format!("system:bootstrap:{id}"),
        groups,
    })
}

/// The user of a service account token, if the token verifies and its service account (and
/// the pod it is bound to, if any) still exists with the same uid.
pub async fn from_token(state: &crate::State, token: &str) -> Option<UserInfo> {
    let claims = state.tokens.verify(token)?;
    let exists = |resource: &'static str, name: String, uid: String| {
        let ns = claims.namespace.clone();
        async move {
            let rt = api::registry().find("", "v1", resource)?;
            let (obj, _) = state.storage.get(rt, &ns, &name).await.ok()?;
            (api::meta::meta_str(&obj, "uid") == Some(uid.as_str())).then_some(())
        }
    };
    exists("serviceaccounts", claims.name.clone(), claims.uid.clone()).await?;
    if let Some((pod, uid)) = claims.pod.clone() {
        exists("pods", pod, uid).await?;
    }
    Some(UserInfo {
        name: format!("system:serviceaccount:{}:{}", claims.namespace, claims.name),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", claims.namespace),
            "system:authenticated".into(),
        ],
    })
}

/// Applies `Impersonate-User` / `Impersonate-Group` headers: the requester must be allowed to
/// impersonate each; the request then runs as the impersonated user.
pub async fn impersonate(
    state: &crate::State,
    user: UserInfo,
    headers: &http::HeaderMap,
) -> Result<UserInfo, crate::status::ApiError> {
    let Some(target) = headers
        .get("Impersonate-User")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(user);
    };
    let mut checks = Vec::new();
    match target
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, name)) => checks.push(crate::authz::Attributes {
            verb: "impersonate".into(),
            resource: "serviceaccounts".into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        }),
        None => checks.push(crate::authz::Attributes {
            verb: "impersonate".into(),
            resource: "users".into(),
            name: target.into(),
            ..Default::default()
        }),
    }
    let mut groups: Vec<String> = headers
        .get_all("Impersonate-Group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    for g in &groups {
        checks.push(crate::authz::Attributes {
            verb: "impersonate".into(),
            resource: "groups".into(),
            name: g.clone(),
            ..Default::default()
        });
    }
    for a in &checks {
        crate::authz::authorize(&state.storage, &user, a).await?;
    }
    if let Some((ns, _)) = target
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    groups.push("system:authenticated".into());
    Ok(UserInfo {
        name: target.to_string(),
        groups,
    })
}
