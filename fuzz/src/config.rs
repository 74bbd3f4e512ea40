//! Plugin configurations: each filter's parser and the combined module's.
//!
//! Besides never panicking, a configuration that parses must parse to the same
//! configuration in the form Istio delivers it: istiod carries `pluginConfig` in a
//! `google.protobuf.Struct`, so every number arrives as a double (`50` as `50.0`) and
//! the JSON is written out anew (keys in another order, other whitespace and escapes).
//! [`istio_form`] makes that form; the validated configurations have no `PartialEq`,
//! so "the same" is their `Debug` rendering, which shows every field (key material
//! excepted: JWKS keys print their type only).

use serde_json::{Number, Value};
use std::fmt::Debug;
use wasmgate_api_key_auth::ApiKeyConfig;
use wasmgate_combined_config::CombinedConfig;
use wasmgate_config::ConfigError;
use wasmgate_header_rules::HeaderPolicy;
use wasmgate_jwt_auth::JwtConfig;
use wasmgate_rate_limit_policy::RateLimitPolicy;

/// Doubles hold every integer up to 2^53 exactly; larger ones change in a `Struct`
/// (and the number parsers refuse such doubles), so they are left as written.
const MAX_EXACT: u64 = 1 << 53;

/// `value` as istiod hands it to the filter: whole numbers as doubles.
pub fn istio_form(value: &Value) -> Value {
    match value {
        Value::Number(number) => {
            let exact = number.as_u64().is_some_and(|n| n <= MAX_EXACT)
                || number
                    .as_i64()
                    .is_some_and(|n| n.unsigned_abs() <= MAX_EXACT);
            match number.as_f64().filter(|_| exact).and_then(Number::from_f64) {
                Some(double) => Value::Number(double),
                None => value.clone(),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(istio_form).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| (key.clone(), istio_form(item)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The pepper every API-key configuration that names one finds (32 bytes and more).
fn env(_name: &str) -> Option<String> {
    Some("fuzz-pepper-0123456789abcdef0123456789".to_owned())
}

/// Parses `data`; when it parses, checks that its Istio form parses to the same.
fn round_trip<T: Debug>(data: &[u8], parse: impl Fn(&[u8]) -> Result<T, ConfigError>) {
    let Ok(config) = parse(data) else {
        return;
    };
    let value: Value = serde_json::from_slice(data).expect("a configuration that parsed is JSON");
    let delivered = istio_form(&value).to_string();
    match parse(delivered.as_bytes()) {
        Ok(again) => assert_eq!(
            format!("{config:?}"),
            format!("{again:?}"),
            "the Istio form {delivered} parses differently"
        ),
        Err(err) => panic!("the Istio form {delivered} is refused: {err}"),
    }
}

/// `config_jwt`: the JWT filter's configuration.
pub fn jwt(data: &[u8]) {
    round_trip(data, JwtConfig::from_json);
}

/// `config_api_key`: the API-key filter's configuration.
pub fn api_key(data: &[u8]) {
    round_trip(data, |bytes| ApiKeyConfig::from_json(bytes, &env));
}

/// `config_rate_limit`: the rate-limit filter's configuration.
pub fn rate_limit(data: &[u8]) {
    round_trip(data, RateLimitPolicy::from_json);
}

/// `config_headers`: the header filter's configuration.
pub fn headers(data: &[u8]) {
    round_trip(data, HeaderPolicy::from_json);
}

/// `config_combined`: the combined module's configuration (every stage's parser).
pub fn combined(data: &[u8]) {
    round_trip(data, |bytes| CombinedConfig::from_json(bytes, &env));
}
