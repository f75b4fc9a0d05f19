//! Scans of what a push brings (`RefSelection::Pushed`, the pre-receive
//! hook's scan): only commits no existing ref reaches, objects read from a
//! quarantine directory, and findings equal to a branch scan's over the same
//! commits.

use std::collections::BTreeSet;

use leakscan_engine::{
    git::scan_repository, Finding, GitScanRequest, Policy, PushedRefs, RefSelection, ScanOptions,
    ScanProgress,
};
use leakscan_testkit::GitRepo;
use proptest::prelude::*;

/// AWS-shaped fakes, one per index (our own; the body is made up).
fn fake_key(index: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut body = String::new();
    let mut state = index as u64 * 2_654_435_761 + 97;
    for _ in 0..16 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        body.push(ALPHABET[(state >> 59) as usize] as char);
    }
    format!("AKIA{body}")
}

/// One compiled ruleset for every scan of this file (compiling the
/// built-ins takes seconds).
fn options() -> ScanOptions {
    static RULESETS: std::sync::OnceLock<std::sync::Arc<leakscan_engine::RuleSetCache>> =
        std::sync::OnceLock::new();
    ScanOptions {
        threads: 2,
        rulesets: Some(std::sync::Arc::clone(
            RULESETS.get_or_init(Default::default),
        )),
        ..ScanOptions::default()
    }
}

/// (commit, path, line, rule, secret) of each finding.
type Key = (String, String, Option<u32>, String, String);

fn keys<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> BTreeSet<Key> {
    findings
        .into_iter()
        .map(|f| {
            (
                f.commit.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
                f.path.clone(),
                f.line,
                f.rule_id.clone(),
                String::from_utf8_lossy(f.secret.expose()).into_owned(),
            )
        })
        .collect()
}

/// Scans `refs` of the repository at `repo` under the built-in rules.
fn scan(repo: &std::path::Path, refs: RefSelection) -> Result<Vec<Finding>, String> {
    let request = GitScanRequest {
        refs,
        ..GitScanRequest::default()
    };
    scan_repository(
        repo,
        &Policy::builtin_default(),
        &request,
        &options(),
        &ScanProgress::default(),
    )
    .map(|report| report.findings)
    .map_err(|error| error.to_string())
}

fn scan_push(
    repo: &std::path::Path,
    tips: Vec<(String, String)>,
    object_dirs: Vec<std::path::PathBuf>,
) -> Vec<Finding> {
    scan(repo, RefSelection::Pushed(PushedRefs { tips, object_dirs })).expect("push scan")
}

fn scan_branch(repo: &std::path::Path, branch: &str) -> Vec<Finding> {
    scan(repo, RefSelection::Branch(branch.to_string())).expect("branch scan")
}

fn rev_list(repo: &GitRepo, range: &str) -> BTreeSet<String> {
    repo.git(&["rev-list", range])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn only_commits_no_existing_ref_reaches_are_scanned() {
    let repo = GitRepo::new();
    repo.write("old.env", format!("AWS_ACCESS_KEY_ID={}\n", fake_key(1)));
    repo.commit_all("old secret");
    let old = repo.head();
    repo.checkout_new("feature");
    repo.write("new.env", format!("AWS_ACCESS_KEY_ID={}\n", fake_key(2)));
    let new = repo.commit_all("new secret");
    // The push has not landed: the feature branch does not exist yet.
    repo.checkout("main");
    repo.git(&["branch", "-D", "feature"]);

    let findings = scan_push(
        repo.path(),
        vec![("refs/heads/feature".into(), new.clone())],
        vec![],
    );
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].path, "new.env");
    assert_eq!(findings[0].commit.as_ref().unwrap().id, new);
    assert_eq!(findings[0].branch.as_deref(), Some("feature"));

    // Pushing a branch at a commit that exists already brings nothing.
    let findings = scan_push(repo.path(), vec![("refs/heads/copy".into(), old)], vec![]);
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn quarantined_objects_are_read_from_the_given_directories() {
    let server = tempfile::tempdir().unwrap();
    let origin = GitRepo::new();
    origin.write("README.md", "# demo\n");
    origin.commit_all("init");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(origin.path())
        .arg(server.path().join("repo.git"))
        .status()
        .unwrap();
    assert!(status.success());
    // The pushed commit lives only in another object directory, as git's
    // quarantine keeps it while the pre-receive hook runs.
    origin.write(
        "deploy.sh",
        format!("export AWS_ACCESS_KEY_ID={}\n", fake_key(3)),
    );
    let pushed = origin.commit_all("deploy");
    let quarantine = origin.path().join(".git/objects");

    let bare = server.path().join("repo.git");
    let findings = scan_push(
        &bare,
        vec![("refs/heads/main".into(), pushed.clone())],
        vec![quarantine],
    );
    assert_eq!(keys(&findings).len(), 1, "{findings:?}");
    assert_eq!(findings[0].commit.as_ref().unwrap().id, pushed);

    // Without the quarantine the commit is not there: a clear error.
    let error = scan(
        &bare,
        RefSelection::Pushed(PushedRefs {
            tips: vec![("refs/heads/main".into(), pushed)],
            object_dirs: vec![],
        }),
    )
    .unwrap_err();
    assert!(error.contains("pushed refs/heads/main"), "{error}");
}

