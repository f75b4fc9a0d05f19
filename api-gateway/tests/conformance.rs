//! Conformance with the documents the API copies: Soteri's "Security for
//! Bitbucket" REST API and Bitbucket Data Center's secret-scanning REST API.
//! Each test pins one point of the issue tracker where the gateway answered
//! otherwise than the documents say (the regression is named above it).

mod common;

use common::{error_message, Fixture, ADMIN};
use leakscan_engine::rules::{builtin_rules, find_builtin};
use leakscan_store::{catalog::RepoId, findings, jobs, policy, secrets::SecretBox};
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
    let pool = &fixture.database.pool;
    let repository = repository_id(fixture, project, slug).await;
    let secrets = SecretBox::load(pool, fixture.master_key.clone())
        .await
        .unwrap();
    let batch: Vec<findings::NewFinding> = found
        .iter()
        .enumerate()
        .map(|(index, (rule, path, secret))| findings::NewFinding {
            rule_id: rule.to_string(),
            rule_name: format!("{rule} display name"),
            severity: "HIGH".into(),
            commit: format!("{:040x}", index + 1),
            path: path.to_string(),
            line: Some(1),
            author: "Dev".into(),
            author_email: "dev@example.com".into(),
            commit_date: None,
            secret: secret.as_bytes().to_vec(),
            confidence: Some("HIGH".into()),
        })
        .collect();
    findings::record_findings(pool, &secrets, repository, branch, 1, &batch)
        .await
        .unwrap();
    let base = policy::base_digest(&policy::base_policy(pool, repository).await.unwrap());
    sqlx::query(
        "update branches set last_scanned_commit = head_commit, last_scanned_base = $3
         where repository_id = $1 and name = $2",
    )
    .bind(repository)
    .bind(branch)
    .bind(base)
    .execute(pool)
    .await
    .unwrap();
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
