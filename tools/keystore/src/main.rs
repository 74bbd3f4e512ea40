//! `wasmgate-keystore`: the key store the API-key filter asks, and the CLI that
//! manages its keys.
//!
//! `serve` answers the lookup contract (`GET <prefix>/<hash>`, see docs/keystore.md)
//! from a backend; `keys create|revoke|list` change and show that backend directly.
//! Backends: Redis (`--store redis://HOST:PORT`), or a JSON file (`--store
//! file:PATH`, the default). Only hashes and metadata are ever stored.
//!
//! Like every project server, `serve` prints `listening on http://ADDR` once bound.

mod backend;
mod file_backend;
mod keys;
mod redis_backend;
mod server;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "wasmgate-keystore",
    version,
    about = "wasmgate's API key store: the lookup service and the keys CLI"
)]
struct Cli {
    /// Where keys live: redis://HOST:PORT[/DB], redis+unix:///PATH, or file:PATH.
    #[arg(long, global = true, default_value = "file:wasmgate-keys.json")]
    store: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve lookups over HTTP until killed.
    Serve(server::ServeArgs),
    /// Create, revoke or list keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = backend::open(&cli.store).and_then(|backend| match cli.command {
        Command::Serve(args) => server::serve(backend, args),
        Command::Keys { command } => keys::run(backend.as_ref(), command),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wasmgate-keystore: {message}");
            ExitCode::FAILURE
        }
    }
}
