"""The load generator: wrk, pinned to the load CPU, driven by `lua/load.lua`.

A `Load` says what each request looks like: a path, headers sent on every request,
and optionally one header whose value changes per request, either cycling through a
file of values (`Rotate`: pre-minted tokens, API keys) or unique per request
(`Distinct`: client ids for the rate-limit and API-key floods, with an optional total
`limit` at which wrk stops). `run_wrk` runs one measurement and returns what wrk
counted; it is bounded in time (wrk's `-d` plus a margin) and always reaps wrk.
"""

import json
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.process import spawn, stop_process
from harness.wait import wait_for

from .cpus import pinned

LUA_SCRIPT = Path(__file__).parent / "lua" / "load.lua"

DEFAULT_PATH = "/api/v1/items/42"
# What a typical API client sends; every scenario starts from these.
CLIENT_HEADERS = {
    "user-agent": "wasmgate-bench/1 (wrk)",
    "accept": "application/json",
}


@dataclass(frozen=True)
class Rotate:
    """`header` takes the next line of `values_file` (with `prefix`) on each request;
    `header=":path"`: the request path does (the key store's lookups)."""

    header: str
    values_file: Path
    prefix: str = ""


@dataclass(frozen=True)
class Distinct:
    """`header` is `prefix<thread>-<n>`, a new value on every request; when `limit` is
    set, the run ends once about `limit` requests were answered (or at its duration,
    whichever comes first)."""

    header: str
    prefix: str = ""
    limit: int = None


@dataclass(frozen=True)
class Load:
    path: str = DEFAULT_PATH
    method: str = "GET"
    headers: dict = field(default_factory=dict)
    rotate: Rotate = None
    distinct: Distinct = None

    def all_headers(self) -> dict:
        return {**CLIENT_HEADERS, **self.headers}


@dataclass
class LoadResult:
    """What wrk measured in one run."""

    requests: int
    seconds: float
    status_errors: int  # responses that were not 2xx/3xx
    socket_errors: int  # connect, read, write errors and timeouts
    latency_p50_us: int
    latency_p99_us: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def clean(self) -> bool:
        """Every request got a 2xx/3xx answer: the scenario measured what it claims
        (a 401 storm would look fast)."""
        return self.requests > 0 and self.status_errors == 0 and self.socket_errors == 0


class LoadError(RuntimeError):
    pass


def _lua(value) -> str:
    """A Python value as a Lua literal (strings must be printable ASCII)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (str, Path)):
        text = str(value)
        if not all(32 <= ord(c) < 127 for c in text):
            raise ValueError(f"not printable ASCII: {text!r}")
        return json.dumps(text)  # JSON escapes of printable ASCII are valid Lua
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def write_script(load: Load, threads: int, path: Path, marks: Path) -> Path:
    """The wrk script for `load`: the `bench` table, then lua/load.lua. Threads that
    reach a `Distinct` limit leave a file in `marks`."""
    spec = {
        "method": load.method,
        "path": load.path,
        "headers": load.all_headers(),
        "threads": threads,
        "marks": str(marks),
        "rotate": None if load.rotate is None else {
            "header": load.rotate.header, "file": str(load.rotate.values_file),
            "prefix": load.rotate.prefix},
        "distinct": None if load.distinct is None else {
            "header": load.distinct.header, "prefix": load.distinct.prefix,
            "limit": load.distinct.limit},
    }
    spec = {k: v for k, v in spec.items() if v is not None}
    path.write_text(f"bench = {_lua(spec)}\n\n{LUA_SCRIPT.read_text()}")
    return path


def _interrupt_when_done(proc, marks: Path, threads: int, seconds: int):
    """Once every thread has reached its share of a limit, SIGINT ends wrk's sleep: it
    then reports as at the end of its duration."""
    try:
        wait_for(lambda: proc.poll() is not None or len(list(marks.iterdir())) >= threads,
                 seconds + 10, "wrk threads to reach their limit", interval=0.05)
    except TimeoutError:
        return  # wrk ends by itself at -d
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)


def run_wrk(url: str, load: Load, *, seconds: int, connections: int, threads: int,
            cpu, workdir: Path, name: str) -> LoadResult:
    """One wrk run of `seconds` (whole seconds: wrk takes no fractions) against `url`
    (the path comes from `load`)."""
    if not isinstance(seconds, int) or seconds < 1:
        raise ValueError(f"wrk runs last a whole number of seconds, not {seconds!r}")
    marks = Path(workdir) / f"{name}.marks"
    marks.mkdir(parents=True, exist_ok=True)
    script = write_script(load, threads, Path(workdir) / f"{name}.lua", marks)
    argv = pinned(cpu, ["wrk", "-t", str(threads), "-c", str(connections),
                        "-d", f"{seconds}s", "--timeout", "5s",
                        "-s", str(script), url])
    log_file = Path(workdir) / f"{name}.wrk.log"
    proc = spawn(argv, log_file, stdout=subprocess.PIPE)
    try:
        if load.distinct is not None and load.distinct.limit:
            _interrupt_when_done(proc, marks, threads, seconds)
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise LoadError(f"wrk did not finish within {seconds + 30:.0f}s: {' '.join(argv)}") from None
    text = out.decode(errors="replace")
    with open(log_file, "a") as log:
        log.write(text)
    for line in text.splitlines():
        if line.startswith("BENCH-RESULT "):
            raw = json.loads(line.split(" ", 1)[1])
            return LoadResult(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                status_errors=raw["status_errors"],
                socket_errors=(raw["connect_errors"] + raw["read_errors"] + raw["write_errors"]
                               + raw["timeouts"]),
                latency_p50_us=raw["latency_p50_us"],
                latency_p99_us=raw["latency_p99_us"],
            )
    raise LoadError(f"wrk exited with {proc.returncode} and no result; see {log_file}")
