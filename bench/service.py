"""The rate-limit service on its own (the `service` pass): wasmgate-ratelimit pinned to the
Envoy CPU, its Redis and its load client (the binary's own `load`, HTTP/2, 16 callers)
on the load CPU.

Per run, with every call admitted (the limit is far above the load):
- decisions per second, and per second of the service's CPU ("per core");
- the client's p50/p99;
- Redis commands per admitted request (`INFO commandstats`, reset before the run): for
  ShouldRateLimit, and for Renew per leased hit (each holder spends every grant in full,
  `want` hits at a time, and settles it in the next renewal).

Which binary: `build/bin/wasmgate-ratelimit` (`make tools`: Cargo.toml's optimized `service`
profile) unless WASMGATE_BENCH_RATELIMIT names another. The report says which; a debug
build's CPU figures are many times an optimized one's.
"""

import json
import os
import subprocess
import time
from pathlib import Path

from harness.paths import tool_path
from harness.process import Service
from harness.ratelimit_service import RedisTcp

from .cpus import cpu_seconds, pinned

LIMITS = """domain: bench
descriptors:
  - key: tenant
    rate_limit: {unit: day, requests_per_unit: 4000000000}
"""

# (label, store, mode, want): what one service run measures.
RUNS = (
    ("ShouldRateLimit, Redis", "redis", "decide", 0),
    ("Renew (want 50), Redis", "redis", "lease", 50),
    ("ShouldRateLimit, memory", "memory", "decide", 0),
)


# Commands the service sends itself (each a round trip); everything else in
# commandstats ran inside a script.
SENT = {"evalsha", "eval", "script", "hello", "client"}


def binary() -> tuple:
    """(path, what it is) of the service measured."""
    override = os.environ.get("WASMGATE_BENCH_RATELIMIT")
    if override:
        return override, f"{override} (WASMGATE_BENCH_RATELIMIT)"
    return tool_path("ratelimit"), "build/bin/wasmgate-ratelimit (`make tools`, service profile)"


def _commandstats(redis) -> dict:
    return {name[len("cmdstat_"):] if name.startswith("cmdstat_") else name: stats["calls"]
            for name, stats in redis.client().info("commandstats").items()}


def service_run(bench, scenario, result):
    """Measures every run of RUNS into `result.service`."""
    workdir = bench.workdir / "service"
    workdir.mkdir(parents=True, exist_ok=True)
    limits = workdir / "limits.yaml"
    limits.write_text(LIMITS)
    path, what = binary()
    # Quick runs (1 s wrk runs) measure briefly; others 40 000 calls per run.
    calls = 3000 if bench.settings.mode == "quick" or bench.settings.seconds <= 1 else 40000
    placement = bench.placement
    redis = RedisTcp(workdir, "service-redis", prefix=pinned(placement.load_cpu, []))
    result.service = {"binary": what, "runs": []}
    redis.start()
    try:
        for label, store, mode, want in RUNS:
            bench.say(f"service: {label}: {calls} calls")
            service = Service(
                pinned(placement.envoy_cpu, [
                    path, "serve", "--config", limits, "--listen", "127.0.0.1:0",
                    "--metrics-listen", "127.0.0.1:0", "--log-level", "warn",
                    "--redis-timeout", "2s",
                    "--store", redis.url if store == "redis" else "memory"]),
                f"service-{mode}-{store}", workdir).start()
            try:
                result.service["runs"].append(
                    _measure(service, redis if store == "redis" else None, label, mode, want,
                             calls, placement.load_cpu, bench.say))
            finally:
                service.stop()
    finally:
        redis.stop()


