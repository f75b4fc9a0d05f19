//! Stage one of matching: a multi-pattern pass that says which rules can
//! match a blob, so that only those rules' regexes run over it.
//!
//! Two implementations give the same findings (the second stage is the same
//! regex either way; the test suite runs both):
//! - Vectorscan in prefilter mode, one approximate pattern per rule (the
//!   default, feature `vectorscan`);
//! - an Aho-Corasick automaton over each rule's keywords (pure Rust).
//!
//! A rule neither can cover (a custom regex Vectorscan rejects and with no
//! required literal) is "unfiltered": its regex runs over every blob.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::error::EngineError;

/// Which stage-one implementation to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PrefilterKind {
    /// Vectorscan when compiled in, keywords otherwise.
    #[default]
    Best,
    Keywords,
    #[cfg(feature = "vectorscan")]
    Vectorscan,
}

impl PrefilterKind {
    pub fn name(self) -> &'static str {
        match self.resolve() {
            PrefilterKind::Keywords => "keywords",
            #[cfg(feature = "vectorscan")]
            PrefilterKind::Vectorscan => "vectorscan",
            PrefilterKind::Best => unreachable!("resolve never returns Best"),
        }
    }

    fn resolve(self) -> PrefilterKind {
        match self {
            #[cfg(feature = "vectorscan")]
            PrefilterKind::Best => PrefilterKind::Vectorscan,
            #[cfg(not(feature = "vectorscan"))]
            PrefilterKind::Best => PrefilterKind::Keywords,
            other => other,
        }
    }
}

/// What the prefilter needs to know of one line rule.
pub(crate) struct PrefilterInput<'a> {
    pub pattern: &'a str,
    /// Literals one of which every match contains; empty when unknown.
    pub keywords: &'a [String],
}

pub(crate) enum Prefilter {
    Keywords(KeywordPrefilter),
    #[cfg(feature = "vectorscan")]
    Vectorscan(VectorscanPrefilter),
}

/// Candidate rules of one blob, as indices into the line rules.
pub(crate) struct Candidates {
    seen: Vec<bool>,
    pub list: Vec<u32>,
}

impl Candidates {
    pub fn new(rule_count: usize) -> Self {
        Candidates {
            seen: vec![false; rule_count],
            list: Vec::new(),
        }
    }

    fn add(&mut self, rule: u32) {
        let seen = &mut self.seen[rule as usize];
        if !*seen {
            *seen = true;
            self.list.push(rule);
        }
    }

    pub fn clear(&mut self) {
        for rule in self.list.drain(..) {
            self.seen[rule as usize] = false;
        }
    }
}

impl Prefilter {
    /// Builds the prefilter; returns it with the rules it could not cover.
    pub fn build(
        kind: PrefilterKind,
        rules: &[PrefilterInput<'_>],
    ) -> Result<(Prefilter, Vec<u32>), EngineError> {
        match kind.resolve() {
            #[cfg(feature = "vectorscan")]
            PrefilterKind::Vectorscan => {
                let (prefilter, unfiltered) = VectorscanPrefilter::build(rules)?;
                Ok((Prefilter::Vectorscan(prefilter), unfiltered))
            }
            _ => {
                let (prefilter, unfiltered) = KeywordPrefilter::build(rules)?;
                Ok((Prefilter::Keywords(prefilter), unfiltered))
            }
        }
    }

    pub fn scratch(&self) -> Result<PrefilterScratch<'_>, EngineError> {
        match self {
            Prefilter::Keywords(_) => Ok(PrefilterScratch::Keywords(std::marker::PhantomData)),
            #[cfg(feature = "vectorscan")]
            Prefilter::Vectorscan(prefilter) => Ok(PrefilterScratch::Vectorscan(
                prefilter
                    .database
                    .scratch()
                    .map_err(|error| EngineError::Prefilter(error.to_string()))?,
            )),
        }
    }

