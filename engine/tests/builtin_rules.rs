//! Every built-in rule's examples match and its negative examples do not;
//! ids are unique; both prefilters agree; every rule compiles in Vectorscan.

use leakscan_engine::{
    builtin_rules,
    rules::{builtin_rule_files, check_unique_names, parse_rule_file},
    Confidence, Policy, PrefilterKind, RuleSet,
};

fn prefilters() -> Vec<PrefilterKind> {
    #[allow(unused_mut)]
    let mut kinds = vec![PrefilterKind::Keywords];
    #[cfg(feature = "vectorscan")]
    kinds.push(PrefilterKind::Vectorscan);
    kinds
}

#[test]
fn builtin_rules_are_many_and_uniquely_named() {
    let rules = builtin_rules();
    assert!(rules.len() >= 750, "only {} built-in rules", rules.len());
    check_unique_names(rules).unwrap_or_else(|name| panic!("{name} is defined twice"));
    for (name, text) in builtin_rule_files() {
        let specs = parse_rule_file(name, text).unwrap_or_else(|error| panic!("{error}"));
        assert!(!specs.is_empty(), "{name} has no rules");
    }
    // The names Soteri documents answer as ids or aliases.
    for soteri_name in [
        "AWS_CLIENT_ID",
        "AWS_MWS_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "RSA_PRIVATE_KEY",
        "SSH_PRIVATE_KEY",
        "RSA",
    ] {
        assert!(
            leakscan_engine::rules::find_builtin(soteri_name).is_some(),
            "no rule answers to {soteri_name}"
        );
    }
}

#[test]
fn builtin_rules_have_examples_references_and_keywords() {
    for spec in builtin_rules() {
        assert!(!spec.examples.is_empty(), "{} has no example", spec.id);
        assert!(
            !spec.negative_examples.is_empty(),
            "{} has no negative example",
            spec.id
        );
        assert!(!spec.references.is_empty(), "{} has no reference", spec.id);
        assert!(!spec.keywords.is_empty(), "{} has no keyword", spec.id);
    }
}

