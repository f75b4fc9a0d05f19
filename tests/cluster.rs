//! The scan cluster end to end: the real `leakscan-gateway`,
//! `leakscan-coordinator` and two `leakscan-worker` processes on loopback,
//! a fresh PostgreSQL database and a fresh Redis key prefix (on servers of
//! the test's own where it crashes and restarts them), repositories
//! generated under a repository root. Every assertion goes through the REST
//! API except two checks on the database (no duplicate rows, a retried task).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use leakscan_store::{
    secrets::{MasterKey, SecretBox},
    testing::{redis_url, unique_name, TestDatabase},
};
use leakscan_testkit::{PrivatePostgres, PrivateRedis};
use leakscan_tests::{
    address_in, branches, generate_repository, git, keys, leakscan_scan, wait_until, Api, Process,
};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("admin", "e2e-admin-password");

struct Cluster {
    api: Api,
    master_key: MasterKey,
    /// The leader's and the standby's URLs, as the workers are given them.
    coordinator_urls: String,
    worker_token: String,
    /// The gateway's and coordinator's environment.
    env: Vec<(String, String)>,
    root: PathBuf,
    /// Processes restarted, numbering their log files (a coordinator's
    /// number is one more: the first two are coordinator0 and coordinator1).
    restarts: usize,
    dir: PathBuf,
    workers: Vec<Process>,
    gateway: Process,
    /// The coordinator that leads, and one standing by (issue 13: the
    /// leader dies with a standby running).
    coordinator: Process,
    standby: Option<Process>,
    /// The addresses of `coordinator` and of `standby` (or of the dead
    /// leader, until [`Cluster::start_standby`] starts one there).
    coordinator_address: String,
    standby_address: String,
}

impl Cluster {
    fn start(database_url: &str, redis: &str, root: &Path, dir: &Path) -> Cluster {
        let master_key = MasterKey::generate();
        let worker_token = leakscan_proto::auth::generate_token();
        let env: Vec<(String, String)> = vec![
            ("LEAKSCAN_WORKER_TOKEN".into(), worker_token.clone()),
            ("LEAKSCAN_DATABASE_URL".into(), database_url.into()),
            ("LEAKSCAN_REDIS_URL".into(), redis.into()),
            ("LEAKSCAN_MASTER_KEY".into(), master_key.to_hex()),
            ("LEAKSCAN_ADMIN_USER".into(), ADMIN.0.into()),
            ("LEAKSCAN_ADMIN_PASSWORD".into(), ADMIN.1.into()),
        ];
        let (coordinator, line) = start_coordinator(&env, dir, "127.0.0.1:0", 0);
        let leader_url = format!("http://{}", address_in(&line));
        wait_until(
            "the first coordinator to lead",
            Duration::from_secs(30),
            || {
                coordinator
                    .log_text()
                    .contains("became leader")
                    .then_some(())
            },
        );
        let (standby, line) = start_coordinator(&env, dir, "127.0.0.1:0", 1);
        let standby_address = address_in(&line).to_string();
        let coordinator_urls = format!("{leader_url},http://{standby_address}");
        let (gateway, api) = start_gateway(&env, root, dir, 0);
        let mut cluster = Cluster {
            api,
            master_key,
            coordinator_urls,
            worker_token,
            env,
            root: root.to_path_buf(),
            restarts: 0,
            dir: dir.to_path_buf(),
            workers: Vec::new(),
            gateway,
            coordinator,
            standby: Some(standby),
            coordinator_address: leader_url.trim_start_matches("http://").to_string(),
            standby_address,
        };
        cluster.start_worker();
        cluster.start_worker();
        wait_until("readiness", Duration::from_secs(30), || {
            (cluster.api.call("GET", "/health/ready", None).0 == 200).then_some(())
        });
        cluster
    }

    /// SIGKILLs the leading coordinator: the standby takes the lead and the
    /// workers, finding the dead one's address refused, move on to it.
    fn kill_leader(&mut self) {
        let standby = self.standby.take().expect("a standby runs");
        let standby_log = standby.log_text();
        self.coordinator.kill();
        wait_until("the standby to lead", Duration::from_secs(30), || {
            standby.log_text().contains("became leader").then_some(())
        });
        assert!(
            !standby_log.contains("became leader"),
            "the standby led before"
        );
        self.coordinator = standby;
        std::mem::swap(&mut self.coordinator_address, &mut self.standby_address);
    }

