"""The demo gateway as `make run` starts it: envoy-config/gateway.yaml in front of its
demo services, every fixed port of the file mapped to one chosen at run time.

`DEMO_SERVICES` is the one list of what gateway.yaml routes to: the compose tests
check docker-compose.yml against it, and starting fails if gateway.yaml names a port
the list does not map (a new cluster needs its service here).
"""

import json

from .shipped import load_shipped
from .stack import Stack
from .wait import wait_for

GATEWAY_CONFIG = "envoy-config/gateway.yaml"

# Envoy's own listeners and admin in gateway.yaml: Envoy picks free ports in tests.
GATEWAY_PORTS = {"main": 8080, "tls": 8443, "admin": 9901}

# Shipped port → (service, instance): one `wasmgate-demo echo --name SERVICE
# --instance INSTANCE` each. The collector stands in for an OpenTelemetry collector
# (OTLP/HTTP); the echo accepts the spans Envoy posts.
DEMO_SERVICES = {
    18081: ("users", "users-a"),
    18082: ("users", "users-b"),
    18083: ("orders", "orders-v1"),
    18084: ("orders", "orders-v2"),
    18085: ("products", "products"),
    4318: ("otel-collector", "otel-collector"),
}


class DemoGateway(Stack):
    """Starts the demo services, then Envoy (`envoy`) on the shipped gateway.yaml."""

    envoy = None

    def start(self):
        try:
            ports = {port: 0 for port in GATEWAY_PORTS.values()}
            for port, (service, instance) in DEMO_SERVICES.items():
                ports[port] = self.start_echo(service, instance).port
            # Access log lines reach stdout within 250 ms (Envoy's default is 10 s).
            self.envoy = self.start_envoy("gateway", GATEWAY_CONFIG, ports,
                                          extra_args=["--file-flush-interval-msec", "250"])
            # On a busy machine the first health checks can time out while Envoy is
            # still starting; until the next round passes, every host counts as
            # unhealthy and Envoy balances in panic mode. Tests start from a healthy
            # gateway.
            wait_for(self.all_healthy, 30, "every demo service to pass its health checks")
        except BaseException:
            self.stop()
            raise
        return self

    def all_healthy(self) -> bool:
        """True when every host of every health-checked cluster passes its checks."""
        clusters = load_shipped(GATEWAY_CONFIG, {})["static_resources"]["clusters"]
        for cluster in clusters:
            if "health_checks" in cluster:
                prefix = f"cluster.{cluster['name']}.membership_"
                if self.envoy.stat(prefix + "healthy") != self.envoy.stat(prefix + "total"):
                    return False
        return True

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
