"""The two ways wasmgate's filters go in front of the router, so that the filters' tests
prove the same behaviour in both:

- `separate`: one Envoy wasm filter per wasmgate filter (`build/wasm/<filter>.wasm`),
  the documented way;
- `combined`: the combined module (`build/wasm/combined.wasm`) running the same filters
  as stages of one Envoy filter, each stage configured exactly as the separate filter.

A test names the filters it wants, in chain order, with their configurations
(`deployment.filters(("headers", {...}), ("rate-limit", {...}))`), and reads the one
log line of a refused configuration through `deployment.refusal(...)`. The fixture
`deployment` (conftest.py) runs a test once per deployment.
"""

from dataclasses import dataclass

from .bootstrap import wasm_filter
from .paths import wasm_path

# The filters the combined module runs, in its fixed order, and their section names.
STAGES = {"headers": "headers", "jwt": "jwt", "api-key": "api_key", "rate-limit": "rate_limit"}
ORDER = list(STAGES)
KINDS = ("separate", "combined")


@dataclass(frozen=True)
class Deployment:
    kind: str  # "separate" or "combined"

    def filters(self, *chain) -> list:
        """The `http_filters` entries for `chain`: (filter, config) pairs in chain order,
        `config` a dict (or a string, sent as it is)."""
        modules = [module for module, _ in chain]
        if self.kind == "separate":
            return [wasm_filter(wasm_path(module), config, name=module) for module, config in chain]
        # The combined module runs its stages in one order; a test that needs another
        # cannot be run against it.
        assert modules == sorted(modules, key=ORDER.index), f"not the stage order: {modules}"
        stages = {STAGES[module]: config for module, config in chain}
        return [wasm_filter(wasm_path("combined"), stages, name="combined")]

    def filter(self, module: str, config) -> dict:
        """One filter alone: its single `http_filters` entry."""
        [entry] = self.filters((module, config))
        return entry

    def refusal(self, module: str, field: str = "") -> str:
        """The start of the log line that refuses `module`'s configuration at `field`:
        `wasmgate-<filter>: invalid plugin configuration: <field>` for a separate filter,
        `wasmgate-combined: invalid plugin configuration: <section>.<field>` for the
        combined module (the section alone when the whole configuration is wrong)."""
        if self.kind == "separate":
            return f"wasmgate-{module}: invalid plugin configuration: {field}"
        path = STAGES[module] + (f".{field}" if field else "")
        return f"wasmgate-combined: invalid plugin configuration: {path}"

    def __str__(self) -> str:
        return self.kind
