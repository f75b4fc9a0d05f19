//! Catalog sync from a Bitbucket (issue 18), with two leakscan instances:
//! instance A plays the Bitbucket (its gateway serves Bitbucket's project
//! and repository listing), behind a small server that also serves A's git
//! repositories over smart HTTP (`git http-backend`) with token
//! authentication, so that one origin answers REST and git, as a Bitbucket
//! does. Instance B (gateway, coordinator, worker) syncs its catalog from A
//! with A's token, clones over real HTTP with it, and scans. Then A's
//! catalog changes (a rename, a move, a deletion, a new repository), and
//! B follows; a revoked token and a server that is down change nothing.

use std::path::Path;

use leakscan_store::testing::{redis_url, unique_name, TestDatabase};
use leakscan_testkit::git_http::{publish_bare, GitHttpServer};
use leakscan_tests::{
    git, start_coordinator, start_gateway, start_worker, Api, ClusterEnv, Process,
};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("admin", "bitbucket-sync-admin-password");
/// Our own fake AWS access key id (the shape only).
const PLANTED: &str = "AKIAQ3TX7RWM2KLN8VYE";

/// A repository with `text` in `deploy.env` on `main`, published bare at
/// `served/<path>.git`.
fn served_repository(work: &Path, served: &Path, path: &str, text: &str) {
    let dir = work.join("src").join(path);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("deploy.env"), text).unwrap();
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "settings"]);
    publish_bare(&dir, served, &format!("{path}.git"));
}

fn register(api: &Api, server: &GitHttpServer, project: &str, slug: &str) {
    api.expect(
        "POST",
        &format!("/rest/api/latest/projects/{project}/repos"),
        Some(json!({"name": slug, "cloneUrl": server.url(&format!("{project}/{slug}.git"))})),
        201,
    );
}

/// B's repositories: `PROJECT/slug` (with ` deleted` when marked so).
fn catalog_of(api: &Api) -> Vec<String> {
    let mut names = Vec::new();
    let projects = api.expect("GET", "/rest/api/1.0/projects?limit=100", None, 200);
    for project in projects["values"].as_array().unwrap() {
        let key = project["key"].as_str().unwrap();
        let repositories = api.expect(
            "GET",
            &format!("/rest/api/1.0/projects/{key}/repos?limit=100"),
            None,
            200,
        );
        for repository in repositories["values"].as_array().unwrap() {
            let deleted = if repository["deleted"] == json!(true) {
                " deleted"
            } else {
                ""
            };
            names.push(format!(
                "{key}/{}{deleted}",
                repository["slug"].as_str().unwrap()
            ));
        }
    }
    names.sort();
    names
}

