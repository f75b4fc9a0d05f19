//! Conformance with the documents the API copies: Soteri's "Security for
//! Bitbucket" REST API and Bitbucket Data Center's secret-scanning REST API.
//! Each test pins one point of the issue tracker where the gateway answered
//! otherwise than the documents say (the regression is named above it).

mod common;

use common::{error_message, Fixture, ADMIN};
use leakscan_engine::rules::{builtin_rules, find_builtin};
use leakscan_store::{catalog::RepoId, jobs};
use serde_json::{json, Value};

const ADMIN_USER: Option<&str> = Some(ADMIN.0);

const AWS_KEY: &str = "AKIAQ3EGRDXW2JUNPTKZ";
const GITHUB_TOKEN: &str = "ghp_q8Zr3VtYw1XbN5cKd7Mf2Lp9Hs4Jg6Ta0Ue1";
const SLACK_TOKEN: &str = "xoxb-2048203948-9384756102-Zq8rT3vY1wXb5NcK7dMf2Lp9";

async fn repository_id(fixture: &Fixture, project: &str, slug: &str) -> RepoId {
    leakscan_store::catalog::find_repository(&fixture.database.pool, project, slug)
        .await
        .unwrap()
        .unwrap()
        .id
}

/// Records findings `(rule id, path, secret)` for `branch` as a scan would,
/// and marks the branch scanned at its head.
async fn plant(
    fixture: &Fixture,
    project: &str,
    slug: &str,
    branch: &str,
    found: &[(&str, &str, &str)],
) {
    let repository = repository_id(fixture, project, slug).await;
    common::plant_findings(fixture, repository, branch, found).await;
}

