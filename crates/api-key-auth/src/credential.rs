//! Finding the API key in a request, the cheap format checks that turn malformed keys
//! away before any lookup, and the edits that hide the key from the upstream.
//!
//! Sources are tried in a fixed order: the configured headers (in their order), then
//! `Authorization: Bearer`, then the query parameter. The first one present decides:
//! a malformed key there is refused even if a later source holds a good one.

use std::borrow::Cow;
use std::fmt;
use wasmgate_config::HeaderName;

/// Where keys are looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySources {
    /// Request headers carrying the bare key, e.g. `x-api-key`.
    pub headers: Vec<HeaderName>,
    /// Also accept `Authorization: Bearer <key>`. Only tokens that start with one of
    /// the configured prefixes count as API keys, so a JWT in the same header is left
    /// alone for another filter.
    pub bearer: bool,
    /// A query parameter carrying the key (taken literally, not percent-decoded).
    pub query: Option<String>,
}

/// What a well-formed key looks like. Lengths are in bytes and include the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFormat {
    /// Accepted prefixes, e.g. `sk_live_`; empty accepts any.
    pub prefixes: Vec<String>,
    pub min_length: usize,
    pub max_length: usize,
}

/// Why a presented key was refused without asking the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformation {
    TooShort,
    TooLong,
    /// Only RFC 3986 unreserved characters are allowed: `A-Z a-z 0-9 - . _ ~`.
    BadCharacter,
    WrongPrefix,
}

/// The key as the client sent it. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey(String);

impl PresentedKey {
    /// The plaintext, for hashing and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedKey(<{} bytes>)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Missing,
    Malformed(Malformation),
    Key(PresentedKey),
}

/// A change to the request headers (`:path` included). Names are borrowed from the
/// configuration (or are fixed), values from the record when they can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEdit<'a> {
    Remove(&'a str),
    Set(&'a str, Cow<'a, str>),
}

/// The request as the key sources read it: a header getter and the `:path`.
pub type HeaderLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl KeyFormat {
    pub fn check(&self, key: &str) -> Result<(), Malformation> {
        if key.len() > self.max_length {
            return Err(Malformation::TooLong);
        }
        if !key.bytes().all(is_unreserved) {
            return Err(Malformation::BadCharacter);
        }
        if !self.prefixes.is_empty() && !self.has_prefix(key) {
            return Err(Malformation::WrongPrefix);
        }
        if key.len() < self.min_length {
            return Err(Malformation::TooShort);
        }
        Ok(())
    }

    fn has_prefix(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }
}

/// RFC 3986 unreserved characters: safe in headers and query strings without escaping.
pub fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

impl KeySources {
    /// Finds the key and checks its format.
    pub fn find(&self, format: &KeyFormat, header: HeaderLookup, path: &str) -> Presented {
        let judge = |key: &str| match format.check(key) {
            Ok(()) => Presented::Key(PresentedKey(key.to_owned())),
            Err(why) => Presented::Malformed(why),
        };
        for name in &self.headers {
            if let Some(value) = header(name.as_str()) {
                return judge(value.trim());
            }
        }
        if let Some(token) = self.bearer_key(format, header) {
            return judge(&token);
        }
        if let Some(value) = self.query.as_deref().and_then(|p| query_value(path, p)) {
            return judge(value);
        }
        Presented::Missing
    }

