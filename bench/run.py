"""The passes of a bench run, and what each sample records.

1. **throughput**: every selected scenario gets its own Envoy (`--concurrency 1`),
   all started up front and probed; then `rounds` rounds, each loading every scenario
   once for `seconds` (order reversed on odd rounds, so slow drift of the machine
   does not always favour the same scenarios), with `bare` loaded again before every
   `bare_every` scenarios: each scenario is compared with the `bare` run nearest to it
   in time, not one minutes away. Each sample records wrk's count and latency, Envoy's
   CPU time (so a loaded machine shows up as lower CPU use, not as a cheaper filter),
   the share of Envoy's CPU other processes took, and peak RSS.
2. **memory**: for each other concurrency asked (2 by default; and 1 for scenarios
   that take no part in the throughput pass, such as a flood), each scenario is
   started alone, probed, sampled idle, loaded for `memory_seconds`, sampled; a flood
   also halfway through its run and after it.
3. **callouts**: scenarios with `callout_clusters` run at each concurrency asked;
   the clusters' `upstream_rq_total` are the fetches (JWKS, key store) Envoy made.
4. **fleet**: 1 to 3 gateways sharing one limit through the rate-limit service, per
   mode of the rate-limit filter: what is admitted against the limit (`fleet.py`).
5. **service**: wasmgate-ratelimit alone, without Envoy (`service.py`): decisions per
   second and per core, Redis commands per admitted hit.
6. **keystore**: the key store alone, new server against old (bench/keystore.py).
7. **upstreams** (optional): bare and the wasm floor against both kinds of upstream,
   interleaved, to show which one keeps Envoy the bottleneck.

Everything started is stopped when the run ends, however it ends.
"""

import contextlib
import http.client
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.bootstrap import bootstrap, cluster, http_listener, route
from harness.envoy import EnvoyFailedToStart

from .context import BenchContext
from .cpus import Placement, RssSampler, cpu_seconds, rss_bytes
from .load import CLIENT_HEADERS, Load, LoadError, run_wrk
from .fleet import fleet_run
from .pinned_envoy import PinnedEnvoy
from .keystore import KeystoreBench
from .scenario import CALLOUTS, FLEET, KEYSTORE, MEMORY, SERVICE, THROUGHPUT, Scenario
from .service import service_run
from .upstream import start_upstream

HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}

# `--release-memory`: Envoy's bootstrap tells tcmalloc to hand free pages back (issue 17,
# item 3; measured not to pay, so not in the shipped configs: BENCHMARKS.md, Findings).
RELEASE_MEMORY = {"bytes_to_release": 134217728, "memory_release_interval": "1s"}

BASELINE = "bare"
FLOOR = "wasm-floor"


@dataclass
class Settings:
    mode: str  # "full", "quick" or "custom" (what the report says)
    rounds: int
    seconds: int  # wrk's -d: whole seconds
    warmup: int
    connections: int
    threads: int
    upstream: str
    memory_concurrency: tuple
    memory_seconds: int
    callout_concurrency: tuple
    callout_seconds: int
    compare_upstreams: bool
    only: tuple = ()
    bare_every: int = 0  # load `bare` again before every N scenarios of a round (0: once)
    keystore_old: str = None  # the old key store binary to compare with (None: build it)
    # Every measured Envoy hands freed memory back (`RELEASE_MEMORY`); the shipped configs
    # do not.
    release_memory: bool = False


@dataclass
class Sample:
    """One measured wrk run against one Envoy."""

    round: int
    requests: int
    seconds: float
    envoy_cpu_seconds: float
    others_cpu_share: float  # of the Envoy CPU's time, taken by other processes (None: unpinned)
    load_cpu_share: float  # the load CPU's time spent busy (wrk, upstream, others; None: unpinned)
    latency_p50_us: int
    latency_p99_us: int
    status_errors: int
    socket_errors: int
    rss_peak: int
    started: float = None  # time.time() when the run began (pairs it with the nearest bare)
    rss_mid: int = None  # RSS halfway through the run
    rss_last: int = None  # RSS when the run had ended

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.envoy_cpu_seconds * 1e6 / self.requests if self.requests else 0.0

    @property
    def envoy_cpu_share(self) -> float:
        return self.envoy_cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def clean(self) -> bool:
        return self.requests > 0 and self.status_errors == 0 and self.socket_errors == 0


