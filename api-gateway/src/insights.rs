//! Code Insights reports and annotations on commits, in two shapes over one
//! store:
//! - Bitbucket Cloud's, under
//!   `/2.0/repositories/{workspace}/{repo}/commit/{commit}/reports…`
//!   (snake_case fields, `page`/`pagelen` paging, `result`
//!   PASSED/FAILED/PENDING, severities LOW to CRITICAL);
//! - Bitbucket Data Center's, under
//!   `/rest/insights/{latest,1.0}/projects/{p}/repos/{r}/commits/{commit}/reports…`
//!   (camelCase fields, `start`/`limit` paging, `result` PASS/FAIL,
//!   annotation `message` and `type`, severities LOW to HIGH; a replaced
//!   report loses its annotations).
//!
//! Every enum is checked (report type, result, data type, annotation type,
//! severity, annotation result), as are lengths and data values. A bulk
//! post carries at most 100 annotations and a report holds at most 1000.
//! Reading needs repository read permission, writing repository write.

use std::sync::Arc;

use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use leakscan_store::{
    insights::{
        self, Annotation, NewAnnotation, NewReport, Report, MAX_ANNOTATIONS_PER_REQUEST,
        MAX_SUMMARY_CHARS,
    },
    page::PageRequest,
    users::Access,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{
    auth::Caller,
    catalog::Paging,
    error::{ApiError, JsonBody, QueryParams},
    scans::query_values,
    AppState,
};

const REPORT_TYPES: &[&str] = &["SECURITY", "COVERAGE", "TEST", "BUG"];
const CLOUD_RESULTS: &[&str] = &["PASSED", "FAILED", "PENDING"];
const DC_RESULTS: &[&str] = &["PASS", "FAIL"];
const DATA_TYPES: &[&str] = &[
    "BOOLEAN",
    "DATE",
    "DURATION",
    "LINK",
    "NUMBER",
    "PERCENTAGE",
    "TEXT",
];
const ANNOTATION_TYPES: &[&str] = &["VULNERABILITY", "CODE_SMELL", "BUG"];
const CLOUD_SEVERITIES: &[&str] = &["CRITICAL", "HIGH", "MEDIUM", "LOW"];
const DC_SEVERITIES: &[&str] = &["HIGH", "MEDIUM", "LOW"];
const ANNOTATION_RESULTS: &[&str] = &["PASSED", "FAILED", "SKIPPED", "IGNORED"];
/// Most data fields on one report.
const MAX_DATA_FIELDS: usize = 10;
const MAX_TITLE_CHARS: usize = 450;
const MAX_DETAILS_CHARS: usize = 2000;
const MAX_ID_CHARS: usize = 450;
const MAX_LINK_CHARS: usize = 2000;

/// The routes of both shapes.
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    let cloud = "/2.0/repositories/{project}/{repo}/commit/{commit}/reports";
    router = shape_routes::<false>(router, cloud);
    for version in ["latest", "1.0"] {
        let dc = format!("/rest/insights/{version}/projects/{{project}}/repos/{{repo}}/commits/{{commit}}/reports");
        router = shape_routes::<true>(router, &dc);
    }
    router
}

fn shape_routes<const DC: bool>(
    router: Router<Arc<AppState>>,
    base: &str,
) -> Router<Arc<AppState>> {
    router
        .route(base, get(list_reports::<DC>))
        .route(
            &format!("{base}/{{report}}"),
            get(get_report::<DC>)
                .put(put_report::<DC>)
                .delete(delete_report::<DC>),
        )
        .route(
            &format!("{base}/{{report}}/annotations"),
            get(list_annotations::<DC>)
                .post(post_annotations::<DC>)
                .delete(delete_annotations::<DC>),
        )
        .route(
            &format!("{base}/{{report}}/annotations/{{annotation}}"),
            get(get_annotation::<DC>)
                .put(put_annotation::<DC>)
                .delete(delete_annotation::<DC>),
        )
}

