"""The end-to-end harness: real Envoy, real .wasm files, real fixture servers.

- `Envoy` starts the stock Envoy binary on a generated bootstrap (ports chosen at run
  time, admin on 127.0.0.1) and waits for readiness through the admin API.
- `Service` starts one of the project's fixture servers (`build/bin/wasmgate-*`) and
  reads the address it prints.
- `bootstrap` builds Envoy configs as plain dicts.
- `shipped` loads the configs of envoy-config/ with their ports (and certificate
  paths) rewritten; `demo_gateway` and `mesh` run them with their demo services
  (`stack` is what the two share); `certs` makes demo certificates; `ports` finds
  free ports for programs that cannot take port 0; `dockerd` runs a private Docker
  engine for the compose tests.
- `conftest.py` turns these into pytest fixtures that stop everything at the end of
  each test, and print Envoy's log when a test fails.
"""

from .envoy import Envoy, EnvoyFailedToStart, validate_config
from .process import Service
from .paths import ROOT, wasm_path, tool_path
from .wait import wait_for
from .echo import Seen

__all__ = [
    "Envoy",
    "EnvoyFailedToStart",
    "Seen",
    "Service",
    "ROOT",
    "tool_path",
    "validate_config",
    "wait_for",
    "wasm_path",
]