    /// Starts a standby coordinator at the address of the one last killed.
    fn start_standby(&mut self) {
        assert!(self.standby.is_none(), "a standby runs already");
        self.restarts += 1;
        let (standby, _) = start_coordinator(
            &self.env,
            &self.dir,
            &self.standby_address,
            self.restarts + 1,
        );
        self.standby = Some(standby);
    }

    /// SIGKILLs the gateway and starts another in its place (a new port).
    fn restart_gateway(&mut self) {
        self.gateway.kill();
        self.restarts += 1;
        let (gateway, api) = start_gateway(&self.env, &self.root, &self.dir, self.restarts);
        self.gateway = gateway;
        self.api = api;
    }

    fn start_worker(&mut self) {
        let name = format!("worker{}", self.workers.len());
        let worker = leakscan_tests::start_worker(
            &self.dir,
            &name,
            &self.coordinator_urls,
            &self.worker_token,
        );
        self.workers.push(worker);
    }

    /// Polls a job until it ends; asserts its progress never goes down.
    fn wait_for_job(&self, scan_key: &str, timeout: Duration) -> Value {
        let mut last_progress = 0;
        wait_until(&format!("job {scan_key}"), timeout, || {
            let job = self.api.expect(
                "GET",
                &format!("/rest/security/latest/jobs/{scan_key}"),
                None,
                200,
            );
            let progress = job["progress"].as_i64().unwrap();
            assert!(
                progress >= last_progress,
                "progress went from {last_progress} to {progress}: {job}"
            );
            assert!(progress <= 100, "{job}");
            last_progress = progress;
            let state = job["state"].as_str().unwrap().to_string();
            (state != "queued" && state != "running").then_some(job)
        })
    }

    fn branch_findings(&self, project: &str, slug: &str, branch: &str) -> Vec<Value> {
        let status = self.api.expect(
            "GET",
            &format!("/rest/security/1.0/scan/{project}/repos/{slug}?branch={branch}"),
            None,
            200,
        );
        assert_eq!(status["scanned"], json!(true), "{status}");
        assert_eq!(status["actual"], json!(true), "{status}");
        assert_eq!(status["progress"], json!(100), "{status}");
        status["invalidLines"].as_array().unwrap().clone()
    }

    /// Asserts every branch's findings equal `leakscan scan --branch`'s.
    fn assert_findings_match(&self, project: &str, slug: &str, repository: &Path) -> usize {
        let mut total = 0;
        for branch in branches(repository) {
            let reported = self.branch_findings(project, slug, &branch);
            let got = keys(&reported);
            assert_eq!(
                got.len(),
                reported.len(),
                "duplicate findings on {project}/{slug} {branch}"
            );
            let expected = leakscan_scan(repository, &branch);
            assert_eq!(got, expected, "{project}/{slug} branch {branch}");
            total += got.len();
        }
        total
    }

    /// Waits until both branch tasks of the BIG project are running.
    fn wait_until_running(&self, slugs: &[&str]) {
        wait_until("both big scans running", Duration::from_secs(60), || {
            slugs
                .iter()
                .all(|slug| {
                    let status = self.api.expect(
                        "GET",
                        &format!("/rest/security/1.0/scan/BIG/repos/{slug}?branch=main"),
                        None,
                        200,
                    );
                    status["running"] == json!(true)
                })
                .then_some(())
        });
    }
}

/// Prints how long the test has run, to see where its time goes.
fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A coordinator process listening on `address`, and its "listening" line.
fn start_coordinator(
    env: &[(String, String)],
    dir: &Path,
    address: &str,
    index: usize,
) -> (Process, String) {
    Process::start(
        "coordinator",
        "leakscan-coordinator",
        &[
            "--listen",
            address,
            "--lease-ms",
            "3000",
            "--heartbeat-ms",
            "500",
            "--worker-parallelism",
            "1",
        ],
        &borrowed(env),
        dir.join(format!("coordinator{index}.log")),
        "listening on",
    )
}

