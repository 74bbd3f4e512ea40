//! The combined module's configuration: which stages run, each with exactly the
//! configuration of the separate filter it stands for.
//!
//! `{"headers": {...}, "jwt": {...}, "api_key": {...}, "rate_limit": {...}}`: every
//! section is optional (at least one is needed) and is parsed by that filter's own
//! parser, so a section means what the same JSON means to the separate filter, and a
//! refusal names the section (`jwt.providers.idp.issuer: ...`). Stages run in a fixed
//! order, whatever order the JSON lists them in: headers, JWT, API key, rate limit
//! ([`Stage::ORDER`]). This crate only parses; it runs nothing.

use serde::Deserialize;
use serde_json::value::RawValue;
use wasmgate_api_key_auth::ApiKeyConfig;
use wasmgate_config::ConfigError;
use wasmgate_header_rules::HeaderPolicy;
use wasmgate_jwt_auth::JwtConfig;
use wasmgate_rate_limit_policy::RateLimitPolicy;

/// One of the filters the combined module can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Headers,
    Jwt,
    ApiKey,
    RateLimit,
}

impl Stage {
    /// The order stages run in on a request (responses go back the other way), as the
    /// separate filters are chained: identity headers are stripped before the auth
    /// stages set their own, and the rate limit counts the identity they set.
    pub const ORDER: [Stage; 4] = [Stage::Headers, Stage::Jwt, Stage::ApiKey, Stage::RateLimit];

    /// The section that configures this stage.
    pub fn section(self) -> &'static str {
        match self {
            Stage::Headers => "headers",
            Stage::Jwt => "jwt",
            Stage::ApiKey => "api_key",
            Stage::RateLimit => "rate_limit",
        }
    }
}

/// The validated configuration: one separate filter's configuration per stage that
/// runs.
#[derive(Debug)]
pub struct CombinedConfig {
    pub headers: Option<HeaderPolicy>,
    pub jwt: Option<JwtConfig>,
    pub api_key: Option<ApiKeyConfig>,
    pub rate_limit: Option<RateLimitPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    headers: Option<Box<RawValue>>,
    jwt: Option<Box<RawValue>>,
    api_key: Option<Box<RawValue>>,
    rate_limit: Option<Box<RawValue>>,
}

impl CombinedConfig {
    /// Parses the plugin configuration. `env` reads the Wasm VM's environment, for the
    /// API-key stage's pepper (as the separate filter does).
    pub fn from_json(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let sections: Sections = wasmgate_config::from_json(bytes)?;
        let config = CombinedConfig {
            headers: section(Stage::Headers, sections.headers, HeaderPolicy::from_json)?,
            jwt: section(Stage::Jwt, sections.jwt, JwtConfig::from_json)?,
            api_key: section(Stage::ApiKey, sections.api_key, |bytes| {
                ApiKeyConfig::from_json(bytes, env)
            })?,
            rate_limit: section(
                Stage::RateLimit,
                sections.rate_limit,
                RateLimitPolicy::from_json,
            )?,
        };
        if config.stages().is_empty() {
            return Err(ConfigError::new(
                "",
                "no stage configured: give at least one of \"headers\", \"jwt\", \"api_key\", \"rate_limit\"",
            ));
        }
        Ok(config)
    }

    /// The stages that run, in order.
    pub fn stages(&self) -> Vec<Stage> {
        Stage::ORDER
            .into_iter()
            .filter(|stage| match stage {
                Stage::Headers => self.headers.is_some(),
                Stage::Jwt => self.jwt.is_some(),
                Stage::ApiKey => self.api_key.is_some(),
                Stage::RateLimit => self.rate_limit.is_some(),
            })
            .collect()
    }
}

