//! Issue 16's operations contract with the real binaries on loopback, a
//! fresh database and a fresh Redis prefix: the probes of every binary (a
//! standby coordinator is not ready, so a Service sends workers to the
//! leader), `/metrics` parsed and its figures checked against PostgreSQL
//! after a total rescan, `/scaling`, and a worker that gets SIGTERM while
//! its task is stuck mid-clone: it hands the task back within its drain
//! timeout, exits 0, and another worker completes the job.

use std::{path::Path, time::Duration};

use leakscan_store::testing::{redis_url, unique_name, TestDatabase};
use leakscan_tests::{
    address_in, branches, generate_repository, get_json, get_plain, keys, leakscan_scan,
    parse_metrics, start_gateway, wait_for_job, wait_until, Api, ClusterEnv, Process,
};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("admin", "ops-admin-password");

/// The address in the "operations endpoints on ADDRESS" line.
fn ops_address(lines: &[String]) -> String {
    let line = lines
        .iter()
        .find(|line| line.contains("operations endpoints on"))
        .unwrap_or_else(|| panic!("no operations line in {lines:?}"));
    address_in(line)
}

fn start_coordinator(env: &[(&str, &str)], dir: &Path, index: usize) -> (Process, String, String) {
    let (process, lines) = Process::start_lines(
        "coordinator",
        "leakscan-coordinator",
        &[
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--lease-ms",
            "3000",
            "--heartbeat-ms",
            "500",
        ],
        env,
        dir.join(format!("coordinator{index}.log")),
        "listening on",
    );
    let ops = ops_address(&lines);
    let grpc = address_in(lines.last().expect("the listening line"));
    (process, grpc, ops)
}

fn start_worker(
    name: &str,
    coordinators: &str,
    token: &str,
    dir: &Path,
    extra: &[&str],
) -> (Process, Vec<String>) {
    leakscan_tests::start_worker_lines(dir, name, coordinators, token, extra)
}

/// A figure of a parsed scrape; a series that is absent counts as 0.
fn figure(metrics: &std::collections::BTreeMap<String, f64>, series: &str) -> i64 {
    metrics.get(series).copied().unwrap_or(0.0) as i64
}