/// One step of a generated history.
#[derive(Debug, Clone)]
enum Step {
    /// Write `key` into file `file` (replacing what it held).
    Write { file: usize, key: usize },
    /// Empty file `file`.
    Clear { file: usize },
    /// Branch off, commit there, and merge back.
    SideCommit { file: usize, key: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..6usize).prop_map(|(file, key)| Step::Write { file, key }),
        (0..3usize).prop_map(|file| Step::Clear { file }),
        (0..3usize, 0..6usize).prop_map(|(file, key)| Step::SideCommit { file, key }),
    ]
}

fn apply(repo: &GitRepo, number: usize, step: &Step) {
    let file = |index: usize| format!("conf/file{index}.env");
    match step {
        Step::Write { file: f, key } => {
            repo.write(
                &file(*f),
                format!("# step {number}\nAWS_ACCESS_KEY_ID={}\n", fake_key(*key)),
            );
            repo.commit_all(&format!("step {number}"));
        }
        Step::Clear { file: f } => {
            repo.write(&file(*f), format!("# step {number}\n"));
            repo.commit_all(&format!("step {number}"));
        }
        Step::SideCommit { file: f, key } => {
            let side = format!("side{number}");
            repo.checkout_new(&side);
            repo.write(
                &file(*f),
                format!("# side {number}\nAWS_ACCESS_KEY_ID={}\n", fake_key(*key)),
            );
            repo.commit_all(&format!("side {number}"));
            repo.checkout("main");
            repo.write("main.txt", format!("main {number}\n"));
            repo.commit_all(&format!("main {number}"));
            repo.merge(&side);
            repo.git(&["branch", "-D", &side]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The hook's findings over a push equal a branch scan's findings over
    /// the same commits.
    #[test]
    fn a_push_finds_what_a_branch_scan_finds_in_its_commits(
        before in prop::collection::vec(step(), 1..5),
        pushed in prop::collection::vec(step(), 1..5),
    ) {
        let repo = GitRepo::new();
        repo.write("README.md", "# generated\n");
        repo.commit_all("init");
        for (number, s) in before.iter().enumerate() {
            apply(&repo, number, s);
        }
        let old = repo.head();
        for (number, s) in pushed.iter().enumerate() {
            apply(&repo, 100 + number, s);
        }
        let new = repo.head();
        let new_commits = rev_list(&repo, &format!("{old}..{new}"));
        let branch: BTreeSet<Key> = keys(scan_branch(repo.path(), "main").iter())
            .into_iter()
            .filter(|key| new_commits.contains(&key.0))
            .collect();
        // Before the push lands, main is still at `old`.
        repo.git(&["update-ref", "refs/heads/main", &old]);
        let push = keys(scan_push(repo.path(), vec![("refs/heads/main".into(), new)], vec![]).iter());
        prop_assert_eq!(push, branch);
    }
}
