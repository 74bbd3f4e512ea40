"""The scenarios `make bench` knows, in report order.

Baselines (bare, the wasm floor), each wasmgate filter on its hot path and the JWT
cold path, the chains (separate filters and the combined module), Envoy's native
equivalents, the memory-only scenarios (all four filters; the client floods) and the
callout counts. Each is one `REGISTRY.add(Scenario(...))`; a JWT or API-key scenario
lists its JWKS / key-store `Fixture` (and that fixture's cluster in
`callout_clusters` when its fetches are counted), and a flood uses
`Load(distinct=Distinct(...))`. The targets they are judged by are in `targets.py`.
"""

import sys
from pathlib import Path

from harness.bootstrap import wasm_filter
from harness.paths import tool_path

from . import native, wasmgate
from .load import Distinct, Load, Rotate
from .scenario import (
    CALLOUTS, FLEET, KEYSTORE, MEMORY, SERVICE, THROUGHPUT, Fixture, Probe, Registry,
    Scenario,
)
from .wasmgate import (
    BENCH_TENANT, HEADER_RULES, JWKS_CLUSTER, KEYSTORE_CLUSTER, RATE_LIMIT_NEVER,
    RATELIMIT_CLUSTER, RATELIMIT_DOMAIN, RATELIMIT_LIMITS, RATELIMIT_NEVER, RATELIMIT_TIMEOUT,
)

REGISTRY = Registry()
add = REGISTRY.add

# Distinct tokens per cold-path run: far more than any token cache on the path
# (native jwt_authn's holds 100, wasmgate's JWT filter 1000 by default), so that every
# request verifies a signature.
COLD_TOKENS = 4096
# Keys in native api_key_auth's list (a realistic tenant count; lookup is a hash).
API_KEYS = 1000
# Distinct clients of the floods (memory pass only): the rate limit's 1M is ten times
# its table (100,000 slots); the API key's 100k is 24 times its cache (4096 slots), and
# every one of them is a key-store lookup answered 404.
RATE_LIMIT_FLOOD = 1_000_000
API_KEY_FLOOD = 100_000
ALL = frozenset({THROUGHPUT, MEMORY})
MEMORY_ONLY = frozenset({MEMORY})

# --- fixtures ----------------------------------------------------------------------

# A JWKS endpoint: the run's RS256 and ES256 public keys as /rs256.json and
# /es256.json, served by bench/static_server.py.
JWKS_SERVER = Fixture(
    "jwks-server", cluster=JWKS_CLUSTER,
    argv=lambda ctx: [sys.executable, Path(__file__).parent / "static_server.py",
                      "--listen", "127.0.0.1:0", "--dir", ctx.jwks_dir()],
)

# The key store the API-key filter asks: `wasmgate-keystore` on a file holding the
# run's one API key.
KEY_STORE = Fixture(
    "keystore", cluster=KEYSTORE_CLUSTER,
    argv=lambda ctx: [tool_path("keystore"), "--store", f"file:{ctx.keystore_file()}",
                      "serve", "--listen", "127.0.0.1:0"],
)

# The rate-limit service of the global tier's scenarios: `wasmgate-ratelimit` on its
# memory store (what is compared is the filters' cost around the same call; the
# service on Redis is measured in its own tests), limits in the run's directory.
RATELIMIT_SERVICE = Fixture(
    "ratelimit", cluster=RATELIMIT_CLUSTER, http2=True,
    argv=lambda ctx: [tool_path("ratelimit"), "serve",
                      "--config", ctx.write("ratelimit/limits.yaml", RATELIMIT_LIMITS),
                      "--store", "memory", "--listen", "127.0.0.1:0",
                      "--metrics-listen", "127.0.0.1:0", "--log-level", "warn"],
)

# --- probes and counters -------------------------------------------------------------

HEADER_PROBES = [
    Probe("a spoofed identity header is stripped, the gateway's own headers are set",
          headers={"x-user-id": "admin"},
          upstream_saw={"x-user-id": None, "x-gateway": "wasmgate", "x-client-ip": "127.0.0.1"},
          response={"deprecation": "@1767225600", "server": None}),
]


