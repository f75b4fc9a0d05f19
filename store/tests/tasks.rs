//! Task leasing against a real PostgreSQL: limits, heartbeats, completion,
//! bounded retries, lease expiry and cancellation.

use leakscan_store::{
    catalog,
    jobs::{self, JobScope},
    tasks::{self, AfterFailure, Parallelism, TaskProgress},
    testing::TestDatabase,
};
use sqlx::PgPool;

const LEASE_MS: u32 = 30_000;

/// One repository with `branches` branches and a running total job.
async fn running_job(pool: &PgPool, branches: usize) -> jobs::Job {
    catalog::upsert_project(pool, "P", "P").await.unwrap();
    let repository = catalog::upsert_repository(pool, "P", "r", "/repos/P/r")
        .await
        .unwrap();
    let names: Vec<(String, String)> = (0..branches)
        .map(|i| (format!("b{i}"), format!("head{i}")))
        .collect();
    catalog::replace_branches(pool, repository.id, &names)
        .await
        .unwrap();
    let job = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    jobs::expand_job(pool, job.id).await.unwrap();
    jobs::job(pool, job.id).await.unwrap()
}

fn limits(instance: u32, per_worker: u32) -> Parallelism {
    Parallelism {
        instance,
        per_worker,
    }
}

#[tokio::test]
async fn leases_respect_instance_and_worker_limits_in_order() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let job = running_job(pool, 4).await;
    let a = tasks::lease_next_task(pool, "worker-a", LEASE_MS, limits(2, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.branch.as_str(), a.attempts, a.scan_key.as_str()),
        ("b0", 1, job.scan_key.as_str())
    );
    assert_eq!(
        (
            a.project_key.as_str(),
            a.slug.as_str(),
            a.clone_url.as_str()
        ),
        ("P", "r", "/repos/P/r")
    );
    assert!(
        tasks::lease_next_task(pool, "worker-a", LEASE_MS, limits(2, 1))
            .await
            .unwrap()
            .is_none()
    );
    let b = tasks::lease_next_task(pool, "worker-b", LEASE_MS, limits(2, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.branch, "b1");
    assert!(
        tasks::lease_next_task(pool, "worker-c", LEASE_MS, limits(2, 1))
            .await
            .unwrap()
            .is_none()
    );
    assert_ne!(a.lease_id, b.lease_id);
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn completing_every_task_finishes_the_job_and_records_the_scanned_commit() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let job = running_job(pool, 2).await;
    let first = tasks::lease_next_task(pool, "w", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    let progress = TaskProgress {
        commits_total: 10,
        commits_done: 4,
        blobs_read: 7,
    };
    assert!(
        !tasks::heartbeat(pool, first.task_id, &first.lease_id, LEASE_MS, progress)
            .await
            .unwrap()
    );
    assert!(
        tasks::heartbeat(pool, first.task_id, "not-the-lease", LEASE_MS, progress)
            .await
            .is_err()
    );
    tasks::complete_task(pool, first.task_id, &first.lease_id, &done_at("head0", 7))
        .await
        .unwrap();
    // Completing twice (a retried RPC) is refused: the lease is gone.
    assert!(
        tasks::complete_task(pool, first.task_id, &first.lease_id, &done_at("head0", 7))
            .await
            .is_err()
    );
    let halfway = jobs::job(pool, job.id).await.unwrap();
    assert_eq!(
        (
            halfway.state.as_str(),
            halfway.tasks_done,
            halfway.blobs_read
        ),
        ("running", 1, 7)
    );

    let second = tasks::lease_next_task(pool, "w", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    tasks::complete_task(pool, second.task_id, &second.lease_id, &done_at("head1", 3))
        .await
        .unwrap();
    let done = jobs::job(pool, job.id).await.unwrap();
    assert_eq!(
        (done.state.as_str(), done.tasks_done, done.blobs_read),
        ("done", 2, 10)
    );
    let branches = catalog::branches(pool, first.repository_id).await.unwrap();
    let scanned: Vec<_> = branches
        .iter()
        .map(|b| b.last_scanned_commit.as_deref())
        .collect();
    assert_eq!(scanned, vec![Some("head0"), Some("head1")]);
    // The next job of the same branch starts from there.
    let again = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    jobs::expand_job(pool, again.id).await.unwrap();
    let leased = tasks::lease_next_task(pool, "w", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leased.last_scanned_commit.as_deref(), Some("head0"));
    database.drop_database().await.unwrap();
}

/// Regression (issue 13): tasks completing at the same moment each counted
/// the job's tasks before the others committed, so every one of them saw
/// the job unfinished and it stayed `running` for ever. Settling under the
/// job's row lock makes the last one see them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_completing_together_finish_their_job() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    for round in 0..10 {
        let job = running_job(pool, 12).await;
        let mut leased = Vec::new();
        while let Some(task) = tasks::lease_next_task(pool, "w", LEASE_MS, limits(100, 100))
            .await
            .unwrap()
        {
            leased.push(task);
        }
        assert_eq!(leased.len(), 12, "round {round}");
        let completions = leased.into_iter().enumerate().map(|(index, task)| {
            let pool = pool.clone();
            let completion = done_at(&format!("head-{round}-{index}"), 1);
            tokio::spawn(async move {
                tasks::complete_task(&pool, task.task_id, &task.lease_id, &completion).await
            })
        });
        for result in futures::future::join_all(completions).await {
            result.unwrap().unwrap();
        }
        let job = jobs::job(pool, job.id).await.unwrap();
        assert_eq!(
            (job.state.as_str(), job.tasks_done),
            ("done", 12),
            "round {round}"
        );
    }
    database.drop_database().await.unwrap();
}

