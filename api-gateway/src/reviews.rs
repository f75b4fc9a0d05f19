//! Reviews: marking a secret a false positive for one repository or for the
//! whole instance, listing and unmarking reviews, and exporting reviews as
//! CSV and importing them (an export imports back as the same reviews;
//! plain secrets import too).

use crate::routes::PathRepository;
use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use leakscan_store::{
    catalog::RepoId,
    reviews::{self, NewReview, Review, ReviewFilter, ReviewTarget},
    secrets::redact,
    users::Access,
    Page,
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::Caller,
    catalog::Paging,
    error::{ApiError, JsonBody, PathParams, QueryParams},
    AppState,
};

/// Longest review comment.
const MAX_COMMENT_CHARS: usize = 2000;
/// Most rows one CSV import may carry.
pub const MAX_IMPORT_ROWS: usize = 10_000;

/// What to mark reviewed: a finding by id or by fingerprint.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewBody {
    finding_id: Option<i64>,
    fingerprint: Option<String>,
    #[serde(default)]
    comment: String,
}

fn review_target(body: &ReviewBody) -> Result<ReviewTarget, ApiError> {
    if body.comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(ApiError::bad_request(format!(
            "a comment has at most {MAX_COMMENT_CHARS} characters"
        )));
    }
    match (body.finding_id, &body.fingerprint) {
        (Some(id), None) if id > 0 => Ok(ReviewTarget::Finding(id)),
        (None, Some(fingerprint))
            if fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(ReviewTarget::Fingerprint(fingerprint.to_ascii_lowercase()))
        }
        (None, Some(fingerprint)) => Err(ApiError::bad_request(format!(
            "invalid fingerprint {fingerprint:?}: expected 64 hex digits"
        ))),
        _ => Err(ApiError::bad_request(
            "give exactly one of findingId (a positive number) and fingerprint",
        )),
    }
}

/// `GET /rest/security/latest/reviewed`: every review (security grant).
pub async fn list_all(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Page<Review>>, ApiError> {
    caller.require_security()?;
    Ok(Json(
        reviews::list_reviews(&state.pool, ReviewFilter::All, paging.request()).await?,
    ))
}

/// `GET /rest/security/latest/reviewed/projects/{p}`: the reviews of the
/// project's repositories.
/// A project's reviews as `caller` may see them: those of the repositories
/// it may read (a grant on one repository shows the project, not its other
/// repositories), all of them for administrators and the security grant.
fn project_reviews<'a>(caller: &Caller, project_key: &'a str) -> ReviewFilter<'a> {
    if caller.0.sys_admin || caller.0.security {
        ReviewFilter::Project(project_key)
    } else {
        ReviewFilter::ProjectFor(project_key, caller.0.id)
    }
}

pub async fn list_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(project_key): PathParams<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Page<Review>>, ApiError> {
    caller.project(&state, &project_key, Access::Read).await?;
    Ok(Json(
        reviews::list_reviews(
            &state.pool,
            project_reviews(&caller, &project_key),
            paging.request(),
        )
        .await?,
    ))
}

/// `GET /rest/security/latest/reviewed/projects/{p}/repos/{r}`
pub async fn list_repository(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Page<Review>>, ApiError> {
    Ok(Json(
        reviews::list_reviews(
            &state.pool,
            ReviewFilter::Repository(repository.id),
            paging.request(),
        )
        .await?,
    ))
}

/// `POST /rest/security/latest/reviewed`: a global review (security grant).
pub async fn create_global(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    JsonBody(body): JsonBody<ReviewBody>,
) -> Result<(StatusCode, Json<Review>), ApiError> {
    caller.require_security()?;
    let target = review_target(&body)?;
    let review =
        reviews::create_review(&state.pool, &caller.0.name, None, &target, &body.comment).await?;
    Ok((StatusCode::CREATED, Json(review)))
}

/// `POST /rest/security/latest/reviewed/projects/{p}/repos/{r}`: a review
/// for one repository (repository write).
pub async fn create_repository(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
    JsonBody(body): JsonBody<ReviewBody>,
) -> Result<(StatusCode, Json<Review>), ApiError> {
    let target = review_target(&body)?;
    let review = reviews::create_review(
        &state.pool,
        &caller.0.name,
        Some(repository.id),
        &target,
        &body.comment,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(review)))
}