def _bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def _jwt_probes(ctx, alg: str, token: str = None, subject: str = "user-bench") -> list:
    """Refuses no token and a forged one (the key's `kid`, another key's signature);
    lets `token` (default: the key's one hot-path token) through with its subject
    forwarded."""
    return [
        Probe("no token: refused", status=401),
        Probe("a token signed by another key: refused", status=401,
              headers=_bearer(ctx.key(alg).forged_token())),
        Probe("a valid token: its subject goes upstream",
              headers=_bearer(token or ctx.key(alg).token),
              upstream_saw={"x-user-id": subject, "x-tenant-id": "tenant-bench"}),
    ]


def _api_key_probes(ctx) -> list:
    """Refuses no key and a malformed one (refused without a lookup, so that the
    key-store count stays one per key); lets the run's key through, hidden, with its
    tenant forwarded."""
    return [
        Probe("no key: refused", status=401),
        Probe("a malformed key: refused", status=401, headers={"x-api-key": "not-a-key"}),
        Probe("a valid key: its tenant goes upstream, the key does not",
              headers={"x-api-key": ctx.api_key(), "x-tenant-id": "spoofed"},
              upstream_saw={"x-tenant-id": "tenant-bench", "x-api-key": None}),
    ]


RATE_LIMIT_PROBES = [
    Probe("the request was counted: the response says how many remain",
          response={"x-ratelimit-limit": str(RATE_LIMIT_NEVER)}),
]

CHAIN_PROBE_HEADERS = {"upstream_saw": {"x-gateway": "wasmgate", "x-client-ip": "127.0.0.1"},
                       "response": {"deprecation": "@1767225600", "server": None}}


def _first_token(ctx, alg: str) -> str:
    return ctx.tokens(alg, COLD_TOKENS).read_text().split("\n", 1)[0]


def _jwt_counters(prefix: str = "http.main.jwt_authn.") -> dict:
    return {"allowed": prefix + "allowed", "denied": prefix + "denied",
            "cache hits": prefix + "jwt_cache_hit", "cache misses": prefix + "jwt_cache_miss"}


# The filters' metrics by their `/stats` names, tags written in as the filters do
# (filters/host/src/metrics.rs; in Prometheus: wasmgate_jwt_token_cache_lookups_total{result="hit"}).
_WASM = "wasmcustom.wasmgate."
WASM_JWT_COUNTERS = {"jwt allowed": _WASM + "jwt.allowed_total",
                     "token cache hits": _WASM + "jwt.result=.=hit;.;token_cache_lookups_total",
                     "token cache misses": _WASM + "jwt.result=.=miss;.;token_cache_lookups_total",
                     "signatures checked by Envoy": _WASM + "jwt.signatures_checked_by_envoy_total",
                     "JWKS fetches": _WASM + "jwt.provider=.=bench;.;result=.=success;.;jwks_fetches_total"}
WASM_API_KEY_COUNTERS = {"api key allowed": _WASM + "api_key.allowed_total",
                         "cache hits": _WASM + "api_key.result=.=hit;.;cache_lookups_total",
                         "lookups": _WASM + "api_key.store_lookups_total"}
WASM_RATE_LIMIT_COUNTERS = {"rate limit allowed": _WASM + "rate_limit.allowed_total",
                            "overflow": _WASM + "rate_limit.overflow_total",
                            "fail open": _WASM + "rate_limit.fail_open_total"}
WASM_HEADERS_COUNTERS = {"headers requests": _WASM + "headers.requests_total"}

# --- baselines ---------------------------------------------------------------------

add(Scenario("bare", "router only: every ratio is against this"))

add(Scenario(
    "wasm-floor", "trivial wasm filter (reads a header, adds one): the cost of one V8 crossing",
    filters=lambda ctx: [wasm_filter(ctx.bench_wasm("trivial"), "", name="floor")],
    load=lambda ctx: Load(headers={"x-bench-in": "floor"}),
    probes=lambda ctx: [Probe("the filter ran: the header it adds reached the upstream",
                              headers={"x-bench-in": "probe"},
                              upstream_saw={"x-bench-out": "probe"})],
    anchor=0.82,
))

# --- wasmgate filters, each alone on its hot path ----------------------------------

add(Scenario(
    "headers", "wasmgate header filter, the shipped gateway's rules",
    filters=lambda ctx: [wasmgate.headers(ctx)],
    probes=lambda ctx: HEADER_PROBES,
    counters=WASM_HEADERS_COUNTERS,
))

