//! Coordinator and two workers in one process, talking gRPC on loopback,
//! against a fresh database, a fresh Redis prefix and real git repositories:
//! a total rescan stores exactly the findings `leakscan scan` reports, a
//! second rescan with no new commits reads no blob, and a force-pushed branch
//! is scanned whole.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use leakscan_coordinator::{CoordinatorConfig, CoordinatorState, CoordinatorTls};
use leakscan_engine::{
    git::scan_repository, rules::find_builtin, GitScanRequest, Policy, ScanOptions, ScanProgress,
};
use leakscan_store::{
    catalog,
    jobs::{self, JobScope},
    queue::JobQueue,
    secrets::{MasterKey, SecretBox},
    testing::{redis_url, unique_name, TestDatabase},
};
use leakscan_testkit::GitRepo;
use leakscan_worker::{WorkerConfig, WorkerTls};
use tokio_util::sync::CancellationToken;

fn example(rule: &str) -> String {
    find_builtin(rule).unwrap().examples[0].clone()
}

/// A repository with secrets on three branches, one removed again.
fn repository(index: usize) -> GitRepo {
    let repo = GitRepo::new();
    repo.write("README.md", format!("# service {index}\n"));
    repo.write(
        &format!("config/app{index}.env"),
        format!("{}\n", example("AWS_ACCESS_KEY_ID")),
    );
    repo.commit_all("init");
    repo.checkout_new("dev");
    repo.write(
        "scripts/deploy.sh",
        format!("#!/bin/sh\n{}\n", example("GITHUB_PAT_CLASSIC")),
    );
    repo.commit_all("deploy script");
    repo.checkout("main");
    repo.checkout_new("release");
    repo.write("notify.yml", format!("{}\n", example("SLACK_BOT_TOKEN")));
    repo.commit_all("notifications");
    repo.remove("notify.yml");
    repo.commit_all("remove the token again");
    repo.checkout("main");
    repo
}

type Key = (String, String, String, Option<i32>);

fn expected_findings(repo: &GitRepo) -> BTreeSet<Key> {
    let report = scan_repository(
        repo.path(),
        &Policy::builtin_default(),
        &GitScanRequest::default(),
        &ScanOptions::default(),
        &ScanProgress::default(),
    )
    .unwrap();
    report
        .findings
        .into_iter()
        .map(|f| {
            (
                f.rule_id,
                f.commit.unwrap().id,
                f.path,
                f.line.map(|l| l as i32),
            )
        })
        .collect()
}

