//! The limits: envoyproxy/ratelimit's configuration format, read, checked and compiled into a
//! tree the service matches request descriptors against.
//!
//! One YAML document per domain (a file may hold several, separated by `---`; a directory
//! holds `*.yaml`/`*.yml` files):
//!
//! ```yaml
//! domain: wasmgate
//! descriptors:
//!   - key: tenant                 # any value: one counter per tenant
//!     rate_limit: {unit: minute, requests_per_unit: 100, name: per-tenant}
//!     descriptors:
//!       - key: path
//!         value: /search          # this value only
//!         rate_limit: {unit: second, requests_per_unit: 5}
//!         shadow_mode: true       # counted, logged, never refused
//!   - key: tenant
//!     value: internal
//!     rate_limit: {unlimited: true}
//! ```
//!
//! Matching follows envoyproxy/ratelimit: a descriptor's entries walk the tree one level per
//! entry; at each level the entry `key: value` is tried first, then a `value` ending in `*`
//! (prefix match, first in file order), then `key` alone; the walk descends only into a node
//! with nested descriptors. A limit applies when the node reached by the descriptor's *last*
//! entry has one (the depths must agree). Nothing here counts: see `counting.rs`.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The unit of a rate limit: the length of its fixed window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    /// 30 days (envoyproxy/ratelimit's length, not the calendar month).
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    const NAMES: &'static str = "second, minute, hour, day, week, month, year";

    fn parse(name: &str) -> Option<Unit> {
        Some(match name.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    /// The unit given in a request's limit override (`envoy.type.v3.RateLimitUnit` numbers).
    pub fn from_proto(number: i32) -> Option<Unit> {
        Some(match number {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            _ => return None,
        })
    }

    /// `RateLimitResponse.RateLimit.Unit` number, as answered in `current_limit`.
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 2_592_000,
            Unit::Year => 31_536_000,
        }
    }
}

/// What a matched descriptor is limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Never limited, never counted (`unlimited: true`).
    Unlimited,
    /// At most `requests_per_unit` hits per window of one `unit` (0 refuses everything).
    PerUnit { requests_per_unit: u32, unit: Unit },
}

/// One `rate_limit` block of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub domain: String,
    /// Where it is: `domain.key_value.key` (envoyproxy/ratelimit's stats key).
    pub path: String,
    pub rate: Rate,
    /// Counted and reported, never refused.
    pub shadow: bool,
    /// `rate_limit.name`, the name `replaces` refers to and `current_limit.name` carries.
    pub name: Option<String>,
    /// Names of the rules this one switches off when both match in one request.
    pub replaces: Vec<String>,
}

/// Index of a rule in [`Limits::rules`].
pub type RuleId = usize;

/// The compiled configuration: every domain's tree, every rule.
#[derive(Debug, Default)]
pub struct Limits {
    domains: HashMap<String, Level>,
    rules: Vec<Rule>,
}

#[derive(Debug, Default)]
struct Level {
    /// key → value → node.
    exact: HashMap<String, HashMap<String, Node>>,
    /// (key, value prefix, node), in file order.
    prefixes: Vec<(String, String, Node)>,
    /// key → node (any value).
    any_value: HashMap<String, Node>,
}

#[derive(Debug, Default)]
struct Node {
    rule: Option<RuleId>,
    children: Level,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && self.any_value.is_empty()
    }

    fn find(&self, key: &str, value: &str) -> Option<&Node> {
        if let Some(node) = self.exact.get(key).and_then(|values| values.get(value)) {
            return Some(node);
        }
        let prefixed = self
            .prefixes
            .iter()
            .find(|(k, prefix, _)| k == key && value.starts_with(prefix.as_str()));
        match prefixed {
            Some((_, _, node)) => Some(node),
            None => self.any_value.get(key),
        }
    }
}