for _alg in ("rs256", "es256"):
    _ALG = _alg.upper()
    add(Scenario(
        f"jwt-{_alg}-cached", f"wasmgate JWT filter, {_ALG}, one token (verified-token cache), "
        "JWKS fetched from a server",
        filters=lambda ctx, a=_alg: [wasmgate.jwt(ctx, a)],
        load=lambda ctx, a=_alg: Load(headers=_bearer(ctx.key(a).token)),
        probes=lambda ctx, a=_alg: _jwt_probes(ctx, a),
        fixtures=(JWKS_SERVER,),
        callout_clusters=(JWKS_CLUSTER,),
        counters=WASM_JWT_COUNTERS,
        passes=ALL | {CALLOUTS} if _alg == "rs256" else ALL,
    ))
    add(Scenario(
        f"jwt-{_alg}-cold", f"wasmgate JWT filter, {_ALG}, a different token on every request "
        f"({COLD_TOKENS} pre-minted, more than its token cache holds)",
        filters=lambda ctx, a=_alg: [wasmgate.jwt(ctx, a)],
        load=lambda ctx, a=_alg: Load(rotate=Rotate("authorization", ctx.tokens(a, COLD_TOKENS),
                                                    prefix="Bearer ")),
        probes=lambda ctx, a=_alg: _jwt_probes(ctx, a, _first_token(ctx, a), "user-0"),
        fixtures=(JWKS_SERVER,),
        counters=WASM_JWT_COUNTERS,
    ))

add(Scenario(
    "api-key", "wasmgate API-key filter, one key (cached in shared data), key store over a "
    "callout",
    filters=lambda ctx: [wasmgate.api_key(ctx)],
    load=lambda ctx: Load(headers={"x-api-key": ctx.api_key()}),
    probes=_api_key_probes,
    fixtures=(KEY_STORE,),
    callout_clusters=(KEYSTORE_CLUSTER,),
    counters=WASM_API_KEY_COUNTERS,
    passes=ALL | {CALLOUTS},
))

add(Scenario(
    "rate-limit", "wasmgate rate-limit filter, never limiting, one client (by x-user-id), "
    "100,000-slot table",
    filters=lambda ctx: [wasmgate.rate_limit(ctx)],
    load=lambda ctx: Load(headers={"x-user-id": "user-bench"}),
    probes=lambda ctx: RATE_LIMIT_PROBES,
    counters=WASM_RATE_LIMIT_COUNTERS,
))

# The global tier, on the same load (one tenant, never limited) and the same service as
# Envoy's own ratelimit filter below: `exact` makes one call per request, `lease` one
# per thousand.
_TENANT = {"x-user-id": "user-bench", "x-tenant-id": BENCH_TENANT}
WASM_GLOBAL_COUNTERS = {
    "rate limit allowed": _WASM + "rate_limit.allowed_total",
    "service calls": _WASM + "rate_limit.global_calls_total",
    "lease renewals": _WASM + "rate_limit.lease_renewals_total",
    "hits leased": _WASM + "rate_limit.lease_granted_hits_total",
    "failures (denied)": _WASM + "rate_limit.result=.=deny;.;global_failure_decisions_total"}

for _mode, _how in (("exact", "one ShouldRateLimit call per request"),
                    ("lease", "leases of 1,000 hits spent in shared data")):
    add(Scenario(
        f"rate-limit-{_mode}", f"wasmgate rate-limit filter as `rate-limit`, plus a global "
        f"tier in {_mode} mode on the tenant ({_how}), wasmgate-ratelimit (memory store)",
        filters=lambda ctx, m=_mode: [wasmgate.rate_limit(ctx, wasmgate.rate_limit_global_config(m))],
        load=lambda ctx: Load(headers=_TENANT),
        probes=lambda ctx: [Probe("counted locally and globally: the response says how many "
                                  "remain", headers=_TENANT,
                                  response={"x-ratelimit-limit": str(RATE_LIMIT_NEVER)})],
        fixtures=(RATELIMIT_SERVICE,),
        counters=WASM_GLOBAL_COUNTERS,
    ))
    # The same tier on a rule without local limits: what Envoy's ratelimit filter does.
    add(Scenario(
        f"rate-limit-global-{_mode}", f"wasmgate rate-limit filter, a rule with a global tier "
        f"only (no local limits) in {_mode} mode on the tenant ({_how}), as `rate-limit-{_mode}`",
        filters=lambda ctx, m=_mode: [wasmgate.rate_limit(
            ctx, wasmgate.rate_limit_global_config(m, local=False))],
        load=lambda ctx: Load(headers=_TENANT),
        probes=lambda ctx: [Probe("counted globally only: the headers show the service's limit",
                                  headers=_TENANT,
                                  response={"x-ratelimit-limit": str(RATELIMIT_NEVER)})],
        fixtures=(RATELIMIT_SERVICE,),
        counters=WASM_GLOBAL_COUNTERS,
    ))

