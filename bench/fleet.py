"""The fleet pass: how many requests one limit admits when 1, 2 or 3 gateways share it.

One Redis and two `wasmgate-ratelimit` replicas on it (the e2e harness's own,
harness/ratelimit_service.py); for each mode and gateway count, that many Envoys
(`--concurrency 2`, unpinned: this pass counts, it does not time) with one rule of
`LIMIT` requests a minute per tenant, and a burst of `OFFERED` requests for one tenant
spread over them. `local` is today's per-instance bucket (each gateway admits the
whole limit); `exact` asks the service about every request; `lease` spends leases of
`LEASE_SIZE`. Each row records what was admitted, refused and failed, and what Redis
counted once every lease was settled.
"""

import contextlib
import time

from harness.bootstrap import wasm_filter
from harness.envoy import Envoy
from harness.global_tier import burst, gateway_config, ratelimit_cluster
from harness.process import Service
from harness.ratelimit_service import RedisTcp, start_ratelimit
from harness.wait import wait_for

MODES = ("local", "exact", "lease")
GATEWAY_COUNTS = (1, 2, 3)
LIMIT = 100
OFFERED = 3 * LIMIT
LEASE_SIZE = 10
LEASE_PERIOD = "1s"

LIMITS = f"""
domain: wasmgate
descriptors:
  - key: rule
    value: fleet
    descriptors:
      - key: x-tenant-id
        rate_limit: {{name: per-tenant, unit: minute, requests_per_unit: {LIMIT}}}
"""


def policy(mode: str) -> dict:
    """The filter of every gateway in `mode`: a local bucket of the limit itself (local),
    or one that never limits plus the global tier."""
    rule = {"name": "fleet", "match": {"prefix": "/"}}
    if mode == "local":
        rule["limits"] = [{"name": "per-tenant", "requests": LIMIT, "per": "1m"}]
    else:
        rule["limits"] = [{"name": "local", "requests": 1_000_000, "per": "1m"}]
        rule["global"] = {"mode": mode, "cluster": "ratelimit", "timeout": "1s",
                          "failure_mode": "deny", "identity": [{"header": "x-tenant-id"}]}
        if mode == "lease":
            rule["global"]["lease"] = {"size": LEASE_SIZE, "period": LEASE_PERIOD}
    return {"table": {"slots": 1024, "lease_slots": 256},
            "identity": [{"header": "x-tenant-id"}], "rules": [rule]}


def bound(mode: str, gateways: int):
    """The most a mode may hold back (lease: two leases per gateway), or None."""
    return gateways * 2 * LEASE_SIZE if mode == "lease" else None


def fleet_run(bench, scenario, result):
    workdir = bench.workdir / "fleet"
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        def start_service(argv, name, env=None):
            service = Service(argv, name, workdir, env=env)
            stack.callback(service.stop)
            return service.start()

        try:
            redis = RedisTcp(workdir, "fleet-redis").start()
            stack.callback(redis.stop)
            limits = workdir / "limits.yaml"
            limits.write_text(LIMITS)
            replicas = [start_ratelimit(start_service, limits, redis.url,
                                        name=f"fleet-ratelimit{i}",
                                        extra_args=["--redis-timeout", "500ms"])
                        for i in range(2)]
        except (RuntimeError, OSError, TimeoutError) as err:
            result.fail(f"fleet: {type(err).__name__}: {err}")
            return
        cluster = ratelimit_cluster("ratelimit", [("127.0.0.1", r.port) for r in replicas])
        wasm = bench.ctx.wasm("rate-limit")
        for mode in MODES:
            config = gateway_config([wasm_filter(wasm, policy(mode), name="rate-limit")],
                                    [cluster])
            for gateways in GATEWAY_COUNTS:
                row = _one(bench, workdir, redis, config, mode, gateways, result)
                if row is None:
                    return
                result.fleet.append(row)
                bench.say(f"fleet {mode} × {gateways}: {row['admitted']} of {OFFERED} admitted "
                          f"(limit {LIMIT}), Redis counted {row['counted']}")


def _one(bench, workdir, redis, config, mode: str, gateways: int, result):
    tenant = f"fleet-{mode}-{gateways}-{int(time.time())}"
    envoys = []
    try:
        for i in range(gateways):
            envoys.append(Envoy(config, workdir, concurrency=2, log_level="warning",
                                name=f"fleet-{mode}-{gateways}-{i}").start())
        answers = burst([e.port() for e in envoys], "/orders", {"x-tenant-id": tenant},
                        OFFERED, concurrency=16)
        counts = {}
        for answer in answers:
            counts[answer.status] = counts.get(answer.status, 0) + 1

        def counted():
            return sum(v for k, v in redis.counters().items() if tenant in k)

        if mode == "lease":
            # Idle leases are given back within a period or two: then Redis counts
            # exactly what was spent.
            wait_for(lambda: not any(tenant in k for k in redis.holds()), 20,
                     "the leases to be settled")
        return {"mode": mode, "gateways": gateways, "limit": LIMIT, "offered": OFFERED,
                "admitted": counts.get(200, 0), "refused": counts.get(429, 0),
                "failed": sum(n for s, n in counts.items() if s not in (200, 429)),
                "bound": bound(mode, gateways), "counted": counted()}
    except (RuntimeError, OSError, TimeoutError, AssertionError) as err:
        result.fail(f"fleet {mode} × {gateways}: {type(err).__name__}: {err}")
        return None
    finally:
        for envoy in envoys:
            envoy.stop()
