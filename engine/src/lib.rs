//! leakscan's detection engine: a synchronous library, bytes in, findings out.
//! No async runtime, no network, no database.
//!
//! - [`rules`]: rules as data. The built-in rules are the YAML files of
//!   `engine/rules/`, embedded at build time; [`CustomRule`]s come at run time.
//! - [`Policy`] says which rules and allowlists apply; [`ScanConfig`] (the
//!   per-branch `mohami-config.yml` / `soteri-security.yml`, or `--config`)
//!   turns one policy into another.
//! - [`RuleSet`] is a compiled policy, shared by all threads; each thread
//!   makes a [`Scanner`] from it. A scanner runs a multi-pattern prefilter
//!   (Vectorscan, or Aho-Corasick over keywords) and then only the regexes of
//!   the rules that can match.
//! - [`git::scan_repository`] walks git history (each unique blob once,
//!   findings attributed to the commit that introduced them);
//!   [`files::scan_directory`] scans plain files.
//!
//! ```
//! use leakscan_engine::{Policy, RuleSet};
//!
//! let ruleset = RuleSet::build(&Policy::builtin_default()).unwrap();
//! let mut scanner = ruleset.scanner().unwrap();
//! let text = b"aws_access_key_id = AKIAUJZDEGXDNCF32EPF\n";
//! let matches = scanner.scan(text);
//! assert_eq!(ruleset.rule(matches[0].rule).id, "AWS_ACCESS_KEY_ID");
//! assert_eq!(matches[0].line, 1);
//! ```

pub mod cache;
pub mod checksum;
pub mod config;
pub mod error;
pub mod files;
pub mod git;
pub mod lookalike;
pub mod prefilter;
pub mod rules;
pub mod ruleset;
pub mod scan;
pub mod secret;
#[cfg(feature = "vectorscan")]
pub mod vectorscan;

use std::path::Path;

pub use cache::{BlobCache, BlobId, CachedMatch, MemoryBlobCache, NoCache};
pub use config::ScanConfig;
pub use error::{ConfigError, EngineError, RuleError};
pub use git::{GitScanRequest, PushedRefs, RefSelection};
pub use prefilter::{set_prefilter_cache_dir, PrefilterKind};
pub use rules::{builtin_rules, AllowRule, Confidence, CustomRule, RuleSpec, Severity};
pub use ruleset::{
    BlobMatch, CompiledRule, Policy, PolicySpec, RuleIdx, RuleSet, RuleSetCache, Scanner,
};
pub use scan::{
    CommitMeta, Finding, ScanOptions, ScanProgress, ScanReport, ScanStats, ScanWarning,
};
pub use secret::Secret;

/// Scans `path`: its git history when it is a repository, its files otherwise.
/// A git-only request (a branch, `--since`, all refs) on a plain directory is
/// an error.
pub fn scan_path(
    path: &Path,
    base: &Policy,
    request: &GitScanRequest,
    options: &ScanOptions,
    progress: &ScanProgress,
) -> Result<ScanReport, EngineError> {
    if !path.exists() {
        return Err(EngineError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    if path.is_dir() && git::open_repository(path)?.is_some() {
        return git::scan_repository(path, base, request, options, progress);
    }
    if request.refs != RefSelection::Branches || request.since.is_some() {
        return Err(EngineError::Git {
            path: path.display().to_string(),
            message: "not a git repository (--branch, --since and --all-refs need one)".into(),
        });
    }
    files::scan_directory(path, base, options, progress)
}
