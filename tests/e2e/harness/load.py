"""Many requests at once, bounded in count and in time.

- `fire_together` sends N requests at the same instant, each on its own connection (so
  Envoy's kernel-balanced listener spreads them over its workers), and returns every
  answer.
- `InFlight` keeps many requests open at once (an upstream that holds them), each on
  its own connection, and collects the answers as they come.
- `HoldingUpstream` is such an upstream: it takes any number of connections at once
  and answers nothing but its health check until released.
- `wrk_distinct_clients` drives `wrk` with a Lua script that gives every request a new
  client id, and stops after a fixed number of answers.
"""

import asyncio
import http.client
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .wait import wait_for


@dataclass
class Answer:
    status: int
    headers: dict  # lower-case name -> value (last one wins)
    body: bytes

    def header(self, name: str):
        return self.headers.get(name.lower())


def get(port: int, path: str, headers: dict = None, source_ip: str = "127.0.0.1",
        timeout: float = 10.0) -> Answer:
    """One GET on a fresh connection from `source_ip` (any 127.x address works locally)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source_ip, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


def fire_together(port: int, path: str, count: int, headers: dict = None,
                  timeout: float = 30.0) -> list:
    """`count` GETs released at once by a barrier; returns their `Answer`s (or raises the
    first error). Every thread is joined within `timeout`."""
    answers = [None] * count
    errors = []
    barrier = threading.Barrier(count, timeout=timeout)

    def one(i):
        try:
            barrier.wait()
            answers[i] = get(port, path, headers, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    missing = sum(a is None for a in answers)
    assert missing == 0, f"{missing} of {count} requests did not finish within {timeout}s"
    return answers


class InFlight:
    """GETs sent all at once from a thread of their own (asyncio, one connection each,
    `Connection: close`): `answers` fills in as the server answers, so a test can look
    at Envoy while the rest are still open. `wait()` returns them all, or fails when
    some are not answered within `timeout` seconds of the start. `sources`: local
    addresses (127.x.y.z) the requests come from, in turn (a gateway that limits each
    client address before authentication would refuse a flood from one)."""

    def __init__(self, port: int, requests: list, timeout: float = 60.0, sources: list = None):
        self.port = port
        self.requests = requests  # [(path, {header: value})]
        self.timeout = timeout
        self.sources = sources or ["127.0.0.1"]
        self.answers = []
        self.errors = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def start(self) -> "InFlight":
        self._thread.start()
        return self

    def wait(self) -> list:
        self._thread.join(self.timeout + 5)
        assert not self._thread.is_alive(), "the requests' thread did not finish"
        assert not self.errors, f"{len(self.errors)} requests failed, e.g. {self.errors[0]!r}"
        assert len(self.answers) == len(self.requests)
        return self.answers

    async def _all(self):
        await asyncio.gather(*(self._one(path, headers, self.sources[i % len(self.sources)])
                               for i, (path, headers) in enumerate(self.requests)))

    async def _one(self, path, headers, source):
        try:
            await asyncio.wait_for(self._exchange(path, headers, source), self.timeout)
        except Exception as err:  # noqa: BLE001 - reported by wait()
            self.errors.append(err)

    async def _exchange(self, path, headers, source):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                       local_addr=(source, 0))
        try:
            lines = [f"GET {path} HTTP/1.1", "host: localhost", "connection: close",
                     *(f"{name}: {value}" for name, value in headers.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(":", 1) for line in header_lines if ":" in line)
        self.answers.append(Answer(int(status_line.split()[1]),
                                   {k.strip().lower(): v.strip() for k, v in fields.items()}, body))


class HoldingUpstream:
    """An HTTP/1.1 upstream (asyncio, in a thread of its own) that accepts connections
    as fast as they come (a listen backlog of 4096, no thread per connection) and holds
    every request but `GET /healthz` until `release()`; then answers each with 200
    `{}` and keeps the connection for the next. `hold()` starts holding again."""

    def __init__(self):
        self.port = None
        self._loop = asyncio.new_event_loop()
        self._released = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def host(self):
        return "127.0.0.1"

    def start(self) -> "HoldingUpstream":
        self._thread.start()
        assert self._ready.wait(10), "the holding upstream did not start"
        return self

    def hold(self):
        self._loop.call_soon_threadsafe(self._released.clear)

    def release(self):
        self._loop.call_soon_threadsafe(self._released.set)

    def stop(self):
        """Lets every held request go, then stops (connections close with the loop)."""
        self.release()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._released = asyncio.Event()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"GET /healthz "):
                    await self._released.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


_WRK_SCRIPT = """
-- One new client id per request; each thread stops after its share of answers.
local thread_counter = 0
function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
end

local sent = 0
local answered = 0
function request()
  sent = sent + 1
  local headers = {["{header}"] = "{prefix}-" .. tid .. "-" .. sent}
  return wrk.format("GET", "{path}", headers)
end

function response(status, headers, body)
  answered = answered + 1
  if answered == {per_thread} then
    wrk.thread:stop()
    -- wrk's main thread sleeps for the whole -d duration; the harness interrupts it
    -- once every thread has left this mark.
    io.open("{marks}/done-" .. tid, "w"):close()
  end
end
"""


def wrk_distinct_clients(port: int, path: str, header: str, total: int, workdir: Path,
                         prefix: str = "client", threads: int = 2, connections: int = 16,
                         max_seconds: int = 60) -> int:
    """Sends `total` requests (rounded up to a multiple of `threads`), each with a new
    value of `header`, through `wrk` on keep-alive connections. Returns how many
    requests wrk completed. Bounded by count (each thread stops after its share of
    answers, then wrk is interrupted) and by `max_seconds`."""
    wrk = shutil.which("wrk")
    assert wrk, "wrk is missing: run `make setup`"
    per_thread = -(-total // threads)
    marks = workdir / f"wrk-{prefix}"
    marks.mkdir()
    script = workdir / f"wrk-{prefix}.lua"
    script.write_text(_WRK_SCRIPT.replace("{header}", header).replace("{prefix}", prefix)
                      .replace("{path}", path).replace("{per_thread}", str(per_thread))
                      .replace("{marks}", str(marks)))
    proc = subprocess.Popen(
        [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max_seconds}s",
         "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        try:
            wait_for(lambda: len(list(marks.iterdir())) == threads or proc.poll() is not None,
                     max_seconds + 10, "wrk to send its requests", interval=0.1)
        except TimeoutError:
            pass  # wrk stops by itself at -d; its summary says how far it got
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # ends wrk's sleep; it prints its summary
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    match = re.search(r"(\d+) requests in", output)
    assert match, output
    return int(match.group(1))
