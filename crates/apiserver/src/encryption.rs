//! Encryption at rest, configured by an upstream `EncryptionConfiguration`
//! (`apiserver.config.k8s.io/v1`): for each listed resource, the first provider encrypts what is
//! written and every provider may decrypt what is read, so keys rotate by adding a new first key
//! and re-writing the objects. Providers: `aescbc`, `aesgcm`, `secretbox`, `identity`, with
//! upstream's stored form `k8s:enc:<provider>:v1:<key name>:<nonce><ciphertext>`.
//!
//! It wraps the store backend, so the store's files (log and database) only ever hold
//! ciphertext for the configured resources, and everything above sees plain objects.

use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use anyhow::{Context, Result, bail};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use store::{Backend, BoxFuture, Event, KeyValue, ListWatch, Range, Watch};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cipher {
    AesCbc,
    AesGcm,
    Secretbox,
}

impl Cipher {
    fn name(self) -> &'static str {
        match self {
            Self::AesCbc => "aescbc",
            Self::AesGcm => "aesgcm",
            Self::Secretbox => "secretbox",
        }
    }
}

enum Provider {
    Identity,
    Keys(Cipher, Vec<(String, Vec<u8>)>),
}

/// The providers of one group of resources, by store key prefix.
struct Rule {
    prefixes: Vec<String>,
    providers: Vec<Provider>,
}

/// The encryption configuration.
pub struct Encryption {
    rules: Vec<Rule>,
    rng: SystemRandom,
}

fn prefix_of(resource: &str) -> String {
    // "secrets" (core), "deployments.apps", "*.apps", "*.*"
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    let group = if group.is_empty() { "core" } else { group };
    match (plural, group) {
        ("*", "*") => "/registry/".to_string(),
        ("*", g) => format!("/registry/{g}/"),
        (p, g) => format!("/registry/{g}/{p}/"),
    }
}

fn seal(
    cipher: Cipher,
    key: &[u8],
    plaintext: &[u8],
    aad: &[u8],
    rng: &SystemRandom,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match cipher {
        Cipher::AesGcm => {
            let mut nonce = [0u8; 12];
            rng.fill(&mut nonce)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            let sealed = match key.len() {
                16 => aes_gcm::Aes128Gcm::new_from_slice(key)?.encrypt(
                    (&nonce).into(),
                    Payload {
                        msg: plaintext,
                        aad,
                    },
                ),
                32 => aes_gcm::Aes256Gcm::new_from_slice(key)?.encrypt(
                    (&nonce).into(),
                    Payload {
                        msg: plaintext,
                        aad,
                    },
                ),
                n => bail!("an aesgcm key must be 16 or 32 bytes, not {n}"),
            }
            .map_err(|_| anyhow::anyhow!("aesgcm encryption failed"))?;
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
        Cipher::AesCbc => {
            use cbc::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
            let mut iv = [0u8; 16];
            rng.fill(&mut iv)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            let sealed = match key.len() {
                16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)?
                    .encrypt_padded_vec_mut::<Pkcs7>(plaintext),
                24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(key, &iv)?
                    .encrypt_padded_vec_mut::<Pkcs7>(plaintext),
                32 => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)?
                    .encrypt_padded_vec_mut::<Pkcs7>(plaintext),
                n => bail!("an aescbc key must be 16, 24 or 32 bytes, not {n}"),
            };
            out.extend_from_slice(&iv);
            out.extend_from_slice(&sealed);
        }
        Cipher::Secretbox => {
            let mut nonce = [0u8; 24];
            rng.fill(&mut nonce)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            let sealed = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
                .map_err(|_| anyhow::anyhow!("a secretbox key must be 32 bytes"))?
                .encrypt((&nonce).into(), plaintext)
                .map_err(|_| anyhow::anyhow!("secretbox encryption failed"))?;
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
    }
    Ok(out)
}

