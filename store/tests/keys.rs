//! Key rotation against a real PostgreSQL, while a writer keeps recording
//! findings and blob results the way the coordinator does for a scan.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use leakscan_store::{
    blobs, catalog,
    findings::{self, NewFinding},
    keys,
    secrets::{MasterKey, SecretBox},
    testing::TestDatabase,
    StoreError,
};
use sqlx::PgPool;

/// A made-up token of a plausible shape, unique per `n`.
fn secret(n: usize) -> String {
    format!("tok_{n:08}q7Zk2Vx9Lm4Rt6Yp")
}

fn finding(n: usize) -> NewFinding {
    NewFinding {
        rule_id: "TEST_TOKEN".into(),
        rule_name: "TEST_TOKEN".into(),
        severity: "HIGH".into(),
        commit: format!("{n:040x}"),
        path: format!("src/file{n}.txt"),
        line: Some(1),
        author: "Alice".into(),
        author_email: "alice@example.com".into(),
        commit_date: None,
        secret: secret(n).into_bytes(),
        confidence: Some("HIGH".into()),
    }
}

/// Findings `from..to` in one batch, and as many blob results.
async fn write(
    pool: &PgPool,
    secrets: &SecretBox,
    repository: catalog::RepoId,
    from: usize,
    to: usize,
) {
    let batch: Vec<NewFinding> = (from..to).map(finding).collect();
    findings::record_findings(pool, secrets, repository, "main", 1, &batch)
        .await
        .unwrap();
    let results: Vec<(Vec<u8>, Option<Vec<u8>>)> = (from..to)
        .map(|n| {
            (
                (n as u64).to_be_bytes().to_vec(),
                Some(secret(n).into_bytes()),
            )
        })
        .collect();
    blobs::store(pool, secrets, "digest", &results)
        .await
        .unwrap();
}

