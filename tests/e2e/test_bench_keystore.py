"""The key store's bench scenario (`python -m bench --only keystore`) must not rot: one
round of one second, with the new binary standing in for the old one (building the
old commit takes minutes; the full `make bench` does it). Nothing here judges speed."""

import json
import subprocess
import sys

from harness import ROOT, tool_path


def test_the_keystore_scenario_runs_alone_and_reports(tmp_path):
    report, raw = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "keystore", "--rounds", "1", "--seconds", "1",
         "--warmup", "1", "--keystore-old", tool_path("keystore"),
         "--workdir", str(tmp_path / "run"), "--out", str(report), "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr

    results = json.loads(raw.read_text())["scenarios"]
    assert list(results) == ["keystore"], "no Envoy scenario (not even bare) comes with it"
    runs = results["keystore"]["keystore"]
    assert {(r["server"], r["load"]) for r in runs} == {
        ("new", "found"), ("new", "unknown"), ("old", "found"), ("old", "unknown")}
    for run in runs:
        assert run["requests"] > 0 and run["socket_errors"] == 0
        assert run["status_errors"] == (run["requests"] if run["load"] == "unknown" else 0)
        # One GET per lookup (this binary batches last-use writes): within 1% of one
        # Redis command per lookup.
        assert 0.99 <= run["commands_per_lookup"] <= 1.01, run
        assert run["server_cpu_seconds"] > 0
    text = report.read_text()
    assert "## Key store lookups (no Envoy)" in text
    assert "| found | **new / old** |" in text
