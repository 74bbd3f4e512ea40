//! wasmgate's rate-limit filter as a proxy-wasm module (`rate-limit.wasm`), and as the
//! `rate_limit` stage of the combined module.
//!
//! Glue only: the limits, identities, token buckets and the bounded table live in
//! `wasmgate-rate-limit-policy`. `root.rs` loads the configuration once per VM and
//! creates the bucket table in shared data; `request.rs` counts each request and adds
//! the rate-limit headers to its response, or answers it when it is over a limit. The
//! entry point (`main!`) is the `standalone` feature, on by default; the combined
//! module uses the crate as a library without it.

mod request;
mod root;

pub use request::RateLimitRequest;
pub use root::{RateLimitRoot, FILTER};

#[cfg(feature = "standalone")]
proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|_| Box::new(root::RateLimitRoot::default()));
}}
