//! The API-key filter's configuration, parsed and validated once per `on_configure`.

use crate::cache::CachePolicy;
use crate::credential::{is_unreserved, KeyFormat, KeySources, RequestEdit};
use crate::hash::{KeyHash, KeyHasher, PepperError};
use crate::record::KeyRecord;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::time::Duration;
use wasmgate_config::{check_header_value, ConfigError, HeaderName, RouteMatch, RouteRequest};

/// Most cache slots: every slot is a shared-data key created at start-up in every VM.
pub const MAX_SLOTS: u32 = 262_144;
/// How long past the lookup timeout a claimed lookup and a waiting request are still
/// honoured: covers the tick that dispatches the lookup and the poll that sees its answer.
pub const LOOKUP_GRACE: Duration = Duration::from_millis(250);
/// Lookups in flight per Envoy by default, and at most.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
pub const MAX_IN_FLIGHT: u32 = 1024;
/// Longest `ttl`, `negative_ttl` and `max_stale`: together they bound how long a
/// revoked key can keep working while the store fails.
pub const MAX_CACHE_DURATION: Duration = Duration::from_secs(3600);

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct ConfigSpec {
    store: StoreSpec,
    #[serde(default)]
    sources: SourcesSpec,
    #[serde(default)]
    format: FormatSpec,
    pepper_env: Option<String>,
    #[serde(default)]
    cache: CacheSpec,
    #[serde(default)]
    forward: ForwardSpec,
    #[serde(default = "yes")]
    hide_credentials: bool,
    #[serde(default)]
    fail_open: bool,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    skip: Vec<RouteMatch>,
    #[serde(default = "yes")]
    strip_on_skip: bool,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct StoreSpec {
    cluster: String,
    #[serde(default = "default_path_prefix")]
    path_prefix: String,
    authority: Option<String>,
    #[serde(
        default = "default_timeout",
        deserialize_with = "wasmgate_config::duration"
    )]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "wasmgate_config::schema::DurationText")
    )]
    timeout: Duration,
    #[serde(
        default = "default_max_in_flight",
        deserialize_with = "wasmgate_config::number::u32"
    )]
    max_in_flight: u32,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
struct SourcesSpec {
    headers: Vec<HeaderName>,
    bearer: bool,
    query: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
struct FormatSpec {
    prefixes: Vec<String>,
    #[serde(deserialize_with = "wasmgate_config::number::u32")]
    min_length: u32,
    #[serde(deserialize_with = "wasmgate_config::number::u32")]
    max_length: u32,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
struct CacheSpec {
    #[serde(deserialize_with = "wasmgate_config::number::u32")]
    slots: u32,
    #[serde(deserialize_with = "wasmgate_config::duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "wasmgate_config::schema::DurationText")
    )]
    ttl: Duration,
    #[serde(deserialize_with = "wasmgate_config::duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "wasmgate_config::schema::DurationText")
    )]
    negative_ttl: Duration,
    #[serde(deserialize_with = "wasmgate_config::duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "wasmgate_config::schema::DurationText")
    )]
    max_stale: Duration,
    #[serde(deserialize_with = "wasmgate_config::duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "wasmgate_config::schema::DurationText")
    )]
    error_backoff: Duration,
}

/// `null` turns a header off; leaving the field out keeps the default name.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
struct ForwardSpec {
    tenant_id: Option<HeaderName>,
    key_id: Option<HeaderName>,
    plan: Option<HeaderName>,
    scopes: Option<HeaderName>,
}

fn yes() -> bool {
    true
}

fn default_realm() -> String {
    "wasmgate".to_owned()
}

fn default_path_prefix() -> String {
    "/v1/keys".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}

fn header(name: &str) -> Option<HeaderName> {
    HeaderName::new(name).ok()
}

impl Default for SourcesSpec {
    fn default() -> Self {
        Self {
            headers: header("x-api-key").into_iter().collect(),
            bearer: false,
            query: None,
        }
    }
}

