//! Header templates, and the header filter's plan for a request built from them.

use crate::Input;
use std::sync::OnceLock;
use wasmgate_config::check_header_value;
use wasmgate_header_rules::{HeaderEdit, HeaderPolicy, RequestView, Template};

/// The headers a request may carry in this target, in input order (an empty chunk
/// leaves the header out).
const HEADERS: [&str; 7] = [
    ":method",
    ":path",
    ":authority",
    "x-user-id",
    "x-request-id",
    "x-tenant-hint",
    "x-old",
];
/// The Envoy attributes, likewise.
const PROPERTIES: [&str; 5] = [
    "source.address",
    "xds.route_name",
    "connection.uri_san_peer_certificate",
    "a.b",
    "request.id",
];

/// Every variable, `strip_inbound` feeding one of them, and every operation.
const POLICY: &str = r#"{
    "strip_inbound": ["x-user-id"],
    "rules": [{
        "match": {"prefix": "/"},
        "request": {
            "set": {
                "x-copied-user": "${header:x-user-id}",
                "x-who": "${downstream_ip} ${route_name} ${peer_uri_san}",
                "x-line": "${method} ${path} ${authority} ${request_id} $$ ${property:a.b}"
            },
            "append": {"x-forwarded-client": "${downstream_address}"},
            "if_absent": {"x-tenant": "${header:x-tenant-hint}"},
            "rename": {"x-old": "x-new"},
            "remove": ["x-drop"]
        },
        "response": {"set": {"x-echo-path": "${path}"}, "remove": ["server"]}
    }],
    "response_cleanup": ["x-internal"],
    "echo_request_id": true
}"#;

fn policy() -> &'static HeaderPolicy {
    static POLICY_PARSED: OnceLock<HeaderPolicy> = OnceLock::new();
    POLICY_PARSED.get_or_init(|| {
        HeaderPolicy::from_json(POLICY.as_bytes())
            .unwrap_or_else(|err| panic!("the fuzz header policy: {err}"))
    })
}

struct Request {
    headers: Vec<(&'static str, String)>,
    properties: Vec<(&'static str, String)>,
}

impl RequestView for Request {
    fn header(&self, name: &str) -> Option<String> {
        crate::first_value(&self.headers, name)
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        let path = path.join(".");
        self.properties
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.clone())
    }
}

/// The value an edit writes that a template made. A rename (`x-old` to `x-new`) moves
/// the request's own value unchanged, whatever Envoy let into it: only values built
/// from templates are held to the header-value rules here.
fn template_value(edit: &HeaderEdit) -> Option<&str> {
    match edit {
        HeaderEdit::Set(name, _) if name.as_str() == "x-new" => None,
        HeaderEdit::Set(_, value) | HeaderEdit::Append(_, value) => Some(value),
        HeaderEdit::Remove(_) => None,
    }
}

/// `header_template`: a template (chunk), then a request: one chunk per header of
/// [`HEADERS`] and per attribute of [`PROPERTIES`] (empty: absent).
pub fn template(data: &[u8]) {
    let mut input = Input::new(data);
    let text = input.text();
    let mut present = |names: &[&'static str]| -> Vec<(&'static str, String)> {
        names
            .iter()
            .map(|&name| (name, input.text()))
            .filter(|(_, value)| !value.is_empty())
            .collect()
    };
    let headers = present(&HEADERS);
    let properties = present(&PROPERTIES);
    let request = Request {
        headers,
        properties,
    };

    match Template::parse(&text) {
        Ok(template) => {
            if let Some(value) = template.render(&request) {
                assert!(check_header_value(&value).is_ok(), "rendered {value:?}");
            }
            if !text.contains('$') {
                assert!(template.is_literal());
                let expected = check_header_value(&text).is_ok().then(|| text.clone());
                assert_eq!(template.render(&request), expected);
            }
        }
        // Text without a `$` is always a valid template.
        Err(_) => assert!(text.contains('$')),
    }

    let policy = policy();
    let plan = policy.plan_request(&request);
    for edit in plan.edits.iter() {
        if let Some(value) = template_value(edit) {
            assert!(check_header_value(value).is_ok(), "{edit:?}");
        }
        // The only source of this header is one `strip_inbound` removes first.
        if let HeaderEdit::Set(name, value) = edit {
            assert_ne!(name.as_str(), "x-copied-user", "spoofed {value:?} copied");
        }
    }
    let current = |name: &str| request.header(name);
    for edit in policy.plan_response(&plan.response, &current).iter() {
        if let Some(value) = template_value(edit) {
            assert!(check_header_value(value).is_ok(), "{edit:?}");
        }
    }
}
