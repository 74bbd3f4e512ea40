"""The Istio manifests under istio/, checked offline: Istio's CRD schemas and CEL rules
(a validator calibrated on Istio's own valid/invalid documents), then the cross-checks
Istio would not make (pins, filter order, callout clusters, agreement with the Envoy
gateway's configs). Every WasmPlugin found under istio/ goes through every check:
adding a filter is adding its manifest."""

import json
import subprocess

import pytest
import yaml

from harness import ROOT
from harness.istio_checks import (
    CRD_FILE, PLUGIN_ROLES, built_digests, check_agreement, check_clusters, check_order,
    check_pins, https_variants, kubernetes_manifests, load_manifests, merge_patch, module_of,
    shipped_manifests, wasm_plugins,
)
from harness.shipped import shipped_plugin_configs
from harness.istio_crd import CrdCatalog, GoUrl

UPSTREAM = ROOT / "tests" / "istio" / "upstream-testdata"
BROKEN = ROOT / "tests" / "istio" / "broken"
SHIPPED = shipped_manifests()
PLUGINS = wasm_plugins(SHIPPED)


@pytest.fixture(scope="module")
def crds():
    return CrdCatalog.load(CRD_FILE)


def _upstream(kind: str):
    """(id, document, expected error or None) for Istio's own calibration documents."""
    cases = []
    for path in sorted(UPSTREAM.glob(f"*-{kind}.yaml")):
        for manifest in load_manifests(path):
            doc = dict(manifest.doc)
            err = doc.pop("_err", None)
            cases.append(pytest.param(doc, err, id=f"{path.stem}#{manifest.index}-{manifest.name}"))
    return cases


# --- proof 1: the validator, calibrated on Istio's own documents -----------------------


@pytest.mark.parametrize("doc, err", _upstream("valid"))
def test_validator_accepts_every_valid_upstream_document(crds, doc, err):
    assert crds.validate(doc) == []


@pytest.mark.parametrize("doc, err", _upstream("invalid"))
def test_validator_refuses_every_invalid_upstream_document_for_its_reason(crds, doc, err):
    problems = [str(p) for p in crds.validate(doc)]
    assert problems, "accepted, but the API server refuses it with: " + err
    assert any(err in p for p in problems), f"expected {err!r} among {problems}"


def test_calibration_covers_every_kind_we_ship():
    """The kinds we ship that Istio's testdata calibrates (ServiceEntry has none there:
    its CEL rules run here uncalibrated)."""
    calibrated = {p.values[0]["kind"] for p in _upstream("valid") + _upstream("invalid")}
    shipped = {m.kind for m in SHIPPED}
    assert calibrated >= shipped - {"ServiceEntry"}, shipped - calibrated


@pytest.mark.parametrize("manifest", SHIPPED + https_variants(PLUGINS), ids=lambda m: m.label)
def test_shipped_manifest_is_valid_for_istio(crds, manifest):
    assert [str(p) for p in crds.validate(manifest.doc)] == []


def _broken(check: str):
    return [pytest.param(m, id=m.file.stem) for path in sorted(BROKEN.glob("*.yaml"))
            for m in load_manifests(path) if m.doc["_check"] == check]


def _strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


@pytest.mark.parametrize("manifest", _broken("crd"))
def test_broken_manifest_is_refused_by_the_crd(crds, manifest):
    problems = [str(p) for p in crds.validate(_strip(manifest.doc))]
    assert any(manifest.doc["_err"] in p for p in problems), problems


