//! The five configurations wasmgate-validate knows, each checked by the filter's own
//! parser: the function its `on_configure` calls, on the same bytes.

use schemars::generate::SchemaSettings;
use schemars::Schema;
use serde_json::Value;
use wasmgate_api_key_auth::ApiKeyConfig;
use wasmgate_combined_config::CombinedConfig;
use wasmgate_config::ConfigError;
use wasmgate_header_rules::HeaderPolicy;
use wasmgate_jwt_auth::JwtConfig;
use wasmgate_rate_limit_policy::RateLimitPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Filter {
    Headers,
    Jwt,
    ApiKey,
    RateLimit,
    Combined,
}

impl Filter {
    pub const ALL: [Filter; 5] = [
        Filter::Headers,
        Filter::Jwt,
        Filter::ApiKey,
        Filter::RateLimit,
        Filter::Combined,
    ];

    /// The name of the filter's `.wasm` (build/wasm/<name>.wasm), OCI image and docs page.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Headers => "headers",
            Filter::Jwt => "jwt",
            Filter::ApiKey => "api-key",
            Filter::RateLimit => "rate-limit",
            Filter::Combined => "combined",
        }
    }

    /// The filter a module or plugin name stands for: `jwt`, `jwt.wasm`,
    /// `wasmgate-jwt`, `wasmgate_jwt.wasm` (cargo's file name), `istio-system.wasmgate-jwt`
    /// (a WasmPlugin as Envoy names it).
    pub fn from_name(name: &str) -> Option<Filter> {
        let name = name
            .rsplit('/')
            .next()
            .unwrap_or(name)
            .trim()
            .to_ascii_lowercase();
        let name = name.strip_suffix(".wasm").unwrap_or(&name);
        let name = name.rsplit('.').next().unwrap_or(name).replace('_', "-");
        let name = name.strip_prefix("wasmgate-").unwrap_or(&name);
        Filter::ALL.into_iter().find(|filter| filter.name() == name)
    }

    /// Parses `bytes` as the filter's plugin configuration. `env` is the Wasm VM's
    /// environment (the API-key filter reads its pepper there).
    pub fn check(
        self,
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        match self {
            Filter::Headers => HeaderPolicy::from_json(bytes).map(drop),
            Filter::Jwt => JwtConfig::from_json(bytes).map(drop),
            Filter::ApiKey => ApiKeyConfig::from_json(bytes, env).map(drop),
            Filter::RateLimit => RateLimitPolicy::from_json(bytes).map(drop),
            Filter::Combined => CombinedConfig::from_json(bytes, env).map(drop),
        }
    }

    /// The JSON Schema (draft 2020-12) of the configuration, from the parser's types.
    pub fn schema(self) -> Schema {
        let mut generator = SchemaSettings::draft2020_12().into_generator();
        let mut schema = match self {
            Filter::Headers => HeaderPolicy::config_schema(&mut generator),
            Filter::Jwt => JwtConfig::config_schema(&mut generator),
            Filter::ApiKey => ApiKeyConfig::config_schema(&mut generator),
            Filter::RateLimit => RateLimitPolicy::config_schema(&mut generator),
            Filter::Combined => wasmgate_combined_config::config_schema(&mut generator),
        };
        let mut root = Schema::default();
        root.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        root.insert(
            "title".into(),
            format!("wasmgate {} filter configuration", self.name()).into(),
        );
        if let Some(object) = schema.as_object_mut() {
            for (key, value) in std::mem::take(object) {
                root.insert(key, value);
            }
        }
        let definitions = generator.take_definitions(true);
        if !definitions.is_empty() {
            root.insert("$defs".into(), definitions.into());
        }
        if let Some(object) = root.as_object_mut() {
            object.values_mut().for_each(durations_as_written);
        }
        root
    }
}

/// A default that schemars took from a `std::time::Duration` (`{"secs": 60, "nanos":
/// 0}`, its serde form) written as a configuration writes it (`"60s"`).
fn durations_as_written(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(default) = object.get_mut("default") {
                if let Some(text) = duration_text(default) {
                    *default = Value::String(text);
                }
            }
            object.values_mut().for_each(durations_as_written);
        }
        Value::Array(items) => items.iter_mut().for_each(durations_as_written),
        _ => {}
    }
}

fn duration_text(value: &Value) -> Option<String> {
    let object = value.as_object()?;
    if object.len() != 2 {
        return None;
    }
    let secs = object.get("secs")?.as_u64()?;
    let nanos = object.get("nanos")?.as_u64()?;
    Some(if nanos == 0 {
        format!("{secs}s")
    } else {
        format!("{}ms", secs * 1000 + nanos / 1_000_000)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_defaults_are_written_as_in_a_configuration() {
        let schema = Filter::ApiKey.schema().to_value();
        let cache = &schema["$defs"]["CacheSpec"]["properties"];
        assert_eq!(cache["ttl"]["default"], "60s");
        assert_eq!(cache["error_backoff"]["default"], "1s");
        assert_eq!(
            duration_text(&serde_json::json!({"secs": 0, "nanos": 250_000_000})).as_deref(),
            Some("250ms")
        );
        assert_eq!(duration_text(&serde_json::json!({"secs": 1})), None);
    }

    #[test]
    fn names_as_written_in_configs_and_manifests() {
        for (name, filter) in [
            ("jwt", Some(Filter::Jwt)),
            ("build/wasm/x.wasm", None),
            ("build/wasm/jwt.wasm", Some(Filter::Jwt)),
            ("rate-limit.wasm", Some(Filter::RateLimit)),
            ("wasmgate_api_key.wasm", Some(Filter::ApiKey)),
            ("wasmgate-headers", Some(Filter::Headers)),
            ("istio-system.wasmgate-combined", Some(Filter::Combined)),
            ("wasmgate.jwt", Some(Filter::Jwt)),
            ("my-filter", None),
            ("", None),
        ] {
            assert_eq!(Filter::from_name(name), filter, "{name}");
        }
    }
}