#[derive(Debug, Deserialize)]
pub struct CommitPath {
    project: String,
    repo: String,
    commit: String,
}

#[derive(Debug, Deserialize)]
pub struct ReportPath {
    project: String,
    repo: String,
    commit: String,
    report: String,
}

#[derive(Debug, Deserialize)]
pub struct AnnotationPath {
    project: String,
    repo: String,
    commit: String,
    report: String,
    annotation: String,
}

/// Paging of either shape: Data Center's `start`/`limit`, Cloud's
/// `page` (from 1) / `pagelen`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(flatten)]
    paging: Paging,
    page: Option<u32>,
    pagelen: Option<u32>,
}

impl ListParams {
    fn request<const DC: bool>(&self) -> Result<PageRequest, ApiError> {
        if DC {
            return Ok(self.paging.request());
        }
        let pagelen = self.pagelen.unwrap_or(10).clamp(1, 100);
        let page = self.page.unwrap_or(1);
        if page == 0 {
            return Err(ApiError::bad_request("page starts at 1"));
        }
        Ok(PageRequest::new(
            (page - 1).saturating_mul(pagelen),
            pagelen,
        ))
    }
}

/// Where a Cloud list was asked for: the request's own absolute URL, from
/// which the links to the other pages are made.
struct PageLinks {
    /// `scheme://host` (from `X-Forwarded-Proto` / `X-Forwarded-Host` when
    /// a proxy sets them, else the `Host` header) and the path as the
    /// client sent it (context path included).
    base: String,
    /// The query's other parameters, in their order.
    query: Vec<(String, String)>,
}

impl PageLinks {
    /// `uri` is the request's within the context path (which a nested
    /// router strips).
    fn new(headers: &HeaderMap, context_path: &str, uri: &Uri) -> PageLinks {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split(',').next())
                .map(str::trim)
                .filter(|value| !value.is_empty())
        };
        let scheme = header("x-forwarded-proto")
            .map(str::to_ascii_lowercase)
            .filter(|scheme| scheme == "http" || scheme == "https")
            .or_else(|| uri.scheme_str().map(str::to_string))
            .unwrap_or_else(|| "http".to_string());
        let is_host = |host: &&str| {
            host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        };
        let host = header("x-forwarded-host")
            .filter(is_host)
            .or_else(|| header("host").filter(is_host))
            .or_else(|| uri.authority().map(|authority| authority.as_str()))
            .unwrap_or("localhost")
            .to_string();
        let query = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .filter(|(key, _)| key != "page" && key != "pagelen")
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        PageLinks {
            base: format!(
                "{scheme}://{host}{}{}",
                context_path.trim_end_matches('/'),
                uri.path()
            ),
            query,
        }
    }

    /// The absolute URL of page `page` (from 1) of `pagelen` values.
    fn page(&self, page: u32, pagelen: u32) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in &self.query {
            query.append_pair(key, value);
        }
        query.append_pair("page", &page.to_string());
        query.append_pair("pagelen", &pagelen.to_string());
        format!("{}?{}", self.base, query.finish())
    }
}

/// Cloud's page shape `{pagelen, page, size, values[, next][, previous]}`:
/// `next` and `previous` are the absolute URLs of the following and the
/// preceding page ("Link to the next page if it exists", "Link to previous
/// page if it exists"), absent on the last and on the first page.
fn cloud_page(
    request: PageRequest,
    total: i64,
    last: bool,
    values: Vec<Value>,
    links: &PageLinks,
) -> Value {
    let page = request.start / request.limit + 1;
    let mut body = json!({
        "pagelen": request.limit,
        "page": page,
        "size": total,
        "values": values,
    });
    if !last {
        body["next"] = json!(links.page(page + 1, request.limit));
    }
    if page > 1 {
        body["previous"] = json!(links.page(page - 1, request.limit));
    }
    body
}

