//! Hostile input to every route of the OpenAPI document, as a system
//! administrator (so it reaches the handlers): traversal and injection
//! strings in every path parameter, malformed JSON, invalid UTF-8 and
//! oversized bodies, and nonsense query parameters. Every answer is a 4xx
//! where the input is used, never a 5xx anywhere, and the gateway still
//! answers normally afterwards.

mod common;

use common::{Fixture, ADMIN};
use leakscan_gateway::openapi;
use serde_json::Value;

/// Values for a path parameter, percent-encoded as a client would send them.
const HOSTILE_SEGMENTS: &[&str] = &[
    "..",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "-oProxyCommand=touch%20%2Ftmp%2Fpwned",
    "--upload-pack=touch%20x",
    "%00",
    "%FF%FE",
    "a%0Ab",
    "%27%3B%20drop%20table%20users%3B%20--",
    "%24(id)",
];

const NORMAL: &[(&str, &str)] = &[
    ("project", "PROJ"),
    ("repo", "api"),
    ("commit", "4f1c2a9be07d3c58a6f2e91d0b7c4a3e5d6f8a01"),
    ("report", "r1"),
    ("annotation", "a1"),
    ("id", "1"),
    ("rule", "AWS_ACCESS_KEY_ID"),
    ("scan_key", "no-such-job"),
    ("user", "admin"),
    ("token", "1"),
];

fn fill(path: &str, hostile: Option<(&str, &str)>) -> String {
    let mut uri = path.to_string();
    for (name, value) in NORMAL {
        let value = match hostile {
            Some((target, value)) if target == *name => value,
            _ => value,
        };
        uri = uri.replace(&format!("{{{name}}}"), value);
    }
    uri
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_to_every_route_gets_a_clear_4xx_and_no_5xx() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    let document = openapi::generate("");
    let huge = vec![b'['; leakscan_gateway::MAX_BODY_BYTES + 1024];
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut check = |what: String, status: u16, answer: &Value, must_be_4xx: bool| {
        cases += 1;
        let bad = status >= 500 || (must_be_4xx && !(400..500).contains(&status));
        // A 4xx says why, in Bitbucket's shape (413 and 405 come from the
        // framework's own layers with their standard texts).
        let unexplained = (400..500).contains(&status)
            && ![405, 413].contains(&status)
            && answer["errors"][0]["message"]
                .as_str()
                .is_none_or(str::is_empty);
        if bad || unexplained {
            failures.push(format!("{what}: {status} {answer}"));
        }
    };
    for (path, methods) in document["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            let takes_body = operation.get("requestBody").is_some();
            // Every path parameter, one at a time.
            for parameter in openapi::path_parameters(path) {
                for value in HOSTILE_SEGMENTS {
                    let uri = fill(path, Some((parameter, value)));
                    let (status, answer) = fixture
                        .call_with(&method, &uri, admin, &[], Vec::new())
                        .await;
                    check(format!("{method} {uri}"), status.as_u16(), &answer, true);
                }
            }
            let uri = fill(path, None);
            // Bodies: malformed JSON, invalid UTF-8, too large.
            let json = ("Content-Type", "application/json");
            for (label, body) in [
                ("malformed JSON", b"{\"title\": [1, 2".to_vec()),
                ("invalid UTF-8", vec![b'"', 0xff, 0xfe, 0xc3, 0x28, b'"']),
                ("a huge body", huge.clone()),
                ("NUL characters", br#"{"name": "a\u0000b", "key": "K\u0000", "title": "t\u0000", "lineRegex": "x\u0000", "comment": "\u0000", "findingId": 1, "fingerprint": "\u0000", "annotations": [{"message": "\u0000", "severity": "LOW", "externalId": "\u0000"}]}"#.to_vec()),
            ] {
                if method == "GET" || method == "HEAD" {
                    continue;
                }
                let (status, answer) = fixture.call_with(&method, &uri, admin, &[json], body).await;
                check(
                    format!("{method} {uri} with {label}"),
                    status.as_u16(),
                    &answer,
                    takes_body,
                );
            }
            // Query parameters: every declared one set to nonsense.
            let query: Vec<String> = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| {
                    let name = p["name"].as_str().unwrap();
                    let value = match p["schema"]["type"].as_str() {
                        Some("integer") => "-1",
                        Some("boolean") => "maybe",
                        _ => "--upload-pack%3Dx%2F..%2F..%00",
                    };
                    format!("{name}={value}")
                })
                .collect();
            if !query.is_empty() && method == "GET" {
                let uri = format!("{uri}?{}", query.join("&"));
                let (status, answer) = fixture
                    .call_with(&method, &uri, admin, &[], Vec::new())
                    .await;
                check(format!("{method} {uri}"), status.as_u16(), &answer, false);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{cases} cases");
    assert!(cases > 1000, "only {cases} cases");
    // Still serving, and nothing was created by the injections.
    fixture.expect("GET", "/health/live", None, None, 200).await;
    let projects = fixture
        .expect(
            "GET",
            "/rest/api/latest/projects?limit=100",
            admin,
            None,
            200,
        )
        .await;
    assert!(projects["values"].as_array().unwrap().iter().all(|p| {
        let key = p["key"].as_str().unwrap();
        key.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '~')
    }));
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_holds_at_most_200_custom_rules() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    let uri = "/rest/api/latest/projects/PROJ/repos/api/secret-scanning/rules";
    for n in 0..200 {
        let rule = serde_json::json!({"name": format!("RULE_{n}"), "lineRegex": format!("tok{n}_[a-z0-9]{{16}}")});
        fixture.expect("POST", uri, admin, Some(rule), 200).await;
    }
    let rule = serde_json::json!({"name": "ONE_TOO_MANY", "lineRegex": "x_[a-z]{16}"});
    let answer = fixture
        .expect("POST", uri, admin, Some(rule.clone()), 400)
        .await;
    assert_eq!(
        answer["errors"][0]["message"],
        "a scope holds at most 200 rules of a kind; delete one first"
    );
    // Other scopes, and allowlists, count apart.
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/secret-scanning/rules",
            admin,
            Some(rule),
            200,
        )
        .await;
    fixture.finish().await;
}

