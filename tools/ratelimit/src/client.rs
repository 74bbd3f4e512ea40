//! `ask` and `load`: a client of the service, for operators, tests and benchmarks.

use clap::{Args, ValueEnum};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as EnvoyCode;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use wasmgate_ratelimit_protocol::lease::{LeaseGrant, LeaseRenewal, RenewRequest, RenewResponse};
use wasmgate_ratelimit_protocol::rls;
use wasmgate_ratelimit_protocol::{LEASE_METHOD, LEASE_SERVICE};

#[derive(Args)]
pub struct AskArgs {
    /// The service, HOST:PORT.
    #[arg(long)]
    target: String,
    #[command(flatten)]
    request: RequestArgs,
    /// Renew a lease instead: the hits wanted (0 only settles --lease).
    #[arg(long)]
    want: Option<u64>,
    /// The lease to settle (with --want).
    #[arg(long, default_value = "")]
    lease: String,
    /// Hits used of --lease.
    #[arg(long, default_value_t = 0)]
    used: u64,
}

#[derive(Args)]
struct RequestArgs {
    #[arg(long)]
    domain: String,
    /// One descriptor's entries, `key=value,key=value`; repeat for more descriptors.
    #[arg(long = "descriptor", required = true)]
    descriptors: Vec<String>,
    /// The request's hits_addend (0: the service counts 1).
    #[arg(long, default_value_t = 0)]
    hits: u32,
    /// Deadline of each call (e.g. 200ms).
    #[arg(long, default_value = "1s", value_parser = crate::serve::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
pub struct LoadArgs {
    /// A replica, HOST:PORT; repeat to spread the calls over several (round robin).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    #[command(flatten)]
    request: RequestArgs,
    /// ShouldRateLimit calls, or lease renewals (each caller a holder that spends every grant).
    #[arg(long, value_enum, default_value_t = Mode::Decide)]
    mode: Mode,
    /// Calls in all (the load's bound).
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Callers at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// Lease mode: hits wanted per renewal.
    #[arg(long, default_value_t = 10)]
    want: u64,
    /// Stop after this long whatever is left (the load's other bound).
    #[arg(long, default_value = "60s", value_parser = crate::serve::parse_duration)]
    max_time: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Decide,
    Lease,
}

fn descriptors(args: &RequestArgs) -> Result<Vec<Vec<(String, String)>>, String> {
    args.descriptors
        .iter()
        .map(|text| {
            text.split(',')
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| format!("descriptor entry `{pair}` is not key=value"))
                })
                .collect()
        })
        .collect()
}

fn rls_request(args: &RequestArgs) -> Result<RateLimitRequest, String> {
    Ok(RateLimitRequest {
        domain: args.domain.clone(),
        descriptors: descriptors(args)?
            .into_iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| Entry { key, value })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        hits_addend: args.hits,
    })
}

fn renewal(
    args: &RequestArgs,
    lease_id: String,
    used: u64,
    want: u64,
) -> Result<RenewRequest, String> {
    let entries = descriptors(args)?
        .into_iter()
        .next()
        .ok_or("a renewal needs one --descriptor")?;
    Ok(RenewRequest {
        domain: args.domain.clone(),
        holder: format!("wasmgate-ratelimit-client-{}", std::process::id()),
        renewals: vec![LeaseRenewal {
            descriptor: Some(rls::RateLimitDescriptor {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| rls::Entry { key, value })
                    .collect(),
                ..Default::default()
            }),
            lease_id,
            used,
            want,
        }],
    })
}

async fn channel(target: &str, timeout: Duration) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("bad target `{target}`: {e}"))?
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))
}

