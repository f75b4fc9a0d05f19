//! `leakscan`: scan a repository or directory for secrets, list the rules.
//!
//! Exit codes of `leakscan scan`: 0 nothing found (nothing new beyond
//! `--baseline`), 1 findings, 2 error.

mod baseline;
mod hook;
mod insights;
mod precommit;
mod report;
mod up;

use std::{
    fs,
    io::{self, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use leakscan_engine::{
    builtin_rules, rules::load_rule_file, Confidence, GitScanRequest, Policy, PrefilterKind,
    RefSelection, ScanConfig, ScanOptions, ScanProgress, ScanReport,
};

use crate::report::{write_report, FindingRecord, Format};

/// mimalloc, also standing in for libgit2's C `malloc` (feature `override`):
/// glibc's allocator was 30% of a history scan's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "leakscan",
    version,
    about = "Find secrets in git history and files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where compiled prefilter databases are kept between runs (default:
    /// $XDG_CACHE_HOME/leakscan or ~/.cache/leakscan); "off" keeps none.
    #[arg(long, global = true, env = "LEAKSCAN_CACHE_DIR")]
    cache_dir: Option<String>,
}

/// The prefilter cache directory `--cache-dir` names, or the default under
/// the user's cache directory (none when there is no home).
fn prefilter_cache_dir(cache_dir: Option<&str>) -> Option<PathBuf> {
    let base = match cache_dir {
        Some("off") | Some("") => return None,
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("leakscan"),
            None => PathBuf::from(std::env::var_os("HOME")?)
                .join(".cache")
                .join("leakscan"),
        },
    };
    Some(base.join("prefilter"))
}

