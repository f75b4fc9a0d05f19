//! A compiled, immutable ruleset and the per-thread [`Scanner`] that runs it
//! over bytes.

use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use sha2::{Digest, Sha256};

use crate::{
    error::{EngineError, RuleError},
    prefilter::{Candidates, Prefilter, PrefilterInput, PrefilterKind, PrefilterScratch},
    rules::{Allowlist, CustomRule, RuleSpec, Severity},
    secret::{shannon_entropy, Secret},
};

/// Size limit of one compiled user regex (the `regex` crate is linear-time;
/// this bounds its memory).
pub const CUSTOM_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Size limit of one compiled built-in regex.
const BUILTIN_REGEX_SIZE_LIMIT: usize = 10 << 20;

/// The marker that silences a finding on its line.
pub const PRAGMA_ALLOWLIST: &[u8] = b"pragma: allowlist secret";

/// Index of a rule within its [`RuleSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleIdx(pub u32);

/// One rule ready to run.
#[derive(Debug)]
pub struct CompiledRule {
    /// Id (built-in) or name (custom).
    pub id: String,
    pub name: String,
    pub severity: Severity,
    pub builtin: bool,
    pub line_pattern: Option<String>,
    pub path_pattern: Option<String>,
    pub keywords: Vec<String>,
    line_regex: Option<Regex>,
    path_regex: Option<Regex>,
    min_entropy: Option<f64>,
    /// Lower-cased.
    stopwords: Vec<Vec<u8>>,
    /// A generic rule yields to a specific one that matched the same secret.
    generic: bool,
}

impl CompiledRule {
    fn from_spec(spec: &RuleSpec) -> Result<Self, RuleError> {
        let line_regex =
            compile_regex(&spec.id, "pattern", &spec.pattern, BUILTIN_REGEX_SIZE_LIMIT)?;
        if line_regex.captures_len() < 2 {
            return Err(RuleError::Regex {
                rule: spec.id.clone(),
                what: "pattern",
                message: "the pattern needs capture group 1 (the secret)".into(),
            });
        }
        Ok(CompiledRule {
            id: spec.id.clone(),
            name: spec.name.clone(),
            severity: spec.severity,
            builtin: true,
            line_pattern: Some(spec.pattern.clone()),
            path_pattern: None,
            keywords: spec.keywords.clone(),
            line_regex: Some(line_regex),
            path_regex: None,
            min_entropy: spec.min_entropy,
            stopwords: spec
                .stopwords
                .iter()
                .map(|w| w.as_bytes().to_ascii_lowercase())
                .collect(),
            generic: spec.generic || spec.id.starts_with("GENERIC_"),
        })
    }

    fn from_custom(custom: &CustomRule) -> Result<Self, RuleError> {
        if custom.line_regex.is_none() && custom.path_regex.is_none() {
            return Err(RuleError::Invalid {
                origin: "custom rules".into(),
                rule: custom.name.clone(),
                message: "a rule needs a line regex, a path regex or both".into(),
            });
        }
        let line_regex = custom
            .line_regex
            .as_deref()
            .map(|pattern| compile_regex(&custom.name, "line", pattern, CUSTOM_REGEX_SIZE_LIMIT))
            .transpose()?;
        let path_regex = custom
            .path_regex
            .as_deref()
            .map(|pattern| compile_regex(&custom.name, "path", pattern, CUSTOM_REGEX_SIZE_LIMIT))
            .transpose()?;
        Ok(CompiledRule {
            id: custom.name.clone(),
            name: custom.name.clone(),
            severity: custom.severity,
            builtin: false,
            line_pattern: custom.line_regex.clone(),
            path_pattern: custom.path_regex.clone(),
            keywords: Vec::new(),
            line_regex,
            path_regex,
            min_entropy: None,
            stopwords: Vec::new(),
            generic: false,
        })
    }

    /// Whether this rule applies to a file at `path`.
    pub fn applies_to_path(&self, path: &[u8]) -> bool {
        self.path_regex
            .as_ref()
            .is_none_or(|regex| regex.is_match(path))
    }

    /// A rule with a path regex and no line regex reports files, not lines.
    pub fn is_path_only(&self) -> bool {
        self.line_regex.is_none()
    }

    fn accepts_secret(&self, secret: &[u8]) -> bool {
        if secret.is_empty() {
            return false;
        }
        if let Some(min_entropy) = self.min_entropy {
            if shannon_entropy(secret) < min_entropy {
                return false;
            }
        }
        if !self.stopwords.is_empty() {
            let lowered = secret.to_ascii_lowercase();
            if self
                .stopwords
                .iter()
                .any(|word| memchr::memmem::find(&lowered, word).is_some())
            {
                return false;
            }
        }
        true
    }
}

