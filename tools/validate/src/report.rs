//! Checking what was found and writing one line per filter configuration.

use crate::locate::{Found, Lines};
use crate::Output;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::process::ExitCode;

/// Stands in for a pepper the VM takes from its host when it is not set here: long
/// enough for the API-key filter, so the rest of the configuration is still checked.
const UNCHECKED_PEPPER: &str = "wasmgate-validate: pepper not set here, not checked";

#[derive(Default)]
pub struct Summary {
    pub invalid: bool,
    pub unreadable: bool,
}

impl Summary {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(if self.unreadable {
            2
        } else if self.invalid {
            1
        } else {
            0
        })
    }
}

/// One line of output.
struct Line<'a> {
    file: &'a str,
    found: Option<&'a Found>,
    result: &'static str,
    field: Option<String>,
    problem: Option<String>,
    note: Option<String>,
}

impl Line<'_> {
    fn write(&self, output: Output, documents: usize) {
        match output {
            Output::Text => println!("{}", self.text(documents)),
            Output::Json => println!("{}", self.json()),
        }
    }

    fn text(&self, documents: usize) -> String {
        let mut line = format!("{}: ", self.file);
        if let Some(found) = self.found {
            if documents > 1 {
                line += &format!("document {}: ", found.document);
            }
            match (&found.filter, found.name.is_empty()) {
                (Ok(filter), true) => line += &format!("({}): ", filter.name()),
                (Ok(filter), false) => line += &format!("{} ({}): ", found.name, filter.name()),
                (Err(_), _) => line += &format!("{}: ", found.name),
            }
        }
        line += self.result;
        match (&self.field, &self.problem) {
            (Some(field), Some(problem)) if !field.is_empty() => {
                line += &format!(": {field}: {problem}")
            }
            (_, Some(problem)) => line += &format!(": {problem}"),
            _ => {}
        }
        if let Some(note) = &self.note {
            line += &format!(" ({note})");
        }
        line
    }

    fn json(&self) -> Value {
        let found = self.found;
        let config = found
            .and_then(|f| f.config.as_ref().ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok());
        json!({
            "file": self.file,
            "document": found.map(|f| f.document),
            "name": found.map(|f| f.name.as_str()),
            "pointer": found.map(|f| f.pointer.as_str()),
            "filter": found.and_then(|f| f.filter.as_ref().ok()).map(|f| f.name()),
            "result": self.result,
            "field": self.field,
            "problem": self.problem,
            "note": self.note,
            "config": config,
        })
    }
}

/// Checks every configuration found in `file` and writes a line for each.
pub fn check(file: &str, found: &[Found], output: Output, summary: &mut Summary) {
    let documents = found.iter().map(|f| f.document).max().unwrap_or(1);
    if found.is_empty() {
        Line {
            file,
            found: None,
            result: "no wasmgate filter found",
            field: None,
            problem: None,
            note: None,
        }
        .write(output, documents);
    }
    for one in found {
        let line = check_one(file, one);
        if line.result == "error" {
            summary.invalid = true;
        }
        line.write(output, documents);
    }
}

fn check_one<'a>(file: &'a str, found: &'a Found) -> Line<'a> {
    let line = |result, field: Option<String>, problem: Option<String>| Line {
        file,
        found: Some(found),
        result,
        field,
        problem,
        note: None,
    };
    let filter = match &found.filter {
        Ok(filter) => *filter,
        Err(why) => return line("skipped", None, Some(why.clone())),
    };
    let bytes = match &found.config {
        Ok(bytes) => bytes,
        Err(problem) => return line("error", None, Some(problem.clone())),
    };
    let unchecked = RefCell::new(Vec::new());
    let env = |name: &str| -> Option<String> {
        if let Some(value) = found.env.values.get(name) {
            return Some(value.clone());
        }
        if !(found.env.all_from_host || found.env.from_host.contains(name)) {
            return None;
        }
        std::env::var(name).ok().or_else(|| {
            unchecked.borrow_mut().push(name.to_owned());
            Some(UNCHECKED_PEPPER.to_owned())
        })
    };
    let mut result = match filter.check(bytes, &env) {
        Ok(()) => line("ok", None, None),
        Err(err) => line(
            "error",
            Some(err.field().to_owned()),
            Some(placed(err.problem(), found.lines)),
        ),
    };
    let unchecked = unchecked.into_inner();
    if !unchecked.is_empty() {
        result.note = Some(format!(
            "{} not set here: the pepper was not checked",
            unchecked.join(", ")
        ));
    }
    result
}

/// serde_json ends a refusal with `at line L column C`: of the file for a plain
/// configuration, of the JSON text in an Envoy config's `configuration.value`, of
/// nothing the reader wrote for a WasmPlugin's `pluginConfig` (the JSON path says where).
fn placed(problem: &str, lines: Lines) -> String {
    let Some(at) = problem.rfind(" at line ") else {
        return problem.to_owned();
    };
    let (text, place) = problem.split_at(at);
    let is_place = place
        .trim_start_matches(" at line ")
        .split(" column ")
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    match lines {
        _ if !is_place => problem.to_owned(),
        Lines::File => problem.to_owned(),
        Lines::ConfigurationText => format!("{text} (configuration.value{place})"),
        Lines::Rewritten => text.to_owned(),
    }
}

/// A file that is not YAML or JSON at all.
pub fn unparsable(file: &str, problem: &str, output: Output, summary: &mut Summary) {
    summary.invalid = true;
    Line {
        file,
        found: None,
        result: "error",
        field: None,
        problem: Some(problem.to_owned()),
        note: None,
    }
    .write(output, 1);
}