#[test]
fn probes_metrics_scaling_and_a_worker_draining_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let pool = &database.pool;
    let count = |sql: &str| -> i64 {
        runtime
            .block_on(
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool),
            )
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
    };
    let redis = format!("{}?prefix={}:", redis_url(), unique_name("ops"));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let root = dir.join("root");
    for index in 0..3u32 {
        let path = root.join("OPS").join(format!("app-{index}.git"));
        generate_repository(&path, 30, "40k", 1, 3, 40 + index);
    }
    let cluster_env = ClusterEnv::new(&database.url, &redis, ADMIN);
    let env = cluster_env.vars();
    let token = cluster_env.worker_token.clone();
    let (leader, leader_grpc, leader_ops) = start_coordinator(&env, dir, 0);
    wait_until(
        "the first coordinator to lead",
        Duration::from_secs(30),
        || leader.log_text().contains("became leader").then_some(()),
    );
    let (_standby, standby_grpc, standby_ops) = start_coordinator(&env, dir, 1);
    let (_gateway, gateway) =
        start_gateway(&env, &root, "127.0.0.1:0", &[], dir.join("gateway.log"));
    let api = Api::new(&gateway, ADMIN.0, ADMIN.1);
    let coordinators = format!("http://{leader_grpc},http://{standby_grpc}");
    let (mut worker0, lines) = start_worker(
        "worker0",
        &coordinators,
        &token,
        dir,
        &["--ops-listen", "127.0.0.1:0", "--drain-timeout", "1"],
    );
    let worker_ops = ops_address(&lines);

    // Probes: everything lives; the leader and the registered worker are
    // ready, the standby is not.
    for address in [&leader_ops, &standby_ops, &worker_ops, &gateway] {
        assert_eq!(
            get_plain(&format!("http://{address}/health/live")).0,
            200,
            "{address}"
        );
    }
    wait_until("the worker to be ready", Duration::from_secs(30), || {
        (get_plain(&format!("http://{worker_ops}/health/ready")).0 == 200).then_some(())
    });
    let (status, body) = get_plain(&format!("http://{leader_ops}/health/ready"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["role"],
        "leader"
    );
    let (status, body) = get_plain(&format!("http://{standby_ops}/health/ready"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["role"],
        "standby"
    );
    assert_eq!(get_plain(&format!("http://{gateway}/health/ready")).0, 200);

    // A total rescan, then every figure against the database.
    api.total_rescan();
    let (status, text) = get_plain(&format!("http://{leader_ops}/metrics"));
    assert_eq!(status, 200);
    let leader_metrics = parse_metrics(&text);
    let tasks_done = count("select count(*) from scan_tasks where state = 'done'");
    assert!(tasks_done >= 6, "{tasks_done} tasks");
    assert_eq!(
        figure(&leader_metrics, "leakscan_tasks{state=\"done\"}"),
        tasks_done
    );
    assert_eq!(
        figure(&leader_metrics, "leakscan_jobs{state=\"done\"}"),
        count("select count(*) from scan_jobs where state = 'done'")
    );
    assert_eq!(
        figure(&leader_metrics, "leakscan_task_leases_total"),
        count("select sum(attempts)::bigint from scan_tasks")
    );
    assert_eq!(
        figure(&leader_metrics, "leakscan_task_duration_seconds_count"),
        tasks_done
    );
    let findings = count("select count(*) from findings");
    assert!(findings > 0);
    assert_eq!(
        figure(&leader_metrics, "leakscan_findings_recorded_total"),
        findings
    );
    assert_eq!(figure(&leader_metrics, "leakscan_tasks_in_flight"), 0);
    assert_eq!(figure(&leader_metrics, "leakscan_tasks_pending"), 0);
    assert_eq!(figure(&leader_metrics, "leakscan_coordinator_leader"), 1);
    assert_eq!(figure(&leader_metrics, "leakscan_stream_pending"), 0);
    let blobs = figure(&leader_metrics, "leakscan_blobs_scanned_total");
    assert!(blobs >= count("select sum(blobs_read)::bigint from scan_tasks") && blobs > 0);
    assert!(figure(&leader_metrics, "leakscan_scanned_bytes_total") > 0);
    assert!(
        text.contains("leakscan_build_info{binary=\"coordinator\""),
        "{text}"
    );
    // The standby reads the same figures from the database, and leads not.
    let standby_metrics = parse_metrics(&get_plain(&format!("http://{standby_ops}/metrics")).1);
    assert_eq!(
        figure(&standby_metrics, "leakscan_tasks{state=\"done\"}"),
        tasks_done
    );
    assert_eq!(figure(&standby_metrics, "leakscan_coordinator_leader"), 0);
    // The one worker did every task and sent every branch's findings.
    let worker_metrics = parse_metrics(&get_plain(&format!("http://{worker_ops}/metrics")).1);
    assert_eq!(
        figure(
            &worker_metrics,
            "leakscan_worker_tasks_total{outcome=\"completed\"}"
        ),
        tasks_done
    );
    assert_eq!(
        figure(&worker_metrics, "leakscan_worker_blobs_scanned_total"),
        blobs
    );
    assert_eq!(
        figure(&worker_metrics, "leakscan_worker_findings_total"),
        count("select count(*) from finding_branches")
    );
    assert_eq!(
        figure(&worker_metrics, "leakscan_worker_tasks_in_flight"),
        0
    );
    let gateway_metrics = parse_metrics(&get_plain(&format!("http://{gateway}/metrics")).1);
    assert!(
        figure(
            &gateway_metrics,
            "leakscan_http_requests_total{method=\"PUT\",status=\"2xx\"}"
        ) >= 1,
        "{gateway_metrics:?}"
    );
    assert_eq!(
        get_json(&format!("http://{leader_ops}/scaling")),
        json!({"tasksPending": 0, "tasksLeased": 0})
    );

    // SIGTERM while the worker's task is stuck mid-clone on a hanging host.
    let (address, accepted) = leakscan_testkit::silent_server_counting();
    let original = root.join("OPS").join("app-0.git");
    let set_clone_url = |url: &str| {
        runtime
            .block_on(
                sqlx::query("update repositories set clone_url = $1 where slug = 'app-0'")
                    .bind(url)
                    .execute(pool),
            )
            .unwrap();
    };
    set_clone_url(&format!("http://{address}/app-0.git"));
    let rescan = api.expect(
        "PUT",
        "/rest/security/latest/status/projects/OPS/repos/app-0",
        None,
        200,
    );
    let rescan_key = rescan["scanKey"].as_str().unwrap().to_string();
    wait_until(
        "the clone to reach the hanging host",
        Duration::from_secs(60),
        || (accepted.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(()),
    );
    worker0.terminate();
    let status = worker0
        .wait_exit(Duration::from_secs(30))
        .expect("the worker exits after its drain timeout");
    assert!(status.success(), "{status:?}");
    let log = worker0.log_text();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("scan task stopped"), "{log}");
    let branch_count = branches(&original).len() as i64;
    let queued = format!(
        "select count(*) from scan_tasks t join scan_jobs j on j.id = t.job_id
         where j.scan_key = '{rescan_key}' and t.state = 'queued'"
    );
    assert_eq!(
        count(&queued),
        branch_count,
        "every task waits for a worker"
    );
    let scaling: Value =
        serde_json::from_str(&get_plain(&format!("http://{leader_ops}/scaling")).1).unwrap();
    assert_eq!(
        scaling,
        json!({"tasksPending": branch_count, "tasksLeased": 0})
    );
    // The host answers again; another worker completes the job.
    set_clone_url(original.to_str().unwrap());
    let (_worker1, _) = start_worker("worker1", &coordinators, &token, dir, &[]);
    let done = wait_for_job(&api, &rescan_key);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        count(&format!(
            "select max(t.attempts)::bigint from scan_tasks t join scan_jobs j on j.id = t.job_id
             where j.scan_key = '{rescan_key}'"
        )),
        2,
        "the handed-back task was leased again"
    );
    for branch in branches(&original) {
        let status = api.expect(
            "GET",
            &format!("/rest/security/1.0/scan/OPS/repos/app-0?branch={branch}"),
            None,
            200,
        );
        let reported = keys(status["invalidLines"].as_array().unwrap());
        assert_eq!(
            reported,
            leakscan_scan(&original, &branch),
            "branch {branch}"
        );
    }
    runtime.block_on(database.drop_database()).unwrap();
}