/// Compiles a regex the way every rule is compiled: over bytes, ASCII classes,
/// with a size limit; an error names the rule and carries the regex error.
pub fn compile_regex(
    rule: &str,
    what: &'static str,
    pattern: &str,
    size_limit: usize,
) -> Result<Regex, RuleError> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(size_limit)
        .dfa_size_limit(size_limit.max(2 << 20))
        .build()
        .map_err(|error| RuleError::Regex {
            rule: rule.to_string(),
            what,
            message: error.to_string(),
        })
}

/// Everything that decides what a scan reports.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The built-in rules to apply.
    pub builtins: Vec<RuleSpec>,
    pub custom: Vec<CustomRule>,
    pub allowlist: Allowlist,
}

/// Compiled rulesets by policy digest and prefilter, for processes that scan
/// many times under the same few policies (a cluster worker): building the
/// Vectorscan database costs more than a small repository's whole scan.
/// Holds at most [`RuleSetCache::CAPACITY`] rulesets (emptied when full).
#[derive(Debug, Default)]
pub struct RuleSetCache {
    entries: std::sync::Mutex<std::collections::HashMap<(String, PrefilterKind), Arc<RuleSet>>>,
}

impl RuleSetCache {
    pub const CAPACITY: usize = 16;

    /// The compiled ruleset of `policy`, built on first use.
    pub fn get_or_build(
        &self,
        policy: &Policy,
        prefilter_kind: PrefilterKind,
    ) -> Result<Arc<RuleSet>, EngineError> {
        let key = (policy_digest(policy), prefilter_kind);
        if let Some(ruleset) = self.lock().get(&key) {
            return Ok(Arc::clone(ruleset));
        }
        // Built outside the lock: two threads may both build; one wins.
        let ruleset = RuleSet::build_with(policy, prefilter_kind)?;
        let mut entries = self.lock();
        if entries.len() >= Self::CAPACITY {
            entries.clear();
        }
        entries.insert(key, Arc::clone(&ruleset));
        Ok(ruleset)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, PrefilterKind), Arc<RuleSet>>>
    {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A compiled policy: shared by every thread of a scan (wrap it in an `Arc`),
/// each of which makes its own [`Scanner`].
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    /// Indices of rules with a line regex, in order; the prefilter speaks of
    /// positions in this list.
    line_rules: Vec<u32>,
    path_only_rules: Vec<u32>,
    prefilter: Prefilter,
    prefilter_kind: PrefilterKind,
    /// Positions in `line_rules` the prefilter cannot rule out.
    unfiltered: Vec<u32>,
    allow_paths: Option<RegexSet>,
    allow_lines: Option<RegexSet>,
    digest: String,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("prefilter", &self.prefilter_kind.name())
            .field("digest", &self.digest)
            .finish()
    }
}

impl RuleSet {
    pub fn build(policy: &Policy) -> Result<Arc<RuleSet>, EngineError> {
        Self::build_with(policy, PrefilterKind::Best)
    }

    pub fn build_with(
        policy: &Policy,
        prefilter_kind: PrefilterKind,
    ) -> Result<Arc<RuleSet>, EngineError> {
        let mut rules = Vec::with_capacity(policy.builtins.len() + policy.custom.len());
        for spec in &policy.builtins {
            rules.push(CompiledRule::from_spec(spec)?);
        }
        for custom in &policy.custom {
            if rules
                .iter()
                .any(|rule: &CompiledRule| rule.id == custom.name)
            {
                return Err(RuleError::Duplicate(custom.name.clone()).into());
            }
            rules.push(CompiledRule::from_custom(custom)?);
        }
        let line_rules: Vec<u32> = (0..rules.len() as u32)
            .filter(|&index| !rules[index as usize].is_path_only())
            .collect();
        let path_only_rules = (0..rules.len() as u32)
            .filter(|&index| rules[index as usize].is_path_only())
            .collect();
        let inputs: Vec<PrefilterInput<'_>> = line_rules
            .iter()
            .map(|&index| {
                let rule = &rules[index as usize];
                PrefilterInput {
                    pattern: rule.line_pattern.as_deref().unwrap_or_default(),
                    keywords: &rule.keywords,
                }
            })
            .collect();
        let (prefilter, unfiltered) = Prefilter::build(prefilter_kind, &inputs)?;
        let allow_paths = compile_set("allowlist path", &policy.allowlist.paths)?;
        let allow_lines = compile_set("allowlist line", &policy.allowlist.lines)?;
        let digest = policy_digest(policy);
        Ok(Arc::new(RuleSet {
            rules,
            line_rules,
            path_only_rules,
            prefilter,
            prefilter_kind,
            unfiltered,
            allow_paths,
            allow_lines,
            digest,
        }))
    }

    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    pub fn rule(&self, index: RuleIdx) -> &CompiledRule {
        &self.rules[index.0 as usize]
    }

