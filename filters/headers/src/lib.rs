//! wasmgate's header filter as a proxy-wasm module (`headers.wasm`), and as the
//! `headers` stage of the combined module.
//!
//! Glue only: the rules live in `wasmgate-header-rules`. `root.rs` loads the
//! configuration once per VM; `request.rs` applies the plan to each request and its
//! response. The entry point (`main!`) is the `standalone` feature, on by default; the
//! combined module uses the crate as a library without it.

mod request;
mod root;

pub use request::HeadersRequest;
pub use root::{HeadersRoot, FILTER};

// Only in a .wasm: a native build that links several filters (the combined module's
// tests) would otherwise define the entry point `_initialize` once per filter.
#[cfg(all(feature = "standalone", target_arch = "wasm32"))]
proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|_| Box::new(root::HeadersRoot::default()));
}}
