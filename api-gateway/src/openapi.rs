//! The OpenAPI 3 document of the whole REST surface, generated from the
//! route table ([`crate::routes::routes`]): the same entries the router is
//! built from, so the document lists exactly the routes that exist.

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, Json};
use serde_json::{json, Map, Value};

use crate::{
    routes::{routes, Body, Permission},
    AppState,
};

/// `GET /rest/openapi.json`.
pub async fn document(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(generate(state.config.context_path.trim_end_matches('/')))
}

/// The document, its paths under `context_path` (empty: none).
pub fn generate(context_path: &str) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes() {
        let mut parameters: Vec<Value> = path_parameters(&route.path)
            .into_iter()
            .map(|name| {
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": path_schema(name),
                })
            })
            .collect();
        parameters.extend(route.query.iter().map(|name| {
            let (name, required) = match name.strip_suffix('!') {
                Some(name) => (name, true),
                None => (*name, false),
            };
            let schema = query_schema(name, &route.path);
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required,
            });
            if schema["type"] == "boolean" {
                parameter["description"] =
                    json!("true or false in any case (True, TRUE), or 1 or 0");
            }
            let date_side = match name {
                "startDate" => Some("from (inclusive)"),
                "endDate" => Some("before (exclusive)"),
                _ => None,
            };
            if let Some(side) = date_side {
                parameter["description"] = json!(format!(
                    "the findings' scan date, {side}: {}",
                    crate::exports::DATE_FORMS
                ));
            }
            parameter["schema"] = schema;
            parameter
        }));
        let mut operation = json!({
            "operationId": operation_id(route.method.as_str(), &route.path),
            "summary": route.summary,
            "description": format!("Needs: {}.", route.permission.describe()),
            "x-permission": route.permission.describe(),
            "parameters": parameters,
            "responses": responses(&route.method),
        });
        match route.body {
            Body::None => {}
            Body::Json(schema) => {
                operation["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
                });
            }
            Body::AnyJson(schema) => {
                let schema = json!({"$ref": format!("#/components/schemas/{schema}")});
                operation["requestBody"] = json!({
                    "required": true,
                    // Any Content-Type (or none, as the documents' curl
                    // examples send) is read as JSON: the body is JSON text.
                    "description": "JSON, read as such whatever the Content-Type says, or without one",
                    "content": {"application/json": {"schema": schema}},
                });
            }
            Body::Csv => {
                operation["requestBody"] = json!({
                    "required": true,
                    "content": {"text/csv": {"schema": {"type": "string"}}},
                });
            }
        }
        if route.permission == Permission::Public {
            operation["security"] = json!([]);
        }
        paths
            .entry(format!("{context_path}{}", route.path))
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    let mut schemas = body_schemas();
    schemas.insert("Errors".into(), errors_schema());
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "leakscan",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Secret scanning for Bitbucket-style hosting: Soteri- and Bitbucket Data Center-compatible REST API. Errors use Bitbucket's shape {\"errors\": [{\"message\", \"context\", \"exceptionName\"}]}.",
        },
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
            },
            "schemas": schemas,
        },
        "security": [{"basic": []}],
        "paths": paths,
    })
}

fn errors_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"errors": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "context": {"type": "string", "nullable": true},
                "exceptionName": {"type": "string", "nullable": true},
            },
        }}},
    })
}