def test_generated_schemas_work_with_check_jsonschema(crds, tmp_path):
    """The JSON schemas serve the check-jsonschema CLI as they are (e.g. in editors or
    CI without this harness): every shipped manifest passes, a broken one fails."""
    by_schema = {}
    for i, manifest in enumerate(SHIPPED):
        doc_file = tmp_path / f"doc{i}.json"
        doc_file.write_text(json.dumps(manifest.doc))
        by_schema.setdefault((manifest.doc["apiVersion"], manifest.kind), []).append(doc_file)
    broken = _strip(load_manifests(BROKEN / "wasmplugin-misspelt-field.yaml")[0].doc)
    broken_file = tmp_path / "broken.json"
    broken_file.write_text(json.dumps(broken))
    binary = ROOT / ".venv" / "bin" / "check-jsonschema"
    for (api_version, kind), files in by_schema.items():
        schema_file = tmp_path / f"{kind}.schema.json"
        schema_file.write_text(json.dumps(crds.json_schema(api_version, kind)))
        result = subprocess.run([binary, "--schemafile", schema_file, *files],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        if kind == broken["kind"]:
            result = subprocess.run([binary, "--schemafile", schema_file, broken_file],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 1 and "pluginConfigs" in result.stdout, result.stdout


# --- proof 2: what Istio would not catch ----------------------------------------------


def test_every_wasmplugin_module_has_a_role():
    """Every shipped WasmPlugin is one of our filters (the table says where it goes)."""
    modules = {module_of(m.doc["spec"]["url"]) for m in PLUGINS}
    assert modules, "no WasmPlugin under istio/"
    assert modules <= set(PLUGIN_ROLES), modules - set(PLUGIN_ROLES)


def test_pins_match_the_built_modules():
    """sha256 and the image tag of every WasmPlugin and of its https variant are those
    of the modules `make build` produced (`make istio-pin` rewrites them)."""
    digests = built_digests()
    assert check_pins(PLUGINS + https_variants(PLUGINS), digests) == []
    assert {p.file.name for p in https_variants(PLUGINS)} == {p.file.name for p in PLUGINS}, \
        "every WasmPlugin needs its https merge patch: run `make istio-pin`"


def test_phases_and_priorities_give_the_intended_order():
    assert check_order(PLUGINS) == []


def test_callout_clusters_are_created_by_service_entries():
    assert check_clusters(PLUGINS, SHIPPED) == []


def gateway_configs() -> dict:
    """{module: JSON config} of the wasm filters in envoy-config/gateway.yaml."""
    return {filename.rsplit("/", 1)[-1].removesuffix(".wasm"): config
            for _, filename, config in shipped_plugin_configs("envoy-config/gateway.yaml")}


def test_plugin_configs_agree_with_the_envoy_gateway():
    """The same filter configured the same way under Istio and in the Envoy gateway,
    but for what depends on the deployment (DEPLOYMENT_SPECIFIC)."""
    configs = gateway_configs()
    assert {module_of(p.doc["spec"]["url"]) for p in PLUGINS} == set(configs)
    assert check_agreement(PLUGINS, configs) == []


CHECKS = {
    "order": lambda extra: check_order(PLUGINS + [extra]),
    "clusters": lambda extra: check_clusters([extra], SHIPPED),
    "pins": lambda extra: check_pins([extra], built_digests()),
    "agreement": lambda extra: check_agreement([extra], gateway_configs()),
}


@pytest.mark.parametrize("manifest", [case for name in CHECKS for case in _broken(name)])
def test_broken_manifest_is_caught_by_its_cross_check(crds, manifest):
    doc = _strip(manifest.doc)
    # Valid for Istio: only our cross-check can catch it.
    assert crds.validate(doc) == [], "this one is for a cross-check, the CRD refuses it"
    problems = CHECKS[manifest.doc["_check"]](manifest.__class__(manifest.file, 0, doc))
    assert any(manifest.doc["_err"] in p for p in problems), problems


# --- the building blocks, on their own ------------------------------------------------


@pytest.mark.parametrize("url, module", [
    ("oci://registry.example.com/wasmgate/headers:0.1.0", "headers"),
    ("oci://registry.example.com:5000/wasmgate/rate-limit@sha256:" + "a" * 64, "rate-limit"),
    ("https://artifacts.example.com/wasmgate/0.1.0/api-key.wasm", "api-key"),
])
def test_module_of_url(url, module):
    assert module_of(url) == module


def test_merge_patch_replaces_and_removes():
    target = {"spec": {"url": "oci://a/b:1", "sha256": "x", "phase": "AUTHN"}}
    patched = merge_patch(target, {"spec": {"url": "https://c/b.wasm", "phase": None}})
    assert patched == {"spec": {"url": "https://c/b.wasm", "sha256": "x"}}
    assert target["spec"]["url"] == "oci://a/b:1"  # the original is untouched


@pytest.mark.parametrize("text, scheme", [
    ("http://test", "http"), ("oci://registry.example.com/wasmgate/headers:0.1.0", "oci"),
    ("file:///opt/filters/openid.wasm", "file"), ("HTTPS://Example.com/x", "https"),
    ("/absolute/path", ""), ("mailto:someone@example.com", "mailto"),
])
def test_go_url_accepts_what_parse_request_uri_accepts(text, scheme):
    assert GoUrl(text).scheme == scheme


@pytest.mark.parametrize("text", ["", "test", "#%blah$#@", "http://#%blah$#@", "http://a b/",
                                  "http://host:port/", "://x", "http://%zz/"])
def test_go_url_refuses_what_parse_request_uri_refuses(text):
    with pytest.raises(ValueError):
        GoUrl(text)


def test_every_manifest_file_under_istio_is_loaded():
    """No YAML file under istio/ escapes the checks (a file the glob missed, or a
    document without kind)."""
    files = {p for p in (ROOT / "istio").rglob("*") if p.is_file()}
    assert all(p.suffix == ".yaml" for p in files), files
    kubernetes = kubernetes_manifests()  # checked in test_ratelimit_service_manifests.py
    assert {m.file for m in SHIPPED + kubernetes} | {p.file for p in https_variants(PLUGINS)} == files
    assert all(m.kind and m.doc.get("apiVersion") for m in SHIPPED + kubernetes)


def test_istio_yaml_is_plain_yaml():
    """Anchors and merge keys are YAML features kubectl and istioctl do not share."""
    for path in (ROOT / "istio").rglob("*.yaml"):
        events = {type(e).__name__ for e in yaml.parse(path.read_text())}
        assert "AliasEvent" not in events, path
