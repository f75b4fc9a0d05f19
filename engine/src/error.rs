//! Error types of the engine. Messages name the culprit (file, rule, regex)
//! and never contain a secret.

use thiserror::Error;

/// A rule file or a rule in it is unusable.
#[derive(Debug, Error)]
pub enum RuleError {
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: rule {rule}: {message}")]
    Invalid {
        origin: String,
        rule: String,
        message: String,
    },
    #[error("rule {rule}: invalid {what} regex: {message}")]
    Regex {
        rule: String,
        what: &'static str,
        message: String,
    },
    #[error("rule name {0} is defined twice")]
    Duplicate(String),
    #[error("unknown built-in rule {0:?}")]
    UnknownBuiltin(String),
}

/// A per-branch or run-time config file is unusable.
#[derive(Debug, Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

/// Anything that stops a whole scan.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Git { path: String, message: String },
    #[error("prefilter: {0}")]
    Prefilter(String),
    #[error("scan cancelled")]
    Cancelled,
}