    /// Adds to `candidates` every rule that may match `data`.
    pub fn candidates(
        &self,
        scratch: &mut PrefilterScratch<'_>,
        data: &[u8],
        candidates: &mut Candidates,
    ) {
        match (self, scratch) {
            (Prefilter::Keywords(prefilter), _) => prefilter.candidates(data, candidates),
            #[cfg(feature = "vectorscan")]
            (Prefilter::Vectorscan(_), PrefilterScratch::Vectorscan(scratch)) => {
                let result = scratch.scan(data, |id| candidates.add(id));
                if result.is_err() {
                    // Vectorscan fails only on resource errors; stay correct by
                    // letting every rule run.
                    for rule in 0..candidates.seen.len() as u32 {
                        candidates.add(rule);
                    }
                }
            }
            #[cfg(feature = "vectorscan")]
            (Prefilter::Vectorscan(_), PrefilterScratch::Keywords(_)) => {
                unreachable!("scratch comes from the same prefilter")
            }
        }
    }
}

/// Per-thread scratch space of a prefilter.
pub(crate) enum PrefilterScratch<'p> {
    Keywords(std::marker::PhantomData<&'p ()>),
    #[cfg(feature = "vectorscan")]
    Vectorscan(crate::vectorscan::Scratch<'p>),
}

pub(crate) struct KeywordPrefilter {
    automaton: Option<AhoCorasick>,
    /// For each automaton pattern, the rules it stands for.
    rules_of_pattern: Vec<Vec<u32>>,
}

impl KeywordPrefilter {
    fn build(rules: &[PrefilterInput<'_>]) -> Result<(Self, Vec<u32>), EngineError> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut rules_of_pattern: Vec<Vec<u32>> = Vec::new();
        let mut unfiltered = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let keywords = if rule.keywords.is_empty() {
                required_literals(rule.pattern)
            } else {
                Some(
                    rule.keywords
                        .iter()
                        .map(|k| k.as_bytes().to_ascii_lowercase())
                        .collect(),
                )
            };
            let Some(keywords) = keywords else {
                unfiltered.push(index as u32);
                continue;
            };
            for keyword in keywords {
                match patterns.iter().position(|existing| *existing == keyword) {
                    Some(position) => rules_of_pattern[position].push(index as u32),
                    None => {
                        patterns.push(keyword);
                        rules_of_pattern.push(vec![index as u32]);
                    }
                }
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&patterns)
                    .map_err(|error| EngineError::Prefilter(error.to_string()))?,
            )
        };
        Ok((
            KeywordPrefilter {
                automaton,
                rules_of_pattern,
            },
            unfiltered,
        ))
    }

    fn candidates(&self, data: &[u8], candidates: &mut Candidates) {
        let Some(automaton) = &self.automaton else {
            return;
        };
        for found in automaton.find_overlapping_iter(data) {
            for &rule in &self.rules_of_pattern[found.pattern().as_usize()] {
                candidates.add(rule);
            }
        }
    }
}

/// Literals of which every match of `pattern` starts with one, lower-cased,
/// when there is a short list of long enough ones; `None` otherwise.
fn required_literals(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix).limit_total(64);
    let sequence = extractor.extract(&hir);
    let literals = sequence.literals()?;
    if literals.is_empty() || literals.iter().any(|literal| literal.as_bytes().len() < 3) {
        return None;
    }
    let mut lowered: Vec<Vec<u8>> = literals
        .iter()
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect();
    lowered.sort();
    lowered.dedup();
    Some(lowered)
}

/// Where compiled Vectorscan databases are kept between processes (none: not
/// kept). Set once by a binary; the engine reads no environment.
static PREFILTER_CACHE_DIR: std::sync::Mutex<Option<std::path::PathBuf>> =
    std::sync::Mutex::new(None);

/// Keeps compiled Vectorscan databases in `dir` (created when missing),
/// keyed by the hash of their patterns, so a later process with the same
/// rules loads the database instead of compiling it (docs/ARCHITECTURE.md,
/// "Prefilter cache"). `None` turns the cache off.
pub fn set_prefilter_cache_dir(dir: Option<std::path::PathBuf>) {
    *PREFILTER_CACHE_DIR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = dir;
}

