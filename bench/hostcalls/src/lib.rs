//! A benchmark instrument: what one proxy-wasm host call costs in Envoy's V8.
//!
//! On every request it repeats one host call `REPEAT` times (the operation is the
//! plugin configuration, a plain word such as `get_absent`), so that the call's cost
//! stands far above the noise of a loaded machine: `make bench`'s `hostcall-<op>`
//! scenarios (run with `--only`) divide the added Envoy CPU per request by `REPEAT`.
//! `none` repeats nothing: the instrument's own cost. It decides how wasmgate's
//! filters read and write headers (one call for every header, or single gets), so it
//! measures the calls they make. A count after the word (`get_all 1`) repeats the call
//! that many times instead: once, a call costs what it costs in a request, its code
//! path cold (the `hostcall1-<op>` scenarios), where a loop measures it warm. Built by
//! `make bench` into `build/bench/`, never shipped.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

/// Calls per request: enough that 0.1 µs per call shows as 10 µs per request.
pub const REPEAT: usize = 100;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(CostRoot::default()));
}}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    None,
    /// `get_map_value` of a header the request does not have.
    GetAbsent,
    /// `get_map_value` of a header it has (`user-agent`): the value is copied in.
    GetPresent,
    /// `get_map` of every request header at once.
    GetAll,
    /// `remove_map_value` of a header the request does not have.
    RemoveAbsent,
    /// `set_map_value` of one header.
    Set,
    /// `set_map` of every header at once (the set read once up front).
    SetAll,
    /// `get_property(source.address)`.
    Property,
    /// `increment_metric` of a counter.
    Counter,
    /// `get_shared_data` of a 64-byte value.
    SharedGet,
    /// `get_shared_data` of a 64-byte value and a compare-and-swap write of it back, as
    /// a token bucket is spent.
    SharedCas,
    /// `get_current_time`.
    Time,
    /// No host call: SHA-256 (ring) of a 700-byte token, as a token cache key.
    Sha256Token,
    /// No host call: SipHash-1-3 (std, keyed) of the same 700 bytes.
    SipHashToken,
    /// No host call: one small heap allocation and its release (a 24-byte String).
    Alloc,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text.trim() {
            "none" => Op::None,
            "get_absent" => Op::GetAbsent,
            "get_present" => Op::GetPresent,
            "get_all" => Op::GetAll,
            "remove_absent" => Op::RemoveAbsent,
            "set" => Op::Set,
            "set_all" => Op::SetAll,
            "property" => Op::Property,
            "counter" => Op::Counter,
            "shared_get" => Op::SharedGet,
            "shared_cas" => Op::SharedCas,
            "time" => Op::Time,
            "sha256_token" => Op::Sha256Token,
            "siphash_token" => Op::SipHashToken,
            "alloc" => Op::Alloc,
            _ => return None,
        })
    }
}

const SHARED_KEY: &str = "wasmgate.bench.hostcalls";

#[derive(Default)]
struct CostRoot {
    op: Option<Op>,
    repeat: usize,
    counter: u32,
}

/// `op` or `op count`: the operation, and how many times a request repeats it.
fn parse_config(text: &str) -> Option<(Op, usize)> {
    let mut words = text.split_whitespace();
    let op = Op::parse(words.next()?)?;
    let repeat = match words.next() {
        Some(count) => count.parse().ok()?,
        None => REPEAT,
    };
    words.next().is_none().then_some((op, repeat))
}

impl Context for CostRoot {}

impl RootContext for CostRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let parsed = parse_config(&String::from_utf8_lossy(&config));
        self.op = parsed.map(|(op, _)| op);
        self.repeat = parsed.map_or(REPEAT, |(_, repeat)| repeat);
        if self.op == Some(Op::Counter) {
            self.counter = hostcalls::define_metric(MetricType::Counter, "wasmgate.bench.calls")
                .unwrap_or_default();
        }
        if matches!(self.op, Some(Op::SharedGet | Op::SharedCas)) {
            let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&[7u8; 64]), None);
        }
        self.op.is_some()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CostRequest {
            op: self.op?,
            repeat: self.repeat,
            counter: Rc::new(self.counter),
            hasher: RandomState::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct CostRequest {
    op: Op,
    repeat: usize,
    counter: Rc<u32>,
    hasher: RandomState,
}

/// The size of a typical RS256 JWT.
static TOKEN: [u8; 700] = [b'e'; 700];

impl Context for CostRequest {}

impl HttpContext for CostRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let map = MapType::HttpRequestHeaders;
        let all = if self.op == Op::SetAll {
            hostcalls::get_map_bytes(map).unwrap_or_default()
        } else {
            Vec::new()
        };
        for _ in 0..self.repeat {
            let _ = match self.op {
                Op::None => Ok(()),
                Op::GetAbsent => hostcalls::get_map_value_bytes(map, "x-absent").map(drop),
                Op::GetPresent => hostcalls::get_map_value_bytes(map, "user-agent").map(drop),
                Op::GetAll => hostcalls::get_map_bytes(map).map(drop),
                Op::RemoveAbsent => hostcalls::remove_map_value(map, "x-absent"),
                Op::Set => hostcalls::set_map_value(map, "x-bench-set", Some("value")),
                Op::SetAll => hostcalls::set_map_bytes(
                    map,
                    all.iter()
                        .map(|(k, v)| (k.as_str(), v.as_slice()))
                        .collect(),
                ),
                Op::Property => hostcalls::get_property(vec!["source", "address"]).map(drop),
                Op::Counter => hostcalls::increment_metric(*self.counter, 1),
                Op::SharedGet => hostcalls::get_shared_data(SHARED_KEY).map(drop),
                Op::SharedCas => match hostcalls::get_shared_data(SHARED_KEY) {
                    Ok((Some(value), cas)) => {
                        hostcalls::set_shared_data(SHARED_KEY, Some(&value), cas)
                    }
                    Ok(_) => Ok(()),
                    Err(status) => Err(status),
                },
                Op::Time => hostcalls::get_current_time().map(drop),
                Op::Sha256Token => {
                    std::hint::black_box(ring::digest::digest(
                        &ring::digest::SHA256,
                        std::hint::black_box(&TOKEN),
                    ));
                    Ok(())
                }
                Op::SipHashToken => {
                    std::hint::black_box(self.hasher.hash_one(std::hint::black_box(&TOKEN[..])));
                    Ok(())
                }
                Op::Alloc => {
                    std::hint::black_box(String::from(std::hint::black_box("x-api-key-id: 1234")));
                    Ok(())
                }
            };
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_alone_repeats_the_call_the_default_number_of_times() {
        assert_eq!(parse_config("get_all"), Some((Op::GetAll, REPEAT)));
    }

    #[test]
    fn a_count_after_the_word_sets_the_repeats() {
        assert_eq!(parse_config("shared_cas 1"), Some((Op::SharedCas, 1)));
    }

    #[test]
    fn an_unknown_word_a_bad_count_or_extra_words_configure_nothing() {
        for text in ["nope", "get_all x", "get_all -1", "get_all 1 2", ""] {
            assert!(parse_config(text).is_none(), "{text:?}");
        }
    }
}
