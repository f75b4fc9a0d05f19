//! History scans of real repositories made with git: attribution to the
//! introducing commit, branches, merges, `--since`, config files, skipped
//! blobs, bad repositories, and thread-count invariance.

use leakscan_engine::{
    git::scan_repository, CustomRule, EngineError, Finding, GitScanRequest, Policy, RefSelection,
    ScanOptions, ScanProgress, ScanReport,
};
use leakscan_testkit::GitRepo;

const AWS_KEY: &str = "AKIAUJZDEGXDNCF32EPF";
const AWS_KEY_2: &str = "ASIA3DHODZDOCIS2JHTL";

fn scan_with(
    repo: &GitRepo,
    policy: &Policy,
    request: &GitScanRequest,
    threads: usize,
) -> Result<ScanReport, EngineError> {
    let options = ScanOptions {
        threads,
        ..ScanOptions::default()
    };
    scan_repository(
        repo.path(),
        policy,
        request,
        &options,
        &ScanProgress::default(),
    )
}

fn scan(repo: &GitRepo) -> ScanReport {
    scan_with(
        repo,
        &Policy::builtin_default(),
        &GitScanRequest::default(),
        2,
    )
    .expect("scan")
}

/// (rule, commit, path, line, branch) of each finding, in report order.
fn summary(findings: &[Finding]) -> Vec<(String, String, String, Option<u32>, String)> {
    findings
        .iter()
        .map(|f| {
            (
                f.rule_id.clone(),
                f.commit.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
                f.path.clone(),
                f.line,
                f.branch.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn aws_line(key: &str) -> String {
    format!("aws_access_key_id = {key}\n")
}

#[test]
fn a_secret_is_attributed_to_the_commit_that_introduced_it() {
    let repo = GitRepo::new();
    repo.write("README.md", "# demo\n");
    repo.commit_all("init");
    repo.write("config/app.ini", format!("[aws]\n{}", aws_line(AWS_KEY)));
    let introduced = repo.commit_all("add config");
    // Later edits of the same file keep the secret: still one finding.
    repo.write(
        "config/app.ini",
        format!("; comment\n[aws]\n{}region = eu\n", aws_line(AWS_KEY)),
    );
    repo.commit_all("edit config");
    // The secret is removed again: history still has it.
    repo.write("config/app.ini", "[aws]\nregion = eu\n");
    repo.commit_all("remove secret");

    let report = scan(&repo);
    assert_eq!(
        summary(&report.findings),
        vec![(
            "AWS_ACCESS_KEY_ID".into(),
            introduced.clone(),
            "config/app.ini".into(),
            Some(2),
            "main".into()
        )]
    );
    let commit = report.findings[0].commit.as_ref().unwrap();
    assert_eq!(commit.author, "Alice Example");
    assert_eq!(commit.author_email, "alice@example.com");
    assert_eq!(report.findings[0].secret.expose(), AWS_KEY.as_bytes());
    assert_eq!(report.stats.commits, 4);
}

#[test]
fn the_same_secret_in_another_file_is_another_finding() {
    let repo = GitRepo::new();
    repo.write("a.env", aws_line(AWS_KEY));
    let first = repo.commit_all("a");
    repo.write("b/b.env", format!("\n\n{}", aws_line(AWS_KEY)));
    let second = repo.commit_all("b");
    // A rename keeps the blob; the new path is a new place for the secret.
    repo.git(&["mv", "a.env", "c.env"]);
    let third = repo.commit_all("rename");
    let report = scan(&repo);
    let mut found = summary(&report.findings);
    found.sort();
    let mut expected = vec![
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            first,
            "a.env".to_string(),
            Some(1),
            "main".to_string(),
        ),
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            second,
            "b/b.env".to_string(),
            Some(3),
            "main".to_string(),
        ),
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            third,
            "c.env".to_string(),
            Some(1),
            "main".to_string(),
        ),
    ];
    expected.sort();
    assert_eq!(found, expected);
    // One unique blob for a.env/c.env, one for b/b.env.
    assert_eq!(report.stats.blobs_scanned, 2);
}

#[test]
fn branches_and_merges_attribute_to_the_branch_commit() {
    let repo = GitRepo::new();
    repo.write("main.txt", "main\n");
    repo.commit_all("init");
    repo.checkout_new("feature");
    repo.write("feature.env", aws_line(AWS_KEY));
    let on_feature = repo.commit_all("feature secret");
    repo.checkout("main");
    repo.write("main.txt", "main 2\n");
    repo.commit_all("main work");
    repo.merge("feature");
    repo.checkout_new("other");
    repo.write("other.env", aws_line(AWS_KEY_2));
    let on_other = repo.commit_all("other secret");
    repo.checkout("main");

    let report = scan(&repo);
    // The merge introduced nothing: it is not a finding's commit.
    assert_eq!(
        summary(&report.findings),
        vec![
            (
                "AWS_ACCESS_KEY_ID".into(),
                on_feature.clone(),
                "feature.env".into(),
                Some(1),
                "main".into()
            ),
            (
                "AWS_ACCESS_KEY_ID".into(),
                on_other.clone(),
                "other.env".into(),
                Some(1),
                "other".into()
            ),
        ]
    );

    let only_other = scan_with(
        &repo,
        &Policy::builtin_default(),
        &GitScanRequest {
            refs: RefSelection::Branch("other".into()),
            ..GitScanRequest::default()
        },
        1,
    )
    .unwrap();
    assert_eq!(only_other.findings.len(), 2);
    assert!(only_other
        .findings
        .iter()
        .all(|f| f.branch.as_deref() == Some("other")));

    let since = scan_with(
        &repo,
        &Policy::builtin_default(),
        &GitScanRequest {
            refs: RefSelection::Branch("other".into()),
            since: Some("main".into()),
            ..GitScanRequest::default()
        },
        1,
    )
    .unwrap();
    assert_eq!(
        summary(&since.findings),
        vec![(
            "AWS_ACCESS_KEY_ID".into(),
            on_other,
            "other.env".into(),
            Some(1),
            "other".into()
        )]
    );
    assert_eq!(since.stats.commits, 1);
}

#[test]
fn a_merge_that_brings_a_secret_from_both_sides_is_not_a_new_finding() {
    let repo = GitRepo::new();
    repo.write("shared.env", "x=1\n");
    repo.commit_all("init");
    repo.checkout_new("left");
    repo.write("shared.env", format!("x=1\n{}", aws_line(AWS_KEY)));
    let left = repo.commit_all("left adds the key");
    repo.checkout("main");
    repo.write("shared.env", format!("{}x=1\n", aws_line(AWS_KEY)));
    let right = repo.commit_all("main adds the key too");
    // Conflicting edits: resolve by hand into a third version.
    let _ = std::process::Command::new("git")
        .args(["merge", "-q", "--no-ff", "left"])
        .current_dir(repo.path())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "A")
        .env("GIT_AUTHOR_EMAIL", "a@a")
        .env("GIT_COMMITTER_NAME", "A")
        .env("GIT_COMMITTER_EMAIL", "a@a")
        .output();
    repo.write("shared.env", format!("{}x=1\ny=2\n", aws_line(AWS_KEY)));
    repo.commit_all("merge left");
    let report = scan(&repo);
    let mut commits: Vec<_> = report
        .findings
        .iter()
        .map(|f| f.commit.as_ref().unwrap().id.clone())
        .collect();
    commits.sort();
    let mut expected = vec![left, right];
    expected.sort();
    assert_eq!(commits, expected);
}

