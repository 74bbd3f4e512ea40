"""Run what we ship: every Envoy config under envoy-config/ passes `envoy --mode
validate`, and the demo gateway works when started from its own file."""

import pytest
import requests

from harness import Seen, tool_path, validate_config
from harness.shipped import load_shipped, shipped_envoy_configs


@pytest.mark.parametrize("path", shipped_envoy_configs())
def test_shipped_config_passes_envoy_validate(path):
    ok, output = validate_config(path, workdir=None)
    assert ok, output[-5000:]


def test_demo_gateway_from_its_shipped_file(start_envoy, start_service):
    users = start_service([tool_path("demo"), "echo", "--name", "users"], "users")
    envoy = start_envoy(load_shipped("envoy-config/gateway.yaml", {8080: 0, 9901: 0, 18081: users.port}))
    resp = requests.get(envoy.url("/api/v1/users/42"), headers={"x-user-id": "spoofed"})
    seen = Seen(resp)
    assert seen.service == "users"
    assert seen.header("x-user-id") is None
    assert seen.header("x-gateway") == "wasmgate"
    assert seen.header("x-client-ip") == "127.0.0.1"
    assert resp.headers["x-request-id"] == seen.header("x-request-id")
    assert resp.headers["sunset"] == "Thu, 31 Dec 2026 23:59:59 GMT"
    assert "server" not in resp.headers