/// The paths of a scan status's `invalidLines`, sorted.
fn paths_of(status: &Value) -> Vec<String> {
    let mut paths: Vec<String> = status["invalidLines"]
        .as_array()
        .unwrap_or_else(|| panic!("no invalidLines in {status}"))
        .iter()
        .map(|line| line["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    paths
}

/// (status, rows of the CSV without its header) of an export.
async fn export_rows(fixture: &Fixture, uri: &str) -> (u16, Vec<Vec<String>>) {
    let (status, _, body) = fixture
        .call_raw("GET", uri, ADMIN_USER, "text/plain", Vec::new())
        .await;
    if status != 200 {
        return (status.as_u16(), Vec::new());
    }
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let rows = reader
        .records()
        .map(|record| record.unwrap().iter().map(String::from).collect())
        .collect();
    (200, rows)
}

// Issue 1: `GET …/secret-scanning/exempt` answered `{"exempt": false}`.
// Bitbucket Data Center: "200: True if the repository is exempt from
// secret scanning, false otherwise" — the body is the boolean itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_exemption_reads_as_a_bare_boolean() {
    let fixture = Fixture::new().await;
    let exempt = "/rest/api/latest/projects/PROJ/repos/api/secret-scanning/exempt";
    let (_, _, body) = fixture
        .call_raw("GET", exempt, ADMIN_USER, "application/json", Vec::new())
        .await;
    assert_eq!(String::from_utf8(body).unwrap(), "false");
    fixture.expect("PUT", exempt, ADMIN_USER, None, 204).await;
    assert_eq!(
        fixture.expect("GET", exempt, ADMIN_USER, None, 200).await,
        json!(true)
    );
    fixture
        .expect("DELETE", exempt, ADMIN_USER, None, 204)
        .await;
    assert_eq!(
        fixture.expect("GET", exempt, ADMIN_USER, None, 200).await,
        json!(false)
    );
    fixture.finish().await;
}

// Issue 2: boolean query parameters took only `true` / `false`; `True`
// (Python's `str(True)`), `TRUE`, `1` and `0` got a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_query_parameters_take_any_case_and_one_or_zero() {
    let fixture = Fixture::new().await;
    plant(
        &fixture,
        "PROJ",
        "api",
        "main",
        &[
            ("AWS_ACCESS_KEY_ID", "kept.env", AWS_KEY),
            ("GITHUB_PAT_CLASSIC", "reviewed.env", GITHUB_TOKEN),
        ],
    )
    .await;
    let status_uri = "/rest/security/1.0/scan/PROJ/repos/api?branch=main";
    let status = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    let reviewed_id = status["invalidLines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["path"] == "reviewed.env")
        .unwrap()["id"]
        .clone();
    fixture
        .expect(
            "POST",
            "/rest/security/latest/reviewed",
            ADMIN_USER,
            Some(json!({"findingId": reviewed_id})),
            201,
        )
        .await;
    for yes in ["true", "True", "TRUE", "1"] {
        let status = fixture
            .expect(
                "GET",
                &format!("{status_uri}&includeWhitelisted={yes}"),
                ADMIN_USER,
                None,
                200,
            )
            .await;
        assert_eq!(paths_of(&status), ["kept.env", "reviewed.env"], "{yes}");
        let (code, rows) = export_rows(
            &fixture,
            &format!("/rest/security/1.0/export-report/PROJ/repos/api?includeWhitelisted={yes}"),
        )
        .await;
        assert_eq!((code, rows.len()), (200, 2), "{yes}");
    }
    for no in ["false", "False", "FALSE", "0"] {
        let status = fixture
            .expect(
                "GET",
                &format!("{status_uri}&includeWhitelisted={no}"),
                ADMIN_USER,
                None,
                200,
            )
            .await;
        assert_eq!(paths_of(&status), ["kept.env"], "{no}");
        let (code, rows) = export_rows(
            &fixture,
            &format!("/rest/security/latest/export-report/projects/PROJ?includeWhitelisted={no}"),
        )
        .await;
        assert_eq!((code, rows.len()), (200, 1), "{no}");
    }
    // The instance export's confirmation, spelled as a client may.
    let (code, _, _) = fixture
        .call_raw(
            "GET",
            "/rest/security/latest/export-report?confirmExpensiveOperation=TRUE",
            ADMIN_USER,
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(code.as_u16(), 200);
    // Anything else is still a clear 400.
    for bad in ["maybe", "yes", "2"] {
        let error = fixture
            .expect(
                "GET",
                &format!("{status_uri}&includeWhitelisted={bad}"),
                ADMIN_USER,
                None,
                400,
            )
            .await;
        assert!(
            error_message(&error).contains("not a boolean"),
            "{bad}: {error}"
        );
    }
    fixture.finish().await;
}

/// (status, JSON answer) of a request as the admin whose body is `body`,
/// with exactly `headers` (no content type unless they give one).
async fn send(
    fixture: &Fixture,
    method: &str,
    uri: String,
    headers: &[(&str, &str)],
    body: Value,
) -> (axum::http::StatusCode, Value) {
    fixture
        .call_with(
            method,
            &uri,
            ADMIN_USER,
            headers,
            body.to_string().into_bytes(),
        )
        .await
}

// Issue 3: rule, allowlist and exemption bodies without
// `Content-Type: application/json` got 415 (Bitbucket's endpoints consume
// `*/*`, and its curl examples send no JSON content type), and a
// GET → edit → PUT round trip keeping `id` and `scope` got a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_scanning_bodies_need_no_content_type_and_read_only_fields_pass() {
    let fixture = Fixture::new().await;
    let rules = "/rest/api/latest/projects/PROJ/secret-scanning/rules";
    // No content type, and what `curl --data` sends.
    let (status, created) = send(
        &fixture,
        "POST",
        rules.to_string(),
        &[],
        json!({"name": "Delta token", "lineRegex": "dlt_([0-9a-f]{12})"}),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{created}");
    assert_eq!(created["name"], "Delta token");
    let (status, form) = send(
        &fixture,
        "POST",
        rules.to_string(),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        json!({"name": "Echo token", "pathRegex": "\\.echo$"}),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{form}");
    // GET, edit, PUT it all back (with its read-only id and scope).
    let one = format!("{rules}/{}", created["id"]);
    let mut edited = fixture.expect("GET", &one, ADMIN_USER, None, 200).await;
    assert!(
        edited["id"].is_number() && edited["scope"].is_object(),
        "{edited}"
    );
    edited["name"] = json!("Delta token v2");
    let (status, updated) = send(&fixture, "PUT", one.clone(), &[], edited.clone()).await;
    assert_eq!(status.as_u16(), 200, "{updated}");
    assert_eq!(updated["name"], "Delta token v2");
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["lineRegex"], "dlt_([0-9a-f]{12})");
    let (status, _) = fixture
        .call("PUT", &one, ADMIN_USER, Some(edited.clone()))
        .await;
    assert_eq!(status.as_u16(), 200, "with a JSON content type too");
    // Allowlist rules at repository scope, the same way.
    let allowlist = "/rest/api/latest/projects/PROJ/repos/api/secret-scanning/allowlist";
    let (status, allowed) = send(
        &fixture,
        "POST",
        allowlist.to_string(),
        &[],
        json!({"name": "fixtures", "pathRegex": "^fixtures/"}),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{allowed}");
    let (status, round_trip) = send(
        &fixture,
        "PUT",
        format!("{allowlist}/{}", allowed["id"]),
        &[],
        allowed.clone(),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{round_trip}");
    assert_eq!(round_trip, allowed);
    // Bulk exemption without a content type.
    let (status, answer) = send(
        &fixture,
        "POST",
        "/rest/api/latest/projects/PROJ/secret-scanning/exempt".to_string(),
        &[],
        json!([{"projectKey": "PROJ", "slug": "web"}]),
    )
    .await;
    assert_eq!(status.as_u16(), 204, "{answer}");
    let listed = fixture
        .expect(
            "GET",
            "/rest/api/latest/projects/PROJ/secret-scanning/exempt",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(listed["values"][0]["slug"], "web", "{listed}");
    // Still refused: a body that is not JSON, and fields a rule does not have.
    for headers in [&[][..], &[("Content-Type", "text/plain")][..]] {
        let (status, error) = fixture
            .call_with(
                "POST",
                rules,
                ADMIN_USER,
                headers,
                b"name=Foxtrot&lineRegex=abc".to_vec(),
            )
            .await;
        assert_eq!(status.as_u16(), 400, "{error}");
        assert!(error_message(&error).contains("JSON"), "{error}");
    }
    let (status, error) = send(
        &fixture,
        "POST",
        rules.to_string(),
        &[],
        json!({"name": "Golf", "lineRegex": "abc", "colour": "red"}),
    )
    .await;
    assert_eq!(status.as_u16(), 400, "{error}");
    assert!(error_message(&error).contains("colour"), "{error}");
    fixture.finish().await;
}

/// Starts a rescan (`PUT uri`) as the admin, expands it into tasks as a
/// coordinator would, and returns the scan key that the status of
/// `PROJ/api`'s main branch then shows, checking it is the job's.
async fn start_and_show(fixture: &Fixture, uri: &str) -> String {
    let pool = &fixture.database.pool;
    let job = fixture.expect("PUT", uri, ADMIN_USER, None, 200).await;
    let key = job["scanKey"].as_str().unwrap().to_string();
    let id = jobs::find_job(pool, &key).await.unwrap().unwrap().id;
    assert!(jobs::expand_job(pool, id).await.unwrap() > 0);
    let status = fixture
        .expect(
            "GET",
            "/rest/security/1.0/scan/PROJ/repos/api?branch=main",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(status["scanKey"].as_str(), Some(key.as_str()), "{status}");
    key
}

// Issue 5: cancelling with the `scanKey` that `GET /scan/…` showed answered
// 404 when the key was a total, project or repository rescan's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_key_a_status_shows_cancels_its_job_whatever_its_scope() {
    let fixture = Fixture::new().await;
    let pool = &fixture.database.pool;
    fixture.user("bob").await;
    fixture
        .expect("PUT", "/rest/api/latest/projects/PROJ/repos/api/permissions/users?name=bob&permission=REPO_WRITE", ADMIN_USER, None, 204)
        .await;
    let cancel = |key: &str| format!("/rest/security/1.0/scan/PROJ/repos/api?scanKey={key}");
    let state_of =
        |key: String| async move { jobs::find_job(pool, &key).await.unwrap().unwrap().state };
    for uri in [
        "/rest/security/latest/status/projects/PROJ/repos/api",
        "/rest/security/latest/status/projects/PROJ",
        "/rest/security/latest/status/total_rescan",
    ] {
        let key = start_and_show(&fixture, uri).await;
        // A repository writer may not cancel a rescan broader than the
        // repository: that takes what starting it took.
        let bob = if uri.ends_with("/repos/api") {
            204
        } else {
            403
        };
        fixture
            .expect("DELETE", &cancel(&key), Some("bob"), None, bob)
            .await;
        if bob != 204 {
            assert_eq!(state_of(key.clone()).await, "running", "{uri}");
            fixture
                .expect("DELETE", &cancel(&key), ADMIN_USER, None, 204)
                .await;
        }
        assert_eq!(state_of(key).await, "cancelled", "{uri}");
    }
    // A job that does not scan this repository is still not found here.
    let other = fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/OTHER",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let other = other["scanKey"].as_str().unwrap();
    fixture
        .expect("DELETE", &cancel(other), ADMIN_USER, None, 404)
        .await;
    assert_eq!(state_of(other.to_string()).await, "queued");
    fixture.finish().await;
}

// Issue 7: Soteri's `export-report/{p}/repos/{r}` without `branch`
// exported every branch; Soteri exports the default branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soteri_export_without_a_branch_is_the_default_branchs() {
    let fixture = Fixture::new().await;
    plant(
        &fixture,
        "PROJ",
        "api",
        "main",
        &[("AWS_ACCESS_KEY_ID", "main.env", AWS_KEY)],
    )
    .await;
    plant(
        &fixture,
        "PROJ",
        "api",
        "dev",
        &[("SLACK_BOT_TOKEN", "dev.env", SLACK_TOKEN)],
    )
    .await;
    let uri = "/rest/security/1.0/export-report/PROJ/repos/api";
    let (status, rows) = export_rows(&fixture, uri).await;
    assert_eq!(status, 200);
    let branches_and_paths: Vec<(&str, &str)> = rows
        .iter()
        .map(|row| (row[5].as_str(), row[7].as_str()))
        .collect();
    assert_eq!(branches_and_paths, [("main", "main.env")]);
    let (_, rows) = export_rows(&fixture, &format!("{uri}?branch=dev")).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0][5].as_str(), rows[0][7].as_str()),
        ("dev", "dev.env")
    );
    fixture.finish().await;
}

// Issue 10: a user with the security grant got 404 on a project rescan;
// Soteri: "If you are a project administrator or higher (Bitbucket admin,
// explicitly granted Security for Bitbucket permissions), you can scan all
// the branches of all the repositories in a project".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_grant_may_rescan_any_project() {
    let fixture = Fixture::new().await;
    fixture.user("sec").await;
    fixture.user("nobody").await;
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/permissions/users?name=sec",
            ADMIN_USER,
            None,
            204,
        )
        .await;
    let job = fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/PROJ?email=sec@example.com",
            Some("sec"),
            None,
            200,
        )
        .await;
    assert_eq!(
        (job["scope"].as_str(), job["project"].as_str()),
        (Some("project"), Some("PROJ"))
    );
    assert_eq!(job["requestedBy"], "sec");
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/NOPE",
            Some("sec"),
            None,
            404,
        )
        .await;
    // Without the grant nothing changed: a hidden project is still 404.
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/PROJ",
            Some("nobody"),
            None,
            404,
        )
        .await;
    fixture.finish().await;
}

