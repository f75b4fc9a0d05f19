//! The store against a real PostgreSQL (a fresh database per test) and a
//! real Redis (a fresh key prefix per test).

use leakscan_store::{
    catalog::{self, RepoId},
    jobs::{self, JobScope},
    queue::JobQueue,
    testing::{redis_url, unique_name, TestDatabase},
    PageRequest, StoreError,
};

async fn seed(pool: &sqlx::PgPool) -> (RepoId, RepoId, RepoId) {
    catalog::upsert_project(pool, "PROJ", "Project")
        .await
        .unwrap();
    catalog::upsert_project(pool, "~alice", "Alice")
        .await
        .unwrap();
    let app = catalog::upsert_repository(pool, "PROJ", "app", "/repos/PROJ/app")
        .await
        .unwrap();
    let lib = catalog::upsert_repository(pool, "PROJ", "lib", "/repos/PROJ/lib.git")
        .await
        .unwrap();
    let dots = catalog::upsert_repository(pool, "~alice", "dotfiles", "/repos/~alice/dotfiles")
        .await
        .unwrap();
    let branches = |names: &[&str]| {
        names
            .iter()
            .map(|n| (n.to_string(), format!("{n}-head")))
            .collect::<Vec<_>>()
    };
    catalog::replace_branches(pool, app.id, &branches(&["main", "dev", "release"]))
        .await
        .unwrap();
    catalog::replace_branches(pool, lib.id, &branches(&["main"]))
        .await
        .unwrap();
    catalog::replace_branches(pool, dots.id, &branches(&["main", "laptop"]))
        .await
        .unwrap();
    (app.id, lib.id, dots.id)
}

