//! What every scan takes and gives: options, live progress counters,
//! findings, statistics and warnings.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    prefilter::PrefilterKind,
    rules::{Confidence, Severity},
    secret::Secret,
};

/// Default size above which a blob or file is skipped (and counted).
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 20 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    pub max_blob_size: u64,
    pub prefilter: PrefilterKind,
    /// Compiled rulesets kept across scans (none: each scan compiles its own).
    pub rulesets: Option<std::sync::Arc<crate::ruleset::RuleSetCache>>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            threads: 0,
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            prefilter: PrefilterKind::Best,
            rulesets: None,
        }
    }
}

impl ScanOptions {
    pub(crate) fn thread_pool(&self) -> Result<rayon::ThreadPool, crate::EngineError> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .thread_name(|index| format!("leakscan-scan-{index}"))
            .build()
            .map_err(|error| {
                crate::EngineError::Prefilter(format!("cannot start threads: {error}"))
            })
    }
}

/// Counters a scan updates as it goes, for a progress display.
#[derive(Debug, Default)]
pub struct ScanProgress {
    /// Commits found (known before any tree is read).
    pub commits: AtomicU64,
    /// Commits whose trees have been diffed.
    pub commits_diffed: AtomicU64,
    pub blobs_total: AtomicU64,
    /// Blobs done: read and scanned, or answered by the blob-result cache.
    pub blobs_scanned: AtomicU64,
    /// Of `blobs_scanned`, those the cache answered (not read).
    pub blobs_from_cache: AtomicU64,
    pub bytes_scanned: AtomicU64,
    pub findings: AtomicU64,
    /// Set from outside to stop the scan: it ends with
    /// [`crate::EngineError::Cancelled`] at its next checkpoint (every
    /// commit chunk and every blob).
    pub cancel: std::sync::atomic::AtomicBool,
}

impl ScanProgress {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}

/// Totals of a finished scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub commits: u64,
    pub blobs_scanned: u64,
    /// Blobs whose result came from a [`crate::BlobCache`] (not read).
    pub blobs_from_cache: u64,
    pub bytes_scanned: u64,
    pub skipped_binary: u64,
    pub skipped_too_large: u64,
    pub unreadable: u64,
}

impl ScanStats {
    pub(crate) fn merge(&mut self, other: &ScanStats) {
        self.commits += other.commits;
        self.blobs_scanned += other.blobs_scanned;
        self.blobs_from_cache += other.blobs_from_cache;
        self.bytes_scanned += other.bytes_scanned;
        self.skipped_binary += other.skipped_binary;
        self.skipped_too_large += other.skipped_too_large;
        self.unreadable += other.unreadable;
    }
}

/// Something inside a scan that could not be read; the scan went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanWarning {
    /// The file, blob or ref concerned.
    pub subject: String,
    pub message: String,
}

impl std::fmt::Display for ScanWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// The commit that introduced a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMeta {
    /// Full hex id.
    pub id: String,
    pub author: String,
    pub author_email: String,
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// The author's UTC offset in minutes.
    pub offset_minutes: i32,
}

/// A finding's fields as every output names them (JSON fields, CSV columns
/// in this order; DESIGN §4, then `confidence`, added after the fields
/// clients already read).
pub const FINDING_COLUMNS: [&str; 17] = [
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

/// One reported secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule_id: String,
    pub rule_name: String,
    pub severity: Severity,
    /// How sure the finding is to be a real credential.
    pub confidence: Confidence,
    /// Path relative to the repository or scanned directory, `/`-separated.
    pub path: String,
    /// 1-based line; `None` for a rule that reports whole files.
    pub line: Option<u32>,
    pub commit: Option<CommitMeta>,
    /// A branch (or ref) whose history contains the commit.
    pub branch: Option<String>,
    pub secret: Secret,
}

/// Everything a scan gives back.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub findings: Vec<Finding>,
    pub stats: ScanStats,
    pub warnings: Vec<ScanWarning>,
}
