//! Image references, normalized as docker and the kubelet do: `busybox` is
//! `docker.io/library/busybox:latest`, `user/app:v1` is `docker.io/user/app:v1`, a first part
//! with a dot, a colon or `localhost` names a registry.

/// Why a reference could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {0:?}")]
pub struct InvalidReference(pub String);

/// Normalizes a reference to `registry/repository:tag` (or `registry/repository@digest`).
pub fn normalize(reference: &str) -> Result<String, InvalidReference> {
    let r = reference.trim();
    if r.is_empty() || r.contains(char::is_whitespace) {
        return Err(InvalidReference(reference.to_string()));
    }
    let (name, suffix) = match r.find('@') {
        Some(at) => (&r[..at], r[at..].to_string()),
        None => {
            let last_slash = r.rfind('/').map_or(0, |i| i + 1);
            match r[last_slash..].find(':') {
                Some(colon) => (
                    &r[..last_slash + colon],
                    r[last_slash + colon..].to_string(),
                ),
                None => (r, ":latest".to_string()),
            }
        }
    };
    // repositories are lower-case
    if name.is_empty()
        || name.starts_with('/')
        || name.ends_with('/')
        || name.chars().any(|c| c.is_ascii_uppercase())
    {
        return Err(InvalidReference(reference.to_string()));
    }
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    Ok(format!("{full}{suffix}"))
}

/// Whether a reference names the `latest` tag (or no tag), as the `imagePullPolicy` default reads it.
pub fn is_latest(reference: &str) -> bool {
    normalize(reference).is_ok_and(|n| n.ends_with(":latest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_as_docker() {
        let n = |r: &str| normalize(r).expect(r);
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(
            n("docker.io/library/busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(n("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(n("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            n("registry.example.com/team/app:2"),
            "registry.example.com/team/app:2"
        );
        assert_eq!(n("app@sha256:abc"), "docker.io/library/app@sha256:abc");
        assert!(normalize("").is_err());
        assert!(normalize("a b").is_err());
        assert!(normalize("Busybox").is_err());
        assert!(is_latest("nginx"));
        assert!(!is_latest("nginx:1.27"));
    }
}
