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

import datetime
import hashlib
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from .bootstrap import bootstrap, cluster, http_listener, route, wasm_filter
from .paths import tool_path, wasm_path
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
        return KeyStore.hash_of(self.api_key)


def parse_metrics(text: str) -> dict:
    """OpenMetrics text (checked by the Prometheus client's own strict parser) as
    {(sample name, ((label, value), ...)): value}."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class KeyStore:
    """`wasmgate-keystore` on one backend (`store`: redis+unix://... or file:...)."""

    def __init__(self, store: str, service=None, cli_env=None):
        self.store = store
        self.service = service
        self.cli_env = dict(cli_env or {})  # for the CLI too (e.g. Redis TLS settings)

    @staticmethod
    def hash_of(api_key: str) -> str:
        """The key's SHA-256 in hex: what the filter looks up."""
        return hashlib.sha256(api_key.encode()).hexdigest()

    def cli(self, *args, env=None, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run([tool_path("keystore"), "--store", self.store, *map(str, args)],
                                capture_output=True, text=True, timeout=30,
                                env={**os.environ, **self.cli_env, **(env or {})})
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
    return KeyStore(store, service, cli_env=env)


def keystore_gateway(upstream, stores, plugin=None, health_checks=False) -> dict:
    """Envoy with the API-key filter (build/wasm/api-key.wasm) in front of `upstream`;
    its store cluster `keystore` has one endpoint per service in `stores` (replicas,
    round robin). `health_checks`: Envoy polls each replica's /readyz every 200 ms
    and sends lookups only to the ready ones (docs/keystore.md, "Replicas")."""
    plugin = dict(plugin or {})
    plugin["store"] = {"cluster": "keystore", **plugin.get("store", {})}
    keystore = {
        "name": "keystore",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "keystore", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": s.host, "port_value": s.port}}}}
            for s in stores]}]},
    }
    if health_checks:
        keystore["health_checks"] = [{
            "timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
            "unhealthy_threshold": 1, "healthy_threshold": 1,
            "http_health_check": {"path": "/readyz"},
        }]
    return bootstrap(
        [http_listener("main", [wasm_filter(wasm_path("api-key"), plugin, name="api-key")],
                       [route("/", "upstream")])],
        [cluster("upstream", upstream.host, upstream.port), keystore],
    )


def raise_open_files_limit(wanted: int):
    """Raises this process's soft limit on open files to `wanted` (or the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Slowloris:
    """`count` connections to `port`, each sending the start of a lookup's request
    head, then one more byte every `interval` seconds, never finishing it: the slow
    client attack. Runs in a thread for at most `duration` seconds; records how many
    connections the server closed (EOF or reset) and when."""

    def __init__(self, port: int, count: int, interval: float = 0.5, duration: float = 15.0):
        self.port, self.count, self.interval, self.duration = port, count, interval, duration
        self.connected = 0
        self.closed_by_server = 0
        self.closed_after = []  # seconds from its first byte to the server closing it
        self.errors = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def wait(self):
        self._thread.join(timeout=self.duration + 30)
        assert not self._thread.is_alive(), "the slow clients did not finish"
        assert not self.errors, self.errors

    def _run(self):
        selector = selectors.DefaultSelector()
        started = {}
        try:
            for _ in range(self.count):
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                conn.sendall(b"GET /v1/keys/")
                started[conn] = time.monotonic()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                self.connected += 1
            deadline = time.monotonic() + self.duration
            next_byte = time.monotonic() + self.interval
            while started and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=max(0.0, next_byte - time.monotonic())):
                    conn = key.fileobj
                    try:
                        data = conn.recv(4096)
                    except (ConnectionResetError, BlockingIOError) as err:
                        if isinstance(err, BlockingIOError):
                            continue
                        data = b""
                    if data:
                        self.errors.append(f"the server answered a partial head: {data[:80]!r}")
                    self.closed_after.append(time.monotonic() - started.pop(conn))
                    self.closed_by_server += 1
                    selector.unregister(conn)
                    conn.close()
                if time.monotonic() >= next_byte:
                    next_byte += self.interval
                    for conn in list(started):
                        try:
                            conn.send(b"a")
                        except OSError:
                            pass  # closed by the server: the read above counts it
        except OSError as err:
            self.errors.append(f"after {self.connected} connections: {err!r}")
        finally:
            for conn in started:
                conn.close()
            selector.close()


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a server certificate it signed for localhost / 127.0.0.1 (P-256, one
    day), as PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, ca: bool, sans=None):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("wasmgate test CA", "wasmgate test CA", ca_key.public_key(), ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate("localhost", "wasmgate test CA", server_key.public_key(), ca_key, False,
                         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "redis.pem", key=directory / "redis-key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return files


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
