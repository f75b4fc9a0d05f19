//! `leakscan-gateway`: serves the REST API.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use leakscan_gateway::GatewayConfig;
use leakscan_store::queue::JobQueue;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// leakscan's REST API (Soteri- and Bitbucket-compatible).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "LEAKSCAN_LISTEN", default_value = "127.0.0.1:7990")]
    listen: SocketAddr,
    /// PostgreSQL URL.
    #[arg(long, env = "LEAKSCAN_DATABASE_URL")]
    database_url: String,
    /// Redis URL; `?prefix=NAME:` sets the key prefix (default `leakscan:`).
    #[arg(
        long,
        env = "LEAKSCAN_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Directories of `<PROJECT>/<slug>[.git]` repositories (repeatable, or
    /// comma-separated in the environment).
    #[arg(
        long = "repos-root",
        env = "LEAKSCAN_REPOS_ROOTS",
        value_delimiter = ','
    )]
    repos_roots: Vec<PathBuf>,
    #[command(flatten)]
    clone_sources: leakscan_gateway::sources::CloneSourceArgs,
    #[command(flatten)]
    bitbucket: leakscan_gateway::bitbucket::BitbucketArgs,
    /// Prefix of every path, e.g. `/bitbucket`.
    #[arg(long, env = "LEAKSCAN_CONTEXT_PATH", default_value = "")]
    context_path: String,
    /// Bootstrap administrator (created or reset at start).
    #[arg(long, env = "LEAKSCAN_ADMIN_USER", requires = "admin_password")]
    admin_user: Option<String>,
    #[arg(long, env = "LEAKSCAN_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Database connections.
    #[arg(long, env = "LEAKSCAN_DB_POOL_SIZE", default_value_t = 16)]
    db_pool_size: u32,
    /// The `leakscan` executable installed push-protection hooks run
    /// (default: the one beside this executable).
    #[arg(long, env = "LEAKSCAN_HOOK_COMMAND")]
    hook_command: Option<PathBuf>,
    /// This gateway's URL as installed hooks reach it (default: the listen
    /// address).
    #[arg(long, env = "LEAKSCAN_PUBLIC_URL")]
    public_url: Option<String>,
    /// On SIGTERM: seconds to go on accepting requests after /health/ready turned 503 (while a
    /// load balancer takes the gateway out), before in-flight requests are finished and it exits.
    #[arg(long, env = "LEAKSCAN_SHUTDOWN_DELAY", default_value_t = 0)]
    shutdown_delay: u64,
    /// The master key is needed to import reviews (calls that need it
    /// answer 503 without).
    #[command(flatten)]
    master_key: leakscan_service::MasterKeyArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = leakscan_service::telemetry::init("leakscan-gateway");
    let args = Args::parse();
    let pool = leakscan_store::connect(&args.database_url, args.db_pool_size)
        .await
        .context("failed to connect to postgres")?;
    let queue = JobQueue::connect_url(&args.redis_url)
        .await
        .context("failed to connect to redis")?;
    let master_key = args.master_key.load()?;
    let bitbucket = args.bitbucket.source().map_err(anyhow::Error::msg)?;
    // Bound before anything else: installed hooks are told the address
    // (the port may be 0, the system's choice).
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let hook_install = leakscan_gateway::hooks::HookInstall::new(
        args.hook_command,
        args.public_url,
        listener.local_addr()?,
        &args.context_path,
    );
    let config = GatewayConfig {
        repos_roots: args.repos_roots,
        context_path: args.context_path,
        master_key,
        allowed_local_paths: args.clone_sources.allowed_local_paths,
        allowed_remotes: args.clone_sources.allowed_remotes,
        git_credentials: args.clone_sources.git_credentials_file,
        export_stall_timeout: leakscan_gateway::exports::STALLED_CLIENT,
        hook_install,
        shutdown_delay: std::time::Duration::from_secs(args.shutdown_delay),
        bitbucket,
    };
    let admin = args.admin_user.zip(args.admin_password);
    let state = leakscan_gateway::prepare(pool, queue, config, admin).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(leakscan_service::cancel_on_signal(shutdown.clone()));
    info!(address = %listener.local_addr()?, "gateway listening");
    println!(
        "leakscan-gateway listening on http://{}",
        listener.local_addr()?
    );
    leakscan_gateway::run(Arc::clone(&state), listener, shutdown).await?;
    Ok(())
}
