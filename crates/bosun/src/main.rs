//! The `bosun` binary: `bosun server` runs a whole cluster's control plane from one process;
//! `bosun agent` joins another machine to it as a node; `bosun token` manages the join tokens;
//! `bosun images` manages the node's image store. Wiring and command line only; the work is
//! done by the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;

/// Where a server or agent keeps its state unless `--data-dir` says otherwise.
const DEFAULT_DATA_DIR: &str = "/var/lib/bosun";

#[derive(Parser)]
#[command(name = "bosun", version, about = "Kubernetes in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a cluster: the control plane (API server on an embedded store, controllers,
    /// scheduler) and a node agent for this machine.
    Server(Box<ServerArgs>),
    /// Runs a node agent on this machine that joins the cluster of a server.
    Agent(Box<JoinArgs>),
    /// Manages the tokens other machines join the cluster with.
    Token(TokenArgs),
    /// Manages the images of this node.
    Images(ImagesArgs),
    /// Supervises one container; started by the node agent, not by people.
    #[command(hide = true)]
    Shim {
        /// The container's id.
        #[arg(long)]
        id: String,
        /// Its bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// Where running containers' state is kept.
        #[arg(long)]
        state_root: PathBuf,
    },
    /// Holds a pod's shared process namespace as its PID 1, chrooted to its working directory;
    /// started by the node agent.
    #[command(hide = true)]
    Pause,
    /// Runs a command inside a running container; started by the node agent for `kubectl exec`.
    #[command(hide = true)]
    ExecIn {
        /// The container's id.
        #[arg(long)]
        id: String,
        /// Where running containers' state is kept.
        #[arg(long)]
        state_root: PathBuf,
        /// Where to send the master end of the process's terminal (none: no terminal).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ImagesArgs {
    /// The node's data dir; images live in <data-dir>/images.
    #[arg(
        long,
        default_value = DEFAULT_DATA_DIR,
        env = "BOSUN_DATA_DIR",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Imports OCI archives or docker archives (docker save) into the node's store.
    Import {
        /// Archive files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Lists the images.
    Ls,
    /// Removes images by reference.
    Rm {
        /// References, e.g. busybox:1.36.
        #[arg(required = true)]
        references: Vec<String>,
    },
}

/// A progress bar on standard error for long image work.
struct Bar(indicatif::ProgressBar);

impl runtime::images::Progress for Bar {
    fn total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

fn images(args: ImagesArgs) -> Result<()> {
    let store = runtime::images::ImageStore::open(&args.data_dir.join("images"))?;
    match args.command {
        ImagesCommand::Import { files } => {
            for file in files {
                let bar = indicatif::ProgressBar::new(0).with_message(file.display().to_string());
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .progress_chars("=> "),
                );
                let imported = store
                    .import(&file, &Bar(bar.clone()))
                    .map_err(|e| anyhow::anyhow!("cannot import {}: {e}", file.display()))?;
                bar.finish_and_clear();
                for img in imported {
                    println!(
                        "imported {} ({})",
                        img.reference,
                        &img.id[..19.min(img.id.len())]
                    );
                }
            }
        }
        ImagesCommand::Ls => {
            println!("{:<50} {:<20} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
            for img in store.list()? {
                let id = img.id.trim_start_matches("sha256:");
                println!(
                    "{:<50} {:<20} {:>9.1}M",
                    img.reference,
                    &id[..12.min(id.len())],
                    img.size as f64 / 1_048_576.0
                );
            }
        }
        ImagesCommand::Rm { references } => {
            let agent = args.data_dir.join("agent");
            let containers = runtime::container::Runtime::open(
                &agent.join("containers"),
                &agent.join("run"),
                &std::env::current_exe()?,
            )?;
            let in_use = containers.images_in_use()?;
            for r in references {
                if let Some(image) = store.get(&r)?
                    && in_use.contains(&image.id)
                {
                    anyhow::bail!(
                        "cannot remove {r}: a container on this node uses it; delete the pods that run it first"
                    );
                }
                let removed = store
                    .remove(&r)
                    .map_err(|e| anyhow::anyhow!("cannot remove {r}: {e}"))?;
                println!("deleted {}", removed.reference);
            }
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the cluster's state, certificates and kubeconfig live.
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "BOSUN_DATA_DIR")]
    data_dir: PathBuf,
    /// Address and port of the HTTPS API.
    #[arg(long, default_value = "0.0.0.0:6443")]
    bind: SocketAddr,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Let requests without credentials through as system:anonymous, for RBAC to judge.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// A static token file: lines of token,user,uid,"group1,group2".
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// An audit.k8s.io/v1 Policy file (with --audit-log-path).
    #[arg(long, requires = "audit_log_path")]
    audit_policy_file: Option<PathBuf>,
    /// Where audit events are appended as JSON lines (with --audit-policy-file).
    #[arg(long, requires = "audit_policy_file")]
    audit_log_path: Option<PathBuf>,
    /// An EncryptionConfiguration file: encrypts the listed resources (e.g. secrets) at rest.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Lifetime of the serving certificate in seconds; it renews itself when a fifth remains.
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    serving_cert_seconds: u64,
    /// Runs the control plane only: no node agent for this machine (and so no Ingress
    /// controller, which needs this machine on the pod network).
    #[arg(long)]
    disable_agent: bool,
    /// Runs no built-in Ingress controller (as k3s's `--disable traefik`).
    #[arg(long)]
    disable_ingress: bool,
    /// The port the built-in Ingress controller serves HTTP on; port 80 of every node leads
    /// there.
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// The port the built-in Ingress controller serves HTTPS on; port 443 of every node leads
    /// there.
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
    /// The range Service ClusterIPs come from (the cluster DNS takes the tenth address).
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: ipnet::Ipv4Net,
    /// The range pods' addresses come from: each node gets a /24 of it (this machine's node
    /// the first, unless --pod-cidr says otherwise).
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// The range NodePort Services' ports come from.
    #[arg(long, default_value = "30000-32767", value_parser = port_range)]
    service_node_port_range: std::ops::RangeInclusive<u16>,
    /// The address pods reach the API server at (default: --node-ip, else the bind address, or
    /// this machine's address when binding to all).
    #[arg(long)]
    advertise_address: Option<std::net::Ipv4Addr>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// How this machine's node agent is set up.
#[derive(clap::Args)]
struct AgentArgs {
    /// The name of this machine's Node (default: its hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The pod CIDR of this machine's node (default: one given by the cluster from its
    /// --cluster-cidr).
    #[arg(long)]
    pod_cidr: Option<network::ipam::Cidr>,
    /// The Linux bridge pods are attached to.
    #[arg(long, default_value = "bosun0")]
    pod_bridge: String,
    /// Where the node API (logs, exec for the API server) listens.
    #[arg(long, default_value = "0.0.0.0:10250")]
    node_api_bind: SocketAddr,
    /// A registry (`host[:port]`) to pull from over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The hard eviction threshold, as kubelet's: while less memory is available, the node
    /// reports MemoryPressure and evicts pods.
    #[arg(long, default_value = "memory.available<100Mi", value_parser = node::eviction::parse_hard)]
    eviction_hard: u64,
    /// The node's address, as kubelet's --node-ip (default: the address of the interface of
    /// the default route). Other nodes route this node's pods through it, so it must be on a
    /// network they share.
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
}

#[derive(clap::Args)]
struct JoinArgs {
    /// The API server to join, e.g. https://10.0.0.1:6443.
    #[arg(long, env = "BOSUN_SERVER", required_unless_present = "cleanup")]
    server: Option<String>,
    /// The join token (`bosun token create` on the server prints one).
    #[arg(long, env = "BOSUN_TOKEN", required_unless_present = "cleanup")]
    token: Option<node::join::JoinToken>,
    /// Removes the Service and NetworkPolicy rules a node agent (or server) left behind, as
    /// after a crash, and exits; running pods keep their network.
    #[arg(long)]
    cleanup: bool,
    /// Where this node's credentials, images and containers live.
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "BOSUN_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The server's data dir (its admin kubeconfig is used).
    #[arg(
        long,
        default_value = DEFAULT_DATA_DIR,
        env = "BOSUN_DATA_DIR",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Creates a join token and prints it.
    Create {
        /// How long it stays valid: e.g. 30m, 24h, 7d; 0 for until deleted.
        #[arg(long, default_value = "24h", value_parser = duration)]
        ttl: std::time::Duration,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Lists the join tokens.
    List,
    /// Revokes join tokens by id (nodes already joined keep their certificates).
    Delete {
        /// Token ids (the six characters before the dot).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Parses a duration such as `90s`, `30m`, `24h` or `7d` (`0`: none).
fn duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30m, 24h, 7d)"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?} is not a duration (e.g. 30m, 24h, 7d)")),
    };
    Ok(std::time::Duration::from_secs(n * seconds))
}

/// Parses a port range such as `30000-32767`.
fn port_range(s: &str) -> std::result::Result<std::ops::RangeInclusive<u16>, String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range (expected e.g. 30000-32767)"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo == 0 || lo > hi {
        return Err(format!("{s:?} is not a port range"));
    }
    Ok(lo..=hi)
}

