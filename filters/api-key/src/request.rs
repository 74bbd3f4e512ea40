//! One request: find and hash the key, ask the cache, and either finish at once or
//! pause until the root context wakes it with the store's answer.

use crate::root::{FilterState, FILTER};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use wasmgate_api_key_auth::{Denial, KeyHash, Lookup, Presented, Reply, RequestEdit, Verdict};
use wasmgate_host::HeaderSnapshot;

pub struct ApiKeyRequest {
    context_id: u32,
    state: Rc<FilterState>,
    waited: bool,
}

impl ApiKeyRequest {
    pub fn new(context_id: u32, state: Rc<FilterState>) -> Self {
        Self {
            context_id,
            state,
            waited: false,
        }
    }

    /// Pauses until the root wakes this request, at the latest at the lookup timeout
    /// plus grace; answers 503 at once when this worker holds too many paused already.
    fn wait(&mut self, hash: KeyHash, now: u64, headers: &mut HeaderSnapshot) -> Action {
        let deadline = now.saturating_add(self.state.cache.policy().claim_ms);
        let waiting = self
            .state
            .pending
            .borrow_mut()
            .wait(self.context_id, hash, deadline);
        self.state.adjust_tick();
        if !waiting {
            return self.finish_now(&Verdict::Deny(Denial::Overloaded), headers);
        }
        self.waited = true;
        Action::Pause
    }

    /// Holds body and trailers while the request still waits for its key's answer.
    pub fn hold_while_undecided(&self) -> Action {
        if self.waited && self.state.pending.borrow().is_waiting(self.context_id) {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn finish_now(&self, verdict: &Verdict<'_>, headers: &mut HeaderSnapshot) -> Action {
        match finish(&self.state, verdict, headers) {
            Finish::Continue => Action::Continue,
            Finish::Respond(reply) => {
                send_reply(&reply);
                Action::Pause
            }
        }
    }

    /// The request phase, on the request's headers (read once, shared with the other
    /// stages in the combined module). `Pause` when the request was answered here or
    /// waits for the key store (the root finishes it then).
    pub fn on_request_headers(&mut self, headers: &mut HeaderSnapshot) -> Action {
        let state = Rc::clone(&self.state);
        let config = &state.config;
        let path = headers.text(":path").unwrap_or_default();
        let skipped = config.skips(
            headers.get(":method").unwrap_or_default(),
            headers.get(":authority"),
            &path,
        );
        // Whatever happens next, the upstream never sees an identity header the client
        // wrote: strip them first (on skipped routes unless an earlier filter owns them
        // there, `strip_on_skip: false`). The snapshot is read by now, so only the ones
        // the request has cost a host call.
        if !skipped || config.strip_on_skip {
            apply(config.forward.strip_edits(), headers);
        }
        if skipped {
            state.metrics.skipped.increment();
            // A key sent where none is needed is not passed on either.
            if config.hide_credentials {
                let edits = config.sources.hiding_edits_when_skipped(
                    &config.format,
                    &|name| headers.text(name),
                    &path,
                );
                apply(edits, headers);
            }
            return Action::Continue;
        }
        let hash = match config
            .sources
            .find(&config.format, &|name| headers.text(name), &path)
        {
            Presented::Missing => {
                return self.finish_now(&Verdict::Deny(Denial::MissingKey), headers)
            }
            Presented::Malformed(why) => {
                log::debug!("{FILTER}: malformed key: {why:?}");
                return self.finish_now(&Verdict::Deny(Denial::MalformedKey), headers);
            }
            Presented::Key(key) => config.hasher.hash(key.expose()),
        };
        let now = wasmgate_host::now_millis();
        if state.pending.borrow().fetching(&hash) {
            state.metrics.cache_coalesced.increment();
            return self.wait(hash, now, headers);
        }
        let lookup = state.cache.begin(&hash, now);
        state.count_filled_slots();
        match &lookup {
            Lookup::Fresh(_) => state.metrics.cache_hit.increment(),
            Lookup::Stale(_) => state.metrics.cache_stale.increment(),
            Lookup::Unavailable | Lookup::Overloaded => {}
            Lookup::Wait => {
                state.metrics.cache_coalesced.increment();
                return self.wait(hash, now, headers);
            }
            Lookup::Fetch(permit) => {
                state.metrics.cache_miss.increment();
                state.queue(hash, *permit);
                return self.wait(hash, now, headers);
            }
        }
        match state.verdict(&lookup, now) {
            Some(verdict) => self.finish_now(&verdict, headers),
            None => Action::Continue,
        }
    }
}

impl Context for ApiKeyRequest {}

impl HttpContext for ApiKeyRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.on_request_headers(&mut HeaderSnapshot::request())
    }

    // Envoy's proxy-wasm host turns a paused request into "stop everything", so body
    // and trailers do not reach the filter while it waits; a host that only stopped
    // the headers would, and continuing here would pass the request upstream unchecked.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_undecided()
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.hold_while_undecided()
    }
}

impl Drop for ApiKeyRequest {
    fn drop(&mut self) {
        // The client may leave while waiting: nobody must try to wake this context.
        if self.waited {
            if let Ok(mut pending) = self.state.pending.try_borrow_mut() {
                pending.forget(self.context_id);
            }
        }
    }
}

/// How a request ends.
pub enum Finish {
    /// Edits applied; let it through.
    Continue,
    Respond(Reply),
}

/// Applies a verdict to the request that is the effective context: identity headers
/// and hidden credentials for a pass, the reply for a refusal. Counts it. `headers` is
/// the request's snapshot (a fresh one when the root finishes a request that waited).
pub fn finish(state: &FilterState, verdict: &Verdict<'_>, headers: &mut HeaderSnapshot) -> Finish {
    let config = &state.config;
    match verdict {
        Verdict::Allow(record) => {
            state.metrics.allowed.increment();
            apply(config.forward.identity_edits(record), headers);
            hide_credentials(state, headers);
            Finish::Continue
        }
        Verdict::FailOpen => {
            state.metrics.failed_open.increment();
            hide_credentials(state, headers);
            Finish::Continue
        }
        Verdict::Deny(denial) => {
            state.metrics.denied(*denial);
            Finish::Respond(config.reply(*denial))
        }
    }
}

/// Answers the request that is the effective context with a local reply.
pub fn send_reply(reply: &Reply) {
    let headers = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    if let Err(status) =
        hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
    {
        log::warn!(
            "{FILTER}: cannot send the {} reply: {status:?}",
            reply.status
        );
    }
}

fn hide_credentials(state: &FilterState, headers: &mut HeaderSnapshot) {
    let config = &state.config;
    if config.hide_credentials {
        let path = headers.text(":path").unwrap_or_default();
        let edits = config
            .sources
            .hiding_edits(&config.format, &|name| headers.text(name), &path);
        apply(edits, headers);
    }
}

/// Applies edits through the snapshot: removing a header the request does not have
/// costs no host call.
fn apply<'a>(edits: impl IntoIterator<Item = RequestEdit<'a>>, headers: &mut HeaderSnapshot) {
    for edit in edits {
        let result = match &edit {
            RequestEdit::Remove(name) => headers.remove(name),
            RequestEdit::Set(name, value) => headers.set(name, value),
        };
        if let Err(status) = result {
            log::warn!("{FILTER}: could not apply {edit:?}: {status:?}");
        }
    }
}