impl Default for FormatSpec {
    fn default() -> Self {
        Self {
            prefixes: vec!["sk_live_".to_owned(), "sk_test_".to_owned()],
            min_length: 20,
            max_length: 128,
        }
    }
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            slots: 4096,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            max_stale: Duration::from_secs(300),
            error_backoff: Duration::from_secs(1),
        }
    }
}

impl Default for ForwardSpec {
    fn default() -> Self {
        Self {
            tenant_id: header("x-tenant-id"),
            key_id: header("x-api-key-id"),
            plan: header("x-plan"),
            scopes: None,
        }
    }
}

/// Where and how the key store is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The Envoy cluster the lookup callout goes through.
    pub cluster: String,
    /// Path before the hash, without a trailing `/`.
    pub path_prefix: String,
    /// `:authority` of the lookup request.
    pub authority: String,
    /// Whole lookup, connection included; Envoy ends the callout then.
    pub timeout: Duration,
    /// Most lookups in flight at once, all workers of one Envoy together.
    pub max_in_flight: u32,
}

impl StoreSettings {
    pub fn lookup_path(&self, hash: &KeyHash) -> String {
        format!("{}/{}", self.path_prefix, hash.to_hex())
    }
}

/// The headers a successful lookup sets on the request (`None`: not forwarded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardHeaders {
    pub tenant_id: Option<HeaderName>,
    pub key_id: Option<HeaderName>,
    pub plan: Option<HeaderName>,
    /// Scopes, space-separated (as in an OAuth `scope`).
    pub scopes: Option<HeaderName>,
}

impl ForwardHeaders {
    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        [&self.tenant_id, &self.key_id, &self.plan, &self.scopes]
            .into_iter()
            .flatten()
    }

    /// Removes client-sent copies: run on every request, whatever its outcome, so an
    /// upstream never sees an identity header the gateway did not set.
    pub fn strip_edits(&self) -> impl Iterator<Item = RequestEdit<'_>> {
        self.names().map(|name| RequestEdit::Remove(name.as_str()))
    }

    /// The identity of an allowed key, as header edits.
    pub fn identity_edits<'a>(&'a self, record: &'a KeyRecord) -> Vec<RequestEdit<'a>> {
        // Joined only when the header is on (it is off by default).
        let scopes = self
            .scopes
            .as_ref()
            .map(|name| (name, record.scopes.join(" ")))
            .filter(|(_, joined)| !joined.is_empty())
            .map(|(name, joined)| (name, Cow::Owned(joined)));
        [
            (&self.tenant_id, Some(record.tenant_id.as_str())),
            (&self.key_id, Some(record.key_id.as_str())),
            (&self.plan, record.plan.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.as_ref()?, Cow::Borrowed(value?))))
        .chain(scopes)
        .map(|(name, value)| RequestEdit::Set(name.as_str(), value))
        .collect()
    }
}

/// The API-key filter's validated configuration.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    pub store: StoreSettings,
    pub sources: KeySources,
    pub format: KeyFormat,
    pub hasher: KeyHasher,
    pub cache: CachePolicy,
    pub forward: ForwardHeaders,
    /// Remove the key from the request before it goes upstream.
    pub hide_credentials: bool,
    /// Let requests through when the store cannot be asked and nothing usable is cached.
    pub fail_open: bool,
    /// The `realm` of `WWW-Authenticate: ApiKey realm="..."`.
    pub realm: String,
    /// Requests on these routes pass without a key.
    pub skip: Vec<RouteMatch>,
    /// Remove the `forward` headers on `skip` routes too. Off where an earlier filter
    /// sets the same headers on those routes (the JWT filter's `x-tenant-id` in a
    /// chain behind the header filter, which removed the client's copies first).
    pub strip_on_skip: bool,
    /// Shared-data key prefix of this configuration's cache table.
    pub cache_namespace: String,
}

impl ApiKeyConfig {
    /// Parses the plugin configuration. `env` reads the Wasm VM's environment (where
    /// the pepper lives, so that it never appears in the plugin configuration).
    pub fn from_json(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let spec: ConfigSpec = wasmgate_config::from_json(bytes)?;
        spec.compile(env)
    }

