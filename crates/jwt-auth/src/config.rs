//! The JWT filter's plugin configuration: JSON as written by the user (serde, unknown
//! fields refused) turned into a [`JwtConfig`] that cannot be wrong.
//!
//! Every refusal names the JSON field (`providers.idp.jwks.remote.path: ...`), which
//! becomes the one log line the filter writes before Envoy refuses the config.

use crate::claims::{Audiences, ClaimPath, ClaimRules};
use crate::discovery::{Discovery, HttpUrl};
use crate::extract::TokenLocation;
use crate::jwks::{KeySet, PublicKey};
use crate::jwks_cache::CachePolicy;
use crate::rules::{Requirement, Rules};
use crate::token::{self, Alg};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use wasmgate_config::{number, ConfigError, HeaderName, RouteMatch, RouteTable};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// In name order; requirements refer to them by index.
    pub providers: Vec<Provider>,
    pub rules: Rules,
    /// The `realm` of every `WWW-Authenticate` challenge.
    pub realm: String,
    /// Longest token accepted, in bytes (a longer one is refused before decoding).
    pub max_token_bytes: usize,
    /// Verified tokens remembered per VM; 0 turns the cache off.
    pub token_cache_entries: usize,
    /// Requests of one VM that may wait for keys at once; the next get 503.
    pub max_waiting_requests: usize,
    /// Every header any provider may set from claims, lower-case, sorted: stripped
    /// from every request before anything else happens.
    pub output_headers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Provider {
    /// `[A-Za-z0-9_-]{1,64}`: it appears in metric and shared-data key names.
    pub name: String,
    pub claims: ClaimRules,
    pub keys: KeySource,
    pub algorithms: Vec<Alg>,
    /// Accepted `typ` header values, as [`token::media_type`] writes them; empty: `typ`
    /// is not checked.
    pub required_typ: Vec<String>,
    /// Tried in order: headers, then parameters, then cookies.
    pub locations: Vec<TokenLocation>,
    /// Keep the token header on the request forwarded upstream.
    pub forward: bool,
    /// Header name (lower-case) and the claim paths tried in order for its value.
    pub claim_to_headers: Vec<(String, Vec<ClaimPath>)>,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    Inline(KeySet),
    Remote(RemoteJwks),
}

/// Where a remote JWKS is fetched from, and its cache policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// An Envoy cluster name (the callout goes through it).
    pub cluster: String,
    /// With `discovery`, the discovery document's path and authority; else the JWKS's.
    pub path: String,
    pub authority: String,
    pub policy: CachePolicy,
    /// Set when the JWKS is found through the issuer's OpenID Connect discovery
    /// document (its `jwks_uri`); the same policy applies to both documents.
    pub discovery: Option<Box<Discovery>>,
}

impl JwtConfig {
    pub fn from_json(bytes: &[u8]) -> Result<JwtConfig, ConfigError> {
        let raw: RawConfig = wasmgate_config::from_json(bytes)?;
        JwtConfig::try_from(raw)
    }

    /// The JSON Schema of the configuration [`Self::from_json`] reads (feature `schema`):
    /// the shape only, its nested types' schemas go into `generator`'s definitions.
    #[cfg(feature = "schema")]
    pub fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <RawConfig as schemars::JsonSchema>::json_schema(generator)
    }

    #[cfg(test)]
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

const DEFAULT_MAX_TOKEN_BYTES: u64 = 8 * 1024;
const DEFAULT_TOKEN_CACHE_ENTRIES: u64 = 1000;
const DEFAULT_MAX_WAITING_REQUESTS: u64 = 1000;
const MAX_MAX_WAITING_REQUESTS: u64 = 100_000;

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    rules: Vec<RawRequirement>,
    default: RawRequirement,
    #[serde(default)]
    bypass_cors_preflight: bool,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default = "default_max_token_bytes", deserialize_with = "number::u64")]
    max_token_bytes: u64,
    #[serde(
        default = "default_token_cache_entries",
        deserialize_with = "number::u64"
    )]
    token_cache_entries: u64,
    #[serde(
        default = "default_max_waiting_requests",
        deserialize_with = "number::u64"
    )]
    max_waiting_requests: u64,
}

