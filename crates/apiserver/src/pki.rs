//! The cluster's certificates: a CA made once and kept in the data dir, a serving certificate for
//! the API server, and client certificates (CN = user, O = groups) for the admin and for bosun's
//! own components. Also writes kubeconfig files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate chain's leaf, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

/// The cluster CA.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    ca_key_pem: String,
    dir: PathBuf,
}

fn validity(params: &mut CertificateParams, lifetime: time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lifetime;
}

/// How long client certificates issued at start are valid.
const CLIENT_VALIDITY: time::Duration = time::Duration::days(365);

/// Writes a file readable only by its owner, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl Pki {
    /// Loads the CA from `<dir>/ca.crt` and `<dir>/ca.key`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() && key.exists() {
            return Ok(Self {
                ca_pem: fs::read_to_string(&crt)?,
                ca_key_pem: fs::read_to_string(&key)?,
                dir: dir.to_path_buf(),
            });
        }
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("bosun-ca@{}", chrono::Utc::now().timestamp()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, time::Duration::days(3650));
        let cert = params.self_signed(&key_pair)?;
        let pki = Self {
            ca_pem: cert.pem(),
            ca_key_pem: key_pair.serialize_pem(),
            dir: dir.to_path_buf(),
        };
        write_private(&key, pki.ca_key_pem.as_bytes())?;
        write_private(&crt, pki.ca_pem.as_bytes())?;
        Ok(pki)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.ca_key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.ca_pem, key)?)
    }

    /// Issues a serving certificate for the given DNS names and IP addresses, valid for
    /// `lifetime`.
    pub fn serving(&self, names: &[String], lifetime: std::time::Duration) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let lifetime = time::Duration::try_from(lifetime).unwrap_or(CLIENT_VALIDITY);
        self.leaf(params, ExtendedKeyUsagePurpose::ServerAuth, lifetime)
    }

    /// Issues a client certificate for `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        self.leaf(params, ExtendedKeyUsagePurpose::ClientAuth, CLIENT_VALIDITY)
    }

    /// Signs a leaf certificate for one usage with a new key.
    fn leaf(
        &self,
        mut params: CertificateParams,
        usage: ExtendedKeyUsagePurpose,
        lifetime: time::Duration,
    ) -> Result<Issued> {
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut params, lifetime);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate signing request (PEM) as a client (or `server`) certificate valid for
    /// `seconds`, keeping the subject (CN = user, O = groups) and the alternative names it asks
    /// for; returns the certificate, PEM.
    pub fn sign_csr(&self, csr_pem: &str, seconds: i64, server: bool) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .context("the request is not a PEM certificate signing request")?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(5);
        csr.params.not_after = now + time::Duration::seconds(seconds);
        csr.params.is_ca = IsCa::NoCa;
        csr.params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }

    /// The directory holding the CA.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A kubeconfig with one cluster, one user (client certificate) and one context.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, creds: &Issued) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: bosun
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: bosun
  context:
    cluster: bosun
    user: {user}
current-context: bosun
preferences: {{}}
",
        ca = b64(ca_pem),
        cert = b64(&creds.cert_pem),
        key = b64(&creds.key_pem),
    )
}
