//! The `leakscan` binary end to end: planted secrets on several branches,
//! report formats, exit codes and error messages.

use std::{collections::BTreeSet, process::Command};

use leakscan_engine::rules::find_builtin;
use leakscan_testkit::GitRepo;
use serde_json::Value;

fn leakscan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_leakscan"))
        .args(args)
        .output()
        .expect("run leakscan")
}

fn stdout_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "not JSON ({error}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Rules whose first example is planted, one kind of secret each.
const PLANTED_RULES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "GITHUB_PAT_CLASSIC",
    "GITHUB_OAUTH_ACCESS_TOKEN",
    "GITLAB_ACCESS_TOKEN",
    "GITLAB_DEPLOY_TOKEN",
    "SLACK_BOT_TOKEN",
    "SLACK_WEBHOOK_URL",
    "STRIPE_SECRET_KEY",
    "SENDGRID_API_KEY",
    "NPM_ACCESS_TOKEN",
    "PYPI_API_TOKEN",
    "DOCKERHUB_PERSONAL_ACCESS_TOKEN",
    "OPENAI_PROJECT_KEY",
    "ANTHROPIC_API_KEY",
    "HUGGINGFACE_USER_TOKEN",
    "GCP_API_KEY",
    "DIGITALOCEAN_PERSONAL_ACCESS_TOKEN",
    "SHOPIFY_ACCESS_TOKEN",
    "RSA_PRIVATE_KEY",
    "SSH_PRIVATE_KEY",
    "POSTGRES_CONNECTION_STRING",
    "BITBUCKET_DATA_CENTER_HTTP_ACCESS_TOKEN",
    "HASHICORP_VAULT_SERVICE_TOKEN",
];

struct Planted {
    rule: String,
    branch: String,
    path: String,
    line: u64,
    commit: String,
}

fn planted_repository() -> (GitRepo, Vec<Planted>) {
    let repo = GitRepo::new();
    repo.write("README.md", "# service\n\nNothing secret here.\n");
    repo.commit_all("init");
    repo.checkout_new("dev");
    repo.checkout("main");
    repo.checkout_new("release");
    repo.checkout("main");
    let branches = ["main", "dev", "release"];
    let mut planted = Vec::new();
    for (index, rule_id) in PLANTED_RULES.iter().enumerate() {
        let spec = find_builtin(rule_id).unwrap_or_else(|| panic!("no built-in rule {rule_id}"));
        let example = &spec.examples[0];
        let branch = branches[index % 3];
        repo.checkout(branch);
        let filler = index % 4;
        let path = format!("services/svc{index}/settings{index}.conf");
        let mut content = String::new();
        for line in 0..filler {
            content.push_str(&format!("# setting {line} of service {index}\n"));
        }
        content.push_str(example);
        if !example.ends_with('\n') {
            content.push('\n');
        }
        content.push_str("timeout = 30\n");
        repo.write(&path, &content);
        let commit = repo.commit_all(&format!("configure service {index}"));
        let offset = example
            .lines()
            .position(|l| l.contains("-----BEGIN"))
            .unwrap_or(0);
        planted.push(Planted {
            rule: spec.id.clone(),
            branch: branch.to_string(),
            path: path.clone(),
            line: (filler + 1 + offset) as u64,
            commit,
        });
        match index % 4 {
            // Removed again later: history keeps it.
            0 => {
                repo.remove(&path);
                repo.commit_all(&format!("remove service {index} settings"));
            }
            // Edited later, secret kept: still one finding.
            1 => {
                repo.write(&path, format!("{content}retries = 3\n"));
                repo.commit_all(&format!("tune service {index}"));
            }
            _ => {}
        }
    }
    repo.checkout("main");
    (repo, planted)
}

type Key = (String, String, String, u64, String);

