"""Run what we ship: every Envoy config under envoy-config/ passes `envoy --mode
validate`. Envoy checks the files a config names as well, so configs that use the demo
certificates (build/certs/, made by scripts/demo-certs.sh at run time) are validated
with a fresh set. What the configs do is tested in test_gateway.py and test_mesh.py."""

import json

import pytest

from harness import validate_config
from harness.shipped import load_shipped, shipped_envoy_configs


@pytest.mark.parametrize("path", shipped_envoy_configs())
def test_shipped_config_passes_envoy_validate(path, demo_certs, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(load_shipped(path, {}, certs_dir=demo_certs)))
    ok, output = validate_config(config, workdir=None)
    assert ok, output[-5000:]