// Issue 11: `rule` / `ruleType` ignored the built-in rules' aliases (Soteri's
// names, such as `RSA` and `AWS_CLIENT_ID`) and answered an empty list for
// a rule that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_filters_take_rule_aliases_and_refuse_unknown_rules() {
    let fixture = Fixture::new().await;
    let aws = &find_builtin("AWS_CLIENT_ID").expect("Soteri's alias").id;
    let rsa = &find_builtin("RSA").expect("Soteri's alias").id;
    assert_ne!(aws, "AWS_CLIENT_ID");
    plant(
        &fixture,
        "PROJ",
        "api",
        "main",
        &[
            (aws, "aws.env", AWS_KEY),
            (rsa, "id_rsa", SLACK_TOKEN),
            ("GITHUB_PAT_CLASSIC", "github.env", GITHUB_TOKEN),
        ],
    )
    .await;
    let status_uri = "/rest/security/1.0/scan/PROJ/repos/api?branch=main";
    for (rule, expected) in [
        ("AWS_CLIENT_ID", "aws.env"),
        ("aws_client_id", "aws.env"),
        (aws.as_str(), "aws.env"),
        ("RSA", "id_rsa"),
        (rsa.as_str(), "id_rsa"),
    ] {
        let status = fixture
            .expect(
                "GET",
                &format!("{status_uri}&rule={rule}"),
                ADMIN_USER,
                None,
                200,
            )
            .await;
        assert_eq!(paths_of(&status), [expected], "rule={rule}");
        let (code, rows) = export_rows(
            &fixture,
            &format!("/rest/security/1.0/export-report/PROJ/repos/api?ruleType={rule}"),
        )
        .await;
        assert_eq!(code, 200);
        let paths: Vec<&str> = rows.iter().map(|row| row[7].as_str()).collect();
        assert_eq!(paths, [expected], "ruleType={rule}");
    }
    // A custom rule of the repository's scopes with no findings: an empty list.
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/secret-scanning/rules",
            ADMIN_USER,
            Some(json!({"name": "INTERNAL_TOKEN", "lineRegex": "int_[0-9]{6}"})),
            200,
        )
        .await;
    let status = fixture
        .expect(
            "GET",
            &format!("{status_uri}&rule=INTERNAL_TOKEN"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(status["invalidLines"], json!([]));
    // An unknown rule is a mistake, said so.
    let error = fixture
        .expect(
            "GET",
            &format!("{status_uri}&rule=NO_SUCH_RULE"),
            ADMIN_USER,
            None,
            400,
        )
        .await;
    assert!(
        error_message(&error).contains("unknown rule \"NO_SUCH_RULE\""),
        "{error}"
    );
    let (code, _) = export_rows(
        &fixture,
        "/rest/security/1.0/export-report/PROJ/repos/api?ruleType=NO_SUCH_RULE",
    )
    .await;
    assert_eq!(code, 400);
    fixture.finish().await;
}

// Issue 12: deleting an id that is not a rule of the project answered 404;
// Bitbucket Data Center documents the project scope's delete as "204:
// Empty response indicating that the rule was deleted, or not found at
// this location".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_rule_the_project_does_not_have_answers_empty() {
    let fixture = Fixture::new().await;
    for noun in ["rules", "allowlist"] {
        let elsewhere = fixture
            .expect(
                "POST",
                &format!("/rest/api/latest/projects/OTHER/secret-scanning/{noun}"),
                ADMIN_USER,
                Some(json!({"name": "elsewhere", "pathRegex": "^x/"})),
                200,
            )
            .await;
        let here = format!("/rest/api/latest/projects/PROJ/secret-scanning/{noun}");
        for id in ["999999".to_string(), elsewhere["id"].to_string()] {
            let (status, _, body) = fixture
                .call_raw(
                    "DELETE",
                    &format!("{here}/{id}"),
                    ADMIN_USER,
                    "application/json",
                    Vec::new(),
                )
                .await;
            assert_eq!((status.as_u16(), body.len()), (204, 0), "{noun} {id}");
        }
        // The other project's rule is untouched.
        fixture
            .expect(
                "GET",
                &format!(
                    "/rest/api/latest/projects/OTHER/secret-scanning/{noun}/{}",
                    elsewhere["id"]
                ),
                ADMIN_USER,
                None,
                200,
            )
            .await;
        // Permissions and unknown projects answer as before.
        fixture
            .expect("DELETE", &format!("{here}/999999"), None, None, 401)
            .await;
        fixture
            .expect(
                "DELETE",
                &format!("/rest/api/latest/projects/NOPE/secret-scanning/{noun}/999999"),
                ADMIN_USER,
                None,
                404,
            )
            .await;
    }
    fixture.finish().await;
}