/// The key of the findings' fingerprints: the one given, or this user's own,
/// made once (32 random bytes) and kept in the user's config directory.
/// A fixed default would let anyone holding a report confirm guessed
/// secrets offline.
fn fingerprint_key(explicit: Option<&str>) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    if let Some(key) = explicit.filter(|key| !key.is_empty()) {
        return Ok(key.as_bytes().to_vec());
    }
    let dir =
        match std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("leakscan"),
            None => PathBuf::from(std::env::var_os("HOME").context(
                "no home directory for the fingerprint key: set LEAKSCAN_FINGERPRINT_KEY",
            )?)
            .join(".config")
            .join("leakscan"),
        };
    let path = dir.join("fingerprint.key");
    let read = |path: &std::path::Path| -> anyhow::Result<Vec<u8>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let key = text.trim();
        anyhow::ensure!(
            key.len() >= 32,
            "{} is no fingerprint key (remove it to make a new one)",
            path.display()
        );
        Ok(key.as_bytes().to_vec())
    };
    if path.exists() {
        return read(&path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = hex::encode(rand::random::<[u8; 32]>());
    // Written whole beside it, then linked into place: a scan running at
    // the same moment reads either no key or the whole of one, and the
    // first link wins.
    let staging = dir.join(format!(".fingerprint.key.{}", std::process::id()));
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options
            .open(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        file.write_all(key.as_bytes())?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&staging, &path);
    let _ = std::fs::remove_file(&staging);
    match linked {
        Ok(()) => Ok(key.into_bytes()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scan a git repository's history (every branch) or a directory of files.
    Scan(ScanArgs),
    /// List the rules.
    Rules(RulesArgs),
    /// Run the whole cluster (REST API, coordinator, workers) in this process.
    Up(Box<up::UpArgs>),
    /// Git hooks: `pre-receive` (push protection on the server), `pre-commit`
    /// and `install` (on a developer's machine).
    Hook(hook::HookArgs),
    /// Code Insights: `leakscan insights publish` puts a scan report on a
    /// commit in Bitbucket (Data Center or Cloud).
    Insights(insights::InsightsArgs),
}

#[derive(Debug, clap::Args)]
struct ScanArgs {
    /// Repository or directory (or single file) to scan.
    path: PathBuf,
    /// Scan only this branch.
    #[arg(long)]
    branch: Option<String>,
    /// Scan only commits not reachable from this commit (incremental scans).
    #[arg(long)]
    since: Option<String>,
    /// Scan every ref (tags, notes, other refs), not only branches.
    #[arg(long, conflicts_with = "branch")]
    all_refs: bool,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write the report to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Show secrets in full instead of their first 4 characters.
    #[arg(long)]
    show_secrets: bool,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Config file: custom rules, allowlists, disabled rules (the per-branch
    /// config file's keys, plus allowlist_lines and disabled_rules).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Extra rule files (the schema of engine/rules/*.yml), added to the built-ins.
    #[arg(long = "rules-file")]
    rules_files: Vec<PathBuf>,
    /// Blobs and files larger than this are skipped (and counted).
    #[arg(long, default_value_t = leakscan_engine::scan::DEFAULT_MAX_BLOB_SIZE)]
    max_blob_size: u64,
    /// Scan a shallow clone's partial history instead of refusing it.
    #[arg(long)]
    allow_shallow: bool,
    /// Prefilter implementation (same findings either way).
    #[arg(long, value_enum, default_value = "best")]
    prefilter: PrefilterArg,
    /// Key of the findings' fingerprints (a keyed hash of rule and secret);
    /// default: one made once for this user and kept in
    /// $XDG_CONFIG_HOME/leakscan/fingerprint.key (~/.config/leakscan).
    #[arg(long, env = "LEAKSCAN_FINGERPRINT_KEY", hide_env_values = true)]
    fingerprint_key: Option<String>,
    /// Report only findings of this confidence or higher: high (a
    /// provider's own format), medium (a value of the right shape beside
    /// the provider's name or a credential word), low (weaker evidence).
    #[arg(long, default_value = "medium", value_parser = parse_confidence)]
    min_confidence: Confidence,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// A report an earlier scan wrote (`--format json` or `sarif`): only
    /// findings whose fingerprint it lacks are reported. Needs the same
    /// fingerprint key as that scan.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

fn parse_confidence(text: &str) -> Result<Confidence, String> {
    text.parse()
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PrefilterArg {
    Best,
    Keywords,
    #[cfg(feature = "vectorscan")]
    Vectorscan,
}

impl From<PrefilterArg> for PrefilterKind {
    fn from(value: PrefilterArg) -> Self {
        match value {
            PrefilterArg::Best => PrefilterKind::Best,
            PrefilterArg::Keywords => PrefilterKind::Keywords,
            #[cfg(feature = "vectorscan")]
            PrefilterArg::Vectorscan => PrefilterKind::Vectorscan,
        }
    }
}

#[derive(Debug, clap::Args)]
struct RulesArgs {
    #[arg(long, value_enum, default_value = "text")]
    format: RulesFormat,
    /// Extra rule files to list with the built-ins.
    #[arg(long = "rules-file")]
    rules_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RulesFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    leakscan_engine::set_prefilter_cache_dir(prefilter_cache_dir(cli.cache_dir.as_deref()));
    let result = match cli.command {
        Command::Scan(args) => run_scan(&args),
        Command::Rules(args) => run_rules(&args).map(|()| ExitCode::SUCCESS),
        Command::Up(args) => up::run_up(*args).map(|()| ExitCode::SUCCESS),
        Command::Hook(args) => hook::run(args),
        Command::Insights(args) => insights::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("leakscan: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The base policy: `policy` (the built-ins) plus `--rules-file`s, then
/// `--config`.
fn base_policy(
    mut policy: Policy,
    rules_files: &[PathBuf],
    config: Option<&PathBuf>,
) -> Result<Policy> {
    for path in rules_files {
        let extra = load_rule_file(path)?;
        policy.builtins.extend(extra);
    }
    if let Err(name) = leakscan_engine::rules::check_unique_names(&policy.builtins) {
        bail!("rule name {name} is defined twice");
    }
    if let Some(path) = config {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config = ScanConfig::parse(&path.display().to_string(), &text)?;
        policy = config.apply(&policy)?;
    }
    Ok(policy)
}

fn run_scan(args: &ScanArgs) -> Result<ExitCode> {
    let mut policy = Policy {
        min_confidence: args.min_confidence,
        ..Policy::builtin_default()
    };
    policy = base_policy(policy, &args.rules_files, args.config.as_ref())?;
    let fingerprint_key = fingerprint_key(args.fingerprint_key.as_deref())?;
    let baseline = args
        .baseline
        .as_deref()
        .map(baseline::Baseline::load)
        .transpose()?;
    let request = GitScanRequest {
        refs: match (&args.branch, args.all_refs) {
            (Some(branch), _) => RefSelection::Branch(branch.clone()),
            (None, true) => RefSelection::AllRefs,
            (None, false) => RefSelection::Branches,
        },
        since: args.since.clone(),
        allow_shallow: args.allow_shallow,
    };
    // Compiled once up front, so a bad regex is reported before any work
    // starts; the scan takes the same compiled rules from the cache.
    let rulesets = Arc::new(leakscan_engine::RuleSetCache::default());
    rulesets.get_or_build(&policy, args.prefilter.into())?;
    let options = ScanOptions {
        threads: args.threads,
        max_blob_size: args.max_blob_size,
        prefilter: args.prefilter.into(),
        rulesets: Some(rulesets),
    };
    // Open the output first: a bad --output path fails before the scan.
    let mut output: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(io::BufWriter::new(
            fs::File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        )),
        None => Box::new(io::BufWriter::new(io::stdout().lock())),
    };
    let interactive = io::stderr().is_terminal() && !args.no_progress;
    let progress = Arc::new(ScanProgress::default());
    let started = Instant::now();
    let ticker = interactive.then(|| ProgressTicker::start(Arc::clone(&progress)));
    let scanned = leakscan_engine::scan_path(&args.path, &policy, &request, &options, &progress);
    if let Some(ticker) = ticker {
        ticker.stop();
    }
    let report = scanned?;
    for warning in &report.warnings {
        eprintln!("leakscan: warning: {warning}");
    }
    let scan_date = chrono::Utc::now();
    let mut records: Vec<FindingRecord> = report
        .findings
        .iter()
        .map(|finding| FindingRecord::new(finding, &scan_date, args.show_secrets, &fingerprint_key))
        .collect();
    if let Some(baseline) = &baseline {
        let found = records.len();
        records.retain(|record| !baseline.contains(&record.fingerprint));
        if found > 0 && records.len() == found && baseline.len() > 0 {
            eprintln!(
                "leakscan: warning: none of the {found} findings is in the baseline's {} (was it made with another fingerprint key? see LEAKSCAN_FINGERPRINT_KEY)",
                baseline.len()
            );
        }
    }
    write_report(args.format, &records, &mut output)?;
    drop(output);
    if interactive {
        print_summary(&report, records.len(), started.elapsed());
    }
    Ok(if records.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `reported`: the findings the report holds (fewer than found with
/// `--baseline`).
fn print_summary(report: &ScanReport, reported: usize, elapsed: Duration) {
    let stats = &report.stats;
    let seconds = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "{} findings; {} commits, {} blobs, {:.1} MB scanned in {:.2} s ({:.1} MB/s); skipped {} binary, {} too large, {} unreadable",
        reported,
        stats.commits,
        stats.blobs_scanned,
        stats.bytes_scanned as f64 / 1e6,
        seconds,
        stats.bytes_scanned as f64 / 1e6 / seconds,
        stats.skipped_binary,
        stats.skipped_too_large,
        stats.unreadable,
    );
}

/// A progress bar on standard error, fed from the scan's counters.
struct ProgressTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl ProgressTicker {
    fn start(progress: Arc<ScanProgress>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let style = |template: &str| {
                indicatif::ProgressStyle::with_template(template).expect("valid template")
            };
            let bar = indicatif::ProgressBar::new(0).with_style(style(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} commits {msg}",
            ));
            let mut scanning_blobs = false;
            let started = Instant::now();
            while !stop_flag.load(Ordering::Relaxed) {
                let blobs_total = progress.blobs_total.load(Ordering::Relaxed);
                if blobs_total > 0 && !scanning_blobs {
                    // Trees are diffed: from now on the unit is the blob.
                    scanning_blobs = true;
                    bar.set_style(style(
                        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} blobs {msg}",
                    ));
                }
                let bytes = progress.bytes_scanned.load(Ordering::Relaxed);
                let rate = bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-3);
                if scanning_blobs {
                    bar.set_length(blobs_total);
                    bar.set_position(progress.blobs_scanned.load(Ordering::Relaxed));
                } else {
                    bar.set_length(progress.commits.load(Ordering::Relaxed));
                    bar.set_position(progress.commits_diffed.load(Ordering::Relaxed));
                }
                bar.set_message(format!(
                    "{:.1} MB, {} findings, {rate:.1} MB/s",
                    bytes as f64 / 1e6,
                    progress.findings.load(Ordering::Relaxed),
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        ProgressTicker { stop, handle }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

#[derive(serde::Serialize)]
struct RuleListing<'a> {
    id: &'a str,
    name: &'a str,
    severity: &'a str,
    confidence: &'a str,
    keywords: &'a [String],
    pattern: &'a str,
    aliases: &'a [String],
    references: &'a [String],
}

fn run_rules(args: &RulesArgs) -> Result<()> {
    let mut specs = builtin_rules().to_vec();
    for path in &args.rules_files {
        specs.extend(load_rule_file(path)?);
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    match args.format {
        RulesFormat::Json => {
            let listing: Vec<RuleListing<'_>> = specs
                .iter()
                .map(|spec| RuleListing {
                    id: &spec.id,
                    name: &spec.name,
                    severity: spec.severity.as_str(),
                    confidence: spec.confidence().as_str(),
                    keywords: &spec.keywords,
                    pattern: &spec.pattern,
                    aliases: &spec.aliases,
                    references: &spec.references,
                })
                .collect();
            serde_json::to_writer_pretty(&mut out, &listing)?;
            writeln!(out)?;
        }
        RulesFormat::Text => {
            for spec in &specs {
                writeln!(
                    out,
                    "{:<40} {:<8} {:<6} {}",
                    spec.id,
                    spec.severity.as_str(),
                    spec.confidence().as_str(),
                    spec.name
                )?;
            }
            writeln!(out, "{} rules", specs.len())?;
        }
    }
    out.flush()?;
    Ok(())
}
