//! A compiled, immutable ruleset and the per-thread [`Scanner`] that runs it
//! over bytes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    error::{EngineError, RuleError},
    lookalike,
    prefilter::{Candidates, Prefilter, PrefilterInput, PrefilterKind, PrefilterScratch},
    rules::{AllowRule, Checksum, Confidence, CustomRule, Decode, RuleSpec, Severity},
    secret::{shannon_entropy, Secret},
};

/// Size limit of one compiled user regex (the `regex` crate is linear-time;
/// this bounds its memory).
pub const CUSTOM_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Size limit of one compiled built-in regex.
const BUILTIN_REGEX_SIZE_LIMIT: usize = 10 << 20;

/// The marker that silences a finding on its line.
pub const PRAGMA_ALLOWLIST: &[u8] = b"pragma: allowlist secret";

/// Words that start many values and mark no provider (see
/// `CompiledRule::own_prefixes`).
const COMMON_VALUE_WORDS: &[&[u8]] = &[
    b"key", b"api", b"apikey", b"token", b"secret", b"live", b"test", b"prod", b"pass", b"auth",
    b"user", b"admin", b"app", b"sk", b"pk",
];

/// Keywords of specific rules that are ordinary words, not provider names
/// (see `DetectorFacts::provider_names`).
const COMMON_NAME_WORDS: &[&[u8]] = &[
    b"token",
    b"secret",
    b"password",
    b"passwd",
    b"apikey",
    b"access",
    b"auth",
    b"authorization",
    b"bearer",
    b"basic",
    b"client",
    b"private",
    b"public",
    b"user",
    b"username",
    b"pass",
    b"login",
    b"http",
    b"https",
    b"begin",
    b"end",
    // English words that are also a provider's keyword.
    b"conn",
    b"active",
    b"alpha",
    b"binary",
    b"center",
    b"circle",
    b"daily",
    b"gate",
    b"here",
    b"line",
    b"linked",
    b"mount",
    b"notify",
    b"modal",
    b"crate",
    b"hive",
    b"key",
    b"keys",
    b"api",
    b"app",
    b"application",
    b"account",
    b"service",
    b"server",
    b"host",
    b"data",
    b"live",
    b"test",
    b"prod",
    b"production",
    b"sandbox",
    b"credential",
    b"credentials",
    b"config",
    b"settings",
    b"session",
    b"cookie",
    b"webhook",
    b"hook",
    b"hooks",
    b"oauth",
    b"jdbc",
    b"mysql",
    b"postgres",
    b"postgresql",
    b"mongodb",
    b"redis",
    b"amqp",
    b"smtp",
    b"ldap",
    b"curl",
    b"export",
    b"header",
    b"headers",
    b"secure",
    b"signing",
    b"encryption",
    b"master",
    b"root",
    b"admin",
    b"deploy",
    b"build",
    b"cloud",
    b"base",
    b"identity",
    b"store",
    b"vault",
    b"mail",
    b"email",
    b"sign",
    b"stream",
    b"storage",
];

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
    /// The rule's own confidence; a finding's may be lower (see
    /// [`RuleSet::confidence_of`]).
    pub confidence: Confidence,
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
    /// Whether look-alike values are rejected (built-in rules; a custom
    /// rule reports exactly what its regex matches).
    judge_lookalikes: bool,
    decode: Option<Decode>,
    checksum: Option<Checksum>,
    /// Whether the rule's own format is a UUID (its examples' secrets are):
    /// otherwise a UUID is a look-alike.
    uuid_format: bool,
    /// Lower-cased keywords, stripped from a value before it is judged (a
    /// provider prefix never makes a value a placeholder).
    strip: Vec<Vec<u8>>,
    /// Keywords every example's secret starts with: the provider's own token
    /// prefix (lower case), when the rule is specific and sure of itself.
    own_prefixes: Vec<Vec<u8>>,
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
        // A clone has its own match caches, freed with it: the rule's own
        // regex stays without caches until a scan needs it (a thousand
        // rules' caches would cost tens of MB for nothing).
        let probe = line_regex.clone();
        let example_secrets: Vec<Vec<u8>> = spec
            .examples
            .iter()
            .flat_map(|example| {
                probe
                    .captures_iter(example.as_bytes())
                    .filter_map(|captures| captures.get(1))
                    .map(|secret| secret.as_bytes().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        let uuid_format = example_secrets
            .iter()
            .any(|secret| lookalike::is_uuid(secret));
        let own_prefixes = if spec.is_generic() || spec.confidence() < Confidence::High {
            Vec::new()
        } else {
            spec.keywords
                .iter()
                .map(|keyword| keyword.as_bytes().to_ascii_lowercase())
                .filter(|keyword| {
                    // A word any value may start with (`key-`, `live_`) is no
                    // provider's own mark.
                    let word: Vec<u8> = keyword
                        .iter()
                        .copied()
                        .filter(u8::is_ascii_alphanumeric)
                        .collect();
                    // Three characters are enough with punctuation (`SG.`).
                    (keyword.len() >= 4 || (keyword.len() == 3 && word.len() < 3))
                        && !COMMON_VALUE_WORDS.contains(&word.as_slice())
                        && !example_secrets.is_empty()
                        && example_secrets
                            .iter()
                            .all(|secret| secret.starts_with(keyword))
                })
                .collect()
        };
        Ok(CompiledRule {
            id: spec.id.clone(),
            name: spec.name.clone(),
            severity: spec.severity,
            confidence: spec.confidence(),
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
            generic: spec.is_generic(),
            judge_lookalikes: true,
            decode: spec.decode,
            checksum: spec.checksum,
            uuid_format,
            strip: spec
                .keywords
                .iter()
                .map(|k| k.as_bytes().to_ascii_lowercase())
                .collect(),
            own_prefixes,
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
            confidence: Confidence::High,
            builtin: false,
            line_pattern: custom.line_regex.clone(),
            path_pattern: custom.path_regex.clone(),
            keywords: Vec::new(),
            line_regex,
            path_regex,
            min_entropy: None,
            stopwords: Vec::new(),
            generic: false,
            judge_lookalikes: false,
            decode: None,
            checksum: None,
            uuid_format: false,
            strip: Vec::new(),
            own_prefixes: Vec::new(),
        })
    }

    /// A match's confidence: the rule's, one level lower when the rule's
    /// published checksum does not hold.
    pub fn finding_confidence(&self, secret: &[u8]) -> Confidence {
        match self.checksum {
            Some(Checksum::Crc32Base62)
                if crate::checksum::crc32_base62_holds(secret) == Some(false) =>
            {
                self.confidence.lowered()
            }
            Some(Checksum::GrafanaKeyJson)
                if !crate::checksum::grafana_key_names_itself(secret) =>
            {
                Confidence::Low
            }
            _ => self.confidence,
        }
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

    /// Whether a match is reported at all: the rule's entropy and stopwords,
    /// then (built-in rules) the look-alike checks on the value, decoded
    /// where the rule says how, with `context` (the match's line) for
    /// digests.
    ///
    /// A generic rule's value that starts with a provider's own prefix
    /// (`provider_prefixes`) is that provider's format or a malformed copy
    /// of it: the provider's rule decides, so the generic match is dropped.
    ///
    /// A generic match also goes when its name (the text before the value)
    /// names a provider that has a rule of its own (`provider_names`: that
    /// rule decides), or says the value is no secret, or when the value
    /// reads as an identifier.
    fn accepts_secret(
        &self,
        secret: &[u8],
        name: &[u8],
        context: &[u8],
        detector_facts: &DetectorFacts,
    ) -> bool {
        if secret.is_empty() {
            return false;
        }
        let decoded = match self.decode {
            None => None,
            // A Docker config in a YAML block scalar is wrapped over lines.
            Some(Decode::Base64DockerConfig) => {
                let joined: Vec<u8> = secret
                    .iter()
                    .copied()
                    .filter(|byte| !byte.is_ascii_whitespace())
                    .collect();
                match lookalike::decode_base64(&joined) {
                    Some(decoded) if lookalike::is_printable_text(&decoded) => Some(decoded),
                    _ => return false,
                }
            }
            Some(_) => match lookalike::decode_base64(secret) {
                Some(decoded) if lookalike::is_printable_text(&decoded) => Some(decoded),
                _ => return false,
            },
        };
        let value = decoded.as_deref().unwrap_or(secret);
        if let Some(min_entropy) = self.min_entropy {
            if shannon_entropy(value) < min_entropy {
                return false;
            }
        }
        if self.judge_lookalikes {
            let rejected = match self.decode {
                Some(Decode::Base64Basic) => lookalike::is_placeholder_basic(value),
                Some(Decode::Base64DockerConfig) => !lookalike::docker_config_has_credential(value),
                _ => lookalike::is_placeholder(value, &self.strip),
            } || (self.confidence < Confidence::High
                && lookalike::is_hash_in_context(value, context))
                || (!self.uuid_format
                    && lookalike::is_uuid(value)
                    && !(self.generic && names_a_credential(name)))
                || (self.generic && detector_facts.defers_to_provider(value, name))
                || lookalike::is_asset_file_name(secret, context)
                || (self.generic
                    && (lookalike::is_not_secret_name(name)
                        || lookalike::looks_like_identifier(value)
                        || lookalike::is_weak_generic_value(value)
                        || lookalike::is_encoded_placeholder(value)));
            if rejected {
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
    pub allowlist: Vec<AllowRule>,
    /// Findings of lower confidence are not reported (default `MEDIUM`).
    pub min_confidence: Confidence,
}

/// A policy as the cluster stores and sends it: which built-in rules are
/// off, the custom rules and the allowlist rules of every scope that applies
/// (global, then project, then repository). [`PolicySpec::resolve`] turns it
/// into a [`Policy`] over this build's built-in rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// Built-in rule ids switched off instance-wide.
    #[serde(default)]
    pub disabled_builtins: Vec<String>,
    /// Custom rules, broadest scope first; a later rule of the same name
    /// replaces an earlier one.
    #[serde(default)]
    pub custom: Vec<CustomRule>,
    #[serde(default)]
    pub allowlist: Vec<AllowRule>,
    /// Findings of lower confidence are not reported (default `MEDIUM`).
    #[serde(default)]
    pub min_confidence: Confidence,
}

impl PolicySpec {
    /// The policy this spec describes. Unknown built-in names are ignored (a
    /// rule removed from a newer build cannot be switched off).
    pub fn resolve(&self) -> Result<Policy, RuleError> {
        let builtins = crate::rules::builtin_rules()
            .iter()
            .filter(|spec| {
                !self.disabled_builtins.iter().any(|name| {
                    name.eq_ignore_ascii_case(&spec.id)
                        || spec.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                })
            })
            .cloned()
            .collect();
        let mut custom: Vec<CustomRule> = Vec::with_capacity(self.custom.len());
        for rule in &self.custom {
            if crate::rules::find_builtin(&rule.name).is_some() {
                return Err(RuleError::Duplicate(rule.name.clone()));
            }
            match custom
                .iter_mut()
                .find(|existing| existing.name == rule.name)
            {
                Some(existing) => *existing = rule.clone(),
                None => custom.push(rule.clone()),
            }
        }
        Ok(Policy {
            builtins,
            custom,
            allowlist: self.allowlist.clone(),
            min_confidence: self.min_confidence,
        })
    }
}

/// Compiled detectors by detection digest and prefilter, and the rulesets
/// made from them, for processes that scan many times under a few policies
/// (a cluster worker): building the Vectorscan database costs more than a
/// small repository's whole scan, and policies that differ only in which
/// rules are on or in their allowlists share one detector. Holds at most
/// [`RuleSetCache::CAPACITY`] of each (emptied when full).
#[derive(Debug, Default)]
pub struct RuleSetCache {
    detectors: Mutex<HashMap<(String, PrefilterKind), Arc<Detector>>>,
    rulesets: Mutex<HashMap<(String, PrefilterKind), Arc<RuleSet>>>,
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
        if let Some(ruleset) = lock(&self.rulesets).get(&key) {
            return Ok(Arc::clone(ruleset));
        }
        let detection = detection_rules(policy);
        let detector_key = (detection_digest(&detection), prefilter_kind);
        let cached = lock(&self.detectors).get(&detector_key).cloned();
        let detector = match cached {
            Some(detector) => detector,
            None => {
                // Built outside the lock: two threads may both build; one wins.
                let detector = Arc::new(Detector::build(&detection, prefilter_kind)?);
                insert_bounded(&self.detectors, detector_key, Arc::clone(&detector));
                detector
            }
        };
        let ruleset = Arc::new(RuleSet::with_detector(policy, detector)?);
        insert_bounded(&self.rulesets, key, Arc::clone(&ruleset));
        Ok(ruleset)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &Mutex<HashMap<K, V>>, key: K, value: V) {
    let mut entries = lock(map);
    if entries.len() >= RuleSetCache::CAPACITY {
        entries.clear();
    }
    entries.insert(key, value);
}

/// The rules a policy runs over bytes: every built-in rule of this build
/// (switched-off ones are filtered afterwards, so switching one on or off
/// needs no new reads), any extra rule specs of the policy, and its custom
/// rules.
enum DetectionRule<'p> {
    Spec(&'p RuleSpec),
    Custom(&'p CustomRule),
}

fn detection_rules(policy: &Policy) -> Vec<DetectionRule<'_>> {
    let catalog = crate::rules::builtin_rules();
    let mut rules: Vec<DetectionRule<'_>> = catalog.iter().map(DetectionRule::Spec).collect();
    rules.extend(
        policy
            .builtins
            .iter()
            .filter(|spec| !catalog.iter().any(|known| known.id == spec.id))
            .map(DetectionRule::Spec),
    );
    rules.extend(policy.custom.iter().map(DetectionRule::Custom));
    rules
}

/// The compiled rules and prefilter: what runs over bytes. Its digest keys
/// the blob-result cache.
struct Detector {
    rules: Vec<CompiledRule>,
    /// Indices of rules with a line regex, in order; the prefilter speaks of
    /// positions in this list.
    line_rules: Vec<u32>,
    prefilter: Prefilter,
    prefilter_kind: PrefilterKind,
    /// Positions in `line_rules` the prefilter cannot rule out.
    unfiltered: Vec<u32>,
    facts: DetectorFacts,
    digest: String,
}

/// What generic rules learn from the specific ones (see
/// [`CompiledRule::accepts_secret`]).
#[derive(Debug, Default)]
struct DetectorFacts {
    /// Every specific rule's own token prefixes, lower case.
    provider_prefixes: Vec<Vec<u8>>,
    /// Provider names that specific keyword-in-context rules look for
    /// (their alphabetic keywords of 4+ letters that are no common word),
    /// as one automaton.
    provider_names: Option<aho_corasick::AhoCorasick>,
}

impl DetectorFacts {
    fn build(rules: &[CompiledRule]) -> DetectorFacts {
        let mut provider_prefixes: Vec<Vec<u8>> = rules
            .iter()
            .flat_map(|rule| rule.own_prefixes.iter().cloned())
            .collect();
        provider_prefixes.sort();
        provider_prefixes.dedup();
        // Whole alphabetic keywords of 4+ letters that are no common word
        // (`deepgram`, not `token`). Words inside longer keywords are left
        // out: `_authToken=` would make `authtoken` a provider.
        let mut names: Vec<Vec<u8>> = rules
            .iter()
            .filter(|rule| rule.builtin && !rule.generic)
            .flat_map(|rule| rule.strip.iter())
            .filter(|keyword| {
                keyword.len() >= 4
                    && keyword.iter().all(u8::is_ascii_alphabetic)
                    && !COMMON_NAME_WORDS.contains(&keyword.as_slice())
            })
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let provider_names = if names.is_empty() {
            None
        } else {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&names)
                .ok()
        };
        DetectorFacts {
            provider_prefixes,
            provider_names,
        }
    }

    /// Whether a generic match belongs to a provider with a rule of its
    /// own: its value starts with that provider's prefix, or the identifier
    /// it is assigned to (`name`, e.g. `DEEPGRAM_KEY`) holds that
    /// provider's name.
    fn defers_to_provider(&self, value: &[u8], name: &[u8]) -> bool {
        let lowered = value.to_ascii_lowercase();
        self.provider_prefixes
            .iter()
            .any(|prefix| lowered.starts_with(prefix))
            || (looks_typed_or_short(value)
                && self
                    .provider_names
                    .as_ref()
                    .is_some_and(|names| names.is_match(name)))
    }
}

/// Whether a value beside a provider's name is in a shape that provider's
/// own rule judges better than a generic rule: a typed value (`sk_…`,
/// `tok_…`, `key-…`: a short lower-case tag and a separator), or one too
/// short (under 20 characters) to stand on its own. A long untyped random
/// value beside the name is a credential whatever format the provider
/// uses, so the generic rule keeps it.
fn looks_typed_or_short(value: &[u8]) -> bool {
    if value.len() < 20 {
        return true;
    }
    let tag = value
        .iter()
        .take_while(|byte| byte.is_ascii_alphanumeric())
        .count();
    (2..=6).contains(&tag)
        && matches!(value.get(tag), Some(b'_' | b'-'))
        && value[..tag].iter().all(u8::is_ascii_lowercase)
}

/// Whether the identifier a generic match's value is assigned to (`name`,
/// see [`assigned_identifier`]) ends in a credential word (`NPM_TOKEN`,
/// `X-Vaultly-ApiKey`, `ORBITMAIL_PRIVATE_KEY`, `quotehub ACCESS`): many
/// services issue their keys as UUIDs, so a UUID named that way is kept,
/// while one named `clientId` or `UserSecretsId` is an identifier.
fn names_a_credential(name: &[u8]) -> bool {
    let identifier = name.to_ascii_lowercase();
    [
        &b"key"[..],
        b"token",
        b"secret",
        b"access",
        b"private",
        b"tkn",
        b"password",
        b"passwd",
    ]
    .iter()
    .any(|word| identifier.ends_with(word))
        && !UUID_HANDLE_WORDS
            .iter()
            .any(|word| memchr::memmem::find(&identifier, word.as_bytes()).is_some())
}

/// Words in a UUID's name that make it a handle, not a credential: AWS's
/// `ClientToken`, `RequestToken`, `--lock-token`, idempotency and
/// pagination tokens, object keys.
const UUID_HANDLE_WORDS: &[&str] = &[
    "request",
    "lock",
    "client",
    "action",
    "idempot",
    "change",
    "continu",
    "next",
    "page",
    "sync",
    "upload",
    "object",
    "resource",
    "correlation",
    "trace",
    "message",
    "event",
    "instance",
];

/// The identifier at the end of a match's name: `deepgram_key` in
/// `deepgram_key = "`, `apiKey` in `{ apiKey: '`; empty for a command line's
/// flag (`-p `).
fn assigned_identifier(name: &[u8]) -> &[u8] {
    let is_separator = |byte: &u8| b" \t\"'`:=>()[],".contains(byte);
    let end = name
        .iter()
        .rposition(|byte| !is_separator(byte))
        .map_or(0, |position| position + 1);
    let identifier = |byte: &u8| byte.is_ascii_alphanumeric() || b"_.-".contains(byte);
    let start = name[..end]
        .iter()
        .rposition(|byte| !identifier(byte))
        .map_or(0, |position| position + 1);
    &name[start..end]
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("rules", &self.rules.len())
            .field("digest", &self.digest)
            .finish()
    }
}

impl Detector {
    fn build(
        detection: &[DetectionRule<'_>],
        prefilter_kind: PrefilterKind,
    ) -> Result<Detector, EngineError> {
        let mut rules: Vec<CompiledRule> = Vec::with_capacity(detection.len());
        for rule in detection {
            let compiled = match rule {
                DetectionRule::Spec(spec) => CompiledRule::from_spec(spec)?,
                DetectionRule::Custom(custom) => CompiledRule::from_custom(custom)?,
            };
            if rules.iter().any(|existing| existing.id == compiled.id) {
                return Err(RuleError::Duplicate(compiled.id).into());
            }
            rules.push(compiled);
        }
        let line_rules: Vec<u32> = (0..rules.len() as u32)
            .filter(|&index| !rules[index as usize].is_path_only())
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
        let facts = DetectorFacts::build(&rules);
        Ok(Detector {
            facts,
            rules,
            line_rules,
            prefilter,
            prefilter_kind,
            unfiltered,
            digest: detection_digest(detection),
        })
    }
}

/// One compiled allowlist rule.
#[derive(Debug)]
struct CompiledAllow {
    line: Option<Regex>,
    path: Option<Regex>,
}

/// A compiled policy: shared by every thread of a scan (wrap it in an `Arc`),
/// each of which makes its own [`Scanner`].
pub struct RuleSet {
    detector: Arc<Detector>,
    /// Per detector rule: whether the policy applies it.
    enabled: Vec<bool>,
    path_only_rules: Vec<u32>,
    /// Allowlist rules with only a path regex, as one set.
    allow_paths: Option<RegexSet>,
    /// Allowlist rules with only a line regex, as one set.
    allow_lines: Option<RegexSet>,
    /// Allowlist rules with both.
    allow_both: Vec<CompiledAllow>,
    min_confidence: Confidence,
    digest: String,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.detector.rules.len())
            .field("prefilter", &self.detector.prefilter_kind.name())
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
        let detector = Detector::build(&detection_rules(policy), prefilter_kind)?;
        Ok(Arc::new(RuleSet::with_detector(
            policy,
            Arc::new(detector),
        )?))
    }

    fn with_detector(policy: &Policy, detector: Arc<Detector>) -> Result<RuleSet, EngineError> {
        let enabled: Vec<bool> = detector
            .rules
            .iter()
            .map(|rule| {
                if rule.builtin {
                    policy.builtins.iter().any(|spec| spec.id == rule.id)
                } else {
                    policy.custom.iter().any(|custom| custom.name == rule.id)
                }
            })
            .collect();
        let path_only_rules = (0..detector.rules.len() as u32)
            .filter(|&index| {
                enabled[index as usize] && detector.rules[index as usize].is_path_only()
            })
            .collect();
        let mut paths = Vec::new();
        let mut lines = Vec::new();
        let mut allow_both = Vec::new();
        for allow in &policy.allowlist {
            let name = if allow.name.is_empty() {
                "allowlist"
            } else {
                allow.name.as_str()
            };
            match (&allow.line_regex, &allow.path_regex) {
                (None, None) => {
                    return Err(RuleError::Invalid {
                        origin: "allowlist".into(),
                        rule: name.to_string(),
                        message: "an allowlist rule needs a line regex, a path regex or both"
                            .into(),
                    }
                    .into())
                }
                (None, Some(path)) => paths.push(path.clone()),
                (Some(line), None) => lines.push(line.clone()),
                (Some(line), Some(path)) => allow_both.push(CompiledAllow {
                    line: Some(compile_regex(name, "line", line, CUSTOM_REGEX_SIZE_LIMIT)?),
                    path: Some(compile_regex(name, "path", path, CUSTOM_REGEX_SIZE_LIMIT)?),
                }),
            }
        }
        Ok(RuleSet {
            enabled,
            path_only_rules,
            allow_paths: compile_set("allowlist path", &paths)?,
            allow_lines: compile_set("allowlist line", &lines)?,
            allow_both,
            min_confidence: policy.min_confidence,
            digest: policy_digest(policy),
            detector,
        })
    }

    /// Every rule the scanner runs, including those this policy filters out.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.detector.rules
    }

    /// The rules this policy reports.
    pub fn enabled_rules(&self) -> impl Iterator<Item = &CompiledRule> + '_ {
        self.detector
            .rules
            .iter()
            .zip(&self.enabled)
            .filter(|(_, &on)| on)
            .map(|(rule, _)| rule)
    }

    pub fn rule(&self, index: RuleIdx) -> &CompiledRule {
        &self.detector.rules[index.0 as usize]
    }

    /// The confidence of a (cached) match of rule `index` with `secret`:
    /// what [`Scanner::scan_raw`] gave it.
    pub fn confidence_of(&self, index: RuleIdx, secret: &[u8]) -> Confidence {
        self.rule(index).finding_confidence(secret)
    }

    pub fn is_enabled(&self, index: RuleIdx) -> bool {
        self.enabled[index.0 as usize]
    }

    pub fn path_only_rules(&self) -> impl Iterator<Item = RuleIdx> + '_ {
        self.path_only_rules.iter().map(|&index| RuleIdx(index))
    }

    /// Ids of the line rules the prefilter cannot rule out (they run over
    /// every blob).
    pub fn unfiltered_rules(&self) -> Vec<&str> {
        let detector = &self.detector;
        detector
            .unfiltered
            .iter()
            .map(|&position| {
                detector.rules[detector.line_rules[position as usize] as usize]
                    .id
                    .as_str()
            })
            .collect()
    }

    pub fn prefilter_name(&self) -> &'static str {
        self.detector.prefilter_kind.name()
    }

    /// Stable digest of everything that decides what this ruleset reports.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Stable digest of what the scanner runs over bytes; a blob's raw
    /// matches ([`Scanner::scan_raw`]) depend on nothing else, so the
    /// blob-result cache is keyed by it.
    pub fn detection_digest(&self) -> &str {
        &self.detector.digest
    }

    /// Whether every finding at `path` is allowlisted (a path-only rule).
    pub fn path_allowed(&self, path: &[u8]) -> bool {
        self.allow_paths
            .as_ref()
            .is_some_and(|set| set.is_match(path))
    }

    /// Whether a match with `context` (its line) at `path` is allowlisted by
    /// a rule with both a path and a line regex.
    pub fn match_allowed(&self, path: &[u8], context: &[u8]) -> bool {
        self.allow_both.iter().any(|allow| {
            allow.path.as_ref().is_none_or(|regex| regex.is_match(path))
                && allow
                    .line
                    .as_ref()
                    .is_none_or(|regex| regex.is_match(context))
        })
    }

    /// Turns a blob's raw matches into what this policy reports: a generic
    /// match yields to a specific one, then rules it does not apply, matches
    /// below its confidence and allowlisted lines go, and the rest is sorted
    /// by (start, rule).
    pub fn finish(&self, matches: &mut Vec<BlobMatch>) {
        // Overlaps first: a generic match yields to a specific one even when
        // the specific rule is switched off (switching a rule off silences
        // its secrets, it does not hand them to a catch-all).
        drop_generic_overlaps(self, matches);
        matches.retain(|m| {
            self.enabled[m.rule.0 as usize]
                && m.confidence >= self.min_confidence
                && !self
                    .allow_lines
                    .as_ref()
                    .is_some_and(|set| set.is_match(&m.context))
        });
        matches.sort_by_key(|m| (m.start, m.line, m.rule));
    }

    pub fn scanner(&self) -> Result<Scanner<'_>, EngineError> {
        Ok(Scanner {
            ruleset: self,
            scratch: self.detector.prefilter.scratch()?,
            candidates: Candidates::new(self.detector.line_rules.len()),
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

/// Length-prefixed parts into a hasher.
fn feed(hasher: &mut Sha256, parts: &[&[u8]]) {
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}

fn feed_spec(hasher: &mut Sha256, spec: &RuleSpec) {
    let entropy = spec.min_entropy.map(|e| e.to_string()).unwrap_or_default();
    let judged = format!(
        "{}{:?}{:?}{:?}",
        spec.confidence().as_str(),
        spec.decode,
        spec.checksum,
        spec.keywords
    );
    feed(hasher, &[b"judged", judged.as_bytes()]);
    feed(
        hasher,
        &[
            b"builtin",
            spec.id.as_bytes(),
            spec.pattern.as_bytes(),
            entropy.as_bytes(),
            spec.severity.as_str().as_bytes(),
            if spec.generic {
                b"generic"
            } else {
                b"specific"
            },
        ],
    );
    for word in &spec.stopwords {
        feed(hasher, &[b"stopword", word.as_bytes()]);
    }
}

fn feed_custom(hasher: &mut Sha256, custom: &CustomRule) {
    feed(
        hasher,
        &[
            b"custom",
            custom.name.as_bytes(),
            custom.line_regex.as_deref().unwrap_or("\0").as_bytes(),
            custom.path_regex.as_deref().unwrap_or("\0").as_bytes(),
            custom.severity.as_str().as_bytes(),
        ],
    );
}

fn detection_digest(detection: &[DetectionRule<'_>]) -> String {
    let mut hasher = Sha256::new();
    // Bump the version whenever what a detector keeps changes without its
    // rules changing (engine/src/lookalike.rs, how matches are judged): the
    // cluster's blob-result cache is keyed by this digest.
    hasher.update(b"leakscan-detector-v3\0");
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    for rule in detection {
        match rule {
            DetectionRule::Spec(spec) => feed_spec(&mut hasher, spec),
            DetectionRule::Custom(custom) => feed_custom(&mut hasher, custom),
        }
    }
    hex::encode(hasher.finalize())
}

pub(crate) fn policy_digest(policy: &Policy) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"leakscan-ruleset-v3\0");
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(policy.min_confidence.as_str().as_bytes());
    for spec in &policy.builtins {
        feed_spec(&mut hasher, spec);
    }
    for custom in &policy.custom {
        feed_custom(&mut hasher, custom);
    }
    for allow in &policy.allowlist {
        feed(
            &mut hasher,
            &[
                b"allow",
                allow.line_regex.as_deref().unwrap_or("\0").as_bytes(),
                allow.path_regex.as_deref().unwrap_or("\0").as_bytes(),
            ],
        );
    }
    hex::encode(hasher.finalize())
}

/// A match of a line rule in one blob (before any path is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMatch {
    pub rule: RuleIdx,
    /// 1-based line of the start of the secret.
    pub line: u32,
    /// Byte range of the secret in the blob (0..0 for a cached match).
    pub start: usize,
    pub end: usize,
    /// How sure this match is to be a credential.
    pub confidence: Confidence,
    pub secret: Secret,
    /// The line(s) of the match, at most [`CONTEXT_BYTES`] either side of
    /// the secret: what allowlist line regexes are matched against.
    pub context: Box<[u8]>,
}

