//! `leakscan scan --baseline` (CI: only new findings fail a build) and the
//! developer's side of push protection: `leakscan hook pre-commit` and
//! `leakscan hook install`, run through a real `git commit`.

use std::{
    path::Path,
    process::{Command, Output},
};

use leakscan_engine::rules::find_builtin;
use leakscan_testkit::GitRepo;
use serde_json::Value;

const KEY: &str = "a-fingerprint-key-shared-by-ci-runs-0123456789";

fn leakscan(dir: &Path, args: &[&str], key: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leakscan"))
        .current_dir(dir)
        .args(args)
        .env("LEAKSCAN_FINGERPRINT_KEY", key)
        .env("LEAKSCAN_CACHE_DIR", "off")
        .output()
        .expect("run leakscan")
}

/// `leakscan scan . --format json` and `extra` in `dir`.
fn scan_json(dir: &Path, extra: &[&str], key: &str) -> Output {
    let mut args = vec!["scan", ".", "--format", "json"];
    args.extend_from_slice(extra);
    leakscan(dir, &args, key)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The secret in a built-in rule's first example, and the example.
fn example(rule: &str) -> String {
    find_builtin(rule)
        .unwrap_or_else(|| panic!("no rule {rule}"))
        .examples[0]
        .clone()
}

fn rules_of(report: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = report
        .as_array()
        .expect("a list of findings")
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_baseline_hides_known_secrets_wherever_they_move_and_reports_new_ones() {
    let repo = GitRepo::new();
    repo.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    repo.commit_all("init");
    let reports = tempfile::tempdir().unwrap();
    let json = reports.path().join("baseline.json");
    let sarif = reports.path().join("baseline.sarif");
    for (format, path) in [("json", &json), ("sarif", &sarif)] {
        let made = leakscan(
            repo.path(),
            &[
                "scan",
                ".",
                "--format",
                format,
                "-o",
                path.to_str().unwrap(),
            ],
            KEY,
        );
        assert_eq!(made.status.code(), Some(1), "{}", text(&made.stderr));
    }

    // The known key moves to another file; a new secret comes.
    repo.remove("app.env");
    repo.write(
        "deploy/app.env",
        format!("{}\n", example("AWS_ACCESS_KEY_ID")),
    );
    repo.write("ci.sh", format!("{}\n", example("GITHUB_PAT_CLASSIC")));
    repo.commit_all("move the key, add a token");
    for baseline in [&json, &sarif] {
        let scanned = scan_json(
            repo.path(),
            &["--baseline", baseline.to_str().unwrap()],
            KEY,
        );
        assert_eq!(scanned.status.code(), Some(1), "{}", text(&scanned.stderr));
        let report: Value = serde_json::from_slice(&scanned.stdout).unwrap();
        assert_eq!(
            rules_of(&report),
            [("GITHUB_PAT_CLASSIC".to_string(), "ci.sh".to_string())]
        );
    }

    // Everything known: nothing to report, exit 0.
    let everything = reports.path().join("everything.json");
    scan_json(repo.path(), &["-o", everything.to_str().unwrap()], KEY);
    let clean = scan_json(
        repo.path(),
        &["--baseline", everything.to_str().unwrap()],
        KEY,
    );
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&clean.stdout).unwrap(),
        Value::Array(vec![])
    );

    // Another fingerprint key matches nothing, and says why.
    let other = scan_json(
        repo.path(),
        &["--baseline", everything.to_str().unwrap()],
        "another-key-0123456789-0123456789-0123456789",
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(
        text(&other.stderr).contains("another fingerprint key"),
        "{}",
        text(&other.stderr)
    );
}

#[test]
fn a_baseline_that_is_no_report_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.env"), "nothing\n").unwrap();
    std::fs::write(dir.path().join("findings.csv"), "rule,fingerprint\nA,b\n").unwrap();
    let output = leakscan(
        dir.path(),
        &["scan", "app.env", "--baseline", "findings.csv"],
        KEY,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("findings.csv") && stderr.contains("not JSON"),
        "{stderr}"
    );
    let missing = leakscan(
        dir.path(),
        &["scan", "app.env", "--baseline", "gone.json"],
        KEY,
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("gone.json"));
}

