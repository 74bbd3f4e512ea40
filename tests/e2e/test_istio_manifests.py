"""The Istio manifests under istio/, checked offline: Istio's CRD schemas and CEL rules
(a validator calibrated on Istio's own valid/invalid documents), then the cross-checks
Istio would not make (pins, filter order, callout clusters, agreement with the Envoy
gateway's configs). Every WasmPlugin found under istio/ goes through every check:
adding a filter is adding its manifest."""

import copy
import json
import re
import subprocess

import jsonschema
import pytest
import yaml

from harness import ROOT
from harness.istio_checks import (
    CRD_FILE, PLUGIN_ROLES, built_digests, check_agreement, check_clusters, check_order,
    check_pins, https_variants, install_manifests, kubernetes_manifests, load_manifests,
    merge_patch, module_of, role_of, shipped_manifests, wasm_plugins,
)
from harness.shipped import shipped_plugin_configs, shipped_typed_configs
from harness.istio_crd import CrdCatalog, GoUrl

UPSTREAM = ROOT / "tests" / "istio" / "upstream-testdata"
BROKEN = ROOT / "tests" / "istio" / "broken"
INSTALL_SCHEMA = ROOT / "tests" / "istio" / "install" / "istio-operator-meshconfig.schema.json"
SHIPPED = shipped_manifests()
INSTALL = install_manifests()
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
    """The kinds we ship that Istio's testdata calibrates (ServiceEntry and EnvoyFilter
    have none there: their schemas and CEL rules run here uncalibrated)."""
    calibrated = {p.values[0]["kind"] for p in _upstream("valid") + _upstream("invalid")}
    shipped = {m.kind for m in SHIPPED}
    assert calibrated >= shipped - {"ServiceEntry", "EnvoyFilter"}, shipped - calibrated


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
    """Every shipped WasmPlugin is one of our filters (the table says where it goes),
    and plays its role with the module the role names."""
    roles = {role_of(m.doc) for m in PLUGINS}
    assert roles, "no WasmPlugin under istio/"
    assert roles <= set(PLUGIN_ROLES), roles - set(PLUGIN_ROLES)
    for plugin in PLUGINS:
        role = role_of(plugin.doc)
        assert module_of(plugin.doc["spec"]["url"]) == (PLUGIN_ROLES[role].module or role)


def test_the_rate_limit_filter_plays_two_roles_told_apart_by_plugin_name():
    """Before authentication (pre-auth) and after it (rate-limit): one module, two
    WasmPlugins, each checked against its own place and its own gateway config."""
    by_role = {role_of(m.doc): m for m in PLUGINS}
    assert module_of(by_role["pre-auth"].doc["spec"]["url"]) == "rate-limit"
    assert module_of(by_role["rate-limit"].doc["spec"]["url"]) == "rate-limit"
    misnamed = json.loads(json.dumps(by_role["pre-auth"].doc))
    misnamed["spec"]["pluginName"] = "wasmgate-rate-limit"
    problems = check_order(PLUGINS + [by_role["pre-auth"].__class__(
        by_role["pre-auth"].file, 0, misnamed)])
    assert any("phase AUTHN, but rate-limit belongs in AUTHZ" in p for p in problems), problems


def test_pins_match_the_built_modules():
    """sha256 and the image tag of every WasmPlugin and of its https variant are those
    of the modules `make build` produced (`make istio-pin` rewrites them)."""
    digests = built_digests()
    assert check_pins(PLUGINS + https_variants(PLUGINS), digests) == []
    assert {p.file.name for p in https_variants(PLUGINS)} == {p.file.name for p in PLUGINS}, \
        "every WasmPlugin needs its https merge patch: run `make istio-pin`"


def test_phases_and_priorities_give_the_intended_order():
    assert check_order(PLUGINS) == []


def test_callout_clusters_are_created_by_service_entries_or_services():
    assert check_clusters(PLUGINS, SHIPPED + kubernetes_manifests()) == []


def gateway_configs() -> dict:
    """{role: JSON config} of the wasm filters in envoy-config/gateway.yaml (a filter's
    configuration name is its role)."""
    found = shipped_plugin_configs("envoy-config/gateway.yaml")
    configs = {}
    for name, filename, config in found:  # each listener's chain (the same one, twice)
        assert configs.setdefault(name, config) == config, f"two {name} filters differ"
        module = filename.rsplit("/", 1)[-1].removesuffix(".wasm")
        assert module == (PLUGIN_ROLES[name].module or name), (name, filename)
    return configs


