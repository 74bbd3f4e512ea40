//! Which requirement applies to a request: the first matching rule, else the
//! configured `default`; CORS preflights may bypass authentication altogether.

use wasmgate_config::RouteTable;

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

/// The route table plus the CORS switch.
#[derive(Debug, Clone)]
pub struct Rules {
    pub table: RouteTable<Requirement>,
    pub bypass_cors_preflight: bool,
}

/// The request line and the headers a CORS preflight is recognised by.
pub struct RouteInput<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub is_cors_preflight: bool,
}

impl Rules {
    pub fn select(&self, input: &RouteInput<'_>) -> &Requirement {
        if self.bypass_cors_preflight && input.is_cors_preflight {
            return &Requirement::Public;
        }
        // `default` is required by the configuration, so the fallback always exists;
        // `Public` here would only be reached by a table built without one in tests.
        self.table
            .select(input.method, input.path)
            .unwrap_or(&Requirement::Public)
    }
}

/// A preflight is `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_cors_preflight(method: &str, origin: Option<&str>, request_method: Option<&str>) -> bool {
    method == "OPTIONS" && origin.is_some() && request_method.is_some()
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

    #[test]
    fn first_rule_then_default_and_cors_bypass() {
        let rules = Rules {
            table: RouteTable::new(
                vec![(RouteMatch::prefix("/public"), Requirement::Public)],
                Some(token(vec![0])),
            ),
            bypass_cors_preflight: true,
        };
        let input = |method, path, cors| RouteInput {
            method,
            path,
            is_cors_preflight: cors,
        };
        assert_eq!(
            rules.select(&input("GET", "/public/x", false)),
            &Requirement::Public
        );
        assert_eq!(
            rules.select(&input("GET", "/orders", false)),
            &token(vec![0])
        );
        assert_eq!(
            rules.select(&input("OPTIONS", "/orders", true)),
            &Requirement::Public
        );
        let strict = Rules {
            bypass_cors_preflight: false,
            ..rules
        };
        assert_eq!(
            strict.select(&input("OPTIONS", "/orders", true)),
            &token(vec![0])
        );
    }

    #[test]
    fn preflight_needs_both_headers() {
        assert!(is_cors_preflight(
            "OPTIONS",
            Some("https://a"),
            Some("POST")
        ));
        assert!(!is_cors_preflight("OPTIONS", Some("https://a"), None));
        assert!(!is_cors_preflight("OPTIONS", None, Some("POST")));
        assert!(!is_cors_preflight("GET", Some("https://a"), Some("POST")));
    }
}
