"""Shipped Envoy configs run together with the demo services they route to: the
common part of `DemoGateway` (envoy-config/gateway.yaml) and `Mesh`
(envoy-config/mesh/)."""

from .envoy import Envoy
from .paths import tool_path
from .process import Service
from .shipped import load_shipped, shipped_ports


class Stack:
    """Demo servers and Envoys started from shipped configs; `stop()` stops them all.

    `instances[name]` is the `Service` of one demo server (an echo instance, the JWKS
    issuer, the key store), `envoys[name]` one Envoy.
    """

    def __init__(self, workdir, certs_dir):
        self.workdir = workdir
        self.certs_dir = certs_dir
        self.instances = {}
        self.envoys = {}

    def start_echo(self, service: str, instance: str = None) -> Service:
        instance = instance or service
        return self.start_server(
            instance, [tool_path("demo"), "echo", "--name", service, "--instance", instance])

    def start_server(self, name: str, argv: list) -> Service:
        """One of the project's servers (it prints its address), as `instances[name]`."""
        self.instances[name] = Service(argv, name, self.workdir).start()
        return self.instances[name]

    def start_envoy(self, name: str, shipped_config: str, ports: dict, tracing: bool = False,
                    edit=None, **envoy_kwargs) -> Envoy:
        """Envoy on `shipped_config` with `ports` mapped and the demo certificates of
        this stack (and its `#~ ` tracing lines turned on, with `tracing`). Every port
        the file names must be mapped: an unmapped one would bind or call a fixed port
        that someone else on the machine may hold. `edit(config)`, when given, changes
        the loaded config (a dict) in place before Envoy starts: for a test that needs
        another value of a setting it does not test (the circuit-breaker test's route
        timeouts)."""
        unmapped = shipped_ports(shipped_config) - ports.keys()
        assert not unmapped, (
            f"{shipped_config} names ports {sorted(unmapped)} that the test does not map")
        config = load_shipped(shipped_config, ports, certs_dir=self.certs_dir, tracing=tracing)
        if edit is not None:
            edit(config)
        self.envoys[name] = Envoy(config, self.workdir, name=name, **envoy_kwargs).start()
        return self.envoys[name]

    def logs(self) -> str:
        parts = [f"===== {name} log =====\n{envoy.log()[-30000:]}"
                 for name, envoy in self.envoys.items()]
        parts += [f"===== {name} log =====\n{service.log()[-3000:]}"
                  for name, service in self.instances.items()]
        return "\n".join(parts)

    def stop(self):
        for envoy in self.envoys.values():
            envoy.stop()
        for service in self.instances.values():
            service.stop()
