//! The actions of lifecycle hooks and probes: `exec` a command in the
//! container (success is exit code 0), `httpGet` (success is a status from 200 to 399) and
//! `tcpSocket` (success is an accepted connection), each within a timeout, as kubelet runs them.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Empty;
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

/// Sends an HTTP GET (HTTPS without checking the server's certificate, as kubelet does); Ok
/// with the status when it is from 200 to 399.
pub async fn http_get(
    action: &HTTPGetAction,
    container: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Result<u16, String> {
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
    let url = format!("{scheme}://{host}:{port}{path}");
    let authority = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let mut req = http::Request::get(&path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "kube-probe/1.33")
        .header(http::header::ACCEPT, "*/*");
    for h in action.http_headers.iter().flatten() {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let run = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let code = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(insecure_tls())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            send(stream, req).await?
        } else {
            send(tcp, req).await?
        };
        if (200..400).contains(&code) {
            Ok(code)
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("Get \"{url}\": context deadline exceeded"))?
}

/// Sends one request over a fresh HTTP/1.1 connection; returns the status code.
async fn send<T>(io: T, req: http::Request<Empty<Bytes>>) -> Result<u16, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
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
