//! wasmgate's combined module (`combined.wasm`): the header, JWT, API-key and
//! rate-limit filters as stages of one proxy-wasm filter.
//!
//! Each filter on a request path costs a V8 crossing per callback, several per request
//! (BENCHMARKS.md); one filter running the configured stages pays them once, reads the
//! request headers once for all stages, and needs one VM per worker instead of one per
//! filter. It adds no logic of its own: the stages are the separate filters' glue
//! (`wasmgate-headers`, `-jwt`, `-api-key`, `-rate-limit`, used as libraries), each
//! configured with exactly the separate filter's configuration
//! (`wasmgate-combined-config`). `root.rs` configures the stages and shares the root
//! context's tick and callouts between them; `request.rs` runs them in order on each
//! request, and goes on where a stage paused when that stage lets the request through.

mod request;
mod root;

proxy_wasm::main! {{
    wasmgate_host::init(root::FILTER);
    proxy_wasm::set_root_context(|context_id| Box::new(root::CombinedRoot::new(context_id)));
}}
