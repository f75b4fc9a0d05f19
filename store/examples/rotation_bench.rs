//! Key-rotation benchmark: N findings (default 200,000) recorded with real
//! encryption into a fresh database, then one rotation re-encrypts them all.
//! Prints the time to write them and the rotation's time and rate.
//!
//!     cargo run --release -p leakscan-store --example rotation_bench -- 200000
//!
//! Needs `LEAKSCAN_TEST_DATABASE_URL` (see `deploy/local/services.sh`).

use std::time::Instant;

use leakscan_store::{
    catalog,
    findings::{self, NewFinding},
    keys,
    secrets::{MasterKey, SecretBox},
    testing::TestDatabase,
};

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("the number of findings"))
        .unwrap_or(200_000);
    let database = TestDatabase::create().await.expect("a test database");
    let pool = database.pool.clone();
    catalog::upsert_project(&pool, "BENCH", "BENCH")
        .await
        .unwrap();
    let repository = catalog::upsert_repository(&pool, "BENCH", "big", "/big")
        .await
        .unwrap()
        .id;
    let secrets = SecretBox::load(&pool, MasterKey::generate()).await.unwrap();
    let started = Instant::now();
    for from in (0..count).step_by(1000) {
        let batch: Vec<NewFinding> = (from..(from + 1000).min(count))
            .map(|n| NewFinding {
                rule_id: "AWS_ACCESS_KEY_ID".into(),
                rule_name: "AWS access key id".into(),
                severity: "CRITICAL".into(),
                commit: format!("{n:040x}"),
                path: format!("services/svc-{}/settings-{n}.env", n % 997),
                line: Some(1),
                author: "Dev".into(),
                author_email: "dev@example.com".into(),
                commit_date: None,
                secret: format!("AKIA{n:016}").into_bytes(),
                confidence: Some("HIGH".into()),
            })
            .collect();
        findings::record_findings(&pool, &secrets, repository, "main", 1, &batch)
            .await
            .unwrap();
    }
    println!(
        "wrote {count} findings in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let rotation = keys::rotate(&pool, &secrets, "bench", 1000, |_| {})
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "rotation re-encrypted {} findings in {seconds:.1} s ({:.0} per second)",
        rotation.findings,
        rotation.findings as f64 / seconds
    );
    database.drop_database().await.unwrap();
}
