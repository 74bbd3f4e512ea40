//! OpenID Connect discovery (OpenID Connect Discovery 1.0 §4): where a provider's
//! discovery document is, and the one thing taken from it, the `jwks_uri`, once the
//! document's `issuer` is exactly the configured one.
//!
//! A proxy-wasm callout goes to an Envoy cluster, never to a URL: the document is
//! fetched through the provider's `cluster`, and a `jwks_uri` is fetched through the
//! cluster its host maps to (the document's own host: the same cluster; another host:
//! the one `jwks_clusters` names for it). A `jwks_uri` on any other host is refused:
//! the filter would have nowhere to send the request, and an IdP (or whoever answers
//! in its name) must not be able to point the gateway at an arbitrary host. The
//! URL's scheme and port go into the request's `:authority` only; where the request
//! really goes, and whether it uses TLS, is the cluster's business.

use serde::Deserialize;
use wasmgate_config::host::host_name;

/// The largest discovery document accepted (real ones are a few KiB).
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// Appended to the issuer to find its document (§4).
pub const WELL_KNOWN_PATH: &str = "/.well-known/openid-configuration";

/// An `http` or `https` URL, split the way a callout needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Lower-case, without the port.
    pub host: String,
    /// `host[:port]`, lower-case, the port left out when it is the scheme's default.
    pub authority: String,
    /// The path and query (`/` when the URL has none).
    pub path: String,
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not an http(s) URL"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "https" => "443",
            "http" => "80",
            _ => return Err(format!("{text:?} is not an http(s) URL")),
        };
        if rest.contains('#') {
            return Err(format!("{text:?}: a URL here has no fragment"));
        }
        if rest.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "{text:?}: spaces and control characters are not allowed"
            ));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(format!("{text:?}: a URL here has no user name or password"));
        }
        let (host, port) = match authority.rfind(':') {
            Some(colon) if !authority[colon..].contains(']') => {
                (&authority[..colon], Some(&authority[colon + 1..]))
            }
            _ => (authority, None),
        };
        let host = host_name(host).map_err(|p| format!("{text:?}: {p}"))?;
        let port = match port {
            Some(port) if port.parse::<u16>().is_ok_and(|p| p > 0) => {
                (port != default_port).then_some(port)
            }
            Some(port) => return Err(format!("{text:?}: {port:?} is not a port")),
            None => None,
        };
        let authority = match port {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let path = match path {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        Ok(Self {
            host,
            authority,
            path,
        })
    }

    /// The discovery document of `issuer`: the issuer without a trailing `/`, then
    /// [`WELL_KNOWN_PATH`] (§4.1). The issuer must be an http(s) URL without query.
    pub fn discovery_of(issuer: &str) -> Result<Self, String> {
        if issuer.contains('?') {
            return Err(format!("{issuer:?}: an issuer URL has no query"));
        }
        let url = format!("{}{WELL_KNOWN_PATH}", issuer.trim_end_matches('/'));
        Self::parse(&url)
    }
}

/// A provider's discovery: what the document must say, and which clusters a
/// `jwks_uri` may be fetched through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The configured `issuer`, which the document's must equal exactly.
    pub issuer: String,
    /// The document's host: a `jwks_uri` there goes through `cluster`.
    pub host: String,
    pub cluster: String,
    /// Other hosts (lower-case, sorted) and the cluster a `jwks_uri` on each goes
    /// through.
    pub jwks_clusters: Vec<(String, String)>,
}

/// Where a JWKS is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksLocation {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// Why a discovery document was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// Not a document at all (not JSON, no `issuer` or `jwks_uri`): a failed fetch.
    Broken(String),
    /// A document this gateway must not follow: another `issuer`, or a `jwks_uri` it
    /// cannot or may not fetch.
    Refused(String),
}

impl DocumentError {
    pub fn reason(&self) -> &str {
        match self {
            Self::Broken(reason) | Self::Refused(reason) => reason,
        }
    }
}

/// The members of the document that are read; the others are ignored. A member
/// named twice is refused (serde does).
#[derive(Deserialize)]
struct Document {
    issuer: String,
    jwks_uri: String,
}

impl Discovery {
    /// The `jwks_uri` of a document, once the document is found to be the issuer's
    /// own and its `jwks_uri` one the gateway can fetch.
    pub fn read(&self, body: &[u8]) -> Result<String, DocumentError> {
        let document: Document = serde_json::from_slice(body)
            .map_err(|e| DocumentError::Broken(format!("not a discovery document: {e}")))?;
        if document.issuer != self.issuer {
            return Err(DocumentError::Refused(format!(
                "the document's issuer {:?} is not the configured {:?}",
                document.issuer, self.issuer
            )));
        }
        self.locate(&document.jwks_uri)
            .map_err(DocumentError::Refused)?;
        Ok(document.jwks_uri)
    }

