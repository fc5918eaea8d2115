//! Shared pieces of the benchmarks: a `bosun server` process on a temporary data dir, its
//! memory, percentiles, and the busybox image imported for node benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A server started for a benchmark; killed when dropped.
pub struct Server {
    /// The server process.
    pub child: Child,
    /// Its data dir.
    pub dir: tempfile::TempDir,
    /// Time from spawn to a successful `/readyz`.
    pub startup: Duration,
}

/// The `bosun` binary next to this benchmark's executable (same profile).
pub fn bosun_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no executable dir")?;
    let p = dir.join("bosun");
    if !p.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p bosun)",
            p.display()
        );
    }
    Ok(p)
}

impl Server {
    /// Starts `bosun server` (control plane only) and waits until it answers.
    pub async fn start() -> Result<Self> {
        Self::start_in(tempfile::tempdir()?, &["--disable-agent"]).await
    }

    /// Starts `bosun server` on `dir` with extra arguments and waits until it answers.
    pub async fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Result<Self> {
        let started = Instant::now();
        let child = Command::new(bosun_binary()?)
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let mut server = Self {
            child,
            dir,
            startup: Duration::ZERO,
        };
        loop {
            if kubeconfig.exists()
                && let Ok(client) = server.client().await
                && client
                    .request_text(http::Request::get("/readyz").body(Vec::new())?)
                    .await
                    .is_ok()
            {
                server.startup = started.elapsed();
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("the server did not start");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A new client (its own connection).
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.dir.path().join("admin.kubeconfig"))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The server's resident memory, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// The data dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Proportional set size of a process (shared pages split among their users), in MiB: what
/// a process really costs when many run the same binary.
pub fn pss_mib(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The p-th percentile (0-100) of samples, in milliseconds.
pub fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort();
    let idx = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[idx.min(samples.len() - 1)].as_secs_f64() * 1000.0
}

/// Builds the busybox image with the shared image builder (`$BOSUN_SHARED`, default
/// `../shared`) and imports it into the node store of the data dir `dir`.
pub fn import_busybox(dir: &Path) -> Result<()> {
    let shared = std::env::var("BOSUN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("../shared"));
    let built = Command::new("python3")
        .arg(shared.join("images/busybox_image.py"))
        .arg(dir.join("archives"))
        .output()?;
    if !built.status.success() {
        bail!("busybox_image.py failed (is ../shared there, and busybox-static installed?)");
    }
    let imported = Command::new(bosun_binary()?)
        .args(["images", "--data-dir"])
        .arg(dir)
        .arg("import")
        .arg(dir.join("archives/busybox-docker.tar"))
        .output()?;
    if !imported.status.success() {
        bail!(
            "import failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    Ok(())
}
