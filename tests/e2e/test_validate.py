"""The JSON Schemas of docs/schema/ agree with the filters' own parsers.

The parser side is `build/bin/wasmgate-validate` (the parsers the filters run in
`on_configure`); the schema side is the `jsonschema` validator (draft 2020-12). Both
must accept every configuration we ship (envoy-config/, istio/, the docs' marked
examples, and the WasmPlugins' configs with every number a double, as istiod delivers
them), and both must refuse a set of structurally broken ones (unknown field, wrong
type, missing required field, bad enum value, malformed duration or header name).

What the parsers refuse beyond a schema's reach (docs/validate.md lists it: provider
names a rule uses must exist, limits in range, ...) is only tested one way: the parser
refuses, whatever the schema says. The CLI itself (exit codes, locations, Envoy and
WasmPlugin discovery) is tested in tools/validate/tests/cli.rs."""

import json
import re
import subprocess

import jsonschema
import pytest
import yaml

from harness import ROOT, tool_path
from harness.istio_kustomize import entry_points, render

SCHEMAS = ROOT / "docs" / "schema"
FILTERS = ["headers", "jwt", "api-key", "rate-limit", "combined"]
TIMEOUT = 60


def schema_validator(filter_name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{filter_name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(filter_name: str, config) -> list:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in schema_validator(filter_name).iter_errors(config)]


def validate(*args, stdin=None) -> list:
    """wasmgate-validate --output json: one dict per configuration checked."""
    run = subprocess.run([tool_path("validate"), "--output", "json", *map(str, args)],
                         input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode in (0, 1), run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def parser_verdicts(filter_name: str, configs: list, tmp_path) -> list:
    """The parser's result for each configuration (plain JSON files, one run)."""
    files = []
    for i, config in enumerate(configs):
        path = tmp_path / f"{filter_name}-{i}.json"
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        files.append(path)
    results = validate("--filter", filter_name, *files)
    assert [r["file"] for r in results] == [str(f) for f in files]
    return results


def shipped_files() -> list:
    """Every shipped configuration file but the kustomize overlays' patches (fragments
    of WasmPlugins: what the overlays render is checked below)."""
    files = sorted((ROOT / "envoy-config").rglob("*.yaml")) + sorted((ROOT / "istio").rglob("*.yaml"))
    return [str(f.relative_to(ROOT)) for f in files
            if not f.is_relative_to(ROOT / "istio" / "overlays")]


def shipped_configs() -> list:
    """(where, filter, config) of every wasmgate filter configuration we ship."""
    found = []
    for result in validate(*(ROOT / f for f in shipped_files())):
        if result["filter"] is None:
            continue
        where = f"{result['file']} {result['name']}"
        assert result["result"] == "ok", f"{where}: {result['field']}: {result['problem']}"
        found.append((where, result["filter"], result["config"]))
    return found


def documented_examples() -> list:
    """(where, filter, config) of every `<!-- example: <filter> -->` block."""
    found = []
    for page in sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]):
        text = page.read_text()
        for match in re.finditer(r"^<!-- example: ([a-z-]+) -->\n```json\n(.*?)^```", text, re.S | re.M):
            where = f"{page.relative_to(ROOT)}:{text[:match.start()].count(chr(10)) + 1}"
            found.append((where, match.group(1), json.loads(match.group(2))))
    return found


def as_doubles(value):
    """Every whole number a double, as a WasmPlugin's pluginConfig reaches the filter."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [as_doubles(v) for v in value]
    if isinstance(value, dict):
        return {k: as_doubles(v) for k, v in value.items()}
    return value


def test_the_committed_schemas_are_valid_draft_2020_12_schemas():
    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(f"{f}.schema.json" for f in FILTERS)
    for filter_name in FILTERS:
        schema_validator(filter_name)


def test_every_shipped_configuration_is_valid_for_the_parser_and_the_schema(tmp_path):
    configs = shipped_configs()
    # The gateway's four filters on two listeners, the mesh services' header filters,
    # the four WasmPlugins: a file that stopped being found would shrink this.
    assert len(configs) >= 14, configs
    assert {f for _, f, _ in configs} >= {"headers", "jwt", "api-key", "rate-limit"}
    for where, filter_name, config in configs:
        assert schema_errors(filter_name, config) == [], where


@pytest.mark.parametrize("directory", entry_points(), ids=lambda d: str(d.relative_to(ROOT)))
def test_what_each_kustomization_renders_is_valid(directory):
    """docs/validate.md's `kubectl kustomize DIR | wasmgate-validate -`, on istio/base and
    every overlay: each of the filters' WasmPlugins is found and accepted."""
    rendered = yaml.safe_dump_all([m.doc for m in render(directory)])
    results = validate("-", stdin=rendered)
    assert {r["filter"] for r in results} == {"headers", "jwt", "api-key", "rate-limit"}, results
    assert [r for r in results if r["result"] != "ok"] == []


