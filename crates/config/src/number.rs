//! Whole numbers that also accept integral doubles.
//!
//! Istio delivers `pluginConfig` through a `google.protobuf.Struct`, which has only
//! doubles: `"capacity": 50` reaches the filter as `50.0`. These deserializers accept
//! both forms and refuse fractions, negatives and values out of range, so the same
//! configuration parses whether it came from an Envoy file or from istiod.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

struct WholeNumber;

/// Doubles are exact for integers up to 2^53.
const MAX_EXACT_DOUBLE: f64 = 9_007_199_254_740_992.0;

impl Visitor<'_> for WholeNumber {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number (0 or more)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("expected a whole number (0 or more), got {v}")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        if v.is_finite() && v.fract() == 0.0 && (0.0..=MAX_EXACT_DOUBLE).contains(&v) {
            Ok(v as u64)
        } else {
            Err(E::custom(format!(
                "expected a whole number (0 or more), got {v}"
            )))
        }
    }
}

/// `#[serde(deserialize_with = "wasmgate_config::number::u64")]`
pub fn u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(WholeNumber)
}

/// `#[serde(deserialize_with = "wasmgate_config::number::u32")]`
pub fn u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u64(deserializer)?;
    ::core::primitive::u32::try_from(value).map_err(|_| {
        de::Error::custom(format!(
            "{value} is too large (at most {})",
            ::core::primitive::u32::MAX
        ))
    })
}

/// `#[serde(default, deserialize_with = "wasmgate_config::number::optional_u64")]`
pub fn optional_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct Optional;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            u64(d).map(Some)
        }
    }
    deserializer.deserialize_option(Optional)
}

/// `#[serde(default, deserialize_with = "wasmgate_config::number::optional_u32")]`
pub fn optional_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    match optional_u64(deserializer)? {
        None => Ok(None),
        Some(value) => ::core::primitive::u32::try_from(value)
            .map(Some)
            .map_err(|_| {
                de::Error::custom(format!(
                    "{value} is too large (at most {})",
                    ::core::primitive::u32::MAX
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Limits {
        #[serde(deserialize_with = "super::u64")]
        capacity: u64,
        #[serde(default, deserialize_with = "super::optional_u32")]
        cost: Option<u32>,
    }

    fn parse(json: &str) -> Result<Limits, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn integers_and_integral_doubles_are_the_same() {
        assert_eq!(parse(r#"{"capacity":50}"#).unwrap().capacity, 50);
        assert_eq!(parse(r#"{"capacity":50.0}"#).unwrap().capacity, 50);
        assert_eq!(
            parse(r#"{"capacity":50.0,"cost":2.0}"#).unwrap().cost,
            Some(2)
        );
        assert_eq!(parse(r#"{"capacity":1,"cost":null}"#).unwrap().cost, None);
        assert_eq!(parse(r#"{"capacity":1}"#).unwrap().cost, None);
    }

    #[test]
    fn fractions_negatives_and_strings_are_refused() {
        for bad in [
            r#"{"capacity":50.5}"#,
            r#"{"capacity":-1}"#,
            r#"{"capacity":-1.0}"#,
            r#"{"capacity":"50"}"#,
            r#"{"capacity":1e300}"#,
            r#"{"capacity":1,"cost":5000000000}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
