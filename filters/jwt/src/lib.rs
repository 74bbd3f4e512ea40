//! wasmgate's JWT filter as a proxy-wasm module (`jwt.wasm`), and as the `jwt` stage
//! of the combined module.
//!
//! Glue only: every decision is made in `wasmgate-jwt-auth`. `root.rs` loads the
//! configuration, fetches JWKS documents through callouts on behalf of every worker
//! (shared data carries them to the other VMs) and wakes requests that waited for
//! keys; `request.rs` strips the output headers, asks for a decision and applies it.
//! The entry point (`main!`) is the `standalone` feature, on by default; the combined
//! module uses the crate as a library without it.

mod request;
mod root;

pub use request::JwtRequest;
pub use root::{JwtRoot, FILTER, TICK};

// Only in a .wasm: a native build that links several filters (the combined module's
// tests) would otherwise define the entry point `_initialize` once per filter.
#[cfg(all(feature = "standalone", target_arch = "wasm32"))]
proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|context_id| Box::new(root::JwtRoot::new(context_id)));
}}