def test_documented_examples_are_valid_for_the_schema():
    # The parser side is crates/combined-config/tests/docs.rs.
    examples = documented_examples()
    assert {f for _, f, _ in examples} == set(FILTERS)
    for where, filter_name, config in examples:
        assert schema_errors(filter_name, config) == [], where


def test_numbers_as_istiod_delivers_them_are_valid_for_both(tmp_path):
    doubled = [(where, f, as_doubles(c)) for where, f, c in shipped_configs() + documented_examples()]
    for filter_name in FILTERS:
        cases = [(where, c) for where, f, c in doubled if f == filter_name]
        if not cases:
            continue
        verdicts = parser_verdicts(filter_name, [c for _, c in cases], tmp_path)
        for (where, config), verdict in zip(cases, verdicts):
            assert verdict["result"] == "ok", f"{where}: {verdict['field']}: {verdict['problem']}"
            assert schema_errors(filter_name, config) == [], where


JWT_REMOTE = {"cluster": "idp", "path": "/jwks"}
JWT = {"providers": {"idp": {"issuer": "https://idp", "audiences": ["api"],
                             "jwks": {"remote": JWT_REMOTE}}},
       "default": {"providers": ["idp"]}}
RATE_LIMIT = {"default": {"limits": [{"requests": 5, "per": "1s"}]}}
API_KEY = {"store": {"cluster": "keystore"}}


def with_(base: dict, **changes) -> dict:
    return {**base, **changes}


# (filter, configuration, the field the parser's refusal names): structural faults a
# schema can express, so both sides must refuse.
REFUSED_BY_BOTH = [
    ("headers", {"strip_inboud": ["x-user-id"]}, "strip_inboud"),
    ("headers", {"strip_inbound": "x-user-id"}, "strip_inbound"),
    ("headers", {"strip_inbound": ["x user"]}, "strip_inbound[0]"),
    ("headers", {"rules": [{"request": {"set": {"x-a": "1"}}}]}, "rules[0]"),
    ("headers", {"rules": [{"match": {"prefix": "/"}, "request": {"sett": {}}}]}, "rules[0].request.sett"),
    ("headers", {"rules": [{"match": {"prefix": "/", "exact": "/a"}}]}, "rules[0].match"),
    ("headers", {"rules": [{"match": {"methods": ["GET"]}}]}, "rules[0].match"),
    ("headers", {"echo_request_id": "yes"}, "echo_request_id"),
    ("headers", [], ""),
    ("jwt", {"providers": {}}, ""),
    ("jwt", with_(JWT, providers={"idp": {"audiences": ["api"], "jwks": {"remote": JWT_REMOTE}}}), "providers.idp"),
    ("jwt", with_(JWT, providers={"idp": {"issuer": "https://idp", "audiences": ["api"],
                                          "jwks": {"remote": {**JWT_REMOTE, "timout": "2s"}}}}),
     "providers.idp.jwks.remote.timout"),
    ("jwt", with_(JWT, providers={"idp": {"issuer": "https://idp", "audiences": ["api"],
                                          "jwks": {"remote": {**JWT_REMOTE, "timeout": "2 seconds"}}}}),
     "providers.idp.jwks.remote.timeout"),
    ("jwt", with_(JWT, max_token_bytes="8k"), "max_token_bytes"),
    ("jwt", with_(JWT, token_cache_entries=-1), "token_cache_entries"),
    ("jwt", with_(JWT, max_waiting_requests=1.5), "max_waiting_requests"),
    ("jwt", with_(JWT, default={"public": "true"}), "default.public"),
    ("api-key", {}, ""),
    ("api-key", {"store": {}}, "store"),
    ("api-key", with_(API_KEY, cache={"ttl": "60s", "tll": "1s"}), "cache.tll"),
    ("api-key", with_(API_KEY, fail_open="false"), "fail_open"),
    ("api-key", {"store": {"cluster": "keystore", "timeout": "1"}}, "store.timeout"),
    ("api-key", with_(API_KEY, skip=[{}]), "skip[0]"),
    ("api-key", with_(API_KEY, sources={"headers": ["x:key"]}), "sources.headers[0]"),
    ("rate-limit", with_(RATE_LIMIT, rule=[]), "rule"),
    ("rate-limit", {"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": {}}]},
     "rules[0].limits"),
    ("rate-limit", {"default": {"limits": [{"per": "1s"}]}}, "default.limits[0]"),
    ("rate-limit", {"default": {"limits": [{"requests": 5, "per": 60}]}}, "default.limits[0].per"),
    ("rate-limit", with_(RATE_LIMIT, identity=[{"cookie": "session"}]), "identity[0]"),
    ("rate-limit", with_(RATE_LIMIT, reset_format="iso"), "reset_format"),
    ("rate-limit", {"default": {"endpoint": "host", "limits": [{"requests": 5, "per": "1s"}]}},
     "default.endpoint"),
    ("rate-limit", with_(RATE_LIMIT, table={"slots": "many"}), "table.slots"),
    ("combined", {"header": {}}, "header"),
    ("combined", {"jwt": {"providers": {}}}, "jwt"),
    ("combined", {"rate_limit": {"rules": [{"name": "a", "match": {"prefix": "/"}, "limits": 5}]}},
     "rate_limit.rules[0].limits"),
    ("combined", {"headers": {"strip_inbound": [1]}}, "headers.strip_inbound[0]"),
]