@dataclass
class ScenarioResult:
    name: str
    what: str
    anchor: float = None
    failure: str = None
    samples: list = field(default_factory=list)
    rss_idle: dict = field(default_factory=dict)  # concurrency -> bytes
    rss_loaded: dict = field(default_factory=dict)  # concurrency -> bytes (peak)
    rss_mid: dict = field(default_factory=dict)  # concurrency -> bytes halfway (floods)
    rss_after: dict = field(default_factory=dict)  # concurrency -> bytes after the run (floods)
    counters: dict = field(default_factory=dict)  # label -> value after the throughput pass
    callouts: dict = field(default_factory=dict)  # concurrency -> {cluster: fetches, "requests": n}
    fleet: list = field(default_factory=list)  # one dict per (mode, gateways): see fleet.py
    service: dict = None  # the service pass's runs (service.py)
    upstream: str = None
    keystore: list = field(default_factory=list)  # KeystoreSample.as_dict() per run

    def fail(self, reason: str):
        self.failure = self.failure or reason


class ProbeFailed(RuntimeError):
    pass


class CpuWatch:
    """Time one CPU spent running processes (from /proc/stat); minus Envoy's own
    time over the same run, what other processes took from it."""

    def __init__(self, cpu):
        self.cpu = cpu

    def busy_seconds(self) -> float:
        if self.cpu is None:
            return 0.0
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith(f"cpu{self.cpu} "):
                    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
                        int(v) for v in line.split()[1:9])
                    # Interrupt time is left out: much of it is the loopback traffic of
                    # the measurement itself, not another process.
                    return (user + nice + system + steal) / 100.0  # USER_HZ is 100 on Linux
        return 0.0


