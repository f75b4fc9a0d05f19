//! `leakscan up`: the whole cluster in one process (gateway, coordinator and
//! N worker tasks), for trying leakscan on one machine. The parts talk as
//! they do when deployed apart: HTTP for clients, gRPC on loopback between
//! coordinator and workers, PostgreSQL and Redis for state.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use leakscan_coordinator::{CoordinatorConfig, CoordinatorState};
use leakscan_gateway::GatewayConfig;
use leakscan_store::{
    queue::JobQueue,
    secrets::{MasterKey, SecretBox},
};
use leakscan_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directories of `<PROJECT>/<slug>[.git]` repositories (repeatable).
    #[arg(
        long = "repos-root",
        env = "LEAKSCAN_REPOS_ROOTS",
        value_delimiter = ',',
        required = true
    )]
    repos_roots: Vec<PathBuf>,
    #[command(flatten)]
    clone_sources: leakscan_gateway::sources::CloneSourceArgs,
    #[command(flatten)]
    bitbucket: leakscan_gateway::bitbucket::BitbucketArgs,
    /// Address of the REST API.
    #[arg(long, env = "LEAKSCAN_LISTEN", default_value = "127.0.0.1:7990")]
    listen: SocketAddr,
    /// Worker tasks.
    #[arg(long, env = "LEAKSCAN_WORKERS", default_value_t = 2)]
    workers: u32,
    /// Engine threads per worker (default: the cores shared out among the workers).
    #[arg(long, env = "LEAKSCAN_WORKER_THREADS")]
    threads: Option<usize>,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "LEAKSCAN_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Redis URL; `?prefix=NAME:` sets the key prefix (default `leakscan:`).
    #[arg(
        long,
        env = "LEAKSCAN_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    #[command(flatten)]
    mail: leakscan_coordinator::mail::MailArgs,
    /// Bootstrap administrator (created or reset at start).
    #[arg(long, env = "LEAKSCAN_ADMIN_USER", default_value = "admin")]
    admin_user: String,
    #[arg(long, env = "LEAKSCAN_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: String,
    /// Master key (64 hex digits); default: the key file in the data directory.
    #[arg(long, env = "LEAKSCAN_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// Where mirrors and the generated master key file are kept.
    #[arg(long, env = "LEAKSCAN_DATA_DIR", default_value = ".leakscan")]
    data_dir: PathBuf,
    /// Report only findings of this confidence or higher (high, medium,
    /// low), as `leakscan scan --min-confidence` and the coordinator's
    /// setting of the same name.
    #[arg(long, env = "LEAKSCAN_MIN_CONFIDENCE", default_value = "medium", value_parser = parse_confidence)]
    min_confidence: leakscan_engine::Confidence,
}

fn parse_confidence(text: &str) -> Result<leakscan_engine::Confidence, String> {
    text.parse()
}

pub fn run_up(args: UpArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    // The OTLP exporter's channel lives on the runtime: made inside it, and
    // (declared after it) flushed and dropped before it.
    let _telemetry = {
        let _inside = runtime.enter();
        leakscan_service::telemetry::init("leakscan")
    };
    runtime.block_on(up(args))
}

