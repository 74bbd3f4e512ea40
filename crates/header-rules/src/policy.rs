//! The header filter's configuration, validated once, and the per-request plans it makes.

use crate::ops::{EditList, HeaderEdit, HeaderOps, ResolvedOps};
use crate::template::{RequestView, Template};
use serde::Deserialize;
use std::collections::BTreeMap;
use wasmgate_config::{
    check_header_value, ConfigError, HeaderName, RouteMatch, RouteRequest, RouteTable,
};

/// Longest header value a rule may write (after templating, values are not capped).
const MAX_VALUE_LEN: usize = 8 * 1024;

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    strip_inbound: Vec<HeaderName>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
    default: Option<ActionsSpec>,
    #[serde(default)]
    response_cleanup: Vec<HeaderName>,
    #[serde(default)]
    echo_request_id: bool,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(rename = "match")]
    route: RouteMatch,
    request: Option<OpsSpec>,
    response: Option<OpsSpec>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct ActionsSpec {
    request: Option<OpsSpec>,
    response: Option<OpsSpec>,
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct OpsSpec {
    #[serde(default)]
    set: BTreeMap<HeaderName, String>,
    #[serde(default)]
    append: BTreeMap<HeaderName, String>,
    #[serde(default)]
    if_absent: BTreeMap<HeaderName, String>,
    #[serde(default)]
    remove: Vec<HeaderName>,
    #[serde(default)]
    rename: BTreeMap<HeaderName, HeaderName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Request,
    Response,
}

/// What one rule (or the default) does to the request and to its response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// The header filter's validated configuration.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    strip_inbound: Vec<HeaderName>,
    rules: RouteTable<Actions>,
    response_cleanup: Vec<HeaderName>,
    echo_request_id: bool,
    /// Whether responses need any work (worked out once: saves the response phase).
    touches_responses: bool,
}

/// What to do to a request, and what to remember for its response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestPlan {
    pub edits: EditList,
    pub response: ResponsePlan,
    /// How many `strip_inbound` headers the client sent (each is removed).
    pub stripped: usize,
}

/// Response work, with its templates already filled in from the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponsePlan {
    ops: ResolvedOps,
    request_id: Option<String>,
}

impl HeaderPolicy {
    /// Parses and validates the plugin configuration (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let spec: PolicySpec = wasmgate_config::from_json(bytes)?;
        spec.compile()
    }

    /// The JSON Schema of the configuration [`Self::from_json`] reads (feature `schema`):
    /// the shape only, its nested types' schemas go into `generator`'s definitions.
    #[cfg(feature = "schema")]
    pub fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <PolicySpec as schemars::JsonSchema>::json_schema(generator)
    }

    pub fn strip_inbound(&self) -> &[HeaderName] {
        &self.strip_inbound
    }

    /// The actions of the first rule that matches, or of `default`.
    pub fn select(&self, request: &RouteRequest<'_>) -> Option<&Actions> {
        self.rules.select(request)
    }

    /// Whether responses need to be looked at at all (saves the response phase's host
    /// calls when not).
    pub fn touches_responses(&self) -> bool {
        self.touches_responses
    }

    /// Decides what happens to a request. Templates see the request as it arrived,
    /// minus the `strip_inbound` headers, so a client cannot feed a spoofed identity
    /// header into a template. Only the `strip_inbound` headers the request has are
    /// removed: removing an absent one would be a host call for nothing.
    pub fn plan_request(&self, view: &dyn RequestView) -> RequestPlan {
        let stripped = Stripped {
            view,
            names: &self.strip_inbound,
        };
        let mut edits = EditList::default();
        let mut spoofed = 0;
        for name in &self.strip_inbound {
            if view.has_header(name.as_str()) {
                edits.push(HeaderEdit::Remove(name.clone()));
                spoofed += 1;
            }
        }
        let method = view.header(":method").unwrap_or_default();
        let path = view.header(":path").unwrap_or_default();
        let authority = self
            .rules
            .names_hosts()
            .then(|| view.header(":authority"))
            .flatten();
        let route = RouteRequest::new(&method, &path).with_authority(authority.as_deref());
        let mut response = ResponsePlan::default();
        if let Some(actions) = self.select(&route) {
            let current = |name: &str| stripped.header(name);
            actions
                .request
                .resolve(&stripped)
                .write_edits(&mut edits, &current);
            response.ops = actions.response.resolve(&stripped);
        }
        if self.echo_request_id {
            response.request_id = view
                .request_id()
                .filter(|id| check_header_value(id).is_ok());
        }
        RequestPlan {
            edits,
            response,
            stripped: spoofed,
        }
    }

    /// The edits for the response: `response_cleanup` first (so a rule can put back a
    /// header it removes), then the rule's response operations, then the request id.
    pub fn plan_response(
        &self,
        plan: &ResponsePlan,
        current: &dyn Fn(&str) -> Option<String>,
    ) -> EditList {
        let mut edits = EditList::default();
        for name in &self.response_cleanup {
            edits.push(HeaderEdit::Remove(name.clone()));
        }
        plan.ops.write_edits(&mut edits, current);
        if let (Some(id), Ok(name)) = (&plan.request_id, HeaderName::new("x-request-id")) {
            edits.push(HeaderEdit::Set(name, id.clone()));
        }
        edits
    }
}

