//! Code Insights reports and annotations in both shapes (Bitbucket Cloud's
//! and Data Center's paths), and the secret-key endpoints, in memory
//! against a fresh PostgreSQL database.

mod common;

use common::{Fixture, ADMIN};
use serde_json::{json, Value};

const ADMIN_USER: Option<&str> = Some(ADMIN.0);
const COMMIT: &str = "4f1c2a9be07d3c58a6f2e91d0b7c4a3e5d6f8a01";

fn cloud(path: &str) -> String {
    format!("/2.0/repositories/PROJ/api/commit/{COMMIT}/reports{path}")
}

fn dc(path: &str) -> String {
    format!("/rest/insights/latest/projects/PROJ/repos/api/commits/{COMMIT}/reports{path}")
}

fn annotation(id: usize) -> Value {
    json!({
        "external_id": format!("ann-{id}"),
        "annotation_type": "VULNERABILITY",
        "path": format!("src/file{id}.rs"),
        "line": id,
        "summary": format!("finding {id}"),
        "severity": "HIGH",
        "result": "FAILED",
    })
}

fn annotations(range: std::ops::Range<usize>) -> Value {
    Value::Array(range.map(annotation).collect())
}

/// The `message` of a 400 answer.
async fn rejected(fixture: &Fixture, method: &str, uri: &str, body: Value) -> String {
    let answer = fixture
        .expect(method, uri, ADMIN_USER, Some(body), 400)
        .await;
    answer["errors"][0]["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_reports_and_annotations_round_trip_within_their_limits() {
    let fixture = Fixture::new().await;
    let report = json!({
        "title": "Secret scan",
        "details": "3 secrets",
        "report_type": "SECURITY",
        "result": "FAILED",
        "reporter": "other-tool",
        "link": "https://scanner.example.com/runs/7",
        "data": [
            {"title": "Findings", "type": "NUMBER", "value": 3},
            {"title": "Safe to merge", "type": "BOOLEAN", "value": false},
            {"title": "Duration", "type": "DURATION", "value": 5400},
            {"title": "Coverage", "type": "PERCENTAGE", "value": 87.5},
            {"title": "Run", "type": "LINK", "value": {"text": "run 7", "href": "https://scanner.example.com/runs/7"}},
        ],
    });
    let stored = fixture
        .expect(
            "PUT",
            &cloud("/scan-1"),
            ADMIN_USER,
            Some(report.clone()),
            200,
        )
        .await;
    assert_eq!(stored["external_id"], "scan-1");
    assert_eq!(stored["type"], "report");
    assert_eq!(stored["report_type"], "SECURITY");
    assert_eq!(stored["result"], "FAILED");
    assert_eq!(stored["data"], report["data"]);
    let uuid = stored["uuid"].as_str().unwrap().to_string();
    assert!(uuid.starts_with('{') && uuid.ends_with('}'), "{uuid}");
    // By key or by uuid (braces optional, as a path segment they are encoded).
    let by_uuid = fixture
        .expect(
            "GET",
            &cloud(&format!("/{}", uuid.trim_matches(|c| c == '{' || c == '}'))),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(by_uuid["external_id"], "scan-1");
    let by_braced = fixture
        .expect(
            "GET",
            &cloud(&format!(
                "/%7B{}%7D",
                uuid.trim_matches(|c| c == '{' || c == '}')
            )),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(by_braced["uuid"], stored["uuid"]);
    let list = fixture
        .expect("GET", &cloud(""), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (list["size"].clone(), list["page"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(list["values"][0]["external_id"], "scan-1");

    // Every enum and value is checked.
    for (field, value, expected) in [
        ("report_type", json!("AUDIT"), "report_type \"AUDIT\" is not one of SECURITY, COVERAGE, TEST, BUG"),
        ("result", json!("PASS"), "result \"PASS\" is not one of PASSED, FAILED, PENDING"),
        ("title", json!(""), "title is required"),
        ("link", json!("javascript:alert(1)"), "link must be an http or https URL"),
        ("data", json!([{"title": "x", "type": "CURRENCY", "value": 1}]), "data 0: type \"CURRENCY\" is not one of BOOLEAN, DATE, DURATION, LINK, NUMBER, PERCENTAGE, TEXT"),
        ("data", json!([{"title": "ok", "type": "BOOLEAN", "value": "yes"}]), "data 0: the value of \"ok\" does not fit its type BOOLEAN (true or false)"),
        ("data", json!([{"title": "p", "type": "PERCENTAGE", "value": 140}]), "data 0: the value of \"p\" does not fit its type PERCENTAGE (a number from 0 to 100)"),
    ] {
        let mut bad = report.clone();
        bad[field] = value;
        assert_eq!(rejected(&fixture, "PUT", &cloud("/scan-2"), bad).await, expected);
    }
    fixture
        .expect(
            "PUT",
            "/2.0/repositories/PROJ/api/commit/not-a-commit/reports/x",
            ADMIN_USER,
            Some(report.clone()),
            400,
        )
        .await;

    // Bulk posts: at most 100 per request; each annotation checked.
    let message = rejected(
        &fixture,
        "POST",
        &cloud("/scan-1/annotations"),
        annotations(0..101),
    )
    .await;
    assert_eq!(
        message,
        "at most 100 annotations per request; this one has 101"
    );
    for (field, value, expected) in [
        (
            "annotation_type",
            json!("SMELL"),
            "annotation 0: annotation_type \"SMELL\" is not one of VULNERABILITY, CODE_SMELL, BUG",
        ),
        (
            "severity",
            json!("URGENT"),
            "annotation 0: severity \"URGENT\" is not one of CRITICAL, HIGH, MEDIUM, LOW",
        ),
        (
            "result",
            json!("DONE"),
            "annotation 0: result \"DONE\" is not one of PASSED, FAILED, SKIPPED, IGNORED",
        ),
        (
            "summary",
            json!("x".repeat(451)),
            "annotation 0: summary is longer than 450 characters",
        ),
        (
            "line",
            json!(-1),
            "annotation 0: line must be a line number (0 or more)",
        ),
        (
            "external_id",
            Value::Null,
            "annotation 0: external_id is required",
        ),
    ] {
        let mut bad = annotation(0);
        bad[field] = value;
        let body = json!([bad]);
        assert_eq!(
            rejected(&fixture, "POST", &cloud("/scan-1/annotations"), body).await,
            expected
        );
    }
    let created = fixture
        .expect(
            "POST",
            &cloud("/scan-1/annotations"),
            ADMIN_USER,
            Some(annotations(0..100)),
            200,
        )
        .await;
    assert_eq!(created.as_array().unwrap().len(), 100);
    assert_eq!(created[7]["external_id"], "ann-7");
    assert_eq!(created[7]["type"], "report_annotation");
    // Up to 1000 per report; posting the same ids again updates them.
    for start in (100..1000).step_by(100) {
        fixture
            .expect(
                "POST",
                &cloud("/scan-1/annotations"),
                ADMIN_USER,
                Some(annotations(start..start + 100)),
                200,
            )
            .await;
    }
    let mut again = annotations(0..100);
    again[0]["summary"] = json!("updated");
    fixture
        .expect(
            "POST",
            &cloud("/scan-1/annotations"),
            ADMIN_USER,
            Some(again),
            200,
        )
        .await;
    let message = rejected(
        &fixture,
        "POST",
        &cloud("/scan-1/annotations"),
        annotations(1000..1001),
    )
    .await;
    assert_eq!(
        message,
        "a report holds at most 1000 annotations; this would make 1001"
    );

    // Paged lists.
    let first = fixture
        .expect(
            "GET",
            &cloud("/scan-1/annotations?pagelen=100"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(first["size"], 1000);
    assert_eq!(first["values"].as_array().unwrap().len(), 100);
    assert_eq!(first["values"][0]["summary"], "updated");
    assert_eq!(
        first["next"],
        format!(
            "http://localhost{}",
            cloud("/scan-1/annotations?page=2&pagelen=100")
        )
    );
    let last = fixture
        .expect(
            "GET",
            &cloud("/scan-1/annotations?pagelen=100&page=10"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(last["values"][99]["external_id"], "ann-999");
    assert!(last.get("next").is_none(), "{last}");
    fixture
        .expect(
            "GET",
            &cloud("/scan-1/annotations?page=0"),
            ADMIN_USER,
            None,
            400,
        )
        .await;

    // Single annotations: get, put (the path's id wins), delete.
    let one = fixture
        .expect(
            "GET",
            &cloud("/scan-1/annotations/ann-5"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        (one["path"].clone(), one["line"].clone()),
        (json!("src/file5.rs"), json!(5))
    );
    let mut changed = annotation(5);
    changed["severity"] = json!("CRITICAL");
    changed["external_id"] = json!("ignored");
    let put = fixture
        .expect(
            "PUT",
            &cloud("/scan-1/annotations/ann-5"),
            ADMIN_USER,
            Some(changed),
            200,
        )
        .await;
    assert_eq!(
        (put["external_id"].clone(), put["severity"].clone()),
        (json!("ann-5"), json!("CRITICAL"))
    );
    fixture
        .expect(
            "DELETE",
            &cloud("/scan-1/annotations/ann-5"),
            ADMIN_USER,
            None,
            204,
        )
        .await;
    fixture
        .expect(
            "GET",
            &cloud("/scan-1/annotations/ann-5"),
            ADMIN_USER,
            None,
            404,
        )
        .await;
    // A freed place takes one more.
    fixture
        .expect(
            "PUT",
            &cloud("/scan-1/annotations/ann-1000"),
            ADMIN_USER,
            Some(annotation(1000)),
            200,
        )
        .await;

    // Permissions: hidden without read, read-only without write.
    fixture.user("bob").await;
    fixture
        .expect("GET", &cloud("/scan-1"), Some("bob"), None, 404)
        .await;
    fixture
        .expect("PUT", "/rest/api/latest/projects/PROJ/repos/api/permissions/users?name=bob&permission=REPO_READ", ADMIN_USER, None, 204)
        .await;
    fixture
        .expect(
            "GET",
            &cloud("/scan-1/annotations/ann-7"),
            Some("bob"),
            None,
            200,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &cloud("/scan-1"),
            Some("bob"),
            Some(report.clone()),
            403,
        )
        .await;
    fixture
        .expect(
            "DELETE",
            &cloud("/scan-1/annotations/ann-7"),
            Some("bob"),
            None,
            403,
        )
        .await;

    // Deleting the report takes its annotations.
    fixture
        .expect("DELETE", &cloud("/scan-1"), ADMIN_USER, None, 204)
        .await;
    fixture
        .expect("GET", &cloud("/scan-1"), ADMIN_USER, None, 404)
        .await;
    let left: i64 = sqlx::query_scalar("select count(*) from insight_annotations")
        .fetch_one(&fixture.database.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_center_paths_speak_data_center_fields_over_the_same_reports() {
    let fixture = Fixture::new().await;
    let report = json!({
        "title": "Secrets",
        "result": "PASS",
        "logoUrl": "https://scanner.example.com/logo.png",
        "data": [{"title": "Docs", "type": "LINK", "value": {"linktext": "docs", "href": "https://scanner.example.com/docs"}}],
    });
    let stored = fixture
        .expect(
            "PUT",
            &dc("/dc-report"),
            ADMIN_USER,
            Some(report.clone()),
            200,
        )
        .await;
    assert_eq!(stored["key"], "dc-report");
    assert_eq!(stored["result"], "PASS");
    assert_eq!(stored["logoUrl"], "https://scanner.example.com/logo.png");
    assert!(stored["createdDate"].as_i64().unwrap() > 0);
    assert_eq!(
        stored["data"][0]["value"],
        json!({"linktext": "docs", "href": "https://scanner.example.com/docs"})
    );
    // The same report through the Cloud path and the 1.0 path.
    let as_cloud = fixture
        .expect("GET", &cloud("/dc-report"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(as_cloud["result"], "PASSED");
    assert_eq!(as_cloud["data"][0]["value"]["text"], "docs");
    let v1 =
        format!("/rest/insights/1.0/projects/PROJ/repos/api/commits/{COMMIT}/reports/dc-report");
    assert_eq!(
        fixture.expect("GET", &v1, ADMIN_USER, None, 200).await["key"],
        "dc-report"
    );
    let page = fixture.expect("GET", &dc(""), ADMIN_USER, None, 200).await;
    assert_eq!(
        (page["size"].clone(), page["isLastPage"].clone()),
        (json!(1), json!(true))
    );

    let mut bad = report.clone();
    bad["result"] = json!("PASSED");
    assert_eq!(
        rejected(&fixture, "PUT", &dc("/dc-report"), bad).await,
        "result \"PASSED\" is not one of PASS, FAIL"
    );

    // Annotations: `{annotations: [...]}`, message and type, LOW to HIGH.
    let body = json!({"annotations": [
        {"externalId": "a1", "path": "app.py", "line": 3, "message": "hard-coded token", "severity": "HIGH", "type": "VULNERABILITY"},
        {"path": "README.md", "message": "no id given", "severity": "LOW"},
    ]});
    fixture
        .expect(
            "POST",
            &dc("/dc-report/annotations"),
            ADMIN_USER,
            Some(body),
            204,
        )
        .await;
    let critical = json!({"annotations": [{"message": "m", "severity": "CRITICAL"}]});
    assert_eq!(
        rejected(&fixture, "POST", &dc("/dc-report/annotations"), critical).await,
        "annotation 0: severity \"CRITICAL\" is not one of HIGH, MEDIUM, LOW"
    );
    let many = json!({"annotations": (0..101).map(|i| json!({"message": format!("m{i}"), "severity": "LOW"})).collect::<Vec<_>>()});
    assert_eq!(
        rejected(&fixture, "POST", &dc("/dc-report/annotations"), many).await,
        "at most 100 annotations per request; this one has 101"
    );
    let listed = fixture
        .expect("GET", &dc("/dc-report/annotations"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(listed["totalCount"], 2);
    let first = &listed["annotations"][0];
    assert_eq!(
        (
            first["externalId"].clone(),
            first["message"].clone(),
            first["type"].clone(),
            first["reportKey"].clone()
        ),
        (
            json!("a1"),
            json!("hard-coded token"),
            json!("VULNERABILITY"),
            json!("dc-report")
        )
    );
    let generated = listed["annotations"][1]["externalId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(generated.starts_with("annotation-"), "{generated}");
    assert_eq!(listed["annotations"][1]["type"], "CODE_SMELL");
    // Delete by externalId, then one put singly.
    fixture
        .expect(
            "DELETE",
            &dc("/dc-report/annotations?externalId=a1"),
            ADMIN_USER,
            None,
            204,
        )
        .await;
    let listed = fixture
        .expect("GET", &dc("/dc-report/annotations"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(listed["totalCount"], 1);
    fixture
        .expect(
            "PUT",
            &dc("/dc-report/annotations/b2"),
            ADMIN_USER,
            Some(json!({"message": "one", "severity": "MEDIUM"})),
            204,
        )
        .await;
    let one = fixture
        .expect(
            "GET",
            &cloud("/dc-report/annotations/b2"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        (one["summary"].clone(), one["severity"].clone()),
        (json!("one"), json!("MEDIUM"))
    );
    // Replacing a report through Data Center's path clears its annotations
    // (Cloud's keeps them).
    fixture
        .expect(
            "PUT",
            &cloud("/dc-report"),
            ADMIN_USER,
            Some(json!({"title": "again"})),
            200,
        )
        .await;
    assert_eq!(
        fixture
            .expect("GET", &dc("/dc-report/annotations"), ADMIN_USER, None, 200)
            .await["totalCount"],
        2
    );
    fixture
        .expect("PUT", &dc("/dc-report"), ADMIN_USER, Some(report), 200)
        .await;
    assert_eq!(
        fixture
            .expect("GET", &dc("/dc-report/annotations"), ADMIN_USER, None, 200)
            .await["totalCount"],
        0
    );
    fixture
        .expect("DELETE", &dc("/dc-report"), ADMIN_USER, None, 204)
        .await;
    fixture
        .expect("GET", &dc("/dc-report"), ADMIN_USER, None, 404)
        .await;
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_keys_rotate_list_and_delete_for_administrators_only() {
    let fixture = Fixture::new().await;
    fixture.user("bob").await;
    fixture
        .expect(
            "POST",
            "/rest/secrets/1.0/keys/rotate",
            Some("bob"),
            None,
            403,
        )
        .await;
    fixture
        .expect(
            "GET",
            "/rest/secrets/1.0/keys/inactive",
            Some("bob"),
            None,
            403,
        )
        .await;
    fixture
        .expect("DELETE", "/rest/secrets/1.0/keys/inactive", None, None, 401)
        .await;
    let none = fixture
        .expect(
            "GET",
            "/rest/secrets/1.0/keys/inactive",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(none["inactiveKeys"], json!([]));

    let rotated = fixture
        .expect(
            "POST",
            "/rest/secrets/1.0/keys/rotate",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(rotated["status"], "SUCCESS");
    let retired = rotated["inactiveKeys"].clone();
    assert_eq!(retired.as_array().unwrap().len(), 1, "{rotated}");
    assert_ne!(rotated["activeKey"], retired[0]);
    let inactive = fixture
        .expect(
            "GET",
            "/rest/secrets/1.0/keys/inactive",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(inactive["inactiveKeys"], retired);
    assert_eq!(inactive["keys"][0]["ciphertexts"], 0);
    let deleted = fixture
        .expect(
            "DELETE",
            "/rest/secrets/1.0/keys/inactive",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(deleted["deletedKeys"], retired);
    assert_eq!(
        fixture
            .expect(
                "GET",
                "/rest/secrets/1.0/keys/inactive",
                ADMIN_USER,
                None,
                200
            )
            .await["inactiveKeys"],
        json!([])
    );
    let audit = fixture
        .expect("GET", "/rest/security/latest/audit", ADMIN_USER, None, 200)
        .await;
    let actions: Vec<&str> = audit["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["keys.deleted", "key.rotated"]);
    fixture.finish().await;
}

/// Regression (issue 13): a repository writer could replace or delete the
/// scanner's own report, hiding the findings it shows on every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scanners_report_is_written_by_the_scanner_only() {
    let fixture = Fixture::new().await;
    let report = json!({"title": "All clear", "result": "PASS"});
    let cloud_report = json!({"title": "All clear", "result": "PASSED"});
    for (uri, body) in [
        (dc("/leakscan-secrets"), &report),
        (cloud("/leakscan-secrets"), &cloud_report),
    ] {
        let refused = fixture
            .expect("PUT", &uri, ADMIN_USER, Some(body.clone()), 403)
            .await;
        assert!(refused.to_string().contains("scanner only"), "{refused}");
        fixture.expect("DELETE", &uri, ADMIN_USER, None, 403).await;
    }
    fixture
        .expect(
            "POST",
            &dc("/leakscan-secrets/annotations"),
            ADMIN_USER,
            Some(json!({"annotations": [{"message": "fine", "severity": "LOW"}]})),
            403,
        )
        .await;
    // Any other key is the writer's to use.
    fixture
        .expect("PUT", &dc("/my-report"), ADMIN_USER, Some(report), 200)
        .await;
}