/// Each rule on its own: every example gives a match of that rule, and no
/// negative example does (at the default minimum confidence, medium: a
/// match whose format check fails has low confidence). Raw matches are
/// compared (before overlaps between rules are settled), so a rule is
/// judged by its own pattern, entropy, stopwords and look-alike checks
/// alone.
#[test]
fn builtin_rule_examples_match_and_negatives_do_not() {
    let mut failures = Vec::new();
    for kind in prefilters() {
        let ruleset = RuleSet::build_with(&Policy::builtin_default(), kind)
            .unwrap_or_else(|error| panic!("{error}"));
        let mut scanner = ruleset.scanner().unwrap();
        let mut matched_by = |text: &str, id: &str| {
            scanner.scan_raw(text.as_bytes()).iter().any(|m| {
                ruleset.rule(m.rule).id == id && m.confidence >= leakscan_engine::Confidence::Medium
            })
        };
        for spec in builtin_rules() {
            for example in &spec.examples {
                if !matched_by(example, &spec.id) {
                    failures.push(format!(
                        "{kind:?} {}: example not found: {example:?}",
                        spec.id
                    ));
                }
            }
            for negative in &spec.negative_examples {
                if matched_by(negative, &spec.id) {
                    failures.push(format!(
                        "{kind:?} {}: negative example found: {negative:?}",
                        spec.id
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The keyword prefilter is only correct if every match contains a keyword.
#[test]
fn every_example_match_contains_a_keyword() {
    for spec in builtin_rules() {
        let regex = regex::bytes::RegexBuilder::new(&spec.pattern)
            .unicode(false)
            .build()
            .unwrap();
        for example in &spec.examples {
            for found in regex.find_iter(example.as_bytes()) {
                let text = String::from_utf8_lossy(found.as_bytes()).to_ascii_lowercase();
                assert!(
                    spec.keywords
                        .iter()
                        .any(|k| text.contains(&k.to_ascii_lowercase())),
                    "{}: match {text:?} contains none of {:?}",
                    spec.id,
                    spec.keywords
                );
            }
        }
    }
}

/// With all rules together, every example is still found (by its rule or,
/// where rules overlap, by a more specific one), and both prefilters give
/// exactly the same matches.
#[test]
fn full_ruleset_finds_every_example_with_both_prefilters() {
    let policy = Policy {
        min_confidence: Confidence::Low,
        ..Policy::builtin_default()
    };
    let mut results = Vec::new();
    for kind in prefilters() {
        let ruleset = RuleSet::build_with(&policy, kind).unwrap();
        let mut scanner = ruleset.scanner().unwrap();
        let mut all = Vec::new();
        for spec in builtin_rules() {
            for example in spec.examples.iter().chain(&spec.negative_examples) {
                let found: Vec<_> = scanner
                    .scan(example.as_bytes())
                    .iter()
                    .map(|m| (ruleset.rule(m.rule).id.clone(), m.line, m.start, m.end))
                    .collect();
                if spec.examples.contains(example) {
                    assert!(
                        !found.is_empty(),
                        "{kind:?}: example of {} found by no rule: {example:?}",
                        spec.id
                    );
                }
                all.push(found);
            }
        }
        results.push(all);
    }
    if results.len() == 2 {
        assert_eq!(
            results[0], results[1],
            "keyword and vectorscan prefilters disagree"
        );
    }
}

/// The rule lint: every built-in rule compiles in Vectorscan (none falls back
/// to running over every blob).
#[cfg(feature = "vectorscan")]
#[test]
fn every_builtin_rule_compiles_in_vectorscan() {
    let ruleset =
        RuleSet::build_with(&Policy::builtin_default(), PrefilterKind::Vectorscan).unwrap();
    assert_eq!(ruleset.unfiltered_rules(), Vec::<&str>::new());
}

#[test]
fn every_builtin_rule_is_covered_by_keywords() {
    let ruleset = RuleSet::build_with(&Policy::builtin_default(), PrefilterKind::Keywords).unwrap();
    assert_eq!(ruleset.unfiltered_rules(), Vec::<&str>::new());
}

/// A token of GitHub's format whose CRC-32 holds is HIGH confidence; the same
/// token with its checksum broken is MEDIUM, and the default policy (MEDIUM
/// and up) still reports it while `min_confidence: HIGH` does not.
#[test]
fn checksums_decide_confidence() {
    use leakscan_engine::checksum::{base62_6, crc32};
    let random = b"Qm7Rv2NxK9pT4cW8zL1gH6sD3fJ5aB";
    let mut valid = b"GITHUB_TOKEN=ghp_".to_vec();
    valid.extend_from_slice(random);
    valid.extend_from_slice(&base62_6(crc32(random)));
    let mut broken = valid.clone();
    let last = broken.len() - 1;
    broken[last] = if broken[last] == b'Z' { b'Y' } else { b'Z' };

    let ruleset = RuleSet::build_with(&Policy::builtin_default(), PrefilterKind::Keywords).unwrap();
    let mut scanner = ruleset.scanner().unwrap();
    let found = scanner.scan(&valid).to_vec();
    assert_eq!(found.len(), 1);
    assert_eq!(ruleset.rule(found[0].rule).id, "GITHUB_PAT_CLASSIC");
    assert_eq!(found[0].confidence, Confidence::High);
    let found = scanner.scan(&broken).to_vec();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].confidence, Confidence::Medium);

    let strict = Policy {
        min_confidence: Confidence::High,
        ..Policy::builtin_default()
    };
    let strict = RuleSet::build_with(&strict, PrefilterKind::Keywords).unwrap();
    let mut strict_scanner = strict.scanner().unwrap();
    assert_eq!(strict_scanner.scan(&valid).len(), 1);
    assert!(strict_scanner.scan(&broken).is_empty());
}

/// Look-alikes of a credential are not reported, whatever rule sees them
/// (docs/ARCHITECTURE.md, "Detection quality").
#[test]
fn look_alikes_are_not_reported() {
    let ruleset = RuleSet::build_with(&Policy::builtin_default(), PrefilterKind::Keywords).unwrap();
    let mut scanner = ruleset.scanner().unwrap();
    for text in [
        // Regression (issue 12): decoded Basic credentials that are placeholders.
        "curl -H 'Authorization: Basic ZmFrZTp1c2Vy' http://localhost/",
        "Authorization: Basic dGVzdHVzZXI6dGVzdHBhc3M=",
        "Authorization: Basic aWFtOm15c2VsZg==",
        // A hash where the line says so.
        "sha256_token = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"",
        // Template variables and truncated values.
        "API_TOKEN=${{ secrets.API_TOKEN }}",
        "export OP_SERVICE_ACCOUNT_TOKEN=ops_eyJzaWduSW5BZGRyZXNzIjoibXkuMXBhc3N3b3Jk...",
        // A provider's prefix on a value that does not fit its format.
        "BUILDKITE_TOKEN=bkua_ujzde8gxd6ncf10epf91dhodzdoc9is0j8ht9lgm_extra",
        // A short unit repeated.
        "TOKEN=eKdNnFeKdNnFeKdNnFeKdNnFeKdNnF",
        // UUIDs named as handles, not credentials (AWS idempotency and lock tokens).
        "        --lock-token 0bc9aa21-03c9-4b98-9433-6229cbf1ef1c",
        "    \"ClientToken\": \"b64ce422-8c38-fb29-18f1-35d25f557203\",",
        // Type names of keys.
        "KeyTypes = PKCS7PrivateKeyTypes",
        // A hashed asset name whose hash has a token's shape (issue 12).
        "<img src=\"/media/box.ico-4f1c9a2be07d36c5a81e92f04b6d7c3e.png\">",
    ] {
        let found: Vec<String> = scanner
            .scan(text.as_bytes())
            .iter()
            .map(|m| ruleset.rule(m.rule).id.clone())
            .collect();
        assert!(found.is_empty(), "{text:?} reported by {found:?}");
    }
}

#[test]
fn credentials_in_less_usual_shapes_are_reported() {
    let ruleset = RuleSet::build_with(&Policy::builtin_default(), PrefilterKind::Keywords).unwrap();
    let mut scanner = ruleset.scanner().unwrap();
    for (text, secret) in [
        // A UUID assigned to a credential name: many services issue keys so.
        (
            "ORBITMAIL_API_KEY=8d1e5c3a-7b2f-4e96-a0c4-1f3b5d7e9a2c",
            "8d1e5c3a-7b2f-4e96-a0c4-1f3b5d7e9a2c",
        ),
        (
            "quotehub ACCESS 5b0e7c1d-93af-4e62-b8d4-7a1f2c9e6d30",
            "5b0e7c1d-93af-4e62-b8d4-7a1f2c9e6d30",
        ),
        // A service's name and credential word joined to the value by `-`.
        (
            "brightpathPRIVATE-Qm7Tz2Xk9RvL4wNc8HpB",
            "Qm7Tz2Xk9RvL4wNc8HpB",
        ),
        // A long untyped value beside the name of a provider whose own rule
        // expects another shape: still that provider's credential.
        (
            "deepgram_secret = Hq7RvT2mNc9XpL4sWb8ZyK3dFg6JtV1e",
            "Hq7RvT2mNc9XpL4sWb8ZyK3dFg6JtV1e",
        ),
        // Authorization schemes other than Basic and Bearer, custom headers.
        (
            "curl -H \"Authorization: Token 5e1f0c2a9b7d44e08f3a6c1b2d9e7f40a1c3b5d7\" https://api.acme-corp.io/",
            "5e1f0c2a9b7d44e08f3a6c1b2d9e7f40a1c3b5d7",
        ),
        (
            "  -H \"X-Vaultly-ApiKey: 0b5d6f1e-3c7a-4e29-9b8d-2f4a6c8e1d3b\" \\",
            "0b5d6f1e-3c7a-4e29-9b8d-2f4a6c8e1d3b",
        ),
        // A password with a character URLs should encode but people do not.
        (
            "DATABASE_URL=postgres://app:NZu8a21^rsD5q31@db.acme-corp.io:5432/app",
            "NZu8a21^rsD5q31",
        ),
        // A chunk repeated, as hand-made keys in documentation are.
        (
            "LOGBRIDGE_TOKEN=eKdNnFRIBXuDL7DxtpeKdNnFRIBXuDL7Dxtp",
            "eKdNnFRIBXuDL7DxtpeKdNnFRIBXuDL7Dxtp",
        ),
    ] {
        let found: Vec<String> = scanner
            .scan(text.as_bytes())
            .iter()
            .map(|m| String::from_utf8_lossy(&text.as_bytes()[m.start..m.end]).into_owned())
            .collect();
        assert!(
            found.iter().any(|s| s == secret),
            "{text:?}: expected {secret:?}, found {found:?}"
        );
    }
}
