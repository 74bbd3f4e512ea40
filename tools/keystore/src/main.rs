//! `wasmgate-keystore`: the key store the API-key filter asks, and the CLI that
//! manages its keys.
//!
//! `serve` answers the lookup contract (`GET <prefix>/<hash>`, see docs/keystore.md)
//! from a backend on tokio + hyper; `keys create|rotate|revoke|list` change and show
//! that backend directly. Backends: Redis (`--store redis://HOST:PORT`, `rediss://`
//! for TLS), shared by any number of `serve` replicas, or a JSON file (`--store
//! file:PATH`, the default: one machine, demos). Only hashes and metadata are ever
//! stored. Every flag can also be set from a `WASMGATE_KEYSTORE_*` environment
//! variable, so no secret needs the command line.
//!
//! Like every project server, `serve` prints `listening on http://ADDR` on stdout once
//! bound; its logs are JSON lines on stderr.

mod connection;
mod file_backend;
mod keys;
mod last_used;
mod metrics;
mod redis_backend;
mod routes;
mod server;
mod store;

use clap::{Args, Parser, Subcommand};
use redis_backend::RedisOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use store::Backend;
use tracing_subscriber::filter::LevelFilter;
use wasmgate_config::parse_duration;

#[derive(Parser)]
#[command(
    name = "wasmgate-keystore",
    version,
    about = "wasmgate's API key store: the lookup service and the keys CLI"
)]
struct Cli {
    /// Where keys live: redis://[USER[:PASSWORD]@]HOST:PORT[/DB], rediss://... (TLS),
    /// redis+unix:///PATH, or file:PATH. A password in it is better passed through
    /// the environment variable than on the command line.
    #[arg(
        long,
        global = true,
        env = "WASMGATE_KEYSTORE_STORE",
        hide_env_values = true,
        default_value = "file:wasmgate-keys.json"
    )]
    store: String,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct RedisArgs {
    /// A file whose first line is the Redis password (overrides one in --store).
    #[arg(long, global = true, env = "WASMGATE_KEYSTORE_REDIS_PASSWORD_FILE")]
    redis_password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for rediss:// (default: the system's).
    #[arg(long, global = true, env = "WASMGATE_KEYSTORE_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a Redis that asks for one (with --redis-client-key).
    #[arg(long, global = true, env = "WASMGATE_KEYSTORE_REDIS_CLIENT_CERT")]
    redis_client_cert: Option<PathBuf>,
    /// PEM private key of --redis-client-cert.
    #[arg(long, global = true, env = "WASMGATE_KEYSTORE_REDIS_CLIENT_KEY")]
    redis_client_key: Option<PathBuf>,
    /// Connecting to Redis, and each command, fail after this long.
    #[arg(long, global = true, env = "WASMGATE_KEYSTORE_REDIS_TIMEOUT", default_value = "500ms",
          value_parser = parse_duration)]
    redis_timeout: Duration,
}

impl RedisArgs {
    fn options(&self) -> RedisOptions {
        RedisOptions {
            password_file: self.redis_password_file.clone(),
            ca_file: self.redis_ca_file.clone(),
            client_cert: self.redis_client_cert.clone(),
            client_key: self.redis_client_key.clone(),
            timeout: self.redis_timeout,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve lookups over HTTP until SIGTERM or SIGINT.
    Serve(server::ServeArgs),
    /// Create, rotate, revoke or list keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logs(args.log_level);
            run(tokio::runtime::Builder::new_multi_thread(), async {
                let backend = open(&cli.store, &cli.redis)?;
                server::serve(backend, args).await
            })
            .inspect_err(|message| tracing::error!(error = %message, "cannot serve"))
        }
        Command::Keys { command } => run(tokio::runtime::Builder::new_current_thread(), async {
            let backend = open(&cli.store, &cli.redis)?;
            keys::run(&backend, command).await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wasmgate-keystore: {message}");
            ExitCode::FAILURE
        }
    }
}

fn open(store: &str, redis: &RedisArgs) -> Result<Backend, String> {
    Backend::open(store, &redis.options())
}

fn run(
    mut builder: tokio::runtime::Builder,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(work)
}

/// JSON lines on stderr: `timestamp` (RFC 3339, UTC), `level`, `message`, fields.
fn init_logs(level: LevelFilter) {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
}
