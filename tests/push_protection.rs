//! Push protection end to end (issue 15): the real `leakscan-gateway` over a
//! repository root, the hook switched through Bitbucket's hook-settings path
//! with Soteri's key, and real `git push`es over a local path that run the
//! installed `leakscan hook pre-receive`. Every decision is read from what
//! the pusher sees (git's `remote:` lines, the exit status), where the ref
//! ended up, and the REST API (audit log, reviews, jobs).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use leakscan_store::{
    secrets::MasterKey,
    testing::{redis_url, unique_name, TestDatabase},
};
use leakscan_tests::{bin, git, Api, Process};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("admin", "hook-admin-password");
const HOOK: &str = "com.mohami.bitbucket.security-for-bitbucket:credentials-validation-hook";

/// AWS-shaped fakes made up for this test, one per scenario.
fn fake_key(index: u32) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut state = u64::from(index) * 0x9E37_79B9_7F4A_7C15 + 0x1234_5678;
    let body: String = (0..16)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ALPHABET[(state >> 59) as usize] as char
        })
        .collect();
    format!("AKIA{body}")
}

/// A developer's clone and the repository under the root it pushes to.
struct Workspace {
    clone: PathBuf,
    served: PathBuf,
}

impl Workspace {
    fn new(root: &Path, work: &Path, project: &str, slug: &str) -> Workspace {
        let clone = work.join(format!("{slug}-clone"));
        std::fs::create_dir_all(&clone).unwrap();
        git(&clone, &["init", "-q", "-b", "main"]);
        std::fs::write(clone.join("README.md"), "# service\n").unwrap();
        git(&clone, &["add", "-A"]);
        git(&clone, &["commit", "-q", "-m", "init"]);
        let served = root.join(project).join(format!("{slug}.git"));
        std::fs::create_dir_all(served.parent().unwrap()).unwrap();
        git(
            work,
            &[
                "clone",
                "-q",
                "--bare",
                clone.to_str().unwrap(),
                served.to_str().unwrap(),
            ],
        );
        git(
            &clone,
            &["remote", "add", "origin", served.to_str().unwrap()],
        );
        Workspace { clone, served }
    }

    /// Commits `content` at `path` with `message`.
    fn commit(&self, path: &str, content: &str, message: &str) -> String {
        let full = self.clone.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        git(&self.clone, &["add", "-A"]);
        git(&self.clone, &["commit", "-q", "-m", message]);
        git(&self.clone, &["rev-parse", "HEAD"])
    }

    /// `git push origin main` with `options` (`-o` values): whether it
    /// landed, and what the pusher saw.
    fn push(&self, options: &[&str]) -> (bool, String) {
        let mut command = Command::new("git");
        command
            .current_dir(&self.clone)
            .env("GL_USERNAME", "alice")
            .arg("push");
        for option in options {
            command.args(["-o", option]);
        }
        let output = command.args(["origin", "main"]).output().unwrap();
        let seen = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), seen)
    }

    fn served_head(&self) -> String {
        git(&self.served, &["rev-parse", "main"])
    }

    /// Drops the last commit (after a rejected push).
    fn undo(&self) {
        git(&self.clone, &["reset", "-q", "--hard", "HEAD~1"]);
    }

    fn hook_settings(&self) -> PathBuf {
        self.served.join("hooks/leakscan-hook.conf")
    }
}

fn start_gateway(
    env: &[(String, String)],
    root: &Path,
    dir: &Path,
    listen: &str,
    index: usize,
) -> (Process, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    leakscan_tests::start_gateway(
        &env,
        root,
        listen,
        &[],
        dir.join(format!("gateway{index}.log")),
    )
}