/// A commit id in a path: 4 to 64 hex digits, kept lowercase.
fn commit_id(commit: &str) -> Result<String, ApiError> {
    if (4..=64).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(commit.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(format!(
            "{commit:?} is not a commit id (4 to 64 hexadecimal digits)"
        )))
    }
}

/// The scanner's own report (`leakscan-secrets`) is written by the scanner
/// only: a repository writer replacing it could hide the findings it shows
/// on every commit.
fn scanner_owned(report: &str) -> Result<(), ApiError> {
    if report == insights::SCAN_REPORT_KEY {
        Err(ApiError::forbidden(format!(
            "The report {report} is written by leakscan's scanner only."
        )))
    } else {
        Ok(())
    }
}

/// The report a path names, if the caller has `needed` on its repository.
async fn find_report(
    state: &AppState,
    caller: &Caller,
    (project, repo, commit, report): (&str, &str, &str, &str),
    needed: Access,
) -> Result<Report, ApiError> {
    let commit = commit_id(commit)?;
    let repository = caller.repository(state, project, repo, needed).await?;
    if needed >= Access::Write {
        scanner_owned(report)?;
    }
    insights::get_report(&state.pool, repository.id, &commit, report)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Report {report} does not exist.")))
}

impl ReportPath {
    async fn report(
        &self,
        state: &AppState,
        caller: &Caller,
        needed: Access,
    ) -> Result<Report, ApiError> {
        let parts = (
            self.project.as_str(),
            self.repo.as_str(),
            self.commit.as_str(),
            self.report.as_str(),
        );
        find_report(state, caller, parts, needed).await
    }
}

impl AnnotationPath {
    async fn report(
        &self,
        state: &AppState,
        caller: &Caller,
        needed: Access,
    ) -> Result<Report, ApiError> {
        let parts = (
            self.project.as_str(),
            self.repo.as_str(),
            self.commit.as_str(),
            self.report.as_str(),
        );
        find_report(state, caller, parts, needed).await
    }
}

pub async fn list_reports<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<CommitPath>,
    QueryParams(params): QueryParams<ListParams>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let commit = commit_id(&path.commit)?;
    let repo = caller
        .repository(&state, &path.project, &path.repo, Access::Read)
        .await?;
    let request = params.request::<DC>()?;
    let (page, total) = insights::list_reports(&state.pool, repo.id, &commit, request).await?;
    if DC {
        let page = page.map(|report| report_json::<true>(&report));
        return Ok(Json(
            serde_json::to_value(page).map_err(|_| ApiError::internal())?,
        ));
    }
    let last = page.is_last_page;
    let values = page.values.iter().map(report_json::<false>).collect();
    let links = PageLinks::new(&headers, &state.config.context_path, &uri);
    Ok(Json(cloud_page(request, total, last, values, &links)))
}

pub async fn get_report<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<ReportPath>,
) -> Result<Json<Value>, ApiError> {
    let report = path.report(&state, &caller, Access::Read).await?;
    Ok(Json(report_json::<DC>(&report)))
}

pub async fn put_report<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<ReportPath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let commit = commit_id(&path.commit)?;
    let key = identifier("report key", &path.report)?;
    let report = parse_report::<DC>(&body)?;
    let repo = caller
        .repository(&state, &path.project, &path.repo, Access::Write)
        .await?;
    scanner_owned(&key)?;
    let (stored, _) =
        insights::put_report(&state.pool, repo.id, &commit, &key, &report, DC).await?;
    Ok((StatusCode::OK, Json(report_json::<DC>(&stored))).into_response())
}