# --- chains: the gateway's three filters ---------------------------------------------


def _jwt_chain_probes(ctx) -> list:
    return [*_jwt_probes(ctx, "rs256"),
            Probe("identity comes from the token, not the client; headers and rate limit ran",
                  headers={**_bearer(ctx.key("rs256").token), "x-user-id": "admin"},
                  upstream_saw={"x-user-id": "user-bench",
                                **CHAIN_PROBE_HEADERS["upstream_saw"]},
                  response={**CHAIN_PROBE_HEADERS["response"],
                            "x-ratelimit-limit": str(RATE_LIMIT_NEVER)})]


def _api_key_chain_probes(ctx) -> list:
    return [*_api_key_probes(ctx),
            Probe("identity comes from the key store, not the client; headers and rate limit ran",
                  headers={"x-api-key": ctx.api_key(), "x-api-key-id": "spoofed"},
                  upstream_saw={"x-tenant-id": "tenant-bench",
                                **CHAIN_PROBE_HEADERS["upstream_saw"]},
                  response={**CHAIN_PROBE_HEADERS["response"],
                            "x-ratelimit-limit": str(RATE_LIMIT_NEVER)})]


# The combined module's stages: exactly the separate filters' configurations.
JWT_STAGES = {"headers": HEADER_RULES, "jwt": wasmgate.jwt_config("rs256"),
              "rate_limit": wasmgate.rate_limit_config()}
API_KEY_STAGES = {"headers": HEADER_RULES, "api_key": wasmgate.API_KEY_CONFIG,
                  "rate_limit": wasmgate.rate_limit_config()}
ALL_STAGES = {**JWT_STAGES, "api_key": wasmgate.API_KEY_CONFIG}

add(Scenario(
    "chain-jwt", "wasmgate headers + JWT (RS256, cached) + rate limit, three separate filters",
    filters=lambda ctx: [wasmgate.headers(ctx), wasmgate.jwt(ctx, "rs256"),
                         wasmgate.rate_limit(ctx)],
    load=lambda ctx: Load(headers=_bearer(ctx.key("rs256").token)),
    probes=_jwt_chain_probes,
    fixtures=(JWKS_SERVER,),
    counters={**WASM_JWT_COUNTERS, **WASM_RATE_LIMIT_COUNTERS},
))

add(Scenario(
    "combined-jwt", "the combined module: headers + JWT (RS256, cached) + rate limit as "
    "stages of one filter",
    filters=lambda ctx: [wasmgate.combined(ctx, JWT_STAGES)],
    load=lambda ctx: Load(headers=_bearer(ctx.key("rs256").token)),
    probes=_jwt_chain_probes,
    fixtures=(JWKS_SERVER,),
    counters={**WASM_JWT_COUNTERS, **WASM_RATE_LIMIT_COUNTERS},
))

add(Scenario(
    "chain-api-key", "wasmgate headers + API key (cached) + rate limit, three separate filters",
    filters=lambda ctx: [wasmgate.headers(ctx), wasmgate.api_key(ctx), wasmgate.rate_limit(ctx)],
    load=lambda ctx: Load(headers={"x-api-key": ctx.api_key()}),
    probes=_api_key_chain_probes,
    fixtures=(KEY_STORE,),
    counters={**WASM_API_KEY_COUNTERS, **WASM_RATE_LIMIT_COUNTERS},
))

add(Scenario(
    "combined-api-key", "the combined module: headers + API key (cached) + rate limit as "
    "stages of one filter",
    filters=lambda ctx: [wasmgate.combined(ctx, API_KEY_STAGES)],
    load=lambda ctx: Load(headers={"x-api-key": ctx.api_key()}),
    probes=_api_key_chain_probes,
    fixtures=(KEY_STORE,),
    counters={**WASM_API_KEY_COUNTERS, **WASM_RATE_LIMIT_COUNTERS},
))

# --- Envoy's native filters ----------------------------------------------------------

add(Scenario(
    "native-header-mutation", "native header_mutation doing the header filter's rules",
    filters=lambda ctx: [native.header_mutation(HEADER_RULES)],
    probes=lambda ctx: HEADER_PROBES,
))

