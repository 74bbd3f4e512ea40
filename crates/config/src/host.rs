//! Host names as rules compare them: the patterns a rule's `hosts` lists, and a
//! request's `:authority` brought to the same form.
//!
//! Envoy picks a virtual host by the request's `:authority` (HTTP/1.1 `Host`),
//! lower-cased. By default it compares the port too, but the usual deployments make it
//! ignore the port: Istio's gateways list every host as `host` and `host:*`, and Envoy
//! has `strip_any_host_port` and `ignore_port_in_host_matching` for it. A rule here
//! ignores the port always, found the way Envoy finds it (the last `:` that is not
//! inside an IPv6 literal's brackets), and a trailing dot as `strip_trailing_host_dot`
//! would: a client cannot slip past a host's rule by writing its host another way.

use std::borrow::Cow;

/// One entry of a rule's `hosts`: a host name, or `*.` and a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// The host, lower-case.
    Exact(String),
    /// `.` and the suffix, lower-case (`*.example.com` keeps `.example.com`). Like
    /// Envoy's suffix wildcards, it needs at least one character before the dot:
    /// `a.example.com` and `a.b.example.com` match, `example.com` does not.
    Suffix(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com` (any case).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Err(
                "\"*\" matches every host: leave \"hosts\" out to match every host".to_owned(),
            );
        }
        let (name, wildcard) = match text.strip_prefix("*.") {
            Some(suffix) => (suffix, true),
            None => (text, false),
        };
        if name.contains('*') {
            return Err(format!(
                "{text:?}: the only wildcard is a leading \"*.\" (as in \"*.example.com\")"
            ));
        }
        let name = host_name(name).map_err(|p| format!("{text:?}: {p}"))?;
        Ok(if wildcard {
            Self::Suffix(format!(".{name}"))
        } else {
            Self::Exact(name)
        })
    }

    /// `host` as [`request_host`] gives it.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => host == name,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// A host name as configured (`api.example.com`, `10.0.0.1`, `[2001:db8::1]`),
/// checked and lower-cased. Ports and trailing dots are refused: requests are compared
/// without them, so a configured one could never match.
pub fn host_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a host name must not be empty".to_owned());
    }
    if text.len() > 253 {
        return Err("longer than a host name can be (253 characters)".to_owned());
    }
    if let Some(inner) = text.strip_prefix('[') {
        let Some(address) = inner.strip_suffix(']') else {
            return Err("an IPv6 address is written in brackets, without a port".to_owned());
        };
        if address.is_empty()
            || !address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err("not an IPv6 address".to_owned());
        }
        return Ok(text.to_ascii_lowercase());
    }
    if text.contains(':') {
        return Err("leave the port out: hosts are compared without it".to_owned());
    }
    if text.ends_with('.') {
        return Err("leave the trailing dot out: hosts are compared without it".to_owned());
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("{bad:?} is not allowed in a host name"));
    }
    if text.split('.').any(str::is_empty) {
        return Err("a host name has no empty labels (\"..\" or a leading \".\")".to_owned());
    }
    Ok(text.to_ascii_lowercase())
}

/// The host of an `:authority` as rules compare it: without the port, without one
/// trailing dot, lower-case (borrowed when it is already).
pub fn request_host(authority: &str) -> Cow<'_, str> {
    let host = match port_start(authority) {
        Some(colon) => &authority[..colon],
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Where the port of an authority starts (its `:`), as Envoy's
/// `HeaderUtility::getPortStart` finds it: the last `:`, unless an IPv6 literal's `]`
/// comes after it.
fn port_start(authority: &str) -> Option<usize> {
    let colon = authority.rfind(':')?;
    match authority.rfind(']') {
        Some(bracket) if bracket > colon => None,
        _ => Some(colon),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_and_a_trailing_dot_are_ignored_and_case_does_not_matter() {
        for authority in [
            "api.example.com",
            "API.Example.COM",
            "api.example.com:8443",
            "api.example.com.",
            "Api.Example.Com.:443",
        ] {
            assert_eq!(request_host(authority), "api.example.com", "{authority}");
        }
        assert_eq!(request_host("[2001:DB8::1]:8080"), "[2001:db8::1]");
        assert_eq!(request_host("[::1]"), "[::1]");
        assert_eq!(request_host("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(request_host(""), "");
        // Only one dot goes: "a.." is not "a".
        assert_eq!(request_host("a.."), "a.");
        // Already in its compared form: no copy.
        assert!(matches!(request_host("api.example.com"), Cow::Borrowed(_)));
    }

    #[test]
    fn exact_and_suffix_patterns() {
        let exact = HostPattern::parse("Api.Example.com").unwrap();
        assert_eq!(exact, HostPattern::Exact("api.example.com".to_owned()));
        assert!(exact.matches(&request_host("API.example.com:80")));
        assert!(!exact.matches("www.api.example.com"));
        assert!(!exact.matches("api.example.co"));

        let suffix = HostPattern::parse("*.Example.com").unwrap();
        assert!(suffix.matches("a.example.com"));
        assert!(suffix.matches("a.b.example.com"));
        assert!(suffix.matches(&request_host("A.Example.Com:8080")));
        // At least one character before the dot, as in Envoy.
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches(".example.com"));
        assert!(!suffix.matches("aexample.com"));

        let v6 = HostPattern::parse("[2001:DB8::1]").unwrap();
        assert!(v6.matches(&request_host("[2001:db8::1]:443")));
    }

    #[test]
    fn refusals_say_what_to_write() {
        let refusal = |text: &str| HostPattern::parse(text).unwrap_err();
        assert!(refusal("*").contains("leave \"hosts\" out"));
        assert!(refusal("api.example.com:443").contains("leave the port out"));
        assert!(refusal("api.example.com.").contains("trailing dot"));
        assert!(refusal("*example.com").contains("only wildcard"));
        assert!(refusal("a.*.example.com").contains("only wildcard"));
        assert!(refusal("*.*.example.com").contains("only wildcard"));
        assert!(refusal("").contains("empty"));
        assert!(refusal("*.").contains("empty"));
        assert!(refusal("a..b").contains("empty labels"));
        assert!(refusal("api example.com").contains("' '"));
        assert!(refusal("api/example").contains("'/'"));
        assert!(refusal("[2001:db8::1]:443").contains("brackets"));
        assert!(refusal("[zz]").contains("IPv6"));
        assert!(refusal(&"a".repeat(254)).contains("253"));
    }
}
