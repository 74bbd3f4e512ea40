"""The demo gateway as `make run` starts it: envoy-config/gateway.yaml in front of its
demo services, every fixed port of the file mapped to one chosen at run time.

`DEMO_SERVICES` (the echo instances the routes lead to) and `CALLOUT_SERVICES` (the
JWKS issuer and the key store the auth filters ask) are the one list of what
gateway.yaml talks to: the compose tests check docker-compose.yml against them, and
starting fails if gateway.yaml names a port they do not map (a new cluster needs its
service here).

Tokens for the gateway are minted here with PyJWT (`DemoGateway.token`), signed by a
key the JWKS issuer publishes; API keys are made with the key store's own CLI
(`DemoGateway.keys.create`).
"""

import json

from .jwt import KeyDir, claims_for
from .keystore import KeyStore
from .otlp import OtlpReceiver
from .paths import ROOT, tool_path
from .ports import free_ports
from .shipped import load_shipped
from .stack import Stack
from .wait import wait_for

GATEWAY_CONFIG = "envoy-config/gateway.yaml"

# Envoy's own listeners and admin in gateway.yaml: Envoy picks free ports in tests,
# but for admin, which the `stats` listener's cluster names too.
GATEWAY_PORTS = {"main": 8080, "tls": 8443, "stats": 9902, "admin": 9901}

# Shipped port → (service, instance): one `wasmgate-demo echo --name SERVICE
# --instance INSTANCE` each.
DEMO_SERVICES = {
    18081: ("users", "users-a"),
    18082: ("users", "users-b"),
    18083: ("orders", "orders-v1"),
    18084: ("orders", "orders-v2"),
    18085: ("products", "products"),
}

# Where gateway.yaml sends trace spans when tracing is on: an OpenTelemetry collector
# (OTLP/HTTP), here `OtlpReceiver`.
OTLP_PORT = 4318

# Shipped port → the server behind a filter's callout cluster.
CALLOUT_SERVICES = {
    18090: "jwks",       # `wasmgate-demo jwks`: the JWT filter's JWKS
    18091: "keystore",   # `wasmgate-keystore serve`: the API-key filter's key store
    18092: "ratelimit",  # `wasmgate-ratelimit serve`: the rate-limit filter's global tier
}
# The limits the rate-limit service keeps for gateway.yaml.
GATEWAY_LIMITS = "envoy-config/gateway-limits.yaml"

# What gateway.yaml's JWT filter accepts.
TOKEN_ISSUER = "https://issuer.wasmgate.test"
TOKEN_AUDIENCE = "wasmgate-gateway"
SIGNING_KEY = "demo-es256"