fn default_realm() -> String {
    "wasmgate".to_owned()
}
fn default_max_token_bytes() -> u64 {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_token_cache_entries() -> u64 {
    DEFAULT_TOKEN_CACHE_ENTRIES
}
fn default_max_waiting_requests() -> u64 {
    DEFAULT_MAX_WAITING_REQUESTS
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: String,
    /// A list of strings, or `"any"`; required (checked in `build_provider`, which
    /// says what to write).
    audiences: Option<Value>,
    jwks: RawJwks,
    algorithms: Option<Vec<String>>,
    required_typ: Option<Vec<String>>,
    #[serde(default = "default_skew", deserialize_with = "number::u64")]
    clock_skew_seconds: u64,
    #[serde(default = "yes")]
    require_exp: bool,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    max_lifetime: Option<Duration>,
    from_headers: Option<Vec<RawHeaderLocation>>,
    from_params: Option<Vec<String>>,
    from_cookies: Option<Vec<String>>,
    #[serde(default)]
    forward: bool,
    claim_to_headers: Option<BTreeMap<String, RawClaimPaths>>,
}

fn default_skew() -> u64 {
    60
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHeaderLocation {
    name: HeaderName,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
enum RawClaimPaths {
    One(String),
    FirstOf(Vec<String>),
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawJwks {
    remote: Option<RawRemote>,
    inline: Option<Value>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRemote {
    cluster: String,
    path: Option<String>,
    /// `true`, `false`, or the discovery document's URL.
    discovery: Option<Value>,
    jwks_clusters: Option<BTreeMap<String, String>>,
    authority: Option<String>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    cache_duration: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    min_cache_duration: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    max_cache_duration: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    max_staleness: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    backoff_initial: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    backoff_max: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    unknown_kid_refetch_interval: Option<Duration>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    max_wait: Option<Duration>,
}

/// Defaults of `jwks.remote` (documented in docs/filters/jwt.md).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
const DEFAULT_MIN_CACHE_DURATION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CACHE_DURATION: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(3600);
/// Upper bounds of `max_cache_duration` and `max_staleness`: a key the IdP removed is
/// trusted for at most their sum.
const MAX_MAX_CACHE_DURATION: Duration = Duration::from_secs(86_400);
const MAX_MAX_STALENESS: Duration = Duration::from_secs(86_400);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
const DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
/// A rule (with `match`) or the `default` (without).
struct RawRequirement {
    #[serde(rename = "match")]
    route: Option<RouteMatch>,
    #[serde(default)]
    public: bool,
    providers: Option<Vec<String>>,
    #[serde(default)]
    allow_missing: bool,
    #[serde(default)]
    required_scopes: Vec<String>,
}

impl TryFrom<RawConfig> for JwtConfig {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.providers.is_empty() {
            return Err(ConfigError::new("providers", "name at least one provider"));
        }
        let mut providers = Vec::with_capacity(raw.providers.len());
        for (name, provider) in raw.providers {
            let field = format!("providers.{name}");
            providers.push(build_provider(name, provider).map_err(|e| e.within(&field))?);
        }
        let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();

        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, mut rule) in raw.rules.into_iter().enumerate() {
            let field = format!("rules[{i}]");
            let Some(route) = rule.route.take() else {
                return Err(ConfigError::new("match", "every rule needs a match").within(&field));
            };
            let requirement = build_requirement(rule, &names).map_err(|e| e.within(&field))?;
            rules.push((route, requirement));
        }
        if raw.default.route.is_some() {
            return Err(ConfigError::new(
                "default.match",
                "the default applies where no rule matched: it takes no match",
            ));
        }
        let default = build_requirement(raw.default, &names).map_err(|e| e.within("default"))?;

        check_realm(&raw.realm).map_err(|p| ConfigError::new("realm", p))?;
        if !(512..=65_536).contains(&raw.max_token_bytes) {
            return Err(ConfigError::new(
                "max_token_bytes",
                "must be between 512 and 65536",
            ));
        }
        if raw.token_cache_entries > 100_000 {
            return Err(ConfigError::new(
                "token_cache_entries",
                "at most 100000 (each entry holds a verified identity in every VM)",
            ));
        }
        if !(1..=MAX_MAX_WAITING_REQUESTS).contains(&raw.max_waiting_requests) {
            return Err(ConfigError::new(
                "max_waiting_requests",
                "must be between 1 and 100000 (each waiting request holds its token in the VM); to never wait, set a provider's jwks.remote.max_wait to \"0s\"",
            ));
        }
        let mut output_headers: Vec<String> = providers
            .iter()
            .flat_map(|p| p.claim_to_headers.iter().map(|(h, _)| h.clone()))
            .collect();
        output_headers.sort();
        output_headers.dedup();

        Ok(JwtConfig {
            providers,
            rules: Rules {
                table: RouteTable::new(rules, None),
                default,
                bypass_cors_preflight: raw.bypass_cors_preflight,
            },
            realm: raw.realm,
            max_token_bytes: raw.max_token_bytes as usize,
            token_cache_entries: raw.token_cache_entries as usize,
            max_waiting_requests: raw.max_waiting_requests as usize,
            output_headers,
        })
    }
}

fn build_provider(name: String, raw: RawProvider) -> Result<Provider, ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::new(
            "",
            "provider names are 1 to 64 letters, digits, '-' or '_' (they name metrics and shared-data keys)",
        ));
    }
    if raw.issuer.is_empty() {
        return Err(ConfigError::new("issuer", "must not be empty"));
    }
    let audiences = build_audiences(raw.audiences)?;
    let required_typ = build_required_typ(raw.required_typ)?;

    if raw.clock_skew_seconds > 3600 {
        return Err(ConfigError::new(
            "clock_skew_seconds",
            "at most 3600: a larger skew accepts tokens that expired long ago",
        ));
    }

    let algorithms = match raw.algorithms {
        None => Alg::ASYMMETRIC.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::new(
                "algorithms",
                "an empty list allows nothing; leave the field out for the default",
            ))
        }
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Alg::from_name(name).ok_or_else(|| {
                    ConfigError::new(
                        format!("algorithms[{i}]"),
                        format!("{name:?} is not supported (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA, HS256/384/512)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let hmac = algorithms.iter().any(|alg| alg.is_hmac());

    let keys = match (raw.jwks.remote, raw.jwks.inline) {
        (Some(remote), None) => {
            if hmac {
                return Err(ConfigError::new(
                    "algorithms",
                    "HS256/384/512 need an inline JWKS: shared secrets are never fetched",
                ));
            }
            KeySource::Remote(
                build_remote(remote, &raw.issuer).map_err(|e| e.within("jwks.remote"))?,
            )
        }
        (None, Some(inline)) => {
            let set = match &inline {
                Value::Object(doc) => KeySet::from_json(doc, hmac),
                // The same checks as a fetched document, size cap included.
                Value::String(text) => KeySet::parse(text.as_bytes(), hmac),
                _ => {
                    return Err(ConfigError::new(
                        "jwks.inline",
                        "expected a JWKS object (or a string holding one)",
                    ))
                }
            }
            .map_err(|e| ConfigError::new("jwks.inline", e.to_string()))?;
            check_hmac_secrets(&set, &algorithms)?;
            KeySource::Inline(set)
        }
        _ => {
            return Err(ConfigError::new(
                "jwks",
                r#"exactly one of "remote" or "inline" is required"#,
            ))
        }
    };

    let mut locations = Vec::new();
    for (i, header) in raw.from_headers.iter().flatten().enumerate() {
        if header.name.is_pseudo() {
            return Err(ConfigError::new(
                format!("from_headers[{i}].name"),
                "a token cannot be read from a pseudo-header",
            ));
        }
        locations.push(TokenLocation::Header {
            name: header.name.as_str().to_owned(),
            prefix: header.prefix.clone(),
        });
    }
    for (i, param) in raw.from_params.iter().flatten().enumerate() {
        if param.is_empty() {
            return Err(ConfigError::new(
                format!("from_params[{i}]"),
                "must not be empty",
            ));
        }
        locations.push(TokenLocation::Param(param.clone()));
    }
    for (i, cookie) in raw.from_cookies.iter().flatten().enumerate() {
        if cookie.is_empty() || cookie.contains([';', '=', ' ']) {
            return Err(ConfigError::new(
                format!("from_cookies[{i}]"),
                "not a cookie name",
            ));
        }
        locations.push(TokenLocation::Cookie(cookie.clone()));
    }
    if raw.from_headers.is_none() && raw.from_params.is_none() && raw.from_cookies.is_none() {
        locations.push(TokenLocation::bearer());
    }
    if locations.is_empty() {
        return Err(ConfigError::new(
            "from_headers",
            "the token must be looked for somewhere",
        ));
    }

    let claim_to_headers = match raw.claim_to_headers {
        None => vec![
            ("x-scopes".to_owned(), paths(&["scope", "scp"])?),
            ("x-tenant-id".to_owned(), paths(&["tenant_id"])?),
            ("x-user-id".to_owned(), paths(&["sub"])?),
        ],
        Some(map) => {
            let mut list = Vec::with_capacity(map.len());
            for (header, claims) in map {
                let field = format!("claim_to_headers.{header}");
                let name = HeaderName::new(&header).map_err(|p| ConfigError::new(&field, p))?;
                if name.is_pseudo() || name.as_str() == "host" {
                    return Err(ConfigError::new(
                        field,
                        "claims cannot be written to pseudo-headers or host",
                    ));
                }
                let claims = match claims {
                    RawClaimPaths::One(path) => vec![path],
                    RawClaimPaths::FirstOf(paths) => paths,
                };
                if claims.is_empty() {
                    return Err(ConfigError::new(field, "name at least one claim"));
                }
                let claims = claims
                    .iter()
                    .map(|c| ClaimPath::new(c))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|p| ConfigError::new(&field, p))?;
                list.push((name.as_str().to_owned(), claims));
            }
            list
        }
    };

    Ok(Provider {
        name,
        claims: ClaimRules {
            issuer: raw.issuer,
            audiences,
            clock_skew_secs: raw.clock_skew_seconds,
            require_exp: raw.require_exp,
            max_lifetime_secs: raw.max_lifetime.map(|d| d.as_secs()),
        },
        keys,
        algorithms,
        required_typ,
        locations,
        forward: raw.forward,
        claim_to_headers,
    })
}

/// `audiences`: a non-empty list of strings, or `"any"` to opt out of the `aud` check
/// explicitly. Its absence is refused with what to write instead: an unchecked `aud`
/// accepts every token the issuer mints for any other service.
fn build_audiences(raw: Option<Value>) -> Result<Audiences, ConfigError> {
    const WHAT: &str = r#"list the audiences this gateway accepts (the "aud" of tokens meant for it), e.g. "audiences": ["orders-api"], or write "audiences": "any" to accept a token of this issuer whatever its "aud""#;
    let list = match raw {
        None => return Err(ConfigError::new("audiences", format!("required: {WHAT}"))),
        Some(Value::String(word)) if word == "any" => return Ok(Audiences::Any),
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(ConfigError::new(
                "audiences",
                format!("an empty list accepts no token: {WHAT}"),
            ))
        }
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(ConfigError::new(
                "audiences",
                format!("expected a list of strings or \"any\": {WHAT}"),
            ))
        }
    };
    list.into_iter()
        .enumerate()
        .map(|(i, aud)| match aud {
            Value::String(aud) if !aud.is_empty() => Ok(aud),
            _ => Err(ConfigError::new(
                format!("audiences[{i}]"),
                "must be a non-empty string",
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Audiences::OneOf)
}

/// `required_typ`: accepted `typ` values (RFC 8725 §3.11), compared as media types.
fn build_required_typ(raw: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    if list.is_empty() {
        return Err(ConfigError::new(
            "required_typ",
            "an empty list accepts no token; leave the field out to not check typ",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, typ)| {
            if typ.is_empty() || typ.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(ConfigError::new(
                    format!("required_typ[{i}]"),
                    format!("{typ:?} is not a media type (such as \"at+jwt\" or \"JWT\")"),
                ))
            } else {
                Ok(token::media_type(typ))
            }
        })
        .collect()
}

/// Every HMAC algorithm allowed must be usable with every inline secret that does not
/// name its own `alg`: a secret shorter than the algorithm's hash (RFC 7518 §3.2) would
/// make tokens of that algorithm fail at run time for no visible reason.
fn check_hmac_secrets(set: &KeySet, algorithms: &[Alg]) -> Result<(), ConfigError> {
    for alg in algorithms {
        let Some(least) = alg.min_secret_bytes() else {
            continue;
        };
        for jwk in set.keys().iter().filter(|jwk| jwk.alg.is_none()) {
            if let PublicKey::Hmac(secret) = &jwk.key {
                if secret.len() < least {
                    return Err(ConfigError::new(
                        "algorithms",
                        format!(
                            "{alg} needs HMAC secrets of at least {least} bytes (RFC 7518 §3.2), but the inline key {} has {}: use a longer secret, give the key its own \"alg\", or leave {alg} out",
                            jwk.kid.as_deref().map_or_else(|| "without kid".to_owned(), |kid| format!("{kid:?}")),
                            secret.len()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn paths(names: &[&str]) -> Result<Vec<ClaimPath>, ConfigError> {
    names
        .iter()
        .map(|n| ClaimPath::new(n).map_err(|p| ConfigError::new("claim_to_headers", p)))
        .collect()
}

fn build_remote(raw: RawRemote, issuer: &str) -> Result<RemoteJwks, ConfigError> {
    let timeout = raw.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let cache_duration = raw.cache_duration.unwrap_or(DEFAULT_CACHE_DURATION);
    let min_cache_duration = raw.min_cache_duration.unwrap_or(DEFAULT_MIN_CACHE_DURATION);
    let max_cache_duration = raw.max_cache_duration.unwrap_or(DEFAULT_MAX_CACHE_DURATION);
    let max_staleness = raw.max_staleness.unwrap_or(DEFAULT_MAX_STALENESS);
    let backoff_initial = raw.backoff_initial.unwrap_or(DEFAULT_BACKOFF_INITIAL);
    let backoff_max = raw.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX);
    let unknown_kid_refetch_interval = raw
        .unknown_kid_refetch_interval
        .unwrap_or(DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL);
    let max_wait = raw.max_wait.unwrap_or(DEFAULT_MAX_WAIT);
    if raw.cluster.is_empty() {
        return Err(ConfigError::new("cluster", "must name an Envoy cluster"));
    }
    let (path, url_authority, discovery) = match discovery_url(
        raw.discovery.as_ref(),
        issuer,
        raw.path.is_some(),
    )? {
        Some(url) => {
            let jwks_clusters = build_jwks_clusters(raw.jwks_clusters)?;
            if jwks_clusters.iter().any(|(host, _)| *host == url.host) {
                return Err(ConfigError::new(
                        format!("jwks_clusters.{}", url.host),
                        "this is the discovery document's own host: a jwks_uri there goes through \"cluster\"",
                    ));
            }
            let discovery = Discovery {
                issuer: issuer.to_owned(),
                host: url.host,
                cluster: raw.cluster.clone(),
                jwks_clusters,
            };
            (url.path, Some(url.authority), Some(Box::new(discovery)))
        }
        None => {
            if raw.jwks_clusters.is_some() {
                return Err(ConfigError::new(
                        "jwks_clusters",
                        "only with \"discovery\": it maps the hosts a discovered jwks_uri may name to clusters",
                    ));
            }
            let Some(path) = raw.path else {
                return Err(ConfigError::new(
                        "path",
                        "required: the JWKS's path at the cluster (or set \"discovery\": true to find the JWKS through the issuer's OpenID Connect discovery document)",
                    ));
            };
            if !path.starts_with('/') || path.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    "path",
                    "must start with \"/\" (control characters are not allowed)",
                ));
            }
            (path, None, None)
        }
    };
    let authority = raw
        .authority
        .or(url_authority)
        .unwrap_or_else(|| raw.cluster.clone());
    if authority.is_empty() || authority.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ConfigError::new("authority", "not a host[:port]"));
    }
    let ms = |d: Duration| d.as_millis() as u64;
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err(ConfigError::new(
            "timeout",
            "must be more than 0 and at most 60s",
        ));
    }
    if cache_duration < Duration::from_secs(1) {
        return Err(ConfigError::new("cache_duration", "must be at least 1s"));
    }
    if max_cache_duration > MAX_MAX_CACHE_DURATION {
        return Err(ConfigError::new(
            "max_cache_duration",
            "at most 24h: a key the IdP removed stays trusted this long",
        ));
    }
    if max_staleness > MAX_MAX_STALENESS {
        return Err(ConfigError::new(
            "max_staleness",
            "at most 24h: while fetches fail, a key the IdP removed stays trusted this long past its refresh",
        ));
    }
    if min_cache_duration > max_cache_duration {
        return Err(ConfigError::new(
            "min_cache_duration",
            "must not be more than max_cache_duration",
        ));
    }
    if cache_duration > max_cache_duration {
        return Err(ConfigError::new(
            "cache_duration",
            "must not be more than max_cache_duration (1h unless set): no keys are trusted longer without a refresh",
        ));
    }
    if backoff_initial.is_zero() || backoff_initial > backoff_max {
        return Err(ConfigError::new(
            "backoff_initial",
            "must be more than 0 and at most backoff_max",
        ));
    }
    if max_wait > Duration::from_secs(60) {
        return Err(ConfigError::new(
            "max_wait",
            "at most 60s: a request must not hang",
        ));
    }
    Ok(RemoteJwks {
        cluster: raw.cluster,
        path,
        authority,
        discovery,
        policy: CachePolicy {
            fetch_timeout: ms(timeout),
            cache_duration: ms(cache_duration),
            min_cache_duration: ms(min_cache_duration),
            max_cache_duration: ms(max_cache_duration),
            max_staleness: ms(max_staleness),
            backoff_initial: ms(backoff_initial),
            backoff_max: ms(backoff_max),
            unknown_kid_refetch_interval: ms(unknown_kid_refetch_interval),
            max_wait: ms(max_wait),
        },
    })
}

/// `discovery`: `true` (the document under the issuer, OpenID Connect Discovery
/// §4), a URL (the document elsewhere), or `false`/absent (no discovery). The URL of
/// the document to fetch, if any.
fn discovery_url(
    raw: Option<&Value>,
    issuer: &str,
    has_path: bool,
) -> Result<Option<HttpUrl>, ConfigError> {
    let url = match raw {
        None | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => HttpUrl::discovery_of(issuer).map_err(|p| {
            ConfigError::new(
                "discovery",
                format!("the issuer is where the document is found, but {p}; give the document's URL instead (\"discovery\": \"https://.../.well-known/openid-configuration\")"),
            )
        })?,
        Some(Value::String(url)) => {
            HttpUrl::parse(url).map_err(|p| ConfigError::new("discovery", p))?
        }
        Some(_) => {
            return Err(ConfigError::new(
                "discovery",
                "expected true, false or the discovery document's URL",
            ))
        }
    };
    if has_path {
        return Err(ConfigError::new(
            "path",
            "with \"discovery\", the JWKS's location is the document's jwks_uri: leave path out (to fetch the document from elsewhere, give its URL as \"discovery\")",
        ));
    }
    Ok(Some(url))
}

/// `jwks_clusters`: `{host: cluster}`, sorted by host.
fn build_jwks_clusters(
    raw: Option<BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut list = Vec::new();
    for (host, cluster) in raw.unwrap_or_default() {
        let field = format!("jwks_clusters.{host}");
        let name =
            wasmgate_config::host::host_name(&host).map_err(|p| ConfigError::new(&field, p))?;
        if cluster.is_empty() {
            return Err(ConfigError::new(field, "must name an Envoy cluster"));
        }
        list.push((name, cluster));
    }
    list.sort();
    if let Some(pair) = list.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(ConfigError::new(
            "jwks_clusters",
            format!(
                "host {:?} is named twice (hosts are compared in lower case)",
                pair[0].0
            ),
        ));
    }
    Ok(list)
}

fn build_requirement(raw: RawRequirement, providers: &[&str]) -> Result<Requirement, ConfigError> {
    if raw.public {
        if raw.providers.is_some() || raw.allow_missing || !raw.required_scopes.is_empty() {
            return Err(ConfigError::new(
                "public",
                "a public route takes no providers, allow_missing or required_scopes",
            ));
        }
        return Ok(Requirement::Public);
    }
    let Some(names) = raw.providers else {
        return Err(ConfigError::new(
            "providers",
            "name the providers whose tokens are accepted, or set \"public\": true",
        ));
    };
    if names.is_empty() {
        return Err(ConfigError::new(
            "providers",
            "an empty list accepts nothing; set \"public\": true for a route without tokens",
        ));
    }
    let indexes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            providers.iter().position(|p| p == name).ok_or_else(|| {
                ConfigError::new(
                    format!("providers[{i}]"),
                    format!("no provider named {name:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if raw.allow_missing && !raw.required_scopes.is_empty() {
        return Err(ConfigError::new(
            "allow_missing",
            "cannot be combined with required_scopes: a request without a token has no scopes",
        ));
    }
    for (i, scope) in raw.required_scopes.iter().enumerate() {
        if scope.is_empty()
            || scope
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
        {
            return Err(ConfigError::new(
                format!("required_scopes[{i}]"),
                "a scope is one non-empty word without quotes or backslashes",
            ));
        }
    }
    Ok(Requirement::Token {
        providers: indexes,
        allow_missing: raw.allow_missing,
        required_scopes: raw.required_scopes,
    })
}

fn check_realm(realm: &str) -> Result<(), &'static str> {
    if realm.is_empty()
        || realm.len() > 128
        || realm
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err("1 to 128 characters, without quotes, backslashes or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use serde_json::json;

    fn parse(value: Value) -> Result<JwtConfig, String> {
        JwtConfig::from_json(value.to_string().as_bytes()).map_err(|e| e.to_string())
    }

    fn remote() -> Value {
        json!({"remote": {"cluster": "idp", "path": "/jwks.json"}})
    }

    /// The minimal configuration with one change.
    fn edited(change: impl FnOnce(&mut Value)) -> Value {
        let mut config = minimal();
        change(&mut config);
        config
    }

    fn minimal() -> Value {
        json!({
            "providers": {"idp": {"issuer": "https://idp", "audiences": ["api"], "jwks": remote()}},
            "default": {"providers": ["idp"]}
        })
    }

    #[test]
    fn defaults_follow_the_documentation() {
        let config = parse(minimal()).unwrap();
        let idp = &config.providers[0];
        assert_eq!(idp.algorithms, Alg::ASYMMETRIC);
        assert_eq!(idp.claims.clock_skew_secs, 60);
        assert!(idp.claims.require_exp);
        assert_eq!(idp.locations, vec![TokenLocation::bearer()]);
        assert!(!idp.forward);
        assert_eq!(
            config.output_headers,
            ["x-scopes", "x-tenant-id", "x-user-id"]
        );
        assert_eq!(config.max_token_bytes, 8192);
        assert_eq!(config.token_cache_entries, 1000);
        assert_eq!(config.realm, "wasmgate");
        let KeySource::Remote(remote) = &idp.keys else {
            panic!()
        };
        assert_eq!(remote.authority, "idp");
        assert_eq!(remote.policy.cache_duration, 600_000);
        assert_eq!(remote.policy.fetch_timeout, 5_000);
        assert_eq!(remote.policy.unknown_kid_refetch_interval, 30_000);
        assert_eq!(remote.policy.max_wait, 3_000);
        // A key the IdP removed is trusted for at most max_cache_duration +
        // max_staleness: two hours by default (docs: "Key removal").
        assert_eq!(remote.policy.max_cache_duration, 3_600_000);
        assert_eq!(remote.policy.max_staleness, 3_600_000);
        assert!(!config.rules.bypass_cors_preflight);
        assert_eq!(config.max_waiting_requests, 1000);
        assert!(idp.required_typ.is_empty());
        assert_eq!(
            idp.claims.audiences,
            Audiences::OneOf(vec!["api".to_owned()])
        );
    }

    #[test]
    fn audiences_are_a_list_or_an_explicit_any() {
        let any = parse(edited(|c| {
            c["providers"]["idp"]["audiences"] = json!("any")
        }))
        .unwrap();
        assert_eq!(any.providers[0].claims.audiences, Audiences::Any);
        let two = parse(edited(|c| {
            c["providers"]["idp"]["audiences"] = json!(["orders", "billing"])
        }))
        .unwrap();
        assert_eq!(
            two.providers[0].claims.audiences,
            Audiences::OneOf(vec!["orders".to_owned(), "billing".to_owned()])
        );
        // A configuration written before audiences were required is refused with what
        // to write instead.
        let old = edited(|c| {
            c["providers"]["idp"]
                .as_object_mut()
                .unwrap()
                .remove("audiences");
        });
        assert_eq!(
            parse(old).unwrap_err(),
            r#"providers.idp.audiences: required: list the audiences this gateway accepts (the "aud" of tokens meant for it), e.g. "audiences": ["orders-api"], or write "audiences": "any" to accept a token of this issuer whatever its "aud""#
        );
    }

    #[test]
    fn discovery_finds_the_document_under_the_issuer_or_at_a_url() {
        let discovered = |remote: Value, issuer: &str| {
            let config = parse(edited(|c| {
                c["providers"]["idp"]["issuer"] = json!(issuer);
                c["providers"]["idp"]["jwks"] = json!({ "remote": remote });
            }))?;
            let KeySource::Remote(remote) = &config.providers[0].keys else {
                panic!()
            };
            Ok::<_, String>(remote.clone())
        };
        let remote = discovered(
            json!({"cluster": "idp", "discovery": true, "jwks_clusters": {"Keys.Example.net": "idp_keys"}}),
            "https://IdP.example.com/realms/main/",
        )
        .unwrap();
        assert_eq!(
            (
                remote.cluster.as_str(),
                remote.authority.as_str(),
                remote.path.as_str()
            ),
            (
                "idp",
                "idp.example.com",
                "/realms/main/.well-known/openid-configuration"
            )
        );
        assert_eq!(
            remote.discovery,
            Some(Box::new(Discovery {
                issuer: "https://IdP.example.com/realms/main/".into(),
                host: "idp.example.com".into(),
                cluster: "idp".into(),
                jwks_clusters: vec![("keys.example.net".into(), "idp_keys".into())],
            }))
        );
        // The document elsewhere (an issuer that is not a URL), with its own Host.
        let remote = discovered(
            json!({"cluster": "sso", "discovery": "http://sso.internal:8080/oidc/config", "authority": "sso"}),
            "billing-jobs",
        )
        .unwrap();
        assert_eq!(
            (remote.authority.as_str(), remote.path.as_str()),
            ("sso", "/oidc/config")
        );
        assert_eq!(remote.discovery.unwrap().host, "sso.internal");
        // false is no discovery.
        let remote = discovered(
            json!({"cluster": "idp", "path": "/jwks", "discovery": false}),
            "https://idp",
        )
        .unwrap();
        assert!(remote.discovery.is_none());
    }

    #[test]
    fn required_typ_values_are_media_types_compared_in_lower_case() {
        let config = parse(edited(|c| {
            c["providers"]["idp"]["required_typ"] = json!(["at+JWT", "application/JWT"])
        }))
        .unwrap();
        assert_eq!(config.providers[0].required_typ, ["at+jwt", "jwt"]);
    }

    #[test]
    fn hmac_secrets_must_be_as_long_as_every_allowed_hash() {
        let hmac = |algorithms: Value, secret_len: usize, alg: Option<&str>| {
            let mut key = json!({"kty": "oct", "kid": "s1", "k": base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD, vec![7u8; secret_len])});
            if let Some(alg) = alg {
                key["alg"] = json!(alg);
            }
            parse(edited(|c| {
                c["providers"]["idp"]["algorithms"] = algorithms;
                c["providers"]["idp"]["jwks"] = json!({"inline": {"keys": [key]}});
            }))
        };
        assert!(hmac(json!(["HS256"]), 32, None).is_ok());
        assert!(hmac(json!(["HS384"]), 48, None).is_ok());
        assert!(hmac(json!(["HS256", "HS512"]), 64, None).is_ok());
        assert_eq!(
            hmac(json!(["HS256", "HS384"]), 32, None).unwrap_err(),
            r#"providers.idp.algorithms: HS384 needs HMAC secrets of at least 48 bytes (RFC 7518 §3.2), but the inline key "s1" has 32: use a longer secret, give the key its own "alg", or leave HS384 out"#
        );
        // A key that names its algorithm is held to that one only.
        assert!(hmac(json!(["HS256", "HS512"]), 32, Some("HS256")).is_ok());
        let err = hmac(json!(["HS512"]), 32, Some("HS512")).unwrap_err();
        assert!(
            err.starts_with("providers.idp.jwks.inline: JWKS keys[0]: HMAC secret of 32 bytes, shorter than the 64 HS512 needs"),
            "{err}"
        );
    }

    #[test]
    fn istio_doubles_are_whole_numbers() {
        let mut c = minimal();
        c["max_token_bytes"] = json!(4096.0);
        c["providers"]["idp"]["clock_skew_seconds"] = json!(30.0);
        let config = parse(c).unwrap();
        assert_eq!(config.max_token_bytes, 4096);
        assert_eq!(config.providers[0].claims.clock_skew_secs, 30);
    }

    #[test]
    fn a_full_configuration_parses() {
        let keys = testkit::keys();
        let config = parse(json!({
            "providers": {
                "idp": {
                    "issuer": "https://idp", "audiences": ["orders"],
                    "jwks": {"remote": {"cluster": "idp", "path": "/jwks", "authority": "idp.example",
                                        "timeout": "2s", "cache_duration": "5m", "max_wait": "1s"}},
                    "algorithms": ["RS256", "ES256"],
                    "max_lifetime": "1h",
                    "from_headers": [{"name": "X-Token"}],
                    "from_params": ["access_token"],
                    "from_cookies": ["session"],
                    "forward": true,
                    "claim_to_headers": {"x-user": "sub", "x-org": ["org.id", "tenant_id"]}
                },
                "internal": {
                    "issuer": "internal", "audiences": "any", "algorithms": ["HS256"],
                    "jwks": {"inline": {"keys": [keys.hmac_jwk("h")]}}
                }
            },
            "rules": [
                {"match": {"prefix": "/public/"}, "public": true},
                {"match": {"prefix": "/orders", "methods": ["POST"]}, "providers": ["idp"], "required_scopes": ["orders:write"]},
                {"match": {"prefix": "/maybe"}, "providers": ["internal", "idp"], "allow_missing": true}
            ],
            "default": {"providers": ["idp"]},
            "bypass_cors_preflight": true,
            "realm": "orders"
        }))
        .unwrap();
        assert_eq!(config.providers.len(), 2);
        let idp = &config.providers[config.provider_index("idp").unwrap()];
        assert_eq!(idp.locations.len(), 3);
        assert_eq!(idp.claims.max_lifetime_secs, Some(3600));
        assert_eq!(
            config.output_headers,
            ["x-org", "x-scopes", "x-tenant-id", "x-user", "x-user-id"]
        );
        let internal = config.provider_index("internal").unwrap();
        assert!(matches!(
            config.rules.table.select(&wasmgate_config::RouteRequest::new("GET", "/maybe/x")),
            Some(Requirement::Token { providers, allow_missing: true, .. }) if providers[0] == internal
        ));
        assert_eq!(
            config
                .rules
                .table
                .select(&wasmgate_config::RouteRequest::new("GET", "/public/a")),
            Some(&Requirement::Public)
        );
    }

    #[test]
    fn the_documented_example_parses() {
        // The example of docs/filters/jwt.md must stay a valid configuration.
        let page = include_str!("../../../docs/filters/jwt.md");
        let marked = &page[page.find("<!-- example: jwt -->\n```json\n").unwrap()..];
        let start = marked.find("```json\n").unwrap() + "```json\n".len();
        let example = &marked[start..start + marked[start..].find("```").unwrap()];
        let config = JwtConfig::from_json(example.as_bytes()).unwrap();
        assert_eq!(config.providers.len(), 2);
        assert_eq!(config.realm, "orders");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"providers": {}, "default": {"public": true}}),
                "providers: name at least one",
            ),
            (
                edited(|c| c["rules"] = json!([{"public": true}])),
                "rules[0].match: every rule needs a match",
            ),
            (
                edited(|c| c["default"]["match"] = json!({"prefix": "/"})),
                "default.match",
            ),
            (
                json!({"providers": {"idp": {"issuer": "i", "audiences": "any", "jwks": remote()}}}),
                "missing field `default`",
            ),
            (
                edited(|c| c["default"] = json!({})),
                "default.providers: name the providers",
            ),
            (
                edited(|c| c["default"] = json!({"providers": ["nope"]})),
                "default.providers[0]: no provider named \"nope\"",
            ),
            (
                edited(|c| c["default"] = json!({"public": true, "providers": ["idp"]})),
                "default.public",
            ),
            (
                edited(|c| {
                    c["default"] = json!({"providers": ["idp"], "allow_missing": true, "required_scopes": ["a"]})
                }),
                "default.allow_missing",
            ),
            (
                edited(
                    |c| c["rules"] = json!([{"match": {"prefix": "/"}, "providers": ["idp"], "required_scopes": ["a b"]}]),
                ),
                "rules[0].required_scopes[0]",
            ),
            (
                edited(|c| c["providers"]["idp"]["algorithms"] = json!(["none"])),
                "providers.idp.algorithms[0]: \"none\" is not supported",
            ),
            (
                edited(|c| c["providers"]["idp"]["algorithms"] = json!(["HS256"])),
                "providers.idp.algorithms: HS256/384/512 need an inline JWKS",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"] = json!({})),
                "providers.idp.jwks: exactly one of",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"] = json!({"inline": {"keys": []}})),
                "providers.idp.jwks.inline: JWKS has no usable signing key",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"]["path"] = json!("jwks")),
                "providers.idp.jwks.remote.path",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"]["timeout"] = json!("5")),
                "providers.idp.jwks.remote.timeout",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"]["max_wait"] = json!("2m")),
                "providers.idp.jwks.remote.max_wait",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"]["remote"]["backoff_initial"] = json!("2m")
                }),
                "providers.idp.jwks.remote.backoff_initial",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"]["clustr"] = json!("x")),
                "providers.idp.jwks.remote.clustr: unknown field",
            ),
            (
                edited(|c| c["providers"]["idp"]["claim_to_headers"] = json!({"x user": "sub"})),
                "providers.idp.claim_to_headers.x user",
            ),
            (
                edited(|c| c["providers"]["idp"]["claim_to_headers"] = json!({"x-user": "a..b"})),
                "providers.idp.claim_to_headers.x-user",
            ),
            (
                edited(|c| c["providers"]["idp"]["claim_to_headers"] = json!({":path": "sub"})),
                "providers.idp.claim_to_headers.:path",
            ),
            (
                edited(|c| c["providers"]["idp"]["from_headers"] = json!([{"name": ":path"}])),
                "providers.idp.from_headers[0].name",
            ),
            (
                edited(|c| c["providers"]["idp"]["issuer"] = json!("")),
                "providers.idp.issuer",
            ),
            (
                edited(|c| c["providers"]["idp"]["audience"] = json!(["a"])),
                "providers.idp.audience: unknown field",
            ),
            (
                edited(|c| c["providers"]["idp"]["audiences"] = json!([])),
                "providers.idp.audiences: an empty list accepts no token: list the audiences",
            ),
            (
                edited(|c| c["providers"]["idp"]["audiences"] = json!("all")),
                "providers.idp.audiences: expected a list of strings or \"any\"",
            ),
            (
                edited(|c| c["providers"]["idp"]["audiences"] = json!(["a", ""])),
                "providers.idp.audiences[1]: must be a non-empty string",
            ),
            (
                edited(|c| c["providers"]["idp"]["required_typ"] = json!([])),
                "providers.idp.required_typ: an empty list accepts no token",
            ),
            (
                edited(|c| c["providers"]["idp"]["required_typ"] = json!(["at jwt"])),
                "providers.idp.required_typ[0]: \"at jwt\" is not a media type",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"]["remote"]["max_cache_duration"] = json!("25h")
                }),
                "providers.idp.jwks.remote.max_cache_duration: at most 24h",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"]["max_staleness"] = json!("2d")),
                "providers.idp.jwks.remote.max_staleness: at most 24h",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"]["cache_duration"] = json!("2h")),
                "providers.idp.jwks.remote.cache_duration: must not be more than max_cache_duration (1h unless set)",
            ),
            (
                edited(|c| c["max_waiting_requests"] = json!(0)),
                "max_waiting_requests: must be between 1 and 100000",
            ),
            (
                edited(|c| c["max_waiting_requests"] = json!(100_001)),
                "max_waiting_requests: must be between 1 and 100000",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"] = json!({"cluster": "idp"})),
                "providers.idp.jwks.remote.path: required: the JWKS's path at the cluster (or set \"discovery\": true",
            ),
            (
                edited(|c| c["providers"]["idp"]["jwks"]["remote"]["discovery"] = json!(true)),
                "providers.idp.jwks.remote.path: with \"discovery\", the JWKS's location is the document's jwks_uri: leave path out",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["issuer"] = json!("billing-jobs");
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": true}});
                }),
                "providers.idp.jwks.remote.discovery: the issuer is where the document is found, but \"billing-jobs/.well-known/openid-configuration\" is not an http(s) URL; give the document's URL instead",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": "idp/config"}});
                }),
                "providers.idp.jwks.remote.discovery: \"idp/config\" is not an http(s) URL",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": "yes"}});
                }),
                "providers.idp.jwks.remote.discovery: \"yes\" is not an http(s) URL",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": 1}});
                }),
                "providers.idp.jwks.remote.discovery: expected true, false or the discovery document's URL",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"]["remote"]["jwks_clusters"] = json!({"keys": "k"})
                }),
                "providers.idp.jwks.remote.jwks_clusters: only with \"discovery\"",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": true,
                                                                     "jwks_clusters": {"keys:443": "k"}}});
                }),
                "providers.idp.jwks.remote.jwks_clusters.keys:443: leave the port out",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": true,
                                                                     "jwks_clusters": {"keys": ""}}});
                }),
                "providers.idp.jwks.remote.jwks_clusters.keys: must name an Envoy cluster",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": true,
                                                                     "jwks_clusters": {"keys": "a", "KEYS": "b"}}});
                }),
                "providers.idp.jwks.remote.jwks_clusters: host \"keys\" is named twice",
            ),
            (
                edited(|c| {
                    c["providers"]["idp"]["jwks"] = json!({"remote": {"cluster": "idp", "discovery": true,
                                                                     "jwks_clusters": {"IDP": "other"}}});
                }),
                "providers.idp.jwks.remote.jwks_clusters.idp: this is the discovery document's own host",
            ),
            (edited(|c| c["realm"] = json!("a\"b")), "realm"),
            (
                edited(|c| c["max_token_bytes"] = json!(100)),
                "max_token_bytes",
            ),
            (
                edited(|c| c["max_token_bytes"] = json!(8192.5)),
                "max_token_bytes",
            ),
            (
                edited(|c| {
                    c["providers"] = json!({"bad name": {"issuer": "i", "audiences": "any", "jwks": remote()}});
                    c["default"] = json!({"public": true});
                }),
                "providers.bad name: provider names",
            ),
        ];
        for (config, expected) in cases {
            let err = parse(config.clone()).unwrap_err();
            assert!(
                err.contains(expected),
                "{config}\n  gave: {err}\n  want: {expected}"
            );
        }
    }
}