fn audit(api: &Api, action: &str) -> Vec<Value> {
    let log = api.expect("GET", "/rest/security/latest/audit?limit=1000", None, 200);
    log["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == action)
        .cloned()
        .collect()
}

#[test]
fn the_hook_blocks_secrets_lets_bypasses_through_and_is_switched_by_the_documented_path() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let app = Workspace::new(&root, work.path(), "PROJ", "app");
    let other = Workspace::new(&root, work.path(), "PROJ", "other");
    let env: Vec<(String, String)> = vec![
        ("LEAKSCAN_DATABASE_URL".into(), database.url.clone()),
        (
            "LEAKSCAN_REDIS_URL".into(),
            format!("{}?prefix={}:", redis_url(), unique_name("hook")),
        ),
        ("LEAKSCAN_MASTER_KEY".into(), MasterKey::generate().to_hex()),
        ("LEAKSCAN_ADMIN_USER".into(), ADMIN.0.into()),
        ("LEAKSCAN_ADMIN_PASSWORD".into(), ADMIN.1.into()),
        (
            "LEAKSCAN_HOOK_COMMAND".into(),
            bin("leakscan").to_str().unwrap().into(),
        ),
    ];
    let (mut gateway, address) = start_gateway(&env, &root, work.path(), "127.0.0.1:0", 0);
    let api = Api::new(&address, ADMIN.0, ADMIN.1);
    let repo_hook =
        format!("/rest/api/latest/projects/PROJ/repos/app/settings/hooks/{HOOK}/enabled");

    // Off until switched on: every push lands, no hook is installed.
    let state = api.expect("GET", &repo_hook, None, 200);
    assert_eq!(state["enabled"], false);
    assert_eq!(state["details"]["key"], HOOK);
    app.commit(
        "early.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(0)),
        "before protection",
    );
    assert!(app.push(&[]).0);
    assert!(!app.served.join("hooks/pre-receive").exists());

    // The document's call switches it on: installed at once.
    let state = api.expect("PUT", &repo_hook, None, 200);
    assert_eq!(state["enabled"], true);
    assert_eq!(state["scope"]["type"], "REPOSITORY");
    assert!(app.served.join("hooks/pre-receive").exists());
    assert_eq!(api.expect("GET", &repo_hook, None, 200)["enabled"], true);
    assert_eq!(audit(&api, "hook.enable").len(), 1);
    // The settings file holds a token: its owner's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(app.hook_settings())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    // A planted key is refused, with what and where, redacted.
    let key = fake_key(1);
    let before = app.served_head();
    let commit = app.commit(
        "config/prod.env",
        &format!("REGION=eu\nAWS_ACCESS_KEY_ID={key}\n"),
        "add prod config",
    );
    let (landed, seen) = app.push(&[]);
    assert!(!landed, "{seen}");
    assert_eq!(app.served_head(), before);
    assert!(
        seen.contains(
            "remote: leakscan: 1 secret found in the pushed commits; the push is rejected"
        ),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("{}  config/prod.env:2", &commit[..10])),
        "{seen}"
    );
    assert!(seen.contains(&format!("{}…", &key[..4])), "{seen}");
    assert!(!seen.contains(&key), "the secret itself was shown: {seen}");
    assert!(
        seen.contains("leakscan.bypass=false-positive|used-in-tests|fix-later"),
        "{seen}"
    );
    // The history before the push is not the push's business: only the
    // new commit was reported, not early.env.
    assert!(!seen.contains("early.env"), "{seen}");

    // The same push with a bypass lands, audited; false-positive marks the
    // secret reviewed, so it no longer stops anything.
    let (landed, seen) = app.push(&["leakscan.bypass=false-positive"]);
    assert!(landed, "{seen}");
    assert_eq!(app.served_head(), commit);
    assert!(
        seen.contains("let through (bypass: false-positive)"),
        "{seen}"
    );
    let bypasses = audit(&api, "hook.bypass");
    assert_eq!(bypasses.len(), 1, "{bypasses:?}");
    assert_eq!(bypasses[0]["user"], "hook:alice");
    assert_eq!(bypasses[0]["details"]["reason"], "false-positive");
    assert_eq!(bypasses[0]["details"]["path"], "config/prod.env");
    assert!(
        !bypasses[0].to_string().contains(&key),
        "the audit holds the secret"
    );
    app.commit(
        "config/copy.env",
        &format!("AWS_ACCESS_KEY_ID={key}\n"),
        "same key elsewhere",
    );
    let (landed, seen) = app.push(&[]);
    assert!(landed, "a reviewed secret stopped the push: {seen}");

    // used-in-tests and fix-later; fix-later leaves it open and queues a scan.
    app.commit(
        "tests/fixture.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(2)),
        "fixture",
    );
    assert!(app.push(&["leakscan.bypass=used-in-tests"]).0);
    app.commit(
        "later.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(3)),
        "fix later",
    );
    let (landed, seen) = app.push(&["leakscan.bypass=fix-later"]);
    assert!(landed, "{seen}");
    let reasons: Vec<Value> = audit(&api, "hook.bypass")
        .iter()
        .map(|e| e["details"]["reason"].clone())
        .collect();
    assert!(
        reasons.contains(&json!("used-in-tests")) && reasons.contains(&json!("fix-later")),
        "{reasons:?}"
    );
    let reviews = api.expect(
        "GET",
        "/rest/security/latest/reviewed/projects/PROJ/repos/app",
        None,
        200,
    );
    assert_eq!(reviews["values"].as_array().unwrap().len(), 2, "{reviews}");
    let jobs = api.expect("GET", "/rest/security/latest/jobs", None, 200);
    assert!(
        jobs["values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|job| job["requestedBy"] == "hook:alice"),
        "{jobs}"
    );
    // A reason that is not one is refused, not ignored.
    app.commit(
        "typo.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(4)),
        "typo",
    );
    let (landed, seen) = app.push(&["leakscan.bypass=because"]);
    assert!(!landed);
    assert!(
        seen.contains("the reason is one of false-positive, used-in-tests, fix-later"),
        "{seen}"
    );
    app.undo();

    // The commit-message marker lets that commit's secrets through.
    app.commit(
        "marked.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(5)),
        "demo key skip-soteri-security-check",
    );
    let (landed, seen) = app.push(&[]);
    assert!(landed, "{seen}");
    assert!(audit(&api, "hook.bypass")
        .iter()
        .any(|e| e["details"]["reason"] == "commit-message"));

    // A clean push lands without a word from leakscan.
    app.commit("docs/notes.md", "nothing secret here\n", "notes");
    let (landed, seen) = app.push(&[]);
    assert!(landed && !seen.contains("leakscan"), "{seen}");

    // Warn mode: told, not stopped.
    api.expect("PUT", &repo_hook, Some(json!({"mode": "warn"})), 200);
    app.commit(
        "warned.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(6)),
        "warned",
    );
    let (landed, seen) = app.push(&[]);
    assert!(landed, "{seen}");
    assert!(
        seen.contains("warning only; the push is accepted"),
        "{seen}"
    );
    let state = api.expect("PUT", &repo_hook, Some(json!({"mode": "block"})), 200);
    assert_eq!(state["settings"]["mode"], "block");

    // The gateway down: fail open lets it through with a warning, fail
    // closed stops it with the built-in rules.
    gateway.kill();
    app.commit(
        "down.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(7)),
        "gateway down",
    );
    let (landed, seen) = app.push(&[]);
    assert!(landed, "{seen}");
    assert!(seen.contains("the gateway cannot be reached"), "{seen}");
    let settings = std::fs::read_to_string(app.hook_settings()).unwrap();
    std::fs::write(
        app.hook_settings(),
        format!("{settings}on-gateway-error = closed\n"),
    )
    .unwrap();
    app.commit(
        "down2.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(8)),
        "gateway down, closed",
    );
    let (landed, seen) = app.push(&[]);
    assert!(!landed, "{seen}");
    assert!(seen.contains("the push is rejected"), "{seen}");
    app.undo();

    // Back at the same address; a push past its budget lands, audited, and
    // its branch is queued.
    let (restarted, _) = start_gateway(&env, &root, work.path(), &address, 1);
    gateway = restarted;
    std::fs::write(app.hook_settings(), format!("{settings}time-budget = 0\n")).unwrap();
    app.commit(
        "big.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(9)),
        "over budget",
    );
    let (landed, seen) = app.push(&[]);
    assert!(landed, "{seen}");
    assert!(seen.contains("too large to scan now"), "{seen}");
    assert_eq!(audit(&api, "hook.over_budget").len(), 1);
    std::fs::write(app.hook_settings(), &settings).unwrap();

    // Switched off: the hook is removed and everything lands.
    let state = api.expect("DELETE", &repo_hook, None, 200);
    assert_eq!(state["enabled"], false);
    assert!(!app.served.join("hooks/pre-receive").exists());
    app.commit(
        "off.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(10)),
        "off",
    );
    assert!(app.push(&[]).0);

    // A project default reaches the repositories that set nothing
    // themselves: `other` gets the hook, `app` (switched off itself) not.
    let project_hook = format!("/rest/api/latest/projects/PROJ/settings/hooks/{HOOK}/enabled");
    assert_eq!(api.expect("PUT", &project_hook, None, 200)["enabled"], true);
    let state = api.expect(
        "GET",
        &format!("/rest/api/latest/projects/PROJ/repos/other/settings/hooks/{HOOK}/enabled"),
        None,
        200,
    );
    assert_eq!(
        (state["enabled"].clone(), state["scope"]["type"].clone()),
        (json!(true), json!("PROJECT"))
    );
    assert!(other.served.join("hooks/pre-receive").exists());
    assert!(!app.served.join("hooks/pre-receive").exists());
    other.commit(
        "secret.env",
        &format!("AWS_ACCESS_KEY_ID={}\n", fake_key(11)),
        "other secret",
    );
    assert!(!other.push(&[]).0);

    drop(gateway);
    runtime.block_on(database.drop_database()).unwrap();
}
