//! Findings exports as CSV (DESIGN §4 columns, in order, with a header
//! row): streamed from the database through a small channel, so an export
//! of any size holds a few chunks in memory. Secrets appear redacted; cells
//! a spreadsheet would run as formulas are neutralised.

use crate::routes::PathRepository;
use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::StreamExt as _;
use leakscan_store::{
    findings::{self, ExportFilter, ReportedFinding},
    users::Access,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    auth::Caller,
    error::{ApiError, PathParams, QueryParams},
    reviews::csv_cell,
    AppState,
};

/// The CSV columns (DESIGN §4), in order.
pub const COLUMNS: [&str; 17] = leakscan_engine::scan::FINDING_COLUMNS;

/// Bytes gathered before a chunk is sent.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the database reader and the client.
const CHUNKS_IN_FLIGHT: usize = 4;

fn row(finding: &ReportedFinding) -> [String; 17] {
    [
        finding.rule.clone(),
        finding.rule_name.clone(),
        finding.severity.clone(),
        finding.project.clone(),
        finding.repository.clone(),
        finding.branch.clone(),
        finding.commit.clone(),
        finding.path.clone(),
        finding
            .line
            .map(|line| line.to_string())
            .unwrap_or_default(),
        finding.author.clone(),
        finding.author_email.clone(),
        finding
            .commit_date
            .map(|date| date.to_rfc3339())
            .unwrap_or_default(),
        finding.scan_date.to_rfc3339(),
        finding.secret.clone(),
        finding.fingerprint.clone(),
        finding.reviewed.to_string(),
        finding.confidence.clone(),
    ]
}

fn write_record(writer: &mut csv::Writer<Vec<u8>>, cells: &[String]) -> Result<(), csv::Error> {
    writer.write_record(cells.iter().map(|cell| csv_cell(cell).into_owned()))
}

/// Exports that may stream at once; more answer 429.
pub const MAX_CONCURRENT_EXPORTS: usize = 4;

/// An export whose client reads nothing for this long is stopped, and its
/// place and database connection freed: four clients that never read would
/// otherwise hold every place for ever (the default of
/// [`crate::GatewayConfig::export_stall_timeout`]).
pub const STALLED_CLIENT: Duration = Duration::from_secs(60);

/// A place among the exports running, held until the export's stream ends.
fn export_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.exports.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_CONCURRENT_EXPORTS} exports are running already; try again when one has finished"),
        )
    })
}

/// The `branch` parameter: empty means none; a bad name is a 400.
fn valid_branch(branch: Option<String>) -> Result<Option<String>, ApiError> {
    match branch.filter(|b| !b.is_empty()) {
        Some(branch) => {
            leakscan_store::catalog::validate_branch(&branch)?;
            Ok(Some(
                branch
                    .strip_prefix("refs/heads/")
                    .unwrap_or(&branch)
                    .to_string(),
            ))
        }
        None => Ok(None),
    }
}