    /// The JSON Schema of the configuration [`Self::from_json`] reads (feature `schema`):
    /// the shape only, its nested types' schemas go into `generator`'s definitions.
    #[cfg(feature = "schema")]
    pub fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <ConfigSpec as schemars::JsonSchema>::json_schema(generator)
    }

    /// Whether a request passes without a key; `authority` is its `:authority`.
    pub fn skips(&self, method: &str, authority: Option<&str>, path: &str) -> bool {
        let request = RouteRequest::new(method, path).with_authority(authority);
        self.skip.iter().any(|route| route.matches(&request))
    }
}

impl ConfigSpec {
    fn compile(self, env: &dyn Fn(&str) -> Option<String>) -> Result<ApiKeyConfig, ConfigError> {
        let store = self.store.compile().map_err(|e| e.within("store"))?;
        let sources = self.sources.compile().map_err(|e| e.within("sources"))?;
        let format = self.format.compile().map_err(|e| e.within("format"))?;
        let hasher = match self.pepper_env {
            None => KeyHasher::Sha256,
            Some(name) => pepper(&name, env).map_err(|e| e.within("pepper_env"))?,
        };
        let cache = self
            .cache
            .compile(store.timeout, store.max_in_flight)
            .map_err(|e| e.within("cache"))?;
        let forward = ForwardHeaders {
            tenant_id: self.forward.tenant_id,
            key_id: self.forward.key_id,
            plan: self.forward.plan,
            scopes: self.forward.scopes,
        };
        check_forward(&forward, &sources).map_err(|e| e.within("forward"))?;
        check_realm(&self.realm).map_err(|e| e.within("realm"))?;
        let cache_namespace = namespace(&store, cache.slots);
        Ok(ApiKeyConfig {
            store,
            sources,
            format,
            hasher,
            cache,
            forward,
            hide_credentials: self.hide_credentials,
            fail_open: self.fail_open,
            realm: self.realm,
            skip: self.skip,
            strip_on_skip: self.strip_on_skip,
            cache_namespace,
        })
    }
}

impl StoreSpec {
    fn compile(self) -> Result<StoreSettings, ConfigError> {
        if self.cluster.trim().is_empty() {
            return Err(ConfigError::new(
                "cluster",
                "names the Envoy cluster of the key store; it may not be empty",
            ));
        }
        let prefix = self.path_prefix.trim_end_matches('/').to_owned();
        if !self.path_prefix.starts_with('/')
            || self.path_prefix.contains(['?', '#'])
            || self.path_prefix.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(ConfigError::new(
                "path_prefix",
                format!(
                    "{:?} must start with \"/\" and hold no '?', '#', spaces or control characters",
                    self.path_prefix
                ),
            ));
        }
        let authority = self.authority.unwrap_or_else(|| self.cluster.clone());
        if authority.is_empty() || authority.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "authority",
                "must be a host name, without spaces",
            ));
        }
        check_header_value(&authority).map_err(|p| ConfigError::new("authority", p))?;
        if self.timeout < Duration::from_millis(1) || self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new("timeout", "must be between 1ms and 60s"));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(ConfigError::new(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        Ok(StoreSettings {
            cluster: self.cluster,
            path_prefix: prefix,
            authority,
            timeout: self.timeout,
            max_in_flight: self.max_in_flight,
        })
    }
}

impl SourcesSpec {
    fn compile(self) -> Result<KeySources, ConfigError> {
        for (i, name) in self.headers.iter().enumerate() {
            if name.is_pseudo() || name.as_str() == "host" {
                return Err(ConfigError::new(
                    format!("headers[{i}]"),
                    format!("{name} cannot carry an API key"),
                ));
            }
        }
        if let Some(param) = &self.query {
            if param.is_empty() || !param.bytes().all(is_unreserved) {
                return Err(ConfigError::new(
                    "query",
                    format!(
                        "{param:?} is not a plain query parameter name (letters, digits, - . _ ~)"
                    ),
                ));
            }
        }
        if self.headers.is_empty() && !self.bearer && self.query.is_none() {
            return Err(ConfigError::new(
                "",
                "no key source: list at least one header, or enable bearer or query",
            ));
        }
        Ok(KeySources {
            headers: self.headers,
            bearer: self.bearer,
            query: self.query,
        })
    }
}

