"""The east-west mesh of envoy-config/mesh/: each service an echo app behind its own
sidecar Envoy, sidecars talking mutual TLS with SPIFFE identities.

Sidecars start in dependency order: a sidecar that calls another maps the callee's
shipped inbound port to the port its Envoy actually got.
"""

from .shipped import shipped_listener_ports
from .stack import Stack

# service → (its sidecar config, the app port the sidecar forwards to).
MESH_SERVICES = {
    "order-service": ("envoy-config/mesh/order-service.yaml", 18301),
    "checkout-service": ("envoy-config/mesh/checkout-service.yaml", 18302),
}

# Every sidecar of the mesh, callees first: (replica, service, {port in the service's
# config: the port its callers' configs know this replica by}). The second
# order-service replica runs the same file as the first, where checkout-service's
# config expects it (its cluster has both endpoints).
MESH_REPLICAS = [
    ("order-service", "order-service", {}),
    ("order-service-2", "order-service", {15301: 15311}),
    ("checkout-service", "checkout-service", {}),
]


class Mesh(Stack):
    """`sidecars[replica]` is the Envoy in front of `instances[replica]` (the app);
    a service's first replica has the service's name."""

    def start(self):
        self.sidecars = {}
        # Shipped port of a sidecar's listener → real port, growing as sidecars start.
        self.ports = {}
        try:
            for replica, service, known_as in MESH_REPLICAS:
                self.start_sidecar(service, replica=replica, known_as=known_as)
        except BaseException:
            self.stop()
            raise
        return self

    def start_sidecar(self, service: str, replica: str = None, name: str = None,
                      ports: dict = None, known_as: dict = None):
        """Starts the app of `replica` (once) and a sidecar for it on `service`'s
        config. `ports` overrides the mapping, e.g. to point a caller at the wrong
        callee; `known_as` renames this sidecar's ports for the callers started after."""
        config, app_port = MESH_SERVICES[service]
        replica = replica or service
        if replica not in self.instances:
            self.start_echo(service, replica)
        own = shipped_listener_ports(config)
        mapping = {**self.ports, **{port: 0 for port in own.values()},
                   app_port: self.instances[replica].port, **(ports or {})}
        sidecar = self.start_envoy(name or f"{replica}-sidecar", config, mapping)
        for listener, shipped in own.items():
            if listener != "admin":
                self.ports.setdefault((known_as or {}).get(shipped, shipped), sidecar.port(listener))
        self.sidecars.setdefault(replica, sidecar)
        return sidecar

    def port(self, replica: str, listener: str) -> int:
        return self.sidecars[replica].port(listener)
