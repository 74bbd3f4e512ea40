//! wasmgate's rate-limit filter as a proxy-wasm module (`rate-limit.wasm`).
//!
//! Glue only: the limits, identities, token buckets and the bounded table live in
//! `wasmgate-rate-limit-policy`. `root.rs` loads the configuration once per VM and
//! creates the bucket table in shared data; `request.rs` counts each request and adds
//! the rate-limit headers to its response, or answers it when it is over a limit.

mod request;
mod root;

proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|_| Box::new(root::RateLimitRoot::default()));
}}