/// Streams the export of `filter` as a CSV download named `file_name`.
fn csv_response(
    state: Arc<AppState>,
    filter: ExportFilter,
    file_name: String,
) -> Result<Response, ApiError> {
    let permit = export_permit(&state)?;
    let stall = state.config.export_stall_timeout;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let _permit = permit;
        let mut writer = csv::Writer::from_writer(Vec::with_capacity(CHUNK_BYTES));
        let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
        if write_record(&mut writer, &header).is_err() {
            return;
        }
        let mut rows = findings::export_findings(&state.pool, &filter);
        loop {
            let next = rows.next().await;
            let done = next.is_none();
            match next {
                Some(Ok(finding)) => {
                    if let Err(error) = write_record(&mut writer, &row(&finding)) {
                        tracing::error!(%error, "export: cannot write a row");
                        return;
                    }
                }
                Some(Err(error)) => {
                    tracing::error!(%error, "export: the database stopped the stream");
                    let _ = sender
                        .send(Err(std::io::Error::other("export failed")))
                        .await;
                    return;
                }
                None => {}
            }
            if done || writer.get_ref().len() >= CHUNK_BYTES {
                let full = std::mem::replace(
                    &mut writer,
                    csv::Writer::from_writer(Vec::with_capacity(CHUNK_BYTES)),
                );
                let Ok(chunk) = full.into_inner() else {
                    return;
                };
                // The client went away, or stopped reading: stop.
                if !chunk.is_empty() {
                    match tokio::time::timeout(stall, sender.send(Ok(Bytes::from(chunk)))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::warn!(
                                "export: the client read nothing for {} s; stopped",
                                stall.as_secs()
                            );
                            return;
                        }
                    }
                }
            }
            if done {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryExportQuery {
    branch: Option<String>,
    #[serde(default, deserialize_with = "crate::params::flag")]
    include_whitelisted: bool,
    rule_type: Option<String>,
}

/// `GET /rest/security/1.0/export-report/{project}/repos/{repo}`
/// `?branch&includeWhitelisted&ruleType` (repository read): one branch, the
/// default branch unless `branch` names another; `ruleType` as
/// [`crate::policy::findings_rule_filter`] reads it.
pub async fn repository_report(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    QueryParams(query): QueryParams<RepositoryExportQuery>,
) -> Result<Response, ApiError> {
    // Soteri: without `branch`, the repository's default branch.
    let branch = match valid_branch(query.branch)? {
        Some(branch) => Some(branch),
        None => valid_branch(repository.default_branch.clone())?,
    };
    let rule = crate::policy::findings_rule_filter(
        &state,
        &repository,
        branch.as_deref(),
        query.rule_type.as_deref(),
    )
    .await?;
    let filter = ExportFilter {
        project_key: Some(repository.project_key.clone()),
        repository: Some(repository.id),
        branch,
        rule,
        include_reviewed: query.include_whitelisted,
        ..ExportFilter::default()
    };
    csv_response(
        state,
        filter,
        format!(
            "{}-{}.csv",
            file_part(&repository.project_key),
            file_part(&repository.slug)
        ),
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectExportQuery {
    branch: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    #[serde(default, deserialize_with = "crate::params::flag")]
    include_whitelisted: bool,
}

/// The forms `startDate` and `endDate` take, for error messages and the
/// OpenAPI document.
pub const DATE_FORMS: &str = "an ISO 8601 date (2023-01-31, midnight UTC) or date-time \
     (2023-01-31T10:00:00 or 2023-01-31 10:00, UTC unless it ends with Z or an offset such as +02:00)";

/// `startDate` / `endDate`: an ISO 8601 date (`2023-01-31`, midnight UTC)
/// or date-time, as Soteri's examples write them (`2023-01-31T10:00:00`,
/// UTC), with seconds or not, fractions of a second, a `T` or a space, and
/// optionally `Z` or an offset.
pub fn parse_date(field: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    let text = text.trim();
    // A `+` left unencoded in a query string arrives as a space:
    // `2023-01-31T10:00:00 02:00` meant `+02:00`.
    let offset_plus;
    let text = match text.rsplit_once(' ') {
        Some((moment, offset))
            if moment.len() > 10
                && offset.len() == 5
                && offset.as_bytes()[2] == b':'
                && offset.bytes().filter(u8::is_ascii_digit).count() == 4 =>
        {
            offset_plus = format!("{moment}+{offset}");
            offset_plus.as_str()
        }
        _ => text,
    };
    if let Ok(moment) = DateTime::parse_from_rfc3339(text) {
        return Ok(moment.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M%:z",
    ] {
        if let Ok(moment) = DateTime::parse_from_str(text, format) {
            return Ok(moment.with_timezone(&Utc));
        }
    }
    let local = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(moment) = NaiveDateTime::parse_from_str(local, format) {
            return Ok(moment.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|moment| moment.and_utc())
        .ok_or_else(|| ApiError::bad_request(format!("{field} {text:?} is not {DATE_FORMS}")))
}

/// A range of scan dates: from (inclusive), before (exclusive); `None`
/// leaves that side open.
type DateRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The scan-date range of `startDate` (inclusive) and `endDate`
/// (exclusive); a start after the end is a 400.
fn date_range(start: Option<&str>, end: Option<&str>) -> Result<DateRange, ApiError> {
    let start = start
        .filter(|text| !text.is_empty())
        .map(|text| parse_date("startDate", text))
        .transpose()?;
    let end = end
        .filter(|text| !text.is_empty())
        .map(|text| parse_date("endDate", text))
        .transpose()?;
    if let (Some(start), Some(end)) = (start, end) {
        if start > end {
            return Err(ApiError::bad_request("startDate is after endDate"));
        }
    }
    Ok((start, end))
}

/// `GET /rest/security/latest/export-report/projects/{p}[/repos/{r}]`
/// `?branch&startDate&endDate`: findings scanned in [startDate, endDate)
/// (Soteri: the lines scanned in that period; a finding's scan date is
/// when a scan first found it), of the repositories the caller may read.
pub async fn project_report(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<std::collections::HashMap<String, String>>,
    QueryParams(query): QueryParams<ProjectExportQuery>,
) -> Result<Response, ApiError> {
    let project_key = path.get("project").cloned().unwrap_or_default();
    let (start, end) = date_range(query.start_date.as_deref(), query.end_date.as_deref())?;
    let (repository, file_name) = match path.get("repo") {
        Some(slug) => {
            let repository = caller
                .repository(&state, &project_key, slug, Access::Read)
                .await?;
            (
                Some(repository.id),
                format!("{}-{}.csv", file_part(&project_key), file_part(slug)),
            )
        }
        None => {
            caller.project(&state, &project_key, Access::Read).await?;
            (None, format!("{}.csv", file_part(&project_key)))
        }
    };
    let sees_all = caller.0.sys_admin || caller.0.security;
    let filter = ExportFilter {
        project_key: Some(project_key),
        repository,
        branch: valid_branch(query.branch)?,
        include_reviewed: query.include_whitelisted,
        start,
        end,
        viewer: (!sees_all).then_some(caller.0.id),
        ..ExportFilter::default()
    };
    csv_response(state, filter, file_name)
}

/// A project key or slug as part of a file name (they are validated, but a
/// header value must never carry a quote).
fn file_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceExportQuery {
    #[serde(default, deserialize_with = "crate::params::flag")]
    confirm_expensive_operation: bool,
    #[serde(default, deserialize_with = "crate::params::flag")]
    include_whitelisted: bool,
    start_date: Option<String>,
    end_date: Option<String>,
}

/// What the database reader hands the zip writer thread.
enum ZipPart {
    /// Starts the entry of one repository.
    Entry(String),
    Bytes(Vec<u8>),
}

/// A `Write` that sends 64 KiB chunks to the response body (blocking: it
/// runs on its own thread).
struct ChannelWriter {
    buffer: Vec<u8>,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// How long a full channel (a client not reading) is waited on.
    stall: Duration,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut chunk = Ok(Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        )));
        // Blocking, but never longer than a stalled client is waited for.
        let started = std::time::Instant::now();
        loop {
            match self.sender.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "client gone",
                    ))
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if started.elapsed() >= self.stall {
                        tracing::warn!(
                            "export: the client read nothing for {} s; stopped",
                            self.stall.as_secs()
                        );
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "client stopped reading",
                        ));
                    }
                    chunk = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// `GET /rest/security/latest/export-report?confirmExpensiveOperation=true`:
/// a zip with one CSV per repository (`PROJECT/slug.csv`), for system
/// administrators and the security grant; `startDate` / `endDate` select
/// the findings scanned in [startDate, endDate), as the project export
/// does. Streamed: rows go from the database through the compressor to the
/// client a chunk at a time.
pub async fn instance_report(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(query): QueryParams<InstanceExportQuery>,
) -> Result<Response, ApiError> {
    caller.require_security()?;
    if !query.confirm_expensive_operation {
        return Err(ApiError::bad_request(
            "exporting every repository is expensive: add ?confirmExpensiveOperation=true",
        ));
    }
    let (start, end) = date_range(query.start_date.as_deref(), query.end_date.as_deref())?;
    let repositories: Vec<(String, i64, String)> = sqlx::query_as(
        "select p.key, r.id, r.slug from repositories r join projects p on p.id = r.project_id
         order by p.key, r.slug",
    )
    .fetch_all(&state.pool)
    .await
    .map_err(leakscan_store::StoreError::from)?;
    let permit = export_permit(&state)?;
    let (parts, mut part_receiver) = mpsc::channel::<ZipPart>(CHUNKS_IN_FLIGHT);
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let stall = state.config.export_stall_timeout;
    // The database reader: one entry per repository, its rows as CSV.
    let reader_state = Arc::clone(&state);
    let include_reviewed = query.include_whitelisted;
    tokio::spawn(async move {
        let _permit = permit;
        for (project_key, id, slug) in repositories {
            if parts
                .send(ZipPart::Entry(format!("{project_key}/{slug}.csv")))
                .await
                .is_err()
            {
                return;
            }
            let filter = ExportFilter {
                project_key: Some(project_key),
                repository: Some(leakscan_store::catalog::RepoId(id)),
                include_reviewed,
                start,
                end,
                ..ExportFilter::default()
            };
            let mut writer = csv::Writer::from_writer(Vec::with_capacity(CHUNK_BYTES));
            let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
            let _ = write_record(&mut writer, &header);
            let mut rows = findings::export_findings(&reader_state.pool, &filter);
            while let Some(next) = rows.next().await {
                let Ok(finding) = next else {
                    tracing::error!("export: the database stopped the stream");
                    return;
                };
                if write_record(&mut writer, &row(&finding)).is_err() {
                    return;
                }
                if writer.get_ref().len() >= CHUNK_BYTES {
                    let full = std::mem::replace(
                        &mut writer,
                        csv::Writer::from_writer(Vec::with_capacity(CHUNK_BYTES)),
                    );
                    let Ok(chunk) = full.into_inner() else { return };
                    if parts.send(ZipPart::Bytes(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            let Ok(chunk) = writer.into_inner() else {
                return;
            };
            if parts.send(ZipPart::Bytes(chunk)).await.is_err() {
                return;
            }
        }
    });
    // The compressor, on a blocking thread: parts in, zip bytes out.
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let output = ChannelWriter {
            buffer: Vec::with_capacity(CHUNK_BYTES),
            sender: sender.clone(),
            stall,
        };
        let mut zip = zip::ZipWriter::new_stream(output);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let written: Result<(), String> = (|| {
            while let Some(part) = part_receiver.blocking_recv() {
                match part {
                    ZipPart::Entry(name) => zip
                        .start_file(name, options)
                        .map_err(|error| error.to_string())?,
                    ZipPart::Bytes(bytes) => {
                        zip.write_all(&bytes).map_err(|error| error.to_string())?
                    }
                }
            }
            let mut output = zip.finish().map_err(|error| error.to_string())?;
            output.flush().map_err(|error| error.to_string())
        })();
        if let Err(error) = written {
            tracing::warn!(%error, "export: the zip stream ended early");
            let _ = sender.blocking_send(Err(std::io::Error::other("export failed")));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"leakscan-findings.zip\"",
            ),
        ],
        body,
    )
        .into_response())
}
