//! The filter pages under `docs/filters/` agree with the filters' parsers.
//!
//! Examples: a fenced ```json block on the line right after `<!-- example: <filter> -->`
//! is a full configuration of that filter (`headers`, `jwt`, `api-key`, `rate-limit`,
//! or `combined` for the combined module), anywhere under `docs/` or in `README.md`.
//! Each one is parsed here by that filter's own parser, exactly as the filter parses
//! its plugin configuration; every filter's page must show at least one. Fragments are
//! left unmarked.
//!
//! Fields: every field the parsers accept, object by object, is named in the first
//! column of a table on the filter's page. The parsers themselves say which fields
//! they accept: an unknown field is refused with the list of the known ones.

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

/// A configuration object the parser reads with a fixed set of fields: where it is in a
/// valid configuration (a JSON pointer), and whether it is an enum (one field out of
/// several, so the probe replaces it instead of adding to it).
struct Object {
    pointer: &'static str,
    one_of: bool,
}

const fn object(pointer: &'static str) -> Object {
    Object {
        pointer,
        one_of: false,
    }
}

/// Per filter: a valid configuration that holds every object once, and those objects.
fn surveyed() -> Vec<(&'static str, serde_json::Value, Vec<Object>)> {
    use serde_json::json;
    vec![
        (
            "headers",
            json!({"rules": [{"match": {"prefix": "/"}, "request": {}}], "default": {}}),
            vec![
                object(""),
                object("/rules/0"),
                object("/default"),
                object("/rules/0/request"),
            ],
        ),
        (
            "jwt",
            json!({
                "providers": {"idp": {
                    "issuer": "i",
                    "audiences": ["api"],
                    "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}},
                    "from_headers": [{"name": "authorization"}]
                }},
                "rules": [{"match": {"prefix": "/"}, "providers": ["idp"]}],
                "default": {"public": true}
            }),
            vec![
                object(""),
                object("/providers/idp"),
                object("/providers/idp/jwks"),
                object("/providers/idp/jwks/remote"),
                object("/providers/idp/from_headers/0"),
                object("/rules/0"),
                object("/default"),
            ],
        ),
        (
            "api-key",
            json!({"store": {"cluster": "keystore"}, "sources": {}, "format": {}, "cache": {}, "forward": {}}),
            vec![
                object(""),
                object("/store"),
                object("/sources"),
                object("/format"),
                object("/cache"),
                object("/forward"),
            ],
        ),
        (
            "rate-limit",
            json!({
                "table": {},
                "identity": [{"header": "x-user-id"}, {"address": {}}],
                "rules": [{"name": "r", "match": {"prefix": "/"}, "limits": [{"requests": 1, "per": "1s"}],
                           "global": {"mode": "lease", "cluster": "rls", "lease": {}}}],
                "default": {"limits": [{"requests": 1, "per": "1s"}]}
            }),
            vec![
                object(""),
                object("/table"),
                Object {
                    pointer: "/identity/0",
                    one_of: true,
                },
                object("/identity/1/address"),
                object("/rules/0"),
                object("/rules/0/limits/0"),
                object("/rules/0/global"),
                object("/rules/0/global/lease"),
                object("/default"),
            ],
        ),
        ("combined", json!({"headers": {}}), vec![object("")]),
    ]
}

const PROBE: &str = "wasmgate_no_such_field";

/// The fields the parser accepts in one object, as its refusal of an unknown one lists
/// them (`unknown field `x`, expected one of `a`, `b``).
fn accepted_fields(
    filter: &str,
    config: &serde_json::Value,
    at: &Object,
) -> Result<Vec<String>, String> {
    let mut probed = config.clone();
    let target = probed
        .pointer_mut(at.pointer)
        .ok_or_else(|| format!("{filter}: nothing at {}", at.pointer))?;
    if at.one_of {
        *target = serde_json::json!({ PROBE: {} });
    } else {
        target
            .as_object_mut()
            .ok_or_else(|| format!("{filter}: {} is not an object", at.pointer))?
            .insert(PROBE.into(), 1.into());
    }
    let Err(refusal) = parse(filter, &probed.to_string()) else {
        return Err(format!(
            "{filter} {}: an unknown field was accepted",
            at.pointer
        ));
    };
    let (_, expected) = refusal
        .split_once(&format!("`{PROBE}`, expected "))
        .ok_or_else(|| format!("{filter} {}: {refusal}", at.pointer))?;
    let listed = expected.split(" at line ").next().unwrap_or(expected);
    Ok(listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect())
}

/// Field names in the first column of the page's tables.
fn documented_fields(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix('|')?.split('|').next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned))
        .collect()
}

#[test]
fn every_field_the_parsers_accept_is_in_a_table_of_the_filters_page() {
    let mut missing = Vec::new();
    for (filter, config, objects) in surveyed() {
        parse(filter, &config.to_string()).unwrap();
        let page_path = repository().join(format!("docs/filters/{filter}.md"));
        let documented = documented_fields(&fs::read_to_string(&page_path).unwrap());
        for at in &objects {
            let fields = accepted_fields(filter, &config, at).unwrap();
            assert!(!fields.is_empty(), "{filter} {}: no fields", at.pointer);
            for field in fields {
                if !documented.contains(&field) {
                    missing.push(format!("{filter} {}: `{field}`", at.pointer));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "fields the parsers accept but no table of the filter's page names:\n{}",
        missing.join("\n")
    );
}

#[test]
fn an_undocumented_field_is_caught() {
    let page = "| field | type |\n|---|---|\n| `realm` | string |\nText about `issuer`.\n";
    let documented = documented_fields(page);
    assert!(documented.contains(&"realm".to_owned()));
    assert!(!documented.contains(&"issuer".to_owned()));
    let (_, config, objects) = surveyed().swap_remove(1);
    let fields = accepted_fields("jwt", &config, &objects[0]).unwrap();
    assert!(fields.contains(&"providers".to_owned()), "{fields:?}");
    assert!(
        fields.contains(&"token_cache_entries".to_owned()),
        "{fields:?}"
    );
}