fn finding_keys(findings: &Value) -> BTreeSet<Key> {
    findings
        .as_array()
        .expect("array")
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["commit"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
                f["branch"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_planted_secret_is_reported_with_rule_commit_path_and_line_and_nothing_else() {
    let (repo, planted) = planted_repository();
    assert!(planted.len() >= 20);
    let path = repo.path().to_str().unwrap();
    let output = leakscan(&["scan", path, "--format", "json"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let findings = stdout_json(&output);
    let expected: BTreeSet<Key> = planted
        .iter()
        .map(|p| {
            (
                p.rule.clone(),
                p.commit.clone(),
                p.path.clone(),
                p.line,
                p.branch.clone(),
            )
        })
        .collect();
    assert_eq!(finding_keys(&findings), expected);
    assert_eq!(findings.as_array().unwrap().len(), planted.len());

    let fields: Vec<&str> = findings[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_fields = vec![
        "rule",
        "ruleName",
        "severity",
        "project",
        "repository",
        "branch",
        "commit",
        "path",
        "line",
        "author",
        "authorEmail",
        "commitDate",
        "scanDate",
        "secret",
        "fingerprint",
        "reviewed",
        "confidence",
    ];
    expected_fields.sort_unstable();
    let mut sorted_fields = fields.clone();
    sorted_fields.sort_unstable();
    assert_eq!(sorted_fields, expected_fields);
    for finding in findings.as_array().unwrap() {
        assert!(
            finding["secret"].as_str().unwrap().ends_with('…'),
            "{finding}"
        );
        assert_eq!(finding["fingerprint"].as_str().unwrap().len(), 64);
        assert_eq!(finding["author"], "Alice Example");
        assert_eq!(finding["authorEmail"], "alice@example.com");
        assert!(
            finding["commitDate"]
                .as_str()
                .unwrap()
                .starts_with("2023-11-"),
            "{finding}"
        );
        assert_eq!(finding["reviewed"], false);
        assert!(finding["project"].is_null());
    }
}

#[test]
fn findings_are_identical_for_any_thread_count_and_prefilter() {
    let (repo, _) = planted_repository();
    let path = repo.path().to_str().unwrap();
    let strip_dates = |mut value: Value| {
        for finding in value.as_array_mut().unwrap() {
            finding.as_object_mut().unwrap().remove("scanDate");
        }
        value
    };
    let one = strip_dates(stdout_json(&leakscan(&[
        "scan",
        path,
        "--format",
        "json",
        "--threads",
        "1",
        "--show-secrets",
    ])));
    let four = strip_dates(stdout_json(&leakscan(&[
        "scan",
        path,
        "--format",
        "json",
        "--threads",
        "4",
        "--show-secrets",
    ])));
    let keywords = strip_dates(stdout_json(&leakscan(&[
        "scan",
        path,
        "--format",
        "json",
        "--threads",
        "2",
        "--show-secrets",
        "--prefilter",
        "keywords",
    ])));
    assert_eq!(one, four);
    assert_eq!(one, keywords);
    assert!(!one.as_array().unwrap().is_empty());
}

#[test]
fn csv_has_the_header_in_design_order_and_quotes_per_rfc_4180() {
    let repo = GitRepo::new();
    repo.write(
        "odd, \"name\".env",
        "aws_access_key_id = AKIAUJZDEGXDNCF32EPF\n",
    );
    let commit = repo.commit_all("init");
    let output = leakscan(&["scan", repo.path().to_str().unwrap(), "--format", "csv"]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.split("\r\n");
    assert_eq!(
        lines.next().unwrap(),
        "rule,ruleName,severity,project,repository,branch,commit,path,line,author,authorEmail,commitDate,scanDate,secret,fingerprint,reviewed,confidence"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&format!(
            "AWS_ACCESS_KEY_ID,AWS access key ID,HIGH,,,main,{commit},\"odd, \"\"name\"\".env\",1,"
        )),
        "{row}"
    );
    assert!(row.contains(",AKIA…,"), "{row}");
    assert!(row.ends_with(",false,HIGH"), "{row}");
}

#[test]
fn sarif_is_version_2_1_0_with_rules_and_locations() {
    let repo = GitRepo::new();
    repo.write(
        "deploy/.env",
        "x=1\naws_access_key_id = AKIAUJZDEGXDNCF32EPF\n",
    );
    repo.commit_all("init");
    let output = leakscan(&["scan", repo.path().to_str().unwrap(), "--format", "sarif"]);
    assert_eq!(output.status.code(), Some(1));
    let sarif = stdout_json(&output);
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "leakscan");
    assert_eq!(run["tool"]["driver"]["rules"][0]["id"], "AWS_ACCESS_KEY_ID");
    let result = &run["results"][0];
    assert_eq!(result["ruleId"], "AWS_ACCESS_KEY_ID");
    assert_eq!(result["ruleIndex"], 0);
    assert_eq!(result["level"], "error");
    let location = &result["locations"][0]["physicalLocation"];
    assert_eq!(location["artifactLocation"]["uri"], "deploy/.env");
    assert_eq!(location["region"]["startLine"], 2);
    assert!(!result["message"]["text"]
        .as_str()
        .unwrap()
        .contains("AKIAUJZDEGXDNCF32EPF"));
}

#[test]
fn clean_repository_exits_zero_and_piped_output_is_only_the_report() {
    let repo = GitRepo::new();
    repo.write("main.rs", "fn main() { println!(\"hello\"); }\n");
    repo.commit_all("init");
    let output = leakscan(&["scan", repo.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout_json(&output), Value::Array(vec![]));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = leakscan(&["scan", repo.path().to_str().unwrap()]);
    assert_eq!(text.status.code(), Some(0));
    assert!(text.stdout.is_empty());
}

#[test]
fn show_secrets_and_output_file() {
    let repo = GitRepo::new();
    repo.write("a.env", "aws_access_key_id = AKIAUJZDEGXDNCF32EPF\n");
    repo.commit_all("init");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("report.json");
    let output = leakscan(&[
        "scan",
        repo.path().to_str().unwrap(),
        "--format",
        "json",
        "--show-secrets",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report[0]["secret"], "AKIAUJZDEGXDNCF32EPF");
}

#[test]
fn a_directory_is_scanned_as_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    std::fs::write(
        dir.path().join("conf/app.env"),
        "\naws_access_key_id = AKIAUJZDEGXDNCF32EPF\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("image.png"),
        [0x89, b'P', b'N', b'G', 0, 0, 1],
    )
    .unwrap();
    let output = leakscan(&["scan", dir.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let findings = stdout_json(&output);
    assert_eq!(findings.as_array().unwrap().len(), 1);
    assert_eq!(findings[0]["path"], "conf/app.env");
    assert_eq!(findings[0]["line"], 2);
    assert!(findings[0]["commit"].is_null());
    assert!(findings[0]["branch"].is_null());
}

#[test]
fn config_file_adds_custom_rules_and_allowlists() {
    let dir = tempfile::tempdir().unwrap();
    let scanned = dir.path().join("tree");
    std::fs::create_dir_all(scanned.join("fixtures")).unwrap();
    std::fs::write(scanned.join("app.txt"), "ticket = CORP-ZXCV-0042\n").unwrap();
    std::fs::write(
        scanned.join("fixtures/aws.env"),
        "aws_access_key_id = AKIAUJZDEGXDNCF32EPF\n",
    )
    .unwrap();
    let config = dir.path().join("leakscan.yml");
    std::fs::write(
        &config,
        "custom_rules:\n  CORP_TICKET:\n    line_regex: 'CORP-[A-Z]{4}-[0-9]{4}'\n    severity: LOW\nallowlist_paths: ['^fixtures/']\n",
    )
    .unwrap();
    let output = leakscan(&[
        "scan",
        scanned.to_str().unwrap(),
        "--format",
        "json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let findings = stdout_json(&output);
    assert_eq!(findings.as_array().unwrap().len(), 1, "{findings}");
    assert_eq!(findings[0]["rule"], "CORP_TICKET");
    assert_eq!(findings[0]["severity"], "LOW");
}

fn assert_error(output: &std::process::Output, needles: &[&str]) {
    assert_eq!(
        output.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_input_exits_two_with_a_message_naming_the_culprit() {
    let missing = "/nonexistent/leakscan-test-path";
    assert_error(&leakscan(&["scan", missing]), &[missing]);

    let dir = tempfile::tempdir().unwrap();
    let bad_regex = dir.path().join("bad-regex.yml");
    std::fs::write(&bad_regex, "custom_rules:\n  BROKEN_RULE: 'token_(['\n").unwrap();
    assert_error(
        &leakscan(&[
            "scan",
            dir.path().to_str().unwrap(),
            "--config",
            bad_regex.to_str().unwrap(),
        ]),
        &["BROKEN_RULE", "bad-regex.yml", "regex"],
    );

    let malformed = dir.path().join("malformed.yml");
    std::fs::write(&malformed, "custom_rules: [this is: not: valid\n").unwrap();
    assert_error(
        &leakscan(&[
            "scan",
            dir.path().to_str().unwrap(),
            "--config",
            malformed.to_str().unwrap(),
        ]),
        &["malformed.yml"],
    );

    let unknown_key = dir.path().join("typo.yml");
    std::fs::write(&unknown_key, "allowlist_path: ['x']\n").unwrap();
    assert_error(
        &leakscan(&[
            "scan",
            dir.path().to_str().unwrap(),
            "--config",
            unknown_key.to_str().unwrap(),
        ]),
        &["typo.yml", "allowlist_path"],
    );

    assert_error(
        &leakscan(&["scan", dir.path().to_str().unwrap(), "--branch", "main"]),
        &["not a git repository"],
    );

    let repo = GitRepo::new();
    repo.write("a", "a\n");
    repo.commit_all("init");
    assert_error(
        &leakscan(&[
            "scan",
            repo.path().to_str().unwrap(),
            "--branch",
            "no-such-branch",
        ]),
        &["no-such-branch"],
    );
    assert_error(
        &leakscan(&[
            "scan",
            repo.path().to_str().unwrap(),
            "--output",
            "/nonexistent/dir/report.json",
        ]),
        &["/nonexistent/dir/report.json"],
    );
    let usage = leakscan(&["scan", repo.path().to_str().unwrap(), "--format", "xml"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn a_broken_config_file_in_a_branch_is_a_warning() {
    let repo = GitRepo::new();
    repo.write("mohami-config.yml", "rules: [NOT_A_RULE]\n");
    repo.write("a.env", "aws_access_key_id = AKIAUJZDEGXDNCF32EPF\n");
    repo.commit_all("init");
    let output = leakscan(&["scan", repo.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("main:mohami-config.yml") && stderr.contains("NOT_A_RULE"),
        "{stderr}"
    );
    assert_eq!(stdout_json(&output).as_array().unwrap().len(), 1);
}

#[test]
fn rules_command_lists_every_rule_as_json() {
    let output = leakscan(&["rules", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let rules = stdout_json(&output);
    let rules = rules.as_array().unwrap();
    assert!(rules.len() >= 750, "{}", rules.len());
    assert_eq!(rules.len(), leakscan_engine::builtin_rules().len());
    for rule in rules {
        for field in [
            "id",
            "name",
            "severity",
            "confidence",
            "keywords",
            "pattern",
        ] {
            assert!(!rule[field].is_null(), "{field} missing in {rule}");
        }
    }
    let text = leakscan(&["rules"]);
    let listing = String::from_utf8(text.stdout).unwrap();
    assert!(listing.contains("RSA_PRIVATE_KEY"));
}

/// A GitHub token of the published format: 30 random characters, then their
/// CRC-32 in 6 base62 digits; `broken` changes the last digit.
fn github_token(broken: bool) -> String {
    use leakscan_engine::checksum::{base62_6, crc32};
    let random = "Wd8Kq2Nv5Rx7Lp3Tz9Mb4Hc6Jf1Sg0";
    let mut checksum = String::from_utf8(base62_6(crc32(random.as_bytes())).to_vec()).unwrap();
    if broken {
        let last = checksum.pop().unwrap();
        checksum.push(if last == 'Z' { 'Y' } else { 'Z' });
    }
    format!("ghp_{random}{checksum}")
}

#[test]
fn min_confidence_filters_findings_and_every_format_shows_confidence() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ci.env"),
        format!(
            "GITHUB_TOKEN={}\nBACKUP_TOKEN={}\n",
            github_token(false),
            github_token(true)
        ),
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let confidences = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["scan", path, "--format", "json"];
        args.extend_from_slice(extra);
        let output = leakscan(&args);
        let findings = stdout_json(&output);
        findings
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{}:{}", f["line"], f["confidence"].as_str().unwrap()))
            .collect()
    };
    // The valid checksum is HIGH, the broken one MEDIUM; the default
    // (medium) shows both, `high` only the first.
    assert_eq!(confidences(&[]), vec!["1:HIGH", "2:MEDIUM"]);
    assert_eq!(confidences(&["--min-confidence", "high"]), vec!["1:HIGH"]);
    assert_eq!(
        confidences(&["--min-confidence", "LOW"]),
        vec!["1:HIGH", "2:MEDIUM"]
    );
    let text = leakscan(&["scan", path]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("(confidence high)"), "{text}");
    assert!(text.contains("(confidence medium)"), "{text}");
    let sarif = stdout_json(&leakscan(&["scan", path, "--format", "sarif"]));
    assert_eq!(
        sarif["runs"][0]["results"][0]["properties"]["confidence"],
        "HIGH"
    );
    let bad = leakscan(&["scan", path, "--min-confidence", "certain"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown confidence"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[cfg(feature = "vectorscan")]
#[test]
fn the_compiled_prefilter_is_cached_on_disk_and_a_broken_cache_is_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.env"),
        "aws_access_key_id = AKIAUJZDEGXDNCF32EPF\n",
    )
    .unwrap();
    let scan = || {
        let output = leakscan(&[
            "scan",
            dir.path().to_str().unwrap(),
            "--format",
            "json",
            "--prefilter",
            "vectorscan",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout_json(&output)[0]["rule"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let cached_files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.path().join("prefilter"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    assert_eq!(scan(), "AWS_ACCESS_KEY_ID");
    let files = cached_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    // Loaded, not rewritten.
    assert_eq!(scan(), "AWS_ACCESS_KEY_ID");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        written
    );
    // A corrupt file is ignored and replaced by a good one.
    std::fs::write(&files[0], b"LSVSDB1\nnot a database").unwrap();
    assert_eq!(scan(), "AWS_ACCESS_KEY_ID");
    assert!(std::fs::read(&files[0]).unwrap().len() > 1000);
}

/// Regression (issue 13): the fingerprint key defaulted to the constant
/// `leakscan`, so anyone holding a report could confirm a guessed secret by
/// hashing it. The default key is now made once for the user, kept private
/// in the config directory, and used again by the next scan.
#[test]
fn the_default_fingerprint_key_is_the_users_own() {
    let repo = GitRepo::new();
    let secret = find_builtin("AWS_ACCESS_KEY_ID").unwrap().examples[0].clone();
    repo.write("app.env", format!("{secret}\n"));
    repo.commit_all("init");
    let config = tempfile::tempdir().unwrap();
    let fingerprints = |key: Option<&str>| -> Vec<String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_leakscan"));
        command
            .args(["scan", repo.path().to_str().unwrap(), "--format", "json"])
            .env("XDG_CONFIG_HOME", config.path())
            .env_remove("LEAKSCAN_FINGERPRINT_KEY");
        if let Some(key) = key {
            command.env("LEAKSCAN_FINGERPRINT_KEY", key);
        }
        let output = command.output().unwrap();
        stdout_json(&output)
            .as_array()
            .unwrap()
            .iter()
            .map(|finding| finding["fingerprint"].as_str().unwrap().to_string())
            .collect()
    };
    let first = fingerprints(None);
    assert_eq!(first.len(), 1);
    let key_file = config.path().join("leakscan").join("fingerprint.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is readable by others");
    }
    assert_eq!(fingerprints(None), first);
    assert_eq!(fingerprints(Some(key.trim())), first);
    assert_ne!(fingerprints(Some("leakscan")), first);
}