#[test]
fn pragma_allowlist_and_config_file_apply_per_branch() {
    let repo = GitRepo::new();
    repo.write(
        "quiet.env",
        format!("aws_access_key_id = {AWS_KEY} # pragma: allowlist secret\n"),
    );
    repo.write("tests/fixture.env", aws_line(AWS_KEY_2));
    repo.write("internal.txt", "ref = itk_0123456789abcdef\n");
    repo.commit_all("init");
    repo.checkout_new("configured");
    repo.write(
        "mohami-config.yml",
        "custom_rules:\n  INTERNAL_TOKEN: 'itk_[0-9a-f]{16}'\nallowlist_paths: ['^tests/']\n",
    );
    repo.commit_all("config");
    repo.checkout("main");

    let report = scan(&repo);
    let found: Vec<_> = report
        .findings
        .iter()
        .map(|f| {
            (
                f.rule_id.as_str(),
                f.path.as_str(),
                f.branch.as_deref().unwrap(),
            )
        })
        .collect();
    // main has no config: the fixture is reported, the custom rule does not exist.
    // configured: the fixture is allowlisted and the custom rule finds the token
    // (in the commit that introduced it, which both branches share).
    assert!(
        found.contains(&("AWS_ACCESS_KEY_ID", "tests/fixture.env", "main")),
        "{found:?}"
    );
    assert!(
        found.contains(&("INTERNAL_TOKEN", "internal.txt", "configured")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|(_, path, _)| *path == "quiet.env"),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn custom_path_and_line_rules_from_the_policy() {
    let repo = GitRepo::new();
    repo.write("keys/deploy.pem", "not really a key\n");
    repo.write("src/lib.rs", "const X: &str = \"corp-AAAA-BBBB\";\n");
    let commit = repo.commit_all("init");
    repo.write("keys/deploy.pem", "still not a key\n");
    repo.commit_all("edit");
    let policy = Policy {
        custom: vec![
            CustomRule {
                name: "PEM_FILE".into(),
                line_regex: None,
                path_regex: Some(r"\.pem$".into()),
                severity: leakscan_engine::Severity::Medium,
            },
            CustomRule {
                name: "CORP_ID".into(),
                line_regex: Some(r"corp-[A-Z]{4}-[A-Z]{4}".into()),
                path_regex: Some(r"^src/".into()),
                severity: leakscan_engine::Severity::Low,
            },
        ],
        ..Policy::default()
    };
    let report = scan_with(&repo, &policy, &GitScanRequest::default(), 2).unwrap();
    let mut found = summary(&report.findings);
    found.sort();
    assert_eq!(
        found,
        vec![
            (
                "CORP_ID".into(),
                commit.clone(),
                "src/lib.rs".into(),
                Some(1),
                "main".into()
            ),
            (
                "PEM_FILE".into(),
                commit,
                "keys/deploy.pem".into(),
                None,
                "main".into()
            ),
        ]
    );
}

#[test]
fn binary_and_oversized_blobs_are_skipped_and_counted() {
    let repo = GitRepo::new();
    let mut binary = aws_line(AWS_KEY).into_bytes();
    binary.push(0);
    repo.write("blob.bin", &binary);
    repo.write(
        "big.txt",
        format!("{}{}", aws_line(AWS_KEY_2), "x".repeat(5000)),
    );
    repo.write("small.txt", "nothing here\n");
    repo.commit_all("init");
    let options = ScanOptions {
        max_blob_size: 1000,
        threads: 1,
        ..ScanOptions::default()
    };
    let report = scan_repository(
        repo.path(),
        &Policy::builtin_default(),
        &GitScanRequest::default(),
        &options,
        &ScanProgress::default(),
    )
    .unwrap();
    assert!(
        report.findings.is_empty(),
        "{:?}",
        summary(&report.findings)
    );
    assert_eq!(report.stats.skipped_binary, 1);
    assert_eq!(report.stats.skipped_too_large, 1);
    assert_eq!(report.stats.blobs_scanned, 1);
}

#[test]
fn findings_do_not_depend_on_the_thread_count() {
    let repo = GitRepo::new();
    for round in 0..12 {
        repo.write(
            &format!("dir{}/file{round}.txt", round % 3),
            format!("line {round}\n"),
        );
        if round % 4 == 0 {
            repo.write(
                &format!("secrets/s{round}.env"),
                aws_line(&format!("AKIAUJZDEGXDNCF3{round:04}")),
            );
        }
        repo.commit_all(&format!("round {round}"));
        if round == 5 {
            repo.checkout_new("side");
        }
    }
    let one = scan_with(
        &repo,
        &Policy::builtin_default(),
        &GitScanRequest::default(),
        1,
    )
    .unwrap();
    let many = scan_with(
        &repo,
        &Policy::builtin_default(),
        &GitScanRequest::default(),
        4,
    )
    .unwrap();
    assert_eq!(one.findings.len(), 3);
    assert_eq!(one.findings, many.findings);
    assert_eq!(one.stats, many.stats);
}

#[test]
fn unknown_branch_and_since_are_errors_naming_them() {
    let repo = GitRepo::new();
    repo.write("a", "a\n");
    repo.commit_all("init");
    let branch = scan_with(
        &repo,
        &Policy::builtin_default(),
        &GitScanRequest {
            refs: RefSelection::Branch("nope".into()),
            ..GitScanRequest::default()
        },
        1,
    )
    .unwrap_err();
    assert!(
        branch.to_string().contains("\"nope\" not found"),
        "{branch}"
    );
    let since = scan_with(
        &repo,
        &Policy::builtin_default(),
        &GitScanRequest {
            since: Some("deadbeef".into()),
            ..GitScanRequest::default()
        },
        1,
    )
    .unwrap_err();
    assert!(since.to_string().contains("deadbeef"), "{since}");
}

#[test]
fn shallow_and_corrupt_repositories_are_refused_clearly() {
    let origin = GitRepo::new();
    origin.write("a.txt", "one\n");
    origin.commit_all("one");
    origin.write("a.txt", "two\n");
    origin.commit_all("two");
    let clones = tempfile::tempdir().unwrap();
    let shallow = clones.path().join("shallow");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--depth", "1"])
        .arg(format!("file://{}", origin.path().display()))
        .arg(&shallow)
        .status()
        .unwrap();
    assert!(status.success());
    let options = ScanOptions::default();
    let error = scan_repository(
        &shallow,
        &Policy::builtin_default(),
        &GitScanRequest::default(),
        &options,
        &ScanProgress::default(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("shallow"), "{error}");
    let allowed = scan_repository(
        &shallow,
        &Policy::builtin_default(),
        &GitScanRequest {
            allow_shallow: true,
            ..GitScanRequest::default()
        },
        &options,
        &ScanProgress::default(),
    )
    .unwrap();
    assert_eq!(allowed.stats.commits, 1);

    let corrupt = clones.path().join("corrupt");
    std::fs::create_dir_all(corrupt.join(".git")).unwrap();
    std::fs::write(corrupt.join(".git/HEAD"), "garbage").unwrap();
    let error = leakscan_engine::scan_path(
        &corrupt,
        &Policy::builtin_default(),
        &GitScanRequest::default(),
        &options,
        &ScanProgress::default(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("not a valid git repository"),
        "{error}"
    );
    assert!(error.to_string().contains("corrupt"), "{error}");
}

#[test]
fn a_missing_object_is_a_warning_and_the_scan_goes_on() {
    let repo = GitRepo::new();
    repo.write("good.env", aws_line(AWS_KEY));
    repo.write(
        "lost.txt",
        "this blob will be deleted from the object store\n",
    );
    repo.commit_all("init");
    let lost = repo.git(&["rev-parse", "HEAD:lost.txt"]);
    let object = repo
        .path()
        .join(".git/objects")
        .join(&lost[..2])
        .join(&lost[2..]);
    std::fs::remove_file(object).unwrap();
    let report = scan(&repo);
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.stats.unreadable, 1);
    assert!(
        report.warnings.iter().any(|w| w.subject.contains(&lost)),
        "{:?}",
        report.warnings
    );
}

#[test]
fn all_refs_reaches_commits_only_a_tag_holds() {
    let repo = GitRepo::new();
    repo.write("a.txt", "a\n");
    repo.commit_all("init");
    repo.checkout_new("temp");
    repo.write("release.env", aws_line(AWS_KEY));
    let tagged = repo.commit_all("release candidate");
    repo.git(&["tag", "-a", "v1.0-rc", "-m", "rc"]);
    repo.checkout("main");
    repo.git(&["branch", "-D", "temp"]);

    assert!(scan(&repo).findings.is_empty());
    let all_refs = scan_with(
        &repo,
        &Policy::builtin_default(),
        &GitScanRequest {
            refs: RefSelection::AllRefs,
            ..GitScanRequest::default()
        },
        2,
    )
    .unwrap();
    assert_eq!(
        summary(&all_refs.findings),
        vec![(
            "AWS_ACCESS_KEY_ID".into(),
            tagged,
            "release.env".into(),
            Some(1),
            "v1.0-rc".into()
        )]
    );
}

#[test]
fn a_shared_blob_cache_spares_rescans_and_forks_every_read() {
    use leakscan_engine::{git::scan_repository_with_cache, MemoryBlobCache};
    let repo = GitRepo::new();
    repo.write("a.env", aws_line(AWS_KEY));
    repo.write("notes.txt", "ticket = CORP-ZXCV-0042\n");
    repo.commit_all("init");
    repo.write("a.env", format!("{}region = eu\n", aws_line(AWS_KEY)));
    repo.commit_all("edit");
    let cache = MemoryBlobCache::default();
    let scan_cached = |path: &std::path::Path, policy: &Policy| {
        scan_repository_with_cache(
            path,
            policy,
            &GitScanRequest::default(),
            &ScanOptions::default(),
            &ScanProgress::default(),
            &cache,
        )
        .unwrap()
    };
    let base = Policy::builtin_default();
    let first = scan_cached(repo.path(), &base);
    assert_eq!(
        (first.stats.blobs_scanned, first.stats.blobs_from_cache),
        (3, 0)
    );
    assert_eq!(cache.len(), 3);

    let rescan = scan_cached(repo.path(), &base);
    assert_eq!(
        (rescan.stats.blobs_scanned, rescan.stats.blobs_from_cache),
        (0, 3)
    );
    assert_eq!(rescan.findings, first.findings);
    assert_eq!(rescan.findings.len(), 1);

    // A fork shares the blobs: nothing to read either.
    let forks = tempfile::tempdir().unwrap();
    let fork = forks.path().join("fork.git");
    let cloned = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo.path())
        .arg(&fork)
        .status()
        .unwrap();
    assert!(cloned.success());
    let forked = scan_cached(&fork, &base);
    assert_eq!(forked.stats.blobs_scanned, 0);
    assert_eq!(forked.findings.len(), 1);

    // Another ruleset is another digest: blobs are read again under it.
    let custom = Policy {
        custom: vec![CustomRule::line("CORP_TICKET", r"CORP-[A-Z]{4}-[0-9]{4}")],
        ..Policy::builtin_default()
    };
    let changed = scan_cached(repo.path(), &custom);
    assert_eq!(
        (changed.stats.blobs_scanned, changed.stats.blobs_from_cache),
        (3, 0)
    );
    let rules: Vec<_> = changed
        .findings
        .iter()
        .map(|f| f.rule_id.as_str())
        .collect();
    assert_eq!(rules, vec!["AWS_ACCESS_KEY_ID", "CORP_TICKET"]);
}

#[test]
fn policy_filters_apply_to_cached_results_without_reading_again() {
    use leakscan_engine::{git::scan_repository_with_cache, AllowRule, MemoryBlobCache};
    let repo = GitRepo::new();
    repo.write("config/a.env", aws_line(AWS_KEY));
    repo.write("vendor/b.env", aws_line(AWS_KEY_2));
    repo.write(
        "c.env",
        format!("aws_access_key_id = {AWS_KEY_2} # test fixture\n"),
    );
    repo.commit_all("init");
    let cache = MemoryBlobCache::default();
    let scan_cached = |policy: &Policy| {
        let report = scan_repository_with_cache(
            repo.path(),
            policy,
            &GitScanRequest::default(),
            &ScanOptions::default(),
            &ScanProgress::default(),
            &cache,
        )
        .unwrap();
        let paths: Vec<String> = report.findings.iter().map(|f| f.path.clone()).collect();
        // Blobs read: scanned, or found binary (a binary blob is cached as clean).
        (
            report.stats.blobs_scanned + report.stats.skipped_binary,
            paths,
        )
    };
    let base = Policy::builtin_default();
    assert_eq!(
        scan_cached(&base),
        (
            3,
            vec!["c.env".into(), "config/a.env".into(), "vendor/b.env".into()]
        )
    );
    // Each of these policies' results is known from the cached raw matches:
    // nothing is read, and each reports what a fresh scan reports.
    let mut without_aws = base.clone();
    without_aws
        .builtins
        .retain(|spec| spec.id != "AWS_ACCESS_KEY_ID");
    let path_allowed = Policy {
        allowlist: vec![AllowRule::path("^vendor/")],
        ..base.clone()
    };
    let line_allowed = Policy {
        allowlist: vec![AllowRule::line("test fixture")],
        ..base.clone()
    };
    let both = Policy {
        allowlist: vec![AllowRule {
            name: "fixture in c.env only".into(),
            line_regex: Some(AWS_KEY_2.into()),
            path_regex: Some(r"^c\.env$".into()),
        }],
        ..base.clone()
    };
    for (policy, expected) in [
        (&without_aws, vec![]),
        (&path_allowed, vec!["c.env", "config/a.env"]),
        (&line_allowed, vec!["config/a.env", "vendor/b.env"]),
        (&both, vec!["config/a.env", "vendor/b.env"]),
    ] {
        let expected: Vec<String> = expected.into_iter().map(String::from).collect();
        assert_eq!(scan_cached(policy), (0, expected.clone()));
        let fresh = scan_with(&repo, policy, &GitScanRequest::default(), 1).unwrap();
        let fresh: Vec<String> = fresh.findings.iter().map(|f| f.path.clone()).collect();
        assert_eq!(fresh, expected, "a fresh scan agrees");
    }
}
