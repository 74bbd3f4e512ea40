"""The Kubernetes objects that deploy wasmgate-ratelimit (istio/ratelimit-service/), checked
offline: each against Kubernetes' own OpenAPI schema (kubernetes-validate, strict: unknown
fields refused), then what a schema cannot say: the Service speaks gRPC to the right
port, the probes ask the service's gRPC health service, the limits in the ConfigMap load,
and every environment variable is a flag the binary knows. Not checked here (no cluster
on this machine): admission webhooks, Istio's sidecar injection, the image itself."""

import subprocess

import kubernetes_validate
import pytest

from harness import tool_path
from harness.istio_checks import kubernetes_manifests

K8S_VERSION = "1.37.0"
MANIFESTS = [m for m in kubernetes_manifests() if "ratelimit-service" in str(m.file)]


def by_kind(kind: str) -> list:
    return [m.doc for m in MANIFESTS if m.kind == kind]


def test_every_kind_is_shipped():
    assert sorted({m.kind for m in MANIFESTS}) == [
        "ConfigMap", "Deployment", "Namespace", "PodDisruptionBudget", "Service"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: f"{m.file.name}#{m.kind}")
def test_manifest_fits_the_kubernetes_schema(manifest):
    kubernetes_validate.validate(manifest.doc, K8S_VERSION, strict=True)


def test_the_validator_refuses_a_misspelt_field():
    deployment = dict(by_kind("Deployment")[0])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_service_speaks_grpc_to_the_container_port_the_probes_ask():
    [service] = by_kind("Service")
    [deployment] = by_kind("Deployment")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "grpc"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert grpc["targetPort"] == "grpc" and ports["grpc"] == 8081
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WASMGATE_RATELIMIT_LISTEN"].endswith(":8081")
    assert env["WASMGATE_RATELIMIT_METRICS_LISTEN"].endswith(f":{ports['http-metrics']}")
    assert container["readinessProbe"]["grpc"] == {
        "port": 8081, "service": "envoy.service.ratelimit.v3.RateLimitService"}
    assert container["livenessProbe"]["grpc"]["port"] == 8081


def test_every_environment_variable_is_a_flag_the_binary_knows():
    [deployment] = by_kind("Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    help_text = subprocess.run([tool_path("ratelimit"), "serve", "--help"], capture_output=True,
                               text=True, timeout=30).stdout
    for variable in container["env"]:
        assert f"[env: {variable['name']}=" in help_text, variable["name"]


def test_the_configmap_is_mounted_where_the_config_flag_points(tmp_path):
    [configmap] = by_kind("ConfigMap")
    [deployment] = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name")
                  == configmap["metadata"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WASMGATE_RATELIMIT_CONFIG"] == mount["mountPath"]
    # The directory the kubelet makes, as the service reads it (a ..data symlink included).
    data = tmp_path / "..2026_01_01_00_00_00.0"
    data.mkdir()
    for name, text in configmap["data"].items():
        (data / name).write_text(text)
        (tmp_path / name).symlink_to(f"..data/{name}")
    (tmp_path / "..data").symlink_to(data.name)
    result = subprocess.run([tool_path("ratelimit"), "check", "--config", tmp_path],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
