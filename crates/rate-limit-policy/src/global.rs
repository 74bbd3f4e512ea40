//! A rule's global tier: limits that hold across every Envoy instance, kept by a rate-limit
//! service (Envoy's RLS protocol, `crates/ratelimit-protocol`).
//!
//! Two modes, both after the rule's local buckets (which shed floods before they cost a
//! call): `exact` asks the service about every request (`ShouldRateLimit`, the request
//! waits for the answer); `lease` spends budgets leased from the service in shared data
//! (see `lease.rs`). This module holds the tier's configuration, the descriptor a request
//! is counted under, and how a service answer reads; it sends nothing.

use crate::answer::GlobalView;
use crate::config::{check_name, IdentitySpec};
use crate::identity::IdentitySource;
use crate::RequestView;
use serde::Deserialize;
use std::time::Duration;
use wasmgate_config::ConfigError;
use wasmgate_ratelimit_protocol::rls::{
    Code, Entry, RateLimit, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, Unit,
};
use wasmgate_ratelimit_protocol::Message;

pub const DEFAULT_DOMAIN: &str = "wasmgate";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_LEASE_SIZE: u64 = 10;
pub const MAX_LEASE_SIZE: u64 = 1_000_000;
pub const DEFAULT_LEASE_PERIOD: Duration = Duration::from_secs(1);
pub const MIN_LEASE_PERIOD: Duration = Duration::from_millis(100);
pub const MAX_LEASE_PERIOD: Duration = Duration::from_secs(60);
/// The name shown for the global limit when the service gives none (or one that does not
/// fit in a header).
pub const GLOBAL_NAME: &str = "global";

/// How a rule's global tier counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalMode {
    /// One `ShouldRateLimit` call per request (after the local buckets admitted it).
    Exact,
    /// Budgets leased from the service, spent locally.
    Lease(LeaseSettings),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Hits asked for per lease.
    pub size: u64,
    /// How often the root settles spent and idle leases and renews those about to lapse.
    pub period: Duration,
}

/// What a request gets when the global tier cannot decide: the service failed, timed out,
/// answered UNKNOWN, or (lease) its lease ran out while the service was away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Admit it (the local buckets already did).
    Allow,
    /// Refuse it: 503.
    Deny,
    /// Count it against a per-instance bucket: the rule's limits scaled by `fallback_share`.
    Local,
}

impl FailureMode {
    pub fn name(self) -> &'static str {
        match self {
            FailureMode::Allow => "allow",
            FailureMode::Deny => "deny",
            FailureMode::Local => "local",
        }
    }
}

/// A rule's global tier, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalTier {
    pub mode: GlobalMode,
    /// The Envoy cluster of the rate-limit service (HTTP/2).
    pub cluster: String,
    /// The RLS domain the descriptors are counted in.
    pub domain: String,
    /// How long a call may take; in lease mode also the longest a request waits for a lease.
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    /// With `failure_mode: local`: the share of the rule's limits each instance allows on
    /// its own while the service cannot decide (1 = the rule's local buckets alone).
    pub fallback_share: f64,
    /// Who the global limit counts (the rule's identity sources when `None`).
    pub identity: Option<Vec<IdentitySource>>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct GlobalSpec {
    mode: ModeSpec,
    cluster: Option<String>,
    domain: Option<String>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    timeout: Option<Duration>,
    failure_mode: Option<FailureMode>,
    fallback_share: Option<f64>,
    lease: Option<LeaseSpec>,
    pub(crate) identity: Option<Vec<IdentitySpec>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
enum ModeSpec {
    Exact,
    Lease,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct LeaseSpec {
    #[serde(default, deserialize_with = "wasmgate_config::number::optional_u64")]
    size: Option<u64>,
    #[serde(default, deserialize_with = "wasmgate_config::optional_duration")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<wasmgate_config::schema::DurationText>")
    )]
    period: Option<Duration>,
}

