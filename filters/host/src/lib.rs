//! The thin layer every wasmgate filter shares over the proxy-wasm host.
//!
//! Logging and panic reporting ([`init`]), loading a plugin configuration with one
//! clear log line on refusal ([`load_config`]), Envoy attributes as text
//! ([`property_text`]), time ([`now_millis`]), metrics ([`Counter`], [`Histogram`])
//! and the [`SharedStore`](wasmgate_shared_store::SharedStore) adapter over shared
//! data ([`HostStore`]), HTTP callouts and waking the requests that waited for them
//! ([`Callout`], [`resume_request`]), the request's headers read in one host call
//! ([`HeaderSnapshot`]), and what lets a filter run as a stage of the combined module
//! ([`Continuation`], [`TickDemand`]), and the context a request gets should a filter
//! have no configuration in place ([`Unconfigured`]). Everything that decides anything lives in the
//! logic crates.

mod callout;
mod header_snapshot;
mod metrics;
mod stage;
mod store;
mod unconfigured;

pub use callout::{respond_to_request, resume_request, Callout, CalloutResponse};
pub use header_snapshot::HeaderSnapshot;
pub use metrics::{Counter, Gauge, Histogram};
pub use stage::{Continuation, TickDemand, TickPeriods};
pub use store::HostStore;
pub use unconfigured::Unconfigured;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType};
use std::time::UNIX_EPOCH;
use wasmgate_config::ConfigError;

/// Installs the logger and a panic hook that names the filter. Call from `main!`.
///
/// The release profile aborts on panic, which traps the VM; the hook makes sure the
/// reason reaches Envoy's log first.
pub fn init(filter: &'static str) {
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(move |info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("{filter}: panic: {info}"));
    }));
}

/// Follows Envoy's log level for the `wasm` component, so `debug` logs cost nothing
/// unless someone asked for them. Call from `on_vm_start` or `on_configure`.
pub fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// Reads and parses the plugin configuration. On refusal, logs one line naming the
/// filter and the offending field and returns `None`; `on_configure` then returns
/// `false`, so Envoy refuses the filter instead of serving a half-configured one.
pub fn load_config<T>(
    filter: &str,
    bytes: Option<Vec<u8>>,
    parse: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Option<T> {
    let bytes = bytes.unwrap_or_default();
    match parse(&bytes) {
        Ok(config) => Some(config),
        Err(err) => {
            let _ = hostcalls::log(
                LogLevel::Error,
                &format!("{filter}: invalid plugin configuration: {err}"),
            );
            None
        }
    }
}

/// An Envoy attribute as UTF-8 text (`["source", "address"]`), if present.
pub fn property_text(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// The first value of a request header; `None` when absent or not UTF-8.
///
/// Reads bytes: the SDK's `get_map_value` unwraps the UTF-8 conversion, so a client
/// sending a header with bytes above 0x7F would trap the VM (seen with random bytes
/// in `Authorization`).
pub fn request_header(name: &str) -> Option<String> {
    header_text(MapType::HttpRequestHeaders, name)
}

/// The first value of a response header, as [`request_header`] reads requests: an
/// upstream sending non-UTF-8 bytes must not trap the VM either.
pub fn response_header(name: &str) -> Option<String> {
    header_text(MapType::HttpResponseHeaders, name)
}

fn header_text(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// The host's wall clock in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}
