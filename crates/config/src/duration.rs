use serde::{Deserialize, Deserializer};
use std::time::Duration;

const HINT: &str = r#"expected a duration such as "250ms", "10s", "5m", "1h" or "1d""#;

/// Parses a duration written with a unit: `ms`, `s`, `m`, `h` or `d`.
///
/// Fractions are allowed (`"1.5s"`); a bare number is not, so that no reader has to
/// guess whether `30` means seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("{text:?}: {HINT}"))?;
    let (number, unit) = text.split_at(split);
    let millis_per_unit: f64 = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; {HINT}")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {HINT}"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?}: a duration must be zero or positive"));
    }
    let millis = value * millis_per_unit;
    // Ten years is far beyond any sensible timeout or TTL and keeps arithmetic safe.
    if millis > 315_360_000_000.0 {
        return Err(format!("{text:?}: longer than ten years"));
    }
    Ok(Duration::from_micros((millis * 1_000.0).round() as u64))
}

/// `#[serde(deserialize_with = "wasmgate_config::duration")]` for a required duration.
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(default, deserialize_with = "wasmgate_config::optional_duration")]`.
pub fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refusals_explain_the_format() {
        for bad in ["30", "", "s", "10 years", "-1s", "1e400s", "NaNs", "11000d"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse_duration("30").unwrap_err().contains("\"10s\""));
    }
}
