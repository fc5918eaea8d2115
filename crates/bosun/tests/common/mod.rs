//! A real `bosun server` for end-to-end tests: started from the built binary on a temporary data
//! dir and a free port, driven with the real kubectl, killed when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running server.
pub struct Cluster {
    /// The data dir (kept across [`Cluster::restart`]).
    pub dir: tempfile::TempDir,
    /// The server process.
    pub child: Child,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    args: Vec<String>,
    /// Held while a node agent runs: agents share the node's bridge and pod CIDR, so tests
    /// that run one take turns.
    node_lock: Option<std::fs::File>,
}

/// The Node name of test clusters that run an agent.
pub const NODE: &str = "bosun-test-node";

/// The kubectl the tests drive.
pub fn kubectl_path() -> PathBuf {
    let p = PathBuf::from(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()));
    assert!(
        p.exists(),
        "the end-to-end tests need kubectl at {} (set KUBECTL=...)",
        p.display()
    );
    p
}

/// The shared folder with the scenarios and the image builder (`../shared` beside the repo,
/// or `BOSUN_SHARED`).
pub fn shared_dir() -> PathBuf {
    let p = std::env::var("BOSUN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(
        p.join("scenarios").is_dir(),
        "the scenarios are not at {} (set BOSUN_SHARED=...)",
        p.display()
    );
    p
}

