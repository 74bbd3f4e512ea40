"""wasmgate's metrics as an operator reads them: a Prometheus name and labels.

A filter writes a metric's tags into its name, Istio's way
(filters/host/src/metrics.rs): `/stats` shows
`wasmcustom.wasmgate.jwt.reason=.=expired;.;denied_total`, which the bootstrap's
`stats_tags` (envoy-config/gateway.yaml) turn into
`wasmgate_jwt_denied_total{reason="expired"}`. `parse_stat` reads the first form as the
second, whatever the bootstrap says, so tests name metrics as the docs do.

`STATS_CONFIG` is gateway.yaml's `stats_config`: every Envoy a test builds gets it
(harness/bootstrap.py), as the docs tell users to do.
"""

import re

import yaml

from .paths import ROOT

TAG = re.compile(r"([A-Za-z_]+)=\.=(.*?);\.;")
WASM_NAMESPACE = "wasmcustom."

STATS_CONFIG = yaml.safe_load((ROOT / "envoy-config" / "gateway.yaml").read_text())["stats_config"]


def parse_stat(name: str):
    """(Prometheus name, {tag: value}) of a wasm metric's `/stats` name, or None for
    any other stat."""
    if not name.startswith(WASM_NAMESPACE):
        return None
    tags = dict(TAG.findall(name))
    bare = TAG.sub("", name[len(WASM_NAMESPACE):])
    return re.sub(r"[^A-Za-z0-9_:]", "_", bare), tags


def select(stats: dict, metric: str, **tags) -> dict:
    """{tags as a sorted tuple: value} of the series of `metric` (a Prometheus name)
    among `stats` (`/stats` name → value) whose tags include `tags`."""
    found = {}
    for name, value in stats.items():
        parsed = parse_stat(name)
        if parsed and parsed[0] == metric and tags.items() <= parsed[1].items():
            found[tuple(sorted(parsed[1].items()))] = value
    return found


def parse_prometheus(text: str) -> dict:
    """Envoy's `/stats/prometheus` as {(name, ((label, value), ...)): value}, for
    counters and gauges; histograms' `_bucket`/`_sum`/`_count` lines too."""
    samples = {}
    line_re = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    label_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        match = line_re.match(line)
        if match and not line.startswith("#"):
            labels = tuple(sorted(label_re.findall(match.group(2) or "")))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples
