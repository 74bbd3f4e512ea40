use crate::template::tests::FakeRequest;
use crate::{HeaderEdit, HeaderPolicy};
use wasmgate_config::HeaderName;

fn policy(json: &str) -> HeaderPolicy {
    HeaderPolicy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn refusal(json: &str) -> String {
    HeaderPolicy::from_json(json.as_bytes())
        .unwrap_err()
        .to_string()
}

fn name(n: &str) -> HeaderName {
    HeaderName::new(n).unwrap()
}

fn request(method: &str, path: &str) -> FakeRequest {
    FakeRequest::default()
        .with_header(":method", method)
        .with_header(":path", path)
}

fn edits(policy: &HeaderPolicy, view: &FakeRequest) -> Vec<HeaderEdit> {
    policy.plan_request(view).edits.into_iter().collect()
}

#[test]
fn operations_run_in_a_fixed_order() {
    let p = policy(
        r#"{"rules":[{"match":{"prefix":"/"},"request":{
            "if_absent":{"x-new":"fallback","x-fresh":"made"},
            "append":{"x-list":"b"},
            "set":{"x-gw":"wasmgate"},
            "rename":{"x-old":"x-new"},
            "remove":["x-debug"]}}]}"#,
    );
    let view = request("GET", "/a")
        .with_header("x-old", "moved")
        .with_header("x-list", "a")
        .with_header("x-debug", "1");
    assert_eq!(
        edits(&p, &view),
        vec![
            HeaderEdit::Remove(name("x-debug")),
            HeaderEdit::Remove(name("x-old")),
            HeaderEdit::Set(name("x-new"), "moved".into()),
            HeaderEdit::Set(name("x-gw"), "wasmgate".into()),
            HeaderEdit::Append(name("x-list"), "b".into()),
            // x-new exists after the rename, so only x-fresh is added.
            HeaderEdit::Set(name("x-fresh"), "made".into()),
        ]
    );
}