class Bench:
    def __init__(self, settings: Settings, workdir: Path, placement: Placement = None,
                 say=print):
        self.settings = settings
        began = time.monotonic()
        self.say = lambda text: say(f"bench: [{time.monotonic() - began:5.0f}s] {text}",
                                    flush=True)
        self.workdir = Path(workdir)
        self.placement = placement or Placement.choose()
        self.ctx = BenchContext(self.workdir, self.placement)
        self.cpu_watch = CpuWatch(self.placement.envoy_cpu)
        self.load_cpu_watch = CpuWatch(self.placement.load_cpu)
        self._stack = contextlib.ExitStack()
        self._envoys = 0
        self.upstream = None
        self.upstream_versions = {}
        self.upstream_comparison = {}  # label -> ScenarioResult
        self.started_at = None
        self.finished_at = None
        self.loadavg = {}

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self):
        self._stack.callback(self.ctx.stop)
        # A SIGTERM (make interrupted, CI timeout) unwinds like Ctrl-C, so every child
        # is stopped by the `finally`s rather than orphaned.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        self._stack.callback(signal.signal, signal.SIGTERM, previous)
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def _start_upstream(self, kind: str):
        upstream = start_upstream(kind, self.workdir / f"upstream-{kind}", self.placement.load_cpu)
        self._stack.callback(upstream.stop)
        self.upstream_versions[kind] = upstream.version()
        return upstream

    # --- one scenario's Envoy --------------------------------------------------------

    def gateway_config(self, scenario: Scenario, upstream) -> dict:
        clusters = [cluster("upstream", upstream.host, upstream.port)]
        for fixture in scenario.fixtures:
            service = self.ctx.fixture(fixture)
            extra = {"typed_extension_protocol_options": HTTP2} if fixture.http2 else {}
            clusters.append(cluster(fixture.cluster, service.host, service.port, **extra))
        listener = http_listener(
            "main", scenario.filters(self.ctx),
            [route("/", "upstream", name="default", **scenario.route_action)],
            # The same connection manager everywhere; PASS_THROUGH lets header rules
            # remove the upstream's `server` (Envoy would write its own afterwards).
            hcm_extra={"server_header_transformation": "PASS_THROUGH"})
        extra = {"memory_allocator_manager": RELEASE_MEMORY} if self.settings.release_memory else {}
        return bootstrap([listener], clusters, node_id="wasmgate-bench", **extra)

    def launch(self, scenario: Scenario, concurrency: int, upstream, result: ScenarioResult):
        """Starts and probes the scenario's Envoy; None (and `result.failure`) if it
        would not start or did not pass its probes."""
        self._envoys += 1
        name = f"{scenario.name}-c{concurrency}-{self._envoys}"
        envoy = None
        started = time.monotonic()
        try:
            config = self.gateway_config(scenario, upstream)
            envoy = PinnedEnvoy(config, self.workdir, cpu=self.placement.envoy_cpu,
                                concurrency=concurrency, name=name).start()
            self._stack.callback(envoy.stop)
            probes = scenario.probes(self.ctx)
            run_probes(envoy, probes, scenario.load(self.ctx))
            self.say(f"{name}: ready and {len(probes)} probe(s) passed in "
                     f"{time.monotonic() - started:.1f}s")
            return envoy
        except EnvoyFailedToStart as err:
            result.fail(f"Envoy did not start: {_last_lines(err.log)}")
        except ProbeFailed as err:
            result.fail(f"probe failed: {err}")
        except (FileNotFoundError, RuntimeError, OSError, ValueError) as err:
            result.fail(f"{type(err).__name__}: {err}")
        self.say(f"{name}: FAILED: {result.failure}")
        if envoy is not None:
            envoy.stop()
        return None

    def load_once(self, envoy, scenario: Scenario, seconds: int, label: str,
                  round_: int = -1) -> Sample:
        load = scenario.load(self.ctx)
        pid = envoy.pid
        started = time.time()
        with RssSampler(pid) as rss:
            busy0, cpu0 = self.cpu_watch.busy_seconds(), cpu_seconds(pid)
            load0 = self.load_cpu_watch.busy_seconds()
            result = run_wrk(envoy.url(load.path), load, seconds=seconds,
                             connections=self.settings.connections, threads=self.settings.threads,
                             cpu=self.placement.load_cpu, workdir=self.workdir,
                             name=f"{label}-r{round_}")
            busy1, cpu1 = self.cpu_watch.busy_seconds(), cpu_seconds(pid)
            load1 = self.load_cpu_watch.busy_seconds()
        envoy_cpu = cpu1 - cpu0
        others = load_share = None
        if self.placement.envoy_cpu is not None and result.seconds:
            others = max(0.0, (busy1 - busy0) - envoy_cpu) / result.seconds
            load_share = (load1 - load0) / result.seconds
        return Sample(round_, result.requests, result.seconds, envoy_cpu, others, load_share,
                      result.latency_p50_us, result.latency_p99_us, result.status_errors,
                      result.socket_errors, rss.peak, started, rss.at(0.5), rss.last)

    # --- passes ----------------------------------------------------------------------

    def run(self, scenarios: list) -> dict:
        """All passes; returns {name: ScenarioResult} in scenario order."""
        self.started_at = time.time()
        self.loadavg["start"] = _loadavg()
        self.upstream = self._start_upstream(self.settings.upstream)
        results = {s.name: ScenarioResult(s.name, s.what, s.anchor, upstream=self.upstream.kind)
                   for s in scenarios}
        by_name = {s.name: s for s in scenarios}

        measured = [s for s in scenarios if THROUGHPUT in s.passes]
        if measured:
            self.throughput_pass({s.name: (s, self.upstream) for s in measured}, results)
        # Concurrency 1 comes from the throughput pass, except for memory-only
        # scenarios (a flood), which run it here.
        for concurrency in sorted({1, *self.settings.memory_concurrency}):
            for s in scenarios:
                if MEMORY not in s.passes or results[s.name].failure:
                    continue
                if concurrency != 1 or THROUGHPUT not in s.passes:
                    self.memory_run(s, concurrency, results[s.name])
        for s in scenarios:
            if CALLOUTS in s.passes and s.callout_clusters:
                for concurrency in self.settings.callout_concurrency:
                    if not results[s.name].failure:
                        self.callout_run(s, concurrency, results[s.name])
        for s in scenarios:
            if FLEET in s.passes and not results[s.name].failure:
                fleet_run(self, s, results[s.name])
            if SERVICE in s.passes:
                try:
                    service_run(self, s, results[s.name])
                except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                    results[s.name].fail(f"service pass: {err}")
            if KEYSTORE in s.passes:
                self.keystore_pass(results[s.name])
        if self.settings.compare_upstreams and BASELINE in by_name:
            pair = [by_name[BASELINE]] + ([by_name[FLOOR]] if FLOOR in by_name else [])
            self.upstream_pass(pair)
        self.loadavg["end"] = _loadavg()
        self.finished_at = time.time()
        return results

    def throughput_pass(self, entries: dict, results: dict, rounds: int = None):
        """`entries`: {label: (scenario, upstream)}; one Envoy each, then the rounds."""
        rounds = self.settings.rounds if rounds is None else rounds
        live = {}
        for label, (scenario, upstream) in entries.items():
            result = results[label]
            envoy = self.launch(scenario, 1, upstream, result)
            if envoy is None:
                continue
            result.rss_idle[1] = rss_bytes(envoy.pid)
            try:
                warm = self.load_once(envoy, scenario, self.settings.warmup, f"{label}-warmup")
            except LoadError as err:
                result.fail(str(err))
                envoy.stop()
                continue
            if not scenario.accepts(warm):
                result.fail(f"warm-up run was not clean: {warm.status_errors} non-2xx answers, "
                            f"{warm.socket_errors} socket errors in {warm.requests} requests")
                envoy.stop()
                continue
            live[label] = (envoy, scenario)
        labels = list(live)
        for round_ in range(rounds):
            order = labels if round_ % 2 == 0 else labels[::-1]
            for label in self._with_baselines(order, entries):
                envoy, scenario = live[label]
                try:
                    sample = self.load_once(envoy, scenario, self.settings.seconds, label, round_)
                except LoadError as err:
                    results[label].fail(str(err))
                    continue
                results[label].samples.append(sample)
                self.say(f"round {round_ + 1}/{rounds} {label}: "
                         f"{sample.rps:,.0f} req/s, Envoy {sample.cpu_us_per_request:.1f} µs/req, "
                         f"{sample.envoy_cpu_share:.0%} CPU"
                         + ("" if scenario.accepts(sample) else " (NOT CLEAN)"))
        for label, (envoy, scenario) in live.items():
            result = results[label]
            result.rss_loaded[1] = max((s.rss_peak for s in result.samples), default=0)
            if scenario.counters:
                stats = envoy.stats()
                result.counters = {k: stats.get(v) for k, v in scenario.counters.items()}
            bad = [s for s in result.samples if not scenario.accepts(s)]
            if bad:
                result.fail(f"{len(bad)} of {len(result.samples)} runs had non-2xx answers or "
                            f"socket errors ({sum(s.status_errors for s in bad)} / "
                            f"{sum(s.socket_errors for s in bad)})")
            envoy.stop()

    def _with_baselines(self, order: list, entries: dict) -> list:
        """`order` with the baseline's label also before every `bare_every` others."""
        every = self.settings.bare_every
        base = [label for label in order if entries[label][0].name == BASELINE]
        if every <= 0 or len(base) != 1:
            return order
        others = [label for label in order if label != base[0]]
        out = []
        for i, label in enumerate(others):
            if i % every == 0:
                out.append(base[0])
            out.append(label)
        return out or base

    def single_run(self, scenario: Scenario, concurrency: int, seconds: int, purpose: str,
                   result: ScenarioResult, before=None, after=None):
        """The scenario's Envoy alone at `concurrency`: started, probed, `before(envoy)`,
        loaded once for `seconds`, `after(envoy, sample)`, stopped."""
        envoy = self.launch(scenario, concurrency, self.upstream, result)
        if envoy is None:
            return
        # A quick run only checks that the harness works: a flood does not run to its end.
        if scenario.seconds and self.settings.mode != "quick":
            seconds = scenario.seconds
        try:
            if before:
                before(envoy)
            sample = self.load_once(envoy, scenario, seconds,
                                    f"{scenario.name}-{purpose}-c{concurrency}")
            if after:
                after(envoy, sample)
            if not scenario.accepts(sample):
                result.fail(f"{purpose} run at concurrency {concurrency} was not clean: "
                            f"{sample.status_errors} non-2xx answers, {sample.socket_errors} "
                            f"socket errors in {sample.requests} requests")
        except LoadError as err:
            result.fail(str(err))
        finally:
            envoy.stop()

    def memory_run(self, scenario: Scenario, concurrency: int, result: ScenarioResult):
        def idle(envoy):
            result.rss_idle[concurrency] = rss_bytes(envoy.pid)

        def loaded(envoy, sample):
            result.rss_loaded[concurrency] = sample.rss_peak
            if scenario.flood:
                result.rss_mid[concurrency] = sample.rss_mid
                result.rss_after[concurrency] = sample.rss_last

        self.single_run(scenario, concurrency, self.settings.memory_seconds, "memory", result,
                        before=idle, after=loaded)

    def callout_run(self, scenario: Scenario, concurrency: int, result: ScenarioResult):
        def count(envoy, sample):
            fetched = {c: envoy.stat(f"cluster.{c}.upstream_rq_total")
                       for c in scenario.callout_clusters}
            result.callouts[concurrency] = {**fetched, "requests": sample.requests}

        self.single_run(scenario, concurrency, self.settings.callout_seconds, "callouts", result,
                        after=count)

    def keystore_pass(self, result: ScenarioResult):
        try:
            with KeystoreBench(self.settings, self.placement, self.workdir, self.say,
                               self.settings.keystore_old) as keystore:
                samples = keystore.run()
        except (RuntimeError, OSError, LoadError, subprocess.SubprocessError) as err:
            result.fail(f"{type(err).__name__}: {err}")
            return
        result.keystore = [s.as_dict() for s in samples]
        bad = [s for s in samples if not s.clean]
        if bad:
            result.fail(f"{len(bad)} of {len(samples)} key store runs had unexpected answers "
                        f"or socket errors")

    def upstream_pass(self, scenarios: list, rounds: int = 3):
        """The given scenarios against each kind of upstream, interleaved, for at most
        `rounds` rounds (enough to see which upstream limits Envoy)."""
        upstreams = {self.upstream.kind: self.upstream}
        for kind in ("nginx", "envoy"):
            if kind not in upstreams:
                upstreams[kind] = self._start_upstream(kind)
        entries, results = {}, {}
        for kind, upstream in upstreams.items():
            for s in scenarios:
                label = f"{s.name}@{kind}"
                entries[label] = (s, upstream)
                results[label] = ScenarioResult(s.name, s.what, upstream=kind)
        self.throughput_pass(entries, results, min(rounds, self.settings.rounds))
        self.upstream_comparison = results


