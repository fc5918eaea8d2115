//! The `grpc` probe: one call of the gRPC health checking protocol
//! (`grpc.health.v1.Health/Check`) over HTTP/2 without TLS, as kubelet's prober makes it. The
//! probe passes when the answer is `SERVING`; failures are worded as kubelet words them
//! ("service unhealthy (responded with \"NOT_SERVING\")").
//!
//! Written by hand on hyper's HTTP/2 client rather than with tonic and tonic-health: the two
//! messages have one field each, and the call needs none of a gRPC stack's machinery.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the health service answers, by its protobuf number.
const STATUSES: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/// gRPC status codes by number, as Go's `codes.Code` prints them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// A duration as Go prints it (`1s`, `1.5s`, `500ms`).
fn go_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Checks the health of `service` ("" for the whole server) at `ip:port` within `timeout`.
pub async fn check(ip: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok::<_, String>(sender)
    };
    let mut sender = match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => {
            return Err(format!(
                "timeout: failed to connect service {addr:?} within {}: context deadline exceeded",
                go_duration(timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("error: failed to connect service at {addr:?}: {e}")),
        Ok(Ok(s)) => s,
    };
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "kube-probe/1.33")
        .body(Full::new(Bytes::from(frame(&request_message(service)))))
        .map_err(|e| e.to_string())?;
    let call = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let trailers = body.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let code: usize = field("grpc-status")
            .and_then(|c| c.parse().ok())
            .unwrap_or(2);
        if code != 0 {
            let message = field("grpc-message").unwrap_or_default();
            return Err(match code {
                12 => format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {message}"
                ),
                4 => format!(
                    "timeout: health rpc did not complete within {}",
                    go_duration(timeout)
                ),
                _ => format!(
                    "error: health rpc probe failed: rpc error: code = {} desc = {message}",
                    CODES.get(code).copied().unwrap_or("Unknown")
                ),
            });
        }
        let status = response_status(&body.to_bytes());
        if status == 1 {
            Ok(())
        } else {
            let name = STATUSES.get(status as usize).copied().unwrap_or("UNKNOWN");
            Err(format!("service unhealthy (responded with {name:?})"))
        }
    };
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timeout: health rpc did not complete within {}",
                go_duration(timeout)
            ))
        })
}

/// `HealthCheckRequest { service }` in protobuf: field 1, length-delimited, left out when empty.
fn request_message(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !service.is_empty() {
        out.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// A gRPC message on the wire: not compressed, its length, itself.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The `status` of a framed `HealthCheckResponse` (field 1, a varint; 0 when absent).
fn response_status(framed: &[u8]) -> u64 {
    let message = framed.get(5..).unwrap_or_default();
    let mut i = 0;
    while i < message.len() {
        let tag = message[i];
        i += 1;
        let mut value = 0u64;
        let mut shift = 0;
        while i < message.len() {
            let b = message[i];
            i += 1;
            value |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        match tag {
            0x08 => return value,
            // a length-delimited field of another number: skip its bytes
            t if t & 0x07 == 2 => i += value as usize,
            _ => {}
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_encoded_as_protobuf() {
        assert_eq!(frame(&request_message("")), [0, 0, 0, 0, 0]);
        assert_eq!(
            frame(&request_message("db")),
            [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 1]), 1);
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 2]), 2);
        assert_eq!(response_status(&[0, 0, 0, 0, 0]), 0);
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }
}