impl GlobalSpec {
    /// `identity` is the tier's identity sources, already compiled (`None`: the rule's);
    /// `local_limits`: whether the rule has local buckets (`failure_mode: local` falls
    /// back to them, and is the default only then).
    pub(crate) fn compile(
        self,
        identity: Option<Vec<IdentitySource>>,
        local_limits: bool,
    ) -> Result<GlobalTier, ConfigError> {
        let cluster = self.cluster.ok_or_else(|| {
            ConfigError::new(
                "cluster",
                "name the Envoy cluster of the rate-limit service (it must speak HTTP/2)",
            )
        })?;
        check_cluster(&cluster).map_err(|p| ConfigError::new("cluster", p))?;
        let domain = self.domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
        if domain.is_empty() || domain.len() > 128 || domain.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "domain",
                format!("{domain:?}: 1 to 128 characters, no control characters"),
            ));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout < Duration::from_millis(1) || timeout > MAX_TIMEOUT {
            return Err(ConfigError::new("timeout", "from 1ms to 10s"));
        }
        let failure_mode = match self.failure_mode {
            None if local_limits => FailureMode::Local,
            // As Envoy's own ratelimit filter (`failure_mode_deny: false`).
            None => FailureMode::Allow,
            Some(FailureMode::Local) if !local_limits => {
                return Err(ConfigError::new(
                    "failure_mode",
                    "\"local\" falls back to the rule's local limits, and this rule has none: choose \"allow\" or \"deny\", or give the rule \"limits\"",
                ))
            }
            Some(mode) => mode,
        };
        let fallback_share = match (self.fallback_share, failure_mode) {
            (None, _) => 1.0,
            (Some(share), FailureMode::Local) if share > 0.0 && share <= 1.0 => share,
            (Some(share), FailureMode::Local) => {
                return Err(ConfigError::new(
                    "fallback_share",
                    format!("{share}: a share of the rule's limits, above 0 and at most 1"),
                ))
            }
            (Some(_), other) => {
                return Err(ConfigError::new(
                    "fallback_share",
                    format!(
                        "only with \"failure_mode\": \"local\" (this tier's is {:?})",
                        other.name()
                    ),
                ))
            }
        };
        let mode = match (self.mode, self.lease) {
            (ModeSpec::Exact, None) => GlobalMode::Exact,
            (ModeSpec::Exact, Some(_)) => {
                return Err(ConfigError::new("lease", "only with \"mode\": \"lease\""))
            }
            (ModeSpec::Lease, spec) => {
                let spec = spec.unwrap_or(LeaseSpec {
                    size: None,
                    period: None,
                });
                let size = spec.size.unwrap_or(DEFAULT_LEASE_SIZE);
                if !(1..=MAX_LEASE_SIZE).contains(&size) {
                    return Err(ConfigError::new(
                        "lease.size",
                        format!("{size}: from 1 to {MAX_LEASE_SIZE}"),
                    ));
                }
                let period = spec.period.unwrap_or(DEFAULT_LEASE_PERIOD);
                if period < MIN_LEASE_PERIOD
                    || period > MAX_LEASE_PERIOD
                    || period.subsec_micros() % 1000 != 0
                {
                    return Err(ConfigError::new(
                        "lease.period",
                        "a whole number of milliseconds, from 100ms to 60s",
                    ));
                }
                GlobalMode::Lease(LeaseSettings { size, period })
            }
        };
        Ok(GlobalTier {
            mode,
            cluster,
            domain,
            timeout,
            failure_mode,
            fallback_share,
            identity,
        })
    }
}

/// Envoy takes the cluster argument of a gRPC call for a serialized `GrpcService` when it
/// parses as one, and then refuses the call in a way the proxy-wasm SDK answers with a
/// panic. Names that read as protobuf are therefore refused here (none of Envoy's or
/// Istio's usual names do: `ratelimit`, `outbound|8081||svc.ns.svc.cluster.local`).
fn check_cluster(cluster: &str) -> Result<(), String> {
    if cluster.is_empty() || cluster.len() > 256 || cluster.chars().any(char::is_control) {
        return Err(format!(
            "{cluster:?}: 1 to 256 characters, no control characters"
        ));
    }
    // `()` is google.protobuf.Empty: it reads any well-formed message, skipping its fields.
    if <() as Message>::decode(cluster.as_bytes()).is_ok() {
        return Err(format!(
            "{cluster:?}: Envoy would read this name as a serialized gRPC service; rename the cluster"
        ));
    }
    Ok(())
}