pub async fn delete_report<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<ReportPath>,
) -> Result<StatusCode, ApiError> {
    let report = path.report(&state, &caller, Access::Write).await?;
    insights::delete_report(&state.pool, report.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_annotations<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<ReportPath>,
    QueryParams(params): QueryParams<ListParams>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let report = path.report(&state, &caller, Access::Read).await?;
    let request = params.request::<DC>()?;
    let (page, total) = insights::list_annotations(&state.pool, report.id, request).await?;
    if DC {
        // Data Center's `{annotations, totalCount}`, with the paging fields.
        let values: Vec<Value> = page.values.iter().map(annotation_json::<true>).collect();
        let mut body = json!({
            "annotations": values,
            "totalCount": total,
            "start": page.start,
            "limit": page.limit,
            "size": page.size,
            "isLastPage": page.is_last_page,
        });
        if let Some(next) = page.next_page_start {
            body["nextPageStart"] = json!(next);
        }
        return Ok(Json(body));
    }
    let last = page.is_last_page;
    let values = page.values.iter().map(annotation_json::<false>).collect();
    let links = PageLinks::new(&headers, &state.config.context_path, &uri);
    Ok(Json(cloud_page(request, total, last, values, &links)))
}

/// Bulk create or update: Cloud sends an array, Data Center
/// `{"annotations": [...]}`; at most 100 either way.
pub async fn post_annotations<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<ReportPath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let items = if DC {
        body.get("annotations").and_then(Value::as_array)
    } else {
        body.as_array()
    }
    .ok_or_else(|| {
        ApiError::bad_request(if DC {
            "the body must be {\"annotations\": [...]}"
        } else {
            "the body must be an array of annotations"
        })
    })?;
    if items.is_empty() {
        return Err(ApiError::bad_request("no annotations given"));
    }
    if items.len() > MAX_ANNOTATIONS_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ANNOTATIONS_PER_REQUEST} annotations per request; this one has {}",
            items.len()
        )));
    }
    let annotations = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_annotation::<DC>(item, None).map_err(|error| {
                ApiError::bad_request(format!("annotation {index}: {}", error.message))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let report = path.report(&state, &caller, Access::Write).await?;
    let stored = insights::put_annotations(&state.pool, report.id, &annotations).await?;
    if DC {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let values: Vec<Value> = stored.iter().map(annotation_json::<false>).collect();
    Ok(Json(Value::Array(values)).into_response())
}

pub async fn delete_annotations<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<ReportPath>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let report = path.report(&state, &caller, Access::Write).await?;
    // Data Center's repeatable `externalId`; none: every annotation.
    let external_ids = query_values(&query)
        .remove("externalId")
        .unwrap_or_default();
    let ids = (!external_ids.is_empty()).then_some(external_ids.as_slice());
    insights::delete_annotations(&state.pool, report.id, ids).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn find_annotation(
    state: &AppState,
    report: &Report,
    id: &str,
) -> Result<Annotation, ApiError> {
    insights::get_annotation(&state.pool, report.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Annotation {id} does not exist.")))
}

pub async fn get_annotation<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AnnotationPath>,
) -> Result<Json<Value>, ApiError> {
    let report = path.report(&state, &caller, Access::Read).await?;
    let annotation = find_annotation(&state, &report, &path.annotation).await?;
    Ok(Json(annotation_json::<DC>(&annotation)))
}

/// Creates or updates one annotation; its id is the path's.
pub async fn put_annotation<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AnnotationPath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let annotation = parse_annotation::<DC>(&body, Some(&path.annotation))?;
    let report = path.report(&state, &caller, Access::Write).await?;
    let stored = insights::put_annotations(&state.pool, report.id, &[annotation]).await?;
    let stored = stored.first().ok_or_else(ApiError::internal)?;
    if DC {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(annotation_json::<false>(stored)).into_response())
}

pub async fn delete_annotation<const DC: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AnnotationPath>,
) -> Result<StatusCode, ApiError> {
    let report = path.report(&state, &caller, Access::Write).await?;
    let annotation = find_annotation(&state, &report, &path.annotation).await?;
    insights::delete_annotations(&state.pool, report.id, Some(&[annotation.external_id])).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- the two JSON shapes ----

fn report_json<const DC: bool>(report: &Report) -> Value {
    let data = report.data.0.clone();
    if DC {
        let mut body = json!({
            "key": report.report_key,
            "title": report.title,
            "details": report.details,
            "result": report.result.as_deref().and_then(|result| match result {
                "PASSED" => Some("PASS"),
                "FAILED" => Some("FAIL"),
                _ => None,
            }),
            "reporter": report.reporter,
            "link": report.link,
            "logoUrl": report.logo_url,
            "createdDate": report.created_at.timestamp_millis(),
            "data": data_to_dc(data),
        });
        drop_nulls(&mut body);
        return body;
    }
    let mut body = json!({
        "type": "report",
        "uuid": format!("{{{}}}", report.uuid),
        "external_id": report.report_key,
        "title": report.title,
        "details": report.details,
        "report_type": report.report_type,
        "result": report.result,
        "reporter": report.reporter,
        "link": report.link,
        "logo_url": report.logo_url,
        "remote_link_enabled": report.remote_link_enabled,
        "data": data,
        "created_on": report.created_at,
        "updated_on": report.updated_at,
    });
    drop_nulls(&mut body);
    body
}

fn annotation_json<const DC: bool>(annotation: &Annotation) -> Value {
    let mut body = if DC {
        json!({
            "reportKey": annotation.report_key,
            "externalId": annotation.external_id,
            "path": annotation.path,
            "line": annotation.line,
            "message": annotation.summary,
            "severity": annotation.severity.as_deref().map(|s| if s == "CRITICAL" { "HIGH" } else { s }),
            "type": annotation.annotation_type,
            "link": annotation.link,
        })
    } else {
        json!({
            "type": "report_annotation",
            "uuid": format!("{{{}}}", annotation.uuid),
            "external_id": annotation.external_id,
            "annotation_type": annotation.annotation_type,
            "path": annotation.path,
            "line": annotation.line,
            "summary": annotation.summary,
            "details": annotation.details,
            "result": annotation.result,
            "severity": annotation.severity,
            "link": annotation.link,
            "created_on": annotation.created_at,
            "updated_on": annotation.updated_at,
        })
    };
    drop_nulls(&mut body);
    body
}

fn drop_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
    }
}

