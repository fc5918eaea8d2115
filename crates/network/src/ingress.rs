//! The built-in Ingress proxy (the job traefik does in k3s): an HTTP and HTTPS reverse proxy
//! that routes each request by its host and path to the ready endpoints of a backend, as the
//! Ingress rules merged into one [`Routes`] table say. It knows nothing of the API: whoever
//! watches the Ingresses builds the table and hands it over with [`Ingress::set_routes`]; a new
//! table applies to the next request, so a reload drops no connection.
//!
//! Matching follows the Ingress specification: a host is exact or a wildcard of one leftmost
//! label (`*.example.com`), an exact host wins over a wildcard and a wildcard over rules without
//! a host; among the paths of the chosen host the longest match wins, `Exact` before `Prefix`
//! at equal length, a `Prefix` matching whole path elements (`/foo` matches `/foo/bar`, not
//! `/foobar`). Requests nothing matches go to the default backend, or get 404. TLS certificates
//! are chosen by the client's SNI the same way; without a match, a self-signed default serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How a path rule matches, as an Ingress path's `pathType` (`ImplementationSpecific` is a
/// prefix here, as traefik treats it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// The whole path, exactly.
    Exact,
    /// The path's leading elements.
    Prefix,
}

/// Where matching requests go: a Service port's ready endpoints.
#[derive(Clone, Debug, Default)]
pub struct Backend {
    /// For errors and logs: `namespace/service:port`.
    pub name: String,
    /// The ready endpoints; requests are spread over them in turn.
    pub endpoints: Vec<SocketAddr>,
}

/// One path of a host.
#[derive(Clone, Debug)]
pub struct PathRule {
    /// The path, starting with `/`.
    pub path: String,
    /// How it matches.
    pub kind: PathKind,
    /// Where requests go.
    pub backend: Backend,
}

/// The paths of one host; `host` is empty for rules that apply to every host.
#[derive(Clone, Debug)]
pub struct Rule {
    /// An exact host, a wildcard (`*.example.com`), or empty.
    pub host: String,
    /// Its paths.
    pub paths: Vec<PathRule>,
}

/// A certificate and key for the hosts of an Ingress's `tls` entry (no hosts: the default).
#[derive(Clone, Debug)]
pub struct Certificate {
    /// The hosts it serves, exact or wildcard.
    pub hosts: Vec<String>,
    /// The certificate chain and signing key.
    pub key: Arc<CertifiedKey>,
}

impl Certificate {
    /// A certificate from the PEM of a `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`.
    pub fn from_pem(hosts: Vec<String>, cert: &[u8], key: &[u8]) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert[..])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.crt: {e}"))?;
        if chain.is_empty() {
            return Err("tls.crt holds no certificate".into());
        }
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
            .map_err(|e| format!("tls.key: {e}"))?
            .ok_or("tls.key holds no private key")?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("tls.key: {e}"))?;
        Ok(Self {
            hosts,
            key: Arc::new(CertifiedKey::new(chain, signing)),
        })
    }
}

/// Everything the proxy serves: the merged rules of all Ingresses, the default backend and the
/// certificates.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// Rules, in any order (several may name the same host; their paths merge).
    pub rules: Vec<Rule>,
    /// Where requests no rule matches go.
    pub default_backend: Option<Backend>,
    /// TLS certificates.
    pub certificates: Vec<Certificate>,
}

/// Whether `pattern` (exact or `*.suffix`) matches `host`, and how well: 2 exact, 1 wildcard.
fn host_match(pattern: &str, host: &str) -> Option<u8> {
    if pattern.eq_ignore_ascii_case(host) {
        return Some(2);
    }
    let suffix = pattern.strip_prefix("*.")?;
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && rest.eq_ignore_ascii_case(suffix)).then_some(1)
}