/// The request bodies, as the handlers read them.
fn body_schemas() -> Map<String, Value> {
    let text = |max: usize| json!({"type": "string", "maxLength": max, "pattern": "^[^\\x00]*$"});
    let key = json!({"type": "string", "pattern": "^~?[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"});
    let slug = json!({"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"});
    let url = json!({"type": "string", "format": "uri", "pattern": "^https?://"});
    let data = json!({"type": "array", "maxItems": 10, "items": {
        "type": "object", "required": ["title"],
        "properties": {
            "title": text(450),
            "type": {"type": "string", "enum": ["BOOLEAN", "DATE", "DURATION", "LINK", "NUMBER", "PERCENTAGE", "TEXT"]},
            "value": {"description": "of the type's form; without a type, a number, a string or a boolean"},
        },
    }});
    let cloud_annotation = json!({
        "type": "object", "required": ["external_id", "annotation_type", "summary"],
        "properties": {
            "external_id": text(450),
            "annotation_type": {"type": "string", "enum": ["VULNERABILITY", "CODE_SMELL", "BUG"]},
            "path": text(4096),
            "line": {"type": "integer", "minimum": 0, "maximum": i32::MAX},
            "summary": text(450),
            "details": text(2000),
            "result": {"type": "string", "enum": ["PASSED", "FAILED", "SKIPPED", "IGNORED"]},
            "severity": {"type": "string", "enum": ["CRITICAL", "HIGH", "MEDIUM", "LOW"]},
            "link": url,
        },
    });
    let dc_annotation = json!({
        "type": "object", "required": ["message", "severity"],
        "properties": {
            "externalId": text(450),
            "path": text(4096),
            "line": {"type": "integer", "minimum": 0, "maximum": i32::MAX},
            "message": text(2000),
            "severity": {"type": "string", "enum": ["HIGH", "MEDIUM", "LOW"]},
            "type": {"type": "string", "enum": ["VULNERABILITY", "CODE_SMELL", "BUG"]},
            "link": url,
        },
    });
    let schemas = json!({
        // No name (or null) names the project after its key.
        "NewProject": {"type": "object", "required": ["key"], "properties": {
            "key": key,
            "name": {"type": "string", "maxLength": crate::catalog::MAX_PROJECT_NAME_CHARS, "pattern": "^[^\\x00]*$", "nullable": true},
        }},
        "NewRepository": {"type": "object", "required": ["name", "cloneUrl"], "properties": {
            "name": slug, "slug": slug,
            // What `sources::clone_url_shape` takes.
            "cloneUrl": {"type": "string", "maxLength": 2048, "pattern": "^([Hh][Tt][Tt][Pp][Ss]?://|[Ff][Ii][Ll][Ee]:///|/)[!-~]*$"},
        }},
        "RepositorySelectors": {"type": "array", "maxItems": 1000, "items": {
            "type": "object", "required": ["projectKey", "slug"], "additionalProperties": false,
            "properties": {"projectKey": key, "slug": slug},
        }},
        // Exactly one of findingId and fingerprint.
        "NewReview": {"type": "object", "oneOf": [{"required": ["findingId"]}, {"required": ["fingerprint"]}], "properties": {
            "findingId": {"type": "integer", "minimum": 1, "maximum": i64::MAX},
            "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "comment": text(2000),
        }},
        "NewSchedule": {"type": "object", "required": ["cron"], "additionalProperties": false, "properties": {
            "cron": {"type": "string", "maxLength": 200, "description": "5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, UTC"},
        }},
        "HookSettings": {"type": "object", "description": "Bitbucket's hook settings object; leakscan reads mode (empty body: the mode stays)", "properties": {
            "mode": {"type": "string", "enum": ["block", "warn"], "nullable": true},
        }},
        "HookPush": {"type": "object", "required": ["ref", "pusher"], "additionalProperties": false, "properties": {
            "ref": text(1024),
            "pusher": text(255),
            "bypass": {"type": "string", "enum": ["false-positive", "used-in-tests", "fix-later", "commit-message"], "nullable": true},
            "overBudget": {"type": "boolean"},
            "findings": {"type": "array", "maxItems": 10000, "items": {
                "type": "object", "required": ["commit", "path", "ruleId", "secret"], "additionalProperties": false,
                "properties": {
                    "commit": text(64), "path": text(4096), "ruleId": text(255), "secret": text(100_000),
                    "line": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "nullable": true},
                },
            }},
        }},
        "SignIn": {"type": "object", "required": ["name", "password"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 255},
            "password": {"type": "string", "minLength": 1, "maxLength": 4096},
        }},
        "NewToken": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"},
            "permissions": {"type": "array", "maxItems": 2, "items": {"type": "string", "enum": [
                "PROJECT_READ", "PROJECT_WRITE", "PROJECT_ADMIN", "REPO_READ", "REPO_WRITE", "REPO_ADMIN",
            ]}},
            "expiryDays": {"type": "integer", "minimum": 1, "maximum": 3650, "nullable": true},
        }},
        "Rule": {"type": "object", "additionalProperties": false, "properties": {
            // Required on create (an update keeps the current one); not blank.
            "name": {"type": "string", "maxLength": crate::policy::MAX_NAME_CHARS, "pattern": "^[^\\x00]*[^\\s\\x00][^\\x00]*$"},
            "lineRegex": text(crate::policy::MAX_REGEX_CHARS),
            "pathRegex": text(crate::policy::MAX_REGEX_CHARS),
            // null is as absent.
            "severity": {"type": "string", "enum": ["LOW", "MEDIUM", "HIGH", "CRITICAL"], "nullable": true},
            // What GET shows, accepted back and ignored.
            "id": {"type": "integer", "readOnly": true},
            "scope": {"type": "object", "readOnly": true},
        }},
        "CloudReport": {"type": "object", "required": ["title"], "properties": {
            "title": text(450), "details": text(2000), "reporter": text(450), "link": url, "logo_url": url,
            "report_type": {"type": "string", "enum": ["SECURITY", "COVERAGE", "TEST", "BUG"]},
            "result": {"type": "string", "enum": ["PASSED", "FAILED", "PENDING"]},
            "remote_link_enabled": {"type": "boolean"},
            "data": data,
        }},
        "DcReport": {"type": "object", "required": ["title"], "properties": {
            "title": text(450), "details": text(2000), "reporter": text(450), "link": url, "logoUrl": url,
            "result": {"type": "string", "enum": ["PASS", "FAIL"]},
            "data": data,
        }},
        "CloudAnnotation": cloud_annotation,
        "CloudAnnotations": {"type": "array", "minItems": 1, "maxItems": 100, "items": cloud_annotation},
        "DcAnnotation": dc_annotation,
        "DcAnnotations": {"type": "object", "required": ["annotations"], "properties": {
            "annotations": {"type": "array", "minItems": 1, "maxItems": 100, "items": dc_annotation},
        }},
    });
    let mut schemas = match schemas {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // On an update, null is as absent (the current value stays).
    for field in ["name", "lineRegex", "pathRegex"] {
        schemas["Rule"]["properties"][field]["nullable"] = json!(true);
    }
    // A new rule needs its name; an update may keep the current one.
    let mut new_rule = schemas["Rule"].clone();
    new_rule["required"] = json!(["name"]);
    new_rule["properties"]["name"]["nullable"] = json!(false);
    // ... and a line regex, a path regex or both.
    new_rule["anyOf"] = json!([
        {"required": ["lineRegex"], "properties": {"lineRegex": {"minLength": 1}}},
        {"required": ["pathRegex"], "properties": {"pathRegex": {"minLength": 1}}},
    ]);
    schemas.insert("NewRule".into(), new_rule);
    schemas
}

