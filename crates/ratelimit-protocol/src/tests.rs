//! Wire compatibility with Envoy's own generated types (`envoy-types`): what the filter
//! encodes, Envoy's types decode to the same values, and the other way round.

use crate::lease::{LeaseGrant, LeaseRenewal, RenewRequest, RenewResponse};
use crate::rls::{
    Code, DescriptorStatus, Entry, HeaderValue, RateLimit, RateLimitDescriptor, RateLimitOverride,
    RateLimitRequest, RateLimitResponse, Unit,
};
use envoy_types::pb::envoy::config::core::v3 as env_core;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as env_common;
use envoy_types::pb::envoy::service::ratelimit::v3 as env_rls;
use envoy_types::pb::google::protobuf as env_pb;
use prost::Message;

fn our_request() -> RateLimitRequest {
    RateLimitRequest {
        domain: "wasmgate".into(),
        descriptors: vec![
            RateLimitDescriptor {
                entries: vec![
                    Entry {
                        key: "rule".into(),
                        value: "tenant".into(),
                    },
                    Entry {
                        key: "tenant".into(),
                        value: "acme".into(),
                    },
                ],
                limit: Some(RateLimitOverride {
                    requests_per_unit: 42,
                    unit: Unit::Week as i32,
                }),
                hits_addend: Some(0),
            },
            RateLimitDescriptor {
                entries: vec![Entry {
                    key: "client".into(),
                    value: "10.0.0.0/24".into(),
                }],
                limit: None,
                hits_addend: None,
            },
        ],
        hits_addend: 3,
    }
}

#[test]
fn envoy_reads_the_request_the_filter_sends() {
    let bytes = our_request().encode_to_vec();
    let theirs = env_rls::RateLimitRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(theirs.domain, "wasmgate");
    assert_eq!(theirs.hits_addend, 3);
    assert_eq!(theirs.descriptors.len(), 2);
    let first = &theirs.descriptors[0];
    let pairs: Vec<_> = first
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(pairs, [("rule", "tenant"), ("tenant", "acme")]);
    let limit = first.limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (42, 7));
    // A per-descriptor hits_addend of 0 is present, not absent: "check only".
    assert_eq!(first.hits_addend.as_ref().map(|v| v.value), Some(0));
    assert!(theirs.descriptors[1].hits_addend.is_none());
    assert!(theirs.descriptors[1].limit.is_none());
    // And back: Envoy's encoding reads as ours.
    assert_eq!(
        RateLimitRequest::decode(theirs.encode_to_vec().as_slice()).unwrap(),
        our_request()
    );
}

#[test]
fn the_filter_reads_the_response_a_service_sends() {
    let theirs = env_rls::RateLimitResponse {
        overall_code: env_rls::rate_limit_response::Code::OverLimit as i32,
        statuses: vec![env_rls::rate_limit_response::DescriptorStatus {
            code: env_rls::rate_limit_response::Code::OverLimit as i32,
            current_limit: Some(env_rls::rate_limit_response::RateLimit {
                name: "per-tenant".into(),
                requests_per_unit: 100,
                unit: env_rls::rate_limit_response::rate_limit::Unit::Minute as i32,
            }),
            limit_remaining: 0,
            duration_until_reset: Some(env_pb::Duration {
                seconds: 17,
                nanos: 500_000_000,
            }),
            quota: Some(env_rls::rate_limit_response::Quota {
                requests: 5,
                id: "ignored".into(),
                expiration_specifier: None,
            }),
        }],
        response_headers_to_add: vec![env_core::HeaderValue {
            key: "x-ratelimit-limit".into(),
            value: "100".into(),
            raw_value: vec![],
        }],
        request_headers_to_add: vec![],
        raw_body: b"slow down".to_vec(),
        dynamic_metadata: Some(env_pb::Struct::default()),
        quota: None,
    };
    let ours = RateLimitResponse::decode(theirs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(ours.overall_code, Code::OverLimit as i32);
    assert_eq!(
        ours.statuses,
        [DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit {
                name: "per-tenant".into(),
                requests_per_unit: 100,
                unit: Unit::Minute as i32,
            }),
            limit_remaining: 0,
            duration_until_reset: Some(prost_types::Duration {
                seconds: 17,
                nanos: 500_000_000
            }),
        }]
    );
    assert_eq!(
        ours.response_headers_to_add,
        [HeaderValue {
            key: "x-ratelimit-limit".into(),
            value: "100".into(),
            raw_value: vec![]
        }]
    );
    assert_eq!(ours.raw_body, b"slow down");
}

#[test]
fn lease_messages_carry_envoy_descriptors_and_limits() {
    // The lease descriptor is Envoy's RateLimitDescriptor: a service decodes it with Envoy's type.
    let renewal = LeaseRenewal {
        descriptor: Some(our_request().descriptors[0].clone()),
        lease_id: "l-1".into(),
        used: 7,
        want: 50,
    };
    let request = RenewRequest {
        domain: "wasmgate".into(),
        holder: "gw-1".into(),
        renewals: vec![renewal.clone()],
    };
    let back = RenewRequest::decode(request.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, request);
    let descriptor_bytes = renewal.descriptor.as_ref().unwrap().encode_to_vec();
    let theirs = env_common::RateLimitDescriptor::decode(descriptor_bytes.as_slice()).unwrap();
    assert_eq!(theirs.entries[1].value, "acme");

    let response = RenewResponse {
        grants: vec![LeaseGrant {
            code: Code::Ok as i32,
            lease_id: "l-2".into(),
            granted: 50,
            valid_for: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            current_limit: Some(RateLimit {
                name: "t".into(),
                requests_per_unit: 1000,
                unit: Unit::Hour as i32,
            }),
            limit_remaining: 900,
            duration_until_reset: Some(prost_types::Duration {
                seconds: 3_000,
                nanos: 0,
            }),
        }],
    };
    assert_eq!(
        RenewResponse::decode(response.encode_to_vec().as_slice()).unwrap(),
        response
    );
}

#[test]
fn garbage_bytes_are_an_error_not_a_panic() {
    for bytes in [
        &b"\xff\xff\xff"[..],
        b"\x0a\x05ab",
        b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    ] {
        assert!(RateLimitResponse::decode(bytes).is_err());
        assert!(RenewResponse::decode(bytes).is_err());
    }
}

#[test]
fn unit_lengths() {
    assert_eq!(Unit::Minute.seconds(), Some(60));
    assert_eq!(Unit::Week.seconds(), Some(604_800));
    assert_eq!(Unit::Month.seconds(), None);
    assert_eq!(Unit::try_from(7), Ok(Unit::Week));
}