async fn call_renew(
    channel: Channel,
    request: RenewRequest,
) -> Result<RenewResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = format!("/{LEASE_SERVICE}/{LEASE_METHOD}")
        .parse()
        .map_err(|_| tonic::Status::internal("bad method path"))?;
    grpc.unary(
        tonic::Request::new(request),
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

fn millis(duration: Option<&envoy_types::pb::google::protobuf::Duration>) -> Value {
    duration.map_or(Value::Null, |d| {
        json!(d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
    })
}

fn decision_json(response: &RateLimitResponse) -> Value {
    let code = |c: i32| EnvoyCode::try_from(c).map_or("UNKNOWN", |c| c.as_str_name());
    json!({
        "overall_code": code(response.overall_code),
        "statuses": response.statuses.iter().map(|s| json!({
            "code": code(s.code),
            "limit": s.current_limit.as_ref().map(|l| json!({
                "name": l.name, "requests_per_unit": l.requests_per_unit, "unit": l.unit,
            })),
            "remaining": s.limit_remaining,
            "reset_ms": millis(s.duration_until_reset.as_ref()),
        })).collect::<Vec<_>>(),
        "headers": response.response_headers_to_add.iter()
            .map(|h| (h.key.clone(), Value::String(h.value.clone())))
            .collect::<serde_json::Map<_, _>>(),
    })
}

fn grant_json(grant: &LeaseGrant) -> Value {
    let proto = |d: &Option<prost_types::Duration>| {
        d.as_ref().map_or(Value::Null, |d| {
            json!(d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
        })
    };
    json!({
        "code": rls::Code::try_from(grant.code).map_or("UNKNOWN", |c| match c {
            rls::Code::Ok => "OK", rls::Code::OverLimit => "OVER_LIMIT", rls::Code::Unknown => "UNKNOWN",
        }),
        "lease_id": grant.lease_id,
        "granted": grant.granted,
        "valid_for_ms": proto(&grant.valid_for),
        "limit": grant.current_limit.as_ref().map(|l| json!({
            "name": l.name, "requests_per_unit": l.requests_per_unit, "unit": l.unit,
        })),
        "remaining": grant.limit_remaining,
        "reset_ms": proto(&grant.duration_until_reset),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

pub fn ask(args: AskArgs) -> Result<(), String> {
    runtime()?.block_on(async {
        let channel = channel(&args.target, args.request.timeout).await?;
        let answer = match args.want {
            None => {
                let request = rls_request(&args.request)?;
                let response = RateLimitServiceClient::new(channel)
                    .should_rate_limit(request)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                decision_json(&response)
            }
            Some(want) => {
                let request = renewal(&args.request, args.lease.clone(), args.used, want)?;
                let response = call_renew(channel, request)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                json!({"grants": response.grants.iter().map(grant_json).collect::<Vec<_>>()})
            }
        };
        println!("{answer}");
        Ok(())
    })
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    over_limit: AtomicU64,
    unknown: AtomicU64,
    errors: AtomicU64,
    granted: AtomicU64,
    calls: AtomicU64,
}

pub fn load(args: LoadArgs) -> Result<(), String> {
    runtime()?.block_on(async {
        let mut channels = Vec::with_capacity(args.targets.len());
        for target in &args.targets {
            channels.push(channel(target, args.request.timeout).await?);
        }
        let decide_request = Arc::new(rls_request(&args.request)?);
        renewal(&args.request, String::new(), 0, 0)?;
        let tally = Arc::new(Tally::default());
        let args = Arc::new(args);
        let deadline = Instant::now() + args.max_time;
        let started = Instant::now();
        let mut callers = Vec::new();
        for caller in 0..args.concurrency.max(1) {
            let (channels, tally, args, request) = (
                channels.clone(),
                Arc::clone(&tally),
                Arc::clone(&args),
                Arc::clone(&decide_request),
            );
            callers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut lease = String::new();
                let mut unsettled = 0;
                let mut turn = caller as usize;
                loop {
                    if Instant::now() >= deadline
                        || tally.calls.fetch_add(1, Ordering::Relaxed) >= args.requests
                    {
                        break;
                    }
                    let channel = channels[turn % channels.len()].clone();
                    turn += 1;
                    let began = Instant::now();
                    match args.mode {
                        Mode::Decide => {
                            let result = RateLimitServiceClient::new(channel)
                                .should_rate_limit((*request).clone())
                                .await;
                            latencies.push(began.elapsed());
                            match result.map(|r| r.into_inner().overall_code) {
                                Ok(c) if c == EnvoyCode::Ok as i32 => {
                                    tally.ok.fetch_add(1, Ordering::Relaxed)
                                }
                                Ok(c) if c == EnvoyCode::OverLimit as i32 => {
                                    tally.over_limit.fetch_add(1, Ordering::Relaxed)
                                }
                                Ok(_) => tally.unknown.fetch_add(1, Ordering::Relaxed),
                                Err(_) => tally.errors.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        Mode::Lease => {
                            // Every grant is spent in full before the next renewal.
                            let Ok(request) =
                                renewal(&args.request, lease.clone(), unsettled, args.want)
                            else {
                                break;
                            };
                            let result = call_renew(channel, request).await;
                            latencies.push(began.elapsed());
                            let grant = result.ok().and_then(|r| r.grants.into_iter().next());
                            match grant {
                                Some(grant) if grant.code == rls::Code::Ok as i32 => {
                                    tally.ok.fetch_add(1, Ordering::Relaxed);
                                    tally.granted.fetch_add(grant.granted, Ordering::Relaxed);
                                    lease = grant.lease_id;
                                    unsettled = grant.granted;
                                }
                                Some(grant) if grant.code == rls::Code::OverLimit as i32 => {
                                    tally.over_limit.fetch_add(1, Ordering::Relaxed);
                                    lease.clear();
                                    unsettled = 0;
                                }
                                Some(_) => {
                                    tally.unknown.fetch_add(1, Ordering::Relaxed);
                                }
                                None => {
                                    tally.errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
                if args.mode == Mode::Lease && !lease.is_empty() {
                    // Settle the last grant (spent in full) so that nothing stays held.
                    if let Ok(request) = renewal(&args.request, lease, unsettled, 0) {
                        let _ = call_renew(channels[turn % channels.len()].clone(), request).await;
                    }
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for caller in callers {
            latencies.extend(caller.await.map_err(|e| e.to_string())?);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let percentile = |p: f64| -> Value {
            if latencies.is_empty() {
                return Value::Null;
            }
            let index =
                ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            json!(latencies[index].as_micros() as u64)
        };
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        println!(
            "{}",
            json!({
                "calls": latencies.len(),
                "ok": get(&tally.ok),
                "over_limit": get(&tally.over_limit),
                "unknown": get(&tally.unknown),
                "errors": get(&tally.errors),
                "granted": get(&tally.granted),
                "elapsed_s": elapsed.as_secs_f64(),
                "p50_us": percentile(0.50),
                "p99_us": percentile(0.99),
            })
        );
        Ok(())
    })
}
