//! Joining a cluster: how a node agent on another machine gets its credentials from nothing
//! but the server's address and a join token, as kubelet's TLS bootstrap and kubeadm's token
//! discovery do it.
//!
//! A join token (`B10<sha256 of the CA certificate>::<id>.<secret>`) carries a bootstrap token
//! (`<id>.<secret>`, a Secret `kube-system/bootstrap-token-<id>` the API server authenticates
//! as `system:bootstrap:<id>`) and the hash of the cluster CA. The agent reads the CA from the
//! public `kube-public/cluster-info` ConfigMap, trusts it only if its hash is the token's, then
//! asks with the bootstrap token for a client certificate (a CertificateSigningRequest for
//! `system:node:NAME` in `system:nodes`, signer `kubernetes.io/kube-apiserver-client-kubelet`,
//! approved and signed by the controllers) and keeps it in a kubeconfig of its own. With that
//! identity it asks for its serving certificate (signer `kubernetes.io/kubelet-serving`), and,
//! unless told its pod CIDR, registers its Node and waits for the controllers to give it one.
//! Deleting the bootstrap token's Secret revokes the token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

/// The signer of node agents' client certificates.
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node agents' serving certificates.
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The prefix of a join token.
const PREFIX: &str = "B10";

/// A join token: the CA's hash and a bootstrap token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca_hash: String,
    /// The bootstrap token id (six characters of `[a-z0-9]`).
    pub id: String,
    /// The bootstrap token secret (sixteen characters of `[a-z0-9]`).
    pub secret: String,
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}::{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "not a join token (expected {PREFIX}<ca hash>::<id>.<secret>, as `bosun token create` prints)"
            )
        };
        let (hash, token) = s
            .trim()
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once("::"))
            .ok_or_else(bad)?;
        let (id, secret) = token.split_once('.').ok_or_else(bad)?;
        let lower = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || !lower(id, 6) || !lower(secret, 16) {
            return Err(bad());
        }
        Ok(Self {
            ca_hash: hash.to_ascii_lowercase(),
            id: id.into(),
            secret: secret.into(),
        })
    }
}