/// The entries a request is counted under at the service, in order: the rule, the plan
/// (when the request named one of the rule's plans), the Envoy route (with `endpoint:
/// route`), then the client: one entry per identity header (`x-tenant-id=acme`), or
/// `remote_address` for an address (`10.1.2.3`, or `10.1.2.0/24` when masked). A request
/// no source identifies adds no client entry (it counts under the rule's own node).
pub(crate) fn descriptor(
    rule: &str,
    plan: &str,
    route: Option<&str>,
    identity: &[IdentitySource],
    view: &dyn RequestView,
) -> RateLimitDescriptor {
    let mut entries = vec![entry("rule", rule)];
    if !plan.is_empty() {
        entries.push(entry("plan", plan));
    }
    if let Some(route) = route {
        entries.push(entry("route", route));
    }
    if let Some(client) = identity.iter().find_map(|source| source.entries(view)) {
        entries.extend(client.into_iter().map(|(key, value)| Entry { key, value }));
    }
    RateLimitDescriptor {
        entries,
        limit: None,
        hits_addend: None,
    }
}

fn entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// The `ShouldRateLimit` request for one request of `cost` hits.
pub(crate) fn should_rate_limit(
    domain: &str,
    descriptor: &RateLimitDescriptor,
    cost: u64,
) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![descriptor.clone()],
        hits_addend: u32::try_from(cost).unwrap_or(u32::MAX),
    }
    .encode_to_vec()
}

/// Why the global tier could not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceFailure {
    /// The call could not be sent (no such cluster, ...).
    Dispatch,
    /// The call ran past `timeout` (gRPC DEADLINE_EXCEEDED).
    Timeout,
    /// Another gRPC status: the service is down, unreachable or failing (UNAVAILABLE, ...).
    Status(u32),
    /// An answer that does not decode.
    Malformed,
    /// The service answered UNKNOWN (it could not decide, e.g. its store failed).
    Unknown,
    /// Lease mode: no lease, and none could be had within `timeout`.
    NoLease,
    /// Lease mode: the lease table has no slot for this client.
    NoSlot,
}

impl ServiceFailure {
    /// The metric suffix counting this failure.
    pub fn kind(self) -> &'static str {
        match self {
            ServiceFailure::Dispatch => "dispatch",
            ServiceFailure::Timeout => "timeout",
            ServiceFailure::Status(_) => "status",
            ServiceFailure::Malformed => "malformed",
            ServiceFailure::Unknown => "unknown",
            ServiceFailure::NoLease => "no_lease",
            ServiceFailure::NoSlot => "no_slot",
        }
    }

    pub const KINDS: [&'static str; 7] = [
        "dispatch",
        "timeout",
        "status",
        "malformed",
        "unknown",
        "no_lease",
        "no_slot",
    ];
}

/// gRPC's status codes the filter tells apart.
const GRPC_OK: u32 = 0;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// What the service said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAnswer {
    /// Within the limit; the fleet's view when the service reported one.
    Ok(Option<GlobalView>),
    /// Over the limit.
    OverLimit(Option<GlobalView>),
}

/// Reads a `ShouldRateLimit` answer: the gRPC status Envoy reported and the message,
/// for a call sent at `sent_at_ms` with `timeout`, arriving at `now_ms`.
///
/// Envoy ends a call that runs past its timeout with a local 504, which gRPC's mapping
/// turns into UNAVAILABLE, the status of a service that is down: a failure that came at
/// or after the timeout is therefore told apart by when it came (within a tenth of it,
/// at least 1 ms: the host's clock runs a little behind its timers).
pub fn read_answer(
    grpc_status: u32,
    message: &[u8],
    sent_at_ms: u64,
    now_ms: u64,
    timeout: Duration,
) -> Result<ServiceAnswer, ServiceFailure> {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let slack_ms = (timeout_ms / 10).max(1);
    let timed_out = now_ms.saturating_sub(sent_at_ms) + slack_ms >= timeout_ms;
    match grpc_status {
        GRPC_OK => {}
        GRPC_DEADLINE_EXCEEDED => return Err(ServiceFailure::Timeout),
        _ if timed_out => return Err(ServiceFailure::Timeout),
        other => return Err(ServiceFailure::Status(other)),
    }
    let response = RateLimitResponse::decode(message).map_err(|_| ServiceFailure::Malformed)?;
    let view = response.statuses.first().and_then(|status| {
        view_of(
            status.current_limit.as_ref()?,
            u64::from(status.limit_remaining),
            status.duration_until_reset.as_ref(),
            now_ms,
        )
    });
    match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => Ok(ServiceAnswer::Ok(view)),
        Ok(Code::OverLimit) => Ok(ServiceAnswer::OverLimit(view)),
        Ok(Code::Unknown) | Err(_) => Err(ServiceFailure::Unknown),
    }
}