/// `DELETE /rest/security/latest/reviewed/{id}`: a global review needs the
/// security grant, a repository's review write on that repository; to a
/// caller who cannot see the review it does not exist.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(id): PathParams<i64>,
) -> Result<StatusCode, ApiError> {
    let missing = || ApiError::not_found(format!("Review {id} does not exist."));
    let review = match reviews::get_review(&state.pool, id).await {
        Ok(review) => review,
        Err(leakscan_store::StoreError::NotFound(_)) => return Err(missing()),
        Err(other) => return Err(other.into()),
    };
    // Whoever may not even see the review learns nothing of it: the same
    // answer as for an id that does not exist (issue 13).
    match (&review.project, &review.repository) {
        (Some(project), Some(slug)) => {
            if let Err(refused) = caller
                .repository(&state, project, slug, Access::Write)
                .await
            {
                let can_read = caller
                    .repository(&state, project, slug, Access::Read)
                    .await
                    .is_ok();
                return Err(if can_read { refused } else { missing() });
            }
        }
        _ => caller.require_security().map_err(|_| missing())?,
    }
    reviews::delete_review(&state.pool, &caller.0.name, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub struct Imported {
    imported: usize,
    /// Rows whose secret was already reviewed in their scope.
    skipped: usize,
}

/// `POST /rest/security/latest/reviewed/import`: reviews from CSV, all
/// rows or none. A row names its secret by the plain `secret` (hashed
/// here), or by the `secretHash` a reviews export wrote (matched as it is:
/// exporting reviews and importing the file makes the same reviews). A row
/// is global unless its `scope` is `REPOSITORY` (or it has none and names
/// a `project` and `repository`), as an export writes it.
pub async fn import(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<Imported>, ApiError> {
    caller.require_security()?;
    let rows = parse_review_csv(&body)?;
    // The master key only when a plain secret must be hashed.
    let secrets = if rows.iter().any(|row| row.secret_hash.is_none()) {
        Some(state.secrets().await?)
    } else {
        None
    };
    let mut repositories: HashMap<(String, String), RepoId> = HashMap::new();
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let repository = match &row.repository {
            None => None,
            Some(key) => Some(match repositories.get(key) {
                Some(id) => *id,
                None => {
                    let (project, slug) = key;
                    let found =
                        leakscan_store::catalog::find_repository(&state.pool, project, slug)
                            .await?
                            .ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "row {}: repository {project}/{slug} does not exist",
                                    row.line
                                ))
                            })?;
                    repositories.insert(key.clone(), found.id);
                    found.id
                }
            }),
        };
        let secret_hash = match (&row.secret_hash, &secrets) {
            (Some(hash), _) => hash.clone(),
            (None, Some(secrets)) => secrets.secret_hash(row.secret.as_bytes()),
            (None, None) => return Err(ApiError::internal()),
        };
        entries.push(NewReview {
            repository,
            secret_hash,
            rule: row.rule,
            // An export's cell is redacted already; redacting again keeps it.
            redacted: redact(row.secret.as_bytes()),
            comment: row.comment,
        });
    }
    let created = reviews::insert_reviews(&state.pool, &caller.0.name, &entries, true).await?;
    Ok(Json(Imported {
        imported: created.len(),
        skipped: entries.len() - created.len(),
    }))
}

/// One row of a review import. Its `secret` never appears in an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// Its line in the CSV (the header is line 1).
    pub line: usize,
    /// The plain secret; beside a `secret_hash`, what an export wrote (the
    /// redacted form) or nothing.
    pub secret: String,
    /// The keyed hash of the secret, as a reviews export writes it
    /// (64 hex digits, lowercase).
    pub secret_hash: Option<String>,
    pub comment: String,
    pub rule: String,
    /// `(project, repository)` of a repository's review; `None`: global.
    pub repository: Option<(String, String)>,
}

