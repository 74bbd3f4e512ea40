use super::*;

fn parse(text: &str) -> Limits {
    Limits::parse(Path::new("limits.yaml"), text).unwrap()
}

fn refusal(text: &str) -> ConfigError {
    Limits::parse(Path::new("limits.yaml"), text).unwrap_err()
}

fn rule<'a>(limits: &'a Limits, domain: &str, entries: &[(&'a str, &'a str)]) -> Option<&'a Rule> {
    limits
        .rule_for(domain, entries.iter().copied())
        .map(|id| limits.rule(id))
}

fn per_unit(rule: Option<&Rule>) -> Option<(u32, Unit)> {
    match rule?.rate {
        Rate::PerUnit {
            requests_per_unit,
            unit,
        } => Some((requests_per_unit, unit)),
        Rate::Unlimited => None,
    }
}

// envoyproxy/ratelimit's README examples 2-4: nested lists, most specific match, depth.
const MESSAGING: &str = "
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
---
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
  - key: path
    value: /api/*
    rate_limit: {unit: Minute, requests_per_unit: 7}
  - key: path
    value: /api/v1/*
    rate_limit: {unit: minute, requests_per_unit: 8}
";

#[test]
fn nested_descriptors_and_the_most_specific_match() {
    let limits = parse(MESSAGING);
    assert_eq!(
        per_unit(rule(
            &limits,
            "messaging",
            &[("message_type", "marketing"), ("to_number", "2061111111")]
        )),
        Some((5, Unit::Day))
    );
    assert_eq!(
        per_unit(rule(&limits, "messaging", &[("to_number", "2061111111")])),
        Some((100, Unit::Day))
    );
    // key: value before key alone.
    assert_eq!(
        per_unit(rule(
            &limits,
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.5")]
        )),
        Some((0, Unit::Second))
    );
    assert_eq!(
        per_unit(rule(
            &limits,
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.1")]
        )),
        Some((10, Unit::Second))
    );
    assert_eq!(
        rule(
            &limits,
            "messaging",
            &[("message_type", "marketing"), ("to_number", "1")]
        )
        .unwrap()
        .path,
        "messaging.message_type_marketing.to_number"
    );
}

#[test]
fn a_limit_applies_only_at_its_own_depth() {
    let limits = parse(MESSAGING);
    // The placeholder level has no limit itself.
    assert_eq!(
        rule(&limits, "messaging", &[("message_type", "marketing")]),
        None
    );
    // More entries than the tree is deep.
    assert_eq!(
        rule(&limits, "messaging", &[("to_number", "1"), ("extra", "x")]),
        None
    );
    // A value the tree does not name, under a key-value node: no match, no fallback.
    assert_eq!(
        rule(
            &limits,
            "messaging",
            &[("message_type", "transactional"), ("to_number", "1")]
        ),
        None
    );
    assert_eq!(rule(&limits, "messaging", &[]), None);
    assert_eq!(rule(&limits, "no-such-domain", &[("to_number", "1")]), None);
}

#[test]
fn value_prefixes_match_after_exact_values_first_in_file_order() {
    let limits = parse(MESSAGING);
    let d = "edge_proxy_per_ip";
    // Both prefixes fit: the first one written wins, as in envoyproxy/ratelimit.
    assert_eq!(
        per_unit(rule(&limits, d, &[("path", "/api/v1/users")])),
        Some((7, Unit::Minute))
    );
    assert_eq!(
        per_unit(rule(&limits, d, &[("path", "/api/")])),
        Some((7, Unit::Minute))
    );
    assert_eq!(rule(&limits, d, &[("path", "/other")]), None);
}

#[test]
fn unlimited_shadow_names_and_replaces() {
    let limits = parse(
        "
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        shadow_mode: true
        detailed_metric: true
        rate_limit:
          name: specific_limit
          requests_per_unit: 5
          unit: second
  - key: key_2
    value: 2
    descriptors:
      - key: user
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
",
    );
    assert_eq!(
        rule(&limits, "internal", &[("ldap", "x")]).unwrap().rate,
        Rate::Unlimited
    );
    let shadowed = rule(&limits, "internal", &[("key_1", "value_1"), ("user", "u")]).unwrap();
    assert!(shadowed.shadow);
    assert_eq!(shadowed.name.as_deref(), Some("specific_limit"));
    // A YAML number as a value is its text, as envoyproxy/ratelimit reads it.
    let replacing = rule(&limits, "internal", &[("key_2", "2"), ("user", "u")]).unwrap();
    assert_eq!(replacing.replaces, ["specific_limit"]);
    assert!(!replacing.shadow);
    assert_eq!(limits.rules().len(), 3);
}

#[test]
fn refusals_name_the_line() {
    let cases: &[(&str, (u64, &str))] = &[
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limt: {unit: second, requests_per_unit: 1}\n",
            (4, "rate_limt"),
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n",
            (5, "unknown rate_limit unit `fortnight`"),
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second}\n",
            (4, "needs `requests_per_unit`"),
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {requests_per_unit: 3}\n",
            (4, "needs a `unit`"),
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second}\n",
            (4, "takes no `unit`"),
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    value: b\n  - key: a\n    value: b\n",
            (5, "`d.a_b` is configured twice"),
        ),
        (
            "domain: d\ndescriptors:\n  - key: ''\n",
            (3, "`key` must not be empty"),
        ),
        ("domain: ''\n", (1, "`domain` must not be empty")),
        ("domain: d\n---\ndomain: d\n", (3, "domain `d` is configured twice")),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
            (4, "requests_per_unit must be a whole number from 0 to 4294967295 (not `-1`)"),
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: n\n      unit: second\n      requests_per_unit: 1\n      replaces: [{name: n}]\n",
            (5, "cannot replace itself"),
        ),
        ("domain: d\ndescriptors: [\n", (2, "")),
    ];
    for (text, (line, fragment)) in cases {
        let error = refusal(text);
        assert_eq!(error.at.map(|(l, _)| l), Some(*line), "{text}: {error}");
        assert!(error.message.contains(fragment), "{text}: {error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("limits.yaml:{line}:")),
            "{error}"
        );
    }
}

#[test]
fn refusals_without_a_line() {
    assert!(refusal("").message.contains("no domain"));
    let missing = Limits::load(Path::new("/nonexistent/limits.yaml")).unwrap_err();
    assert!(missing.message.contains("cannot read"), "{missing}");
}

#[test]
fn unit_numbers_and_lengths() {
    for unit in [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ] {
        assert_eq!(Unit::from_proto(unit.proto()), Some(unit));
    }
    assert_eq!(Unit::from_proto(0), None);
    assert_eq!(Unit::Week.seconds(), 7 * 86_400);
    assert_eq!(Unit::parse("HOUR"), Some(Unit::Hour));
}

#[test]
fn a_directory_is_read_in_name_order_and_skips_hidden_files() {
    let dir = std::env::temp_dir().join(format!("wasmgate-rl-limits-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    std::fs::write(dir.join("b.yaml"), "domain: b\n").unwrap();
    std::fs::write(dir.join("a.yml"), "domain: a\n").unwrap();
    std::fs::write(dir.join(".hidden.yaml"), "not: [valid\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let limits = Limits::load(&dir).unwrap();
    let mut domains: Vec<_> = limits.domains().collect();
    domains.sort();
    assert_eq!(domains, ["a", "b"]);
    std::fs::write(dir.join("c.yaml"), "domain: a\n").unwrap();
    let error = Limits::load(&dir).unwrap_err();
    assert!(
        error.file.ends_with("c.yaml") && error.message.contains("twice"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
