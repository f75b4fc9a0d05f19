//! `leakscan-worker`: leases branch tasks from the coordinator and scans them.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use std::sync::Arc;

use leakscan_service::ops;
use leakscan_worker::{WorkerConfig, WorkerState};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// leakscan's scan worker: stateless, holds no database credentials.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The coordinator's gRPC address (a Kubernetes Service in production), or several separated
    /// by commas (a leader and its standbys): calls move on to the next when one is unreachable.
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
    /// TLS to the coordinator (an https:// URL): the CA (PEM) that signed
    /// its certificate.
    #[arg(long, env = "LEAKSCAN_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: this worker's certificate chain (PEM; with --tls-key).
    #[arg(long, env = "LEAKSCAN_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "LEAKSCAN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Engine threads per task (0: one per core).
    #[arg(long, env = "LEAKSCAN_WORKER_THREADS", default_value_t = 0)]
    threads: usize,
    /// On SIGTERM: seconds a running task may go on before it is stopped and handed back (keep
    /// Kubernetes' terminationGracePeriodSeconds above it).
    #[arg(long, env = "LEAKSCAN_DRAIN_TIMEOUT", default_value = "100", value_parser = parse_seconds)]
    drain_timeout: std::time::Duration,
    /// Where to serve /health/live, /health/ready and /metrics (e.g. 0.0.0.0:7993); not served
    /// without.
    #[arg(long, env = "LEAKSCAN_OPS_LISTEN")]
    ops_listen: Option<std::net::SocketAddr>,
}

/// Whole seconds, with or without an `s`: `100`, `100s`.
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    text.trim()
        .trim_end_matches('s')
        .parse::<u64>()
        .map(std::time::Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = leakscan_service::telemetry::init("leakscan-worker");
    let args = Args::parse();
    // Compiled prefilters are kept beside the mirrors (a cache too), so a
    // restarted worker does not compile the rules again.
    leakscan_engine::set_prefilter_cache_dir(Some(args.mirror_dir.join(".prefilter-cache")));
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = match &args.tls_ca {
        Some(ca) => Some(leakscan_worker::WorkerTls {
            ca_pem: read(ca)?,
            identity: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
        }),
        None => None,
    };
    let config = WorkerConfig {
        coordinator_url: args.coordinator_url,
        name,
        slots: args.slots.max(1),
        mirror_dir: args.mirror_dir,
        threads: args.threads,
        lease_wait_ms: 10_000,
        token: args.worker_token,
        git_credentials: args.git_credentials_file,
        tls,
        drain_timeout: args.drain_timeout,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(leakscan_service::cancel_on_signal(shutdown.clone()));
    let state = Arc::new(WorkerState::default());
    let ops_stop = ops::start("leakscan-worker", args.ops_listen, || {
        let ready: ops::ReadyCheck = {
            let state = Arc::clone(&state);
            Arc::new(move || {
                let (registered, draining) = (state.is_registered(), state.is_draining());
                Box::pin(async move {
                    (
                        registered && !draining,
                        json!({"registered": registered, "draining": draining}),
                    )
                })
            })
        };
        let metrics = ops::Metrics::new(state.registry(), "worker", None);
        ops::router(ready, metrics, axum::Router::new())
    })
    .await?;
    println!(
        "leakscan-worker {} connecting to {}",
        config.name, config.coordinator_url
    );
    let ran = leakscan_worker::run_with_state(config, state, shutdown).await;
    ops_stop.cancel();
    ran.context("worker stopped")?;
    Ok(())
}