fn findings(api: &Api, project: &str, slug: &str) -> Vec<String> {
    let status = api.expect(
        "GET",
        &format!("/rest/security/1.0/scan/{project}/repos/{slug}?branch=main"),
        None,
        200,
    );
    status["invalidLines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["rule"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn sync(api: &Api) -> (u16, Value) {
    api.call("POST", "/rest/security/latest/admin/catalog/sync", None)
}

fn changes(report: &Value) -> Vec<String> {
    let mut list: Vec<String> = report["bitbucket"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| match change["was"].as_str() {
            Some(was) => format!(
                "{} {} <- {was}",
                change["change"].as_str().unwrap(),
                change["repository"].as_str().unwrap()
            ),
            None => format!(
                "{} {}",
                change["change"].as_str().unwrap(),
                change["repository"].as_str().unwrap()
            ),
        })
        .collect();
    list.sort();
    list
}

/// An access token of A's administrator that may read every project and
/// repository (clone links included): (id, token).
fn access_token(admin: &Api, name: &str) -> (String, String) {
    let token = admin.expect(
        "PUT",
        "/rest/access-tokens/latest/users/admin",
        Some(json!({"name": name, "permissions": ["PROJECT_ADMIN", "REPO_ADMIN"]})),
        200,
    );
    (
        token["id"].as_str().unwrap().to_string(),
        token["token"].as_str().unwrap().to_string(),
    )
}

/// Instance B's gateway, synchronising from `bitbucket_url` with the
/// token in `token_file` on demand only; `extra` arguments added.
fn start_synchronising_gateway(
    env: &ClusterEnv,
    root: &Path,
    bitbucket_url: &str,
    token_file: &Path,
    extra: &[&str],
    log: std::path::PathBuf,
) -> (Process, String) {
    let mut args = vec![
        "--bitbucket-url",
        bitbucket_url,
        "--bitbucket-token-file",
        token_file.to_str().unwrap(),
        "--bitbucket-sync-interval",
        "0",
    ];
    args.extend_from_slice(extra);
    start_gateway(&env.vars(), root, "127.0.0.1:0", &args, log)
}

#[test]
fn a_catalog_is_synchronised_from_a_bitbucket_and_cloned_over_http_with_its_token() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database_a = runtime.block_on(TestDatabase::create()).unwrap();
    let database_b = runtime.block_on(TestDatabase::create()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let served = dir.join("served");
    let empty_root = dir.join("empty-root");
    std::fs::create_dir_all(&empty_root).unwrap();

    // Instance A, the "Bitbucket".
    let redis_a = format!("{}?prefix={}:", redis_url(), unique_name("bbsync-a"));
    let env_a = ClusterEnv::new(&database_a.url, &redis_a, ADMIN);
    let credentials_a = dir.join("credentials-a");
    std::fs::write(&credentials_a, "").unwrap();
    let (mut gateway_a, address_a) = start_gateway(
        &env_a.vars(),
        &empty_root,
        "127.0.0.1:0",
        &[
            "--allowed-remote",
            "127.0.0.1",
            "--git-credentials-file",
            credentials_a.to_str().unwrap(),
        ],
        dir.join("gateway-a.log"),
    );
    let admin_a = Api::new(&address_a, ADMIN.0, ADMIN.1);
    let (token_id, token) = access_token(&admin_a, "leakscan-b");
    let bitbucket =
        GitHttpServer::start_in_front_of(&served, &token, Some(address_a.parse().unwrap()));
    std::fs::write(
        &credentials_a,
        format!("http://x-token-auth:{token}@{}\n", bitbucket.address()),
    )
    .unwrap();
    let secret = format!("AWS_ACCESS_KEY_ID={PLANTED}\n");
    for path in [
        "PROJ/app",
        "PROJ/lib",
        "OTHER/tools",
        "~alice/notes",
        "PROJ/new",
    ] {
        served_repository(dir, &served, path, &secret);
    }
    for (key, name) in [("PROJ", "Project"), ("OTHER", "Other"), ("~alice", "Alice")] {
        admin_a.expect(
            "POST",
            "/rest/api/latest/projects",
            Some(json!({"key": key, "name": name})),
            201,
        );
    }
    for path in ["PROJ/app", "PROJ/lib", "OTHER/tools", "~alice/notes"] {
        let (project, slug) = path.split_once('/').unwrap();
        register(&admin_a, &bitbucket, project, slug);
    }

    // Instance B syncs from A through the front server, two entries a
    // page, so that every listing takes several pages.
    let redis_b = format!("{}?prefix={}:", redis_url(), unique_name("bbsync-b"));
    let env_b = ClusterEnv::new(&database_b.url, &redis_b, ADMIN);
    let token_file = dir.join("bitbucket-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (_coordinator, coordinator) =
        start_coordinator(&env_b.vars(), dir.join("coordinator-b.log"));
    let bitbucket_url = format!("http://{}", bitbucket.address());
    let (_gateway_b, address_b) = start_synchronising_gateway(
        &env_b,
        &empty_root,
        &bitbucket_url,
        &token_file,
        &["--bitbucket-page-size", "2"],
        dir.join("gateway-b.log"),
    );
    let _worker = start_worker(dir, "worker-b", &coordinator, &env_b.worker_token);
    let api = Api::new(&address_b, ADMIN.0, ADMIN.1);

    let (status, report) = sync(&api);
    assert_eq!(status, 200, "{report}");
    let synced = &report["bitbucket"];
    assert_eq!(synced["added"], json!(4), "{report}");
    assert_eq!(synced["repositories"], json!(4), "{report}");
    assert_eq!(synced["branches"], json!(4), "{report}");
    assert_eq!(synced["errors"], json!([]), "{report}");
    // Projects: 2 pages; PROJ's repositories 1, OTHER's 1, ~alice's 1
    // (two entries fit a page); the list of every repository: A has none
    // (404), and lists personal projects among the others.
    assert_eq!(synced["requests"], json!(6), "{report}");
    assert_eq!(
        catalog_of(&api),
        ["OTHER/tools", "PROJ/app", "PROJ/lib", "~alice/notes"]
    );
    let listed = api.expect("GET", "/rest/api/1.0/projects/PROJ/repos", None, 200);
    let app = &listed["values"][0];
    assert_eq!(app["slug"], "app");
    assert_eq!(
        app["links"]["clone"][0]["href"],
        json!(bitbucket.url("PROJ/app.git")),
        "the clone URL without credentials: {app}"
    );
    assert!(
        !listed.to_string().contains(&token),
        "the token shows nowhere"
    );

    // B scans what it synced: the worker clones over HTTP with the token
    // the coordinator hands it for the server's origin.
    let refused_before = bitbucket.refused();
    api.total_rescan();
    for (project, slug) in [
        ("PROJ", "app"),
        ("PROJ", "lib"),
        ("OTHER", "tools"),
        ("~alice", "notes"),
    ] {
        assert_eq!(
            findings(&api, project, slug),
            ["AWS_ACCESS_KEY_ID"],
            "{project}/{slug}"
        );
    }
    // Without the token the server gives nothing away.
    let anonymous = std::process::Command::new("git")
        .args(["ls-remote", &bitbucket.url("PROJ/app.git")])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(!anonymous.status.success());
    assert!(bitbucket.refused() > refused_before);
    let gateway_log = std::fs::read_to_string(dir.join("gateway-b.log")).unwrap();
    let worker_log = std::fs::read_to_string(dir.join("worker-b.log")).unwrap();
    for log in [&gateway_log, &worker_log] {
        assert!(!log.contains(&token), "the token is in no log");
    }

    // A's catalog changes as Bitbucket's does: a rename and a move keep
    // the repository's id; a deletion; a new repository.
    runtime.block_on(async {
        let pool = &database_a.pool;
        sqlx::query("update repositories set slug = 'webapp', name = 'webapp' where slug = 'app'")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(
            "update repositories set project_id = (select id from projects where key = 'PROJ')
             where slug = 'tools'",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query("delete from repositories where slug = 'lib'")
            .execute(pool)
            .await
            .unwrap();
    });
    register(&admin_a, &bitbucket, "PROJ", "new");
    let (status, report) = sync(&api);
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        changes(&report),
        [
            "added PROJ/new",
            "deleted PROJ/lib",
            "moved PROJ/tools <- OTHER/tools",
            "renamed PROJ/webapp <- PROJ/app",
        ]
    );
    assert_eq!(
        catalog_of(&api),
        [
            "PROJ/lib deleted",
            "PROJ/new",
            "PROJ/tools",
            "PROJ/webapp",
            "~alice/notes"
        ]
    );
    let listed = api.expect("GET", "/rest/api/1.0/projects/PROJ/repos", None, 200);
    let lib = listed["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|repository| repository["slug"] == "lib")
        .unwrap();
    assert_eq!(lib["state"], "OFFLINE", "{lib}");
    // Findings follow a renamed repository, and stay with a deleted one.
    assert_eq!(findings(&api, "PROJ", "webapp"), ["AWS_ACCESS_KEY_ID"]);
    assert_eq!(findings(&api, "PROJ", "lib"), ["AWS_ACCESS_KEY_ID"]);
    let last = api.expect("GET", "/rest/security/latest/admin/catalog/sync", None, 200);
    assert_eq!(last["sources"][0]["lastStatus"], "ok", "{last}");
    assert_eq!(
        last["sources"][0]["lastResult"]["renamed"],
        json!(1),
        "{last}"
    );

    // A revoked token: the sync fails, says why, and changes nothing.
    admin_a.expect(
        "DELETE",
        &format!("/rest/access-tokens/latest/users/admin/{token_id}"),
        None,
        204,
    );
    let (status, report) = sync(&api);
    assert_eq!(status, 502, "{report}");
    assert!(report.to_string().contains("refused the token"), "{report}");
    assert_eq!(
        catalog_of(&api),
        [
            "PROJ/lib deleted",
            "PROJ/new",
            "PROJ/tools",
            "PROJ/webapp",
            "~alice/notes"
        ]
    );
    let last = api.expect("GET", "/rest/security/latest/admin/catalog/sync", None, 200);
    assert_eq!(last["sources"][0]["lastStatus"], "failed", "{last}");
    assert!(
        last["sources"][0]["lastError"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{last}"
    );
    assert_eq!(
        last["sources"][0]["lastResult"]["renamed"],
        json!(1),
        "the last good result stays: {last}"
    );

    // The server is down (its proxy answers 502): the same.
    gateway_a.kill();
    let (status, report) = sync(&api);
    assert_eq!(status, 502, "{report}");
    assert!(report.to_string().contains("502"), "{report}");
    assert_eq!(catalog_of(&api).len(), 5);
}

/// The sync benchmark (issue 18): 1,000 repositories in 10 projects on a
/// "Bitbucket" as above, synchronised by a fresh instance B three times
/// (a first sync each, then one with nothing changed); prints the medians
/// and the requests made. Run with
/// `cargo nextest run --release -p leakscan-tests --test bitbucket_sync --run-ignored only --no-capture`.
#[test]
#[ignore = "benchmark: run on demand"]
fn benchmark_a_sync_of_1000_repositories() {
    const PROJECTS: usize = 10;
    const PER_PROJECT: usize = 100;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database_a = runtime.block_on(TestDatabase::create()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let served = dir.join("served");
    let empty_root = dir.join("empty-root");
    std::fs::create_dir_all(&empty_root).unwrap();
    let template = dir.join("template");
    std::fs::create_dir_all(&template).unwrap();
    git(&template, &["init", "-q", "-b", "main"]);
    std::fs::write(template.join("README.md"), "hello\n").unwrap();
    git(&template, &["add", "-A"]);
    git(&template, &["commit", "-q", "-m", "first"]);
    git(&template, &["branch", "release"]);
    for project in 0..PROJECTS {
        for repository in 0..PER_PROJECT {
            publish_bare(
                &template,
                &served,
                &format!("P{project}/repo-{repository}.git"),
            );
        }
    }
    // A reads them from its root, then names them by their HTTP URLs.
    let redis_a = format!("{}?prefix={}:", redis_url(), unique_name("bbbench-a"));
    let env_a = ClusterEnv::new(&database_a.url, &redis_a, ADMIN);
    let (_gateway_a, address_a) = start_gateway(
        &env_a.vars(),
        &served,
        "127.0.0.1:0",
        &[],
        dir.join("gateway-a.log"),
    );
    let admin_a = Api::new(&address_a, ADMIN.0, ADMIN.1);
    let (_, token) = access_token(&admin_a, "bench");
    let bitbucket =
        GitHttpServer::start_in_front_of(&served, &token, Some(address_a.parse().unwrap()));
    runtime.block_on(async {
        sqlx::query(
            "update repositories r set clone_url = $1 || p.key || '/' || r.slug || '.git'
             from projects p where p.id = r.project_id",
        )
        .bind(format!("http://{}/scm/", bitbucket.address()))
        .execute(&database_a.pool)
        .await
        .unwrap();
    });
    let token_file = dir.join("bitbucket-token");
    std::fs::write(&token_file, &token).unwrap();
    let bitbucket_url = format!("http://{}", bitbucket.address());

    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (mut first, mut listing, mut again) = (Vec::new(), Vec::new(), Vec::new());
    let mut requests = 0;
    for run in 0..3 {
        let database_b = runtime.block_on(TestDatabase::create()).unwrap();
        let redis_b = format!("{}?prefix={}:", redis_url(), unique_name("bbbench-b"));
        let env_b = ClusterEnv::new(&database_b.url, &redis_b, ADMIN);
        let (mut gateway_b, address_b) = start_synchronising_gateway(
            &env_b,
            &empty_root,
            &bitbucket_url,
            &token_file,
            &[],
            dir.join(format!("gateway-b{run}.log")),
        );
        let api = Api::new(&address_b, ADMIN.0, ADMIN.1);
        let started = std::time::Instant::now();
        let (status, report) = sync(&api);
        first.push(started.elapsed().as_secs_f64());
        assert_eq!(status, 200, "{report}");
        assert_eq!(
            report["bitbucket"]["added"],
            json!(PROJECTS * PER_PROJECT),
            "{report}"
        );
        assert_eq!(
            report["bitbucket"]["branches"],
            json!(2 * PROJECTS * PER_PROJECT)
        );
        listing.push(report["bitbucket"]["listingMs"].as_f64().unwrap() / 1000.0);
        requests = report["bitbucket"]["requests"].as_u64().unwrap();
        let started = std::time::Instant::now();
        let (status, report) = sync(&api);
        again.push(started.elapsed().as_secs_f64());
        assert_eq!(status, 200, "{report}");
        assert_eq!(
            report["bitbucket"]["unchanged"],
            json!(PROJECTS * PER_PROJECT)
        );
        gateway_b.kill();
        runtime.block_on(database_b.drop_database()).unwrap();
    }
    println!(
        "sync of {} repositories ({PROJECTS} projects, 2 branches each): first sync {:.2} s \
         (REST listing {:.2} s, {requests} requests), no-change sync {:.2} s; medians of 3",
        PROJECTS * PER_PROJECT,
        median(first),
        median(listing),
        median(again)
    );
}