def test_plugin_configs_agree_with_the_envoy_gateway():
    """The same filter configured the same way under Istio and in the Envoy gateway,
    but for what depends on the deployment (DEPLOYMENT_SPECIFIC)."""
    configs = gateway_configs()
    assert {role_of(p.doc) for p in PLUGINS} == set(configs)
    assert check_agreement(PLUGINS, configs) == []


CHECKS = {
    "order": lambda extra: check_order(PLUGINS + [extra]),
    "clusters": lambda extra: check_clusters([extra], SHIPPED + kubernetes_manifests()),
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
    # The kustomizations are rendered and checked in test_istio_kustomize.py.
    files = {p for p in files if p.name != "kustomization.yaml"}
    kubernetes = kubernetes_manifests()  # checked in test_ratelimit_service_manifests.py
    found = SHIPPED + INSTALL + kubernetes
    assert ({m.file for m in found} | {p.file for p in https_variants(PLUGINS)}) == files
    assert all(m.kind and m.doc.get("apiVersion") for m in found)


def test_istio_yaml_is_plain_yaml():
    """Anchors and merge keys are YAML features kubectl and istioctl do not share."""
    for path in (ROOT / "istio").rglob("*.yaml"):
        events = {type(e).__name__ for e in yaml.parse(path.read_text())}
        assert "AliasEvent" not in events, path


# --- the mesh's security settings (istio/mesh/, istio/callouts/) ---------------------
#
# MeshConfig is not a resource of the API server: nothing here has Istio's own
# validation of it (istioctl's, in Go). The IstioOperator overlay is checked against a
# strict schema of the fields it sets, written from MeshConfig's proto; what those
# fields do is proven in real Envoy by test_mesh.py, on envoy-config/mesh/, which the
# tests below hold to be what istiod generates from istio/mesh/.

# What istiod writes into every HTTP connection manager for each
# meshConfig.pathNormalization.normalization (pilot's listener builder, Istio 1.30).
PATH_NORMALIZATION = {
    "NONE": {"normalize_path": False},
    "BASE": {"normalize_path": True},
    "DEFAULT": {"normalize_path": True},
    "MERGE_SLASHES": {"normalize_path": True, "merge_slashes": True},
    "DECODE_AND_MERGE_SLASHES": {"normalize_path": True, "merge_slashes": True,
                                 "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"},
}
MESH_CONFIGS = ["envoy-config/mesh/order-service.yaml", "envoy-config/mesh/checkout-service.yaml"]


def _install_validator():
    schema = json.loads(INSTALL_SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("manifest", INSTALL, ids=lambda m: m.label)
def test_install_overlay_sets_only_known_mesh_config_fields(manifest):
    assert [e.message for e in _install_validator().iter_errors(manifest.doc)] == []


@pytest.mark.parametrize("manifest", _broken("install"))
def test_broken_install_overlay_is_refused(manifest):
    errors = [e.message for e in _install_validator().iter_errors(_strip(manifest.doc))]
    assert any(manifest.doc["_err"] in e for e in errors), errors


def _connection_managers(path: str) -> list:
    return shipped_typed_configs(path, "HttpConnectionManager")


def _of_kind(kind: str) -> list:
    return [m.doc for m in SHIPPED + INSTALL if m.kind == kind]


def test_envoy_mesh_configs_are_what_the_istio_mesh_settings_make():
    """Every HTTP connection manager of envoy-config/mesh/ normalises paths as the
    meshConfig overlay makes istiod configure it, and carries the EnvoyFilter's merge."""
    (operator,) = _of_kind("IstioOperator")
    normalization = PATH_NORMALIZATION[operator["spec"]["meshConfig"]["pathNormalization"]["normalization"]]
    (envoy_filter,) = _of_kind("EnvoyFilter")
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert patch["match"]["context"] == "ANY" and patch["patch"]["operation"] == "MERGE"
    merged = {k: v for k, v in patch["patch"]["value"]["typed_config"].items() if k != "@type"}
    managers = [(path, hcm) for path in MESH_CONFIGS for hcm in _connection_managers(path)]
    assert len(managers) == 3  # order-service inbound; checkout-service outbound and inbound
    for path, hcm in managers:
        assert {k: hcm.get(k, False) for k in ("normalize_path", "merge_slashes",
                                               "path_with_escaped_slashes_action")} == {
            "normalize_path": False, "merge_slashes": False,
            "path_with_escaped_slashes_action": False, **normalization}, (path, hcm["stat_prefix"])
        assert merge_patch(hcm, merged) == hcm, (path, hcm["stat_prefix"])


def _rbac_policy(rule: dict) -> dict:
    """One AuthorizationPolicy rule as istiod writes it into Envoy's RBAC, for the forms
    istio/mesh/ uses: notPrincipals; notMethods; a `when` on a header's presence."""
    (source,) = rule["from"]
    assert set(source) == {"source"} and set(source["source"]) == {"notPrincipals"}
    permissions = []
    for operation in rule.get("to", []):
        assert set(operation) == {"operation"} and set(operation["operation"]) == {"notMethods"}
        permissions.append({"not_rule": {"or_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": method}}}
            for method in operation["operation"]["notMethods"]]}}})
    for condition in rule.get("when", []):
        header = re.fullmatch(r"request\.headers\[(.+)\]", condition["key"])
        assert header and condition["values"] == ["*"], condition
        permissions.append({"header": {"name": header.group(1), "present_match": True}})
    assert len(permissions) == 1, rule  # one condition per rule, as shipped
    return {"permissions": permissions,
            "principals": [{"not_id": {"authenticated": {"principal_name": {"exact": f"spiffe://{p}"}}}}
                           for p in source["source"]["notPrincipals"]]}


