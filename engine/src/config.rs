//! The per-branch config file (`mohami-config.yml`, newer name
//! `soteri-security.yml`) and the run-time config of `leakscan scan --config`,
//! which share one schema, and how they turn a base [`Policy`] into the
//! effective one.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    error::ConfigError,
    rules::{builtin_rules, find_builtin, AllowRule, Confidence, CustomRule, Severity},
    ruleset::{compile_regex, Policy, CUSTOM_REGEX_SIZE_LIMIT},
};

/// Names of the per-branch config file at the root of a branch, the newer
/// one first (it wins when both exist).
pub const BRANCH_CONFIG_FILES: [&str; 2] = ["soteri-security.yml", "mohami-config.yml"];

/// One config file. All keys are optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// Keep the built-in rules of the level above (default true).
    pub inherit_builtin_rules: Option<bool>,
    /// Keep the custom rules of the level above (default true).
    pub inherit_custom_rules: Option<bool>,
    /// Built-in rule names always applied.
    #[serde(default)]
    pub rules: Vec<String>,
    /// NAME → line regex, or NAME → {line_regex, path_regex, severity}.
    #[serde(default)]
    pub custom_rules: BTreeMap<String, CustomRuleEntry>,
    /// Files whose path matches one of these are not reported.
    #[serde(default)]
    pub allowlist_paths: Vec<String>,
    /// Lines matching one of these are not reported.
    #[serde(default)]
    pub allowlist_lines: Vec<String>,
    /// Built-in rule names switched off.
    #[serde(default)]
    pub disabled_rules: Vec<String>,
    /// Findings of lower confidence are not reported (`low`, `medium`,
    /// `high`; default: the level above's).
    #[serde(default)]
    pub min_confidence: Option<Confidence>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CustomRuleEntry {
    Line(String),
    Full(CustomRuleFields),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRuleFields {
    #[serde(default, alias = "lineRegex")]
    pub line_regex: Option<String>,
    #[serde(default, alias = "pathRegex")]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub severity: Option<Severity>,
}

impl ScanConfig {
    /// Parses a config file; `origin` names it in errors. An empty file is the
    /// default config. Every regex in it is compiled to check it.
    pub fn parse(origin: &str, text: &str) -> Result<ScanConfig, ConfigError> {
        let error = |message: String| ConfigError {
            origin: origin.to_string(),
            message,
        };
        let config: ScanConfig = if text.trim().is_empty() {
            ScanConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| error(e.to_string()))?
        };
        for name in config.rules.iter().chain(&config.disabled_rules) {
            if find_builtin(name).is_none() {
                return Err(error(format!("unknown built-in rule {name:?}")));
            }
        }
        for rule in config.custom_rules()? {
            rule_regexes_compile(&rule).map_err(error)?;
        }
        for (what, patterns) in [
            ("allowlist_paths", &config.allowlist_paths),
            ("allowlist_lines", &config.allowlist_lines),
        ] {
            for pattern in patterns {
                compile_regex(what, "allowlist", pattern, CUSTOM_REGEX_SIZE_LIMIT)
                    .map_err(|e| error(format!("{what}: {e}")))?;
            }
        }
        Ok(config)
    }

    /// The custom rules of this file, named.
    pub fn custom_rules(&self) -> Result<Vec<CustomRule>, ConfigError> {
        self.custom_rules
            .iter()
            .map(|(name, entry)| {
                let (line_regex, path_regex, severity) = match entry {
                    CustomRuleEntry::Line(line) => (Some(line.clone()), None, None),
                    CustomRuleEntry::Full(fields) => (
                        fields.line_regex.clone(),
                        fields.path_regex.clone(),
                        fields.severity,
                    ),
                };
                if name.trim().is_empty() {
                    return Err(ConfigError {
                        origin: "custom_rules".into(),
                        message: "a custom rule needs a name".into(),
                    });
                }
                if line_regex.is_none() && path_regex.is_none() {
                    return Err(ConfigError {
                        origin: "custom_rules".into(),
                        message: format!(
                            "custom rule {name:?} needs line_regex, path_regex or both"
                        ),
                    });
                }
                Ok(CustomRule {
                    name: name.clone(),
                    line_regex,
                    path_regex,
                    severity: severity.unwrap_or(Severity::High),
                })
            })
            .collect()
    }

    /// Applies this file on top of `base`.
    pub fn apply(&self, base: &Policy) -> Result<Policy, ConfigError> {
        let mut builtins = if self.inherit_builtin_rules.unwrap_or(true) {
            base.builtins.clone()
        } else {
            Vec::new()
        };
        builtins.retain(|spec| {
            !self
                .disabled_rules
                .iter()
                .any(|name| names_rule(name, &spec.id, &spec.aliases))
        });
        for name in &self.rules {
            let spec = find_builtin(name).ok_or_else(|| ConfigError {
                origin: "rules".into(),
                message: format!("unknown built-in rule {name:?}"),
            })?;
            if !builtins.iter().any(|existing| existing.id == spec.id) {
                builtins.push(spec.clone());
            }
        }
        // Keep the built-in order stable whatever the config's order.
        let order = |id: &str| {
            builtin_rules()
                .iter()
                .position(|spec| spec.id == id)
                .unwrap_or(usize::MAX)
        };
        builtins.sort_by_key(|spec| order(&spec.id));

        let mut custom = if self.inherit_custom_rules.unwrap_or(true) {
            base.custom.clone()
        } else {
            Vec::new()
        };
        for rule in self.custom_rules()? {
            if find_builtin(&rule.name).is_some() {
                return Err(ConfigError {
                    origin: "custom_rules".into(),
                    message: format!(
                        "custom rule {:?} has the name of a built-in rule",
                        rule.name
                    ),
                });
            }
            match custom
                .iter_mut()
                .find(|existing| existing.name == rule.name)
            {
                Some(existing) => *existing = rule,
                None => custom.push(rule),
            }
        }
        let mut allowlist = base.allowlist.clone();
        allowlist.extend(self.allowlist_paths.iter().map(AllowRule::path));
        allowlist.extend(self.allowlist_lines.iter().map(AllowRule::line));
        Ok(Policy {
            builtins,
            custom,
            allowlist,
            min_confidence: self.min_confidence.unwrap_or(base.min_confidence),
        })
    }
}

