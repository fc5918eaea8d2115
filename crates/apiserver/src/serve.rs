//! The HTTPS listener and the top-level routing: TLS with optional client certificates, HTTP/1.1
//! and HTTP/2, the anonymous health and version endpoints, and authentication in front of
//! everything else; and the in-process loopback through which bosun's own components reach the
//! same routing without a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::authn::UserInfo;
use crate::pki::{self, Pki};
use crate::status::ApiError;
use crate::storage::Storage;
use crate::{Config, State, codec, discovery, rest};

/// A running API server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin kubeconfig it wrote.
    pub admin_kubeconfig: PathBuf,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// The CA, to issue credentials for bosun's own components.
    pub pki: Arc<Pki>,
    /// The URL clients reach it at.
    pub url: String,
    /// Ends when the listener fails.
    pub task: tokio::task::JoinHandle<()>,
    /// The routing every request goes through.
    app: axum::Router,
}

impl Running {
    /// A client transport for one of bosun's own components in this process (`component`, as
    /// upstream names it: `kube-scheduler`, `kubelet`...), acting as `user` in `groups`:
    /// requests go to the routing directly, authenticated as a client certificate for that user
    /// would be, and then authorized, admitted and audited like any other. Their user agent
    /// names the component, which is thus the field manager of its writes, as upstream.
    /// (Upstream's kube-apiserver has the same for its own loopback client; here it spares
    /// each component a certificate, a TLS connection and its buffers.)
    pub fn loopback(&self, component: &str, user: &str, groups: &[&str]) -> Loopback {
        let groups = groups
            .iter()
            .map(|g| g.to_string())
            .chain(["system:authenticated".to_string()])
            .collect();
        let agent = format!("{component}/{} bosun", discovery::GIT_VERSION);
        Loopback {
            app: self.app.clone(),
            user: UserInfo {
                name: user.to_string(),
                groups,
            },
            user_agent: http::HeaderValue::try_from(agent)
                .unwrap_or(http::HeaderValue::from_static("bosun")),
        }
    }
}

/// A [`tower::Service`] that serves requests in process as one user (see
/// [`Running::loopback`]).
#[derive(Clone)]
pub struct Loopback {
    app: axum::Router,
    user: UserInfo,
    user_agent: http::HeaderValue,
}

impl<B> tower::Service<http::Request<B>> for Loopback
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut()
            .insert(Identity(Some(self.user.clone())));
        req.headers_mut()
            .entry(header::USER_AGENT)
            .or_insert_with(|| self.user_agent.clone());
        let app = self.app.clone();
        Box::pin(async move {
            Ok(tower::ServiceExt::oneshot(app, req.map(Body::new))
                .await
                .into_response())
        })
    }
}

/// The addresses of this machine's interfaces (from the kernel's routing tables).
fn local_addresses() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for pair in lines.windows(2) {
        if pair[1].contains("/32 host LOCAL")
            && let Some(ip) = pair[0].trim().strip_prefix("|-- ")
            && !out.iter().any(|x| x == ip)
        {
            out.push(ip.to_string());
        }
    }
    out
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub(crate) async fn serve(
    config: Config,
    storage: Storage,
    services: crate::services::ServiceRanges,
) -> Result<Running> {
    let pki = Arc::new(Pki::load_or_create(&config.data_dir.join("tls"))?);
    let mut sans = vec![
        hostname(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    sans.extend(local_addresses());
    sans.extend(config.extra_sans.iter().cloned());
    sans.dedup();
    let serving = crate::tls::ServingCert::new(&pki, sans, config.serving_cert_lifetime)?;
    serving.keep_renewed(pki.clone());
    let acceptor = TlsAcceptor::from(Arc::new(crate::tls::server_config(&pki, serving.clone())?));
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    if addr.ip().is_loopback() {
        tracing::warn!(
            "the API server listens on {addr} only: pods cannot reach it through the kubernetes Service"
        );
    }
    // the `kubernetes` Service leads to the port actually listened on
    crate::services::reconcile_api_service(
        &storage,
        &services,
        config.advertise_address,
        addr.port(),
    )
    .await?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let url = format!("https://{host}:{}", addr.port());
    let admin_kubeconfig = config.data_dir.join("admin.kubeconfig");
    let admin = pki.client("admin", &["system:masters"])?;
    pki::write_private(
        &admin_kubeconfig,
        pki::kubeconfig(&url, &pki.ca_pem, "admin", &admin).as_bytes(),
    )?;

    crate::bootstrap::cluster_info(
        &storage,
        &format!("https://{}:{}", config.advertise_address, addr.port()),
        &pki.ca_pem,
    )
    .await?;
    let tokens = crate::tokens::TokenIssuer::load_or_create(pki.dir())?;
    let auditor = match (&config.audit_policy_file, &config.audit_log_path) {
        (Some(policy), Some(log)) => Some(crate::audit::Auditor::open(policy, log)?),
        (None, None) => None,
        _ => anyhow::bail!("--audit-policy-file and --audit-log-path go together"),
    };
    let static_tokens = match &config.token_auth_file {
        Some(path) => crate::authn::read_token_file(path)?,
        None => HashMap::new(),
    };
    let kubelet_creds = pki.client(crate::KUBELET_CLIENT, &[])?;
    let kubelet_client = Arc::new(crate::node_proxy::client_config(
        &pki.ca_pem,
        &kubelet_creds.cert_pem,
        &kubelet_creds.key_pem,
    )?);
    let state = Arc::new(State {
        kubelet_client,
        storage,
        server_url: url.clone(),
        tokens,
        static_tokens,
        anonymous_auth: config.anonymous_auth,
        auditor,
        services,
        quota_charges: Default::default(),
    });
    let app = axum::Router::new().fallback(route).with_state(state);
    let listening = app.clone();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = listening.clone();
            let serving = serving.clone();
            tokio::spawn(async move {
                if is_legacy(&tcp).await {
                    let Ok(ssl) = serving
                        .legacy_acceptor()
                        .and_then(|a| Ok(openssl::ssl::Ssl::new(a.context())?))
                        .inspect_err(|e| tracing::warn!(error = %e, "legacy TLS setup failed"))
                    else {
                        return;
                    };
                    let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, tcp) else {
                        return;
                    };
                    if std::pin::Pin::new(&mut tls).accept().await.is_ok() {
                        serve_connection(tls, None, app).await;
                    }
                    return;
                }
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| UserInfo::from_certificate(c.as_ref()));
                serve_connection(tls, user, app).await;
            });
        }
    });
    Ok(Running {
        addr,
        admin_kubeconfig,
        ca_pem: pki.ca_pem.clone(),
        pki,
        url,
        task,
        app,
    })
}

