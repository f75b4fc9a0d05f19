//! The test fixture of the REST API suites: the app driven in memory
//! (`app(state).oneshot`) against a fresh PostgreSQL database and Redis key
//! prefix, over real git repositories under a repository root.

#![allow(dead_code)]

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use base64::Engine as _;
use leakscan_gateway::{app, prepare, AppState, GatewayConfig};
use leakscan_store::{
    queue::JobQueue,
    testing::{redis_url, unique_name, TestDatabase},
    users,
};
use leakscan_testkit::GitRepo;
use serde_json::Value;
use tower::ServiceExt as _;

pub const ADMIN: (&str, &str) = ("admin", "admin-password");

pub struct Fixture {
    pub state: Arc<AppState>,
    pub database: TestDatabase,
    pub master_key: leakscan_store::secrets::MasterKey,
    pub root: std::path::PathBuf,
    _root: tempfile::TempDir,
    _repos: Vec<GitRepo>,
}

/// A repository with two branches, moved under `<root>/<project>/<dir>`.
pub fn repository_under(root: &std::path::Path, project: &str, dir: &str, bare: bool) -> GitRepo {
    let repo = GitRepo::new();
    repo.write("README.md", "# demo\n");
    repo.commit_all("init");
    repo.checkout_new("dev");
    repo.write("dev.txt", "dev\n");
    repo.commit_all("dev work");
    repo.checkout("main");
    let target = root.join(project).join(dir);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let mut clone = std::process::Command::new("git");
    clone.args(["clone", "--quiet"]);
    if bare {
        clone.arg("--bare");
    }
    let status = clone
        .arg("--no-local")
        .arg(repo.path())
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success());
    if !bare {
        // A working clone has only main locally; make dev a local branch too.
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(&target)
            .args(["branch", "--quiet", "dev", "origin/dev"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    repo
}

impl Fixture {
    pub async fn new() -> Fixture {
        Fixture::with_config(|_| {}).await
    }

    /// A fixture whose gateway configuration `adjust` changes first.
    pub async fn with_config(adjust: impl FnOnce(&mut GatewayConfig)) -> Fixture {
        let database = TestDatabase::create().await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let repos = vec![
            repository_under(root.path(), "PROJ", "api.git", true),
            repository_under(root.path(), "PROJ", "web", false),
            repository_under(root.path(), "OTHER", "tool.git", true),
            repository_under(root.path(), "~alice", "notes.git", true),
        ];
        std::fs::create_dir_all(root.path().join("PROJ/not-a-repo")).unwrap();
        let queue = JobQueue::connect(&redis_url(), &format!("{}:", unique_name("api")))
            .await
            .unwrap();
        let master_key = leakscan_store::secrets::MasterKey::generate();
        let config = GatewayConfig {
            repos_roots: vec![root.path().to_path_buf()],
            context_path: String::new(),
            master_key: Some(master_key.clone()),
            // The tests register repositories made in temporary directories.
            allowed_local_paths: vec![std::env::temp_dir()],
            allowed_remotes: vec!["git.example.com".into()],
            git_credentials: None,
            export_stall_timeout: leakscan_gateway::exports::STALLED_CLIENT,
            hook_install: Default::default(),
            shutdown_delay: std::time::Duration::ZERO,
            bitbucket: None,
        };
        let mut config = config;
        adjust(&mut config);
        let state = prepare(
            database.pool.clone(),
            queue,
            config,
            Some((ADMIN.0.into(), ADMIN.1.into())),
        )
        .await
        .unwrap();
        Fixture {
            state,
            database,
            master_key,
            root: root.path().to_path_buf(),
            _root: root,
            _repos: repos,
        }
    }

    pub async fn user(&self, name: &str) -> users::User {
        users::create_user(&self.database.pool, name, name, "", &format!("{name}-pw"))
            .await
            .unwrap()
    }

    /// (status, JSON body) of a request as `user` (password `<user>-pw`,
    /// the admin's own), or anonymous.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(user) = user {
            request = request.header("Authorization", basic_auth(user));
        }
        let request = match body {
            Some(body) => request
                .header("Content-Type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => request.body(Body::empty()).unwrap(),
        };
        let response = app(Arc::clone(&self.state)).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// (status, content type, body bytes) of a request with a raw body.
    pub async fn call_raw(
        &self,
        method: &str,
        uri: &str,
        user: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        self.send(method, uri, user, &[("Content-Type", content_type)], body)
            .await
    }

    /// Sends a request: (status, content type, body bytes).
    async fn send(
        &self,
        method: &str,
        uri: &str,
        user: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(user) = user {
            request = request.header("Authorization", basic_auth(user));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app(Arc::clone(&self.state))
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, content_type, bytes.to_vec())
    }

    /// (status, JSON body) of a request with extra headers and a raw body.
    pub async fn call_with(
        &self,
        method: &str,
        uri: &str,
        user: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let (status, _, bytes) = self.send(method, uri, user, headers, body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn expect(
        &self,
        method: &str,
        uri: &str,
        user: Option<&str>,
        body: Option<Value>,
        expected: u16,
    ) -> Value {
        let (status, json) = self.call(method, uri, user, body).await;
        assert_eq!(
            status.as_u16(),
            expected,
            "{method} {uri} as {user:?}: {json}"
        );
        json
    }

    pub async fn finish(self) {
        self.database.drop_database().await.unwrap();
    }
}

/// The basic-auth header of `user` (password `<user>-pw`, the admin's own).
pub fn basic_auth(user: &str) -> String {
    let password = if user == ADMIN.0 {
        ADMIN.1.to_string()
    } else {
        format!("{user}-pw")
    };
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {credentials}")
}

pub fn error_message(body: &Value) -> &str {
    body["errors"][0]["message"].as_str().unwrap_or_default()
}

/// Records findings for `branch` of a repository as a scan would, and marks
/// the branch scanned at its head.
pub async fn plant_findings(
    fixture: &Fixture,
    repository: leakscan_store::catalog::RepoId,
    branch: &str,
    found: &[(&str, &str, &str)],
) {
    let pool = &fixture.database.pool;
    let secrets = leakscan_store::secrets::SecretBox::load(pool, fixture.master_key.clone())
        .await
        .unwrap();
    let batch: Vec<leakscan_store::findings::NewFinding> = found
        .iter()
        .enumerate()
        .map(
            |(index, (rule, path, secret))| leakscan_store::findings::NewFinding {
                rule_id: rule.to_string(),
                rule_name: rule.to_string(),
                severity: "HIGH".into(),
                commit: format!("{:040x}", index + 1),
                path: path.to_string(),
                line: Some(1),
                author: "Dev".into(),
                author_email: "dev@example.com".into(),
                commit_date: None,
                secret: secret.as_bytes().to_vec(),
                confidence: Some("HIGH".into()),
            },
        )
        .collect();
    leakscan_store::findings::record_findings(pool, &secrets, repository, branch, 1, &batch)
        .await
        .unwrap();
    let base = leakscan_store::policy::base_digest(
        &leakscan_store::policy::base_policy(pool, repository)
            .await
            .unwrap(),
    );
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
