//! The policy API driven in memory against a fresh PostgreSQL database:
//! rules and allowlist rules at three scopes, built-in switches, Soteri's
//! rule list and rule types, exemptions, reviews and their CSV import and
//! export, the audit log, and the errors and permissions of each.

mod common;

use common::{error_message, Fixture, ADMIN};
use leakscan_store::catalog::RepoId;
use leakscan_testkit::GitRepo;
use serde_json::{json, Value};

const ADMIN_USER: Option<&str> = Some(ADMIN.0);

async fn grant(fixture: &Fixture, path: &str, user: &str, permission: &str) {
    fixture
        .expect(
            "PUT",
            &format!("{path}/permissions/users?name={user}&permission={permission}"),
            ADMIN_USER,
            None,
            204,
        )
        .await;
}

/// The audit entries' actions, newest first.
async fn audit_actions(fixture: &Fixture) -> Vec<String> {
    let page = fixture
        .expect(
            "GET",
            "/rest/security/latest/audit?limit=1000",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    page["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            assert!(entry["timestamp"].is_string(), "{entry}");
            format!(
                "{} {} {}",
                entry["user"].as_str().unwrap(),
                entry["action"].as_str().unwrap(),
                entry["target"].as_str().unwrap()
            )
        })
        .collect()
}