/// Bytes of a match's line kept either side of the secret.
pub const CONTEXT_BYTES: usize = 256;

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

    /// What the policy reports in `data`: [`Scanner::scan_raw`] then
    /// [`RuleSet::finish`]. Path conditions are applied later, by whoever
    /// knows the path.
    pub fn scan(&mut self, data: &[u8]) -> &[BlobMatch] {
        self.scan_raw(data);
        self.ruleset.finish(&mut self.matches);
        &self.matches
    }

    /// Every match of every rule the detector runs, before the policy's
    /// filters (rules switched off, allowlisted lines, generic overlaps);
    /// only lines marked with the allowlist pragma are left out. Depends on
    /// the detector alone, so it is what the blob-result cache keeps.
    pub fn scan_raw(&mut self, data: &[u8]) -> &[BlobMatch] {
        self.matches.clear();
        let detector = &*self.ruleset.detector;
        if detector.line_rules.is_empty() {
            return &self.matches;
        }
        self.candidates.clear();
        detector
            .prefilter
            .candidates(&mut self.scratch, data, &mut self.candidates);
        let mut positions: Vec<u32> = self.candidates.list.clone();
        positions.extend_from_slice(&detector.unfiltered);
        positions.sort_unstable();
        positions.dedup();
        for position in positions {
            let rule_index = detector.line_rules[position as usize];
            let rule = &detector.rules[rule_index as usize];
            let Some(regex) = &rule.line_regex else {
                continue;
            };
            for captures in regex.captures_iter(data) {
                // Group 1 is the secret; a pattern of alternatives may
                // capture it in the first group of each (the first group
                // that took part).
                let Some(secret) = captures
                    .iter()
                    .skip(1)
                    .flatten()
                    .next()
                    .or_else(|| captures.get(0))
                else {
                    continue;
                };
                let secret_bytes = secret.as_bytes();
                let whole = captures.get(0).expect("group 0 always matches");
                let context = match_context(
                    data,
                    whole.start(),
                    whole.end(),
                    secret.start(),
                    secret.end(),
                );
                // The name a value is assigned to may begin before the match
                // (`publicToken = "…"` matched from `Token`): take the line.
                let line_start =
                    memchr::memrchr(b'\n', &data[..secret.start()]).map_or(0, |p| p + 1);
                let name = assigned_identifier(&data[line_start..secret.start()]);
                if !rule.accepts_secret(secret_bytes, name, &context, &detector.facts) {
                    continue;
                }
                if has_pragma(data, whole.start(), whole.end())
                    || is_truncated(&data[secret.end()..])
                    || lookalike::is_documentation_host(&data[secret.end()..])
                {
                    continue;
                }
                self.matches.push(BlobMatch {
                    rule: RuleIdx(rule_index),
                    line: line_number(data, secret.start()),
                    start: secret.start(),
                    end: secret.end(),
                    confidence: rule.finding_confidence(secret_bytes),
                    secret: Secret::new(secret_bytes),
                    context,
                });
            }
        }
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

/// A value followed by `...` or `…` is shown cut short (documentation,
/// logs), not written out.
fn is_truncated(after: &[u8]) -> bool {
    after.starts_with(b"...") || after.starts_with("\u{2026}".as_bytes())
}

fn line_bounds(data: &[u8], start: usize, end: usize) -> (usize, usize) {
    let line_start = memchr::memrchr(b'\n', &data[..start]).map_or(0, |p| p + 1);
    let line_end = memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |p| end + p);
    (line_start, line_end)
}

