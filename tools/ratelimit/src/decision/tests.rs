use super::*;
use crate::counters::{MemoryCounters, Store};
use crate::limits::Limits;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::google::protobuf::UInt64Value;
use std::path::Path;

const LIMITS: &str = "
domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-tenant}
  - key: tenant
    value: vip
    rate_limit: {unlimited: true}
  - key: path
    value: /a
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 5, name: per-user}
  - key: plan
    value: gold
    descriptors:
      - key: user
        rate_limit:
          unit: hour
          requests_per_unit: 50
          replaces: [{name: per-user}]
";

fn snapshot() -> Snapshot {
    let limits = Limits::parse(Path::new("limits.yaml"), LIMITS).unwrap();
    Snapshot::new(limits, &Store::Memory(MemoryCounters::default())).unwrap()
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "d".into(),
        descriptors,
        hits_addend: hits,
    }
}

async fn ask(snapshot: &Snapshot, request: &RateLimitRequest) -> RateLimitResponse {
    decide(snapshot, request, DecisionOptions::default())
        .await
        .unwrap()
        .response
}

fn ok(response: &RateLimitResponse) -> bool {
    response.overall_code == Code::Ok as i32
}

#[tokio::test]
async fn counts_to_the_limit_and_reports_statuses() {
    let s = snapshot();
    let one = request(vec![descriptor(&[("tenant", "acme")])], 0);
    for remaining in [2, 1, 0] {
        let response = ask(&s, &one).await;
        assert!(ok(&response));
        assert_eq!(response.statuses[0].limit_remaining, remaining);
    }
    let refused = ask(&s, &one).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    let status = &refused.statuses[0];
    assert_eq!(status.code, Code::OverLimit as i32);
    assert_eq!(status.limit_remaining, 0);
    assert_eq!(
        status.current_limit,
        Some(RateLimit {
            name: "per-tenant".into(),
            requests_per_unit: 3,
            unit: 2,
        })
    );
    let reset = status.duration_until_reset.unwrap();
    assert!(reset.seconds <= 60 && (reset.seconds > 0 || reset.nanos > 0));
    // Another tenant has its own counter.
    assert!(ok(&ask(
        &s,
        &request(vec![descriptor(&[("tenant", "other")])], 0)
    )
    .await));
    assert!(response_headers(&refused).is_empty());
}