/// `{name}` segments of a path, in order.
pub fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

/// What a path parameter may be (what the handlers accept).
fn path_schema(name: &str) -> Value {
    match name {
        "project" => json!({"type": "string", "pattern": "^~?[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"}),
        "repo" => json!({"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"}),
        "commit" => json!({"type": "string", "pattern": "^[0-9a-f]{40}$"}),
        "id" | "token" => json!({"type": "integer", "minimum": 1, "maximum": i64::MAX}),
        "rule" => json!({"type": "string", "pattern": "^[A-Z][A-Z0-9_]{0,127}$"}),
        "user" => json!({"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}$"}),
        _ => json!({"type": "string", "minLength": 1, "maxLength": 450, "pattern": "^[^\\x00/]+$"}),
    }
}

fn query_schema(name: &str, path: &str) -> Value {
    match name {
        "start" | "limit" | "page" | "pagelen" => {
            json!({"type": "integer", "minimum": 0, "maximum": u32::MAX})
        }
        // Read by `crate::params::flag`.
        "includeWhitelisted" => json!({"type": "boolean"}),
        "confirmExpensiveOperation" => json!({"type": "boolean", "enum": [true]}),
        "order" => json!({"type": "string", "enum": ["NAME_ASC", "NAME_DESC"]}),
        "startDate" | "endDate" => json!({
            "type": "string",
            "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]+)?)?([Zz]|[+ -][0-9]{2}:[0-9]{2})?)?$",
        }),
        // What `leakscan_store::users` grants at the path's scope.
        "permission" if path.contains("/repos/{repo}/") => {
            json!({"type": "string", "enum": ["REPO_ADMIN", "REPO_WRITE", "REPO_READ"]})
        }
        "permission" if path.contains("/projects/{project}/") => {
            json!({"type": "string", "enum": ["PROJECT_ADMIN", "PROJECT_WRITE", "PROJECT_READ"]})
        }
        "permission" => json!({"type": "string", "enum": ["SYS_ADMIN", "SECURITY"]}),
        "email" => json!({"type": "string", "format": "email"}),
        // A user or branch name: never empty.
        "name" => json!({"type": "string", "minLength": 1, "pattern": "^[^\\x00]*$"}),
        // No NUL characters (PostgreSQL text cannot hold them).
        _ => json!({"type": "string", "pattern": "^[^\\x00]*$"}),
    }
}

