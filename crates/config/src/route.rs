use crate::ConfigError;
use serde::Deserialize;

/// Where a rule applies: a path (prefix or exact) and, optionally, a set of methods.
///
/// Written in JSON as `{"prefix": "/api/"}` or `{"exact": "/health", "methods": ["GET"]}`.
/// The query string is not part of the path that is matched. Prefixes are plain string
/// prefixes, as Envoy's route `prefix`: `/api` also matches `/apix`; write `/api/` when
/// you mean the segment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RouteMatchSpec")]
pub struct RouteMatch {
    path: PathMatch,
    /// Upper-case method names; empty means any method.
    methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RouteMatchSpec {
    prefix: Option<String>,
    exact: Option<String>,
    methods: Option<Vec<String>>,
}

/// The written form's schema, and what the derive cannot say: exactly one of
/// `prefix` and `exact`.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for RouteMatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RouteMatch".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = RouteMatchSpec::json_schema(generator);
        schema.insert(
            "oneOf".into(),
            serde_json::json!([
                {"required": ["prefix"], "properties": {"prefix": {"type": "string"}}},
                {"required": ["exact"], "properties": {"exact": {"type": "string"}}},
            ]),
        );
        schema
    }
}

impl TryFrom<RouteMatchSpec> for RouteMatch {
    type Error = ConfigError;

    fn try_from(spec: RouteMatchSpec) -> Result<Self, ConfigError> {
        let path = match (spec.prefix, spec.exact) {
            (Some(prefix), None) => PathMatch::Prefix(check_path("prefix", prefix)?),
            (None, Some(exact)) => PathMatch::Exact(check_path("exact", exact)?),
            _ => {
                return Err(ConfigError::new(
                    "",
                    r#"exactly one of "prefix" or "exact" is required"#,
                ))
            }
        };
        let methods = match spec.methods {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    "methods",
                    "an empty list matches nothing; leave the field out to match every method",
                ))
            }
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, method)| {
                    if !method.is_empty() && method.chars().all(|c| c.is_ascii_alphabetic()) {
                        Ok(method.to_ascii_uppercase())
                    } else {
                        Err(ConfigError::new(
                            format!("methods[{i}]"),
                            format!("{method:?} is not an HTTP method"),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self { path, methods })
    }
}

fn check_path(field: &str, path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/') {
        return Err(ConfigError::new(
            field,
            format!("{path:?} must start with \"/\""),
        ));
    }
    if path.contains(['?', '#']) || path.chars().any(char::is_control) {
        return Err(ConfigError::new(
            field,
            format!("{path:?} may not contain '?', '#' or control characters"),
        ));
    }
    Ok(path)
}

impl RouteMatch {
    pub fn prefix(prefix: &str) -> Self {
        Self {
            path: PathMatch::Prefix(prefix.to_owned()),
            methods: Vec::new(),
        }
    }

    pub fn path(&self) -> &PathMatch {
        &self.path
    }

    /// `path` is the request's `:path`; anything from `?` on is ignored.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path_ok = match &self.path {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// Rules tried in order, first match wins, with an optional fallback for requests that
/// no rule matched.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    rules: Vec<(RouteMatch, T)>,
    fallback: Option<T>,
}

impl<T> RouteTable<T> {
    pub fn new(rules: Vec<(RouteMatch, T)>, fallback: Option<T>) -> Self {
        Self { rules, fallback }
    }

    pub fn select(&self, method: &str, path: &str) -> Option<&T> {
        self.rules
            .iter()
            .find(|(route, _)| route.matches(method, path))
            .map(|(_, value)| value)
            .or(self.fallback.as_ref())
    }

    pub fn rules(&self) -> impl Iterator<Item = &(RouteMatch, T)> {
        self.rules.iter()
    }

    pub fn fallback(&self) -> Option<&T> {
        self.fallback.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: &str) -> Result<RouteMatch, String> {
        crate::from_json::<RouteMatch>(json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn prefix_ignores_the_query() {
        let r = route(r#"{"prefix":"/api/"}"#).unwrap();
        assert!(r.matches("GET", "/api/users?x=1"));
        assert!(!r.matches("GET", "/ap?/api/"));
    }

    #[test]
    fn exact_and_methods() {
        let r = route(r#"{"exact":"/health","methods":["get","HEAD"]}"#).unwrap();
        assert!(r.matches("GET", "/health"));
        assert!(r.matches("HEAD", "/health?probe=1"));
        assert!(!r.matches("POST", "/health"));
        assert!(!r.matches("GET", "/health/x"));
    }

    #[test]
    fn invalid_matches_name_the_problem() {
        assert!(route(r#"{}"#).unwrap_err().contains("exactly one of"));
        assert!(route(r#"{"prefix":"/a","exact":"/a"}"#)
            .unwrap_err()
            .contains("exactly one of"));
        assert!(route(r#"{"prefix":"api"}"#)
            .unwrap_err()
            .contains("must start with"));
        assert!(route(r#"{"prefix":"/a","methods":[]}"#)
            .unwrap_err()
            .contains("empty list"));
        assert!(route(r#"{"prefix":"/a","methods":["G T"]}"#)
            .unwrap_err()
            .contains("not an HTTP method"));
        assert!(route(r#"{"prefx":"/a"}"#)
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn first_match_wins_then_fallback() {
        let table = RouteTable::new(
            vec![
                (RouteMatch::prefix("/a/b"), 1),
                (RouteMatch::prefix("/a"), 2),
            ],
            Some(0),
        );
        assert_eq!(table.select("GET", "/a/b/c"), Some(&1));
        assert_eq!(table.select("GET", "/a/x"), Some(&2));
        assert_eq!(table.select("GET", "/z"), Some(&0));
        let strict: RouteTable<i32> = RouteTable::new(vec![(RouteMatch::prefix("/a"), 2)], None);
        assert_eq!(strict.select("GET", "/z"), None);
    }
}