/// The fleet's view of a limit from what the service reported at `now_ms`.
pub(crate) fn view_of(
    limit: &RateLimit,
    remaining: u64,
    until_reset: Option<&prost_types::Duration>,
    now_ms: u64,
) -> Option<GlobalView> {
    let window_ms = Unit::try_from(limit.unit)
        .ok()
        .and_then(Unit::seconds)
        .map_or(0, |s| s * 1000);
    let reset_in_ms = until_reset.map_or(window_ms, duration_ms);
    let name = if check_name(&limit.name).is_ok() {
        limit.name.clone()
    } else {
        GLOBAL_NAME.to_owned()
    };
    let limit_value = u64::from(limit.requests_per_unit);
    (limit_value > 0).then(|| GlobalView {
        name,
        limit: limit_value,
        window_ms,
        remaining: remaining.min(limit_value),
        reset_at_ms: now_ms.saturating_add(reset_in_ms),
    })
}

/// A protobuf duration in whole milliseconds (negative counts as zero), rounded up.
pub(crate) fn duration_ms(duration: &prost_types::Duration) -> u64 {
    let seconds = u64::try_from(duration.seconds).unwrap_or(0);
    let nanos = u64::try_from(duration.nanos).unwrap_or(0);
    seconds
        .saturating_mul(1000)
        .saturating_add(nanos.div_ceil(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_ratelimit_protocol::rls::DescriptorStatus;

    #[test]
    fn cluster_names_envoy_would_misread_are_refused() {
        for fine in [
            "ratelimit",
            "outbound|8081||wasmgate-ratelimit.default.svc.cluster.local",
            "rls",
            "b",
        ] {
            assert_eq!(check_cluster(fine), Ok(()), "{fine}");
        }
        // 'b' = field 12, length-delimited, then 2 bytes: a well-formed message.
        assert!(check_cluster("b\x02xy").is_err());
        assert!(check_cluster("b\u{2}ab").is_err());
        assert!(check_cluster("").is_err());
    }

    #[test]
    fn answers_read_as_the_service_meant_them() {
        let limit = RateLimit {
            name: "per-tenant".into(),
            requests_per_unit: 100,
            unit: Unit::Minute as i32,
        };
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(limit),
                limit_remaining: 0,
                duration_until_reset: Some(prost_types::Duration {
                    seconds: 12,
                    nanos: 500_000_000,
                }),
            }],
            ..Default::default()
        };
        let second = Duration::from_secs(1);
        let answer = read_answer(0, &response.encode_to_vec(), 990, 1_000, second).unwrap();
        assert_eq!(
            answer,
            ServiceAnswer::OverLimit(Some(GlobalView {
                name: "per-tenant".into(),
                limit: 100,
                window_ms: 60_000,
                remaining: 0,
                reset_at_ms: 13_500,
            }))
        );
        let unknown = RateLimitResponse::default().encode_to_vec();
        assert_eq!(
            read_answer(0, &unknown, 0, 5, second),
            Err(ServiceFailure::Unknown)
        );
        assert_eq!(
            read_answer(4, &[], 0, 5, second),
            Err(ServiceFailure::Timeout)
        );
        assert_eq!(
            read_answer(14, &[], 0, 5, second),
            Err(ServiceFailure::Status(14))
        );
        assert_eq!(
            read_answer(0, b"\xff\xff", 0, 5, second),
            Err(ServiceFailure::Malformed)
        );
        // Envoy's own timeout comes back as UNAVAILABLE, at the timeout.
        assert_eq!(
            read_answer(14, &[], 0, 1_000, second),
            Err(ServiceFailure::Timeout)
        );
        // OK without statuses: no view (the headers stay local).
        let ok = RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        };
        assert_eq!(
            read_answer(0, &ok.encode_to_vec(), 0, 5, second),
            Ok(ServiceAnswer::Ok(None))
        );
    }
}
