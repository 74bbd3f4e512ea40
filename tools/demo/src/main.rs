//! `wasmgate-demo`: the servers and tools behind `make run`, the end-to-end tests and
//! docker-compose.
//!
//! Every server prints one line, `listening on http://ADDR`, once its socket is bound
//! (so a harness can ask for port 0 and read the real port), then serves until killed.

mod echo;
mod jwks;
mod signing_keys;
mod token;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "wasmgate-demo",
    version,
    about = "wasmgate's demo services and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An upstream that answers every request with the request it received, as JSON.
    Echo(echo::EchoArgs),
    /// A JWKS issuer serving the public keys of a key directory; steerable (fail, slow,
    /// down) through its /__jwks/ admin paths.
    Jwks(jwks::JwksArgs),
    /// Mints a JWT signed with a key of a key directory.
    Token(token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => echo::serve(args),
        Command::Jwks(args) => jwks::serve(args),
        Command::Token(args) => token::mint(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wasmgate-demo: {message}");
            ExitCode::FAILURE
        }
    }
}