/// Whether `rule` matches `path`.
fn path_matches(rule: &PathRule, path: &str) -> bool {
    match rule.kind {
        PathKind::Exact => rule.path == path,
        PathKind::Prefix => {
            let prefix = rule.path.trim_end_matches('/');
            prefix.is_empty()
                || path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
    }
}

impl Routes {
    /// The backend for a request to `host` (without port) and `path`, if any.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        // exact hosts, then wildcards, then rules for every host
        for quality in [2, 1, 0] {
            let best = self
                .rules
                .iter()
                .filter(|r| match quality {
                    0 => r.host.is_empty(),
                    q => host_match(&r.host, host) == Some(q),
                })
                .flat_map(|r| r.paths.iter())
                .filter(|p| path_matches(p, path))
                .max_by_key(|p| {
                    (
                        p.path.trim_end_matches('/').len(),
                        p.kind == PathKind::Exact,
                    )
                });
            if let Some(p) = best {
                return Some(&p.backend);
            }
        }
        self.default_backend.as_ref()
    }

    /// The certificate for a TLS connection that asked for `server_name`.
    fn certificate(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_host = server_name.and_then(|name| {
            self.certificates
                .iter()
                .filter_map(|c| {
                    let q = c.hosts.iter().filter_map(|h| host_match(h, name)).max()?;
                    Some((q, c))
                })
                .max_by_key(|(q, _)| *q)
                .map(|(_, c)| c.key.clone())
        });
        by_host.or_else(|| {
            self.certificates
                .iter()
                .find(|c| c.hosts.is_empty())
                .map(|c| c.key.clone())
        })
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// The proxy: its routes, its spread of requests over endpoints, and its client to them.
pub struct Ingress {
    routes: RwLock<Arc<Routes>>,
    next: AtomicUsize,
    client: Client<HttpConnector, Body>,
    fallback: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress").finish_non_exhaustive()
    }
}

/// How long connecting to an endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Ingress {
    /// A proxy with no routes yet (every request gets 404), its default certificate self-signed.
    pub fn new() -> Result<Arc<Self>, String> {
        let cert = rcgen::generate_simple_self_signed(vec!["bosun-ingress.invalid".to_string()])
            .map_err(|e| format!("default ingress certificate: {e}"))?;
        let fallback = Certificate::from_pem(
            Vec::new(),
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
        )?
        .key;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Ok(Arc::new(Self {
            routes: RwLock::new(Arc::default()),
            next: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            fallback,
        }))
    }

    /// Replaces the routes; requests already under way finish on the old ones.
    pub fn set_routes(&self, routes: Routes) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }

    fn routes(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves plain HTTP on `addr` until the listener fails.
    pub async fn serve_http(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let (tcp, peer) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            tokio::spawn(self.clone().connection(TokioIo::new(tcp), peer, "http"));
        }
    }

    /// Serves HTTPS on `addr`, with the certificates of the routes, until the listener fails.
    pub async fn serve_https(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let (tcp, peer) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let (this, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    this.connection(TokioIo::new(tls), peer, "https").await;
                }
            });
        }
    }

    async fn connection<IO>(
        self: Arc<Self>,
        io: TokioIo<IO>,
        peer: SocketAddr,
        scheme: &'static str,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.forward(req, peer, scheme).await) }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    }

    /// Sends `req` on to the backend its host and path route to, and its answer back.
    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Response<Body> {
        let host = request_host(&req);
        let routes = self.routes();
        let Some(backend) = routes.route(host_without_port(&host), req.uri().path()) else {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        };
        if backend.endpoints.is_empty() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no available server\n");
        }
        let (mut parts, body) = req.into_parts();
        for name in HOP_BY_HOP {
            parts.headers.remove(*name);
        }
        let forwarded_for = match parts.headers.get("x-forwarded-for") {
            Some(v) => format!("{}, {}", v.to_str().unwrap_or_default(), peer.ip()),
            None => peer.ip().to_string(),
        };
        for (name, value) in [
            ("x-forwarded-for", forwarded_for),
            ("x-forwarded-host", host.clone()),
            ("x-forwarded-proto", scheme.to_string()),
            ("x-real-ip", peer.ip().to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                parts.headers.insert(HeaderName::from_static(name), v);
            }
        }
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&host)
        {
            // HTTP/2 carries the host as :authority; the endpoint speaks HTTP/1.1
            parts.headers.insert(header::HOST, v);
        }
        parts.version = http::Version::HTTP_11;
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        // a request without a body may go to the next endpoint when connecting fails; one
        // with a body gets one attempt, its body being consumed by it
        let attempts = if hyper::body::Body::is_end_stream(&body) {
            backend.endpoints.len()
        } else {
            1
        };
        let mut body = Some(body.boxed());
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..attempts {
            let endpoint = backend.endpoints[(first + i) % backend.endpoints.len()];
            let Ok(uri) = Uri::builder()
                .scheme("http")
                .authority(endpoint.to_string())
                .path_and_query(path.as_str())
                .build()
            else {
                return text(StatusCode::BAD_REQUEST, "bad request path\n");
            };
            let mut attempt = Request::from_parts(parts.clone(), body.take().unwrap_or_else(empty));
            *attempt.uri_mut() = uri;
            match self.client.request(attempt).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    for name in HOP_BY_HOP {
                        parts.headers.remove(*name);
                    }
                    return Response::from_parts(parts, body.boxed());
                }
                Err(e) if e.is_connect() && i + 1 < attempts => {
                    tracing::debug!(%endpoint, backend = %backend.name, error = %e, "ingress endpoint unreachable; trying the next");
                }
                Err(e) => {
                    tracing::debug!(%endpoint, backend = %backend.name, error = %e, "ingress request failed");
                    break;
                }
            }
        }
        text(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
    }
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The host a request names: its `Host` header, or its URI's authority (HTTP/2).
fn request_host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// `host` without its port (`[::1]:80` gives `[::1]`).
fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if !h.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !host.ends_with(']') =>
        {
            h
        }
        _ => host,
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(body.as_bytes()));
    let mut resp = Response::new(body.map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Picks the certificate for each TLS connection from the routes of the moment.
#[derive(Debug)]
struct Resolver(Arc<Ingress>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let routes = self.0.routes();
        Some(
            routes
                .certificate(hello.server_name())
                .unwrap_or_else(|| self.0.fallback.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> Backend {
        Backend {
            name: name.into(),
            endpoints: Vec::new(),
        }
    }

    fn path(path: &str, kind: PathKind, to: &str) -> PathRule {
        PathRule {
            path: path.into(),
            kind,
            backend: backend(to),
        }
    }

    fn routes() -> Routes {
        Routes {
            rules: vec![
                Rule {
                    host: "foo.example.com".into(),
                    paths: vec![
                        path("/", PathKind::Prefix, "foo-root"),
                        path("/api", PathKind::Prefix, "foo-api"),
                        path("/api", PathKind::Exact, "foo-api-exact"),
                    ],
                },
                Rule {
                    host: "*.example.com".into(),
                    paths: vec![path("/", PathKind::Prefix, "wild")],
                },
                Rule {
                    host: String::new(),
                    paths: vec![
                        path("/a/", PathKind::Prefix, "any-a"),
                        path("/exact", PathKind::Exact, "any-exact"),
                    ],
                },
                // a second Ingress for the same host adds paths
                Rule {
                    host: "foo.example.com".into(),
                    paths: vec![path("/api/v2", PathKind::Prefix, "foo-v2")],
                },
            ],
            default_backend: Some(backend("default")),
            certificates: Vec::new(),
        }
    }

    fn to(host: &str, p: &str) -> Option<String> {
        routes().route(host, p).map(|b| b.name.clone())
    }

    #[test]
    fn longest_path_wins_and_exact_beats_prefix() {
        assert_eq!(to("foo.example.com", "/").as_deref(), Some("foo-root"));
        assert_eq!(
            to("foo.example.com", "/api").as_deref(),
            Some("foo-api-exact")
        );
        assert_eq!(to("foo.example.com", "/api/").as_deref(), Some("foo-api"));
        assert_eq!(to("foo.example.com", "/api/x").as_deref(), Some("foo-api"));
        assert_eq!(to("foo.example.com", "/apix").as_deref(), Some("foo-root"));
        assert_eq!(
            to("foo.example.com", "/api/v2/x").as_deref(),
            Some("foo-v2")
        );
        assert_eq!(to("FOO.example.com", "/").as_deref(), Some("foo-root"));
    }

    #[test]
    fn wildcards_cover_one_label_and_hostless_rules_every_host() {
        assert_eq!(to("bar.example.com", "/x").as_deref(), Some("wild"));
        // a wildcard covers exactly one label
        assert_eq!(to("a.b.example.com", "/a/b").as_deref(), Some("any-a"));
        assert_eq!(to("example.com", "/a").as_deref(), Some("any-a"));
        // a trailing slash in a prefix is ignored; elements match whole
        assert_eq!(to("x", "/a").as_deref(), Some("any-a"));
        assert_eq!(to("x", "/ab").as_deref(), Some("default"));
        assert_eq!(to("x", "/exact").as_deref(), Some("any-exact"));
        assert_eq!(to("x", "/exact/").as_deref(), Some("default"));
    }

    #[test]
    fn no_match_without_a_default_backend() {
        let mut r = routes();
        r.default_backend = None;
        assert!(r.route("x", "/nothing").is_none());
    }

    #[test]
    fn ports_are_not_part_of_the_host() {
        assert_eq!(host_without_port("foo.example.com:8080"), "foo.example.com");
        assert_eq!(host_without_port("foo.example.com"), "foo.example.com");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn certificates_follow_sni_and_fall_back_to_the_hostless_one() {
        let cert = |hosts: &[&str]| {
            let c = rcgen::generate_simple_self_signed(vec!["x".to_string()]).expect("certificate");
            Certificate::from_pem(
                hosts.iter().map(|h| h.to_string()).collect(),
                c.cert.pem().as_bytes(),
                c.signing_key.serialize_pem().as_bytes(),
            )
            .expect("from pem")
        };
        let (exact, wild, any) = (
            cert(&["a.example.com"]),
            cert(&["*.example.com"]),
            cert(&[]),
        );
        let r = Routes {
            certificates: vec![wild.clone(), exact.clone(), any.clone()],
            ..Default::default()
        };
        let pick = |n: Option<&str>| r.certificate(n).expect("a certificate");
        assert!(Arc::ptr_eq(&pick(Some("a.example.com")), &exact.key));
        assert!(Arc::ptr_eq(&pick(Some("b.example.com")), &wild.key));
        assert!(Arc::ptr_eq(&pick(Some("other.org")), &any.key));
        assert!(Arc::ptr_eq(&pick(None), &any.key));
        assert!(Certificate::from_pem(vec![], b"junk", b"junk").is_err());
    }
}
