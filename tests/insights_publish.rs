//! `leakscan insights publish` from a pipeline to a Bitbucket speaking the
//! documented Code Insights API, in both flavors. The "Bitbucket" is a
//! leakscan gateway, which serves Data Center's and Cloud's Code Insights
//! endpoints (issue 18).

use std::{path::Path, process::Command};

use leakscan_store::testing::{redis_url, unique_name, TestDatabase};
use leakscan_tests::{bin, generate_repository, git, start_gateway, Api, ClusterEnv};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("admin", "insights-admin-password");

fn publish(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(bin("leakscan"));
    command.arg("insights").arg("publish").args(args);
    for name in [
        "LEAKSCAN_BITBUCKET_TOKEN",
        "LEAKSCAN_BITBUCKET_USER",
        "LEAKSCAN_BITBUCKET_PASSWORD",
        "BITBUCKET_COMMIT",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("run leakscan insights publish")
}

/// A report as `leakscan scan --format json` writes it, `count` findings.
fn synthetic_report(dir: &Path, count: usize) -> String {
    let findings: Vec<Value> = (0..count)
        .map(|index| {
            json!({
                "rule": "GITHUB_PAT_CLASSIC",
                "ruleName": "GitHub personal access token (classic)",
                "severity": if index % 2 == 0 { "CRITICAL" } else { "MEDIUM" },
                "path": format!("services/svc{index}/deploy.sh"),
                "line": index + 1,
                "secret": "ghp_…",
                // Regression: one secret in several places shares its
                // fingerprint, and the external ids of a batch must differ.
                "fingerprint": format!("{:064x}", index % 50),
                "commit": "0123456789abcdef0123456789abcdef01234567",
            })
        })
        .collect();
    let path = dir.join(format!("report-{count}.json"));
    std::fs::write(&path, serde_json::to_vec(&findings).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_report_is_published_in_both_flavors_within_bitbuckets_limits() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let redis = format!("{}?prefix={}:", redis_url(), unique_name("insights"));
    let env = ClusterEnv::new(&database.url, &redis, ADMIN);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let repository = root.join("PROJ").join("app.git");
    generate_repository(&repository, 6, "6k", 1, 3, 11);
    let (_gateway, address) = start_gateway(
        &env.vars(),
        &root,
        "127.0.0.1:0",
        &[],
        work.path().join("gateway.log"),
    );
    let server = format!("http://{address}");
    let api = Api::new(&address, ADMIN.0, ADMIN.1);
    let commit = git(&repository, &["rev-parse", "HEAD"]);

    // A real scan's report, published to Data Center with a password.
    let scanned = work.path().join("scan.json");
    let output = Command::new(bin("leakscan"))
        .args([
            "scan",
            repository.to_str().unwrap(),
            "--format",
            "json",
            "-o",
        ])
        .arg(&scanned)
        .env(
            "LEAKSCAN_FINGERPRINT_KEY",
            "insights-test-key-0123456789-0123456789",
        )
        .env("LEAKSCAN_CACHE_DIR", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let findings: Vec<Value> = serde_json::from_slice(&std::fs::read(&scanned).unwrap()).unwrap();
    assert!(!findings.is_empty());
    let dc_args = |report: &str| {
        vec![
            "--report".to_string(),
            report.to_string(),
            "--server".into(),
            server.clone(),
            "--project".into(),
            "PROJ".into(),
            "--repo".into(),
            "app".into(),
            "--commit".into(),
            commit.clone(),
        ]
    };
    let args = dc_args(scanned.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let basic = [
        ("LEAKSCAN_BITBUCKET_USER", ADMIN.0),
        ("LEAKSCAN_BITBUCKET_PASSWORD", ADMIN.1),
    ];
    let output = publish(&args, &basic);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let dc =
        format!("/rest/insights/1.0/projects/PROJ/repos/app/commits/{commit}/reports/leakscan-ci");
    let report = api.expect("GET", &dc, None, 200);
    assert_eq!(report["result"], "FAIL", "{report}");
    assert_eq!(report["reporter"], "leakscan");
    assert_eq!(report["data"][0]["value"], findings.len(), "{report}");
    let annotations = api.expect("GET", &format!("{dc}/annotations"), None, 200);
    assert_eq!(annotations["totalCount"], findings.len(), "{annotations}");
    let first = &annotations["annotations"][0];
    assert_eq!(first["type"], "VULNERABILITY", "{first}");
    assert!(first["message"].as_str().unwrap().contains('…'), "{first}");

    // 1,005 findings: 1,000 annotations, sent 100 at a time (the server
    // refuses more per request), and the details say so.
    let many = synthetic_report(work.path(), 1005);
    let args = dc_args(&many);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = publish(&args, &basic);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("1000 of 1005"),
        "{}",
        text(&output.stdout)
    );
    let report = api.expect("GET", &dc, None, 200);
    assert!(
        report["details"].as_str().unwrap().contains("first 1000"),
        "{report}"
    );
    let annotations = api.expect("GET", &format!("{dc}/annotations"), None, 200);
    assert_eq!(
        annotations["totalCount"], 1000,
        "a replaced report keeps old annotations?"
    );

    // Cloud's API, with an access token, and a clean report.
    let token = api.expect(
        "PUT",
        "/rest/access-tokens/latest/users/admin",
        Some(json!({"name": "pipeline", "permissions": ["REPO_WRITE"]})),
        200,
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let clean = synthetic_report(work.path(), 0);
    let cloud_some = synthetic_report(work.path(), 150);
    for (report, result, annotated) in [(&cloud_some, "FAILED", 150), (&clean, "PASSED", 0)] {
        let output = publish(
            &[
                "--flavor",
                "cloud",
                "--report",
                report,
                "--server",
                &server,
                "--project",
                "PROJ",
                "--repo",
                "app",
            ],
            &[
                ("LEAKSCAN_BITBUCKET_TOKEN", token.as_str()),
                ("BITBUCKET_COMMIT", commit.as_str()),
            ],
        );
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let cloud = format!("/2.0/repositories/PROJ/app/commit/{commit}/reports/leakscan-ci");
        let stored = api.expect("GET", &cloud, None, 200);
        assert_eq!(stored["result"], result, "{stored}");
        assert_eq!(stored["report_type"], "SECURITY");
        if annotated > 0 {
            let page = api.expect(
                "GET",
                &format!("{cloud}/annotations?pagelen=100"),
                None,
                200,
            );
            assert_eq!(
                page["size"], annotated,
                "annotations of the earlier report stayed"
            );
            assert_eq!(page["values"][0]["annotation_type"], "VULNERABILITY");
        }
    }

    // The Bitbucket Pipelines example's publish line, as far as a local run
    // goes: the step's variables set, this server instead of Bitbucket
    // Cloud and its proxy.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ci/bitbucket-pipelines.yml"),
    )
    .unwrap();
    let line = example
        .lines()
        .find_map(|line| line.find("leakscan insights publish").map(|at| &line[at..]))
        .expect("the example publishes");
    let cloud_server = "--server http://api.bitbucket.org --proxy http://localhost:29418";
    assert!(line.contains(cloud_server), "{line}");
    let line = line.replace(cloud_server, &format!("--server {server}"));
    let pipeline = work.path().join("pipeline");
    std::fs::create_dir_all(&pipeline).unwrap();
    std::fs::copy(&cloud_some, pipeline.join("leakscan.json")).unwrap();
    let output = Command::new("sh")
        .current_dir(&pipeline)
        .args(["-c", &line])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin("leakscan").parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("BITBUCKET_WORKSPACE", "PROJ")
        .env("BITBUCKET_REPO_SLUG", "app")
        .env("BITBUCKET_COMMIT", &commit)
        .env("LEAKSCAN_BITBUCKET_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{line}: {}",
        text(&output.stderr)
    );
    let cloud = format!("/2.0/repositories/PROJ/app/commit/{commit}/reports/leakscan-ci");
    assert_eq!(api.expect("GET", &cloud, None, 200)["result"], "FAILED");

    // A wrong password: the server's answer, exit 2, nothing retried forever.
    let output = publish(
        &args,
        &[
            ("LEAKSCAN_BITBUCKET_USER", ADMIN.0),
            ("LEAKSCAN_BITBUCKET_PASSWORD", "wrong"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("answered 401"),
        "{}",
        text(&output.stderr)
    );
    // No server at all.
    let output = publish(
        &[
            "--report",
            &clean,
            "--server",
            "http://127.0.0.1:9",
            "--project",
            "PROJ",
            "--repo",
            "app",
            "--commit",
            &commit,
        ],
        &basic,
    );
    assert_eq!(output.status.code(), Some(2));
    runtime.block_on(database.drop_database()).unwrap();
}