add(Scenario(
    "native-local-ratelimit", "native local_ratelimit, enforced, never limiting",
    filters=lambda ctx: [native.local_ratelimit()],
    counters={"ok": "bench_rate_limit.http_local_rate_limit.ok",
              "limited": "bench_rate_limit.http_local_rate_limit.rate_limited"},
    anchor=0.96,
))

add(Scenario(
    "native-ratelimit", "native ratelimit (the global rate limit filter), one call per request "
    "to wasmgate-ratelimit (memory store), the same descriptor as `rate-limit-exact`",
    filters=lambda ctx: [native.ratelimit(RATELIMIT_CLUSTER, RATELIMIT_DOMAIN, RATELIMIT_TIMEOUT)],
    load=lambda ctx: Load(headers=_TENANT),
    probes=lambda ctx: [Probe("the service was asked: its answer's headers came back",
                              headers=_TENANT,
                              response={"x-ratelimit-limit":
                                        f'{RATELIMIT_NEVER}, {RATELIMIT_NEVER};w=60;name="per-tenant"'})],
    fixtures=(RATELIMIT_SERVICE,),
    route_action=native.route_rate_limits("x-tenant-id"),
    counters={"ok": "cluster.ratelimit.ratelimit.ok",
              "errors": "cluster.ratelimit.ratelimit.error"},
))

# The floor of the call from wasm: a filter that only pauses each request for the same
# ShouldRateLimit call (encoded once, answer unread). Against `native-ratelimit`, what
# Envoy's proxy-wasm gRPC path costs by itself (BENCHMARKS.md, Findings, G1).
add(Scenario(
    "wasm-grpc-call", "instrument: a wasm filter that only makes the `native-ratelimit` call "
    "(one ShouldRateLimit per request, encoded once, answer unread; 503 if it fails)",
    filters=lambda ctx: [wasm_filter(ctx.bench_wasm("grpc-call"), {
        "cluster": RATELIMIT_CLUSTER, "domain": RATELIMIT_DOMAIN,
        "entries": [["rule", "api"], ["x-tenant-id", BENCH_TENANT]], "timeout_ms": 1000},
        name="grpc-call")],
    load=lambda ctx: Load(headers=_TENANT),
    probes=lambda ctx: [Probe("the call succeeded (a failed one is answered 503)",
                              headers=_TENANT)],
    fixtures=(RATELIMIT_SERVICE,),
))

# What each step of the exact-mode rule costs around that call (run with --only
# grpc-steps-none,grpc-steps-read_request,...): the call as `wasm-grpc-call`, with the
# response phase exported, plus one step, or all of them.
GRPC_STEPS = ("read_request", "encode", "read_answer", "histogram", "response_headers")
# Other ways to read the request, compared with `read_request` (not in "all").
GRPC_READS = ("snapshot", "single_gets")
for _name, _steps in (("none", ()), *((step, (step,)) for step in GRPC_STEPS + GRPC_READS),
                      ("all", GRPC_STEPS)):
    add(Scenario(
        f"grpc-steps-{_name}", f"instrument: the `wasm-grpc-call` call, its response phase "
        f"exported, and steps: {', '.join(_steps) or 'none'}",
        filters=lambda ctx, steps=_steps: [wasm_filter(ctx.bench_wasm("grpc-steps"), {
            "cluster": RATELIMIT_CLUSTER, "domain": RATELIMIT_DOMAIN,
            "entries": [["rule", "api"], ["x-tenant-id", BENCH_TENANT]],
            "steps": list(steps)}, name="grpc-steps")],
        load=lambda ctx: Load(headers=_TENANT),
        probes=lambda ctx: [Probe("the call succeeded (a failed one is answered 503)",
                                  headers=_TENANT)],
        fixtures=(RATELIMIT_SERVICE,),
        passes=frozenset({THROUGHPUT}),
        default=False,
    ))

add(Scenario(
    "native-api-key-auth", f"native api_key_auth, {API_KEYS} keys, one key per request",
    filters=lambda ctx: [native.api_key_auth(API_KEYS)],
    load=lambda ctx: Load(headers={"x-api-key": native.api_key_client(7)[0]}),
    probes=lambda ctx: [
        Probe("no key: refused", status=401),
        Probe("an unknown key: refused", status=401, headers={"x-api-key": "not-a-key"}),
        Probe("a valid key: its client goes upstream",
              headers={"x-api-key": native.api_key_client(7)[0]},
              upstream_saw={"x-api-client": "client-7"}),
    ],
))

