//! Every built-in rule's examples match and its negative examples do not;
//! ids are unique; both prefilters agree; every rule compiles in Vectorscan.

use leakscan_engine::{
    builtin_rules,
    rules::{builtin_rule_files, check_unique_names, parse_rule_file},
    Policy, PrefilterKind, RuleSet,
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
    assert!(rules.len() >= 150, "only {} built-in rules", rules.len());
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

/// Each rule alone: every example gives a finding of that rule, whose whole
/// match contains a keyword; no negative example gives one.
#[test]
fn builtin_rule_examples_match_and_negatives_do_not() {
    let mut failures = Vec::new();
    // One detector per prefilter serves every one-rule policy.
    let cache = leakscan_engine::RuleSetCache::default();
    for kind in prefilters() {
        for spec in builtin_rules() {
            let policy = Policy {
                builtins: vec![spec.clone()],
                ..Policy::default()
            };
            let ruleset = cache
                .get_or_build(&policy, kind)
                .unwrap_or_else(|error| panic!("{}: {error}", spec.id));
            let mut scanner = ruleset.scanner().unwrap();
            for example in &spec.examples {
                if scanner.scan(example.as_bytes()).is_empty() {
                    failures.push(format!(
                        "{kind:?} {}: example not found: {example:?}",
                        spec.id
                    ));
                }
            }
            for negative in &spec.negative_examples {
                let found = scanner.scan(negative.as_bytes());
                if !found.is_empty() {
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
    let policy = Policy::builtin_default();
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