fn pre_commit(repo: &GitRepo) -> Output {
    leakscan(repo.path(), &["hook", "pre-commit"], KEY)
}

#[test]
fn pre_commit_stops_only_secrets_the_staged_changes_add() {
    let repo = GitRepo::new();
    let old_secret = example("AWS_ACCESS_KEY_ID");
    let new_secret = example("GITHUB_PAT_CLASSIC");
    repo.write("settings.conf", format!("name = demo\n{old_secret}\n"));
    repo.write("old/keep.env", format!("{old_secret}\n"));
    repo.commit_all("a secret somebody already allowed");

    // Nothing staged; then an edit beside the old secret, and a rename.
    assert_eq!(pre_commit(&repo).status.code(), Some(0));
    repo.write(
        "settings.conf",
        format!("name = demo\n{old_secret}\nport = 8080\n"),
    );
    repo.git(&["mv", "old/keep.env", "kept.env"]);
    repo.git(&["add", "settings.conf"]);
    let output = pre_commit(&repo);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    // A secret in the working tree only is not in the commit.
    repo.write(
        "settings.conf",
        format!("name = demo\n{old_secret}\nport = 8080\n{new_secret}\n"),
    );
    assert_eq!(pre_commit(&repo).status.code(), Some(0));

    // Staged, it is; and it stays stopped once the working copy drops it.
    repo.git(&["add", "settings.conf"]);
    repo.write(
        "settings.conf",
        format!("name = demo\n{old_secret}\nport = 8080\n"),
    );
    let output = pre_commit(&repo);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("settings.conf:4"), "{stderr}");
    assert!(stderr.contains("GITHUB_PAT_CLASSIC"), "{stderr}");
    assert!(
        !stderr.contains("settings.conf:2"),
        "the old secret is reported: {stderr}"
    );
    assert!(
        !stderr.contains(&new_secret[new_secret.find("ghp_").unwrap()..]),
        "{stderr}"
    );

    // A new file counts whole; a line with the pragma passes.
    repo.git(&["reset", "-q", "settings.conf"]);
    repo.write("new/key.env", format!("{new_secret}\n"));
    repo.git(&["add", "new/key.env"]);
    let output = pre_commit(&repo);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("new/key.env:1"));
    repo.write(
        "new/key.env",
        format!("{new_secret} # pragma: allowlist secret\n"),
    );
    repo.git(&["add", "new/key.env"]);
    let output = pre_commit(&repo);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

