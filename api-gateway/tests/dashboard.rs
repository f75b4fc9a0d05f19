//! Issue 16, part 5: the dashboard page's server side. The page and its
//! files come with a strict Content-Security-Policy; a browser signs in to
//! a session cookie (`HttpOnly`, `SameSite=Strict`) that authenticates the
//! REST API until it signs out; the dashboard answers carry the bars'
//! counts, the hook's blocked and bypassed pushes, a branch being scanned,
//! and whether the caller may rescan.

mod common;

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, Response, StatusCode},
};
use common::{Fixture, ADMIN};
use leakscan_gateway::{app, dashboard::CONTENT_SECURITY_POLICY};
use serde_json::{json, Value};
use tower::ServiceExt as _;

async fn send(fixture: &Fixture, request: Request<Body>) -> (Response<()>, Vec<u8>) {
    let response = app(Arc::clone(&fixture.state))
        .oneshot(request)
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 24).await.unwrap();
    (Response::from_parts(parts, ()), bytes.to_vec())
}

fn header(response: &Response<()>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_come_with_a_strict_policy_and_no_inline_code() {
    let fixture = Fixture::new().await;
    for (path, content_type) in [
        ("/dashboard", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", "text/css; charset=utf-8"),
    ] {
        let (response, body) =
            send(&fixture, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(
            header(&response, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(header(&response, "x-frame-options"), "DENY");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        assert!(!body.is_empty(), "{path}");
    }
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
    }
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    // The page holds no inline script, style or event handler (the policy
    // would refuse them): scripts and styles are files of its own.
    let (_, page) = send(
        &fixture,
        Request::get("/dashboard").body(Body::empty()).unwrap(),
    )
    .await;
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(r#"<script src="dashboard/app.js" defer></script>"#));
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(!page.contains("<style"), "{page}");
    assert!(!page.contains(" style="), "{page}");
    assert!(
        !page.contains(" onclick=") && !page.contains(" onload="),
        "{page}"
    );
    let (_, script) = send(
        &fixture,
        Request::get("/dashboard/app.js")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let script = String::from_utf8(script).unwrap();
    assert!(
        !script.contains("innerHTML"),
        "the DOM is built from text only"
    );
    assert!(!script.contains("eval("));
    fixture.finish().await;
}

/// Signs in through the page's form: the answer and the cookie it sets.
async fn sign_in(
    fixture: &Fixture,
    name: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> (Response<()>, Value) {
    let mut request = Request::post("/rest/dashboard/latest/session")
        .header("Content-Type", "application/json")
        .header("X-Requested-With", "XMLHttpRequest");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, body) = send(
        fixture,
        request
            .body(Body::from(
                json!({"name": name, "password": password}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    (
        response,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// `GET path` with the session cookie (and, like the page, `X-Requested-With`).
async fn with_cookie(
    fixture: &Fixture,
    method: &str,
    path: &str,
    cookie: &str,
) -> (StatusCode, Value) {
    let (response, body) = send(
        fixture,
        Request::builder()
            .method(method)
            .uri(path)
            .header("Cookie", format!("other=1; {cookie}"))
            .header("X-Requested-With", "XMLHttpRequest")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    (
        response.status(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_authenticates_the_api_until_signing_out() {
    let fixture = Fixture::new().await;
    fixture.user("carol").await;

    // A wrong password: 401 without a challenge (the page shows its form,
    // not the browser's dialog), and no cookie.
    let (refused, _) = sign_in(&fixture, "carol", "wrong", &[]).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&refused, "www-authenticate"), "");
    assert_eq!(header(&refused, "set-cookie"), "");
    // Without X-Requested-With, API clients still get the challenge.
    let (status, _) = fixture
        .call("GET", "/rest/dashboard/latest/session", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (response, _) = send(
        &fixture,
        Request::get("/rest/dashboard/latest/session")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(header(&response, "www-authenticate").starts_with("Basic"));

    let (signed_in, who) = sign_in(&fixture, "carol", "carol-pw", &[]).await;
    assert_eq!(signed_in.status(), StatusCode::OK, "{who}");
    assert_eq!(who["name"], "carol");
    assert_eq!(who["security"], false);
    let set_cookie = header(&signed_in, "set-cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("leakscan_session="), "{cookie}");
    // Over HTTPS (a proxy says so), the cookie is Secure.
    let (over_tls, _) = sign_in(
        &fixture,
        "carol",
        "carol-pw",
        &[("X-Forwarded-Proto", "https")],
    )
    .await;
    assert!(header(&over_tls, "set-cookie").contains("; Secure"));

    // The cookie authenticates the API as carol, with carol's permissions.
    let (status, who) =
        with_cookie(&fixture, "GET", "/rest/dashboard/latest/session", &cookie).await;
    assert_eq!(
        (status, who["name"].as_str()),
        (StatusCode::OK, Some("carol"))
    );
    let (status, _) = with_cookie(
        &fixture,
        "GET",
        "/rest/security/latest/dashboard/projects/PROJ",
        &cookie,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "carol may not read PROJ");
    let (status, _) = with_cookie(
        &fixture,
        "PUT",
        "/rest/security/latest/status/total_rescan",
        &cookie,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another site's page cannot use it for a state change.
    let (response, _) = send(
        &fixture,
        Request::put("/rest/security/latest/status/projects/~carol")
            .header("Cookie", &cookie)
            .header("Origin", "https://evil.example")
            .header("Host", "leakscan.example")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Credentials in the request win over the cookie.
    let (response, body) = send(
        &fixture,
        Request::get("/rest/dashboard/latest/session")
            .header("Cookie", &cookie)
            .header("Authorization", common::basic_auth(ADMIN.0))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["name"],
        "admin"
    );

    // Signing out ends the session and clears the cookie.
    let (response, _) = send(
        &fixture,
        Request::delete("/rest/dashboard/latest/session")
            .header("Cookie", &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(header(&response, "set-cookie").contains("leakscan_session=; Path=/; Max-Age=0"));
    let (status, _) = with_cookie(&fixture, "GET", "/rest/dashboard/latest/session", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = with_cookie(
        &fixture,
        "GET",
        "/rest/dashboard/latest/session",
        "leakscan_session=made-up",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_answers_carry_bars_hook_counts_and_what_the_caller_may_do() {
    let fixture = Fixture::new().await;
    fixture.user("reader").await;
    let admin = Some(ADMIN.0);
    fixture
        .expect(
            "PUT",
            "/rest/api/latest/projects/PROJ/permissions/users?name=reader&permission=PROJECT_READ",
            admin,
            None,
            204,
        )
        .await;
    let project = "/rest/security/latest/dashboard/projects/PROJ";

    // Nothing scanned: every branch counts as Not scanned; the
    // administrator may rescan, the reader may not.
    let dashboard = fixture.expect("GET", project, admin, None, 200).await;
    let branches: i64 = dashboard["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["branches"].as_array().unwrap().len() as i64)
        .sum();
    assert!(branches >= 2, "{dashboard}");
    assert_eq!(dashboard["counts"]["notScanned"], branches, "{dashboard}");
    assert_eq!(dashboard["canRescan"], true);
    assert!(dashboard["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["canRescan"] == true));
    let seen = fixture
        .expect("GET", project, Some("reader"), None, 200)
        .await;
    assert_eq!(seen["canRescan"], false, "{seen}");
    assert!(seen["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["canRescan"] == false));
    let repository = fixture
        .expect(
            "GET",
            &format!("{project}/repos/web"),
            Some("reader"),
            None,
            200,
        )
        .await;
    assert_eq!(repository["canRescan"], false, "{repository}");

    // A branch scan, expanded into its task as a coordinator does: that
    // branch counts as Scanning until the task ends.
    let job = fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/PROJ/repos/web/branches?name=main",
            admin,
            None,
            200,
        )
        .await;
    let pool = &fixture.database.pool;
    let job = leakscan_store::jobs::find_job(pool, job["scanKey"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        leakscan_store::jobs::expand_job(pool, job.id)
            .await
            .unwrap(),
        1
    );
    let repository = fixture
        .expect("GET", &format!("{project}/repos/web"), admin, None, 200)
        .await;
    assert_eq!(repository["canRescan"], true);
    let main = repository["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "main")
        .unwrap();
    assert_eq!(main["scan"], "Scanning", "{repository}");
    assert_eq!(main["status"], "Not scanned", "{repository}");
    assert_eq!(repository["counts"]["scanning"], 1, "{repository}");

    // The hook's reports: one push blocked, one let through with a bypass.
    let push = |bypass: Option<&str>| {
        let mut report = json!({
            "ref": "refs/heads/main",
            "pusher": "dev",
            "findings": [{"commit": "0123456789abcdef0123456789abcdef01234567", "path": "a.env",
                          "line": 1, "ruleId": "AWS_ACCESS_KEY_ID", "secret": "AKIAQW7RT2ZX9LMN4VBE"}],
        });
        if let Some(reason) = bypass {
            report["bypass"] = json!(reason);
        }
        report
    };
    let hook = "/rest/security/latest/hook/projects/PROJ/repos/web/push";
    fixture
        .expect("POST", hook, admin, Some(push(None)), 200)
        .await;
    fixture
        .expect("POST", hook, admin, Some(push(Some("fix-later"))), 200)
        .await;
    let dashboard = fixture
        .expect("GET", project, Some("reader"), None, 200)
        .await;
    assert_eq!(
        dashboard["hook"],
        json!({"blocked": 1, "bypassed": 1}),
        "{dashboard}"
    );
    let web = dashboard["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == "web")
        .unwrap();
    assert_eq!(web["hook"], json!({"blocked": 1, "bypassed": 1}));
    fixture.finish().await;
}
