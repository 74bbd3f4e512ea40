//! Header values with `${...}` placeholders, parsed once when the config loads.

use wasmgate_config::HeaderName;

/// What a request can tell a template. The filter implements it over Envoy's header
/// map and attributes; tests implement it over a `HashMap`.
pub trait RequestView {
    /// The first value of a request header.
    fn header(&self, name: &str) -> Option<String>;
    /// An Envoy attribute (`["source", "address"]`), if it exists and is text.
    fn property(&self, path: &[&str]) -> Option<String>;
    /// Whether the request has the header at all (even with a value `header` cannot
    /// give, such as bytes that are not UTF-8).
    fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    /// The request's `x-request-id` (Envoy's `request.id` attribute is this header's
    /// value; the attribute is only asked when the header is absent).
    fn request_id(&self) -> Option<String> {
        self.header("x-request-id")
            .or_else(|| self.property(&["request", "id"]))
    }
}

/// One `${...}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variable {
    /// `${header:NAME}`: a request header as the client sent it (after `strip_inbound`).
    RequestHeader(HeaderName),
    /// `${request_id}`: the `x-request-id` Envoy generated or accepted.
    RequestId,
    /// `${downstream_address}`: the client's `ip:port` as Envoy saw it.
    DownstreamAddress,
    /// `${downstream_ip}`: the client's address without the port.
    DownstreamIp,
    /// `${route_name}`: the name of the Envoy route that matched.
    RouteName,
    /// `${peer_uri_san}`: the URI SAN of the client's verified mTLS certificate
    /// (a SPIFFE id in a mesh).
    PeerUriSan,
    /// `${method}`, `${path}`, `${authority}`: the request pseudo-headers.
    Method,
    Path,
    Authority,
    /// `${property:a.b.c}`: any Envoy attribute whose value is text.
    Property(Vec<String>),
}

impl Variable {
    fn parse(name: &str) -> Result<Self, String> {
        if let Some(header) = name.strip_prefix("header:") {
            return HeaderName::new(header).map(Variable::RequestHeader);
        }
        if let Some(path) = name.strip_prefix("property:") {
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if segments.iter().any(|s| s.is_empty()) {
                return Err(format!("${{{name}}}: an attribute path is dot-separated names, e.g. ${{property:xds.cluster_name}}"));
            }
            return Ok(Variable::Property(segments));
        }
        Ok(match name {
            "request_id" => Variable::RequestId,
            "downstream_address" => Variable::DownstreamAddress,
            "downstream_ip" => Variable::DownstreamIp,
            "route_name" => Variable::RouteName,
            "peer_uri_san" => Variable::PeerUriSan,
            "method" => Variable::Method,
            "path" => Variable::Path,
            "authority" => Variable::Authority,
            _ => {
                return Err(format!(
                    "unknown template variable ${{{name}}}; known: header:NAME, request_id, downstream_address, \
                     downstream_ip, route_name, peer_uri_san, method, path, authority, property:PATH"
                ))
            }
        })
    }

    fn resolve(&self, view: &dyn RequestView) -> Option<String> {
        match self {
            Variable::RequestHeader(name) => view.header(name.as_str()),
            Variable::RequestId => view.request_id(),
            Variable::DownstreamAddress => view.property(&["source", "address"]),
            Variable::DownstreamIp => view
                .property(&["source", "address"])
                .map(|address| strip_port(&address).to_owned()),
            Variable::RouteName => view.property(&["xds", "route_name"]),
            Variable::PeerUriSan => view.property(&["connection", "uri_san_peer_certificate"]),
            Variable::Method => view.header(":method"),
            Variable::Path => view.header(":path"),
            Variable::Authority => view.header(":authority"),
            Variable::Property(path) => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                view.property(&path)
            }
        }
        .filter(|value| !value.is_empty())
    }
}

/// `10.0.0.1:5555` → `10.0.0.1`, `[::1]:5555` → `::1`.
fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => ip,
        _ => address,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(Variable),
}

