//! `wasmgate-validate` as a user runs it: on the configs we ship (all valid), on broken
//! copies (exit 1, the error names the file, the filter and the field), on usage and
//! IO errors (exit 2); and the committed JSON Schemas are the ones the types give.
//! The schemas' agreement with the parsers is tests/e2e/test_validate.py.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repository() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn validate(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_wasmgate-validate"))
        .args(args)
        .current_dir(repository())
        .env_remove("WASMGATE_API_KEY_PEPPER"))
}

/// Helpers return what a test would otherwise unwrap: tests may panic, helpers may not
/// (workspace lints), so a failure to run is an empty, failed `Output`.
fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|err| Output {
        status: std::process::ExitStatus::default(),
        stdout: Vec::new(),
        stderr: err.to_string().into_bytes(),
    })
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn yaml_files(dir: &Path, into: &mut Vec<String>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            yaml_files(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            let relative = path.strip_prefix(repository()).unwrap_or(&path);
            into.push(relative.display().to_string());
        }
    }
    Ok(())
}

/// Every shipped configuration file, but the kustomize overlays' patches (istio/overlays/:
/// fragments of a WasmPlugin, not one; tests/e2e/test_validate.py checks what each
/// kustomization renders).
fn shipped() -> std::io::Result<Vec<String>> {
    let mut files = Vec::new();
    yaml_files(&repository().join("envoy-config"), &mut files)?;
    yaml_files(&repository().join("istio"), &mut files)?;
    files.retain(|file| !Path::new(file).starts_with("istio/overlays"));
    files.sort();
    Ok(files)
}

