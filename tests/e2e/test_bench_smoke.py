"""`make bench` must not rot: its harness runs here in a tiny mode (one round of one
second). Nothing here judges speed; it checks that the harness starts what it needs,
measures, writes its report and stops everything it started."""

import collections
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

from harness import ROOT

sys.path.insert(0, str(ROOT))

from bench.load import Distinct, Load, Rotate, run_wrk  # noqa: E402


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Answers 200 and records the two headers the load generator varies."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits for a delayed ACK (40 ms)
    seen = collections.Counter()

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.seen[(self.headers.get("x-client-id"), self.headers.get("authorization"))] += 1
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


LIMIT = 100


def test_load_generator_sends_distinct_and_rotating_values(tmp_path):
    """The Lua generator behind the floods (a distinct client id per request, stopping
    at a limit) and the cold paths (a value from a list per request, in turn)."""
    _RecordingHandler.seen = collections.Counter()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        values = tmp_path / "tokens.txt"
        values.write_text("t1\nt2\nt3\n")
        load = Load(distinct=Distinct("x-client-id", "client-", limit=LIMIT),
                    rotate=Rotate("authorization", values, prefix="Bearer "))
        # The run ends once the limit is reached; 2 s bounds it.
        result = run_wrk(f"http://127.0.0.1:{server.server_address[1]}/", load, seconds=2,
                         connections=4, threads=2, cpu=None, workdir=tmp_path, name="smoke")
    finally:
        server.shutdown()
        server.server_close()
    seen = _RecordingHandler.seen
    ids = collections.Counter(client for (client, _), n in seen.items() for _ in range(n))
    tokens = collections.Counter(auth for (_, auth), n in seen.items() for _ in range(n))
    assert result.clean and result.requests >= LIMIT
    # Every request carried its own id, and wrk stopped near the limit (a request per
    # connection may still be in flight when it stops).
    assert len(ids) == sum(ids.values()) and LIMIT <= len(ids) <= LIMIT + 4
    assert all(client.startswith("client-") for client in ids)
    # The list was sent in turn: each value about as often as the others.
    assert set(tokens) == {"Bearer t1", "Bearer t2", "Bearer t3"}
    assert max(tokens.values()) - min(tokens.values()) <= 4


def _processes_mentioning(text: str) -> list:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_bench_runs_end_to_end_and_cleans_up(tmp_path):
    """One round of one second for bare, the header filter and the remote-JWKS
    scenario: every pass runs, the report and raw results are written, and no process
    the bench started outlives it."""
    workdir = tmp_path / "run"
    report, raw = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "headers,native-jwt-rs256-remote",
         "--rounds", "1", "--seconds", "1", "--warmup", "1",
         "--memory-concurrency", "2", "--memory-seconds", "1",
         "--callout-concurrency", "1", "--callout-seconds", "1",
         "--workdir", str(workdir), "--out", str(report), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _processes_mentioning(str(workdir)) == []

    results = json.loads(raw.read_text())["scenarios"]
    assert list(results) == ["bare", "headers", "native-jwt-rs256-remote"]
    for name in ("bare", "headers"):
        measured = results[name]
        assert measured["failure"] is None
        assert len(measured["samples"]) == 1
        sample = measured["samples"][0]
        assert sample["requests"] > 0 and sample["status_errors"] == 0
        assert sample["envoy_cpu_seconds"] > 0
        assert set(measured["rss_loaded"]) == {"1", "2"}
    # The header filter counted every request it saw (probe, warm-up, the round).
    assert results["headers"]["counters"]["requests"] >= results["headers"]["samples"][0]["requests"]
    remote = results["native-jwt-rs256-remote"]
    assert remote["failure"] is None and remote["samples"] == []
    assert remote["callouts"]["1"]["jwks"] >= 1  # the JWKS was fetched through its cluster

    text = report.read_text()
    for section in ("## Throughput, one worker", "## Memory", "## Callout fetches", "## Method"):
        assert section in text
    assert "| `headers` |" in text