/// Whether the client's first bytes are a ClientHello rustls refuses (see [`crate::tls`]);
/// waits up to 10 s for the whole record.
async fn is_legacy(tcp: &tokio::net::TcpStream) -> bool {
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await;
        let Ok(Ok(n)) = peeked else { return false };
        match crate::tls::is_legacy_client_hello(&buf[..n]) {
            Some(legacy) => return legacy,
            None if n == 0 || n == buf.len() => return false,
            None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// Serves HTTP on an accepted TLS connection whose client certificate named `user`.
async fn serve_connection<S>(tls: S, user: Option<UserInfo>, app: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Identity(user.clone()));
        let app = app.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                tower::ServiceExt::oneshot(app, req.map(Body::new))
                    .await
                    .into_response(),
            )
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await;
}

/// The user named by the connection's client certificate, if any.
#[derive(Clone)]
struct Identity(Option<UserInfo>);

fn text(code: StatusCode, body: &'static str) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn cached(slot: &'static OnceLock<Bytes>, make: fn() -> Value) -> Response {
    let bytes = slot.get_or_init(|| Bytes::from(serde_json::to_vec(&make()).unwrap_or_default()));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes.clone()))
        .unwrap_or_default()
}

fn openapi_v3(path: &str) -> Response {
    static DOCS: OnceLock<std::sync::Mutex<HashMap<String, Bytes>>> = OnceLock::new();
    let docs = DOCS.get_or_init(Default::default);
    let mut docs = docs.lock().unwrap_or_else(|p| p.into_inner());
    if !docs.contains_key(path) {
        let Some(doc) = api::openapi::v3_group_version(path) else {
            return ApiError::no_route(&format!("/openapi/v3/{path}")).into_response();
        };
        docs.insert(
            path.to_string(),
            Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()),
        );
    }
    let bytes = docs.get(path).cloned().unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .unwrap_or_default()
}

