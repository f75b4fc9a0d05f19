//! Scanning a plain directory (a path that is not a git repository): every
//! regular file below it, `.git` folders and symbolic links left out.

use std::{fs, io::Read, path::Path};

use rayon::prelude::*;

use crate::{
    config::{ScanConfig, BRANCH_CONFIG_FILES},
    error::EngineError,
    ruleset::{is_binary, Policy, RuleSet},
    scan::{Finding, ScanOptions, ScanProgress, ScanReport, ScanStats, ScanWarning},
    secret::Secret,
};

enum FileOutcome {
    Findings { bytes: u64, findings: Vec<Finding> },
    Binary,
    TooLarge,
    Unreadable(String),
}

/// Scans every file below `root` (or the single file `root`) under `base`
/// plus the root's config file, if it has one.
pub fn scan_directory(
    root: &Path,
    base: &Policy,
    options: &ScanOptions,
    progress: &ScanProgress,
) -> Result<ScanReport, EngineError> {
    let metadata = fs::metadata(root).map_err(|source| EngineError::Io {
        path: root.display().to_string(),
        source,
    })?;
    let mut report = ScanReport::default();
    let mut files = Vec::new();
    if metadata.is_dir() {
        collect_files(root, "", &mut files, &mut report.warnings);
    } else {
        files.push(String::new());
    }
    files.sort();
    let policy = root_policy(root, metadata.is_dir(), base)?;
    let ruleset = match &options.rulesets {
        Some(cache) => cache.get_or_build(&policy, options.prefilter)?,
        None => RuleSet::build_with(&policy, options.prefilter)?,
    };
    drop(ruleset.scanner()?);
    ScanProgress::add(&progress.blobs_total, files.len() as u64);
    let pool = options.thread_pool()?;
    let outcomes: Vec<FileOutcome> = pool.install(|| {
        files
            .par_iter()
            .map_init(
                || ruleset.scanner().ok(),
                |scanner, relative| {
                    let full = if relative.is_empty() {
                        root.to_path_buf()
                    } else {
                        root.join(relative)
                    };
                    let display = if relative.is_empty() {
                        root.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    } else {
                        relative.clone()
                    };
                    let outcome = match scanner.as_mut() {
                        Some(scanner) => {
                            scan_file(&ruleset, scanner, &full, &display, options.max_blob_size)
                        }
                        None => FileOutcome::Unreadable("cannot build a scanner".into()),
                    };
                    ScanProgress::add(&progress.blobs_scanned, 1);
                    if let FileOutcome::Findings { bytes, findings } = &outcome {
                        ScanProgress::add(&progress.bytes_scanned, *bytes);
                        ScanProgress::add(&progress.findings, findings.len() as u64);
                    }
                    outcome
                },
            )
            .collect()
    });
    let mut stats = ScanStats::default();
    for (relative, outcome) in files.iter().zip(outcomes) {
        match outcome {
            FileOutcome::Findings { bytes, findings } => {
                stats.blobs_scanned += 1;
                stats.bytes_scanned += bytes;
                report.findings.extend(findings);
            }
            FileOutcome::Binary => stats.skipped_binary += 1,
            FileOutcome::TooLarge => stats.skipped_too_large += 1,
            FileOutcome::Unreadable(message) => {
                stats.unreadable += 1;
                report.warnings.push(ScanWarning {
                    subject: root.join(relative).display().to_string(),
                    message: format!("cannot read, skipped: {message}"),
                });
            }
        }
    }
    report.stats = stats;
    Ok(report)
}

fn root_policy(root: &Path, is_dir: bool, base: &Policy) -> Result<Policy, EngineError> {
    if !is_dir {
        return Ok(base.clone());
    }
    for name in BRANCH_CONFIG_FILES {
        let path = root.join(name);
        if path.is_file() {
            let text = fs::read_to_string(&path).map_err(|source| EngineError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let config = ScanConfig::parse(&path.display().to_string(), &text)?;
            return Ok(config.apply(base)?);
        }
    }
    Ok(base.clone())
}

fn collect_files(
    directory: &Path,
    relative: &str,
    out: &mut Vec<String>,
    warnings: &mut Vec<ScanWarning>,
) {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) => {
            warnings.push(ScanWarning {
                subject: directory.display().to_string(),
                message: format!("cannot list, skipped: {error}"),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let child = if relative.is_empty() {
            name.clone()
        } else {
            format!("{relative}/{name}")
        };
        if file_type.is_dir() {
            if name != ".git" {
                collect_files(&entry.path(), &child, out, warnings);
            }
        } else if file_type.is_file() {
            out.push(child);
        }
    }
}

fn scan_file(
    ruleset: &RuleSet,
    scanner: &mut crate::Scanner<'_>,
    full: &Path,
    display: &str,
    max_size: u64,
) -> FileOutcome {
    let path_bytes = display.as_bytes();
    let mut file = match fs::File::open(full) {
        Ok(file) => file,
        Err(error) => return FileOutcome::Unreadable(error.to_string()),
    };
    match file.metadata() {
        Ok(metadata) if metadata.len() > max_size => return FileOutcome::TooLarge,
        Ok(_) => {}
        Err(error) => return FileOutcome::Unreadable(error.to_string()),
    }
    let mut data = Vec::new();
    if let Err(error) = file.read_to_end(&mut data) {
        return FileOutcome::Unreadable(error.to_string());
    }
    if is_binary(&data) {
        return FileOutcome::Binary;
    }
    let mut findings = Vec::new();
    if !ruleset.path_allowed(path_bytes) {
        for rule_index in ruleset.path_only_rules() {
            let rule = ruleset.rule(rule_index);
            if rule.applies_to_path(path_bytes) {
                findings.push(finding(
                    rule,
                    display,
                    None,
                    Secret::new(path_bytes),
                    rule.confidence,
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for found in scanner.scan(&data) {
            let rule = ruleset.rule(found.rule);
            if rule.applies_to_path(path_bytes)
                && !ruleset.match_allowed(path_bytes, &found.context)
                && seen.insert((found.rule, found.secret.clone()))
            {
                findings.push(finding(
                    rule,
                    display,
                    Some(found.line),
                    found.secret.clone(),
                    found.confidence,
                ));
            }
        }
    }
    FileOutcome::Findings {
        bytes: data.len() as u64,
        findings,
    }
}

fn finding(
    rule: &crate::CompiledRule,
    path: &str,
    line: Option<u32>,
    secret: Secret,
    confidence: crate::Confidence,
) -> Finding {
    Finding {
        rule_id: rule.id.clone(),
        rule_name: rule.name.clone(),
        severity: rule.severity,
        confidence,
        path: path.to_string(),
        line,
        commit: None,
        branch: None,
        secret,
    }
}