    pub fn path_only_rules(&self) -> impl Iterator<Item = RuleIdx> + '_ {
        self.path_only_rules.iter().map(|&index| RuleIdx(index))
    }

    /// Ids of the line rules the prefilter cannot rule out (they run over
    /// every blob).
    pub fn unfiltered_rules(&self) -> Vec<&str> {
        self.unfiltered
            .iter()
            .map(|&position| {
                self.rules[self.line_rules[position as usize] as usize]
                    .id
                    .as_str()
            })
            .collect()
    }

    pub fn prefilter_name(&self) -> &'static str {
        self.prefilter_kind.name()
    }

    /// Stable digest of everything that decides what this ruleset reports
    /// (a result cache is keyed by it).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether a finding at `path` is allowlisted.
    pub fn path_allowed(&self, path: &[u8]) -> bool {
        self.allow_paths
            .as_ref()
            .is_some_and(|set| set.is_match(path))
    }

    pub fn scanner(&self) -> Result<Scanner<'_>, EngineError> {
        Ok(Scanner {
            ruleset: self,
            scratch: self.prefilter.scratch()?,
            candidates: Candidates::new(self.line_rules.len()),
            matches: Vec::new(),
        })
    }
}

fn compile_set(what: &'static str, patterns: &[String]) -> Result<Option<RegexSet>, RuleError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for pattern in patterns {
        compile_regex(what, "allowlist", pattern, CUSTOM_REGEX_SIZE_LIMIT)?;
    }
    RegexSetBuilder::new(patterns)
        .unicode(false)
        .size_limit(CUSTOM_REGEX_SIZE_LIMIT * 4)
        .build()
        .map(Some)
        .map_err(|error| RuleError::Regex {
            rule: what.to_string(),
            what: "allowlist",
            message: error.to_string(),
        })
}

pub(crate) fn policy_digest(policy: &Policy) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"leakscan-ruleset-v1\0");
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    let mut feed = |parts: &[&[u8]]| {
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    };
    for spec in &policy.builtins {
        let entropy = spec.min_entropy.map(|e| e.to_string()).unwrap_or_default();
        feed(&[
            b"builtin",
            spec.id.as_bytes(),
            spec.pattern.as_bytes(),
            entropy.as_bytes(),
        ]);
        for word in &spec.stopwords {
            feed(&[b"stopword", word.as_bytes()]);
        }
    }
    for custom in &policy.custom {
        feed(&[
            b"custom",
            custom.name.as_bytes(),
            custom.line_regex.as_deref().unwrap_or("\0").as_bytes(),
            custom.path_regex.as_deref().unwrap_or("\0").as_bytes(),
            custom.severity.as_str().as_bytes(),
        ]);
    }
    for path in &policy.allowlist.paths {
        feed(&[b"allow-path", path.as_bytes()]);
    }
    for line in &policy.allowlist.lines {
        feed(&[b"allow-line", line.as_bytes()]);
    }
    hex::encode(hasher.finalize())
}

/// A match of a line rule in one blob (before any path is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMatch {
    pub rule: RuleIdx,
    /// 1-based line of the start of the secret.
    pub line: u32,
    /// Byte range of the secret in the blob.
    pub start: usize,
    pub end: usize,
    pub secret: Secret,
}

/// Per-thread scanner: owns the scratch space, borrows the ruleset.
pub struct Scanner<'r> {
    ruleset: &'r RuleSet,
    scratch: PrefilterScratch<'r>,
    candidates: Candidates,
    matches: Vec<BlobMatch>,
}

