//! wasmgate's API-key filter as a proxy-wasm module (`api-key.wasm`), and as the
//! `api_key` stage of the combined module.
//!
//! Glue only: the decisions live in `wasmgate-api-key-auth`. `root.rs` loads the
//! configuration, creates the shared cache table, sends key-store lookups and wakes
//! the requests waiting for them; `request.rs` reads, hashes and judges each request's
//! key, or pauses it until the root has the answer. The entry point (`main!`) is the
//! `standalone` feature, on by default; the combined module uses the crate as a
//! library without it.

mod request;
mod root;

pub use request::ApiKeyRequest;
pub use root::{ApiKeyRoot, FILTER};

// Only in a .wasm: a native build that links several filters (the combined module's
// tests) would otherwise define the entry point `_initialize` once per filter.
#[cfg(all(feature = "standalone", target_arch = "wasm32"))]
proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|context_id| Box::new(root::ApiKeyRoot::new(context_id)));
}}
