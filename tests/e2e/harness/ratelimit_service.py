"""The rate-limit service for tests: a real `redis-server` on a free TCP port, and
`wasmgate-ratelimit serve` replicas on it (or on memory).

- `RedisTcp`: redis-server on 127.0.0.1 without persistence. `stop()` then `start()`
  again on the same port (an outage: connections refused), `freeze()`/`thaw()`
  (SIGSTOP/SIGCONT: it accepts and never answers, so calls time out), `counters()`
  (every counter the service keeps, as {key: value}), `holds()` (its lease holds).
  With `tls=CertificateFiles`, it listens with TLS only (rediss://).
- `RateLimitService`: one replica (a `Service`), its gRPC address, its `/metrics`, and
  the binary's own client: `ask()` (one ShouldRateLimit or Renew) and `load()` (a
  bounded burst over several replicas).
- `start_ratelimit(start_service, config, store, ...)` starts one replica;
  `replace_file()` swaps a limits file the way a deployment should (atomic rename).

Fixtures (registered in conftest.py): `ratelimit_redis`, a RedisTcp for the test.
"""

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from .paths import tool_path
from .ports import free_ports
from .process import spawn, stop_process
from .wait import wait_for

COUNTER_PREFIX = "wasmgate-ratelimit:"


@dataclass
class CertificateFiles:
    """A server certificate for 127.0.0.1 and the CA that signed it (PEM files)."""
    cert: Path
    key: Path
    ca: Path


class RedisTcp:
    """redis-server on 127.0.0.1:<free port>, no persistence; restartable on that port."""

    def __init__(self, workdir: Path, name: str = "redis", tls: CertificateFiles = None,
                 prefix=()):
        self.workdir = Path(workdir)
        self.name = name
        self.tls = tls
        self.prefix = list(prefix)  # e.g. ["taskset", "-c", "1"]
        self.port = free_ports(1)[0]
        self.log_file = self.workdir / f"{name}.log"
        self.proc = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        if self.tls:
            return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, ssl=True,
                               ssl_ca_certs=str(self.tls.ca))
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def argv(self):
        argv = [*self.prefix, "redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key,
                     "--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(self.port)]
        return argv

    def start(self, timeout: float = 10.0):
        self.proc = spawn(self.argv(), self.log_file)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_file.read_text()[-2000:]}")
            try:
                return self.client().ping()
            except redis.exceptions.ConnectionError:
                return False

        wait_for(ready, timeout, f"{self.name} to answer PING")
        return self

    def stop(self):
        """Gone: connections to its port are refused until `start()`."""
        if self.proc is not None:
            self.thaw()
            stop_process(self.proc)

    def freeze(self):
        """SIGSTOP: the port still accepts connections, nothing is answered."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def counters(self) -> dict:
        """Every counter the service keeps: {key: value} (holds excluded)."""
        client = self.client()
        keys = [k for k in client.scan_iter(match=f"{COUNTER_PREFIX}*", count=1000)
                if not k.endswith(b":holds")]
        return {k.decode(): int(client.get(k) or 0) for k in keys}

    def holds(self) -> dict:
        """Every outstanding lease hold: {counter key: {lease id: hits}}."""
        client = self.client()
        found = {}
        for key in client.scan_iter(match=f"{COUNTER_PREFIX}*:holds", count=1000):
            found[key.decode()[:-len(":holds")]] = {
                k.decode(): int(v) for k, v in client.hgetall(key).items()}
        return found


class RateLimitService:
    """One `wasmgate-ratelimit serve` replica."""

    def __init__(self, service):
        self.service = service

    @property
    def address(self) -> str:
        """HOST:PORT of the gRPC listener (ShouldRateLimit, Renew, health)."""
        return self.service.address

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def metrics_address(self) -> str:
        for line in self.service._lines:
            if line.startswith("metrics on http://"):
                return line.split("http://", 1)[1].split("/", 1)[0]
        raise RuntimeError(f"{self.service.name} printed no metrics address")

    def metrics_text(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels) -> float:
        """The sum of one metric's samples whose labels include `labels`."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            metric_name, _, label_text = series.partition("{")
            if metric_name != name:
                continue
            found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
            if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def ask(self, domain: str, *descriptors: str, hits: int = 0, want: int = None,
            lease: str = "", used: int = 0, timeout: str = "2s") -> dict:
        """One call with the binary's client; descriptors as "key=value,key=value".
        Returns its JSON, or {"error": message} for a gRPC error."""
        return ask(self.address, domain, *descriptors, hits=hits, want=want, lease=lease,
                   used=used, timeout=timeout)

    def log(self) -> str:
        return self.service.log()

    def alive(self) -> bool:
        return self.service.proc.poll() is None

    def stop(self):
        self.service.stop()

    def kill(self):
        """SIGKILL, no draining."""
        self.service.proc.kill()
        self.service.proc.wait(timeout=10)


def _descriptor_args(descriptors):
    args = []
    for descriptor in descriptors:
        args += ["--descriptor", descriptor]
    return args


def ask(address: str, domain: str, *descriptors: str, hits: int = 0, want: int = None,
        lease: str = "", used: int = 0, timeout: str = "2s") -> dict:
    argv = [tool_path("ratelimit"), "ask", "--target", address, "--domain", domain,
            "--hits", str(hits), "--timeout", timeout, *_descriptor_args(descriptors)]
    if want is not None:
        argv += ["--want", str(want), "--lease", lease, "--used", str(used)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return {"error": result.stderr.strip()}
    return json.loads(result.stdout)


def load(addresses, domain: str, *descriptors: str, requests: int, concurrency: int = 16,
         mode: str = "decide", want: int = 10, timeout: str = "2s", max_time: str = "60s",
         hits: int = 0) -> dict:
    """A bounded burst over the replicas (round robin); the counts as a dict:
    calls, ok, over_limit, unknown, errors, granted (lease mode), p50_us, p99_us."""
    argv = [tool_path("ratelimit"), "load", "--domain", domain, "--requests", str(requests),
            "--concurrency", str(concurrency), "--mode", mode, "--want", str(want),
            "--timeout", timeout, "--max-time", max_time, "--hits", str(hits),
            *_descriptor_args(descriptors)]
    for address in addresses:
        argv += ["--target", address]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"wasmgate-ratelimit load failed:\n{result.stderr}")
    return json.loads(result.stdout)


def start_ratelimit(start_service, config: Path, store: str = "memory", name: str = "ratelimit",
                    extra_args=(), env=None) -> RateLimitService:
    """`wasmgate-ratelimit serve` on 127.0.0.1 (ports picked by the kernel), text logs into
    its log file. Unless `extra_args` says otherwise, Redis calls get 2 s (the shipped 50 ms
    is for a production Redis, not a test machine under load)."""
    argv = [tool_path("ratelimit"), "serve", "--config", config, "--store", store,
            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--reload-interval", "200ms", "--log-format", "text", *extra_args]
    if "--redis-timeout" not in extra_args:
        argv += ["--redis-timeout", "2s"]
    return RateLimitService(start_service(argv, name, env=env))


def replace_file(path: Path, text: str):
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.rename(path)


@pytest.fixture
def ratelimit_redis(tmp_path):
    server = RedisTcp(tmp_path, "ratelimit-redis").start()
    yield server
    server.stop()
