"""`make bench`: wasmgate's filters against bare Envoy and Envoy's native filters.

Each scenario (`scenarios.py`) is its own Envoy (`--concurrency 1`, pinned to one
CPU) in front of a cheap upstream; wrk, pinned with the upstream to another CPU,
loads the scenarios in interleaved rounds, and every ratio is taken against `bare`
from the same round. `run.py` holds the passes (throughput, memory, callouts),
`report.py` writes BENCHMARKS.md. It measures; it does not test behaviour (the e2e
suite does) beyond the probes that prove each scenario does what its name says.

The Envoy driver, process handling and config builders are the e2e harness's
(`tests/e2e/harness`), imported from there rather than copied.
"""

import sys
from pathlib import Path

_HARNESS = Path(__file__).resolve().parent.parent / "tests" / "e2e"
if str(_HARNESS) not in sys.path:
    sys.path.insert(0, str(_HARNESS))