/// SHA-256 of the first certificate of a PEM bundle (its DER), lowercase hex.
pub fn ca_hash(ca_pem: &str) -> Result<String> {
    let der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .next()
        .context("no certificate in the CA bundle")??;
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// `n` random characters of `[a-z0-9]`.
fn random_token_part(n: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a token"))?;
    // 252 = 7 * 36: bytes above it are drawn again, so that every character is equally likely
    let mut out = String::new();
    for b in bytes {
        let mut b = b;
        while b >= 252 {
            let mut one = [0u8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut one)
                .map_err(|_| anyhow::anyhow!("no randomness for a token"))?;
            b = one[0];
        }
        out.push(ALPHABET[usize::from(b % 36)] as char);
    }
    Ok(out)
}

/// Creates a bootstrap token for joining nodes (the Secret the API server authenticates it
/// by), valid for `ttl` (`None`: until deleted); returns the join token.
pub async fn create_token(
    client: &kube::Client,
    ca_pem: &str,
    ttl: Option<Duration>,
    description: &str,
) -> Result<JoinToken> {
    let token = JoinToken {
        ca_hash: ca_hash(ca_pem)?,
        id: random_token_part(6)?,
        secret: random_token_part(16)?,
    };
    let mut data = std::collections::BTreeMap::from([
        ("token-id".to_string(), token.id.clone()),
        ("token-secret".to_string(), token.secret.clone()),
        ("usage-bootstrap-authentication".to_string(), "true".into()),
        ("usage-bootstrap-signing".to_string(), "true".into()),
        ("auth-extra-groups".to_string(), api::JOIN_GROUP.into()),
        ("description".to_string(), description.into()),
    ]);
    if let Some(ttl) = ttl {
        let at = chrono::Utc::now() + chrono::Duration::from_std(ttl)?;
        data.insert(
            "expiration".into(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{}", token.id)),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &secret)
        .await
        .context("cannot create the bootstrap token")?;
    Ok(token)
}

/// The bootstrap tokens: id, expiration (empty: never), description.
pub async fn list_tokens(client: &kube::Client) -> Result<Vec<(String, String, String)>> {
    let secrets = Api::<Secret>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
        .await
        .context("cannot list the bootstrap tokens")?;
    Ok(secrets
        .items
        .into_iter()
        .filter_map(|s| {
            let data = s.data?;
            let field = |k: &str| {
                data.get(k)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .unwrap_or_default()
            };
            Some((field("token-id"), field("expiration"), field("description")))
        })
        .collect())
}

/// Revokes a bootstrap token by deleting its Secret.
pub async fn delete_token(client: &kube::Client, id: &str) -> Result<()> {
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .delete(&format!("bootstrap-token-{id}"), &Default::default())
        .await
        .with_context(|| format!("cannot delete the bootstrap token {id}"))?;
    Ok(())
}

/// A client of `server` trusting `ca_pem` (or, with `None`, any certificate: only for reading
/// the public cluster-info, which is checked against the token's hash).
fn client(
    server: &str,
    ca_pem: Option<&str>,
    auth: kube::config::AuthInfo,
) -> Result<kube::Client> {
    let mut config = kube::Config::new(server.parse().context("the server is not a URL")?);
    match ca_pem {
        Some(pem) => {
            let certs = rustls_pemfile::certs(&mut pem.as_bytes())
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            config.root_cert = Some(certs);
        }
        None => config.accept_invalid_certs = true,
    }
    config.auth_info = auth;
    config.connect_timeout = Some(Duration::from_secs(10));
    Ok(kube::Client::try_from(config)?)
}

/// The cluster CA as `kube-public/cluster-info` publishes it, if its hash is `hash`.
async fn discover_ca(server: &str, hash: &str) -> Result<String> {
    let anonymous = client(server, None, Default::default())?;
    let info = Api::<ConfigMap>::namespaced(anonymous, "kube-public")
        .get("cluster-info")
        .await
        .with_context(|| format!("cannot read the cluster's public information from {server}"))?;
    let text = info
        .data
        .and_then(|d| d.get("kubeconfig").cloned())
        .context("cluster-info has no kubeconfig")?;
    let ca =
        kubeconfig_ca(&kube::config::Kubeconfig::from_yaml(&text)?).context("in cluster-info")?;
    let found = ca_hash(&ca)?;
    if found != hash {
        bail!(
            "the server's CA (sha256:{found}) is not the one the join token names (sha256:{hash}): a wrong server, or someone in between"
        );
    }
    Ok(ca)
}

/// The certificate authority (PEM) of a kubeconfig's first cluster.
pub fn kubeconfig_ca(kubeconfig: &kube::config::Kubeconfig) -> Result<String> {
    let ca = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("the kubeconfig names no certificate authority")?;
    Ok(String::from_utf8(
        base64::engine::general_purpose::STANDARD.decode(ca.trim())?,
    )?)
}

/// Asks for a certificate for `params` from `signer` and waits until it is issued; returns it
/// (PEM).
async fn request_certificate(
    client: &kube::Client,
    params: rcgen::CertificateParams,
    key: &rcgen::KeyPair,
    signer: &str,
    usages: &[&str],
) -> Result<String> {
    let request = params.serialize_request(key)?.pem()?;
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .context("cannot ask for a certificate")?;
    let name = created.metadata.name.unwrap_or_default();
    for _ in 0..300 {
        let csr = api.get(&name).await?;
        let status = csr.status.unwrap_or_default();
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        {
            bail!(
                "the certificate request {name} was {}: {}",
                c.type_.to_lowercase(),
                c.message.clone().unwrap_or_default()
            );
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return Ok(String::from_utf8(cert.0)?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the certificate request {name} was not approved within a minute")
}

/// Whether a PEM certificate is valid for at least another hour.
fn still_valid(cert_pem: &str) -> bool {
    let Some(Ok(der)) = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next() else {
        return false;
    };
    x509_parser::parse_x509_certificate(&der).is_ok_and(|(_, c)| {
        c.validity().not_after.timestamp() > chrono::Utc::now().timestamp() + 3600
    })
}

/// A node's subject: CN `system:node:NAME`, O `system:nodes`.
fn node_params(node_name: &str, names: &[String]) -> Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    Ok(params)
}

/// What a joined node works with.
pub struct Joined {
    /// A client authenticated as `system:node:NAME`.
    pub client: kube::Client,
    /// The cluster CA.
    pub ca_pem: String,
}

/// The credentials of `node_name` for `server`: kept in `<dir>/kubeconfig` once issued, else
/// (or when they expire within the hour) obtained with the join token.
pub async fn credentials(
    server: &str,
    token: &JoinToken,
    node_name: &str,
    dir: &Path,
) -> Result<Joined> {
    std::fs::create_dir_all(dir)?;
    let (cert_path, key_path, ca_path) = (
        dir.join("client.crt"),
        dir.join("client.key"),
        dir.join("ca.crt"),
    );
    let kept = |p: &PathBuf| std::fs::read_to_string(p).ok();
    let (cert, key, ca) = match (kept(&cert_path), kept(&key_path), kept(&ca_path)) {
        (Some(cert), Some(key), Some(ca)) if still_valid(&cert) => (cert, key, ca),
        _ => {
            let ca = discover_ca(server, &token.ca_hash).await?;
            let bootstrap = client(
                server,
                Some(&ca),
                kube::config::AuthInfo {
                    token: Some(format!("{}.{}", token.id, token.secret).into()),
                    ..Default::default()
                },
            )?;
            let key = rcgen::KeyPair::generate()?;
            let cert = request_certificate(
                &bootstrap,
                node_params(node_name, &[])?,
                &key,
                CLIENT_SIGNER,
                &["digital signature", "client auth"],
            )
            .await
            .context("joining with the token")?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert)?;
            write_private(&ca_path, &ca)?;
            (cert, key.serialize_pem(), ca)
        }
    };
    let auth = kube::config::AuthInfo {
        client_certificate_data: Some(base64::engine::general_purpose::STANDARD.encode(&cert)),
        client_key_data: Some(
            base64::engine::general_purpose::STANDARD
                .encode(&key)
                .into(),
        ),
        ..Default::default()
    };
    Ok(Joined {
        client: client(server, Some(&ca), auth)?,
        ca_pem: ca,
    })
}

/// The pod CIDR the cluster gives node `node_name` (its node IPAM): the Node is created if it
/// is not there, then read until it has one.
pub async fn assigned_pod_cidr(client: &kube::Client, node_name: &str) -> Result<String> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = k8s_openapi::api::core::v1::Node {
        metadata: ObjectMeta {
            name: Some(node_name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("cannot register the Node"),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cidr = nodes
            .get(node_name)
            .await
            .context("cannot read the Node")?
            .spec
            .and_then(|s| s.pod_cidr)
            .filter(|c| !c.is_empty());
        if let Some(cidr) = cidr {
            return Ok(cidr);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "node {node_name} got no pod CIDR from the cluster within a minute (is its cluster CIDR full?); pass --pod-cidr"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The serving certificate and key of `node_name` for `names` (its name and addresses): kept
/// in `dir` once issued, else asked for with the node's own credentials.
pub async fn serving_certificate(
    client: &kube::Client,
    node_name: &str,
    names: &[String],
    dir: &Path,
) -> Result<(String, String)> {
    let (cert_path, key_path) = (dir.join("serving.crt"), dir.join("serving.key"));
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) && still_valid(&cert)
    {
        return Ok((cert, key));
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = request_certificate(
        client,
        node_params(node_name, names)?,
        &key,
        SERVING_SIGNER,
        &["digital signature", "server auth"],
    )
    .await
    .context("asking for the node's serving certificate")?;
    write_private(&key_path, &key.serialize_pem())?;
    write_private(&cert_path, &cert)?;
    Ok((cert, key.serialize_pem()))
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_read_back_as_written() {
        let token = JoinToken {
            ca_hash: "ab".repeat(32),
            id: "abc123".into(),
            secret: "0123456789abcdef".into(),
        };
        let text = token.to_string();
        assert_eq!(
            text,
            format!("B10{}::abc123.0123456789abcdef", "ab".repeat(32))
        );
        assert_eq!(text.parse::<JoinToken>().expect("parses"), token);
        for bad in [
            "abc123.0123456789abcdef",
            &format!("B10{}::abc123.0123456789abcde", "ab".repeat(32)),
            &format!("B10{}::ABC123.0123456789abcdef", "ab".repeat(32)),
            &format!("B10{}::abc123.0123456789abcdef", "zz".repeat(32)),
            "B10::abc123.0123456789abcdef",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_parts_are_lowercase_alphanumerics() {
        let part = random_token_part(16).expect("random");
        assert_eq!(part.len(), 16);
        assert!(
            part.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(part, random_token_part(16).expect("random"));
    }
}
