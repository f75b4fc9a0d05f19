//! `leakscan up` (the whole cluster in one process) as a newcomer runs it,
//! with tracing on: it serves a total rescan, and on SIGTERM it exits 0.
//! Regression (issue 16): with `OTEL_EXPORTER_OTLP_ENDPOINT` set it built
//! the exporter outside its runtime and panicked at start. The collector
//! here accepts connections and never answers, as a stalled one does.

use std::time::Duration;

use leakscan_store::testing::{redis_url, unique_name, TestDatabase};
use leakscan_tests::{generate_repository, Api, Process};

const ADMIN: (&str, &str) = ("admin", "up-admin-password");

#[test]
fn leakscan_up_with_tracing_serves_a_rescan_and_stops_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let redis = format!("{}?prefix={}:", redis_url(), unique_name("up"));
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    generate_repository(&root.join("UP").join("app.git"), 10, "10k", 1, 2, 7);
    let collector = leakscan_testkit::silent_server();
    let (mut up, line) = Process::start(
        "up",
        "leakscan",
        &[
            "up",
            "--repos-root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--data-dir",
            work.path().join("data").to_str().unwrap(),
        ],
        &[
            ("LEAKSCAN_DATABASE_URL", database.url.as_str()),
            ("LEAKSCAN_REDIS_URL", redis.as_str()),
            ("LEAKSCAN_ADMIN_PASSWORD", ADMIN.1),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{collector}").as_str(),
            ),
        ],
        work.path().join("up.log"),
        "REST API on",
    );
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let api = Api::new(&address, ADMIN.0, ADMIN.1);
    let done = api.total_rescan();
    assert!(done["tasksDone"].as_i64().unwrap_or(0) >= 1, "{done}");
    up.terminate();
    let status = up
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("leakscan up did not stop; its log:\n{}", up.log_text()));
    assert!(status.success(), "{status:?}; its log:\n{}", up.log_text());
    runtime.block_on(database.drop_database()).unwrap();
}
