//! Coverage-guided fuzz targets over wasmgate's parsers and shared-data tables.
//!
//! Each target is a function here taking libFuzzer's bytes; `fuzz_targets/<name>.rs`
//! is the two-line binary cargo-fuzz builds around it (`make fuzz`, nightly), and
//! `corpus/<name>/` holds its committed seeds, which `cargo test` replays through the
//! same function on stable (this crate's tests), so every change runs them.
//!
//! A target fails by panicking: on a panic inside the code under test (which in Envoy
//! would trap the VM and kill every stream on its worker), and on a broken invariant
//! it checks with `assert!` (a cached decision that differs from a fresh one, a header
//! value that could smuggle a line break, a bucket that admits more than its limit).
//! Times are fixed or derived from the input, never read from a clock, so a crash
//! replays exactly. How to add a target: docs/fuzzing.md.

// A fuzz target reports a broken invariant by panicking: that is how libFuzzer (and
// the corpus replay test) learns of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api_key;
pub mod config;
pub mod header;
mod input;
pub mod jwt;
pub mod rate_limit;

pub use input::Input;

/// A fuzz target: the function libFuzzer calls with each input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("jwt_token", jwt::token),
    ("jwt_claims", jwt::claims),
    ("jwt_extract", jwt::extract),
    ("jwks", jwt::jwks),
    ("jwt_host_verifier", jwt::host_verifier),
    ("config_jwt", config::jwt),
    ("config_api_key", config::api_key),
    ("config_rate_limit", config::rate_limit),
    ("config_headers", config::headers),
    ("config_combined", config::combined),
    ("header_template", header::template),
    ("api_key_credential", api_key::credential),
    ("api_key_record", api_key::record),
    ("api_key_cache", api_key::cache),
    ("rate_limit", rate_limit::buckets),
];

/// The first value of header `name` in a fake request's header list.
fn first_value(headers: &[(&str, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests;
