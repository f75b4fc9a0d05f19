//! The permission matrix: every route of the OpenAPI document, called as
//! each of eight callers, answers what the route's declared permission
//! says: 401 without credentials, 404 for a project or repository the
//! caller may not read, 403 below the permission, and otherwise gets past
//! the check (whatever the handler then says of the empty input).

mod common;

use common::{Fixture, ADMIN};
use leakscan_gateway::openapi;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    None,
    Read,
    Write,
    Admin,
}

struct Persona {
    name: Option<&'static str>,
    sys_admin: bool,
    security: bool,
    /// On project PROJ.
    project: Level,
    /// On repository PROJ/api.
    repository: Level,
}

const PERSONAS: &[Persona] = &[
    Persona {
        name: None,
        sys_admin: false,
        security: false,
        project: Level::None,
        repository: Level::None,
    },
    Persona {
        name: Some("nobody"),
        sys_admin: false,
        security: false,
        project: Level::None,
        repository: Level::None,
    },
    // A grant on a repository lets its user read the project.
    Persona {
        name: Some("reader"),
        sys_admin: false,
        security: false,
        project: Level::Read,
        repository: Level::Read,
    },
    Persona {
        name: Some("writer"),
        sys_admin: false,
        security: false,
        project: Level::Read,
        repository: Level::Write,
    },
    Persona {
        name: Some("repoadmin"),
        sys_admin: false,
        security: false,
        project: Level::Read,
        repository: Level::Admin,
    },
    Persona {
        name: Some("projadmin"),
        sys_admin: false,
        security: false,
        project: Level::Admin,
        repository: Level::Admin,
    },
    Persona {
        name: Some("security"),
        sys_admin: false,
        security: true,
        project: Level::None,
        repository: Level::None,
    },
    Persona {
        name: Some(ADMIN.0),
        sys_admin: true,
        security: true,
        project: Level::Admin,
        repository: Level::Admin,
    },
];

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Denied(u16),
    Allowed,
}

fn level(permission: &str) -> Level {
    match permission.split(' ').nth(1) {
        Some("admin") => Level::Admin,
        Some("write") => Level::Write,
        _ => Level::Read,
    }
}

/// What `persona` gets from a route that needs `permission` (the
/// document's `x-permission`).
fn expected(permission: &str, persona: &Persona) -> Expected {
    if permission == "anyone" {
        return Expected::Allowed;
    }
    if persona.name.is_none() {
        return Expected::Denied(401);
    }
    let scoped = |has: Level| {
        if has == Level::None {
            Expected::Denied(404)
        } else if has < level(permission) {
            Expected::Denied(403)
        } else {
            Expected::Allowed
        }
    };
    match permission {
        "any authenticated user" => Expected::Allowed,
        "system administrator" if persona.sys_admin => Expected::Allowed,
        "system administrator" => Expected::Denied(403),
        "system administrator or security grant" if persona.security => Expected::Allowed,
        "system administrator or security grant" => Expected::Denied(403),
        "the path's user or system administrator"
            if persona.sys_admin || persona.name == Some("nobody") =>
        {
            Expected::Allowed
        }
        "the path's user or system administrator" => Expected::Denied(403),
        p if p.ends_with(" or security grant") && persona.security => Expected::Allowed,
        p if p.starts_with("project ") => scoped(persona.project),
        p if p.starts_with("repository ") => scoped(persona.repository),
        other => panic!("a permission the matrix does not know: {other}"),
    }
}

