//! `wasmgate-validate`: checks wasmgate filter configurations before they are
//! deployed, with the parsers the filters themselves run in `on_configure`, and writes
//! the configurations' JSON Schemas (docs/schema/). `--help` says how; docs/validate.md
//! has examples.

mod filter;
mod locate;
mod report;

use clap::{Parser, Subcommand, ValueEnum};
use filter::Filter;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const ABOUT: &str = "Check wasmgate filter configurations with the filters' own parsers";

const LONG_ABOUT: &str = "\
Check wasmgate filter configurations with the filters' own parsers: the same code
that runs in the filter's on_configure, on the same bytes, so a configuration this
accepts is one the filter accepts (the checks against the outside world, such as
whether a cluster exists, are Envoy's).

Each FILE is one of:
  - an Envoy config (bootstrap, listener, LDS/ECDS response, Istio EnvoyFilter), YAML
    or JSON, one or more documents: every envoy.filters.http.wasm filter in it whose
    vm_config.code file (build/wasm/jwt.wasm), root_id or plugin name (jwt,
    wasmgate-jwt) names a wasmgate filter is checked; its configuration is the
    google.protobuf.StringValue (or BytesValue) Envoy hands the filter; a Wasm
    filter patched in as a TypedStruct counts too. Other Wasm filters are listed as
    skipped.
  - an Istio WasmPlugin manifest (multi-document YAML, or a List as kubectl prints
    it): each WasmPlugin's pluginConfig, for the filter its url
    (oci://.../jwt:0.1.0), pluginName or name names.
  - with --filter: the plain JSON configuration of that one filter, as the filter
    receives it (`-` reads standard input).

The API-key filter reads its pepper from the Wasm VM's environment (pepper_env):
values written in the config (vm_config.environment_variables.key_values, a
WasmPlugin's vmConfig.env) are used; names the VM takes from its host
(host_env_keys, valueFrom: HOST), and every name for a plain configuration, are read
from this process's environment; when unset here, the pepper is not checked and
the line says so.

Output: one line per filter configuration checked (ok, error with the JSON path of
the field the filter refuses, or skipped), or `--output json`: one JSON object per
line with the configuration itself.

Exit status: 0 every configuration is valid; 1 at least one is invalid (or a file
is not YAML/JSON); 2 usage error, or a file cannot be read.

`wasmgate-validate schema --out DIR` writes the JSON Schema of each filter's
configuration (DIR/<filter>.schema.json, draft 2020-12), derived from the parsers'
types. The parsers check more than a schema can say (see docs/validate.md): validate
with this tool to be sure.";

#[derive(Parser)]
#[command(
    name = "wasmgate-validate",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Files to check: Envoy configs, WasmPlugin manifests, or with --filter plain
    /// JSON configurations (`-`: standard input).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// The files are plain JSON configurations of this filter.
    #[arg(long, value_enum)]
    filter: Option<Filter>,
    /// How results are written.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Write the JSON Schema of every filter's configuration into DIR/<filter>.schema.json.
    Schema {
        /// The directory to write into (created if missing), e.g. docs/schema.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per filter: `FILE: [document N: ]NAME (FILTER): ok|error: ...|skipped: ...`.
    Text,
    /// One JSON object per line (file, document, name, pointer, filter, result, field,
    /// problem, note, config).
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Some(Command::Schema { out }) => write_schemas(&out),
        None => check_files(&cli.files, cli.filter, cli.output),
    }
}

fn write_schemas(dir: &Path) -> ExitCode {
    if let Err(err) = std::fs::create_dir_all(dir) {
        eprintln!("wasmgate-validate: {}: {err}", dir.display());
        return ExitCode::from(2);
    }
    for filter in Filter::ALL {
        let path = dir.join(format!("{}.schema.json", filter.name()));
        let text = match serde_json::to_string_pretty(&filter.schema()) {
            Ok(text) => text + "\n",
            Err(err) => {
                eprintln!("wasmgate-validate: {}: {err}", filter.name());
                return ExitCode::from(2);
            }
        };
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("wasmgate-validate: {}: {err}", path.display());
            return ExitCode::from(2);
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path)
    }
}

fn check_files(files: &[PathBuf], filter: Option<Filter>, output: Output) -> ExitCode {
    let mut summary = report::Summary::default();
    for path in files {
        let file = if path == Path::new("-") {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        };
        let bytes = match read(path) {
            Ok(bytes) => bytes,
            Err(err) => {
                eprintln!("wasmgate-validate: {file}: {err}");
                summary.unreadable = true;
                continue;
            }
        };
        let found = match filter {
            Some(filter) => Ok(vec![locate::plain(filter, bytes)]),
            None => match String::from_utf8(bytes) {
                Ok(text) => locate::in_text(&text),
                Err(_) => Err("not YAML or JSON: not UTF-8 text".to_owned()),
            },
        };
        match found {
            Ok(found) => report::check(&file, &found, output, &mut summary),
            Err(problem) => report::unparsable(&file, &problem, output, &mut summary),
        }
    }
    summary.exit_code()
}
