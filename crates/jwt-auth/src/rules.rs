//! Which requirement applies to a request: the first matching rule, else the
//! configured `default`; CORS preflights may bypass authentication altogether.

use crate::extract::RequestHeaders;
use wasmgate_config::{RouteRequest, RouteTable};

/// What a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// No token needed (the output headers are still stripped).
    Public,
    /// A valid token from any of `providers` (indexes into the config's providers,
    /// tried in this order), carrying every one of `required_scopes`.
    Token {
        providers: Vec<usize>,
        /// A request without a token passes (without identity headers); a request
        /// with an invalid token is still refused.
        allow_missing: bool,
        required_scopes: Vec<String>,
    },
}

/// The route table, the requirement where no rule matches, and the CORS switch.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The configured rules (the table has no fallback: `default` is that).
    pub table: RouteTable<Requirement>,
    /// The configuration's required `default`.
    pub default: Requirement,
    pub bypass_cors_preflight: bool,
}

impl Rules {
    /// The requirement for a request: `Public` for a CORS preflight when those
    /// bypass authentication, else the first matching rule's, else `default`.
    pub fn select(&self, method: &str, path: &str, headers: &dyn RequestHeaders) -> &Requirement {
        if self.bypass_cors_preflight && is_cors_preflight(method, headers) {
            return &Requirement::Public;
        }
        // The authority is read only where some rule names hosts.
        let authority = self
            .table
            .names_hosts()
            .then(|| headers.header(":authority"))
            .flatten();
        let request = RouteRequest::new(method, path).with_authority(authority.as_deref());
        self.table.select(&request).unwrap_or(&self.default)
    }
}

/// A preflight is `OPTIONS` with `Origin` and `Access-Control-Request-Method`. The
/// headers are read only for an `OPTIONS` request.
fn is_cors_preflight(method: &str, headers: &dyn RequestHeaders) -> bool {
    method == "OPTIONS"
        && headers.header("origin").is_some()
        && headers.header("access-control-request-method").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_config::RouteMatch;

    fn token(providers: Vec<usize>) -> Requirement {
        Requirement::Token {
            providers,
            allow_missing: false,
            required_scopes: vec![],
        }
    }

    /// `Origin` and `Access-Control-Request-Method`, when given.
    struct Headers(Option<&'static str>, Option<&'static str>);

    impl RequestHeaders for Headers {
        fn header(&self, name: &str) -> Option<String> {
            match name {
                "origin" => self.0,
                "access-control-request-method" => self.1,
                _ => None,
            }
            .map(str::to_owned)
        }
    }

    /// Only an `:authority`.
    struct Authority(&'static str);

    impl RequestHeaders for Authority {
        fn header(&self, name: &str) -> Option<String> {
            (name == ":authority").then(|| self.0.to_owned())
        }
    }

    #[test]
    fn rules_with_hosts_read_the_authority() {
        let admin: RouteMatch =
            wasmgate_config::from_json(br#"{"hosts": ["admin.example.com"]}"#).unwrap();
        let rules = Rules {
            table: RouteTable::new(
                vec![
                    (admin, token(vec![1])),
                    (RouteMatch::prefix("/public"), Requirement::Public),
                ],
                None,
            ),
            default: token(vec![0]),
            bypass_cors_preflight: false,
        };
        let at = |authority| Authority(authority);
        assert_eq!(
            rules.select("GET", "/public/x", &at("ADMIN.example.com:443")),
            &token(vec![1])
        );
        assert_eq!(
            rules.select("GET", "/public/x", &at("www.example.com")),
            &Requirement::Public
        );
        assert_eq!(
            rules.select("GET", "/x", &at("www.example.com")),
            &token(vec![0])
        );
        // No authority: the host rule does not apply.
        assert_eq!(
            rules.select("GET", "/public/x", &cors(false)),
            &Requirement::Public
        );
    }

    /// A preflight's headers, or none.
    fn cors(preflight: bool) -> Headers {
        if preflight {
            Headers(Some("https://a"), Some("POST"))
        } else {
            Headers(None, None)
        }
    }

    #[test]
    fn first_rule_then_default_and_cors_bypass() {
        let rules = Rules {
            table: RouteTable::new(
                vec![(RouteMatch::prefix("/public"), Requirement::Public)],
                None,
            ),
            default: token(vec![0]),
            bypass_cors_preflight: true,
        };
        assert_eq!(
            rules.select("GET", "/public/x", &cors(false)),
            &Requirement::Public
        );
        assert_eq!(
            rules.select("GET", "/orders", &cors(false)),
            &token(vec![0])
        );
        assert_eq!(
            rules.select("OPTIONS", "/orders", &cors(true)),
            &Requirement::Public
        );
        let strict = Rules {
            bypass_cors_preflight: false,
            ..rules
        };
        assert_eq!(
            strict.select("OPTIONS", "/orders", &cors(true)),
            &token(vec![0])
        );
    }

    #[test]
    fn preflight_needs_both_headers() {
        assert!(is_cors_preflight(
            "OPTIONS",
            &Headers(Some("https://a"), Some("POST"))
        ));
        assert!(!is_cors_preflight(
            "OPTIONS",
            &Headers(Some("https://a"), None)
        ));
        assert!(!is_cors_preflight("OPTIONS", &Headers(None, Some("POST"))));
        assert!(!is_cors_preflight(
            "GET",
            &Headers(Some("https://a"), Some("POST"))
        ));
    }
}