/// A gateway process over `root`, and its API as the administrator.
fn start_gateway(
    env: &[(String, String)],
    root: &Path,
    dir: &Path,
    index: usize,
) -> (Process, Api) {
    let (gateway, address) = leakscan_tests::start_gateway(
        &borrowed(env),
        root,
        "127.0.0.1:0",
        // Repositories registered through the API live here.
        &["--allowed-local-path", dir.to_str().unwrap()],
        dir.join(format!("gateway{index}.log")),
    );
    let api = Api::new(&address, ADMIN.0, ADMIN.1);
    (gateway, api)
}

fn phase(label: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("[{:>6.1}s] {label}", start.elapsed().as_secs_f64());
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

/// Every stored secret (findings and blob-cache entries) is under the
/// active key and decrypts with the master key; returns how many there are.
async fn assert_all_under_the_active_key(pool: &sqlx::PgPool, master_key: &MasterKey) -> usize {
    let secrets = SecretBox::load(pool, master_key.clone()).await.unwrap();
    let active: i32 = sqlx::query_scalar("select id from secret_keys where state = 'active'")
        .fetch_one(pool)
        .await
        .unwrap();
    let rows: Vec<(i32, Vec<u8>)> = sqlx::query_as(
        "select secret_key_id, secret_ciphertext from findings
         union all
         select secret_key_id, sealed_matches from blob_results where secret_key_id is not null",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (key, sealed) in &rows {
        assert_eq!(*key, active, "a secret under an old key");
        secrets.decrypt(pool, *key, sealed).await.unwrap();
    }
    rows.len()
}

/// Reads every row of every table as text: no planted secret appears in
/// it, neither as text nor as hex (a `bytea` column's text form).
async fn assert_no_plaintext_secret(pool: &sqlx::PgPool, planted: &[&str]) {
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables
         where table_schema = 'public' and table_type = 'BASE TABLE' order by 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "findings"), "{tables:?}");
    let mut rows_read = 0;
    for table in &tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select t::text from \"{table}\" t"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        rows_read += rows.len();
        for row in rows {
            for secret in planted {
                let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
                assert!(
                    !row.contains(secret) && !row.contains(&hex),
                    "table {table} holds a planted secret in plain text"
                );
            }
        }
    }
    assert!(rows_read > 0);
}

