//! Every configuration the docs show as complete is one the filters accept.
//!
//! A fenced ```json block on the line right after `<!-- example: <filter> -->` is a full
//! configuration of that filter (`headers`, `jwt`, `api-key`, `rate-limit`, or
//! `combined` for the combined module), anywhere under `docs/` or in `README.md`. Each
//! one is parsed here by that filter's own parser, exactly as the filter parses its
//! plugin configuration; every filter's page `docs/filters/<filter>.md` must show at
//! least one. Fragments are left unmarked.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use wasmgate_api_key_auth::ApiKeyConfig;
use wasmgate_combined_config::CombinedConfig;
use wasmgate_header_rules::HeaderPolicy;
use wasmgate_jwt_auth::JwtConfig;
use wasmgate_rate_limit_policy::RateLimitPolicy;

const FILTERS: [&str; 5] = ["headers", "jwt", "api-key", "rate-limit", "combined"];
const MARKER: &str = "<!-- example: ";

/// An example's `pepper_env` names a variable of the Wasm VM: any name gets a pepper
/// long enough to be accepted.
fn vm_env(_name: &str) -> Option<String> {
    Some("a-pepper-for-the-docs-examples-only".to_owned())
}

fn parse(filter: &str, json: &str) -> Result<(), String> {
    let bytes = json.as_bytes();
    let result = match filter {
        "headers" => HeaderPolicy::from_json(bytes).map(drop),
        "jwt" => JwtConfig::from_json(bytes).map(drop),
        "api-key" => ApiKeyConfig::from_json(bytes, &vm_env).map(drop),
        "rate-limit" => RateLimitPolicy::from_json(bytes).map(drop),
        "combined" => CombinedConfig::from_json(bytes, &vm_env).map(drop),
        other => return Err(format!("unknown filter {other:?}: use one of {FILTERS:?}")),
    };
    result.map_err(|err| err.to_string())
}

/// One marked example: where it is, which filter it configures, its text.
struct Example {
    page: PathBuf,
    line: usize,
    filter: String,
    json: Result<String, String>,
}

fn examples_in(page: &Path) -> io::Result<Vec<Example>> {
    let text = fs::read_to_string(page)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix(MARKER) else {
            continue;
        };
        let filter = rest.trim_end_matches("-->").trim().to_owned();
        let json = if lines.get(i + 1).map(|l| l.trim()) != Some("```json") {
            Err("the marker must be followed at once by a ```json block".to_owned())
        } else {
            match lines[i + 2..].iter().position(|l| l.trim() == "```") {
                Some(end) => Ok(lines[i + 2..i + 2 + end].join("\n")),
                None => Err("the ```json block is never closed".to_owned()),
            }
        };
        found.push(Example {
            page: page.to_owned(),
            line: i + 1,
            filter,
            json,
        });
    }
    Ok(found)
}

fn markdown_files(dir: &Path, into: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            markdown_files(&path, into)?;
        } else if path.extension().is_some_and(|ext| ext == "md") {
            into.push(path);
        }
    }
    Ok(())
}

fn repository() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn all_examples() -> io::Result<Vec<Example>> {
    let root = repository();
    let mut pages = vec![root.join("README.md")];
    markdown_files(&root.join("docs"), &mut pages)?;
    pages.sort();
    let mut examples = Vec::new();
    for page in &pages {
        examples.extend(examples_in(page)?);
    }
    Ok(examples)
}

#[test]
fn every_marked_example_is_accepted_by_its_filters_parser() {
    let examples = all_examples().unwrap();
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|example| {
            let outcome = example
                .json
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|json| parse(&example.filter, json));
            outcome.err().map(|problem| {
                format!(
                    "{}:{} (example: {}): {problem}",
                    example.page.display(),
                    example.line,
                    example.filter
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_filters_page_shows_a_complete_example() {
    let examples = all_examples().unwrap();
    let pages = repository().join("docs/filters");
    for filter in FILTERS {
        let page = pages.join(format!("{filter}.md"));
        let own = examples
            .iter()
            .filter(|e| e.filter == filter && e.page.ends_with(format!("{filter}.md")))
            .count();
        assert!(
            own > 0,
            "{} has no example marked <!-- example: {filter} --> before a ```json block",
            page.display()
        );
    }
}

#[test]
fn a_broken_example_is_caught() {
    // The checks above can fail: a marked block that the parser refuses, or a marker
    // without a JSON block, is reported with its page and line.
    let dir = std::env::temp_dir().join(format!("wasmgate-docs-examples-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let page = dir.join("page.md");
    fs::write(
        &page,
        "# A page\n\n<!-- example: jwt -->\n```json\n{\"providers\": {}, \"default\": {\"public\": true}}\n```\n\n<!-- example: headers -->\ntext\n",
    )
    .unwrap();
    let examples = examples_in(&page).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(examples.len(), 2);
    let jwt = &examples[0];
    assert_eq!((jwt.line, jwt.filter.as_str()), (3, "jwt"));
    let refusal = parse("jwt", jwt.json.as_ref().unwrap()).unwrap_err();
    assert!(refusal.contains("providers"), "{refusal}");
    assert!(examples[1].json.is_err());
    assert!(parse("no-such-filter", "{}").is_err());
}