impl Scanner<'_> {
    pub fn ruleset(&self) -> &RuleSet {
        self.ruleset
    }

    /// Runs every line rule over `data`; returns the matches in (start, rule)
    /// order. Path conditions are applied later, by whoever knows the path.
    pub fn scan(&mut self, data: &[u8]) -> &[BlobMatch] {
        self.matches.clear();
        let ruleset = self.ruleset;
        if ruleset.line_rules.is_empty() {
            return &self.matches;
        }
        self.candidates.clear();
        ruleset
            .prefilter
            .candidates(&mut self.scratch, data, &mut self.candidates);
        let mut positions: Vec<u32> = self.candidates.list.clone();
        positions.extend_from_slice(&ruleset.unfiltered);
        positions.sort_unstable();
        positions.dedup();
        for position in positions {
            let rule_index = ruleset.line_rules[position as usize];
            let rule = &ruleset.rules[rule_index as usize];
            let Some(regex) = &rule.line_regex else {
                continue;
            };
            for captures in regex.captures_iter(data) {
                let Some(secret) = captures.get(1).or_else(|| captures.get(0)) else {
                    continue;
                };
                let secret_bytes = secret.as_bytes();
                if !rule.accepts_secret(secret_bytes) {
                    continue;
                }
                let whole = captures.get(0).expect("group 0 always matches");
                if line_is_allowed(ruleset, data, whole.start(), whole.end()) {
                    continue;
                }
                self.matches.push(BlobMatch {
                    rule: RuleIdx(rule_index),
                    line: line_number(data, secret.start()),
                    start: secret.start(),
                    end: secret.end(),
                    secret: Secret::new(secret_bytes),
                });
            }
        }
        drop_generic_overlaps(ruleset, &mut self.matches);
        self.matches.sort_by_key(|m| (m.start, m.rule));
        &self.matches
    }
}

/// One secret, one finding: a generic rule's match yields to any other match
/// of an overlapping secret, and of several specific rules matching exactly
/// the same bytes the most severe (then the first) is kept.
fn drop_generic_overlaps(ruleset: &RuleSet, matches: &mut Vec<BlobMatch>) {
    if matches.len() < 2 {
        return;
    }
    let is_generic = |m: &BlobMatch| ruleset.rule(m.rule).generic;
    // Specific matches first (most severe first), then generic ones.
    matches.sort_by_key(|m| {
        (
            is_generic(m),
            std::cmp::Reverse(ruleset.rule(m.rule).severity),
            m.start,
            m.rule,
        )
    });
    let mut kept: Vec<BlobMatch> = Vec::with_capacity(matches.len());
    for candidate in matches.drain(..) {
        let shadowed = kept.iter().any(|k| {
            if is_generic(&candidate) {
                k.start < candidate.end && candidate.start < k.end
            } else {
                k.start == candidate.start && k.end == candidate.end
            }
        });
        if !shadowed {
            kept.push(candidate);
        }
    }
    *matches = kept;
}

fn line_bounds(data: &[u8], start: usize, end: usize) -> (usize, usize) {
    let line_start = memchr::memrchr(b'\n', &data[..start]).map_or(0, |p| p + 1);
    let line_end = memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |p| end + p);
    (line_start, line_end)
}

/// The pragma or an allowlist line regex on the first or last line of the match.
fn line_is_allowed(ruleset: &RuleSet, data: &[u8], start: usize, end: usize) -> bool {
    let (first_start, first_end) = line_bounds(data, start, start);
    let check = |line: &[u8]| {
        memchr::memmem::find(line, PRAGMA_ALLOWLIST).is_some()
            || ruleset
                .allow_lines
                .as_ref()
                .is_some_and(|set| set.is_match(line))
    };
    if check(&data[first_start..first_end]) {
        return true;
    }
    let last_byte = end.saturating_sub(1).max(start);
    if last_byte >= first_end {
        let (last_start, last_end) = line_bounds(data, last_byte, last_byte);
        return check(&data[last_start..last_end]);
    }
    false
}

fn line_number(data: &[u8], offset: usize) -> u32 {
    (memchr::memchr_iter(b'\n', &data[..offset]).count() + 1) as u32
}

/// Whether `data` looks binary: a NUL byte in its first 8 KiB, as git decides.
pub fn is_binary(data: &[u8]) -> bool {
    memchr::memchr(0, &data[..data.len().min(8000)]).is_some()
}

#[cfg(test)]
mod ruleset_cache_tests {
    use super::*;

    #[test]
    fn the_cache_compiles_each_policy_once() {
        let cache = RuleSetCache::default();
        let builtin = Policy::builtin_default();
        let first = cache
            .get_or_build(&builtin, PrefilterKind::Keywords)
            .unwrap();
        let again = cache
            .get_or_build(&builtin, PrefilterKind::Keywords)
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let mut fewer = builtin.clone();
        fewer.builtins.truncate(3);
        let other = cache.get_or_build(&fewer, PrefilterKind::Keywords).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other.rules().len(), 3);
        assert_ne!(other.digest(), first.digest());
    }
}