#[tokio::test]
async fn catalog_upserts_pages_and_replaces_branches() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (app, _, _) = seed(pool).await;

    // Upserting again changes the clone URL, not the id.
    let again = catalog::upsert_repository(pool, "PROJ", "app", "https://git.example/app.git")
        .await
        .unwrap();
    assert_eq!(again.id, app);
    assert_eq!(again.clone_url, "https://git.example/app.git");
    assert_eq!(again.project_key, "PROJ");

    let first = catalog::list_repositories(pool, "PROJ", PageRequest::new(0, 1))
        .await
        .unwrap();
    assert_eq!(
        (first.size, first.is_last_page, first.next_page_start),
        (1, false, Some(1))
    );
    assert_eq!(first.values[0].slug, "app");
    let last = catalog::list_repositories(pool, "PROJ", PageRequest::new(1, 1))
        .await
        .unwrap();
    assert_eq!(
        (last.values[0].slug.as_str(), last.is_last_page),
        ("lib", true)
    );
    let exact = catalog::list_repositories(pool, "PROJ", PageRequest::new(0, 2))
        .await
        .unwrap();
    assert_eq!((exact.size, exact.is_last_page), (2, true));
    let empty = catalog::list_repositories(pool, "NOPE", PageRequest::default())
        .await
        .unwrap();
    assert_eq!((empty.size, empty.is_last_page), (0, true));
    let projects = catalog::list_projects(pool, PageRequest::default())
        .await
        .unwrap();
    let keys: Vec<_> = projects.values.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["PROJ", "~alice"]);

    catalog::replace_branches(
        pool,
        app,
        &[
            ("main".into(), "new-head".into()),
            ("hotfix".into(), "h".into()),
        ],
    )
    .await
    .unwrap();
    let branches = catalog::branches(pool, app).await.unwrap();
    let names: Vec<_> = branches
        .iter()
        .map(|b| (b.name.as_str(), b.head_commit.as_str()))
        .collect();
    assert_eq!(names, vec![("hotfix", "h"), ("main", "new-head")]);

    let missing = catalog::upsert_repository(pool, "NOPE", "x", "/x")
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
    for bad in ["../etc", "a/b", "-rf", "..", ""] {
        assert!(
            catalog::upsert_repository(pool, "PROJ", bad, "/x")
                .await
                .is_err(),
            "{bad:?} accepted"
        );
    }
    assert!(catalog::upsert_project(pool, "../x", "x").await.is_err());
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn jobs_expand_into_branch_tasks_once_skipping_exempt_repositories() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (_, lib, _) = seed(pool).await;
    sqlx::query("update repositories set exempt = true where id = $1")
        .bind(lib)
        .execute(pool)
        .await
        .unwrap();

    let total = jobs::create_job(pool, &JobScope::Total, "admin", &["sec@example.com".into()])
        .await
        .unwrap();
    assert_eq!(total.state, "queued");
    assert_eq!(total.scan_key.len(), 32);
    assert_eq!(jobs::queued_jobs(pool).await.unwrap(), vec![total.id]);
    // app: 3 branches, dotfiles: 2; lib is exempt.
    assert_eq!(jobs::expand_job(pool, total.id).await.unwrap(), 5);
    assert_eq!(jobs::expand_job(pool, total.id).await.unwrap(), 5);
    let running = jobs::find_job(pool, &total.scan_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (running.state.as_str(), running.tasks_total),
        ("running", 5)
    );
    assert!(jobs::queued_jobs(pool).await.unwrap().is_empty());
    let tasks: i64 = sqlx::query_scalar("select count(*) from scan_tasks")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(tasks, 5);

    // An exempt repository is still scanned when asked for by name.
    let repository = JobScope::Repository {
        project_key: "PROJ".into(),
        slug: "lib".into(),
    };
    let job = jobs::create_job(pool, &repository, "admin", &[])
        .await
        .unwrap();
    assert_eq!(jobs::expand_job(pool, job.id).await.unwrap(), 1);
    let branch = JobScope::Branch {
        project_key: "~alice".into(),
        slug: "dotfiles".into(),
        branch: "laptop".into(),
    };
    let job = jobs::create_job(pool, &branch, "alice", &[]).await.unwrap();
    assert_eq!(jobs::expand_job(pool, job.id).await.unwrap(), 1);
    let project = JobScope::Project {
        project_key: "PROJ".into(),
    };
    let job = jobs::create_job(pool, &project, "admin", &[])
        .await
        .unwrap();
    assert_eq!(jobs::expand_job(pool, job.id).await.unwrap(), 3);
    // Nothing to scan: done at once.
    let nothing = JobScope::Project {
        project_key: "EMPTY".into(),
    };
    let job = jobs::create_job(pool, &nothing, "admin", &[])
        .await
        .unwrap();
    assert_eq!(jobs::expand_job(pool, job.id).await.unwrap(), 0);
    assert_eq!(jobs::job(pool, job.id).await.unwrap().state, "done");
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_job_stream_delivers_acknowledges_and_hands_over_stale_entries() {
    let prefix = format!("{}:", unique_name("leakscan-test"));
    let queue = JobQueue::connect(&redis_url(), &prefix).await.unwrap();
    assert!(queue.stream_key().starts_with(&prefix));
    // A second coordinator connecting finds the group already there.
    let other = JobQueue::connect(&redis_url(), &prefix).await.unwrap();

    queue.enqueue(jobs::JobId(7)).await.unwrap();
    queue.enqueue(jobs::JobId(8)).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 2);

    let first = queue.read("coordinator-a", 1, 100).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].job, jobs::JobId(7));
    let second = other.read("coordinator-b", 10, 100).await.unwrap();
    assert_eq!(
        second.iter().map(|d| d.job).collect::<Vec<_>>(),
        vec![jobs::JobId(8)]
    );
    // Regression: a delivery whose reply was lost (the client timed out)
    // must not be stranded. A consumer gets its own unacknowledged entries
    // again before anything new.
    let again = queue.read("coordinator-a", 10, 50).await.unwrap();
    assert_eq!(again, first);

    queue.ack(&first[0].entry_id).await.unwrap();
    // Nothing new and nothing pending: the read returns empty after blocking briefly.
    assert!(queue
        .read("coordinator-a", 10, 50)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(queue.depth().await.unwrap(), 1);
    // coordinator-b "died" before acknowledging job 8: a claim with no idle
    // time required takes it over.
    let claimed = queue.claim_stale("coordinator-a", 0, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|d| d.job).collect::<Vec<_>>(),
        vec![jobs::JobId(8)]
    );
    queue.ack(&claimed[0].entry_id).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);

    // Regression (issue 13): acknowledged entries stayed in the stream for
    // ever; they are deleted as they are acknowledged.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let length: u64 = redis::cmd("XLEN")
        .arg(queue.stream_key())
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(length, 0);
    // Regression (issue 13): once Redis lost the stream (flushed), the depth
    // answered NOGROUP for ever; it makes the stream and group again.
    let _: () = redis::cmd("DEL")
        .arg(queue.stream_key())
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);
    let _: () = redis::cmd("DEL")
        .arg(queue.stream_key())
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// Two coordinators storing overlapping blob results at once, in opposite
/// orders (two workers scanning branches of one repository): both succeed
/// and every result is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blob_result_stores_do_not_deadlock() {
    use leakscan_store::{
        blobs,
        secrets::{MasterKey, SecretBox},
    };
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool.clone();
    let secrets = std::sync::Arc::new(SecretBox::load(&pool, MasterKey::generate()).await.unwrap());
    for round in 0..5u8 {
        let forward: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..3000u32)
            .map(|i| {
                let mut id = vec![round; 20];
                id[..4].copy_from_slice(&i.to_be_bytes());
                (id, (i % 7 == 0).then(|| b"match".to_vec()))
            })
            .collect();
        let mut backward = forward.clone();
        backward.reverse();
        let stores = [forward, backward].map(|results| {
            let (pool, secrets) = (pool.clone(), std::sync::Arc::clone(&secrets));
            tokio::spawn(async move { blobs::store(&pool, &secrets, "digest", &results).await })
        });
        for store in stores {
            store.await.unwrap().unwrap();
        }
    }
    let stored: i64 = sqlx::query_scalar("select count(*) from blob_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 5 * 3000);
    database.drop_database().await.unwrap();
}

/// Regression (issue 16): blocking stream reads shared the one connection
/// every other queue command used, and Redis answers a connection's
/// commands in order, so a coordinator's readiness ping (and its enqueues
/// and acknowledgements) waited behind each read's block. The ping must
/// answer while a read still waits for entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_stream_read_holds_up_no_other_command() {
    let prefix = format!("{}:", unique_name("leakscan-test"));
    let queue = JobQueue::connect(&redis_url(), &prefix).await.unwrap();
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.read("coordinator-a", 1, 3_000).await }
    });
    // Let the read reach Redis and block there (if it had not yet, the
    // ping would go first and the test would prove nothing, never fail).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    queue.ping().await.unwrap();
    queue.enqueue(jobs::JobId(1)).await.unwrap();
    assert!(
        !waiting.is_finished() || !waiting.await.unwrap().unwrap().is_empty(),
        "the ping waited for the blocking read to end"
    );
}
