//! JSON read the way a token's header and claims must be: as `serde_json::Value`, but
//! an object that names a member twice, at any depth, is an error.
//!
//! RFC 7515 §4 and RFC 7519 §4 let a parser either refuse duplicate member names or
//! keep the last one; `serde_json` silently keeps the last. We refuse: a service that
//! re-parses a forwarded token with a first-wins parser would otherwise read other
//! claims than the ones checked here. Nesting is bounded by `serde_json`'s own limit
//! (128 levels), which applies to this visitor too.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Why a text is not a JSON object with unique member names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictJsonError {
    /// Not JSON, or JSON that is not an object.
    NotAnObject,
    /// Some object (the outer one or a nested one) names a member twice.
    DuplicateMember,
}

/// Parses `bytes` as one JSON object (nothing but whitespace after it) in which no
/// object names a member twice.
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, StrictJsonError> {
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let value = match UniqueMembers.deserialize(&mut reader) {
        Ok(value) => value,
        // Our visitor raises the only data errors: a duplicate member.
        Err(err) if err.is_data() => return Err(StrictJsonError::DuplicateMember),
        Err(_) => return Err(StrictJsonError::NotAnObject),
    };
    if reader.end().is_err() {
        return Err(StrictJsonError::NotAnObject);
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(StrictJsonError::NotAnObject),
    }
}

/// Builds a `Value`, refusing duplicate member names in every object.
struct UniqueMembers;

impl<'de> DeserializeSeed<'de> for UniqueMembers {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueMembers {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json never hands one over.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(UniqueMembers)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            let value = access.next_value_seed(UniqueMembers)?;
            if map.insert(name, value).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_parse_as_serde_json_parses_them() {
        let text = br#"{"a": 1, "b": [true, null, -2, 1.5, "x\u00e9"], "c": {"d": {}}, "e": 18446744073709551615}"#;
        let strict = object(text).unwrap();
        let lenient: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(Value::Object(strict), lenient);
    }

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth() {
        for text in [
            r#"{"alg": "RS256", "alg": "none"}"#,
            r#"{"sub": "a", "org": {"id": 1, "id": 2}}"#,
            r#"{"roles": [{"x": 1, "x": 1}]}"#,
            // The same name spelled with an escape is the same name.
            r#"{"sub": "a", "s\u0075b": "b"}"#,
        ] {
            assert_eq!(
                object(text.as_bytes()),
                Err(StrictJsonError::DuplicateMember),
                "{text}"
            );
        }
        // The same name in two different objects is fine.
        assert!(object(br#"{"a": {"id": 1}, "b": {"id": 2}}"#).is_ok());
    }

    #[test]
    fn what_is_not_one_object_is_refused() {
        for text in [
            "",
            "[1]",
            "\"x\"",
            "{",
            r#"{"a": 1} {"b": 2}"#,
            r#"{"a": 1}x"#,
            "{\"a\": nul}",
        ] {
            assert_eq!(
                object(text.as_bytes()),
                Err(StrictJsonError::NotAnObject),
                "{text}"
            );
        }
        assert_eq!(object(b" {\"a\": 1} \n").unwrap()["a"], json!(1));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert_eq!(object(deep.as_bytes()), Err(StrictJsonError::NotAnObject));
    }
}
