//! TLS for the API server: client certificates are optional (verified against the cluster CA
//! when given), ALPN offers HTTP/2 and HTTP/1.1, and the serving certificate renews itself
//! before it expires: a fresh one is issued when a fifth of its lifetime remains, and new
//! connections get it while open ones keep theirs.
//!
//! rustls refuses TLS 1.2 clients that send no `signature_algorithms` extension (RFC 5246
//! lets them: the server then signs with SHA-1), and busybox's wget is one, so a pod's
//! `wget https://kubernetes.default.svc` could not reach the API. Such a connection
//! ([`is_legacy_client_hello`]) is served by OpenSSL instead ([`legacy_acceptor`]), with the
//! same certificate, bearer tokens only.

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
    current: RwLock<(Arc<CertifiedKey>, Instant, Arc<Pem>)>,
    names: Vec<String>,
    lifetime: Duration,
}

/// A certificate and its key, PEM.
#[derive(Debug)]
struct Pem {
    cert: String,
    key: String,
}

fn certified(
    pki: &Pki,
    names: &[String],
    lifetime: Duration,
) -> Result<(Arc<CertifiedKey>, Arc<Pem>)> {
    let issued = pki.serving(names, lifetime)?;
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut issued.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())?.context("no serving key")?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    let pem = Pem {
        cert: issued.cert_pem.clone(),
        key: issued.key_pem.clone(),
    };
    Ok((Arc::new(CertifiedKey::new(certs, signing)), Arc::new(pem)))
}

impl ServingCert {
    /// Issues the first serving certificate.
    pub fn new(pki: &Pki, names: Vec<String>, lifetime: Duration) -> Result<Arc<Self>> {
        let (cert, pem) = certified(pki, &names, lifetime)?;
        Ok(Arc::new(Self {
            current: RwLock::new((cert, Instant::now() + lifetime, pem)),
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
        let (cert, pem) = certified(pki, &self.names, self.lifetime)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            (cert, Instant::now() + self.lifetime, pem);
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

impl ServingCert {
    /// An OpenSSL acceptor with the current certificate, for legacy clients: TLS 1.2, any
    /// signature hash (SHA-1 when the client names none), HTTP/1.1, no client certificates.
    pub fn legacy_acceptor(&self) -> Result<openssl::ssl::SslAcceptor> {
        use openssl::ssl::{SslAcceptor, SslMethod, SslVersion};
        let pem = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .2
            .clone();
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        // security level 0 allows the SHA-1 signature such a client expects
        b.set_cipher_list("ECDHE+AESGCM:ECDHE+AES:@SECLEVEL=0")?;
        let key = openssl::pkey::PKey::private_key_from_pem(pem.key.as_bytes())?;
        b.set_private_key(&key)?;
        let mut chain = openssl::x509::X509::stack_from_pem(pem.cert.as_bytes())?.into_iter();
        let leaf = chain.next().context("no serving certificate")?;
        b.set_certificate(&leaf)?;
        for extra in chain {
            b.add_extra_chain_cert(extra)?;
        }
        b.check_private_key()?;
        Ok(b.build())
    }
}

/// Whether `record` (the first bytes a client sent) is a TLS 1.2 ClientHello without the
/// `signature_algorithms` extension; `None` until the whole record has arrived.
pub fn is_legacy_client_hello(record: &[u8]) -> Option<bool> {
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    const SIGNATURE_ALGORITHMS: u16 = 13;
    if record.len() < 5 {
        return None;
    }
    if record[0] != HANDSHAKE {
        return Some(false);
    }
    let len = u16::from_be_bytes([record[3], record[4]]) as usize;
    let body = record.get(5..5 + len)?;
    if body.first() != Some(&CLIENT_HELLO) {
        return Some(false);
    }
    // type(1) length(3) version(2) random(32), then session id, ciphers, compression
    let mut at = 4 + 2 + 32;
    let skip = |at: &mut usize, width: usize| -> Option<()> {
        let n = match width {
            1 => *body.get(*at)? as usize,
            _ => u16::from_be_bytes([*body.get(*at)?, *body.get(*at + 1)?]) as usize,
        };
        *at += width + n;
        Some(())
    };
    let parsed = (|| {
        skip(&mut at, 1)?;
        skip(&mut at, 2)?;
        skip(&mut at, 1)?;
        let ext_len = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize;
        let mut ext = at + 2;
        let end = (ext + ext_len).min(body.len());
        while ext + 4 <= end {
            let kind = u16::from_be_bytes([body[ext], body[ext + 1]]);
            if kind == SIGNATURE_ALGORITHMS {
                return Some(false);
            }
            ext += 4 + u16::from_be_bytes([body[ext + 2], body[ext + 3]]) as usize;
        }
        Some(true)
    })();
    // a hello with no extensions at all is legacy too
    Some(parsed.unwrap_or(at >= body.len()))
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

    /// A ClientHello record with these extensions (type, data).
    fn hello(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.push(0); // no session id
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    #[test]
    fn client_hellos_without_signature_algorithms_are_legacy() {
        let busybox = hello(&[(0, b"\x00\x00"), (10, b"\x00\x04\x00\x17\x00\x1d")]);
        assert_eq!(is_legacy_client_hello(&busybox), Some(true));
        let modern = hello(&[(0, b""), (13, b"\x00\x02\x04\x03"), (43, b"\x02\x03\x04")]);
        assert_eq!(is_legacy_client_hello(&modern), Some(false));
        assert_eq!(is_legacy_client_hello(&busybox[..20]), None, "incomplete");
        assert_eq!(is_legacy_client_hello(b"GET / HTTP/1.1\r\n"), Some(false));
    }

    #[test]
    fn the_legacy_acceptor_serves_the_current_certificate() {
        let dir = tempfile::tempdir().expect("dir");
        let pki = Pki::load_or_create(dir.path()).expect("ca");
        let serving = ServingCert::new(&pki, vec!["localhost".into()], Duration::from_secs(60))
            .expect("cert");
        serving.legacy_acceptor().expect("acceptor");
    }

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
