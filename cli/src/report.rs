//! Findings as every output shows them (DESIGN §4), and the four report
//! formats of `leakscan scan`: text, JSON, CSV and SARIF 2.1.0.

use std::io::Write;

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use leakscan_engine::{Confidence, Finding, Severity};
use serde::Serialize;

/// One finding with DESIGN §4's field names, in its column order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingRecord {
    pub rule: String,
    pub rule_name: String,
    pub severity: Severity,
    pub project: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub path: String,
    pub line: Option<u32>,
    pub author: Option<String>,
    pub author_email: Option<String>,
    pub commit_date: Option<String>,
    pub scan_date: String,
    pub secret: String,
    pub fingerprint: String,
    pub reviewed: bool,
    /// How sure the finding is to be a credential (after DESIGN §4's fields).
    pub confidence: Confidence,
}

/// The CSV header, DESIGN §4's column order, then `confidence`.
pub const CSV_COLUMNS: [&str; 17] = leakscan_engine::scan::FINDING_COLUMNS;

impl FindingRecord {
    pub fn new(
        finding: &Finding,
        scan_date: &DateTime<Utc>,
        show_secrets: bool,
        fingerprint_key: &[u8],
    ) -> Self {
        let commit = finding.commit.as_ref();
        FindingRecord {
            rule: finding.rule_id.clone(),
            rule_name: finding.rule_name.clone(),
            severity: finding.severity,
            project: None,
            repository: None,
            branch: finding.branch.clone(),
            commit: commit.map(|c| c.id.clone()),
            path: finding.path.clone(),
            line: finding.line,
            author: commit.map(|c| c.author.clone()),
            author_email: commit.map(|c| c.author_email.clone()),
            commit_date: commit.map(|c| iso_date(c.time, c.offset_minutes)),
            scan_date: scan_date.to_rfc3339_opts(SecondsFormat::Secs, true),
            secret: if show_secrets {
                String::from_utf8_lossy(finding.secret.expose()).into_owned()
            } else {
                finding.secret.redacted()
            },
            fingerprint: finding
                .secret
                .fingerprint(fingerprint_key, &finding.rule_id),
            reviewed: false,
            confidence: finding.confidence,
        }
    }

    fn csv_row(&self) -> [String; 17] {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        [
            self.rule.clone(),
            self.rule_name.clone(),
            self.severity.to_string(),
            text(&self.project),
            text(&self.repository),
            text(&self.branch),
            text(&self.commit),
            self.path.clone(),
            self.line.map(|l| l.to_string()).unwrap_or_default(),
            text(&self.author),
            text(&self.author_email),
            text(&self.commit_date),
            self.scan_date.clone(),
            self.secret.clone(),
            self.fingerprint.clone(),
            self.reviewed.to_string(),
            self.confidence.to_string(),
        ]
    }
}

/// ISO 8601 in the author's own offset.
fn iso_date(seconds: i64, offset_minutes: i32) -> String {
    let offset = FixedOffset::east_opt(offset_minutes * 60)
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
    DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Sarif,
    Csv,
}

pub fn write_report(format: Format, records: &[FindingRecord], out: &mut dyn Write) -> Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, records).context("failed to write JSON")?;
            writeln!(out)?;
        }
        Format::Csv => write_csv(records, out)?,
        Format::Sarif => {
            serde_json::to_writer_pretty(&mut *out, &sarif(records))
                .context("failed to write SARIF")?;
            writeln!(out)?;
        }
        Format::Text => write_text(records, out)?,
    }
    out.flush().context("failed to write the report")?;
    Ok(())
}

fn write_csv(records: &[FindingRecord], out: &mut dyn Write) -> Result<()> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    writer.write_record(CSV_COLUMNS)?;
    for record in records {
        writer.write_record(record.csv_row())?;
    }
    writer.flush()?;
    Ok(())
}

fn write_text(records: &[FindingRecord], out: &mut dyn Write) -> Result<()> {
    for record in records {
        let location = match record.line {
            Some(line) => format!("{}:{line}", record.path),
            None => record.path.clone(),
        };
        writeln!(
            out,
            "{:<8} {}  {}  {}  (confidence {})",
            record.severity.as_str(),
            record.rule,
            location,
            record.secret,
            record.confidence.as_str().to_ascii_lowercase(),
        )?;
        if let Some(commit) = &record.commit {
            writeln!(
                out,
                "         commit {} on {} by {} <{}> at {}",
                &commit[..commit.len().min(12)],
                record.branch.as_deref().unwrap_or("-"),
                record.author.as_deref().unwrap_or(""),
                record.author_email.as_deref().unwrap_or(""),
                record.commit_date.as_deref().unwrap_or(""),
            )?;
        }
    }
    Ok(())
}

fn sarif_level(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    }
}

fn sarif(records: &[FindingRecord]) -> serde_json::Value {
    use serde_json::json;
    let mut rule_ids: Vec<&str> = records.iter().map(|r| r.rule.as_str()).collect();
    rule_ids.sort_unstable();
    rule_ids.dedup();
    let rules: Vec<_> = rule_ids
        .iter()
        .map(|id| {
            let record = records
                .iter()
                .find(|r| r.rule == *id)
                .expect("id comes from records");
            json!({
                "id": id,
                "name": id,
                "shortDescription": {"text": record.rule_name},
                "defaultConfiguration": {"level": sarif_level(record.severity)},
                "properties": {"severity": record.severity.as_str()},
            })
        })
        .collect();
    let results: Vec<_> = records
        .iter()
        .map(|record| {
            let mut physical = json!({"artifactLocation": {"uri": record.path}});
            if let Some(line) = record.line {
                physical["region"] = json!({"startLine": line});
            }
            let mut properties = json!({
                "severity": record.severity.as_str(),
                "confidence": record.confidence.as_str(),
                "secret": record.secret,
            });
            for (key, value) in [
                ("commit", &record.commit),
                ("branch", &record.branch),
                ("author", &record.author),
                ("authorEmail", &record.author_email),
                ("commitDate", &record.commit_date),
            ] {
                if let Some(value) = value {
                    properties[key] = json!(value);
                }
            }
            json!({
                "ruleId": record.rule,
                "ruleIndex": rule_ids.binary_search(&record.rule.as_str()).expect("id listed"),
                "level": sarif_level(record.severity),
                "message": {"text": format!("{} found: {}", record.rule_name, record.secret)},
                "locations": [{"physicalLocation": physical}],
                "partialFingerprints": {"leakscanFingerprint/v1": record.fingerprint},
                "properties": properties,
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "leakscan",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
