//! Where wasmgate filter configurations are in a file, and what each filter would be
//! handed: the plugin configuration's bytes and the Wasm VM's environment.
//!
//! - An Envoy config (bootstrap, listener, LDS/ECDS response, Istio `EnvoyFilter`; YAML
//!   or JSON, one or more documents): every `envoy.extensions.filters.http.wasm.v3.Wasm`
//!   (also inside a `TypedStruct`) anywhere in it. The filter is the one its
//!   `vm_config.code` file names (`build/wasm/jwt.wasm`), else its `root_id`, else its
//!   plugin `name` (`wasmgate-jwt`, `istio-system.wasmgate-jwt`); `configuration` is a
//!   `google.protobuf.StringValue` (or `BytesValue`) holding the JSON.
//! - An Istio `WasmPlugin` document: its `pluginConfig`, for the filter its `url`
//!   names (`oci://.../rate-limit:0.1.0`), else its `pluginName`, else its name.

use crate::filter::Filter;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

const WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "google.protobuf.StringValue";
const BYTES_VALUE: &str = "google.protobuf.BytesValue";

/// One filter configuration found in a file.
#[derive(Debug)]
pub struct Found {
    /// 1-based; the file's only document is 1.
    pub document: usize,
    /// What the file calls it: the HTTP filter's name, the WasmPlugin's
    /// `namespace/name`, or empty for a plain configuration.
    pub name: String,
    /// A JSON pointer to the filter's plugin config in the document.
    pub pointer: String,
    /// `Err`: a Wasm filter that is not one of wasmgate's (why not).
    pub filter: Result<Filter, String>,
    /// What the filter's `on_configure` reads, or why it cannot read JSON.
    pub config: Result<Vec<u8>, String>,
    pub env: VmEnv,
    /// What a parser's `at line L column C` counts in.
    pub lines: Lines,
}

/// What the lines of a parser's refusal are lines of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// The file itself (a plain configuration).
    File,
    /// The JSON text in the config's `configuration.value`.
    ConfigurationText,
    /// JSON written from YAML here (a `pluginConfig`): no use to the reader.
    Rewritten,
}

/// The environment a Wasm VM is given: values written in the config, and names the
/// VM takes from its host's environment.
#[derive(Debug, Default)]
pub struct VmEnv {
    pub values: BTreeMap<String, String>,
    pub from_host: BTreeSet<String>,
    /// A plain configuration: where the VM's environment comes from is unknown, so
    /// every name is looked up in this process's environment.
    pub all_from_host: bool,
}

impl VmEnv {
    pub fn host() -> Self {
        VmEnv {
            all_from_host: true,
            ..VmEnv::default()
        }
    }
}

/// A plain configuration of one filter: the file's bytes as they are.
pub fn plain(filter: Filter, bytes: Vec<u8>) -> Found {
    Found {
        document: 1,
        name: String::new(),
        pointer: String::new(),
        filter: Ok(filter),
        config: Ok(bytes),
        env: VmEnv::host(),
        lines: Lines::File,
    }
}

/// Every filter configuration in a YAML or JSON text of one or more documents.
pub fn in_text(text: &str) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut yaml = serde_yaml_ng::Value::deserialize(document)
            .map_err(|err| format!("not YAML or JSON: {err}"))?;
        yaml.apply_merge()
            .map_err(|err| format!("document {}: {err}", i + 1))?;
        let value: Value =
            serde_json::to_value(&yaml).map_err(|err| format!("document {}: {err}", i + 1))?;
        in_document(i + 1, &value, &mut found);
    }
    Ok(found)
}

fn in_document(document: usize, value: &Value, found: &mut Vec<Found>) {
    walk(document, value, "", Context::default(), found);
}

/// Where the walk is: the enclosing listener's name and the innermost name.
#[derive(Clone, Copy, Default)]
struct Context<'a> {
    listener: Option<&'a str>,
    name: &'a str,
}

impl Context<'_> {
    /// How a filter found here is called: `listener main: wasmgate.jwt` (the same
    /// filters often serve two listeners, through a YAML anchor: each is checked).
    fn filter_name(&self) -> String {
        match self.listener {
            Some(listener) => format!("listener {listener}: {}", self.name),
            None => self.name.to_owned(),
        }
    }
}

fn walk(document: usize, value: &Value, pointer: &str, context: Context, found: &mut Vec<Found>) {
    match value {
        Value::Object(object) => {
            // A WasmPlugin document, or one in a `kind: List` (kubectl get -o yaml).
            if object.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
                found.push(wasm_plugin(document, value, pointer));
                return;
            }
            if let Some((wasm, at)) = wasm_message(object) {
                let config = wasm.get("config").cloned().unwrap_or(Value::Null);
                let pointer = format!("{pointer}{at}/config");
                found.push(envoy_plugin(document, &config, &pointer, context));
                return;
            }
            let mut context = context;
            if let Some(name) = object.get("name").and_then(Value::as_str) {
                context.name = name;
                if is_listener(object) {
                    context.listener = Some(name);
                }
            }
            for (key, child) in object {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                walk(
                    document,
                    child,
                    &format!("{pointer}/{escaped}"),
                    context,
                    found,
                );
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(document, child, &format!("{pointer}/{i}"), context, found);
            }
        }
        _ => {}
    }
}

/// A listener (in a bootstrap, an LDS response, or a file of its own).
fn is_listener(object: &Map<String, Value>) -> bool {
    let typed = object
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with("envoy.config.listener.v3.Listener"));
    typed || object.contains_key("filter_chains") || object.contains_key("api_listener")
}

