"""The API-key store for tests: a real `redis-server`, `wasmgate-keystore` serving and
managing keys on it, and a server that accepts connections and never answers.

Fixtures (registered in conftest.py):
- `redis_server`: redis-server on a unix socket in the test's tmp dir (no port to
  pick, nothing shared with other tests); `.stop()` simulates an outage. A
  `RedisServer` can also listen on TCP or TLS (`tcp=True`, `tls=TlsFiles`), be
  paused (`pause()`/`resume()`: hung) and started again on the same address.
- `keystore`: `wasmgate-keystore serve` on that Redis, plus its CLI (`create`,
  `rotate`, `revoke`, `list`), its lookup counter (`lookups()`) and its Prometheus
  metrics (`metrics()`).
- `hung_server`: a TCP listener on a free port that accepts and holds connections.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from .paths import tool_path
from .ports import free_ports
from .process import spawn, stop_process
from .wait import wait_for


@dataclass
class TlsFiles:
    """PEM files for a TLS redis-server: its certificate and key, and the CA that
    signed it (what a client must trust)."""
    ca: Path
    cert: Path
    key: Path


class RedisServer:
    """redis-server without persistence, listening only on `<workdir>/redis.sock`, or
    on a free TCP port of 127.0.0.1 (`tcp=True`), with TLS if `tls` is given. A
    stopped server starts again on the same address; `requirepass` sets a password."""

    def __init__(self, workdir: Path, tcp: bool = False, tls: TlsFiles = None,
                 requirepass: str = None):
        self.socket_path = Path(workdir) / "redis.sock"
        self.log_file = Path(workdir) / "redis.log"
        self.port = free_ports(1)[0] if tcp or tls else None
        self.tls = tls
        self.requirepass = requirepass
        self.proc = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://localhost:{self.port}"
        if self.port:
            return f"redis://127.0.0.1:{self.port}"
        return f"redis+unix://{self.socket_path}"

    def client(self) -> redis.Redis:
        if self.tls:
            return redis.Redis(host="localhost", port=self.port, ssl=True,
                               ssl_ca_certs=str(self.tls.ca), password=self.requirepass,
                               socket_timeout=5)
        if self.port:
            return redis.Redis(host="127.0.0.1", port=self.port, password=self.requirepass,
                               socket_timeout=5)
        return redis.Redis(unix_socket_path=str(self.socket_path), password=self.requirepass,
                           socket_timeout=5)

    def start(self, timeout: float = 10.0):
        argv = ["redis-server", "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
        if self.tls:
            argv += ["--port", "0", "--tls-port", self.port, "--tls-cert-file", self.tls.cert,
                     "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca,
                     "--tls-auth-clients", "no"]
        elif self.port:
            argv += ["--port", self.port]
        else:
            argv += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.requirepass:
            argv += ["--requirepass", self.requirepass]
        self.proc = spawn(argv, self.log_file)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_file.read_text()}")
            return self.client().ping()

        wait_for(ready, timeout, "redis-server to answer PING")
        return self

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.resume()
            stop_process(self.proc)

    def pause(self):
        """SIGSTOP: the server holds its connections and answers nothing (hung)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)


@dataclass
class CreatedKey:
    key_id: str
    api_key: str
    rotated_from: str = None
    old_key_until: str = None  # RFC 3339: when the key it replaced stops working

    @property
    def hash(self) -> str:
        """The key's SHA-256 in hex: what the filter looks up."""
        return hashlib.sha256(self.api_key.encode()).hexdigest()


def parse_metrics(text: str) -> dict:
    """OpenMetrics text (checked by the Prometheus client's own strict parser) as
    {(sample name, ((label, value), ...)): value}."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class KeyStore:
    """`wasmgate-keystore` on one backend (`store`: redis+unix://... or file:...)."""

    def __init__(self, store: str, service=None):
        self.store = store
        self.service = service

    def cli(self, *args, env=None, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run([tool_path("keystore"), "--store", self.store, *map(str, args)],
                                capture_output=True, text=True, timeout=30,
                                env=None if env is None else {**os.environ, **env})
        if check and result.returncode != 0:
            raise AssertionError(f"keystore {' '.join(map(str, args))} failed:\n{result.stderr}")
        return result

    def create(self, tenant: str, plan: str = None, *extra, env=None) -> CreatedKey:
        args = ["keys", "create", "--tenant", tenant, *(["--plan", plan] if plan else []), *extra]
        fields = dict(line.split(None, 1) for line in self.cli(*args, env=env).stdout.splitlines()
                      if line.strip())
        return CreatedKey(key_id=fields["key_id"].strip(), api_key=fields["api_key"].strip())

    def rotate(self, key_id: str, *extra, env=None) -> CreatedKey:
        """`keys rotate KEY_ID ...`: the new key, with the id it replaced and when that
        one stops working."""
        fields = json.loads(self.cli("keys", "rotate", key_id, "--json", *extra, env=env).stdout)
        return CreatedKey(key_id=fields["key_id"], api_key=fields["api_key"],
                          rotated_from=fields["rotated_from"],
                          old_key_until=fields["old_key_until"])

    def revoke(self, key_id: str):
        self.cli("keys", "revoke", key_id)

    def list(self) -> list:
        return [json.loads(line) for line in self.cli("keys", "list", "--json").stdout.splitlines()]

    def stats(self) -> dict:
        return requests.get(self.service.url("/__keystore/stats"), timeout=5).json()

    def lookups(self) -> int:
        """Lookup requests the service received (any outcome)."""
        return self.stats()["lookups"]

    def lookup(self, key_hash: str, timeout: float = 10) -> requests.Response:
        """GET /v1/keys/<hash> on the service directly (the filter's request)."""
        return requests.get(self.service.url(f"/v1/keys/{key_hash}"), timeout=timeout)

    def metrics(self) -> dict:
        """GET /metrics, parsed (`parse_metrics`)."""
        answer = requests.get(self.service.url("/metrics"), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        return parse_metrics(answer.text)

    def metric(self, name: str, **labels) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0)


def start_keystore(start_service, store: str, name: str = "keystore", args=(), env=None,
                   global_args=()) -> KeyStore:
    """`wasmgate-keystore --store STORE [global_args] serve --listen 127.0.0.1:0 [args]`,
    with `env` added to its environment."""
    service = start_service([tool_path("keystore"), "--store", store, *global_args, "serve",
                             "--listen", "127.0.0.1:0", *args], name, env=env)
    return KeyStore(store, service)


class HungServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a hung key store)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.accepted = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def keystore(start_service, redis_server) -> KeyStore:
    """The key store service on Redis, with its CLI."""
    return start_keystore(start_service, redis_server.url)


@pytest.fixture
def hung_server():
    server = HungServer()
    yield server
    server.stop()