/// The JSON Schema of the configuration [`CombinedConfig::from_json`] reads (feature
/// `schema`): each section is the separate filter's schema.
#[cfg(feature = "schema")]
pub fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut sections = serde_json::Map::new();
    for stage in Stage::ORDER {
        let schema = match stage {
            Stage::Headers => HeaderPolicy::config_schema(generator),
            Stage::Jwt => JwtConfig::config_schema(generator),
            Stage::ApiKey => ApiKeyConfig::config_schema(generator),
            Stage::RateLimit => RateLimitPolicy::config_schema(generator),
        };
        sections.insert(stage.section().to_owned(), schema.to_value());
    }
    schemars::json_schema!({
        "description": "The combined module: one section per stage, each configured as the separate filter; at least one.",
        "type": "object",
        "properties": sections,
        "additionalProperties": false,
        "minProperties": 1,
    })
}

/// A stage's section parsed by the separate filter's parser; a refusal names the
/// section.
fn section<T>(
    stage: Stage,
    raw: Option<Box<RawValue>>,
    parse: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    raw.map(|raw| parse(raw.get().as_bytes()).map_err(|e| e.within(stage.section())))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(json: &str) -> Result<CombinedConfig, String> {
        CombinedConfig::from_json(json.as_bytes(), &no_env).map_err(|e| e.to_string())
    }

    const JWT: &str = r#"{"providers": {"idp": {"issuer": "https://idp", "audiences": ["api"], "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}}, "default": {"providers": ["idp"]}}"#;
    const RATE_LIMIT: &str =
        r#"{"default": {"limits": [{"requests": 5.0, "per": "1s"}]}, "table": {"slots": 16}}"#;

    #[test]
    fn stages_run_in_the_fixed_order_whatever_the_json_order() {
        let config = parse(&format!(
            r#"{{"rate_limit": {RATE_LIMIT}, "jwt": {JWT}, "headers": {{"strip_inbound": ["x-user-id"]}}}}"#
        ))
        .unwrap();
        assert_eq!(
            config.stages(),
            vec![Stage::Headers, Stage::Jwt, Stage::RateLimit]
        );
        assert!(config.api_key.is_none());
    }

    #[test]
    fn a_section_means_what_it_means_to_the_separate_filter() {
        let config = parse(&format!(r#"{{"jwt": {JWT}}}"#)).unwrap();
        let alone = JwtConfig::from_json(JWT.as_bytes()).unwrap();
        let jwt = config.jwt.unwrap();
        assert_eq!(jwt.output_headers, alone.output_headers);
        assert_eq!(jwt.providers.len(), alone.providers.len());
        assert_eq!(jwt.token_cache_entries, alone.token_cache_entries);
    }

    #[test]
    fn refusals_name_the_section_and_the_field() {
        let cases = [
            (
                r#"{"headers": {"strip_inbound": ["x user"]}}"#,
                "headers.strip_inbound[0]: ",
            ),
            (
                r#"{"rate_limit": {"default": {"limits": [{"requests": 0, "per": "1s"}]}}}"#,
                "rate_limit.default.limits[0].requests: ",
            ),
            (
                r#"{"api_key": {"store": {"cluster": ""}}}"#,
                "api_key.store.cluster: ",
            ),
            (
                r#"{"jwt": {"providers": {}, "default": {"public": true}}}"#,
                "jwt.providers: ",
            ),
            (
                r#"{"jwt": {"providers": {}}}"#,
                "jwt: missing field `default`",
            ),
            (
                r#"{"jwt": {"providers": {"idp": {}}}}"#,
                "jwt.providers.idp",
            ),
            (r#"{"header": {}}"#, "unknown field `header`"),
            (r#"{}"#, "no stage configured"),
            (r#"{"headers": null}"#, "no stage configured"),
            ("", "empty"),
        ];
        for (json, wanted) in cases {
            let err = parse(json).unwrap_err();
            assert!(
                err.contains(wanted),
                "{json}\n  gave: {err}\n  wanted: {wanted}"
            );
        }
    }

    #[test]
    fn the_api_key_pepper_comes_from_the_environment() {
        let env =
            |name: &str| (name == "PEPPER").then(|| "a pepper of sixteen bytes or more".into());
        let json = r#"{"api_key": {"store": {"cluster": "keystore"}, "pepper_env": "PEPPER"}}"#;
        assert!(CombinedConfig::from_json(json.as_bytes(), &env).is_ok());
        assert!(parse(json).unwrap_err().contains("api_key.pepper_env: "));
    }
}