async fn stored_findings(pool: &sqlx::PgPool, repository: catalog::RepoId) -> BTreeSet<Key> {
    let rows: Vec<(String, String, String, Option<i32>)> =
        sqlx::query_as("select rule_id, commit, path, line from findings where repository_id = $1")
            .bind(repository)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

async fn wait_for_job(pool: &sqlx::PgPool, scan_key: &str) -> jobs::Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job = jobs::find_job(pool, scan_key).await.unwrap().unwrap();
        if job.state != "queued" && job.state != "running" {
            return job;
        }
        if tokio::time::Instant::now() >= deadline {
            let tasks: Vec<(String, i32, Option<String>, Option<String>)> = sqlx::query_as(
                "select state, attempts, last_error, leased_by from scan_tasks where job_id = $1 and state <> 'done'",
            )
            .bind(job.id)
            .fetch_all(pool)
            .await
            .unwrap();
            panic!("job {scan_key} did not finish: {job:?}; unfinished tasks: {tasks:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A coordinator and two workers sharing one mirror directory, on loopback,
/// with a Redis prefix of their own.
struct Cluster {
    prefix: String,
    coordinator_url: String,
    token: String,
    queue: JobQueue,
    shutdown: CancellationToken,
    coordinator: tokio::task::JoinHandle<Result<(), leakscan_coordinator::CoordinatorError>>,
    workers: Vec<tokio::task::JoinHandle<Result<(), leakscan_worker::WorkerError>>>,
    mirrors: tempfile::TempDir,
}

impl Cluster {
    async fn start(pool: &sqlx::PgPool) -> Cluster {
        Cluster::start_with(pool, None, 2).await
    }

    /// With `tls`, the coordinator and the workers speak (mutual) TLS.
    async fn start_with_tls(
        pool: &sqlx::PgPool,
        tls: Option<(CoordinatorTls, WorkerTls)>,
    ) -> Cluster {
        Cluster::start_with(pool, tls, 2).await
    }

    /// A coordinator and `workers` workers.
    async fn start_with(
        pool: &sqlx::PgPool,
        tls: Option<(CoordinatorTls, WorkerTls)>,
        workers: usize,
    ) -> Cluster {
        let prefix = format!("{}:", unique_name("leakscan-test"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let coordinator_url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let secrets = Arc::new(SecretBox::load(pool, MasterKey::generate()).await.unwrap());
        let (coordinator_tls, tls) = tls.unzip();
        let config = CoordinatorConfig {
            tls: coordinator_tls,
            ..CoordinatorConfig::default()
        };
        let token = config.worker_token.clone();
        let coordinator = tokio::spawn(leakscan_coordinator::run(
            config,
            pool.clone(),
            JobQueue::connect(&redis_url(), &prefix).await.unwrap(),
            secrets,
            listener,
            Arc::new(CoordinatorState::default()),
            shutdown.clone(),
        ));
        let mirrors = tempfile::tempdir().unwrap();
        let workers: Vec<_> = (0..workers)
            .map(|index| {
                tokio::spawn(leakscan_worker::run(
                    WorkerConfig {
                        coordinator_url: coordinator_url.clone(),
                        name: format!("worker-{index}"),
                        slots: 2,
                        // Regression: both workers share one mirror directory, as
                        // in `leakscan up`; concurrent clones of one repository
                        // used to remove each other's half-made mirror.
                        mirror_dir: mirrors.path().to_path_buf(),
                        threads: 1,
                        lease_wait_ms: 500,
                        token: token.clone(),
                        git_credentials: None,
                        tls: tls.clone(),
                        drain_timeout: Duration::ZERO,
                    },
                    shutdown.clone(),
                ))
            })
            .collect();
        let queue = JobQueue::connect(&redis_url(), &prefix).await.unwrap();
        Cluster {
            prefix,
            coordinator_url,
            token,
            queue,
            shutdown,
            coordinator,
            workers,
            mirrors,
        }
    }

    /// A worker's configuration: one slot, mirrors under `mirrors`.
    fn worker_config(&self, name: &str, mirrors: &std::path::Path) -> WorkerConfig {
        WorkerConfig {
            coordinator_url: self.coordinator_url.clone(),
            name: name.into(),
            slots: 1,
            mirror_dir: mirrors.to_path_buf(),
            threads: 1,
            lease_wait_ms: 500,
            token: self.token.clone(),
            git_credentials: None,
            tls: None,
            drain_timeout: Duration::ZERO,
        }
    }

    /// A total rescan, run to its end.
    async fn total_rescan(&self, pool: &sqlx::PgPool) -> jobs::Job {
        let job = jobs::create_job(pool, &JobScope::Total, "admin", &[])
            .await
            .unwrap();
        self.queue.enqueue(job.id).await.unwrap();
        wait_for_job(pool, &job.scan_key).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for worker in self.workers {
            worker.await.unwrap().unwrap();
        }
        self.coordinator.await.unwrap().unwrap();
        let _: () = redis::cmd("DEL")
            .arg(format!("{}jobs", self.prefix))
            .query_async(
                &mut redis::Client::open(redis_url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
    }
}

/// Registers `repo` as PROJ/`slug` with the branches it has now.
async fn register(pool: &sqlx::PgPool, slug: &str, repo: &GitRepo) -> catalog::RepoId {
    catalog::upsert_project(pool, "PROJ", "Project")
        .await
        .unwrap();
    let registered = catalog::upsert_repository(pool, "PROJ", slug, repo.path().to_str().unwrap())
        .await
        .unwrap();
    let refs = repo.git(&[
        "for-each-ref",
        "refs/heads",
        "--format=%(refname:short) %(objectname)",
    ]);
    let branches: Vec<(String, String)> = refs
        .lines()
        .map(|line| {
            let (name, head) = line.split_once(' ').unwrap();
            (name.to_string(), head.to_string())
        })
        .collect();
    catalog::replace_branches(pool, registered.id, &branches)
        .await
        .unwrap();
    registered.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_total_rescan_stores_what_leakscan_scan_reports_and_a_rescan_reads_nothing() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let repos: Vec<GitRepo> = (0..4).map(repository).collect();
    let mut ids = Vec::new();
    for (index, repo) in repos.iter().enumerate() {
        ids.push(register(pool, &format!("repo{index}"), repo).await);
    }
    let cluster = Cluster::start(pool).await;

    let done = cluster.total_rescan(pool).await;
    assert_eq!(
        (done.state.as_str(), done.tasks_total, done.tasks_done),
        ("done", 12, 12)
    );
    assert!(done.blobs_read > 0);
    for (repo, id) in repos.iter().zip(&ids) {
        let expected = expected_findings(repo);
        assert_eq!(expected.len(), 3);
        assert_eq!(stored_findings(pool, *id).await, expected);
    }
    let plaintext = example("GITHUB_PAT_CLASSIC");
    let secret_start = plaintext.find("ghp_").unwrap();
    let dump: String = sqlx::query_scalar("select string_agg(f::text, '|') from findings f")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(
        !dump.contains(&plaintext[secret_start..secret_start + 20]),
        "a secret is stored in the clear"
    );

    // Nothing changed: the second total rescan reads no blob and adds nothing.
    let again = cluster.total_rescan(pool).await;
    assert_eq!(
        (again.state.as_str(), again.tasks_done, again.blobs_read),
        ("done", 12, 0)
    );
    let total: i64 = sqlx::query_scalar("select count(*) from findings")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(total, 12);

    cluster.stop().await;
    database.drop_database().await.unwrap();
}

/// Regression (issue 13): after a force-push the last scanned commit is gone
/// from a fresh mirror; the incremental scan "since" it failed three times
/// and the branch could never be scanned again. It now scans the branch
/// whole, and the findings of the commits the branch lost go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_force_pushed_branch_is_scanned_whole() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let repo = GitRepo::new();
    repo.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    let first = repo.commit_all("init");
    repo.write("deploy.sh", format!("{}\n", example("GITHUB_PAT_CLASSIC")));
    repo.commit_all("deploy script");
    let id = register(pool, "rewritten", &repo).await;
    let cluster = Cluster::start(pool).await;
    assert_eq!(cluster.total_rescan(pool).await.state, "done");
    assert_eq!(stored_findings(pool, id).await, expected_findings(&repo));

    // Rewrite main: the commit with the token is no longer on it, and a new
    // mirror (another worker's disk) never saw it.
    repo.git(&["reset", "--hard", &first]);
    repo.write("notify.yml", format!("{}\n", example("SLACK_BOT_TOKEN")));
    repo.commit_all("notifications instead");
    repo.git(&["reflog", "expire", "--expire=now", "--all"]);
    repo.git(&["gc", "--prune=now", "--quiet"]);
    for entry in std::fs::read_dir(cluster.mirrors.path()).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let rescan = cluster.total_rescan(pool).await;
    assert_eq!(
        (rescan.state.as_str(), rescan.tasks_done),
        ("done", 1),
        "{rescan:?}"
    );
    let expected = expected_findings(&repo);
    assert_eq!(expected.len(), 2);
    assert_eq!(stored_findings(pool, id).await, expected);

    cluster.stop().await;
    database.drop_database().await.unwrap();
}

/// Regression (issue 13): mirrors were keyed by project and slug only, so a
/// repository registered again from another source (a second `leakscan up`
/// over another root with the same data directory) fetched the first
/// source's mirror and scanned the wrong repository without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_registered_from_another_source_is_mirrored_anew() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let old_source = GitRepo::new();
    old_source.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    old_source.commit_all("init");
    let id = register(pool, "service", &old_source).await;
    let cluster = Cluster::start(pool).await;
    assert_eq!(cluster.total_rescan(pool).await.state, "done");
    assert_eq!(
        stored_findings(pool, id).await,
        expected_findings(&old_source)
    );

    let new_source = GitRepo::new();
    new_source.write("deploy.sh", format!("{}\n", example("GITHUB_PAT_CLASSIC")));
    new_source.commit_all("another repository");
    assert_eq!(register(pool, "service", &new_source).await, id);
    assert_eq!(cluster.total_rescan(pool).await.state, "done");
    let expected = expected_findings(&new_source);
    assert_eq!(expected.len(), 1);
    assert_eq!(stored_findings(pool, id).await, expected);

    cluster.stop().await;
    database.drop_database().await.unwrap();
}

/// A CA, a coordinator certificate for 127.0.0.1 and a worker client
/// certificate, made with openssl in `dir`; and a second CA's client
/// certificate that the coordinator must refuse.
fn test_pki(dir: &std::path::Path) -> (CoordinatorTls, WorkerTls, WorkerTls) {
    let openssl = |command: String| {
        let args: Vec<&str> = command.split(' ').collect();
        let output = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for ca in ["ca", "other-ca"] {
        openssl(format!(
            "req -x509 {ec} -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN=leakscan-test-{ca}"
        ));
    }
    let leaf = |name: &str, ca: &str, extensions: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        openssl(format!(
            "req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        openssl(format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"
        ));
    };
    leaf(
        "coordinator",
        "ca",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    );
    let client =
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";
    leaf("worker", "ca", client);
    leaf("stranger", "other-ca", client);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    (
        CoordinatorTls {
            cert_pem: read("coordinator.pem"),
            key_pem: read("coordinator.key"),
            client_ca_pem: Some(read("ca.pem")),
        },
        WorkerTls {
            ca_pem: read("ca.pem"),
            identity: Some((read("worker.pem"), read("worker.key"))),
        },
        WorkerTls {
            ca_pem: read("ca.pem"),
            identity: Some((read("stranger.pem"), read("stranger.key"))),
        },
    )
}

/// Issue 13: the worker protocol ran in plaintext only. With a certificate
/// the coordinator speaks TLS, and with a CA it requires the workers'
/// certificates (mutual TLS): a total rescan runs over it, while a worker
/// with a certificate of another CA, or with none, cannot even register.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_runs_over_mutual_tls_and_refuses_unknown_workers() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let repo = repository(0);
    let id = register(pool, "tls", &repo).await;
    let pki = tempfile::tempdir().unwrap();
    let (coordinator_tls, worker_tls, stranger_tls) = test_pki(pki.path());
    let cluster = Cluster::start_with_tls(pool, Some((coordinator_tls, worker_tls.clone()))).await;
    let done = cluster.total_rescan(pool).await;
    assert_eq!((done.state.as_str(), done.tasks_done), ("done", 3));
    assert_eq!(stored_findings(pool, id).await, expected_findings(&repo));

    for (what, tls) in [
        ("a certificate of another CA", Some(stranger_tls)),
        (
            "no client certificate",
            Some(WorkerTls {
                identity: None,
                ..worker_tls.clone()
            }),
        ),
        ("plaintext", None),
    ] {
        let url = cluster.coordinator_url.replace(
            "https://",
            if tls.is_some() { "https://" } else { "http://" },
        );
        // Refused: registration fails. The refusal reaches the worker as a
        // closed connection (it gives up) or, on a loaded machine, as an
        // unreachable coordinator (it keeps trying); either way it is never
        // registered, never served.
        let state = Arc::new(leakscan_worker::WorkerState::default());
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            leakscan_worker::run_with_state(
                WorkerConfig {
                    coordinator_url: url,
                    tls,
                    ..cluster.worker_config("intruder", &pki.path().join("mirrors"))
                },
                Arc::clone(&state),
                CancellationToken::new(),
            ),
        )
        .await;
        assert!(!state.is_registered(), "a worker with {what} registered");
        if let Ok(ended) = outcome {
            assert!(ended.is_err(), "a worker with {what} was served");
        }
    }
    cluster.stop().await;
    database.drop_database().await.unwrap();
}

/// Regression (issue 16): a Register call had only the channel's deadline
/// (the long poll's plus a minute), so a worker whose first coordinator
/// address accepted the connection and never answered (a replica stuck
/// handing over) waited over a minute before it tried the next address.
/// Register now gives up after a few seconds and moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_moves_past_a_coordinator_that_never_answers_register() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let repo = GitRepo::new();
    repo.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    repo.commit_all("init");
    let id = register(pool, "answered", &repo).await;
    let cluster = Cluster::start_with(pool, None, 0).await;
    let (silent, accepted) = leakscan_testkit::silent_server_counting();
    let mirrors = tempfile::tempdir().unwrap();
    let config = WorkerConfig {
        coordinator_url: format!("http://{silent},{}", cluster.coordinator_url),
        // The channel's deadline is the long poll's plus a minute: 80 s.
        lease_wait_ms: 20_000,
        ..cluster.worker_config("patient", mirrors.path())
    };
    let worker = tokio::spawn(leakscan_worker::run(config, cluster.shutdown.clone()));
    // Before the fix, Register on the silent address alone took 50 s (the
    // HTTP/2 keep-alive gave up first); now 10 s, and the scan a few more.
    let job = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    cluster.queue.enqueue(job.id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let job = jobs::find_job(pool, &job.scan_key).await.unwrap().unwrap();
        if job.state == "done" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job was not done within 40 s: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(stored_findings(pool, id).await, expected_findings(&repo));
    cluster.shutdown.cancel();
    worker.await.unwrap().unwrap();
    cluster.stop().await;
    database.drop_database().await.unwrap();
}

/// Regression (a CI failure): a coordinator starting to lead lets go of
/// the connections its standby service held, and a Register in flight on
/// one ended with CANCELLED ("connection closed"). The worker took that for
/// a refusal and exited with an error; the other worker of the test did all
/// the work until the cluster stopped. A call cut short is now tried again,
/// on the next coordinator. Here the first address closes every connection
/// it takes, which ends a call the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_registers_again_when_a_coordinator_closes_the_connection() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let repo = GitRepo::new();
    repo.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    repo.commit_all("init");
    let id = register(pool, "hung-up", &repo).await;
    let cluster = Cluster::start_with(pool, None, 0).await;
    let (closing, accepted) = leakscan_testkit::closing_server_counting();
    let mirrors = tempfile::tempdir().unwrap();
    let config = WorkerConfig {
        coordinator_url: format!("http://{closing},{}", cluster.coordinator_url),
        ..cluster.worker_config("persistent", mirrors.path())
    };
    let worker = tokio::spawn(leakscan_worker::run(config, cluster.shutdown.clone()));
    let done = cluster.total_rescan(pool).await;
    assert_eq!(done.state, "done");
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(!worker.is_finished(), "the worker gave up: {worker:?}");
    assert_eq!(stored_findings(pool, id).await, expected_findings(&repo));
    cluster.shutdown.cancel();
    worker.await.unwrap().unwrap();
    cluster.stop().await;
    database.drop_database().await.unwrap();
}

/// Regression: a worker registered once at start, so one that met no
/// leading coordinator (all starting, or a standby answering UNAVAILABLE)
/// exited with an error. It now registers again every second until a
/// coordinator leads, and then scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_waits_for_a_coordinator_to_lead() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let repo = GitRepo::new();
    repo.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    repo.commit_all("init");
    let id = register(pool, "waited", &repo).await;
    // Another holder of the leader lock keeps the coordinator standing by.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(leakscan_coordinator::LEADER_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let cluster = Cluster::start(pool).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for worker in &cluster.workers {
        assert!(
            !worker.is_finished(),
            "a worker gave up before any coordinator led"
        );
    }
    let _: bool = sqlx::query_scalar("select pg_advisory_unlock($1)")
        .bind(leakscan_coordinator::LEADER_LOCK)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    drop(holder);
    assert_eq!(cluster.total_rescan(pool).await.state, "done");
    assert_eq!(stored_findings(pool, id).await, expected_findings(&repo));
    cluster.stop().await;
    database.drop_database().await.unwrap();
}