for _alg, _anchors in (("rs256", (0.51, 0.94)), ("es256", (0.30, 0.93))):
    _ALG = _alg.upper()
    for _variant, _cache, _anchor, _how in (
            ("nocache", False, _anchors[0], "no jwt_cache_config: every request verifies"),
            ("cached", True, _anchors[1], "jwt_cache_config, one token")):
        add(Scenario(
            f"native-jwt-{_alg}-{_variant}", f"native jwt_authn, {_ALG}, {_how}",
            filters=lambda ctx, a=_alg, c=_cache: [native.jwt_authn(ctx.key(a), cache=c)],
            load=lambda ctx, a=_alg: Load(headers=_bearer(ctx.key(a).token)),
            probes=lambda ctx, a=_alg: _jwt_probes(ctx, a),
            counters=_jwt_counters(),
            anchor=_anchor,
        ))
    add(Scenario(
        f"native-jwt-{_alg}-cold", f"native jwt_authn, {_ALG}, jwt_cache_config, "
        f"a different token on every request ({COLD_TOKENS} pre-minted)",
        filters=lambda ctx, a=_alg: [native.jwt_authn(ctx.key(a), cache=True)],
        load=lambda ctx, a=_alg: Load(rotate=Rotate("authorization", ctx.tokens(a, COLD_TOKENS),
                                                    prefix="Bearer ")),
        probes=lambda ctx, a=_alg: _jwt_probes(ctx, a, _first_token(ctx, a), "user-0"),
        counters=_jwt_counters(),
    ))

add(Scenario(
    "native-chain", "native header_mutation + jwt_authn (RS256, cached) + local_ratelimit",
    filters=lambda ctx: [native.header_mutation(HEADER_RULES),
                         native.jwt_authn(ctx.key("rs256"), cache=True),
                         native.local_ratelimit()],
    load=lambda ctx: Load(headers=_bearer(ctx.key("rs256").token)),
    probes=lambda ctx: [*_jwt_probes(ctx, "rs256"),
                        Probe("identity comes from the token, not the client",
                              headers={**_bearer(ctx.key("rs256").token), "x-user-id": "admin"},
                              upstream_saw={"x-user-id": "user-bench", "x-gateway": "wasmgate"},
                              response={"deprecation": "@1767225600"})],
    counters={**_jwt_counters(), "rate limit ok": "bench_rate_limit.http_local_rate_limit.ok"},
))

# --- memory: all four filters, and the floods ---------------------------------------


def _all_four_load(ctx) -> Load:
    return Load(headers={**_bearer(ctx.key("rs256").token), "x-api-key": ctx.api_key()})


def _all_four_probes(ctx) -> list:
    both = {**_bearer(ctx.key("rs256").token), "x-api-key": ctx.api_key()}
    return [
        Probe("a token without a key: refused", status=401, headers=_bearer(ctx.key("rs256").token)),
        Probe("a key without a token: refused", status=401, headers={"x-api-key": ctx.api_key()}),
        Probe("both: the identities of both go upstream", headers=both,
              upstream_saw={"x-user-id": "user-bench", "x-tenant-id": "tenant-bench",
                            "x-gateway": "wasmgate"},
              response={"x-ratelimit-limit": str(RATE_LIMIT_NEVER)}),
    ]


add(Scenario(
    "all-four", "wasmgate headers + JWT + API key + rate limit, four separate filters "
    "(every request carries a token and a key)",
    filters=lambda ctx: [wasmgate.headers(ctx), wasmgate.jwt(ctx, "rs256"),
                         wasmgate.api_key(ctx), wasmgate.rate_limit(ctx)],
    load=_all_four_load,
    probes=_all_four_probes,
    fixtures=(JWKS_SERVER, KEY_STORE),
    passes=MEMORY_ONLY,
))

add(Scenario(
    "combined-all", "the combined module with all four stages (headers, JWT, API key, "
    "rate limit)",
    filters=lambda ctx: [wasmgate.combined(ctx, ALL_STAGES)],
    load=_all_four_load,
    probes=_all_four_probes,
    fixtures=(JWKS_SERVER, KEY_STORE),
    passes=MEMORY_ONLY,
))

add(Scenario(
    "rate-limit-flood", f"wasmgate rate-limit filter, {RATE_LIMIT_FLOOD:,} distinct clients "
    "(x-client-id), 100,000-slot table",
    filters=lambda ctx: [wasmgate.rate_limit(ctx, wasmgate.rate_limit_config("x-client-id"))],
    load=lambda ctx: Load(distinct=Distinct("x-client-id", "flood-", limit=RATE_LIMIT_FLOOD)),
    probes=lambda ctx: RATE_LIMIT_PROBES,
    passes=MEMORY_ONLY,
    seconds=150,
    flood=True,
))

