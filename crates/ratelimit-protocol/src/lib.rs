//! The gRPC messages between wasmgate's rate-limit filter and a rate-limit service.
//!
//! Two services, one set of messages:
//! - [`rls`]: the part of Envoy's rate limit service protocol
//!   (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) that the filter sends and
//!   reads. Field numbers follow Envoy's `rls.proto` and `ratelimit.proto`; fields the filter
//!   never reads (`quota`, `dynamic_metadata`, ...) are left out and skipped when decoding.
//! - [`lease`]: wasmgate's lease renewal (`wasmgate.ratelimit.v1.LeaseService/Renew`, the
//!   contract is `proto/wasmgate/ratelimit/v1/lease.proto`): budgets an Envoy instance spends
//!   locally and settles when it renews. The service's side of the bargain (grants end with
//!   their window, unsettled holds count in full, settling twice counts once) is written in
//!   the `.proto`.
//!
//! The types are declared with prost derives rather than generated: the filter is built for
//! `wasm32-wasip1`, where Envoy's generated Rust types (`envoy-types`, which needs tonic's
//! transport) do not build. The tests prove that these declarations and Envoy's generated
//! types read each other's bytes. No tonic, tokio or I/O here: a service frames these with
//! its own gRPC stack, the filter hands the bytes to Envoy (`dispatch_grpc_call`).

pub use prost::Message;

/// The gRPC service and method the filter calls for a per-request decision.
pub const RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const RLS_METHOD: &str = "ShouldRateLimit";
/// The gRPC service and method the filter calls to renew its leases.
pub const LEASE_SERVICE: &str = "wasmgate.ratelimit.v1.LeaseService";
pub const LEASE_METHOD: &str = "Renew";

/// Envoy's rate limit service protocol (v3), the messages the filter uses.
pub mod rls {
    /// `envoy.service.ratelimit.v3.RateLimitRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        /// The request is over the limit if any descriptor is.
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        /// Hits this request costs; 0 means 1.
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(message, optional, tag = "2")]
        pub limit: Option<RateLimitOverride>,
        /// Hits for this descriptor, overriding the request's (`google.protobuf.UInt64Value`;
        /// 0 is allowed and means "check only").
        #[prost(message, optional, tag = "3")]
        pub hits_addend: Option<u64>,
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.RateLimitOverride`.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
    pub struct RateLimitOverride {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(enumeration = "Unit", tag = "2")]
        pub unit: i32,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        #[prost(enumeration = "Code", tag = "1")]
        pub overall_code: i32,
        /// One per request descriptor, in the same order.
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
        #[prost(message, repeated, tag = "3")]
        pub response_headers_to_add: Vec<HeaderValue>,
        #[prost(message, repeated, tag = "4")]
        pub request_headers_to_add: Vec<HeaderValue>,
        /// The body to answer with when the request is refused.
        #[prost(bytes = "vec", tag = "5")]
        pub raw_body: Vec<u8>,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus`.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct DescriptorStatus {
        #[prost(enumeration = "Code", tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<prost_types::Duration>,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit`.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct RateLimit {
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(enumeration = "Unit", tag = "2")]
        pub unit: i32,
    }

    /// `envoy.config.core.v3.HeaderValue`.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct HeaderValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
        /// Set instead of `value` when the value is not UTF-8.
        #[prost(bytes = "vec", tag = "3")]
        pub raw_value: Vec<u8>,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse.Code`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Code {
        /// The service could not decide (Envoy treats this as OK; ours as a failure).
        Unknown = 0,
        Ok = 1,
        OverLimit = 2,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit` (the same numbers as
    /// `envoy.type.v3.RateLimitUnit`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Unit {
        Unknown = 0,
        Second = 1,
        Minute = 2,
        Hour = 3,
        Day = 4,
        Month = 5,
        Year = 6,
        Week = 7,
    }

    impl Unit {
        /// The unit's length in seconds; `None` for `Unknown` and for the calendar units
        /// (`Month`, `Year`) whose length varies.
        pub fn seconds(self) -> Option<u64> {
            match self {
                Unit::Second => Some(1),
                Unit::Minute => Some(60),
                Unit::Hour => Some(3_600),
                Unit::Day => Some(86_400),
                Unit::Week => Some(604_800),
                Unit::Unknown | Unit::Month | Unit::Year => None,
            }
        }
    }
}

/// wasmgate's lease renewal, `wasmgate.ratelimit.v1` (see `proto/wasmgate/ratelimit/v1/lease.proto`).
pub mod lease {
    use crate::rls::{Code, RateLimit, RateLimitDescriptor};

    /// `wasmgate.ratelimit.v1.RenewRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RenewRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        /// Who holds the leases (an Envoy instance); for logs and metrics only.
        #[prost(string, tag = "2")]
        pub holder: String,
        #[prost(message, repeated, tag = "3")]
        pub renewals: Vec<LeaseRenewal>,
    }

    /// `wasmgate.ratelimit.v1.LeaseRenewal`: settle one lease and take the next.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct LeaseRenewal {
        /// The descriptor whose limit is leased (its `hits_addend` and `limit` are ignored).
        #[prost(message, optional, tag = "1")]
        pub descriptor: Option<RateLimitDescriptor>,
        /// The lease being settled, empty when the holder has none.
        #[prost(string, tag = "2")]
        pub lease_id: String,
        /// Hits admitted against `lease_id` (at most what it granted).
        #[prost(uint64, tag = "3")]
        pub used: u64,
        /// Hits wanted for the next lease; 0 settles `lease_id` and takes nothing.
        #[prost(uint64, tag = "4")]
        pub want: u64,
    }

    /// `wasmgate.ratelimit.v1.RenewResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RenewResponse {
        /// One per renewal, in the same order.
        #[prost(message, repeated, tag = "1")]
        pub grants: Vec<LeaseGrant>,
    }

    /// `wasmgate.ratelimit.v1.LeaseGrant`.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct LeaseGrant {
        /// OK: `granted` > 0 (maybe less than wanted), or 0 for a `want` of 0. OK without a
        /// `lease_id`: no limit applies to the descriptor (no rule, or an unlimited one), the
        /// grant is the whole `want` and there is nothing to settle. OVER_LIMIT: nothing left
        /// in this window. UNKNOWN: not served (the store failed; the previous lease, if any,
        /// may not be settled yet: settle it again next time).
        #[prost(enumeration = "Code", tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub lease_id: String,
        #[prost(uint64, tag = "3")]
        pub granted: u64,
        /// Spend the grant only within this time from receipt; the service holds it longer.
        #[prost(message, optional, tag = "4")]
        pub valid_for: Option<prost_types::Duration>,
        #[prost(message, optional, tag = "5")]
        pub current_limit: Option<RateLimit>,
        /// What is left of the limit in this window after this grant (all holders together).
        #[prost(uint64, tag = "6")]
        pub limit_remaining: u64,
        #[prost(message, optional, tag = "7")]
        pub duration_until_reset: Option<prost_types::Duration>,
    }
}

#[cfg(test)]
mod tests;