/// A temporary directory that goes away with the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> std::io::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("wasmgate-validate-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    fn write(&self, name: &str, text: &str) -> std::io::Result<String> {
        let path = self.0.join(name);
        fs::write(&path, text)?;
        Ok(path.display().to_string())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `text` with `from` replaced by `to`; the test fails if `from` is not there (the
/// shipped file changed: pick another field to break).
fn broken(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is no longer in the file");
    text.replacen(from, to, 1)
}

#[test]
fn every_shipped_configuration_is_valid() {
    let files = shipped().unwrap();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let output = validate(&args);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    for line in text.lines() {
        assert!(
            line.contains("): ok") || line.ends_with(": no wasmgate filter found"),
            "{line}"
        );
    }
    for wanted in [
        "envoy-config/gateway.yaml: listener main: wasmgate.jwt (jwt): ok",
        "envoy-config/gateway.yaml: listener tls: wasmgate.rate-limit (rate-limit): ok",
        "envoy-config/mesh/order-service.yaml: listener inbound: wasmgate.headers (headers): ok",
        "istio/wasmplugins/jwt.yaml: istio-system/wasmgate-jwt (jwt): ok",
        "istio/wasmplugins/rate-limit.yaml: istio-system/wasmgate-rate-limit (rate-limit): ok",
        "istio/wasmplugins/headers.yaml: istio-system/wasmgate-headers (headers): ok",
    ] {
        assert!(text.lines().any(|l| l == wanted), "{wanted}\nin:\n{text}");
    }
    // The API-key plugin takes its pepper from the proxy's environment: not set here.
    assert!(text.lines().any(|l| l.starts_with(
        "istio/wasmplugins/api-key.yaml: istio-system/wasmgate-api-key (api-key): ok (WASMGATE_API_KEY_PEPPER not set here"
    )), "{text}");
}

#[test]
fn a_broken_envoy_config_names_the_listener_filter_and_field() {
    let scratch = Scratch::new("envoy").unwrap();
    let gateway = fs::read_to_string(repository().join("envoy-config/gateway.yaml")).unwrap();
    let gateway = broken(&gateway, r#""per": "1m""#, r#""per": "1 minute""#);
    let gateway = broken(
        &gateway,
        r#""strip_on_skip": false"#,
        r#""strip_on_skip": "no""#,
    );
    let file = scratch.write("gateway.yaml", &gateway).unwrap();
    let output = validate(&[&file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    for listener in ["main", "tls"] {
        let rate_limit = format!(
            "{file}: listener {listener}: wasmgate.rate-limit (rate-limit): error: rules[0].limits[0].per: "
        );
        let api_key = format!(
            "{file}: listener {listener}: wasmgate.api-key (api-key): error: strip_on_skip: "
        );
        let headers = format!("{file}: listener {listener}: wasmgate.headers (headers): ok");
        for wanted in [rate_limit, api_key] {
            assert!(
                text.lines().any(|l| l.starts_with(&wanted)),
                "{wanted}\nin:\n{text}"
            );
        }
        assert!(text.lines().any(|l| l == headers), "{text}");
    }
    // serde's line and column count in the configuration's JSON text, and say so.
    assert!(text.contains("(configuration.value at line "), "{text}");
}

#[test]
fn a_broken_wasmplugin_names_the_document_plugin_and_field() {
    let scratch = Scratch::new("istio").unwrap();
    let jwt = fs::read_to_string(repository().join("istio/wasmplugins/jwt.yaml")).unwrap();
    let headers = fs::read_to_string(repository().join("istio/wasmplugins/headers.yaml")).unwrap();
    let jwt = broken(
        &jwt,
        "  pluginConfig:\n",
        "  pluginConfig:\n    realms: wasmgate\n",
    );
    let file = scratch
        .write("plugins.yaml", &format!("{headers}\n---\n{jwt}"))
        .unwrap();
    let output = validate(&[&file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0],
        format!("{file}: document 1: istio-system/wasmgate-headers (headers): ok")
    );
    assert!(
        lines[1].starts_with(&format!(
            "{file}: document 2: istio-system/wasmgate-jwt (jwt): error: realms: unknown field `realms`"
        )),
        "{text}"
    );
    // The JSON here is written from YAML: its line and column would mean nothing.
    assert!(!lines[1].contains(" at line "), "{text}");
}

#[test]
fn a_plain_configuration_is_checked_as_the_filter_given() {
    let scratch = Scratch::new("plain").unwrap();
    let good = scratch
        .write("good.json", r#"{"strip_inbound": ["x-user-id"]}"#)
        .unwrap();
    let bad = scratch
        .write(
            "bad.json",
            r#"{"strip_inbound": ["x-user-id"], "rules": [{"match": {}}]}"#,
        )
        .unwrap();
    let output = validate(&["--filter", "headers", &good, &bad]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], format!("{good}: (headers): ok"));
    // The parser's own words, and serde's place in the file.
    let refusal = format!("{bad}: (headers): error: rules[0].match: ");
    assert!(lines[1].starts_with(&refusal), "{text}");
    assert!(lines[1].ends_with(" at line 1 column 56"), "{text}");
    // The same JSON is not an Envoy config: nothing to check there, and no error.
    let output = validate(&[&good]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output).trim(),
        format!("{good}: no wasmgate filter found")
    );
}

const LISTENER: &str = r#"
name: edge
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      http_filters:
      - name: keys
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
          config:
            root_id: wasmgate-api-key
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: '{"store": {"cluster": "keystore"}, "pepper_env": "PEPPER"}'
            vm_config:
              code: {remote: {http_uri: {uri: "https://example.com/m.wasm"}}}
              ENVIRONMENT
      - name: someone-elses
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
          config:
            name: other
            vm_config: {code: {local: {filename: /opt/other.wasm}}}
      - name: as-struct
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
          config:
            configuration:
              "@type": type.googleapis.com/google.protobuf.Struct
              value: {strip_inbound: [x-user-id]}
            vm_config: {code: {local: {filename: build/wasm/headers.wasm}}}
"#;

#[test]
fn the_vm_environment_decides_the_pepper_and_other_filters_are_skipped() {
    let scratch = Scratch::new("env").unwrap();
    let cases = [
        // A value in the config: the VM's pepper; this one is too short.
        (
            "environment_variables: {key_values: {PEPPER: short}}",
            None,
            "error: pepper_env: ",
        ),
        // Nowhere: the filter would see no pepper.
        (
            "runtime: envoy.wasm.runtime.v8",
            None,
            "error: pepper_env: ",
        ),
        // From the host: read here when set, else not checked (and said so).
        (
            "environment_variables: {host_env_keys: [PEPPER]}",
            Some("a pepper long enough to be one"),
            "ok",
        ),
        (
            "environment_variables: {host_env_keys: [PEPPER]}",
            None,
            "ok (PEPPER not set here: the pepper was not checked)",
        ),
    ];
    for (environment, host_pepper, wanted) in cases {
        let file = scratch
            .write(
                "listener.yaml",
                &LISTENER.replace("ENVIRONMENT", environment),
            )
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmgate-validate"));
        command.arg(&file).env_remove("PEPPER");
        if let Some(pepper) = host_pepper {
            command.env("PEPPER", pepper);
        }
        let text = stdout(&run(&mut command));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let key_line = format!("{file}: listener edge: keys (api-key): {wanted}");
        assert!(lines[0].starts_with(&key_line), "{environment}: {text}");
        assert_eq!(
            lines[1],
            format!("{file}: listener edge: someone-elses: skipped: not a wasmgate filter (vm_config.code.local.filename \"/opt/other.wasm\", name \"other\")")
        );
        assert!(
            lines[2].starts_with(&format!(
                "{file}: listener edge: as-struct (headers): error: configuration: \"type.googleapis.com/google.protobuf.Struct\": wasmgate filters read their configuration as JSON text"
            )),
            "{text}"
        );
    }
}

#[test]
fn usage_and_io_errors_exit_2() {
    assert_eq!(validate(&[]).status.code(), Some(2));
    assert_eq!(
        validate(&["--filter", "jwtt", "x.json"]).status.code(),
        Some(2)
    );
    let missing = validate(&["envoy-config/gateway.yaml", "no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/file.yaml"));
    // The readable file was still checked.
    assert!(stdout(&missing).contains("wasmgate.jwt (jwt): ok"));
    let scratch = Scratch::new("usage").unwrap();
    let not_yaml = scratch.write("not.yaml", "key: [unclosed\n").unwrap();
    let output = validate(&[&not_yaml]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).starts_with(&format!("{not_yaml}: error: not YAML or JSON: ")));
}

#[test]
fn help_explains_inputs_outputs_and_exit_status() {
    let output = validate(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    for wanted in [
        "--filter",
        "WasmPlugin",
        "vm_config.code",
        "StringValue",
        "pepper_env",
        "--output",
        "Exit status",
        "schema --out DIR",
    ] {
        assert!(text.contains(wanted), "{wanted}\nin:\n{text}");
    }
}

#[test]
fn the_committed_schemas_are_the_generated_ones() {
    let scratch = Scratch::new("schema").unwrap();
    let out = scratch.0.display().to_string();
    assert_eq!(validate(&["schema", "--out", &out]).status.code(), Some(0));
    let committed = repository().join("docs/schema");
    for filter in ["headers", "jwt", "api-key", "rate-limit", "combined"] {
        let name = format!("{filter}.schema.json");
        let generated = fs::read_to_string(scratch.0.join(&name)).unwrap();
        let shipped = fs::read_to_string(committed.join(&name)).unwrap_or_default();
        assert!(
            generated == shipped,
            "docs/schema/{name} is out of date: run `make schema` and commit it"
        );
    }
}

/// What `kubectl get wasmplugins -o yaml` prints (a `List`), and an `EnvoyFilter` that
/// patches a Wasm filter in as a `TypedStruct`.
const KUBECTL_LIST_AND_ENVOY_FILTER: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: extensions.istio.io/v1alpha1
  kind: WasmPlugin
  metadata: {name: limits, namespace: edge}
  spec:
    url: oci://registry.example.com/wasmgate/rate-limit@sha256:0123
    pluginConfig:
      default:
        limits: [{requests: 5, per: 1 minute}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: strip, namespace: edge}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: strip-identity
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
          value:
            config:
              root_id: wasmgate-headers
              configuration:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{"strip_inbound": ["x-user-id"]}'
"#;

#[test]
fn wasmplugins_in_a_list_and_envoy_filter_patches_are_found() {
    let scratch = Scratch::new("kinds").unwrap();
    let file = scratch
        .write("cluster.yaml", KUBECTL_LIST_AND_ENVOY_FILTER)
        .unwrap();
    let output = validate(&[&file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{file}: document 1: edge/limits (rate-limit): error: default.limits[0].per: \"1 minute\": unknown unit \"minute\"; expected a duration such as \"250ms\", \"10s\", \"5m\", \"1h\" or \"1d\""),
            format!("{file}: document 2: strip-identity (headers): ok"),
        ]
    );
    let output = validate(&["--output", "json", &file]);
    let pointers: Vec<String> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["pointer"].to_string())
        .collect();
    assert_eq!(
        pointers,
        [
            r#""/items/0/spec/pluginConfig""#,
            r#""/spec/configPatches/0/patch/value/typed_config/value/config""#
        ]
    );
}
