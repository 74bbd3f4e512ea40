//! What the two gRPC-call instruments share (`bench/grpc-call`, and `bench/grpc-steps`,
//! which includes this file): the call read from the configuration, and a root context
//! that parses it once and gives every request a handle on it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;
use wasmgate_ratelimit_protocol::rls::{Entry, RateLimitDescriptor, RateLimitRequest};

/// The `ShouldRateLimit` request of a configuration `{"cluster", "domain", "entries":
/// [[key, value], ...]}`, and the cluster to send it to.
pub fn configured_call(config: &serde_json::Value) -> Option<(String, RateLimitRequest)> {
    let entries = config["entries"]
        .as_array()?
        .iter()
        .map(|pair| {
            Some(Entry {
                key: pair[0].as_str()?.to_owned(),
                value: pair[1].as_str()?.to_owned(),
            })
        })
        .collect::<Option<Vec<Entry>>>()?;
    let request = RateLimitRequest {
        domain: config["domain"].as_str()?.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries,
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 1,
    };
    Some((config["cluster"].as_str()?.to_owned(), request))
}

/// A root that parses its configuration into `C` once (refusing it when `parse` gives
/// nothing) and makes each request's context from it.
pub struct CallRoot<C> {
    name: &'static str,
    parse: fn(&[u8]) -> Option<C>,
    request: fn(Rc<C>) -> Box<dyn HttpContext>,
    call: Option<Rc<C>>,
}

impl<C> CallRoot<C> {
    pub fn new(
        name: &'static str,
        parse: fn(&[u8]) -> Option<C>,
        request: fn(Rc<C>) -> Box<dyn HttpContext>,
    ) -> Self {
        Self {
            name,
            parse,
            request,
            call: None,
        }
    }
}

impl<C> Context for CallRoot<C> {}

impl<C> RootContext for CallRoot<C> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.call = (self.parse)(&config).map(Rc::new);
        if self.call.is_none() {
            log::warn!("{}: unreadable configuration", self.name);
        }
        self.call.is_some()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some((self.request)(Rc::clone(self.call.as_ref()?)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
