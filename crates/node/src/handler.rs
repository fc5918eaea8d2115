//! The actions of lifecycle hooks and probes: `exec` a command in the
//! container (success is exit code 0), `httpGet` (success is a status from 200 to 399) and
//! `tcpSocket` (success is an accepted connection), each within a timeout, as kubelet runs them.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified};
use rustls::pki_types::CertificateDer;

use crate::Agent;

/// A port as a handler names it: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port: {name} in {}", container.name))
        }
    }
}

/// The host (the pod's address unless the action names one) and port an action reaches.
fn target(
    host: Option<&str>,
    port: &IntOrString,
    container: &Container,
    pod_ip: &str,
) -> Result<(String, u16), String> {
    let host = host.filter(|h| !h.is_empty()).unwrap_or(pod_ip).to_string();
    Ok((host, resolve_port(port, container)?))
}

/// Runs a command in container `id`; Ok when it exits 0.
pub async fn exec(
    agent: &Agent,
    id: &str,
    action: &ExecAction,
    timeout: Duration,
) -> Result<(), String> {
    let command = action.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err("the exec action has no command".into());
    }
    let mut cmd = tokio::process::Command::from(agent.runtime.exec_command(id, &command, None));
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let run = async {
        let out = cmd.output().await.map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Err(format!(
                "command {command:?} exited with {}: {}",
                out.status.code().unwrap_or(-1),
                text.trim()
            ))
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("command {command:?} timed out after {timeout:?}"))?
}

/// How many redirects an HTTP GET follows, as Go's HTTP client.
const MAX_REDIRECTS: usize = 10;

/// How much of a response body a probe keeps, as kubelet.
const MAX_BODY: usize = 10 * 1024;

/// A successful HTTP GET.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// The final status, from 200 to 399.
    pub status: u16,
    /// Set when the GET ended on a redirect it did not follow (to another host), which kubelet
    /// counts as a success with a warning ("Probe terminated redirects, Response body: …").
    pub warning: Option<String>,
}

/// Sends an HTTP GET (HTTPS without checking the server's certificate, as kubelet does); Ok
/// when the status is from 200 to 399. Redirects are followed as kubelet's prober follows
/// them: on the same host only, at most ten.
pub async fn http_get(
    action: &HTTPGetAction,
    container: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Result<Reply, String> {
    let tls = action
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let scheme = if tls { "https" } else { "http" };
    let (host, port) = target(action.host.as_deref(), &action.port, container, pod_ip)?;
    let path = action
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host,
    };
    let first = format!("{scheme}://{host}:{port}{path}");
    let mut url = url::Url::parse(&first).map_err(|e| format!("Get \"{first}\": {e}"))?;
    let headers: Vec<(&str, &str)> = action
        .http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    let run = async {
        let mut hops = 0;
        loop {
            let (status, location, body) = fetch(&url, &headers)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            if let Some(location) = location {
                let next = url
                    .join(&location)
                    .map_err(|e| format!("Get \"{location}\": {e}"))?;
                if next.host_str() == url.host_str() {
                    hops += 1;
                    if hops >= MAX_REDIRECTS {
                        return Err(format!(
                            "Get \"{next}\": stopped after {MAX_REDIRECTS} redirects"
                        ));
                    }
                    url = next;
                    continue;
                }
            }
            return match status {
                200..300 => Ok(Reply {
                    status,
                    warning: None,
                }),
                300..400 => Ok(Reply {
                    status,
                    warning: Some(format!("Probe terminated redirects, Response body: {body}")),
                }),
                _ => Err(format!("HTTP probe failed with statuscode: {status}")),
            };
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("Get \"{first}\": context deadline exceeded"))?
}

/// One GET over a fresh HTTP/1.1 connection: the status, the Location of a redirect Go's
/// client follows (301, 302, 303, 307, 308), and the start of a redirect's body.
async fn fetch(
    url: &url::Url,
    headers: &[(&str, &str)],
) -> Result<(u16, Option<String>, String), String> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let mut req = http::Request::get(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(
            http::header::HOST,
            &url[url::Position::BeforeHost..url::Position::AfterPort],
        )
        .header(http::header::USER_AGENT, "kube-probe/1.33")
        .header(http::header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        let name = http::HeaderName::try_from(*name).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::try_from(*value).map_err(|e| e.to_string())?;
        // a Host header of the probe's own replaces the URL's, as upstream
        if name == http::header::HOST {
            req.headers_mut().insert(name, value);
        } else {
            req.headers_mut().append(name, value);
        }
    }
    let address = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((address, port))
        .await
        .map_err(|e| e.to_string())?;
    let resp = if url.scheme() == "https" {
        let name = rustls::pki_types::ServerName::try_from(address.to_string())
            .map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(insecure_tls())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(stream, req).await?
    } else {
        send(tcp, req).await?
    };
    let status = resp.status().as_u16();
    let location = matches!(status, 301 | 302 | 303 | 307 | 308)
        .then(|| resp.headers().get(http::header::LOCATION)?.to_str().ok())
        .flatten()
        .map(str::to_string);
    let body = if (300..400).contains(&status) {
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
        match limited.collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        }
    } else {
        String::new()
    };
    Ok((status, location, body))
}