fn concrete(path: &str) -> String {
    path.replace("{project}", "PROJ")
        .replace("{repo}", "api")
        .replace("{commit}", "4f1c2a9be07d3c58a6f2e91d0b7c4a3e5d6f8a01")
        .replace("{report}", "r1")
        .replace("{annotation}", "a1")
        .replace("{id}", "1")
        .replace("{rule}", "AWS_ACCESS_KEY_ID")
        .replace("{scan_key}", "no-such-job")
        .replace("{user}", "nobody")
        .replace("{token}", "1")
        .replace("{hook}", leakscan_gateway::hooks::HOOK_KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_its_permission_says() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    for name in [
        "nobody",
        "reader",
        "writer",
        "repoadmin",
        "projadmin",
        "security",
    ] {
        fixture.user(name).await;
    }
    for (name, grant) in [
        ("reader", "REPO_READ"),
        ("writer", "REPO_WRITE"),
        ("repoadmin", "REPO_ADMIN"),
    ] {
        let uri = format!("/rest/api/latest/projects/PROJ/repos/api/permissions/users?name={name}&permission={grant}");
        fixture.expect("PUT", &uri, admin, None, 204).await;
    }
    fixture
        .expect("PUT", "/rest/api/latest/projects/PROJ/permissions/users?name=projadmin&permission=PROJECT_ADMIN", admin, None, 204)
        .await;
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/permissions/users?name=security",
            admin,
            None,
            204,
        )
        .await;

    let document = openapi::generate("");
    let mut cases = 0;
    let mut failures = Vec::new();
    for (path, methods) in document["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let permission = operation["x-permission"].as_str().unwrap();
            let uri = concrete(path);
            let method = method.to_ascii_uppercase();
            for persona in PERSONAS {
                let body = match operation["requestBody"]["content"].as_object() {
                    Some(content) if content.contains_key("text/csv") => None,
                    Some(_) => Some(json!({})),
                    None => None,
                };
                let (status, answer) = fixture.call(&method, &uri, persona.name, body).await;
                let status = status.as_u16();
                let hidden = status == 404
                    && matches!(
                        answer["errors"][0]["message"].as_str(),
                        Some(
                            "Project PROJ does not exist." | "Repository PROJ/api does not exist."
                        )
                    );
                let got = match status {
                    401 | 403 => Expected::Denied(status),
                    404 if hidden => Expected::Denied(404),
                    _ => Expected::Allowed,
                };
                let want = expected(permission, persona);
                if got != want || status >= 500 {
                    failures.push(format!(
                        "{method} {uri} as {:?} ({permission}): {status} {answer}, expected {want:?}",
                        persona.name
                    ));
                }
                cases += 1;
            }
        }
    }
    eprintln!("{cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases > 800, "only {cases} cases");
    // The matrix left the callers' permissions as they were.
    let (status, _) = fixture
        .call(
            "GET",
            "/rest/security/1.0/scan/PROJ/repos/api?branch=main",
            Some("reader"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grants_hide_the_repository_again() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    fixture.user("bob").await;
    let grant =
        "/rest/api/latest/projects/PROJ/repos/api/permissions/users?name=bob&permission=REPO_READ";
    fixture.expect("PUT", grant, admin, None, 204).await;
    let status = "/rest/security/1.0/scan/PROJ/repos/api?branch=main";
    fixture.expect("GET", status, Some("bob"), None, 200).await;
    fixture
        .expect(
            "DELETE",
            "/rest/api/latest/projects/PROJ/repos/api/permissions/users?name=bob",
            admin,
            None,
            204,
        )
        .await;
    fixture.expect("GET", status, Some("bob"), None, 404).await;
    fixture
        .expect(
            "PUT",
            "/rest/api/latest/projects/PROJ/permissions/users?name=bob&permission=PROJECT_READ",
            admin,
            None,
            204,
        )
        .await;
    fixture.expect("GET", status, Some("bob"), None, 200).await;
    fixture
        .expect(
            "DELETE",
            "/rest/api/latest/projects/PROJ/permissions/users?name=bob",
            admin,
            None,
            204,
        )
        .await;
    let answer: Value = fixture.expect("GET", status, Some("bob"), None, 404).await;
    assert_eq!(
        answer["errors"][0]["message"],
        "Repository PROJ/api does not exist."
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_requests_from_another_origin_need_the_no_check_token() {
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    let uri = "/rest/api/latest/projects";
    let body = |key: &str| json!({"key": key}).to_string().into_bytes();
    let json = ("Content-Type", "application/json");
    let host = ("Host", "leakscan.example.com:7990");
    // Another site: refused, and nothing was created.
    for origin in [
        "https://evil.example.net",
        "http://leakscan.example.com:8000",
        "null",
    ] {
        let (status, answer) = fixture
            .call_with(
                "POST",
                uri,
                admin,
                &[json, host, ("Origin", origin)],
                body("XSRF"),
            )
            .await;
        assert_eq!(status.as_u16(), 403, "{origin}: {answer}");
        assert!(answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("XSRF check failed"));
    }
    let (status, _) = fixture
        .call("GET", "/rest/api/latest/projects/XSRF/repos", admin, None)
        .await;
    assert_eq!(status.as_u16(), 404);
    // The same request with the token, from the server's own origin, or
    // without an Origin (a script) goes through.
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "A1",
            vec![
                json,
                host,
                ("Origin", "https://evil.example.net"),
                ("X-Atlassian-Token", "no-check"),
            ],
        ),
        (
            "A2",
            vec![json, host, ("Origin", "http://leakscan.example.com:7990")],
        ),
        (
            "A3",
            vec![
                json,
                ("Host", "leakscan.example.com"),
                ("Origin", "https://leakscan.example.com"),
            ],
        ),
        ("A4", vec![json, host]),
    ];
    for (key, headers) in cases {
        let (status, answer) = fixture
            .call_with("POST", uri, admin, &headers, body(key))
            .await;
        assert_eq!(status.as_u16(), 201, "{key}: {answer}");
    }
    // Reads are never refused for their origin.
    let (status, _) = fixture
        .call_with(
            "GET",
            uri,
            admin,
            &[host, ("Origin", "https://evil.example.net")],
            Vec::new(),
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_act_as_their_user_within_their_permissions() {
    use axum::http::StatusCode;
    let fixture = Fixture::new().await;
    let admin = Some(ADMIN.0);
    fixture.user("carol").await;
    fixture
        .expect("PUT", "/rest/api/latest/projects/PROJ/repos/api/permissions/users?name=carol&permission=REPO_WRITE", admin, None, 204)
        .await;
    let tokens = "/rest/access-tokens/latest/users/carol";
    // Only carol (or an administrator) manages carol's tokens.
    fixture.user("dave").await;
    fixture.expect("GET", tokens, Some("dave"), None, 403).await;
    for (body, message) in [
        (
            json!({"name": "ci", "permissions": ["REPO_DELETE"]}),
            "unknown token permission \"REPO_DELETE\"",
        ),
        (
            json!({"name": "ci", "permissions": ["REPO_READ", "REPO_WRITE"]}),
            "a token has one project and one repository permission",
        ),
        (
            json!({"name": "ci", "expiryDays": 0}),
            "expiryDays must be from 1 to 3650",
        ),
        (
            json!({"name": " "}),
            "a token needs a name of 1 to 255 printable characters",
        ),
    ] {
        let answer = fixture
            .expect("PUT", tokens, Some("carol"), Some(body), 400)
            .await;
        assert!(
            answer["errors"][0]["message"]
                .as_str()
                .unwrap()
                .starts_with(message),
            "{answer}"
        );
    }
    let read = fixture
        .expect("PUT", tokens, Some("carol"), Some(json!({"name": "read", "permissions": ["PROJECT_READ", "REPO_READ"], "expiryDays": 30})), 200)
        .await;
    let read_token = read["token"].as_str().unwrap().to_string();
    assert_eq!(read_token.len(), 44);
    assert_eq!(read["permissions"], json!(["PROJECT_READ", "REPO_READ"]));
    let write = fixture
        .expect(
            "PUT",
            tokens,
            Some("carol"),
            Some(json!({"name": "write", "permissions": ["REPO_WRITE"]})),
            200,
        )
        .await;
    let write_token = write["token"].as_str().unwrap().to_string();

    let bearer = |token: &str| format!("Bearer {token}");
    let status_uri = "/rest/security/1.0/scan/PROJ/repos/api?branch=main";
    let rescan = "/rest/security/latest/status/projects/PROJ/repos/api";
    let call = |method: &'static str, uri: &'static str, token: String| {
        let fixture = &fixture;
        async move {
            fixture
                .call_with(
                    method,
                    uri,
                    None,
                    &[("Authorization", token.as_str())],
                    Vec::new(),
                )
                .await
                .0
        }
    };
    // A read token reads, and cannot write though its user may.
    assert_eq!(
        call("GET", status_uri, bearer(&read_token)).await,
        StatusCode::OK
    );
    assert_eq!(
        call("PUT", rescan, bearer(&read_token)).await,
        StatusCode::FORBIDDEN
    );
    // A write token writes; nothing beyond its user's own permissions.
    assert_eq!(
        call("PUT", rescan, bearer(&write_token)).await,
        StatusCode::OK
    );
    assert_eq!(
        call("GET", "/rest/security/latest/audit", bearer(&write_token)).await,
        StatusCode::FORBIDDEN
    );
    // Tokens do not manage tokens; an unknown token is a 401.
    assert_eq!(
        call("GET", tokens, bearer(&write_token)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("GET", status_uri, bearer("not-a-token")).await,
        StatusCode::UNAUTHORIZED
    );
    // An administrator's token needs PROJECT_ADMIN for administration.
    let admin_read = fixture
        .expect(
            "PUT",
            "/rest/access-tokens/latest/users/admin",
            admin,
            Some(json!({"name": "ro", "permissions": ["PROJECT_READ"]})),
            200,
        )
        .await;
    let admin_full = fixture
        .expect(
            "PUT",
            "/rest/access-tokens/latest/users/admin",
            admin,
            Some(json!({"name": "rw", "permissions": ["PROJECT_ADMIN"]})),
            200,
        )
        .await;
    let audit = "/rest/security/latest/audit";
    assert_eq!(
        call("GET", audit, bearer(admin_read["token"].as_str().unwrap())).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("GET", audit, bearer(admin_full["token"].as_str().unwrap())).await,
        StatusCode::OK
    );
    // Listed without their values; deleted, a token stops working.
    let listed = fixture
        .expect("GET", tokens, Some("carol"), None, 200)
        .await;
    assert_eq!(listed["size"], 2);
    assert!(!listed.to_string().contains(&read_token));
    assert!(listed["values"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none()));
    let id = read["id"].as_str().unwrap();
    fixture
        .expect(
            "DELETE",
            &format!("{tokens}/{id}"),
            Some("carol"),
            None,
            204,
        )
        .await;
    fixture
        .expect(
            "DELETE",
            &format!("{tokens}/{id}"),
            Some("carol"),
            None,
            404,
        )
        .await;
    assert_eq!(
        call("GET", status_uri, bearer(&read_token)).await,
        StatusCode::UNAUTHORIZED
    );
    // An expired token is refused.
    sqlx::query("update access_tokens set expires_at = now() - interval '1 second'")
        .execute(&fixture.database.pool)
        .await
        .unwrap();
    assert_eq!(
        call("GET", status_uri, bearer(&write_token)).await,
        StatusCode::UNAUTHORIZED
    );
    fixture.finish().await;
}