/// Parses a review import: UTF-8 CSV with a header row naming a `secret`
/// or a `secretHash` column (any case), optionally `comment`, `rule`,
/// `scope`, `project` and `repository` (a reviews export's columns); at
/// most [`MAX_IMPORT_ROWS`] rows.
pub fn parse_review_csv(body: &[u8]) -> Result<Vec<ImportRow>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|error| ApiError::bad_request(format!("the CSV is not UTF-8: {error}")))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let headers = reader
        .headers()
        .map_err(|error| {
            ApiError::bad_request(format!("invalid CSV header: {}", csv_error(&error)))
        })?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|header| header.trim().eq_ignore_ascii_case(name))
    };
    let (secret_column, hash_column) = (column("secret"), column("secretHash"));
    if secret_column.is_none() && hash_column.is_none() {
        return Err(ApiError::bad_request(
            "the CSV header needs a \"secret\" column (plain secrets) or the \"secretHash\" column of a reviews export",
        ));
    }
    let (comment_column, rule_column) = (column("comment"), column("rule"));
    let (scope_column, project_column, repository_column) =
        (column("scope"), column("project"), column("repository"));
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|error| {
            ApiError::bad_request(format!("invalid CSV at row {line}: {}", csv_error(&error)))
        })?;
        if rows.len() == MAX_IMPORT_ROWS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_IMPORT_ROWS} rows per import"
            )));
        }
        let cell = |column: Option<usize>| {
            column
                .and_then(|c| record.get(c))
                .unwrap_or_default()
                .to_string()
        };
        let secret = cell(secret_column);
        let hash = cell(hash_column);
        let secret_hash = if hash.trim().is_empty() {
            None
        } else {
            let hash = hash.trim();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::bad_request(format!(
                    "row {line}: the secretHash is not 64 hexadecimal digits"
                )));
            }
            Some(hash.to_ascii_lowercase())
        };
        if secret_hash.is_none() {
            if secret.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "row {line} has an empty secret"
                )));
            }
            if leakscan_engine::secret::is_redacted(&secret) {
                return Err(ApiError::bad_request(format!(
                    "row {line}: the secret is redacted, as reviews exports show it; \
                     import an export with its secretHash column, or the plain secret"
                )));
            }
        }
        let comment = cell(comment_column);
        if comment.chars().count() > MAX_COMMENT_CHARS {
            return Err(ApiError::bad_request(format!(
                "row {line}: a comment has at most {MAX_COMMENT_CHARS} characters"
            )));
        }
        let scope = cell(scope_column);
        let (project, repository) = (cell(project_column), cell(repository_column));
        let named = !project.trim().is_empty() && !repository.trim().is_empty();
        let repository = match scope.trim().to_ascii_uppercase().as_str() {
            "GLOBAL" => None,
            "" if !named => None,
            "REPOSITORY" | "" if named => {
                Some((project.trim().to_string(), repository.trim().to_string()))
            }
            "REPOSITORY" => {
                return Err(ApiError::bad_request(format!(
                    "row {line}: a REPOSITORY review needs its project and repository"
                )))
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "row {line}: the scope is GLOBAL or REPOSITORY"
                )))
            }
        };
        rows.push(ImportRow {
            line,
            secret,
            secret_hash,
            comment,
            rule: cell(rule_column),
            repository,
        });
    }
    Ok(rows)
}

/// A CSV error without the record's content (it may hold a secret).
fn csv_error(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8".into(),
        _ => "malformed CSV".into(),
    }
}

/// Neutralises a cell that a spreadsheet would run as a formula.
pub fn csv_cell(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

/// `GET /rest/security/latest/export/reviewed[/projects/{p}[/repos/{r}]]`:
/// reviews as CSV (who, when, scope, rule, the redacted string, and the
/// keyed hash the review matches, which `POST …/reviewed/import` takes
/// back).
pub async fn export(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (project, slug) = (path.get("project"), path.get("repo"));
    let repository;
    let filter = match (project, slug) {
        (Some(project), Some(slug)) => {
            repository = caller
                .repository(&state, project, slug, Access::Read)
                .await?;
            ReviewFilter::Repository(repository.id)
        }
        (Some(project), None) => {
            caller.project(&state, project, Access::Read).await?;
            project_reviews(&caller, project)
        }
        _ => {
            caller.require_security()?;
            ReviewFilter::All
        }
    };
    let rows = reviews::all_reviews(&state.pool, filter).await?;
    let mut writer = csv::Writer::from_writer(Vec::new());
    let write = |writer: &mut csv::Writer<Vec<u8>>, cells: &[&str]| {
        writer
            .write_record(cells.iter().map(|cell| csv_cell(cell).into_owned()))
            .map_err(|_| ApiError::internal())
    };
    write(
        &mut writer,
        &[
            "id",
            "scope",
            "project",
            "repository",
            "rule",
            "secret",
            "comment",
            "reviewedBy",
            "reviewedDate",
            "secretHash",
        ],
    )?;
    for review in &rows {
        write(
            &mut writer,
            &[
                &review.id.to_string(),
                &review.scope,
                review.project.as_deref().unwrap_or_default(),
                review.repository.as_deref().unwrap_or_default(),
                &review.rule,
                &review.secret,
                &review.comment,
                &review.reviewed_by,
                &review.reviewed_date.to_rfc3339(),
                &review.secret_hash,
            ],
        )?;
    }
    let body = writer.into_inner().map_err(|_| ApiError::internal())?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"reviewed.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}
