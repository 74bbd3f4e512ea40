use crate::host::{request_host, HostPattern};
use crate::ConfigError;
use serde::Deserialize;
use std::borrow::Cow;

/// Where a rule applies: a path (prefix or exact) and, optionally, a set of methods
/// and a set of hosts.
///
/// Written in JSON as `{"prefix": "/api/"}`, `{"exact": "/health", "methods": ["GET"]}`
/// or `{"hosts": ["api.example.com", "*.api.example.com"], "prefix": "/v1/"}`. The
/// query string is not part of the path that is matched. Prefixes are plain string
/// prefixes, as Envoy's route `prefix`: `/api` also matches `/apix`; write `/api/` when
/// you mean the segment. A match with `hosts` may leave the path out: it then matches
/// every path of those hosts. Hosts are compared as [`crate::host`] says (no port, no
/// trailing dot, any case).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RouteMatchSpec")]
pub struct RouteMatch {
    path: PathMatch,
    /// Upper-case method names; empty means any method.
    methods: Vec<String>,
    /// Empty means any host.
    hosts: Vec<HostPattern>,
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
    hosts: Option<Vec<String>>,
    prefix: Option<String>,
    exact: Option<String>,
    methods: Option<Vec<String>>,
}

/// The written form's schema, and what the derive cannot say: not both `prefix` and
/// `exact`, and one of them or `hosts`.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for RouteMatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RouteMatch".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = RouteMatchSpec::json_schema(generator);
        let given = |field: &str, kind: &str| serde_json::json!({"required": [field], "properties": {field: {"type": kind}}});
        schema.insert(
            "anyOf".into(),
            serde_json::json!([
                given("prefix", "string"),
                given("exact", "string"),
                given("hosts", "array")
            ]),
        );
        schema.insert(
            "not".into(),
            serde_json::json!({
                "required": ["prefix", "exact"],
                "properties": {"prefix": {"type": "string"}, "exact": {"type": "string"}},
            }),
        );
        schema
    }
}

impl TryFrom<RouteMatchSpec> for RouteMatch {
    type Error = ConfigError;

    fn try_from(spec: RouteMatchSpec) -> Result<Self, ConfigError> {
        let hosts = match spec.hosts {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    "hosts",
                    "an empty list matches nothing; leave the field out to match every host",
                ))
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, host)| {
                    HostPattern::parse(host).map_err(|p| ConfigError::new(format!("hosts[{i}]"), p))
                })
                .collect::<Result<_, _>>()?,
        };
        let path = match (spec.prefix, spec.exact) {
            (Some(prefix), None) => PathMatch::Prefix(check_path("prefix", prefix)?),
            (None, Some(exact)) => PathMatch::Exact(check_path("exact", exact)?),
            // A host's every path.
            (None, None) if !hosts.is_empty() => PathMatch::Prefix("/".to_owned()),
            (None, None) => {
                return Err(ConfigError::new(
                    "",
                    r#"one of "prefix" or "exact" is required (or "hosts", for every path of those hosts)"#,
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "",
                    r#"give one of "prefix" or "exact", not both"#,
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
        Ok(Self {
            path,
            methods,
            hosts,
        })
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

/// What a rule looks at in a request: its method, its path and the host of its
/// `:authority`, in the form rules compare them.
#[derive(Debug, Clone)]
pub struct RouteRequest<'a> {
    method: &'a str,
    /// The `:path` up to `?` or `#`.
    path: &'a str,
    /// `None` when the request has no `:authority` (or the caller did not read it
    /// because no rule names hosts): then no rule with `hosts` matches.
    host: Option<Cow<'a, str>>,
}

impl<'a> RouteRequest<'a> {
    /// `path` is the request's `:path`; anything from `?` on is ignored.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path: path.split(['?', '#']).next().unwrap_or(""),
            host: None,
        }
    }

    /// The request's `:authority` (HTTP/1.1 `Host`), port and all.
    pub fn with_authority(mut self, authority: Option<&'a str>) -> Self {
        self.host = authority.map(request_host);
        self
    }
}

impl RouteMatch {
    pub fn prefix(prefix: &str) -> Self {
        Self {
            path: PathMatch::Prefix(prefix.to_owned()),
            methods: Vec::new(),
            hosts: Vec::new(),
        }
    }

    pub fn path(&self) -> &PathMatch {
        &self.path
    }

    /// Whether the match names hosts (only then does it need the request's authority).
    pub fn names_hosts(&self) -> bool {
        !self.hosts.is_empty()
    }

    pub fn matches(&self, request: &RouteRequest<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(prefix) => request.path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => request.path == exact,
        };
        path_ok
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == request.method))
            && (self.hosts.is_empty()
                || request
                    .host
                    .as_deref()
                    .is_some_and(|host| self.hosts.iter().any(|h| h.matches(host))))
    }
}

/// Rules tried in order, first match wins, with an optional fallback for requests that
/// no rule matched.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    rules: Vec<(RouteMatch, T)>,
    fallback: Option<T>,
    /// Some rule names hosts: callers read the request's authority only then.
    names_hosts: bool,
}

impl<T> RouteTable<T> {
    pub fn new(rules: Vec<(RouteMatch, T)>, fallback: Option<T>) -> Self {
        let names_hosts = rules.iter().any(|(route, _)| route.names_hosts());
        Self {
            rules,
            fallback,
            names_hosts,
        }
    }