def test_envoy_mesh_rbac_is_the_authorization_policy_as_istiod_writes_it():
    """envoy-config/mesh/order-service.yaml's RBAC filter is the translation of the
    AuthorizationPolicy (one RBAC policy per rule, named as istiod names them)."""
    (policy,) = _of_kind("AuthorizationPolicy")
    meta = policy["metadata"]
    expected = {"action": policy["spec"]["action"],
                "policies": {f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule[{i}]": _rbac_policy(rule)
                             for i, rule in enumerate(policy["spec"]["rules"])}}
    config = yaml.safe_load((ROOT / MESH_CONFIGS[0]).read_text())
    (rbac,) = [f["typed_config"] for hcm in _connection_managers(MESH_CONFIGS[0])
               for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
    assert rbac["rules"] == expected
    assert policy["spec"]["selector"]["matchLabels"]["app"] == config["node"]["cluster"]


def _client_tls(rule: dict) -> list:
    policy = rule["spec"].get("trafficPolicy", {})
    return [tls for tls in [policy.get("tls"), *(p.get("tls") for p in policy.get("portLevelSettings", []))]
            if tls and tls.get("mode") in ("SIMPLE", "MUTUAL")]


def callout_tls_problems(rule: dict) -> list:
    """What lets a callout's TLS origination accept a server it should not."""
    problems = []
    for tls in _client_tls(rule):
        host = rule["spec"]["host"]
        if host not in tls.get("subjectAltNames", []):
            problems.append(f"{host}: the certificate's name is not checked (subjectAltNames)")
        if not (tls.get("caCertificates") or tls.get("credentialName")):
            problems.append(f"{host}: no CA named (caCertificates or credentialName)")
        if tls.get("insecureSkipVerify"):
            problems.append(f"{host}: insecureSkipVerify")
    return problems


def test_callouts_verify_the_certificate_of_the_idp_and_the_key_store():
    rules = [m.doc for m in SHIPPED if m.kind == "DestinationRule" and "callouts" in m.file.parts]
    assert {r["spec"]["host"] for r in rules} == {"idp.example.com", "keystore.internal.example.com"}
    for rule in rules:
        assert _client_tls(rule), rule["spec"]["host"]
        assert callout_tls_problems(rule) == []


@pytest.mark.parametrize("change, problem", [
    (lambda tls: tls.pop("subjectAltNames"), "subjectAltNames"),
    (lambda tls: tls.update(subjectAltNames=["*.example.com"]), "subjectAltNames"),
    (lambda tls: tls.pop("caCertificates"), "caCertificates or credentialName"),
    (lambda tls: tls.update(insecureSkipVerify=True), "insecureSkipVerify"),
])
def test_callout_tls_check_finds_an_unverified_server(crds, change, problem):
    (idp,) = [m.doc for m in SHIPPED if m.kind == "DestinationRule" and m.doc["spec"]["host"] == "idp.example.com"]
    broken = copy.deepcopy(idp)
    change(broken["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"])
    assert crds.validate(broken) == []  # Istio would take it
    assert any(problem in p for p in callout_tls_problems(broken))