fn responses(method: &axum::http::Method) -> Value {
    let error = json!({
        "description": "Bitbucket's error shape",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
    });
    let mut responses = json!({
        "400": {"description": "bad input"},
        "401": {"description": "no or wrong credentials"},
        "403": {"description": "not permitted"},
        "404": {"description": "no such resource, or one the caller may not read"},
        "default": error,
    });
    for code in ["400", "401", "403", "404"] {
        responses[code] = responses["default"].clone();
    }
    // Success answers: 200 with a body, 201 for a creation, 204 without a body.
    responses["200"] = json!({"description": "done"});
    if method != axum::http::Method::GET {
        responses["201"] = json!({"description": "created"});
        responses["204"] = json!({"description": "done, no content"});
    }
    responses
}

/// `get_rest_api_latest_projects_project_repos`, unique per route.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for c in path.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if c != '_' || !id.ends_with('_') {
            id.push(c);
        }
    }
    id.trim_end_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_with_its_path_parameters() {
        let document = generate("");
        let mut operations = 0;
        let mut ids = std::collections::HashSet::new();
        for route in routes() {
            let operation =
                &document["paths"][&route.path][route.method.as_str().to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{} {} is missing",
                route.method,
                route.path
            );
            assert!(ids.insert(operation["operationId"].as_str().unwrap().to_string()));
            let documented: Vec<&str> = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(documented, path_parameters(&route.path));
            if let Some(reference) =
                operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
            {
                let name = reference.trim_start_matches("#/components/schemas/");
                assert!(
                    document["components"]["schemas"][name].is_object(),
                    "{reference} of {} {} is not defined",
                    route.method,
                    route.path
                );
            }
            operations += 1;
        }
        let counted: usize = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|methods| methods.as_object().unwrap().len())
            .sum();
        assert_eq!(counted, operations, "a route documented twice");
        assert!(operations > 100, "{operations}");
    }

    #[test]
    fn a_context_path_prefixes_every_path() {
        let document = generate("/bitbucket");
        assert!(document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|path| path.starts_with("/bitbucket/")));
    }

    #[test]
    fn body_limits_are_the_handlers() {
        // Regression (issue 14, point 15): the document allowed regexes of
        // 1,000 characters where the handlers take 10,000, and any project
        // name length.
        let document = generate("");
        let schemas = &document["components"]["schemas"];
        for rule in ["Rule", "NewRule"] {
            for field in ["lineRegex", "pathRegex"] {
                assert_eq!(
                    schemas[rule]["properties"][field]["maxLength"],
                    crate::policy::MAX_REGEX_CHARS
                );
            }
        }
        assert_eq!(schemas["NewRule"]["required"], json!(["name"]));
        assert_eq!(
            schemas["NewProject"]["properties"]["name"]["maxLength"],
            crate::catalog::MAX_PROJECT_NAME_CHARS
        );
    }
}