/// Data Center names a link's text `linktext`.
fn data_to_dc(mut data: Value) -> Value {
    if let Value::Array(fields) = &mut data {
        for field in fields {
            if field["type"] == "LINK" {
                if let Some(value) = field.get_mut("value").and_then(Value::as_object_mut) {
                    if let Some(text) = value.remove("text") {
                        value.insert("linktext".into(), text);
                    }
                }
            }
        }
    }
    data
}

// ---- validation ----

/// Checks a report body as `PUT …/reports/{key}` does, in Data Center's
/// shape (`dc`) or Cloud's: for fuzzing and property tests.
pub fn check_report(dc: bool, body: &Value) -> Result<NewReport, ApiError> {
    if dc {
        parse_report::<true>(body)
    } else {
        parse_report::<false>(body)
    }
}

/// Checks one annotation body as the bulk `POST` does for each element.
pub fn check_annotation(dc: bool, body: &Value) -> Result<NewAnnotation, ApiError> {
    if dc {
        parse_annotation::<true>(body, None)
    } else {
        parse_annotation::<false>(body, None)
    }
}

fn object<'a>(body: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::bad_request(format!("the {what} must be a JSON object")))
}

/// An optional string field of at most `max` characters.
fn text(map: &Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= max => Ok(Some(text.clone())),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!(
            "{field} is longer than {max} characters"
        ))),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

fn required(map: &Map<String, Value>, field: &str, max: usize) -> Result<String, ApiError> {
    text(map, field, max)?
        .filter(|text| !text.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("{field} is required")))
}

