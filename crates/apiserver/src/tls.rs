//! TLS for the API server: client certificates are optional (verified against the cluster CA
//! when given), ALPN offers HTTP/2 and HTTP/1.1, and the serving certificate renews itself
//! before it expires: a fresh one is issued when a fifth of its lifetime remains, and new
//! connections get it while open ones keep theirs.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::pki::Pki;

/// The current serving certificate.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<(Arc<CertifiedKey>, Instant)>,
    names: Vec<String>,
    lifetime: Duration,
}

fn certified(pki: &Pki, names: &[String], lifetime: Duration) -> Result<Arc<CertifiedKey>> {
    let issued = pki.serving(names, lifetime)?;
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut issued.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())?.context("no serving key")?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl ServingCert {
    /// Issues the first serving certificate.
    pub fn new(pki: &Pki, names: Vec<String>, lifetime: Duration) -> Result<Arc<Self>> {
        let cert = certified(pki, &names, lifetime)?;
        Ok(Arc::new(Self {
            current: RwLock::new((cert, Instant::now() + lifetime)),
            names,
            lifetime,
        }))
    }

    /// When the current certificate expires.
    pub fn expires(&self) -> Instant {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Issues a new certificate if a fifth of the current one's lifetime or less remains.
    pub fn renew_if_due(&self, pki: &Pki) -> Result<bool> {
        if self.expires().saturating_duration_since(Instant::now()) > self.lifetime / 5 {
            return Ok(false);
        }
        let cert = certified(pki, &self.names, self.lifetime)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            (cert, Instant::now() + self.lifetime);
        Ok(true)
    }

    /// Renews the certificate in the background for as long as the server runs.
    pub fn keep_renewed(self: &Arc<Self>, pki: Arc<Pki>) {
        let me = self.clone();
        let check = (self.lifetime / 20).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(check).await;
                match me.renew_if_due(&pki) {
                    Ok(true) => tracing::info!("serving certificate renewed"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot renew the serving certificate"),
                }
            }
        });
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// The server's TLS configuration.
pub fn server_config(pki: &Pki, serving: Arc<ServingCert>) -> Result<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_when_a_fifth_of_the_lifetime_remains() {
        let dir = tempfile::tempdir().expect("dir");
        let pki = Pki::load_or_create(dir.path()).expect("ca");
        let serving =
            ServingCert::new(&pki, vec!["localhost".into()], Duration::from_secs(2)).expect("cert");
        let first = serving.expires();
        assert!(
            !serving.renew_if_due(&pki).expect("check"),
            "fresh certificates are kept"
        );
        std::thread::sleep(Duration::from_millis(1700));
        assert!(serving.renew_if_due(&pki).expect("renew"));
        assert!(serving.expires() > first);
    }
}