/// Regressions found in review: a staged secret slipped through when the
/// file's name had a space (git ends that header line with a tab), after an
/// added line starting `++ ` (read as a file header), when only a private
/// key's body changed (its finding's line, the BEGIN line, was not new),
/// when a symbolic link became a file (type changes were not listed), and
/// for a whole-file rule on a renamed file; a Latin-1 file made the hook
/// fail.
#[test]
fn pre_commit_reads_every_kind_of_staged_change() {
    let repo = GitRepo::new();
    let token = example("GITHUB_PAT_CLASSIC");
    let key = example("RSA_PRIVATE_KEY");
    let filler: String = (1..=20).map(|n| format!("line {n}\n")).collect();
    repo.write("my settings.conf", "name = demo\n");
    repo.write("counter.txt", &filler);
    repo.write("deploy/key.pem", &key);
    repo.write("latin1.txt", b"caf\xe9\n".as_slice());
    repo.write("notes.txt", "nothing\n");
    std::os::unix::fs::symlink("counter.txt", repo.path().join("link.env")).unwrap();
    repo.commit_all("init");
    let staged_alone = |setup: &dyn Fn()| {
        repo.git(&["reset", "-q", "--hard"]);
        setup();
        repo.git(&["add", "-A"]);
        pre_commit(&repo)
    };

    let output =
        staged_alone(&|| repo.write("my settings.conf", format!("name = demo\n{token}\n")));
    assert_eq!(output.status.code(), Some(1), "space in the name");
    assert!(
        text(&output.stderr).contains("my settings.conf:2"),
        "{}",
        text(&output.stderr)
    );

    let output = staged_alone(&|| {
        repo.write("counter.txt", format!("++ counter\n{filler}{token}\n"));
    });
    assert_eq!(output.status.code(), Some(1), "after a `++ ` line");
    assert!(
        text(&output.stderr).contains("counter.txt:22"),
        "{}",
        text(&output.stderr)
    );

    let output = staged_alone(&|| {
        let body_line = key.lines().nth(3).unwrap();
        let rotated: String = body_line.chars().rev().collect();
        repo.write("deploy/key.pem", key.replacen(body_line, &rotated, 1));
    });
    assert_eq!(
        output.status.code(),
        Some(1),
        "a key's body replaced: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("deploy/key.pem:1"),
        "{}",
        text(&output.stderr)
    );

    let output = staged_alone(&|| {
        std::fs::remove_file(repo.path().join("link.env")).unwrap();
        repo.write("link.env", format!("{token}\n"));
    });
    assert_eq!(output.status.code(), Some(1), "a link become a file");

    let output = staged_alone(&|| repo.write("latin1.txt", b"caf\xe9\nna\xefve\n".as_slice()));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "custom_rules:\n  KEY_FILE_NAMES: {path_regex: '(^|/)id_rsa$', severity: HIGH}\n",
    )
    .unwrap();
    repo.git(&["reset", "-q", "--hard"]);
    repo.git(&["mv", "notes.txt", "id_rsa"]);
    let output = leakscan(
        repo.path(),
        &[
            "hook",
            "pre-commit",
            "--config",
            config.path().to_str().unwrap(),
        ],
        KEY,
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "a rename to a key file's name"
    );
    assert!(
        text(&output.stderr).contains("KEY_FILE_NAMES"),
        "{}",
        text(&output.stderr)
    );
}

/// Regression: concluding a merge, everything the merged branch brings is
/// staged as added, so its secrets (judged when committed there) stopped
/// the merge commit.
#[test]
fn pre_commit_lets_a_merge_bring_what_the_merged_branch_holds() {
    let repo = GitRepo::new();
    repo.write("README.md", "# demo\n");
    repo.commit_all("init");
    repo.checkout_new("feature");
    repo.write("feature.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    repo.commit_all("feature, with a key somebody allowed");
    repo.checkout("main");
    repo.write("README.md", "# demo\n\nmain moved on\n");
    repo.commit_all("main moves on");
    repo.git(&["merge", "--no-ff", "--no-commit", "-q", "feature"]);
    let output = pre_commit(&repo);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    // A secret the merge itself adds is still stopped.
    repo.write(
        "README.md",
        format!(
            "# demo\n\nmain moved on\n{}\n",
            example("GITHUB_PAT_CLASSIC")
        ),
    );
    repo.git(&["add", "README.md"]);
    let output = pre_commit(&repo);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("README.md:4") && !stderr.contains("feature.env"),
        "{stderr}"
    );
}

#[test]
fn pre_commit_outside_a_repository_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = leakscan(dir.path(), &["hook", "pre-commit"], KEY);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("not in a git work tree"));
}