/// A fixture (its configuration changed by `adjust`) whose `PROJ/api`
/// main branch holds enough findings that an unread export fills its
/// channel and waits, and the request of that export.
async fn fixture_with_a_big_export(
    adjust: impl FnOnce(&mut leakscan_gateway::GatewayConfig),
) -> (Fixture, impl Fn() -> axum::http::Request<axum::body::Body>) {
    use axum::http::Request;
    let fixture = Fixture::with_config(adjust).await;
    // Enough findings that an unread export fills its channel and waits.
    let pool = &fixture.database.pool;
    let repository = leakscan_store::catalog::find_repository(pool, "PROJ", "api")
        .await
        .unwrap()
        .unwrap()
        .id;
    let secrets = leakscan_store::secrets::SecretBox::load(pool, fixture.master_key.clone())
        .await
        .unwrap();
    let batch: Vec<leakscan_store::findings::NewFinding> = (0..3000)
        .map(|n| leakscan_store::findings::NewFinding {
            rule_id: "TEST".into(),
            rule_name: "TEST".into(),
            severity: "LOW".into(),
            commit: format!("{n:040x}"),
            path: format!("some/rather/long/path/to/make/rows/wide/file{n}.txt"),
            line: Some(1),
            author: "Dev".into(),
            author_email: "dev@example.com".into(),
            commit_date: None,
            secret: format!("tok_{n:012}_abcdefgh").into_bytes(),
            confidence: Some("HIGH".into()),
        })
        .collect();
    leakscan_store::findings::record_findings(pool, &secrets, repository, "main", 1, &batch)
        .await
        .unwrap();
    let export = || {
        Request::builder()
            .uri("/rest/security/1.0/export-report/PROJ/repos/api?branch=main")
            .header("Authorization", common::basic_auth(ADMIN.0))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    (fixture, export)
}

/// Starts exports until every place is taken (their bodies unread), and
/// checks one more is refused.
async fn hold_every_export_place(
    app: &axum::Router,
    export: &impl Fn() -> axum::http::Request<axum::body::Body>,
) -> Vec<axum::response::Response> {
    use tower::ServiceExt as _;
    let mut open = Vec::new();
    for _ in 0..leakscan_gateway::exports::MAX_CONCURRENT_EXPORTS {
        let response = app.clone().oneshot(export()).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        open.push(response);
    }
    let refused = app.clone().oneshot(export()).await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    open
}

/// The status of a new export once one is not refused, trying every
/// `pause` (200 times at most).
async fn export_once_a_place_frees(
    app: &axum::Router,
    export: &impl Fn() -> axum::http::Request<axum::body::Body>,
    pause: std::time::Duration,
) -> u16 {
    use tower::ServiceExt as _;
    let mut status = 429;
    for _ in 0..200 {
        status = app
            .clone()
            .oneshot(export())
            .await
            .unwrap()
            .status()
            .as_u16();
        if status != 429 {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_beyond_the_concurrent_limit_answer_429_until_one_ends() {
    let (fixture, export) = fixture_with_a_big_export(|_| {}).await;
    let app = leakscan_gateway::app(fixture.state.clone());
    let mut open = hold_every_export_place(&app, &export).await;
    // One client goes away: its export stops and frees its place.
    drop(open.pop());
    let status =
        export_once_a_place_frees(&app, &export, std::time::Duration::from_millis(10)).await;
    assert_eq!(status, 200);
    drop(open);
    fixture.finish().await;
}

// Issue 13: four clients that never read their export held every export
// place (and a database connection each) for ever. An export whose client
// reads nothing for the stall timeout is stopped and its place freed,
// while those clients still hold their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_whose_clients_stop_reading_are_stopped_and_free_their_place() {
    let (fixture, export) = fixture_with_a_big_export(|config| {
        config.export_stall_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let app = leakscan_gateway::app(fixture.state.clone());
    let stalled = hold_every_export_place(&app, &export).await;
    let status =
        export_once_a_place_frees(&app, &export, std::time::Duration::from_millis(50)).await;
    assert_eq!(
        status, 200,
        "a place frees up while the stalled clients stay"
    );
    drop(stalled);
    fixture.finish().await;
}
