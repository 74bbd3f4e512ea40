//! wasmgate's API-key filter as a proxy-wasm module (`api-key.wasm`).
//!
//! Glue only: the decisions live in `wasmgate-api-key-auth`. `root.rs` loads the
//! configuration, creates the shared cache table, sends key-store lookups and wakes
//! the requests waiting for them; `request.rs` reads, hashes and judges each request's
//! key, or pauses it until the root has the answer.

mod request;
mod root;

proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|context_id| Box::new(root::ApiKeyRoot::new(context_id)));
}}