    /// Where a `jwks_uri` is fetched from.
    pub fn locate(&self, jwks_uri: &str) -> Result<JwksLocation, String> {
        let url = HttpUrl::parse(jwks_uri).map_err(|p| format!("jwks_uri: {p}"))?;
        let cluster = if url.host == self.host {
            &self.cluster
        } else {
            match self
                .jwks_clusters
                .binary_search_by(|(host, _)| host.as_str().cmp(&url.host))
            {
                Ok(i) => &self.jwks_clusters[i].1,
                Err(_) => {
                    return Err(format!(
                        "jwks_uri {jwks_uri:?} is on host {:?}, which is neither the discovery document's ({:?}) nor in jwks_clusters",
                        url.host, self.host
                    ))
                }
            }
        };
        Ok(JwksLocation {
            cluster: cluster.clone(),
            authority: url.authority,
            path: url.path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_split_into_host_authority_and_path() {
        let url = HttpUrl::parse("https://IdP.Example.com/realms/a/keys?x=1").unwrap();
        assert_eq!(
            url,
            HttpUrl {
                host: "idp.example.com".into(),
                authority: "idp.example.com".into(),
                path: "/realms/a/keys?x=1".into()
            }
        );
        let url = HttpUrl::parse("HTTP://idp.test:8080").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("idp.test:8080", "/")
        );
        // The scheme's own port is left out of the authority.
        assert_eq!(
            HttpUrl::parse("https://idp.test:443/k").unwrap().authority,
            "idp.test"
        );
        assert_eq!(
            HttpUrl::parse("http://idp.test:80/k").unwrap().authority,
            "idp.test"
        );
        assert_eq!(HttpUrl::parse("http://idp.test?q").unwrap().path, "/?q");
        let v6 = HttpUrl::parse("http://[::1]:9000/k").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.authority.as_str()),
            ("[::1]", "[::1]:9000")
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        for (url, problem) in [
            ("idp.test/keys", "not an http(s) URL"),
            ("ftp://idp.test/keys", "not an http(s) URL"),
            ("https://user:pw@idp.test/keys", "user name"),
            ("https://idp.test/keys#k", "fragment"),
            ("https://idp.test:0/keys", "not a port"),
            ("https://idp.test:99999/keys", "not a port"),
            ("https://idp.test:/keys", "not a port"),
            ("https:///keys", "empty"),
            ("https://idp test/keys", "spaces"),
            ("https://idp.test/a\nb", "control"),
        ] {
            let err = HttpUrl::parse(url).unwrap_err();
            assert!(err.contains(problem), "{url}: {err}");
        }
    }

    #[test]
    fn the_document_of_an_issuer_is_under_its_path() {
        let at = |issuer| HttpUrl::discovery_of(issuer).map(|u| (u.authority, u.path));
        assert_eq!(
            at("https://idp.example.com").unwrap(),
            ("idp.example.com".into(), WELL_KNOWN_PATH.into())
        );
        assert_eq!(
            at("https://idp.example.com/realms/main/").unwrap(),
            (
                "idp.example.com".into(),
                "/realms/main/.well-known/openid-configuration".into()
            )
        );
        assert!(at("billing-jobs")
            .unwrap_err()
            .contains("not an http(s) URL"));
        assert!(at("https://idp.test/?tenant=a")
            .unwrap_err()
            .contains("no query"));
    }

    fn discovery() -> Discovery {
        Discovery {
            issuer: "https://idp.example.com".into(),
            host: "idp.example.com".into(),
            cluster: "idp".into(),
            jwks_clusters: vec![("keys.example.net".into(), "idp_keys".into())],
        }
    }

    fn document(issuer: &str, jwks_uri: &str) -> Vec<u8> {
        json!({"issuer": issuer, "jwks_uri": jwks_uri, "token_endpoint": "https://idp.example.com/token"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_jwks_uri_goes_through_the_cluster_of_its_host() {
        let d = discovery();
        let uri = d
            .read(&document(
                "https://idp.example.com",
                "https://idp.example.com/keys",
            ))
            .unwrap();
        assert_eq!(
            d.locate(&uri).unwrap(),
            JwksLocation {
                cluster: "idp".into(),
                authority: "idp.example.com".into(),
                path: "/keys".into()
            }
        );
        // The port does not pick the cluster; it goes into the authority.
        let other = d.locate("https://KEYS.example.net:8443/jwks").unwrap();
        assert_eq!(
            (other.cluster.as_str(), other.authority.as_str()),
            ("idp_keys", "keys.example.net:8443")
        );
    }

    #[test]
    fn a_document_of_another_issuer_or_pointing_elsewhere_is_refused() {
        let d = discovery();
        let refused = |body: Vec<u8>| match d.read(&body) {
            Err(DocumentError::Refused(reason)) => reason,
            other => panic!("{other:?}"),
        };
        // Exactly equal: no trailing slash, no case folding (§4.3).
        for issuer in [
            "https://idp.example.com/",
            "https://IDP.example.com",
            "https://evil.test",
        ] {
            let reason = refused(document(issuer, "https://idp.example.com/keys"));
            assert!(reason.contains("is not the configured"), "{reason}");
        }
        let reason = refused(document(
            "https://idp.example.com",
            "https://evil.test/keys",
        ));
        assert!(
            reason.contains("neither the discovery document's"),
            "{reason}"
        );
        let reason = refused(document("https://idp.example.com", "file:///etc/keys"));
        assert!(reason.contains("not an http(s) URL"), "{reason}");
    }

    #[test]
    fn a_broken_document_is_a_failed_fetch() {
        let d = discovery();
        for body in [
            b"not json".to_vec(),
            b"[]".to_vec(),
            br#"{"issuer": "https://idp.example.com"}"#.to_vec(),
            br#"{"issuer": 7, "jwks_uri": "https://idp.example.com/keys"}"#.to_vec(),
            // A member named twice could say one thing to us and another to someone else.
            br#"{"issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/k", "issuer": "https://idp.example.com"}"#.to_vec(),
        ] {
            assert!(
                matches!(d.read(&body), Err(DocumentError::Broken(_))),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