#[test]
fn rename_of_an_absent_header_does_nothing() {
    let p = policy(r#"{"default":{"request":{"rename":{"x-a":"x-b"}}}}"#);
    assert!(edits(&p, &request("GET", "/")).is_empty());
}

#[test]
fn if_absent_keeps_a_client_value() {
    let p = policy(r#"{"default":{"request":{"if_absent":{"x-src":"edge"}}}}"#);
    assert!(edits(&p, &request("GET", "/").with_header("x-src", "mine")).is_empty());
    assert_eq!(
        edits(&p, &request("GET", "/")),
        vec![HeaderEdit::Set(name("x-src"), "edge".into())]
    );
}

#[test]
fn first_matching_rule_wins_and_default_catches_the_rest() {
    let p = policy(
        r#"{"rules":[
              {"match":{"prefix":"/api/","methods":["POST"]},"request":{"set":{"x-r":"post"}}},
              {"match":{"prefix":"/api/"},"request":{"set":{"x-r":"api"}}}],
            "default":{"request":{"set":{"x-r":"default"}}}}"#,
    );
    let value = |method, path| match edits(&p, &request(method, path)).pop() {
        Some(HeaderEdit::Set(_, v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(value("POST", "/api/x"), "post");
    assert_eq!(value("GET", "/api/x"), "api");
    assert_eq!(value("GET", "/other"), "default");
}

#[test]
fn each_host_gets_its_own_rules() {
    let p = policy(
        r#"{"rules":[
              {"match":{"hosts":["admin.example.com"]},"request":{"set":{"x-r":"admin"}}},
              {"match":{"hosts":["*.example.com"],"prefix":"/api/"},"request":{"set":{"x-r":"api"}}}],
            "default":{"request":{"set":{"x-r":"default"}}}}"#,
    );
    let value = |authority: Option<&str>, path| {
        let mut view = request("GET", path);
        if let Some(authority) = authority {
            view = view.with_header(":authority", authority);
        }
        match edits(&p, &view).pop() {
            Some(HeaderEdit::Set(_, v)) => v,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(value(Some("admin.example.com"), "/api/x"), "admin");
    assert_eq!(value(Some("Shop.Example.com:8443"), "/api/x"), "api");
    assert_eq!(value(Some("shop.example.com"), "/other"), "default");
    assert_eq!(value(Some("example.com"), "/api/x"), "default");
    assert_eq!(value(None, "/api/x"), "default");
}

#[test]
fn strip_inbound_comes_first_and_hides_values_from_templates() {
    let p = policy(
        r#"{"strip_inbound":["X-User-ID"],
            "default":{"request":{"set":{"x-echo-user":"${header:x-user-id}"},
                                  "if_absent":{"x-user-id":"anonymous"}}}}"#,
    );
    let view = request("GET", "/").with_header("x-user-id", "spoofed-admin");
    assert_eq!(
        edits(&p, &view),
        vec![
            HeaderEdit::Remove(name("x-user-id")),
            HeaderEdit::Set(name("x-user-id"), "anonymous".into()),
        ]
    );
}

#[test]
fn no_rule_and_no_default_still_strips() {
    let p = policy(r#"{"strip_inbound":["x-tenant-id"],"rules":[{"match":{"exact":"/x"}}]}"#);
    let spoofed = request("GET", "/y").with_header("x-tenant-id", "other");
    assert_eq!(
        edits(&p, &spoofed),
        vec![HeaderEdit::Remove(name("x-tenant-id"))]
    );
    assert_eq!(p.plan_request(&spoofed).stripped, 1);
}

#[test]
fn only_the_strip_inbound_headers_the_request_has_are_removed() {
    let p = policy(r#"{"strip_inbound":["x-user-id","x-tenant-id","x-scopes"]}"#);
    let view = request("GET", "/").with_header("x-scopes", "admin");
    let plan = p.plan_request(&view);
    assert_eq!(
        plan.edits.into_iter().collect::<Vec<_>>(),
        vec![HeaderEdit::Remove(name("x-scopes"))]
    );
    assert_eq!(plan.stripped, 1);
    assert!(edits(&p, &request("GET", "/")).is_empty());
}

#[test]
fn response_plan_cleans_then_applies_rule_then_echoes_request_id() {
    let p = policy(
        r#"{"response_cleanup":["server","x-powered-by"],
            "echo_request_id":true,
            "default":{"response":{"set":{"server":"wasmgate","x-route":"${route_name}"},
                                   "if_absent":{"cache-control":"no-store"}}}}"#,
    );
    assert!(p.touches_responses());
    let view = request("GET", "/")
        .with_property("request.id", "rid-1")
        .with_property("xds.route_name", "users");
    let plan = p.plan_request(&view);
    let upstream_headers = |n: &str| (n == "cache-control").then(|| "max-age=5".to_owned());
    let response: Vec<HeaderEdit> = p
        .plan_response(&plan.response, &upstream_headers)
        .into_iter()
        .collect();
    assert_eq!(
        response,
        vec![
            HeaderEdit::Remove(name("server")),
            HeaderEdit::Remove(name("x-powered-by")),
            HeaderEdit::Set(name("server"), "wasmgate".into()),
            HeaderEdit::Set(name("x-route"), "users".into()),
            HeaderEdit::Set(name("x-request-id"), "rid-1".into()),
        ]
    );
}

#[test]
fn a_policy_without_response_work_says_so() {
    assert!(!policy(r#"{"default":{"request":{"set":{"x":"1"}}}}"#).touches_responses());
}

#[test]
fn pseudo_headers_only_where_allowed() {
    policy(r#"{"default":{"request":{"set":{":path":"/rewritten",":authority":"api.internal"}}}}"#);
    assert!(refusal(r#"{"default":{"request":{"remove":[":path"]}}}"#)
        .starts_with("default.request.remove[0]: pseudo-header :path"));
    assert!(
        refusal(r#"{"default":{"response":{"set":{":status":"200"}}}}"#)
            .starts_with("default.response.set.:status: pseudo-header")
    );
    assert!(
        refusal(r#"{"default":{"request":{"set":{":method":"GET"}}}}"#)
            .contains("pseudo-header :method")
    );
    assert!(refusal(r#"{"strip_inbound":[":authority"]}"#).starts_with("strip_inbound[0]"));
    assert!(refusal(r#"{"default":{"request":{"set":{"host":"x"}}}}"#).contains(":authority"));
}

#[test]
fn refusals_name_the_field() {
    let cases = [
        (
            r#"{"rules":[{"match":{"prefix":"/"},"request":{"set":{"x-a":"a\r\nb"}}}]}"#,
            "rules[0].request.set.x-a: header values may not contain control characters",
        ),
        (
            r#"{"rules":[{"match":{"prefix":"/"},"request":{"set":{"x-a":"${bogus}"}}}]}"#,
            "rules[0].request.set.x-a: unknown template variable ${bogus}",
        ),
        (
            r#"{"rules":[{"match":{"prefix":"/"},"request":{"set":{"bad name":"v"}}}]}"#,
            "rules[0].request.set",
        ),
        (
            r#"{"rules":[{"match":{"prefix":"/"},"request":{"sett":{}}}]}"#,
            "unknown field `sett`",
        ),
        (r#"{"rules":[{"match":{"prefx":"/"}}]}"#, "rules[0].match"),
        (r#"{"rules":[{"request":{}}]}"#, "missing field `match`"),
        (
            r#"{"default":{"response":{"rename":{"x-a":"x-a"}}}}"#,
            "default.response.rename.x-a: renames a header to itself",
        ),
        (r#"{"echo_request_id":"yes"}"#, "echo_request_id"),
        (r#"{"unknown":1}"#, "unknown field `unknown`"),
        (r#"[]"#, "expected struct"),
    ];
    for (json, expected) in cases {
        let err = refusal(json);
        assert!(
            err.contains(expected),
            "{json}\n  gave: {err}\n  wanted: {expected}"
        );
    }
}

#[test]
fn overlong_values_are_refused() {
    let json = format!(
        r#"{{"default":{{"request":{{"set":{{"x-a":"{}"}}}}}}}}"#,
        "v".repeat(9000)
    );
    assert!(refusal(&json).contains("longer than"));
}
