"""What scenarios build their configuration from, shared by the whole run: the work
directory, signing keys and token files (minted on first use), the .wasm modules, and
the fixture servers (started on first use, stopped at the end)."""

from pathlib import Path

from harness import Service
from harness.paths import BUILD, wasm_path

from .cpus import Placement, pinned
from .tokens import SigningKey


class BenchContext:
    def __init__(self, workdir: Path, placement: Placement):
        self.workdir = Path(workdir)
        self.placement = placement
        self._keys = {}
        self._fixtures = {}

    # --- material minted at run time ------------------------------------------------

    def key(self, alg: str) -> SigningKey:
        """The run's signing key for "rs256" or "es256"."""
        if alg not in self._keys:
            self._keys[alg] = SigningKey.generate(alg)
        return self._keys[alg]

    def tokens(self, alg: str, count: int) -> Path:
        """A file of `count` distinct valid tokens signed with `key(alg)`."""
        return self.key(alg).token_file(count, self.workdir)

    def write(self, name: str, text: str) -> Path:
        """A file in the run's directory (e.g. a JWKS a fixture serves)."""
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # --- modules --------------------------------------------------------------------

    @staticmethod
    def wasm(module: str) -> str:
        """A shipped filter, `build/wasm/<module>.wasm` (`make build`)."""
        return wasm_path(module)

    @staticmethod
    def bench_wasm(module: str) -> str:
        """A bench-only module, `build/bench/<module>.wasm` (`make bench` builds it)."""
        path = BUILD / "bench" / f"{module}.wasm"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make bench` (it builds it)")
        return str(path)

    # --- fixtures -------------------------------------------------------------------

    def fixture(self, fixture) -> Service:
        """The running `Fixture`, started on first use on the load CPU."""
        if fixture.name not in self._fixtures:
            argv = pinned(self.placement.load_cpu, fixture.argv(self))
            self._fixtures[fixture.name] = Service(argv, fixture.name, self.workdir).start()
        return self._fixtures[fixture.name]

    def stop(self):
        for service in self._fixtures.values():
            service.stop()
        self._fixtures.clear()