/// Regression (issue 13): a total rescan and a branch rescan of the same
/// branch ran at once, and each full scan deleted the other's findings.
/// The second job's task of a branch waits until the first one's ends.
#[tokio::test]
async fn one_branch_is_scanned_by_one_task_at_a_time() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let first_job = running_job(pool, 1).await;
    let second_job = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    jobs::expand_job(pool, second_job.id).await.unwrap();
    let first = tasks::lease_next_task(pool, "w1", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.job_id, first_job.id);
    // The other job's task of the same branch is not handed out meanwhile.
    assert!(tasks::lease_next_task(pool, "w2", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .is_none());
    tasks::complete_task(pool, first.task_id, &first.lease_id, &done_at("head0", 1))
        .await
        .unwrap();
    let second = tasks::lease_next_task(pool, "w2", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.job_id, second.branch.as_str()),
        (second_job.id, "b0")
    );
    // It starts from what the first scan recorded.
    assert_eq!(second.last_scanned_commit.as_deref(), Some("head0"));
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn failures_and_expired_leases_retry_then_fail_with_the_last_error() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let job = running_job(pool, 1).await;
    let first = tasks::lease_next_task(pool, "w", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    let outcome = tasks::fail_task(
        pool,
        first.task_id,
        &first.lease_id,
        "clone failed",
        true,
        3,
    )
    .await
    .unwrap();
    assert_eq!(outcome, AfterFailure::Requeue);

    // The second attempt's worker dies: its lease runs out.
    let second = tasks::lease_next_task(pool, "w2", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.attempts, 2);
    assert!(
        tasks::expire_leases(pool, 3).await.unwrap().is_empty(),
        "an unexpired lease was taken back"
    );
    sqlx::query(
        "update scan_tasks set lease_expires_at = now() - interval '1 second' where id = $1",
    )
    .bind(second.task_id)
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(
        tasks::expire_leases(pool, 3).await.unwrap(),
        vec![(second.task_id, AfterFailure::Requeue)]
    );
    // The dead worker's late heartbeat is refused.
    assert!(tasks::heartbeat(
        pool,
        second.task_id,
        &second.lease_id,
        LEASE_MS,
        TaskProgress::default()
    )
    .await
    .is_err());

    let third = tasks::lease_next_task(pool, "w3", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.attempts, 3);
    let outcome = tasks::fail_task(pool, third.task_id, &third.lease_id, "out of disk", true, 3)
        .await
        .unwrap();
    assert_eq!(outcome, AfterFailure::Fail);
    let failed = jobs::job(pool, job.id).await.unwrap();
    assert_eq!(failed.state, "failed");
    let last_error: Option<String> =
        sqlx::query_scalar("select last_error from scan_tasks where id = $1")
            .bind(third.task_id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(last_error.as_deref(), Some("out of disk"));
    assert!(tasks::lease_next_task(pool, "w", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .is_none());
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn cancelling_running_jobs_tells_workers_and_stops_leasing() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let job = running_job(pool, 3).await;
    let leased = tasks::lease_next_task(pool, "w", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    let queued_job = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();

    assert!(tasks::cancel_jobs(pool, "finished").await.is_err());
    assert_eq!(tasks::cancel_jobs(pool, "running").await.unwrap(), 1);
    assert!(tasks::heartbeat(
        pool,
        leased.task_id,
        &leased.lease_id,
        LEASE_MS,
        TaskProgress::default()
    )
    .await
    .unwrap());
    assert!(tasks::lease_next_task(pool, "w", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .is_none());
    let cancelled = jobs::job(pool, job.id).await.unwrap();
    assert_eq!(cancelled.state, "cancelled");
    // The queued job was left alone, until the scheduled ones are cancelled.
    assert_eq!(
        jobs::job(pool, queued_job.id).await.unwrap().state,
        "queued"
    );
    assert_eq!(tasks::cancel_jobs(pool, "queued").await.unwrap(), 1);
    assert_eq!(
        jobs::job(pool, queued_job.id).await.unwrap().state,
        "cancelled"
    );
    database.drop_database().await.unwrap();
}

fn done_at(head: &str, blobs_read: i64) -> tasks::Completion {
    tasks::Completion {
        head_commit: head.into(),
        blobs_read,
        ..tasks::Completion::default()
    }
}

/// Issue 13: SendFindings checked the lease in one query and wrote in
/// another transaction, so a worker whose lease expired between the two
/// still wrote. The check (a shared lock on the task's row) and the write
/// are one transaction now; this pins what it lets through: only the
/// current lease holder's findings. (The race itself is not reproducible
/// on demand.)
#[tokio::test]
async fn only_the_current_lease_holder_records_findings() {
    use leakscan_store::{
        findings::{self, NewFinding},
        secrets::{MasterKey, SecretBox},
    };
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    running_job(pool, 1).await;
    let secrets = SecretBox::load(pool, MasterKey::generate()).await.unwrap();
    let finding = |path: &str| NewFinding {
        rule_id: "GITHUB_PAT".into(),
        rule_name: "GitHub personal access token".into(),
        severity: "HIGH".into(),
        commit: "c0ffee".into(),
        path: path.into(),
        line: Some(1),
        author: "Dev".into(),
        author_email: "dev@example.com".into(),
        commit_date: None,
        secret: b"ghp_q8Zr3VtYw1XbN5cKd7Mf2Lp9Hs4Jg6Ta0Ue1".to_vec(),
        confidence: Some("HIGH".into()),
    };
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from findings")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let old = tasks::lease_next_task(pool, "w1", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    let recorded = findings::record_task_findings(
        pool,
        &secrets,
        old.task_id,
        &old.lease_id,
        &[finding("a.env")],
    )
    .await
    .unwrap();
    assert_eq!((recorded, count().await), (1, 1));
    // The lease runs out and another worker leases the task.
    sqlx::query(
        "update scan_tasks set lease_expires_at = now() - interval '1 second' where id = $1",
    )
    .bind(old.task_id)
    .execute(pool)
    .await
    .unwrap();
    tasks::expire_leases(pool, 3).await.unwrap();
    let new = tasks::lease_next_task(pool, "w2", LEASE_MS, limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.task_id, old.task_id);
    let late = findings::record_task_findings(
        pool,
        &secrets,
        old.task_id,
        &old.lease_id,
        &[finding("b.env")],
    )
    .await;
    assert!(late.is_err(), "the old lease still wrote");
    let wrong = findings::record_task_findings(
        pool,
        &secrets,
        new.task_id,
        "not-the-lease",
        &[finding("c.env")],
    )
    .await;
    assert!(wrong.is_err());
    assert_eq!(count().await, 1, "nothing was written without the lease");
    findings::record_task_findings(
        pool,
        &secrets,
        new.task_id,
        &new.lease_id,
        &[finding("d.env")],
    )
    .await
    .unwrap();
    assert_eq!(count().await, 2);
}