impl Cluster {
    /// Starts a server on a fresh data dir.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server (control plane only) on a fresh data dir with extra `bosun server`
    /// arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let mut all = vec!["--disable-agent"];
        all.extend_from_slice(args);
        Self::launch(tempfile::tempdir().expect("temp dir"), &all, None)
    }

    /// Starts a server with its node agent (named [`NODE`]) and the busybox image imported,
    /// and waits for the node to be Ready.
    pub fn start_node() -> Self {
        Self::start_node_with(&[])
    }

    /// [`Cluster::start_node`] with extra `bosun server` arguments.
    pub fn start_node_with(args: &[&str]) -> Self {
        let lock = node_lock();
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = busybox_archives(&dir.path().join("archives"));
        let out = Command::new(env!("CARGO_BIN_EXE_bosun"))
            .args(["images", "--data-dir"])
            .arg(dir.path())
            .arg("import")
            .arg(&archive)
            .output()
            .expect("bosun images import");
        assert!(
            out.status.success(),
            "import busybox: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut all = vec!["--node-name", NODE];
        all.extend_from_slice(args);
        let c = Self::launch(dir, &all, Some(lock));
        c.wait_node_ready();
        c
    }

    fn launch(dir: tempfile::TempDir, args: &[&str], node_lock: Option<std::fs::File>) -> Self {
        let child = spawn(dir.path(), args);
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let c = Self {
            dir,
            child,
            kubeconfig,
            args: args.iter().map(|a| a.to_string()).collect(),
            node_lock,
        };
        c.wait_ready();
        c
    }

    /// Waits for the node to report Ready.
    pub fn wait_node_ready(&self) {
        let ready = self.wait_for(30, || {
            self.kubectl(&[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdout
                == b"True"
        });
        assert!(ready, "node {NODE} did not become Ready within 30s");
    }

    /// Polls `check` every 100 ms for up to `seconds`; returns whether it held.
    pub fn wait_for(&self, seconds: u64, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// A jsonpath of an object, e.g. `jp("pod/web", "{.status.phase}")`.
    pub fn jp(&self, object: &str, path: &str) -> String {
        self.ok(&["get", object, "-o", &format!("jsonpath={path}")])
    }

    /// Applies a manifest, failing the test if kubectl refuses it.
    pub fn apply(&self, manifest: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the server with SIGKILL and starts it again on the same data dir.
    pub fn restart_after_kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = spawn(self.dir.path(), &args);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.kubeconfig.exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("bosun server did not become ready within 30s");
    }

    /// Runs kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl on a terminal of `cols` x `rows` (made by util-linux `script`), typing
    /// each piece of `typed` after its pause; returns what the terminal showed and kubectl's
    /// exit code. The input stays open until kubectl exits (or 60 s pass).
    pub fn kubectl_on_terminal(
        &self,
        args: &str,
        (cols, rows): (u16, u16),
        typed: &[(u64, &str)],
    ) -> (String, Option<i32>) {
        use std::io::Write;
        let kubectl = kubectl_path();
        let mut child = Command::new("script")
            .args(["--quiet", "--return", "--command"])
            .arg(format!(
                "stty cols {cols} rows {rows}; exec {} {args}",
                kubectl.display()
            ))
            .arg("/dev/null")
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run script (util-linux) for a terminal");
        let mut stdin = child.stdin.take().expect("stdin");
        for (pause, text) in typed {
            std::thread::sleep(Duration::from_millis(*pause));
            let _ = stdin.write_all(text.as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        drop(stdin);
        let out = child.wait_with_output().expect("output");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (text, out.status.code())
    }

    /// Runs kubectl with standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns its standard output, failing the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure and returns its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs kubectl against the cluster with a bearer token instead of the admin certificate.
    pub fn kubectl_as_token(&self, token: &str, args: &[&str]) -> Output {
        Command::new(kubectl_path())
            .args([
                &format!("--server={}", self.url()),
                &format!("--token={token}"),
                &format!(
                    "--certificate-authority={}",
                    self.dir.path().join("tls/ca.crt").display()
                ),
                "--kubeconfig=/dev/null",
            ])
            .args(args)
            .output()
            .expect("kubectl")
    }

    /// Runs a shared scenario script (`NN-name`) against the cluster and fails the test unless
    /// it passes.
    pub fn scenario(&self, name: &str) {
        let script = shared_dir().join(format!("scenarios/{name}.sh"));
        let out = Command::new("bash")
            .arg(&script)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECTL", kubectl_path())
            .output()
            .expect("run scenario");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("PASS [{name}]")),
            "scenario {name} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server URL from the kubeconfig.
    pub fn url(&self) -> String {
        self.ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
    }

    /// A kube client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("config");
        kube::Client::try_from(config).expect("client")
    }
}

fn spawn(dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["server", "--data-dir"])
        .arg(dir)
        // on every address, so that pods reach the API through the `kubernetes` Service
        .args(["--bind", "0.0.0.0:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bosun server")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.node_lock.is_some() {
            // Pods are removed the way a user removes them, so that the node is left clean for
            // the next test; whatever is still there after that is cleaned up by force.
            let _ = self.kubectl(&[
                "delete",
                "pods",
                "--all",
                "-A",
                "--grace-period=1",
                "--timeout=30s",
            ]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.node_lock.is_some() {
            force_clean_node(self.dir.path());
        }
    }
}

/// Takes the machine's node: agents share the node's bridge, pod CIDR and ports, so tests that
/// run one take turns. Held until the file is dropped.
pub fn node_lock() -> std::fs::File {
    require_root("a test with a node agent");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join("bosun-node-tests.lock"))
        .expect("lock file");
    lock.lock().expect("take the node lock");
    lock
}

/// Kills the containers left under a data dir and unmounts what is mounted there.
pub fn force_clean_node(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join("agent/containers")) {
        for e in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path().join("started.json"))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(pid) = v["pid"].as_i64()
            {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    for line in mounts.lines() {
        if let Some(target) = line.split_whitespace().nth(1)
            && target.starts_with(&prefix)
        {
            let _ = Command::new("umount").args(["-l", target]).status();
        }
    }
}

/// Builds the shared busybox image archives into `dir` and returns the docker archive's path.
pub fn busybox_archives(dir: &Path) -> PathBuf {
    assert!(
        Path::new("/bin/busybox").exists(),
        "the busybox image needs /bin/busybox (apt-get install busybox-static)"
    );
    let built = Command::new("python3")
        .arg(shared_dir().join("images/busybox_image.py"))
        .arg(dir)
        .output()
        .expect("python3");
    assert!(
        built.status.success(),
        "busybox_image.py failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    dir.join("busybox-docker.tar")
}

/// Fails the test with a clear message unless it runs as root.
pub fn require_root(what: &str) {
    assert!(
        nix_is_root(),
        "{what} needs root (namespaces, mounts, cgroups); run the tests as root"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
        .unwrap_or(false)
}