impl Limits {
    /// The rule for one descriptor (its entries in order), or `None`: no such domain, no
    /// node at the descriptor's depth, or a node without a `rate_limit`.
    pub fn rule_for<'a, I>(&self, domain: &str, entries: I) -> Option<RuleId>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut level = self.domains.get(domain)?;
        let entries = entries.into_iter();
        let last = entries.len().checked_sub(1)?;
        for (depth, (key, value)) in entries.enumerate() {
            let node = level.find(key, value)?;
            if depth == last {
                return node.rule;
            }
            if node.children.is_empty() {
                return None;
            }
            level = &node.children;
        }
        None
    }

    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[id]
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// Reads `path`: one YAML file (one or more documents), or a directory whose `*.yaml` and
    /// `*.yml` files (not hidden) are read in name order.
    pub fn load(path: &Path) -> Result<Limits, ConfigError> {
        Limits::from_sources(&read_sources(path)?)
    }

    /// Compiles files already read (see [`read_sources`]).
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Limits, ConfigError> {
        let mut limits = LimitsBuilder::default();
        for (file, text) in sources {
            limits.add_file(file, text)?;
        }
        Ok(limits.limits)
    }

    /// Parses one file's text.
    #[cfg(test)]
    pub fn parse(file: &Path, text: &str) -> Result<Limits, ConfigError> {
        let mut limits = LimitsBuilder::default();
        limits.add_file(file, text)?;
        Ok(limits.limits)
    }
}

/// The files a `--config` path stands for, with their text.
pub fn read_sources(path: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let read = |file: &Path| {
        std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read: {e}")))
    };
    let metadata = std::fs::metadata(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
    if !metadata.is_dir() {
        return Ok(vec![(path.to_path_buf(), read(path)?)]);
    }
    let listing = std::fs::read_dir(path)
        .map_err(|e| ConfigError::file(path, format!("cannot list: {e}")))?;
    let mut files = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| ConfigError::file(path, format!("cannot list: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // Kubernetes mounts a ConfigMap as symlinks into a hidden `..data` directory.
        if name.starts_with('.') || !yaml || !entry.path().is_file() {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::file(
            path,
            "no *.yaml or *.yml file in this directory",
        ));
    }
    files
        .into_iter()
        .map(|f| read(&f).map(|t| (f, t)))
        .collect()
}

/// A configuration the service refuses, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(u64, u64)>,
    pub message: String,
}

impl ConfigError {
    fn file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            at: None,
            message: message.into(),
        }
    }

    fn at(file: &Path, location: &Location, message: impl Into<String>) -> ConfigError {
        let at = (location.line() > 0).then(|| (location.line(), location.column()));
        ConfigError {
            file: file.to_path_buf(),
            at,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// ---- The file format (envoyproxy/ratelimit's keys; anything else is refused). ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: Spanned<Scalar>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: Spanned<Scalar>,
    #[serde(default)]
    value: Option<Scalar>,
    #[serde(default)]
    rate_limit: Option<Spanned<RawRateLimit>>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
    #[serde(default)]
    shadow_mode: bool,
    /// envoyproxy/ratelimit's per-value statistics: accepted, no effect here (the service's
    /// metrics are per domain).
    #[serde(default)]
    #[allow(dead_code)]
    detailed_metric: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default)]
    unit: Option<Spanned<Scalar>>,
    #[serde(default)]
    requests_per_unit: Option<Spanned<Scalar>>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<Scalar>,
    #[serde(default)]
    replaces: Vec<RawReplaces>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplaces {
    name: Scalar,
}

/// A YAML scalar read as text, as envoyproxy/ratelimit's Go YAML does (`value: 500` is "500").
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[derive(Default)]
struct LimitsBuilder {
    limits: Limits,
}

impl LimitsBuilder {
    fn add_file(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let documents: Vec<RawDomain> = serde_saphyr::from_multiple(text).map_err(|e| {
            let message = first_line(&e.to_string());
            match e.location() {
                Some(location) => ConfigError::at(file, &location, message),
                None => ConfigError::file(file, message),
            }
        })?;
        if documents.is_empty() {
            return Err(ConfigError::file(file, "no domain in this file"));
        }
        for document in documents {
            self.add_domain(file, document)?;
        }
        Ok(())
    }

    fn add_domain(&mut self, file: &Path, raw: RawDomain) -> Result<(), ConfigError> {
        let domain = raw.domain.value.0;
        let at = raw.domain.referenced;
        if domain.is_empty() {
            return Err(ConfigError::at(file, &at, "`domain` must not be empty"));
        }
        if self.limits.domains.contains_key(&domain) {
            return Err(ConfigError::at(
                file,
                &at,
                format!("domain `{domain}` is configured twice"),
            ));
        }
        let level = self.level(file, &domain, &domain, raw.descriptors)?;
        self.limits.domains.insert(domain, level);
        Ok(())
    }