fn open(cipher: Cipher, key: &[u8], data: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    match cipher {
        Cipher::AesGcm => {
            let (nonce, sealed) = (data.get(..12)?, data.get(12..)?);
            let payload = Payload { msg: sealed, aad };
            match key.len() {
                16 => aes_gcm::Aes128Gcm::new_from_slice(key)
                    .ok()?
                    .decrypt(nonce.into(), payload)
                    .ok(),
                32 => aes_gcm::Aes256Gcm::new_from_slice(key)
                    .ok()?
                    .decrypt(nonce.into(), payload)
                    .ok(),
                _ => None,
            }
        }
        Cipher::AesCbc => {
            use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
            let (iv, sealed) = (data.get(..16)?, data.get(16..)?);
            match key.len() {
                16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pkcs7>(sealed)
                    .ok(),
                24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pkcs7>(sealed)
                    .ok(),
                32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pkcs7>(sealed)
                    .ok(),
                _ => None,
            }
        }
        Cipher::Secretbox => {
            let (nonce, sealed) = (data.get(..24)?, data.get(24..)?);
            crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
                .ok()?
                .decrypt(nonce.into(), sealed)
                .ok()
        }
    }
}

impl Encryption {
    /// Reads an EncryptionConfiguration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the encryption configuration {}",
                path.display()
            )
        })?;
        let doc: Value = serde_saphyr::from_str(&text)
            .with_context(|| format!("{} is not YAML", path.display()))?;
        if doc.get("kind").and_then(Value::as_str) != Some("EncryptionConfiguration") {
            bail!(
                "{} is not an apiserver.config.k8s.io/v1 EncryptionConfiguration",
                path.display()
            );
        }
        let mut rules = Vec::new();
        for (i, r) in doc
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let prefixes: Vec<String> = r
                .get("resources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(prefix_of)
                .collect();
            let mut providers = Vec::new();
            for p in r
                .get("providers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if p.get("identity").is_some() {
                    providers.push(Provider::Identity);
                    continue;
                }
                let (cipher, body) = [Cipher::AesCbc, Cipher::AesGcm, Cipher::Secretbox]
                    .into_iter()
                    .find_map(|c| p.get(c.name()).map(|b| (c, b)))
                    .with_context(|| format!("resources[{i}]: unsupported provider {p} (aescbc, aesgcm, secretbox, identity)"))?;
                let mut keys = Vec::new();
                for k in body
                    .get("keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = k
                        .get("name")
                        .and_then(Value::as_str)
                        .context("a key without a name")?
                        .to_string();
                    let secret = k
                        .get("secret")
                        .and_then(Value::as_str)
                        .context("a key without a secret")?;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(secret)
                        .with_context(|| format!("key {name}: the secret is not base64"))?;
                    // check the key works before any write depends on it
                    seal(cipher, &bytes, b"", b"", &SystemRandom::new())
                        .with_context(|| format!("key {name}"))?;
                    keys.push((name, bytes));
                }
                if keys.is_empty() {
                    bail!("resources[{i}]: the {} provider has no keys", cipher.name());
                }
                providers.push(Provider::Keys(cipher, keys));
            }
            if providers.is_empty() {
                bail!("resources[{i}] lists no providers");
            }
            rules.push(Rule {
                prefixes,
                providers,
            });
        }
        Ok(Self {
            rules,
            rng: SystemRandom::new(),
        })
    }

    fn providers(&self, key: &str) -> Option<&[Provider]> {
        self.rules
            .iter()
            .find(|r| r.prefixes.iter().any(|p| key.starts_with(p.as_str())))
            .map(|r| r.providers.as_slice())
    }

    /// The stored form of a value written at `key`.
    pub fn encrypt(&self, key: &str, plaintext: Vec<u8>) -> store::Result<Vec<u8>> {
        match self.providers(key).and_then(|p| p.first()) {
            None | Some(Provider::Identity) => Ok(plaintext),
            Some(Provider::Keys(cipher, keys)) => {
                let (name, secret) = &keys[0];
                let aad: &[u8] = if *cipher == Cipher::AesGcm {
                    key.as_bytes()
                } else {
                    b""
                };
                let sealed = seal(*cipher, secret, &plaintext, aad, &self.rng)
                    .map_err(|e| store::Error::Storage(e.to_string()))?;
                let mut out = format!("k8s:enc:{}:v1:{name}:", cipher.name()).into_bytes();
                out.extend_from_slice(&sealed);
                Ok(out)
            }
        }
    }

    /// Whether a stored value was written otherwise than the first provider writes now.
    pub fn is_stale(&self, key: &str, stored: &[u8]) -> bool {
        let current = match self.providers(key).and_then(|p| p.first()) {
            None | Some(Provider::Identity) => return stored.starts_with(b"k8s:enc:"),
            Some(Provider::Keys(cipher, keys)) => {
                format!("k8s:enc:{}:v1:{}:", cipher.name(), keys[0].0)
            }
        };
        !stored.starts_with(current.as_bytes())
    }

    /// The plain value of what is stored at `key`.
    pub fn decrypt(&self, key: &str, stored: &[u8]) -> store::Result<Vec<u8>> {
        let Some(rest) = stored.strip_prefix(b"k8s:enc:") else {
            return Ok(stored.to_vec());
        };
        let fail =
            || store::Error::Storage(format!("cannot decrypt {key}: no configured key opens it"));
        let mut parts = rest.splitn(4, |b| *b == b':');
        let (cipher, _version, name, data) = (
            parts.next().ok_or_else(fail)?,
            parts.next().ok_or_else(fail)?,
            parts.next().ok_or_else(fail)?,
            parts.next().ok_or_else(fail)?,
        );
        for p in self.providers(key).into_iter().flatten() {
            if let Provider::Keys(c, keys) = p
                && c.name().as_bytes() == cipher
            {
                for (n, secret) in keys {
                    if n.as_bytes() == name {
                        let aad: &[u8] = if *c == Cipher::AesGcm {
                            key.as_bytes()
                        } else {
                            b""
                        };
                        return open(*c, secret, data, aad).ok_or_else(fail);
                    }
                }
            }
        }
        Err(fail())
    }
}

