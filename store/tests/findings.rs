//! Findings against a real PostgreSQL: idempotent batches, branches, and
//! secrets that exist in the database only encrypted.

use leakscan_store::{
    catalog,
    findings::{self, NewFinding},
    secrets::{MasterKey, SecretBox},
    testing::TestDatabase,
};

const SECRET: &str = "ghp_Zq8mN3vL5xR7tY2wK9pB4cF6hJ1dS0aE3gUi";
const OTHER_SECRET: &str = "AKIAUJZDEGXDNCF32EPF";

fn finding(rule: &str, path: &str, line: Option<i32>, secret: &str) -> NewFinding {
    NewFinding {
        rule_id: rule.into(),
        rule_name: rule.into(),
        severity: "HIGH".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        path: path.into(),
        line,
        author: "Alice".into(),
        author_email: "alice@example.com".into(),
        commit_date: None,
        secret: secret.as_bytes().to_vec(),
        confidence: Some("HIGH".into()),
    }
}

#[tokio::test]
async fn batches_are_idempotent_and_secrets_are_only_stored_encrypted() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    catalog::upsert_project(pool, "P", "P").await.unwrap();
    let repository = catalog::upsert_repository(pool, "P", "r", "/r")
        .await
        .unwrap()
        .id;
    let master = MasterKey::generate();
    let secrets = SecretBox::load(pool, master.clone()).await.unwrap();
    let batch = vec![
        finding("GITHUB_PAT_CLASSIC", "ci/deploy.sh", Some(3), SECRET),
        finding("AWS_ACCESS_KEY_ID", "keys/aws.env", None, OTHER_SECRET),
    ];
    assert_eq!(
        findings::record_findings(pool, &secrets, repository, "main", 1, &batch)
            .await
            .unwrap(),
        2
    );
    // A retried batch (a worker that crashed after sending) adds nothing.
    assert_eq!(
        findings::record_findings(pool, &secrets, repository, "main", 1, &batch)
            .await
            .unwrap(),
        0
    );
    // A row stored before reviews existed (no secret hash) gets it when
    // found again, and is still not new.
    sqlx::query("update findings set secret_hash = null")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(
        findings::record_findings(pool, &secrets, repository, "main", 2, &batch)
            .await
            .unwrap(),
        0
    );
    let hashes: Vec<Option<String>> =
        sqlx::query_scalar("select secret_hash from findings order by id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        hashes,
        vec![
            Some(secrets.secret_hash(SECRET.as_bytes())),
            Some(secrets.secret_hash(OTHER_SECRET.as_bytes()))
        ]
    );
    // The same commit seen on another branch: same findings, one more branch.
    assert_eq!(
        findings::record_findings(pool, &secrets, repository, "dev", 1, &batch)
            .await
            .unwrap(),
        0
    );
    let on_dev = findings::branch_findings(pool, repository, "dev")
        .await
        .unwrap();
    assert_eq!(on_dev.len(), 2);
    let github = on_dev
        .iter()
        .find(|f| f.rule_id == "GITHUB_PAT_CLASSIC")
        .unwrap();
    assert_eq!((github.redacted.as_str(), github.line), ("ghp_…", Some(3)));
    assert_eq!(
        github.fingerprint,
        secrets.fingerprint("GITHUB_PAT_CLASSIC", SECRET.as_bytes())
    );

    // Nothing in any table holds a secret in the clear (as text or as hex).
    let tables: Vec<String> =
        sqlx::query_scalar("select tablename::text from pg_tables where schemaname = 'public'")
            .fetch_all(pool)
            .await
            .unwrap();
    for table in &tables {
        let dump: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select string_agg(t::text, '|') from {table} t"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        let dump = dump.unwrap_or_default();
        for secret in [SECRET, OTHER_SECRET] {
            assert!(
                !dump.contains(secret),
                "{table} holds a secret in the clear"
            );
            assert!(
                !dump.contains(&hex::encode(secret)),
                "{table} holds a secret as hex"
            );
        }
    }

    assert_eq!(
        findings::reveal_secret(pool, &secrets, github.id)
            .await
            .unwrap(),
        SECRET.as_bytes()
    );
    // Another process with the same master key: same data key, same fingerprints.
    let again = SecretBox::load(pool, master).await.unwrap();
    assert_eq!(
        again.fingerprint("GITHUB_PAT_CLASSIC", SECRET.as_bytes()),
        github.fingerprint
    );
    assert_eq!(
        findings::reveal_secret(pool, &again, github.id)
            .await
            .unwrap(),
        SECRET.as_bytes()
    );
    // A wrong master key is refused before anything is written under it.
    let wrong = SecretBox::load(pool, MasterKey::generate())
        .await
        .err()
        .expect("wrong master key refused");
    assert!(wrong.to_string().contains("cannot decrypt"), "{wrong}");
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scan_leaves_a_branch_exactly_its_findings() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    catalog::upsert_project(pool, "P", "P").await.unwrap();
    let repository = catalog::upsert_repository(pool, "P", "r", "/r")
        .await
        .unwrap()
        .id;
    let secrets = SecretBox::load(pool, MasterKey::generate()).await.unwrap();
    let batch = vec![
        finding("GITHUB_PAT_CLASSIC", "ci/deploy.sh", Some(3), SECRET),
        finding("AWS_ACCESS_KEY_ID", "keys/aws.env", None, OTHER_SECRET),
    ];
    for branch in ["main", "dev"] {
        findings::record_findings(pool, &secrets, repository, branch, 1, &batch)
            .await
            .unwrap();
    }
    // Task 2 rescans main in full under a policy that drops the AWS rule.
    findings::record_findings(pool, &secrets, repository, "main", 2, &batch[..1])
        .await
        .unwrap();
    let mut transaction = pool.begin().await.unwrap();
    let removed = findings::keep_only_task_findings(&mut transaction, repository, "main", 2)
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    assert_eq!(removed, 1);
    let rules = |list: Vec<findings::StoredFinding>| -> Vec<String> {
        list.into_iter().map(|f| f.rule_id).collect()
    };
    assert_eq!(
        rules(
            findings::branch_findings(pool, repository, "main")
                .await
                .unwrap()
        ),
        vec!["GITHUB_PAT_CLASSIC"]
    );
    // dev still has both: the AWS finding stays while a branch holds it.
    assert_eq!(
        findings::branch_findings(pool, repository, "dev")
            .await
            .unwrap()
            .len(),
        2
    );
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from findings")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 2);
    // Once dev is rescanned the same way, the AWS finding is on no branch: gone.
    findings::record_findings(pool, &secrets, repository, "dev", 3, &batch[..1])
        .await
        .unwrap();
    let mut transaction = pool.begin().await.unwrap();
    findings::keep_only_task_findings(&mut transaction, repository, "dev", 3)
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    assert_eq!(count().await, 1);
    database.drop_database().await.unwrap();
}