#[tokio::test]
async fn unlimited_unmatched_and_shadowed_descriptors_pass() {
    let s = snapshot();
    let response = ask(
        &s,
        &request(
            vec![
                descriptor(&[("tenant", "vip")]),
                descriptor(&[("nothing", "here")]),
            ],
            0,
        ),
    )
    .await;
    assert!(ok(&response));
    assert_eq!(response.statuses[0].limit_remaining, u32::MAX);
    assert_eq!(response.statuses[0].current_limit, None);
    assert_eq!(
        response.statuses[1],
        DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        }
    );

    let shadowed = request(vec![descriptor(&[("path", "/a")])], 0);
    for _ in 0..2 {
        assert!(ok(&ask(&s, &shadowed).await));
    }
    let over = decide(&s, &shadowed, DecisionOptions::default())
        .await
        .unwrap();
    assert!(ok(&over.response), "shadow mode never refuses");
    assert_eq!(over.shadowed, 1);
    assert_eq!(over.response.statuses[0].code, Code::Ok as i32);
    assert_eq!(over.response.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn a_refused_request_counts_nowhere() {
    let s = snapshot();
    let tenant = request(vec![descriptor(&[("tenant", "t")])], 3);
    assert!(ok(&ask(&s, &tenant).await));
    let both = request(
        vec![descriptor(&[("user", "u")]), descriptor(&[("tenant", "t")])],
        0,
    );
    let refused = ask(&s, &both).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    assert_eq!(refused.statuses[0].code, Code::Ok as i32);
    assert_eq!(
        refused.statuses[0].limit_remaining, 5,
        "user was not counted"
    );
    assert_eq!(refused.statuses[1].code, Code::OverLimit as i32);
    let user = ask(&s, &request(vec![descriptor(&[("user", "u")])], 0)).await;
    assert_eq!(user.statuses[0].limit_remaining, 4);
}

#[tokio::test]
async fn hits_addend_per_request_and_per_descriptor() {
    let s = snapshot();
    let two = request(vec![descriptor(&[("user", "h")])], 2);
    assert_eq!(ask(&s, &two).await.statuses[0].limit_remaining, 3);
    // Per descriptor: overrides the request's, and 0 only checks.
    let mut check_only = descriptor(&[("user", "h")]);
    check_only.hits_addend = Some(UInt64Value { value: 0 });
    let mut one = descriptor(&[("tenant", "h")]);
    one.hits_addend = Some(UInt64Value { value: 1 });
    let response = ask(&s, &request(vec![check_only.clone(), one], 7)).await;
    assert!(ok(&response));
    assert_eq!(
        response.statuses[0].limit_remaining, 3,
        "checked, not counted"
    );
    assert_eq!(response.statuses[1].limit_remaining, 2);
    // More hits than remain: refused, nothing counted.
    let refused = ask(&s, &request(vec![descriptor(&[("user", "h")])], 4)).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    assert_eq!(refused.statuses[0].limit_remaining, 3);
    assert!(ok(&ask(&s, &request(vec![check_only], 0)).await));
}

#[tokio::test]
async fn a_rule_switches_off_the_rules_it_replaces() {
    let s = snapshot();
    let gold = request(
        vec![
            descriptor(&[("plan", "gold"), ("user", "g")]),
            descriptor(&[("user", "g")]),
        ],
        0,
    );
    let response = ask(&s, &gold).await;
    assert!(ok(&response));
    assert_eq!(response.statuses[0].limit_remaining, 49);
    assert_eq!(
        response.statuses[1].current_limit, None,
        "per-user replaced"
    );
    let alone = ask(&s, &request(vec![descriptor(&[("user", "g")])], 0)).await;
    assert_eq!(
        alone.statuses[0].limit_remaining, 4,
        "replaced: not counted before"
    );
}

#[tokio::test]
async fn requests_the_service_does_not_serve() {
    let s = snapshot();
    let refusal = |r: Result<Decision, Refusal>| match r {
        Err(Refusal::InvalidArgument(message)) => message,
        _ => panic!("expected an invalid argument"),
    };
    let mut empty_domain = request(vec![descriptor(&[("a", "b")])], 0);
    empty_domain.domain.clear();
    assert!(
        refusal(decide(&s, &empty_domain, DecisionOptions::default()).await).contains("domain")
    );
    assert!(
        refusal(decide(&s, &request(vec![], 0), DecisionOptions::default()).await)
            .contains("descriptor")
    );
    let mut overridden = descriptor(&[("tenant", "o")]);
    overridden.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 1,
    });
    assert!(refusal(
        decide(
            &s,
            &request(vec![overridden], 0),
            DecisionOptions::default()
        )
        .await
    )
    .contains("override"));
    // An unknown domain limits nothing.
    let mut elsewhere = request(vec![descriptor(&[("tenant", "x")])], 0);
    elsewhere.domain = "elsewhere".into();
    assert!(ok(&ask(&s, &elsewhere).await));
}

#[tokio::test]
async fn shadow_everything_still_counts() {
    let s = snapshot();
    let options = DecisionOptions {
        headers: true,
        shadow_all: true,
    };
    let one = request(vec![descriptor(&[("tenant", "s")])], 3);
    assert!(ok(&decide(&s, &one, options).await.unwrap().response));
    let over = decide(&s, &one, options).await.unwrap();
    assert!(ok(&over.response));
    assert_eq!(over.shadowed, 1);
    assert_eq!(
        response_headers(&over.response)["x-ratelimit-remaining"],
        "0"
    );
}

fn response_headers(response: &RateLimitResponse) -> HashMap<String, String> {
    response
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

#[test]
fn draft03_headers_as_envoy_makes_them() {
    let status = |rpu, unit, name: &str, remaining, reset| DescriptorStatus {
        code: Code::Ok as i32,
        current_limit: Some(RateLimit {
            name: name.into(),
            requests_per_unit: rpu,
            unit,
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(ProtoDuration {
            seconds: reset,
            nanos: 0,
        }),
        quota: None,
    };
    // Envoy's own test case: the least remaining gives the numbers.
    let headers: HashMap<_, _> = draft03_headers(&[
        status(1, 2, "first", 2, 3),
        status(4, 3, "second", 5, 6),
        DescriptorStatus::default(),
    ])
    .into_iter()
    .map(|h| (h.key, h.value))
    .collect();
    assert_eq!(
        headers["x-ratelimit-limit"],
        "1, 1;w=60;name=\"first\", 4;w=3600;name=\"second\""
    );
    assert_eq!(headers["x-ratelimit-remaining"], "2");
    assert_eq!(headers["x-ratelimit-reset"], "3");
    let unnamed: HashMap<_, _> = draft03_headers(&[status(10, 1, "", 7, 1)])
        .into_iter()
        .map(|h| (h.key, h.value))
        .collect();
    assert_eq!(unnamed["x-ratelimit-limit"], "10, 10;w=1");
    assert!(draft03_headers(&[DescriptorStatus::default()]).is_empty());
}
