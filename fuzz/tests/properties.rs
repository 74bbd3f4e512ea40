//! Property tests (proptest) over the fuzz targets' fixtures, run by `cargo test`:
//!
//! * Every configuration that parses re-serialises to an equal configuration: the
//!   shipped configurations (the `config_*` seeds), edited at random (values replaced
//!   by numbers, doubles, strings and durations; members removed), written out in the
//!   form Istio delivers (numbers as doubles, keys reordered) and pretty-printed, parse
//!   to configurations equal to the first (their `Debug` form; the validated types
//!   have no `PartialEq`): see `wasmgate_fuzz::config`.
//! * Any byte string as a token gives a value, never a panic: parsing, and a whole
//!   decision in every place the JWT filter looks for a token, with the checks of the
//!   `jwt_token` target (a cached decision equals a fresh one, forwarded headers are
//!   valid header values).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test]s only).
#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use wasmgate_fuzz::config::istio_form;

/// The committed seeds of a `config_*` target, as JSON.
fn shipped(target: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut configs: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap()
        })
        .collect();
    configs.sort_by_key(Value::to_string);
    assert!(!configs.is_empty(), "{target} has no seeds");
    configs
}

/// Every place in `value` (a path of object keys and array indexes).
fn places(value: &Value, here: Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let mut path = here.clone();
                path.push(Value::from(key.as_str()));
                places(item, path, out);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let mut path = here.clone();
                path.push(Value::from(index));
                places(item, path, out);
            }
        }
        _ => {}
    }
    out.push(here);
}

/// Replaces (or, for `None`, removes) what is at `path`.
fn edit(value: &mut Value, path: &[Value], new: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        if let Some(new) = new {
            *value = new;
        }
        return;
    };
    let mut node = value;
    for step in parents {
        node = match step {
            Value::String(key) => &mut node[key.as_str()],
            _ => &mut node[step.as_u64().unwrap() as usize],
        };
    }
    match (node, last, new) {
        (Value::Object(map), Value::String(key), None) => {
            map.remove(key);
        }
        (Value::Object(map), Value::String(key), Some(new)) => {
            map.insert(key.clone(), new);
        }
        (Value::Array(items), index, new) => {
            let index = index.as_u64().unwrap() as usize;
            match new {
                Some(new) => items[index] = new,
                None => {
                    items.remove(index);
                }
            }
        }
        _ => {}
    }
}

/// A replacement value: the kinds configurations hold, near their limits.
fn replacement() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        (0u64..=100_001).prop_map(|n| Some(Value::from(n))),
        any::<u64>().prop_map(|n| Some(Value::from(n))),
        (0u32..70_000).prop_map(|n| Some(Value::from(f64::from(n) + 0.5))),
        (-5i64..0).prop_map(|n| Some(Value::from(n))),
        any::<bool>().prop_map(|b| Some(Value::from(b))),
        prop::sample::select(vec![
            "250ms",
            "1.5s",
            "10s",
            "5m",
            "1h",
            "1d",
            "3650d",
            "0s",
            "-1s",
            "10",
            "x-user-id",
            "X-Tenant-ID",
            ":path",
            "/api/",
            "",
            "sk_live_",
            "RS256",
            "HS256",
            "https://idp",
        ])
        .prop_map(|s| Some(Value::from(s))),
    ]
}

fn check(
    target: &str,
    parse: fn(&[u8]) -> Result<String, String>,
    base: usize,
    edits: &[(usize, Option<Value>)],
) -> Result<(), TestCaseError> {
    let configs = shipped(target);
    let mut config = configs[base % configs.len()].clone();
    for (place, new) in edits {
        let mut all = Vec::new();
        places(&config, Vec::new(), &mut all);
        let path = all[place % all.len()].clone();
        edit(&mut config, &path, new.clone());
    }
    let Ok(first) = parse(config.to_string().as_bytes()) else {
        return Ok(());
    };
    for written in [
        istio_form(&config).to_string(),
        serde_json::to_string_pretty(&config).unwrap(),
    ] {
        let again = parse(written.as_bytes());
        prop_assert_eq!(again.as_ref(), Ok(&first), "{} parses differently", written);
    }
    Ok(())
}

fn env(_: &str) -> Option<String> {
    Some("property-pepper-0123456789abcdef".to_owned())
}

fn debug<T: std::fmt::Debug, E: std::fmt::Display>(parsed: Result<T, E>) -> Result<String, String> {
    parsed.map(|c| format!("{c:?}")).map_err(|e| e.to_string())
}

fn edits() -> impl Strategy<Value = Vec<(usize, Option<Value>)>> {
    vec((any::<usize>(), replacement()), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn jwt_configurations_re_serialise_to_equal_ones(base in any::<usize>(), edits in edits()) {
        check("config_jwt", |b| debug(wasmgate_jwt_auth::JwtConfig::from_json(b)), base, &edits)?;
    }

    #[test]
    fn api_key_configurations_re_serialise_to_equal_ones(base in any::<usize>(), edits in edits()) {
        check("config_api_key", |b| debug(wasmgate_api_key_auth::ApiKeyConfig::from_json(b, &env)), base, &edits)?;
    }

    #[test]
    fn rate_limit_configurations_re_serialise_to_equal_ones(base in any::<usize>(), edits in edits()) {
        check("config_rate_limit", |b| debug(wasmgate_rate_limit_policy::RateLimitPolicy::from_json(b)), base, &edits)?;
    }

    #[test]
    fn header_configurations_re_serialise_to_equal_ones(base in any::<usize>(), edits in edits()) {
        check("config_headers", |b| debug(wasmgate_header_rules::HeaderPolicy::from_json(b)), base, &edits)?;
    }

    #[test]
    fn combined_configurations_re_serialise_to_equal_ones(base in any::<usize>(), edits in edits()) {
        check("config_combined", |b| debug(wasmgate_combined_config::CombinedConfig::from_json(b, &env)), base, &edits)?;
    }

    #[test]
    fn any_byte_string_as_a_token_gives_a_value(shape in any::<u8>(), token in vec(any::<u8>(), 0..600)) {
        // Parsing alone: a value (Ok or a Malformed reason), never a panic.
        let text = String::from_utf8_lossy(&token);
        let _ = wasmgate_jwt_auth::token::parse(&text);
        // A whole decision, with the jwt_token target's checks.
        let mut data = vec![shape];
        data.extend_from_slice(&token);
        wasmgate_fuzz::jwt::token(&data);
    }

    #[test]
    fn a_token_with_bytes_changed_gives_a_value(seed in any::<usize>(), flips in vec((any::<usize>(), any::<u8>()), 1..6)) {
        // Near-valid tokens reach further than random bytes: the committed seeds
        // (validly signed) with a few bytes replaced.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/jwt_token");
        let mut seeds: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        seeds.sort();
        let mut data = std::fs::read(&seeds[seed % seeds.len()]).unwrap();
        for (at, byte) in flips {
            let len = data.len();
            data[at % len] = byte;
        }
        wasmgate_fuzz::jwt::token(&data);
    }
}
