//! `leakscan hook pre-commit` and `leakscan hook install`: stop a secret
//! on the developer's machine, before it is committed (docs/ARCHITECTURE.md,
//! "Scanning in CI and before a commit").
//!
//! The hook scans what is staged, as the commit will hold it (the index's
//! blobs, not the working tree), with the built-in rules, `--config`,
//! `--rules-file` and the repository's own config file, and reports only
//! secrets on lines the commit adds: a file that already held an allowed
//! secret can still be edited, and a merge is not stopped by what the
//! merged branch already holds. A line marked `pragma: allowlist secret`
//! passes, as in every scan.
//!
//! Exit codes: 0 the commit may go on, 1 it is stopped, 2 error.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use leakscan_engine::{config::BRANCH_CONFIG_FILES, Confidence, Policy, ScanOptions, ScanProgress};

#[derive(Debug, clap::Args)]
pub struct PreCommitArgs {
    /// The repository (default: the current directory's).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Config file: custom rules, allowlists, disabled rules (as `scan --config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Extra rule files, added to the built-ins.
    #[arg(long = "rules-file")]
    rules_files: Vec<PathBuf>,
    /// Report only findings of this confidence or higher.
    #[arg(long, default_value = "medium", value_parser = crate::parse_confidence)]
    min_confidence: Confidence,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The repository (default: the current directory's).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Add a local hook to the pre-commit framework's
    /// `.pre-commit-config.yaml` instead of writing `.git/hooks/pre-commit`.
    #[arg(long)]
    framework: bool,
    /// Replace a pre-commit hook leakscan did not write.
    #[arg(long)]
    force: bool,
}

/// The first line after the shebang of a hook `install` writes.
const INSTALLED_MARK: &str = "# installed by leakscan hook install";

/// A staged file: its path in the commit and the lines the commit adds
/// (`None`: the file is new, every line is added).
#[derive(Debug, Default)]
struct Staged {
    added: Option<Vec<(u32, u32)>>,
}

impl Staged {
    fn adds(&self, line: Option<u32>) -> bool {
        match (&self.added, line) {
            (None, _) => true,
            // A rule that reports a whole file: only a new file is new.
            (Some(_), None) => false,
            (Some(ranges), Some(line)) => ranges
                .iter()
                .any(|&(first, count)| line >= first && line < first + count),
        }
    }
}

pub fn pre_commit(args: &PreCommitArgs) -> Result<ExitCode> {
    let top = git_output(&args.repo, &["rev-parse", "--show-toplevel"])
        .context("not in a git work tree")?;
    let top = PathBuf::from(top.trim_end_matches('\n'));
    let staged = staged_files(&top)?;
    if staged.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // The staged blobs, and the repository's config file as staged, in a
    // private directory the engine scans as files.
    let checkout = tempfile::Builder::new()
        .prefix("leakscan-pre-commit-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let mut paths: Vec<&str> = staged.keys().map(String::as_str).collect();
    let tracked_configs = git_output(&top, &["ls-files", "-z", "--cached", "--"])
        .map(|listing| {
            listing
                .split('\0')
                .filter(|path| BRANCH_CONFIG_FILES.contains(path))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    paths.extend(tracked_configs.iter().map(String::as_str));
    checkout_index(&top, checkout.path(), &paths)?;

    let policy = Policy {
        min_confidence: args.min_confidence,
        ..Policy::builtin_default()
    };
    let policy = crate::base_policy(policy, &args.rules_files, args.config.as_ref())?;
    let options = ScanOptions {
        rulesets: Some(Arc::new(leakscan_engine::RuleSetCache::default())),
        ..ScanOptions::default()
    };
    let report = leakscan_engine::files::scan_directory(
        checkout.path(),
        &policy,
        &options,
        &ScanProgress::default(),
    )?;
    let mut findings: Vec<_> = report
        .findings
        .into_iter()
        .filter(|finding| {
            staged
                .get(&finding.path)
                .is_some_and(|file| file.adds(finding.line))
        })
        .collect();
    // Concluding a merge: what the merged branch brings was judged when it
    // was committed there. A secret its version of the file holds is no
    // secret this commit adds.
    if git_output(&top, &["rev-parse", "-q", "--verify", "MERGE_HEAD"]).is_ok() {
        let mut merged: HashMap<String, Vec<u8>> = HashMap::new();
        findings.retain(|finding| {
            let theirs = merged.entry(finding.path.clone()).or_insert_with(|| {
                git_bytes(&top, &["show", &format!("MERGE_HEAD:{}", finding.path)])
                    .unwrap_or_default()
            });
            memchr::memmem::find(theirs, finding.secret.expose()).is_none()
        });
    }
    findings.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    if findings.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "leakscan: this commit adds {} secret{}:",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    );
    for finding in &findings {
        let _ = writeln!(
            err,
            "  {}:{}  {} ({})  {}",
            finding.path,
            finding.line.map(|l| l.to_string()).unwrap_or_default(),
            finding.rule_name,
            finding.rule_id,
            finding.secret.redacted()
        );
    }
    let _ = writeln!(
        err,
        "Remove them and stage the files again. A false positive: add `pragma: allowlist secret` to its line. To commit anyway: git commit --no-verify."
    );
    Ok(ExitCode::from(1))
}

/// The files the commit adds or changes, with the lines it adds (renames
/// and copies followed: a moved line is no new line).
fn staged_files(top: &Path) -> Result<HashMap<String, Staged>> {
    let status = git_output(
        top,
        &[
            "diff",
            "--cached",
            "--name-status",
            "-z",
            "-M",
            "--diff-filter=ACMR",
        ],
    )?;
    let mut files = HashMap::new();
    let mut fields = status.split('\0').filter(|field| !field.is_empty());
    while let Some(code) = fields.next() {
        let path = match code.as_bytes().first() {
            Some(b'R' | b'C') => {
                fields.next();
                fields.next()
            }
            _ => fields.next(),
        }
        .with_context(|| format!("unexpected git diff --name-status output at {code:?}"))?;
        let added = if code.starts_with('A') {
            None
        } else {
            Some(Vec::new())
        };
        files.insert(path.to_string(), Staged { added });
    }
    let patch = git_output(
        top,
        &[
            "-c",
            "core.quotePath=false",
            "diff",
            "--cached",
            "-U0",
            "-M",
            "--diff-filter=CMR",
            "--no-color",
            "--no-ext-diff",
            "--src-prefix=a/",
            "--dst-prefix=b/",
        ],
    )?;
    let mut current: Option<String> = None;
    for line in patch.lines() {
        if let Some(path) = line.strip_prefix("+++ ") {
            current = path.strip_prefix("b/").map(str::to_string).or_else(|| {
                unquote(path).and_then(|path| path.strip_prefix("b/").map(str::to_string))
            });
        } else if let Some(header) = line.strip_prefix("@@ ") {
            let (Some(path), Some(range)) = (&current, added_range(header)) else {
                continue;
            };
            if let Some(Staged {
                added: Some(ranges),
            }) = files.get_mut(path)
            {
                ranges.push(range);
            }
        }
    }
    Ok(files)
}

/// The added lines of a hunk header's `+first[,count]`.
fn added_range(header: &str) -> Option<(u32, u32)> {
    let plus = header
        .split_whitespace()
        .find(|part| part.starts_with('+'))?;
    let mut numbers = plus[1..].splitn(2, ',');
    let first = numbers.next()?.parse().ok()?;
    let count = match numbers.next() {
        Some(count) => count.parse().ok()?,
        None => 1,
    };
    Some((first, count))
}

/// A path git quoted C-style (`"b/tab\there"`): tabs, new lines, quotes and
/// backslashes escaped (octal escapes are left off with
/// `core.quotePath=false`).
fn unquote(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            other => other,
        });
    }
    Some(out)
}

