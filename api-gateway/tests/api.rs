//! The REST API driven in memory against a fresh PostgreSQL database and
//! Redis key prefix, over real git repositories under a repository root:
//! catalog, users, scans and jobs.

mod common;

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use base64::Engine as _;
use common::{error_message, Fixture, ADMIN};
use leakscan_gateway::app;
use leakscan_store::users;
use leakscan_testkit::GitRepo;
use serde_json::{json, Value};
use tower::ServiceExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_authentication() {
    let fixture = Fixture::new().await;
    fixture.expect("GET", "/health/live", None, None, 200).await;
    let ready = fixture
        .expect("GET", "/health/ready", None, None, 200)
        .await;
    assert_eq!(ready["status"], "UP");

    // No credentials, a wrong password, an unknown user: 401 in Bitbucket's shape.
    let (status, body) = fixture
        .call("GET", "/rest/api/latest/projects", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        error_message(&body).contains("Authentication failed"),
        "{body}"
    );
    assert_eq!(body["errors"][0]["context"], Value::Null);
    let (status, _) = fixture
        .call("GET", "/rest/api/latest/projects", Some("nobody"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    fixture.user("bob").await;
    let credentials = base64::engine::general_purpose::STANDARD.encode("bob:wrong");
    let request = Request::builder()
        .uri("/rest/api/latest/projects")
        .header("Authorization", format!("Basic {credentials}"))
        .body(Body::empty())
        .unwrap();
    let response = app(Arc::clone(&fixture.state))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    // The right password works, twice (the second from the credential cache).
    for _ in 0..2 {
        let page = fixture
            .expect("GET", "/rest/api/latest/projects", Some("bob"), None, 200)
            .await;
        assert_eq!(page["size"], 0, "bob sees no project: {page}");
    }
    let (status, body) = fixture
        .call("GET", "/rest/no/such/path", Some("bob"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!error_message(&body).is_empty());
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_comes_from_the_roots_and_the_api() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    let page = fixture
        .expect("GET", "/rest/api/latest/projects?limit=2", admin, None, 200)
        .await;
    assert_eq!(page["size"], 2);
    assert_eq!(page["isLastPage"], false);
    assert_eq!(page["nextPageStart"], 2);
    assert_eq!(page["values"][0]["key"], "OTHER");
    let last = fixture
        .expect(
            "GET",
            "/rest/api/latest/projects?start=2&limit=2",
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(last["isLastPage"], true);
    assert_eq!(last["values"][0]["key"], "~alice");
    let beyond = fixture
        .expect(
            "GET",
            "/rest/api/latest/projects?start=10",
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(
        (beyond["size"].as_i64(), beyond["isLastPage"].as_bool()),
        (Some(0), Some(true))
    );
    let bad = fixture
        .call("GET", "/rest/api/latest/projects?limit=many", admin, None)
        .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);

    // Bare and working-tree repositories; a directory that is no repository is skipped.
    let repos = fixture
        .expect(
            "GET",
            "/rest/api/latest/projects/PROJ/repos",
            admin,
            None,
            200,
        )
        .await;
    let slugs: Vec<&str> = repos["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["api", "web"]);
    assert_eq!(repos["values"][0]["defaultBranch"], "main");
    assert_eq!(repos["values"][0]["projectKey"], "PROJ");

    // Registration with a clone URL, and its errors.
    let source = GitRepo::new();
    source.write("a.txt", "a\n");
    source.commit_all("init");
    let url = source.path().to_str().unwrap().to_string();
    let created = fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/OTHER/repos",
            admin,
            Some(json!({"name": "My Lib", "cloneUrl": url})),
            201,
        )
        .await;
    assert_eq!(created["slug"], "my-lib");
    assert_eq!(created["branches"], json!(["main"]));
    for (body, expected) in [
        (json!({"name": "x", "cloneUrl": "ext::sh -c id"}), 400),
        (
            json!({"name": "x", "cloneUrl": "/nonexistent/repo.git"}),
            400,
        ),
        // Outside the roots and the allowed directories; a host the
        // operator does not allow (an SSRF from the gateway's ls-remote);
        // credentials in the URL.
        (json!({"name": "x", "cloneUrl": "/etc"}), 400),
        (json!({"name": "x", "cloneUrl": "file:///etc"}), 400),
        (
            json!({"name": "x", "cloneUrl": "http://169.254.169.254/latest/meta-data"}),
            400,
        ),
        (
            json!({"name": "x", "cloneUrl": "https://bob:pw-1234@git.example.com/r.git"}),
            400,
        ),
        (json!({"name": "x"}), 400),
        (
            json!({"name": "../x", "slug": "../x", "cloneUrl": url}),
            400,
        ),
    ] {
        let (status, error) = fixture
            .call(
                "POST",
                "/rest/api/latest/projects/OTHER/repos",
                admin,
                Some(body.clone()),
            )
            .await;
        assert_eq!(status.as_u16(), expected, "{body}: {error}");
        assert!(!error_message(&error).is_empty(), "{error}");
    }
    let (status, _) = fixture
        .call(
            "POST",
            "/rest/api/latest/projects/NOPE/repos",
            admin,
            Some(json!({"name": "x", "cloneUrl": url})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Sync again: idempotent, and a new repository under the root appears.
    let report = fixture
        .expect(
            "POST",
            "/rest/security/latest/admin/catalog/sync",
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(report["repositories"], 4, "{report}");
    fixture.user("bob").await;
    // Regression (issue 13): every reader saw where a repository is cloned
    // from; now only its administrators do.
    let listing = |user| {
        let fixture = &fixture;
        async move {
            fixture
                .expect(
                    "GET",
                    "/rest/api/latest/projects/OTHER/repos",
                    user,
                    None,
                    200,
                )
                .await["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["slug"].as_str().unwrap().to_string(),
                        r.get("cloneUrl").cloned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let by_admin = listing(admin).await;
    assert!(
        by_admin.iter().all(|(_, url)| url.is_some()),
        "{by_admin:?}"
    );
    assert!(
        by_admin.contains(&("my-lib".into(), Some(json!(url)))),
        "{by_admin:?}"
    );
    fixture
        .expect(
            "PUT",
            "/rest/api/latest/projects/OTHER/permissions/users?name=bob&permission=PROJECT_READ",
            admin,
            None,
            204,
        )
        .await;
    let by_reader = listing(Some("bob")).await;
    assert_eq!(by_reader.len(), by_admin.len());
    assert!(
        by_reader.iter().all(|(_, url)| url.is_none()),
        "{by_reader:?}"
    );
    fixture
        .expect(
            "POST",
            "/rest/security/latest/admin/catalog/sync",
            Some("bob"),
            None,
            403,
        )
        .await;
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_scanning_permissions_and_the_scan_api() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    let bob = fixture.user("bob").await;
    fixture.user("alice").await;
    let security = "/rest/security/latest";

    // Bob has no permission: a total rescan is 403; a project he cannot see is 404.
    let body = fixture
        .expect(
            "PUT",
            &format!("{security}/status/total_rescan"),
            Some("bob"),
            None,
            403,
        )
        .await;
    assert!(error_message(&body).contains("permission"), "{body}");
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ"),
            Some("bob"),
            None,
            404,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ/repos/api"),
            Some("bob"),
            None,
            404,
        )
        .await;
    fixture
        .expect(
            "DELETE",
            &format!("{security}/status/running"),
            Some("bob"),
            None,
            403,
        )
        .await;
    fixture
        .expect(
            "DELETE",
            &format!("{security}/status/scheduled"),
            Some("bob"),
            None,
            403,
        )
        .await;

    // Repository write: repository and branch rescans, not the project's.
    fixture
        .expect("PUT", "/rest/api/latest/projects/PROJ/repos/api/permissions/users?name=bob&permission=REPO_WRITE", admin, None, 204)
        .await;
    let job = fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ/repos/api?email=bob@example.com"),
            Some("bob"),
            None,
            200,
        )
        .await;
    assert_eq!(
        (job["scope"].as_str(), job["state"].as_str()),
        (Some("repository"), Some("queued"))
    );
    assert_eq!(job["emails"], json!(["bob@example.com"]));
    assert_eq!(job["progress"], 0);
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ"),
            Some("bob"),
            None,
            403,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ/repos/api/branches?name=dev"),
            Some("bob"),
            None,
            200,
        )
        .await;
    let missing = fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ/repos/api/branches"),
            Some("bob"),
            None,
            400,
        )
        .await;
    assert!(error_message(&missing).contains("name"), "{missing}");
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ/repos/api/branches?name=gone"),
            Some("bob"),
            None,
            404,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ/repos/api?email=not-an-address"),
            Some("bob"),
            None,
            400,
        )
        .await;
    // Read only: no rescan.
    fixture
        .expect("PUT", "/rest/api/latest/projects/PROJ/repos/api/permissions/users?name=bob&permission=REPO_READ", admin, None, 204)
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ/repos/api"),
            Some("bob"),
            None,
            403,
        )
        .await;

    // Project admin and the security grant.
    fixture
        .expect(
            "PUT",
            "/rest/api/latest/projects/PROJ/permissions/users?name=bob&permission=PROJECT_ADMIN",
            admin,
            None,
            204,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/PROJ"),
            Some("bob"),
            None,
            200,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{security}/permissions/users?name=bob"),
            admin,
            None,
            204,
        )
        .await;
    let total = fixture
        .expect(
            "PUT",
            &format!("{security}/status/total_rescan"),
            Some("bob"),
            None,
            200,
        )
        .await;
    assert_eq!(total["scope"], "total");
    users::revoke_global(&fixture.database.pool, bob.id, "SECURITY")
        .await
        .unwrap();
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/total_rescan"),
            Some("bob"),
            None,
            403,
        )
        .await;

    // Jobs: bob sees his own; the admin sees all; an unknown key is 404.
    let mine = fixture
        .expect(
            "GET",
            &format!("{security}/jobs?limit=100"),
            Some("bob"),
            None,
            200,
        )
        .await;
    assert_eq!(mine["size"], 4, "{mine}");
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/OTHER"),
            admin,
            None,
            200,
        )
        .await;
    let all = fixture
        .expect(
            "GET",
            &format!("{security}/jobs?limit=100"),
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(all["size"], 5);
    let others = all["values"][0]["scanKey"].as_str().unwrap();
    fixture
        .expect(
            "GET",
            &format!("{security}/jobs/{others}"),
            Some("bob"),
            None,
            404,
        )
        .await;
    let detail = fixture
        .expect(
            "GET",
            &format!("{security}/jobs/{others}"),
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(detail["failures"], json!([]));
    fixture
        .expect("GET", &format!("{security}/jobs/0000"), admin, None, 404)
        .await;

    // Soteri's scan API on the default branch: scheduled, then cancelled.
    let status = fixture
        .expect(
            "GET",
            "/rest/security/1.0/scan/PROJ/repos/web",
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(
        (status["scanned"].as_bool(), status["actual"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(status.get("invalidLines").is_none(), "{status}");
    let started = fixture
        .expect(
            "POST",
            "/rest/security/1.0/scan/PROJ/repos/web?branch=dev",
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(started["scheduled"], true, "{started}");
    let branch_job = started["scanKey"].as_str().unwrap().to_string();
    let jobs = fixture
        .expect("GET", &format!("{security}/jobs?limit=1"), admin, None, 200)
        .await;
    assert_eq!(
        jobs["values"][0]["scanKey"].as_str(),
        Some(branch_job.as_str())
    );
    assert_eq!(jobs["values"][0]["scope"], "branch");
    assert_eq!(jobs["values"][0]["branch"], "dev");
    fixture
        .expect(
            "DELETE",
            "/rest/security/1.0/scan/PROJ/repos/web",
            admin,
            None,
            400,
        )
        .await;
    fixture
        .expect(
            "DELETE",
            &format!("/rest/security/1.0/scan/PROJ/repos/api?scanKey={branch_job}"),
            admin,
            None,
            404,
        )
        .await;
    fixture
        .expect(
            "DELETE",
            &format!("/rest/security/1.0/scan/PROJ/repos/web?scanKey={branch_job}"),
            admin,
            None,
            204,
        )
        .await;
    let again = fixture
        .expect(
            "DELETE",
            &format!("/rest/security/1.0/scan/PROJ/repos/web?scanKey={branch_job}"),
            admin,
            None,
            409,
        )
        .await;
    assert!(error_message(&again).contains("already ended"), "{again}");
    let cancelled = fixture
        .expect(
            "GET",
            &format!("{security}/jobs/{branch_job}"),
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(cancelled["state"], "cancelled");
    // Live events of a job that has ended: one `end` event, then the stream closes.
    let events = Request::builder()
        .uri(format!("{security}/jobs/{branch_job}/events"))
        .header(
            "Authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", ADMIN.0, ADMIN.1))
            ),
        )
        .body(Body::empty())
        .unwrap();
    let response = app(Arc::clone(&fixture.state))
        .oneshot(events)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("event: end\n"), "{text}");
    let data: Value =
        serde_json::from_str(text.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap();
    assert_eq!(
        (data["scanKey"].as_str(), data["state"].as_str()),
        (Some(branch_job.as_str()), Some("cancelled"))
    );

    // Cancelling everything queued.
    let cancelled = fixture
        .expect(
            "DELETE",
            &format!("{security}/status/scheduled"),
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(cancelled["cancelled"], 5, "{cancelled}");

    // A personal project belongs to its user, and is hidden from others.
    fixture
        .expect(
            "GET",
            "/rest/security/1.0/scan/~alice/repos/notes?branch=main",
            Some("alice"),
            None,
            200,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{security}/status/projects/~alice"),
            Some("alice"),
            None,
            200,
        )
        .await;
    fixture
        .expect(
            "GET",
            "/rest/security/1.0/scan/~alice/repos/notes?branch=main",
            Some("bob"),
            None,
            404,
        )
        .await;
    let dashboard = fixture
        .expect("GET", &format!("{security}/dashboard"), admin, None, 200)
        .await;
    let projects: Vec<&str> = dashboard["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["project"].as_str().unwrap())
        .collect();
    assert_eq!(projects, ["OTHER", "PROJ", "~alice"]);
    assert_eq!(dashboard["projects"][1]["status"], "Not scanned");
    fixture
        .expect(
            "GET",
            &format!("{security}/dashboard"),
            Some("alice"),
            None,
            403,
        )
        .await;
    fixture.finish().await;
}

/// Status and body of `GET /rest/api/latest/projects` signed in as
/// `name:password`, from `address` when given.
async fn sign_in(
    fixture: &Fixture,
    name: &str,
    password: &str,
    address: Option<&str>,
) -> (StatusCode, Value) {
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
    let mut request = Request::builder()
        .uri("/rest/api/latest/projects")
        .header("Authorization", format!("Basic {credentials}"))
        .body(Body::empty())
        .unwrap();
    if let Some(address) = address {
        let address: std::net::SocketAddr = address.parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(address));
    }
    let response = app(Arc::clone(&fixture.state))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

// Issue 13: password guessing ran argon2 without limit, and an unknown user
// name was answered at once, which told which names exist. After five
// failures for a name, or from an address, further attempts are refused
// unverified for a while; unknown names count alike; the right password of
// another user, or from another address, still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_throttled_per_user_and_per_address() {
    let fixture = Fixture::new().await;
    fixture.user("alice").await;
    fixture.user("bob").await;
    for name in ["alice", "nobody"] {
        for attempt in 0..leakscan_gateway::auth::FREE_FAILURES {
            let (status, _) = sign_in(&fixture, name, &format!("guess-{attempt}"), None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} attempt {attempt}");
        }
        // Now even the right password waits.
        let (status, body) = sign_in(&fixture, name, &format!("{name}-pw"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert!(error_message(&body).contains("try again in"), "{body}");
    }
    let (status, _) = sign_in(&fixture, "bob", "bob-pw", None).await;
    assert_eq!(status, StatusCode::OK);

    // One address trying many names.
    let guesser = "192.0.2.7:40000";
    for attempt in 0..leakscan_gateway::auth::FREE_FAILURES {
        let (status, _) =
            sign_in(&fixture, &format!("user{attempt}"), "guess", Some(guesser)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    fixture.user("carol").await;
    let (status, body) = sign_in(&fixture, "carol", "carol-pw", Some(guesser)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body).contains("try again in"), "{body}");
    let (status, _) = sign_in(&fixture, "carol", "carol-pw", Some("198.51.100.3:5000")).await;
    assert_eq!(status, StatusCode::OK);
    fixture.finish().await;
}

// Issue 13: event streams were unbounded, each polling the database every
// half second for as long as its job ran. One user holds at most
// MAX_EVENT_STREAMS_PER_USER at once; a closed stream gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_a_bounded_number_of_event_streams() {
    let fixture = Fixture::new().await;
    let started = fixture
        .expect(
            "POST",
            "/rest/security/1.0/scan/PROJ/repos/api?branch=main",
            Some(ADMIN.0),
            None,
            200,
        )
        .await;
    // No coordinator runs here: the job stays queued and its stream open.
    let uri = format!(
        "/rest/security/latest/jobs/{}/events",
        started["scanKey"].as_str().unwrap()
    );
    let open = || async {
        let request = Request::builder()
            .uri(&uri)
            .header("Authorization", common::basic_auth(ADMIN.0))
            .body(Body::empty())
            .unwrap();
        app(Arc::clone(&fixture.state))
            .oneshot(request)
            .await
            .unwrap()
    };
    let mut streams = Vec::new();
    for _ in 0..leakscan_gateway::scans::MAX_EVENT_STREAMS_PER_USER {
        let response = open().await;
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let refused = open().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(streams.pop());
    assert_eq!(open().await.status(), StatusCode::OK);
    drop(streams);
    fixture.finish().await;
}

/// Issue 15: the total-rescan schedule through the API: validated with the
/// reason, shown with its next run, audited, removable once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rescan_schedule_is_set_shown_and_removed() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    let path = "/rest/security/latest/schedule";
    let none = fixture.expect("GET", path, admin, None, 200).await;
    assert_eq!(none["cron"], Value::Null);
    for (cron, reason) in [
        ("every night", "expected 5 fields"),
        ("0 0 31 2 *", "never fires"),
        ("0 25 * * *", "cron expression"),
    ] {
        let answer = fixture
            .expect("PUT", path, admin, Some(json!({"cron": cron})), 400)
            .await;
        assert!(error_message(&answer).contains(reason), "{cron}: {answer}");
    }
    let set = fixture
        .expect("PUT", path, admin, Some(json!({"cron": "30 2 * * *"})), 200)
        .await;
    assert_eq!(set["cron"], "30 2 * * *");
    assert_eq!(set["timezone"], "UTC");
    assert_eq!(set["updatedBy"], ADMIN.0);
    let next: chrono::DateTime<chrono::Utc> = set["nextRun"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.format("%H:%M:%S").to_string(), "02:30:00");
    assert!(next > chrono::Utc::now());
    assert_eq!(
        fixture.expect("GET", path, admin, None, 200).await["cron"],
        "30 2 * * *"
    );
    let audit = fixture
        .expect("GET", "/rest/security/latest/audit", admin, None, 200)
        .await;
    assert!(
        audit["values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "schedule.set"),
        "{audit}"
    );
    fixture.expect("DELETE", path, admin, None, 204).await;
    fixture.expect("DELETE", path, admin, None, 404).await;
    fixture.finish().await;
}

/// Regression (issue 13): a repository registered before credentials were
/// refused in clone URLs showed its password to its administrators in
/// `cloneUrl`. It now shows `***` in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_left_in_an_old_clone_url_is_never_shown() {
    let fixture = Fixture::new().await;
    leakscan_store::catalog::upsert_repository(
        &fixture.database.pool,
        "PROJ",
        "legacy",
        "https://bob:hunter2@git.example.com/scm/p/legacy.git",
    )
    .await
    .unwrap();
    let page = fixture
        .expect(
            "GET",
            "/rest/api/latest/projects/PROJ/repos?limit=1000",
            Some(ADMIN.0),
            None,
            200,
        )
        .await;
    let legacy = page["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|repository| repository["slug"] == "legacy")
        .unwrap();
    assert_eq!(
        legacy["cloneUrl"],
        "https://bob:***@git.example.com/scm/p/legacy.git"
    );
    assert!(!page.to_string().contains("hunter2"), "{page}");
    fixture.finish().await;
}

/// Issue 13: a gateway with the master key moves credentials left in old
/// clone URLs out of them when it starts, so that no answer shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_gateway_moves_credentials_out_of_old_clone_urls() {
    let fixture = Fixture::new().await;
    let pool = &fixture.database.pool;
    // As an old version wrote it, before the check.
    leakscan_store::catalog::upsert_repository(
        pool,
        "PROJ",
        "legacy",
        "https://ci-bot:Zq8Lm2Vx7Tk4@git.example.com/team/legacy.git",
    )
    .await
    .unwrap();
    let queue = leakscan_store::queue::JobQueue::connect(
        &leakscan_store::testing::redis_url(),
        &format!("{}:", leakscan_store::testing::unique_name("api")),
    )
    .await
    .unwrap();
    let restarted =
        leakscan_gateway::prepare(pool.clone(), queue, fixture.state.config.clone(), None)
            .await
            .unwrap();
    let response = app(restarted)
        .oneshot(
            Request::get("/rest/api/latest/projects/PROJ/repos?limit=100")
                .header("Authorization", common::basic_auth(ADMIN.0))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(!text.contains("Zq8Lm2Vx7Tk4"), "{text}");
    assert!(
        text.contains("https://git.example.com/team/legacy.git"),
        "{text}"
    );
    let moved: i64 = sqlx::query_scalar("select count(*) from clone_credentials")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    fixture.finish().await;
}