/// A request view that hides the headers `strip_inbound` removes.
struct Stripped<'a> {
    view: &'a dyn RequestView,
    names: &'a [HeaderName],
}

impl RequestView for Stripped<'_> {
    fn header(&self, name: &str) -> Option<String> {
        if self.names.iter().any(|n| n.as_str() == name) {
            None
        } else {
            self.view.header(name)
        }
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.view.property(path)
    }

    // The request id is Envoy's, whatever `strip_inbound` says.
    fn request_id(&self) -> Option<String> {
        self.view.request_id()
    }
}

impl PolicySpec {
    fn compile(self) -> Result<HeaderPolicy, ConfigError> {
        for (i, name) in self.strip_inbound.iter().enumerate() {
            check_regular(name).map_err(|e| e.within(&format!("strip_inbound[{i}]")))?;
        }
        for (i, name) in self.response_cleanup.iter().enumerate() {
            check_regular(name).map_err(|e| e.within(&format!("response_cleanup[{i}]")))?;
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.into_iter().enumerate() {
            let actions = compile_actions(rule.request, rule.response)
                .map_err(|e| e.within(&format!("rules[{i}]")))?;
            rules.push((rule.route, actions));
        }
        let fallback = self
            .default
            .map(|d| compile_actions(d.request, d.response).map_err(|e| e.within("default")))
            .transpose()?;
        let touches_responses = self.echo_request_id
            || !self.response_cleanup.is_empty()
            || rules.iter().any(|(_, a)| !a.response.is_empty())
            || fallback.as_ref().is_some_and(|a| !a.response.is_empty());
        Ok(HeaderPolicy {
            strip_inbound: self.strip_inbound,
            rules: RouteTable::new(rules, fallback),
            response_cleanup: self.response_cleanup,
            echo_request_id: self.echo_request_id,
            touches_responses,
        })
    }
}

fn compile_actions(
    request: Option<OpsSpec>,
    response: Option<OpsSpec>,
) -> Result<Actions, ConfigError> {
    Ok(Actions {
        request: request
            .unwrap_or_default()
            .compile(Section::Request)
            .map_err(|e| e.within("request"))?,
        response: response
            .unwrap_or_default()
            .compile(Section::Response)
            .map_err(|e| e.within("response"))?,
    })
}

impl OpsSpec {
    fn compile(self, section: Section) -> Result<HeaderOps, ConfigError> {
        let templates = |op: &str, map: BTreeMap<HeaderName, String>| {
            map.into_iter()
                .map(|(name, text)| {
                    let at = |problem: String| ConfigError::new(format!("{op}.{name}"), problem);
                    if op == "set" && section == Section::Request && is_settable_pseudo(&name) {
                        // `:path` and `:authority` may be rewritten on requests.
                    } else {
                        check_regular(&name).map_err(|e| e.within(&format!("{op}.{name}")))?;
                    }
                    check_header_value(&text).map_err(at)?;
                    if text.len() > MAX_VALUE_LEN {
                        return Err(at(format!("longer than {MAX_VALUE_LEN} bytes")));
                    }
                    let template = Template::parse(&text).map_err(at)?;
                    Ok((name, template))
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let set = templates("set", self.set)?;
        let append = templates("append", self.append)?;
        let if_absent = templates("if_absent", self.if_absent)?;
        for (i, name) in self.remove.iter().enumerate() {
            check_regular(name).map_err(|e| e.within(&format!("remove[{i}]")))?;
        }
        for (from, to) in &self.rename {
            check_regular(from).map_err(|e| e.within(&format!("rename.{from}")))?;
            check_regular(to).map_err(|e| e.within(&format!("rename.{from}")))?;
            if from == to {
                return Err(ConfigError::new(
                    format!("rename.{from}"),
                    "renames a header to itself",
                ));
            }
        }
        Ok(HeaderOps {
            remove: self.remove,
            rename: self.rename.into_iter().collect(),
            set,
            append,
            if_absent,
        })
    }
}

fn is_settable_pseudo(name: &HeaderName) -> bool {
    matches!(name.as_str(), ":path" | ":authority")
}

/// Refuses pseudo-headers and `host` (Envoy keeps the host in `:authority`).
fn check_regular(name: &HeaderName) -> Result<(), ConfigError> {
    if name.is_pseudo() {
        return Err(ConfigError::new(
            "",
            format!(
                "pseudo-header {name} is not allowed here; only \"set\" on requests may name :path or :authority"
            ),
        ));
    }
    if name.as_str() == "host" {
        return Err(ConfigError::new(
            "",
            "Envoy keeps the host in the :authority pseudo-header; use \":authority\" with \"set\" on requests",
        ));
    }
    Ok(())
}
