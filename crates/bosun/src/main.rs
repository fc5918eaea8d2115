//! The `bosun` binary: `bosun server` runs a whole cluster's control plane from one process.
//! Wiring and command line only; the work is done by the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bosun", version, about = "Kubernetes in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the control plane (API server on an embedded store, controllers).
    Server(ServerArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the cluster's state, certificates and kubeconfig live.
    #[arg(long, default_value = "/var/lib/bosun", env = "BOSUN_DATA_DIR")]
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
}

async fn server(args: ServerArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let running = apiserver::start(apiserver::Config {
        data_dir: args.data_dir,
        bind: args.bind,
        extra_sans: args.tls_san,
        anonymous_auth: args.anonymous_auth,
        token_auth_file: args.token_auth_file,
    })
    .await?;
    let ctrl = controllers::start(
        component_client(&running, "system:kube-controller-manager").await?,
        running.ca_pem.clone(),
    );
    eprintln!(
        "bosun server listening on {} (ready in {} ms)",
        running.url,
        started.elapsed().as_millis()
    );
    eprintln!("admin kubeconfig: {}", running.admin_kubeconfig.display());
    eprintln!(
        "try: KUBECONFIG={} kubectl get namespaces",
        running.admin_kubeconfig.display()
    );
    tokio::select! {
        r = running.task => r?,
        r = ctrl => r??,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// A client for one of bosun's own components, authenticated by a client certificate issued
/// for it by the cluster CA.
async fn component_client(running: &apiserver::Running, user: &str) -> Result<kube::Client> {
    let creds = running.pki.client(user, &[])?;
    let text = apiserver::pki::kubeconfig(&running.url, &running.ca_pem, user, &creds);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOSUN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(args) => runtime.block_on(server(args)),
    }
}
