"""Where the harness finds what `make build` and `make setup` produced."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "build"


def wasm_path(module: str) -> str:
    """`build/wasm/<module>.wasm`, e.g. wasm_path("headers")."""
    path = BUILD / "wasm" / f"{module}.wasm"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make build` first")
    return str(path)


def tool_path(tool: str) -> str:
    """`build/bin/wasmgate-<tool>`, e.g. tool_path("demo")."""
    path = BUILD / "bin" / f"wasmgate-{tool}"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make build` first")
    return str(path)


def envoy_binary() -> str:
    """The stock Envoy from the project venv (override with WASMGATE_ENVOY)."""
    override = os.environ.get("WASMGATE_ENVOY")
    if override:
        return override
    path = ROOT / ".venv" / "bin" / "envoy-bin"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make setup` first")
    return str(path)
