"""Many requests at once, bounded in count and in time.

- `fire_together` sends N requests at the same instant, each on its own connection (so
  Envoy's kernel-balanced listener spreads them over its workers), and returns every
  answer.
- `wrk_distinct_clients` drives `wrk` with a Lua script that gives every request a new
  client id, and stops after a fixed number of answers.
"""

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
