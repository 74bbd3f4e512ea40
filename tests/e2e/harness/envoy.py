"""The real Envoy binary, started on a generated bootstrap and judged over HTTP."""

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .metrics import select
from .paths import ROOT, envoy_binary
from .process import spawn, stop_process
from .wait import wait_for

_instances = 0


class EnvoyFailedToStart(RuntimeError):
    """Envoy exited (or never became ready); `.log` holds what it said."""

    def __init__(self, message: str, log: str, returncode):
        super().__init__(f"{message}\n--- envoy log ---\n{log[-20000:]}")
        self.log = log
        self.returncode = returncode


def _admin_get(address: str, path: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
        return resp.read().decode()


def _admin_post(address: str, path: str, timeout: float = 5.0) -> str:
    req = urllib.request.Request(f"http://{address}{path}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


class Envoy:
    """One Envoy process.

    `config` is a bootstrap dict (see `bootstrap.py`) or a path to a YAML/JSON file.
    Listeners may ask for port 0; `port(name)` reports what Envoy bound. The admin
    address is always 127.0.0.1 with a port Envoy picks.
    """

    def __init__(self, config, workdir: Path, concurrency: int = 2, log_level: str = "info",
                 extra_args=(), name: str = "envoy", cwd: Path = ROOT):
        global _instances
        _instances += 1
        self.workdir = Path(workdir)
        self.name = name
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.cwd = cwd
        self.log_file = self.workdir / f"{name}.log"
        self.admin_path_file = self.workdir / f"{name}.admin-address"
        if isinstance(config, (str, Path)):
            self.config_file = Path(config)
        else:
            self.config_file = self.workdir / f"{name}.json"
            self.config_file.write_text(json.dumps(config, indent=2))
        self.proc = None
        self.admin_address = None
        self.ports = {}

    def argv(self):
        return [
            envoy_binary(),
            "-c", str(self.config_file),
            "--concurrency", str(self.concurrency),
            "--disable-hot-restart",
            "--admin-address-path", str(self.admin_path_file),
            "-l", self.log_level,
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0):
        self.admin_path_file.unlink(missing_ok=True)
        self.proc = spawn(self.argv(), self.log_file)
        deadline = time.monotonic() + timeout
        try:
            wait_for(self._admin_ready, timeout, f"{self.name} admin address")
            self.admin_address = self.admin_path_file.read_text().strip()
            remaining = max(1.0, deadline - time.monotonic())
            wait_for(self._live, remaining, f"{self.name} /ready to say LIVE")
            remaining = max(1.0, deadline - time.monotonic())
            self.ports = wait_for(self._listener_ports, remaining, f"{self.name} listeners to bind")
        except (TimeoutError, RuntimeError) as err:
            self.stop()
            raise EnvoyFailedToStart(f"{self.name} did not become ready: {err}", self.log(),
                                     self.proc.returncode) from None
        return self

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}")

    def _admin_ready(self):
        self._check_alive()
        return self.admin_path_file.exists() and self.admin_path_file.read_text().strip()

    def _live(self):
        self._check_alive()
        return _admin_get(self.admin_address, "/ready").strip() == "LIVE"

    def _listener_ports(self):
        self._check_alive()
        data = json.loads(_admin_get(self.admin_address, "/listeners?format=json"))
        ports = {}
        for status in data.get("listener_statuses", []):
            address = status.get("local_address", {}).get("socket_address", {})
            port = address.get("port_value", 0)
            if not port:
                return None
            ports[status["name"]] = port
        return ports

    # --- talking to it -------------------------------------------------------------

    def port(self, listener: str = "main") -> int:
        return self.ports[listener]

    def url(self, path: str = "/", listener: str = "main", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port(listener)}{path}"

    def admin(self, path: str) -> str:
        return _admin_get(self.admin_address, path)

    def admin_post(self, path: str) -> str:
        return _admin_post(self.admin_address, path)

    def stats(self, filter_regex: str = "") -> dict:
        """Counters and gauges as {name: int}."""
        query = f"/stats?format=json&filter={urllib.parse.quote(filter_regex)}" if filter_regex else "/stats?format=json"
        data = json.loads(self.admin(query))
        return {s["name"]: s["value"] for s in data.get("stats", []) if "value" in s}

    def stat(self, name: str, default: int = 0) -> int:
        """One counter or gauge; wasm metrics are under `wasmcustom.<name>`."""
        return self.stats(f"^{re.escape(name)}$").get(name, default)

    def metric(self, metric: str, **tags) -> int:
        """A wasmgate metric by its Prometheus name, summed over the series whose tags
        include `tags`: `metric("wasmgate_jwt_denied_total", reason="expired")`. 0 when
        there is none (harness/metrics.py)."""
        return sum(select(self.stats("^wasmcustom\\."), metric, **tags).values())

    def series(self, metric: str, **tags) -> dict:
        """Every series of a wasmgate metric whose tags include `tags`: {((tag, value),
        ...): value}."""
        return select(self.stats("^wasmcustom\\."), metric, **tags)

    def ejected_hosts(self, cluster: str) -> set:
        """Ports of the hosts of `cluster` that outlier detection has ejected."""
        for status in json.loads(self.admin("/clusters?format=json"))["cluster_statuses"]:
            if status["name"] == cluster:
                return {host["address"]["socket_address"]["port_value"]
                        for host in status.get("host_statuses", [])
                        if host.get("health_status", {}).get("failed_outlier_check")}
        raise KeyError(f"no cluster {cluster}")

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def run_to_exit(config, workdir: Path, timeout: float = 60.0, name: str = "envoy-refused"):
    """Starts Envoy on a config that should be refused; returns (returncode, log).

    Raises AssertionError if Envoy becomes ready instead (it would be serving the
    broken configuration).
    """
    envoy = Envoy(config, workdir, name=name)
    envoy.proc = spawn(envoy.argv(), envoy.log_file)
    try:
        envoy.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        ready = False
        if envoy.admin_path_file.exists():
            try:
                ready = _admin_get(envoy.admin_path_file.read_text().strip(), "/ready").strip() == "LIVE"
            except (urllib.error.URLError, OSError):
                ready = False
        envoy.stop()
        raise AssertionError(f"Envoy did not exit (ready={ready}); it accepted the config\n{envoy.log()[-5000:]}")
    return envoy.proc.returncode, envoy.log()


def validate_config(config_file, workdir: Path, timeout: float = 120.0):
    """`envoy --mode validate -c FILE`: returns (ok, output)."""
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_file), "--disable-hot-restart",
         "-l", "warning"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    return result.returncode == 0, result.stdout + result.stderr