async fn server(args: ServerArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let data_dir = args.data_dir.clone();
    let advertise_address = match (
        args.advertise_address.or(args.agent.node_ip),
        args.bind.ip(),
    ) {
        (Some(a), _) => a,
        (None, std::net::IpAddr::V4(ip)) if !ip.is_unspecified() && !ip.is_loopback() => ip,
        (None, _) => node::registration::internal_ip()
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST),
    };
    let running = apiserver::start(apiserver::Config {
        data_dir: args.data_dir,
        bind: args.bind,
        extra_sans: args.tls_san,
        anonymous_auth: args.anonymous_auth,
        token_auth_file: args.token_auth_file,
        audit_policy_file: args.audit_policy_file,
        audit_log_path: args.audit_log_path,
        encryption_provider_config: args.encryption_provider_config,
        serving_cert_lifetime: std::time::Duration::from_secs(args.serving_cert_seconds),
        service_cidr: args.service_cidr,
        node_port_range: args.service_node_port_range,
        advertise_address,
    })
    .await?;
    let pki = running.pki.clone();
    let signer: controllers::Signer =
        std::sync::Arc::new(move |csr: &str, seconds: i64, usage: controllers::Usage| {
            pki.sign_csr(csr, seconds, usage == controllers::Usage::Server)
        });
    const MANAGER: &str = "kube-controller-manager";
    let mut accounts = std::collections::HashMap::new();
    for account in api::CONTROLLER_ACCOUNTS {
        let user = format!("system:serviceaccount:kube-system:{account}");
        let groups = [
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
        ];
        accounts.insert(
            *account,
            component_client(&running, MANAGER, &user, &groups),
        );
    }
    let manager = component_client(&running, MANAGER, "system:kube-controller-manager", &[]);
    // one watch and one cache per kind for the controllers and the scheduler: pods are the
    // bulk of a cluster's objects, and a second cache of them would double the server's memory
    let informers = controllers::Informers::start(&manager);
    let scheduler = tokio::spawn(scheduler::run(
        component_client(&running, "kube-scheduler", "system:kube-scheduler", &[]),
        scheduler::Caches {
            nodes: informers.nodes.store(),
            pods: informers.pods.store(),
            budgets: informers.budgets.store(),
            changes: futures::stream::select(informers.nodes.changed(), informers.pods.changed())
                .boxed(),
        },
    ));
    let ctrl = controllers::start(
        controllers::Credentials {
            manager,
            controllers: accounts,
        },
        informers,
        running.ca_pem.clone(),
        Some(signer),
        Some(args.cluster_cidr),
    );
    let agent = if args.disable_agent {
        None
    } else {
        // the cluster DNS Service has the tenth address of the service range
        let cluster_dns = std::net::Ipv4Addr::from(u32::from(args.service_cidr.network()) + 10);
        // this machine's node has the cluster CIDR's first range unless told
        let first = controllers::node_ipam::next_free(args.cluster_cidr, &Default::default())
            .context("the cluster CIDR has no room for a node")?;
        let pod_cidr = match args.agent.pod_cidr {
            Some(c) => c,
            None => first.to_string().parse().map_err(anyhow::Error::msg)?,
        };
        Some(start_agent(&running, &data_dir, args.agent, pod_cidr, cluster_dns).await?)
    };
    if agent.is_some() && !args.disable_ingress {
        let client = component_client(
            &running,
            "bosun-ingress",
            "system:bosun-ingress-controller",
            &[],
        );
        let listen = controllers::ingress::Listen {
            address: advertise_address,
            http: args.ingress_http_port,
            https: args.ingress_https_port,
        };
        // the cluster goes on without it: Ingresses are then served by no one, as upstream's
        // are while their controller is down
        tokio::spawn(async move {
            if let Err(e) = controllers::ingress::run(client, listen).await {
                tracing::error!("the ingress controller stopped: {e:#}");
                eprintln!("the ingress controller stopped: {e:#}");
            }
        });
    }
    eprintln!(
        "bosun server listening on {} (ready in {} ms)",
        running.url,
        started.elapsed().as_millis()
    );
    eprintln!("admin kubeconfig: {}", running.admin_kubeconfig.display());
    // upstream's kubeadm prints a join command with a fresh token; bosun writes no token to
    // disk (the admin kubeconfig is the only credential it keeps by default), so the message
    // names the command that makes one
    let data_dir_arg = if data_dir == std::path::Path::new(DEFAULT_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {}", data_dir.display())
    };
    eprintln!(
        "join other machines: `sudo bosun token create{data_dir_arg}` here prints a token, then on each: sudo bosun agent --server https://{advertise_address}:{} --token TOKEN",
        running.url.rsplit(':').next().unwrap_or("6443"),
    );
    eprintln!(
        "try: KUBECONFIG={} kubectl get namespaces",
        running.admin_kubeconfig.display()
    );
    let agent_done = async {
        match agent {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let agent_ran = !args.disable_agent;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome: Result<()> = async {
        tokio::select! {
            _ = terminate.recv() => {}
            r = running.task => r?,
            r = ctrl => r??,
            r = scheduler => r??,
            r = agent_done => r??,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    }
    .await;
    if agent_ran {
        remove_node_rules();
    }
    outcome
}

/// A client for one of bosun's own components in this process (`component` as upstream names
/// it), acting as `user` through the API server's loopback (no certificate, no connection).
fn component_client(
    running: &apiserver::Running,
    component: &str,
    user: &str,
    groups: &[&str],
) -> kube::Client {
    kube::Client::new(running.loopback(component, user, groups), "default")
}

/// The node agent needs root.
fn require_root() -> Result<()> {
    if !running_as_root() {
        anyhow::bail!(
            "the node agent needs root (namespaces, mounts, cgroups, the pod bridge): run bosun as root, or pass --disable-agent to bosun server for the control plane alone"
        );
    }
    Ok(())
}

/// A node agent for this machine, speaking to the API with `client` (as `system:node:<name>`).
fn new_agent(
    node_name: String,
    data_dir: &std::path::Path,
    args: AgentArgs,
    pod_cidr: network::ipam::Cidr,
    cluster_dns: std::net::Ipv4Addr,
    control_plane: bool,
    client: kube::Client,
) -> Result<std::sync::Arc<node::Agent>> {
    node::Agent::new(
        node::Config {
            node_name,
            data_dir: data_dir.to_path_buf(),
            pod_cidr,
            bridge: args.pod_bridge,
            shim: std::env::current_exe()?,
            control_plane,
            api_addr: args.node_api_bind,
            insecure_registries: args.insecure_registries,
            cluster_dns,
            cluster_domain: "cluster.local".into(),
            eviction_memory_available: args.eviction_hard,
            node_ip: args.node_ip,
        },
        client,
    )
}

/// The names a node's serving certificate is for: its name, its address and localhost.
fn serving_names(agent: &node::Agent) -> Vec<String> {
    let mut names = vec![
        agent.config.node_name.clone(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    if !names.contains(&agent.host_ip) {
        names.push(agent.host_ip.clone());
    }
    names
}

/// How the node API is served: with this certificate, for clients of this CA.
fn node_tls(cert_pem: String, key_pem: String, ca_pem: String) -> node::server::Tls {
    node::server::Tls {
        cert_pem,
        key_pem,
        ca_pem,
        api_server_user: apiserver::KUBELET_CLIENT.into(),
    }
}

/// Starts the node agent of this machine, authenticated as `system:node:<name>`.
async fn start_agent(
    running: &apiserver::Running,
    data_dir: &std::path::Path,
    args: AgentArgs,
    pod_cidr: network::ipam::Cidr,
    cluster_dns: std::net::Ipv4Addr,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    require_root()?;
    let node_name = node_name(&args)?;
    let client = component_client(
        running,
        "kubelet",
        &format!("system:node:{node_name}"),
        &["system:nodes"],
    );
    let agent = new_agent(
        node_name,
        data_dir,
        args,
        pod_cidr,
        cluster_dns,
        true,
        client,
    )?;
    let serving = running.pki.serving(
        &serving_names(&agent),
        std::time::Duration::from_secs(365 * 24 * 3600),
    )?;
    let tls = node_tls(serving.cert_pem, serving.key_pem, running.ca_pem.clone());
    Ok(tokio::spawn(agent.run(tls)))
}

/// `bosun agent`: joins this machine to a cluster as a node and runs its agent.
async fn join(args: JoinArgs) -> Result<()> {
    require_root()?;
    if args.cleanup {
        return network::remove_rules().context("cannot remove the service and policy rules");
    }
    // clap asks for both unless --cleanup
    let (Some(server), Some(token)) = (&args.server, &args.token) else {
        anyhow::bail!("--server and --token are required");
    };
    let node_name = node_name(&args.agent)?;
    let pki = args.data_dir.join("agent/pki");
    let joined = node::join::credentials(server, token, &node_name, &pki).await?;
    let pod_cidr = match args.agent.pod_cidr {
        Some(c) => c,
        None => node::join::assigned_pod_cidr(&joined.client, &node_name)
            .await?
            .parse()
            .map_err(anyhow::Error::msg)?,
    };
    // the cluster DNS is the kube-dns Service's address
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(joined.client.clone(), "kube-system");
    let cluster_dns = services
        .get("kube-dns")
        .await
        .context("cannot read the cluster DNS Service")?
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the kube-dns Service has no cluster IP"))?;
    let agent = new_agent(
        node_name.clone(),
        &args.data_dir,
        args.agent,
        pod_cidr,
        cluster_dns,
        false,
        joined.client.clone(),
    )?;
    let (cert, key) =
        node::join::serving_certificate(&joined.client, &node_name, &serving_names(&agent), &pki)
            .await?;
    eprintln!("bosun agent: node {node_name} joined {server}");
    let task = tokio::spawn(agent.run(node_tls(cert, key, joined.ca_pem)));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome: Result<()> = tokio::select! {
        _ = terminate.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = task => r?,
    };
    remove_node_rules();
    outcome
}

/// Removes the node's Service and NetworkPolicy rules as its agent stops: they go with the
/// agent; pods and their network stay for the next start.
fn remove_node_rules() {
    if let Err(e) = network::remove_rules() {
        eprintln!("cannot remove the service and policy rules: {e}");
    }
}

/// The name of this machine's Node: as told, else its hostname.
fn node_name(args: &AgentArgs) -> Result<String> {
    match &args.node_name {
        Some(n) => Ok(n.clone()),
        None => hostname(),
    }
}

/// A client with the admin kubeconfig of the server whose data dir is `data_dir`, and the
/// cluster CA.
async fn admin_client(data_dir: &std::path::Path) -> Result<(kube::Client, String)> {
    let path = data_dir.join("admin.kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).with_context(|| {
        format!(
            "cannot read {} (is this the server's data dir? see --data-dir)",
            path.display()
        )
    })?;
    let ca =
        node::join::kubeconfig_ca(&kubeconfig).with_context(|| format!("in {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok((kube::Client::try_from(config)?, ca))
}

/// `bosun token`.
async fn token(args: TokenArgs) -> Result<()> {
    let (client, ca) = admin_client(&args.data_dir).await?;
    match args.command {
        TokenCommand::Create { ttl, description } => {
            let ttl = (!ttl.is_zero()).then_some(ttl);
            let token = node::join::create_token(&client, &ca, ttl, &description).await?;
            println!("{token}");
        }
        TokenCommand::List => {
            println!("{:<8} {:<22} DESCRIPTION", "ID", "EXPIRES");
            for (id, expires, description) in node::join::list_tokens(&client).await? {
                let expires = if expires.is_empty() {
                    "never".to_string()
                } else {
                    expires
                };
                println!("{id:<8} {expires:<22} {description}");
            }
        }
        TokenCommand::Delete { ids } => {
            for id in ids {
                node::join::delete_token(&client, &id).await?;
                println!("bootstrap token {id} deleted");
            }
        }
    }
    Ok(())
}

/// Whether this process runs as root (effective uid 0).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// This machine's hostname, lowercased as a Node name must be.
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_lowercase())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn async_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // The supervisor and the exec helper fork containers' processes: they must stay
    // single-threaded, so they run without the async runtime; and their standard error becomes
    // the container's, so they log nothing there.
    if let Command::Shim {
        id,
        bundle,
        state_root,
    } = cli.command
    {
        std::process::exit(runtime::shim::main(runtime::shim::Args {
            id,
            bundle,
            state_root,
        }));
    }
    if let Command::Pause = cli.command {
        std::process::exit(runtime::sandbox::pause_main());
    }
    if let Command::ExecIn {
        id,
        state_root,
        console_socket,
        command,
    } = cli.command
    {
        std::process::exit(runtime::exec::main(runtime::exec::Args {
            id,
            state_root,
            command,
            console_socket,
        }));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOSUN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Shim { .. } | Command::Pause | Command::ExecIn { .. } => Ok(()),
        Command::Images(args) => images(args),
        Command::Server(args) => async_runtime()?.block_on(server(*args)),
        Command::Agent(args) => async_runtime()?.block_on(join(*args)),
        Command::Token(args) => async_runtime()?.block_on(token(args)),
    }
}
