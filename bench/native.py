"""Envoy's own C++ filters, configured as a user would to do what wasmgate does.

Each builder returns one entry for an HTTP connection manager's `http_filters`. They
are the comparison points of BENCHMARKS.md, so each is configured to do the same work
as its wasmgate counterpart (same headers forwarded, same checks), not its cheapest
possible form.
"""

from .tokens import AUDIENCE, ISSUER, SigningKey

_TYPES = "type.googleapis.com/envoy.extensions.filters.http"

# The identity headers the gateway forwards after authentication (the JWT filter's
# X-User-ID, X-Tenant-ID and X-Scopes).
CLAIM_HEADERS = [
    {"header_name": "x-user-id", "claim_name": "sub"},
    {"header_name": "x-tenant-id", "claim_name": "tenant"},
    {"header_name": "x-scopes", "claim_name": "scope"},
]


def jwt_authn(key: SigningKey, *, cache: bool, remote_cluster: str = None,
              remote_path: str = "/jwks.json", async_fetch: bool = False) -> dict:
    """`jwt_authn` requiring a token from `key`'s issuer on every path.

    `cache` adds `jwt_cache_config` (Envoy's default size, 100 tokens): a token seen
    before skips signature verification. The JWKS is inline (`local_jwks`, as istiod
    delivers it) unless `remote_cluster` names a cluster serving it at `remote_path`;
    then `async_fetch` fetches it when the listener starts instead of on the first
    request that needs it.
    """
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "claim_to_headers": CLAIM_HEADERS,
    }
    if remote_cluster:
        provider["remote_jwks"] = {
            "http_uri": {"uri": f"http://{remote_cluster}{remote_path}",
                         "cluster": remote_cluster, "timeout": "5s"},
            "cache_duration": "600s",
        }
        if async_fetch:
            provider["remote_jwks"]["async_fetch"] = {}
    else:
        provider["local_jwks"] = {"inline_string": key.jwks}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": f"{_TYPES}.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


def local_ratelimit(stat_prefix: str = "bench_rate_limit") -> dict:
    """`local_ratelimit`, enabled and enforced on every request, with a bucket so large
    it never limits: what is measured is the check, not the 429."""
    everyone = {"numerator": 100, "denominator": "HUNDRED"}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": f"{_TYPES}.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": stat_prefix,
            "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000,
                             "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": f"{stat_prefix}_enabled", "default_value": everyone},
            "filter_enforced": {"runtime_key": f"{stat_prefix}_enforced", "default_value": everyone},
        },
    }


def api_key_client(index: int) -> tuple:
    """The (key, client) pair number `index` of the bench's key list."""
    return f"bench-key-{index:06d}-6f1d2c9a8b7e4f30", f"client-{index}"


def api_key_auth(key_count: int) -> dict:
    """`api_key_auth` with `key_count` keys in its list, read from `x-api-key`; the
    client's name goes upstream in `x-api-client` and the key itself does not."""
    return {
        "name": "envoy.filters.http.api_key_auth",
        "typed_config": {
            "@type": f"{_TYPES}.api_key_auth.v3.ApiKeyAuth",
            "credentials": [dict(zip(("key", "client"), api_key_client(i)))
                            for i in range(key_count)],
            "key_sources": [{"header": "x-api-key"}],
            "forwarding": {"header": "x-api-client", "hide_credentials": True},
        },
    }


def _set(name: str, value: str) -> dict:
    return {"append": {"header": {"key": name, "value": value},
                       "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}


# Header filter templates and the Envoy formatter commands that say the same.
_NATIVE_TEMPLATES = {"${downstream_ip}": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}


def _native_value(value: str) -> str:
    if "$" not in value:
        return value.replace("%", "%%")
    if value not in _NATIVE_TEMPLATES:
        raise ValueError(f"no native equivalent for the template {value!r}")
    return _NATIVE_TEMPLATES[value]


def header_mutation(rules: dict) -> dict:
    """`header_mutation` doing what the header filter does with `rules` (the subset
    of the header filter's config the bench uses: strip_inbound, request and response
    `set`, response_cleanup, echo_request_id). Native header_mutation has no route
    match of its own, so the rule's request/response edits apply to every request,
    which is what the bench's load (one path under the rule's prefix) exercises."""
    request = [{"remove": name} for name in rules.get("strip_inbound", [])]
    response = [{"remove": name} for name in rules.get("response_cleanup", [])]
    rule = rules["rules"][0]
    for name, value in rule.get("request", {}).get("set", {}).items():
        request.append(_set(name, _native_value(value)))
    for name, value in rule.get("response", {}).get("set", {}).items():
        response.append(_set(name, _native_value(value)))
    if rules.get("echo_request_id"):
        response.append(_set("x-request-id", "%REQ(x-request-id)%"))
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": f"{_TYPES}.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": request, "response_mutations": response},
        },
    }


def ratelimit(cluster: str, domain: str, timeout: str) -> dict:
    """Envoy's own `ratelimit` filter against the rate-limit service on `cluster`, with
    the draft-03 `x-ratelimit-*` headers (as wasmgate's filter adds its headers) and
    failing closed (as the wasmgate scenarios' `failure_mode: deny`). Its descriptors
    come from the route (`route_rate_limits`)."""
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": f"{_TYPES}.ratelimit.v3.RateLimit",
            "domain": domain,
            "timeout": timeout,
            "failure_mode_deny": True,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                                   "transport_api_version": "V3"},
        },
    }


def route_rate_limits(tenant_header: str) -> dict:
    """The route's `rate_limits` that send the descriptor wasmgate's filter sends:
    rule=api, then the tenant header under its own name."""
    return {"rate_limits": [{"actions": [
        {"generic_key": {"descriptor_key": "rule", "descriptor_value": "api"}},
        {"request_headers": {"header_name": tenant_header, "descriptor_key": tenant_header}},
    ]}]}
