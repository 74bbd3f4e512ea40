"""The performance targets of issue 8 (P1-P5) and issue 12 (G1-G4), evaluated on a
run's results.

Each target names the scenarios it compares and its threshold; `evaluate` turns a
run's results into rows (target, measured, verdict) for BENCHMARKS.md. A target whose
scenarios were not measured (a subset run, a failed scenario) says so instead of a
verdict. Thresholds are the issue's; how each is measured is written next to it, so
that the table can be read without this file.
"""

from dataclasses import dataclass

from .run import BASELINE, FLOOR, median_range, paired_ratios

MIB = 1024 * 1024

# P1: each filter's hot path costs at most this many times the wasm floor's added
# Envoy CPU per request.
P1_FILTERS = ("headers", "jwt-rs256-cached", "jwt-es256-cached", "api-key", "rate-limit")
P1_LIMIT = 1.25
# P2: (scenario, the native chain, at least).
P2_PAIRS = (("combined-jwt", "native-chain", 0.9), ("chain-jwt", "native-chain", 0.65))
# P3: (wasm cold path, native cold path, at most, stretch).
P3_PAIRS = (("jwt-rs256-cold", "native-jwt-rs256-cold", 8.0, 3.0),
            ("jwt-es256-cold", "native-jwt-es256-cold", 5.0, 2.0))
# P4: (scenario, concurrency, most MiB above bare's loaded RSS).
P4_BUDGETS = (("all-four", 2, 60.0), ("combined-all", 2, 40.0))
# P4, floods: "flat" means RSS grew by at most this much over the second half of the
# flood (by then the bounded tables are full; what still grows would be a leak).
P4_FLAT_MIB = 2.0
P4_FLOODS = ("rate-limit-flood", "rate-limit-flood-held", "api-key-flood")
# P5: (scenario, callout cluster): one fetch per Envoy at every concurrency.
P5_FETCHES = (("jwt-rs256-cached", "jwks"),)


# G1: (wasmgate's exact tier, Envoy's ratelimit filter on the same service, at most):
# the client's added p50 and p99 latency. Like for like first: a rule with the global
# tier only (the native filter has no local limit); then the same tier after a rule's
# local bucket (the native filter has no counterpart of that bucket).
G1_PAIRS = (("rate-limit-global-exact", "native-ratelimit", 1.3),
            ("rate-limit-exact", "native-ratelimit", 1.3))
# G2: (the lease tier, the local tier alone, at most): added Envoy CPU per request. A
# rule with a lease tier after its local bucket, and a rule with the lease tier only.
G2_PAIRS = (("rate-limit-lease", "rate-limit", 1.1),
            ("rate-limit-global-lease", "rate-limit", 1.1))
# G3, G4: the fleet pass.
FLEET_SCENARIO = "fleet-accuracy"


@dataclass
class Row:
    code: str
    target: str
    measured: str
    verdict: str  # "met", "missed", "met (stretch too)", "not measured"


def _median(values):
    stats = median_range(values)
    return None if stats is None else stats[0]


def _added_us(figures, name):
    r = figures.results.get(name)
    if not (r and r.samples and not r.failure):
        return None
    stats = figures.added_cpu_us(r)
    return None if stats is None else stats[0]


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def p1(figures) -> list:
    floor = _added_us(figures, FLOOR)
    rows = []
    for name in P1_FILTERS:
        target = f"`{name}` hot path ≤ {P1_LIMIT}× the wasm floor's added cost"
        added = _added_us(figures, name)
        if added is None or not floor or floor <= 0:
            rows.append(Row("P1", target, "–", "not measured"))
            continue
        ratio = added / floor
        rows.append(Row("P1", target, f"{ratio:.2f}× ({added:+.1f} µs against {floor:+.1f} µs)",
                        _verdict(ratio <= P1_LIMIT)))
    return rows


def _throughput_ratio(figures, name, other):
    """Per round, `name`'s throughput over `other`'s: by Envoy CPU per request (other's
    µs/req over name's) and by req/s. Medians, or None."""
    a, b = figures.results.get(name), figures.results.get(other)
    if not (a and b and a.samples and b.samples) or a.failure or b.failure:
        return None
    by_cpu = _median(paired_ratios(a.samples, b.samples,
                                   lambda s: 1 / s.cpu_us_per_request
                                   if s.cpu_us_per_request else None))
    by_rps = _median(paired_ratios(a.samples, b.samples))
    return by_cpu, by_rps


def p2(figures) -> list:
    rows = []
    for name, other, least in P2_PAIRS:
        target = f"`{name}` ≥ {least}× `{other}`'s throughput"
        ratios = _throughput_ratio(figures, name, other)
        if ratios is None or ratios[0] is None:
            rows.append(Row("P2", target, "–", "not measured"))
            continue
        by_cpu, by_rps = ratios
        rows.append(Row("P2", target, f"{by_cpu:.2f}× by CPU ({by_rps:.2f}× by req/s)",
                        _verdict(by_cpu >= least)))
    return rows