#[cfg(feature = "vectorscan")]
fn prefilter_cache_dir() -> Option<std::path::PathBuf> {
    PREFILTER_CACHE_DIR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

#[cfg(feature = "vectorscan")]
pub(crate) struct VectorscanPrefilter {
    database: crate::vectorscan::Database,
}

#[cfg(feature = "vectorscan")]
impl VectorscanPrefilter {
    const FLAGS: u32 = crate::vectorscan::FLAG_PREFILTER | crate::vectorscan::FLAG_SINGLEMATCH;

    fn build(rules: &[PrefilterInput<'_>]) -> Result<(Self, Vec<u32>), EngineError> {
        let included: Vec<(u32, String)> = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| (index as u32, normalize_for_vectorscan(rule.pattern)))
            .collect();
        let cache_file = prefilter_cache_dir().map(|dir| dir.join(cache_key(&included)));
        if let Some(path) = &cache_file {
            if let Some(cached) = load_cached(path) {
                return Ok(cached);
            }
        }
        let (prefilter, unfiltered) = Self::compile(included)?;
        if let Some(path) = &cache_file {
            // A cache that cannot be written costs the next run a compile.
            let _ = store_cached(path, &prefilter, &unfiltered);
        }
        Ok((prefilter, unfiltered))
    }

    fn compile(mut included: Vec<(u32, String)>) -> Result<(Self, Vec<u32>), EngineError> {
        use crate::vectorscan::{Database, VectorscanError};

        let mut unfiltered = Vec::new();
        loop {
            if included.is_empty() {
                // An empty database is not allowed; match nothing instead.
                let database =
                    Database::compile(&[("\\A\\z[^\\x00-\\xff]".into(), Self::FLAGS, u32::MAX)])
                        .map_err(|error| EngineError::Prefilter(error.to_string()))?;
                return Ok((VectorscanPrefilter { database }, unfiltered));
            }
            let patterns: Vec<(String, u32, u32)> = included
                .iter()
                .map(|(id, expression)| (expression.clone(), Self::FLAGS, *id))
                .collect();
            match Database::compile(&patterns) {
                Ok(database) => return Ok((VectorscanPrefilter { database }, unfiltered)),
                Err(VectorscanError::Compile {
                    expression: Some(expression),
                    ..
                })
                | Err(VectorscanError::Nul { expression }) => {
                    // Vectorscan cannot take this one: it falls back to running
                    // on every blob, which stays correct.
                    let (rule, _) = included.remove(expression);
                    unfiltered.push(rule);
                }
                Err(error) => return Err(EngineError::Prefilter(error.to_string())),
            }
        }
    }
}

/// The cache file name: a digest of the library version, the flags and
/// every (rule position, expression).
#[cfg(feature = "vectorscan")]
fn cache_key(included: &[(u32, String)]) -> String {
    use sha2::{Digest, Sha256};

    let mut hasher = Sha256::new();
    hasher.update(b"leakscan-vectorscan-v1\0");
    // SAFETY: hs_version returns a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(vectorscan_rs_sys::hs_version()) };
    hasher.update(version.to_bytes());
    hasher.update(VectorscanPrefilter::FLAGS.to_le_bytes());
    for (id, expression) in included {
        hasher.update(id.to_le_bytes());
        hasher.update((expression.len() as u64).to_le_bytes());
        hasher.update(expression.as_bytes());
    }
    format!("{}.hsdb", hex::encode(hasher.finalize()))
}

#[cfg(feature = "vectorscan")]
const CACHE_MAGIC: &[u8; 8] = b"LSVSDB1\n";

/// File layout: magic, unfiltered count (u32 LE), the unfiltered rule
/// positions (u32 LE each), then the serialized database.
#[cfg(feature = "vectorscan")]
fn load_cached(path: &std::path::Path) -> Option<(VectorscanPrefilter, Vec<u32>)> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(CACHE_MAGIC)?;
    let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let list_end = 4usize.checked_add(count.checked_mul(4)?)?;
    let unfiltered = rest
        .get(4..list_end)?
        .chunks_exact(4)
        .map(|chunk| u32::from_le_bytes(chunk.try_into().expect("chunks of 4")))
        .collect();
    let database = crate::vectorscan::Database::deserialize(&rest[list_end..]).ok()?;
    Some((VectorscanPrefilter { database }, unfiltered))
}

