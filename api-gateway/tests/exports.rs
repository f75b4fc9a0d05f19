//! Findings exports as CSV, in memory against a fresh PostgreSQL database:
//! columns and quoting, filters, date edges, reviewed findings, formula
//! cells, permissions and bad input.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::{Fixture, ADMIN};
use leakscan_store::{catalog::RepoId, findings, secrets::SecretBox};
use serde_json::json;

const ADMIN_USER: Option<&str> = Some(ADMIN.0);

struct Planted {
    rule: &'static str,
    path: &'static str,
    secret: &'static str,
    commit_date: DateTime<Utc>,
}

async fn plant(fixture: &Fixture, project: &str, slug: &str, branch: &str, found: &[Planted]) {
    let pool = &fixture.database.pool;
    let repository: RepoId = leakscan_store::catalog::find_repository(pool, project, slug)
        .await
        .unwrap()
        .unwrap()
        .id;
    let secrets = SecretBox::load(pool, fixture.master_key.clone())
        .await
        .unwrap();
    let batch: Vec<findings::NewFinding> = found
        .iter()
        .enumerate()
        .map(|(index, planted)| findings::NewFinding {
            rule_id: planted.rule.into(),
            rule_name: format!("{} name", planted.rule),
            severity: "HIGH".into(),
            commit: format!("{:040x}", index + 1),
            path: planted.path.into(),
            line: Some(index as i32 + 1),
            author: "Dev, \"the\" author".into(),
            author_email: "dev@example.com".into(),
            commit_date: Some(planted.commit_date),
            secret: planted.secret.as_bytes().to_vec(),
            confidence: Some("HIGH".into()),
        })
        .collect();
    findings::record_findings(pool, &secrets, repository, branch, 1, &batch)
        .await
        .unwrap();
    // Scanned when committed: the date filters (scan dates) read the same.
    sqlx::query("update findings set scan_date = commit_date where repository_id = $1")
        .bind(repository)
        .execute(pool)
        .await
        .unwrap();
}

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, 0, 0, 0).unwrap()
}

/// (status, rows parsed back, header first) of an export.
async fn export(fixture: &Fixture, uri: &str, user: Option<&str>) -> (u16, Vec<Vec<String>>) {
    let (status, content_type, body) = fixture
        .call_raw("GET", uri, user, "text/plain", Vec::new())
        .await;
    if status != 200 {
        return (status.as_u16(), Vec::new());
    }
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(body.as_slice());
    let rows = reader
        .records()
        .map(|record| record.unwrap().iter().map(String::from).collect())
        .collect();
    (200, rows)
}