/// A header value: literal text with `${variable}` placeholders; `$$` is a literal `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Variable(Variable::parse(&body[..end])?));
                rest = &body[end + 1..];
            } else {
                return Err(format!(
                    "a lone \"$\" in {text:?}: write \"$$\" for a dollar sign or \"${{name}}\" for a variable"
                ));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The value, or `None` when a variable has no value for this request: the
    /// operation is then skipped rather than writing a half-filled header.
    pub fn render(&self, view: &dyn RequestView) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(variable) => out.push_str(&variable.resolve(view)?),
            }
        }
        // A value from a request must not smuggle a line break into another header.
        if out.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
        Some(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    pub(crate) struct FakeRequest {
        pub headers: HashMap<String, String>,
        pub properties: HashMap<String, String>,
    }

    impl FakeRequest {
        pub fn with_header(mut self, name: &str, value: &str) -> Self {
            self.headers.insert(name.to_owned(), value.to_owned());
            self
        }
        pub fn with_property(mut self, path: &str, value: &str) -> Self {
            self.properties.insert(path.to_owned(), value.to_owned());
            self
        }
    }

    impl RequestView for FakeRequest {
        fn header(&self, name: &str) -> Option<String> {
            self.headers.get(name).cloned()
        }
        fn property(&self, path: &[&str]) -> Option<String> {
            self.properties.get(&path.join(".")).cloned()
        }
    }

    fn render(template: &str, view: &FakeRequest) -> Option<String> {
        Template::parse(template).unwrap().render(view)
    }

    #[test]
    fn literals_and_escapes() {
        let view = FakeRequest::default();
        assert_eq!(render("plain", &view).as_deref(), Some("plain"));
        assert_eq!(render("cost: $$5", &view).as_deref(), Some("cost: $5"));
        assert!(Template::parse("plain").unwrap().is_literal());
    }

    #[test]
    fn variables_resolve_from_headers_and_attributes() {
        let view = FakeRequest::default()
            .with_header("x-tenant", "acme")
            .with_property("source.address", "10.1.2.3:5555")
            .with_property("request.id", "abc-123")
            .with_property("xds.route_name", "users");
        assert_eq!(
            render("t=${header:X-Tenant}", &view).as_deref(),
            Some("t=acme")
        );
        assert_eq!(
            render("${downstream_address}", &view).as_deref(),
            Some("10.1.2.3:5555")
        );
        assert_eq!(
            render("${downstream_ip}", &view).as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(
            render("${request_id}/${route_name}", &view).as_deref(),
            Some("abc-123/users")
        );
        assert_eq!(
            render("${property:xds.route_name}", &view).as_deref(),
            Some("users")
        );
    }

    #[test]
    fn request_id_is_the_header_else_the_attribute() {
        let view = FakeRequest::default().with_header("x-request-id", "from-header");
        assert_eq!(
            render("${request_id}", &view).as_deref(),
            Some("from-header")
        );
        let view = FakeRequest::default().with_property("request.id", "from-attribute");
        assert_eq!(
            render("${request_id}", &view).as_deref(),
            Some("from-attribute")
        );
    }

    #[test]
    fn missing_values_skip_the_operation() {
        let view = FakeRequest::default();
        assert_eq!(render("id=${header:x-absent}", &view), None);
        assert_eq!(render("${peer_uri_san}", &view), None);
    }

    #[test]
    fn a_request_value_cannot_inject_a_header() {
        let view = FakeRequest::default().with_header("x-a", "a\r\nx-evil: 1");
        assert_eq!(render("${header:x-a}", &view), None);
    }

    #[test]
    fn ipv6_addresses_lose_brackets_and_port() {
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("${nope}")
            .unwrap_err()
            .contains("unknown template variable ${nope}"));
        assert!(Template::parse("${header:x-a")
            .unwrap_err()
            .contains("unclosed"));
        assert!(Template::parse("5$").unwrap_err().contains("lone"));
        assert!(Template::parse("${header:bad name}").is_err());
        assert!(Template::parse("${property:a..b}").is_err());
    }
}