/// `git commit` as a developer runs it, with the repository's hooks.
fn git_commit(repo: &GitRepo, message: &str) -> Output {
    Command::new("git")
        .current_dir(repo.path())
        .args(["commit", "-q", "-m", message])
        .env("GIT_AUTHOR_NAME", "Alice Example")
        .env("GIT_AUTHOR_EMAIL", "alice@example.com")
        .env("GIT_COMMITTER_NAME", "Alice Example")
        .env("GIT_COMMITTER_EMAIL", "alice@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("LEAKSCAN_FINGERPRINT_KEY", KEY)
        .env("LEAKSCAN_CACHE_DIR", "off")
        .output()
        .expect("run git commit")
}

#[test]
fn the_installed_hook_stops_a_commit_with_a_secret_and_lets_others_through() {
    let repo = GitRepo::new();
    repo.write("README.md", "# demo\n");
    repo.commit_all("init");
    let installed = leakscan(repo.path(), &["hook", "install"], KEY);
    assert_eq!(
        installed.status.code(),
        Some(0),
        "{}",
        text(&installed.stderr)
    );
    let hook = repo.path().join(".git/hooks/pre-commit");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&hook).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "the hook is not executable");
    }

    repo.write("deploy.sh", format!("{}\n", example("GITHUB_PAT_CLASSIC")));
    repo.git(&["add", "deploy.sh"]);
    let stopped = git_commit(&repo, "deploy script");
    assert!(!stopped.status.success(), "the commit went through");
    assert!(
        text(&stopped.stderr).contains("deploy.sh:1"),
        "{}",
        text(&stopped.stderr)
    );
    let head_before = repo.head();

    repo.write("deploy.sh", "echo deploy\n");
    repo.git(&["add", "deploy.sh"]);
    let committed = git_commit(&repo, "deploy script");
    assert!(committed.status.success(), "{}", text(&committed.stderr));
    assert_ne!(repo.head(), head_before);

    // Installing again replaces its own hook; another's stays unless forced.
    assert_eq!(
        leakscan(repo.path(), &["hook", "install"], KEY)
            .status
            .code(),
        Some(0)
    );
    std::fs::write(&hook, "#!/bin/sh\nexec make lint\n").unwrap();
    let refused = leakscan(repo.path(), &["hook", "install"], KEY);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(&hook).unwrap(),
        "#!/bin/sh\nexec make lint\n"
    );
    let forced = leakscan(repo.path(), &["hook", "install", "--force"], KEY);
    assert_eq!(forced.status.code(), Some(0));
    assert!(std::fs::read_to_string(&hook)
        .unwrap()
        .contains("hook pre-commit"));
}

#[test]
fn install_for_the_pre_commit_framework_adds_a_local_hook_once() {
    let repo = GitRepo::new();
    let config = repo.path().join(".pre-commit-config.yaml");
    let first = leakscan(repo.path(), &["hook", "install", "--framework"], KEY);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.starts_with("repos:\n"), "{written}");
    assert!(
        written.contains("entry: leakscan hook pre-commit"),
        "{written}"
    );
    assert!(written.contains("pass_filenames: false"), "{written}");
    let again = leakscan(repo.path(), &["hook", "install", "--framework"], KEY);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);

    // An existing configuration gains the entry under its repos.
    std::fs::write(
        &config,
        "default_stages: [pre-commit]\nrepos:\n  - repo: local\n    hooks:\n      - id: lint\n        name: lint\n        entry: make lint\n        language: system\n",
    )
    .unwrap();
    let added = leakscan(repo.path(), &["hook", "install", "--framework"], KEY);
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let text_now = std::fs::read_to_string(&config).unwrap();
    assert!(
        text_now.contains("entry: make lint")
            && text_now.contains("entry: leakscan hook pre-commit")
    );
    // The framework's own sample style, items at column 0: the entry
    // follows it, so the file stays valid YAML.
    std::fs::write(
        &config,
        "repos:\n-   repo: https://github.com/pre-commit/pre-commit-hooks\n    rev: v4.6.0\n    hooks:\n    -   id: trailing-whitespace\n",
    )
    .unwrap();
    let added = leakscan(repo.path(), &["hook", "install", "--framework"], KEY);
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let text_now = std::fs::read_to_string(&config).unwrap();
    assert!(
        text_now.contains("\n- repo: local\n  hooks:\n    - id: leakscan\n"),
        "{text_now}"
    );
    // Keys after `repos:` are left for a person to edit.
    std::fs::write(&config, "repos: []\nfail_fast: true\n").unwrap();
    let refused = leakscan(repo.path(), &["hook", "install", "--framework"], KEY);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("entry: leakscan hook pre-commit"));
}

