//! `leakscan scan --baseline REPORT`: report only findings an earlier report
//! does not hold (docs/ARCHITECTURE.md, "Scanning in CI").
//!
//! A finding matches the baseline by its fingerprint, a keyed hash of rule
//! and secret: the same secret moved to another file or line stays known,
//! and the same secret found by another rule does not. Fingerprints are
//! keyed, so the baseline must have been made with the same fingerprint key
//! (`LEAKSCAN_FINGERPRINT_KEY` in CI).

use std::{collections::HashSet, path::Path};

use anyhow::{bail, Context, Result};

/// The fingerprints a report holds.
#[derive(Debug, Default)]
pub struct Baseline {
    fingerprints: HashSet<String>,
}

impl Baseline {
    /// Reads a report `leakscan scan` wrote as JSON (`--format json`) or
    /// SARIF (`--format sarif`).
    pub fn load(path: &Path) -> Result<Baseline> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read baseline {}", path.display()))?;
        Baseline::parse(&text).with_context(|| format!("baseline {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Baseline> {
        let value: serde_json::Value = serde_json::from_str(text)
            .context("not JSON: write the baseline with --format json or --format sarif")?;
        let mut fingerprints = HashSet::new();
        match &value {
            serde_json::Value::Array(records) => {
                for (index, record) in records.iter().enumerate() {
                    let Some(fingerprint) = record.get("fingerprint").and_then(|f| f.as_str())
                    else {
                        bail!("finding {index} has no fingerprint");
                    };
                    fingerprints.insert(fingerprint.to_string());
                }
            }
            serde_json::Value::Object(sarif) if sarif.contains_key("runs") => {
                let runs = sarif["runs"].as_array().context("runs is not a list")?;
                for run in runs {
                    let results = run
                        .get("results")
                        .and_then(|r| r.as_array())
                        .map_or(&[][..], Vec::as_slice);
                    for (index, result) in results.iter().enumerate() {
                        let Some(fingerprint) = result
                            .pointer("/partialFingerprints/leakscanFingerprint~1v1")
                            .and_then(|f| f.as_str())
                        else {
                            bail!("SARIF result {index} has no leakscanFingerprint/v1");
                        };
                        fingerprints.insert(fingerprint.to_string());
                    }
                }
            }
            _ => bail!("neither a JSON list of findings nor a SARIF log"),
        }
        Ok(Baseline { fingerprints })
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    pub fn contains(&self, fingerprint: &str) -> bool {
        self.fingerprints.contains(fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_sarif_reports_give_their_fingerprints() {
        let json =
            Baseline::parse(r#"[{"rule":"A","fingerprint":"f1"},{"fingerprint":"f2"}]"#).unwrap();
        assert_eq!(json.len(), 2);
        assert!(json.contains("f1") && json.contains("f2") && !json.contains("f3"));
        let sarif = Baseline::parse(
            r#"{"version":"2.1.0","runs":[{"results":[
                {"partialFingerprints":{"leakscanFingerprint/v1":"s1"}}]}]}"#,
        )
        .unwrap();
        assert!(sarif.contains("s1"));
        assert_eq!(Baseline::parse("[]").unwrap().len(), 0);
    }

    #[test]
    fn other_files_are_refused_with_a_reason() {
        let error = |text: &str| format!("{:#}", Baseline::parse(text).unwrap_err());
        assert!(error("rule,fingerprint\n").contains("not JSON"));
        assert!(error(r#"[{"rule":"A"}]"#).contains("finding 0 has no fingerprint"));
        assert!(error(r#"{"findings":[]}"#).contains("neither"));
        assert!(error(r#"{"runs":[{"results":[{}]}]}"#).contains("leakscanFingerprint/v1"));
    }
}