#[test]
fn the_cluster_scans_survives_a_killed_worker_and_stops_when_cancelled() {
    phase("start");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A PostgreSQL and a Redis of this test's own: it crashes and restarts
    // them mid-scan (issue 13's fault injection).
    let postgres = PrivatePostgres::start();
    let mut redis_server = PrivateRedis::start();
    let database = runtime
        .block_on(TestDatabase::create_on(&postgres.url()))
        .unwrap();
    let redis = format!("{}?prefix={}:", redis_server.url(), unique_name("e2e"));
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");

    // 30 repositories of up to 3 branches under the root, two in a personal project.
    let mut repositories = Vec::new();
    for index in 0..30u32 {
        let project = match index {
            0..=9 => "ALPHA",
            10..=19 => "BETA",
            20..=27 => "GAMMA",
            _ => "~alice",
        };
        let slug = format!("service-{index}");
        let path = root.join(project).join(format!("{slug}.git"));
        generate_repository(&path, 40, "80k", 2, 4, index + 1);
        // Two branches besides main, unless the generator's random history
        // left one without commits of its own (its content depends on the
        // files it finds on the machine).
        assert!(branches(&path).len() >= 2, "{}", path.display());
        repositories.push((project, slug, path));
    }
    let big: Vec<PathBuf> = (0..2)
        .map(|index| {
            let path = work.path().join(format!("big{index}.git"));
            generate_repository(&path, 12_000, "60M", 0, 6, 100 + index);
            path
        })
        .collect();

    phase("repositories generated");
    let mut cluster = Cluster::start(&database.url, &redis, &root, work.path());
    let api = &cluster.api;
    phase("cluster ready");

    // A total rescan: progress only grows, and ends at 100.
    let job = api.expect(
        "PUT",
        "/rest/security/latest/status/total_rescan?email=sec@example.com&email=ops@example.com",
        None,
        200,
    );
    let scan_key = job["scanKey"].as_str().unwrap().to_string();
    assert_eq!(job["emails"], json!(["sec@example.com", "ops@example.com"]));
    // Fault injection (issue 13), once some branches are done and while
    // the rest are scanned: a worker SIGKILLed and another started, the
    // gateway SIGKILLed and restarted, the leading coordinator SIGKILLed
    // (the standby leads, the workers move on to it), Redis flushed,
    // PostgreSQL crashed (no checkpoint, every connection cut) and
    // restarted, and Redis killed and started empty. The job, its tasks and
    // the findings written so far live in PostgreSQL's log; every process
    // reconnects by itself.
    let running = wait_until("some branches scanned", Duration::from_secs(120), || {
        let job = cluster.api.expect(
            "GET",
            &format!("/rest/security/latest/jobs/{scan_key}"),
            None,
            200,
        );
        (job["tasksDone"].as_i64().unwrap() >= 3).then_some(job)
    });
    assert_eq!(
        running["state"], "running",
        "the faults came too late: {running}"
    );
    cluster.workers[0].kill();
    cluster.start_worker();
    cluster.restart_gateway();
    cluster.kill_leader();
    assert_eq!(redis_server.cli(&["FLUSHALL"]), "OK");
    postgres.crash_and_restart();
    redis_server.restart_empty();
    phase("faults injected mid-rescan");
    wait_until(
        "the gateway to answer again",
        Duration::from_secs(30),
        || (cluster.api.call("GET", "/health/ready", None).0 == 200).then_some(()),
    );
    let api = &cluster.api;
    let done = cluster.wait_for_job(&scan_key, Duration::from_secs(300));
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["progress"], 100);
    assert!(
        cluster
            .workers
            .iter()
            .any(|worker| worker.log_text().contains("trying the next one")),
        "no worker moved on to the standby coordinator"
    );
    let branch_count: usize = repositories
        .iter()
        .map(|(_, _, path)| branches(path).len())
        .sum();
    assert_eq!(done["tasksTotal"], branch_count);
    assert!(done["blobsRead"].as_i64().unwrap() > 0, "{done}");

    phase("total rescan done");
    // Every branch holds exactly what `leakscan scan` reports.
    let mut found = 0;
    for (project, slug, path) in &repositories {
        found += cluster.assert_findings_match(project, slug, path);
    }
    assert!(found >= repositories.len(), "only {found} findings");

    phase("findings compared");
    // A second total rescan with no new commits reads no blob.
    let again = api.expect(
        "PUT",
        "/rest/security/latest/status/total_rescan",
        None,
        200,
    );
    let again = cluster.wait_for_job(again["scanKey"].as_str().unwrap(), Duration::from_secs(120));
    assert_eq!(again["state"], "done", "{again}");
    assert_eq!(again["blobsRead"], 0, "{again}");

    phase("no-change rescan done");
    // A fork (another repository with the same objects) reads no blob: every
    // result comes from the coordinator's blob-result cache.
    let (_, _, original) = &repositories[0];
    api.expect(
        "POST",
        "/rest/api/latest/projects/ALPHA/repos",
        Some(json!({"name": "service-0-fork", "cloneUrl": original.to_str().unwrap()})),
        201,
    );
    let fork = api.expect(
        "PUT",
        "/rest/security/latest/status/projects/ALPHA/repos/service-0-fork",
        None,
        200,
    );
    let fork = cluster.wait_for_job(fork["scanKey"].as_str().unwrap(), Duration::from_secs(120));
    assert_eq!(fork["state"], "done", "{fork}");
    assert_eq!(fork["blobsRead"], 0, "{fork}");
    cluster.assert_findings_match("ALPHA", "service-0-fork", original);
    phase("fork scanned from the cache");
    // Two big repositories registered through the API with a clone URL.
    api.expect(
        "POST",
        "/rest/api/latest/projects",
        Some(json!({"key": "BIG"})),
        201,
    );
    for (index, path) in big.iter().enumerate() {
        let registered = api.expect(
            "POST",
            "/rest/api/latest/projects/BIG/repos",
            Some(json!({"name": format!("big{index}"), "cloneUrl": path.to_str().unwrap()})),
            201,
        );
        assert_eq!(registered["branches"], json!(["main"]));
    }
    let slugs = ["big0", "big1"];

    phase("big repositories registered");
    // Cancelled while both workers scan: both stop within 5 seconds.
    let running = api.expect(
        "PUT",
        "/rest/security/latest/status/projects/BIG",
        None,
        200,
    );
    cluster.wait_until_running(&slugs);
    let stopped_before: usize = cluster
        .workers
        .iter()
        .map(|worker| count_lines(&worker.log_text(), "scan task stopped"))
        .sum();
    let cancelled = api.expect("DELETE", "/rest/security/latest/status/running", None, 200);
    assert_eq!(cancelled["cancelled"], 1);
    wait_until("both workers to stop", Duration::from_secs(5), || {
        let stopped: usize = cluster
            .workers
            .iter()
            .map(|worker| count_lines(&worker.log_text(), "scan task stopped"))
            .sum();
        (stopped >= stopped_before + 2).then_some(())
    });
    let job = api.expect(
        "GET",
        &format!(
            "/rest/security/latest/jobs/{}",
            running["scanKey"].as_str().unwrap()
        ),
        None,
        200,
    );
    assert_eq!(job["state"], "cancelled", "{job}");

    phase("cancel done");
    // A worker killed mid-scan: its task is leased again and the job
    // completes with the same findings, none twice.
    let rescan = api.expect(
        "PUT",
        "/rest/security/latest/status/projects/BIG",
        None,
        200,
    );
    let rescan_key = rescan["scanKey"].as_str().unwrap().to_string();
    cluster.start_standby();
    cluster.wait_until_running(&slugs);
    cluster.workers[1].kill();
    cluster.start_worker();
    // The gateway and the leading coordinator killed too, mid-scan (issue
    // 13): another gateway starts, the standby coordinator leads and the
    // workers move on to it; the accepted job and its leases live in
    // PostgreSQL, so the job goes on and reads the same.
    cluster.restart_gateway();
    cluster.kill_leader();
    let api = &cluster.api;
    // The data key rotated while the scan writes findings.
    let rotated = api.expect("POST", "/rest/secrets/1.0/keys/rotate", None, 200);
    let job = api.expect(
        "GET",
        &format!("/rest/security/latest/jobs/{rescan_key}"),
        None,
        200,
    );
    phase(&format!(
        "key rotated ({}), job {}",
        rotated["message"], job["state"]
    ));
    let done = cluster.wait_for_job(&rescan_key, Duration::from_secs(300));
    assert_eq!(done["state"], "done", "{done}");
    phase("kill scenario job done");
    // Every secret, old or written since, is under the new key; the old
    // key is unused and goes.
    let stored = runtime.block_on(assert_all_under_the_active_key(
        &database.pool,
        &cluster.master_key,
    ));
    assert!(stored > 0);
    let inactive = api.expect("GET", "/rest/secrets/1.0/keys/inactive", None, 200);
    assert_eq!(
        inactive["inactiveKeys"], rotated["inactiveKeys"],
        "{inactive}"
    );
    assert_eq!(inactive["keys"][0]["ciphertexts"], 0, "{inactive}");
    let deleted = api.expect("DELETE", "/rest/secrets/1.0/keys/inactive", None, 200);
    assert_eq!(deleted["deletedKeys"], rotated["inactiveKeys"], "{deleted}");
    for (slug, path) in slugs.iter().zip(&big) {
        let found = cluster.assert_findings_match("BIG", slug, path);
        assert!(found > 0, "{slug}: no findings");
    }
    let (retried, duplicates): (i64, i64) = runtime.block_on(async {
        let retried = sqlx::query_scalar(
            "select count(*) from scan_tasks t join scan_jobs j on j.id = t.job_id
             where j.scan_key = $1 and t.attempts > 1",
        )
        .bind(&rescan_key)
        .fetch_one(&database.pool)
        .await
        .unwrap();
        let duplicates = sqlx::query_scalar(
            "select count(*) from (select 1 from findings
             group by repository_id, commit, path, line, rule_id, fingerprint having count(*) > 1) d",
        )
        .fetch_one(&database.pool)
        .await
        .unwrap();
        (retried, duplicates)
    });
    // The killed worker's task was leased again (a task whose lease ran
    // out while the workers moved to the new leader may have been too).
    assert!(
        retried >= 1,
        "the killed worker's task was not leased again"
    );
    assert_eq!(duplicates, 0);

    phase("all checked");
    drop(cluster);
    runtime.block_on(database.drop_database()).unwrap();
}

