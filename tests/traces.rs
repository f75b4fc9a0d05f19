//! Issue 16: one trace follows a scan from the gateway's request, through
//! the job's Redis stream entry and the coordinator's expansion, the gRPC
//! lease and the worker's scan, to the findings the coordinator records.
//! The gateway, a coordinator and a worker run in this process against a
//! fresh database and Redis prefix, talking HTTP, Redis and gRPC on
//! loopback as they do apart; their spans go to an in-memory exporter.

use std::{sync::Arc, time::Duration};

use leakscan_store::{
    queue::JobQueue,
    secrets::{MasterKey, SecretBox},
    testing::{redis_url, unique_name, TestDatabase},
};
use leakscan_tests::{git, wait_until, Api};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{layer::SubscriberExt as _, Layer as _};

// A fake AWS access key id of the right shape, made up for this test.
const PLANTED: &str = "AKIAQW7RT2ZX9LMN4VBE";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[test]
fn one_trace_spans_gateway_coordinator_and_worker() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    leakscan_service::telemetry::install_propagator();
    // The log lines go to the test's output (shown when it fails).
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::filter::filter_fn(
                    leakscan_service::telemetry::is_ours,
                )),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new("info")),
        );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let work = tempfile::tempdir().unwrap();
    let repository = work.path().join("root/TRACE/app");
    std::fs::create_dir_all(&repository).unwrap();
    git(&repository, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repository.join("deploy.env"),
        format!("AWS_ACCESS_KEY_ID={PLANTED}\n"),
    )
    .unwrap();
    git(&repository, &["add", "-A"]);
    git(&repository, &["commit", "-q", "-m", "deploy settings"]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let prefix = format!("{}:", unique_name("traces"));
    let master = MasterKey::generate();
    let shutdown = CancellationToken::new();
    let (gateway_address, coordinator) = runtime.block_on(async {
        let queue = JobQueue::connect(&redis_url(), &prefix).await.unwrap();
        let config = leakscan_gateway::GatewayConfig {
            repos_roots: vec![work.path().join("root")],
            master_key: Some(master.clone()),
            ..Default::default()
        };
        let state = leakscan_gateway::prepare(
            database.pool.clone(),
            queue.clone(),
            config,
            Some(("admin".into(), "trace-admin-password".into())),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_address = listener.local_addr().unwrap();
        tokio::spawn(leakscan_gateway::run(state, listener, shutdown.clone()));

        let secrets = Arc::new(SecretBox::load(&database.pool, master).await.unwrap());
        let config = leakscan_coordinator::CoordinatorConfig::default();
        let token = config.worker_token.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let coordinator_url = format!("http://{}", listener.local_addr().unwrap());
        let coordinator = tokio::spawn(leakscan_coordinator::run(
            config,
            database.pool.clone(),
            queue,
            secrets,
            listener,
            Arc::new(leakscan_coordinator::CoordinatorState::default()),
            shutdown.clone(),
        ));
        tokio::spawn(leakscan_worker::run(
            leakscan_worker::WorkerConfig {
                coordinator_url,
                name: "traced".into(),
                slots: 1,
                mirror_dir: work.path().join("mirrors"),
                threads: 1,
                lease_wait_ms: 500,
                token,
                git_credentials: None,
                tls: None,
                drain_timeout: Duration::ZERO,
            },
            shutdown.clone(),
        ));
        (gateway_address, coordinator)
    });

    let api = Api::new(
        &gateway_address.to_string(),
        "admin",
        "trace-admin-password",
    );
    let job = api.expect(
        "PUT",
        "/rest/security/latest/status/total_rescan",
        None,
        200,
    );
    let scan_key = job["scanKey"].as_str().unwrap().to_string();
    let mut last_state = Value::Null;
    let done = wait_until("the rescan", Duration::from_secs(60), || {
        let job = api.expect(
            "GET",
            &format!("/rest/security/latest/jobs/{scan_key}"),
            None,
            200,
        );
        if job["state"] != last_state {
            eprintln!("job: {job}");
            last_state = job["state"].clone();
        }
        (job["state"] == "done").then_some(job)
    });
    assert_eq!(done["tasksDone"], 1, "{done}");
    let findings = api.expect(
        "GET",
        "/rest/security/1.0/scan/TRACE/repos/app?branch=main",
        None,
        200,
    );
    assert_eq!(
        findings["invalidLines"].as_array().unwrap().len(),
        1,
        "{findings}"
    );

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let request = spans
        .iter()
        .find(|span| {
            span.name == "request"
                && attribute(span, "path")
                    .is_some_and(|path| path.ends_with("/status/total_rescan"))
        })
        .unwrap_or_else(|| panic!("no request span among {:?}", names(&spans)));
    let trace = request.span_context.trace_id();
    let in_trace: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.span_context.trace_id() == trace)
        .collect();
    for name in [
        "request",
        "expand job",
        "lease task",
        "scan task",
        "record findings",
        "complete task",
    ] {
        assert!(
            in_trace.iter().any(|span| span.name == name),
            "no {name:?} span in the request's trace: {:?} (all spans: {:?})",
            names(&in_trace.iter().copied().cloned().collect::<Vec<_>>()),
            names(&spans)
        );
    }
    // Each hop is a child within the trace, not a new root.
    let roots: Vec<&&SpanData> = in_trace
        .iter()
        .filter(|span| span.parent_span_id == opentelemetry::trace::SpanId::INVALID)
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "{:?}",
        names(&in_trace.iter().copied().cloned().collect::<Vec<_>>())
    );
    // No secret in any span.
    for span in &spans {
        for kv in &span.attributes {
            assert!(!kv.value.to_string().contains(PLANTED), "{span:?}");
        }
    }

    shutdown.cancel();
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(30), coordinator).await;
        database.drop_database().await.unwrap();
    });
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|span| span.name.to_string()).collect()
}