/// Files and directories under `dir` whose names contain `needle`.
fn entries_named(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(needle) {
            found.push(path.clone());
        }
        if path.is_dir() {
            found.extend(entries_named(&path, needle));
        }
    }
    found
}

/// Issue 16: a worker told to stop (SIGTERM) leases nothing more, and a
/// task that does not finish within the drain timeout (here: its git host
/// hangs mid-clone) is stopped and handed back; the worker returns, leaves
/// no half-made clone, and another worker completes the task with every
/// finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_worker_hands_back_its_task_and_another_completes_it() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let repo = GitRepo::new();
    repo.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    repo.commit_all("init");
    repo.write("ci.sh", format!("{}\n", example("GITHUB_PAT_CLASSIC")));
    repo.commit_all("ci");
    let id = register(pool, "drained", &repo).await;
    let (address, accepted) = leakscan_testkit::silent_server_counting();
    let stuck_url = format!("http://{address}/stuck.git");
    sqlx::query("update repositories set clone_url = $2 where id = $1")
        .bind(id)
        .bind(&stuck_url)
        .execute(pool)
        .await
        .unwrap();
    let cluster = Cluster::start_with(pool, None, 0).await;
    let mirrors_a = tempfile::tempdir().unwrap();
    let state = Arc::new(leakscan_worker::WorkerState::default());
    let stop_a = CancellationToken::new();
    let mut config = cluster.worker_config("draining", mirrors_a.path());
    config.drain_timeout = Duration::from_millis(300);
    let worker_a = tokio::spawn(leakscan_worker::run_with_state(
        config,
        Arc::clone(&state),
        stop_a.clone(),
    ));
    let job = jobs::create_job(
        pool,
        &JobScope::Branch {
            project_key: "PROJ".into(),
            slug: "drained".into(),
            branch: "main".into(),
        },
        "admin",
        &[],
    )
    .await
    .unwrap();
    cluster.queue.enqueue(job.id).await.unwrap();
    // Mid-task: the clone has reached the hanging host.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clone never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(state.is_registered() && !state.is_draining());
    stop_a.cancel();
    tokio::time::timeout(Duration::from_secs(30), worker_a)
        .await
        .expect("the draining worker returned")
        .unwrap()
        .unwrap();
    assert!(state.is_draining());
    let (task_state, attempts, error): (String, i32, Option<String>) =
        sqlx::query_as("select state, attempts, last_error from scan_tasks where job_id = $1")
            .bind(job.id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((task_state.as_str(), attempts), ("queued", 1));
    assert_eq!(error.as_deref(), Some("worker stopped"));
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &state.registry()).unwrap();
    assert!(
        metrics.contains("leakscan_worker_tasks_total{outcome=\"handed_back\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("leakscan_worker_tasks_in_flight 0\n"),
        "{metrics}"
    );
    assert_eq!(
        entries_named(mirrors_a.path(), ".clone-"),
        Vec::<std::path::PathBuf>::new()
    );
    // The host answers again: another worker completes the task.
    sqlx::query("update repositories set clone_url = $2 where id = $1")
        .bind(id)
        .bind(repo.path().to_str().unwrap())
        .execute(pool)
        .await
        .unwrap();
    let mirrors_b = tempfile::tempdir().unwrap();
    let stop_b = CancellationToken::new();
    let worker_b = tokio::spawn(leakscan_worker::run(
        cluster.worker_config("taker", mirrors_b.path()),
        stop_b.clone(),
    ));
    let done = wait_for_job(pool, &job.scan_key).await;
    assert_eq!(done.state, "done", "{done:?}");
    let attempts: i32 = sqlx::query_scalar("select attempts from scan_tasks where job_id = $1")
        .bind(job.id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    let expected = expected_findings(&repo);
    assert_eq!(expected.len(), 2);
    assert_eq!(stored_findings(pool, id).await, expected);
    stop_b.cancel();
    worker_b.await.unwrap().unwrap();
    cluster.stop().await;
    database.drop_database().await.unwrap();
}
