//! wasmgate's header filter as a proxy-wasm module (`headers.wasm`).
//!
//! Glue only: the rules live in `wasmgate-header-rules`. `root.rs` loads the
//! configuration once per VM; `request.rs` applies the plan to each request and its
//! response.

mod request;
mod root;

proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|_| Box::new(root::HeadersRoot::default()));
}}
