//! The configuration vocabulary shared by every wasmgate filter.
//!
//! Each filter parses its plugin configuration once, in `on_configure`, into typed
//! structs. This crate holds the pieces they have in common: a [`ConfigError`] that
//! names the offending field, JSON parsing that reports the field path, route
//! matching by path, method and host ([`RouteMatch`], [`RouteTable`], [`host`]), validated [`HeaderName`]s and header
//! values, durations written as `"10s"`, and whole numbers that also accept the
//! doubles Istio turns every `pluginConfig` number into.
//!
//! It has no dependency on proxy-wasm and is tested natively.

mod duration;
mod error;
mod header;
pub mod host;
pub mod number;
mod route;
#[cfg(feature = "schema")]
pub mod schema;

pub use duration::{duration, optional_duration, parse_duration};
pub use error::ConfigError;
pub use header::{check_header_value, HeaderName};
pub use route::{PathMatch, RouteMatch, RouteRequest, RouteTable};

use serde::de::DeserializeOwned;

/// Parses a plugin configuration (raw JSON bytes, as Envoy and Istio deliver it).
///
/// On failure the error names the JSON path of the field that was wrong
/// (`rules[1].match.prefix`), so the one log line the filter writes says where to look.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(
            "",
            "the plugin configuration is empty: expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ConfigError::new(field, err.inner().to_string())
    })?;
    deserializer
        .end()
        .map_err(|err| ConfigError::new("", err.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        rules: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn error_names_the_nested_field() {
        let err = from_json::<Outer>(br#"{"rules":[{"name":"a"},{"nmae":"b"}]}"#).unwrap_err();
        assert_eq!(err.field(), "rules[1].nmae");
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
    }

    #[test]
    fn empty_configuration_is_refused() {
        let err = from_json::<Outer>(b"  ").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(from_json::<Outer>(br#"{"rules":[]} x"#).is_err());
    }
}