/// A backend whose values are encrypted as the configuration says.
pub struct EncryptedBackend {
    inner: Arc<dyn Backend>,
    enc: Arc<Encryption>,
}

impl EncryptedBackend {
    /// Wraps a backend.
    pub fn new(inner: Arc<dyn Backend>, enc: Encryption) -> Self {
        Self {
            inner,
            enc: Arc::new(enc),
        }
    }
}

fn plain(enc: &Encryption, mut kv: KeyValue) -> store::Result<KeyValue> {
    kv.value = enc.decrypt(&kv.key, &kv.value)?.into();
    Ok(kv)
}

fn plain_event(enc: &Encryption, e: Event) -> store::Result<Event> {
    Ok(Event {
        kind: e.kind,
        kv: plain(enc, e.kv)?,
        prev: e.prev.map(|p| plain(enc, p)).transpose()?,
    })
}

/// Decrypts a watch's events on their way to the watcher.
fn plain_watch(enc: Arc<Encryption>, mut watch: Watch) -> Watch {
    let (tx, events) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(e) = watch.events.recv().await {
            match plain_event(&enc, e) {
                Ok(e) => {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "dropping a watch: stored value cannot be decrypted");
                    return;
                }
            }
        }
    });
    Watch { events }
}

impl Backend for EncryptedBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, store::Result<Option<KeyValue>>> {
        Box::pin(async move {
            self.inner
                .get(key)
                .await?
                .map(|kv| plain(&self.enc, kv))
                .transpose()
        })
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, store::Result<Range>> {
        Box::pin(async move {
            let mut r = self.inner.range(prefix, start_after, limit).await?;
            r.kvs = r
                .kvs
                .into_iter()
                .map(|kv| plain(&self.enc, kv))
                .collect::<store::Result<_>>()?;
            Ok(r)
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, store::Result<u64>> {
        Box::pin(async move { self.inner.create(key, self.enc.encrypt(key, value)?).await })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'a, store::Result<u64>> {
        Box::pin(async move {
            self.inner
                .update(key, self.enc.encrypt(key, value)?, expected)
                .await
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
    ) -> BoxFuture<'a, store::Result<(u64, KeyValue)>> {
        Box::pin(async move {
            let (rev, last) = self.inner.delete(key, expected).await?;
            Ok((rev, plain(&self.enc, last)?))
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: u64) -> BoxFuture<'a, store::Result<Watch>> {
        Box::pin(async move {
            Ok(plain_watch(
                self.enc.clone(),
                self.inner.watch(prefix, after).await?,
            ))
        })
    }

    fn list_watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, store::Result<ListWatch>> {
        Box::pin(async move {
            let lw = self.inner.list_watch(prefix).await?;
            let kvs = lw
                .kvs
                .into_iter()
                .map(|kv| plain(&self.enc, kv))
                .collect::<store::Result<_>>()?;
            Ok(ListWatch {
                kvs,
                revision: lw.revision,
                watch: plain_watch(self.enc.clone(), lw.watch),
            })
        })
    }

    fn revision(&self) -> u64 {
        self.inner.revision()
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, store::Result<()>> {
        self.inner.compact(revision)
    }

    fn stale<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            matches!(self.inner.get(key).await, Ok(Some(kv)) if self.enc.is_stale(key, &kv.value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(providers: &str) -> (tempfile::TempDir, Encryption) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("enc.yaml");
        std::fs::write(&path, format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}")).expect("write");
        let enc = Encryption::load(&path).expect("load");
        (dir, enc)
    }

    const K32: &str = "c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbyEhISE="; // 32 bytes
    const K16: &str = "MTIzNDU2Nzg5MDEyMzQ1Ng=="; // 16 bytes

    #[test]
    fn every_provider_round_trips_and_hides_the_value() {
        for p in ["aescbc", "aesgcm", "secretbox"] {
            let (_d, enc) = config(&format!(
                "  - {p}:\n      keys:\n      - name: k1\n        secret: {K32}\n  - identity: {{}}\n"
            ));
            let key = "/registry/core/secrets/ns/s";
            let stored = enc
                .encrypt(key, b"{\"data\":{\"password\":\"hunter2\"}}".to_vec())
                .expect("encrypt");
            assert!(
                stored.starts_with(format!("k8s:enc:{p}:v1:k1:").as_bytes()),
                "{p}"
            );
            assert!(
                !stored.windows(7).any(|w| w == b"hunter2"),
                "{p} hides the value"
            );
            assert_eq!(
                enc.decrypt(key, &stored).expect("decrypt"),
                b"{\"data\":{\"password\":\"hunter2\"}}"
            );
            assert_eq!(
                enc.encrypt("/registry/core/configmaps/ns/c", b"x".to_vec())
                    .expect("identity"),
                b"x",
                "other resources stay plain"
            );
        }
    }

    #[test]
    fn rotation_reads_old_keys_and_identity_reads_plain_data() {
        let (_d, old) = config(&format!(
            "  - aescbc:\n      keys:\n      - name: old\n        secret: {K16}\n"
        ));
        let key = "/registry/core/secrets/ns/s";
        let sealed = old.encrypt(key, b"v".to_vec()).expect("encrypt");
        let (_d, new) = config(&format!(
            "  - aesgcm:\n      keys:\n      - name: new\n        secret: {K32}\n  - aescbc:\n      keys:\n      - name: old\n        secret: {K16}\n  - identity: {{}}\n"
        ));
        assert_eq!(
            new.decrypt(key, &sealed).expect("old key still reads"),
            b"v"
        );
        assert_eq!(
            new.decrypt(key, b"{\"plain\":1}").expect("identity"),
            b"{\"plain\":1}"
        );
        assert!(
            new.encrypt(key, b"v".to_vec())
                .expect("encrypt")
                .starts_with(b"k8s:enc:aesgcm:v1:new:")
        );
        let (_d, other) = config(&format!(
            "  - secretbox:\n      keys:\n      - name: x\n        secret: {K32}\n"
        ));
        assert!(
            other.decrypt(key, &sealed).is_err(),
            "an unknown key is an error, not garbage"
        );
    }
}
