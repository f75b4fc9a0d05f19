//! Property tests of the API's input handling: validators, the Code
//! Insights body checks, the review CSV parser, and the routes themselves
//! under generated path segments and query strings.

mod common;

use common::{Fixture, ADMIN};
use leakscan_gateway::{
    insights::{check_annotation, check_report},
    reviews::parse_review_csv,
};
use leakscan_store::catalog::{validate_branch, validate_project_key, validate_slug};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("title".to_string()),
                    Just("result".to_string()),
                    Just("report_type".to_string()),
                    Just("data".to_string()),
                    Just("type".to_string()),
                    Just("value".to_string()),
                    Just("severity".to_string()),
                    Just("summary".to_string()),
                    Just("message".to_string()),
                    Just("external_id".to_string()),
                    Just("line".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A valid Cloud data field: a type and a value of that type.
fn data_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(|v| json!({"title": "b", "type": "BOOLEAN", "value": v})),
        (0i64..1 << 40).prop_map(|v| json!({"title": "d", "type": "DURATION", "value": v})),
        any::<i32>().prop_map(|v| json!({"title": "n", "type": "NUMBER", "value": v})),
        (0u8..=100).prop_map(|v| json!({"title": "p", "type": "PERCENTAGE", "value": v})),
        "[a-zA-Z0-9 ]{0,50}".prop_map(|v| json!({"title": "t", "type": "TEXT", "value": v})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn accepted_branch_names_are_safe_for_git(name in ".{0,80}") {
        if validate_branch(&name).is_ok() {
            let short = name.strip_prefix("refs/heads/").unwrap_or(&name);
            prop_assert!(!short.starts_with('-'));
            prop_assert!(!short.contains(".."));
            prop_assert!(!short.chars().any(|c| c.is_control() || c == ' '));
        }
    }

    #[test]
    fn ordinary_branch_names_are_accepted(name in "[a-z][a-z0-9_-]{0,15}(/[a-z][a-z0-9_-]{0,15}(\\.[a-z0-9]{1,4})?){0,3}") {
        prop_assert!(validate_branch(&name).is_ok(), "{}", name);
    }

    #[test]
    fn accepted_keys_and_slugs_never_leave_the_repository_root(text in ".{0,40}") {
        for accepted in [validate_project_key(&text).is_ok(), validate_slug(&text).is_ok()] {
            if accepted {
                prop_assert!(!text.contains('/') && !text.contains('\\') && text != ".." && text != ".");
                prop_assert!(!text.trim_start_matches('~').starts_with('-'));
            }
        }
    }

    #[test]
    fn insight_bodies_are_accepted_or_refused_with_400(body in any_json(), dc in any::<bool>()) {
        if let Err(error) = check_report(dc, &body) {
            prop_assert_eq!(error.status.as_u16(), 400);
            prop_assert!(!error.message.is_empty());
        }
        if let Err(error) = check_annotation(dc, &body) {
            prop_assert_eq!(error.status.as_u16(), 400);
        }
    }

    #[test]
    fn valid_cloud_reports_keep_their_fields(
        title in "[A-Za-z0-9][A-Za-z0-9 ]{0,60}",
        result in prop::sample::select(vec!["PASSED", "FAILED", "PENDING"]),
        report_type in prop::sample::select(vec!["SECURITY", "COVERAGE", "TEST", "BUG"]),
        data in prop::collection::vec(data_field(), 0..10),
    ) {
        let body = json!({"title": title, "result": result, "report_type": report_type, "data": data});
        let report = check_report(false, &body).unwrap();
        prop_assert_eq!(report.title, title);
        prop_assert_eq!(report.result.as_deref(), Some(result));
        prop_assert_eq!(report.report_type.as_deref(), Some(report_type));
        prop_assert_eq!(report.data, Value::Array(data));
    }

    #[test]
    fn review_csv_round_trips(rows in prop::collection::vec(("[^\\x00]{1,30}", ".{0,30}"), 1..20)) {
        let rows: Vec<(String, String)> = rows
            .into_iter()
            .filter(|(secret, _)| !secret.trim().is_empty())
            .collect();
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(["secret", "comment"]).unwrap();
        for (secret, comment) in &rows {
            writer.write_record([secret, comment]).unwrap();
        }
        let body = writer.into_inner().unwrap();
        let parsed = parse_review_csv(&body).unwrap();
        prop_assert_eq!(parsed.len(), rows.len());
        for (row, (secret, _)) in parsed.iter().zip(&rows) {
            prop_assert_eq!(row.secret.trim(), secret.trim());
        }
    }

    #[test]
    fn any_bytes_as_a_review_csv_parse_or_answer_400(body in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Err(error) = parse_review_csv(&body) {
            prop_assert_eq!(error.status.as_u16(), 400);
        }
    }
}

/// Generated path segments and query strings on real routes, as a system
/// administrator: never a 5xx.
#[test]
fn generated_paths_and_queries_never_answer_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fixture = runtime.block_on(Fixture::new());
    let segment = "[A-Za-z0-9._~%-]{1,20}";
    let query = "[A-Za-z0-9=&%._-]{0,40}";
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    runner
        .run(&(segment, segment, query, 0usize..6), |(project, repo, query, route)| {
            let uri = match route {
                0 => format!("/rest/security/1.0/scan/{project}/repos/{repo}?{query}"),
                1 => format!("/rest/security/1.0/export-report/{project}/repos/{repo}?{query}"),
                2 => format!("/rest/api/latest/projects/{project}/repos?{query}"),
                3 => format!("/rest/security/latest/dashboard/projects/{project}/repos/{repo}?{query}"),
                4 => format!("/rest/insights/latest/projects/{project}/repos/{repo}/commits/{repo}/reports?{query}"),
                _ => format!("/rest/api/latest/projects/{project}/repos/{repo}/secret-scanning/rules?{query}"),
            };
            let (status, answer) = runtime.block_on(fixture.call("GET", &uri, Some(ADMIN.0), None));
            prop_assert!(status.as_u16() < 500, "{} {}: {}", uri, status, answer);
            Ok(())
        })
        .unwrap();
    runtime.block_on(fixture.finish());
}
