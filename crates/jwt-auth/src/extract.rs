//! Where a provider looks for its token: request headers (with a prefix such as
//! `Bearer `), query parameters, cookies.
//!
//! Extraction only finds text; it does not judge it. The size cap is applied by the
//! caller before anything is decoded.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// The header's value after `prefix` (compared case-insensitively, as RFC 9110
    /// auth schemes are). An empty prefix takes the whole value. `name` is a
    /// lower-case header name, checked when the configuration was parsed.
    Header { name: String, prefix: String },
    /// A query parameter of `:path`.
    Param(String),
    /// A cookie of the `cookie` header.
    Cookie(String),
}

/// The request as extraction needs it.
pub trait RequestHeaders {
    /// The first value of a header (lower-case name), or `None`.
    fn header(&self, name: &str) -> Option<String>;
}

impl TokenLocation {
    /// The default: `Authorization: Bearer <token>`.
    pub fn bearer() -> Self {
        TokenLocation::Header {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        }
    }

    /// The token at this location, if there is a non-empty one. `path` is `:path`.
    pub fn find(&self, request: &dyn RequestHeaders, path: &str) -> Option<String> {
        let token = match self {
            TokenLocation::Header { name, prefix } => {
                let value = request.header(name)?;
                let head = value.get(..prefix.len())?;
                if !head.eq_ignore_ascii_case(prefix) {
                    return None;
                }
                value[prefix.len()..].trim().to_owned()
            }
            TokenLocation::Param(param) => {
                let query = path.split_once('?')?.1;
                let query = query.split('#').next().unwrap_or("");
                query.split('&').find_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(key) == *param).then(|| percent_decode(value))
                })?
            }
            TokenLocation::Cookie(cookie) => {
                let header = request.header("cookie")?;
                header.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    (key.trim() == cookie).then(|| value.trim().trim_matches('"').to_owned())
                })?
            }
        };
        (!token.is_empty()).then_some(token)
    }
}

/// Decodes `%XX` escapes and `+` (form encoding). Invalid escapes stay as they are;
/// invalid UTF-8 is replaced, so a token that needed them will simply not verify.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Headers(HashMap<&'static str, &'static str>);

    impl RequestHeaders for Headers {
        fn header(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> Headers {
        Headers(pairs.iter().copied().collect())
    }

    #[test]
    fn bearer_prefix_is_case_insensitive() {
        let loc = TokenLocation::bearer();
        assert_eq!(
            loc.find(&headers(&[("authorization", "Bearer abc")]), "/"),
            Some("abc".into())
        );
        assert_eq!(
            loc.find(&headers(&[("authorization", "bearer abc")]), "/"),
            Some("abc".into())
        );
        assert_eq!(
            loc.find(&headers(&[("authorization", "Basic abc")]), "/"),
            None
        );
        assert_eq!(
            loc.find(&headers(&[("authorization", "Bearer ")]), "/"),
            None
        );
        assert_eq!(loc.find(&headers(&[("authorization", "Bear")]), "/"), None);
        assert_eq!(loc.find(&headers(&[]), "/"), None);
    }

    #[test]
    fn custom_header_without_prefix() {
        let loc = TokenLocation::Header {
            name: "x-jwt".into(),
            prefix: String::new(),
        };
        assert_eq!(
            loc.find(&headers(&[("x-jwt", "abc")]), "/"),
            Some("abc".into())
        );
    }

    #[test]
    fn query_parameters_are_decoded() {
        let loc = TokenLocation::Param("access_token".into());
        let none = headers(&[]);
        assert_eq!(
            loc.find(&none, "/a?x=1&access_token=abc.def&y"),
            Some("abc.def".into())
        );
        assert_eq!(loc.find(&none, "/a?access_token=a%2Eb"), Some("a.b".into()));
        assert_eq!(loc.find(&none, "/a?access_token=a%zz"), Some("a%zz".into()));
        assert_eq!(loc.find(&none, "/a?access_token=a%2"), Some("a%2".into()));
        assert_eq!(loc.find(&none, "/a?access_token="), None);
        assert_eq!(loc.find(&none, "/a?other=abc"), None);
        assert_eq!(loc.find(&none, "/access_token=abc"), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let loc = TokenLocation::Cookie("session".into());
        let h = headers(&[("cookie", "a=1; session=tok.en; b=2")]);
        assert_eq!(loc.find(&h, "/"), Some("tok.en".into()));
        let h = headers(&[("cookie", "mysession=x; session=\"quoted\"")]);
        assert_eq!(loc.find(&h, "/"), Some("quoted".into()));
        assert_eq!(loc.find(&headers(&[("cookie", "other=1")]), "/"), None);
    }
}
