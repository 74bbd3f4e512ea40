"""wasmgate's filters, configured for the bench as a user would configure them to do
what the native scenarios do (`native.py` holds the other side of each comparison).

Each builder returns one entry for an HTTP connection manager's `http_filters`: a
separate filter (`headers`, `jwt`, `api_key`, `rate_limit`), or the combined module
running several of them as stages (`combined`), with exactly the separate filters'
configurations under its stage names.
"""

from harness.bootstrap import wasm_filter

from .native import CLAIM_HEADERS
from .tokens import AUDIENCE, ISSUER

# The clusters the fixtures are reached through (scenarios.py starts the fixtures).
JWKS_CLUSTER = "jwks"
KEYSTORE_CLUSTER = "keystore"
RATELIMIT_CLUSTER = "ratelimit"

# The header rules the shipped gateway used when this was written (five identity
# headers stripped, two request headers set, response cleanup, request id echoed),
# held here so that the scenario stays comparable from run to run, and translated
# for header_mutation by native.py.
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

# Never limits (a billion requests a second per client): what is measured is the count
# in shared data and the headers on the response, not the 429. Clients are told apart
# the way the gateway does it: API key id, then user id, then address.
RATE_LIMIT_NEVER = 1_000_000_000


def jwt_config(alg: str) -> dict:
    """One provider requiring a token from the bench's issuer on every path, its JWKS
    fetched from the JWKS fixture (`/<alg>.json`), the identity forwarded as the native
    `jwt_authn` scenarios forward it."""
    return {
        "providers": {"bench": {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"remote": {"cluster": JWKS_CLUSTER, "path": f"/{alg}.json",
                                "authority": JWKS_CLUSTER, "cache_duration": "10m"}},
            "claim_to_headers": {h["header_name"]: h["claim_name"] for h in CLAIM_HEADERS},
        }},
        "default": {"providers": ["bench"]},
    }


API_KEY_CONFIG = {
    "store": {"cluster": KEYSTORE_CLUSTER, "timeout": "2s"},
    "sources": {"headers": ["x-api-key"]},
}


def rate_limit_config(identity_header: str = None, slots: int = 100_000) -> dict:
    """The rate limit of the chains; `identity_header` puts another header first (the
    floods' client id)."""
    identity = [{"header": "x-api-key-id"}, {"header": "x-user-id"}, {"address": {}}]
    if identity_header:
        identity.insert(0, {"header": identity_header})
    return {
        "table": {"name": "bench", "slots": slots},
        "identity": identity,
        "rules": [{"name": "api", "match": {"prefix": "/api/"},
                   "limits": [{"name": "per-second", "requests": RATE_LIMIT_NEVER, "per": "1s"}]}],
    }


# The global tier's scenarios: one tenant, a limit the service never reaches; the
# descriptor the filter sends (rule=api, x-tenant-id=...) is the one Envoy's own
# ratelimit filter is configured to send (native.py), against the same service. A
# window of a minute: in a window's last 100 ms (the service's lease margin) a lease
# tier asks per request (docs/filters/rate-limit.md), a tenth of the traffic with
# one-second windows, 0.2% with these.
BENCH_TENANT = "tenant-bench"
RATELIMIT_DOMAIN = "wasmgate"
# The service's limit for the bench tenant: never reached.
RATELIMIT_NEVER = 4_000_000_000
RATELIMIT_LIMITS = f"""
domain: {RATELIMIT_DOMAIN}
descriptors:
  - key: rule
    value: api
    descriptors:
      - key: x-tenant-id
        rate_limit: {{name: per-tenant, unit: minute, requests_per_unit: {RATELIMIT_NEVER}}}
"""
# Both the filter and Envoy's ratelimit filter wait this long for an answer: a loaded
# bench must measure the call, not the failure mode.
RATELIMIT_TIMEOUT = "1s"


def rate_limit_global_config(mode: str, lease_size: int = 1000, local: bool = True) -> dict:
    """`rate_limit_config()` with a global tier in `mode` ("exact" or "lease") on the
    tenant (`x-tenant-id`); a lease asks for `lease_size` hits at a time. `local=False`:
    the rule has no local limits (the global tier alone counts it)."""
    config = rate_limit_config()
    tier = {"mode": mode, "cluster": RATELIMIT_CLUSTER, "domain": RATELIMIT_DOMAIN,
            "timeout": RATELIMIT_TIMEOUT, "failure_mode": "deny",
            "identity": [{"header": "x-tenant-id"}]}
    if mode == "lease":
        tier["lease"] = {"size": lease_size, "period": "1s"}
    config["rules"][0]["global"] = tier
    if not local:
        del config["rules"][0]["limits"]
    return config


def headers(ctx, rules: dict = None) -> dict:
    return wasm_filter(ctx.wasm("headers"), rules or HEADER_RULES, name="headers")


def jwt(ctx, alg: str) -> dict:
    return wasm_filter(ctx.wasm("jwt"), jwt_config(alg), name="jwt")


def api_key(ctx) -> dict:
    return wasm_filter(ctx.wasm("api-key"), API_KEY_CONFIG, name="api-key")


def rate_limit(ctx, config: dict = None) -> dict:
    return wasm_filter(ctx.wasm("rate-limit"), config or rate_limit_config(), name="rate-limit")


def combined(ctx, stages: dict) -> dict:
    """The combined module running `stages` ({"headers": ..., "jwt": ..., "api_key": ...,
    "rate_limit": ...}, each exactly a separate filter's configuration)."""
    return wasm_filter(ctx.wasm("combined"), stages, name="combined")
