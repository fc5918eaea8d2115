//! The demo app of bosun's examples, one static binary in an otherwise empty image, standing in
//! for the seeds' apps:
//!
//! - `/` answers `Hello from <hostname> (version <VERSION>)` (the `VERSION` environment variable,
//!   default `v1`), with the status `/health` was set to;
//! - `/health` answers `OK`; `POST /health` with a status code as the body (e.g. `503`) makes it
//!   and `/` answer with that code (the courselabs whoami app);
//! - `/healthz` and `/readiness` answer 200 or 503; `GET /healthz/status` and
//!   `GET /readiness/status` toggle them (Kelsey Hightower's monolith);
//! - `/pi?dp=N` computes N decimal places of pi, to burn CPU;
//! - `/memory?mb=N` allocates and holds N MiB more, to fill memory.
//!
//! `demo serve [PORT...]` listens on the ports (default 8080 and 81); `demo memhog MB` allocates
//! MB MiB, touches it, and keeps it until killed (the seeds' memhog).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

struct State {
    health: AtomicU16,
    alive: AtomicBool,
    ready: AtomicBool,
    hoard: Mutex<Vec<Vec<u8>>>,
    hostname: String,
    version: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("memhog") => {
            let mb: usize = args
                .get(1)
                .and_then(|m| m.trim_end_matches('m').parse().ok())
                .unwrap_or(100);
            let hoard = allocate(mb);
            println!("holding {} MiB", hoard.len() >> 20);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("serve") | None => serve(&args[args.len().min(1)..]),
        Some(other) => {
            eprintln!("unknown command {other:?}: use `serve [PORT...]` or `memhog MB`");
            std::process::exit(2);
        }
    }
}

/// Allocates `mb` MiB and touches every page, so that it is really resident.
fn allocate(mb: usize) -> Vec<u8> {
    let mut v = vec![0u8; mb << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    v
}

fn serve(ports: &[String]) {
    let ports: Vec<u16> = if ports.is_empty() {
        vec![8080, 81]
    } else {
        ports.iter().filter_map(|p| p.parse().ok()).collect()
    };
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let state = Arc::new(State {
        health: AtomicU16::new(200),
        alive: AtomicBool::new(true),
        ready: AtomicBool::new(true),
        hoard: Mutex::new(Vec::new()),
        hostname,
        version: std::env::var("VERSION").unwrap_or_else(|_| "v1".into()),
    });
    let mut threads = Vec::new();
    for port in ports {
        let listener = match TcpListener::bind(("0.0.0.0", port)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on port {port}: {e}");
                std::process::exit(1);
            }
        };
        println!("listening on :{port}");
        let state = state.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || handle(stream, &state));
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
}

fn handle(stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length.min(1 << 16)];
    let _ = reader.read_exact(&mut body);
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let flag = |ok: bool, what: &str| {
        if ok {
            (200, format!("{what} ok\n"))
        } else {
            (503, format!("{what} failing\n"))
        }
    };
    let (code, text) = match (method.as_str(), path) {
        ("POST", "/health") => {
            let code = String::from_utf8_lossy(&body).trim().parse().unwrap_or(503);
            state.health.store(code, Ordering::SeqCst);
            (200, format!("health set to {code}\n"))
        }
        (_, "/health") => {
            let code = state.health.load(Ordering::SeqCst);
            (
                code,
                if code == 200 {
                    "OK\n".into()
                } else {
                    "unhealthy\n".into()
                },
            )
        }
        (_, "/healthz") => flag(state.alive.load(Ordering::SeqCst), "healthz"),
        (_, "/readiness") => flag(state.ready.load(Ordering::SeqCst), "readiness"),
        (_, "/healthz/status") => {
            let now = !state.alive.fetch_xor(true, Ordering::SeqCst);
            (
                200,
                format!("healthz now {}\n", if now { "passing" } else { "failing" }),
            )
        }
        (_, "/readiness/status") => {
            let now = !state.ready.fetch_xor(true, Ordering::SeqCst);
            (
                200,
                format!(
                    "readiness now {}\n",
                    if now { "passing" } else { "failing" }
                ),
            )
        }
        (_, "/pi") => (
            200,
            format!("{}\n", pi(param("dp").unwrap_or(100).min(100_000))),
        ),
        (_, "/memory") => {
            let mb = param("mb").unwrap_or(100);
            let total = match state.hoard.lock() {
                Ok(mut h) => {
                    h.push(allocate(mb));
                    h.iter().map(Vec::len).sum::<usize>() >> 20
                }
                Err(_) => 0,
            };
            (200, format!("holding {total} MiB\n"))
        }
        (_, "/") => (
            state.health.load(Ordering::SeqCst),
            format!(
                "Hello from {} (version {})\n",
                state.hostname, state.version
            ),
        ),
        _ => (404, "not found\n".into()),
    };
    println!("{method} {target} {code}");
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// Pi to `digits` decimal places with the Rabinowitz–Wagon spigot: quadratic in the digits, so
/// a few thousand keep a core busy (it is the CPU burner).
fn pi(digits: usize) -> String {
    let len = digits * 10 / 3 + 2;
    let mut a = vec![2u64; len];
    let mut out = String::with_capacity(digits + 2);
    let mut predigit = 0u64;
    let mut nines = 0usize;
    for j in 0..=digits {
        let mut carry = 0u64;
        for i in (0..len).rev() {
            let x = a[i] * 10 + carry * (i as u64 + 1);
            let denominator = 2 * i as u64 + 1;
            a[i] = x % denominator;
            carry = x / denominator;
        }
        a[0] = carry % 10;
        let q = carry / 10;
        if q == 9 {
            nines += 1;
        } else if q == 10 {
            out.push_str(&(predigit + 1).to_string());
            out.push_str(&"0".repeat(nines));
            predigit = 0;
            nines = 0;
        } else {
            if j > 0 {
                out.push_str(&predigit.to_string());
            }
            predigit = q;
            out.push_str(&"9".repeat(nines));
            nines = 0;
        }
    }
    out.push_str(&predigit.to_string());
    out.truncate(digits + 1);
    if out.len() > 1 {
        out.insert(1, '.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pi_digits() {
        assert_eq!(pi(10), "3.1415926535");
        assert!(pi(1000).starts_with("3.14159265358979323846264338327950288419716939937510"));
    }
}
