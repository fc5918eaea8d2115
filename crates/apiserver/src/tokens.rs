//! Service account tokens: JWTs (ES256) signed by the cluster's service account key, with the
//! claims upstream's bound tokens carry (`sub`, `aud`, `exp`, and `kubernetes.io` naming the
//! namespace and service account), issued through the TokenRequest API and accepted as bearer
//! tokens while the service account exists.
//!
//! The JWT encoding is written here over `ring` (already in the tree for TLS): a header, claims
//! and an ECDSA signature, base64url-joined. A JWT crate would add a second crypto stack.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

/// The issuer and default audience of tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Signs and verifies service account tokens.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    rng: SystemRandom,
}

/// What a verified token says.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub name: String,
    /// The service account's uid when the token was issued.
    pub uid: String,
    /// The audiences.
    pub audiences: Vec<String>,
    /// The pod the token is bound to (name, uid), if any: it is valid only while that pod is.
    pub pod: Option<(String, String)>,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenIssuer {
    /// Loads the signing key from `<dir>/sa.key`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join("sa.key");
        let der = match std::fs::read(&path) {
            Ok(d) => d,
            Err(_) => {
                let key = rcgen::KeyPair::generate()?;
                let der = key.serialize_der();
                crate::pki::write_private(&path, &der)?;
                der
            }
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow::anyhow!("bad service account key {}: {e}", path.display()))
            .context("load the service account key")?;
        let public = key.public_key().as_ref().to_vec();
        Ok(Self { key, public, rng })
    }

    /// Issues a token for a service account, valid for `seconds` and bound to `pod` (name, uid)
    /// if given; returns it with its expiry (unix seconds).
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
        pod: Option<(&str, &str)>,
    ) -> Result<(String, i64)> {
        let now = chrono::Utc::now().timestamp();
        let exp = now + seconds;
        let header = json!({"alg": "ES256", "typ": "JWT"});
        let mut claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        });
        if let Some((pod, pod_uid)) = pod {
            claims["kubernetes.io"]["pod"] = json!({"name": pod, "uid": pod_uid});
        }
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing failed"))?;
        Ok((format!("{signing_input}.{}", b64(sig.as_ref())), exp))
    }

    /// Verifies a token's signature, issuer and expiry.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let decode = |p: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        };
        let sig = decode(s)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .ok()?;
        let claims: Value = serde_json::from_slice(&decode(c)?).ok()?;
        if claims.get("iss")? != ISSUER
            || claims.get("exp")?.as_i64()? < chrono::Utc::now().timestamp()
        {
            return None;
        }
        let k = claims.get("kubernetes.io")?;
        let audiences = match claims.get("aud")? {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Some(Claims {
            namespace: k.get("namespace")?.as_str()?.to_string(),
            name: k.get("serviceaccount")?.get("name")?.as_str()?.to_string(),
            uid: k.get("serviceaccount")?.get("uid")?.as_str()?.to_string(),
            audiences,
            pod: k.get("pod").and_then(|p| {
                let field = |f: &str| p.get(f)?.as_str().map(str::to_string);
                Some((field("name")?, field("uid")?))
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_tampered_ones_do_not() {
        let dir = tempfile::tempdir().expect("dir");
        let issuer = TokenIssuer::load_or_create(dir.path()).expect("key");
        let (token, _) = issuer
            .issue("ns", "reader", "u1", &[ISSUER.to_string()], 600, None)
            .expect("issue");
        let claims = issuer.verify(&token).expect("valid");
        assert_eq!(
            (
                claims.namespace.as_str(),
                claims.name.as_str(),
                claims.uid.as_str()
            ),
            ("ns", "reader", "u1")
        );
        assert_eq!(claims.pod, None);
        let (bound, _) = issuer
            .issue("ns", "reader", "u1", &[], 600, Some(("web-0", "p1")))
            .expect("issue");
        let claims = issuer.verify(&bound).expect("valid");
        assert_eq!(claims.pod, Some(("web-0".into(), "p1".into())));
        let mut forged = token.clone();
        forged.insert(token.len() / 2, 'x');
        assert!(issuer.verify(&forged).is_none());
        let (expired, _) = issuer
            .issue("ns", "reader", "u1", &[], -10, None)
            .expect("issue");
        assert!(issuer.verify(&expired).is_none());
        let again = TokenIssuer::load_or_create(dir.path()).expect("reload");
        assert!(again.verify(&token).is_some(), "the key survives restarts");
    }
}