// Issue 13: `GET /rules` named every built-in rule by its id; the name is
// the rule's display name (the id stays as it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soteri_rules_name_built_in_rules_by_their_display_name() {
    let fixture = Fixture::new().await;
    let rules = fixture
        .expect("GET", "/rest/security/1.0/rules", ADMIN_USER, None, 200)
        .await;
    let listed = rules.as_array().unwrap();
    let hardcoded: Vec<&Value> = listed.iter().filter(|r| r["hardcoded"] == true).collect();
    assert_eq!(hardcoded.len(), builtin_rules().len());
    for (rule, spec) in hardcoded.iter().zip(builtin_rules()) {
        assert_eq!(rule["id"], spec.id.as_str());
        assert_eq!(rule["name"], spec.name.as_str(), "{rule}");
    }
    let aws = listed
        .iter()
        .find(|rule| rule["id"] == "AWS_ACCESS_KEY_ID")
        .unwrap();
    assert_ne!(aws["name"], aws["id"], "{aws}");
    assert!(!aws["name"].as_str().unwrap().is_empty());
    // The switch answers with the same shape.
    let off = fixture
        .expect(
            "DELETE",
            "/rest/security/1.0/hardcoded/AWS_CLIENT_ID",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        (
            off["id"].clone(),
            off["name"].clone(),
            off["enabled"].clone()
        ),
        (aws["id"].clone(), aws["name"].clone(), json!(false))
    );
    fixture.finish().await;
}

