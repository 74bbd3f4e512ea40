"""The scenarios `make bench` knows, in report order.

Phase 1 (now): the bare router, the wasm floor, the header filter, and Envoy's native
filters. Phase 2 adds each wasmgate filter on its hot path, the JWT cold path, the
full chains and the combined module here, each as one `REGISTRY.add(Scenario(...))`;
a JWT or API-key scenario lists its JWKS / key-store `Fixture` and that fixture's
cluster in `callout_clusters`, and a flood uses `Load(distinct=Distinct(...))`.
"""

import sys
from pathlib import Path

from harness.bootstrap import wasm_filter

from . import native
from .load import Load, Rotate
from .scenario import CALLOUTS, Fixture, Probe, Registry, Scenario

REGISTRY = Registry()
add = REGISTRY.add

# Distinct tokens per cold-path run: far more than any token cache on the path
# (native jwt_authn's holds 100), so that every request verifies a signature.
COLD_TOKENS = 4096
# Keys in native api_key_auth's list (a realistic tenant count; lookup is a hash).
API_KEYS = 1000

# The header rules the shipped gateway uses (envoy-config/gateway.yaml, when this was
# written), held here so that the scenario stays comparable from run to run, and
# translated for header_mutation. Strips the identity headers of both auth filters.
HEADER_RULES = {
    "strip_inbound": ["x-user-id", "x-tenant-id", "x-scopes", "x-api-key-id", "x-plan"],
    "rules": [{
        "match": {"prefix": "/api/v1/"},
        "request": {"set": {"x-gateway": "wasmgate", "x-client-ip": "${downstream_ip}"}},
        "response": {"set": {"deprecation": "@1767225600",
                             "sunset": "Thu, 31 Dec 2026 23:59:59 GMT"}},
    }],
    "default": {"request": {"set": {"x-gateway": "wasmgate", "x-client-ip": "${downstream_ip}"}}},
    "response_cleanup": ["server", "x-powered-by", "x-envoy-upstream-service-time"],
    "echo_request_id": True,
}

HEADER_PROBES = [
    Probe("a spoofed identity header is stripped, the gateway's own headers are set",
          headers={"x-user-id": "admin"},
          upstream_saw={"x-user-id": None, "x-gateway": "wasmgate", "x-client-ip": "127.0.0.1"},
          response={"deprecation": "@1767225600", "server": None}),
]


def _bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def _jwt_probes(ctx, alg: str, token: str = None, subject: str = "user-bench") -> list:
    """Refuses no token and a token signed by another key; lets `token` (default: the
    key's one hot-path token) through with its subject forwarded."""
    other = "es256" if alg == "rs256" else "rs256"
    return [
        Probe("no token: refused", status=401),
        Probe("a token signed by another key: refused", status=401,
              headers=_bearer(ctx.key(other).token)),
        Probe("a valid token: its subject goes upstream",
              headers=_bearer(token or ctx.key(alg).token), upstream_saw={"x-user-id": subject}),
    ]


def _first_token(ctx, alg: str) -> str:
    return ctx.tokens(alg, COLD_TOKENS).read_text().split("\n", 1)[0]


def _jwt_counters(prefix: str = "http.main.jwt_authn.") -> dict:
    return {"allowed": prefix + "allowed", "denied": prefix + "denied",
            "cache hits": prefix + "jwt_cache_hit", "cache misses": prefix + "jwt_cache_miss"}


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

# --- wasmgate filters --------------------------------------------------------------

add(Scenario(
    "headers", "wasmgate header filter, the shipped gateway's rules",
    filters=lambda ctx: [wasm_filter(ctx.wasm("headers"), HEADER_RULES, name="headers")],
    probes=lambda ctx: HEADER_PROBES,
    counters={"requests": "wasmcustom.wasmgate.headers.requests"},
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

# --- callout counting --------------------------------------------------------------

# A JWKS endpoint: the run's RS256 public key, served by bench/static_server.py.
JWKS_SERVER = Fixture(
    "jwks-server", cluster="jwks",
    argv=lambda ctx: [sys.executable, Path(__file__).parent / "static_server.py",
                      "--listen", "127.0.0.1:0",
                      "--dir", ctx.write("jwks/jwks.json", ctx.key("rs256").jwks).parent],
)

for _async, _when in ((False, "on the first request that needs it"),
                      (True, "when the listener starts (async_fetch)")):
    add(Scenario(
        "native-jwt-rs256-remote" + ("-async" if _async else ""),
        f"native jwt_authn, RS256, cached, JWKS fetched from a server {_when}, "
        "cache_duration 600s",
        filters=lambda ctx, a=_async: [native.jwt_authn(ctx.key("rs256"), cache=True,
                                                        remote_cluster="jwks", async_fetch=a)],
        load=lambda ctx: Load(headers=_bearer(ctx.key("rs256").token)),
        probes=lambda ctx: _jwt_probes(ctx, "rs256"),
        fixtures=(JWKS_SERVER,),
        callout_clusters=("jwks",),
        passes=frozenset({CALLOUTS}),
    ))
