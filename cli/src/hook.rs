//! `leakscan hook pre-receive`: push protection as a git server hook
//! (docs/ARCHITECTURE.md, "Push protection"). `hook pre-commit` and
//! `hook install`, the developer's side, are in `precommit.rs`.
//!
//! git gives the hook one `<old> <new> <ref>` line per updated ref on
//! standard input, with the pushed objects still in a quarantine directory
//! (`GIT_OBJECT_DIRECTORY`, `GIT_ALTERNATE_OBJECT_DIRECTORIES`). The hook
//! scans the commits no existing ref reaches (as a history scan attributes
//! them), under the repository's policy from the gateway, and rejects the
//! push (block mode) or warns (warn mode) when one brings a secret nobody
//! reviewed. What it prints reaches the pusher as `remote:` lines.
//!
//! Exit codes: 0 the push may land, 1 it is rejected.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::BufRead,
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use leakscan_engine::{
    Finding, GitScanRequest, Policy, PolicySpec, PushedRefs, RefSelection, ScanOptions,
    ScanProgress,
};
use serde::Deserialize;

/// What a commit message carries to let its secrets through (Soteri's
/// marker, kept so existing habits work).
pub const SKIP_MARKER: &str = "skip-soteri-security-check";
/// `git push -o leakscan.bypass=REASON`.
const BYPASS_OPTION: &str = "leakscan.bypass=";
const BYPASS_REASONS: [&str; 3] = ["false-positive", "used-in-tests", "fix-later"];
/// Findings listed in a rejection; the rest are counted.
const LISTED: usize = 10;

#[derive(Debug, clap::Args)]
pub struct HookArgs {
    #[command(subcommand)]
    command: HookCommand,
}

#[derive(Debug, Subcommand)]
enum HookCommand {
    /// Run as git's pre-receive hook (reads `<old> <new> <ref>` lines).
    PreReceive(PreReceiveArgs),
    /// Run as git's pre-commit hook: stop a commit whose staged changes
    /// add a secret.
    PreCommit(crate::precommit::PreCommitArgs),
    /// Install the pre-commit hook in a repository (or in the pre-commit
    /// framework's config).
    Install(crate::precommit::InstallArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Block,
    Warn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnGatewayError {
    /// Scan with the last policy fetched (or the built-in rules) and warn.
    Open,
    /// Scan with the last policy fetched (or the built-in rules) and block.
    Closed,
}

#[derive(Debug, clap::Args)]
pub struct PreReceiveArgs {
    /// Settings file (`key = value` lines: gateway, project, repository,
    /// token, mode, on-gateway-error, time-budget, max-blobs), as written
    /// when the gateway installs the hook; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The gateway's URL; without one the hook scans with the built-in
    /// rules and `--mode`.
    #[arg(long, env = "LEAKSCAN_GATEWAY_URL")]
    gateway: Option<String>,
    /// The repository's project key and slug at the gateway.
    #[arg(long)]
    project: Option<String>,
    #[arg(long)]
    repository: Option<String>,
    /// A hook token (`POST /rest/security/latest/hook/tokens`).
    #[arg(long, env = "LEAKSCAN_HOOK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Block or warn when no gateway says (default: block).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// When the gateway cannot be reached (default: open).
    #[arg(long, value_enum)]
    on_gateway_error: Option<OnGatewayError>,
    /// Seconds the scan may take; past it the push is let through with a
    /// warning and its branch is scanned later (default: 5).
    #[arg(long)]
    time_budget: Option<f64>,
    /// Blobs the scan may read; past it, as past the time budget (default:
    /// 20000).
    #[arg(long)]
    max_blobs: Option<u64>,
    /// Scan threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// The hook's settings: the file's, then the flags'.
#[derive(Debug, Default)]
struct Settings {
    gateway: Option<String>,
    project: Option<String>,
    repository: Option<String>,
    token: Option<String>,
    mode: Option<Mode>,
    on_gateway_error: Option<OnGatewayError>,
    time_budget: Option<f64>,
    max_blobs: Option<u64>,
}

fn read_settings(args: &PreReceiveArgs) -> Result<Settings> {
    let mut settings = Settings::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read hook settings {}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("{}:{}: expected key = value", path.display(), number + 1);
            };
            let value = value.trim().to_string();
            match key.trim() {
                "gateway" => settings.gateway = Some(value),
                "project" => settings.project = Some(value),
                "repository" => settings.repository = Some(value),
                "token" => settings.token = Some(value),
                "mode" => {
                    settings.mode = Some(Mode::from_str(&value, true).map_err(|_| {
                        anyhow::anyhow!("{}:{}: mode is block or warn", path.display(), number + 1)
                    })?)
                }
                "on-gateway-error" => {
                    settings.on_gateway_error =
                        Some(OnGatewayError::from_str(&value, true).map_err(|_| {
                            anyhow::anyhow!(
                                "{}:{}: on-gateway-error is open or closed",
                                path.display(),
                                number + 1
                            )
                        })?)
                }
                "time-budget" => {
                    settings.time_budget = Some(value.parse().with_context(|| {
                        format!("{}:{}: time-budget is seconds", path.display(), number + 1)
                    })?)
                }
                "max-blobs" => {
                    settings.max_blobs = Some(value.parse().with_context(|| {
                        format!("{}:{}: max-blobs is a count", path.display(), number + 1)
                    })?)
                }
                other => bail!(
                    "{}:{}: unknown setting {other:?}",
                    path.display(),
                    number + 1
                ),
            }
        }
    }
    macro_rules! flag {
        ($field:ident) => {
            if args.$field.is_some() {
                settings.$field = args.$field.clone();
            }
        };
    }
    flag!(gateway);
    flag!(project);
    flag!(repository);
    flag!(token);
    flag!(mode);
    flag!(on_gateway_error);
    flag!(time_budget);
    flag!(max_blobs);
    Ok(settings)
}