/// An optional enum field: one of `allowed`, exactly.
fn one_of(
    map: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match text(map, field, 64)? {
        None => Ok(None),
        Some(value) if allowed.contains(&value.as_str()) => Ok(Some(value)),
        Some(value) => Err(ApiError::bad_request(format!(
            "{field} {value:?} is not one of {}",
            allowed.join(", ")
        ))),
    }
}

fn link(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    let Some(link) = text(map, field, MAX_LINK_CHARS)? else {
        return Ok(None);
    };
    if link.starts_with("https://") || link.starts_with("http://") {
        Ok(Some(link))
    } else {
        Err(ApiError::bad_request(format!(
            "{field} must be an http or https URL"
        )))
    }
}

/// A report key or annotation external id.
fn identifier(what: &str, id: &str) -> Result<String, ApiError> {
    if id.trim().is_empty() || id.chars().count() > MAX_ID_CHARS || id.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "the {what} must be 1 to {MAX_ID_CHARS} printable characters"
        )));
    }
    Ok(id.to_string())
}

fn parse_report<const DC: bool>(body: &Value) -> Result<NewReport, ApiError> {
    let map = object(body, "report")?;
    let result = if DC {
        one_of(map, "result", DC_RESULTS)?.map(|result| format!("{result}ED"))
    } else {
        one_of(map, "result", CLOUD_RESULTS)?
    };
    let data = match map.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(fields)) => fields.clone(),
        Some(_) => return Err(ApiError::bad_request("data must be an array")),
    };
    if data.len() > MAX_DATA_FIELDS {
        return Err(ApiError::bad_request(format!(
            "a report has at most {MAX_DATA_FIELDS} data fields"
        )));
    }
    let data = data
        .iter()
        .enumerate()
        .map(|(index, field)| {
            data_field(field)
                .map_err(|error| ApiError::bad_request(format!("data {index}: {}", error.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NewReport {
        title: required(map, "title", MAX_TITLE_CHARS)?,
        details: text(map, "details", MAX_DETAILS_CHARS)?,
        report_type: if DC {
            None
        } else {
            one_of(map, "report_type", REPORT_TYPES)?
        },
        result,
        reporter: text(map, "reporter", MAX_TITLE_CHARS)?,
        link: link(map, "link")?,
        logo_url: link(map, if DC { "logoUrl" } else { "logo_url" })?,
        remote_link_enabled: if DC {
            None
        } else {
            match map.get("remote_link_enabled") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(enabled)) => Some(*enabled),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "remote_link_enabled must be true or false",
                    ))
                }
            }
        },
        data: Value::Array(data),
    })
}