async fn up(args: UpArgs) -> Result<()> {
    let master = match &args.master_key {
        Some(hex) => MasterKey::from_hex(hex.trim())?,
        None => MasterKey::load_or_create(&args.data_dir.join("master.key"))?,
    };
    let pool = leakscan_store::connect(&args.database_url, 32)
        .await
        .context("failed to connect to postgres")?;
    let queue = JobQueue::connect_url(&args.redis_url)
        .await
        .context("failed to connect to redis")?;
    let config = GatewayConfig {
        repos_roots: args.repos_roots.clone(),
        context_path: String::new(),
        master_key: Some(master.clone()),
        allowed_local_paths: args.clone_sources.allowed_local_paths.clone(),
        allowed_remotes: args.clone_sources.allowed_remotes.clone(),
        git_credentials: args.clone_sources.git_credentials_file.clone(),
        export_stall_timeout: leakscan_gateway::exports::STALLED_CLIENT,
        // Hooks run this very executable.
        hook_install: leakscan_gateway::hooks::HookInstall::new(None, None, args.listen, ""),
        shutdown_delay: std::time::Duration::ZERO,
        bitbucket: args.bitbucket.source().map_err(anyhow::Error::msg)?,
    };
    let state = leakscan_gateway::prepare(
        pool.clone(),
        queue.clone(),
        config,
        Some((args.admin_user.clone(), args.admin_password.clone())),
    )
    .await?;
    let secrets = Arc::new(
        SecretBox::load(&pool, master)
            .await
            .context("failed to load the data keys (is it the right master key?)")?,
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(leakscan_service::cancel_on_signal(shutdown.clone()));
    let mail = args
        .mail
        .config(Some(format!("http://{}", args.listen)))
        .map_err(anyhow::Error::msg)?;
    let coordinator_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let coordinator_address = coordinator_listener.local_addr()?;
    // A credential of this run's own: only these workers may lease tasks.
    let worker_token = leakscan_proto::auth::generate_token();
    let coordinator = tokio::spawn(leakscan_coordinator::run(
        CoordinatorConfig {
            consumer_name: format!("up-{}", std::process::id()),
            min_confidence: args.min_confidence,
            worker_token: worker_token.clone(),
            mail,
            ..CoordinatorConfig::default()
        },
        pool.clone(),
        queue,
        secrets,
        coordinator_listener,
        Arc::new(CoordinatorState::default()),
        shutdown.clone(),
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args.workers.max(1);
    let threads = args
        .threads
        .unwrap_or_else(|| (cores / workers as usize).max(1));
    let mut worker_handles = Vec::new();
    for index in 0..workers {
        let config = WorkerConfig {
            coordinator_url: format!("http://{coordinator_address}"),
            name: format!("up-worker-{index}"),
            slots: 1,
            // Each worker its own mirrors, as on separate machines.
            mirror_dir: args
                .data_dir
                .join("mirrors")
                .join(format!("worker-{index}")),
            threads,
            lease_wait_ms: 10_000,
            token: worker_token.clone(),
            git_credentials: args.clone_sources.git_credentials_file.clone(),
            // In one process, on loopback.
            tls: None,
            // The whole cluster stops at once: hand running tasks back
            // (they are queued again in PostgreSQL for the next start).
            drain_timeout: std::time::Duration::ZERO,
        };
        worker_handles.push(tokio::spawn(leakscan_worker::run(config, shutdown.clone())));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    println!(
        "leakscan up: REST API on http://{} (coordinator on {coordinator_address}, {workers} workers × {threads} threads)",
        listener.local_addr()?
    );
    leakscan_gateway::run(state, listener, shutdown.clone()).await?;
    shutdown.cancel();
    for handle in worker_handles {
        if let Ok(Err(error)) = handle.await {
            eprintln!("leakscan up: worker: {error}");
        }
    }
    coordinator.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    #[test]
    fn min_confidence_is_a_flag_of_up_and_defaults_to_medium() {
        let base = ["up", "--repos-root", "/srv/repos", "--admin-password", "pw"];
        let parsed = Cli::try_parse_from(base).unwrap();
        assert_eq!(
            parsed.up.min_confidence,
            leakscan_engine::Confidence::Medium
        );
        let parsed =
            Cli::try_parse_from(base.iter().copied().chain(["--min-confidence", "high"])).unwrap();
        assert_eq!(parsed.up.min_confidence, leakscan_engine::Confidence::High);
        let error = Cli::try_parse_from(base.iter().copied().chain(["--min-confidence", "sure"]))
            .unwrap_err();
        assert!(error.to_string().contains("sure"), "{error}");
    }
}
