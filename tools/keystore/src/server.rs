//! `serve`: HTTP/1.1 on tokio + hyper.
//!
//! * at most `--max-connections` client connections; one past that is answered `503`
//!   (`Retry-After: 1`, `connection: close`) rather than dropped, by a small separate
//!   allowance of short-lived connections; past that allowance too, it is closed;
//! * per connection, the header-read and idle deadlines of connection.rs; per request,
//!   `--request-timeout`;
//! * SIGTERM or SIGINT: `/readyz` answers 503 at once, the listener keeps accepting for
//!   `--shutdown-delay` (so load balancers see it leave), then closes; requests in
//!   flight are answered, idle connections closed, last-use times written, exit 0. A
//!   second signal, or `--shutdown-timeout`, ends the drain early.

use crate::connection::{self, Activity, Expired, TimedStream, Timeouts};
use crate::last_used::{LastUsed, LastUsedWriter};
use crate::routes::{error, json_answer, App};
use crate::store::Backend;
use clap::Args;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use wasmgate_config::parse_duration;

/// Connections past the limit being answered 503 at once; past these, closed.
const REJECTING_AT_ONCE: usize = 256;
/// How long a connection past the limit may take to send its request head.
const REJECT_DEADLINE: Duration = Duration::from_secs(1);
/// Largest request head, in bytes (a lookup's is a few hundred).
const MAX_HEAD: usize = 64 * 1024;
/// Connections the kernel may queue for the accept loop.
const ACCEPT_QUEUE: u32 = 4096;
/// After a failed accept (out of file descriptors, ...), wait this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed as
    /// `listening on http://ADDR`).
    #[arg(long, env = "WASMGATE_KEYSTORE_LISTEN", default_value = "127.0.0.1:0")]
    listen: String,
    /// Path before the hash (the filter's `store.path_prefix`).
    #[arg(
        long,
        env = "WASMGATE_KEYSTORE_PATH_PREFIX",
        default_value = "/v1/keys"
    )]
    path_prefix: String,
    /// Client connections served at once; one more is answered 503.
    #[arg(
        long,
        env = "WASMGATE_KEYSTORE_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    max_connections: usize,
    /// Once a request's first byte arrives, its whole head must arrive within this long.
    #[arg(long, env = "WASMGATE_KEYSTORE_HEADER_READ_TIMEOUT", default_value = "5s",
          value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    #[arg(long, env = "WASMGATE_KEYSTORE_IDLE_TIMEOUT", default_value = "120s",
          value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A request not answered within this long gets 503.
    #[arg(long, env = "WASMGATE_KEYSTORE_REQUEST_TIMEOUT", default_value = "2s",
          value_parser = parse_duration)]
    request_timeout: Duration,
    /// After SIGTERM, keep serving (with /readyz failing) this long before closing the
    /// listener.
    #[arg(long, env = "WASMGATE_KEYSTORE_SHUTDOWN_DELAY", default_value = "0s",
          value_parser = parse_duration)]
    shutdown_delay: Duration,
    /// The longest wait for requests in flight after the listener closes.
    #[arg(long, env = "WASMGATE_KEYSTORE_SHUTDOWN_TIMEOUT", default_value = "25s",
          value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// A key's last-use time is written at most once per this long (its first use at
    /// once).
    #[arg(long, env = "WASMGATE_KEYSTORE_LAST_USED_INTERVAL", default_value = "30s",
          value_parser = parse_duration)]
    last_used_interval: Duration,
    /// Level of the JSON logs on stderr: error, warn, info, debug.
    #[arg(long, env = "WASMGATE_KEYSTORE_LOG_LEVEL", default_value = "info")]
    pub log_level: tracing_subscriber::filter::LevelFilter,
}

impl ServeArgs {
    fn check(&self) -> Result<(), String> {
        if !self.path_prefix.starts_with('/') {
            return Err(format!(
                "--path-prefix {:?} must start with /",
                self.path_prefix
            ));
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        for (name, value) in [
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--request-timeout", self.request_timeout),
            ("--last-used-interval", self.last_used_interval),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be more than 0"));
            }
        }
        Ok(())
    }
}