#[cfg(feature = "vectorscan")]
fn store_cached(
    path: &std::path::Path,
    prefilter: &VectorscanPrefilter,
    unfiltered: &[u32],
) -> std::io::Result<()> {
    let serialized = prefilter
        .database
        .serialize()
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    let mut bytes = CACHE_MAGIC.to_vec();
    bytes.extend_from_slice(&(unfiltered.len() as u32).to_le_bytes());
    for rule in unfiltered {
        bytes.extend_from_slice(&rule.to_le_bytes());
    }
    bytes.extend_from_slice(&serialized);
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Written beside and renamed: a reader never sees half a file.
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("db"),
        std::process::id()
    ));
    std::fs::write(&temporary, &bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Rewrites Rust regex syntax that Vectorscan reads differently: spaces in
/// counted repetitions (`{1, 5}` is literal text to Vectorscan), named groups
/// and Rust-only flags.
#[cfg(feature = "vectorscan")]
pub(crate) fn normalize_for_vectorscan(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let chars: Vec<char> = pattern.chars().collect();
    let mut index = 0;
    let mut in_class = false;
    while index < chars.len() {
        let c = chars[index];
        if c == '\\' && index + 1 < chars.len() {
            out.push(c);
            out.push(chars[index + 1]);
            index += 2;
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
            }
            out.push(c);
            index += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                out.push(c);
                // A leading ']' (or '^]') is a literal inside the class.
                if chars.get(index + 1) == Some(&'^') {
                    out.push('^');
                    index += 1;
                }
                if chars.get(index + 1) == Some(&']') {
                    out.push(']');
                    index += 1;
                }
                index += 1;
            }
            '{' => {
                let close = chars[index..]
                    .iter()
                    .position(|&ch| ch == '}')
                    .map(|p| p + index);
                match close {
                    Some(close)
                        if chars[index + 1..close]
                            .iter()
                            .all(|ch| ch.is_ascii_digit() || *ch == ',' || *ch == ' ') =>
                    {
                        out.extend(chars[index..=close].iter().filter(|ch| **ch != ' '));
                        index = close + 1;
                    }
                    _ => {
                        out.push(c);
                        index += 1;
                    }
                }
            }
            '(' if chars.get(index + 1) == Some(&'?') => {
                let rest: String = chars[index + 2..].iter().take(3).collect();
                if rest.starts_with("P<")
                    || (rest.starts_with('<') && !rest.starts_with("<=") && !rest.starts_with("<!"))
                {
                    // Named group: keep it as a plain group.
                    let close = chars[index..]
                        .iter()
                        .position(|&ch| ch == '>')
                        .map(|p| p + index);
                    out.push('(');
                    index = close.map_or(index + 1, |close| close + 1);
                } else {
                    // Flag groups: drop Rust-only flags (u, U, R) Vectorscan rejects.
                    let end = chars[index + 2..]
                        .iter()
                        .position(|&ch| ch == ')' || ch == ':')
                        .map(|p| p + index + 2);
                    match end {
                        Some(end)
                            if chars[index + 2..end]
                                .iter()
                                .all(|ch| "imsxuUR-".contains(*ch)) =>
                        {
                            let flags: String = chars[index + 2..end]
                                .iter()
                                .filter(|ch| !"uUR".contains(**ch))
                                .collect();
                            let flags = flags.trim_end_matches('-').to_string();
                            if flags.is_empty() || flags == "-" {
                                if chars[end] == ':' {
                                    out.push_str("(?:");
                                } else {
                                    // `(?u)` alone: nothing left to say.
                                }
                            } else {
                                out.push_str("(?");
                                out.push_str(&flags);
                                out.push(chars[end]);
                            }
                            index = end + 1;
                        }
                        _ => {
                            out.push(c);
                            index += 1;
                        }
                    }
                }
            }
            _ => {
                out.push(c);
                index += 1;
            }
        }
    }
    out
}

#[cfg(all(test, feature = "vectorscan"))]
mod tests {
    use super::normalize_for_vectorscan;

    #[test]
    fn normalizes_rust_only_syntax() {
        assert_eq!(normalize_for_vectorscan("a{1, 5}b"), "a{1,5}b");
        assert_eq!(normalize_for_vectorscan("(?P<secret>x)"), "(x)");
        assert_eq!(normalize_for_vectorscan("(?<secret>x)"), "(x)");
        assert_eq!(normalize_for_vectorscan("(?iu)x"), "(?i)x");
        assert_eq!(normalize_for_vectorscan("(?u:x)"), "(?:x)");
        assert_eq!(normalize_for_vectorscan("[{]1, 2}"), "[{]1, 2}");
        assert_eq!(normalize_for_vectorscan(r"\{1, 2\}"), r"\{1, 2\}");
        assert_eq!(normalize_for_vectorscan("[]{]x{2}"), "[]{]x{2}");
    }
}