/// Every finding's and blob result's secret, decrypted, with its key id.
async fn stored(pool: &PgPool, secrets: &SecretBox) -> (HashMap<String, String>, Vec<i32>) {
    let rows: Vec<(String, i32, Vec<u8>)> =
        sqlx::query_as("select path, secret_key_id, secret_ciphertext from findings")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut keys = Vec::new();
    let mut by_path = HashMap::new();
    for (path, key, sealed) in rows {
        let plain = secrets.decrypt(pool, key, &sealed).await.unwrap();
        by_path.insert(path, String::from_utf8(plain).unwrap());
        keys.push(key);
    }
    let blobs: Vec<(Vec<u8>, i32, Vec<u8>)> =
        sqlx::query_as("select blob_id, secret_key_id, sealed_matches from blob_results")
            .fetch_all(pool)
            .await
            .unwrap();
    for (blob, key, sealed) in blobs {
        let n = u64::from_be_bytes(blob.try_into().unwrap()) as usize;
        let plain = secrets.decrypt(pool, key, &sealed).await.unwrap();
        assert_eq!(String::from_utf8(plain).unwrap(), secret(n));
        keys.push(key);
    }
    keys.sort_unstable();
    keys.dedup();
    (by_path, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_while_findings_are_written_leaves_every_secret_under_the_new_key() {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool.clone();
    catalog::upsert_project(&pool, "P", "P").await.unwrap();
    let repository = catalog::upsert_repository(&pool, "P", "r", "/r")
        .await
        .unwrap()
        .id;
    let master = MasterKey::generate();
    let secrets = Arc::new(SecretBox::load(&pool, master.clone()).await.unwrap());
    // 2,000 findings and blob results before the rotation.
    for from in (0..2000).step_by(200) {
        write(&pool, &secrets, repository, from, from + 200).await;
    }
    let (_, before) = stored(&pool, &secrets).await;
    assert_eq!(before.len(), 1);

    // A writer adds batches of 20 until told to stop.
    let written = Arc::new(AtomicUsize::new(2000));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, secrets, written, stop) =
            (pool.clone(), secrets.clone(), written.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let from = written.load(Ordering::SeqCst);
                write(&pool, &secrets, repository, from, from + 20).await;
                written.store(from + 20, Ordering::SeqCst);
            }
        })
    };

    // The rotation, in batches of 100; after its first batch it waits for
    // the writer to commit two more batches, so writes surely interleave.
    let mut first = true;
    let rotation = keys::rotate(&pool, &secrets, "admin", 100, |_| {
        if std::mem::take(&mut first) {
            let seen = written.load(Ordering::SeqCst);
            tokio::task::block_in_place(|| {
                while written.load(Ordering::SeqCst) < seen + 40 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
    })
    .await
    .unwrap();
    assert_eq!(rotation.retired, before);
    assert!(rotation.findings >= 2000, "{rotation:?}");
    assert!(rotation.blob_results >= 2000, "{rotation:?}");
    // A few more batches after the rotation, then stop.
    let after_rotation = written.load(Ordering::SeqCst);
    while written.load(Ordering::SeqCst) < after_rotation + 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let total = written.load(Ordering::SeqCst);

    // Every secret decrypts to what was written, all under the new key,
    // read by a fresh SecretBox (another process) with the master key.
    let fresh = SecretBox::load(&pool, master).await.unwrap();
    let (by_path, keys_used) = stored(&pool, &fresh).await;
    assert_eq!(keys_used, vec![rotation.key_id]);
    assert_eq!(by_path.len(), total, "a finding was lost or duplicated");
    for n in 0..total {
        assert_eq!(by_path[&format!("src/file{n}.txt")], secret(n));
    }

    // The old key is inactive, unused, and deletable.
    let inactive = keys::inactive(&pool).await.unwrap();
    assert_eq!(
        inactive
            .iter()
            .map(|k| (k.id, k.ciphertexts))
            .collect::<Vec<_>>(),
        vec![(before[0], 0)]
    );
    let deletion = keys::delete_inactive(&pool, "admin").await.unwrap();
    assert_eq!(deletion.deleted_keys, vec![keys::key_name(before[0])]);
    assert!(deletion.kept_keys.is_empty());
    assert!(keys::inactive(&pool).await.unwrap().is_empty());
    let actions: Vec<String> = sqlx::query_scalar("select action from audit_log order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(actions, vec!["key.rotated", "keys.deleted"]);
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_stopped_halfway_keeps_its_old_key_until_the_next_one_finishes() {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool.clone();
    catalog::upsert_project(&pool, "P", "P").await.unwrap();
    let repository = catalog::upsert_repository(&pool, "P", "r", "/r")
        .await
        .unwrap()
        .id;
    let secrets = SecretBox::load(&pool, MasterKey::generate()).await.unwrap();
    write(&pool, &secrets, repository, 0, 500).await;
    let (_, first_key) = stored(&pool, &secrets).await;

    // Another rotation running elsewhere: this one is refused.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(keys::ROTATION_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    let refused = keys::rotate(&pool, &secrets, "admin", 100, |_| {}).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(keys::ROTATION_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);

    // A rotation dropped after its first batch (as a process that dies).
    let (batch_done, mut batch_seen) = tokio::sync::mpsc::unbounded_channel();
    let rotation = keys::rotate(&pool, &secrets, "admin", 100, move |_| {
        let _ = batch_done.send(());
    });
    tokio::select! {
        _ = rotation => panic!("the rotation finished before it was stopped"),
        _ = batch_seen.recv() => {}
    }
    let (by_path, used) = stored(&pool, &secrets).await;
    assert_eq!(by_path.len(), 500);
    assert_eq!(used.len(), 2, "half the secrets under each key: {used:?}");
    let inactive = keys::inactive(&pool).await.unwrap();
    assert_eq!(inactive.len(), 1);
    assert_eq!(inactive[0].id, first_key[0]);
    assert!(inactive[0].ciphertexts > 0);
    // Still used: kept.
    let deletion = keys::delete_inactive(&pool, "admin").await.unwrap();
    assert!(deletion.deleted_keys.is_empty());
    assert_eq!(deletion.kept_keys, vec![keys::key_name(first_key[0])]);

    // The next rotation finishes what the first left, and both old keys go.
    // (The stopped one's lock goes when its connection has closed.)
    let mut attempts = 0;
    let rotation = loop {
        match keys::rotate(&pool, &secrets, "admin", 100, |_| {}).await {
            Err(StoreError::Conflict(_)) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other.unwrap(),
        }
    };
    let (by_path, used) = stored(&pool, &secrets).await;
    assert_eq!(by_path.len(), 500);
    assert_eq!(used, vec![rotation.key_id]);
    let deletion = keys::delete_inactive(&pool, "admin").await.unwrap();
    assert_eq!(deletion.deleted_keys.len(), 2, "{deletion:?}");
    assert!(deletion.kept_keys.is_empty());
    database.drop_database().await.unwrap();
}

/// Issue 13: a clone URL registered before credentials were refused there
/// loses them to encrypted storage; the coordinator gets them back as a
/// git credentials line for that origin only; they follow a key rotation,
/// and their key is not deleted while they use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_move_out_of_old_clone_urls_and_follow_key_rotation() {
    use leakscan_store::clone_credentials;
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let secrets = SecretBox::load(pool, MasterKey::generate()).await.unwrap();
    catalog::upsert_project(pool, "OLD", "Old").await.unwrap();
    // Written as an old version did, before the check.
    let legacy = catalog::upsert_repository(
        pool,
        "OLD",
        "legacy",
        "https://ci-bot:Zq8Lm2Vx7Tk4@git.example.com/team/legacy.git",
    )
    .await
    .unwrap();
    let ssh =
        catalog::upsert_repository(pool, "OLD", "ssh", "ssh://git@git.example.com/team/ssh.git")
            .await
            .unwrap();
    let moved = clone_credentials::move_out_of_urls(pool, &secrets, "test")
        .await
        .unwrap();
    assert_eq!(
        moved,
        [clone_credentials::Moved {
            repository: "OLD/legacy".into(),
            origin: "https://git.example.com".into(),
        }]
    );
    let urls: Vec<(String, String)> =
        sqlx::query_as("select slug, clone_url from repositories order by slug")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        urls,
        [
            (
                "legacy".to_string(),
                "https://git.example.com/team/legacy.git".to_string()
            ),
            (
                "ssh".to_string(),
                "ssh://git@git.example.com/team/ssh.git".to_string()
            ),
        ]
    );
    // Nothing readable is stored, and the audit names no secret.
    let stored: Vec<u8> = sqlx::query_scalar("select secret_ciphertext from clone_credentials")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("Zq8Lm2Vx7Tk4"));
    let audit: Vec<String> = sqlx::query_scalar("select details::text from audit_log")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(
        audit.iter().all(|entry| !entry.contains("Zq8Lm2Vx7Tk4")),
        "{audit:?}"
    );
    assert!(clone_credentials::move_out_of_urls(pool, &secrets, "test")
        .await
        .unwrap()
        .is_empty());

    let line = |url: &'static str| {
        let secrets = &secrets;
        async move {
            clone_credentials::git_line(pool, secrets, legacy.id, url)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        line("https://git.example.com/team/legacy.git")
            .await
            .as_deref(),
        Some("https://ci-bot:Zq8Lm2Vx7Tk4@git.example.com")
    );
    // Moved to another host: the credential is not sent there.
    assert_eq!(
        line("https://elsewhere.example.com/team/legacy.git").await,
        None
    );
    assert_eq!(
        clone_credentials::git_line(
            pool,
            &secrets,
            ssh.id,
            "ssh://git@git.example.com/team/ssh.git"
        )
        .await
        .unwrap(),
        None
    );

    let rotation = keys::rotate(pool, &secrets, "test", 10, |_| {})
        .await
        .unwrap();
    assert_eq!(rotation.clone_credentials, 1);
    let key: i32 = sqlx::query_scalar("select secret_key_id from clone_credentials")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(key, rotation.key_id);
    assert_eq!(
        line("https://git.example.com/team/legacy.git")
            .await
            .as_deref(),
        Some("https://ci-bot:Zq8Lm2Vx7Tk4@git.example.com")
    );
    let deletion = keys::delete_inactive(pool, "test").await.unwrap();
    assert!(deletion.kept_keys.is_empty(), "{deletion:?}");
    database.drop_database().await.unwrap();
}
