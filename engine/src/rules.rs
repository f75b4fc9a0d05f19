//! Rules as data: the YAML schema of `engine/rules/*.yml`, the built-in set
//! embedded at build time, and custom rules given at run time.

use std::{collections::HashSet, fmt, path::Path, sync::OnceLock};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, RuleError};

include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));

/// How bad a leak of this kind of secret is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "LOW" => Ok(Severity::Low),
            "MEDIUM" => Ok(Severity::Medium),
            "HIGH" => Ok(Severity::High),
            "CRITICAL" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity {other:?} (expected LOW, MEDIUM, HIGH or CRITICAL)"
            )),
        }
    }
}

/// How sure a finding is to be a real credential (docs/ARCHITECTURE.md,
/// "Detection quality"): `HIGH` for formats that identify themselves (a
/// provider prefix, a valid checksum), `MEDIUM` for a value of the right
/// shape beside the provider's name, `LOW` for weaker evidence.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Confidence {
    #[serde(alias = "low", alias = "Low")]
    Low,
    #[default]
    #[serde(alias = "medium", alias = "Medium")]
    Medium,
    #[serde(alias = "high", alias = "High")]
    High,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Low => "LOW",
            Confidence::Medium => "MEDIUM",
            Confidence::High => "HIGH",
        }
    }

    /// One level lower (`LOW` stays `LOW`).
    pub fn lowered(self) -> Confidence {
        match self {
            Confidence::High => Confidence::Medium,
            _ => Confidence::Low,
        }
    }
}

impl fmt::Display for Confidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Confidence {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "LOW" => Ok(Confidence::Low),
            "MEDIUM" => Ok(Confidence::Medium),
            "HIGH" => Ok(Confidence::High),
            other => Err(format!(
                "unknown confidence {other:?} (expected low, medium or high)"
            )),
        }
    }
}

/// How a rule's secret is encoded: the look-alike checks judge the decoded
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decode {
    /// Base64 of a text value (a Kubernetes Secret's `data`): it must decode
    /// to printable text that is no placeholder.
    Base64,
    /// Base64 of `user:password` (HTTP Basic, Docker's `auth`): the decoded
    /// pair must not be a placeholder.
    Base64Basic,
    /// Base64 of a Docker client config (a Kubernetes `.dockerconfigjson`
    /// or `.dockercfg`): one of its registries' credentials (`auth`,
    /// `password`, tokens) must be no placeholder.
    Base64DockerConfig,
}

/// A checksum the provider publishes for its tokens: a token whose checksum
/// holds is reported with `HIGH` confidence, one whose checksum fails with
/// one level less (a typo'd or made-up token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    /// GitHub's and npm's token format: prefix, 30 base62 characters, then
    /// the CRC-32 of those 30 characters in 6 base62 digits.
    Crc32Base62,
    /// Grafana's legacy API keys: base64 of a JSON object that names the
    /// key (`{"k":…,"n":…,"id":…}`). A value with the prefix that decodes
    /// to no `"n":` is another base64 JSON (a report link, a state blob),
    /// not a key: its confidence is low.
    GrafanaKeyJson,
}

/// One rule as written in a rule file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable upper-case id; also the rule name the REST API shows.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Other names the rule answers to (Soteri's documented names).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Regex whose capture group 1 is the secret.
    pub pattern: String,
    /// Literals (case-insensitive) of which every match contains one.
    pub keywords: Vec<String>,
    /// Minimum Shannon entropy of the secret, in bits per byte.
    #[serde(default)]
    pub min_entropy: Option<f64>,
    /// A match whose secret contains one of these (case-insensitive) is dropped.
    #[serde(default)]
    pub stopwords: Vec<String>,
    /// A catch-all rule (assignments, URLs, headers, JWTs): its match yields to
    /// a specific rule's match of an overlapping secret. Ids starting with
    /// `GENERIC_` are generic without saying so.
    #[serde(default)]
    pub generic: bool,
    pub severity: Severity,
    /// How sure a match is to be this credential; by default `HIGH` for a
    /// specific rule and `MEDIUM` for a generic one.
    #[serde(default)]
    pub confidence: Option<Confidence>,
    /// How the secret is encoded, when the value must be judged decoded.
    #[serde(default)]
    pub decode: Option<Decode>,
    /// A checksum to verify.
    #[serde(default)]
    pub checksum: Option<Checksum>,
    #[serde(default)]
    pub references: Vec<String>,
    /// Texts that must produce a finding.
    #[serde(default)]
    pub examples: Vec<String>,
    /// Texts that must not.
    #[serde(default)]
    pub negative_examples: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rules: Vec<RuleSpec>,
}