/// Writes the index's version of `paths` below `into` (no filters run: the
/// bytes the commit will hold).
fn checkout_index(top: &Path, into: &Path, paths: &[&str]) -> Result<()> {
    let mut input = Vec::new();
    for path in paths {
        input.extend_from_slice(path.as_bytes());
        input.push(0);
    }
    let mut prefix = into.as_os_str().to_owned();
    prefix.push("/");
    let mut child = Command::new("git")
        .current_dir(top)
        .args(["checkout-index", "-z", "--stdin", "--force", "--prefix"])
        .arg(&prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run git")?;
    child
        .stdin
        .take()
        .context("git's standard input")?
        .write_all(&input)
        .context("cannot write to git checkout-index")?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "git checkout-index failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn git_output(dir: &Path, args: &[&str]) -> Result<String> {
    String::from_utf8(git_bytes(dir, args)?).context("git's output is not UTF-8")
}

fn git_bytes(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

pub fn install(args: &InstallArgs) -> Result<ExitCode> {
    let top = git_output(&args.repo, &["rev-parse", "--show-toplevel"])
        .context("not in a git work tree")?;
    let top = PathBuf::from(top.trim_end_matches('\n'));
    if args.framework {
        return install_framework(&top);
    }
    // `--git-path` honours core.hooksPath and linked work trees.
    let hook = git_output(&top, &["rev-parse", "--git-path", "hooks/pre-commit"])?;
    let hook = top.join(hook.trim_end_matches('\n'));
    if let Ok(existing) = std::fs::read_to_string(&hook) {
        if !existing.contains(INSTALLED_MARK) && !args.force {
            bail!(
                "{} exists and leakscan did not write it: add `leakscan hook pre-commit` to it, or pass --force to replace it",
                hook.display()
            );
        }
    }
    let executable = std::env::current_exe().context("cannot find leakscan's own path")?;
    let script = format!(
        "#!/bin/sh\n{INSTALLED_MARK}\nexec {} hook pre-commit\n",
        shell_quote(&executable.to_string_lossy())
    );
    if let Some(dir) = hook.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&hook, script).with_context(|| format!("cannot write {}", hook.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", hook.display()))?;
    }
    println!("installed {}", hook.display());
    Ok(ExitCode::SUCCESS)
}

/// The entry the pre-commit framework runs (`repo: local`, leakscan from
/// the PATH); the project's own `.pre-commit-hooks.yaml` offers the same
/// hook to configurations that name leakscan's repository.
const FRAMEWORK_ENTRY: &str = "  - repo: local
    hooks:
      - id: leakscan
        name: leakscan (secrets in staged changes)
        entry: leakscan hook pre-commit
        language: system
        pass_filenames: false
        stages: [pre-commit]
";

fn install_framework(top: &Path) -> Result<ExitCode> {
    let config = top.join(".pre-commit-config.yaml");
    match std::fs::read_to_string(&config) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&config, format!("repos:\n{FRAMEWORK_ENTRY}"))
                .with_context(|| format!("cannot write {}", config.display()))?;
            println!(
                "wrote {}; run `pre-commit install` to turn it on",
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", config.display())),
        Ok(text) if text.contains("leakscan hook pre-commit") => {
            println!("{} already runs leakscan", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(text) => {
            // Appended under `repos:` only when that is the file's last
            // top-level key; anything else is left for a person to edit.
            let last_key = text
                .lines()
                .rfind(|line| !line.starts_with([' ', '\t', '#', '-']) && !line.trim().is_empty());
            if last_key.map(str::trim_end) != Some("repos:") {
                bail!(
                    "{} has keys after `repos:`: add this entry under `repos:` yourself:\n{FRAMEWORK_ENTRY}",
                    config.display()
                );
            }
            let mut text = text;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(FRAMEWORK_ENTRY);
            std::fs::write(&config, text)
                .with_context(|| format!("cannot write {}", config.display()))?;
            println!("added leakscan to {}", config.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `text` in single quotes for sh.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunk_headers_give_the_added_lines() {
        assert_eq!(added_range("-3,0 +4,2 @@ fn main"), Some((4, 2)));
        assert_eq!(added_range("-3 +4 @@"), Some((4, 1)));
        assert_eq!(added_range("-3,2 +2,0 @@"), Some((2, 0)));
        let staged = Staged {
            added: Some(vec![(4, 2), (2, 0)]),
        };
        assert!(!staged.adds(Some(2)) && !staged.adds(Some(3)));
        assert!(staged.adds(Some(4)) && staged.adds(Some(5)) && !staged.adds(Some(6)));
        assert!(!staged.adds(None));
        assert!(Staged { added: None }.adds(None));
    }

    #[test]
    fn quoted_paths_are_read_back() {
        assert_eq!(
            unquote(r#""b/a\tb \"c\"""#).as_deref(),
            Some("b/a\tb \"c\"")
        );
        assert_eq!(unquote("b/plain"), None);
        assert_eq!(
            shell_quote("/opt/it's/leakscan"),
            r"'/opt/it'\''s/leakscan'"
        );
    }
}
