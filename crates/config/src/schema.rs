//! JSON Schema pieces for the shapes this crate parses by hand (feature `schema`).
//!
//! The filters' configuration types derive `schemars::JsonSchema` behind their own
//! `schema` feature; a field read by [`duration`](crate::duration) says
//! `#[cfg_attr(feature = "schema", schemars(with = "wasmgate_config::schema::DurationText"))]`
//! so its schema is the text the parser reads, not `std::time::Duration`'s fields.
//! Only `wasmgate-validate` turns the feature on: no `.wasm` carries it.

use crate::HeaderName;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

/// A duration as written in a configuration: a number and a unit (`"250ms"`, `"1.5s"`,
/// `"5m"`, `"1h"`, `"1d"`). The ten-year ceiling is the parser's alone.
pub struct DurationText;

/// What [`parse_duration`](crate::parse_duration) reads: optional blanks, a number
/// without sign or exponent, a unit.
pub const DURATION_PATTERN: &str = r"^\s*\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d)\s*$";

/// RFC 9110 `token` characters, optionally after a `:` (pseudo-headers).
pub const HEADER_NAME_PATTERN: &str = r"^:?[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration with a unit: ms, s, m, h or d (\"250ms\", \"1.5s\", \"5m\"); at most ten years.",
        })
    }
}

impl JsonSchema for HeaderName {
    fn schema_name() -> Cow<'static, str> {
        "HeaderName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": HEADER_NAME_PATTERN,
            "description": "An HTTP header name (RFC 9110 token characters; any case, used lower-cased).",
        })
    }
}
