//! HTTP callouts through an Envoy cluster, and waking requests that waited for one.
//!
//! A callout answers to the context that dispatched it. Dispatch from the root
//! context when several requests wait on one answer: the root outlives them, and it
//! can wake each waiting request of its VM with [`resume_request`].

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};
use std::time::Duration;

/// A GET (or other) request to `cluster`.
#[derive(Debug, Clone)]
pub struct Callout<'a> {
    pub cluster: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub timeout: Duration,
}

impl Callout<'_> {
    /// Sends the callout; the token identifies it in `on_http_call_response`.
    /// Fails when the cluster does not exist or the headers are malformed.
    pub fn dispatch(&self) -> Result<u32, Status> {
        let mut headers = vec![
            (":method", self.method),
            (":path", self.path),
            (":authority", self.authority),
        ];
        headers.extend(self.headers.iter().copied());
        hostcalls::dispatch_http_call(self.cluster, headers, None, vec![], self.timeout)
    }
}

/// What came back, read inside `on_http_call_response`.
#[derive(Debug, Clone)]
pub struct CalloutResponse {
    /// The `:status` of the answer. Envoy 1.40 answers failures itself: a callout
    /// timeout comes back as a local `504`, a refused connection or no healthy
    /// upstream as `503`; `None` only when no headers came back at all.
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was larger than the limit given to [`CalloutResponse::read`].
    pub truncated: bool,
}

impl CalloutResponse {
    /// Reads the response of the callout being delivered, keeping at most `max_body`
    /// bytes of its body (`body_size` is the argument of `on_http_call_response`).
    pub fn read(body_size: usize, max_body: usize) -> Self {
        let headers = hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let status = headers
            .iter()
            .find(|(name, _)| name == ":status")
            .and_then(|(_, value)| value.parse().ok());
        let wanted = body_size.min(max_body);
        let body = if wanted == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, wanted)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        Self {
            status,
            headers,
            body,
            truncated: body_size > max_body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Resumes a paused request of this VM from another context (typically the root,
/// after the callout the request waited for has answered).
pub fn resume_request(context_id: u32) -> Result<(), Status> {
    hostcalls::set_effective_context(context_id)?;
    hostcalls::resume_http_request()
}

/// Answers a paused request of this VM directly from another context.
pub fn respond_to_request(
    context_id: u32,
    status: u32,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
) -> Result<(), Status> {
    hostcalls::set_effective_context(context_id)?;
    hostcalls::send_http_response(status, headers, body)
}
