"""Which CPU runs what, and what a process consumed.

The measured Envoy gets one CPU to itself; wrk and the upstream share another, so the
load generator never steals cycles from the thing being measured (other processes on
the machine still may: see BENCHMARKS.md). On a one-CPU machine nothing is pinned.

Envoy's CPU time comes from the kernel's per-thread scheduler statistics
(`/proc/PID/task/*/schedstat`, nanoseconds), and its memory from `VmRSS`: both are
read from outside, so measuring costs Envoy nothing.
"""

import os
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Placement:
    envoy_cpu: int = None  # None: not pinned
    load_cpu: int = None

    @classmethod
    def choose(cls, envoy_cpu: int = None, load_cpu: int = None) -> "Placement":
        """The first two CPUs this process may use (or the ones asked for)."""
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            return cls()
        return cls(allowed[0] if envoy_cpu is None else envoy_cpu,
                   allowed[1] if load_cpu is None else load_cpu)

    def describe(self) -> str:
        if self.envoy_cpu is None:
            return "not pinned (fewer than two CPUs)"
        return f"Envoy on CPU {self.envoy_cpu}; wrk and the upstream on CPU {self.load_cpu}"


def pinned(cpu, argv: list) -> list:
    """`argv` run under `taskset -c cpu` (taskset execs, so the pid stays the program's)."""
    return list(argv) if cpu is None else ["taskset", "-c", str(cpu), *map(str, argv)]


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by every thread of `pid`."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a thread that just exited
    return total / 1e9


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples `pid`'s RSS every `interval` seconds while in use; `.peak` is the
    highest seen, `.last` the final reading."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        try:
            self.last = rss_bytes(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            return
        self.peak = max(self.peak, self.last)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