    fn level(
        &mut self,
        file: &Path,
        domain: &str,
        parent: &str,
        descriptors: Vec<RawDescriptor>,
    ) -> Result<Level, ConfigError> {
        let mut level = Level::default();
        for raw in descriptors {
            let key = raw.key.value.0;
            let key_at = raw.key.referenced;
            if key.is_empty() {
                return Err(ConfigError::at(
                    file,
                    &key_at,
                    "descriptor `key` must not be empty",
                ));
            }
            let value = raw.value.map(|v| v.0).filter(|v| !v.is_empty());
            let path = match &value {
                Some(value) => format!("{parent}.{key}_{value}"),
                None => format!("{parent}.{key}"),
            };
            let taken = match &value {
                None => level.any_value.contains_key(&key),
                Some(v) => match v.strip_suffix('*') {
                    Some(prefix) => level
                        .prefixes
                        .iter()
                        .any(|(k, p, _)| *k == key && p == prefix),
                    None => level
                        .exact
                        .get(&key)
                        .is_some_and(|values| values.contains_key(v)),
                },
            };
            if taken {
                return Err(ConfigError::at(
                    file,
                    &key_at,
                    format!("descriptor `{path}` is configured twice at this level"),
                ));
            }
            let rule = match raw.rate_limit {
                Some(rate_limit) => {
                    Some(self.rule(file, domain, &path, rate_limit, raw.shadow_mode)?)
                }
                None => None,
            };
            let children = self.level(file, domain, &path, raw.descriptors)?;
            let node = Node { rule, children };
            match value {
                None => {
                    level.any_value.insert(key, node);
                }
                Some(v) => match v.strip_suffix('*') {
                    Some(prefix) => level.prefixes.push((key, prefix.to_owned(), node)),
                    None => {
                        level.exact.entry(key).or_default().insert(v, node);
                    }
                },
            }
        }
        Ok(level)
    }

    fn rule(
        &mut self,
        file: &Path,
        domain: &str,
        path: &str,
        raw: Spanned<RawRateLimit>,
        shadow: bool,
    ) -> Result<RuleId, ConfigError> {
        let at = raw.referenced;
        let raw = raw.value;
        let fail = |message: String| Err(ConfigError::at(file, &at, format!("{path}: {message}")));
        let rate = match (raw.unlimited, raw.unit, raw.requests_per_unit) {
            (true, None, None) => Rate::Unlimited,
            (true, _, _) => {
                return fail(
                    "an `unlimited` rate_limit takes no `unit` or `requests_per_unit`".into(),
                )
            }
            (false, None, _) => {
                return fail(format!(
                    "rate_limit needs a `unit` (one of {})",
                    Unit::NAMES
                ))
            }
            (false, Some(_), None) => {
                return fail(
                    "rate_limit needs `requests_per_unit` (0 refuses every request)".into(),
                )
            }
            (false, Some(unit), Some(requests_per_unit)) => {
                let Ok(requests_per_unit) = requests_per_unit.value.0.parse::<u32>() else {
                    return Err(ConfigError::at(
                        file,
                        &requests_per_unit.referenced,
                        format!(
                            "{path}: requests_per_unit must be a whole number from 0 to {} (not `{}`)",
                            u32::MAX,
                            requests_per_unit.value.0
                        ),
                    ));
                };
                match Unit::parse(&unit.value.0) {
                    Some(unit) => Rate::PerUnit {
                        requests_per_unit,
                        unit,
                    },
                    None => {
                        return Err(ConfigError::at(
                            file,
                            &unit.referenced,
                            format!(
                                "{path}: unknown rate_limit unit `{}` (one of {})",
                                unit.value.0,
                                Unit::NAMES
                            ),
                        ))
                    }
                }
            }
        };
        let name = raw.name.map(|n| n.0).filter(|n| !n.is_empty());
        let mut replaces = Vec::with_capacity(raw.replaces.len());
        for replaced in raw.replaces {
            let replaced = replaced.name.0;
            if replaced.is_empty() {
                return fail("a `replaces` entry needs a `name`".into());
            }
            if name.as_deref() == Some(replaced.as_str()) {
                return fail(format!("rate_limit `{replaced}` cannot replace itself"));
            }
            replaces.push(replaced);
        }
        self.limits.rules.push(Rule {
            domain: domain.to_owned(),
            path: path.to_owned(),
            rate,
            shadow,
            name,
            replaces,
        });
        Ok(self.limits.rules.len() - 1)
    }
}

/// serde-saphyr's messages may carry a source snippet on further lines; the error names the
/// line and column itself.
/// Its `error: line L column C: ` prefix is dropped too.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((position, rest)) if position.contains(" column ") => rest.to_owned(),
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests;
