"""The docs as a reader uses them: the landing page's quick starts work as printed, and
the link checker `make docs` runs (scripts/check-links.py) catches broken links.

The filter pages' example configurations are parsed by the filters' own parsers in
`crates/combined-config/tests/docs.rs`, and run in Envoy by the filters' tests
(`test_*_documented_example_*`)."""

import subprocess
import sys

import requests
import yaml

from harness import ROOT, Seen, wasm_path
from harness.bootstrap import bootstrap, cluster, http_listener, route, wasm_filter
from harness.docs import marked_block
from harness.istio_checks import CRD_FILE
from harness.istio_crd import CrdCatalog

CHECK_LINKS = ROOT / "scripts" / "check-links.py"
TIMEOUT = 20


def quickstart_envoy_filters() -> list:
    """The landing page's `http_filters`, with the .wasm path made absolute (the snippet
    is relative to the repository root, as the shipped configs are)."""
    filters = yaml.safe_load(marked_block("README.md", "quickstart: envoy"))["http_filters"]
    code = filters[0]["typed_config"]["config"]["vm_config"]["code"]["local"]
    assert code["filename"] == "build/wasm/headers.wasm"
    code["filename"] = wasm_path("headers")
    return filters


def test_the_envoy_quickstart_works_as_printed(start_envoy, echo):
    filters = quickstart_envoy_filters()
    listener = http_listener("main", [], [route("/", "upstream", name="default")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = filters
    envoy = start_envoy(bootstrap([listener], [cluster("upstream", echo.host, echo.port)]))
    seen = Seen(requests.get(envoy.url("/orders"), headers={"X-User-ID": "admin"}, timeout=TIMEOUT))
    assert seen.header("x-user-id") is None
    assert seen.header("x-gateway") == "wasmgate"


def test_the_istio_quickstart_is_a_valid_wasmplugin_whose_config_works(start_envoy, echo):
    plugin = yaml.safe_load(marked_block("README.md", "quickstart: istio"))
    assert CrdCatalog.load(CRD_FILE).validate(plugin) == []
    assert plugin["spec"]["url"].endswith("/headers:0.1.0")
    # The pluginConfig, delivered as istiod does (JSON in a StringValue), into headers.wasm.
    filters = [wasm_filter(wasm_path("headers"), plugin["spec"]["pluginConfig"])]
    envoy = start_envoy(bootstrap(
        [http_listener("main", filters, [route("/", "upstream", name="default")])],
        [cluster("upstream", echo.host, echo.port)]))
    seen = Seen(requests.get(envoy.url("/"), headers={"x-tenant-id": "spoofed"}, timeout=TIMEOUT))
    assert seen.header("x-tenant-id") is None
    assert seen.header("x-gateway") == "wasmgate"


def test_the_istio_sketch_of_versions_and_the_experiment_is_valid_for_istio():
    """docs/gateway-and-mesh.md's VirtualService (not shipped): Istio's schema takes it,
    and it routes with the gateway's own Accept expression."""
    service = yaml.safe_load(marked_block("docs/gateway-and-mesh.md", "istio: versions and experiment"))
    assert CrdCatalog.load(CRD_FILE).validate(service) == []
    accept = next(m["headers"]["accept"]["regex"] for route in service["spec"]["http"]
                  for m in route["match"] if "accept" in m.get("headers", {}))
    gateway = (ROOT / "envoy-config" / "gateway.yaml").read_text()
    assert f"regex: '1|accept:{accept}'" in gateway


def check_links(*files):
    return subprocess.run([sys.executable, str(CHECK_LINKS), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


GOOD = """# A page

## The gateway (`envoy-config/gateway.yaml`)

## Examples

## Examples

## What's new? A `--flag`, v1.2 & more

Links: [other](other.md), [its section](other.md#second-part), [here](#examples-1),
[punctuation](#whats-new-a---flag-v12--more), [gateway](#the-gateway-envoy-configgatewayyaml),
[a directory](sub/), [external](https://example.com/nowhere.md), [ref][defined],
`[in code](missing.md)`, <a id="custom"></a>[custom anchor](#custom).

```md
[in a fence](missing.md)
```

[defined]: other.md#first
"""

OTHER = """# First

## Second part
"""


def test_the_link_checker_passes_good_links_by_githubs_anchor_rules(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "other.md").write_text(OTHER)
    (tmp_path / "page.md").write_text(GOOD)
    result = check_links(tmp_path / "page.md", tmp_path / "other.md")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_link_checker_fails_on_each_broken_link(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "other.md").write_text(OTHER)
    (tmp_path / "page.md").write_text(GOOD + """
[gone](missing.md) and [no heading](#nowhere)
[no section](other.md#third-part) and [undefined][nolabel]
""")
    result = check_links(tmp_path / "page.md")
    assert result.returncode == 1, result.stdout
    problems = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(problems) == 4, result.stdout
    assert "page.md:22: missing.md: no such file" in problems[0]
    assert "page.md:22: #nowhere: no anchor #nowhere in page.md" in problems[1]
    assert "page.md:23: other.md#third-part: no anchor #third-part in other.md" in problems[2]
    assert "page.md:23: [nolabel]: no link definition" in problems[3]
