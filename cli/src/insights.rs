//! `leakscan insights publish`: a scan report as a Code Insights report on
//! a commit, in Bitbucket Data Center's or Bitbucket Cloud's API, from a
//! pipeline (docs/ARCHITECTURE.md, "Scanning in CI and before a commit").
//!
//! The report (`leakscan-ci` unless `--report-key`) is PUT with the
//! result FAIL/FAILED when the scan found secrets, PASS/PASSED otherwise;
//! its annotations follow in requests of at most 100, and a report carries
//! at most 1000 (Bitbucket's limits; the details say how many were left
//! out). Secrets travel redacted, as the scan report holds them unless it
//! was written with `--show-secrets`: then they are redacted here.
//!
//! Exit codes: 0 published, 2 error (the server's answer is shown).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// Bitbucket's limits on Code Insights annotations.
const PER_REQUEST: usize = 100;
const PER_REPORT: usize = 1000;
/// A summary or message is cut to this many characters.
const MAX_MESSAGE: usize = 400;
/// Tries of one request answered 429 or 5xx, or not answered.
const TRIES: u32 = 4;

#[derive(Debug, clap::Args)]
pub struct InsightsArgs {
    #[command(subcommand)]
    command: InsightsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum InsightsCommand {
    /// Publish a scan report (`leakscan scan --format json`) on a commit.
    Publish(PublishArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Flavor {
    /// Bitbucket Data Center / Server: /rest/insights/1.0/projects/{p}/repos/{r}/…
    Dc,
    /// Bitbucket Cloud: /2.0/repositories/{workspace}/{repo}/commit/…
    Cloud,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The JSON report `leakscan scan --format json` wrote.
    #[arg(long)]
    report: PathBuf,
    /// Bitbucket's base URL (Data Center: https://bitbucket.example.com;
    /// Cloud: https://api.bitbucket.org).
    #[arg(long, env = "LEAKSCAN_BITBUCKET_URL")]
    server: String,
    #[arg(long, value_enum, default_value = "dc")]
    flavor: Flavor,
    /// The project key (Data Center) or workspace (Cloud).
    #[arg(long, env = "BITBUCKET_WORKSPACE")]
    project: String,
    /// The repository slug.
    #[arg(long, env = "BITBUCKET_REPO_SLUG")]
    repo: String,
    /// The commit the report is on (default: the current directory's HEAD).
    #[arg(long, env = "BITBUCKET_COMMIT")]
    commit: Option<String>,
    /// The report's key (`leakscan-secrets` is the one the leakscan service
    /// publishes from its own scans).
    #[arg(long, default_value = "leakscan-ci")]
    report_key: String,
    /// An HTTP access token (sent as Bearer).
    #[arg(long, env = "LEAKSCAN_BITBUCKET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A user for Basic authentication (Cloud: with an app password), the
    /// password in LEAKSCAN_BITBUCKET_PASSWORD.
    #[arg(long, env = "LEAKSCAN_BITBUCKET_USER", conflicts_with = "token")]
    user: Option<String>,
    /// An HTTP proxy for the calls (in Bitbucket Pipelines,
    /// http://localhost:29418 authenticates them for the step).
    #[arg(long)]
    proxy: Option<String>,
}

/// What a published annotation needs of a finding in the JSON report.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportedFinding {
    rule: String,
    rule_name: String,
    severity: String,
    path: String,
    line: Option<u32>,
    secret: String,
    fingerprint: String,
    commit: Option<String>,
}

pub fn run(args: InsightsArgs) -> Result<ExitCode> {
    match args.command {
        InsightsCommand::Publish(args) => publish(&args),
    }
}

fn publish(args: &PublishArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.report)
        .with_context(|| format!("cannot read report {}", args.report.display()))?;
    let findings: Vec<ReportedFinding> = serde_json::from_str(&text).with_context(|| {
        format!(
            "report {}: not a JSON report of leakscan scan --format json",
            args.report.display()
        )
    })?;
    let commit = match &args.commit {
        Some(commit) => commit.clone(),
        None => head_commit()?,
    };
    if commit.len() < 7 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--commit {commit:?} is no commit id");
    }
    let client = Client::new(args)?;
    let dc = args.flavor == Flavor::Dc;
    let (project, repo) = (segment(&args.project), segment(&args.repo));
    let path = if dc {
        format!("rest/insights/1.0/projects/{project}/repos/{repo}/commits")
    } else {
        format!("2.0/repositories/{project}/{repo}/commit")
    };
    let base = format!(
        "{}/{path}/{commit}/reports/{}",
        args.server.trim_end_matches('/'),
        segment(&args.report_key)
    );
    let shown = findings.len().min(PER_REPORT);
    // The report goes first, with its annotations: an annotation of an
    // earlier run whose finding is gone must not stay behind (Cloud keeps
    // them when a report is replaced).
    client.send("DELETE", &base, &Value::Null)?;
    client.send("PUT", &base, &report_body(dc, &findings, shown))?;
    // One secret found in several places has one fingerprint: the
    // external ids of its later annotations are numbered, or Bitbucket
    // would refuse the batch (or replace the earlier annotation).
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let annotations: Vec<Value> = findings[..shown]
        .iter()
        .map(|finding| {
            let count = seen.entry(finding.fingerprint.as_str()).or_insert(0);
            *count += 1;
            let id = match *count {
                1 => finding.fingerprint.clone(),
                n => format!("{}-{n}", finding.fingerprint),
            };
            annotation(dc, finding, &id)
        })
        .collect();
    for batch in annotations.chunks(PER_REQUEST) {
        let body = if dc {
            json!({ "annotations": batch })
        } else {
            Value::Array(batch.to_vec())
        };
        client.send("POST", &format!("{base}/annotations"), &body)?;
    }
    println!(
        "published {} with {} of {} findings on {commit}",
        args.report_key,
        shown,
        findings.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn report_body(dc: bool, findings: &[ReportedFinding], shown: usize) -> Value {
    let found = !findings.is_empty();
    let mut details = if found {
        format!(
            "leakscan found {} secret{} in this commit's history.",
            findings.len(),
            if findings.len() == 1 { "" } else { "s" }
        )
    } else {
        "leakscan found no secret.".to_string()
    };
    if shown < findings.len() {
        details.push_str(&format!(
            " The first {shown} are annotated (Bitbucket keeps at most {PER_REPORT})."
        ));
    }
    let count = json!({"title": "Secrets", "type": "NUMBER", "value": findings.len()});
    if dc {
        json!({
            "title": "leakscan secrets",
            "details": details,
            "reporter": "leakscan",
            "result": if found { "FAIL" } else { "PASS" },
            "data": [count],
        })
    } else {
        json!({
            "title": "leakscan secrets",
            "details": details,
            "reporter": "leakscan",
            "report_type": "SECURITY",
            "result": if found { "FAILED" } else { "PASSED" },
            "data": [count],
        })
    }
}

fn annotation(dc: bool, finding: &ReportedFinding, external_id: &str) -> Value {
    let mut message = format!(
        "{} ({}): {}",
        finding.rule_name,
        finding.rule,
        redacted(&finding.secret)
    );
    if let Some(commit) = &finding.commit {
        let short: String = commit.chars().take(12).collect();
        message.push_str(&format!(" in commit {short}"));
    }
    let message: String = message.chars().take(MAX_MESSAGE).collect();
    let severity = finding.severity.to_ascii_uppercase();
    let mut value = if dc {
        // Data Center's severities stop at HIGH.
        let severity = match severity.as_str() {
            "MEDIUM" | "LOW" => severity.as_str(),
            _ => "HIGH",
        };
        json!({
            "externalId": external_id,
            "path": finding.path,
            "message": message,
            "severity": severity,
            "type": "VULNERABILITY",
        })
    } else {
        let severity = match severity.as_str() {
            "CRITICAL" | "HIGH" | "MEDIUM" | "LOW" => severity.as_str(),
            _ => "HIGH",
        };
        json!({
            "external_id": external_id,
            "annotation_type": "VULNERABILITY",
            "path": finding.path,
            "summary": message,
            "severity": severity,
            "result": "FAILED",
        })
    };
    if let Some(line) = finding.line {
        value["line"] = json!(line);
    }
    value
}

/// The secret as reports show it: a report written with `--show-secrets`
/// does not carry the secret further.
fn redacted(secret: &str) -> String {
    if leakscan_engine::secret::is_redacted(secret) {
        secret.to_string()
    } else {
        leakscan_engine::secret::redact(secret.as_bytes())
    }
}

/// A URL path segment, percent-encoded.
fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn head_commit() -> Result<String> {
    let head = crate::precommit::git_output(std::path::Path::new("."), &["rev-parse", "HEAD"])
        .context("no commit to publish on: pass --commit")?;
    Ok(head.trim().to_string())
}

struct Client {
    agent: ureq::Agent,
    authorization: Option<String>,
}

impl Client {
    fn new(args: &PublishArgs) -> Result<Client> {
        use base64::Engine as _;
        let authorization = match (&args.token, &args.user) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(user)) => {
                let password = std::env::var("LEAKSCAN_BITBUCKET_PASSWORD")
                    .context("--user needs its password in LEAKSCAN_BITBUCKET_PASSWORD")?;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                ))
            }
            // Bitbucket Pipelines' own proxy authenticates for the step.
            (None, None) => None,
        };
        let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30));
        if let Some(proxy) = &args.proxy {
            agent = agent.proxy(
                ureq::Proxy::new(proxy)
                    .with_context(|| format!("--proxy {proxy:?} is no proxy URL"))?,
            );
        }
        Ok(Client {
            agent: agent.build(),
            authorization,
        })
    }

    /// Sends `body` (none when null); answers 429 and 5xx, and no answer, are tried again
    /// with backoff, other errors end the command with the server's words.
    fn send(&self, method: &str, url: &str, body: &Value) -> Result<()> {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=TRIES {
            let mut request = self
                .agent
                .request(method, url)
                .set("Content-Type", "application/json");
            if let Some(authorization) = &self.authorization {
                request = request.set("Authorization", authorization);
            }
            let sent = if body.is_null() {
                request.call()
            } else {
                request.send_string(&body.to_string())
            };
            match sent {
                Ok(_) => return Ok(()),
                // Nothing to delete.
                Err(ureq::Error::Status(404, _)) if method == "DELETE" => return Ok(()),
                Err(ureq::Error::Status(code, response))
                    if attempt < TRIES && (code == 429 || code >= 500) =>
                {
                    let wait = response
                        .header("Retry-After")
                        .and_then(|after| after.parse::<u64>().ok())
                        .map_or(delay, Duration::from_secs)
                        .min(Duration::from_secs(30));
                    std::thread::sleep(wait);
                }
                Err(ureq::Error::Status(code, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    bail!(
                        "{method} {url} answered {code}: {}",
                        text.chars().take(500).collect::<String>()
                    );
                }
                Err(error) if attempt < TRIES => {
                    eprintln!("leakscan: warning: {method} {url}: {error}; trying again");
                    std::thread::sleep(delay);
                }
                Err(error) => bail!("{method} {url}: {error}"),
            }
            delay *= 2;
        }
        unreachable!("the last try returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: &str, secret: &str, line: Option<u32>) -> ReportedFinding {
        ReportedFinding {
            rule: "GITHUB_PAT_CLASSIC".into(),
            rule_name: "GitHub personal access token".into(),
            severity: severity.into(),
            path: "ci/deploy.sh".into(),
            line,
            secret: secret.into(),
            fingerprint: "f0".into(),
            commit: Some("0123456789abcdef0123".into()),
        }
    }

    #[test]
    fn annotations_fit_each_flavor_and_never_carry_the_secret() {
        let full = "ghp_Zq7TfW2kLm9Xc4Vb8Nr1Yd6Hs3Jp0GaEuRtQ";
        let dc = annotation(true, &finding("CRITICAL", full, Some(3)), "f0");
        assert_eq!(dc["severity"], "HIGH");
        assert_eq!(dc["type"], "VULNERABILITY");
        assert_eq!(dc["externalId"], "f0");
        assert_eq!(dc["line"], 3);
        let message = dc["message"].as_str().unwrap();
        assert!(
            message.contains("ghp_…") && !message.contains(&full[4..12]),
            "{message}"
        );
        assert!(message.contains("in commit 0123456789ab"), "{message}");
        let cloud = annotation(false, &finding("CRITICAL", "ghp_…", None), "f0-2");
        assert_eq!(cloud["severity"], "CRITICAL");
        assert_eq!(cloud["annotation_type"], "VULNERABILITY");
        assert!(cloud.get("line").is_none());
        assert_eq!(cloud["external_id"], "f0-2");
        assert!(cloud["summary"].as_str().unwrap().contains("ghp_…"));
    }

    #[test]
    fn the_report_says_what_was_left_out() {
        let many: Vec<_> = (0..1005).map(|_| finding("HIGH", "x", None)).collect();
        let body = report_body(true, &many, 1000);
        assert_eq!(body["result"], "FAIL");
        assert_eq!(body["data"][0]["value"], 1005);
        assert!(body["details"].as_str().unwrap().contains("first 1000"));
        let clean = report_body(false, &[], 0);
        assert_eq!(clean["result"], "PASSED");
        assert_eq!(clean["report_type"], "SECURITY");
        assert_eq!(segment("my repo/é"), "my%20repo%2F%C3%A9");
    }
}