def _measure(service, redis, label, mode, want, calls, load_cpu, say) -> dict:
    def load(requests):
        return pinned(load_cpu, [
            tool_path("ratelimit"), "load", "--target", service.address, "--domain", "bench",
            "--descriptor", "tenant=bench", "--mode", mode, "--want", max(want, 1),
            "--requests", requests, "--concurrency", 16, "--timeout", "5s", "--max-time", "120s"])

    # A short warm-up: connections made, scripts loaded into Redis.
    subprocess.run(load(200), capture_output=True, timeout=120)
    if redis is not None:
        redis.client().config_resetstat()
    cpu_before = cpu_seconds(service.proc.pid)
    redis_cpu_before = cpu_seconds(redis.proc.pid) if redis is not None else 0.0
    started = time.monotonic()
    ran = subprocess.run(load(calls), capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    cpu = cpu_seconds(service.proc.pid) - cpu_before
    if ran.returncode != 0:
        raise RuntimeError(f"{label}: load failed: {ran.stderr[-2000:]}")
    counts = json.loads(ran.stdout)
    admitted = counts["granted"] if mode == "lease" else counts["ok"]
    row = {
        "label": label,
        "calls": counts["calls"],
        "admitted": admitted,
        "errors": counts["errors"] + counts["unknown"] + counts["over_limit"],
        "calls_per_s": counts["calls"] / counts["elapsed_s"] if counts["elapsed_s"] else 0,
        "service_cpu_s": cpu,
        "calls_per_cpu_s": counts["calls"] / cpu if cpu else None,
        "p50_us": counts["p50_us"],
        "p99_us": counts["p99_us"],
        "wall_s": wall,
    }
    if redis is not None:
        stats = _commandstats(redis)
        # The measurement's own commands are not the service's.
        for own in ("config|resetstat", "info", "config"):
            stats.pop(own, None)
        # The service sends scripts only (and HELLO / SCRIPT LOAD when it connects); the
        # other commands ran inside them, with no round trip of their own.
        sent = sum(v for k, v in stats.items() if k.split("|")[0] in SENT)
        row["redis_commands"] = stats
        row["redis_calls_per_admitted"] = sent / admitted if admitted else None
        row["redis_commands_per_admitted"] = sum(stats.values()) / admitted if admitted else None
        row["redis_cpu_s"] = cpu_seconds(redis.proc.pid) - redis_cpu_before
    say(f"service: {label}: {row['calls_per_s']:.0f} calls/s, "
        f"{row['calls_per_cpu_s'] or 0:.0f} per service CPU-second, Redis calls per admitted "
        f"hit {row.get('redis_calls_per_admitted')}")
    return row


def render(results: dict) -> str:
    """The report's section (empty when the pass did not run)."""
    ran = [r for r in results.values() if getattr(r, "service", None)]
    if not ran:
        return ""
    lines = ["## The rate-limit service", ""]
    for result in ran:
        lines += [
            f"`{result.name}`: {result.what} Measured: {result.service['binary']}; the service "
            "on the Envoy CPU, Redis and the load client (16 callers over HTTP/2) on the "
            "load CPU; every call admitted.", "",
            "| run | calls | calls/s | calls per service CPU-second | client p50 / p99 | "
            "Redis calls per admitted hit | Redis commands per admitted hit (inside scripts "
            "too) | Redis CPU per call |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for run in result.service["runs"]:
            calls = run.get("redis_calls_per_admitted")
            commands = run.get("redis_commands_per_admitted")
            redis_cpu = run.get("redis_cpu_s")
            redis_us = None if redis_cpu is None else redis_cpu * 1e6 / run["calls"]
            lines.append(
                f"| {run['label']} | {run['calls']} | {run['calls_per_s']:.0f} | "
                f"{run['calls_per_cpu_s'] or 0:.0f} | {run['p50_us'] / 1000:.2f} / "
                f"{run['p99_us'] / 1000:.2f} ms | {'–' if calls is None else f'{calls:.3f}'} | "
                f"{'–' if commands is None else f'{commands:.3f}'} | "
                f"{'–' if redis_us is None else f'{redis_us:.0f} µs'} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _main():
    """`python -m bench.service`: the pass alone, without Envoy (prints the rows)."""
    from types import SimpleNamespace

    from .cpus import Placement

    workdir = Path("build/bench/service-only").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bench = SimpleNamespace(workdir=workdir, placement=Placement.choose(),
                            settings=SimpleNamespace(mode=os.environ.get("MODE", "quick"),
                                                     seconds=1),
                            say=lambda text: print(f"bench: {text}", flush=True))
    result = SimpleNamespace(name="ratelimit-service", what="wasmgate-ratelimit alone.",
                             service=None)
    service_run(bench, None, result)
    print(render({"ratelimit-service": result}))


if __name__ == "__main__":
    _main()