async fn route(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    match (&parts.method, path.as_str()) {
        (&Method::GET, "/healthz" | "/livez" | "/readyz") => return text(StatusCode::OK, "ok"),
        (&Method::GET, "/version") => {
            return codec::json_response(StatusCode::OK, &discovery::version());
        }
        _ => {}
    }
    let identity = parts.extensions.get::<Identity>().and_then(|i| i.0.clone());
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    let user = match (bearer, identity) {
        (Some(token), _) => crate::authn::from_bearer(&state, &token).await,
        (None, Some(user)) => Some(user),
        (None, None) => state.anonymous_auth.then(UserInfo::anonymous),
    };
    let Some(user) = user else {
        return ApiError::unauthorized().into_response();
    };
    let user = match crate::authn::impersonate(&state, user, &parts.headers).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let Some(auditor) = &state.auditor else {
        return serve_as(state.clone(), user, parts, body).await;
    };
    let query = crate::request::query_map(parts.uri.query());
    let info = crate::request::parse(&parts.method, &path, &query);
    let attrs = crate::authz::Attributes::of(info.as_ref(), &parts.method, &path);
    let level = auditor.level(&user, &attrs);
    if level == crate::audit::Level::None {
        return serve_as(state.clone(), user, parts, body).await;
    }
    let received = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let uri = parts.uri.to_string();
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match axum::body::to_bytes(body, codec::MAX_BODY + 1).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large().into_response(),
    };
    let request = serde_json::from_slice::<Value>(&body).ok();
    let (resp, noted) = crate::audit::noting(serve_as(
        state.clone(),
        user.clone(),
        parts,
        Body::from(body),
    ))
    .await;
    let code = resp.status().as_u16();
    let streaming = attrs.verb == "watch";
    let (resp, response) = if level == crate::audit::Level::RequestResponse && !streaming {
        let (head, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let value = serde_json::from_slice::<Value>(&bytes).ok();
        (Response::from_parts(head, Body::from(bytes)), value)
    } else {
        (resp, None)
    };
    auditor.log(
        level,
        crate::audit::Record {
            user: &user,
            attrs: &attrs,
            uri: &uri,
            user_agent: &user_agent,
            code,
            request,
            response,
            received,
            noted,
        },
    );
    resp
}

/// Serves an authenticated request: authorization, discovery and OpenAPI, resources.
async fn serve_as(
    state: Arc<State>,
    user: UserInfo,
    parts: http::request::Parts,
    body: Body,
) -> Response {
    let path = parts.uri.path().to_string();
    let json = |v: Option<Value>| match v {
        Some(v) => codec::json_response(StatusCode::OK, &v),
        None => ApiError::no_route(&path).into_response(),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resource_path = crate::request::parse(&parts.method, &path, &HashMap::new()).is_some();
    if !resource_path {
        let attrs = crate::authz::Attributes::of(None, &parts.method, &path);
        if let Err(e) = crate::authz::authorize(&state.storage, &user, &attrs).await {
            return e.into_response();
        }
    }
    if parts.method == Method::GET {
        static V2: OnceLock<Bytes> = OnceLock::new();
        static V3: OnceLock<Bytes> = OnceLock::new();
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .unwrap_or("");
        let wants_aggregated = accept.split(',').next().is_some_and(|first| {
            first.contains("as=APIGroupDiscoveryList") && first.contains("v=v2;")
        });
        if wants_aggregated && matches!(segments.as_slice(), ["api"] | ["apis"]) {
            let doc = discovery::aggregated(segments == ["api"]);
            let body = serde_json::to_vec(&doc).unwrap_or_default();
            return Response::builder()
                .header(header::CONTENT_TYPE, discovery::AGGREGATED)
                .body(Body::from(body))
                .unwrap_or_default();
        }
        match segments.as_slice() {
            ["api"] => {
                return codec::json_response(
                    StatusCode::OK,
                    &discovery::core_versions(&state.server_url),
                );
            }
            ["apis"] => return codec::json_response(StatusCode::OK, &discovery::groups()),
            ["api", v] => return json(discovery::resources("", v)),
            ["apis", g] => return json(discovery::group(g)),
            ["apis", g, v] => return json(discovery::resources(g, v)),
            ["openapi", "v2"] if accept.contains("protobuf") => {
                static V2_PB: OnceLock<Bytes> = OnceLock::new();
                let bytes =
                    V2_PB.get_or_init(|| Bytes::from(api::openapi_pb::encode(&api::openapi::v2())));
                return Response::builder()
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(Body::from(bytes.clone()))
                    .unwrap_or_default();
            }
            ["openapi", "v2"] => return cached(&V2, api::openapi::v2),
            ["openapi", "v3"] => return cached(&V3, api::openapi::v3_index),
            ["openapi", "v3", rest @ ..] => return openapi_v3(&rest.join("/")),
            _ => {}
        }
    }
    if crate::metrics::is_metrics_path(&path) {
        let query = crate::request::query_map(parts.uri.query());
        return match crate::request::parse(&parts.method, &path, &query) {
            Some(info) => {
                crate::metrics::serve(&state, &user, &parts.method, &path, info, &query).await
            }
            None => ApiError::no_route(&path).into_response(),
        };
    }
    if let Some(target) = crate::node_proxy::target(&parts.method, &path) {
        return crate::node_proxy::proxy(&state, &user, parts, target).await;
    }
    let body = match axum::body::to_bytes(body, codec::MAX_BODY + 1).await {
        Ok(b) if b.len() > codec::MAX_BODY => return ApiError::too_large().into_response(),
        Ok(b) => b,
        Err(_) => return ApiError::too_large().into_response(),
    };
    let resp = rest::handle(
        state,
        user,
        parts.method.clone(),
        &path,
        parts.uri.query(),
        parts.headers,
        body,
    )
    .await;
    if parts.method == Method::HEAD {
        return rest::empty(resp.status());
    }
    resp
}