    /// The edits that remove every copy of the key from the request: the key headers,
    /// an `Authorization` header carrying a bearer API key, the query parameter.
    pub fn hiding_edits(
        &self,
        format: &KeyFormat,
        header: HeaderLookup,
        path: &str,
    ) -> Vec<RequestEdit<'_>> {
        let mut edits: Vec<RequestEdit> = self
            .headers
            .iter()
            .map(|name| RequestEdit::Remove(name.as_str()))
            .collect();
        if self.bearer_key(format, header).is_some() {
            edits.push(RequestEdit::Remove("authorization"));
        }
        if let Some(stripped) = self
            .query
            .as_deref()
            .and_then(|param| without_query_param(path, param))
        {
            edits.push(RequestEdit::Set(":path", stripped.into()));
        }
        edits
    }

    /// The hiding edits for a request on a route the filter skips: the key never
    /// reaches an upstream that did not ask for it checked. A bearer token counts only
    /// when it has one of `format.prefixes` (with none configured, it may be another
    /// scheme's token, say a JWT that a filter before this one checked).
    pub fn hiding_edits_when_skipped(
        &self,
        format: &KeyFormat,
        header: HeaderLookup,
        path: &str,
    ) -> Vec<RequestEdit<'_>> {
        let mut edits = self.hiding_edits(format, header, path);
        if format.prefixes.is_empty() {
            edits.retain(|edit| *edit != RequestEdit::Remove("authorization"));
        }
        edits
    }

    fn bearer_key(&self, format: &KeyFormat, header: HeaderLookup) -> Option<String> {
        if !self.bearer {
            return None;
        }
        let value = header("authorization")?;
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        let ours = format.prefixes.is_empty() || format.has_prefix(token);
        (scheme.eq_ignore_ascii_case("bearer") && ours).then(|| token.to_owned())
    }
}

