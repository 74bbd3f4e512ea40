use serde::Deserialize;
use std::fmt;

/// A lower-cased HTTP header name, checked against RFC 9110's `token` grammar.
///
/// Pseudo-headers (`:path`, `:authority`, ...) parse too; whoever accepts a name decides
/// whether a pseudo-header is allowed there ([`HeaderName::is_pseudo`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderName(String);

impl HeaderName {
    pub fn new(name: &str) -> Result<Self, String> {
        let body = name.strip_prefix(':').unwrap_or(name);
        if body.is_empty() {
            return Err(format!("{name:?} is not a header name: it is empty"));
        }
        if let Some(bad) = body.chars().find(|c| !is_token_char(*c)) {
            return Err(format!(
                "{name:?} is not a valid header name: {bad:?} is not allowed (RFC 9110 token characters only)"
            ));
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_pseudo(&self) -> bool {
        self.0.starts_with(':')
    }
}

impl TryFrom<String> for HeaderName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Self::new(&name)
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Refuses header values that would corrupt the message: CR, LF, NUL and the other
/// control characters (horizontal tab is allowed), as RFC 9110 §5.5 requires.
pub fn check_header_value(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control() && *c != '\t') {
        None => Ok(()),
        Some(c) => Err(format!(
            "header values may not contain control characters such as CR or LF (found {c:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased() {
        assert_eq!(HeaderName::new("X-User-ID").unwrap().as_str(), "x-user-id");
    }

    #[test]
    fn pseudo_headers_are_recognised() {
        let name = HeaderName::new(":authority").unwrap();
        assert!(name.is_pseudo());
        assert!(!HeaderName::new("host").unwrap().is_pseudo());
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in ["", ":", "x user", "x-a\r\n", "x:a", "é", "x(a)", "a/b"] {
            assert!(HeaderName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_with_line_breaks_are_refused() {
        assert!(check_header_value("a\r\nx-evil: 1").is_err());
        assert!(check_header_value("a\nb").is_err());
        assert!(check_header_value("a\0b").is_err());
        assert!(check_header_value("tab\tis fine, so is ünïcode").is_ok());
    }
}