# The same flood where every client stays limited (10 an hour: a bucket refills in
# 6 minutes, longer than the flood), so no slot is ever reusable: every one of the
# table's slots is created, and the newcomers beyond it share the overflow bucket (429).
RATE_LIMIT_HELD = 10


def _held_flood_config() -> dict:
    config = wasmgate.rate_limit_config("x-client-id")
    config["rules"][0]["limits"] = [{"name": "per-hour", "requests": RATE_LIMIT_HELD,
                                     "per": "1h"}]
    return config


add(Scenario(
    "rate-limit-flood-held", f"wasmgate rate-limit filter, {RATE_LIMIT_FLOOD:,} distinct "
    f"clients (x-client-id) limited to {RATE_LIMIT_HELD} an hour, 100,000-slot table: every "
    "slot fills, the rest share the overflow bucket (429)",
    filters=lambda ctx: [wasmgate.rate_limit(ctx, _held_flood_config())],
    load=lambda ctx: Load(distinct=Distinct("x-client-id", "held-", limit=RATE_LIMIT_FLOOD)),
    probes=lambda ctx: [Probe("the request was counted: the response says how many remain",
                              response={"x-ratelimit-limit": str(RATE_LIMIT_HELD)})],
    passes=MEMORY_ONLY,
    seconds=150,
    any_status=True,
    flood=True,
))

add(Scenario(
    "api-key-flood", f"wasmgate API-key filter, {API_KEY_FLOOD:,} distinct unknown keys "
    "(each a key-store lookup, answered 401), 4096-slot cache",
    filters=lambda ctx: [wasmgate.api_key(ctx)],
    load=lambda ctx: Load(distinct=Distinct("x-api-key", "sk_live_bench-flood-",
                                            limit=API_KEY_FLOOD)),
    probes=_api_key_probes,
    fixtures=(KEY_STORE,),
    passes=MEMORY_ONLY,
    seconds=150,
    any_status=True,
    flood=True,
))

# --- the fleet: one limit over 1-3 gateways --------------------------------------------

add(Scenario(
    "fleet-accuracy", "1-3 gateways (Envoy, concurrency 2) sharing one limit of 100 a minute "
    "through wasmgate-ratelimit (two replicas, Redis): local, exact and lease modes, a burst "
    "of 300 requests for one tenant",
    passes=frozenset({FLEET}),
))

# --- callout counting ----------------------------------------------------------------

for _async, _when in ((False, "on the first request that needs it"),
                      (True, "when the listener starts (async_fetch)")):
    add(Scenario(
        "native-jwt-rs256-remote" + ("-async" if _async else ""),
        f"native jwt_authn, RS256, cached, JWKS fetched from a server {_when}, "
        "cache_duration 600s",
        filters=lambda ctx, a=_async: [native.jwt_authn(ctx.key("rs256"), cache=True,
                                                        remote_cluster=JWKS_CLUSTER,
                                                        remote_path="/rs256.json",
                                                        async_fetch=a)],
        load=lambda ctx: Load(headers=_bearer(ctx.key("rs256").token)),
        probes=lambda ctx: _jwt_probes(ctx, "rs256"),
        fixtures=(JWKS_SERVER,),
        callout_clusters=(JWKS_CLUSTER,),
        passes=frozenset({CALLOUTS}),
    ))

# --- instruments: what one host call costs (run with --only hostcall-none,...) ----------

HOSTCALL_REPEAT = 100  # bench/hostcalls/src/lib.rs: REPEAT
HOSTCALL_OPS = {
    "none": "nothing (the instrument's own cost)",
    "get_absent": "get_map_value of an absent header",
    "get_present": "get_map_value of a present header (user-agent)",
    "get_all": "get_map of every request header",
    "remove_absent": "remove_map_value of an absent header",
    "set": "set_map_value of one header",
    "set_all": "set_map of every request header",
    "property": "get_property(source.address)",
    "counter": "increment_metric",
    "shared_get": "get_shared_data of 64 bytes",
    "shared_cas": "get_shared_data of 64 bytes and its compare-and-swap write",
    "time": "get_current_time",
    "sha256_token": "SHA-256 of a 700-byte token (no host call)",
    "siphash_token": "SipHash-1-3 of a 700-byte token (no host call)",
    "alloc": "a small heap allocation and its release (no host call)",
}
# The host calls also made once a request (`hostcall1-<op>`): what each costs in situ,
# its code path cold (a loop measures it warm; a call that returns data costs several
# times more once). Read each against hostcall1-none.
HOSTCALL_ONCE = ("none", "get_present", "get_all", "set", "property", "counter",
                 "shared_get", "shared_cas", "time")


