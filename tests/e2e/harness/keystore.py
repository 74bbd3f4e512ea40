"""The API-key store for tests: a real `redis-server`, `wasmgate-keystore` serving and
managing keys on it, and a server that accepts connections and never answers.

Fixtures (registered in conftest.py):
- `redis_server`: redis-server on a unix socket in the test's tmp dir (no port to
  pick, nothing shared with other tests); `.stop()` simulates an outage.
- `keystore`: `wasmgate-keystore serve` on that Redis, plus its CLI (`create`,
  `revoke`, `list`) and its lookup counter (`lookups()`).
- `hung_server`: a TCP listener on a free port that accepts and holds connections.
"""

import json
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from .paths import tool_path
from .process import spawn, stop_process
from .wait import wait_for


class RedisServer:
    """redis-server listening only on `<workdir>/redis.sock`, without persistence."""

    def __init__(self, workdir: Path):
        self.socket_path = Path(workdir) / "redis.sock"
        self.log_file = Path(workdir) / "redis.log"
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis+unix://{self.socket_path}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=5)

    def start(self, timeout: float = 10.0):
        self.proc = spawn(["redis-server", "--port", "0", "--unixsocket", self.socket_path,
                           "--unixsocketperm", "700", "--save", "", "--appendonly", "no"],
                          self.log_file)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_file.read_text()}")
            return self.client().ping()

        wait_for(ready, timeout, "redis-server to answer PING")
        return self

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class CreatedKey:
    key_id: str
    api_key: str


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

    def revoke(self, key_id: str):
        self.cli("keys", "revoke", key_id)

    def list(self) -> list:
        return [json.loads(line) for line in self.cli("keys", "list", "--json").stdout.splitlines()]

    def stats(self) -> dict:
        return requests.get(self.service.url("/__keystore/stats"), timeout=5).json()

    def lookups(self) -> int:
        """Lookup requests the service received (any outcome)."""
        return self.stats()["lookups"]


def start_keystore(start_service, store: str, name: str = "keystore") -> KeyStore:
    service = start_service([tool_path("keystore"), "--store", store, "serve",
                             "--listen", "127.0.0.1:0"], name)
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