/// The gateway's answer for the repository.
#[derive(Debug, Deserialize, serde::Serialize)]
struct RemoteSettings {
    enabled: bool,
    mode: String,
    policy: PolicySpec,
}

/// The gateway's verdict on a push's findings.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushDecision {
    unreviewed: Vec<usize>,
    #[serde(default)]
    scan_key: Option<String>,
}

struct Gateway {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Gateway {
    fn new(settings: &Settings) -> Option<Result<Gateway>> {
        let base = settings.gateway.as_ref()?.trim_end_matches('/');
        let (Some(project), Some(repository)) = (&settings.project, &settings.repository) else {
            return Some(Err(anyhow::anyhow!(
                "the hook settings name a gateway but not the project and repository"
            )));
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build();
        Some(Ok(Gateway {
            base: format!("{base}/rest/security/latest/hook/projects/{project}/repos/{repository}"),
            token: settings.token.clone().unwrap_or_default(),
            agent,
        }))
    }

    fn settings(&self) -> Result<RemoteSettings> {
        let response = self
            .agent
            .get(&self.base)
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(describe)?;
        response
            .into_json()
            .context("the gateway's answer is not the hook settings")
    }

    fn report(&self, body: &serde_json::Value) -> Result<PushDecision> {
        let response = self
            .agent
            .post(&format!("{}/push", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_json(body.clone())
            .map_err(describe)?;
        response
            .into_json()
            .context("the gateway's answer is not a push decision")
    }
}

fn describe(error: ureq::Error) -> anyhow::Error {
    match error {
        ureq::Error::Status(status, response) => {
            let body = response.into_string().unwrap_or_default();
            anyhow::anyhow!(
                "the gateway answered {status}: {}",
                body.chars().take(300).collect::<String>()
            )
        }
        other => anyhow::anyhow!("the gateway cannot be reached: {other}"),
    }
}

/// The policy and mode last fetched, kept beside the hook for when the
/// gateway cannot be reached.
fn cache_path(git_dir: &std::path::Path) -> PathBuf {
    git_dir.join("leakscan-hook.cache.json")
}

/// One `<old> <new> <ref>` line.
struct Update {
    new: String,
    name: String,
}

fn is_zero(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

fn read_updates(input: impl BufRead) -> Result<Vec<Update>> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line.context("cannot read the pushed refs")?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [old, new, name] = fields[..] else {
            if line.trim().is_empty() {
                continue;
            }
            bail!("unexpected hook input line {line:?}: expected <old> <new> <ref>");
        };
        let is_id =
            |id: &str| matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_id(old) || !is_id(new) {
            bail!("unexpected hook input line {line:?}: the old and new values are object ids");
        }
        if is_zero(new) {
            continue; // a deletion brings nothing
        }
        updates.push(Update {
            new: new.to_string(),
            name: name.to_string(),
        });
    }
    Ok(updates)
}

/// `-o leakscan.bypass=REASON` among the push options (an unknown reason is
/// an error, so a typo does not pass silently).
fn bypass_option() -> Result<Option<String>> {
    let count: usize = std::env::var("GIT_PUSH_OPTION_COUNT")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    for index in 0..count {
        let Ok(option) = std::env::var(format!("GIT_PUSH_OPTION_{index}")) else {
            continue;
        };
        if let Some(reason) = option.strip_prefix(BYPASS_OPTION) {
            if !BYPASS_REASONS.contains(&reason) {
                bail!(
                    "push option {option:?}: the reason is one of {}",
                    BYPASS_REASONS.join(", ")
                );
            }
            return Ok(Some(reason.to_string()));
        }
    }
    Ok(None)
}

fn pusher() -> String {
    ["GL_USERNAME", "BB_USER_NAME", "REMOTE_USER", "USER"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Object directories of the push's quarantine (besides the repository's).
fn quarantine_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("GIT_OBJECT_DIRECTORY") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(list) = std::env::var("GIT_ALTERNATE_OBJECT_DIRECTORIES") {
        dirs.extend(
            list.split(':')
                .filter(|dir| !dir.is_empty())
                .map(|dir| PathBuf::from(dir.trim_matches('"'))),
        );
    }
    dirs
}

/// Whether each commit's message carries [`SKIP_MARKER`], read with one
/// `git log` (which sees the quarantine through the environment it was
/// given). A commit git cannot read counts as unmarked.
fn skip_marked(git_dir: &std::path::Path, commits: &[&str]) -> HashMap<String, bool> {
    let mut marked: HashMap<String, bool> =
        commits.iter().map(|c| (c.to_string(), false)).collect();
    if commits.is_empty() {
        return marked;
    }
    let child = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args([
            "log",
            "--no-walk=unsorted",
            "--stdin",
            "-z",
            "--format=%H%n%B",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return marked };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        let list: String = commits.iter().map(|c| format!("{c}\n")).collect();
        // The writer is dropped at the end of this block, closing git's stdin.
        let _ = stdin.write_all(list.as_bytes());
    }
    let Ok(output) = child.wait_with_output() else {
        return marked;
    };
    for record in output.stdout.split(|&byte| byte == 0) {
        let record = String::from_utf8_lossy(record);
        if let Some((commit, message)) = record.split_once('\n') {
            if let Some(flag) = marked.get_mut(commit.trim()) {
                *flag = message.contains(SKIP_MARKER);
            }
        }
    }
    marked
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

fn list_findings(out: &mut String, findings: &[&Finding]) {
    for finding in findings.iter().take(LISTED) {
        let commit = finding.commit.as_ref().map_or("", |c| short(&c.id));
        let location = match finding.line {
            Some(line) => format!("{}:{line}", finding.path),
            None => finding.path.clone(),
        };
        let _ = writeln!(
            out,
            "  {commit}  {location}  {}  {}",
            finding.rule_name,
            finding.secret.redacted()
        );
    }
    if findings.len() > LISTED {
        let _ = writeln!(out, "  and {} more", findings.len() - LISTED);
    }
}

pub fn run(args: HookArgs) -> Result<ExitCode> {
    match args.command {
        HookCommand::PreReceive(args) => pre_receive(&args),
        HookCommand::PreCommit(args) => crate::precommit::pre_commit(&args),
        HookCommand::Install(args) => crate::precommit::install(&args),
    }
}

fn pre_receive(args: &PreReceiveArgs) -> Result<ExitCode> {
    let settings = read_settings(args)?;
    let updates = read_updates(std::io::stdin().lock())?;
    if updates.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let git_dir = std::env::var_os("GIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let gateway = Gateway::new(&settings).transpose()?;

    // The repository's setting and policy: the gateway's; when it cannot be
    // reached, the last one fetched or the built-in rules.
    let mut unreachable = None;
    let (mode, spec) = match &gateway {
        None => (settings.mode.unwrap_or(Mode::Block), None),
        Some(gateway) => match gateway.settings() {
            Ok(remote) => {
                if !remote.enabled {
                    return Ok(ExitCode::SUCCESS);
                }
                if let Ok(json) = serde_json::to_vec(&remote) {
                    let _ = std::fs::write(cache_path(&git_dir), json);
                }
                let mode = if remote.mode == "warn" {
                    Mode::Warn
                } else {
                    Mode::Block
                };
                (mode, Some(remote.policy))
            }
            Err(error) => {
                let cached = std::fs::read(cache_path(&git_dir))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<RemoteSettings>(&bytes).ok());
                if cached.as_ref().is_some_and(|cached| !cached.enabled) {
                    return Ok(ExitCode::SUCCESS);
                }
                unreachable = Some(error);
                let mode = match settings.on_gateway_error.unwrap_or(OnGatewayError::Open) {
                    OnGatewayError::Open => Mode::Warn,
                    OnGatewayError::Closed => Mode::Block,
                };
                (mode, cached.map(|cached| cached.policy))
            }
        },
    };
    if let Some(error) = &unreachable {
        eprintln!("leakscan: warning: {error:#}; scanning with the last policy fetched or the built-in rules");
    }
    let policy = match &spec {
        Some(spec) => spec
            .resolve()
            .context("the repository's policy is invalid")?,
        None => Policy::builtin_default(),
    };
    let bypass = bypass_option()?;

    // The scan, within its budgets.
    let time_budget = Duration::from_secs_f64(settings.time_budget.unwrap_or(5.0).max(0.0));
    let max_blobs = settings.max_blobs.unwrap_or(20_000);
    let progress = Arc::new(ScanProgress::default());
    let request = GitScanRequest {
        refs: RefSelection::Pushed(PushedRefs {
            tips: updates
                .iter()
                .map(|u| (u.name.clone(), u.new.clone()))
                .collect(),
            object_dirs: quarantine_dirs(),
        }),
        ..GitScanRequest::default()
    };
    // The rules are compiled before the budget starts (a new policy's
    // first push pays for it; the compiled prefilter is cached on disk).
    let rulesets = Arc::new(leakscan_engine::RuleSetCache::default());
    rulesets.get_or_build(&policy, leakscan_engine::PrefilterKind::Best)?;
    let options = ScanOptions {
        threads: args.threads,
        rulesets: Some(rulesets),
        ..ScanOptions::default()
    };
    let started = Instant::now();
    let scan = {
        let progress = Arc::clone(&progress);
        let git_dir = git_dir.clone();
        std::thread::spawn(move || {
            leakscan_engine::git::scan_repository(&git_dir, &policy, &request, &options, &progress)
        })
    };
    let mut over_budget = false;
    while !scan.is_finished() {
        if started.elapsed() > time_budget
            || progress.blobs_total.load(Ordering::Relaxed) > max_blobs
        {
            over_budget = true;
            progress.cancel.store(true, Ordering::Relaxed);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let result = scan
        .join()
        .map_err(|_| anyhow::anyhow!("the scan stopped unexpectedly"))?;
    let pusher = pusher();
    let report = match result {
        Ok(report) => report,
        Err(leakscan_engine::EngineError::Cancelled) if over_budget => {
            eprintln!(
                "leakscan: warning: this push is too large to scan now (budget {:.1} s, {max_blobs} blobs); \
                 it is let through and its branches will be scanned",
                time_budget.as_secs_f64()
            );
            if let Some(gateway) = &gateway {
                for update in &updates {
                    let body = serde_json::json!({"ref": update.name, "pusher": pusher, "overBudget": true});
                    if let Err(error) = gateway.report(&body) {
                        eprintln!(
                            "leakscan: warning: the branch scan could not be queued: {error:#}"
                        );
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(error) => return Err(error).context("cannot scan the pushed commits"),
    };
    if report.findings.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }

    // Bypasses: the push option covers every finding; the commit-message
    // marker covers its commit's.
    let commits: Vec<&str> = {
        let mut ids: Vec<&str> = report
            .findings
            .iter()
            .filter_map(|f| f.commit.as_ref().map(|c| c.id.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let marked = if bypass.is_some() {
        HashMap::new()
    } else {
        skip_marked(&git_dir, &commits)
    };
    let mut groups: BTreeMap<(Option<String>, String), Vec<&Finding>> = BTreeMap::new();
    for finding in &report.findings {
        let commit = finding.commit.as_ref().map_or("", |c| c.id.as_str());
        let reason = bypass.clone().or_else(|| {
            marked
                .get(commit)
                .copied()
                .unwrap_or(false)
                .then(|| "commit-message".to_string())
        });
        let branch = finding.branch.clone().unwrap_or_default();
        groups.entry((reason, branch)).or_default().push(finding);
    }
    let mut blocking: Vec<&Finding> = Vec::new();
    let mut scan_keys: Vec<String> = Vec::new();
    let mut bypassed: Vec<(&str, Vec<&Finding>)> = Vec::new();
    for ((reason, branch), findings) in &groups {
        // The gateway drops reviewed secrets and records bypasses.
        let open: Vec<&Finding> = match &gateway {
            Some(gateway) if unreachable.is_none() => {
                let body = serde_json::json!({
                    "ref": if branch.starts_with("refs/") { branch.clone() } else { format!("refs/heads/{branch}") },
                    "pusher": pusher,
                    "bypass": reason,
                    "findings": findings.iter().map(|f| serde_json::json!({
                        "commit": f.commit.as_ref().map_or("", |c| c.id.as_str()),
                        "path": f.path,
                        "line": f.line,
                        "ruleId": f.rule_id,
                        "secret": String::from_utf8_lossy(f.secret.expose()),
                    })).collect::<Vec<_>>(),
                });
                match gateway.report(&body) {
                    Ok(decision) => {
                        scan_keys.extend(decision.scan_key);
                        decision
                            .unreviewed
                            .iter()
                            .filter_map(|&i| findings.get(i).copied())
                            .collect()
                    }
                    Err(error) => {
                        eprintln!("leakscan: warning: {error:#}");
                        findings.clone()
                    }
                }
            }
            _ => findings.clone(),
        };
        if open.is_empty() {
            continue;
        }
        match reason {
            Some(reason) => bypassed.push((reason.as_str(), open)),
            None => blocking.extend(open),
        }
    }

    let mut out = String::new();
    for (reason, findings) in &bypassed {
        let _ = writeln!(
            out,
            "leakscan: {} secret(s) let through (bypass: {reason}); the bypass is audited",
            findings.len()
        );
        list_findings(&mut out, findings);
    }
    for scan_key in &scan_keys {
        let _ = writeln!(
            out,
            "leakscan: what was let through is recorded by a branch scan (scanKey {scan_key})"
        );
    }
    let rejected = !blocking.is_empty() && mode == Mode::Block;
    if !blocking.is_empty() {
        let _ = writeln!(
            out,
            "leakscan: {} {} found in the pushed commits{}",
            blocking.len(),
            if blocking.len() == 1 {
                "secret"
            } else {
                "secrets"
            },
            if rejected {
                "; the push is rejected"
            } else {
                " (warning only; the push is accepted)"
            }
        );
        list_findings(&mut out, &blocking);
        let _ = writeln!(out, "To fix: remove each secret from the commits that add it (git rebase -i, git commit --amend),");
        let _ = writeln!(
            out,
            "  revoke it at its provider (it may have been copied already), and push again."
        );
        let _ = writeln!(
            out,
            "To bypass: git push -o leakscan.bypass=false-positive|used-in-tests|fix-later"
        );
        let _ = writeln!(
            out,
            "  or put {SKIP_MARKER} in the commit message; bypasses are audited."
        );
    }
    eprint!("{out}");
    Ok(if rejected {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_are_skipped_and_bad_lines_are_errors() {
        let zero = "0".repeat(40);
        let new = "a".repeat(40);
        let input = format!("{new} {zero} refs/heads/gone\n{zero} {new} refs/heads/new\n\n");
        let updates = read_updates(input.as_bytes()).unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].name, "refs/heads/new");
        let error = read_updates("only two\n".as_bytes())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("expected <old> <new> <ref>"), "{error}");
        let error = read_updates("notanid alsonot refs/heads/x\n".as_bytes())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("object ids"), "{error}");
    }

    #[test]
    fn settings_file_is_read_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.conf");
        std::fs::write(&path, "# comment\ngateway = http://127.0.0.1:1\nproject = P\nrepository = r\nmode = warn\ntime-budget = 2.5\n").unwrap();
        let args = PreReceiveArgs {
            config: Some(path.clone()),
            gateway: None,
            project: Some("Q".into()),
            repository: None,
            token: None,
            mode: None,
            on_gateway_error: None,
            time_budget: None,
            max_blobs: None,
            threads: 0,
        };
        let settings = read_settings(&args).unwrap();
        assert_eq!(settings.gateway.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(settings.project.as_deref(), Some("Q"));
        assert_eq!(settings.repository.as_deref(), Some("r"));
        assert_eq!(settings.mode, Some(Mode::Warn));
        assert_eq!(settings.time_budget, Some(2.5));
        std::fs::write(&path, "mode = sometimes\n").unwrap();
        let error = read_settings(&args).err().unwrap().to_string();
        assert!(error.contains("mode is block or warn"), "{error}");
    }
}