/// The `leakscan` command lines of a CI example in docs/ci/.
fn example_commands(file: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/ci")
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.find("leakscan scan").map(|at| line[at..].to_string()))
        .collect()
}

/// Runs a command line as the CI runner's shell does, with leakscan on the
/// PATH and the variables the CI service sets for a pull request to main.
fn run_ci_line(dir: &Path, line: &str) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_leakscan")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .current_dir(dir)
        .args(["-c", line])
        .env("PATH", path)
        .env("BITBUCKET_PR_DESTINATION_BRANCH", "main")
        .env("GITHUB_BASE_REF", "main")
        .env("LEAKSCAN_FINGERPRINT_KEY", KEY)
        .env("LEAKSCAN_CACHE_DIR", "off")
        .output()
        .expect("run sh")
}

fn reported_rules(file: &Path) -> Vec<String> {
    let report: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let findings: Vec<Value> = match report.get("runs") {
        Some(runs) => runs[0]["results"].as_array().unwrap().clone(),
        None => report.as_array().unwrap().clone(),
    };
    let mut rules: Vec<String> = findings
        .iter()
        .map(|f| {
            f.get("ruleId")
                .or_else(|| f.get("rule"))
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        })
        .collect();
    rules.sort();
    rules
}

#[test]
fn the_ci_examples_report_only_what_a_pull_request_or_push_adds() {
    // The project's main branch, with a secret the baseline knows.
    let origin = GitRepo::new();
    origin.write("app.env", format!("{}\n", example("AWS_ACCESS_KEY_ID")));
    origin.commit_all("init");
    let checkout = tempfile::tempdir().unwrap();
    let status = Command::new("git")
        .args(["clone", "-q"])
        .arg(origin.path())
        .arg(checkout.path().join("work"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .unwrap();
    assert!(status.success());
    let work = checkout.path().join("work");
    let made = scan_json(&work, &["--output", "leakscan-baseline.json"], KEY);
    assert_eq!(made.status.code(), Some(1), "{}", text(&made.stderr));
    // A pull request's commit adds a token.
    std::fs::write(
        work.join("ci.sh"),
        format!("{}\n", example("GITHUB_PAT_CLASSIC")),
    )
    .unwrap();
    for args in [
        &["checkout", "-q", "-b", "feature"][..],
        &["add", "ci.sh"],
        &[
            "-c",
            "user.name=Bob",
            "-c",
            "user.email=bob@example.com",
            "commit",
            "-q",
            "-m",
            "ci",
        ],
    ] {
        let status = Command::new("git")
            .current_dir(&work)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    for example_file in ["bitbucket-pipelines.yml", "github-actions.yml"] {
        let lines = example_commands(example_file);
        assert_eq!(lines.len(), 2, "{example_file}: {lines:?}");
        for line in lines {
            for old in ["leakscan.json", "leakscan.sarif"] {
                let _ = std::fs::remove_file(work.join(old));
            }
            let output = run_ci_line(&work, &line);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{example_file}: {line}: {}",
                text(&output.stderr)
            );
            let report = ["leakscan.json", "leakscan.sarif"]
                .iter()
                .map(|name| work.join(name))
                .find(|path| path.exists())
                .unwrap_or_else(|| panic!("{example_file}: {line}: no report"));
            assert_eq!(
                reported_rules(&report),
                ["GITHUB_PAT_CLASSIC"],
                "{example_file}: {line}"
            );
        }
    }
}
