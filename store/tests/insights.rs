//! leakscan's own Code Insights report, written when a branch scan
//! completes, against a real PostgreSQL.

use leakscan_store::{
    catalog,
    findings::{self, NewFinding},
    insights,
    page::PageRequest,
    reviews,
    secrets::{MasterKey, SecretBox},
    testing::TestDatabase,
};

const HEAD: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";

fn finding(n: usize, severity: &str) -> NewFinding {
    NewFinding {
        rule_id: format!("RULE_{severity}"),
        rule_name: format!("{severity} rule"),
        severity: severity.into(),
        commit: format!("{n:040x}"),
        path: format!("config/file{n}.env"),
        line: Some(n as i32 % 50 + 1),
        author: "Dev".into(),
        author_email: "dev@example.com".into(),
        commit_date: None,
        secret: format!("sk_test_{n:06}Qw8Er7Ty6Ui5Op4").into_bytes(),
        confidence: Some("HIGH".into()),
    }
}

async fn report(
    pool: &sqlx::PgPool,
    repository: catalog::RepoId,
    branch: &str,
) -> (insights::Report, Vec<insights::Annotation>, i64) {
    let mut transaction = pool.begin().await.unwrap();
    insights::write_scan_report(&mut transaction, repository, branch, HEAD, 4321)
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    let report = insights::get_report(pool, repository, HEAD, insights::SCAN_REPORT_KEY)
        .await
        .unwrap()
        .unwrap();
    let (page, total) = insights::list_annotations(pool, report.id, PageRequest::new(0, 1000))
        .await
        .unwrap();
    (report, page.values, total)
}

#[tokio::test]
async fn a_scan_report_annotates_the_most_severe_unreviewed_findings_up_to_1000() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    catalog::upsert_project(pool, "P", "P").await.unwrap();
    let repository = catalog::upsert_repository(pool, "P", "r", "/r")
        .await
        .unwrap()
        .id;
    let secrets = SecretBox::load(pool, MasterKey::generate()).await.unwrap();
    // 1,003 findings: three CRITICAL, the rest LOW; then one LOW reviewed.
    let mut batch: Vec<NewFinding> = (0..1000).map(|n| finding(n, "LOW")).collect();
    batch.extend((1000..1003).map(|n| finding(n, "CRITICAL")));
    batch.push(finding(2000, "LOW"));
    findings::record_findings(pool, &secrets, repository, "main", 1, &batch)
        .await
        .unwrap();
    let reviewed: i64 =
        sqlx::query_scalar("select id from findings where path = 'config/file2000.env'")
            .fetch_one(pool)
            .await
            .unwrap();
    reviews::create_review(
        pool,
        "admin",
        Some(repository),
        &reviews::ReviewTarget::Finding(reviewed),
        "test data",
    )
    .await
    .unwrap();

    let (stored, annotations, total) = report(pool, repository, "main").await;
    assert_eq!(stored.report_type.as_deref(), Some("SECURITY"));
    assert_eq!(stored.result.as_deref(), Some("FAILED"));
    assert_eq!(
        stored.data.0,
        serde_json::json!([
            {"title": "Findings", "type": "NUMBER", "value": 1003},
            {"title": "Duration", "type": "DURATION", "value": 4321},
            {"title": "Safe to merge", "type": "BOOLEAN", "value": false},
        ])
    );
    assert_eq!(total, 1000);
    assert!(annotations[..3]
        .iter()
        .all(|a| a.severity.as_deref() == Some("CRITICAL")));
    assert!(annotations
        .iter()
        .all(|a| a.annotation_type == "VULNERABILITY"));
    assert!(annotations
        .iter()
        .all(|a| a.path.as_deref() != Some("config/file2000.env")));
    let first = &annotations[0];
    assert!(
        first.summary.starts_with("CRITICAL rule: sk_t…"),
        "{}",
        first.summary
    );
    for annotation in &annotations {
        assert!(annotation.summary.chars().count() <= insights::MAX_SUMMARY_CHARS);
        assert!(
            !annotation.summary.contains("Qw8Er7"),
            "a secret in {}",
            annotation.summary
        );
        assert!(!annotation
            .details
            .as_deref()
            .unwrap_or("")
            .contains("Qw8Er7"));
    }

    // Written again (a rescan of the same head), it replaces itself; a
    // branch without findings passes.
    let (_, _, total) = report(pool, repository, "main").await;
    assert_eq!(total, 1000);
    let (clean, annotations, _) = report(pool, repository, "empty").await;
    assert_eq!(clean.result.as_deref(), Some("PASSED"));
    assert_eq!(clean.data.0[2]["value"], true);
    assert!(annotations.is_empty());
    database.drop_database().await.unwrap();
}
