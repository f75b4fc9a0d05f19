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

/// A staged file: the lines the commit adds to it.
#[derive(Debug, Default)]
struct Staged {
    /// `(first, count)` ranges; `None`: the file is new, every line is added.
    added: Option<Vec<(u32, u32)>>,
    /// Renamed or copied from another path: the file is new under this
    /// name, though no line is.
    new_path: bool,
}

impl Staged {
    /// Whether a finding from line `first` over `lines` lines (a private
    /// key's whole block) touches a line the commit adds; `first` is `None`
    /// for a rule that reports a whole file, which is new only under a new
    /// name.
    fn adds(&self, first: Option<u32>, lines: u32) -> bool {
        match (&self.added, first) {
            (None, _) => true,
            (Some(_), None) => self.new_path,
            (Some(ranges), Some(line)) => {
                let last = line.saturating_add(lines.max(1) - 1);
                ranges.iter().any(|&(start, count)| {
                    count > 0 && line <= start.saturating_add(count - 1) && last >= start
                })
            }
        }
    }
}

/// The top of the work tree `dir` is in.
fn work_tree_top(dir: &Path) -> Result<PathBuf> {
    let top =
        git_output(dir, &["rev-parse", "--show-toplevel"]).context("not in a git work tree")?;
    Ok(PathBuf::from(top.trim_end_matches('\n')))
}