/// The allowlist pragma on the first or last line of the match.
fn has_pragma(data: &[u8], start: usize, end: usize) -> bool {
    let (first_start, first_end) = line_bounds(data, start, start);
    let marked = |line: &[u8]| memchr::memmem::find(line, PRAGMA_ALLOWLIST).is_some();
    if marked(&data[first_start..first_end]) {
        return true;
    }
    let last_byte = end.saturating_sub(1).max(start);
    if last_byte >= first_end {
        let (last_start, last_end) = line_bounds(data, last_byte, last_byte);
        return marked(&data[last_start..last_end]);
    }
    false
}

/// The lines of a match (from the start of its first line to the end of its
/// last), clipped to [`CONTEXT_BYTES`] either side of the secret.
fn match_context(
    data: &[u8],
    whole_start: usize,
    whole_end: usize,
    secret_start: usize,
    secret_end: usize,
) -> Box<[u8]> {
    let (line_start, _) = line_bounds(data, whole_start, whole_start);
    let last_byte = whole_end.saturating_sub(1).max(whole_start);
    let (_, line_end) = line_bounds(data, last_byte, last_byte);
    let from = line_start.max(secret_start.saturating_sub(CONTEXT_BYTES));
    let to = line_end
        .min(secret_end.saturating_add(CONTEXT_BYTES))
        .max(from);
    data[from..to].into()
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
        assert_eq!(other.enabled_rules().count(), 3);
        assert_ne!(other.digest(), first.digest());
        // Fewer rules switched on: the same detector, so the same cached
        // blob results serve both.
        assert!(Arc::ptr_eq(&first.detector, &other.detector));
        assert_eq!(other.detection_digest(), first.detection_digest());
        let mut more = builtin.clone();
        more.custom
            .push(CustomRule::line("EXTRA", "extra_[0-9]{8}"));
        let extra = cache.get_or_build(&more, PrefilterKind::Keywords).unwrap();
        assert_ne!(extra.detection_digest(), first.detection_digest());
    }
}