class DemoGateway(Stack):
    """Starts the demo services, then Envoy (`envoy`) on the shipped gateway.yaml.

    With `tracing=True`, gateway.yaml's tracing is turned on (as `WASMGATE_TRACING=on`
    does) and `collector` (an `OtlpReceiver`) receives the spans; without, the
    collector's port leads nowhere, as in `make run`.
    """

    envoy = None
    signing_keys = None  # KeyDir: the keys the JWKS issuer publishes
    keys = None          # KeyStore: the key store's CLI and counters
    collector = None     # OtlpReceiver, with tracing

    def __init__(self, workdir, certs_dir, upstreams: dict = None, tracing: bool = False,
                 edit=None):
        """`upstreams`: {instance: port} of servers a test runs in place of some demo
        services (they must answer `GET /healthz`). `edit`: see `Stack.start_envoy`."""
        super().__init__(workdir, certs_dir)
        self.upstreams = upstreams or {}
        self.tracing = tracing
        self.edit = edit

    def start(self):
        try:
            ports = {port: 0 for port in GATEWAY_PORTS.values()}
            ports[GATEWAY_PORTS["admin"]] = free_ports(1)[0]
            for port, (service, instance) in DEMO_SERVICES.items():
                ports[port] = self.upstreams.get(instance) or self.start_echo(service, instance).port
            if self.tracing:
                self.collector = OtlpReceiver().start()
                ports[OTLP_PORT] = self.collector.port
            else:
                ports[OTLP_PORT], = free_ports(1)
            self.signing_keys = KeyDir(self.workdir / "jwks-keys")
            self.signing_keys.add(SIGNING_KEY, "ES256")
            jwks = self.start_server("jwks", [tool_path("demo"), "jwks", "--keys",
                                              self.signing_keys.path])
            store = f"file:{self.workdir / 'keys.json'}"
            self.keys = KeyStore(store, self.start_server(
                "keystore", [tool_path("keystore"), "--store", store, "serve"]))
            # The global tier's counts, in the service's memory (`make run` keeps them
            # in Redis; the tests of Redis and of several gateways are elsewhere).
            ratelimit = self.start_server("ratelimit", [
                tool_path("ratelimit"), "serve", "--config", ROOT / GATEWAY_LIMITS,
                "--store", "memory", "--listen", "127.0.0.1:0",
                "--metrics-listen", "127.0.0.1:0"])
            ports[18090], ports[18091] = jwks.port, self.keys.service.port
            ports[18092] = ratelimit.port
            # Access log lines reach stdout within 250 ms (Envoy's default is 10 s).
            self.envoy = self.start_envoy("gateway", GATEWAY_CONFIG, ports, tracing=self.tracing,
                                          edit=self.edit,
                                          extra_args=["--file-flush-interval-msec", "250"])
            # On a busy machine the first health checks can time out while Envoy is
            # still starting; until the next round passes, every host counts as
            # unhealthy and Envoy balances in panic mode. Tests start from a healthy
            # gateway.
            wait_for(self.all_healthy, 30, "every demo service to pass its health checks")
            # The JWT filter fetches the JWKS on its first tick; a request before that
            # would wait for it (up to max_wait). Tests start with the keys in place.
            wait_for(lambda: self.envoy.metric("wasmgate_jwt_jwks_fetches_total", result="success"),
                     30, "the JWT filter's first JWKS fetch")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        super().stop()
        if self.collector is not None:
            self.collector.stop()

    def all_healthy(self) -> bool:
        """True when every host of every health-checked cluster passes its checks."""
        clusters = load_shipped(GATEWAY_CONFIG, {})["static_resources"]["clusters"]
        for cluster in clusters:
            if "health_checks" in cluster:
                prefix = f"cluster.{cluster['name']}.membership_"
                if self.envoy.stat(prefix + "healthy") != self.envoy.stat(prefix + "total"):
                    return False
        return True

    def token(self, sub: str = "alice", tenant: str = "acme", scope: str = "orders:read",
              **claims) -> str:
        """A token the gateway accepts (ES256, the issuer's published key); `claims`
        override or add (`lifetime=-60` for an expired one, `aud=...`)."""
        claims = {"iss": TOKEN_ISSUER, "aud": TOKEN_AUDIENCE, **claims}
        return self.signing_keys.mint(SIGNING_KEY, claims_for(sub=sub, tenant=tenant, scope=scope,
                                                              **claims))

    def bearer(self, **token_claims) -> dict:
        """`Authorization: Bearer <token(**token_claims)>` as a header dict."""
        return {"authorization": f"Bearer {self.token(**token_claims)}"}

    def url(self, path: str = "/", tls: bool = False) -> str:
        if tls:
            return self.envoy.url(path, listener="tls", scheme="https")
        return self.envoy.url(path)

    @property
    def ca_file(self) -> str:
        """The CA that signed the gateway's certificate (for `verify=`)."""
        return str(self.certs_dir / "edge-ca.crt")

    def access_log(self) -> list:
        """Envoy's JSON access log lines (stdout, which the harness sends to its log)."""
        entries = []
        for line in self.envoy.log().splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return entries