fn names(page: &Value) -> Vec<&str> {
    page["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["name"].as_str().unwrap())
        .collect()
}

/// Every rule endpoint at one scope, for one kind (`rules` or `allowlist`).
async fn exercise_rules(fixture: &Fixture, scope: &str, noun: &str, scope_type: &str) {
    let base = format!("{scope}/secret-scanning/{noun}");
    let one = |id: &Value| format!("{base}/{id}");
    // Empty list: one empty last page.
    let empty = fixture.expect("GET", &base, ADMIN_USER, None, 200).await;
    assert_eq!(
        (empty["size"].clone(), empty["isLastPage"].clone()),
        (json!(0), json!(true)),
        "{empty}"
    );
    assert_eq!(empty["limit"], 25);
    fixture.expect("GET", &base, None, None, 401).await;
    // Bad input.
    for (body, needle) in [
        (
            json!({"name": "X", "lineRegex": "(unclosed"}),
            "lineRegex is not a valid regex",
        ),
        (
            json!({"name": "X", "pathRegex": "[z-a]"}),
            "pathRegex is not a valid regex",
        ),
        (json!({"name": "X"}), "lineRegex, pathRegex or both"),
        (json!({"lineRegex": "abc"}), "needs a name"),
        (json!({"name": "  ", "lineRegex": "abc"}), "needs a name"),
        (
            json!({"name": "X", "lineRegex": "a{1000}{1000}"}),
            "not a valid regex",
        ),
        (
            json!({"name": "X", "lineRegex": "abc", "severity": "HUGE"}),
            "unknown severity",
        ),
        (
            json!({"name": "X", "lineRegex": "abc", "colour": "red"}),
            "colour",
        ),
    ] {
        let error = fixture
            .expect("POST", &base, ADMIN_USER, Some(body.clone()), 400)
            .await;
        assert!(error_message(&error).contains(needle), "{body} → {error}");
    }
    let long_regex = "a".repeat(10_001);
    fixture
        .expect(
            "POST",
            &base,
            ADMIN_USER,
            Some(json!({"name": "X", "lineRegex": long_regex})),
            400,
        )
        .await;
    if noun == "rules" {
        let error = fixture
            .expect(
                "POST",
                &base,
                ADMIN_USER,
                Some(json!({"name": "AWS_ACCESS_KEY_ID", "lineRegex": "abc"})),
                400,
            )
            .await;
        assert!(error_message(&error).contains("built-in"), "{error}");
    }
    // Create, then the same name again (any case) is a conflict.
    let created = fixture
        .expect(
            "POST",
            &base,
            ADMIN_USER,
            Some(json!({"name": "Delta token", "lineRegex": "dlt_([0-9a-f]{12})"})),
            200,
        )
        .await;
    assert_eq!(created["scope"]["type"], scope_type, "{created}");
    assert_eq!(created["lineRegex"], "dlt_([0-9a-f]{12})");
    assert!(created.get("pathRegex").is_none(), "{created}");
    let error = fixture
        .expect(
            "POST",
            &base,
            ADMIN_USER,
            Some(json!({"name": "DELTA TOKEN", "pathRegex": "\\.env$"})),
            409,
        )
        .await;
    assert!(error_message(&error).contains("already exists"), "{error}");
    for name in ["alpha", "Charlie", "bravo"] {
        fixture
            .expect(
                "POST",
                &base,
                ADMIN_USER,
                Some(json!({"name": name, "pathRegex": format!("^{name}/")})),
                200,
            )
            .await;
    }
    // Paging at the edges, filter and order.
    let first = fixture
        .expect("GET", &format!("{base}?limit=3"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(names(&first), vec!["alpha", "bravo", "Charlie"]);
    assert_eq!(
        (first["isLastPage"].clone(), first["nextPageStart"].clone()),
        (json!(false), json!(3))
    );
    let last = fixture
        .expect(
            "GET",
            &format!("{base}?start=3&limit=3"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(names(&last), vec!["Delta token"]);
    assert_eq!(last["isLastPage"], true);
    assert!(last.get("nextPageStart").is_none());
    let exact = fixture
        .expect("GET", &format!("{base}?limit=4"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (exact["size"].clone(), exact["isLastPage"].clone()),
        (json!(4), json!(true))
    );
    let beyond = fixture
        .expect("GET", &format!("{base}?start=10"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (beyond["size"].clone(), beyond["isLastPage"].clone()),
        (json!(0), json!(true))
    );
    let descending = fixture
        .expect(
            "GET",
            &format!("{base}?order=NAME_DESC&filter=A"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        names(&descending),
        vec!["Delta token", "Charlie", "bravo", "alpha"]
    );
    let filtered = fixture
        .expect("GET", &format!("{base}?filter=ar"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(names(&filtered), vec!["Charlie"]);
    fixture
        .expect(
            "GET",
            &format!("{base}?order=SIDEWAYS"),
            ADMIN_USER,
            None,
            400,
        )
        .await;
    fixture
        .expect("GET", &format!("{base}?limit=many"), ADMIN_USER, None, 400)
        .await;
    // Get, update, delete.
    let id = &created["id"];
    let got = fixture.expect("GET", &one(id), ADMIN_USER, None, 200).await;
    assert_eq!(got, created);
    fixture
        .expect("GET", &format!("{base}/999999"), ADMIN_USER, None, 404)
        .await;
    fixture
        .expect("GET", &format!("{base}/abc"), ADMIN_USER, None, 400)
        .await;
    let updated = fixture
        .expect(
            "PUT",
            &one(id),
            ADMIN_USER,
            Some(json!({"pathRegex": "\\.env$"})),
            200,
        )
        .await;
    assert_eq!(
        (
            updated["name"].clone(),
            updated["lineRegex"].clone(),
            updated["pathRegex"].clone()
        ),
        (
            json!("Delta token"),
            json!("dlt_([0-9a-f]{12})"),
            json!("\\.env$")
        )
    );
    fixture
        .expect(
            "PUT",
            &one(id),
            ADMIN_USER,
            Some(json!({"name": "ALPHA"})),
            409,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &one(id),
            ADMIN_USER,
            Some(json!({"lineRegex": "", "pathRegex": ""})),
            400,
        )
        .await;
    fixture
        .expect(
            "PUT",
            &format!("{base}/999999"),
            ADMIN_USER,
            Some(json!({"name": "z"})),
            404,
        )
        .await;
    fixture
        .expect("DELETE", &one(id), ADMIN_USER, None, 204)
        .await;
    // Deleting it again: Bitbucket answers 204 at project scope ("or not
    // found at this location"), 404 elsewhere.
    let again = if scope_type == "PROJECT" { 204 } else { 404 };
    fixture
        .expect("DELETE", &one(id), ADMIN_USER, None, again)
        .await;
    fixture.expect("GET", &one(id), ADMIN_USER, None, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_allowlists_at_every_scope() {
    let fixture = Fixture::new().await;
    let scopes = [
        ("/rest/api/latest", "GLOBAL"),
        ("/rest/api/latest/projects/PROJ", "PROJECT"),
        ("/rest/api/latest/projects/PROJ/repos/api", "REPOSITORY"),
    ];
    for (scope, scope_type) in scopes {
        for noun in ["rules", "allowlist"] {
            exercise_rules(&fixture, scope, noun, scope_type).await;
        }
    }
    // A project rule is not a repository rule of that project.
    let project_rule = fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/secret-scanning/rules",
            ADMIN_USER,
            Some(json!({"name": "proj", "lineRegex": "prj_[0-9]{8}"})),
            200,
        )
        .await;
    fixture
        .expect(
            "GET",
            &format!(
                "/rest/api/latest/projects/PROJ/repos/api/secret-scanning/rules/{}",
                project_rule["id"]
            ),
            ADMIN_USER,
            None,
            404,
        )
        .await;
    // The same name in another scope is fine.
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/repos/api/secret-scanning/rules",
            ADMIN_USER,
            Some(json!({"name": "proj", "lineRegex": "prj_[0-9]{9}"})),
            200,
        )
        .await;

    // Permissions: reading a scope needs read; changing it needs the
    // security grant (global), project admin or repository admin.
    fixture.user("bob").await;
    fixture.user("carol").await;
    let rules = |scope: &str| format!("{scope}/secret-scanning/rules");
    let body = json!({"name": "bobs", "lineRegex": "bob_[0-9]+"});
    fixture
        .expect("GET", &rules("/rest/api/latest"), Some("bob"), None, 200)
        .await;
    fixture
        .expect(
            "POST",
            &rules("/rest/api/latest"),
            Some("bob"),
            Some(body.clone()),
            403,
        )
        .await;
    fixture
        .expect(
            "GET",
            &rules("/rest/api/latest/projects/PROJ"),
            Some("bob"),
            None,
            404,
        )
        .await;
    fixture
        .expect(
            "POST",
            &rules("/rest/api/latest/projects/PROJ/repos/api"),
            Some("bob"),
            Some(body.clone()),
            404,
        )
        .await;
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ/repos/api",
        "bob",
        "REPO_WRITE",
    )
    .await;
    fixture
        .expect(
            "GET",
            &rules("/rest/api/latest/projects/PROJ/repos/api"),
            Some("bob"),
            None,
            200,
        )
        .await;
    let error = fixture
        .expect(
            "POST",
            &rules("/rest/api/latest/projects/PROJ/repos/api"),
            Some("bob"),
            Some(body.clone()),
            403,
        )
        .await;
    assert!(error_message(&error).contains("admin"), "{error}");
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ/repos/api",
        "bob",
        "REPO_ADMIN",
    )
    .await;
    fixture
        .expect(
            "POST",
            &rules("/rest/api/latest/projects/PROJ/repos/api"),
            Some("bob"),
            Some(body.clone()),
            200,
        )
        .await;
    fixture
        .expect(
            "POST",
            &rules("/rest/api/latest/projects/PROJ"),
            Some("bob"),
            Some(body.clone()),
            403,
        )
        .await;
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ",
        "carol",
        "PROJECT_WRITE",
    )
    .await;
    fixture
        .expect(
            "POST",
            &rules("/rest/api/latest/projects/PROJ"),
            Some("carol"),
            Some(body.clone()),
            403,
        )
        .await;
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ",
        "carol",
        "PROJECT_ADMIN",
    )
    .await;
    fixture
        .expect(
            "POST",
            &rules("/rest/api/latest/projects/PROJ"),
            Some("carol"),
            Some(body.clone()),
            200,
        )
        .await;
    // A project admin administers the project's repositories too.
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/repos/web/secret-scanning/allowlist",
            Some("carol"),
            Some(json!({"name": "fixtures", "pathRegex": "^fixtures/"})),
            200,
        )
        .await;
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/permissions/users?name=bob",
            ADMIN_USER,
            None,
            204,
        )
        .await;
    fixture
        .expect(
            "POST",
            &rules("/rest/api/latest"),
            Some("bob"),
            Some(body.clone()),
            200,
        )
        .await;

    // Every change is in the audit log, with who did it.
    let actions = audit_actions(&fixture).await;
    let count = |needle: &str| actions.iter().filter(|a| a.contains(needle)).count();
    // Per scope and kind: 4 created, 1 updated, 1 deleted.
    assert_eq!(count("admin rule.created"), 3 * 4 + 2, "{actions:#?}");
    assert_eq!(count("admin allowlist.created"), 3 * 4, "{actions:#?}");
    assert_eq!(
        count("admin rule.updated") + count("admin allowlist.updated"),
        6
    );
    assert_eq!(
        count("admin rule.deleted") + count("admin allowlist.deleted"),
        6
    );
    assert_eq!(count("bob rule.created"), 2, "{actions:#?}");
    assert_eq!(
        count("carol rule.created") + count("carol allowlist.created"),
        2
    );
    assert!(
        actions.iter().any(|a| a == "bob rule.created GLOBAL: bobs"),
        "{actions:#?}"
    );
    // Failed attempts change nothing and are not recorded.
    assert_eq!(
        actions.len(),
        3 * 4 + 2 + 3 * 4 + 6 + 6 + 2 + 2,
        "{actions:#?}"
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_switches_and_soteri_rules() {
    let fixture = Fixture::new().await;
    fixture.user("bob").await;
    fixture.user("sec").await;
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/permissions/users?name=sec",
            ADMIN_USER,
            None,
            204,
        )
        .await;
    fixture
        .expect("GET", "/rest/security/1.0/rules", None, None, 401)
        .await;
    let rules = fixture
        .expect("GET", "/rest/security/1.0/rules", Some("bob"), None, 200)
        .await;
    let find = |rules: &Value, id: &str| {
        rules
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let aws = find(&rules, "AWS_ACCESS_KEY_ID");
    let display_name = &leakscan_engine::rules::find_builtin("AWS_ACCESS_KEY_ID")
        .unwrap()
        .name;
    assert_eq!(
        aws,
        json!({"id": "AWS_ACCESS_KEY_ID", "name": display_name, "hardcoded": true, "enabled": true})
    );
    // Switching off by a Soteri alias, as the security-granted user.
    fixture
        .expect(
            "DELETE",
            "/rest/security/1.0/hardcoded/AWS_CLIENT_ID",
            Some("bob"),
            None,
            403,
        )
        .await;
    let off = fixture
        .expect(
            "DELETE",
            "/rest/security/1.0/hardcoded/AWS_CLIENT_ID",
            Some("sec"),
            None,
            200,
        )
        .await;
    assert_eq!(off["enabled"], false);
    let rules = fixture
        .expect("GET", "/rest/security/1.0/rules", Some("bob"), None, 200)
        .await;
    assert_eq!(find(&rules, "AWS_ACCESS_KEY_ID")["enabled"], false);
    assert_eq!(find(&rules, "RSA_PRIVATE_KEY")["enabled"], true);
    let on = fixture
        .expect(
            "POST",
            "/rest/security/1.0/hardcoded/aws_access_key_id",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(on["enabled"], true);
    fixture
        .expect(
            "POST",
            "/rest/security/1.0/hardcoded/NO_SUCH_RULE",
            ADMIN_USER,
            None,
            404,
        )
        .await;
    fixture
        .expect("POST", "/rest/security/1.0/hardcoded/RSA", None, None, 401)
        .await;
    // A global custom rule is listed with its regex; project rules are not.
    let custom = fixture
        .expect(
            "POST",
            "/rest/api/latest/secret-scanning/rules",
            ADMIN_USER,
            Some(json!({"name": "INTERNAL", "lineRegex": "int_[0-9]{6}"})),
            200,
        )
        .await;
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/secret-scanning/rules",
            ADMIN_USER,
            Some(json!({"name": "PROJECT_ONLY", "lineRegex": "prj_[0-9]{6}"})),
            200,
        )
        .await;
    let rules = fixture
        .expect("GET", "/rest/security/1.0/rules", Some("bob"), None, 200)
        .await;
    let listed = find(&rules, &custom["id"].to_string());
    assert_eq!(
        listed,
        json!({"id": custom["id"].to_string(), "name": "INTERNAL", "regexp": "int_[0-9]{6}", "hardcoded": false, "enabled": true})
    );
    assert!(!rules.to_string().contains("PROJECT_ONLY"));
    let actions = audit_actions(&fixture).await;
    assert_eq!(
        actions[actions.len() - 2..],
        [
            "admin builtin.enabled AWS_ACCESS_KEY_ID".to_string(),
            "sec builtin.disabled AWS_ACCESS_KEY_ID".to_string()
        ],
        "{actions:#?}"
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemptions() {
    let fixture = Fixture::new().await;
    fixture.user("bob").await;
    let exempt = "/rest/api/latest/projects/PROJ/repos/api/secret-scanning/exempt";
    assert_eq!(
        fixture.expect("GET", exempt, ADMIN_USER, None, 200).await,
        json!(false)
    );
    fixture.expect("GET", exempt, None, None, 401).await;
    fixture.expect("PUT", exempt, Some("bob"), None, 404).await;
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ/repos/api",
        "bob",
        "REPO_WRITE",
    )
    .await;
    fixture.expect("PUT", exempt, Some("bob"), None, 403).await;
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ/repos/api",
        "bob",
        "REPO_ADMIN",
    )
    .await;
    fixture.expect("PUT", exempt, Some("bob"), None, 204).await;
    assert_eq!(
        fixture.expect("GET", exempt, Some("bob"), None, 200).await,
        json!(true)
    );
    // An exempt repository is not scanned: a branch scan says why.
    let error = fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/PROJ/repos/api/branches?name=main",
            ADMIN_USER,
            None,
            409,
        )
        .await;
    assert!(error_message(&error).contains("exempt"), "{error}");
    fixture
        .expect(
            "POST",
            "/rest/security/1.0/scan/PROJ/repos/api?branch=main",
            ADMIN_USER,
            None,
            409,
        )
        .await;

    // Lists: global (security grant) and per project, paged.
    let global = "/rest/api/latest/secret-scanning/exempt";
    fixture.expect("GET", global, Some("bob"), None, 403).await;
    let listed = fixture.expect("GET", global, ADMIN_USER, None, 200).await;
    assert_eq!(listed["size"], 1);
    assert_eq!(listed["values"][0]["slug"], "api");
    assert_eq!(listed["values"][0]["exempt"], true);
    // Bulk: all or none.
    let project = "/rest/api/latest/projects/PROJ/secret-scanning/exempt";
    let error = fixture
        .expect(
            "POST",
            project,
            ADMIN_USER,
            Some(json!([{"projectKey": "PROJ", "slug": "web"}, {"projectKey": "OTHER", "slug": "tool"}])),
            400,
        )
        .await;
    assert!(
        error_message(&error).contains("not in project PROJ"),
        "{error}"
    );
    fixture
        .expect(
            "POST",
            global,
            ADMIN_USER,
            Some(json!([{"projectKey": "PROJ", "slug": "web"}, {"projectKey": "OTHER", "slug": "nope"}])),
            404,
        )
        .await;
    fixture
        .expect(
            "POST",
            global,
            ADMIN_USER,
            Some(json!({"projectKey": "PROJ"})),
            400,
        )
        .await;
    // A repository admin may read the project, not exempt its repositories.
    fixture
        .expect("POST", project, Some("bob"), Some(json!([])), 403)
        .await;
    fixture
        .expect(
            "POST",
            global,
            ADMIN_USER,
            Some(json!([{"projectKey": "PROJ", "slug": "web"}, {"projectKey": "OTHER", "slug": "tool"}])),
            204,
        )
        .await;
    let page = fixture
        .expect("GET", &format!("{global}?limit=2"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (page["size"].clone(), page["isLastPage"].clone()),
        (json!(2), json!(false))
    );
    let page = fixture
        .expect(
            "GET",
            &format!("{global}?start=2&limit=2"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        (page["size"].clone(), page["isLastPage"].clone()),
        (json!(1), json!(true))
    );
    let in_project = fixture.expect("GET", project, ADMIN_USER, None, 200).await;
    let slugs: Vec<&str> = in_project["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, vec!["api", "web"]);
    // Scanning again.
    fixture
        .expect("DELETE", exempt, Some("bob"), None, 204)
        .await;
    assert_eq!(
        fixture.expect("GET", exempt, ADMIN_USER, None, 200).await,
        json!(false)
    );
    fixture
        .expect(
            "PUT",
            "/rest/security/latest/status/projects/PROJ/repos/api/branches?name=main",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let actions = audit_actions(&fixture).await;
    assert_eq!(
        actions,
        vec![
            "bob exemption.removed PROJ/api",
            "admin exemption.added OTHER/tool",
            "admin exemption.added PROJ/web",
            "bob exemption.added PROJ/api",
        ]
    );
    fixture.finish().await;
}

async fn repository_id(fixture: &Fixture, project: &str, slug: &str) -> RepoId {
    leakscan_store::catalog::find_repository(&fixture.database.pool, project, slug)
        .await
        .unwrap()
        .unwrap()
        .id
}

fn secrets_of(status: &Value) -> Vec<(String, bool)> {
    status["invalidLines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            (
                format!(
                    "{}:{}",
                    line["path"].as_str().unwrap(),
                    line["secret"].as_str().unwrap()
                ),
                line["reviewed"].as_bool().unwrap(),
            )
        })
        .collect()
}

const KEY_A: &str = "AKIAQ3EGRDXW2JUNPTKZ";
const KEY_B: &str = "ghp_q8Zr3VtYw1XbN5cKd7Mf2Lp9Hs4Jg6Ta0Ue1";
const KEY_C: &str = "xoxb-2048203948-9384756102-Zq8rT3vY1wXb5NcK7dMf2Lp9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_hide_a_secret_everywhere_in_their_scope() {
    let fixture = Fixture::new().await;
    fixture.user("bob").await;
    fixture.user("reader").await;
    let api = repository_id(&fixture, "PROJ", "api").await;
    let tool = repository_id(&fixture, "OTHER", "tool").await;
    common::plant_findings(
        &fixture,
        api,
        "main",
        &[
            ("AWS_ACCESS_KEY_ID", "a.env", KEY_A),
            ("AWS_ACCESS_KEY_ID", "b.env", KEY_A),
            ("GITHUB_PAT", "c.env", KEY_B),
        ],
    )
    .await;
    common::plant_findings(&fixture, tool, "main", &[("GITHUB_PAT", "x.env", KEY_B)]).await;
    let status_uri = "/rest/security/1.0/scan/PROJ/repos/api?branch=main";
    let status = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert_eq!(status["scanned"], true);
    assert_eq!(status["actual"], true, "{status}");
    assert_eq!(secrets_of(&status).len(), 3);
    let finding_a = status["invalidLines"][0]["id"].clone();
    let fingerprint_b = status["invalidLines"][2]["fingerprint"].clone();

    // A repository review by finding id (repository write).
    let reviews = "/rest/security/latest/reviewed/projects/PROJ/repos/api";
    let body = json!({"findingId": finding_a, "comment": "=HYPERLINK(\"http://evil\")"});
    fixture
        .expect("POST", reviews, Some("bob"), Some(body.clone()), 404)
        .await;
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ/repos/api",
        "reader",
        "REPO_READ",
    )
    .await;
    fixture
        .expect("POST", reviews, Some("reader"), Some(body.clone()), 403)
        .await;
    grant(
        &fixture,
        "/rest/api/latest/projects/PROJ/repos/api",
        "bob",
        "REPO_WRITE",
    )
    .await;
    let review = fixture
        .expect("POST", reviews, Some("bob"), Some(body.clone()), 201)
        .await;
    assert_eq!(
        (
            review["scope"].clone(),
            review["secret"].clone(),
            review["reviewedBy"].clone()
        ),
        (json!("REPOSITORY"), json!("AKIA…"), json!("bob"))
    );
    fixture
        .expect("POST", reviews, Some("bob"), Some(body), 409)
        .await;
    // The same secret in another file is hidden too; includeWhitelisted shows both.
    let status = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        secrets_of(&status),
        vec![("c.env:ghp_…".to_string(), false)]
    );
    let status = fixture
        .expect(
            "GET",
            &format!("{status_uri}&includeWhitelisted=true"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        secrets_of(&status),
        vec![
            ("a.env:AKIA…".to_string(), true),
            ("b.env:AKIA…".to_string(), true),
            ("c.env:ghp_…".to_string(), false)
        ]
    );
    // Bad review requests.
    for (body, status) in [
        (json!({"comment": "nothing"}), 400),
        (json!({"findingId": 1, "fingerprint": "ab"}), 400),
        (json!({"fingerprint": "not-hex"}), 400),
        (json!({"findingId": -4}), 400),
        (json!({"findingId": 987654}), 404),
        (json!({"fingerprint": "0".repeat(64)}), 404),
        (
            json!({"findingId": finding_a, "comment": "x".repeat(2001)}),
            400,
        ),
        (json!({"findingId": "one"}), 400),
    ] {
        fixture
            .expect("POST", reviews, Some("bob"), Some(body), status)
            .await;
    }

    // A global review (security grant) by fingerprint hides the secret in
    // every repository.
    let global = "/rest/security/latest/reviewed";
    let body = json!({"fingerprint": fingerprint_b, "comment": "test key"});
    fixture
        .expect("POST", global, Some("bob"), Some(body.clone()), 403)
        .await;
    let global_review = fixture
        .expect("POST", global, ADMIN_USER, Some(body), 201)
        .await;
    assert_eq!(global_review["scope"], "GLOBAL");
    let status = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert!(secrets_of(&status).is_empty(), "{status}");
    let other = fixture
        .expect(
            "GET",
            "/rest/security/1.0/scan/OTHER/repos/tool?branch=main",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert!(secrets_of(&other).is_empty(), "{other}");

    // Anonymous callers get 401 everywhere.
    for (method, uri) in [
        ("GET", global.to_string()),
        ("POST", global.to_string()),
        ("GET", reviews.to_string()),
        ("POST", reviews.to_string()),
        (
            "GET",
            "/rest/security/latest/reviewed/projects/PROJ".to_string(),
        ),
        ("DELETE", format!("{global}/{}", review["id"])),
        ("POST", format!("{global}/import")),
        ("GET", "/rest/security/latest/export/reviewed".to_string()),
    ] {
        fixture
            .expect(method, &uri, None, Some(json!({"findingId": 1})), 401)
            .await;
    }

    // Lists.
    fixture.expect("GET", global, Some("bob"), None, 403).await;
    let all = fixture
        .expect("GET", &format!("{global}?limit=1"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (all["size"].clone(), all["isLastPage"].clone()),
        (json!(1), json!(false))
    );
    assert_eq!(all["values"][0]["scope"], "GLOBAL");
    let all = fixture
        .expect("GET", &format!("{global}?limit=2"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (all["size"].clone(), all["isLastPage"].clone()),
        (json!(2), json!(true))
    );
    let in_repo = fixture
        .expect("GET", reviews, Some("reader"), None, 200)
        .await;
    assert_eq!(in_repo["size"], 1);
    let in_project = fixture
        .expect(
            "GET",
            "/rest/security/latest/reviewed/projects/PROJ",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(in_project["size"], 1);
    fixture
        .expect(
            "GET",
            "/rest/security/latest/reviewed/projects/OTHER",
            Some("bob"),
            None,
            404,
        )
        .await;

    // Export: who, when, scope, rule, the redacted string; formulas neutralised.
    let (status, content_type, csv) = fixture
        .call_raw(
            "GET",
            "/rest/security/latest/export/reviewed",
            ADMIN_USER,
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "id,scope,project,repository,rule,secret,comment,reviewedBy,reviewedDate,secretHash"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].contains(",REPOSITORY,PROJ,api,AWS_ACCESS_KEY_ID,AKIA…,\"'=HYPERLINK(\"\"http://evil\"\")\",bob,"),
        "{csv}"
    );
    assert!(
        lines[2].contains(",GLOBAL,,,GITHUB_PAT,ghp_…,test key,admin,"),
        "{csv}"
    );
    assert!(!csv.contains(KEY_A) && !csv.contains(KEY_B));
    let (status, _, csv) = fixture
        .call_raw(
            "GET",
            "/rest/security/latest/export/reviewed/projects/PROJ/repos/api",
            Some("reader"),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(
        (
            status.as_u16(),
            String::from_utf8(csv).unwrap().lines().count()
        ),
        (200, 2)
    );
    let (status, _, _) = fixture
        .call_raw(
            "GET",
            "/rest/security/latest/export/reviewed",
            Some("reader"),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 403);

    // CSV import of global reviews: all rows or none; secrets never echoed.
    let import = "/rest/security/latest/reviewed/import";
    let good = format!("Secret,comment,rule\n{KEY_C},imported,SLACK_BOT_TOKEN\n{KEY_A},also,\n");
    let (status, _, body) = fixture
        .call_raw(
            "POST",
            import,
            Some("bob"),
            "text/csv",
            good.clone().into_bytes(),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, body_ok) = fixture
        .call_raw(
            "POST",
            import,
            ADMIN_USER,
            "text/csv",
            good.clone().into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body_ok));
    assert_eq!(
        serde_json::from_slice::<Value>(&body_ok).unwrap(),
        json!({"imported": 2, "skipped": 0})
    );
    let (_, _, again) = fixture
        .call_raw("POST", import, ADMIN_USER, "text/csv", good.into_bytes())
        .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&again).unwrap(),
        json!({"imported": 0, "skipped": 2})
    );
    let _ = body;
    let bad_inputs: Vec<(Vec<u8>, &str)> = vec![
        (b"comment\nhello\n".to_vec(), "\"secret\" column"),
        (
            format!("secret,comment\n{KEY_B},a,extra\n").into_bytes(),
            "expected 2 fields",
        ),
        (b"secret\n\n,\n".to_vec(), "row"),
        (
            vec![b's', b'e', b'c', b'r', b'e', b't', b'\n', 0xff, 0xfe, b'\n'],
            "UTF-8",
        ),
    ];
    for (body, needle) in bad_inputs {
        let (status, _, answer) = fixture
            .call_raw("POST", import, ADMIN_USER, "text/csv", body)
            .await;
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(status, 400, "{answer}");
        assert!(error_message(&answer).contains(needle), "{answer}");
        assert!(!answer.to_string().contains(KEY_B), "{answer}");
    }
    let all = fixture.expect("GET", global, ADMIN_USER, None, 200).await;
    assert_eq!(all["size"], 4);

    // Unmark: the repository review needs repository write; the secret shows again.
    let review_uri = format!("{global}/{}", review["id"]);
    fixture
        .expect("DELETE", &review_uri, Some("reader"), None, 403)
        .await;
    // Regression (issue 13): a review the caller cannot see answers as a
    // missing one, so ids do not tell what exists.
    let hidden = fixture
        .expect(
            "DELETE",
            &format!("{global}/{}", global_review["id"]),
            Some("bob"),
            None,
            404,
        )
        .await;
    let missing = fixture
        .expect(
            "DELETE",
            &format!("{global}/999999"),
            Some("bob"),
            None,
            404,
        )
        .await;
    assert_eq!(
        error_message(&hidden).replace(&global_review["id"].to_string(), "N"),
        error_message(&missing).replace("999999", "N")
    );
    fixture
        .expect("DELETE", &review_uri, Some("bob"), None, 204)
        .await;
    fixture
        .expect("DELETE", &review_uri, Some("bob"), None, 404)
        .await;
    fixture
        .expect("DELETE", &format!("{global}/abc"), Some("bob"), None, 400)
        .await;
    // KEY_A is still reviewed globally (imported), KEY_B too.
    let status = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert!(secrets_of(&status).is_empty(), "{status}");
    fixture
        .expect(
            "DELETE",
            &format!("{global}/{}", global_review["id"]),
            ADMIN_USER,
            None,
            204,
        )
        .await;
    let status = fixture
        .expect("GET", status_uri, ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        secrets_of(&status),
        vec![("c.env:ghp_…".to_string(), false)]
    );

    let actions = audit_actions(&fixture).await;
    let count = |needle: &str| actions.iter().filter(|a| a.contains(needle)).count();
    assert_eq!(count("review.created"), 4, "{actions:#?}");
    assert_eq!(count("review.deleted"), 2, "{actions:#?}");
    assert!(!actions.concat().contains(KEY_A));
    let audit = fixture
        .expect(
            "GET",
            "/rest/security/latest/audit?limit=1000",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    for key in [KEY_A, KEY_B, KEY_C] {
        assert!(
            !audit.to_string().contains(key),
            "the audit log shows a secret"
        );
    }
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_types_follow_the_branch_config_and_rule_changes_outdate_scans() {
    let fixture = Fixture::new().await;
    fixture.user("bob").await;
    // A repository with a config file on one branch only.
    let repo = GitRepo::new();
    repo.write("README.md", "# cfg\n");
    repo.commit_all("init");
    repo.checkout_new("configured");
    repo.write(
        "soteri-security.yml",
        "custom_rules:\n  BRANCH_TOKEN: 'brt_[0-9a-f]{16}'\n",
    );
    repo.commit_all("config");
    repo.checkout("main");
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/repos",
            ADMIN_USER,
            Some(json!({"name": "cfg", "cloneUrl": repo.path().display().to_string()})),
            201,
        )
        .await;
    fixture
        .expect(
            "POST",
            "/rest/api/latest/secret-scanning/rules",
            ADMIN_USER,
            Some(json!({"name": "GLOBAL_CUSTOM", "lineRegex": "glb_[0-9]{8}"})),
            200,
        )
        .await;
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/OTHER/secret-scanning/rules",
            ADMIN_USER,
            Some(json!({"name": "OTHER_PROJECT", "lineRegex": "oth_[0-9]{8}"})),
            200,
        )
        .await;
    fixture
        .expect(
            "DELETE",
            "/rest/security/1.0/hardcoded/RSA",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    let types =
        |branch: &str| format!("/rest/security/1.0/scan/PROJ/rule_types/cfg?branch={branch}");
    let configured = fixture
        .expect("GET", &types("configured"), ADMIN_USER, None, 200)
        .await;
    let main = fixture
        .expect("GET", &types("main"), ADMIN_USER, None, 200)
        .await;
    let has = |list: &Value, name: &str| list.as_array().unwrap().iter().any(|n| n == name);
    assert!(has(&configured, "BRANCH_TOKEN"), "{configured}");
    assert!(!has(&main, "BRANCH_TOKEN"), "{main}");
    for list in [&configured, &main] {
        assert!(has(list, "GLOBAL_CUSTOM"));
        assert!(has(list, "RSA_PRIVATE_KEY"), "switched off but listed");
        assert!(has(list, "AWS_ACCESS_KEY_ID"));
        assert!(!has(list, "OTHER_PROJECT"));
    }
    fixture
        .expect("GET", &types("nope"), ADMIN_USER, None, 404)
        .await;
    fixture
        .expect("GET", &types("main"), Some("bob"), None, 404)
        .await;
    fixture.expect("GET", &types("main"), None, None, 401).await;

    // A scan is actual until the rules of its scopes change.
    let api = repository_id(&fixture, "PROJ", "api").await;
    common::plant_findings(
        &fixture,
        api,
        "main",
        &[("AWS_ACCESS_KEY_ID", "a.env", KEY_A)],
    )
    .await;
    let status_uri = "/rest/security/1.0/scan/PROJ/repos/api?branch=main";
    assert_eq!(
        fixture
            .expect("GET", status_uri, ADMIN_USER, None, 200)
            .await["actual"],
        true
    );
    // Another project's rule changes nothing here; this project's does.
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/OTHER/secret-scanning/allowlist",
            ADMIN_USER,
            Some(json!({"name": "vendor", "pathRegex": "^vendor/"})),
            200,
        )
        .await;
    assert_eq!(
        fixture
            .expect("GET", status_uri, ADMIN_USER, None, 200)
            .await["actual"],
        true
    );
    fixture
        .expect(
            "POST",
            "/rest/api/latest/projects/PROJ/secret-scanning/allowlist",
            ADMIN_USER,
            Some(json!({"name": "vendor", "pathRegex": "^vendor/"})),
            200,
        )
        .await;
    assert_eq!(
        fixture
            .expect("GET", status_uri, ADMIN_USER, None, 200)
            .await["actual"],
        false
    );
    common::plant_findings(&fixture, api, "main", &[]).await;
    assert_eq!(
        fixture
            .expect("GET", status_uri, ADMIN_USER, None, 200)
            .await["actual"],
        true
    );
    fixture
        .expect(
            "POST",
            "/rest/security/1.0/hardcoded/RSA",
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        fixture
            .expect("GET", status_uri, ADMIN_USER, None, 200)
            .await["actual"],
        false
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_paged_and_for_the_security_team() {
    let fixture = Fixture::new().await;
    fixture.user("bob").await;
    let audit = "/rest/security/latest/audit";
    let empty = fixture.expect("GET", audit, ADMIN_USER, None, 200).await;
    assert_eq!(
        (empty["size"].clone(), empty["isLastPage"].clone()),
        (json!(0), json!(true))
    );
    fixture.expect("GET", audit, Some("bob"), None, 403).await;
    fixture.expect("GET", audit, None, None, 401).await;
    for rule in ["RSA", "AWS_CLIENT_ID", "SSH_PRIVATE_KEY"] {
        fixture
            .expect(
                "DELETE",
                &format!("/rest/security/1.0/hardcoded/{rule}"),
                ADMIN_USER,
                None,
                200,
            )
            .await;
    }
    let first = fixture
        .expect("GET", &format!("{audit}?limit=2"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (first["size"].clone(), first["isLastPage"].clone()),
        (json!(2), json!(false))
    );
    assert_eq!(first["values"][0]["target"], "SSH_PRIVATE_KEY");
    assert_eq!(first["values"][0]["details"]["changed"], true);
    let last = fixture
        .expect(
            "GET",
            &format!("{audit}?start=2&limit=2"),
            ADMIN_USER,
            None,
            200,
        )
        .await;
    assert_eq!(
        (last["size"].clone(), last["isLastPage"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(last["values"][0]["target"], "RSA_PRIVATE_KEY");
    let exact = fixture
        .expect("GET", &format!("{audit}?limit=3"), ADMIN_USER, None, 200)
        .await;
    assert_eq!(
        (exact["size"].clone(), exact["isLastPage"].clone()),
        (json!(3), json!(true))
    );
    fixture.finish().await;
}

// Issue 13: a grant on one repository shows its project, and the project's
// review and exempt lists then showed every repository's rows. They show
// the rows of the repositories the caller may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_lists_show_only_the_repositories_the_caller_may_read() {
    let owned = Fixture::new().await;
    let fixture = &owned;
    fixture.user("reader").await;
    for (slug, key) in [("api", KEY_A), ("web", KEY_B)] {
        let repository = repository_id(fixture, "PROJ", slug).await;
        common::plant_findings(fixture, repository, "main", &[("RULE", "x.env", key)]).await;
        let status = fixture
            .expect(
                "GET",
                &format!("/rest/security/1.0/scan/PROJ/repos/{slug}?branch=main"),
                ADMIN_USER,
                None,
                200,
            )
            .await;
        let finding = status["invalidLines"][0]["id"].clone();
        fixture
            .expect(
                "POST",
                &format!("/rest/security/latest/reviewed/projects/PROJ/repos/{slug}"),
                ADMIN_USER,
                Some(json!({"findingId": finding, "comment": "test data"})),
                201,
            )
            .await;
        fixture
            .expect(
                "PUT",
                &format!("/rest/api/latest/projects/PROJ/repos/{slug}/secret-scanning/exempt"),
                ADMIN_USER,
                None,
                204,
            )
            .await;
    }
    grant(
        fixture,
        "/rest/api/latest/projects/PROJ/repos/api",
        "reader",
        "REPO_READ",
    )
    .await;
    let reviewed = |user| async move {
        let page = fixture
            .expect(
                "GET",
                "/rest/security/latest/reviewed/projects/PROJ",
                user,
                None,
                200,
            )
            .await;
        let mut slugs: Vec<String> = page["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|review| review["repository"].as_str().unwrap().to_string())
            .collect();
        slugs.sort();
        slugs
    };
    let exempt = |user| async move {
        let page = fixture
            .expect(
                "GET",
                "/rest/api/latest/projects/PROJ/secret-scanning/exempt",
                user,
                None,
                200,
            )
            .await;
        page["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|repository| repository["slug"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(reviewed(ADMIN_USER).await, ["api", "web"]);
    assert_eq!(reviewed(Some("reader")).await, ["api"]);
    assert_eq!(exempt(ADMIN_USER).await, ["api", "web"]);
    assert_eq!(exempt(Some("reader")).await, ["api"]);
    let (status, _, csv) = fixture
        .call_raw(
            "GET",
            "/rest/security/latest/export/reviewed/projects/PROJ",
            Some("reader"),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(!csv.contains(",web,"), "{csv}");
    owned.finish().await;
}