    /// Whether any rule names hosts: when none does, [`RouteTable::select`] needs no
    /// authority and the caller may skip reading it.
    pub fn names_hosts(&self) -> bool {
        self.names_hosts
    }

    pub fn select(&self, request: &RouteRequest<'_>) -> Option<&T> {
        self.rules
            .iter()
            .find(|(route, _)| route.matches(request))
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

    fn request<'a>(method: &'a str, path: &'a str) -> RouteRequest<'a> {
        RouteRequest::new(method, path)
    }

    fn at<'a>(authority: &'a str, method: &'a str, path: &'a str) -> RouteRequest<'a> {
        RouteRequest::new(method, path).with_authority(Some(authority))
    }

    #[test]
    fn prefix_ignores_the_query() {
        let r = route(r#"{"prefix":"/api/"}"#).unwrap();
        assert!(r.matches(&request("GET", "/api/users?x=1")));
        assert!(!r.matches(&request("GET", "/ap?/api/")));
    }

    #[test]
    fn exact_and_methods() {
        let r = route(r#"{"exact":"/health","methods":["get","HEAD"]}"#).unwrap();
        assert!(r.matches(&request("GET", "/health")));
        assert!(r.matches(&request("HEAD", "/health?probe=1")));
        assert!(!r.matches(&request("POST", "/health")));
        assert!(!r.matches(&request("GET", "/health/x")));
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix_whatever_the_port_and_case() {
        let r = route(r#"{"hosts":["api.example.com","*.partners.example.com"],"prefix":"/v1/"}"#)
            .unwrap();
        assert!(r.names_hosts());
        assert!(r.matches(&at("api.example.com", "GET", "/v1/x")));
        assert!(r.matches(&at("API.example.com:8443", "GET", "/v1/x")));
        assert!(r.matches(&at("acme.partners.example.com.", "GET", "/v1/x")));
        // Each part of the match must hold.
        assert!(!r.matches(&at("api.example.com", "GET", "/v2/x")));
        assert!(!r.matches(&at("partners.example.com", "GET", "/v1/x")));
        assert!(!r.matches(&at("www.example.com", "GET", "/v1/x")));
        // No authority (or one not read): a match with hosts does not apply.
        assert!(!r.matches(&request("GET", "/v1/x")));
        // Without hosts, any host (or none) matches.
        let any = route(r#"{"prefix":"/v1/"}"#).unwrap();
        assert!(!any.names_hosts());
        assert!(any.matches(&at("www.example.com", "GET", "/v1/x")));
        assert!(any.matches(&request("GET", "/v1/x")));
    }

    #[test]
    fn hosts_alone_match_every_path_of_those_hosts() {
        let r = route(r#"{"hosts":["admin.example.com"],"methods":["GET"]}"#).unwrap();
        assert!(r.matches(&at("admin.example.com", "GET", "/")));
        assert!(r.matches(&at("admin.example.com", "GET", "/any/thing?x")));
        assert!(!r.matches(&at("admin.example.com", "POST", "/")));
        assert!(!r.matches(&at("api.example.com", "GET", "/")));
    }

    #[test]
    fn invalid_matches_name_the_problem() {
        assert!(route(r#"{}"#)
            .unwrap_err()
            .contains("one of \"prefix\" or \"exact\""));
        assert!(route(r#"{"prefix":"/a","exact":"/a"}"#)
            .unwrap_err()
            .contains("not both"));
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
        assert_eq!(
            route(r#"{"prefix":"/a","hosts":[]}"#).unwrap_err(),
            "hosts: an empty list matches nothing; leave the field out to match every host"
        );
        assert_eq!(
            route(r#"{"prefix":"/a","hosts":["a.example.com","b.example.com:443"]}"#).unwrap_err(),
            "hosts[1]: \"b.example.com:443\": leave the port out: hosts are compared without it"
        );
        assert!(route(r#"{"hosts":["*"]}"#)
            .unwrap_err()
            .contains("leave \"hosts\" out"));
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
        assert!(!table.names_hosts());
        assert_eq!(table.select(&request("GET", "/a/b/c")), Some(&1));
        assert_eq!(table.select(&request("GET", "/a/x")), Some(&2));
        assert_eq!(table.select(&request("GET", "/z")), Some(&0));
        let strict: RouteTable<i32> = RouteTable::new(vec![(RouteMatch::prefix("/a"), 2)], None);
        assert_eq!(strict.select(&request("GET", "/z")), None);
    }

    #[test]
    fn each_host_gets_its_own_rules_in_one_table() {
        let rule = |json: &str| route(json).unwrap();
        let table = RouteTable::new(
            vec![
                (rule(r#"{"hosts":["admin.example.com"]}"#), "admin"),
                (
                    rule(r#"{"hosts":["*.example.com"],"prefix":"/public/"}"#),
                    "public",
                ),
                (rule(r#"{"prefix":"/public/"}"#), "public elsewhere"),
            ],
            Some("default"),
        );
        assert!(table.names_hosts());
        let pick = |authority, path| table.select(&at(authority, "GET", path)).copied();
        assert_eq!(pick("admin.example.com", "/public/x"), Some("admin"));
        assert_eq!(pick("shop.example.com:443", "/public/x"), Some("public"));
        assert_eq!(pick("other.test", "/public/x"), Some("public elsewhere"));
        assert_eq!(pick("shop.example.com", "/private"), Some("default"));
    }
}
