//! `wasmgate-ratelimit`: a rate limit service for Envoy and wasmgate's rate-limit filter.
//!
//! It serves Envoy's rate limit service protocol (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`, so stock Envoy's `envoy.filters.http.ratelimit` works against it
//! unchanged) and wasmgate's lease renewal (`wasmgate.ratelimit.v1.LeaseService/Renew`), plus
//! the gRPC health service, with the limits of envoyproxy/ratelimit's YAML format. Kuadrant's
//! limitador counts, over Redis for any number of replicas (exact: `counters.rs`) or in memory
//! for one instance. docs/ratelimit-service.md is the user's guide.
//!
//! Like every project server, `serve` prints `listening on http://ADDR` once bound.

mod client;
mod counters;
mod decision;
mod grpc;
mod lease;
mod limits;
mod metrics;
mod reload;
mod serve;
mod snapshot;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "wasmgate-ratelimit",
    version,
    about = "wasmgate's rate limit service: Envoy's ShouldRateLimit and wasmgate's lease renewal, counted by limitador over Redis (or in memory)",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT (then stop taking calls and finish those in flight).
    Serve(serve::ServeArgs),
    /// Check a limits file (or directory) and exit: 0 if the service would load it, 1 with
    /// the error (file:line:column: message) if not.
    Check {
        /// The limits: a YAML file in envoyproxy/ratelimit's format, or a directory of them.
        #[arg(long, env = "WASMGATE_RATELIMIT_CONFIG")]
        config: PathBuf,
    },
    /// Ask a running service once and print its answer as JSON (ShouldRateLimit, or Renew
    /// with --want).
    Ask(client::AskArgs),
    /// Send a bounded load of calls to one or more replicas and print the counts as JSON
    /// (for tests and benchmarks).
    Load(client::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Check { config } => match limits::Limits::load(&config) {
            Ok(limits) => {
                let mut domains: Vec<&str> = limits.domains().collect();
                domains.sort_unstable();
                println!(
                    "{}: ok: {} rules in {} domains ({})",
                    config.display(),
                    limits.rules().len(),
                    domains.len(),
                    domains.join(", ")
                );
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        },
        Command::Ask(args) => client::ask(args),
        Command::Load(args) => client::load(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wasmgate-ratelimit: {message}");
            ExitCode::FAILURE
        }
    }
}
