use crate::root::{Metrics, Shared};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use wasmgate_host::HeaderSnapshot;
use wasmgate_jwt_auth::authenticator::{HeaderEdit, RequestInfo};
use wasmgate_jwt_auth::extract::RequestHeaders;
use wasmgate_jwt_auth::{AuthError, Outcome};

pub struct JwtRequest {
    context_id: u32,
    shared: Rc<Shared>,
    metrics: Rc<Metrics>,
}

impl JwtRequest {
    pub fn new(context_id: u32, shared: Rc<Shared>, metrics: Rc<Metrics>) -> Self {
        Self {
            context_id,
            shared,
            metrics,
        }
    }

    /// The request phase, on the request's headers (read once, shared with the other
    /// stages in the combined module). `Pause` when the request was answered here or
    /// waits for keys (the root finishes it then).
    pub fn on_request_headers(&mut self, headers: &mut HeaderSnapshot) -> Action {
        let now = wasmgate_host::now_millis();
        let outcome = {
            let request = RequestInfo {
                method: headers.get(":method").unwrap_or_default(),
                path: headers.get(":path").unwrap_or_default(),
                headers: &SnapshotHeaders(headers),
            };
            self.shared.start(&request, now)
        };
        match outcome {
            Outcome::Wait(attempt) => match self.shared.wait(self.context_id, attempt, now) {
                Ok(()) => {
                    self.metrics.waited.increment();
                    Action::Pause
                }
                // Too many wait already: 503 with Retry-After, at once.
                Err(error) => finish(Outcome::Deny(error), &self.shared, &self.metrics, headers),
            },
            outcome => finish(outcome, &self.shared, &self.metrics, headers),
        }
    }
}

/// A request that waited for keys and went away (client closed) waits no more. O(1).
/// In `Drop` (the SDK drops a context in `proxy_on_delete`) rather than `on_done`: the
/// module does not export `proxy_on_done`, which saves Envoy a VM crossing a request.
impl Drop for JwtRequest {
    fn drop(&mut self) {
        self.shared.forget(self.context_id);
    }
}

impl Context for JwtRequest {}

impl HttpContext for JwtRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_request_headers(&mut HeaderSnapshot::request())
    }
}

/// Applies a final decision to the request of the effective context: forward it
/// with the identity headers (`Continue`), or answer it (`Pause`; the answer is sent).
/// Called by the request itself, or by the root for a request that waited (with an
/// unread snapshot: it only writes).
pub fn finish(
    outcome: Outcome,
    shared: &Shared,
    metrics: &Metrics,
    headers: &mut HeaderSnapshot,
) -> Action {
    match outcome {
        Outcome::Allow(grant) => {
            if grant.identity.is_some() {
                metrics.allowed.increment();
            } else {
                metrics.no_token_needed.increment();
            }
            metrics.cache(grant.cache);
            // Identity headers come from verified claims only, on every forwarded
            // request (public routes included): each output header is replaced by
            // the claim's value, or removed when there is none; then the token header
            // goes. (A refused request is never forwarded, so it needs no stripping.)
            // One host call per header at most, none to remove a header the request
            // does not have. An edit Envoy refuses would forward what the client sent:
            // the request is answered 500 instead.
            for edit in grant.header_edits(&shared.auth.config().output_headers) {
                let (name, done) = match edit {
                    HeaderEdit::Set(name, value) => (name, headers.set(name, value)),
                    HeaderEdit::Remove(name) => (name, headers.remove(name)),
                };
                if let Err(status) = done {
                    log::warn!(
                        "wasmgate-jwt: Envoy refused to edit header {name} ({status:?}): request answered 500"
                    );
                    return finish(
                        Outcome::Deny(AuthError::HeaderEditFailed),
                        shared,
                        metrics,
                        headers,
                    );
                }
            }
            Action::Continue
        }
        Outcome::Deny(error) => {
            metrics.denied(error.reason());
            log::debug!("wasmgate-jwt: refused: {}", error.description());
            let answer = error.answer(&shared.auth.config().realm);
            let headers: Vec<(&str, &str)> = answer
                .headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            if let Err(status) = hostcalls::send_http_response(
                u32::from(answer.status),
                headers,
                Some(answer.body.as_bytes()),
            ) {
                log::warn!("wasmgate-jwt: could not answer a refused request: {status:?}");
            }
            Action::Pause
        }
        // Callers keep waiting requests to themselves; should one get here, refuse
        // it rather than let it through unchecked.
        Outcome::Wait(_) => finish(
            Outcome::Deny(AuthError::KeysUnavailable),
            shared,
            metrics,
            headers,
        ),
    }
}

/// The request's headers as extraction reads them.
struct SnapshotHeaders<'a>(&'a HeaderSnapshot);

impl RequestHeaders for SnapshotHeaders<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.0.text(name)
    }
}
