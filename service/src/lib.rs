//! `leakscan-service`: what every leakscan server binary shares.
//!
//! - [`init_logging`]: structured log lines on stderr, filtered by
//!   `LEAKSCAN_LOG` (default `info`), as JSON when `LEAKSCAN_LOG_FORMAT=json`.
//! - [`cancel_on_signal`]: turns SIGINT/SIGTERM into a cancelled
//!   [`CancellationToken`], the root of each binary's graceful shutdown.

use tokio_util::sync::CancellationToken;

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
