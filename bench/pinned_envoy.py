"""The e2e harness's `Envoy`, started under `taskset` on the measured CPU."""

from harness.envoy import Envoy

from .cpus import pinned


class PinnedEnvoy(Envoy):
    """An `Envoy` whose every thread runs on `cpu` (None: anywhere)."""

    def __init__(self, config, workdir, *, cpu=None, **kwargs):
        kwargs.setdefault("log_level", "warning")
        super().__init__(config, workdir, **kwargs)
        self.cpu = cpu

    def argv(self):
        return pinned(self.cpu, super().argv())

    @property
    def pid(self) -> int:
        return self.proc.pid
