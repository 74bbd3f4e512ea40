//! wasmgate's JWT filter as a proxy-wasm module (`jwt.wasm`).
//!
//! Glue only: every decision is made in `wasmgate-jwt-auth`. `root.rs` loads the
//! configuration, fetches JWKS documents through callouts on behalf of every worker
//! (shared data carries them to the other VMs) and wakes requests that waited for
//! keys; `request.rs` strips the output headers, asks for a decision and applies it.

mod request;
mod root;

proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|context_id| Box::new(root::JwtRoot::new(context_id)));
}}
