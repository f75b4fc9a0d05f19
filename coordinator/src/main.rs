//! `leakscan-coordinator`: leader-elected job expansion and task leasing.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use leakscan_coordinator::{CoordinatorConfig, CoordinatorState};
use leakscan_store::{queue::JobQueue, secrets::SecretBox, tasks::Parallelism};
use tokio_util::sync::CancellationToken;

/// leakscan's coordinator: expands scan jobs into branch tasks and leases
/// them to workers over gRPC. Replicas elect one leader; the others wait.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve the worker protocol (gRPC) on.
    #[arg(
        long,
        env = "LEAKSCAN_COORDINATOR_LISTEN",
        default_value = "127.0.0.1:7991"
    )]
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
    #[command(flatten)]
    master_key: leakscan_service::MasterKeyArgs,
    /// The credential workers must present (at least 16 characters; the
    /// same value is given to every worker).
    #[arg(long, env = "LEAKSCAN_WORKER_TOKEN", hide_env_values = true)]
    worker_token: String,
    /// Milliseconds a task lease lasts without a heartbeat.
    #[arg(long, env = "LEAKSCAN_LEASE_MS", default_value_t = 30_000)]
    lease_ms: u32,
    /// Milliseconds between a worker's heartbeats (also how soon it learns
    /// of a cancellation).
    #[arg(long, env = "LEAKSCAN_HEARTBEAT_MS", default_value_t = 1_000)]
    heartbeat_ms: u32,
    /// Attempts per task before it fails.
    #[arg(long, env = "LEAKSCAN_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: i32,
    /// Tasks running at once, instance-wide.
    #[arg(long, env = "LEAKSCAN_PARALLELISM", default_value_t = 64)]
    parallelism: u32,
    /// Tasks running at once on one worker (also capped by its slots).
    #[arg(long, env = "LEAKSCAN_WORKER_PARALLELISM", default_value_t = 4)]
    worker_parallelism: u32,
    /// This replica's name in the job stream's consumer group.
    #[arg(long, env = "LEAKSCAN_CONSUMER_NAME")]
    consumer_name: Option<String>,
    /// Where to serve /health/live, /health/ready (200 only on the leader), /metrics and
    /// /scaling (e.g. 0.0.0.0:7992); not served without.
    #[arg(long, env = "LEAKSCAN_OPS_LISTEN")]
    ops_listen: Option<SocketAddr>,
    /// Database connections.
    #[arg(long, env = "LEAKSCAN_DB_POOL_SIZE", default_value_t = 16)]
    db_pool_size: u32,
    /// TLS for the worker protocol: this certificate chain (PEM; with
    /// --tls-key). Workers then connect with https://.
    #[arg(long, env = "LEAKSCAN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "LEAKSCAN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Mutual TLS: workers must present a certificate this CA (PEM) signed.
    #[arg(long, env = "LEAKSCAN_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<std::path::PathBuf>,
    /// Report only findings of this confidence or higher (low, medium, high).
    #[command(flatten)]
    mail: leakscan_coordinator::mail::MailArgs,
    #[arg(long, env = "LEAKSCAN_MIN_CONFIDENCE", default_value = "medium", value_parser = parse_confidence)]
    min_confidence: leakscan_engine::Confidence,
}

fn parse_confidence(text: &str) -> Result<leakscan_engine::Confidence, String> {
    text.parse()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = leakscan_service::telemetry::init("leakscan-coordinator");
    let args = Args::parse();
    let Some(master) = args.master_key.load()? else {
        anyhow::bail!(
            "a master key is required: --master-key / LEAKSCAN_MASTER_KEY or --master-key-file / LEAKSCAN_MASTER_KEY_FILE"
        );
    };
    let pool = leakscan_store::connect(&args.database_url, args.db_pool_size)
        .await
        .context("failed to connect to postgres")?;
    leakscan_store::migrate(&pool)
        .await
        .context("failed to run the database migrations")?;
    let queue = JobQueue::connect_url(&args.redis_url)
        .await
        .context("failed to connect to redis")?;
    let secrets = Arc::new(
        SecretBox::load(&pool, master)
            .await
            .context("failed to load the data keys (is it the right master key?)")?,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(leakscan_coordinator::CoordinatorTls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: args.tls_ca.as_deref().map(read).transpose()?,
        }),
        _ => None,
    };
    let mail = args.mail.config(None).map_err(anyhow::Error::msg)?;
    let config = CoordinatorConfig {
        lease_ms: args.lease_ms,
        heartbeat_interval_ms: args.heartbeat_ms,
        max_attempts: args.max_attempts,
        parallelism: Parallelism {
            instance: args.parallelism,
            per_worker: args.worker_parallelism,
        },
        consumer_name: args
            .consumer_name
            .unwrap_or_else(|| format!("coordinator-{}", std::process::id())),
        expiry_interval: Duration::from_secs(2),
        min_confidence: args.min_confidence,
        worker_token: args.worker_token,
        tls,
        mail,
        ..CoordinatorConfig::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(leakscan_service::cancel_on_signal(shutdown.clone()));
    let state = Arc::new(CoordinatorState::default());
    let ops_stop = leakscan_service::ops::start("leakscan-coordinator", args.ops_listen, || {
        leakscan_coordinator::ops_router(Arc::clone(&state), pool.clone(), queue.clone())
    })
    .await?;
    println!(
        "leakscan-coordinator listening on {}",
        listener.local_addr()?
    );
    let ran =
        leakscan_coordinator::run(config, pool, queue, secrets, listener, state, shutdown).await;
    ops_stop.cancel();
    ran?;
    Ok(())
}