const AWS: &str = "AKIAQ3EGRDXW2JUNPTKZ";
const GITHUB: &str = "ghp_q8Zr3VtYw1XbN5cKd7Mf2Lp9Hs4Jg6Ta0Ue1";
const SLACK: &str = "xoxb-2048203948-9384756102-Zq8rT3vY1wXb5NcK7dMf2Lp9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_exports_filter_quote_and_neutralise() {
    let fixture = Fixture::new().await;
    plant(
        &fixture,
        "PROJ",
        "api",
        "main",
        &[
            Planted {
                rule: "AWS_ACCESS_KEY_ID",
                path: "config/a,\"b\".env",
                secret: AWS,
                commit_date: day(1),
            },
            Planted {
                rule: "GITHUB_PAT_CLASSIC",
                path: "=cmd|' /C calc'!A0",
                secret: GITHUB,
                commit_date: day(10),
            },
            Planted {
                rule: "SLACK_BOT_TOKEN",
                path: "notes.txt",
                secret: SLACK,
                commit_date: day(20),
            },
        ],
    )
    .await;
    plant(
        &fixture,
        "PROJ",
        "api",
        "dev",
        &[Planted {
            rule: "AWS_ACCESS_KEY_ID",
            path: "config/a,\"b\".env",
            secret: AWS,
            commit_date: day(1),
        }],
    )
    .await;
    plant(
        &fixture,
        "PROJ",
        "web",
        "main",
        &[Planted {
            rule: "SLACK_BOT_TOKEN",
            path: "web.txt",
            secret: SLACK,
            commit_date: day(15),
        }],
    )
    .await;

    // One repository: header row, DESIGN §4 columns in order; without
    // `branch`, the default branch's findings.
    let (status, rows) = export(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api",
        ADMIN_USER,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        rows[0],
        vec![
            "rule",
            "ruleName",
            "severity",
            "project",
            "repository",
            "branch",
            "commit",
            "path",
            "line",
            "author",
            "authorEmail",
            "commitDate",
            "scanDate",
            "secret",
            "fingerprint",
            "reviewed",
            "confidence"
        ]
    );
    assert_eq!(rows.len(), 1 + 3);
    let main_rows: Vec<&Vec<String>> = rows[1..].iter().filter(|r| r[5] == "main").collect();
    assert_eq!(main_rows.len(), 3);
    // The engine's confidence, as the worker reported it (the added column).
    assert!(
        main_rows.iter().all(|row| row[16] == "HIGH"),
        "{main_rows:?}"
    );
    // RFC 4180 quoting round-trips commas and quotes.
    assert_eq!(main_rows[0][7], "config/a,\"b\".env");
    assert_eq!(main_rows[0][9], "Dev, \"the\" author");
    assert_eq!(main_rows[0][11], "2026-03-01T00:00:00+00:00");
    // A formula cell is neutralised.
    assert_eq!(main_rows[1][7], "'=cmd|' /C calc'!A0");
    // Secrets only redacted.
    assert_eq!(main_rows[0][13], "AKIA…");
    let (_, _, raw) = fixture
        .call_raw(
            "GET",
            "/rest/security/1.0/export-report/PROJ/repos/api?includeWhitelisted=true",
            ADMIN_USER,
            "text/plain",
            Vec::new(),
        )
        .await;
    let raw = String::from_utf8(raw).unwrap();
    for secret in [AWS, GITHUB, SLACK] {
        assert!(!raw.contains(secret), "an export shows a secret");
    }

    // Filters: branch, ruleType (id or name).
    let (_, rows) = export(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api?branch=dev",
        ADMIN_USER,
    )
    .await;
    assert_eq!(rows.len(), 2);
    let (_, rows) = export(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api?branch=main&ruleType=SLACK_BOT_TOKEN",
        ADMIN_USER,
    )
    .await;
    assert_eq!((rows.len(), rows[1][7].as_str()), (2, "notes.txt"));
    let (_, rows) = export(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api?ruleType=GITHUB_PAT_CLASSIC%20name",
        ADMIN_USER,
    )
    .await;
    assert_eq!(rows.len(), 2);
    let (_, rows) = export(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api?branch=nope",
        ADMIN_USER,
    )
    .await;
    assert_eq!(rows.len(), 1, "only the header");

    // Reviewed findings: left out unless includeWhitelisted.
    let slack_id: i64 = sqlx::query_scalar("select id from findings where path = 'notes.txt'")
        .fetch_one(&fixture.database.pool)
        .await
        .unwrap();
    fixture
        .expect(
            "POST",
            "/rest/security/latest/reviewed",
            ADMIN_USER,
            Some(json!({"findingId": slack_id})),
            201,
        )
        .await;
    let (_, rows) = export(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api?branch=main",
        ADMIN_USER,
    )
    .await;
    assert_eq!(rows.len(), 1 + 2);
    assert!(rows[1..].iter().all(|r| r[15] == "false"));
    let (_, rows) = export(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api?branch=main&includeWhitelisted=true",
        ADMIN_USER,
    )
    .await;
    assert_eq!(rows.len(), 1 + 3);
    assert_eq!(rows.iter().filter(|r| r[15] == "true").count(), 1);

    // Project exports with dates: startDate inclusive, endDate exclusive.
    let project = "/rest/security/latest/export-report/projects/PROJ";
    let paths = |rows: &[Vec<String>]| -> Vec<String> {
        rows[1..]
            .iter()
            .map(|r| format!("{}:{}", r[4], r[7]))
            .collect()
    };
    let (_, rows) = export(&fixture, &format!("{project}?branch=main"), ADMIN_USER).await;
    assert_eq!(
        paths(&rows),
        vec!["api:config/a,\"b\".env", "api:'=cmd|' /C calc'!A0"]
    );
    let (_, rows) = export(
        &fixture,
        &format!("{project}?startDate=2026-03-10&endDate=2026-03-20&includeWhitelisted=true"),
        ADMIN_USER,
    )
    .await;
    assert_eq!(paths(&rows), vec!["api:'=cmd|' /C calc'!A0", "web:web.txt"]);
    let (_, rows) = export(&fixture, &format!("{project}?startDate=2026-03-10T00:00:01Z&endDate=2026-03-20T00:00:01%2B00:00&includeWhitelisted=true"), ADMIN_USER).await;
    assert_eq!(paths(&rows), vec!["api:notes.txt", "web:web.txt"]);
    let (_, rows) = export(
        &fixture,
        &format!("{project}/repos/web?includeWhitelisted=true"),
        ADMIN_USER,
    )
    .await;
    assert_eq!(paths(&rows), vec!["web:web.txt"]);
    for bad in [
        "startDate=yesterday",
        "endDate=2026-13-01",
        "startDate=2026-03-20&endDate=2026-03-10",
    ] {
        let (status, _) = export(&fixture, &format!("{project}?{bad}"), ADMIN_USER).await;
        assert_eq!(status, 400, "{bad}");
    }

    // The whole instance as a zip of one CSV per repository.
    let zip_uri = "/rest/security/latest/export-report?confirmExpensiveOperation=true";
    let (status, content_type, body) = fixture
        .call_raw("GET", zip_uri, ADMIN_USER, "text/plain", Vec::new())
        .await;
    assert_eq!(
        (status.as_u16(), content_type.as_str()),
        (200, "application/zip")
    );
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).unwrap();
    let mut names: Vec<String> = archive
        .file_names()
        .map(|name| name.unwrap().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "OTHER/tool.csv",
            "PROJ/api.csv",
            "PROJ/web.csv",
            "~alice/notes.csv"
        ]
    );
    let mut api_csv = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("PROJ/api.csv").unwrap(), &mut api_csv)
        .unwrap();
    let api_rows: Vec<&str> = api_csv.lines().collect();
    assert_eq!(api_rows[0].split(',').count(), 17);
    assert_eq!(api_rows.len(), 1 + 3, "{api_csv}");
    assert!(api_csv.contains("'=cmd|"), "{api_csv}");
    let mut web_csv = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("PROJ/web.csv").unwrap(), &mut web_csv)
        .unwrap();
    assert_eq!(
        web_csv.lines().count(),
        1,
        "the reviewed secret is left out"
    );
    let (status, _, _) = fixture
        .call_raw(
            "GET",
            "/rest/security/latest/export-report",
            ADMIN_USER,
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 400);

    // Permissions: 401, hidden 404, and a repository reader sees only that repository.
    fixture.user("bob").await;
    assert_eq!(export(&fixture, project, None).await.0, 401);
    assert_eq!(
        export(
            &fixture,
            "/rest/security/1.0/export-report/PROJ/repos/api",
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(export(&fixture, project, Some("bob")).await.0, 404);
    assert_eq!(
        export(
            &fixture,
            "/rest/security/1.0/export-report/PROJ/repos/api",
            Some("bob")
        )
        .await
        .0,
        404
    );
    fixture
        .expect("PUT", "/rest/api/latest/projects/PROJ/repos/web/permissions/users?name=bob&permission=REPO_READ", ADMIN_USER, None, 204)
        .await;
    let (status, rows) = export(
        &fixture,
        &format!("{project}?includeWhitelisted=true"),
        Some("bob"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(paths(&rows), vec!["web:web.txt"]);
    assert_eq!(
        export(&fixture, &format!("{project}/repos/api"), Some("bob"))
            .await
            .0,
        404
    );
    fixture.finish().await;
}
