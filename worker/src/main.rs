//! `leakscan-worker`: leases branch tasks from the coordinator and scans them.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use leakscan_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// leakscan's scan worker: stateless, holds no database credentials.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The coordinator's gRPC address (a Kubernetes Service in production).
    #[arg(
        long,
        env = "LEAKSCAN_COORDINATOR_URL",
        default_value = "http://127.0.0.1:7991"
    )]
    coordinator_url: String,
    /// This worker's name (default: host name and pid).
    #[arg(long, env = "LEAKSCAN_WORKER_NAME")]
    name: Option<String>,
    /// Tasks at once.
    #[arg(long, env = "LEAKSCAN_WORKER_SLOTS", default_value_t = 1)]
    slots: u32,
    /// Where repository mirrors are kept (a cache: it may be lost).
    #[arg(
        long,
        env = "LEAKSCAN_MIRROR_DIR",
        default_value = "/tmp/leakscan-mirrors"
    )]
    mirror_dir: PathBuf,
    /// The credential the coordinator expects (its `LEAKSCAN_WORKER_TOKEN`).
    #[arg(long, env = "LEAKSCAN_WORKER_TOKEN", hide_env_values = true)]
    worker_token: String,
    /// A git credentials file (`https://user:token@host` lines) for remote
    /// repositories; clone URLs hold no credentials.
    #[arg(long, env = "LEAKSCAN_GIT_CREDENTIALS_FILE")]
    git_credentials_file: Option<PathBuf>,
    /// Engine threads per task (0: one per core).
    #[arg(long, env = "LEAKSCAN_WORKER_THREADS", default_value_t = 0)]
    threads: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    leakscan_service::init_logging();
    let args = Args::parse();
    // Compiled prefilters are kept beside the mirrors (a cache too), so a
    // restarted worker does not compile the rules again.
    leakscan_engine::set_prefilter_cache_dir(Some(args.mirror_dir.join(".prefilter-cache")));
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let config = WorkerConfig {
        coordinator_url: args.coordinator_url,
        name,
        slots: args.slots.max(1),
        mirror_dir: args.mirror_dir,
        threads: args.threads,
        lease_wait_ms: 10_000,
        token: args.worker_token,
        git_credentials: args.git_credentials_file,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(leakscan_service::cancel_on_signal(shutdown.clone()));
    println!(
        "leakscan-worker {} connecting to {}",
        config.name, config.coordinator_url
    );
    leakscan_worker::run(config, shutdown)
        .await
        .context("worker stopped")?;
    Ok(())
}