/// Sends one request over a fresh HTTP/1.1 connection.
async fn send<T>(
    io: T,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// A TLS client that accepts any server certificate (its signatures are still checked).
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Accepts whatever certificate the server presents.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a TCP connection; Ok when it is accepted.
pub async fn tcp_socket(
    action: &TCPSocketAction,
    container: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    let (host, port) = target(action.host.as_deref(), &action.port, container, pod_ip)?;
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

/// Runs a lifecycle hook (postStart or preStop) of a container.
pub async fn run_hook(
    agent: &Agent,
    hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    container: &Container,
    id: &str,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = &hook.exec {
        return exec(agent, id, e, timeout).await;
    }
    if let Some(h) = &hook.http_get {
        return http_get(h, container, pod_ip, timeout).await.map(|_| ());
    }
    if let Some(t) = &hook.tcp_socket {
        return tcp_socket(t, container, pod_ip, timeout).await;
    }
    if let Some(s) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    Err("the hook has no action".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn https_gets_skip_certificate_checks() {
        let cert = rcgen::generate_simple_self_signed(vec!["probe.invalid".into()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await;
            let _ = tls
                .write_all(b"HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let action: HTTPGetAction = serde_json::from_value(serde_json::json!({
            "path": "/healthz", "port": port, "scheme": "HTTPS"
        }))
        .expect("action");
        let c: Container = serde_json::from_value(serde_json::json!({"name": "web"})).expect("c");
        assert_eq!(
            http_get(&action, &c, "127.0.0.1", Duration::from_secs(5)).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }

    #[tokio::test]
    async fn redirects_are_followed_on_the_same_host_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                    let reply = match path.as_str() {
                        "/old" => {
                            "HTTP/1.1 301 Moved\r\nlocation: /new\r\ncontent-length: 0\r\n\r\n"
                                .to_string()
                        }
                        "/new" => "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string(),
                        "/away" => format!(
                            "HTTP/1.1 302 Found\r\nlocation: http://localhost:{port}/new\r\ncontent-length: 5\r\n\r\nthere"
                        ),
                        _ => format!(
                            "HTTP/1.1 307 Again\r\nlocation: {path}\r\ncontent-length: 0\r\n\r\n"
                        ),
                    };
                    let _ = tcp.write_all(reply.as_bytes()).await;
                });
            }
        });
        let c: Container = serde_json::from_value(serde_json::json!({"name": "web"})).expect("c");
        let get = |path: &str| {
            let action: HTTPGetAction =
                serde_json::from_value(serde_json::json!({"path": path, "port": port}))
                    .expect("action");
            let c = c.clone();
            async move { http_get(&action, &c, "127.0.0.1", Duration::from_secs(5)).await }
        };
        assert_eq!(
            get("/old").await,
            Ok(Reply {
                status: 200,
                warning: None
            })
        );
        assert_eq!(
            get("/away").await,
            Ok(Reply {
                status: 302,
                warning: Some("Probe terminated redirects, Response body: there".into())
            })
        );
        assert_eq!(
            get("/loop").await,
            Err(format!(
                "Get \"http://127.0.0.1:{port}/loop\": stopped after 10 redirects"
            ))
        );
    }

    #[test]
    fn ports_resolve_by_number_or_name() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .expect("container");
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("9090".into()), &c),
            Ok(9090)
        );
        assert!(resolve_port(&IntOrString::String("admin".into()), &c).is_err());
    }
}
