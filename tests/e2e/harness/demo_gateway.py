"""The demo gateway as `make run` starts it: envoy-config/gateway.yaml in front of its
demo services, every fixed port of the file mapped to one chosen at run time.

`DEMO_SERVICES` is the one list of what gateway.yaml routes to; the compose tests
check docker-compose.yml against it, and a test fails if gateway.yaml names a port
this list does not map (a new cluster needs its service here).
"""

import json

from .envoy import Envoy
from .paths import tool_path
from .process import Service
from .shipped import load_shipped, shipped_ports

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


class DemoGateway:
    """Starts the demo services, then Envoy on the shipped gateway.yaml.

    `instances[name]` is the `Service` of one instance (`users-a`, ...), `envoy` the
    gateway. Stop with `stop()`; `logs()` gathers every log for a failure report.
    """

    def __init__(self, workdir, certs_dir):
        self.workdir = workdir
        self.certs_dir = certs_dir
        self.instances = {}
        self.envoy = None

    def start(self):
        try:
            for service, instance in DEMO_SERVICES.values():
                self.instances[instance] = Service(
                    [tool_path("demo"), "echo", "--name", service, "--instance", instance],
                    instance, self.workdir).start()
            ports = {port: 0 for port in GATEWAY_PORTS.values()}
            ports.update({port: self.instances[instance].port
                          for port, (_, instance) in DEMO_SERVICES.items()})
            unmapped = shipped_ports(GATEWAY_CONFIG) - ports.keys()
            assert not unmapped, (
                f"{GATEWAY_CONFIG} names ports {sorted(unmapped)} that the tests do not map: "
                "add their services to DEMO_SERVICES in harness/demo_gateway.py")
            config = load_shipped(GATEWAY_CONFIG, ports, certs_dir=self.certs_dir)
            # Access log lines reach stdout within 250 ms (Envoy's default is 10 s).
            self.envoy = Envoy(config, self.workdir, name="gateway",
                               extra_args=["--file-flush-interval-msec", "250"]).start()
        except BaseException:
            self.stop()
            raise
        return self

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

    def logs(self) -> str:
        parts = []
        if self.envoy is not None:
            parts.append(f"===== gateway Envoy log =====\n{self.envoy.log()[-30000:]}")
        for name, service in self.instances.items():
            parts.append(f"===== {name} log =====\n{service.log()[-3000:]}")
        return "\n".join(parts)

    def stop(self):
        if self.envoy is not None:
            self.envoy.stop()
        for service in self.instances.values():
            service.stop()
