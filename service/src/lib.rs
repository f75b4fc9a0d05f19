//! `leakscan-service`: what every leakscan server binary shares.
//!
//! - [`init_logging`]: structured log lines on stderr, filtered by
//!   `LEAKSCAN_LOG` (default `info`), as JSON when `LEAKSCAN_LOG_FORMAT=json`.
//! - [`cancel_on_signal`]: turns SIGINT/SIGTERM into a cancelled
//!   [`CancellationToken`], the root of each binary's graceful shutdown.
//! - [`MasterKeyArgs`]: the `--master-key` / `--master-key-file` flags.

use std::path::PathBuf;

use leakscan_store::secrets::MasterKey;
use tokio_util::sync::CancellationToken;

/// The master key of stored secrets, as every binary that needs it takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct MasterKeyArgs {
    /// Master key (64 hex digits) that wraps the data keys of stored secrets.
    #[arg(
        long,
        env = "LEAKSCAN_MASTER_KEY",
        hide_env_values = true,
        conflicts_with = "master_key_file"
    )]
    pub master_key: Option<String>,
    /// File holding the master key (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "LEAKSCAN_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

impl MasterKeyArgs {
    /// The key given, if any; a malformed key or unreadable file is an error.
    pub fn load(&self) -> Result<Option<MasterKey>, leakscan_store::StoreError> {
        match (&self.master_key, &self.master_key_file) {
            (Some(hex), _) => MasterKey::from_hex(hex.trim()).map(Some),
            (None, Some(path)) => MasterKey::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Sets up the global log subscriber once (later calls do nothing).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEAKSCAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("LEAKSCAN_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Cancels `shutdown` on SIGINT or SIGTERM (what Kubernetes sends).
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