/// The `Wasm` message an object is, directly (`"@type": ...wasm.v3.Wasm`) or as a
/// `TypedStruct` (`type_url` + `value`, as Istio `EnvoyFilter` patches write it), and
/// where it is in the object (`""` or `"/value"`).
fn wasm_message(object: &Map<String, Value>) -> Option<(&Map<String, Value>, &'static str)> {
    let type_url = object.get("@type").and_then(Value::as_str)?;
    if type_url.ends_with(WASM_TYPE) {
        return Some((object, ""));
    }
    let inner = object.get("type_url").and_then(Value::as_str)?;
    if !(type_url.ends_with("TypedStruct") && inner.ends_with(WASM_TYPE)) {
        return None;
    }
    Some((object.get("value")?.as_object()?, "/value"))
}

/// An Envoy `PluginConfig` (the `config` of a `Wasm` filter).
fn envoy_plugin(document: usize, config: &Value, pointer: &str, context: Context) -> Found {
    let text = |path: &[&str]| -> Option<String> {
        let mut value = config;
        for key in path {
            value = value.get(key)?;
        }
        value.as_str().map(str::to_owned)
    };
    let candidates = [
        (
            "vm_config.code.local.filename",
            text(&["vm_config", "code", "local", "filename"]),
        ),
        (
            "vm_config.code.remote.http_uri.uri",
            text(&["vm_config", "code", "remote", "http_uri", "uri"]),
        ),
        ("root_id", text(&["root_id"])),
        ("name", text(&["name"])),
    ];
    let filter = identify(&candidates);
    let env_vars = config.pointer("/vm_config/environment_variables");
    let mut env = VmEnv::default();
    if let Some(Value::Object(values)) = env_vars.and_then(|e| e.get("key_values")) {
        for (key, value) in values {
            env.values
                .insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
        }
    }
    if let Some(Value::Array(keys)) = env_vars.and_then(|e| e.get("host_env_keys")) {
        env.from_host
            .extend(keys.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    let name = if context.name.is_empty() {
        text(&["name"]).unwrap_or_default()
    } else {
        context.filter_name()
    };
    Found {
        document,
        name,
        pointer: pointer.to_owned(),
        filter,
        config: envoy_configuration(config.get("configuration")),
        env,
        lines: Lines::ConfigurationText,
    }
}

/// The bytes Envoy hands the filter for `configuration` (a `google.protobuf.Any`).
fn envoy_configuration(any: Option<&Value>) -> Result<Vec<u8>, String> {
    let Some(any) = any else {
        return Ok(Vec::new());
    };
    let type_url = any.get("@type").and_then(Value::as_str).unwrap_or_default();
    let value = any.get("value");
    if type_url.ends_with(STRING_VALUE) {
        match value {
            None => Ok(Vec::new()),
            Some(Value::String(text)) => Ok(text.clone().into_bytes()),
            Some(_) => Err("configuration.value: a google.protobuf.StringValue holds a string: write the JSON as text".to_owned()),
        }
    } else if type_url.ends_with(BYTES_VALUE) {
        let text = value.and_then(Value::as_str).unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|err| {
                format!("configuration.value: a google.protobuf.BytesValue is base64: {err}")
            })
    } else {
        Err(format!(
            "configuration: {type_url:?}: wasmgate filters read their configuration as JSON text; give it as a type.googleapis.com/google.protobuf.StringValue"
        ))
    }
}

/// An Istio `WasmPlugin`: what istiod hands the filter is its `pluginConfig` as JSON.
fn wasm_plugin(document: usize, manifest: &Value, pointer: &str) -> Found {
    let spec = manifest.get("spec").unwrap_or(&Value::Null);
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let metadata_name = text(manifest.pointer("/metadata/name"));
    let url = text(spec.get("url")).map(|url| {
        let last = url.rsplit('/').next().unwrap_or(&url).to_owned();
        last.split(['@', ':']).next().unwrap_or_default().to_owned()
    });
    let candidates = [
        ("spec.url", url),
        ("spec.pluginName", text(spec.get("pluginName"))),
        ("metadata.name", metadata_name.clone()),
    ];
    let mut env = VmEnv::default();
    for var in spec
        .pointer("/vmConfig/env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = text(var.get("name")) else {
            continue;
        };
        if var.get("valueFrom").and_then(Value::as_str) == Some("HOST") {
            env.from_host.insert(name);
        } else {
            env.values
                .insert(name, text(var.get("value")).unwrap_or_default());
        }
    }
    let name = match (text(manifest.pointer("/metadata/namespace")), metadata_name) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        (None, Some(name)) => name,
        _ => "WasmPlugin".to_owned(),
    };
    let config = match spec.get("pluginConfig") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(value) => serde_json::to_vec(value).map_err(|err| format!("pluginConfig: {err}")),
    };
    Found {
        document,
        name,
        pointer: format!("{pointer}/spec/pluginConfig"),
        filter: identify(&candidates),
        config,
        env,
        lines: Lines::Rewritten,
    }
}

/// The first candidate that names a wasmgate filter.
fn identify(candidates: &[(&str, Option<String>)]) -> Result<Filter, String> {
    if let Some(filter) = candidates
        .iter()
        .find_map(|(_, value)| value.as_deref().and_then(Filter::from_name))
    {
        return Ok(filter);
    }
    let seen: Vec<String> = candidates
        .iter()
        .filter_map(|(field, value)| value.as_ref().map(|v| format!("{field} {v:?}")))
        .collect();
    Err(if seen.is_empty() {
        "not a wasmgate filter: nothing names its module".to_owned()
    } else {
        format!("not a wasmgate filter ({})", seen.join(", "))
    })
}