def _hostcall_scenario(name: str, what: str, config: str) -> Scenario:
    return Scenario(
        name, f"host-call instrument: {what}",
        filters=lambda ctx: [wasm_filter(ctx.bench_wasm("hostcalls"), config,
                                         name="hostcalls")],
        passes=frozenset({THROUGHPUT}),
        default=False,
    )


for _op, _what in HOSTCALL_OPS.items():
    add(_hostcall_scenario(f"hostcall-{_op}", f"{HOSTCALL_REPEAT} × {_what} per request", _op))
for _op in HOSTCALL_ONCE:
    add(_hostcall_scenario(f"hostcall1-{_op}", f"{HOSTCALL_OPS[_op]}, once a request",
                           f"{_op} 1"))


# --- instruments: each filter ten times in a row (run with --only floor-x10,...) -----
# A filter's added cost is a few µs, within the noise of a shared machine; ten copies
# in one chain make it ten times larger, so that two builds of a filter can be told
# apart (BENCHMARKS.md, "Findings"). Each copy does the whole work: the JWT and API-key
# copies forward the credential so that the next copy sees it too.

AMPLIFY = 10


def _amplified(name: str, what: str, module, config, load=None, probes=None, fixtures=()):
    add(Scenario(
        f"{name}-x{AMPLIFY}", f"instrument: {what}, {AMPLIFY} copies in one chain",
        filters=lambda ctx: [wasm_filter(module(ctx), config, name=f"{name}{i}")
                             for i in range(AMPLIFY)],
        load=load or _plain_load_fn, probes=probes or (lambda ctx: []), fixtures=fixtures,
        passes=frozenset({THROUGHPUT}), default=False,
    ))


def _plain_load_fn(ctx) -> Load:
    return Load()


_FORWARDING_JWT = wasmgate.jwt_config("rs256")
_FORWARDING_JWT["providers"]["bench"]["forward"] = True
_amplified("floor", "the wasm floor", lambda ctx: ctx.bench_wasm("trivial"), "",
           load=lambda ctx: Load(headers={"x-bench-in": "floor"}))
_amplified("headers", "the header filter", lambda ctx: ctx.wasm("headers"), HEADER_RULES)
_amplified("jwt", "the JWT filter (RS256, cached, forward: true)", lambda ctx: ctx.wasm("jwt"),
           _FORWARDING_JWT, load=lambda ctx: Load(headers=_bearer(ctx.key("rs256").token)),
           probes=lambda ctx: [Probe("a valid token passes every copy",
                                     headers=_bearer(ctx.key("rs256").token))],
           fixtures=(JWKS_SERVER,))
_amplified("api-key", "the API-key filter (cached, hide_credentials: false)",
           lambda ctx: ctx.wasm("api-key"), {**wasmgate.API_KEY_CONFIG, "hide_credentials": False},
           load=lambda ctx: Load(headers={"x-api-key": ctx.api_key()}),
           probes=lambda ctx: [Probe("a valid key passes every copy",
                                     headers={"x-api-key": ctx.api_key()})],
           fixtures=(KEY_STORE,))
_amplified("rate-limit", "the rate-limit filter", lambda ctx: ctx.wasm("rate-limit"),
           wasmgate.rate_limit_config(), load=lambda ctx: Load(headers={"x-user-id": "user-bench"}))


# --- the rate-limit service alone ---------------------------------------------------------

add(Scenario(
    "ratelimit-service",
    "wasmgate-ratelimit without Envoy: ShouldRateLimit and Renew over Redis, and "
    "ShouldRateLimit in memory (service.py).",
    passes=frozenset({SERVICE}),
))


# --- the key store on its own (no Envoy) --------------------------------------------

add(Scenario(
    "keystore",
    "no Envoy: wrk straight at one `wasmgate-keystore serve` on Redis, against the old "
    "server (main 2ad4e41, fixture-http): see *Key store lookups*",
    passes=frozenset({KEYSTORE}),
))