impl FormatSpec {
    fn compile(self) -> Result<KeyFormat, ConfigError> {
        let (min, max) = (self.min_length as usize, self.max_length as usize);
        if min == 0 {
            return Err(ConfigError::new("min_length", "must be at least 1"));
        }
        if max > 4096 {
            return Err(ConfigError::new("max_length", "must be at most 4096"));
        }
        if min > max {
            return Err(ConfigError::new(
                "min_length",
                format!("{min} is larger than max_length {max}"),
            ));
        }
        for (i, prefix) in self.prefixes.iter().enumerate() {
            if prefix.is_empty() || !prefix.bytes().all(is_unreserved) || prefix.len() >= max {
                return Err(ConfigError::new(
                    format!("prefixes[{i}]"),
                    format!("{prefix:?} must be non-empty, shorter than max_length, and use only letters, digits, - . _ ~"),
                ));
            }
        }
        Ok(KeyFormat {
            prefixes: self.prefixes,
            min_length: min,
            max_length: max,
        })
    }
}

impl CacheSpec {
    fn compile(self, timeout: Duration, max_in_flight: u32) -> Result<CachePolicy, ConfigError> {
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(ConfigError::new(
                "slots",
                format!("must be between 1 and {MAX_SLOTS}"),
            ));
        }
        // Below a second, a cached answer could expire between two polls of a waiting
        // request, which would then ask the store again.
        for (field, value) in [("ttl", self.ttl), ("negative_ttl", self.negative_ttl)] {
            if value < Duration::from_secs(1) || value > MAX_CACHE_DURATION {
                return Err(ConfigError::new(field, "must be between 1s and 1h"));
            }
        }
        if self.max_stale > MAX_CACHE_DURATION {
            return Err(ConfigError::new("max_stale", "must be at most 1h"));
        }
        if self.error_backoff > Duration::from_secs(60) {
            return Err(ConfigError::new("error_backoff", "must be at most 60s"));
        }
        Ok(CachePolicy {
            slots: self.slots,
            ttl_ms: millis(self.ttl),
            negative_ttl_ms: millis(self.negative_ttl),
            max_stale_ms: millis(self.max_stale),
            error_backoff_ms: millis(self.error_backoff),
            claim_ms: millis(timeout + LOOKUP_GRACE),
            max_in_flight,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

fn pepper(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<KeyHasher, ConfigError> {
    KeyHasher::from_pepper_env(name, env).map_err(|err| {
        let problem = match err {
            // Where the filter reads it from, and how to put it there.
            PepperError::Unset { .. } => {
                format!("{err} in the Wasm VM (add it to vm_config.environment_variables)")
            }
            _ => err.to_string(),
        };
        ConfigError::new("", problem)
    })
}

fn check_forward(forward: &ForwardHeaders, sources: &KeySources) -> Result<(), ConfigError> {
    let fields = [
        ("tenant_id", &forward.tenant_id),
        ("key_id", &forward.key_id),
        ("plan", &forward.plan),
        ("scopes", &forward.scopes),
    ];
    for (i, (field, name)) in fields.iter().enumerate() {
        let Some(name) = name else { continue };
        if name.is_pseudo() || matches!(name.as_str(), "host" | "authorization") {
            return Err(ConfigError::new(
                *field,
                format!("{name} cannot be set by this filter"),
            ));
        }
        if sources.headers.contains(name) {
            return Err(ConfigError::new(
                *field,
                format!("{name} is also a key source header"),
            ));
        }
        if fields[..i]
            .iter()
            .any(|(_, other)| other.as_ref() == Some(name))
        {
            return Err(ConfigError::new(
                *field,
                format!("{name} is already used by another field"),
            ));
        }
    }
    Ok(())
}

fn check_realm(realm: &str) -> Result<(), ConfigError> {
    let printable = realm.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if realm.is_empty() || realm.len() > 128 || !printable || realm.contains(['"', '\\']) {
        return Err(ConfigError::new(
            "",
            "must be 1 to 128 printable ASCII characters without '\"' or '\\'",
        ));
    }
    Ok(())
}

/// Tables of different stores or sizes must not share slots; the name is derived from
/// what identifies them. A configuration change that keeps them keeps the cache.
fn namespace(store: &StoreSettings, slots: u32) -> String {
    let digest = Sha256::digest(format!(
        "{}\n{}\n{}\n{slots}",
        store.cluster, store.authority, store.path_prefix
    ));
    format!("wasmgate.api_key.v1.{}", &hex::encode(digest)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(json: &str) -> Result<ApiKeyConfig, String> {
        ApiKeyConfig::from_json(json.as_bytes(), &no_env).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let config = parse(r#"{"store": {"cluster": "keystore"}}"#).unwrap();
        assert_eq!(config.store.path_prefix, "/v1/keys");
        assert_eq!(config.store.authority, "keystore");
        assert_eq!(config.store.timeout, Duration::from_secs(1));
        assert_eq!(config.store.max_in_flight, 64);
        assert_eq!(config.cache.max_in_flight, 64);
        assert_eq!(
            config.sources.headers,
            [HeaderName::new("x-api-key").unwrap()]
        );
        assert!(!config.sources.bearer);
        assert_eq!(config.sources.query, None);
        assert_eq!(config.format.prefixes, ["sk_live_", "sk_test_"]);
        assert_eq!(
            (config.format.min_length, config.format.max_length),
            (20, 128)
        );
        assert_eq!(config.hasher, KeyHasher::Sha256);
        assert_eq!(config.cache.slots, 4096);
        assert_eq!(config.cache.ttl_ms, 60_000);
        assert_eq!(config.cache.negative_ttl_ms, 10_000);
        assert_eq!(config.cache.max_stale_ms, 300_000);
        assert_eq!(config.cache.error_backoff_ms, 1_000);
        assert_eq!(config.cache.claim_ms, 1_250);
        assert_eq!(config.forward.tenant_id, header("x-tenant-id"));
        assert_eq!(config.forward.key_id, header("x-api-key-id"));
        assert_eq!(config.forward.plan, header("x-plan"));
        assert_eq!(config.forward.scopes, None);
        assert!(config.hide_credentials);
        assert!(config.strip_on_skip);
        assert!(!config.fail_open);
        assert_eq!(config.realm, "wasmgate");
        assert!(config.cache_namespace.starts_with("wasmgate.api_key.v1."));
    }

    #[test]
    fn everything_set_with_istio_doubles() {
        let config = parse(
            r#"{
              "store": {"cluster": "ks", "path_prefix": "/keys/", "authority": "keys.internal", "timeout": "250ms",
                        "max_in_flight": 16.0},
              "sources": {"headers": ["X-Key", "x-other"], "bearer": true, "query": "api_key"},
              "format": {"prefixes": [], "min_length": 8.0, "max_length": 64.0},
              "cache": {"slots": 64.0, "ttl": "5m", "negative_ttl": "30s", "max_stale": "0s", "error_backoff": "0s"},
              "forward": {"plan": null, "scopes": "x-scopes", "tenant_id": "x-tenant"},
              "hide_credentials": false, "fail_open": true, "realm": "orders api",
              "skip": [{"exact": "/health"}, {"prefix": "/public/", "methods": ["GET"]}],
              "strip_on_skip": false
            }"#,
        )
        .unwrap();
        assert_eq!(
            config.store.lookup_path(&KeyHash::from_bytes([0xab; 32])),
            format!("/keys/{}", "ab".repeat(32))
        );
        assert_eq!(config.store.authority, "keys.internal");
        assert_eq!(config.sources.headers.len(), 2);
        assert_eq!(config.sources.query.as_deref(), Some("api_key"));
        assert_eq!(
            (config.format.min_length, config.format.max_length),
            (8, 64)
        );
        assert_eq!(config.cache.slots, 64);
        assert_eq!(config.cache.claim_ms, 500);
        assert_eq!(config.cache.max_in_flight, 16);
        assert_eq!(config.forward.plan, None);
        assert_eq!(config.forward.tenant_id, header("x-tenant"));
        assert_eq!(config.forward.key_id, header("x-api-key-id"));
        assert!(config.skips("GET", None, "/health"));
        assert!(config.skips("GET", None, "/public/x?y"));
        assert!(!config.skips("POST", None, "/public/x"));
        assert!(!config.skips("GET", None, "/private"));
        assert!(!config.strip_on_skip);
    }

    #[test]
    fn pepper_comes_from_the_environment() {
        let env = |name: &str| (name == "PEPPER").then(|| "0123456789abcdef".to_owned());
        let json = br#"{"store": {"cluster": "ks"}, "pepper_env": "PEPPER"}"#;
        let config = ApiKeyConfig::from_json(json, &env).unwrap();
        assert_eq!(
            config.hasher,
            KeyHasher::HmacSha256 {
                pepper: b"0123456789abcdef".to_vec()
            }
        );
        let short = |_: &str| Some("short".to_owned());
        let err = ApiKeyConfig::from_json(json, &short).unwrap_err();
        assert_eq!(err.field(), "pepper_env");
        assert!(err.problem().contains("shorter than 16 bytes"), "{err}");
        assert!(
            !err.to_string().contains("short\""),
            "the pepper leaked: {err}"
        );
        let err = ApiKeyConfig::from_json(json, &no_env).unwrap_err();
        assert!(err.problem().contains("PEPPER is not set"), "{err}");
    }

    #[test]
    fn namespace_follows_the_store_and_size_only() {
        let a = parse(r#"{"store": {"cluster": "ks"}, "cache": {"ttl": "5s"}}"#).unwrap();
        let b = parse(r#"{"store": {"cluster": "ks"}, "fail_open": true}"#).unwrap();
        let c = parse(r#"{"store": {"cluster": "other"}}"#).unwrap();
        let d = parse(r#"{"store": {"cluster": "ks"}, "cache": {"slots": 8}}"#).unwrap();
        assert_eq!(a.cache_namespace, b.cache_namespace);
        assert_ne!(a.cache_namespace, c.cache_namespace);
        assert_ne!(a.cache_namespace, d.cache_namespace);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"{}"#, "", "missing field `store`"),
            (
                r#"{"store": {"cluster": ""}}"#,
                "store.cluster",
                "may not be empty",
            ),
            (
                r#"{"store": {"cluster": "k", "path_prefix": "keys"}}"#,
                "store.path_prefix",
                "must start with",
            ),
            (
                r#"{"store": {"cluster": "k", "timeout": "0s"}}"#,
                "store.timeout",
                "between 1ms and 60s",
            ),
            (
                r#"{"store": {"cluster": "k", "timeout": "10"}}"#,
                "store.timeout",
                "expected a duration",
            ),
            (
                r#"{"store": {"cluster": "k", "tiemout": "1s"}}"#,
                "store.tiemout",
                "unknown field",
            ),
            (
                r#"{"store": {"cluster": "k"}, "sources": {"headers": []}}"#,
                "sources",
                "no key source",
            ),
            (
                r#"{"store": {"cluster": "k"}, "sources": {"headers": [":path"]}}"#,
                "sources.headers[0]",
                "cannot carry",
            ),
            (
                r#"{"store": {"cluster": "k"}, "sources": {"query": "a b"}}"#,
                "sources.query",
                "not a plain query",
            ),
            (
                r#"{"store": {"cluster": "k"}, "format": {"min_length": 0}}"#,
                "format.min_length",
                "at least 1",
            ),
            (
                r#"{"store": {"cluster": "k"}, "format": {"min_length": 50, "max_length": 40}}"#,
                "format.min_length",
                "larger than",
            ),
            (
                r#"{"store": {"cluster": "k"}, "format": {"prefixes": ["sk live"]}}"#,
                "format.prefixes[0]",
                "only letters",
            ),
            (
                r#"{"store": {"cluster": "k"}, "format": {"min_length": 1.5}}"#,
                "format.min_length",
                "whole number",
            ),
            (
                r#"{"store": {"cluster": "k"}, "cache": {"slots": 0}}"#,
                "cache.slots",
                "between 1 and",
            ),
            (
                r#"{"store": {"cluster": "k"}, "cache": {"slots": 300000}}"#,
                "cache.slots",
                "between 1 and",
            ),
            (
                r#"{"store": {"cluster": "k"}, "cache": {"ttl": "500ms"}}"#,
                "cache.ttl",
                "between 1s and 1h",
            ),
            (
                r#"{"store": {"cluster": "k"}, "cache": {"negative_ttl": "2h"}}"#,
                "cache.negative_ttl",
                "between 1s and 1h",
            ),
            (
                r#"{"store": {"cluster": "k"}, "cache": {"max_stale": "61m"}}"#,
                "cache.max_stale",
                "at most 1h",
            ),
            (
                r#"{"store": {"cluster": "k"}, "cache": {"error_backoff": "2m"}}"#,
                "cache.error_backoff",
                "at most 60s",
            ),
            (
                r#"{"store": {"cluster": "k", "max_in_flight": 0}}"#,
                "store.max_in_flight",
                "between 1 and 1024",
            ),
            (
                r#"{"store": {"cluster": "k", "max_in_flight": 1025}}"#,
                "store.max_in_flight",
                "between 1 and 1024",
            ),
            (
                r#"{"store": {"cluster": "k"}, "forward": {"plan": "x-api-key"}}"#,
                "forward.plan",
                "key source",
            ),
            (
                r#"{"store": {"cluster": "k"}, "forward": {"plan": "x-tenant-id"}}"#,
                "forward.plan",
                "already used",
            ),
            (
                r#"{"store": {"cluster": "k"}, "forward": {"key_id": "authorization"}}"#,
                "forward.key_id",
                "cannot be set",
            ),
            (
                r#"{"store": {"cluster": "k"}, "realm": "a\"b"}"#,
                "realm",
                "printable",
            ),
            (
                r#"{"store": {"cluster": "k"}, "pepper_env": ""}"#,
                "pepper_env",
                "may not be empty",
            ),
            (
                r#"{"store": {"cluster": "k"}, "skip": [{"prefix": "x"}]}"#,
                "skip[0]",
                "must start with",
            ),
        ];
        for (json, field, problem) in cases {
            let err = ApiKeyConfig::from_json(json.as_bytes(), &no_env).unwrap_err();
            assert_eq!(err.field(), field, "{json}: {err}");
            assert!(err.problem().contains(problem), "{json}: {err}");
        }
    }

    #[test]
    fn identity_edits_skip_absent_values_and_disabled_headers() {
        let config =
            parse(r#"{"store": {"cluster": "k"}, "forward": {"scopes": "x-scopes"}}"#).unwrap();
        let record = KeyRecord {
            key_id: "key_1".into(),
            tenant_id: "acme".into(),
            plan: None,
            scopes: vec!["a:read".into(), "b:write".into()],
            status: crate::record::KeyStatus::Active,
            expires_at: None,
        };
        assert_eq!(
            config.forward.identity_edits(&record),
            vec![
                RequestEdit::Set("x-tenant-id", "acme".into()),
                RequestEdit::Set("x-api-key-id", "key_1".into()),
                RequestEdit::Set("x-scopes", "a:read b:write".into()),
            ]
        );
        assert_eq!(config.forward.strip_edits().count(), 4);
    }
}
