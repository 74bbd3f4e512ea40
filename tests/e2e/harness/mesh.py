"""The east-west mesh of envoy-config/mesh/: each service an echo app behind its own
sidecar Envoy, sidecars talking mutual TLS with SPIFFE identities.

Sidecars start in dependency order: a sidecar that calls another maps the callee's
shipped inbound port to the port its Envoy actually got.
"""

from .shipped import shipped_listener_ports
from .stack import Stack

# service → (its sidecar config, the app port the sidecar forwards to), callees first.
MESH_SERVICES = {
    "order-service": ("envoy-config/mesh/order-service.yaml", 18301),
    "checkout-service": ("envoy-config/mesh/checkout-service.yaml", 18302),
}


class Mesh(Stack):
    """`sidecars[service]` is the Envoy in front of `instances[service]` (the app)."""

    def start(self):
        self.sidecars = {}
        # Shipped port → real port, growing as apps and sidecars start.
        self.ports = {}
        try:
            for service in MESH_SERVICES:
                self.start_sidecar(service)
        except BaseException:
            self.stop()
            raise
        return self

    def start_sidecar(self, service: str, name: str = None, ports: dict = None):
        """Starts `service`'s app (once) and a sidecar for it. `ports` overrides the
        mapping, e.g. to point a caller at the wrong callee."""
        config, app_port = MESH_SERVICES[service]
        if service not in self.instances:
            self.ports[app_port] = self.start_echo(service).port
        own = shipped_listener_ports(config)
        mapping = {**self.ports, **{port: 0 for port in own.values()}, **(ports or {})}
        sidecar = self.start_envoy(name or f"{service}-sidecar", config, mapping)
        for listener, shipped in own.items():
            if listener != "admin":
                self.ports.setdefault(shipped, sidecar.port(listener))
        self.sidecars.setdefault(service, sidecar)
        return sidecar

    def port(self, service: str, listener: str) -> int:
        return self.sidecars[service].port(listener)
