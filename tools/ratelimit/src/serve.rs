//! `serve`: the flags, the listeners, the shutdown.

use crate::counters::{MemoryCounters, RedisCounters, RedisOptions, Store};
use crate::decision::DecisionOptions;
use crate::grpc::{LeaseServer, RateLimitApi, State};
use crate::lease::LeaseOptions;
use crate::limits::{read_sources, Limits};
use crate::metrics::Metrics;
use clap::{Args, ValueEnum};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use wasmgate_ratelimit_protocol::{LEASE_SERVICE, RLS_SERVICE};

#[derive(Args)]
pub struct ServeArgs {
    /// The limits: a YAML file in envoyproxy/ratelimit's format (one domain per document), or
    /// a directory of *.yaml/*.yml files. Re-read when it changes (see --reload-interval); a
    /// bad new version is logged and the previous limits stay.
    #[arg(long, env = "WASMGATE_RATELIMIT_CONFIG")]
    config: PathBuf,
    /// gRPC address (ShouldRateLimit, Renew, health); port 0 picks a free port.
    #[arg(
        long,
        env = "WASMGATE_RATELIMIT_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    listen: SocketAddr,
    /// Prometheus metrics address (GET /metrics); port 0 picks a free port.
    #[arg(
        long,
        env = "WASMGATE_RATELIMIT_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: SocketAddr,
    /// Where counters live: `memory` (this process only: one instance), or Redis ≥ 7 shared by
    /// every replica: redis://[:PASSWORD@]HOST:PORT[/DB], rediss://… (TLS; the system's CA
    /// certificates, or SSL_CERT_FILE), redis+unix:///PATH.
    #[arg(long, env = "WASMGATE_RATELIMIT_STORE", default_value = "memory")]
    store: String,
    /// Deadline of every Redis call, connecting included (e.g. 50ms, 1s). A call past it is
    /// answered with gRPC UNAVAILABLE, and the client's failure mode decides. Keep it below
    /// the client's own timeout (Envoy's ratelimit filter: 20ms by default).
    #[arg(long, env = "WASMGATE_RATELIMIT_REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    redis_timeout: Duration,
    /// Add draft-03 x-ratelimit-limit/-remaining/-reset to every answer's
    /// response_headers_to_add (as Envoy's own filter makes them from the statuses).
    #[arg(long, env = "WASMGATE_RATELIMIT_RESPONSE_HEADERS")]
    response_headers: bool,
    /// Answer OK to everything, still counting (to try limits out before enforcing them).
    #[arg(long, env = "WASMGATE_RATELIMIT_SHADOW_MODE")]
    shadow_mode: bool,
    /// The longest a lease may be spent (valid_for of a Renew grant).
    #[arg(long, env = "WASMGATE_RATELIMIT_LEASE_VALIDITY", default_value = "10s", value_parser = parse_duration)]
    lease_validity: Duration,
    /// Kept off the end of a window when leasing: a lease's valid_for ends this long before
    /// its window does. Must exceed the time a Renew answer takes to reach the client.
    #[arg(long, env = "WASMGATE_RATELIMIT_LEASE_MARGIN", default_value = "100ms", value_parser = parse_duration)]
    lease_margin: Duration,
    /// How often the limits file is read again to see if it changed (SIGHUP: at once).
    #[arg(long, env = "WASMGATE_RATELIMIT_RELOAD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "WASMGATE_RATELIMIT_LOG_LEVEL", default_value = "info")]
    log_level: tracing::Level,
    /// Log format on stderr: one JSON object per line, or text.
    #[arg(long, env = "WASMGATE_RATELIMIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// `50ms`, `2s`, `1.5s`, `3m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s or m"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

fn open_store(store: &str, timeout: Duration) -> Result<Store, String> {
    if store == "memory" {
        return Ok(Store::Memory(MemoryCounters::default()));
    }
    let redis = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !redis.iter().any(|scheme| store.starts_with(scheme)) {
        return Err(format!(
            "--store `{store}`: expected `memory` or a Redis URL (redis://, rediss://, redis+unix://)"
        ));
    }
    RedisCounters::new(store, RedisOptions { timeout }).map(Store::Redis)
}

fn init_logs(level: tracing::Level, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

pub fn serve(args: ServeArgs) -> Result<(), String> {
    init_logs(args.log_level, args.log_format);
    let sources = read_sources(&args.config).map_err(|e| e.to_string())?;
    let limits = Limits::from_sources(&sources).map_err(|e| e.to_string())?;
    let store = open_store(&args.store, args.redis_timeout)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run(args, sources, limits, store))
}

async fn run(
    args: ServeArgs,
    sources: Vec<(PathBuf, String)>,
    limits: Limits,
    store: Store,
) -> Result<(), String> {
    let rules = limits.rules().len();
    let store_kind = store.describe();
    let decision = DecisionOptions {
        headers: args.response_headers,
        shadow_all: args.shadow_mode,
    };
    let lease = LeaseOptions {
        validity: args.lease_validity,
        margin: args.lease_margin,
    };
    let state = Arc::new(State::new(limits, store, Metrics::new(), decision, lease)?);

    let grpc_listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let grpc_address = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.metrics_listen))?;
    let metrics_address = metrics_listener.local_addr().map_err(|e| e.to_string())?;

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in ["", RLS_SERVICE, LEASE_SERVICE] {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_server = axum::serve(metrics_listener, state.metrics.router())
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let metrics_task = tokio::spawn(async move { metrics_server.await });
    tokio::spawn(crate::reload::watch(
        args.config.clone(),
        Arc::clone(&state),
        args.reload_interval,
        sources,
    ));

    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(RateLimitApi(Arc::clone(
            &state,
        ))))
        .add_service(LeaseServer(Arc::clone(&state)))
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc_listener), stopped(stop_rx.clone()));
    let grpc_task = tokio::spawn(grpc);

    tracing::info!(
        grpc = %grpc_address,
        metrics = %metrics_address,
        store = store_kind,
        rules,
        config = %args.config.display(),
        "serving"
    );
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on http://{grpc_address}");
    let _ = writeln!(stdout, "metrics on http://{metrics_address}/metrics");
    let _ = stdout.flush();

    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
    }
    for service in ["", RLS_SERVICE, LEASE_SERVICE] {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let _ = stop_tx.send(true);
    let grpc_result = grpc_task.await.map_err(|e| e.to_string())?;
    let _ = metrics_task.await;
    grpc_result.map_err(|e| format!("gRPC server: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