/// The signals that stop the server.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn install() -> Result<Self, String> {
        let install = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub async fn serve(backend: Backend, args: ServeArgs) -> Result<(), String> {
    args.check()?;
    let mut signals = StopSignals::install()?;
    let files = raise_open_files_limit();
    let listener = listen(&args.listen).await?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;

    let backend = Arc::new(backend);
    let last_used = Arc::new(LastUsed::new(args.last_used_interval));
    let wake_writer = Arc::new(Notify::new());
    let stop_writer = Arc::new(Notify::new());
    let writer = tokio::spawn(
        LastUsedWriter {
            pending: last_used.clone(),
            wake: wake_writer.clone(),
            stop: stop_writer.clone(),
            interval: args.last_used_interval,
        }
        .run(backend.clone()),
    );
    let app = Arc::new(App::new(
        backend.clone(),
        args.path_prefix.trim_end_matches('/').to_owned(),
        last_used,
        wake_writer,
        args.request_timeout,
    ));
    let timeouts = Timeouts {
        header_read: args.header_read_timeout,
        idle: args.idle_timeout,
    };
    let limits = Limits {
        serving: Arc::new(Semaphore::new(args.max_connections)),
        rejecting: Arc::new(Semaphore::new(REJECTING_AT_ONCE)),
    };

    tracing::info!(
        listen = %address,
        store = %backend.describe(),
        path_prefix = %app.prefix,
        max_connections = args.max_connections,
        open_files_limit = files,
        header_read_timeout_ms = args.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = args.idle_timeout.as_millis() as u64,
        request_timeout_ms = args.request_timeout.as_millis() as u64,
        "serving lookups"
    );
    if files.is_some_and(|limit| (limit as usize) < args.max_connections + 64) {
        tracing::warn!(
            open_files_limit = files,
            max_connections = args.max_connections,
            "the open-files limit is below --max-connections: accepts will fail first"
        );
    }
    // The line the project's tools and tests wait for (stdout; logs go to stderr).
    println!("listening on http://{address}");
    let _ = std::io::stdout().flush();

    let graceful = GracefulShutdown::new();
    let accepting = Accepting {
        listener: &listener,
        app: &app,
        timeouts,
        limits: &limits,
        graceful: &graceful,
    };
    let signal = tokio::select! {
        name = signals.next() => name,
        () = accepting.run() => "",
    };
    app.draining.store(true, Ordering::SeqCst);
    tracing::info!(
        signal,
        shutdown_delay_ms = args.shutdown_delay.as_millis() as u64,
        "shutting down: /readyz answers 503; the listener closes after the delay"
    );
    let mut interrupted = false;
    tokio::select! {
        () = tokio::time::sleep(args.shutdown_delay) => {}
        () = accepting.run() => {}
        _ = signals.next() => interrupted = true,
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        "listener closed; answering the requests in flight"
    );
    if !interrupted {
        tokio::select! {
            () = graceful.shutdown() => {
                tracing::info!("every connection finished");
            }
            () = tokio::time::sleep(args.shutdown_timeout) => {
                tracing::warn!("--shutdown-timeout passed with connections still open: they are cut");
            }
            _ = signals.next() => {
                tracing::warn!("second signal: connections still open are cut");
            }
        }
    }
    stop_writer.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    tracing::info!("stopped");
    Ok(())
}

/// The connection limit and the 503 allowance past it.
struct Limits {
    serving: Arc<Semaphore>,
    rejecting: Arc<Semaphore>,
}

struct Accepting<'a> {
    listener: &'a TcpListener,
    app: &'a Arc<App>,
    timeouts: Timeouts,
    limits: &'a Limits,
    graceful: &'a GracefulShutdown,
}

impl Accepting<'_> {
    /// Accepts until dropped (the caller's `select!` ends it).
    async fn run(&self) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if let Ok(permit) = self.limits.serving.clone().try_acquire_owned() {
                self.serve(stream, permit);
            } else if let Ok(permit) = self.limits.rejecting.clone().try_acquire_owned() {
                self.app.metrics.connections_rejected.inc();
                reject(stream, permit);
            } else {
                self.app.metrics.connections_dropped.inc();
                drop(stream);
            }
        }
    }

    fn serve(&self, stream: TcpStream, permit: OwnedSemaphorePermit) {
        let activity = Arc::new(Mutex::new(Activity::new(Instant::now())));
        let io = TokioIo::new(TimedStream::new(stream, activity.clone(), self.timeouts));
        let app = self.app.clone();
        let request_activity = activity.clone();
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let activity = request_activity.clone();
            async move {
                connection::lock(&activity).request_started();
                app.metrics.requests_in_flight.inc();
                let answer = app.answer(request.method(), request.uri().path()).await;
                app.metrics.requests_in_flight.dec();
                connection::lock(&activity).request_finished(Instant::now());
                Ok::<_, Infallible>(answer)
            }
        });
        let conn = http1::Builder::new()
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, service);
        let conn = self.graceful.watch(conn);
        let app = self.app.clone();
        tokio::spawn(async move {
            app.metrics.connections_open.inc();
            let ended = conn.await;
            app.metrics.connections_open.dec();
            let expired = connection::lock(&activity).expired();
            let counter = match expired {
                Some(Expired::HeaderRead) => &app.metrics.connections_timed_out_header_read,
                Some(Expired::Idle) => &app.metrics.connections_timed_out_idle,
                None => {
                    if let Err(err) = ended {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    drop(permit);
                    return;
                }
            };
            counter.inc();
            drop(permit);
        });
    }
}

/// Answers a connection past the limit with 503 and closes it.
fn reject(stream: TcpStream, permit: OwnedSemaphorePermit) {
    let activity = Arc::new(Mutex::new(Activity::new(Instant::now())));
    let deadlines = Timeouts {
        header_read: REJECT_DEADLINE,
        idle: REJECT_DEADLINE,
    };
    let io = TokioIo::new(TimedStream::new(stream, activity, deadlines));
    let service = service_fn(|_request| async {
        let mut answer = json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            error("overloaded", "too many connections; try again"),
        );
        answer.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
        Ok::<_, Infallible>(answer)
    });
    let conn = http1::Builder::new()
        .keep_alive(false)
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service);
    tokio::spawn(async move {
        let _ = conn.await;
        drop(permit);
    });
}

/// Binds `address` with a long accept queue: a burst of new connections waits there
/// for the accept loop instead of being dropped by the kernel (clients then retry their
/// SYN only after a second). The kernel caps it at `net.core.somaxconn`.
async fn listen(address: &str) -> Result<TcpListener, String> {
    let fail = |e: std::io::Error| format!("cannot listen on {address}: {e}");
    let mut last = None;
    for resolved in tokio::net::lookup_host(address).await.map_err(fail)? {
        let socket = if resolved.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(fail)?;
        socket.set_reuseaddr(true).map_err(fail)?;
        match socket
            .bind(resolved)
            .and_then(|()| socket.listen(ACCEPT_QUEUE))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| format!("{address} resolves to no address"), fail))
}

/// Raises the soft open-files limit to the hard one (each connection is a file);
/// returns the limit in force.
fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-files limit");
            None
        }
    }
}