fn write_file(dir: &Path, path: &str, content: &str) {
    let full = dir.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

// Fake secrets of the right shape, made up for this test.
const AWS_KEY: &str = "AKIAXR4TQ2MZWB7NJE5C";
const VENDOR_KEY: &str = "AKIAPK3WV9HJQ2TX6RNB";
const SLACK_TOKEN: &str = "xoxb-583920174635-820193847561-Rt5Kq8Wz2Yx4Vb7Nm3Lp9Hd6";
const INTERNAL_TOKEN: &str = "itk_5c1e9a7f3b2d8e60";
const FEATURE_TOKEN: &str = "ftk_0a9b8c7d6e5f4a3b";

impl Cluster {
    /// Rescans one branch and returns the finished job.
    fn rescan_branch(&self, project: &str, slug: &str, branch: &str) -> Value {
        let job = self.api.expect(
            "PUT",
            &format!("/rest/security/latest/status/projects/{project}/repos/{slug}/branches?name={branch}"),
            None,
            200,
        );
        let done = self.wait_for_job(job["scanKey"].as_str().unwrap(), Duration::from_secs(120));
        assert_eq!(done["state"], "done", "{done}");
        done
    }

    /// (rule, path, reviewed) of a branch's findings, sorted.
    fn rule_paths(&self, project: &str, slug: &str, branch: &str, reviewed: bool) -> Vec<String> {
        let status = self.api.expect(
            "GET",
            &format!(
                "/rest/security/1.0/scan/{project}/repos/{slug}?branch={branch}&includeWhitelisted={reviewed}"
            ),
            None,
            200,
        );
        let mut found: Vec<String> = status["invalidLines"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|line| {
                format!(
                    "{} {}{}",
                    line["rule"].as_str().unwrap(),
                    line["path"].as_str().unwrap(),
                    if line["reviewed"] == json!(true) {
                        " (reviewed)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        found.sort();
        found
    }
}

#[test]
fn policy_changes_apply_to_the_next_scan() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let redis = format!("{}?prefix={}:", redis_url(), unique_name("e2e-policy"));
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");

    // POL/app: main with four secrets, `feature` with a config file that
    // adds a custom rule; POL/skip: to be exempted.
    let source = work.path().join("app-source");
    std::fs::create_dir_all(&source).unwrap();
    git(&source, &["init", "-q", "-b", "main"]);
    write_file(
        &source,
        "config/aws.env",
        &format!("aws_access_key_id = {AWS_KEY}\n"),
    );
    write_file(
        &source,
        "vendor/sdk/creds.env",
        &format!("aws_access_key_id = {VENDOR_KEY}\n"),
    );
    write_file(&source, "notes.txt", &format!("slack: {SLACK_TOKEN}\n"));
    write_file(
        &source,
        "src/internal.txt",
        &format!("deploy with {INTERNAL_TOKEN} today\n"),
    );
    git(&source, &["add", "-A"]);
    git(&source, &["commit", "-q", "-m", "secrets"]);
    git(&source, &["checkout", "-q", "-b", "feature"]);
    write_file(
        &source,
        "soteri-security.yml",
        "custom_rules:\n  FEATURE_TOKEN: 'ftk_[0-9a-f]{16}'\n",
    );
    write_file(
        &source,
        "feature.txt",
        &format!("feature = {FEATURE_TOKEN}\n"),
    );
    git(&source, &["add", "-A"]);
    git(&source, &["commit", "-q", "-m", "feature config"]);
    git(&source, &["checkout", "-q", "main"]);
    let app = root.join("POL/app.git");
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    git(
        work.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "--no-local",
            source.to_str().unwrap(),
            app.to_str().unwrap(),
        ],
    );
    git(
        work.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "--no-local",
            source.to_str().unwrap(),
            root.join("POL/skip.git").to_str().unwrap(),
        ],
    );

    let cluster = Cluster::start(&database.url, &redis, &root, work.path());
    let api = &cluster.api;

    // An exempt repository is not scanned by a total rescan.
    api.expect(
        "PUT",
        "/rest/api/latest/projects/POL/repos/skip/secret-scanning/exempt",
        None,
        204,
    );
    let job = api.expect(
        "PUT",
        "/rest/security/latest/status/total_rescan",
        None,
        200,
    );
    let done = cluster.wait_for_job(job["scanKey"].as_str().unwrap(), Duration::from_secs(120));
    assert_eq!(
        (done["state"].clone(), done["tasksTotal"].clone()),
        (json!("done"), json!(2)),
        "{done}"
    );
    let skipped = api.expect(
        "GET",
        "/rest/security/1.0/scan/POL/repos/skip?branch=main",
        None,
        200,
    );
    assert_eq!(skipped["scanned"], false, "{skipped}");
    assert_eq!(
        cluster.rule_paths("POL", "app", "main", false),
        vec![
            "AWS_ACCESS_KEY_ID config/aws.env",
            "AWS_ACCESS_KEY_ID vendor/sdk/creds.env",
            "SLACK_BOT_TOKEN notes.txt",
        ]
    );
    assert!(cluster
        .rule_paths("POL", "app", "feature", false)
        .contains(&"FEATURE_TOKEN feature.txt".to_string()));
    // rule_types: the feature branch's config rule, not main's.
    let types = |branch: &str| {
        api.expect(
            "GET",
            &format!("/rest/security/1.0/scan/POL/rule_types/app?branch={branch}"),
            None,
            200,
        )
        .to_string()
    };
    assert!(types("feature").contains("\"FEATURE_TOKEN\""));
    assert!(!types("main").contains("\"FEATURE_TOKEN\""));

    // A custom rule added through the API finds its secret in the next scan.
    api.expect(
        "POST",
        "/rest/api/latest/secret-scanning/rules",
        Some(json!({"name": "INTERNAL_TOKEN", "lineRegex": "(itk_[0-9a-f]{16})"})),
        200,
    );
    let status = api.expect(
        "GET",
        "/rest/security/1.0/scan/POL/repos/app?branch=main",
        None,
        200,
    );
    assert_eq!(
        status["actual"], false,
        "the rule change outdates the scan: {status}"
    );
    cluster.rescan_branch("POL", "app", "main");
    let with_custom = cluster.rule_paths("POL", "app", "main", false);
    assert!(
        with_custom.contains(&"INTERNAL_TOKEN src/internal.txt".to_string()),
        "{with_custom:?}"
    );
    assert_eq!(with_custom.len(), 4);
    assert_eq!(
        api.expect(
            "GET",
            "/rest/security/1.0/scan/POL/repos/app?branch=main",
            None,
            200
        )["actual"],
        true
    );

    // A built-in rule switched off: its findings go, without reading a blob;
    // switched on again, they come back.
    api.expect(
        "DELETE",
        "/rest/security/1.0/hardcoded/AWS_CLIENT_ID",
        None,
        200,
    );
    let done = cluster.rescan_branch("POL", "app", "main");
    assert_eq!(done["blobsRead"], 0, "{done}");
    assert_eq!(
        cluster.rule_paths("POL", "app", "main", false),
        vec![
            "INTERNAL_TOKEN src/internal.txt",
            "SLACK_BOT_TOKEN notes.txt"
        ]
    );
    api.expect(
        "POST",
        "/rest/security/1.0/hardcoded/AWS_CLIENT_ID",
        None,
        200,
    );
    let done = cluster.rescan_branch("POL", "app", "main");
    assert_eq!(done["blobsRead"], 0, "{done}");
    assert_eq!(cluster.rule_paths("POL", "app", "main", false), with_custom);

    // An allowlist rule suppresses the vendored key (again from cached results).
    api.expect(
        "POST",
        "/rest/api/latest/projects/POL/repos/app/secret-scanning/allowlist",
        Some(json!({"name": "vendored", "pathRegex": "^vendor/"})),
        200,
    );
    let done = cluster.rescan_branch("POL", "app", "main");
    assert_eq!(done["blobsRead"], 0, "{done}");
    assert_eq!(
        cluster.rule_paths("POL", "app", "main", false),
        vec![
            "AWS_ACCESS_KEY_ID config/aws.env",
            "INTERNAL_TOKEN src/internal.txt",
            "SLACK_BOT_TOKEN notes.txt",
        ]
    );

    // A reviewed secret stays hidden when it is committed again in another file.
    let status = api.expect(
        "GET",
        "/rest/security/1.0/scan/POL/repos/app?branch=main",
        None,
        200,
    );
    let slack = status["invalidLines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["rule"] == "SLACK_BOT_TOKEN")
        .unwrap()
        .clone();
    api.expect(
        "POST",
        "/rest/security/latest/reviewed/projects/POL/repos/app",
        Some(json!({"findingId": slack["id"], "comment": "a test workspace"})),
        201,
    );
    write_file(&source, "docs/copy.txt", &format!("again: {SLACK_TOKEN}\n"));
    git(&source, &["add", "-A"]);
    git(&source, &["commit", "-q", "-m", "copy"]);
    git(&source, &["push", "-q", app.to_str().unwrap(), "main"]);
    cluster.rescan_branch("POL", "app", "main");
    assert_eq!(
        cluster.rule_paths("POL", "app", "main", false),
        vec![
            "AWS_ACCESS_KEY_ID config/aws.env",
            "INTERNAL_TOKEN src/internal.txt"
        ]
    );
    assert_eq!(
        cluster.rule_paths("POL", "app", "main", true),
        vec![
            "AWS_ACCESS_KEY_ID config/aws.env",
            "INTERNAL_TOKEN src/internal.txt",
            "SLACK_BOT_TOKEN docs/copy.txt (reviewed)",
            "SLACK_BOT_TOKEN notes.txt (reviewed)",
        ]
    );

    // Every change above is in the audit log.
    let audit = api.expect("GET", "/rest/security/latest/audit?limit=100", None, 200);
    let mut actions: Vec<&str> = audit["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        vec![
            "exemption.added",
            "rule.created",
            "builtin.disabled",
            "builtin.enabled",
            "allowlist.created",
            "review.created",
        ]
    );

    // The last scan of main left a SECURITY report on its head commit, in
    // both the Cloud and the Data Center shape.
    let head = String::from_utf8(
        std::process::Command::new("git")
            .args(["-C", app.to_str().unwrap(), "rev-parse", "main"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let cloud = format!("/2.0/repositories/POL/app/commit/{head}/reports/leakscan-secrets");
    let report = api.expect("GET", &cloud, None, 200);
    assert_eq!(
        (report["report_type"].clone(), report["result"].clone()),
        (json!("SECURITY"), json!("FAILED")),
        "{report}"
    );
    assert_eq!(
        report["data"][0],
        json!({"title": "Findings", "type": "NUMBER", "value": 2})
    );
    let annotations = api.expect("GET", &format!("{cloud}/annotations"), None, 200);
    let mut annotated: Vec<String> = annotations["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["annotation_type"].as_str().unwrap(),
                a["severity"].as_str().unwrap(),
                a["path"].as_str().unwrap()
            )
        })
        .collect();
    annotated.sort();
    assert_eq!(
        annotated,
        vec![
            "VULNERABILITY HIGH config/aws.env",
            "VULNERABILITY HIGH src/internal.txt"
        ]
    );
    let dc = api.expect(
        "GET",
        &format!("/rest/insights/latest/projects/POL/repos/app/commits/{head}/reports/leakscan-secrets/annotations"),
        None,
        200,
    );
    assert_eq!(dc["totalCount"], 2, "{dc}");

    // The data key rotates; the next scan writes under the new key and the
    // old one can go.
    let rotated = api.expect("POST", "/rest/secrets/1.0/keys/rotate", None, 200);
    cluster.rescan_branch("POL", "app", "feature");
    runtime.block_on(assert_all_under_the_active_key(
        &database.pool,
        &cluster.master_key,
    ));
    let deleted = api.expect("DELETE", "/rest/secrets/1.0/keys/inactive", None, 200);
    assert_eq!(deleted["deletedKeys"], rotated["inactiveKeys"], "{deleted}");

    // No table holds a planted secret in plain text.
    let planted = [
        AWS_KEY,
        VENDOR_KEY,
        SLACK_TOKEN,
        INTERNAL_TOKEN,
        FEATURE_TOKEN,
    ];
    runtime.block_on(assert_no_plaintext_secret(&database.pool, &planted));

    // No log line of any process shows a planted secret.
    let mut logs = vec![cluster.gateway.log_text(), cluster.coordinator.log_text()];
    logs.extend(cluster.workers.iter().map(Process::log_text));
    assert!(logs.iter().any(|log| log.contains("scan task done")));
    for log in &logs {
        for secret in [
            AWS_KEY,
            VENDOR_KEY,
            SLACK_TOKEN,
            INTERNAL_TOKEN,
            FEATURE_TOKEN,
        ] {
            assert!(!log.contains(secret), "a log shows a secret");
        }
    }
    runtime.block_on(database.drop_database()).unwrap();
}