fn names_rule(name: &str, id: &str, aliases: &[String]) -> bool {
    name.eq_ignore_ascii_case(id) || aliases.iter().any(|alias| alias.eq_ignore_ascii_case(name))
}

fn rule_regexes_compile(rule: &CustomRule) -> Result<(), String> {
    for (what, pattern) in [("line", &rule.line_regex), ("path", &rule.path_regex)] {
        if let Some(pattern) = pattern {
            compile_regex(&rule.name, what, pattern, CUSTOM_REGEX_SIZE_LIMIT)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

impl Policy {
    /// Every built-in rule, nothing else.
    pub fn builtin_default() -> Policy {
        Policy {
            builtins: builtin_rules().to_vec(),
            custom: Vec::new(),
            allowlist: Vec::new(),
            min_confidence: Default::default(),
        }
    }

    /// Stable digest of everything that decides what this policy reports.
    pub fn digest(&self) -> String {
        crate::ruleset::policy_digest(self)
    }

    /// The names of the rules this policy applies (built-in ids, then custom names).
    pub fn rule_names(&self) -> Vec<String> {
        self.builtins
            .iter()
            .map(|spec| spec.id.clone())
            .chain(self.custom.iter().map(|rule| rule.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_five_keys_apply() {
        let config = ScanConfig::parse(
            "mohami-config.yml",
            "inherit_builtin_rules: false\ninherit_custom_rules: false\nrules: [RSA, AWS_CLIENT_ID]\n\
             custom_rules:\n  INTERNAL_TOKEN: 'itk_[a-z0-9]{16}'\nallowlist_paths: ['^test/']\n",
        )
        .unwrap();
        let base = Policy {
            custom: vec![CustomRule::line("GLOBAL", "glob_[0-9]+")],
            ..Policy::builtin_default()
        };
        let policy = config.apply(&base).unwrap();
        assert_eq!(
            policy.rule_names(),
            vec!["AWS_ACCESS_KEY_ID", "RSA_PRIVATE_KEY", "INTERNAL_TOKEN"]
        );
        assert_eq!(policy.allowlist, vec![AllowRule::path("^test/")]);
    }

    #[test]
    fn inheriting_keeps_base_and_overrides_same_name() {
        let config = ScanConfig::parse("c", "custom_rules:\n  GLOBAL: 'new_[0-9]+'\n").unwrap();
        let base = Policy {
            custom: vec![CustomRule::line("GLOBAL", "old_[0-9]+")],
            ..Policy::builtin_default()
        };
        let policy = config.apply(&base).unwrap();
        assert_eq!(policy.builtins.len(), builtin_rules().len());
        assert_eq!(policy.custom.len(), 1);
        assert_eq!(policy.custom[0].line_regex.as_deref(), Some("new_[0-9]+"));
    }

    #[test]
    fn disabled_rules_are_dropped() {
        let config = ScanConfig::parse("c", "disabled_rules: [AWS_CLIENT_ID]\n").unwrap();
        let policy = config.apply(&Policy::builtin_default()).unwrap();
        assert!(!policy
            .rule_names()
            .contains(&"AWS_ACCESS_KEY_ID".to_string()));
    }

    #[test]
    fn errors_name_the_culprit() {
        let unknown = ScanConfig::parse("x.yml", "rules: [NO_SUCH_RULE]").unwrap_err();
        assert!(unknown.to_string().contains("NO_SUCH_RULE"), "{unknown}");
        let bad_regex =
            ScanConfig::parse("x.yml", "custom_rules:\n  BAD: '(unclosed'\n").unwrap_err();
        assert!(bad_regex.to_string().contains("BAD"), "{bad_regex}");
        let typo = ScanConfig::parse("x.yml", "allowlist_path: []").unwrap_err();
        assert!(typo.to_string().contains("allowlist_path"), "{typo}");
        let not_a_map = ScanConfig::parse("x.yml", "- a\n- b\n").unwrap_err();
        assert!(not_a_map.to_string().starts_with("x.yml"), "{not_a_map}");
        assert_eq!(
            ScanConfig::parse("x.yml", "  \n").unwrap(),
            ScanConfig::default()
        );
    }
}