/// `project/slug` of each value of a page of repository objects.
fn repository_names(page: &Value) -> Vec<String> {
    page["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no values in {page}"))
        .iter()
        .map(|repository| {
            format!(
                "{}/{}",
                repository["project"]["key"].as_str().unwrap_or("?"),
                repository["slug"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

// Issue 4: the exempt lists ignored `order` and held leakscan's flat
// repository rows (`projectKey`, `cloneUrl`). Bitbucket Data Center: the
// answer is a "Page of repositories" (its repository object: `slug`, `id`,
// `name`, `scmId`, `state`, `forkable`, `public`, `project` with `key`,
// `id`, `name`, `public`, `type`, and `links`), and `order` is "Order by
// project name followed by repository name either ascending or descending,
// defaults to ascending" (`NAME_ASC`, `NAME_DESC`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_lists_are_bitbucket_repositories_in_the_documented_order() {
    let fixture = Fixture::new().await;
    let source = fixture.root.join("PROJ/api.git").display().to_string();
    // Regression (issue 14, point 15): the document limits a project's
    // name to 255 characters, and the handler now does too.
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects",
            ADMIN_USER,
            Some(json!({"key": "LONG", "name": "n".repeat(256)})),
            400,
        )
        .await;
    // Two projects whose names sort otherwise than their keys.
    for (key, name) in [("AAA", "Zulu tools"), ("ZZZ", "Alpha tools")] {
        fixture
            .expect(
                "POST",
                "/rest/api/latest/projects",
                ADMIN_USER,
                Some(json!({"key": key, "name": name})),
                201,
            )
            .await;
        fixture
            .expect(
                "POST",
                &format!("/rest/api/latest/projects/{key}/repos"),
                ADMIN_USER,
                Some(json!({"name": "lib", "cloneUrl": source})),
                201,
            )
            .await;
    }
    fixture
        .expect(
            "POST",
            "/rest/api/latest/secret-scanning/exempt",
            ADMIN_USER,
            Some(json!([
                {"projectKey": "AAA", "slug": "lib"},
                {"projectKey": "PROJ", "slug": "web"},
                {"projectKey": "ZZZ", "slug": "lib"},
                {"projectKey": "PROJ", "slug": "api"},
            ])),
            204,
        )
        .await;
    let global = "/rest/api/latest/secret-scanning/exempt";
    let ascending = ["ZZZ/lib", "PROJ/api", "PROJ/web", "AAA/lib"];
    for uri in [global.to_string(), format!("{global}?order=NAME_ASC")] {
        let page = fixture.expect("GET", &uri, ADMIN_USER, None, 200).await;
        assert_eq!(repository_names(&page), ascending, "{uri}");
    }
    let descending: Vec<&str> = ascending.iter().rev().copied().collect();
    let page = fixture
        .expect(
            "GET",
            &format!("{global}?order=NAME_DESC"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(repository_names(&page), descending);
    // Paged in that order, in Bitbucket's envelope.
    let first = fixture
        .expect(
            "GET",
            &format!("{global}?order=NAME_DESC&limit=3"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(repository_names(&first), descending[..3]);
    assert_eq!(
        (
            first["size"].clone(),
            first["limit"].clone(),
            first["start"].clone(),
            first["isLastPage"].clone(),
            first["nextPageStart"].clone()
        ),
        (json!(3), json!(3), json!(0), json!(false), json!(3))
    );
    let rest = fixture
        .expect(
            "GET",
            &format!("{global}?order=NAME_DESC&start=3&limit=3"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(repository_names(&rest), descending[3..]);
    assert_eq!(rest["isLastPage"], true);
    // The project scope, the same way.
    let project = "/rest/api/latest/projects/PROJ/secret-scanning/exempt";
    let page = fixture
        .expect(
            "GET",
            &format!("{project}?order=NAME_DESC"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(repository_names(&page), ["PROJ/web", "PROJ/api"]);
    // Bitbucket's repository object, not leakscan's row.
    let api = page["values"][1].clone();
    let id = repository_id(&fixture, "PROJ", "api").await;
    assert_eq!(api["id"], json!(id.0), "{api}");
    for (field, expected) in [
        ("slug", json!("api")),
        ("name", json!("api")),
        ("scmId", json!("git")),
        ("state", json!("AVAILABLE")),
        ("public", json!(false)),
    ] {
        assert_eq!(api[field], expected, "{field} in {api}");
    }
    assert!(api["forkable"].is_boolean(), "{api}");
    assert!(
        api.get("projectKey").is_none() && api.get("cloneUrl").is_none(),
        "{api}"
    );
    let owner = &api["project"];
    assert!(owner["id"].is_i64(), "{api}");
    assert_eq!(
        (
            owner["key"].clone(),
            owner["name"].clone(),
            owner["public"].clone(),
            owner["type"].clone()
        ),
        (json!("PROJ"), json!("PROJ"), json!(false), json!("NORMAL"))
    );
    let clone = &api["links"]["clone"][0];
    assert_eq!(clone["name"], "file", "{api}");
    assert!(
        clone["href"].as_str().unwrap().starts_with("file:///"),
        "{api}"
    );
    let zzz = fixture
        .expect(
            "GET",
            "/rest/api/latest/projects/ZZZ/secret-scanning/exempt",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(zzz["values"][0]["project"]["name"], "Alpha tools");
    // Any other order is a mistake, said so.
    for uri in [
        format!("{global}?order=SIZE"),
        format!("{project}?order=name_asc"),
    ] {
        let error = fixture.expect("GET", &uri, ADMIN_USER, None, 400).await;
        assert!(
            error_message(&error).contains("NAME_ASC or NAME_DESC"),
            "{uri}: {error}"
        );
    }
    fixture.finish().await;
}

/// (scanKey, scheduled, running) of a branch's Soteri scan status.
async fn scan_state(fixture: &Fixture, slug: &str, branch: &str) -> (Value, Value, Value) {
    let status = fixture
        .expect(
            "GET",
            &format!("/rest/security/1.0/scan/PROJ/repos/{slug}?branch={branch}"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    (
        status["scanKey"].clone(),
        status["scheduled"].clone(),
        status["running"].clone(),
    )
}

// Issue 6: right after a scan request (`POST /scan/…`, `PUT …/status/…`)
// and until a coordinator expanded the job into branch tasks, `GET
// /scan/…` said `scheduled: false, running: false` with the previous
// scanKey, so a Soteri client polling "while running or scheduled" stopped
// at once. The branch is scheduled, under the new key, from the moment the
// request is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_scan_reads_scheduled_before_the_coordinator_expands_it() {
    let fixture = Fixture::new().await;
    let pool = &fixture.database.pool;
    let scheduled = |key: &str| (json!(key), json!(true), json!(false));
    // Soteri's branch scan.
    let started = fixture
        .expect(
            "POST",
            "/rest/security/1.0/scan/PROJ/repos/api?branch=main",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let branch_key = started["scanKey"].as_str().unwrap().to_string();
    assert_eq!(
        scan_state(&fixture, "api", "main").await,
        scheduled(&branch_key)
    );
    // The repository's other branches are not in that job.
    assert_eq!(scan_state(&fixture, "api", "dev").await.1, json!(false));
    // A project rescan (Soteri's mass scanning), not expanded either: every
    // branch of every repository of the project, under the newer key.
    let job = fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/PROJ",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let project_key = job["scanKey"].as_str().unwrap().to_string();
    for (slug, branch) in [("api", "main"), ("api", "dev"), ("web", "main")] {
        assert_eq!(
            scan_state(&fixture, slug, branch).await,
            scheduled(&project_key),
            "{slug} {branch}"
        );
    }
    // Once expanded, the job's tasks say the same.
    for key in [&branch_key, &project_key] {
        let id = jobs::find_job(pool, key).await.unwrap().unwrap().id;
        assert!(jobs::expand_job(pool, id).await.unwrap() > 0);
    }
    assert_eq!(
        scan_state(&fixture, "api", "main").await,
        scheduled(&project_key)
    );
    // A total rescan skips exempt repositories, as its expansion will.
    fixture
        .expect(
            "PUT",
            "/rest/api/latest/projects/PROJ/repos/web/secret-scanning/exempt",
            ADMIN_USER,
            None,
            204,
        )
        .await;
    let job = fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/total_rescan",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let total_key = job["scanKey"].as_str().unwrap().to_string();
    assert_eq!(
        scan_state(&fixture, "api", "dev").await,
        scheduled(&total_key)
    );
    assert_eq!(
        scan_state(&fixture, "web", "main").await.0,
        json!(project_key),
        "an exempt repository is not in a total rescan"
    );
    // A repository rescan elsewhere does not touch this repository.
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/OTHER/repos/tool",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        scan_state(&fixture, "api", "main").await,
        scheduled(&total_key)
    );
    // Cancelled before it was expanded: the branch reads what it was.
    fixture
        .expect(
            "DELETE",
            &format!("/rest/security/1.0/scan/PROJ/repos/api?scanKey={total_key}"),
            ADMIN_USER,
            None,
            204,
        )
        .await;
    assert_eq!(
        scan_state(&fixture, "api", "main").await,
        scheduled(&project_key)
    );
    fixture.finish().await;
}

/// The paths of an export's rows (header left out), in order.
fn row_paths(rows: &[Vec<String>]) -> Vec<&str> {
    rows.iter().map(|row| row[7].as_str()).collect()
}

// Issue 8: `startDate` / `endDate` filtered on the commit date and the
// instance export (zip) ignored them. Soteri: the export holds the lines
// scanned in that period, i.e. the findings' scan date; dates are ISO 8601
// dates or date-times as in the document's example (`2023-01-31T10:00:00`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_dates_select_findings_by_scan_date_in_every_export() {
    let fixture = Fixture::new().await;
    let pool = &fixture.database.pool;
    plant(
        &fixture,
        "PROJ",
        "api",
        "main",
        &[
            ("AWS_ACCESS_KEY_ID", "old-commit.env", AWS_KEY),
            ("GITHUB_PAT_CLASSIC", "new-commit.env", GITHUB_TOKEN),
        ],
    )
    .await;
    // An old commit scanned in January, a January commit scanned in March.
    for (path, commit_date, scan_date) in [
        (
            "old-commit.env",
            "2020-01-10T00:00:00Z",
            "2023-01-15T10:00:00Z",
        ),
        (
            "new-commit.env",
            "2023-01-20T00:00:00Z",
            "2023-03-01T08:00:00Z",
        ),
    ] {
        sqlx::query(
            "update findings set commit_date = $2::timestamptz, scan_date = $3::timestamptz
             where path = $1",
        )
        .bind(path)
        .bind(commit_date)
        .bind(scan_date)
        .execute(pool)
        .await
        .unwrap();
    }
    let project = "/rest/security/latest/export-report/projects/PROJ";
    let repository = format!("{project}/repos/api");
    for (query, expected) in [
        (
            "startDate=2023-01-01&endDate=2023-01-31",
            &["old-commit.env"][..],
        ),
        ("startDate=2023-02-01", &["new-commit.env"][..]),
        (
            "startDate=2023-01-15T09:00:00&endDate=2023-01-15T11:00:00",
            &["old-commit.env"][..],
        ),
        ("startDate=2023-01-15T10:30:00", &["new-commit.env"][..]),
        (
            "startDate=2023-01-15%2010:00",
            &["new-commit.env", "old-commit.env"][..],
        ),
        ("endDate=2023-01-15T10:00:00Z", &[][..]),
        (
            "startDate=2023-03-01T09:00:00%2B02:00",
            &["new-commit.env"][..],
        ),
        // A `+` a client left unencoded arrives as a space.
        (
            "startDate=2023-03-01T09:00:00+02:00",
            &["new-commit.env"][..],
        ),
        ("startDate=2023-03-01T10:00:00.5%2B02:00", &[][..]),
    ] {
        for uri in [project.to_string(), repository.clone()] {
            let (status, rows) = export_rows(&fixture, &format!("{uri}?{query}")).await;
            assert_eq!(status, 200, "{uri}?{query}");
            let mut paths = row_paths(&rows);
            paths.sort();
            assert_eq!(paths, expected, "{uri}?{query}");
        }
    }
    let (_, rows) = export_rows(&fixture, &format!("{project}?endDate=2023-02-01")).await;
    assert_eq!(rows[0][12], "2023-01-15T10:00:00+00:00", "{rows:?}");
    // The instance export takes them too.
    let caller = &fixture;
    let zip_paths = |query: &'static str| async move {
        let (status, _, body) = caller
            .call_raw(
                "GET",
                &format!(
                    "/rest/security/latest/export-report?confirmExpensiveOperation=true{query}"
                ),
                ADMIN_USER,
                "text/plain",
                Vec::new(),
            )
            .await;
        assert_eq!(status.as_u16(), 200, "{query}");
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).unwrap();
        let entry = archive.by_name("PROJ/api.csv").unwrap();
        let mut reader = csv::Reader::from_reader(entry);
        let mut paths: Vec<String> = reader
            .records()
            .map(|record| record.unwrap()[7].to_string())
            .collect();
        paths.sort();
        paths
    };
    assert_eq!(zip_paths("").await, ["new-commit.env", "old-commit.env"]);
    assert_eq!(
        zip_paths("&startDate=2023-01-01&endDate=2023-01-31").await,
        ["old-commit.env"]
    );
    assert_eq!(
        zip_paths("&startDate=2023-02-01T00:00:00").await,
        ["new-commit.env"]
    );
    // Anything else is a clear 400 naming the forms.
    for uri in [
        format!("{project}?startDate=31/01/2023"),
        format!("{repository}?endDate=2023-01-31T25:00:00"),
        "/rest/security/latest/export-report?confirmExpensiveOperation=true&startDate=soon"
            .to_string(),
        "/rest/security/latest/export-report?confirmExpensiveOperation=true&startDate=2023-02-01&endDate=2023-01-01"
            .to_string(),
    ] {
        let error = fixture.expect("GET", &uri, ADMIN_USER, None, 400).await;
        let message = error_message(&error);
        assert!(
            message.contains("2023-01-31T10:00:00") || message.contains("after endDate"),
            "{uri}: {error}"
        );
    }
    fixture.finish().await;
}

// Issue 9: Code Insights lists in Bitbucket Cloud's shape gave `next` as a
// bare query string and never `previous`; Bitbucket Cloud's paged
// responses give "Link to the next page if it exists" and "Link to
// previous page if it exists", absolute URLs a client follows as they are.
// And a data field without `type` took only a string; both documents take
// a number, a string or a boolean there ("Number, String or Boolean (not
// an array or object)").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insight_pages_link_absolutely_and_untyped_data_takes_raw_values() {
    let fixture = Fixture::new().await;
    let commit = "4f1c2a9be07d3c58a6f2e91d0b7c4a3e5d6f8a01";
    let reports = format!("/2.0/repositories/PROJ/api/commit/{commit}/reports");
    let dc_reports =
        format!("/rest/insights/latest/projects/PROJ/repos/api/commits/{commit}/reports");
    let untyped = json!([
        {"title": "Findings", "value": 3},
        {"title": "Safe to merge", "value": false},
        {"title": "Coverage", "value": 87.5},
        {"title": "Scanner", "value": "leakscan"},
    ]);
    for uri in [format!("{reports}/scan-1"), format!("{dc_reports}/scan-2")] {
        let stored = fixture
            .expect(
                "PUT",
                &uri,
                ADMIN_USER,
                Some(json!({"title": "Secret scan", "data": untyped})),
                200,
            )
            .await;
        assert_eq!(stored["data"], untyped, "{uri}");
        let read = fixture.expect("GET", &uri, ADMIN_USER, None, 200).await;
        assert_eq!(read["data"], untyped, "{uri}");
    }
    // Not an array, an object or null; a type still checks its value.
    for value in [json!([1, 2]), json!({"a": 1}), Value::Null] {
        let error = fixture
            .expect(
                "PUT",
                &format!("{reports}/scan-3"),
                ADMIN_USER,
                Some(json!({"title": "t", "data": [{"title": "x", "value": value}]})),
                400,
            )
            .await;
        assert!(
            error_message(&error).contains("a number, a string or a boolean"),
            "{value}: {error}"
        );
    }
    fixture
        .expect(
            "PUT",
            &format!("{reports}/scan-3"),
            ADMIN_USER,
            Some(json!({"title": "t", "data": [{"title": "x", "type": "NUMBER", "value": "3"}]})),
            400,
        )
        .await;

    // 25 annotations, 10 a page: links as the client reached the API.
    let annotations: Vec<Value> = (0..25)
        .map(|id| {
            json!({
                "external_id": format!("ann-{id:02}"),
                "annotation_type": "VULNERABILITY",
                "summary": format!("finding {id}"),
            })
        })
        .collect();
    fixture
        .expect(
            "POST",
            &format!("{reports}/scan-1/annotations"),
            ADMIN_USER,
            Some(Value::Array(annotations)),
            200,
        )
        .await;
    let proxied = [
        ("Host", "internal:7990"),
        ("X-Forwarded-Host", "bitbucket.example.com"),
        ("X-Forwarded-Proto", "https"),
    ];
    let page_url = |page: u32| {
        format!("https://bitbucket.example.com{reports}/scan-1/annotations?page={page}&pagelen=10")
    };
    let mut uri = format!("{reports}/scan-1/annotations?pagelen=10");
    let mut seen = Vec::new();
    for page in 1..=3u32 {
        let (status, body) = fixture
            .call_with("GET", &uri, ADMIN_USER, &proxied, Vec::new())
            .await;
        assert_eq!(status.as_u16(), 200, "{uri}: {body}");
        assert_eq!(body["page"], page, "{body}");
        let previous = (page > 1).then(|| json!(page_url(page - 1)));
        let next = (page < 3).then(|| json!(page_url(page + 1)));
        assert_eq!(body.get("previous").cloned(), previous, "page {page}");
        assert_eq!(body.get("next").cloned(), next, "page {page}");
        seen.extend(
            body["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|annotation| annotation["external_id"].as_str().unwrap().to_string()),
        );
        // Follow `next` as it is given.
        if let Some(next) = body["next"].as_str() {
            uri = next
                .strip_prefix("https://bitbucket.example.com")
                .unwrap()
                .to_string();
        }
    }
    let expected: Vec<String> = (0..25).map(|id| format!("ann-{id:02}")).collect();
    assert_eq!(seen, expected);
    // Without a proxy: the Host the client sent.
    let (_, body) = fixture
        .call_with(
            "GET",
            &format!("{reports}?pagelen=1"),
            ADMIN_USER,
            &[("Host", "leakscan.local:7990")],
            Vec::new(),
        )
        .await;
    assert_eq!(
        body["next"],
        format!("http://leakscan.local:7990{reports}?page=2&pagelen=1")
    );
    assert!(body.get("previous").is_none(), "{body}");
    fixture.finish().await;
}

/// (status, JSON answer) of a CSV review import as the admin.
async fn import_reviews(fixture: &Fixture, csv: Vec<u8>) -> (u16, Value) {
    let (status, _, body) = fixture
        .call_raw(
            "POST",
            "/rest/security/latest/reviewed/import",
            ADMIN_USER,
            "text/csv",
            csv,
        )
        .await;
    (
        status.as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

// Issue 14: the reviewed-secrets export wrote only redacted secrets
// (`AKIA…`), which the import then hashed as if they were secrets: a
// re-import answered success and made reviews that hide nothing. The
// export now carries the keyed hash each review matches (`secretHash`) and
// the import takes it, so export → import restores the same reviews (scope,
// repository, rule, comment); plain secrets still import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_reviews_import_back_as_the_same_reviews() {
    let fixture = Fixture::new().await;
    plant(
        &fixture,
        "PROJ",
        "api",
        "main",
        &[
            ("AWS_ACCESS_KEY_ID", "aws.env", AWS_KEY),
            ("SLACK_BOT_TOKEN", "slack.env", SLACK_TOKEN),
        ],
    )
    .await;
    plant(
        &fixture,
        "PROJ",
        "web",
        "main",
        &[("GITHUB_PAT_CLASSIC", "github.env", GITHUB_TOKEN)],
    )
    .await;
    let status_of =
        |slug: &'static str| format!("/rest/security/1.0/scan/PROJ/repos/{slug}?branch=main");
    let finding_id = |status: &Value, path: &str| {
        status["invalidLines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|line| line["path"] == path)
            .unwrap()["id"]
            .clone()
    };
    let api = fixture
        .expect("GET", &status_of("api"), ADMIN_USER, None, 200)
        .await;
    let web = fixture
        .expect("GET", &status_of("web"), ADMIN_USER, None, 200)
        .await;
    // A global review and a repository's review.
    let global = fixture
        .expect(
            "POST",
            "/rest/security/latest/reviewed",
            ADMIN_USER,
            Some(json!({"findingId": finding_id(&api, "aws.env"), "comment": "test key"})),
            201,
        )
        .await;
    let in_web = fixture
        .expect(
            "POST",
            "/rest/security/latest/reviewed/projects/PROJ/repos/web",
            ADMIN_USER,
            Some(json!({"findingId": finding_id(&web, "github.env"), "comment": "fixture"})),
            201,
        )
        .await;
    let (status, _, exported) = fixture
        .call_raw(
            "GET",
            "/rest/security/latest/export/reviewed",
            ADMIN_USER,
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    let text = String::from_utf8(exported.clone()).unwrap();
    assert!(
        !text.contains(AWS_KEY) && !text.contains(GITHUB_TOKEN),
        "{text}"
    );
    let mut reader = csv::Reader::from_reader(exported.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert!(header.contains(&"secretHash".to_string()), "{header:?}");
    assert_eq!(reader.records().count(), 2);
    // Unmark both: the findings show again.
    for review in [&global, &in_web] {
        fixture
            .expect(
                "DELETE",
                &format!("/rest/security/latest/reviewed/{}", review["id"]),
                ADMIN_USER,
                None,
                204,
            )
            .await;
    }
    let shown = |slug: &'static str| {
        let caller = &fixture;
        async move {
            let status = caller
                .expect("GET", &status_of(slug), ADMIN_USER, None, 200)
                .await;
            paths_of(&status)
        }
    };
    assert_eq!(shown("api").await, ["aws.env", "slack.env"]);
    assert_eq!(shown("web").await, ["github.env"]);
    // The export, imported as it is, hides them again.
    assert_eq!(
        import_reviews(&fixture, exported.clone()).await,
        (200, json!({"imported": 2, "skipped": 0}))
    );
    assert_eq!(shown("api").await, ["slack.env"]);
    assert_eq!(shown("web").await, Vec::<String>::new());
    let listed = fixture
        .expect(
            "GET",
            "/rest/security/latest/reviewed",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let mut restored: Vec<(Value, Value, Value, Value, Value, Value)> = listed["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|review| {
            (
                review["scope"].clone(),
                review["project"].clone(),
                review["repository"].clone(),
                review["rule"].clone(),
                review["secret"].clone(),
                review["comment"].clone(),
            )
        })
        .collect();
    restored.sort_by_key(|review| review.0.to_string());
    let original = |review: &Value| {
        (
            review["scope"].clone(),
            review["project"].clone(),
            review["repository"].clone(),
            review["rule"].clone(),
            review["secret"].clone(),
            review["comment"].clone(),
        )
    };
    assert_eq!(restored, [original(&global), original(&in_web)]);
    // Again: nothing new.
    assert_eq!(
        import_reviews(&fixture, exported).await,
        (200, json!({"imported": 0, "skipped": 2}))
    );
    // Plain secrets still import (global reviews).
    assert_eq!(
        import_reviews(
            &fixture,
            format!("secret,comment\n{SLACK_TOKEN},plain\n").into_bytes()
        )
        .await,
        (200, json!({"imported": 1, "skipped": 0}))
    );
    assert_eq!(shown("api").await, Vec::<String>::new());
    // A redacted secret (an export without its hashes) is refused, not
    // turned into a review that hides nothing; so are bad hashes and
    // repositories that do not exist. Nothing of a refused file is kept.
    let before = fixture
        .expect(
            "GET",
            "/rest/security/latest/reviewed",
            ADMIN_USER,
            None,
            200,
        )
        .await["size"]
        .clone();
    let hash = "ab".repeat(32);
    for (csv, needle) in [
        ("secret,comment\nAKIA…,old export\n".to_string(), "redacted"),
        (
            "scope,project,repository,secret,secretHash\nGLOBAL,,,AKIA…,xyz\n".to_string(),
            "secretHash",
        ),
        (
            format!("scope,project,repository,secret,secretHash\nGLOBAL,,,ghp_…,{hash}\nREPOSITORY,PROJ,nope,AKIA…,{hash}\n"),
            "PROJ/nope",
        ),
        (
            format!("scope,secretHash\nPROJECT,{hash}\n"),
            "GLOBAL or REPOSITORY",
        ),
    ] {
        let (status, error) = import_reviews(&fixture, csv.into_bytes()).await;
        assert_eq!(status, 400, "{error}");
        assert!(error_message(&error).contains(needle), "{error}");
    }
    let after = fixture
        .expect(
            "GET",
            "/rest/security/latest/reviewed",
            ADMIN_USER,
            None,
            200,
        )
        .await["size"]
        .clone();
    assert_eq!(after, before);
    fixture.finish().await;
}

// Issue 13: a branch whose scan failed read `progress 100, scanned false,
// running false` with no hint of an error. The status now says why
// (`lastError`, beside Soteri's fields), the job lists its failed tasks,
// and neither shows credentials the error quoted from a clone URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_scan_says_why_without_the_credentials_it_quoted() {
    use leakscan_store::tasks::{self, AfterFailure, Parallelism};

    let fixture = Fixture::new().await;
    let pool = &fixture.database.pool;
    let status_uri = "/rest/security/1.0/scan/PROJ/repos/api?branch=main";
    let started = fixture
        .expect("POST", status_uri, ADMIN_USER, None, 200)
        .await;
    let scan_key = started["scanKey"].as_str().unwrap().to_string();
    let job = jobs::find_job(pool, &scan_key).await.unwrap().unwrap();
    assert_eq!(jobs::expand_job(pool, job.id).await.unwrap(), 1);
    let limits = Parallelism {
        instance: 10,
        per_worker: 10,
    };
    let leased = tasks::lease_next_task(pool, "worker", 30_000, limits)
        .await
        .unwrap()
        .expect("the branch's task");
    let before = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert_eq!(before["running"], json!(true));
    assert!(before.get("lastError").is_none(), "{before}");
    let error = "clone https://bob:hunter2-9f8e@git.example.com/acme/api.git: \
                 fatal: Authentication failed for 'https://bob:hunter2-9f8e@git.example.com/acme/api.git/'";
    let outcome = tasks::fail_task(pool, leased.task_id, &leased.lease_id, error, false, 3)
        .await
        .unwrap();
    assert_eq!(outcome, AfterFailure::Fail);

    let status = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (
            &status["scanKey"],
            &status["running"],
            &status["scheduled"],
            &status["scanned"]
        ),
        (
            &json!(scan_key),
            &json!(false),
            &json!(false),
            &json!(false)
        )
    );
    let last_error = status["lastError"].as_str().expect("lastError");
    assert!(last_error.contains("Authentication failed"), "{last_error}");
    assert!(
        last_error.contains("https://***@git.example.com/acme/api.git"),
        "{last_error}"
    );
    assert!(!status.to_string().contains("hunter2"), "{status}");
    let job = fixture
        .expect(
            "GET",
            &format!("/rest/security/latest/jobs/{scan_key}"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(job["state"], json!("failed"));
    let failures = job["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (&failures[0]["branch"], &failures[0]["lastError"]),
        (&json!("main"), &json!(last_error))
    );
    assert!(!job.to_string().contains("hunter2"), "{job}");

    // A new request: the branch is scheduled and the old error no longer
    // describes it.
    fixture
        .expect("POST", status_uri, ADMIN_USER, None, 200)
        .await;
    let rescheduled = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert_eq!(rescheduled["scheduled"], json!(true));
    assert!(rescheduled.get("lastError").is_none(), "{rescheduled}");
    fixture.finish().await;
}

/// Bitbucket answers every REST path under `latest` and under `1.0`, and
/// Soteri's document writes some paths with one and some with the other:
/// a client that picks the other version reaches the same route (with the
/// same permission check), and the route table's own paths win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_paths_answer_under_latest_and_1_0() {
    let fixture = Fixture::new().await;
    let latest = fixture
        .expect("GET", "/rest/api/latest/projects", ADMIN_USER, None, 200)
        .await;
    let versioned = fixture
        .expect("GET", "/rest/api/1.0/projects", ADMIN_USER, None, 200)
        .await;
    assert_eq!(latest, versioned);
    assert!(!latest["values"].as_array().unwrap().is_empty());
    // Soteri's status path under 1.0, its scan path under latest.
    let job = fixture
        .expect(
            "PUT",
            "/rest/security/1.0/status/projects/PROJ/repos/api",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(job["scope"], "repository", "{job}");
    let status = fixture
        .expect(
            "GET",
            "/rest/security/latest/scan/PROJ/repos/api?branch=main",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(status["scanKey"], job["scanKey"], "{status}");
    // The permission check is the route's: no credentials, 401.
    fixture
        .expect("GET", "/rest/api/1.0/projects", None, None, 401)
        .await;
    // No alias where there is no route.
    fixture
        .expect("GET", "/rest/api/2.0/projects", ADMIN_USER, None, 404)
        .await;
    fixture.finish().await;
}

/// Issue 18: a client that reads Bitbucket's catalog (a catalog sync, a
/// script) gets Bitbucket's project and repository objects from the
/// listings, under `latest` and `1.0`: `slug`, `name`, `project: {key,
/// name, type}`, `links.clone[{href, name}]`; leakscan's own fields stay
/// beside them. Clone links are for the repository's administrators only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_listings_are_bitbucket_projects_and_repositories() {
    let fixture = Fixture::new().await;
    let projects = fixture
        .expect(
            "GET",
            "/rest/api/1.0/projects?limit=100",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let by_key = |key: &str| {
        projects["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|project| project["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no project {key} in {projects}"))
    };
    let proj = by_key("PROJ");
    assert_eq!(
        (&proj["type"], &proj["public"]),
        (&json!("NORMAL"), &json!(false))
    );
    assert!(
        proj["id"].as_i64().is_some() && proj["name"].is_string(),
        "{proj}"
    );
    assert_eq!(by_key("~alice")["type"], "PERSONAL");

    for version in ["latest", "1.0"] {
        let uri = format!("/rest/api/{version}/projects/PROJ/repos?limit=100");
        let page = fixture.expect("GET", &uri, ADMIN_USER, None, 200).await;
        let api = page["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|repository| repository["slug"] == "api")
            .cloned()
            .unwrap_or_else(|| panic!("no api in {page}"));
        assert_eq!(api["name"], "api", "{api}");
        assert_eq!(api["scmId"], "git");
        assert_eq!(api["project"]["key"], "PROJ");
        assert_eq!(api["project"]["name"], proj["name"]);
        assert_eq!(api["project"]["type"], "NORMAL");
        let clone = &api["links"]["clone"][0];
        assert_eq!(clone["name"], "file", "{api}");
        assert!(
            clone["href"].as_str().unwrap().starts_with("file:///")
                && clone["href"].as_str().unwrap().ends_with("PROJ/api.git"),
            "{api}"
        );
        // leakscan's fields are still there.
        assert_eq!(api["projectKey"], "PROJ");
        assert!(
            api["cloneUrl"].is_string() && api.get("hookEnabled").is_some(),
            "{api}"
        );
        assert!(page.get("isLastPage").is_some() && page.get("start").is_some());
    }

    // A reader sees the objects without where they are cloned from.
    fixture.user("reader").await;
    fixture
        .expect(
            "PUT",
            "/rest/api/latest/projects/PROJ/permissions/users?name=reader&permission=PROJECT_READ",
            ADMIN_USER,
            None,
            204,
        )
        .await;
    let page = fixture
        .expect(
            "GET",
            "/rest/api/1.0/projects/PROJ/repos",
            Some("reader"),
            None,
            200,
        )
        .await;
    let first = &page["values"][0];
    assert_eq!(first["project"]["key"], "PROJ", "{page}");
    assert_eq!(first["links"]["clone"], json!([]), "{first}");
    assert!(first.get("cloneUrl").is_none(), "{first}");
    fixture.finish().await;
}
