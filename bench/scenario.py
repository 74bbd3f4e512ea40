"""What a scenario is: one Envoy configuration, the load sent to it, and the checks
that prove it does what its name says before it is measured.

Adding a scenario is one `Scenario(...)` in `scenarios.py`. Everything that depends on
the run (keys, tokens, the path of a .wasm, a fixture's address) is built from the
`BenchContext` passed to the scenario's functions, when (and only if) the scenario is
selected.
"""

from dataclasses import dataclass, field
from typing import Callable

from .load import Load

# The passes a scenario can take part in (see run.py).
THROUGHPUT = "throughput"  # interleaved rounds at concurrency 1: req/s, CPU, RSS
MEMORY = "memory"  # RSS idle and under load at the other concurrencies
CALLOUTS = "callouts"  # fetches through `callout_clusters` per concurrency
KEYSTORE = "keystore"  # no Envoy: the key store's lookups, new server against old (keystore.py)
ENVOY_PASSES = frozenset({THROUGHPUT, MEMORY, CALLOUTS})


@dataclass(frozen=True)
class Fixture:
    """A server some scenarios need besides the upstream: a JWKS endpoint, a key store.

    Started once per run on the load CPU, by `argv(ctx)`: a server that prints
    `listening on http://ADDR` first (the project's convention; `--listen
    127.0.0.1:0`). Every Envoy of a scenario that lists the fixture gets a STATIC
    cluster named `cluster` pointing at it; filters reach it through that name.
    """

    name: str
    cluster: str
    argv: Callable


@dataclass(frozen=True)
class Probe:
    """One request sent before measuring. A scenario whose probes fail is reported as
    failed and not measured: a filter that answers 401 to everything would look fast.

    `upstream_saw` maps request headers to the value the upstream must have received
    (None: must not have arrived); `response` does the same for the client's answer.
    The upstream only reflects the headers in `upstream.ECHOED`.
    """

    why: str
    headers: dict = field(default_factory=dict)
    status: int = 200
    upstream_saw: dict = field(default_factory=dict)
    response: dict = field(default_factory=dict)


def _no_filters(ctx) -> list:
    return []


def _plain_load(ctx) -> Load:
    return Load()


def _reaches_upstream(ctx) -> list:
    return [Probe("a plain request reaches the upstream")]


@dataclass(frozen=True)
class Scenario:
    """One Envoy configuration to measure.

    - `filters(ctx)`: the HTTP filters before the router (a list of filter dicts).
    - `load(ctx)`: the request wrk sends (`load.Load`).
    - `probes(ctx)`: the checks run before measuring (`Probe`s).
    - `fixtures`: servers it needs (`Fixture`s), started once and shared.
    - `callout_clusters`: clusters whose `upstream_rq_total` counts the filter's
      callouts (JWKS or key-store fetches), reported by the callouts pass.
    - `counters`: {label: Envoy stat} read after the throughput pass, so the report
      shows that e.g. a cached scenario hit its cache and a cold one did not.
    - `anchor`: the ratio to bare measured before (NOTES.md), shown for comparison.
    - `seconds`: the length of this scenario's memory and callout runs, when the pass's
      default is too short (a flood must last long enough to send its `limit`).
    - `any_status`: non-2xx answers under load are expected (a flood of unknown API
      keys gets 401s) and do not fail the scenario; socket errors still do.
    - `flood`: a run that sends ever new clients; the memory pass also records RSS
      halfway through it and after it, so the report shows whether memory stayed flat.
    - `default`: part of a run that names no scenarios; instruments for profiling
      (the host-call costs) run only when named with `--only`.
    """

    name: str
    what: str
    filters: Callable = _no_filters
    load: Callable = _plain_load
    probes: Callable = _reaches_upstream
    fixtures: tuple = ()
    callout_clusters: tuple = ()
    counters: dict = field(default_factory=dict)
    passes: frozenset = frozenset({THROUGHPUT, MEMORY})
    anchor: float = None
    seconds: int = None
    any_status: bool = False
    flood: bool = False
    default: bool = True

    def accepts(self, sample) -> bool:
        """Whether a measured run did what the scenario expects (see `any_status`)."""
        if self.any_status:
            return sample.requests > 0 and sample.socket_errors == 0
        return sample.clean


class Registry:
    """Scenarios in the order they are run and reported."""

    def __init__(self):
        self._scenarios = {}

    def add(self, scenario: Scenario) -> Scenario:
        if scenario.name in self._scenarios:
            raise ValueError(f"two scenarios named {scenario.name}")
        self._scenarios[scenario.name] = scenario
        return scenario

    def names(self) -> list:
        return list(self._scenarios)

    def all(self) -> list:
        return list(self._scenarios.values())

    def select(self, names=None) -> list:
        """The scenarios named (all defaults when `names` is empty), in registry order."""
        if not names:
            return [s for s in self._scenarios.values() if s.default]
        unknown = [n for n in names if n not in self._scenarios]
        if unknown:
            raise KeyError(f"unknown scenario(s): {', '.join(unknown)}; "
                           f"known: {', '.join(self._scenarios)}")
        return [s for s in self._scenarios.values() if s.name in names]
