"""The cheap upstream behind every scenario's Envoy, pinned to the load CPU.

Two kinds, so that the choice can be measured rather than assumed (`--upstream`;
BENCHMARKS.md says which was used and why):

- `nginx`: Debian's nginx, one process (`master_process off`), answering `200 ok`
  from a `return` directive, keep-alive connections reused indefinitely.
- `envoy`: a second Envoy (concurrency 1) whose route is a `direct_response`.

Both answer every path with a 3-byte body and echo a few request headers back as
`x-saw-<name>` response headers (`ECHOED`), so that probes can check what a filter
did to the request on its way upstream. Neither logs requests.
"""

import socket
import subprocess
from pathlib import Path

from harness.bootstrap import bootstrap, http_listener
from harness.process import spawn, stop_process
from harness.wait import wait_for

from .cpus import pinned
from .pinned_envoy import PinnedEnvoy

# Request headers the upstream reflects as `x-saw-<name>` (absent: not reflected).
ECHOED = ("x-bench-out", "x-gateway", "x-client-ip", "x-user-id", "x-tenant-id", "x-api-client")


class Upstream:
    kind = "?"
    host = "127.0.0.1"
    port = 0

    def version(self) -> str:
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        return conn.recv(64).startswith(b"HTTP/1.1 200")


class NginxUpstream(Upstream):
    kind = "nginx"

    def __init__(self, workdir: Path, cpu=None):
        self.dir = Path(workdir).resolve() / "nginx"  # nginx reads paths from its prefix
        self.cpu = cpu
        self.proc = None

    def _config(self, port: int) -> str:
        d = self.dir
        echoes = "\n".join(f"            add_header x-saw-{h} $http_{h.replace('-', '_')};"
                           for h in ECHOED)
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            default_type text/plain;
{echoes}
            return 200 "ok\\n";
        }}
    }}
}}
"""

    def start(self, attempts: int = 5):
        """Starts nginx on a free port; the port is picked here (nginx cannot report
        one it chose), so a race with another process is retried."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(self._config(self.port))
            self.proc = spawn(pinned(self.cpu, ["nginx", "-p", self.dir, "-e", self.dir / "error.log",
                                                "-c", conf]), self.dir / "stderr.log")
            try:
                state = wait_for(self._state, 10, "nginx to answer")
            except TimeoutError:
                state = "silent"
            if state == "answering":
                return self
            stop_process(self.proc)  # exited (port taken?) or silent: try another port
        raise RuntimeError(f"nginx did not start; see {self.dir}/error.log")

    def _state(self):
        if self.proc.poll() is not None:
            return "exited"
        return "answering" if _answers(self.host, self.port) else None

    def version(self) -> str:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
        return out.strip().split(":", 1)[-1].strip()

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)


class EnvoyUpstream(Upstream):
    kind = "envoy"

    def __init__(self, workdir: Path, cpu=None):
        self.workdir = Path(workdir)
        self.cpu = cpu
        self.envoy = None

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
            "response_headers_to_add": [
                {"header": {"key": f"x-saw-{h}", "value": f"%REQ({h})%"}} for h in ECHOED],
        }
        config = bootstrap([http_listener("upstream", [], [route])], [], node_id="bench-upstream")
        self.envoy = PinnedEnvoy(config, self.workdir, cpu=self.cpu, concurrency=1,
                                 name="upstream-envoy").start()
        self.port = self.envoy.port("upstream")
        return self

    def version(self) -> str:
        return "Envoy direct_response (same binary)"

    def stop(self):
        if self.envoy is not None:
            self.envoy.stop()


UPSTREAMS = {"nginx": NginxUpstream, "envoy": EnvoyUpstream}


def start_upstream(kind: str, workdir: Path, cpu=None) -> Upstream:
    return UPSTREAMS[kind](workdir, cpu).start()