/// One data field, stored in Cloud's form (`LINK` values `{text, href}`).
/// Without a `type`, both documents take a number, a string or a boolean
/// as the value (Cloud: "Number, String or Boolean (not an array or
/// object)", shown as plain text; Data Center: "a raw value (string,
/// number or boolean)"); it is stored as given, without a type.
fn data_field(field: &Value) -> Result<Value, ApiError> {
    let map = object(field, "data field")?;
    let title = required(map, "title", MAX_TITLE_CHARS)?;
    let value = map.get("value").cloned().unwrap_or(Value::Null);
    let Some(kind) = one_of(map, "type", DATA_TYPES)? else {
        return match value {
            Value::Bool(_) | Value::Number(_) => Ok(json!({"title": title, "value": value})),
            Value::String(text) if text.chars().count() <= MAX_DETAILS_CHARS => {
                Ok(json!({"title": title, "value": text}))
            }
            Value::String(_) => Err(ApiError::bad_request(format!(
                "the value of {title:?} is longer than {MAX_DETAILS_CHARS} characters"
            ))),
            _ => Err(ApiError::bad_request(format!(
                "the value of {title:?} has no type, so it must be a number, a string or a boolean (not an array, an object or null)"
            ))),
        };
    };
    let value = match (kind.as_str(), value) {
        ("BOOLEAN", Value::Bool(value)) => json!(value),
        ("DATE" | "DURATION", Value::Number(value)) if value.as_i64().is_some_and(|v| v >= 0) => {
            json!(value)
        }
        ("NUMBER", Value::Number(value)) => json!(value),
        ("PERCENTAGE", Value::Number(value))
            if value.as_f64().is_some_and(|v| (0.0..=100.0).contains(&v)) =>
        {
            json!(value)
        }
        ("TEXT", Value::String(value)) if value.chars().count() <= MAX_DETAILS_CHARS => {
            json!(value)
        }
        ("LINK", Value::Object(link_value)) => {
            let href = link(&link_value, "href")?
                .ok_or_else(|| ApiError::bad_request("a LINK value needs an href"))?;
            let text = text(&link_value, "text", MAX_TITLE_CHARS)?
                .or(text(&link_value, "linktext", MAX_TITLE_CHARS)?)
                .unwrap_or_else(|| href.clone());
            json!({"text": text, "href": href})
        }
        (kind, _) => {
            return Err(ApiError::bad_request(format!(
                "the value of {title:?} does not fit its type {kind} ({})",
                match kind {
                    "BOOLEAN" => "true or false",
                    "DATE" => "milliseconds since the epoch",
                    "DURATION" => "milliseconds, not negative",
                    "NUMBER" => "a number",
                    "PERCENTAGE" => "a number from 0 to 100",
                    "LINK" => "{\"text\", \"href\"}",
                    _ => "a string",
                }
            )))
        }
    };
    Ok(json!({"title": title, "type": kind, "value": value}))
}

/// One annotation; `path_id` is the id in the path of a single put, which
/// wins over the body's.
fn parse_annotation<const DC: bool>(
    body: &Value,
    path_id: Option<&str>,
) -> Result<NewAnnotation, ApiError> {
    let map = object(body, "annotation")?;
    let external_id = match path_id {
        Some(id) => id.to_string(),
        None => {
            let field = if DC { "externalId" } else { "external_id" };
            match text(map, field, MAX_ID_CHARS)? {
                Some(id) => id,
                // Data Center makes the id optional.
                None if DC => format!("annotation-{:016x}", rand::random::<u64>()),
                None => return Err(ApiError::bad_request("external_id is required")),
            }
        }
    };
    let external_id = identifier("external id", &external_id)?;
    let line = match map.get("line") {
        None | Some(Value::Null) => None,
        Some(Value::Number(line)) => Some(
            line.as_i64()
                .and_then(|line| i32::try_from(line).ok())
                .filter(|line| *line >= 0)
                .ok_or_else(|| ApiError::bad_request("line must be a line number (0 or more)"))?,
        ),
        Some(_) => return Err(ApiError::bad_request("line must be a number")),
    };
    let path = text(map, "path", 4096)?;
    if DC {
        return Ok(NewAnnotation {
            external_id,
            annotation_type: one_of(map, "type", ANNOTATION_TYPES)?
                .unwrap_or_else(|| "CODE_SMELL".into()),
            path,
            line,
            summary: required(map, "message", MAX_DETAILS_CHARS)?,
            details: None,
            result: None,
            severity: Some(
                one_of(map, "severity", DC_SEVERITIES)?
                    .ok_or_else(|| ApiError::bad_request("severity is required"))?,
            ),
            link: link(map, "link")?,
        });
    }
    Ok(NewAnnotation {
        external_id,
        annotation_type: one_of(map, "annotation_type", ANNOTATION_TYPES)?
            .ok_or_else(|| ApiError::bad_request("annotation_type is required"))?,
        path,
        line,
        summary: required(map, "summary", MAX_SUMMARY_CHARS)?,
        details: text(map, "details", MAX_DETAILS_CHARS)?,
        result: one_of(map, "result", ANNOTATION_RESULTS)?,
        severity: one_of(map, "severity", CLOUD_SEVERITIES)?,
        link: link(map, "link")?,
    })
}