@pytest.mark.parametrize("filter_name", FILTERS)
def test_structural_faults_are_refused_by_both_with_their_path(filter_name, tmp_path):
    cases = [(config, field) for f, config, field in REFUSED_BY_BOTH if f == filter_name]
    verdicts = parser_verdicts(filter_name, [c for c, _ in cases], tmp_path)
    for (config, field), verdict in zip(cases, verdicts):
        assert verdict["result"] == "error", config
        assert verdict["field"] == field, (config, verdict["problem"])
        assert schema_errors(filter_name, config) != [], config


# Refused by the parsers only: meaning a schema cannot carry (docs/validate.md, "What
# the schemas do not check"). These pass the schema; the parser still refuses them.
REFUSED_BY_THE_PARSER = [
    ("jwt", with_(JWT, default={"providers": ["nobody"]}), "default.providers"),
    ("jwt", with_(JWT, providers={"idp": {"issuer": "https://idp", "jwks": {"remote": JWT_REMOTE}}}),
     "providers.idp.audiences"),
    ("rate-limit", {"default": {"limits": [{"requests": 0, "per": "1s"}]}}, "default.limits[0].requests"),
    ("rate-limit", {"rules": [{"name": "a", "match": {"prefix": "/"}}]}, "rules[0].limits"),
    ("rate-limit", {"default": {"global": {"mode": "exact", "cluster": "rls", "failure_mode": "local"}}},
     "default.global.failure_mode"),
    ("rate-limit", {"default": {"limits": [{"requests": 5, "per": "11000d"}]}}, "default.limits[0].per"),
    ("headers", {"rules": [{"match": {"prefix": "api"}}]}, "rules[0].match"),
    ("api-key", with_(API_KEY, format={"min_length": 50, "max_length": 10}), "format"),
    ("combined", {"headers": {}, "api_key": with_(API_KEY, pepper_env="")}, "api_key.pepper_env"),
]


@pytest.mark.parametrize("filter_name, config, field", REFUSED_BY_THE_PARSER)
def test_meaning_beyond_the_schema_is_refused_by_the_parser(filter_name, config, field, tmp_path):
    assert schema_errors(filter_name, config) == [], "the schema checks this now: move the case up"
    (verdict,) = parser_verdicts(filter_name, [config], tmp_path)
    assert verdict["result"] == "error"
    assert verdict["field"].startswith(field), verdict