pub fn pre_commit(args: &PreCommitArgs) -> Result<ExitCode> {
    let top = work_tree_top(&args.repo)?;
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
    write_index_blobs(&top, checkout.path(), |path| {
        staged.contains_key(path) || BRANCH_CONFIG_FILES.contains(&path)
    })?;

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
            let lines = 1 + memchr::memchr_iter(b'\n', finding.secret.expose()).count() as u32;
            staged
                .get(&finding.path)
                .is_some_and(|file| file.adds(finding.line, lines))
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
    let status = git_bytes(
        top,
        &[
            "diff",
            "--cached",
            "--name-status",
            "-z",
            "-M",
            "--diff-filter=ACMRT",
        ],
    )?;
    let mut files = HashMap::new();
    let mut fields = status
        .split(|byte| *byte == 0)
        .filter(|field| !field.is_empty())
        .map(String::from_utf8_lossy);
    while let Some(code) = fields.next() {
        let moved = code.starts_with(['R', 'C']);
        if moved {
            fields.next();
        }
        let path = fields
            .next()
            .with_context(|| format!("unexpected git diff --name-status output at {code:?}"))?;
        let added = if code.starts_with('A') {
            None
        } else {
            Some(Vec::new())
        };
        files.insert(
            path.into_owned(),
            Staged {
                added,
                new_path: moved,
            },
        );
    }
    let patch = git_bytes(
        top,
        &[
            "-c",
            "core.quotePath=false",
            "diff",
            "--cached",
            "-U0",
            "-M",
            "--diff-filter=CMRT",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--src-prefix=a/",
            "--dst-prefix=b/",
        ],
    )?;
    // `+++ b/PATH` names the file only in a file's header (between its
    // `diff --git` and its first hunk): an added line may read `++ …` too.
    let mut current: Option<String> = None;
    let mut in_header = false;
    for line in patch.split(|byte| *byte == b'\n') {
        if line.starts_with(b"diff --git ") {
            in_header = true;
            current = None;
        } else if in_header && line.starts_with(b"+++ ") {
            // A name with a space ends with a tab.
            let path = String::from_utf8_lossy(&line[4..]);
            let path = path.strip_suffix('\t').unwrap_or(&path);
            current = path.strip_prefix("b/").map(str::to_string).or_else(|| {
                unquote(path).and_then(|path| path.strip_prefix("b/").map(str::to_string))
            });
        } else if let Some(header) = line.strip_prefix(b"@@ ") {
            in_header = false;
            let header = String::from_utf8_lossy(header);
            let (Some(path), Some(range)) = (&current, added_range(&header)) else {
                continue;
            };
            if let Some(Staged {
                added: Some(ranges),
                ..
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

/// A path git quoted C-style (`"b/tab\there"`): tabs, new lines, quotes
/// and backslashes escaped, other control characters as octal.
fn unquote(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?.as_bytes();
    let mut out = Vec::new();
    let mut index = 0;
    while index < inner.len() {
        let byte = inner[index];
        index += 1;
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let escaped = *inner.get(index)?;
        index += 1;
        out.push(match escaped {
            b't' => b'\t',
            b'n' => b'\n',
            b'r' => b'\r',
            b'a' => 7,
            b'b' => 8,
            b'f' => 12,
            b'v' => 11,
            b'0'..=b'3' => {
                let digits = inner.get(index - 1..index + 2)?;
                index += 2;
                u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()?
            }
            other => other,
        });
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Writes the index's blobs of the paths `wanted` picks below `into`, as
/// git stores them (`git cat-file --batch`: no smudge filter, no LFS
/// download, no conversion): the bytes the commit will hold.
fn write_index_blobs(top: &Path, into: &Path, wanted: impl Fn(&str) -> bool) -> Result<()> {
    let listing = git_bytes(top, &["ls-files", "--stage", "-z"])?;
    let mut blobs: Vec<(String, String)> = Vec::new();
    for entry in listing
        .split(|byte| *byte == 0)
        .filter(|entry| !entry.is_empty())
    {
        let entry = String::from_utf8_lossy(entry);
        let Some((meta, path)) = entry.split_once('\t') else {
            continue;
        };
        let mut meta = meta.split(' ');
        let (Some(mode), Some(id), Some("0")) = (meta.next(), meta.next(), meta.next()) else {
            continue;
        };
        // Files and symbolic links; a submodule is another repository.
        if matches!(mode, "100644" | "100755" | "120000") && wanted(path) {
            blobs.push((id.to_string(), path.to_string()));
        }
    }
    if blobs.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("git")
        .current_dir(top)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run git")?;
    let mut stdin = child.stdin.take().context("git's standard input")?;
    let ids: Vec<u8> = blobs
        .iter()
        .flat_map(|(id, _)| id.bytes().chain(std::iter::once(b'\n')))
        .collect();
    // Fed from a thread: git answers while it reads, and a full pipe each
    // way would stop both.
    let feeder = std::thread::spawn(move || stdin.write_all(&ids));
    let mut stdout = std::io::BufReader::new(child.stdout.take().context("git's output")?);
    for (id, path) in &blobs {
        use std::io::{BufRead, Read};
        let mut header = String::new();
        stdout.read_line(&mut header)?;
        let size: usize = match header.trim_end().split(' ').collect::<Vec<_>>()[..] {
            [answered, "blob", size] if answered == id => size
                .parse()
                .with_context(|| format!("git cat-file: bad header {header:?}"))?,
            _ => bail!("git cat-file: no blob {id} for {path}: {header:?}"),
        };
        let mut content = vec![0; size + 1];
        stdout.read_exact(&mut content)?;
        content.pop();
        let target = into.join(path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&target, content)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("writing to git cat-file failed"))?
        .context("cannot write to git cat-file")?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "git cat-file failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Runs git in `dir`; its standard output, or an error with git's words.
pub(crate) fn git_output(dir: &Path, args: &[&str]) -> Result<String> {
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
    let top = work_tree_top(&args.repo)?;
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
            // The entry takes the indentation of the list's items (the
            // framework's own samples put them at column 0).
            let indent = text
                .lines()
                .skip_while(|line| line.trim_end() != "repos:")
                .skip(1)
                .find(|line| line.trim_start().starts_with('-'))
                .map_or("  ", |item| &item[..item.len() - item.trim_start().len()]);
            let mut text = text.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            for line in FRAMEWORK_ENTRY.lines() {
                text.push_str(indent);
                text.push_str(&line[2..]);
                text.push('\n');
            }
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
            new_path: false,
        };
        assert!(!staged.adds(Some(2), 1) && !staged.adds(Some(3), 1));
        assert!(staged.adds(Some(4), 1) && staged.adds(Some(5), 1) && !staged.adds(Some(6), 1));
        // A key block from line 1 over 5 lines: its body changed.
        assert!(staged.adds(Some(1), 5) && !staged.adds(Some(1), 3));
        assert!(!staged.adds(None, 1));
        assert!(Staged {
            added: None,
            new_path: false
        }
        .adds(None, 1));
        // A whole-file finding under a new name.
        assert!(Staged {
            added: Some(vec![]),
            new_path: true
        }
        .adds(None, 1));
    }

    #[test]
    fn quoted_paths_are_read_back() {
        assert_eq!(
            unquote(r#""b/a\tb \"c\"""#).as_deref(),
            Some("b/a\tb \"c\"")
        );
        assert_eq!(unquote("b/plain"), None);
        assert_eq!(
            unquote(r#""b/esc\033x\\y""#).as_deref(),
            Some("b/esc\u{1b}x\\y")
        );
        assert_eq!(
            shell_quote("/opt/it's/leakscan"),
            r"'/opt/it'\''s/leakscan'"
        );
    }
}