/// The first value of query parameter `name` in a `:path` (empty if it has no `=`).
fn query_value<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// `path` without any occurrence of parameter `name`, or `None` if it has none.
fn without_query_param(path: &str, name: &str) -> Option<String> {
    let (base, query) = path.split_once('?')?;
    let is_param = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
    let pairs: Vec<&str> = query.split('&').collect();
    if !pairs.iter().any(is_param) {
        return None;
    }
    let kept: Vec<&str> = pairs.into_iter().filter(|p| !is_param(p)).collect();
    Some(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sources(bearer: bool, query: Option<&str>) -> KeySources {
        KeySources {
            headers: vec![HeaderName::new("x-api-key").unwrap()],
            bearer,
            query: query.map(str::to_owned),
        }
    }

    fn format() -> KeyFormat {
        KeyFormat {
            prefixes: vec!["sk_live_".into(), "sk_test_".into()],
            min_length: 20,
            max_length: 64,
        }
    }

    const GOOD: &str = "sk_live_abcdefghijklmnop";

    fn find(s: &KeySources, headers: &[(&str, &str)], path: &str) -> Presented {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.find(&format(), &|name| map.get(name).cloned(), path)
    }

    fn key(text: &str) -> Presented {
        Presented::Key(PresentedKey(text.to_owned()))
    }

    #[test]
    fn format_checks() {
        let f = format();
        assert_eq!(f.check(GOOD), Ok(()));
        assert_eq!(f.check("sk_test_0123456789AZaz-._~"), Ok(()));
        assert_eq!(f.check("sk_live_short"), Err(Malformation::TooShort));
        assert_eq!(f.check(""), Err(Malformation::WrongPrefix));
        assert_eq!(
            f.check(&format!("sk_live_{}", "a".repeat(57))),
            Err(Malformation::TooLong)
        );
        assert_eq!(
            f.check("pk_live_abcdefghijklmnop"),
            Err(Malformation::WrongPrefix)
        );
        assert_eq!(
            f.check("sk_live_abcdefgh%20jklmnop"),
            Err(Malformation::BadCharacter)
        );
        assert_eq!(
            f.check("sk_live_abcdefghijklmnöp"),
            Err(Malformation::BadCharacter)
        );
        let any = KeyFormat {
            prefixes: vec![],
            min_length: 1,
            max_length: 8,
        };
        assert_eq!(any.check("abc"), Ok(()));
    }

    #[test]
    fn header_source_and_missing() {
        let s = sources(false, None);
        assert_eq!(find(&s, &[("x-api-key", GOOD)], "/"), key(GOOD));
        assert_eq!(
            find(&s, &[("x-api-key", &format!(" {GOOD} "))], "/"),
            key(GOOD)
        );
        assert_eq!(find(&s, &[], "/"), Presented::Missing);
        assert_eq!(
            find(&s, &[("x-api-key", "")], "/"),
            Presented::Malformed(Malformation::WrongPrefix)
        );
        // Bearer and query are off: a key there is not looked at.
        let auth = format!("Bearer {GOOD}");
        assert_eq!(
            find(
                &s,
                &[("authorization", &auth)],
                &format!("/?api_key={GOOD}")
            ),
            Presented::Missing
        );
    }

    #[test]
    fn bearer_source_takes_only_our_tokens() {
        let s = sources(true, None);
        assert_eq!(
            find(&s, &[("authorization", &format!("Bearer {GOOD}"))], "/"),
            key(GOOD)
        );
        assert_eq!(
            find(&s, &[("authorization", &format!("bearer   {GOOD}"))], "/"),
            key(GOOD)
        );
        assert_eq!(
            find(
                &s,
                &[("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig")],
                "/"
            ),
            Presented::Missing
        );
        assert_eq!(
            find(&s, &[("authorization", &format!("Basic {GOOD}"))], "/"),
            Presented::Missing
        );
        assert_eq!(
            find(&s, &[("authorization", "Bearer sk_live_x%y")], "/"),
            Presented::Malformed(Malformation::BadCharacter)
        );
        // The header source comes first.
        assert_eq!(
            find(
                &s,
                &[
                    ("x-api-key", "bad"),
                    ("authorization", &format!("Bearer {GOOD}"))
                ],
                "/"
            ),
            Presented::Malformed(Malformation::WrongPrefix)
        );
    }

    #[test]
    fn query_source() {
        let s = sources(false, Some("api_key"));
        assert_eq!(
            find(&s, &[], &format!("/a?x=1&api_key={GOOD}&y=2")),
            key(GOOD)
        );
        assert_eq!(
            find(&s, &[], "/a?api_key"),
            Presented::Malformed(Malformation::WrongPrefix)
        );
        assert_eq!(find(&s, &[], "/a?xapi_key=1"), Presented::Missing);
        assert_eq!(
            find(&s, &[], "/a?api_key=sk_live_abc%2Fdefghijklmnop"),
            Presented::Malformed(Malformation::BadCharacter)
        );
    }

    #[test]
    fn hiding_removes_every_copy() {
        let s = sources(true, Some("api_key"));
        let auth = format!("Bearer {GOOD}");
        let headers: HashMap<&str, &str> = [("authorization", auth.as_str())].into();
        let lookup = |name: &str| headers.get(name).map(|v| v.to_string());
        let edits = s.hiding_edits(
            &format(),
            &lookup,
            &format!("/a?x=1&api_key={GOOD}&api_key=2&y"),
        );
        assert_eq!(
            edits,
            vec![
                RequestEdit::Remove("x-api-key"),
                RequestEdit::Remove("authorization"),
                RequestEdit::Set(":path", "/a?x=1&y".into()),
            ]
        );
        // A JWT in Authorization and a path without the parameter are left alone.
        let jwt = |name: &str| (name == "authorization").then(|| "Bearer eyJ.e30.sig".to_owned());
        let edits = s.hiding_edits(&format(), &jwt, &format!("/b?api_key={GOOD}"));
        assert_eq!(
            edits,
            vec![
                RequestEdit::Remove("x-api-key"),
                RequestEdit::Set(":path", "/b".into()),
            ]
        );
        assert_eq!(s.hiding_edits(&format(), &|_| None, "/c?q=1").len(), 1);
    }

    #[test]
    fn on_skipped_routes_a_bearer_token_is_hidden_only_when_it_has_a_key_prefix() {
        let s = sources(true, None);
        let any_token = KeyFormat {
            prefixes: vec![],
            ..format()
        };
        let auth = |token: &'static str| {
            move |name: &str| (name == "authorization").then(|| format!("Bearer {token}"))
        };
        let key = auth(GOOD);
        assert_eq!(
            s.hiding_edits_when_skipped(&format(), &key, "/"),
            vec![
                RequestEdit::Remove("x-api-key"),
                RequestEdit::Remove("authorization"),
            ]
        );
        // Without prefixes any bearer token reads as a key where a key is needed, but
        // where none is, it may be another scheme's: it stays.
        let jwt = auth("eyJ.e30.sig");
        assert_eq!(
            s.hiding_edits(&any_token, &jwt, "/"),
            vec![
                RequestEdit::Remove("x-api-key"),
                RequestEdit::Remove("authorization"),
            ]
        );
        assert_eq!(
            s.hiding_edits_when_skipped(&any_token, &jwt, "/"),
            vec![RequestEdit::Remove("x-api-key")]
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(format!("{:?}", key(GOOD)), "Key(PresentedKey(<24 bytes>))");
    }
}