/// Parses one rule file. `origin` names it in errors.
pub fn parse_rule_file(origin: &str, text: &str) -> Result<Vec<RuleSpec>, RuleError> {
    let file: RuleFile = serde_yaml_ng::from_str(text).map_err(|error| RuleError::Parse {
        origin: origin.to_string(),
        message: error.to_string(),
    })?;
    for spec in &file.rules {
        validate_spec(origin, spec)?;
    }
    Ok(file.rules)
}

/// Loads extra rule files from disk (run-time additions to the built-ins).
pub fn load_rule_file(path: &Path) -> Result<Vec<RuleSpec>, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_rule_file(&path.display().to_string(), &text)?)
}

fn validate_spec(origin: &str, spec: &RuleSpec) -> Result<(), RuleError> {
    let invalid = |message: String| RuleError::Invalid {
        origin: origin.to_string(),
        rule: spec.id.clone(),
        message,
    };
    if !is_rule_id(&spec.id) {
        return Err(invalid("id must match ^[A-Z][A-Z0-9_]*$".into()));
    }
    if let Some(alias) = spec.aliases.iter().find(|alias| !is_rule_id(alias)) {
        return Err(invalid(format!(
            "alias {alias:?} must match ^[A-Z][A-Z0-9_]*$"
        )));
    }
    if spec.keywords.is_empty() || spec.keywords.iter().any(|k| k.is_empty()) {
        return Err(invalid(
            "keywords must be a non-empty list of non-empty strings".into(),
        ));
    }
    if spec.name.trim().is_empty() {
        return Err(invalid("name must not be empty".into()));
    }
    Ok(())
}

/// `^[A-Z][A-Z0-9_]*$`
pub fn is_rule_id(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some('A'..='Z'))
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The built-in rules, parsed once. Their ids and aliases are unique (checked
/// here and by the test suite).
pub fn builtin_rules() -> &'static [RuleSpec] {
    static BUILTIN: OnceLock<Vec<RuleSpec>> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let mut all = Vec::new();
        for (name, text) in BUILTIN_RULE_FILES {
            // The test suite parses every file; a broken built-in file is a build defect.
            let specs = parse_rule_file(name, text)
                .unwrap_or_else(|error| panic!("built-in rule file is invalid: {error}"));
            all.extend(specs);
        }
        if let Err(duplicate) = check_unique_names(&all) {
            panic!("built-in rule name {duplicate} is defined twice");
        }
        all
    })
}

impl RuleSpec {
    /// A generic (catch-all) rule: says so, or its id starts with `GENERIC_`.
    pub fn is_generic(&self) -> bool {
        self.generic || self.id.starts_with("GENERIC_")
    }

    /// The rule's confidence: as written, or by default `HIGH` for a
    /// specific rule and `MEDIUM` for a generic one.
    pub fn confidence(&self) -> Confidence {
        self.confidence.unwrap_or(if self.is_generic() {
            Confidence::Medium
        } else {
            Confidence::High
        })
    }
}

/// The names of the files the built-in rules come from.
pub fn builtin_rule_files() -> impl Iterator<Item = (&'static str, &'static str)> {
    BUILTIN_RULE_FILES.iter().copied()
}

/// Returns the first id or alias that appears twice.
pub fn check_unique_names(specs: &[RuleSpec]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for spec in specs {
        for name in std::iter::once(&spec.id).chain(&spec.aliases) {
            if !seen.insert(name.as_str()) {
                return Err(name.clone());
            }
        }
    }
    Ok(())
}

/// Finds a built-in rule by id or alias (case-insensitive, as Soteri's API is).
pub fn find_builtin(name: &str) -> Option<&'static RuleSpec> {
    builtin_rules().iter().find(|spec| {
        spec.id.eq_ignore_ascii_case(name)
            || spec.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// A rule defined by a user: a line regex, a path regex, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomRule {
    pub name: String,
    pub line_regex: Option<String>,
    pub path_regex: Option<String>,
    pub severity: Severity,
}

impl CustomRule {
    pub fn line(name: impl Into<String>, line_regex: impl Into<String>) -> Self {
        CustomRule {
            name: name.into(),
            line_regex: Some(line_regex.into()),
            path_regex: None,
            severity: Severity::High,
        }
    }
}

/// An allowlist rule: a finding whose path matches `path_regex` and whose
/// line matches `line_regex` is not reported (a missing regex matches
/// everything; at least one is given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllowRule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub line_regex: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
}

impl AllowRule {
    pub fn path(regex: impl Into<String>) -> Self {
        AllowRule {
            path_regex: Some(regex.into()),
            ..AllowRule::default()
        }
    }

    pub fn line(regex: impl Into<String>) -> Self {
        AllowRule {
            line_regex: Some(regex.into()),
            ..AllowRule::default()
        }
    }
}