def p3(figures) -> list:
    rows = []
    for name, native, most, stretch in P3_PAIRS:
        target = (f"`{name}` added cost ≤ {most:g}× `{native}`'s (stretch {stretch:g}×)")
        ours, theirs = _added_us(figures, name), _added_us(figures, native)
        if ours is None or not theirs or theirs <= 0:
            rows.append(Row("P3", target, "–", "not measured"))
            continue
        ratio = ours / theirs
        verdict = ("met (stretch too)" if ratio <= stretch else _verdict(ratio <= most))
        rows.append(Row("P3", target, f"{ratio:.1f}× ({ours:+.1f} µs against {theirs:+.1f} µs)",
                        verdict))
    return rows


def p4(results: dict) -> list:
    rows = []
    base = results.get(BASELINE)
    for name, concurrency, budget in P4_BUDGETS:
        target = f"`{name}` at concurrency {concurrency} ≤ bare + {budget:g} MiB RSS (loaded)"
        r = results.get(name)
        loaded = r.rss_loaded.get(concurrency) if r and not r.failure else None
        base_loaded = base.rss_loaded.get(concurrency) if base else None
        if not (loaded and base_loaded):
            rows.append(Row("P4", target, "–", "not measured"))
            continue
        delta = (loaded - base_loaded) / MIB
        rows.append(Row("P4", target, f"{delta:+.1f} MiB", _verdict(delta <= budget)))
    for name in P4_FLOODS:
        r = results.get(name)
        target = (f"`{name}`: RSS flat (≤ +{P4_FLAT_MIB:g} MiB over the flood's second half)")
        if not (r and r.rss_after and not r.failure):
            rows.append(Row("P4", target, "–", "not measured"))
            continue
        growth = {c: (r.rss_after[c] - r.rss_mid[c]) / MIB
                  for c in sorted(r.rss_after) if r.rss_mid.get(c)}
        text = ", ".join(f"{g:+.1f} MiB at c{c}" for c, g in growth.items())
        rows.append(Row("P4", target, text or "–",
                        _verdict(all(g <= P4_FLAT_MIB for g in growth.values()))
                        if growth else "not measured"))
    return rows


def p5(results: dict) -> list:
    rows = []
    for name, cluster in P5_FETCHES:
        target = f"`{name}`: one fetch through `{cluster}` per Envoy, at every concurrency"
        r = results.get(name)
        counts = {c: seen.get(cluster) for c, seen in sorted(r.callouts.items())} if r else {}
        if not counts or r.failure:
            rows.append(Row("P5", target, "–", "not measured"))
            continue
        text = ", ".join(f"{n} at c{c}" for c, n in counts.items())
        rows.append(Row("P5", target, text, _verdict(all(n == 1 for n in counts.values()))))
    return rows


def _ok(r) -> bool:
    return bool(r and r.samples and not r.failure)


def g1(figures) -> list:
    return [row for pair in G1_PAIRS for row in _g1(figures, *pair)]


def _g1(figures, ours_name, theirs_name, most) -> list:
    rows = []
    for percentile in ("p50", "p99"):
        target = (f"`{ours_name}` added {percentile} latency ≤ {most:g}× `{theirs_name}`'s")
        ours, theirs = figures.results.get(ours_name), figures.results.get(theirs_name)
        if not (_ok(ours) and _ok(theirs)):
            rows.append(Row("G1", target, "–", "not measured"))
            continue
        a, b = (figures.added_latency_us(r, percentile) for r in (ours, theirs))
        if a is None or b is None or b[0] <= 0:
            rows.append(Row("G1", target, "–", "not measured"))
            continue
        ratio = a[0] / b[0]
        rows.append(Row("G1", target, f"{ratio:.2f}× ({a[0]:+.0f} µs against {b[0]:+.0f} µs)",
                        _verdict(ratio <= most)))
    return rows


def g2(figures) -> list:
    return [row for pair in G2_PAIRS for row in _g2(figures, *pair)]


def _g2(figures, name, other, most) -> list:
    target = f"`{name}` added cost ≤ {most:g}× `{other}`'s (Envoy CPU per request)"
    ours, theirs = _added_us(figures, name), _added_us(figures, other)
    if ours is None or not theirs or theirs <= 0:
        return [Row("G2", target, "–", "not measured")]
    ratio = ours / theirs
    return [Row("G2", target, f"{ratio:.2f}× ({ours:+.1f} µs against {theirs:+.1f} µs)",
                _verdict(ratio <= most))]


def g3_g4(results: dict) -> list:
    r = results.get(FLEET_SCENARIO)
    rows = []
    for code, mode, target in (
            ("G3", "exact", "`exact`: 1-3 gateways admit exactly the limit"),
            ("G4", "lease", "`lease`: 1-3 gateways admit at most the limit, at least the "
                            "limit less two leases per gateway")):
        found = [row for row in (r.fleet if r and not r.failure else []) if row["mode"] == mode]
        if not found:
            rows.append(Row(code, target, "–", "not measured"))
            continue
        text = ", ".join(f"{row['admitted']}/{row['limit']} at {row['gateways']}" for row in found)
        if mode == "exact":
            ok = all(row["admitted"] == row["limit"] for row in found)
        else:
            ok = all(row["limit"] - row["bound"] <= row["admitted"] <= row["limit"]
                     for row in found)
        rows.append(Row(code, target, text, _verdict(ok)))
    return rows


def evaluate(figures) -> list:
    """Every target's row, in the issues' order."""
    return [*p1(figures), *p2(figures), *p3(figures), *p4(figures.results),
            *p5(figures.results), *g1(figures), *g2(figures), *g3_g4(figures.results)]
