//! wasmgate's rate-limit filter as a proxy-wasm module (`rate-limit.wasm`), and as the
//! `rate_limit` stage of the combined module.
//!
//! Glue only: the limits, identities, token buckets, leases and the bounded tables live
//! in `wasmgate-rate-limit-policy`. `root.rs` loads the configuration once per VM,
//! creates the tables in shared data, and for rules that lease from a rate-limit service
//! sends the renewals (gRPC) and wakes the requests that waited for a lease;
//! `request.rs` counts each request and adds the rate-limit headers to its response,
//! answers it when it is over a limit, or pauses it for the global tier (an exact-mode
//! call it sends itself, or a lease). The entry point (`main!`) is the `standalone`
//! feature, on by default; the combined module uses the crate as a library without it.

mod request;
mod root;

pub use request::RateLimitRequest;
pub use root::{RateLimitRoot, FILTER};

// Only in a .wasm: a native build that links several filters (the combined module's
// tests) would otherwise define the entry point `_initialize` once per filter.
#[cfg(all(feature = "standalone", target_arch = "wasm32"))]
proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|context_id| Box::new(root::RateLimitRoot::new(context_id)));
}}