def run_probes(envoy, probes: list, load: Load):
    """Sends each probe to the Envoy; raises ProbeFailed on the first wrong answer."""
    for probe in probes:
        status, headers = _request(envoy.port(), load.path, {**CLIENT_HEADERS, **probe.headers})
        problems = []
        if status != probe.status:
            problems.append(f"status {status}, expected {probe.status}")
        for name, want in probe.upstream_saw.items():
            got = headers.get(f"x-saw-{name}")
            if got != want:
                problems.append(f"upstream received {name}: {got!r}, expected {want!r}")
        for name, want in probe.response.items():
            got = headers.get(name)
            if got != want:
                problems.append(f"response {name}: {got!r}, expected {want!r}")
        if problems:
            raise ProbeFailed(f"{probe.why}: {'; '.join(problems)}")


def _request(port: int, path: str, headers: dict):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-600:]


def median_range(values: list):
    """(median, min, max) of `values`, or None when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def partner(sample, baseline: list):
    """The baseline sample of the same round nearest in time to `sample` (the round's
    only one when the samples carry no time), or None."""
    if any(b is sample for b in baseline):
        return sample
    same_round = [b for b in baseline if b.round == sample.round]
    if not same_round:
        return None
    if sample.started is None or any(b.started is None for b in same_round):
        return same_round[0]
    return min(same_round, key=lambda b: abs(b.started - sample.started))


def paired_ratios(samples: list, baseline: list, value=lambda s: s.rps) -> list:
    """value(sample) / value(its baseline partner), for every sample that has one."""
    ratios = []
    for s in samples:
        b = partner(s, baseline)
        if b is not None and value(b) and value(s) is not None:
            ratios.append(value(s) / value(b))
    return ratios


def paired_differences(samples: list, baseline: list, value) -> list:
    differences = []
    for s in samples:
        b = partner(s, baseline)
        if b is not None:
            differences.append(value(s) - value(b))
    return differences
