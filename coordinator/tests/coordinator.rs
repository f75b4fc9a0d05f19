//! A real coordinator on loopback against a fresh database and Redis prefix,
//! driven by a real tonic client: reconciliation, the job stream, the task
//! lifecycle, lease expiry, leader failover and the loss of Redis's data.

use std::{sync::Arc, time::Duration};

use leakscan_coordinator::{run, CoordinatorConfig, CoordinatorState};
use leakscan_proto::auth::AttachToken;
use leakscan_proto::v1::{
    coordinator_client::CoordinatorClient, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest,
    LeaseTaskRequest, Progress, RegisterRequest, Task,
};
use leakscan_store::{
    catalog,
    jobs::{self, JobScope},
    queue::JobQueue,
    secrets::{MasterKey, SecretBox},
    testing::{redis_url, unique_name, TestDatabase},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// The worker credential of the coordinators these tests start.
const TOKEN: &str = "coordinator-tests-worker-token";

type Client = CoordinatorClient<InterceptedService<Channel, AttachToken>>;

struct Running {
    address: String,
    state: Arc<CoordinatorState>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start(pool: &PgPool, prefix: &str, config: CoordinatorConfig) -> Running {
    start_on(pool, &redis_url(), prefix, config).await
}

/// [`start`] against a Redis of the test's choosing.
async fn start_on(pool: &PgPool, redis: &str, prefix: &str, config: CoordinatorConfig) -> Running {
    let config = CoordinatorConfig {
        worker_token: TOKEN.into(),
        ..config
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let queue = JobQueue::connect(redis, prefix).await.unwrap();
    let state = Arc::new(CoordinatorState::default());
    let shutdown = CancellationToken::new();
    let secrets = Arc::new(
        SecretBox::load(pool, MasterKey::from_hex(&"42".repeat(32)).unwrap())
            .await
            .unwrap(),
    );
    let handle = tokio::spawn({
        let (pool, state, shutdown) = (pool.clone(), Arc::clone(&state), shutdown.clone());
        async move {
            run(config, pool, queue, secrets, listener, state, shutdown)
                .await
                .expect("coordinator runs");
        }
    });
    Running {
        address,
        state,
        shutdown,
        handle,
    }
}

/// Polls `condition` until it holds, for at most 20 s.
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn seed(pool: &PgPool) {
    catalog::upsert_project(pool, "P", "P").await.unwrap();
    let repository = catalog::upsert_repository(pool, "P", "r", "/repos/P/r")
        .await
        .unwrap();
    let branches = vec![
        ("b0".to_string(), "h0".to_string()),
        ("b1".to_string(), "h1".to_string()),
    ];
    catalog::replace_branches(pool, repository.id, &branches)
        .await
        .unwrap();
}

async fn client(address: &str) -> Client {
    client_with_token(address, TOKEN).await
}

async fn client_with_token(address: &str, token: &str) -> Client {
    let channel = Channel::from_shared(address.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    CoordinatorClient::with_interceptor(channel, AttachToken::new(token).unwrap())
}

async fn register(client: &mut Client, name: &str, slots: u32) -> String {
    client
        .register(RegisterRequest {
            worker_name: name.into(),
            slots,
            version: "test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

async fn lease(client: &mut Client, worker: &str, wait_ms: u32) -> Option<Task> {
    client
        .lease_task(LeaseTaskRequest {
            worker_id: worker.into(),
            wait_ms,
        })
        .await
        .unwrap()
        .into_inner()
        .task
}

async fn complete(client: &mut Client, task: &Task, head: &str) {
    client
        .complete_task(CompleteTaskRequest {
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            head_commit: head.into(),
            progress: Some(Progress {
                blobs_read: 5,
                ..Progress::default()
            }),
            ..CompleteTaskRequest::default()
        })
        .await
        .unwrap();
}

fn prefix() -> String {
    format!("{}:", unique_name("leakscan-test"))
}

/// Two coordinators with `config`: the first leading, the second standing by.
async fn leader_and_standby(
    pool: &PgPool,
    prefix: &str,
    config: CoordinatorConfig,
) -> (Running, Running) {
    let first = start(pool, prefix, config.clone()).await;
    let first_state = Arc::clone(&first.state);
    eventually("the first leader", async || first_state.is_leader()).await;
    let second = start(
        pool,
        prefix,
        CoordinatorConfig {
            consumer_name: "standby".into(),
            ..config
        },
    )
    .await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_from_postgres_and_the_stream_become_leased_tasks_and_finish() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    seed(pool).await;
    // Recorded, but its stream entry was lost: reconciliation runs it.
    let reconciled = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    let prefix = prefix();
    let coordinator = start(pool, &prefix, CoordinatorConfig::default()).await;
    let state = Arc::clone(&coordinator.state);
    eventually("leadership", async || state.is_leader()).await;
    let mut client = client(&coordinator.address).await;

    let refused = client
        .register(RegisterRequest {
            worker_name: "w".into(),
            slots: 0,
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // A worker id is required; an unknown one (registered with an earlier
    // leader) is served with the configured per-worker limit.
    let anonymous = client
        .lease_task(LeaseTaskRequest {
            worker_id: String::new(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::InvalidArgument);

    let worker = register(&mut client, "worker-1", 2).await;
    let first = lease(&mut client, &worker, 5000)
        .await
        .expect("a reconciled task");
    assert_eq!(first.scan_key, reconciled.scan_key);
    assert_eq!((first.branch.as_str(), first.attempt), ("b0", 1));
    assert_eq!(first.repository.as_ref().unwrap().clone_url, "/repos/P/r");
    let second = lease(&mut client, &worker, 5000)
        .await
        .expect("the second branch");
    assert_eq!(second.branch, "b1");
    // Two slots, both used: nothing more for this worker.
    assert!(lease(&mut client, &worker, 0).await.is_none());

    let beat = client
        .heartbeat(HeartbeatRequest {
            worker_id: worker.clone(),
            task_id: first.task_id.clone(),
            lease_id: first.lease_id.clone(),
            progress: Some(Progress::default()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!beat.cancel);
    complete(&mut client, &first, "h0").await;
    complete(&mut client, &second, "h1").await;
    let done = jobs::find_job(pool, &reconciled.scan_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state.as_str(), done.tasks_done, done.blobs_read),
        ("done", 2, 10)
    );
    let late = client
        .heartbeat(HeartbeatRequest {
            worker_id: worker.clone(),
            task_id: first.task_id.clone(),
            lease_id: first.lease_id.clone(),
            progress: None,
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);

    // A job that arrives through the stream.
    let streamed = jobs::create_job(
        pool,
        &JobScope::Branch {
            project_key: "P".into(),
            slug: "r".into(),
            branch: "b1".into(),
        },
        "admin",
        &[],
    )
    .await
    .unwrap();
    JobQueue::connect(&redis_url(), &prefix)
        .await
        .unwrap()
        .enqueue(streamed.id)
        .await
        .unwrap();
    let task = lease(&mut client, &worker, 10_000)
        .await
        .expect("a task of the streamed job");
    assert_eq!(
        (task.scan_key.as_str(), task.last_scanned_commit.as_str()),
        (streamed.scan_key.as_str(), "h1")
    );
    client
        .fail_task(FailTaskRequest {
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            error: "network hiccup".into(),
            retryable: true,
        })
        .await
        .unwrap();
    let retried = lease(&mut client, &worker, 5000)
        .await
        .expect("the retried task");
    assert_eq!(
        (retried.task_id.as_str(), retried.attempt),
        (task.task_id.as_str(), 2)
    );

    coordinator.shutdown.cancel();
    coordinator.handle.await.unwrap();
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_lease_expires_and_the_task_is_leased_again() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    seed(pool).await;
    let job = jobs::create_job(
        pool,
        &JobScope::Branch {
            project_key: "P".into(),
            slug: "r".into(),
            branch: "b0".into(),
        },
        "admin",
        &[],
    )
    .await
    .unwrap();
    let config = CoordinatorConfig {
        lease_ms: 300,
        expiry_interval: Duration::from_millis(100),
        ..CoordinatorConfig::default()
    };
    let coordinator = start(pool, &prefix(), config).await;
    let state = Arc::clone(&coordinator.state);
    eventually("leadership", async || state.is_leader()).await;
    let mut client = client(&coordinator.address).await;
    let dead = register(&mut client, "dead", 1).await;
    let first = lease(&mut client, &dead, 5000).await.expect("a task");
    assert_eq!(first.scan_key, job.scan_key);
    // The worker never heartbeats: another one gets the task back.
    let alive = register(&mut client, "alive", 1).await;
    let mut again = None;
    eventually("the expired task to be leased again", async || {
        again = lease(&mut client, &alive, 1000).await;
        again.is_some()
    })
    .await;
    let again = again.unwrap();
    assert_eq!(
        (again.task_id.as_str(), again.attempt),
        (first.task_id.as_str(), 2)
    );
    assert_ne!(again.lease_id, first.lease_id);
    coordinator.shutdown.cancel();
    coordinator.handle.await.unwrap();
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_stops() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let prefix = prefix();
    let (first, second) = leader_and_standby(pool, &prefix, CoordinatorConfig::default()).await;
    // The lock is exclusive: while the first leads, the second cannot.
    assert!(!second.state.is_leader());
    first.shutdown.cancel();
    first.handle.await.unwrap();
    let second_state = Arc::clone(&second.state);
    eventually("the standby to lead", async || second_state.is_leader()).await;
    second.shutdown.cancel();
    second.handle.await.unwrap();
    database.drop_database().await.unwrap();
}

/// Regression (issue 13): after Redis lost its data the coordinator answered
/// NOGROUP every second and never consumed again, and a job whose stream
/// entry was lost (or whose enqueue failed) waited for the next change of
/// leader. Now the stream and its group are made again on NOGROUP, and the
/// leader expands queued jobs periodically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_recovers_when_redis_loses_the_job_stream() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    seed(pool).await;
    let prefix = prefix();
    let running = start(
        pool,
        &prefix,
        CoordinatorConfig {
            reconcile_interval: Duration::from_millis(300),
            ..CoordinatorConfig::default()
        },
    )
    .await;
    let state = Arc::clone(&running.state);
    eventually("leadership", async || state.is_leader()).await;

    // Connected (and the group made) before the loss, as the gateway is.
    let queue = JobQueue::connect(&redis_url(), &prefix).await.unwrap();
    // Redis restarted empty: our stream (and so its group) is gone.
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stream = format!("{prefix}jobs");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    // A job enqueued now recreates the stream without the group.
    let streamed = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("job")
        .arg(streamed.id.0.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually("the streamed job expanded and acknowledged", async || {
        jobs::job(pool, streamed.id).await.unwrap().state != "queued"
            && queue.depth().await.ok() == Some(0)
    })
    .await;

    // A job whose enqueue never happened.
    let lost = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    eventually("the job without a stream entry expanded", async || {
        jobs::job(pool, lost.id).await.unwrap().state != "queued"
    })
    .await;

    running.shutdown.cancel();
    running.handle.await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    database.drop_database().await.unwrap();
}

/// Fault injection (issue 13) on a Redis of the test's own: FLUSHALL while
/// the coordinator leads, then the server killed and started again empty.
/// Both the coordinator's and a gateway's connections come back by
/// themselves, and every job PostgreSQL holds is expanded: those enqueued
/// after each fault through the stream, and the one whose entry the flush
/// took before anyone read it by the periodic reconciliation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_flushed_and_a_restarted_redis() {
    let mut redis = leakscan_testkit::PrivateRedis::start();
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    seed(pool).await;
    let prefix = prefix();
    let running = start_on(
        pool,
        &redis.url(),
        &prefix,
        CoordinatorConfig {
            reconcile_interval: Duration::from_millis(500),
            ..CoordinatorConfig::default()
        },
    )
    .await;
    let state = Arc::clone(&running.state);
    eventually("leadership", async || state.is_leader()).await;
    // The gateway's side: it enqueues what it accepted.
    let gateway = JobQueue::connect(&redis.url(), &prefix).await.unwrap();
    let expanded = async |job: jobs::JobId| jobs::job(pool, job).await.unwrap().state != "queued";

    let before = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    gateway.enqueue(before.id).await.unwrap();
    eventually("the first job expanded", async || expanded(before.id).await).await;

    // FLUSHALL: the stream and its group are gone; a job accepted just
    // before lost its entry, one accepted after finds no group.
    let flushed = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    let after_flush = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    gateway.enqueue(after_flush.id).await.unwrap();
    eventually("the jobs around the flush expanded", async || {
        expanded(flushed.id).await && expanded(after_flush.id).await
    })
    .await;

    // The server dies and comes back empty on the same port: connections
    // drop and reconnect.
    redis.restart_empty();
    let after_restart = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    let mut enqueued = false;
    eventually("the gateway enqueues again", async || {
        enqueued = enqueued || gateway.enqueue(after_restart.id).await.is_ok();
        enqueued
    })
    .await;
    eventually("the job after the restart expanded", async || {
        expanded(after_restart.id).await
    })
    .await;
    eventually("the stream drained", async || {
        gateway.depth().await.ok() == Some(0)
    })
    .await;
    assert!(running.state.jobs_expanded() >= 4);

    running.shutdown.cancel();
    running.handle.await.unwrap();
    database.drop_database().await.unwrap();
}

/// Regression (issue 13): the worker protocol had no authentication, so
/// anyone reaching the port could lease tasks (and read their clone URLs),
/// complete a branch with no findings, mark blobs clean or read decrypted
/// secrets. Every call without the worker token is now refused before it
/// reaches a handler, and the refused calls change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_worker_token_are_refused() {
    use leakscan_proto::v1::{LookupBlobsRequest, SendFindingsRequest, StoreBlobResultsRequest};

    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    seed(pool).await;
    let job = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    let prefix = prefix();
    let coordinator = start(pool, &prefix, CoordinatorConfig::default()).await;
    let state = Arc::clone(&coordinator.state);
    eventually("leadership", async || state.is_leader()).await;
    let mut worker_client = client(&coordinator.address).await;
    let worker = register(&mut worker_client, "worker-1", 2).await;
    let task = lease(&mut worker_client, &worker, 5000)
        .await
        .expect("a task");

    // Every call of the protocol, by a client that is not a worker.
    macro_rules! assert_all_refused {
        ($intruder:expr) => {{
            let mut intruder = $intruder;
            let answers = [
                intruder
                    .register(RegisterRequest {
                        worker_name: "intruder".into(),
                        slots: 1,
                        version: String::new(),
                    })
                    .await
                    .map(|_| ()),
                intruder
                    .lease_task(LeaseTaskRequest {
                        worker_id: worker.clone(),
                        wait_ms: 0,
                    })
                    .await
                    .map(|_| ()),
                intruder
                    .heartbeat(HeartbeatRequest {
                        worker_id: worker.clone(),
                        task_id: task.task_id.clone(),
                        lease_id: task.lease_id.clone(),
                        progress: None,
                    })
                    .await
                    .map(|_| ()),
                intruder
                    .complete_task(CompleteTaskRequest {
                        task_id: task.task_id.clone(),
                        lease_id: task.lease_id.clone(),
                        head_commit: "h0".into(),
                        full_scan: true,
                        ..CompleteTaskRequest::default()
                    })
                    .await
                    .map(|_| ()),
                intruder
                    .fail_task(FailTaskRequest {
                        task_id: task.task_id.clone(),
                        lease_id: task.lease_id.clone(),
                        ..FailTaskRequest::default()
                    })
                    .await
                    .map(|_| ()),
                intruder
                    .send_findings(SendFindingsRequest {
                        task_id: task.task_id.clone(),
                        lease_id: task.lease_id.clone(),
                        ..SendFindingsRequest::default()
                    })
                    .await
                    .map(|_| ()),
                intruder
                    .lookup_blobs(LookupBlobsRequest {
                        task_id: task.task_id.clone(),
                        lease_id: task.lease_id.clone(),
                        ..LookupBlobsRequest::default()
                    })
                    .await
                    .map(|_| ()),
                intruder
                    .store_blob_results(StoreBlobResultsRequest {
                        task_id: task.task_id.clone(),
                        lease_id: task.lease_id.clone(),
                        ..StoreBlobResultsRequest::default()
                    })
                    .await
                    .map(|_| ()),
            ];
            for answer in answers {
                assert_eq!(answer.unwrap_err().code(), tonic::Code::Unauthenticated);
            }
        }};
    }
    assert_all_refused!(CoordinatorClient::connect(coordinator.address.clone())
        .await
        .unwrap());
    assert_all_refused!(
        client_with_token(&coordinator.address, "another-worker-token-of-16").await
    );
    // Nothing the intruders sent took effect: the task is still leased to
    // the worker, which completes it.
    let running = jobs::find_job(pool, &job.scan_key).await.unwrap().unwrap();
    assert_eq!((running.state.as_str(), running.tasks_done), ("running", 0));
    complete(&mut worker_client, &task, "h0").await;
    let after = jobs::find_job(pool, &job.scan_key).await.unwrap().unwrap();
    assert_eq!(after.tasks_done, 1);
    coordinator.shutdown.cancel();
    coordinator.handle.await.unwrap();
}

/// A coordinator does not start with a guessable worker token.
#[tokio::test]
async fn a_short_worker_token_is_refused_at_start() {
    let database = TestDatabase::create().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secrets = Arc::new(
        SecretBox::load(
            &database.pool,
            MasterKey::from_hex(&"42".repeat(32)).unwrap(),
        )
        .await
        .unwrap(),
    );
    let error = run(
        CoordinatorConfig {
            worker_token: "short".into(),
            ..CoordinatorConfig::default()
        },
        database.pool.clone(),
        JobQueue::connect(&redis_url(), &prefix()).await.unwrap(),
        secrets,
        listener,
        Arc::new(CoordinatorState::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("at least 16"), "{error}");
}

/// Regression (issue 13): the leader never re-checked its advisory lock, so
/// after its lock connection ended (a PostgreSQL restart, a killed backend)
/// a standby took the lock while the old leader went on leading: two
/// leaders. The old leader now notices, stands by, and leads again once
/// the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lock_stands_by() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let prefix = prefix();
    let quick = CoordinatorConfig {
        leader_check_interval: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    let (first, second) = leader_and_standby(pool, &prefix, quick).await;
    let first_state = Arc::clone(&first.state);
    let second_state = Arc::clone(&second.state);
    assert!(!second_state.is_leader());
    // End the backend that holds the leader's lock, as a database restart
    // would.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_locks
         where locktype = 'advisory' and granted
           and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(terminated, [true]);
    // One of them leads again: the standby, or the old leader after it
    // noticed the loss and stood by (its second term). Never both.
    eventually("one leader after the loss", async || {
        first_state.is_leader() != second_state.is_leader()
            && (second_state.is_leader() || first_state.leaderships() == 2)
    })
    .await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!(first_state.is_leader() && second_state.is_leader()));
    }
    // Whichever leads stops; the other takes over and serves on the
    // listener it has had all along.
    let (leader, standby) = if first_state.is_leader() {
        (first, second)
    } else {
        (second, first)
    };
    leader.shutdown.cancel();
    leader.handle.await.unwrap();
    let standby_state = Arc::clone(&standby.state);
    eventually("the other to lead", async || standby_state.is_leader()).await;
    let mut worker = client(&standby.address).await;
    register(&mut worker, "worker-after-failover", 1).await;
    standby.shutdown.cancel();
    standby.handle.await.unwrap();
    database.drop_database().await.unwrap();
}

/// Issue 15: with a leader and a standby running, each occurrence of the
/// schedule starts one total rescan; the standby, leading after the
/// leader stops, goes on without starting an occurrence twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_occurrence_with_two_coordinators() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let prefix = prefix();
    let quick = CoordinatorConfig {
        schedule_interval: Duration::from_millis(100),
        leader_check_interval: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    let (first, second) = leader_and_standby(pool, &prefix, quick).await;
    // Every second (croner's seconds field).
    leakscan_store::schedules::set(pool, "admin", "* * * * * *")
        .await
        .unwrap();
    let runs = async || -> i64 {
        sqlx::query_scalar("select count(*) from scheduled_runs")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    eventually("two occurrences", async || runs().await >= 2).await;
    first.shutdown.cancel();
    first.handle.await.unwrap();
    let second_state = Arc::clone(&second.state);
    eventually("the standby to lead", async || second_state.is_leader()).await;
    let before = runs().await;
    eventually("an occurrence under the new leader", async || {
        runs().await >= before + 2
    })
    .await;
    second.shutdown.cancel();
    second.handle.await.unwrap();

    let (occurrences, started, jobs): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from scheduled_runs),
                (select count(distinct job_id) from scheduled_runs where job_id is not null),
                (select count(*) from scan_jobs where requested_by = 'schedule' and scope = 'total')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(occurrences >= 4, "{occurrences}");
    // Each job belongs to one occurrence, and every scheduled job to one.
    assert_eq!(started, jobs);
    assert!(jobs >= 1);
    database.drop_database().await.unwrap();
}

/// A total job that ended, started with `email=` for `addresses`.
async fn ended_job(pool: &PgPool, addresses: &[&str]) -> jobs::Job {
    let emails: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    let job = jobs::create_job(pool, &JobScope::Total, "admin", &emails)
        .await
        .unwrap();
    sqlx::query(
        "update scan_jobs set state = 'done', started_at = now() - interval '42 seconds', finished_at = now()
         where id = $1",
    )
    .bind(job.id)
    .execute(pool)
    .await
    .unwrap();
    jobs::job(pool, job.id).await.unwrap()
}

fn mail_config(smtp_url: String) -> leakscan_coordinator::mail::MailConfig {
    leakscan_coordinator::mail::MailConfig {
        smtp_url,
        from: "leakscan <leakscan@example.com>".into(),
        public_url: Some("http://leakscan.example.com".into()),
        interval: Duration::from_millis(100),
    }
}

/// Issue 15: when a job started with `email=` ends, each address gets one
/// message (plain text and HTML), also when the leader is stopped while
/// the SMTP server has not yet accepted the first one and the standby
/// takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_summaries_are_mailed_once_per_address_across_failover() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let smtp = leakscan_testkit::SmtpServer::hold_first(Duration::from_secs(30));
    let job = ended_job(pool, &["sec@example.com", "ops@example.com"]).await;
    // The transaction that ended the job queued one row per address.
    let outbox = leakscan_store::email::job_outbox(pool, job.id)
        .await
        .unwrap();
    assert_eq!(outbox.len(), 2);
    assert!(outbox.iter().all(|(_, state, _, _)| state == "pending"));

    let config = CoordinatorConfig {
        mail: Some(mail_config(smtp.url())),
        leader_check_interval: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    let (first, second) = leader_and_standby(pool, &prefix(), config).await;
    eventually("the leader to be mid-send", async || smtp.is_holding()).await;
    first.shutdown.cancel();
    first.handle.await.unwrap();
    let second_state = Arc::clone(&second.state);
    eventually("the standby to lead", async || second_state.is_leader()).await;
    eventually("both summaries sent", async || {
        let outbox = leakscan_store::email::job_outbox(pool, job.id)
            .await
            .unwrap();
        outbox.iter().all(|(_, state, _, _)| state == "sent")
    })
    .await;
    // A further round of the mailer sends nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.shutdown.cancel();
    second.handle.await.unwrap();

    let accepted = smtp.accepted();
    let mut recipients: Vec<String> = accepted.iter().flat_map(|m| m.recipients.clone()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["ops@example.com", "sec@example.com"],
        "{accepted:?}"
    );
    let message = &accepted[0];
    assert_eq!(message.from, "leakscan@example.com");
    assert!(
        message
            .data
            .contains("Subject: leakscan: total rescan done - 0 new findings"),
        "{}",
        message.data
    );
    assert!(
        message.data.contains("multipart/alternative"),
        "{}",
        message.data
    );
    assert!(message.data.contains("text/html"), "{}", message.data);
    assert!(message.data.contains(&job.scan_key), "{}", message.data);
    assert!(message.data.contains("Duration: 42 s"), "{}", message.data);
    assert!(message
        .data
        .contains("http://leakscan.example.com/rest/security/latest/dashboard"));
    database.drop_database().await.unwrap();
}

/// A down SMTP server is retried with backoff and never blocks anything:
/// the attempt and its error are recorded, the row stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_smtp_server_is_retried_later() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let job = ended_job(pool, &["sec@example.com"]).await;
    let running = start(
        pool,
        &prefix(),
        CoordinatorConfig {
            mail: Some(mail_config(format!("smtp://{closed}"))),
            ..CoordinatorConfig::default()
        },
    )
    .await;
    eventually("a failed attempt", async || {
        let outbox = leakscan_store::email::job_outbox(pool, job.id)
            .await
            .unwrap();
        outbox[0].2 >= 1
    })
    .await;
    running.shutdown.cancel();
    running.handle.await.unwrap();
    let (state, attempts, error, retry_in): (String, i32, Option<String>, f64) = sqlx::query_as(
        "select state, attempts, last_error, extract(epoch from next_attempt_at - now())::float8
         from email_outbox where job_id = $1",
    )
    .bind(job.id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempts), ("pending", 1));
    assert!(error.is_some_and(|e| !e.is_empty()));
    assert!(retry_in > 20.0, "{retry_in}");
    database.drop_database().await.unwrap();
}

/// Regression (issue 13): a standby accepted connections and answered
/// nothing, so a worker given its address waited for each call's deadline
/// before moving on. It now answers every call UNAVAILABLE (what makes a
/// worker move on to the next address) until it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_unavailable_until_it_leads() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let quick = CoordinatorConfig {
        leader_check_interval: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    let (first, second) = leader_and_standby(pool, &prefix(), quick).await;
    let channel = Channel::from_shared(second.address.clone())
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    let mut standby =
        CoordinatorClient::with_interceptor(channel, AttachToken::new(TOKEN).unwrap());
    let request = RegisterRequest {
        worker_name: "w".into(),
        slots: 1,
        version: "test".into(),
    };
    // Bounded so that the old behaviour fails the test instead of hanging it.
    let answer = tokio::time::timeout(Duration::from_secs(60), standby.register(request.clone()))
        .await
        .expect("the standby answered");
    let status = answer.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("stands by"), "{status}");
    // Once the leader is gone, the same address serves.
    first.shutdown.cancel();
    first.handle.await.unwrap();
    let second_state = Arc::clone(&second.state);
    eventually("the standby to lead", async || second_state.is_leader()).await;
    let mut registered = None;
    for _ in 0..100 {
        match standby.register(request.clone()).await {
            Ok(reply) => {
                registered = Some(reply.into_inner().worker_id);
                break;
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => panic!("{status}"),
        }
    }
    assert!(registered.is_some_and(|id| !id.is_empty()));
    second.shutdown.cancel();
    second.handle.await.unwrap();
    database.drop_database().await.unwrap();
}

/// Regression (issue 16): a standby that takes over first shuts its
/// standby service down gracefully, and that waited for every connection
/// to close. One that never did (a TCP probe holding its socket, a client
/// stuck mid-handshake) kept the replica from ever leading. The standby
/// now lets open connections go after a short grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_to_a_standby_does_not_keep_it_from_leading() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (first, second) = leader_and_standby(pool, &prefix(), CoordinatorConfig::default()).await;
    let silent = tokio::net::TcpStream::connect(second.address.trim_start_matches("http://"))
        .await
        .unwrap();
    // The standby has accepted it (an answered call comes after it).
    let mut standby = client(&second.address).await;
    let status = standby
        .register(RegisterRequest {
            worker_name: "w".into(),
            slots: 1,
            version: "test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    drop(standby);
    first.shutdown.cancel();
    first.handle.await.unwrap();
    let second_state = Arc::clone(&second.state);
    eventually("the standby to lead", async || second_state.is_leader()).await;
    let mut leader = client(&second.address).await;
    register(&mut leader, "after", 1).await;
    drop(leader);
    // Nor does one keep the leader from stopping (SIGTERM) and handing
    // over. Bounded, so that a hang fails the test.
    let _also_silent = tokio::net::TcpStream::connect(second.address.trim_start_matches("http://"))
        .await
        .unwrap();
    second.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), second.handle)
        .await
        .expect("the leader stopped")
        .unwrap();
    drop(silent);
    database.drop_database().await.unwrap();
}

/// Issue 13: a repository registered before credentials were refused in
/// clone URLs keeps working without showing them: on leading, the
/// coordinator moves the credential out of the URL, and a lease hands it
/// to the worker beside the bare URL, as a git credentials line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_carries_the_credential_moved_out_of_an_old_clone_url() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    catalog::upsert_project(pool, "OLD", "Old").await.unwrap();
    let repository = catalog::upsert_repository(
        pool,
        "OLD",
        "legacy",
        "https://ci-bot:Zq8Lm2Vx7Tk4@git.example.com/team/legacy.git",
    )
    .await
    .unwrap();
    catalog::replace_branches(pool, repository.id, &[("main".into(), "h0".into())])
        .await
        .unwrap();
    jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    let coordinator = start(pool, &prefix(), CoordinatorConfig::default()).await;
    let state = Arc::clone(&coordinator.state);
    eventually("leadership", async || state.is_leader()).await;
    let mut client = client(&coordinator.address).await;
    let worker = register(&mut client, "worker-1", 1).await;
    let task = lease(&mut client, &worker, 5000).await.expect("a task");
    let leased = task.repository.unwrap();
    assert_eq!(leased.clone_url, "https://git.example.com/team/legacy.git");
    assert_eq!(
        leased.clone_credential,
        "https://ci-bot:Zq8Lm2Vx7Tk4@git.example.com"
    );
    let stored: String = sqlx::query_scalar("select clone_url from repositories")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(!stored.contains("Zq8Lm2Vx7Tk4"), "{stored}");
    coordinator.shutdown.cancel();
    coordinator.handle.await.unwrap();
    database.drop_database().await.unwrap();
}
