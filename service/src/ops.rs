//! The operations endpoints every server binary answers (docs/ARCHITECTURE.md,
//! "Operations"): `GET /health/live` (the process works), `GET
//! /health/ready` (its dependencies answer; 503 once it drains) and `GET
//! /metrics` (Prometheus text). The gateway mounts them beside its API; the
//! coordinator and the workers, which speak gRPC only, serve them on their
//! own port (`--ops-listen`).

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Whether the process is ready, and why (the JSON body of the answer).
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<(bool, Value)> + Send + Sync>;

/// Brings the figures read at scrape time (from the database) up to date
/// before the registry is written out.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// The content type of the answer to `/metrics`: OpenMetrics text, which
/// Prometheus reads (and which is Prometheus' text format plus `# EOF`).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A binary's metrics: the registry they are written from, and what to run
/// before each scrape.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    refresh: Option<Refresh>,
}

impl Metrics {
    /// `registry` with `leakscan_build_info{binary, version}` added.
    pub fn new(mut registry: Registry, binary: &str, refresh: Option<Refresh>) -> Metrics {
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        info.get_or_create(&vec![
            ("binary".into(), binary.into()),
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
        ])
        .set(1);
        registry.register(
            "leakscan_build_info",
            "The running binary and its version (always 1)",
            info,
        );
        Metrics {
            registry: Arc::new(registry),
            refresh,
        }
    }

    /// The metrics in Prometheus (OpenMetrics) text.
    pub async fn render(&self) -> String {
        if let Some(refresh) = &self.refresh {
            refresh().await;
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Answers `/metrics`.
pub async fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics.render().await,
    )
        .into_response()
}

/// Answers `/health/ready`: 200 with `body` when ready, else 503.
pub fn ready_response(ready: bool, mut body: Value) -> Response {
    if let Some(object) = body.as_object_mut() {
        object.insert("status".into(), json!(if ready { "UP" } else { "DOWN" }));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Answers `/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "UP"}))
}

#[derive(Clone)]
struct Ops {
    ready: ReadyCheck,
    metrics: Metrics,
}

/// The three endpoints, plus `extra` routes (the coordinator's `/scaling`).
pub fn router(ready: ReadyCheck, metrics: Metrics, extra: Router) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route(
            "/health/ready",
            get(|State(ops): State<Ops>| async move {
                let (ready, body) = (ops.ready)().await;
                ready_response(ready, body)
            }),
        )
        .route(
            "/metrics",
            get(|State(ops): State<Ops>| async move { metrics_response(&ops.metrics).await }),
        )
        .with_state(Ops { ready, metrics })
        .merge(extra)
}

/// Binds `address` (an error names it), so a binary fails at start-up
/// rather than later.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot listen on {address} (operations endpoints): {error}"),
            )
        })
}

/// The operations endpoints of a binary without an HTTP port of its own
/// (`--ops-listen`): when `address` is given, binds it, says so on stdout
/// (`<binary> operations endpoints on <address>`) and serves `router()`
/// until the returned token is cancelled. Without an address, nothing
/// listens and the token stops nothing.
pub async fn start(
    binary: &str,
    address: Option<SocketAddr>,
    router: impl FnOnce() -> Router,
) -> std::io::Result<CancellationToken> {
    let stop = CancellationToken::new();
    if let Some(address) = address {
        let listener = bind(address).await?;
        println!(
            "{binary} operations endpoints on {}",
            listener.local_addr()?
        );
        tokio::spawn(serve(listener, router(), stop.clone()));
    }
    Ok(stop)
}

/// Serves `router` on `listener` until `stop`; a failure is logged (the
/// binary's own work goes on without its probes).
pub async fn serve(listener: tokio::net::TcpListener, router: Router, stop: CancellationToken) {
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the operations endpoints stopped");
    }
}

/// A histogram's bucket bounds in seconds, for durations from 10 ms to
/// about 3 hours.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 4.0, 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn the_endpoints_answer() {
        let mut registry = Registry::default();
        let scanned = Counter::<u64>::default();
        registry.register("leakscan_things_scanned", "Things scanned", scanned.clone());
        let refreshed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = Arc::clone(&refreshed);
        let refresh: Refresh = Arc::new(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async {})
        });
        let metrics = Metrics::new(registry, "test", Some(refresh));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&ready);
        let check: ReadyCheck = Arc::new(move || {
            let up = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { (up, json!({"draining": !up})) })
        });
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router(check, metrics, Router::new()),
            stop.clone(),
        ));
        scanned.inc_by(7);
        let get = |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                match ureq::get(&format!("http://{address}{path}")).call() {
                    Ok(answer) => (answer.status(), answer.into_string().unwrap()),
                    Err(ureq::Error::Status(code, answer)) => (code, answer.into_string().unwrap()),
                    Err(error) => panic!("{error}"),
                }
            })
        };
        let (status, body) = get("/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("leakscan_things_scanned_total 7\n"), "{body}");
        assert!(
            body.contains("leakscan_build_info{binary=\"test\""),
            "{body}"
        );
        assert_eq!(refreshed.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(get("/health/live").await.unwrap().0, 200);
        assert_eq!(get("/health/ready").await.unwrap().0, 200);
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
        let (status, body) = get("/health/ready").await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("\"status\":\"DOWN\""), "{body}");
        stop.cancel();
        server.await.unwrap();
    }
}
